//! The positive control (`typoclip toy`): training is deterministic and resumes bit-exact;
//! open_clip itself loads the folder it writes and gives the same embeddings; `--fallback-toy`
//! runs the toy, its synthetic scenes and its label attack, saying so first; `neurons` finds a
//! unit of the toy that reads the written word; the trained toy meets the bars of a positive
//! control (clean accuracy, the label attack, its dose-response, the defenses). The tests that
//! need the default toy train it into the cache when it is missing (set-up has trained it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{max_relative, read_npy_f32, read_tensors, repo};
use typoclip::records::Record;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_typoclip"))
}

fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "typoclip failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run(args: &[&str]) -> String {
    ok(bin().args(args).current_dir(repo()).output().unwrap())
}

/// The trained toy in the cache (`typoclip toy train` with its defaults: a no-op when set-up
/// already trained it).
fn toy() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = run(&["toy", "train", "--quiet"]);
        PathBuf::from(out.trim().lines().last().unwrap())
    })
}

fn small_train(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "toy",
        "train",
        "--out",
        dir.to_str().unwrap(),
        "--steps",
        "6",
        "--batch",
        "8",
        "--checkpoint-every",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn training_is_deterministic_and_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let out = small_train(&a, &[]);
    assert!(out.starts_with("toy CLIP trained by typoclip"), "{out}");
    let stopped = small_train(&b, &["--stop-after", "3"]);
    assert!(stopped.contains("stopped after 3 steps"), "{stopped}");
    assert!(b.join("train-state.safetensors").is_file());
    assert!(!b.join("typoclip-toy.json").exists());
    let resumed = small_train(&b, &[]);
    assert!(resumed.contains("trained 3 steps"), "{resumed}");
    small_train(&c, &["--seed", "1"]);
    let w = |d: &Path| std::fs::read(d.join("open_clip_model.safetensors")).unwrap();
    assert!(w(&a) == w(&b), "a resumed run ends with other weights");
    assert!(w(&a) != w(&c), "another seed gives the same weights");
    assert!(!b.join("train-state.safetensors").exists());
    // A finished folder is not trained again; other settings are refused.
    assert!(small_train(&a, &[]).contains("already trained"));
    let o = bin()
        .args(["toy", "train", "--out", a.to_str().unwrap(), "--steps", "7"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
}

#[test]
fn open_clip_loads_the_toy_folder_and_gives_the_same_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("toy");
    small_train(&model, &[]);
    let world = tmp.path().join("world");
    run(&[
        "toy",
        "world",
        "--out",
        world.to_str().unwrap(),
        "--count",
        "6",
    ]);
    let images: Vec<String> = (0..6)
        .map(|i| world.join(format!("{i:04}.png")).display().to_string())
        .collect();
    let texts = [
        "a photo of a star.",
        "a red circle with the word 'ring' written on it.",
    ];
    let img_npy = tmp.path().join("img.npy");
    let mut args = vec!["embed", "--model", model.to_str().unwrap(), "--out"];
    args.push(img_npy.to_str().unwrap());
    args.extend(images.iter().map(String::as_str));
    let o = bin().args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("# toy CLIP trained by typoclip"),
        "{stderr}"
    );
    let txt_npy = tmp.path().join("txt.npy");
    let mut args = vec!["embed", "--model", model.to_str().unwrap(), "--out"];
    args.push(txt_npy.to_str().unwrap());
    for t in texts {
        args.extend(["--text", t]);
    }
    run(&args);
    let reference = tmp.path().join("ref.safetensors");
    let status = Command::new(common::python())
        .arg(repo().join("scripts/reference_toy.py"))
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&reference)
        .arg("--images")
        .args(&images)
        .arg("--texts")
        .args(texts)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/reference_toy.py failed");
    let r = read_tensors(&reference);
    let di = max_relative(&read_npy_f32(&img_npy), &r["image_features"]);
    let dt = max_relative(&read_npy_f32(&txt_npy), &r["text_features"]);
    assert!(
        di < 1e-4,
        "image embeddings differ from open_clip's by {di:e} (relative)"
    );
    assert!(
        dt < 1e-4,
        "text embeddings differ from open_clip's by {dt:e} (relative)"
    );
}

