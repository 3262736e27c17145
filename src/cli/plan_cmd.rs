//! `typoclip plan PLAN --out DIR`: expands a plan ([`crate::plan`]) and writes `jobs.tsv`,
//! `slurm.sh` and `k8s-job.yaml` into `DIR`; `--job K` runs job K (resuming);
//! `--local -j N` runs every unfinished job here, N at a time, then merges; `--status` shows
//! how far each run has got; `--merge` joins the shards of every finished run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::plan::{Invocation, Plan};
use crate::sweep::shard::{merge_shards, shard_state, ShardState};

/// `typoclip plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The plan file (e.g. `plans/scam-zoo.toml`).
    pub plan: PathBuf,
    /// Output folder: the job files and one run folder per run.
    #[arg(long)]
    pub out: PathBuf,
    /// Run job K of the plan (what each Slurm array task / Kubernetes pod calls).
    #[arg(long, value_name = "K")]
    pub job: Option<usize>,
    /// Run every unfinished job on this machine, then merge.
    #[arg(long, conflicts_with = "job")]
    pub local: bool,
    /// Jobs at once with --local (each gets an equal share of the CPU threads).
    #[arg(short = 'j', long = "jobs", default_value_t = 1, requires = "local")]
    pub jobs: usize,
    /// libtorch threads per job with --local [default: CPUs / jobs]. Records are bit-identical
    /// only between runs with the same thread count (libtorch's reductions depend on it).
    #[arg(long, requires = "local")]
    pub threads: Option<usize>,
    /// Show each run's progress (shards done, records written) and exit.
    #[arg(long, conflicts_with_all = ["job", "local"])]
    pub status: bool,
    /// Merge the shards of every finished run into its run folder.
    #[arg(long, conflicts_with_all = ["job", "local", "status"])]
    pub merge: bool,
}

/// Runs `typoclip plan`.
pub fn run_plan(args: PlanArgs) -> Result<()> {
    let plan = Plan::load(&args.plan, &args.out)?;
    let jobs = plan.jobs();
    if let Some(k) = args.job {
        let Some(job) = jobs.get(k) else {
            bail!(
                "{}: --job {k}: the plan has {} jobs (0 to {})",
                args.plan.display(),
                jobs.len(),
                jobs.len().saturating_sub(1)
            );
        };
        super::sweep_cmd::check_spec(&job.spec)?;
        let ran = super::sweep_cmd::execute(&job.spec, true)?;
        println!("{}", ran.banner);
        println!(
            "job {k} ({}{}) done",
            plan.runs[job.run].name,
            job.spec
                .shard
                .map(|s| format!(", shard {s}"))
                .unwrap_or_default()
        );
        super::sweep_cmd::print_summary(&ran.summary, &job.spec.run_dir());
        return Ok(());
    }
    if args.status {
        print!("{}", status_table(&plan)?);
        return Ok(());
    }
    if args.merge {
        return merge_all(&plan);
    }
    write_job_files(&plan, &args)?;
    if args.local {
        run_local(&plan, &args)?;
        merge_all(&plan)?;
    }
    Ok(())
}

fn write_job_files(plan: &Plan, args: &PlanArgs) -> Result<()> {
    // Slurm does not make the folder of `--output`.
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
    let inv = Invocation {
        workdir: std::env::current_dir().context("current folder")?,
        program: std::env::current_exe().context("the typoclip binary")?,
        plan: args.plan.clone(),
        out: args.out.clone(),
        version: format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            env!("TYPOCLIP_GIT_COMMIT")
        ),
    };
    let files = [
        ("jobs.tsv", crate::plan::jobs_tsv(plan)),
        ("slurm.sh", crate::plan::slurm_script(plan, &inv)),
        ("k8s-job.yaml", crate::plan::k8s_job(plan, &inv)),
    ];
    for (name, text) in files {
        crate::sweep::write_atomic(&args.out.join(name), text.as_bytes())?;
    }
    let n = plan.runs.len() * plan.shards;
    println!(
        "{}: {} runs x {} shards = {n} jobs; {} (sbatch), {} (kubectl apply -f), {}",
        args.plan.display(),
        plan.runs.len(),
        plan.shards,
        args.out.join("slurm.sh").display(),
        args.out.join("k8s-job.yaml").display(),
        args.out.join("jobs.tsv").display()
    );
    Ok(())
}

/// The state of every job of `plan`, by index.
fn job_states(plan: &Plan) -> Result<Vec<ShardState>> {
    plan.jobs()
        .iter()
        .map(|j| Ok(shard_state(&j.spec.run_dir())?))
        .collect()
}

/// Whether a run's folder holds its whole result (unsharded and finished, or merged).
fn run_complete(plan: &Plan, run: usize) -> Result<bool> {
    let dir = &plan.runs[run].spec.out;
    if plan.shards > 1 {
        let p = dir.join("provenance.json");
        if !p.exists() {
            return Ok(false);
        }
        let prov: crate::sweep::provenance::Provenance =
            serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| p.display().to_string())?;
        return Ok(prov.merged_shards == Some(plan.shards));
    }
    Ok(matches!(shard_state(dir)?, ShardState::Done { .. }))
}

