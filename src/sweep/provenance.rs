//! `provenance.json`: everything needed to know what a run was and to refuse resuming it with
//! different inputs — typoclip version and commit, model (spec, sha256, random-weights flag),
//! dataset (descriptor verbatim, file-list hash), the image transform when it is not OpenAI's,
//! label and template sets (hashes), seeds,
//! threads, batch size, libtorch version, the defenses (with their parameters and, for fitted
//! ones, artifact and calibration split), start and end times.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::SweepError;

/// The libtorch release typoclip is built against (the one `tch 0.26.0` requires).
pub const LIBTORCH_VERSION: &str = "2.13.0";

/// A run's provenance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// Present (and first) when the weights are random.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub warning: Option<String>,
    /// typoclip version.
    pub typoclip_version: String,
    /// Git commit typoclip was built from.
    pub git_commit: String,
    /// `--model` as resolved.
    pub model: String,
    /// sha256 of the checkpoint, or the random spec.
    pub model_id: String,
    /// True for random weights.
    pub random_weights: bool,
    /// True for the positive-control toy typoclip trained (`--model toy`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub toy_model: bool,
    /// Dataset name.
    pub dataset: String,
    /// Dataset descriptor file, verbatim.
    pub dataset_descriptor: String,
    /// The data folder the samples were read from (absolute), so reports can show them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data_root: Option<String>,
    /// sha256 over the evaluated sample ids.
    pub file_list_hash: String,
    /// Number of cells (image, variant).
    pub cells: usize,
    /// Attack spec, verbatim (physical attacks: the dataset kind).
    pub attack: String,
    /// The attack spec file (its folder resolves relative font paths), when one was given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attack_path: Option<String>,
    /// The model's input size in pixels.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_size: Option<u32>,
    /// The image transform the model was trained with and the run applied, when it is not
    /// OpenAI's at [`Provenance::image_size`] (absent: OpenAI's; see [`Provenance::transform`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_transform: Option<crate::preprocess::PreprocessCfg>,
    /// Scoring mode.
    pub mode: String,
    /// Label set name and hash.
    pub labels: String,
    /// Label set hash.
    pub labels_hash: String,
    /// Template set name.
    pub templates: String,
    /// Template set hash.
    pub templates_hash: String,
    /// Seed of every random choice (shuffle, random weights).
    pub seed: u64,
    /// Cells per batch.
    pub batch_size: usize,
    /// `--variant` patterns (comma-joined; empty: every variant of the spec).
    #[serde(default)]
    pub variant_filter: String,
    /// Image-tower arithmetic (`fp32`, or `bf16` / `fp16` when asked for).
    #[serde(default = "default_precision")]
    pub precision: String,
    /// `device` when image-independent variants were composited where the model runs
    /// (`sweep --composite`); absent: drawn by the image workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<String>,
    /// How logits became probabilities: `softmax` over the label set, or `sigmoid` per class
    /// (models with a logit bias, SigLIP's zero-shot formula).
    #[serde(default = "default_scoring")]
    pub scoring: String,
    /// CPU kernels of the linear layers (`onednn` or `aten`, see
    /// [`crate::model::kernels`]); runs before this field existed used `aten`.
    #[serde(default = "default_cpu_kernels")]
    pub cpu_kernels: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Preprocessing worker threads.
    pub workers: usize,
    /// libtorch version.
    pub libtorch_version: String,
    /// The defenses, in application order (empty: none); see [`crate::defense::DefenseRecord`].
    #[serde(default)]
    pub defenses: Vec<crate::defense::DefenseRecord>,
    /// Start time (UTC, RFC 3339).
    pub started: String,
    /// End time (UTC, RFC 3339), once finished.
    #[serde(default)]
    pub finished: Option<String>,
    /// The linear probe scored beside zero-shot (`--probe`): its file and sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_probe: Option<String>,
    /// The text detector run on each attacked input (`--text-area`): model and parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_detector: Option<String>,
    /// The model's scalar parameter count (buffers included), for zoo plots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_parameters: Option<u64>,
    /// A shard's part of the sweep (`sweep --shard I/N`); absent for a whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<super::shard::ShardRecord>,
    /// Set on a run folder made by merging this many shards ([`super::shard::merge_shards`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_shards: Option<usize>,
}

fn default_precision() -> String {
    "fp32".into()
}

fn default_cpu_kernels() -> String {
    "aten".into()
}

/// Current UTC time as RFC 3339 (seconds).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn default_scoring() -> String {
    "softmax".into()
}

