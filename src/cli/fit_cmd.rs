//! `typoclip fit projection|heads|prefix`: renders a calibration set (clean images of a dataset
//! × calibration words × fonts, through the model's own image transform), fits the defense on it and writes the artifact (JSON) that
//! `sweep --defense NAME:file=ARTIFACT` reads. The artifact records the calibration split
//! (image ids and content hashes, words, fonts, seed, model) so sweeps can refuse evaluations
//! that overlap it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use super::args::ModelArgs;
use super::resolve::open_model;
use crate::dataset::descriptor::DatasetDescriptor;
use crate::defense::calibration::{
    build_calibration_set, Artifact, CalibrationWords, LabelSize, ARTIFACT_FORMAT,
};
use crate::defense::fit::{
    fit_heads, fit_learned_projection, fit_prefix, fit_projection, HeadFitSettings, PrefixSettings,
};
use crate::defense::heads::Ablation;
use crate::tokenizer::ClipTokenizer;
use crate::zeroshot::TemplateSet;

fn parse_ablation(s: &str) -> Result<Ablation, String> {
    Ablation::parse(s).ok_or_else(|| format!("{s:?} is not zero or mean"))
}

/// `typoclip fit`.
#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// What to fit: `projection` (reading subspace), `heads` (typographic heads, ViT only) or
    /// `prefix` (defense prefix; needs labelled images).
    pub kind: String,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dataset descriptor whose clean images form the calibration set (keep it disjoint from
    /// the evaluation: sweeps refuse shared images, words and fonts).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Override the descriptor's data folder.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Calibration words, comma-separated (each rendered on every image in every font).
    #[arg(long, default_value = "banana,violin,umbrella,tractor,candle")]
    pub words: String,
    /// Calibration fonts, comma-separated (bundled names or font files).
    #[arg(long, default_value = "mono,comic,handwriting-caps")]
    pub fonts: String,
    /// Write the calibration labels so that the word spans this fraction of the image width
    /// (as `width_frac` in attack specs) instead of a font size of 12 % of the side.
    #[arg(long)]
    pub label_width: Option<f64>,
    /// `--kind heads`: take each head out by `zero`ing its output or by replacing it with its
    /// `mean` over the clean calibration images (mean-ablation; the artifact then stores the
    /// means of the best --keep-means heads).
    #[arg(long, default_value = "zero", value_parser = parse_ablation)]
    pub ablation: Ablation,
    /// `--kind heads --ablation mean`: how many of the best heads' means the artifact keeps
    /// (the most a `heads:k=K` defense can take out).
    #[arg(long, default_value_t = 16)]
    pub keep_means: usize,
    /// Use at most N clean images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Shuffle the images (with --seed) before --limit.
    #[arg(long)]
    pub shuffle: bool,
    /// Seed of the shuffle and the placements.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Template set of the calibration classifier (heads, prefix).
    #[arg(long, default_value = "single")]
    pub templates: String,
    /// projection: number of directions kept.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// projection: learn a linear map with autograd (needs labelled images; uses --steps,
    /// --lr and --preserve-weight as the weight of ‖W − I‖²) instead of the training-free
    /// subspace.
    #[arg(long)]
    pub learned: bool,
    /// prefix: optimisation steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// prefix: Adam learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// prefix: weight of the class-preserving loss.
    #[arg(long, default_value_t = 1.0)]
    pub preserve_weight: f64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Artifact file to write (JSON); default `results/fitted/KIND.json`, where
    /// `--defense KIND` looks when given no `file=`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Runs `typoclip fit`.
pub fn run_fit(args: FitArgs) -> Result<()> {
    if !["projection", "heads", "prefix"].contains(&args.kind.as_str()) {
        bail!(
            "fit: `{}` is not one of projection, heads, prefix",
            args.kind
        );
    }
    if args.learned && args.kind != "projection" {
        bail!("--learned: applies to `fit projection` only");
    }
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    let words = list(&args.words);
    let fonts = list(&args.fonts);
    if words.is_empty() {
        bail!("--words: give at least one calibration word");
    }
    if fonts.is_empty() {
        bail!("--fonts: give at least one calibration font");
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(crate::defense::calibration::default_artifact(&args.kind))
    });
    let templates = TemplateSet::resolve(&args.templates)?;
    let (descriptor, mut root) = DatasetDescriptor::load(&args.dataset)?;
    if let Some(r) = &args.data_root {
        root = r.clone();
    }
    let mut samples: Vec<_> = descriptor
        .samples(&root)?
        .into_iter()
        .filter(|s| s.attack_text.is_none())
        .collect();
    if args.shuffle {
        samples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed));
    }
    if let Some(n) = args.limit {
        samples.truncate(n);
    }
    if samples.is_empty() {
        bail!(
            "{}: no clean images to calibrate on",
            args.dataset.display()
        );
    }
    let mut m = open_model(&args.model)?;
    if !args.quiet {
        eprintln!("{}", m.banner_line());
    }
    let model_id = m.cache_id();
    let label_size = match args.label_width {
        Some(f) if (0.01..=1.0).contains(&f) => LabelSize::WidthFrac(f),
        Some(f) => bail!("--label-width: {f} is out of range [0.01, 1]"),
        None => LabelSize::default(),
    };
    let set = build_calibration_set(
        &descriptor.name,
        &samples,
        CalibrationWords {
            words: &words,
            fonts: &fonts,
            size: label_size,
        },
        args.seed,
        &m.preprocess,
        &model_id,
    )?;
    let mut fit: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    fit.insert("attacked_images".into(), json!(set.items.len()));
    let data = match args.kind.as_str() {
        "projection" if args.learned => {
            let settings = PrefixSettings {
                steps: args.steps,
                lr: args.lr,
                preserve_weight: args.preserve_weight,
            };
            let tok = m.tokenizer()?;
            let r = fit_learned_projection(
                &m.model,
                &*tok,
                &set,
                &templates,
                &settings,
                args.batch_size,
            )
            .map_err(anyhow::Error::msg)?;
            fit.insert("form".into(), json!("learned"));
            fit.insert("templates".into(), json!(templates.name));
            fit.insert("steps".into(), json!(settings.steps));
            fit.insert("lr".into(), json!(settings.lr));
            fit.insert("identity_weight".into(), json!(settings.preserve_weight));
            fit.insert("loss_before".into(), json!(r.losses.first()));
            fit.insert("loss_after".into(), json!(r.losses.last()));
            fit.insert("losses".into(), json!(r.losses));
            let d = r.matrix.size()[0];
            let rows: Vec<Vec<f32>> = (0..d)
                .map(|i| Vec::<f32>::try_from(r.matrix.get(i)).expect("f32"))
                .collect();
            json!({"dim": d, "matrix": rows})
        }
        "projection" => {
            fit.insert("form".into(), json!("subspace"));
            let (basis, singular) = fit_projection(&m.model, &set, args.k, args.batch_size);
            fit.insert("k".into(), json!(basis.size()[0]));
            fit.insert(
                "singular_values".into(),
                json!(Vec::<f32>::try_from(&singular)?),
            );
            let rows: Vec<Vec<f32>> = (0..basis.size()[0])
                .map(|i| Vec::<f32>::try_from(basis.get(i)).expect("f32"))
                .collect();
            json!({"dim": basis.size()[1], "basis": rows})
        }
        "heads" => {
            let quiet = args.quiet;
            let tok = m.tokenizer()?;
            let ablation = args.ablation;
            let r = fit_heads(
                &m.model,
                &*tok,
                &set,
                &templates,
                HeadFitSettings {
                    batch_size: args.batch_size,
                    ablation,
                    keep_means: args.keep_means,
                },
                &|done, total| {
                    if !quiet {
                        eprint!("\rscoring heads: {done}/{total}");
                        if done == total {
                            eprintln!();
                        }
                    }
                },
            )
            .map_err(anyhow::Error::msg)?;
            fit.insert("templates".into(), json!(templates.name));
            fit.insert("p_word_baseline".into(), json!(r.baseline.0));
            fit.insert("asr_baseline".into(), json!(r.baseline.1));
            match ablation {
                Ablation::Zero => json!({"heads": r.scores, "ablation": ablation}),
                Ablation::Mean => {
                    json!({"heads": r.scores, "ablation": ablation, "means": r.means})
                }
            }
        }
        _ => {
            let settings = PrefixSettings {
                steps: args.steps,
                lr: args.lr,
                preserve_weight: args.preserve_weight,
            };
            if !m.uses_clip_bpe() {
                bail!(
                    "--kind prefix: the prefix is learned in place of a CLIP BPE token, and \
                     this model's text tower takes another tokenizer"
                );
            }
            let tok = ClipTokenizer::new();
            let r = fit_prefix(
                &mut m.model,
                &tok,
                &set,
                &templates,
                &settings,
                args.batch_size,
            )
            .map_err(anyhow::Error::msg)?;
            fit.insert("templates".into(), json!(templates.name));
            fit.insert("steps".into(), json!(settings.steps));
            fit.insert("lr".into(), json!(settings.lr));
            fit.insert("preserve_weight".into(), json!(settings.preserve_weight));
            fit.insert("loss_before".into(), json!(r.losses.first()));
            fit.insert("loss_after".into(), json!(r.losses.last()));
            fit.insert("losses".into(), json!(r.losses));
            json!({
                "placeholder": crate::defense::prefix::PLACEHOLDER,
                "width": r.embedding.size()[0],
                "embedding": Vec::<f32>::try_from(&r.embedding)?,
            })
        }
    };
    let artifact = Artifact {
        format: ARTIFACT_FORMAT.into(),
        kind: args.kind.clone(),
        warning: m.random_warning(),
        typoclip_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("TYPOCLIP_GIT_COMMIT").into(),
        model: m.spec.clone(),
        random_weights: m.random,
        calibration: set.record.clone(),
        fit,
        data,
    };
    artifact.write(&out)?;
    println!("{}", m.banner_line());
    println!(
        "fitted {} on {} images × {} words × {} fonts ({} attacked images) → {}",
        args.kind,
        set.clean.len(),
        set.record.words.len(),
        set.record.fonts.len(),
        set.items.len(),
        out.display()
    );
    Ok(())
}
