//! `typoclip neurons`, `concepts`, `stroop` and `probe fit`: the research probes of
//! [`crate::probe`] on the command line. Arguments are checked before any work; every output
//! made with random weights says so on its first line (stdout, CSV, HTML).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::Tensor;

use super::args::ModelArgs;
use super::resolve::{cache_dir, open_model, OpenedModel};
use crate::dataset::descriptor::{DatasetDescriptor, Sample};
use crate::probe::concepts::{self, ConceptTerm};
use crate::probe::linear::{self, FitSettings, LinearProbe, ProbeClass, ProbeSplit};
use crate::probe::neurons::{self, SheetEntry, SheetRow};
use crate::probe::stroop;
use crate::zeroshot::{LabelSet, TextCache};

/// `writeln!` into a `String` (infallible).
macro_rules! outln {
    ($out:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($t)*);
    }};
}

fn print_out(s: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(s.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Images from a dataset descriptor, as the probe commands select them.
#[derive(Debug, Args)]
pub struct DatasetSelection {
    /// Dataset descriptor (`datasets/*.toml`).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Override the descriptor's data folder.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// At most N images of the dataset.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Shuffle the dataset (with --seed) before --limit.
    #[arg(long)]
    pub shuffle: bool,
    /// Seed of every random choice (shuffling, splits, random attack placements).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DatasetSelection {
    fn samples(&self) -> Result<Option<(String, Vec<Sample>)>> {
        let Some(path) = &self.dataset else {
            return Ok(None);
        };
        let (descriptor, mut root) = DatasetDescriptor::load(path)?;
        if let Some(r) = &self.data_root {
            root = r.clone();
        }
        let mut samples = descriptor.samples(&root)?;
        if self.shuffle {
            samples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed));
        }
        if let Some(n) = self.limit {
            samples.truncate(n);
        }
        if samples.is_empty() {
            bail!(
                "{}: dataset `{}` has no images",
                path.display(),
                descriptor.name
            );
        }
        Ok(Some((descriptor.name, samples)))
    }
}

/// `typoclip neurons`.
#[derive(Debug, Args)]
pub struct NeuronsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layer: ResNet `layer4`, `layer3.2`, `attnpool.input` (units = channels); ViT
    /// `resblocks.N.mlp` (MLP neurons) or `resblocks.N` (residual directions).
    #[arg(long)]
    pub layer: String,
    /// Units to report (repeatable or comma-separated). Default: the --top units that vary most
    /// across the images (with --attack: that the attack raises most).
    #[arg(long, value_delimiter = ',')]
    pub unit: Vec<i64>,
    #[command(flatten)]
    pub data: DatasetSelection,
    /// Attack spec: also render it on every image and report the activation change per unit.
    #[arg(long)]
    pub attack: Option<PathBuf>,
    /// The attack's variant (default: its first).
    #[arg(long)]
    pub variant: Option<String>,
    /// Images per unit in listings and the contact sheet (and units, when --unit is not given).
    #[arg(long, default_value_t = 8)]
    pub top: usize,
    /// Folder for `activations.csv`, `contact-sheet.html` and (with --attack) `attack-change.csv`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Images to probe.
    pub images: Vec<PathBuf>,
}

/// `typoclip concepts`.
#[derive(Debug, Args)]
pub struct ConceptsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A concept expression: `finance + toys`, `soft smile + heart - illness`, `0.5*smile + shock`.
    pub expression: Option<String>,
    /// Labels to rank: `imagenet`, a label file, or a comma-separated list.
    #[arg(long, default_value = "imagenet")]
    pub labels: String,
    /// Templates of the label embeddings (`single`, `openai7`, `imagenet80`, a file, or a literal
    /// template with `{}`).
    #[arg(long, default_value = "single")]
    pub templates: String,
    /// Templates of the concept embeddings (default: the bare word).
    #[arg(long, default_value = "{}")]
    pub concept_templates: String,
    /// How many labels / images / concepts to show.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Also rank these images by similarity to the expression.
    #[arg(long = "rank-image")]
    pub rank_images: Vec<PathBuf>,
    /// Decompose this image's embedding as a sparse non-negative combination of concepts.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The concepts of the decomposition: a comma list, a label file, or `imagenet`
    /// (default: --labels).
    #[arg(long)]
    pub concepts: Option<String>,
    /// L1 weight of the decomposition (0: plain non-negative least squares; larger: sparser).
    #[arg(long, default_value_t = 0.0)]
    pub sparsity: f64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `typoclip stroop`.