impl Provenance {
    /// The random-weights banner for this run.
    pub fn banner(&self) -> String {
        format!(
            "{} (model {})",
            crate::cli::resolve::RANDOM_WEIGHTS_BANNER,
            self.model
        )
    }

    /// The caveat every output of this run starts with: random weights, or the toy.
    pub fn caveat(&self) -> Option<String> {
        if self.toy_model {
            return Some(format!("{} (model {})", crate::toy::TOY_BANNER, self.model));
        }
        self.random_weights.then(|| self.banner())
    }

    /// The image transform of the run: [`Provenance::image_transform`], else OpenAI's at the
    /// recorded input size (224 when none is recorded).
    pub fn transform(&self) -> crate::preprocess::PreprocessCfg {
        self.image_transform.clone().unwrap_or_else(|| {
            crate::preprocess::PreprocessCfg::square(self.image_size.unwrap_or(224))
        })
    }

    /// Marks the run finished now.
    pub fn finish(&mut self) {
        self.finished = Some(now_rfc3339());
    }

    /// Writes the file (pretty JSON, atomically).
    pub fn write(&self, path: &Path) -> Result<(), SweepError> {
        super::write_atomic(
            path,
            &serde_json::to_vec_pretty(self).expect("serialisable"),
        )
    }

    /// Refuses to resume a run made with other inputs, naming the first field that differs.
    pub fn check_resumable(&self, path: &Path) -> Result<(), SweepError> {
        let text = std::fs::read_to_string(path).map_err(|e| super::io_err(path, e))?;
        let old: Provenance = serde_json::from_str(&text)
            .map_err(|e| super::io_err(path, format!("unreadable provenance: {e}")))?;
        let shard = |p: &Provenance| {
            p.shard
                .map(|s| format!("{}/{}", s.index, s.count))
                .unwrap_or_else(|| "none".into())
        };
        if shard(&old) != shard(self) {
            return Err(SweepError::Mismatch {
                path: path.display().to_string(),
                what: "shard".into(),
                before: shard(&old),
                now: shard(self),
            });
        }
        self.check_same_run(&old, path)
    }

    /// Refuses `self` as the same sweep as `old` (read from `path`), naming the first input
    /// that differs: model, dataset, attack, image transform, mode, label and template sets, seed, precision,
    /// kernels, variant filter, batch size, defenses, linear probe.
    pub fn check_same_run(&self, old: &Provenance, path: &Path) -> Result<(), SweepError> {
        let defenses = |p: &Provenance| {
            let specs: Vec<&str> = p.defenses.iter().map(|d| d.spec.as_str()).collect();
            format!(
                "[{}] {}",
                specs.join(" "),
                serde_json::to_string(&p.defenses).expect("serialisable")
            )
        };
        let (old_defenses, new_defenses) = (defenses(old), defenses(self));
        let (old_transform, new_transform) =
            (old.transform().describe(), self.transform().describe());
        let fields: [(&str, &String, &String); 15] = [
            ("model", &old.model_id, &self.model_id),
            ("dataset", &old.dataset_descriptor, &self.dataset_descriptor),
            (
                "dataset file list",
                &old.file_list_hash,
                &self.file_list_hash,
            ),
            ("attack spec", &old.attack, &self.attack),
            ("image transform", &old_transform, &new_transform),
            ("mode", &old.mode, &self.mode),
            ("label set", &old.labels_hash, &self.labels_hash),
            ("template set", &old.templates_hash, &self.templates_hash),
            ("seed", &old.seed.to_string(), &self.seed.to_string()),
            ("precision", &old.precision, &self.precision),
            ("scoring", &old.scoring, &self.scoring),
            ("CPU kernels", &old.cpu_kernels, &self.cpu_kernels),
            ("variant filter", &old.variant_filter, &self.variant_filter),
            (
                "batch size",
                &old.batch_size.to_string(),
                &self.batch_size.to_string(),
            ),
            ("defenses", &old_defenses, &new_defenses),
        ];
        let none = String::from("none");
        let probe_field = (
            "linear probe",
            old.linear_probe.as_ref().unwrap_or(&none),
            self.linear_probe.as_ref().unwrap_or(&none),
        );
        let text_field = (
            "text detector",
            old.text_detector.as_ref().unwrap_or(&none),
            self.text_detector.as_ref().unwrap_or(&none),
        );
        for (what, before, now) in fields.into_iter().chain([probe_field, text_field]) {
            if before != now {
                let short = |s: &str| {
                    if s.len() > 40 {
                        format!("{}…", &s[..40])
                    } else {
                        s.to_string()
                    }
                };
                return Err(SweepError::Mismatch {
                    path: path.display().to_string(),
                    what: what.into(),
                    before: short(before),
                    now: short(now),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
