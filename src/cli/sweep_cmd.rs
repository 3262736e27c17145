//! `typoclip sweep`: resolves the dataset, labels, templates and model, checks everything
//! before any work, then runs the sweep stage.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::args::{ModelArgs, SweepArgs};
use super::resolve::{cache_dir, open_model_or_random};
use crate::dataset::descriptor::{file_list_hash, DatasetDescriptor, FolderShape, OpenedDataset};
use crate::defense::{variant_words_and_fonts, DefenseStack, EvalSet};
use crate::sweep::provenance::{now_rfc3339, Provenance, LIBTORCH_VERSION};
use crate::sweep::run_spec::{ModelChoice, RunSpec};
use crate::sweep::shard::{Shard, ShardRecord};
use crate::sweep::{physical_cells, rendered_cells, run_cells, Cell, EvalMode, SweepSettings};
use crate::tokenizer::ClipTokenizer;
use crate::zeroshot::{ClassLabel, LabelSet, TemplateSet, TextCache};

/// Runs `typoclip sweep`: resolves the arguments into a [`RunSpec`], runs it, prints.
pub fn run_sweep(args: SweepArgs) -> Result<()> {
    if args.merge {
        return run_merge(&args);
    }
    let spec = resolve(&args)?;
    let ran = execute(&spec, !args.json)?;
    let dir = spec.run_dir();
    let summary = ran.summary;
    let report = if args.report {
        Some(crate::report::write_report(
            &dir,
            &crate::report::ReportOptions::default(),
        )?)
    } else {
        None
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", ran.banner);
        if !ran.defenses.is_empty() {
            println!(
                "defenses (in application order): {}",
                ran.defenses.join(", ")
            );
        }
        print_summary(&summary, &dir);
    }
    if let Some((html, md)) = report {
        // Last, so the report's path is what a terminal shows at the end.
        println!("report: {} (and {})", html.display(), md.display());
    }
    Ok(())
}

/// `typoclip sweep --merge --out DIR`: merges the finished shards in `DIR/shards/` into `DIR`.
fn run_merge(args: &SweepArgs) -> Result<()> {
    let summary = crate::sweep::shard::merge_shards(&args.out)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        if let Some(w) = &summary.warning {
            println!("# {w}");
        }
        print_summary(&summary, &args.out);
    }
    Ok(())
}

/// The closing lines of a sweep: record counts and the headline rates per variant.
pub fn print_summary(summary: &crate::sweep::SweepSummary, dir: &std::path::Path) {
    println!(
        "{} records ({} errors) in {}",
        summary.records,
        summary.errors,
        dir.display()
    );
    let pct = |r: &Option<crate::metrics::Rate>| {
        r.map(|r| {
            format!(
                "{:.1}% [{:.1}, {:.1}]",
                100.0 * r.value,
                100.0 * r.lo,
                100.0 * r.hi
            )
        })
        .unwrap_or_else(|| "-".into())
    };
    let scorers = std::iter::once(("", &summary.variants))
        .chain(summary.linear_probe.as_ref().map(|v| ("linear probe: ", v)));
    for (scorer, variants) in scorers {
        for v in variants {
            println!(
                "  {scorer}{:<12} n={:<5} clean acc {}  attacked acc {}  changed to target {}  ASR {}",
                v.variant,
                v.records - v.errors,
                pct(&v.clean_accuracy),
                pct(&v.attacked_accuracy),
                pct(&v.fraction_changed_to),
                pct(&v.attack_success_rate)
            );
        }
    }
    for note in &summary.notes {
        println!("note: {note}");
    }
}

/// The positive control's dataset and attack (`--fallback-toy`), relative to the repository.
pub const TOY_DATASET: &str = "datasets/synthetic.toml";
/// See [`TOY_DATASET`].
pub const TOY_ATTACKS: &str = "attacks/toy-labels.toml";

