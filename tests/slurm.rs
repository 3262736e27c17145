//! A plan's Slurm array script on a real single-node Slurm: the test starts its own MUNGE and
//! Slurm daemons (private socket, ports, state and spool folders under a temporary folder,
//! `SLURM_CONF` pointing at its own `slurm.conf`), submits `slurm.sh` with `sbatch`, waits for
//! the array, checks `plan --status` and `--merge`, compares the merged summary with the same
//! sweep run here, and stops the daemons it started by their pids.
//!
//! Skips, saying why, unless run as root with Debian's `slurmctld slurmd munge slurm-client`
//! installed (`scripts/setup.sh` installs them when it can) and the daemons come up.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Daemons this test started, stopped by pid (from their pid files) when dropped.
struct Daemons {
    pid_files: Vec<PathBuf>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // Reverse start order: slurmd, slurmctld, munged.
        for f in self.pid_files.iter().rev() {
            let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let gone = Instant::now();
            while Path::new(&format!("/proc/{pid}")).exists()
                && gone.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn skip(why: &str) {
    eprintln!("SKIPPED slurm_array_runs_a_plan: {why}");
}

fn output(c: &mut Command) -> Option<Output> {
    c.output().ok()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn slurm_array_runs_a_plan() {
    let is_root = output(Command::new("id").arg("-u")).is_some_and(|o| stdout(&o).trim() == "0");
    if !is_root {
        return skip("not root (the test starts slurmctld, slurmd and munged)");
    }
    let missing: Vec<&str> = [
        "/usr/sbin/munged",
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/bin/sbatch",
        "/usr/bin/sinfo",
        "/usr/bin/squeue",
    ]
    .into_iter()
    .filter(|p| !Path::new(p).exists())
    .collect();
    if !missing.is_empty() {
        return skip(&format!(
            "{} not installed (apt-get install slurmctld slurmd munge slurm-client; \
             scripts/setup.sh does it as root)",
            missing.join(", ")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let host = stdout(&output(Command::new("hostname").arg("-s")).unwrap())
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1024, |kb| kb / 1024 * 9 / 10);
    for d in ["state", "spool", "munge"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    // MUNGE: a private key and socket, munged as root (`--force`: the log folder is ours).
    let key = t.join("munge/munge.key");
    let bytes: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&key, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(t.join("munge"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = t.join("munge/munge.socket");
    let mut daemons = Daemons {
        pid_files: Vec::new(),
    };
    let munged_pid = t.join("munge/munged.pid");
    daemons.pid_files.push(munged_pid.clone());
    let m = output(
        Command::new("/usr/sbin/munged")
            .arg("--force")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", munged_pid.display()))
            .arg(format!(
                "--log-file={}",
                t.join("munge/munged.log").display()
            ))
            .arg(format!(
                "--seed-file={}",
                t.join("munge/munged.seed").display()
            )),
    );
    if !m.as_ref().is_some_and(|o| o.status.success()) {
        return skip(&format!(
            "munged did not start: {}",
            m.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default()
        ));
    }
    // Slurm: its own config, ports and folders.
    let conf = t.join("slurm.conf");
    let p = |name: &str| t.join(name).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "ClusterName=typoclip-test\n\
             SlurmctldHost={host}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             SlurmctldPort=26817\n\
             SlurmdPort=26818\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket}\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={d_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={d_log}\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             MailProg=/bin/true\n\
             NodeName={host} CPUs={cpus} RealMemory={mem_mib} State=UNKNOWN\n\
             PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            socket = socket.display(),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            d_pid = p("slurmd.pid"),
            ctld_log = p("slurmctld.log"),
            d_log = p("slurmd.log"),
        ),
    )
    .unwrap();
    let slurm = |program: &str| {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &conf);
        c
    };
    for (daemon, pid) in [
        ("/usr/sbin/slurmctld", "slurmctld.pid"),
        ("/usr/sbin/slurmd", "slurmd.pid"),
    ] {
        daemons.pid_files.push(t.join(pid));
        let o = output(&mut slurm(daemon));
        if !o.as_ref().is_some_and(|o| o.status.success()) {
            return skip(&format!(
                "{daemon} did not start: {} (log: {})",
                o.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default(),
                std::fs::read_to_string(t.join(pid.replace(".pid", ".log"))).unwrap_or_default()
            ));
        }
    }
    let up = Instant::now();
    loop {
        let state = output(slurm("/usr/bin/sinfo").args(["-h", "-o", "%T"]))
            .map(|o| stdout(&o))
            .unwrap_or_default();
        if state.trim() == "idle" {
            break;
        }
        if up.elapsed() > Duration::from_secs(30) {
            return skip(&format!(
                "the Slurm node did not become idle within 30 s (sinfo: `{}`; slurmctld log: {})",
                state.trim(),
                std::fs::read_to_string(t.join("slurmctld.log"))
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // The plan: one tiny model, rendered attacks on drawn photos, two shards.
    let photos = t.join("photos");
    for (i, class) in ["goldfish", "radio"].iter().enumerate() {
        std::fs::create_dir_all(photos.join(class)).unwrap();
        for k in 0..3u32 {
            image::RgbImage::from_fn(90 + 7 * k, 80, |x, y| {
                image::Rgb([
                    (x * 2) as u8,
                    (y * 3 + k * 20) as u8,
                    (60 + i as u32 * 90) as u8,
                ])
            })
            .save(photos.join(class).join(format!("p{k}.png")))
            .unwrap();
        }
    }
    let model = common::fixtures().join("tiny-vit.state_dict.pt");
    let spec = common::repo().join("attacks/distill-suite.toml");
    let plan = t.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "description = \"Slurm test\"\nmodels = [\"{}\"]\ndatasets = [\"{}\"]\n\
             attacks = [\"{}\"]\nshards = 2\n[sweep]\nbatch_size = 8\n\
             variants = [\"distill/*/pos=0\"]\n[cluster]\ncpus_per_task = 1\n",
            model.display(),
            photos.display(),
            spec.display()
        ),
    )
    .unwrap();
    let out = t.join("zoo");
    let typoclip = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_typoclip"))
            .args(args)
            .env("OMP_NUM_THREADS", "1")
            .env("XDG_CACHE_HOME", t.join("cache"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout(&o)
    };
    let (plan_s, out_s) = (plan.to_str().unwrap(), out.to_str().unwrap());
    typoclip(&["plan", plan_s, "--out", out_s]);
    // The array tasks inherit this environment: the same text-classifier cache as the sweep
    // below.
    let sub = output(
        slurm("/usr/bin/sbatch")
            .env("XDG_CACHE_HOME", t.join("cache"))
            .arg("--parsable")
            .arg(out.join("slurm.sh")),
    )
    .unwrap();
    assert!(
        sub.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let job_id = stdout(&sub).trim().to_string();
    let started = Instant::now();
    loop {
        let q = output(slurm("/usr/bin/squeue").args(["-h", "-j", &job_id])).unwrap();
        if stdout(&q).trim().is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "array {job_id} still queued or running after 300 s: {}",
            stdout(&q)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs: Vec<String> = std::fs::read_dir(out.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    assert_eq!(logs.len(), 2, "one log per array task: {logs:?}");
    let status = typoclip(&["plan", plan_s, "--out", out_s, "--status"]);
    assert!(
        status.contains("2 of 2 jobs done"),
        "{status}\nlogs:\n{}",
        logs.join("\n---\n")
    );
    let merged = typoclip(&["plan", plan_s, "--out", out_s, "--merge"]);
    assert!(merged.contains("merged 2 shards"), "{merged}");
    // The same sweep here, on one thread as the array tasks ran (cpus_per_task = 1).
    let plain = t.join("plain");
    typoclip(&[
        "sweep",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        photos.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--variant",
        "distill/*/pos=0",
        "--out",
        plain.to_str().unwrap(),
        "--batch-size",
        "8",
        "--quiet",
    ]);
    let run = out.join("tiny-vit.state_dict/photos/distill-suite");
    for f in ["records.jsonl", "summary.json"] {
        assert!(
            std::fs::read(plain.join(f)).unwrap() == std::fs::read(run.join(f)).unwrap(),
            "{f}: the Slurm array's merged run differs from the same sweep run here:\n{}\n{}",
            std::fs::read_to_string(plain.join(f))
                .unwrap()
                .lines()
                .next()
                .unwrap_or_default(),
            std::fs::read_to_string(run.join(f))
                .unwrap()
                .lines()
                .next()
                .unwrap_or_default()
        );
    }
    drop(daemons);
}
