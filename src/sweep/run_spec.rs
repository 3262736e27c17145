//! [`RunSpec`]: one sweep, fully resolved into typed settings — what `typoclip sweep` builds
//! from its arguments and what a plan ([`crate::plan`]) builds for each of its jobs. The
//! command line turns into a `RunSpec` in `cli::sweep_cmd::resolve`; the sweep itself only
//! ever sees a `RunSpec` (`cli::sweep_cmd::execute`), so a plan's job and the same sweep typed
//! by hand are the same run. [`RunSpec::to_args`] writes it back as `typoclip sweep`
//! arguments, for `jobs.tsv`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::shard::Shard;
use super::{EvalMode, Precision};

/// The model of a run, as given (resolved when the run starts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChoice {
    /// A checkpoint path, a known name, `random:<arch>[:seed]`; `None`: the cached default.
    pub spec: Option<String>,
    /// `--arch`: the architecture of a checkpoint that does not say it.
    pub arch: Option<String>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// The checkpoint cache folder (default `$XDG_CACHE_HOME/typoclip`).
    pub cache_dir: Option<PathBuf>,
    /// Fall back to `random:ViT-B-32` when no model is given and the default is not cached.
    pub fallback_random: bool,
}

/// One sweep, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// The model.
    pub model: ModelChoice,
    /// Dataset descriptor or folder; `None`: the built-in images.
    pub dataset: Option<PathBuf>,
    /// Override of the descriptor's data folder.
    pub data_root: Option<PathBuf>,
    /// The run folder (a shard writes into `out/shards/I-of-N`).
    pub out: PathBuf,
    /// Attack spec rendered on the clean images; `None`: the photos' physical attacks.
    pub attacks: Option<PathBuf>,
    /// Scoring mode.
    pub mode: EvalMode,
    /// Label set override.
    pub labels: Option<String>,
    /// Template set.
    pub templates: String,
    /// At most this many images (rendered) or pairs (physical).
    pub limit: Option<usize>,
    /// Variant name patterns (empty: every variant).
    pub variants: Vec<String>,
    /// Classes kept (comma-separated).
    pub classes: Option<String>,
    /// Image-tower arithmetic.
    pub precision: Precision,
    /// Where image-independent variants are drawn.
    pub composite: super::Composite,
    /// Shuffle before the limit.
    pub shuffle: bool,
    /// Seed of every random choice.
    pub seed: u64,
    /// Cells per batch.
    pub batch_size: usize,
    /// Image workers (`None`: one per CPU).
    pub workers: Option<usize>,
    /// libtorch intra-op threads (`None`: libtorch's default, or on resume the count the run
    /// started with; see [`RunSpec::pin_threads`]).
    pub threads: Option<usize>,
    /// Continue a run already in the folder.
    pub resume: bool,
    /// `--defense` specs, validated, in the order given.
    pub defenses: Vec<String>,
    /// Linear probe file.
    pub probe: Option<PathBuf>,
    /// Run the text detector on each attacked input (`--text-area`).
    pub text_area: bool,
    /// This run's shard of the sweep (`None`: all of it).
    pub shard: Option<Shard>,
    /// Show a progress bar.
    pub progress: bool,
}

impl RunSpec {
    /// Sets libtorch's thread count for this run and returns it. Records are bit-identical only
    /// between runs at the same count (libtorch's reductions split by thread), so the count is
    /// part of the run: `--threads`, or — resuming a run whose provenance records one — the
    /// count it started with, whatever this machine's default (a requeued job on another node
    /// still resumes to the same bytes). A `--threads` that contradicts the recorded count is
    /// refused in one line naming the file.
    pub fn pin_threads(&self) -> anyhow::Result<i32> {
        let recorded = if self.resume {
            let path = self.run_dir().join("provenance.json");
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get("threads").and_then(serde_json::Value::as_i64))
                .map(|t| (t as i32, path))
        } else {
            None
        };
        let wanted = match (self.threads, recorded) {
            (Some(t), Some((r, path))) if t as i32 != r => anyhow::bail!(
                "--threads {t}: {} records a run started with {r} libtorch threads, and its \
                 records are bit-identical only at that count (resume without --threads)",
                path.display()
            ),
            (Some(t), _) => Some(t as i32),
            (None, Some((r, _))) => Some(r),
            (None, None) => None,
        };
        if let Some(t) = wanted.filter(|&t| t >= 1) {
            tch::set_num_threads(t);
        }
        Ok(tch::get_num_threads())
    }

    /// The folder this run writes into: `out`, or its shard's folder inside it.
    pub fn run_dir(&self) -> PathBuf {
        match self.shard {
            Some(s) => s.dir(&self.out),
            None => self.out.clone(),
        }
    }

    /// The `typoclip sweep` arguments that resolve to this spec (without the program name).
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["sweep".into()];
        let mut push = |k: &str, v: String| {
            a.push(k.into());
            a.push(v);
        };
        if let Some(m) = &self.model.spec {
            push("--model", m.clone());
        }
        if let Some(a) = &self.model.arch {
            push("--arch", a.clone());
        }
        if self.model.device != "cpu" {
            push("--device", self.model.device.clone());
        }
        if let Some(c) = &self.model.cache_dir {
            push("--cache-dir", c.display().to_string());
        }
        if let Some(d) = &self.dataset {
            push("--dataset", d.display().to_string());
        }
        if let Some(d) = &self.data_root {
            push("--data-root", d.display().to_string());
        }
        push("--out", self.out.display().to_string());
        if let Some(p) = &self.attacks {
            push("--attacks", p.display().to_string());
        }
        if self.mode != EvalMode::Zeroshot {
            push("--mode", "binary".into());
        }
        if let Some(l) = &self.labels {
            push("--labels", l.clone());
        }
        if self.templates != "single" {
            push("--templates", self.templates.clone());
        }
        if let Some(n) = self.limit {
            push("--limit", n.to_string());
        }
        for v in &self.variants {
            push("--variant", v.clone());
        }
        if let Some(c) = &self.classes {
            push("--classes", c.clone());
        }
        if self.precision != Precision::Fp32 {
            push("--precision", self.precision.name().into());
        }
        if self.composite != super::Composite::Auto {
            push("--composite", self.composite.name().into());
        }
        if self.seed != 0 {
            push("--seed", self.seed.to_string());
        }
        if self.batch_size != 16 {
            push("--batch-size", self.batch_size.to_string());
        }
        if let Some(w) = self.workers {
            push("--workers", w.to_string());
        }
        if let Some(t) = self.threads {
            push("--threads", t.to_string());
        }
        for d in &self.defenses {
            push("--defense", d.clone());
        }
        if let Some(p) = &self.probe {
            push("--probe", p.display().to_string());
        }
        if let Some(s) = self.shard {
            push("--shard", s.to_string());
        }
        if self.model.fallback_random {
            a.push("--fallback-random".into());
        }
        if self.text_area {
            a.push("--text-area".into());
        }
        if self.shuffle {
            a.push("--shuffle".into());
        }
        if self.resume {
            a.push("--resume".into());
        }
        if !self.progress {
            a.push("--quiet".into());
        }
        if self.dataset.is_none() {
            a.push("--builtin".into());
        }
        a
    }
}