/// Resolves `typoclip sweep`'s arguments into a [`RunSpec`]; every argument that can be
/// checked without reading files (mode, batch size, precision, defenses, shard) is checked
/// here.
pub fn resolve(args: &SweepArgs) -> Result<RunSpec> {
    let toy = args.fallback_toy
        && args.model.model.is_none()
        && !crate::cli::resolve::default_model_cached(args.model.cache_dir.as_deref());
    if toy {
        eprintln!(
            "no {} checkpoint is cached: --fallback-toy runs the positive control instead \
             (--model toy --dataset {} --attacks {})",
            crate::cli::resolve::DEFAULT_MODEL,
            TOY_DATASET,
            TOY_ATTACKS
        );
    }
    let mode = match args.mode.as_str() {
        "zeroshot" => EvalMode::Zeroshot,
        "binary" => EvalMode::Binary,
        other => bail!("--mode: `{other}` is not one of zeroshot, binary"),
    };
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    let precision = crate::sweep::Precision::parse(&args.precision).ok_or_else(|| {
        anyhow::anyhow!(
            "--precision: `{}` is not one of fp32, bf16, fp16",
            args.precision
        )
    })?;
    let shard = match &args.shard {
        Some(s) => Some(Shard::parse(s).map_err(|e| anyhow::anyhow!("--shard: {e}"))?),
        None => None,
    };
    let spec = RunSpec {
        model: ModelChoice {
            spec: if toy {
                Some("toy".into())
            } else {
                args.model.model.clone()
            },
            arch: args.model.arch.clone(),
            device: args.model.device.clone(),
            cache_dir: args.model.cache_dir.clone(),
            fallback_random: args.fallback_random,
        },
        dataset: if toy {
            Some(TOY_DATASET.into())
        } else {
            args.dataset.clone()
        },
        data_root: args.data_root.clone(),
        out: args.out.clone(),
        attacks: if toy {
            Some(TOY_ATTACKS.into())
        } else {
            args.attacks.clone()
        },
        mode,
        labels: args.labels.clone(),
        templates: args.templates.clone(),
        limit: args.limit,
        variants: args.variant.clone(),
        classes: args.classes.clone(),
        precision,
        composite: args.composite,
        shuffle: args.shuffle,
        seed: args.seed,
        batch_size: args.batch_size,
        workers: args.workers,
        threads: args.threads.map(usize::from),
        resume: args.resume,
        defenses: args.defense.clone(),
        probe: args.probe.clone(),
        text_area: args.text_area,
        shard,
        progress: !args.quiet,
    };
    check_spec(&spec)?;
    Ok(spec)
}

/// The checks of a [`RunSpec`] that need no files: defenses parse, reduced precision has none.
pub fn check_spec(spec: &RunSpec) -> Result<()> {
    let defenses = DefenseStack::parse(&spec.defenses)?;
    if spec.precision != crate::sweep::Precision::Fp32 && !defenses.is_empty() {
        bail!(
            "--precision {}: not available together with --defense (defenses run in fp32)",
            spec.precision.name()
        );
    }
    Ok(())
}

/// What [`execute`] hands back for printing.
pub struct Executed {
    /// The run's (or shard's) summary.
    pub summary: crate::sweep::SweepSummary,
    /// The model line (random-weights warning first when it applies).
    pub banner: String,
    /// The defenses' specs, in application order.
    pub defenses: Vec<String>,
}

