//! Scaling a sweep out: `sweep --shard I/N` and `--merge` give the unsharded run's records and
//! summary byte for byte (with an interrupted, resumed shard among them); merges of unfinished
//! or mismatched shards are refused; `typoclip plan` writes jobs.tsv / slurm.sh / k8s-job.yaml,
//! reports status, runs its jobs with `--local -j 2` and merges them into the summary a plain
//! sweep gives; bad plans are one-line errors naming file and field.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn typoclip(args: &[&str]) -> Output {
    common::run_typoclip(args, "typoclip-test-scale-cache")
}

/// As [`typoclip`] with libtorch on one thread: records are bit-identical only between runs
/// with the same thread count, and `plan --local -j 2 --threads 1` runs its jobs on one.
fn typoclip_1(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("typoclip-test-scale-cache"),
        )
        .output()
        .expect("run typoclip")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, needles: &[&str]) -> String {
    assert!(!o.status.success(), "should have failed");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(line.contains(n), "`{n}` not in: {line}");
    }
    err
}

fn model() -> String {
    common::fixtures()
        .join("tiny-vit.state_dict.pt")
        .display()
        .to_string()
}

/// Two classes of drawn photos (5 and 3 images).
fn photos(dir: &Path) -> PathBuf {
    let photos = dir.join("photos");
    for (i, class) in ["goldfish", "radio"].iter().enumerate() {
        std::fs::create_dir_all(photos.join(class)).unwrap();
        for k in 0..(5 - 2 * i) {
            let idx = (i * 5 + k) as u32;
            image::RgbImage::from_fn(96 + 5 * idx, 80, |x, y| {
                image::Rgb([
                    (x * 2) as u8,
                    (y * 3 + idx * 20) as u8,
                    (90 + idx * 9) as u8,
                ])
            })
            .save(photos.join(class).join(format!("p{k}.png")))
            .unwrap();
        }
    }
    photos
}