#[derive(Debug, Args)]
pub struct StroopArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Colour names (each both a word and an ink), comma-separated; known:
    /// black, red, green, blue, purple, orange, pink, yellow.
    #[arg(long, default_value = "black,red,green,blue,purple,orange,pink,yellow")]
    pub colours: String,
    /// The article's `stroop_experiment.json`: its published P(ink) / P(word) are shown beside
    /// ours (for trained CLIP; with random weights the two are not comparable).
    #[arg(long)]
    pub published: Option<PathBuf>,
    /// Folder for the stimuli (`<word>-<ink>.png`) and `stroop.csv`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `typoclip probe …`.
#[derive(Debug, Subcommand)]
pub enum ProbeCommand {
    /// Fit a linear probe (multinomial logistic regression on frozen image embeddings).
    Fit(ProbeFitArgs),
}

/// `typoclip probe fit`.
#[derive(Debug, Args)]
pub struct ProbeFitArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DatasetSelection,
    /// Fraction of each class held out for evaluation.
    #[arg(long, default_value_t = 0.2)]
    pub eval_fraction: f64,
    /// L2 strength on the weights (mean cross-entropy + l2/2·‖W‖²; scikit-learn's C = 1/(l2·n)).
    #[arg(long, default_value_t = 1e-4)]
    pub l2: f64,
    /// L-BFGS iterations at most.
    #[arg(long, default_value_t = 1000)]
    pub max_iter: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// The probe file to write (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `typoclip probe …`.
pub fn run_probe(command: ProbeCommand) -> Result<()> {
    match command {
        ProbeCommand::Fit(args) => run_probe_fit(args),
    }
}