/// Runs one resolved sweep (or its shard) into `spec.run_dir()`: opens the dataset, the
/// attack spec, the model and the classifier, checks everything before any work, then runs
/// the sweep stage. `banner` prints the model line on stderr first.
pub fn execute(run: &RunSpec, banner: bool) -> Result<Executed> {
    let args = run;
    run.pin_threads()?;
    let mode = run.mode;
    let precision = run.precision;
    // Bad defenses are refused before any work.
    let defenses = DefenseStack::parse(&run.defenses)?;
    let (opened, dataset_path) = match &args.dataset {
        Some(p) => (DatasetDescriptor::open(p)?, p.clone()),
        None => (
            DatasetDescriptor::builtin(),
            std::path::PathBuf::from("datasets/builtin-images.toml"),
        ),
    };
    let OpenedDataset {
        descriptor,
        mut root,
        text: descriptor_text,
        label_base,
        shape,
    } = opened;
    if let Some(r) = &args.data_root {
        root = r.clone();
    }
    let mut samples = descriptor.samples(&root)?;
    if let Some(list) = &args.classes {
        samples = filter_classes(samples, list, &dataset_path)?;
    }
    // A bad spec is rejected here, before any work.
    let spec = match &args.attacks {
        Some(p) => {
            let mut spec = crate::attack::AttackSpec::load(p)?;
            if !args.variants.is_empty() {
                spec.variants.retain(|v| {
                    args.variants
                        .iter()
                        .any(|pat| super::attack_cmd::glob(pat, &v.name))
                });
                if spec.variants.is_empty() {
                    bail!(
                        "{}: --variant {}: matches no variant of the spec",
                        p.display(),
                        args.variants.join(", ")
                    );
                }
            }
            Some((
                spec,
                std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
            ))
        }
        None if !args.variants.is_empty() => {
            bail!("--variant: only with --attacks (physical datasets have no spec variants)")
        }
        None => None,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut cells = match &spec {
        Some((spec, _)) => {
            let mut clean: Vec<_> = samples
                .into_iter()
                .filter(|s| s.attack_text.is_none())
                .collect();
            if args.shuffle {
                clean.shuffle(&mut rng);
            }
            if let Some(n) = args.limit {
                clean.truncate(n);
            }
            rendered_cells(&clean, &spec.variants, args.seed)
        }
        None => {
            let mut cells = physical_cells(&samples);
            if args.shuffle {
                cells.shuffle(&mut rng);
            }
            if let Some(n) = args.limit {
                cells.truncate(n);
            }
            cells
        }
    };
    if spec.is_none() {
        defenses.check_physical()?;
    }
    if cells.is_empty() {
        bail!(
            "{}: dataset `{}` gives nothing to evaluate: no (clean, attacked) photo pairs{}",
            dataset_path.display(),
            descriptor.name,
            if spec.is_some() {
                " and no clean images"
            } else {
                "; give --attacks SPEC to render attacks on its images"
            }
        );
    }
    let templates = defenses.transform_templates(TemplateSet::resolve(&args.templates)?);
    let label_spec = args
        .labels
        .clone()
        .unwrap_or_else(|| descriptor.labels.clone());
    let mut labels = if label_spec == "dataset" {
        // The classes found in the data: every object and every written word.
        let names: BTreeSet<String> = cells
            .iter()
            .flat_map(|c| [c.true_label.clone(), c.target.clone()])
            .flatten()
            .collect();
        LabelSet {
            name: format!("{}/dataset", descriptor.name),
            classes: names
                .into_iter()
                .map(|name| ClassLabel { name, wnid: None })
                .collect(),
        }
    } else {
        let as_file = label_base.join(&label_spec);
        LabelSet::resolve(if as_file.is_file() {
            as_file.to_str().unwrap_or(&label_spec)
        } else {
            &label_spec
        })?
    };
    // Every attack target must be a class the classifier can predict.
    for t in cells
        .iter()
        .filter_map(|c| c.target.as_ref())
        .collect::<BTreeSet<_>>()
    {
        if labels.index_of_name(t).is_none() {
            labels.classes.push(ClassLabel {
                name: t.clone(),
                wnid: None,
            });
            labels.name = format!("{}+targets", labels.name.trim_end_matches("+targets"));
        }
    }
    // True labels: the label set's own spelling, found by WordNet id where the dataset has one.
    for c in cells.iter_mut() {
        if let Some(i) = c
            .clean
            .wnid
            .as_deref()
            .and_then(|w| labels.index_of_wnid(w))
        {
            c.true_label = Some(labels.classes[i].name.clone());
        }
    }
    if defenses.any_fitted() {
        defenses.check_disjoint(&eval_set(&cells, spec.as_ref().map(|(s, _)| s))?)?;
    }
    let linear_probe = match &args.probe {
        Some(p) => Some((crate::probe::linear::LinearProbe::load(p)?, p)),
        None => None,
    };
    let text_detector = if args.text_area {
        let settings = crate::ocr::DetectorSettings::default();
        let d =
            crate::ocr::TextDetector::load(&crate::ocr::model_path(), settings, tch::Device::Cpu)
                .map_err(|e| anyhow::anyhow!("--text-area: {e}"))?;
        Some(std::sync::Arc::new(d))
    } else {
        None
    };
    let text_note = text_detector.as_ref().map(|d| {
        format!(
            "{} sha256 {} thresh {} box_thresh {} unclip {}",
            crate::ocr::MODEL_NAME,
            crate::ocr::MODEL_SHA256,
            d.settings.db.thresh,
            d.settings.db.box_thresh,
            d.settings.db.unclip_ratio
        )
    });
    if shape == Some(FolderShape::Unlabelled) && spec.is_none() {
        bail!(
            "{}: a folder of unlabelled images has no attacks in its photos: give --attacks SPEC",
            dataset_path.display()
        );
    }
    let model_args = ModelArgs {
        model: run.model.spec.clone(),
        arch: run.model.arch.clone(),
        device: run.model.device.clone(),
        cache_dir: run.model.cache_dir.clone(),
    };
    let mut m = open_model_or_random(&model_args, run.model.fallback_random)?;
    defenses.check_model(&m.model, &m.cache_id())?;
    defenses.adapt_model(&mut m.model)?;
    let probe_note = match &linear_probe {
        Some((probe, path)) => {
            if probe.model_id != m.cache_id() {
                bail!(
                    "{}: model_id: the probe was fitted on `{}` ({}), this sweep uses `{}` ({})",
                    path.display(),
                    probe.model,
                    probe.model_id,
                    m.spec,
                    m.cache_id()
                );
            }
            if probe.dim() as i64 != m.model.config().embed_dim {
                bail!(
                    "{}: weight: rows of {} for embeddings of {}",
                    path.display(),
                    probe.dim(),
                    m.model.config().embed_dim
                );
            }
            let sha = crate::model::load::sha256_file(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            Some(format!("{} (sha256 {sha})", path.display()))
        }
        None => None,
    };
    if !m.uses_clip_bpe() && defenses.records().iter().any(|r| r.name == "prefix") {
        bail!(
            "--defense prefix: the prefix replaces a CLIP BPE token, and this model's text tower \
             takes another tokenizer"
        );
    }
    let tok = m.tokenizer()?;
    let cache = TextCache::new(cache_dir(run.model.cache_dir.as_deref()).join("text-classifiers"));
    // Defenses that change the text tower's output (weight interpolation) key their own entries.
    let text_id = match defenses.text_cache_tag() {
        Some(tag) => format!("{}+{tag}", m.cache_id()),
        None => m.cache_id(),
    };
    let (classifier, _) = cache.load_or_build(&text_id, &m.model, &*tok, labels, templates)?;
    let classifier = defenses.transform_classifier(&m.model, &ClipTokenizer::new(), classifier)?;
    let ids: Vec<_> = cells
        .iter()
        .flat_map(|c| [c.clean.clone(), c.attacked.clone()])
        .collect();
    let workers = args
        .workers
        .unwrap_or_else(crate::sweep::default_workers)
        .max(1);
    let mut provenance = Provenance {
        warning: m.random_warning(),
        typoclip_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("TYPOCLIP_GIT_COMMIT").into(),
        model: m.spec.clone(),
        model_id: m.cache_id(),
        random_weights: m.random,
        toy_model: m.toy,
        dataset: descriptor.name.clone(),
        dataset_descriptor: descriptor_text,
        data_root: (descriptor.kind != crate::dataset::descriptor::DatasetKind::Builtin)
            .then(|| std::path::absolute(&root).unwrap_or(root.clone()))
            .map(|p| p.display().to_string()),
        file_list_hash: file_list_hash(&ids),
        cells: cells.len(),
        attack: match &spec {
            Some((_, text)) => text.clone(),
            None => format!(
                "physical ({:?}: attacks already in the photos)",
                descriptor.kind
            ),
        },
        attack_path: args.attacks.as_ref().map(|p| {
            std::path::absolute(p)
                .unwrap_or(p.clone())
                .display()
                .to_string()
        }),
        image_size: Some(m.model.image_resolution() as u32),
        image_transform: m.nondefault_transform(),
        mode: match mode {
            EvalMode::Zeroshot => "zeroshot",
            EvalMode::Binary => "binary",
        }
        .into(),
        labels: classifier.labels.name.clone(),
        labels_hash: classifier.labels.hash(),
        templates: classifier.templates.name.clone(),
        templates_hash: classifier.templates.hash(),
        seed: args.seed,
        batch_size: args.batch_size,
        cpu_kernels: crate::model::kernels::cpu_linear().name().into(),
        threads: tch::get_num_threads(),
        workers,
        precision: precision.name().into(),
        composite: None,
        scoring: classifier.scoring().into(),
        variant_filter: args.variants.join(","),
        libtorch_version: LIBTORCH_VERSION.into(),
        defenses: defenses.records(),
        started: now_rfc3339(),
        finished: None,
        linear_probe: probe_note,
        text_detector: text_note,
        model_parameters: Some(m.model.parameter_count() as u64),
        shard: run.shard.map(|s| {
            let r = s.cell_range(cells.len(), run.batch_size);
            ShardRecord {
                index: s.index,
                count: s.count,
                first_cell: r.start,
                end_cell: r.end,
            }
        }),
        merged_shards: None,
    };
    let settings = SweepSettings {
        out_dir: run.run_dir(),
        mode,
        batch_size: args.batch_size,
        workers,
        resume: args.resume,
        progress: run.progress,
        precision,
        defenses: std::sync::Arc::new(defenses),
        linear_probe: linear_probe.map(|(p, _)| std::sync::Arc::new(p)),
        text_detector,
        composite_on_device: run.composite.on_device(m.model.device()),
    };
    provenance.composite = settings.composites_on_device().then(|| "device".into());
    if banner {
        eprintln!("{}", m.banner_line());
    }
    let range = match run.shard {
        Some(s) => s.cell_range(cells.len(), run.batch_size),
        None => 0..cells.len(),
    };
    let summary = run_cells(&m.model, &classifier, &cells, range, &settings, &provenance)?;
    Ok(Executed {
        summary,
        banner: m.banner_line(),
        defenses: provenance.defenses.iter().map(|d| d.spec.clone()).collect(),
    })
}

/// Keeps the samples whose class (label or WordNet id) is in the comma-separated `list`;
/// a class that matches no sample is an error naming it.
fn filter_classes(
    samples: Vec<crate::dataset::descriptor::Sample>,
    list: &str,
    dataset: &std::path::Path,
) -> Result<Vec<crate::dataset::descriptor::Sample>> {
    let wanted: Vec<String> = list
        .split(',')
        .map(|c| c.trim().to_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    if wanted.is_empty() {
        bail!("--classes: empty list");
    }
    let class_of = |s: &crate::dataset::descriptor::Sample| {
        [s.label.as_deref(), s.wnid.as_deref()]
            .into_iter()
            .flatten()
            .map(|c| c.to_lowercase())
            .collect::<Vec<_>>()
    };
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !samples.iter().any(|s| class_of(s).contains(w)))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: --classes: no sample of class {}",
            dataset.display(),
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(samples
        .into_iter()
        .filter(|s| class_of(s).iter().any(|c| wanted.contains(c)))
        .collect())
}

/// What the evaluation shows, for the calibration disjointness check of fitted defenses: the
/// content hash of every image, the words (rendered texts and targets, or the words written in
/// the photos) and the fonts (rendered attacks only).
fn eval_set(cells: &[Cell], spec: Option<&crate::attack::AttackSpec>) -> Result<EvalSet> {
    let mut seen = BTreeSet::new();
    let mut images = Vec::new();
    for s in cells.iter().flat_map(|c| [&c.clean, &c.attacked]) {
        if seen.insert(s.path.clone()) {
            // Unreadable files become error records later; they cannot leak calibration images.
            if let Ok(h) = crate::model::load::sha256_file(&s.path) {
                images.push((s.id.clone(), h));
            }
        }
    }
    let (mut words, fonts) = match spec {
        Some(spec) => variant_words_and_fonts(&spec.variants),
        None => Default::default(),
    };
    words.extend(
        cells
            .iter()
            .filter_map(|c| c.target.as_ref().map(|t| t.to_lowercase())),
    );
    Ok(EvalSet {
        images,
        words,
        fonts,
    })
}