fn sweep_args(photos: &Path, out: &Path) -> Vec<String> {
    let spec = common::repo().join("attacks/distill-suite.toml");
    [
        "sweep",
        "--model",
        &model(),
        "--dataset",
        photos.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--variant",
        "distill/*/pos=0",
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "8",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String]) -> String {
    ok(&typoclip(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// 8 images × 9 variants = 72 cells in 9 batches of 8, cut into 3 shards; shard 1 is cut
/// inside a batch (a torn line) and resumed. The merge equals the unsharded run byte for byte:
/// records.jsonl, summary.json and summary.csv.
#[test]
fn shards_merge_to_the_unsharded_run_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let full = dir.path().join("full");
    run(&sweep_args(&photos, &full));
    let sharded = dir.path().join("sharded");
    let shard = |i: usize, extra: &[&str]| {
        let mut a = sweep_args(&photos, &sharded);
        a.extend(["--shard".into(), format!("{i}/3")]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    run(&shard(0, &[]));
    run(&shard(1, &[]));
    // Shard 1 interrupted: keep 11 of its 24 records and half of the 12th line.
    let s1 = sharded.join("shards/1-of-3");
    let text = String::from_utf8(read(&s1.join("records.jsonl"))).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 24, "shard 1 of 3 holds 3 of the 9 batches");
    let mut cut: String = lines[..11].iter().map(|l| format!("{l}\n")).collect();
    cut.push_str(&lines[11][..lines[11].len() / 2]);
    std::fs::write(s1.join("records.jsonl"), cut).unwrap();
    // A shard of another sweep (another seed) is refused, naming its provenance and the field.
    run(&shard(2, &["--seed", "7"]));
    // An unfinished shard is refused, naming its records.
    refused(
        &typoclip(&["sweep", "--merge", "--out", sharded.to_str().unwrap()]),
        &["shards/1-of-3/records.jsonl", "not finished"],
    );
    run(&shard(1, &["--resume"]));
    refused(
        &typoclip(&["sweep", "--merge", "--out", sharded.to_str().unwrap()]),
        &["shards/2-of-3/provenance.json", "seed"],
    );
    // A missing shard is refused, naming it.
    std::fs::remove_dir_all(sharded.join("shards/2-of-3")).unwrap();
    refused(
        &typoclip(&["sweep", "--merge", "--out", sharded.to_str().unwrap()]),
        &["shards/2-of-3", "missing"],
    );
    run(&shard(2, &[]));
    let merged = ok(&typoclip(&[
        "sweep",
        "--merge",
        "--out",
        sharded.to_str().unwrap(),
    ]));
    assert!(merged.contains("72 records"), "{merged}");
    for f in ["records.jsonl", "summary.json", "summary.csv"] {
        assert!(
            read(&full.join(f)) == read(&sharded.join(f)),
            "{f} differs between the unsharded run and the merged shards"
        );
    }
    let prov: serde_json::Value =
        serde_json::from_slice(&read(&sharded.join("provenance.json"))).unwrap();
    assert_eq!(prov["merged_shards"], 3);
    assert!(prov.get("shard").is_none());
    assert!(prov["model_parameters"].as_u64().unwrap() > 0);
    // Merging again is allowed (the folder holds a merge) and gives the same bytes.
    ok(&typoclip(&[
        "sweep",
        "--merge",
        "--out",
        sharded.to_str().unwrap(),
    ]));
    assert!(read(&full.join("summary.json")) == read(&sharded.join("summary.json")));
    // An unsharded run folder is never overwritten by a merge.
    std::fs::create_dir_all(full.join("shards")).unwrap();
    std::fs::rename(sharded.join("shards/0-of-3"), full.join("shards/0-of-3")).unwrap();
    refused(
        &typoclip(&["sweep", "--merge", "--out", full.to_str().unwrap()]),
        &["provenance.json", "unsharded"],
    );
}

fn write_plan(dir: &Path, photos: &Path, shards: usize, extra: &str) -> PathBuf {
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "description = \"two tiny models on drawn photos\"\n\
             models = [\"{}\", \"{}\"]\n\
             datasets = [\"{}\"]\n\
             attacks = [\"{}\"]\n\
             shards = {shards}\n\
             [sweep]\n\
             batch_size = 8\n\
             variants = [\"distill/*/pos=0\"]\n\
             [cluster]\n\
             cpus_per_task = 1\n{extra}",
            model(),
            common::fixtures().join("tiny-rn.state_dict.pt").display(),
            photos.display(),
            common::repo().join("attacks/distill-suite.toml").display()
        ),
    )
    .unwrap();
    plan
}

#[test]
fn plan_writes_job_files_runs_locally_and_merges_to_a_plain_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let plan = write_plan(dir.path(), &photos, 2, "");
    let out = dir.path().join("zoo");
    let (p, o) = (plan.to_str().unwrap(), out.to_str().unwrap());
    let said = ok(&typoclip(&["plan", p, "--out", o]));
    assert!(said.contains("2 runs x 2 shards = 4 jobs"), "{said}");
    let tsv = String::from_utf8(read(&out.join("jobs.tsv"))).unwrap();
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows[0][..3], ["job", "run", "shard"]);
    assert_eq!(rows.len(), 5, "{tsv}");
    let run_vit = "tiny-vit.state_dict/photos/distill-suite";
    let run_rn = "tiny-rn.state_dict/photos/distill-suite";
    for (k, (run, shard)) in [
        (run_vit, "0/2"),
        (run_vit, "1/2"),
        (run_rn, "0/2"),
        (run_rn, "1/2"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(rows[k + 1][0], k.to_string());
        assert_eq!(rows[k + 1][1], *run);
        assert_eq!(rows[k + 1][2], *shard);
        assert!(rows[k + 1][6].contains(&format!("--shard {shard}")));
    }
    let slurm = String::from_utf8(read(&out.join("slurm.sh"))).unwrap();
    assert!(slurm.contains("#SBATCH --array=0-3\n"), "{slurm}");
    assert!(slurm.contains("#SBATCH --cpus-per-task=1\n"));
    assert!(slurm.contains("--job \"$SLURM_ARRAY_TASK_ID\""));
    let k8s = String::from_utf8(read(&out.join("k8s-job.yaml"))).unwrap();
    for needle in [
        "kind: Job",
        "completionMode: Indexed",
        "completions: 4",
        "$JOB_COMPLETION_INDEX",
    ] {
        assert!(k8s.contains(needle), "`{needle}` not in:\n{k8s}");
    }
    let status = ok(&typoclip(&["plan", p, "--out", o, "--status"]));
    assert!(status.contains("0 of 4 jobs done"), "{status}");
    // One job by hand, then the rest locally, two at a time.
    ok(&typoclip_1(&["plan", p, "--out", o, "--job", "1"]));
    let status = ok(&typoclip(&["plan", p, "--out", o, "--status"]));
    assert!(status.contains("1 of 4 jobs done"), "{status}");
    let local = ok(&typoclip(&[
        "plan",
        p,
        "--out",
        o,
        "--local",
        "-j",
        "2",
        "--threads",
        "1",
    ]));
    assert!(local.contains("running 3 of 4 jobs"), "{local}");
    assert!(local.contains("merged 2 shards"), "{local}");
    let status = ok(&typoclip(&["plan", p, "--out", o, "--status"]));
    assert!(status.contains("4 of 4 jobs done"), "{status}");
    assert!(
        status.contains(&format!("{run_vit}\t2/2\t0\t0\t72/72\tyes")),
        "{status}"
    );
    // The merged run equals the same sweep typed by hand.
    let plain = dir.path().join("plain");
    let plain_args = sweep_args(&photos, &plain);
    ok(&typoclip_1(
        &plain_args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    for f in ["records.jsonl", "summary.json", "summary.csv"] {
        assert!(
            read(&plain.join(f)) == read(&out.join(run_vit).join(f)),
            "{f} differs between the plan's merged run and a plain sweep"
        );
    }
    // The zoo view of compare: both runs have parameter counts (counted from the weights), no
    // pretraining facts (local files the registry does not know): left out, with a note.
    let cmp = dir.path().join("cmp");
    ok(&typoclip(&[
        "compare",
        out.join(run_vit).to_str().unwrap(),
        out.join(run_rn).to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]));
    let html = String::from_utf8(read(&cmp.join("comparison.html"))).unwrap();
    let md = String::from_utf8(read(&cmp.join("comparison.md"))).unwrap();
    assert!(html.contains("id=\"zoo\""), "zoo section");
    assert!(md.contains("accuracy drop vs parameters"), "{md}");
    assert!(
        md.contains("Left out of \"accuracy drop vs pretraining-set size\"")
            && md.contains("the registry has no pretraining facts for this model"),
        "{md}"
    );
    assert!(
        !md.contains("Left out of \"accuracy drop vs parameters\""),
        "{md}"
    );
    // Out of range.
    refused(
        &typoclip(&["plan", p, "--out", o, "--job", "4"]),
        &["--job 4", "4 jobs"],
    );
}

/// A 2-model × 4-shard manifest: 8 jobs, a Slurm script that `bash -n` accepts, and a
/// Kubernetes manifest that parses as YAML into an Indexed Job of 8 completions with a GPU limit
/// and the results volume.
#[test]
fn a_two_model_four_shard_plan_has_eight_jobs_and_valid_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let plan = write_plan(dir.path(), &photos, 4, "gpus = 1\n");
    let out = dir.path().join("zoo");
    let said = ok(&typoclip(&[
        "plan",
        plan.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(said.contains("2 runs x 4 shards = 8 jobs"), "{said}");
    let tsv = String::from_utf8(read(&out.join("jobs.tsv"))).unwrap();
    assert_eq!(tsv.lines().count(), 9, "{tsv}");
    let bash = Command::new("bash")
        .arg("-n")
        .arg(out.join("slurm.sh"))
        .output()
        .unwrap();
    assert!(
        bash.status.success(),
        "bash -n slurm.sh: {}",
        String::from_utf8_lossy(&bash.stderr)
    );
    let slurm = String::from_utf8(read(&out.join("slurm.sh"))).unwrap();
    assert!(slurm.contains("#SBATCH --array=0-7"), "{slurm}");
    assert!(slurm.contains("#SBATCH --gres=gpu:1\n"), "{slurm}");
    let k8s = String::from_utf8(read(&out.join("k8s-job.yaml"))).unwrap();
    let docs =
        yaml_rust2::YamlLoader::load_from_str(&k8s).unwrap_or_else(|e| panic!("{e}:\n{k8s}"));
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    assert_eq!(spec["completions"].as_i64(), Some(8));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    let c = &pod["containers"][0];
    let command: Vec<&str> = c["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|y| y.as_str().unwrap())
        .collect();
    assert_eq!(command[..2], ["sh", "-c"]);
    assert!(command[2].contains("$JOB_COMPLETION_INDEX"), "{command:?}");
    assert_eq!(
        c["resources"]["limits"]["nvidia.com/gpu"].as_str(),
        Some("1")
    );
    assert_eq!(
        c["volumeMounts"][0]["name"].as_str(),
        pod["volumes"][0]["name"].as_str()
    );
    assert!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
        .as_str()
        .is_some());
    // `threads = T` in the manifest pins every job's libtorch threads.
    assert!(!tsv.contains("--threads"), "{tsv}");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, text.replace("[sweep]\n", "[sweep]\nthreads = 1\n")).unwrap();
    let pinned = dir.path().join("pinned");
    ok(&typoclip(&[
        "plan",
        plan.to_str().unwrap(),
        "--out",
        pinned.to_str().unwrap(),
    ]));
    let tsv = String::from_utf8(read(&pinned.join("jobs.tsv"))).unwrap();
    assert!(
        tsv.lines().skip(1).all(|l| l.contains("--threads 1")),
        "{tsv}"
    );
}

#[test]
fn bad_plans_are_one_line_errors_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let out = dir.path().join("out");
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "batch_size = 8",
            "mode = \"fuzzy\"\nbatch_size = 8",
            &["plan.toml", "sweep.mode", "fuzzy"],
        ),
        (
            "description",
            "colour = 1\ndescription",
            &["plan.toml", "colour"],
        ),
        (
            "batch_size = 8",
            "batch_size = 0",
            &["plan.toml", "sweep.batch_size"],
        ),
        (
            "batch_size = 8",
            "batch_size = 8\ndefenses = [\"wobble\"]",
            &["plan.toml", "sweep.defenses", "wobble"],
        ),
    ];
    for (from, to, needles) in cases {
        let plan = write_plan(dir.path(), &photos, 2, "");
        let text = std::fs::read_to_string(&plan)
            .unwrap()
            .replacen(from, to, 1);
        std::fs::write(&plan, text).unwrap();
        let o = typoclip(&[
            "plan",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        refused(&o, needles);
        assert!(!out.exists(), "a bad plan wrote files");
    }
    let plan = write_plan(dir.path(), &photos, 2, "");
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace(photos.to_str().unwrap(), "no/such/folder");
    std::fs::write(&plan, text).unwrap();
    refused(
        &typoclip(&[
            "plan",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        &["plan.toml", "datasets[0]", "no/such/folder"],
    );
}

/// Any shard count gives the unsharded run's bytes once merged (1, 2 and 7 here; 3 above).
#[test]
fn every_shard_count_merges_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let full = dir.path().join("full");
    run(&sweep_args(&photos, &full));
    for n in [1usize, 2, 7] {
        let sharded = dir.path().join(format!("n{n}"));
        for i in 0..n {
            let mut a = sweep_args(&photos, &sharded);
            a.extend(["--shard".into(), format!("{i}/{n}")]);
            run(&a);
        }
        ok(&typoclip(&[
            "sweep",
            "--merge",
            "--out",
            sharded.to_str().unwrap(),
        ]));
        for f in ["records.jsonl", "summary.json", "summary.csv"] {
            assert!(
                read(&full.join(f)) == read(&sharded.join(f)),
                "{f} differs after merging {n} shards"
            );
        }
    }
}