/// A loaded image: its id and its model input (8-bit, before normalisation).
struct Loaded {
    id: String,
    input: RgbImage,
    /// The decoded file, kept only when an attack is rendered on it.
    source: Option<RgbImage>,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

/// Pooled activations of model inputs, in batches.
fn activations_of(
    m: &OpenedModel,
    inputs: &[&RgbImage],
    layer: &neurons::LayerSite,
    batch: usize,
) -> Tensor {
    let rows: Vec<Tensor> = inputs
        .chunks(batch.max(1))
        .map(|c| {
            let t = Tensor::stack(
                &c.iter()
                    .map(|i| crate::preprocess::to_normalized_tensor_with(i, &m.preprocess))
                    .collect::<Vec<_>>(),
                0,
            );
            neurons::pooled_activations(&m.model, &t, layer)
        })
        .collect();
    Tensor::cat(&rows, 0)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `typoclip neurons`.
pub fn run_neurons(args: NeuronsArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    if args.top == 0 {
        bail!("--top: must be at least 1");
    }
    let dataset = args.data.samples()?;
    if args.images.is_empty() && dataset.is_none() {
        bail!("nothing to probe: give image files or --dataset");
    }
    let variant = match &args.attack {
        Some(p) => {
            let spec = crate::attack::AttackSpec::load(p)?;
            let v = match &args.variant {
                Some(name) => spec.variant(name).cloned().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--variant: {} has no variant `{name}` (e.g. `{}`)",
                        p.display(),
                        spec.variants[0].name
                    )
                })?,
                None => spec.variants[0].clone(),
            };
            Some(v)
        }
        None => {
            if args.variant.is_some() {
                bail!("--variant: needs --attack");
            }
            None
        }
    };
    let m = open_model(&args.model)?;
    let layer = neurons::resolve_layer(m.model.config(), &args.layer)?;
    neurons::check_units(&layer, &args.unit)?;

    let mut loaded: Vec<Loaded> = Vec::new();
    let mut skipped = 0usize;
    for p in &args.images {
        let img = crate::dataset::load_rgb(p)?;
        loaded.push(Loaded {
            id: p.display().to_string(),
            input: crate::preprocess::model_input(&img, &m.preprocess),
            source: variant.is_some().then_some(img),
        });
    }
    if let Some((_, samples)) = &dataset {
        let bar = crate::progress::bar(samples.len() as u64, true);
        for s in samples {
            match crate::dataset::load_rgb(&s.path) {
                Ok(img) => loaded.push(Loaded {
                    id: s.id.clone(),
                    input: crate::preprocess::model_input(&img, &m.preprocess),
                    source: variant.is_some().then_some(img),
                }),
                Err(e) => {
                    bar.suspend(|| eprintln!("warning: skipped {e}"));
                    skipped += 1;
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    if loaded.is_empty() {
        bail!("no readable images to probe");
    }
    let inputs: Vec<&RgbImage> = loaded.iter().map(|l| &l.input).collect();
    let acts = activations_of(&m, &inputs, &layer, args.batch_size);
    let attacked = variant.as_ref().map(|v| {
        let imgs: Vec<RgbImage> = loaded
            .iter()
            .map(|l| {
                let seed = fnv1a(l.id.as_bytes()) ^ args.data.seed;
                let source = l.source.as_ref().expect("kept for the attack");
                crate::attack::render_for_model(source, v, &m.preprocess, seed, None).attacked_input
            })
            .collect();
        let refs: Vec<&RgbImage> = imgs.iter().collect();
        let a = activations_of(&m, &refs, &layer, args.batch_size);
        (imgs, a)
    });
    let changes = attacked
        .as_ref()
        .map(|(_, a)| neurons::activation_change(&acts, a, &[]));
    let units: Vec<i64> = if !args.unit.is_empty() {
        args.unit.clone()
    } else if let Some(ch) = &changes {
        ch.iter().take(args.top).map(|c| c.unit).collect()
    } else {
        neurons::most_variable_units(&acts, args.top)
    };
    let k = args.top.min(loaded.len());
    let pooled_how = match layer.layout {
        neurons::SiteLayout::Channels => "mean over H×W",
        neurons::SiteLayout::Tokens { prefix: 0 } => "mean over the patch tokens",
        neurons::SiteLayout::Tokens { .. } => "mean over patch tokens (class token excluded)",
    };
    let banner = m.banner_line();
    let mut out = String::new();
    outln!(out, "{banner}");
    outln!(
        out,
        "# {} ({} units), {} images{}, pooled: {pooled_how}",
        layer.site,
        layer.units,
        loaded.len(),
        if skipped > 0 {
            format!(" ({skipped} unreadable skipped)")
        } else {
            String::new()
        }
    );
    let col = |t: &Tensor, i: usize, u: i64| f64::try_from(t.get(i as i64).get(u)).unwrap_or(0.0);
    if loaded.len() <= 20 {
        outln!(
            out,
            "{:<40} {}",
            "image",
            units
                .iter()
                .map(|u| format!("{:>12}", format!("unit {u}")))
                .collect::<String>()
        );
        for (i, l) in loaded.iter().enumerate() {
            outln!(
                out,
                "{:<40} {}",
                l.id,
                units
                    .iter()
                    .map(|&u| format!("{:>12.4}", col(&acts, i, u)))
                    .collect::<String>()
            );
        }
    } else {
        for &u in &units {
            let top = neurons::top_activating(&acts, u, k);
            outln!(out, "unit {u}: top {k} images");
            for (i, v) in top {
                outln!(out, "  {v:>12.4}  {}", loaded[i].id);
            }
        }
    }
    if let (Some(v), Some(ch)) = (&variant, &changes) {
        outln!(
            out,
            "# activation change under attack `{}` (target {}), per unit, largest increase first",
            v.name,
            v.target
        );
        outln!(
            out,
            "{:>8} {:>12} {:>12} {:>12} {:>10} {:>10}",
            "unit",
            "clean",
            "attacked",
            "change",
            "change/sd",
            "frac_up"
        );
        let shown: Vec<&neurons::UnitChange> = if args.unit.is_empty() {
            ch.iter().take(args.top).collect()
        } else {
            ch.iter().filter(|c| args.unit.contains(&c.unit)).collect()
        };
        for c in shown {
            outln!(
                out,
                "{:>8} {:>12.4} {:>12.4} {:>+12.4} {:>+10.3} {:>10.3}",
                c.unit,
                c.clean_mean,
                c.attacked_mean,
                c.mean_change,
                c.standardized_change,
                c.fraction_increased
            );
        }
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let mut csv = format!("{banner}\nimage");
        for u in &units {
            csv.push_str(&format!(",unit_{u}"));
        }
        csv.push('\n');
        for (i, l) in loaded.iter().enumerate() {
            csv.push_str(&format!("\"{}\"", l.id.replace('"', "\"\"")));
            for &u in &units {
                csv.push_str(&format!(",{:.6}", col(&acts, i, u)));
            }
            csv.push('\n');
        }
        write_file(&dir.join("activations.csv"), csv.as_bytes())?;
        let mut rows = Vec::new();
        for &u in &units {
            rows.push(SheetRow {
                title: format!("unit {u}: top {k} images"),
                entries: neurons::top_activating(&acts, u, k)
                    .into_iter()
                    .map(|(i, v)| SheetEntry {
                        caption: format!("{}  {v:.3}", loaded[i].id),
                        image: loaded[i].input.clone(),
                    })
                    .collect(),
            });
            if let Some((imgs, a)) = &attacked {
                rows.push(SheetRow {
                    title: format!("unit {u}: top {k} attacked images"),
                    entries: neurons::top_activating(a, u, k)
                        .into_iter()
                        .map(|(i, v)| SheetEntry {
                            caption: format!(
                                "{} (attacked)  {v:.3} (clean {:.3})",
                                loaded[i].id,
                                col(&acts, i, u)
                            ),
                            image: imgs[i].clone(),
                        })
                        .collect(),
                });
            }
        }
        let mut notes = vec![format!(
            "{} ({} units), {} images, pooled: {pooled_how}. Thumbnails are the model inputs.",
            layer.site,
            layer.units,
            loaded.len()
        )];
        if let Some(v) = &variant {
            notes.push(format!(
                "Attack `{}` (target {}) rendered with per-image seeds derived from --seed {}.",
                v.name, v.target, args.data.seed
            ));
        }
        let html = neurons::contact_sheet_html(
            banner.trim_start_matches("# "),
            &format!("typoclip neurons: {}", layer.site),
            &notes,
            &rows,
        );
        write_file(&dir.join("contact-sheet.html"), html.as_bytes())?;
        if let Some(ch) = &changes {
            let mut csv = format!(
                "{banner}\nunit,clean_mean,attacked_mean,mean_change,standardized_change,fraction_increased\n"
            );
            for c in ch {
                csv.push_str(&format!(
                    "{},{:.6},{:.6},{:.6},{:.6},{:.6}\n",
                    c.unit,
                    c.clean_mean,
                    c.attacked_mean,
                    c.mean_change,
                    c.standardized_change,
                    c.fraction_increased
                ));
            }
            write_file(&dir.join("attack-change.csv"), csv.as_bytes())?;
        }
        outln!(out, "wrote {}", dir.display());
    }
    print_out(&out)
}

#[derive(serde::Serialize)]
struct Ranked {
    name: String,
    cosine: f64,
}

#[derive(serde::Serialize)]
struct Weighted {
    concept: String,
    weight: f64,
}

#[derive(serde::Serialize)]
struct ConceptsReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    model: String,
    random_weights: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expression: Option<String>,
    terms: Vec<Weighted>,
    labels: Vec<Ranked>,
    images: Vec<Ranked>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decomposition: Option<DecompositionReport>,
}

#[derive(serde::Serialize)]
struct DecompositionReport {
    image: String,
    sparsity: f64,
    reconstruction_cosine: f64,
    residual_norm: f64,
    nonzero: usize,
    concepts: Vec<Weighted>,
}

fn encode_files(m: &OpenedModel, paths: &[PathBuf]) -> Result<Tensor> {
    let mut t = Vec::new();
    for p in paths {
        t.push(crate::preprocess::model_tensor(
            &crate::dataset::load_rgb(p)?,
            &m.preprocess,
        ));
    }
    Ok(m.model
        .encode_image(&crate::preprocess::batch(&t))
        .to_device(tch::Device::Cpu))
}

/// Runs `typoclip concepts`.
pub fn run_concepts(args: ConceptsArgs) -> Result<()> {
    let terms: Option<Vec<ConceptTerm>> = args
        .expression
        .as_deref()
        .map(concepts::parse_expression)
        .transpose()?;
    if terms.is_none() && args.image.is_none() {
        bail!("nothing to do: give a concept expression and/or --image");
    }
    if terms.is_none() && !args.rank_images.is_empty() {
        bail!("--rank-image: needs a concept expression");
    }
    if args.top == 0 {
        bail!("--top: must be at least 1");
    }
    let labels = LabelSet::resolve(&args.labels)?;
    let templates = concepts::template_set(&args.templates)?;
    let concept_templates = concepts::template_set(&args.concept_templates)?;
    let dictionary = match &args.concepts {
        Some(c) => Some(LabelSet::resolve(c)?),
        None => None,
    };
    let m = open_model(&args.model)?;
    let tok = m.tokenizer()?;
    let tok = &*tok;
    let cache = TextCache::new(cache_dir(args.model.cache_dir.as_deref()).join("text-classifiers"));
    let mut report = ConceptsReport {
        warning: m.random_warning(),
        model: m.spec.clone(),
        random_weights: m.random,
        expression: args.expression.clone(),
        terms: Vec::new(),
        labels: Vec::new(),
        images: Vec::new(),
        decomposition: None,
    };
    let mut label_clf = None;
    if let Some(terms) = &terms {
        let names: Vec<String> = terms.iter().map(|t| t.concept.clone()).collect();
        let emb = concepts::concept_embeddings(&m.model, tok, &names, &concept_templates)?;
        let v = concepts::combine(terms, &emb)?;
        let (clf, _) = cache.load_or_build(
            &m.cache_id(),
            &m.model,
            tok,
            labels.clone(),
            templates.clone(),
        )?;
        report.terms = terms
            .iter()
            .map(|t| Weighted {
                concept: t.concept.clone(),
                weight: t.weight,
            })
            .collect();
        report.labels = concepts::rank(&v, &clf.weights, args.top)
            .into_iter()
            .map(|(i, c)| Ranked {
                name: clf.labels.classes[i].name.clone(),
                cosine: c,
            })
            .collect();
        if !args.rank_images.is_empty() {
            let feats = encode_files(&m, &args.rank_images)?;
            report.images = concepts::rank(&v, &feats, args.top)
                .into_iter()
                .map(|(i, c)| Ranked {
                    name: args.rank_images[i].display().to_string(),
                    cosine: c,
                })
                .collect();
        }
        label_clf = Some(clf);
    }
    if let Some(image) = &args.image {
        let dict_labels = dictionary.unwrap_or(labels);
        let names: Vec<String> = dict_labels.names().into_iter().map(String::from).collect();
        let dict = concepts::concept_embeddings(&m.model, tok, &names, &concept_templates)?;
        let x = crate::model::l2_normalize(&encode_files(&m, std::slice::from_ref(image))?)
            .squeeze_dim(0);
        let d = concepts::decompose(&x, &dict, args.sparsity)?;
        let mut order: Vec<usize> = (0..d.weights.len())
            .filter(|&i| d.weights[i] > 0.0)
            .collect();
        order.sort_by(|&a, &b| d.weights[b].total_cmp(&d.weights[a]).then(a.cmp(&b)));
        report.decomposition = Some(DecompositionReport {
            image: image.display().to_string(),
            sparsity: args.sparsity,
            reconstruction_cosine: d.reconstruction_cosine,
            residual_norm: d.residual_norm,
            nonzero: order.len(),
            concepts: order
                .into_iter()
                .take(args.top)
                .map(|i| Weighted {
                    concept: names[i].clone(),
                    weight: d.weights[i],
                })
                .collect(),
        });
    }
    if args.json {
        return print_out(&(serde_json::to_string(&report)? + "\n"));
    }
    let mut out = String::new();
    outln!(out, "{}", m.banner_line());
    if let (Some(expr), Some(clf)) = (&report.expression, &label_clf) {
        let sum: Vec<String> = report
            .terms
            .iter()
            .map(|t| format!("{:+}·{}", t.weight, t.concept))
            .collect();
        outln!(out, "# {expr} = {}", sum.join(" "));
        outln!(
            out,
            "# nearest of {} labels ({}, templates {}); concepts through `{}`",
            clf.labels.len(),
            clf.labels.name,
            clf.templates.name,
            concept_templates.templates.join(" | ")
        );
        for (i, r) in report.labels.iter().enumerate() {
            outln!(out, "{:>4}  {:>8.4}  {}", i + 1, r.cosine, r.name);
        }
        if !report.images.is_empty() {
            outln!(out, "# nearest images");
            for (i, r) in report.images.iter().enumerate() {
                outln!(out, "{:>4}  {:>8.4}  {}", i + 1, r.cosine, r.name);
            }
        }
    }
    if let Some(d) = &report.decomposition {
        outln!(
            out,
            "# {} ≈ non-negative combination of concepts (sparsity {}): {} non-zero, reconstruction cosine {:.4}, residual {:.4}",
            d.image,
            d.sparsity,
            d.nonzero,
            d.reconstruction_cosine,
            d.residual_norm
        );
        for w in &d.concepts {
            outln!(out, "  {:>8.4}  {}", w.weight, w.concept);
        }
    }
    print_out(&out)
}

#[derive(serde::Serialize)]
struct StroopReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    model: String,
    random_weights: bool,
    template: &'static str,
    incongruent_pairs: usize,
    fraction_incongruent_read_word: f64,
    fraction_incongruent_named_ink: f64,
    rows: Vec<stroop::StroopRow>,
}

/// Runs `typoclip stroop`.
pub fn run_stroop(args: StroopArgs) -> Result<()> {
    let colours: Vec<String> = args
        .colours
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    if colours.len() < 2 {
        bail!("--colours: give at least two colours");
    }
    for c in &colours {
        if stroop::ink_of(c).is_none() {
            bail!(
                "--colours: `{c}` has no ink (known: {})",
                stroop::STROOP_COLOURS.map(|c| c.0).join(", ")
            );
        }
    }
    let published: Option<serde_json::Value> = match &args.published {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", p.display()))?;
            if v.get("output").and_then(|o| o.as_object()).is_none() {
                bail!(
                    "{}: output: missing (expected the article's stroop_experiment.json)",
                    p.display()
                );
            }
            Some(v)
        }
        None => None,
    };
    let m = open_model(&args.model)?;
    let tok = m.tokenizer()?;
    let clf = stroop::colour_classifier(&m.model, &*tok, &colours)?;
    let pairs = stroop::pairs(&colours);
    let (mut rows, images) = stroop::run(&m.model, &clf, &pairs, &m.preprocess)?;
    let covered = published
        .as_ref()
        .map(|p| stroop::attach_published(&mut rows, p))
        .unwrap_or(0);
    let (n_inc, read_word, named_ink) = stroop::incongruent_summary(&rows);
    let banner = m.banner_line();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        for ((w, i), img) in pairs.iter().zip(&images) {
            let p = dir.join(format!("{w}-{i}.png"));
            img.save(&p)
                .with_context(|| format!("{}: cannot write", p.display()))?;
        }
        let mut csv =
            format!("{banner}\nword,ink,p_ink,p_word,top1,published_p_ink,published_p_word\n");
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &rows {
            csv.push_str(&format!(
                "{},{},{:.6},{:.6},{},{},{}\n",
                r.word,
                r.ink,
                r.p_ink,
                r.p_word,
                r.top1,
                opt(r.published_p_ink),
                opt(r.published_p_word)
            ));
        }
        write_file(&dir.join("stroop.csv"), csv.as_bytes())?;
    }
    if args.json {
        let report = StroopReport {
            warning: m.random_warning(),
            model: m.spec.clone(),
            random_weights: m.random,
            template: stroop::STROOP_TEMPLATE,
            incongruent_pairs: n_inc,
            fraction_incongruent_read_word: read_word,
            fraction_incongruent_named_ink: named_ink,
            rows,
        };
        return print_out(&(serde_json::to_string(&report)? + "\n"));
    }
    let mut out = String::new();
    outln!(out, "{banner}");
    outln!(
        out,
        "# Stroop: {} words × {} inks, zero-shot among the colours with \"{}\"",
        colours.len(),
        colours.len(),
        stroop::STROOP_TEMPLATE
    );
    if published.is_some() {
        outln!(
            out,
            "# published: the article's numbers for trained CLIP ({covered} of {} pairs){}",
            rows.len(),
            if m.random {
                "; not comparable with random weights"
            } else {
                ""
            }
        );
    }
    outln!(
        out,
        "{:<8} {:<8} {:>8} {:>8} {:<8}{}",
        "word",
        "ink",
        "P(ink)",
        "P(word)",
        "top1",
        if published.is_some() {
            "  pub P(ink)  pub P(word)"
        } else {
            ""
        }
    );
    for r in &rows {
        let pubcols = if published.is_some() {
            let f = |v: Option<f64>| {
                v.map(|v| format!("{v:>11.4}"))
                    .unwrap_or(format!("{:>11}", "-"))
            };
            format!("  {} {}", f(r.published_p_ink), f(r.published_p_word))
        } else {
            String::new()
        };
        outln!(
            out,
            "{:<8} {:<8} {:>8.4} {:>8.4} {:<8}{pubcols}",
            r.word,
            r.ink,
            r.p_ink,
            r.p_word,
            r.top1
        );
    }
    outln!(
        out,
        "# incongruent pairs: {n_inc}; top-1 = word {:.1}%, top-1 = ink {:.1}%",
        100.0 * read_word,
        100.0 * named_ink
    );
    print_out(&out)
}

