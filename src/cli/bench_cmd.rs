//! `typoclip bench PLAN`: runs a comparison plan (`attacks/defense-bench.toml`) in one command —
//! fits the fitted defenses once on the plan's calibration split, then sweeps every
//! (attack, defense set) into its own run folder `OUT/<attack>/<defense>` (resuming folders that
//! already hold records), and writes `OUT/bench.json`, the index of the runs for
//! `typoclip compare`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::args::{ModelArgs, SweepArgs};
use super::fit_cmd::FitArgs;
use crate::model::VisionConfig;

/// `typoclip bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The comparison plan (e.g. `attacks/defense-bench.toml`).
    pub plan: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder of the run folders.
    #[arg(long)]
    pub out: PathBuf,
    /// Override the plan's evaluation dataset.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Override the plan's image limit.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only these defense entries (comma-separated names).
    #[arg(long)]
    pub only: Option<String>,
    /// Cells per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Decode/render/preprocess threads [default: one per CPU]. On the CPU they wait while the
    /// model runs a forward pass, so they never preempt its threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// A comparison plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchPlan {
    /// One line.
    pub description: String,
    /// Evaluation dataset descriptor (relative to the plan).
    pub dataset: PathBuf,
    /// Attack specs (relative to the plan).
    pub attacks: Vec<PathBuf>,
    /// Images per run.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Shuffle before the limit.
    #[serde(default)]
    pub shuffle: bool,
    /// Seed of the sweeps.
    #[serde(default)]
    pub seed: u64,
    /// Where fitted defenses are fitted.
    #[serde(default)]
    pub calibration: Option<BenchCalibration>,
    /// The defense sets.
    pub defenses: Vec<BenchDefense>,
}

/// The calibration split of a plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchCalibration {
    /// Dataset descriptor (relative to the plan).
    pub dataset: PathBuf,
    /// Calibration words.
    pub words: Vec<String>,
    /// Calibration fonts.
    pub fonts: Vec<String>,
    /// Seed of the placements.
    #[serde(default)]
    pub seed: u64,
}

/// One defense set of a plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchDefense {
    /// Run folder name.
    pub name: String,
    /// `--defense` specs; `{fitted:KIND}` is replaced by the fitted artifact.
    pub specs: Vec<String>,
    /// Skipped for ResNet models.
    #[serde(default)]
    pub vit_only: bool,
}

/// One run of `bench.json`.
#[derive(Debug, Serialize)]
struct BenchRun {
    attack: String,
    defense: String,
    specs: Vec<String>,
    run: String,
}

const FITTED_KINDS: [&str; 3] = ["projection", "heads", "prefix"];

fn fitted_kinds(spec: &str) -> Vec<&'static str> {
    FITTED_KINDS
        .iter()
        .copied()
        .filter(|k| spec.contains(&format!("{{fitted:{k}}}")))
        .collect()
}

fn model_args(m: &ModelArgs) -> ModelArgs {
    ModelArgs {
        model: m.model.clone(),
        arch: m.arch.clone(),
        device: m.device.clone(),
        cache_dir: m.cache_dir.clone(),
    }
}

/// Reads and checks a plan (every defense spec that needs no fitted artifact is validated).
pub fn load_plan(path: &Path) -> Result<BenchPlan> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let plan: BenchPlan =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut names = BTreeSet::new();
    for d in &plan.defenses {
        if !names.insert(d.name.as_str()) {
            bail!("{}: defenses: `{}` appears twice", path.display(), d.name);
        }
        if d.name.is_empty() || d.name.contains(['/', '\\']) {
            bail!("{}: defenses: bad name `{}`", path.display(), d.name);
        }
        for s in &d.specs {
            if s.contains("{fitted:") {
                if fitted_kinds(s).is_empty() {
                    bail!(
                        "{}: defenses.{}: `{s}`: {{fitted:KIND}} takes one of {}",
                        path.display(),
                        d.name,
                        FITTED_KINDS.join(", ")
                    );
                }
                if plan.calibration.is_none() {
                    bail!(
                        "{}: defenses.{}: fitted defenses need a [calibration] table",
                        path.display(),
                        d.name
                    );
                }
            } else {
                crate::defense::parse_defense(s)
                    .map_err(|e| anyhow::anyhow!("{}: defenses.{}: {e}", path.display(), d.name))?;
            }
        }
    }
    if plan.attacks.is_empty() {
        bail!("{}: attacks: give at least one attack spec", path.display());
    }
    Ok(plan)
}

