//! `typoclip sweep` end to end: physical-attack pairs, corrupt images recorded and skipped,
//! kill-and-resume giving a byte-identical summary, refusal to resume with other inputs.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn typoclip(args: &[&str]) -> Output {
    common::run_typoclip(args, "typoclip-test-sweep-cache")
}

/// A Distill-style folder: per object a blank photo and attacked photos, plus a corrupt file.
fn make_dataset(dir: &Path, objects: usize, words: &[&str]) -> std::path::PathBuf {
    let data = dir.join("photos");
    std::fs::create_dir_all(&data).unwrap();
    for o in 0..objects {
        let name = format!("thing{o}");
        for (w, word) in std::iter::once(&"blank").chain(words).enumerate() {
            let img = image::RgbImage::from_fn(72, 56, |x, y| {
                image::Rgb([
                    (x * 3 + o as u32 * 40) as u8,
                    (y * 4 + w as u32 * 30) as u8,
                    (o * 17 + w * 5) as u8,
                ])
            });
            img.save(data.join(format!("{name}-{word}.png"))).unwrap();
        }
    }
    std::fs::write(
        data.join("thing0-broken.jpg"),
        b"\xFF\xD8\xFF\xE0 not a jpeg",
    )
    .unwrap();
    let desc = dir.join("ds.toml");
    std::fs::write(
        &desc,
        format!(
            "name = \"synthetic\"\nkind = \"distill_in_the_wild\"\npath = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    desc
}

fn model() -> String {
    common::fixtures()
        .join("tiny-vit.state_dict.pt")
        .display()
        .to_string()
}

#[test]
fn corrupt_images_become_error_records() {
    let dir = tempfile::tempdir().unwrap();
    let desc = make_dataset(dir.path(), 2, &["iPod", "pizza"]);
    // More kinds of bad file beside make_dataset's corrupt one: empty, truncated inside the
    // scan, and text with an image extension (decompression bombs: src/dataset unit tests).
    let photos = dir.path().join("photos");
    std::fs::write(photos.join("thing1-empty.jpg"), b"").unwrap();
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        40,
        30,
        image::Rgb([9, 99, 199]),
    ))
    .write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let scan = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    std::fs::write(photos.join("thing1-cut.jpg"), &jpeg[..scan + 20]).unwrap();
    std::fs::write(photos.join("thing1-notes.png"), b"label: iPod").unwrap();
    let out = dir.path().join("run");
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["records"], 8);
    assert_eq!(summary["errors"], 4);
    let records = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    let bad: Vec<&str> = records
        .lines()
        .filter(|l| l.contains("\"error\""))
        .collect();
    assert_eq!(bad.len(), 4);
    for (file, why) in [
        ("thing0-broken.jpg", "cannot decode image header"),
        ("thing1-empty.jpg", "empty file"),
        ("thing1-cut.jpg", "truncated JPEG"),
        ("thing1-notes.png", "cannot decode image header"),
    ] {
        let line = bad
            .iter()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no error record for {file}"));
        assert!(line.contains(why), "{line}");
        assert!(!line.contains("\\n"), "a multi-line error: {line}");
    }
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["random_weights"], false);
    assert!(prov["finished"].is_string());
    // Without --resume an existing run is not overwritten.
    let again = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn killed_run_resumes_to_identical_summary() {
    let dir = tempfile::tempdir().unwrap();
    let words = [
        "iPod", "pizza", "rifle", "radio", "library", "shark", "meow", "trash",
    ];
    let desc = make_dataset(dir.path(), 12, &words);
    let full = dir.path().join("full");
    let args = |out: &Path| -> Vec<String> {
        [
            "sweep",
            "--model",
            &model(),
            "--dataset",
            desc.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "4",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let o = Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(args(&full))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cut = dir.path().join("cut");
    let mut child = Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(args(&cut))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let records = cut.join("records.jsonl");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let n = std::fs::read_to_string(&records)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Simulate power loss mid-line.
    let mut text = std::fs::read_to_string(&records).unwrap();
    let before = text.lines().count();
    assert!(
        (8..97).contains(&before),
        "killed too late or too early: {before} records"
    );
    text.push_str("{\"sample_id\": \"torn");
    std::fs::write(&records, text).unwrap();

    let mut resume = args(&cut);
    resume.push("--resume".into());
    let o = Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(&resume)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = std::fs::read(full.join("summary.json")).unwrap();
    let b = std::fs::read(cut.join("summary.json")).unwrap();
    assert_eq!(a, b, "summary.json differs after resume");
    assert_eq!(
        std::fs::read(full.join("summary.csv")).unwrap(),
        std::fs::read(cut.join("summary.csv")).unwrap()
    );
    assert_eq!(
        std::fs::read(full.join("records.jsonl")).unwrap(),
        std::fs::read(cut.join("records.jsonl")).unwrap()
    );

    // Resuming with another model is refused, naming what differs.
    let mut other = resume.clone();
    let i = other.iter().position(|a| a == "--model").unwrap();
    other[i + 1] = "random:RN50".into();
    assert_refused(
        Command::new(env!("CARGO_BIN_EXE_typoclip")).args(&other),
        "model differs",
    );

    // The run used oneDNN's linear kernels (recorded); resuming on libtorch's `at::linear`
    // would change the last digits of later records, so it is refused too.
    let provenance = std::fs::read_to_string(cut.join("provenance.json")).unwrap();
    assert!(
        provenance.contains("\"cpu_kernels\": \"onednn\""),
        "{provenance}"
    );
    assert_refused(
        Command::new(env!("CARGO_BIN_EXE_typoclip"))
            .args(&resume)
            .env("TYPOCLIP_CPU_LINEAR", "aten"),
        "CPU kernels differs",
    );
}

/// Runs `command`, expecting exit code 2 and `needle` in its stderr.
fn assert_refused(command: &mut Command, needle: &str) {
    let o = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

#[test]
fn scam_slice_with_random_weights_says_so() {
    if common::shared_data().is_none() {
        eprintln!("SKIP: ../shared/data is absent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scam");
    let desc = common::repo().join("datasets/scam.toml");
    let o = typoclip(&[
        "sweep",
        "--model",
        "random:RN50:1",
        "--dataset",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--limit",
        "24",
        "--shuffle",
        "--seed",
        "3",
        "--mode",
        "binary",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.starts_with("# random weights"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.starts_with("# random weights"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["warning"]
        .as_str()
        .unwrap()
        .starts_with("random weights"));
    let total: u64 = summary["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["records"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 24);
    // Binary mode: every top-5 has exactly the two candidate labels.
    for line in std::fs::read_to_string(out.join("records.jsonl"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["clean_top5"].as_array().unwrap().len(), 2, "{line}");
    }
}

#[test]
fn rendered_attacks_make_one_record_per_image_and_variant() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("imgs/apple");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(90 + i * 10, 70, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3 + i * 20) as u8, 90])
        });
        img.save(data.join(format!("a{i}.png"))).unwrap();
    }
    let desc = dir.path().join("ds.toml");
    std::fs::write(
        &desc,
        format!(
            "name = \"apples\"\nkind = \"image_folder\"\npath = \"{}\"\n",
            dir.path().join("imgs").display()
        ),
    )
    .unwrap();
    let spec_path = common::repo().join("attacks/ipod-label.toml");
    let spec = typoclip::attack::AttackSpec::load(&spec_path).unwrap();
    let out = dir.path().join("run");
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--attacks",
        spec_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(out.join("records.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3 * spec.variants.len());
    for r in &records {
        let l0 = r["l0"].as_f64().unwrap();
        assert!(l0 > 0.0 && l0 < 1.0, "{r}");
        assert_eq!(r["true_label"], "apple");
        assert!(r["target_rank_attacked"].as_u64().unwrap() >= 1);
    }
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(
        prov["attack"].as_str().unwrap(),
        std::fs::read_to_string(&spec_path).unwrap()
    );
    // A bad spec is refused before any work, naming file, line and column.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "description = \"x\"\ntarget = \"iPod\"\n[[layers]]\nkind = \"text\"\ntext = \"iPod\"\nopacity = 7\n").unwrap();
    let out2 = dir.path().join("run2");
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--attacks",
        bad.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.toml:6:"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out2.exists(), "work started despite a bad spec");
}

/// `--classes` keeps the named classes, `--variant` the matching variants; both are checked
/// before any work, and the physical pairs keep their clean photo's id in the records.
#[test]
fn class_and_variant_filters() {
    let dir = tempfile::tempdir().unwrap();
    let desc = make_dataset(dir.path(), 3, &["iPod", "pizza"]);
    let out = dir.path().join("classes");
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--classes",
        "thing1,THING2",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    let recs: Vec<typoclip::records::Record> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 4, "2 objects x 2 words");
    for r in &recs {
        assert!(r.sample_id.starts_with("thing1-") || r.sample_id.starts_with("thing2-"));
        let clean = r
            .clean_id
            .as_deref()
            .expect("physical pairs name their clean photo");
        assert!(clean.ends_with("-blank.png"), "{clean}");
        assert_eq!(clean.split('-').next(), r.sample_id.split('-').next());
    }
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--classes",
        "thing1,unicorn",
        "--out",
        dir.path().join("bad").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`unicorn`"));

    // Rendered attacks: only the variants asked for.
    let out = dir.path().join("variants");
    let spec = common::repo().join("attacks/sweep-size.toml");
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--variant",
        "size/size_frac=0.4",
        "--variant",
        "size/size_frac=0.0*",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = summary["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "size/size_frac=0.02",
            "size/size_frac=0.04",
            "size/size_frac=0.06",
            "size/size_frac=0.08",
            "size/size_frac=0.4"
        ]
    );
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        desc.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--variant",
        "nothing*",
        "--out",
        dir.path().join("none").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("matches no variant"));
}

/// `--precision bf16` runs the image tower in bfloat16: recorded in provenance, refused on
/// resume of an fp32 run, and its probabilities stay close to fp32's.
#[test]
fn bf16_precision_is_recorded_and_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let desc = make_dataset(dir.path(), 2, &["iPod"]);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            "sweep",
            "--model",
            "random:RN50",
            "--dataset",
            desc.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--labels",
            "dataset",
        ];
        args.extend(extra);
        let o = typoclip(&args);
        (o, out)
    };
    let (o, fp32) = run("fp32", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (o, bf16) = run("bf16", &["--precision", "bf16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["precision"], "bf16");
    let read = |d: &Path| -> Vec<typoclip::records::Record> {
        std::fs::read_to_string(d.join("records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (a, b) = (read(&fp32), read(&bf16));
    assert_eq!(a.len(), b.len());
    let mut max_diff = 0f32;
    for (x, y) in a.iter().zip(&b).filter(|(x, _)| x.is_ok()) {
        assert!(y.is_ok());
        for (p, q) in [
            (x.p_true_clean, y.p_true_clean),
            (x.p_target_attacked, y.p_target_attacked),
        ] {
            max_diff = max_diff.max((p.unwrap() - q.unwrap()).abs());
        }
    }
    assert!(
        max_diff > 0.0,
        "bf16 gave bit-identical probabilities: not applied?"
    );
    assert!(max_diff < 0.05, "bf16 probabilities differ by {max_diff}");
    let (o, _) = run("fp32", &["--precision", "bf16", "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("precision differs"));
}

/// `typoclip sweep` of the tiny model over `photos` with `spec`, into `out`, quiet, in batches of
/// `batch`, then `extra`.
fn sweep_args(photos: &Path, spec: &Path, out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    let batch = batch.to_string();
    let mut rest = vec!["--batch-size", batch.as_str()];
    rest.extend_from_slice(extra);
    common::sweep_args(Path::new(&model()), photos, spec, out, &rest)
}

/// A class-per-folder dataset (`photos/<class>/`) of 5 + 3 photos and 4 unreadable files: real
/// ImageNet-sample photos when `../shared/data` is there, drawn ones otherwise.
fn make_class_folders(dir: &Path) -> std::path::PathBuf {
    let photos = dir.join("photos");
    let shared = common::shared_data().map(|d| d.join("imagenet-sample"));
    let real: Vec<std::path::PathBuf> = match &shared {
        Some(d) if d.is_dir() => {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
                .collect();
            v.sort();
            v.into_iter().step_by(97).take(8).collect()
        }
        _ => {
            eprintln!("../shared/data/imagenet-sample absent: drawn images instead of photos");
            Vec::new()
        }
    };
    for (i, class) in ["goldfish", "radio"].iter().enumerate() {
        std::fs::create_dir_all(photos.join(class)).unwrap();
        let n = if i == 0 { 5 } else { 3 };
        for k in 0..n {
            let idx = i * 5 + k;
            let target = photos.join(class).join(format!("p{k}.jpg"));
            match real.get(idx) {
                Some(src) => {
                    std::fs::copy(src, &target).unwrap();
                }
                None => {
                    image::RgbImage::from_fn(120 + 7 * idx as u32, 90, |x, y| {
                        image::Rgb([(x * 2) as u8, (y * 3 + idx as u32 * 20) as u8, 90])
                    })
                    .save(&target)
                    .unwrap();
                }
            }
        }
    }
    std::fs::write(photos.join("goldfish/empty.jpg"), b"").unwrap();
    std::fs::write(
        photos.join("goldfish/broken.jpg"),
        b"\xFF\xD8\xFF\xE0 not a jpeg",
    )
    .unwrap();
    std::fs::write(photos.join("radio/notes.png"), b"label: iPod").unwrap();
    let good = std::fs::read(photos.join("radio/p0.jpg")).unwrap();
    std::fs::write(photos.join("radio/cut.jpg"), &good[..good.len() / 3]).unwrap();
    photos
}

/// The property the README promises and shard merging needs: however a rendered-attack sweep is
/// interrupted — SIGKILL at points spread over the run, a torn line, a cut inside the last
/// batch — and with however many workers it resumes, its summary is byte-identical to the
/// uninterrupted run's.
#[test]
fn resume_from_any_cut_point_gives_identical_summary() {
    let dir = tempfile::tempdir().unwrap();
    let photos = make_class_folders(dir.path());
    let spec = common::repo().join("attacks/distill-suite.toml");
    let batch = 16usize;
    let args = |out: &Path, workers: Option<&str>| -> Vec<String> {
        match workers {
            Some(w) => sweep_args(&photos, &spec, out, batch, &["--workers", w]),
            None => sweep_args(&photos, &spec, out, batch, &[]),
        }
    };
    let run = |a: &[String]| {
        let o = Command::new(env!("CARGO_BIN_EXE_typoclip"))
            .args(a)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let full = dir.path().join("full");
    run(&args(&full, None));
    let summary = std::fs::read(full.join("summary.json")).unwrap();
    let summary_csv = std::fs::read(full.join("summary.csv")).unwrap();
    let records = std::fs::read(full.join("records.jsonl")).unwrap();
    let text = String::from_utf8(records.clone()).unwrap();
    let lines: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
    let n = lines.len();
    assert_eq!(n, 12 * 72, "12 files × 72 Distill variants");
    assert_eq!(text.matches("\"error\"").count(), 4 * 72);
    let s: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    assert!(s["variants"][0]["avg_img_l0_norm_diff"].as_f64().unwrap() > 0.0);
    assert_eq!(
        s["variants"][0]["clean_accuracy"]["n"], 8,
        "true labels from the folder names"
    );

    let check = |out: &Path, what: &str| {
        assert_eq!(
            std::fs::read(out.join("records.jsonl")).unwrap(),
            records,
            "records.jsonl differs after {what}"
        );
        assert!(
            std::fs::read(out.join("summary.json")).unwrap() == summary,
            "summary.json differs after {what}:\n{}\nvs\n{}",
            String::from_utf8_lossy(&std::fs::read(out.join("summary.json")).unwrap()),
            String::from_utf8_lossy(&summary)
        );
        assert_eq!(
            std::fs::read(out.join("summary.csv")).unwrap(),
            summary_csv,
            "summary.csv differs after {what}"
        );
    };

    // One worker instead of the default: the same bytes.
    let one = dir.path().join("one-worker");
    run(&args(&one, Some("1")));
    check(&one, "a run with --workers 1");

    // What a SIGKILL leaves is a prefix of the uninterrupted records.jsonl (one appending
    // writer, whole batches synced): cut it at batch boundaries, inside batches, mid-line, and
    // inside the last batch, then resume, alternating the worker count.
    let last_batch_start = lines[(n - 1) / batch * batch - 1];
    let cuts: Vec<(usize, &str)> = vec![
        (0, "nothing written"),
        (lines[0] / 2, "a torn first line"),
        (lines[batch - 1], "one whole batch"),
        (lines[n / 4 + 3] - 5, "a torn line a quarter in"),
        (lines[n / 2 - 1], "half the lines"),
        (lines[3 * n / 4], "three quarters and one line"),
        (last_batch_start, "all but the last batch"),
        (lines[n - 3], "inside the last batch"),
        (lines[n - 1] - 2, "a torn last line"),
        (lines[n - 1], "every line (summary lost)"),
    ];
    for (i, (cut, what)) in cuts.iter().enumerate() {
        let out = dir.path().join(format!("cut{i}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(full.join("provenance.json"), out.join("provenance.json")).unwrap();
        std::fs::write(out.join("records.jsonl"), &records[..*cut]).unwrap();
        let mut a = args(&out, (i % 2 == 1).then_some("1"));
        a.push("--resume".into());
        run(&a);
        check(&out, what);
    }

    // Real SIGKILLs at points spread over the run, resumed with the other worker count.
    let mut landed = 0;
    for (i, frac) in [0.1, 0.45, 0.8].iter().enumerate() {
        let out = dir.path().join(format!("kill{i}"));
        let workers = (i % 2 == 0).then_some("1");
        let mut child = Command::new(env!("CARGO_BIN_EXE_typoclip"))
            .args(args(&out, workers))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let want = (*frac * n as f64) as usize;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let have = std::fs::read(out.join("records.jsonl"))
                .map(|t| t.iter().filter(|&&b| b == b'\n').count())
                .unwrap_or(0);
            if have >= want || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        let have = std::fs::read(out.join("records.jsonl"))
            .map(|t| t.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0);
        landed += (have < n) as usize;
        let mut a = args(&out, if workers.is_some() { None } else { Some("1") });
        a.push("--resume".into());
        run(&a);
        check(&out, &format!("a SIGKILL at {have} of {n} records"));
    }
    assert!(
        landed >= 2,
        "only {landed} of 3 kills landed before the run ended"
    );
}

/// A flat folder of unlabelled images is a dataset: accuracy-type metrics are absent with a
/// note, the targeted metrics of the attack spec remain; without --attacks it is refused.
#[test]
fn flat_folder_of_unlabelled_images() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("holiday");
    std::fs::create_dir_all(&photos).unwrap();
    for i in 0..3u32 {
        image::RgbImage::from_fn(80, 60 + i * 9, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 2 + i * 40) as u8, 120])
        })
        .save(photos.join(format!("IMG_{i:04}.png")))
        .unwrap();
    }
    let spec = common::repo().join("attacks/ipod-label.toml");
    let out = dir.path().join("run");
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        photos.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("note: no true labels"), "{stdout}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let v = &s["variants"][0];
    assert!(v.get("clean_accuracy").unwrap().is_null(), "{v}");
    assert!(v.get("attack_success_rate").unwrap().is_null(), "{v}");
    assert_eq!(v["fraction_changed_to"]["n"], 3, "{v}");
    assert!(s["notes"][0].as_str().unwrap().contains("no true labels"));
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert!(prov["dataset_descriptor"]
        .as_str()
        .unwrap()
        .contains("image_folder"));
    assert_eq!(prov["dataset"], "holiday");
    assert!(
        prov["labels"].as_str().unwrap().starts_with("imagenet"),
        "{prov}"
    );

    // Without an attack spec there is nothing to evaluate in unlabelled photos: refused early.
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        photos.to_str().unwrap(),
        "--out",
        dir.path().join("run2").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("holiday") && e.lines().count() == 1, "{e}");
    // A folder that is not a dataset: one line naming it.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = typoclip(&[
        "sweep",
        "--model",
        &model(),
        "--dataset",
        empty.to_str().unwrap(),
        "--out",
        dir.path().join("run3").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("empty folder") && e.lines().count() == 1, "{e}");
}

/// A model with a logit bias (SigLIP-style) is scored with a per-class sigmoid in sweeps:
/// provenance says so, the probabilities of the whole label set do not sum to one, and the
/// report's first line names the scoring.
#[test]
fn sigmoid_model_sweeps_with_sigmoid_scores_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let f = common::fixtures();
    let mut tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(f.join("tiny-vit.open_clip.safetensors")).unwrap();
    tensors.push(("logit_bias".into(), tch::Tensor::from(-3.0f32)));
    let weights = dir.path().join("biased.safetensors");
    tch::Tensor::write_safetensors(&tensors, &weights).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.join("tiny-vit.open_clip_config.json")).unwrap(),
    )
    .unwrap();
    cfg["model_cfg"]["init_logit_bias"] = serde_json::json!(-3.0);
    std::fs::write(
        dir.path().join("biased.open_clip_config.json"),
        cfg.to_string(),
    )
    .unwrap();
    let photos = dir.path().join("photos/apple");
    std::fs::create_dir_all(&photos).unwrap();
    for i in 0..2u32 {
        image::RgbImage::from_fn(80, 70, |x, y| {
            image::Rgb([(x * 3) as u8, (y + i * 50) as u8, 60])
        })
        .save(photos.join(format!("{i}.png")))
        .unwrap();
    }
    let out = dir.path().join("run");
    let o = typoclip(&[
        "sweep",
        "--model",
        weights.to_str().unwrap(),
        "--dataset",
        dir.path().join("photos").to_str().unwrap(),
        "--attacks",
        common::repo()
            .join("attacks/ipod-label.toml")
            .to_str()
            .unwrap(),
        "--labels",
        "apple,pear,plum",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--report",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["scoring"], "sigmoid");
    for line in std::fs::read_to_string(out.join("records.jsonl"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        // Four classes (the three labels and the target iPod): all in the top 5.
        let sum: f64 = r["clean_top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["prob"].as_f64().unwrap())
            .sum();
        assert_eq!(r["clean_top5"].as_array().unwrap().len(), 4, "{line}");
        assert!(
            (sum - 1.0).abs() > 1e-3,
            "sigmoid scores summed to one: {line}"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.lines().next().unwrap().contains("sigmoid scoring"),
        "{md}"
    );
}

/// The libtorch thread count is part of a run: `--threads` is recorded, a resume without it
/// adopts the recorded count whatever the machine's default (so a requeued job on another node
/// resumes to the same bytes), and a `--threads` that contradicts the record is refused in one
/// line naming the file.
#[test]
fn a_resumed_run_keeps_the_thread_count_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let photos = make_class_folders(dir.path());
    let spec = common::repo().join("attacks/ipod-label.toml");
    let sweep = |out: &Path, extra: &[&str]| {
        let args = sweep_args(&photos, &spec, out, 4, extra);
        typoclip(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let threads = |out: &Path| -> i64 {
        let p: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
                .unwrap();
        p["threads"].as_i64().unwrap()
    };
    let full = dir.path().join("full");
    let o = sweep(&full, &["--threads", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(threads(&full), 1);
    let records = std::fs::read(full.join("records.jsonl")).unwrap();
    let cut = |name: &str| -> std::path::PathBuf {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(full.join("provenance.json"), out.join("provenance.json")).unwrap();
        let half = records.len() / 2;
        std::fs::write(out.join("records.jsonl"), &records[..half]).unwrap();
        out
    };
    let resumed = cut("resumed");
    let o = sweep(&resumed, &["--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(threads(&resumed), 1, "the resume took another thread count");
    assert_eq!(
        std::fs::read(resumed.join("records.jsonl")).unwrap(),
        records
    );
    assert_eq!(
        std::fs::read(resumed.join("summary.json")).unwrap(),
        std::fs::read(full.join("summary.json")).unwrap()
    );
    let refused = cut("refused");
    let o = sweep(&refused, &["--resume", "--threads", "2"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.lines().count() == 1 && e.contains("--threads 2") && e.contains("provenance.json"),
        "{e}"
    );
}

/// `--composite device` (the Distill suite's labels rasterised once and composited onto each
/// batch as tensor operations, here on the CPU device) writes the same records as the image
/// workers drawing every label, byte for byte, and says so in provenance.
#[test]
fn device_composite_writes_the_same_records_as_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let photos = make_class_folders(dir.path());
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("attacks/distill-suite.toml");
    let run = |name: &str, composite: &str| {
        let out = dir.path().join(name);
        let args = sweep_args(&photos, &spec, &out, 8, &["--composite", composite]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = typoclip(&args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{stderr}");
        (out, stderr)
    };
    let ((cpu, said_cpu), (device, said_device)) = (run("cpu", "cpu"), run("device", "device"));
    assert!(!said_cpu.contains("where the model runs"), "{said_cpu}");
    assert!(
        said_device.contains("attacked where the model runs"),
        "{said_device}"
    );
    let records = |d: &Path| std::fs::read_to_string(d.join("records.jsonl")).unwrap();
    let (a, b) = (records(&cpu), records(&device));
    assert!(a.lines().count() >= 8 * 72, "{} records", a.lines().count());
    let l0: Vec<f64> = a
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["l0"].as_f64())
        .collect();
    assert!(
        l0.iter().filter(|&&v| v > 0.0).count() > l0.len() / 2,
        "labels change pixels"
    );
    assert_eq!(a, b, "device-composited records differ from the workers'");
    let prov = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("provenance.json")).unwrap()).unwrap()
    };
    assert_eq!(prov(&device)["composite"], "device");
    assert!(prov(&cpu).get("composite").is_none());
}