/// Runs `typoclip probe fit`.
pub fn run_probe_fit(args: ProbeFitArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.eval_fraction) {
        bail!("--eval-fraction: must be in [0, 1)");
    }
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    let Some((dataset_name, samples)) = args.data.samples()? else {
        bail!("--dataset: required");
    };
    // Clean, labelled images only: the probe learns the classes, not the attacks.
    let samples: Vec<Sample> = samples
        .into_iter()
        .filter(|s| s.label.is_some() && s.attack_text.is_none())
        .collect();
    let mut classes: Vec<ProbeClass> = Vec::new();
    for s in &samples {
        let name = s.label.clone().expect("labelled");
        if !classes.iter().any(|c| c.name == name) {
            classes.push(ProbeClass {
                name,
                wnid: s.wnid.clone(),
            });
        }
    }
    classes.sort_by(|a, b| a.name.cmp(&b.name));
    if classes.len() < 2 {
        bail!(
            "{}: the probe needs labelled clean images of at least two classes, found {}",
            args.data
                .dataset
                .as_deref()
                .unwrap_or(Path::new("--dataset"))
                .display(),
            classes.len()
        );
    }
    let m = open_model(&args.model)?;
    let mut feats = Vec::new();
    let mut ids = Vec::new();
    let mut y = Vec::new();
    let bar = crate::progress::bar(samples.len() as u64, true);
    for chunk in samples.chunks(args.batch_size) {
        let mut batch = Vec::new();
        for s in chunk {
            match crate::dataset::load_rgb(&s.path) {
                Ok(img) => {
                    batch.push(crate::preprocess::model_tensor(&img, &m.preprocess));
                    ids.push(s.id.clone());
                    let label = s.label.as_deref().expect("labelled");
                    y.push(classes.iter().position(|c| c.name == label).expect("class") as i64);
                }
                Err(e) => bar.suspend(|| eprintln!("warning: skipped {e}")),
            }
            bar.inc(1);
        }
        if !batch.is_empty() {
            feats.push(
                m.model
                    .encode_image(&crate::preprocess::batch(&batch))
                    .to_device(tch::Device::Cpu),
            );
        }
    }
    bar.finish_and_clear();
    if feats.is_empty() {
        bail!("no readable images to fit on");
    }
    let x = crate::model::l2_normalize(&Tensor::cat(&feats, 0));
    let (train, eval) = linear::stratified_split(&y, args.eval_fraction, args.data.seed);
    let pick = |idx: &[usize]| {
        let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        (
            x.index_select(0, &i),
            idx.iter().map(|&i| y[i]).collect::<Vec<i64>>(),
        )
    };
    let (xt, yt) = pick(&train);
    let settings = FitSettings {
        l2: args.l2,
        max_iter: args.max_iter,
        ..FitSettings::default()
    };
    let fit = linear::fit_logistic(&xt, &yt, classes.len(), &settings)?;
    let train_accuracy = linear::accuracy(&fit.probs(&xt), &yt);
    let eval_accuracy = (!eval.is_empty()).then(|| {
        let (xe, ye) = pick(&eval);
        linear::accuracy(&fit.probs(&xe), &ye)
    });
    let mut probe = LinearProbe {
        warning: m.random_warning(),
        format: linear::PROBE_FORMAT.into(),
        model: m.spec.clone(),
        model_id: m.cache_id(),
        random_weights: m.random,
        dataset: dataset_name,
        features: linear::PROBE_FEATURES.into(),
        classes,
        l2: args.l2,
        iterations: fit.iterations,
        converged: fit.converged,
        split: ProbeSplit {
            seed: args.data.seed,
            eval_fraction: args.eval_fraction,
            train: train.iter().map(|&i| ids[i].clone()).collect(),
            eval: eval.iter().map(|&i| ids[i].clone()).collect(),
        },
        train_accuracy,
        eval_accuracy,
        weight: Vec::new(),
        bias: Vec::new(),
    };
    probe.set_weights(&fit);
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    write_file(&args.out, &serde_json::to_vec(&probe)?)?;
    let mut out = String::new();
    outln!(out, "{}", m.banner_line());
    outln!(
        out,
        "# linear probe on {} ({} classes, {} train / {} eval images, seed {}), l2 {}, {} L-BFGS iterations{}",
        probe.dataset,
        probe.classes.len(),
        train.len(),
        eval.len(),
        args.data.seed,
        args.l2,
        fit.iterations,
        if fit.converged { "" } else { " (not converged)" }
    );
    outln!(out, "train accuracy {:.4}", train_accuracy);
    match eval_accuracy {
        Some(a) => outln!(out, "eval accuracy  {a:.4}"),
        None => outln!(out, "eval accuracy  - (no eval split)"),
    }
    outln!(out, "wrote {}", args.out.display());
    print_out(&out)
}