/// A run's `records.jsonl`.
fn records(run_dir: &Path) -> Vec<Record> {
    std::fs::read_to_string(run_dir.join("records.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Pooled rates over a run's records: (clean accuracy, attacked accuracy, changed to target).
fn rates(run_dir: &Path) -> (f64, f64, f64, usize) {
    let recs = records(run_dir);
    let ok: Vec<&Record> = recs.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(
        ok.len(),
        recs.len(),
        "error records in {}",
        run_dir.display()
    );
    let n = ok.len() as f64;
    let clean = ok
        .iter()
        .filter(|r| r.clean_top1() == r.true_label.as_deref())
        .count() as f64;
    let attacked = ok
        .iter()
        .filter(|r| r.attacked_top1() == r.true_label.as_deref())
        .count() as f64;
    let to_target = ok
        .iter()
        .filter(|r| {
            r.clean_top1() != r.target.as_deref() && r.attacked_top1() == r.target.as_deref()
        })
        .count() as f64;
    assert!(
        ok.iter().all(|r| r.true_label != r.target),
        "skip_own_class: no cell writes the image's own class"
    );
    (clean / n, attacked / n, to_target / n, ok.len())
}

fn sweep(out: &Path, attacks: &str, limit: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "sweep",
        "--model",
        toy().to_str().unwrap(),
        "--dataset",
        "datasets/synthetic.toml",
        "--attacks",
        attacks,
        "--limit",
        limit,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Measured (2026-12-02, the default toy as set-up trains it, the same on an AMD EPYC and an
/// Intel Xeon VM): clean 91.5 %, attacked 8.3 %, 37.1 % of 1800 cells changed to the
/// written class.
#[test]
fn the_toy_reads_clean_accuracy_and_the_label_attack() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("labels");
    let printed = sweep(&out, "attacks/toy-labels.toml", "200", &[]);
    assert!(
        printed.starts_with("toy CLIP trained by typoclip") || printed.contains("# toy CLIP"),
        "{printed}"
    );
    let (clean, attacked, to_target, n) = rates(&out);
    eprintln!("toy-labels, n = {n} cells: clean {clean:.3}, attacked {attacked:.3}, changed to target {to_target:.3}");
    assert!(clean >= 0.90, "clean accuracy {clean:.3} < 0.90");
    assert!(to_target >= 0.30, "changed to target {to_target:.3} < 0.30");
    assert!(
        attacked <= clean - 0.25,
        "attacked accuracy {attacked:.3} is not 25 points below clean {clean:.3}"
    );
}

/// `--precision bf16` (autocast) on a trained model: the toy's top-1 predictions agree with
/// fp32 on at least 99 % of the label attack's cells, attacked and clean. Measured
/// (2026-12-02, Intel Xeon with AVX512-BF16): 99.4 % attacked, 100 % clean over 2700 cells.
#[test]
fn bf16_agrees_with_fp32_on_the_trained_toy() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("fp32"), tmp.path().join("bf16"));
    sweep(&a, "attacks/toy-labels.toml", "300", &[]);
    sweep(
        &b,
        "attacks/toy-labels.toml",
        "300",
        &["--precision", "bf16"],
    );
    let (ra, rb) = (records(&a), records(&b));
    assert_eq!(ra.len(), rb.len());
    let share = |f: &dyn Fn(&Record) -> Option<&str>| {
        ra.iter().zip(&rb).filter(|(x, y)| f(x) == f(y)).count() as f64 / ra.len() as f64
    };
    let attacked = share(&|r| r.attacked_top1());
    let clean = share(&|r| r.clean_top1());
    eprintln!(
        "bf16 vs fp32 top-1 agreement over {} cells: attacked {attacked:.4}, clean {clean:.4}",
        ra.len()
    );
    assert!(
        attacked >= 0.99,
        "attacked top-1 agreement {attacked:.4} < 0.99"
    );
    assert!(clean >= 0.99, "clean top-1 agreement {clean:.4} < 0.99");
    let prov = std::fs::read_to_string(b.join("provenance.json")).unwrap();
    assert!(
        prov.contains("\"bf16\""),
        "provenance records the precision"
    );
}

#[test]
fn the_effect_rises_with_label_size_and_opacity() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dose");
    sweep(&out, "attacks/toy-dose.toml", "80", &[]);
    let recs = records(&out);
    let rate = |size: &str, opacity: &str| {
        let sel: Vec<&Record> = recs
            .iter()
            .filter(|r| {
                r.variant.contains(&format!("size_frac={size}"))
                    && r.variant.contains(&format!("opacity={opacity}"))
            })
            .collect();
        assert!(
            !sel.is_empty(),
            "no records for size {size}, opacity {opacity}"
        );
        sel.iter()
            .filter(|r| r.attacked_top1() == r.target.as_deref())
            .count() as f64
            / sel.len() as f64
    };
    let by_size: Vec<f64> = ["0.09", "0.13", "0.17"]
        .iter()
        .map(|s| rate(s, "1"))
        .collect();
    let by_opacity: Vec<f64> = ["0.35", "0.7", "1"]
        .iter()
        .map(|o| rate("0.17", o))
        .collect();
    eprintln!("read as the written class: by size {by_size:?}, by opacity {by_opacity:?}");
    assert!(
        by_size[0] < by_size[1] && by_size[1] < by_size[2],
        "not rising with size: {by_size:?}"
    );
    assert!(
        by_opacity[0] < by_opacity[2],
        "not rising with opacity: {by_opacity:?}"
    );
}

/// Attack success rate (TextAttack's: images right when clean and wrong when attacked, over
/// images right when clean) pooled over a run's records, and attacked accuracy.
fn asr(run_dir: &Path) -> (f64, f64) {
    let recs = records(run_dir);
    let right: Vec<&Record> = recs
        .iter()
        .filter(|r| r.clean_top1() == r.true_label.as_deref())
        .collect();
    let fooled = right
        .iter()
        .filter(|r| r.attacked_top1() != r.true_label.as_deref())
        .count();
    let attacked = recs
        .iter()
        .filter(|r| r.attacked_top1() == r.true_label.as_deref())
        .count();
    (
        fooled as f64 / right.len().max(1) as f64,
        attacked as f64 / recs.len().max(1) as f64,
    )
}

/// The defenses, for real: oracle masking of the words in plain ink restores attacked accuracy
/// to within 5 points of clean (and raises it under the label's paper, which hides much of the
/// object); blur and the ignore-text prompts lower the attack success rate; mean-ablating the
/// fitted typographic head lowers how often a scene reads as the written class; the
/// comparisons rank the runs. The evaluation writes five class names, the heads are fitted on
/// the other five (other scenes, other fonts), as the sweep's disjointness check requires.
///
/// Measured (2026-12-02, as above): labels — none: clean 98.5 %, attacked 12.3 %, ASR
/// 88.1 %, 60.7 % changed to target; oracle mask: attacked 65.7 %; blur: ASR 80.5 %;
/// ignore-text: ASR 77.0 %; mean-ablating the best fitted head: 41.8 % changed to target
/// (ASR 90.3 %, clean 90.8 %); ink — attacked 20.5 %, masked 96.7 % against clean 98.5 %.
#[test]
fn defenses_move_the_attack_success_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let heads = tmp.path().join("heads.json");
    let fitted = run(&[
        "fit",
        "heads",
        "--model",
        toy().to_str().unwrap(),
        "--dataset",
        "datasets/synthetic-calibration.toml",
        "--words",
        "circle,square,triangle,star,hexagon",
        "--fonts",
        "mono,serif",
        // As wide as the evaluation's labels (attacks/toy-labels.toml): the toy reads large words.
        "--label-width",
        "0.85",
        // Zeroing a head of this small model also removes its large constant part.
        "--ablation",
        "mean",
        "--limit",
        "60",
        "--out",
        heads.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(fitted.starts_with("# toy CLIP"), "{fitted}");
    let variants = ["*/cross", "*/diamond", "*/ring", "*/crescent", "*/arrow"];
    let mut extra: Vec<&str> = Vec::new();
    for v in &variants {
        extra.extend(["--variant", v]);
    }
    // One of the toy's eight heads (4 blocks × 2): each carries much of its shape recognition.
    let heads_spec = format!("heads:file={},k=1", heads.display());
    let labels = "attacks/toy-labels.toml";
    // The same words in plain ink: masking the glyphs leaves the object visible, where the
    // label's paper hides much of it.
    let ink_spec = "attacks/toy-ink.toml";
    let runs: Vec<(&str, &str, Vec<&str>)> = vec![
        ("none", labels, vec![]),
        ("mask", labels, vec!["--defense", "mask"]),
        ("blur", labels, vec!["--defense", "blur:sigma=1.5"]),
        ("heads", labels, vec!["--defense", heads_spec.as_str()]),
        (
            "ignore-text",
            labels,
            vec!["--defense", "prompt:set=ignore-text"],
        ),
        ("ink", ink_spec, vec![]),
        ("ink-mask", ink_spec, vec!["--defense", "mask"]),
    ];
    let mut measured = Vec::new();
    for (name, spec, defense) in &runs {
        let out = tmp.path().join(name);
        let mut args = extra.clone();
        args.extend(defense.iter().copied());
        sweep(&out, spec, "120", &args);
        let (clean, _, to_target, _) = rates(&out);
        let (a, acc) = asr(&out);
        eprintln!(
            "{name:<12} clean {clean:.3} attacked {acc:.3} ASR {a:.3} changed to target {to_target:.3}"
        );
        measured.push((name.to_string(), clean, acc, a, to_target));
    }
    let get = |n: &str| measured.iter().find(|m| m.0 == n).unwrap().clone();
    let none = get("none");
    let (ink, ink_mask) = (get("ink"), get("ink-mask"));
    assert!(
        ink.2 < ink.1 - 0.25,
        "the ink attack does not work, so masking it shows nothing: {measured:?}"
    );
    assert!(
        ink_mask.2 >= ink.1 - 0.05,
        "oracle masking of ink: attacked accuracy {:.3} not within 5 points of clean {:.3}",
        ink_mask.2,
        ink.1
    );
    assert!(
        get("mask").2 > none.2,
        "oracle masking of labels does not raise attacked accuracy: {measured:?}"
    );
    assert!(
        get("blur").3 < none.3,
        "blur does not lower ASR: {measured:?}"
    );
    // The fitted head carries the written word's pull: taking it out lowers how often an
    // attacked scene reads as the written class (what `fit heads` ranks by). It does not lower
    // the untargeted ASR, recorded beside it: the scenes it no longer reads as the word it
    // mostly still gets wrong, the label hiding much of the object and the head also seeing.
    assert!(
        get("heads").4 < none.4 - 0.1,
        "head ablation does not lower the changed-to-target rate by 10 points: {measured:?}"
    );
    assert!(
        get("ignore-text").3 < none.3,
        "the ignore-text prompts do not lower ASR: {measured:?}"
    );
    // Each attack's runs are ranked against its own undefended run.
    for (spec, label) in [(labels, "labels"), (ink_spec, "ink")] {
        let group: Vec<&str> = runs.iter().filter(|r| r.1 == spec).map(|r| r.0).collect();
        let dirs: Vec<String> = group
            .iter()
            .map(|n| tmp.path().join(n).display().to_string())
            .collect();
        let cmp = tmp.path().join(format!("comparison-{label}"));
        let mut args = vec!["compare"];
        args.extend(dirs.iter().map(String::as_str));
        args.extend(["--out", cmp.to_str().unwrap()]);
        let printed = run(&args);
        assert!(printed.starts_with("# toy CLIP"), "{printed}");
        assert!(cmp.join("comparison.html").is_file());
        for n in &group {
            assert!(
                printed.contains(n),
                "{n} missing from the comparison:\n{printed}"
            );
        }
    }
}

#[test]
fn fallback_toy_runs_the_positive_control_when_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    small_train(&cache.join("typoclip").join("toy"), &[]);
    let out = tmp.path().join("first-run");
    let o = bin()
        .args([
            "sweep",
            "--builtin",
            "--attacks",
            "attacks/distill-suite.toml",
            "--fallback-toy",
            "--limit",
            "20",
            "--out",
            out.to_str().unwrap(),
            "--report",
            "--quiet",
        ])
        .current_dir(repo())
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("# toy CLIP trained by typoclip"),
        "first line: {stdout}"
    );
    assert!(
        stderr.contains("--fallback-toy runs the positive control"),
        "{stderr}"
    );
    // 20 scenes, each with the nine other classes' names (its own class's case is skipped).
    let records = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 20 * 9);
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["toy_model"], true);
    assert_eq!(prov["random_weights"], false);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("toy CLIP trained by typoclip"),
        "no toy banner in the report"
    );
    // Without the toy in the cache the fallback says how to make it.
    let o = bin()
        .args([
            "sweep",
            "--builtin",
            "--fallback-toy",
            "--out",
            tmp.path().join("x").to_str().unwrap(),
        ])
        .current_dir(repo())
        .env("XDG_CACHE_HOME", tmp.path().join("empty"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("typoclip toy train"));
}

