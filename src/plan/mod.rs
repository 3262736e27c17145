//! The plan stage: a TOML file naming models × datasets × attack specs and a shard count
//! expands into runs (one run folder each) and jobs (one shard of one run each), and the jobs
//! into what a scheduler needs — `jobs.tsv`, a Slurm array script, a Kubernetes Indexed Job.
//!
//! Inputs: the plan file (format below) and the output folder. Outputs: [`Plan`], whose
//! [`Plan::jobs`] are [`RunSpec`]s, the same resolved settings `typoclip sweep` builds from
//! its arguments, so job `K` run by a scheduler, by `plan --local` or typed by hand as the
//! `jobs.tsv` command line is the same sweep. The serializers here return text only; the CLI
//! (`cli::plan_cmd`) writes the files, runs jobs, reports status and merges shards
//! ([`crate::sweep::shard`]).
//!
//! ```toml
//! description = "SCAM's models on SCAM"       # one line
//! models = ["ViT-B-32,openai", "RN50,openai"] # as --model takes them (open_clip ARCH,TAG)
//! datasets = ["../datasets/scam.toml"]        # relative to the plan file
//! attacks = []                                # specs rendered on each dataset; none: physical
//! shards = 4                                  # jobs per run (1: no sharding)
//!
//! [sweep]                                     # options of every run (all optional)
//! mode = "binary"       # labels, templates, limit, shuffle, seed, batch_size, workers,
//! defenses = []         # variants, classes, precision, device, fallback_random
//!
//! [cluster]                                   # what the generated job files request
//! cpus_per_task = 4     # memory = "16G", gpus = 0, partition, image, parallelism, volume
//! ```
//!
//! Runs are ordered models, then datasets, then attacks; job `K` is shard `K mod shards` of
//! run `K div shards`. A run's folder is `OUT/<model>/<dataset>[/<attack>]`, each part a
//! file-name-safe slug of what the plan says.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sweep::run_spec::{ModelChoice, RunSpec};
use crate::sweep::shard::Shard;
use crate::sweep::{EvalMode, Precision};

/// A plan that cannot be used: the file, the field and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct PlanError {
    /// The plan file.
    pub file: String,
    /// The field (dotted path).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The plan file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    description: String,
    #[serde(default)]
    models: Vec<String>,
    /// A file of `ARCH,TAG` lines (clip_benchmark's `models.txt`), relative to the plan.
    #[serde(default)]
    models_file: Option<String>,
    datasets: Vec<String>,
    #[serde(default)]
    attacks: Vec<String>,
    #[serde(default = "one")]
    shards: usize,
    #[serde(default)]
    sweep: SweepOptions,
    #[serde(default)]
    cluster: Cluster,
}

fn one() -> usize {
    1
}

/// Options shared by every run of a plan (`[sweep]`), as `typoclip sweep` takes them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepOptions {
    mode: Option<String>,
    labels: Option<String>,
    templates: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    shuffle: bool,
    #[serde(default)]
    seed: u64,
    batch_size: Option<usize>,
    workers: Option<usize>,
    /// libtorch threads of every job: pins the count so shards run on nodes of different
    /// sizes still merge to the bytes of one run.
    threads: Option<usize>,
    #[serde(default)]
    variants: Vec<String>,
    classes: Option<String>,
    precision: Option<String>,
    device: Option<String>,
    #[serde(default)]
    fallback_random: bool,
    #[serde(default)]
    defenses: Vec<String>,
}

/// What the generated job files ask the scheduler for (`[cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// CPU cores per job.
    pub cpus_per_task: usize,
    /// Memory per job (`16G`; Slurm and Kubernetes spelling); `None`: the scheduler's default.
    pub memory: Option<String>,
    /// GPUs per job.
    pub gpus: usize,
    /// Slurm partition (`None`: the default one).
    pub partition: Option<String>,
    /// Container image of the Kubernetes Job.
    pub image: String,
    /// Jobs running at once on Kubernetes (`None`: all).
    pub parallelism: Option<usize>,
    /// PersistentVolumeClaim mounted at the working folder (repository and results).
    pub volume: String,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            cpus_per_task: 4,
            memory: None,
            gpus: 0,
            partition: None,
            image: "typoclip:latest".into(),
            parallelism: None,
            volume: "typoclip-work".into(),
        }
    }
}

/// One run of a plan: a run folder and the sweep that fills it (unsharded).
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The run's folder name under the plan's output folder (`model/dataset[/attack]`).
    pub name: String,
    /// The sweep (`shard: None`; [`Plan::jobs`] adds the shard).
    pub spec: RunSpec,
}