/// Runs `typoclip bench`.
pub fn run_bench(args: BenchArgs) -> Result<()> {
    let plan = load_plan(&args.plan)?;
    let base = args.plan.parent().unwrap_or(Path::new(".")).to_path_buf();
    let only: Option<BTreeSet<String>> = args
        .only
        .as_ref()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    if let Some(only) = &only {
        for n in only {
            if !plan.defenses.iter().any(|d| &d.name == n) {
                bail!("--only: no defense entry `{n}` in {}", args.plan.display());
            }
        }
    }
    let mut entries: Vec<&BenchDefense> = plan
        .defenses
        .iter()
        .filter(|d| only.as_ref().is_none_or(|o| o.contains(&d.name)))
        .collect();
    if entries.iter().any(|d| d.vit_only) {
        let m = super::resolve::open_model(&args.model)?;
        if !matches!(
            m.model.config().vision,
            VisionConfig::VisionTransformer { .. }
        ) {
            entries.retain(|d| {
                if d.vit_only {
                    eprintln!("skipping {} (ViT models only)", d.name);
                }
                !d.vit_only
            });
        }
    }
    // Fit what the selected entries need, once.
    let needed: BTreeSet<&str> = entries
        .iter()
        .flat_map(|d| d.specs.iter().flat_map(|s| fitted_kinds(s)))
        .collect();
    let fitted_dir = args.out.join("fitted");
    for kind in &needed {
        let artifact = fitted_dir.join(format!("{kind}.json"));
        if artifact.exists() {
            eprintln!("using {} (already fitted)", artifact.display());
            continue;
        }
        let c = plan.calibration.as_ref().expect("checked by load_plan");
        eprintln!("fitting {kind} → {}", artifact.display());
        super::fit_cmd::run_fit(FitArgs {
            kind: kind.to_string(),
            model: model_args(&args.model),
            dataset: base.join(&c.dataset),
            data_root: None,
            words: c.words.join(","),
            fonts: c.fonts.join(","),
            label_width: None,
            ablation: crate::defense::heads::Ablation::Zero,
            keep_means: 16,
            limit: None,
            shuffle: false,
            seed: c.seed,
            templates: "single".into(),
            k: 4,
            learned: false,
            steps: 100,
            lr: 2e-3,
            preserve_weight: 1.0,
            batch_size: args.batch_size,
            out: Some(artifact),
            quiet: args.quiet,
        })
        .with_context(|| format!("fitting {kind} for {}", args.plan.display()))?;
    }
    let dataset = args
        .dataset
        .clone()
        .unwrap_or_else(|| base.join(&plan.dataset));
    let mut runs = Vec::new();
    for attack in &plan.attacks {
        let stem = attack
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for d in &entries {
            let specs: Vec<String> = d
                .specs
                .iter()
                .map(|s| {
                    FITTED_KINDS.iter().fold(s.clone(), |s, k| {
                        s.replace(
                            &format!("{{fitted:{k}}}"),
                            &fitted_dir.join(format!("{k}.json")).display().to_string(),
                        )
                    })
                })
                .collect();
            let out = args.out.join(&stem).join(&d.name);
            let resume = out.join("records.jsonl").exists();
            eprintln!(
                "{stem} × {}{}",
                d.name,
                if resume { " (resuming)" } else { "" }
            );
            super::sweep_cmd::run_sweep(SweepArgs {
                model: model_args(&args.model),
                dataset: Some(dataset.clone()),
                builtin: false,
                fallback_random: false,
                fallback_toy: false,
                report: false,
                data_root: None,
                out: out.clone(),
                attacks: Some(base.join(attack)),
                mode: "zeroshot".into(),
                labels: None,
                templates: "single".into(),
                limit: args.limit.or(plan.limit),
                shuffle: plan.shuffle,
                seed: plan.seed,
                batch_size: args.batch_size,
                workers: args.workers,
                threads: None,
                resume,
                quiet: args.quiet,
                json: false,
                defense: specs.clone(),
                variant: Vec::new(),
                classes: None,
                precision: "fp32".into(),
                composite: crate::sweep::Composite::Auto,
                probe: None,
                text_area: false,
                shard: None,
                merge: false,
            })
            .with_context(|| format!("{stem} × {}", d.name))?;
            runs.push(BenchRun {
                attack: stem.clone(),
                defense: d.name.clone(),
                specs,
                run: out.display().to_string(),
            });
        }
    }
    let index = serde_json::json!({
        "plan": args.plan.display().to_string(),
        "description": plan.description,
        "runs": runs,
    });
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_vec_pretty(&index)?,
    )
    .with_context(|| args.out.join("bench.json").display().to_string())?;
    println!(
        "{} runs in {} (index: bench.json)",
        runs.len(),
        args.out.display()
    );
    Ok(())
}