/// Mean of column `unit_{u}` over the rows of a `neurons` activations.csv whose image id
/// satisfies `keep`.
fn mean_activation(csv: &Path, unit: i64, keep: impl Fn(&str) -> bool) -> (f64, usize) {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == format!("unit_{unit}"))
        .unwrap_or_else(|| panic!("no unit_{unit} in {}", csv.display()));
    let values: Vec<f64> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| keep(f[0].trim_matches('"')))
        .map(|f| f[col].parse().unwrap())
        .collect();
    (
        values.iter().sum::<f64>() / values.len().max(1) as f64,
        values.len(),
    )
}

/// `attack-change.csv` of a `neurons --attack` run: (unit, mean change, standardized change),
/// largest increase first.
fn attack_changes(csv: &Path) -> Vec<(i64, f64, f64)> {
    std::fs::read_to_string(csv)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("unit,"))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect()
}

/// Probes on the toy: the MLP unit of the last block that the written word "square" raises most
/// (by its standardized change, as `typoclip neurons --attack` ranks units) responds more to the
/// word written on other objects than to square objects with nothing written on them; and among
/// the five units ranked first, one reads the word — the word "square" raises it at least 1.5
/// times as much as the word "circle" on the same label — rather than reacting to any label.
#[test]
fn a_text_reading_unit_responds_to_the_word_more_than_to_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    let neurons = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "neurons",
            "--model",
            toy().to_str().unwrap(),
            "--layer",
            "resblocks.3.mlp",
            "--dataset",
            "datasets/synthetic.toml",
            "--limit",
            "400",
            "--shuffle",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let printed = run(&args);
        assert!(printed.starts_with("# toy CLIP"), "{printed}");
    };
    let square = tmp.path().join("square");
    neurons(
        &square,
        &[
            "--attack",
            "attacks/toy-labels.toml",
            "--variant",
            "toy-labels/square",
        ],
    );
    let mut ranked = attack_changes(&square.join("attack-change.csv"));
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2));
    let top: Vec<i64> = ranked.iter().take(5).map(|r| r.0).collect();
    let unit = top[0];
    let units = top.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    // Clean activations of the chosen units, and the word "circle" on the same label.
    let circle = tmp.path().join("circle");
    neurons(
        &circle,
        &[
            "--attack",
            "attacks/toy-labels.toml",
            "--variant",
            "toy-labels/circle",
            "--unit",
            &units,
        ],
    );
    let acts = circle.join("activations.csv");
    let (clean_all, n) = mean_activation(&acts, unit, |_| true);
    let (square_objects, n_sq) = mean_activation(&acts, unit, |id| id.starts_with("square/"));
    let (others, _) = mean_activation(&acts, unit, |id| !id.starts_with("square/"));
    let word_change = ranked.iter().find(|r| r.0 == unit).unwrap().1;
    eprintln!(
        "unit {unit}: clean mean {clean_all:.3} over {n} scenes, square objects {square_objects:.3} \
         ({n_sq} scenes), other objects {others:.3}; the word 'square' written raises it by {word_change:.3}"
    );
    assert!(n_sq >= 20, "too few square scenes: {n_sq}");
    // The written word moves the unit far more than the object does.
    assert!(
        clean_all + word_change > square_objects + 0.5,
        "unit {unit}: with the word {:.3}, square objects {square_objects:.3}",
        clean_all + word_change
    );
    assert!(
        word_change > 3.0 * (square_objects - others).abs(),
        "unit {unit}: the word raises it by {word_change:.3}, the object by {:.3}",
        square_objects - others
    );
    let by_circle = attack_changes(&circle.join("attack-change.csv"));
    let reads = top.iter().find(|u| {
        let sq = ranked.iter().find(|r| r.0 == **u).unwrap().1;
        let ci = by_circle.iter().find(|r| r.0 == **u).unwrap().1;
        eprintln!("unit {u}: 'square' raises it by {sq:.3}, 'circle' by {ci:.3}");
        sq >= 1.5 * ci.max(0.0) && sq > 0.0
    });
    assert!(
        reads.is_some(),
        "no unit of {top:?} reads 'square' rather than any label"
    );
}