/// One job: a shard of a run (or the whole run when the plan has one shard).
#[derive(Debug, Clone)]
pub struct Job {
    /// Job index (Slurm's `SLURM_ARRAY_TASK_ID`, Kubernetes' `JOB_COMPLETION_INDEX`).
    pub index: usize,
    /// Index of its run in [`Plan::runs`].
    pub run: usize,
    /// The sweep, with its shard.
    pub spec: RunSpec,
}

/// An expanded plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan file.
    pub path: PathBuf,
    /// Plan name (the file stem).
    pub name: String,
    /// One line.
    pub description: String,
    /// Jobs per run.
    pub shards: usize,
    /// The runs, in expansion order.
    pub runs: Vec<PlannedRun>,
    /// What job files request.
    pub cluster: Cluster,
}

/// A file-name-safe form of a model, dataset or attack name: a path becomes its file stem,
/// other characters than letters, digits, `.`, `_` and `-` become `-`.
pub fn slug(s: &str) -> String {
    let p = Path::new(s);
    let base = if s.contains('/') && !s.contains(',') && !s.starts_with("random:") {
        p.file_stem().and_then(|f| f.to_str()).unwrap_or(s)
    } else {
        s
    };
    let base = base.strip_suffix(".toml").unwrap_or(base);
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl Plan {
    /// Reads, checks and expands the plan at `path` for the output folder `out`. Every
    /// problem is one [`PlanError`] naming the file and the field.
    pub fn load(path: &Path, out: &Path) -> Result<Plan, PlanError> {
        let file = path.display().to_string();
        let err = |field: &str, message: String| PlanError {
            file: file.clone(),
            field: field.into(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err("(file)", e.to_string()))?;
        let mut raw: PlanFile = toml::from_str(&text).map_err(|e| {
            let span = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(plan)".into());
            err(&span, e.message().to_string())
        })?;
        if let Some(f) = &raw.models_file {
            let list = path.parent().unwrap_or(Path::new(".")).join(f);
            let text = std::fs::read_to_string(&list)
                .map_err(|e| err("models_file", format!("{}: {e}", list.display())))?;
            raw.models.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        // open_clip's `ARCH,TAG` spelling (clip_benchmark's lists) is `--model ARCH:TAG`.
        for m in raw.models.iter_mut() {
            if let Some((arch, tag)) = m.split_once(',') {
                *m = format!("{}:{}", arch.trim(), tag.trim());
            }
        }
        if raw.models.is_empty() {
            return Err(err("models", "names no model".into()));
        }
        if raw.datasets.is_empty() {
            return Err(err("datasets", "names no dataset".into()));
        }
        if raw.shards == 0 {
            return Err(err("shards", "must be at least 1".into()));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        let rel = |p: &str| -> PathBuf {
            if Path::new(p).is_absolute() {
                PathBuf::from(p)
            } else {
                base.join(p)
            }
        };
        for (i, d) in raw.datasets.iter().enumerate() {
            if !rel(d).exists() {
                return Err(err(
                    &format!("datasets[{i}]"),
                    format!("`{d}` does not exist (paths are relative to the plan)"),
                ));
            }
        }
        for (i, a) in raw.attacks.iter().enumerate() {
            crate::attack::AttackSpec::load(&rel(a))
                .map_err(|e| err(&format!("attacks[{i}]"), e.to_string()))?;
        }
        let o = &raw.sweep;
        let mode = match o.mode.as_deref().unwrap_or("zeroshot") {
            "zeroshot" => EvalMode::Zeroshot,
            "binary" => EvalMode::Binary,
            other => {
                return Err(err(
                    "sweep.mode",
                    format!("`{other}` is not one of zeroshot, binary"),
                ))
            }
        };
        let precision = match o.precision.as_deref() {
            None => Precision::Fp32,
            Some(p) => Precision::parse(p).ok_or_else(|| {
                err(
                    "sweep.precision",
                    format!("`{p}` is not one of fp32, bf16, fp16"),
                )
            })?,
        };
        let batch_size = o.batch_size.unwrap_or(16);
        if batch_size == 0 {
            return Err(err("sweep.batch_size", "must be at least 1".into()));
        }
        crate::defense::DefenseStack::parse(&o.defenses)
            .map_err(|e| err("sweep.defenses", e.to_string()))?;
        if precision != Precision::Fp32 && !o.defenses.is_empty() {
            return Err(err(
                "sweep.precision",
                format!(
                    "{} is not available together with defenses",
                    precision.name()
                ),
            ));
        }
        let attacks: Vec<Option<&String>> = if raw.attacks.is_empty() {
            vec![None]
        } else {
            raw.attacks.iter().map(Some).collect()
        };
        let mut runs = Vec::new();
        for model in &raw.models {
            for dataset in &raw.datasets {
                for attack in &attacks {
                    let mut name = format!("{}/{}", slug(model), slug(dataset));
                    if let Some(a) = attack {
                        name = format!("{name}/{}", slug(a));
                    }
                    if runs.iter().any(|r: &PlannedRun| r.name == name) {
                        return Err(err(
                            "models",
                            format!("two runs would share the folder `{name}`"),
                        ));
                    }
                    let spec = RunSpec {
                        model: ModelChoice {
                            spec: Some(model.clone()),
                            arch: None,
                            device: o.device.clone().unwrap_or_else(|| "cpu".into()),
                            cache_dir: None,
                            fallback_random: o.fallback_random,
                        },
                        dataset: Some(rel(dataset)),
                        data_root: None,
                        out: out.join(&name),
                        attacks: attack.map(|a| rel(a)),
                        mode,
                        labels: o.labels.clone(),
                        templates: o.templates.clone().unwrap_or_else(|| "single".into()),
                        limit: o.limit,
                        variants: o.variants.clone(),
                        classes: o.classes.clone(),
                        precision,
                        composite: crate::sweep::Composite::Auto,
                        shuffle: o.shuffle,
                        seed: o.seed,
                        batch_size,
                        workers: o.workers,
                        threads: o.threads,
                        resume: true,
                        defenses: o.defenses.clone(),
                        probe: None,
                        text_area: false,
                        shard: None,
                        progress: false,
                    };
                    runs.push(PlannedRun { name, spec });
                }
            }
        }
        Ok(Plan {
            path: path.to_path_buf(),
            name: slug(path.file_stem().and_then(|s| s.to_str()).unwrap_or("plan")),
            description: raw.description,
            shards: raw.shards,
            runs,
            cluster: raw.cluster,
        })
    }

    /// Every job, in index order: run-major, then shard.
    pub fn jobs(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (r, run) in self.runs.iter().enumerate() {
            for index in 0..self.shards {
                let mut spec = run.spec.clone();
                spec.shard = (self.shards > 1).then_some(Shard {
                    index,
                    count: self.shards,
                });
                jobs.push(Job {
                    index: jobs.len(),
                    run: r,
                    spec,
                });
            }
        }
        jobs
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `jobs.tsv`: a header, then per job its index, run folder, shard (`-` when unsharded),
/// model, dataset, attack spec (`-`: physical) and the equivalent `typoclip sweep` command.
pub fn jobs_tsv(plan: &Plan) -> String {
    let mut out = String::from("job\trun\tshard\tmodel\tdataset\tattacks\tcommand\n");
    for job in plan.jobs() {
        let s = &job.spec;
        let command: Vec<String> = std::iter::once("typoclip".to_string())
            .chain(s.to_args())
            .map(|a| shell_quote(&a))
            .collect();
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            job.index,
            plan.runs[job.run].name,
            s.shard.map_or("-".into(), |x| x.to_string()),
            s.model.spec.as_deref().unwrap_or("-"),
            s.dataset
                .as_ref()
                .map_or("-".into(), |d| d.display().to_string()),
            s.attacks
                .as_ref()
                .map_or("-".into(), |d| d.display().to_string()),
            command.join(" ")
        ));
    }
    out
}

/// Where and how the job files call typoclip: the working folder the plan was made in, the
/// program, the plan file and the output folder as given.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Working folder (jobs `cd` here; relative paths are relative to it).
    pub workdir: PathBuf,
    /// The typoclip binary (Slurm; overridable with `$TYPOCLIP`).
    pub program: PathBuf,
    /// The plan file.
    pub plan: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// typoclip version and commit, for the header.
    pub version: String,
}

/// A Slurm array script: one array task per job, each running `typoclip plan … --job
/// $SLURM_ARRAY_TASK_ID` (which resumes, so a requeued task continues); logs in `OUT/logs/`.
pub fn slurm_script(plan: &Plan, inv: &Invocation) -> String {
    let n = plan.runs.len() * plan.shards;
    let c = &plan.cluster;
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "# typoclip plan {}: {} runs x {} shards = {n} jobs ({}); made by typoclip {}\n",
        inv.plan.display(),
        plan.runs.len(),
        plan.shards,
        plan.description,
        inv.version
    ));
    s.push_str(&format!("#SBATCH --job-name=typoclip-{}\n", plan.name));
    s.push_str(&format!("#SBATCH --array=0-{}\n", n.saturating_sub(1)));
    s.push_str(&format!("#SBATCH --cpus-per-task={}\n", c.cpus_per_task));
    if let Some(m) = &c.memory {
        s.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    if c.gpus > 0 {
        s.push_str(&format!("#SBATCH --gres=gpu:{}\n", c.gpus));
    }
    if let Some(p) = &c.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    s.push_str(&format!(
        "#SBATCH --output={}/logs/%A_%a.log\n",
        inv.workdir.join(&inv.out).display()
    ));
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!(
        "cd {}\n",
        shell_quote(&inv.workdir.display().to_string())
    ));
    s.push_str(&format!(
        "export OMP_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{}}}\"\n",
        c.cpus_per_task
    ));
    s.push_str(&format!(
        "exec \"${{TYPOCLIP:-{}}}\" plan {} --out {} --job \"$SLURM_ARRAY_TASK_ID\"\n",
        inv.program.display(),
        shell_quote(&inv.plan.display().to_string()),
        shell_quote(&inv.out.display().to_string())
    ));
    s
}

/// A Kubernetes Indexed Job: `completions` = the job count, each pod running `typoclip plan
/// … --job $JOB_COMPLETION_INDEX` in the working folder, mounted from the plan's volume.
pub fn k8s_job(plan: &Plan, inv: &Invocation) -> String {
    let n = plan.runs.len() * plan.shards;
    let c = &plan.cluster;
    let name: String = format!("typoclip-{}", plan.name)
        .to_lowercase()
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .collect();
    let workdir = "/work/typoclip";
    let command = format!(
        "exec typoclip plan {} --out {} --job \"$JOB_COMPLETION_INDEX\"",
        shell_quote(&inv.plan.display().to_string()),
        shell_quote(&inv.out.display().to_string())
    );
    let mut limits = format!("            cpu: \"{}\"\n", c.cpus_per_task);
    if let Some(m) = &c.memory {
        limits.push_str(&format!(
            "            memory: \"{}i\"\n",
            m.trim_end_matches('i')
        ));
    }
    if c.gpus > 0 {
        limits.push_str(&format!("            nvidia.com/gpu: \"{}\"\n", c.gpus));
    }
    format!(
        "# typoclip plan {plan_path}: {runs} runs x {shards} shards = {n} jobs ({desc}); made by \
         typoclip {version}\n\
         apiVersion: batch/v1\n\
         kind: Job\n\
         metadata:\n\
         \x20 name: {name}\n\
         spec:\n\
         \x20 completionMode: Indexed\n\
         \x20 completions: {n}\n\
         \x20 parallelism: {par}\n\
         \x20 backoffLimit: {backoff}\n\
         \x20 template:\n\
         \x20   spec:\n\
         \x20     restartPolicy: Never\n\
         \x20     containers:\n\
         \x20     - name: typoclip\n\
         \x20       image: {image}\n\
         \x20       workingDir: {workdir}\n\
         \x20       command: [\"sh\", \"-c\", {command_json}]\n\
         \x20       env:\n\
         \x20       - name: OMP_NUM_THREADS\n\
         \x20         value: \"{cpus}\"\n\
         \x20       resources:\n\
         \x20         requests:\n\
         {limits}\
         \x20         limits:\n\
         {limits}\
         \x20       volumeMounts:\n\
         \x20       - name: work\n\
         \x20         mountPath: {workdir}\n\
         \x20     volumes:\n\
         \x20     - name: work\n\
         \x20       persistentVolumeClaim:\n\
         \x20         claimName: {volume}\n",
        plan_path = inv.plan.display(),
        runs = plan.runs.len(),
        shards = plan.shards,
        desc = plan.description,
        version = inv.version,
        par = c.parallelism.unwrap_or(n).min(n).max(1),
        backoff = 2 * n,
        image = c.image,
        command_json = serde_json::to_string(&command).expect("a string"),
        cpus = c.cpus_per_task,
        volume = c.volume,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("ViT-B-32,openai"), "ViT-B-32-openai");
        assert_eq!(slug("random:ViT-B-32:3"), "random-ViT-B-32-3");
        assert_eq!(slug("../datasets/scam.toml"), "scam");
        assert_eq!(slug("/x/tiny-vit.state_dict.pt"), "tiny-vit.state_dict");
    }

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("--out"), "--out");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