/// `--status`: one line per run (shards done / started / pending, records written, merged).
pub fn status_table(plan: &Plan) -> Result<String> {
    let states = job_states(plan)?;
    let mut out = format!(
        "{}: {} runs x {} shards\nrun\tshards done\tstarted\tpending\trecords\tcomplete\n",
        plan.path.display(),
        plan.runs.len(),
        plan.shards
    );
    let (mut all_done, mut all_jobs) = (0, 0);
    for (r, run) in plan.runs.iter().enumerate() {
        let mine = &states[r * plan.shards..(r + 1) * plan.shards];
        let (mut done, mut started, mut pending, mut written, mut total) = (0, 0, 0, 0, 0);
        let mut total_known = true;
        for s in mine {
            match s {
                ShardState::Done { total: t } => {
                    done += 1;
                    written += t;
                    total += t;
                }
                ShardState::Partial { done: d, total: t } => {
                    started += 1;
                    written += d;
                    total += t;
                }
                ShardState::Pending => {
                    pending += 1;
                    total_known = false;
                }
            }
        }
        all_done += done;
        all_jobs += mine.len();
        out.push_str(&format!(
            "{}\t{done}/{}\t{started}\t{pending}\t{written}/{}\t{}\n",
            run.name,
            mine.len(),
            if total_known {
                total.to_string()
            } else {
                "?".into()
            },
            if run_complete(plan, r)? { "yes" } else { "no" }
        ));
    }
    out.push_str(&format!("{all_done} of {all_jobs} jobs done\n"));
    Ok(out)
}

/// `--merge`: merges every run whose shards are all done; says which runs are not ready.
fn merge_all(plan: &Plan) -> Result<()> {
    if plan.shards == 1 {
        println!("unsharded plan: every finished run folder is already complete");
        return Ok(());
    }
    let states = job_states(plan)?;
    let mut waiting = Vec::new();
    for (r, run) in plan.runs.iter().enumerate() {
        let mine = &states[r * plan.shards..(r + 1) * plan.shards];
        let done = mine
            .iter()
            .filter(|s| matches!(s, ShardState::Done { .. }))
            .count();
        if done < mine.len() {
            waiting.push(format!("{} ({done}/{} shards done)", run.name, mine.len()));
            continue;
        }
        let summary = merge_shards(&run.spec.out)?;
        println!(
            "merged {} shards into {} ({} records, {} errors)",
            plan.shards,
            run.spec.out.display(),
            summary.records,
            summary.errors
        );
    }
    if !waiting.is_empty() {
        bail!("not merged, shards unfinished: {}", waiting.join(", "));
    }
    Ok(())
}

/// `--local -j N`: runs the unfinished jobs as child processes (`plan --job K`), N at a time,
/// each with `OMP_NUM_THREADS` = `--threads` (default CPUs / N) and its output in `OUT/logs/job-K.log`.
fn run_local(plan: &Plan, args: &PlanArgs) -> Result<()> {
    let n = args.jobs.max(1);
    let cpus = crate::sweep::default_workers();
    let threads = args.threads.unwrap_or(cpus / n).max(1);
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
    let states = job_states(plan)?;
    let todo: Vec<usize> = (0..states.len())
        .filter(|&k| !matches!(states[k], ShardState::Done { .. }))
        .collect();
    println!(
        "running {} of {} jobs here, {n} at a time, {threads} threads each",
        todo.len(),
        states.len()
    );
    let exe = std::env::current_exe().context("the typoclip binary")?;
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut queue = todo.into_iter();
    loop {
        while running.len() < n {
            let Some(k) = queue.next() else { break };
            let log = logs.join(format!("job-{k}.log"));
            let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
            let child = Command::new(&exe)
                .arg("plan")
                .arg(&args.plan)
                .arg("--out")
                .arg(&args.out)
                .arg("--job")
                .arg(k.to_string())
                .env("OMP_NUM_THREADS", threads.to_string())
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .context("cannot start a job")?;
            running.push((k, child));
        }
        if running.is_empty() {
            break;
        }
        // Wait for whichever job ends first.
        let mut ended = None;
        while ended.is_none() {
            for (i, (_, child)) in running.iter_mut().enumerate() {
                if let Some(status) = child.try_wait()? {
                    ended = Some((i, status));
                    break;
                }
            }
            if ended.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let (i, status) = ended.expect("a job ended");
        let (k, _) = running.remove(i);
        let log = logs.join(format!("job-{k}.log"));
        if status.success() {
            println!("job {k} done");
        } else {
            failed.push(format!("job {k} ({}): {}", status, last_line(&log)));
        }
    }
    if !failed.is_empty() {
        bail!("{} job(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(String::from)
        })
        .unwrap_or_else(|| format!("see {}", path.display()))
}
