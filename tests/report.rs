//! `typoclip report` and `typoclip compare` on small hand-made runs written by the tests: every
//! section is there, plots are valid SVG, the numbers in the HTML are the summary's, the
//! Markdown matches its snapshot, McNemar counts are right, incompatible runs are refused, and
//! the page renders in a real browser when Chromium is installed.

mod common;

use std::path::{Path, PathBuf};

use common::{repo, run_typoclip};
use scraper::{Html, Selector};
use typoclip::records::{Record, Scored};
use typoclip::sweep::provenance::Provenance;
use typoclip::sweep::SweepSummary;

const IMAGES: [&str; 4] = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"];
const TRUE: [&str; 4] = ["astronaut", "tabby cat", "cup", "missile"];
const SIZES: [&str; 3] = ["0.02", "0.12", "0.4"];

fn scored(labels: &[(&str, f32)]) -> Vec<Scored> {
    labels
        .iter()
        .map(|(l, p)| Scored {
            label: l.to_string(),
            prob: *p,
        })
        .collect()
}

/// Records whose outcomes are fixed by (image, size): the bigger the word, the more images
/// flip to "iPod"; `defended` flips fewer. One error record when `with_error`.
fn records(defended: bool, with_error: bool) -> Vec<Record> {
    let mut out = Vec::new();
    for (s_i, size) in SIZES.iter().enumerate() {
        for (i, (img, y)) in IMAGES.iter().zip(TRUE).enumerate() {
            let clean_right = i != 3; // the rocket is misclassified when clean
            let clean_top = if clean_right {
                scored(&[(y, 0.6), ("iPod", 0.1), ("pizza", 0.05)])
            } else {
                scored(&[("pizza", 0.5), (y, 0.2), ("iPod", 0.1)])
            };
            let flips = if defended { i < s_i } else { i <= s_i };
            let attacked_top = if flips {
                scored(&[("iPod", 0.7), (y, 0.1), ("pizza", 0.05)])
            } else {
                clean_top.clone()
            };
            out.push(Record {
                sample_id: img.to_string(),
                variant: format!("size/size_frac={size}"),
                true_label: Some(y.to_string()),
                target: Some("iPod".into()),
                p_true_clean: Some(clean_top.iter().find(|s| s.label == y).unwrap().prob),
                p_true_attacked: Some(attacked_top.iter().find(|s| s.label == y).unwrap().prob),
                p_target_clean: Some(0.1),
                p_target_attacked: Some(attacked_top[0].prob.max(0.1)),
                target_rank_attacked: Some(if flips { 1 } else { 2 }),
                clean_top5: clean_top,
                attacked_top5: attacked_top,
                l0: 0.01 * (s_i + 1) as f64,
                ..Record::default()
            });
        }
    }
    if with_error {
        out.push(Record {
            sample_id: "broken.jpg".into(),
            variant: format!("size/size_frac={}", SIZES[0]),
            true_label: Some("cup".into()),
            target: Some("iPod".into()),
            error: Some("broken.jpg: truncated JPEG".into()),
            ..Record::default()
        });
    }
    out
}

fn provenance(random: bool, started: &str, finished: &str) -> Provenance {
    let spec = std::fs::read_to_string(repo().join("attacks/sweep-size.toml")).unwrap();
    Provenance {
        warning: random.then(|| {
            format!(
                "{} (model random:ViT-B-32:0)",
                typoclip::cli::resolve::RANDOM_WEIGHTS_BANNER
            )
        }),
        typoclip_version: "0.1.0".into(),
        git_commit: "0123456789ab".into(),
        model: if random {
            "random:ViT-B-32:0".into()
        } else {
            "ViT-B-32".into()
        },
        model_id: "test".into(),
        random_weights: random,
        toy_model: false,
        dataset: "builtin".into(),
        dataset_descriptor: "name = \"builtin\"\nkind = \"builtin\"\nlabels = \"imagenet\"\n"
            .into(),
        data_root: None,
        file_list_hash: "abc123".into(),
        cells: 12,
        attack: spec,
        attack_path: Some("attacks/sweep-size.toml".into()),
        image_size: Some(224),
        image_transform: None,
        mode: "zeroshot".into(),
        labels: "imagenet".into(),
        labels_hash: "labels".into(),
        templates: "single".into(),
        templates_hash: "templates".into(),
        seed: 0,
        batch_size: 4,
        cpu_kernels: "onednn".into(),
        threads: 2,
        workers: 2,
        precision: "fp32".into(),
        scoring: "softmax".into(),
        variant_filter: String::new(),
        libtorch_version: "2.13.0".into(),
        defenses: Vec::new(),
        linear_probe: None,
        text_detector: None,
        model_parameters: None,
        shard: None,
        merged_shards: None,
        composite: None,
        started: started.into(),
        finished: Some(finished.into()),
    }
}

/// Writes a run folder as a sweep would.
fn write_run(dir: &Path, prov: &Provenance, recs: &[Record], with_summary: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("provenance.json"),
        serde_json::to_vec_pretty(prov).unwrap(),
    )
    .unwrap();
    let lines: String = recs.iter().map(|r| r.to_json_line() + "\n").collect();
    std::fs::write(dir.join("records.jsonl"), lines).unwrap();
    if with_summary {
        let summary = SweepSummary::from_records(prov.warning.clone(), recs);
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_vec_pretty(&summary).unwrap(),
        )
        .unwrap();
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("typoclip-report-test-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn report(dir: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["report", dir.to_str().unwrap()];
    args.extend(extra);
    let out = run_typoclip(&args, "typoclip-report-test-cache");
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(dir.join("report.html")).unwrap(),
        std::fs::read_to_string(dir.join("report.md")).unwrap(),
    )
}

#[test]
fn report_has_every_section_valid_plots_and_the_summary_numbers() {
    let dir = tmp("full");
    let recs = records(false, true);
    write_run(
        &dir,
        &provenance(true, "2026-01-02T03:04:05Z", "2026-01-02T03:05:05Z"),
        &recs,
        true,
    );
    let (html, md) = report(&dir, &["--reference", "distill"]);
    let doc = Html::parse_document(&html);
    // First line: random warning, model, dataset, n, date; then the red banner.
    let first = doc
        .select(&sel("p.first-line"))
        .next()
        .expect("first line")
        .text()
        .collect::<String>();
    for needle in [
        "random weights",
        "random:ViT-B-32:0",
        "builtin",
        "n = 5 images",
        "2026-01-02",
    ] {
        assert!(
            first.contains(needle),
            "{needle} not in first line `{first}`"
        );
    }
    assert!(md.starts_with("random weights"), "markdown first line");
    assert_eq!(doc.select(&sel("div.banner")).count(), 1);
    for id in [
        "summary",
        "success",
        "dose-response",
        "changed-to",
        "examples",
        "errors",
        "reference",
        "provenance",
    ] {
        assert!(
            doc.select(&sel(&format!("section#{id}"))).next().is_some(),
            "section {id} missing"
        );
    }
    // Every plot is a well-formed SVG document; bars + dose-response + L0.
    let svgs: Vec<String> = doc
        .select(&sel("figure.plot svg"))
        .map(|e| e.html())
        .collect();
    assert!(svgs.len() >= 3, "{} plots", svgs.len());
    for s in &svgs {
        let x = roxmltree::Document::parse(s).expect("plot parses as XML");
        assert_eq!(x.root_element().tag_name().name(), "svg");
    }
    // The numbers in the summary tables are the summary's.
    let summary: SweepSummary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let rows: Vec<_> = doc.select(&sel("table.distill tbody tr")).collect();
    assert_eq!(rows.len(), summary.variants.len());
    for (row, v) in rows.iter().zip(&summary.variants) {
        let cells: Vec<_> = row.select(&sel("td")).collect();
        assert_eq!(cells[0].text().collect::<String>(), v.variant);
        let value = |i: usize| -> f64 {
            cells[i]
                .value()
                .attr("data-value")
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(value(3), v.fraction_changed_to.unwrap().value);
        assert_eq!(value(6), v.fraction_both_results_not_target.unwrap().value);
        assert_eq!(value(7), v.avg_img_l0_norm_diff);
        let shown = cells[3].text().collect::<String>();
        assert_eq!(
            shown,
            format!(
                "{:.1}% [{:.1}, {:.1}]",
                100.0 * v.fraction_changed_to.unwrap().value,
                100.0 * v.fraction_changed_to.unwrap().lo,
                100.0 * v.fraction_changed_to.unwrap().hi
            )
        );
    }
    let robust: Vec<_> = doc.select(&sel("table.robustness tbody tr")).collect();
    for (row, v) in robust.iter().zip(&summary.variants) {
        let cells: Vec<_> = row.select(&sel("td")).collect();
        let value = |i: usize| -> f64 {
            cells[i]
                .value()
                .attr("data-value")
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(value(1), v.clean_accuracy.unwrap().value);
        assert_eq!(value(2), v.attacked_accuracy.unwrap().value);
        assert_eq!(value(6), v.attack_success_rate.unwrap().value);
    }
    // The largest word flips three of four images: 3 / 4 changed to iPod among 4 records.
    let last = &summary.variants[2];
    assert_eq!(last.fraction_changed_to.unwrap().k, 3);
    // Example thumbnails are real PNGs re-rendered from the spec (built-in images).
    let imgs: Vec<_> = doc.select(&sel("div.example img")).collect();
    assert!(!imgs.is_empty(), "no example thumbnails");
    use base64::Engine;
    for img in &imgs {
        let src = img.value().attr("src").unwrap();
        let b64 = src
            .strip_prefix("data:image/png;base64,")
            .expect("data URI");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let decoded = image::load_from_memory(&png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (112, 112));
    }
    assert!(doc.select(&sel("div.example.success")).next().is_some());
    assert!(doc.select(&sel("div.example.failure")).next().is_some());
    // Errors and the published figures.
    let errors = doc
        .select(&sel("table.errors"))
        .next()
        .expect("error table")
        .html();
    assert!(errors.contains("broken.jpg: truncated JPEG"));
    let reference = doc
        .select(&sel("section#reference"))
        .next()
        .unwrap()
        .text()
        .collect::<String>();
    assert!(reference.contains("Published figures") && reference.contains("distill.pub"));
    assert!(
        doc.select(&sel("table.reference-automated tbody tr"))
            .count()
            == 9
    );
    // No network: nothing is loaded from elsewhere.
    assert!(!html.contains("http://") || !html.contains("src=\"http"));
    assert!(!html.contains("<script"));
}

#[test]
fn markdown_matches_its_snapshot() {
    let dir = tmp("snapshot");
    write_run(
        &dir,
        &provenance(true, "2026-01-02T03:04:05Z", "2026-01-02T03:05:05Z"),
        &records(false, true),
        true,
    );
    let (_, md) = report(&dir, &[]);
    insta::assert_snapshot!("report_md", md);
}

#[test]
fn real_weights_have_no_banner_and_unfinished_runs_are_summarised_from_records() {
    let dir = tmp("unfinished");
    let recs = records(false, false);
    write_run(
        &dir,
        &provenance(false, "2026-01-02T03:04:05Z", "2026-01-02T03:05:05Z"),
        &recs[..7],
        false,
    );
    let (html, md) = report(&dir, &[]);
    let doc = Html::parse_document(&html);
    assert_eq!(doc.select(&sel("div.banner")).count(), 0);
    assert!(!md.starts_with("random weights"));
    assert!(md.lines().next().unwrap().contains("unfinished run"));
    // Recomputed from the seven complete records: variants 0.02 (4) and 0.12 (3).
    let n: Vec<String> = doc
        .select(&sel("table.distill tbody tr td:nth-child(3)"))
        .map(|e| e.text().collect())
        .collect();
    assert_eq!(n, vec!["4", "3"]);
}

#[test]
fn a_missing_run_folder_is_one_line_naming_the_file() {
    let dir = tmp("missing");
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_typoclip(
        &["report", dir.to_str().unwrap()],
        "typoclip-report-test-cache",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("provenance.json"), "{err}");
    let out = run_typoclip(
        &["report", dir.to_str().unwrap(), "--reference", "nope"],
        "typoclip-report-test-cache",
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn compare_ranks_runs_with_paired_tests_and_refuses_mismatches() {
    let base = tmp("cmp-base");
    let def = tmp("cmp-defended");
    let other = tmp("cmp-other");
    let out_dir = tmp("cmp-out");
    write_run(
        &base,
        &provenance(true, "2026-01-02T03:00:00Z", "2026-01-02T03:01:40Z"),
        &records(false, false),
        true,
    );
    write_run(
        &def,
        &provenance(true, "2026-01-02T04:00:00Z", "2026-01-02T04:02:30Z"),
        &records(true, false),
        true,
    );
    // The defended run used a fitted defense: compare says on what it was fitted.
    let prov_path = def.join("provenance.json");
    let mut prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&prov_path).unwrap()).unwrap();
    prov["defenses"] = serde_json::json!([{
        "spec": "projection:k=2",
        "name": "projection",
        "hook": "score",
        "params": {"k": 2},
        "fitted": {
            "artifact": "results/fitted/projection.json",
            "sha256": "ab".repeat(32),
            "calibration": {
                "dataset": "calib-set",
                "images": ["a.png", "b.png"],
                "images_sha256": ["00", "11"],
                "words": ["banana", "violin"],
                "fonts": ["mono"],
                "seed": 7,
                "model_id": "test"
            }
        }
    }]);
    std::fs::write(&prov_path, serde_json::to_vec_pretty(&prov).unwrap()).unwrap();
    let out = run_typoclip(
        &[
            "compare",
            base.to_str().unwrap(),
            def.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        "typoclip-report-test-cache",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(out_dir.join("comparison.csv")).unwrap();
    assert!(csv.starts_with("# random weights"));
    let mut rdr = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .from_reader(csv.as_bytes());
    let header = rdr.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let col = |row: &csv::StringRecord, name: &str| -> String {
        row[header.iter().position(|h| h == name).unwrap()].to_string()
    };
    assert_eq!(
        col(&rows[0], "run"),
        base.file_name().unwrap().to_str().unwrap()
    );
    // Baseline: attacked correct = images right when clean and not flipped.
    // Sizes 0.02/0.12/0.4 flip images i <= 0, 1, 2 (undefended) or i < 0, 1, 2 (defended);
    // image 3 is wrong when clean. Undefended attacked-correct: 2 + 1 + 0 = 3 of 12;
    // defended: 3 + 2 + 1 = 6 of 12. Discordant pairs: 3, all in the defence's favour.
    let acc = |row: &csv::StringRecord| col(row, "attacked_accuracy").parse::<f64>().unwrap();
    assert!((acc(&rows[0]) - 3.0 / 12.0).abs() < 1e-6);
    assert!((acc(&rows[1]) - 6.0 / 12.0).abs() < 1e-6);
    let p: f64 = col(&rows[1], "mcnemar_attacked_p").parse().unwrap();
    assert!((p - typoclip::report::compare::mcnemar_exact(0, 3)).abs() < 1e-6);
    assert!((p - 0.25).abs() < 1e-6);
    let ratio: f64 = col(&rows[1], "time_ratio").parse().unwrap();
    assert!((ratio - 1.5).abs() < 1e-6, "150 s vs 100 s");
    let html = std::fs::read_to_string(out_dir.join("comparison.html")).unwrap();
    let doc = Html::parse_document(&html);
    assert_eq!(doc.select(&sel("table.leaderboard tbody tr")).count(), 2);
    let fitted = doc
        .select(&sel("table.fitted"))
        .next()
        .expect("fitted defenses table")
        .text()
        .collect::<String>();
    for needle in [
        "projection:k=2",
        "calib-set: 2 images",
        "banana, violin",
        "mono",
    ] {
        assert!(fitted.contains(needle), "{needle} not in `{fitted}`");
    }
    assert!(col(&rows[1], "defenses").contains("projection:k=2"));
    assert!(std::fs::read_to_string(out_dir.join("comparison.md"))
        .unwrap()
        .starts_with("random weights"));

    // A run over other variants is refused, naming what differs; --force compares anyway.
    let mut recs = records(false, false);
    for r in &mut recs {
        r.variant = r.variant.replace("0.4", "0.5");
    }
    write_run(
        &other,
        &provenance(true, "2026-01-02T05:00:00Z", "2026-01-02T05:01:00Z"),
        &recs,
        true,
    );
    let args = [
        "compare",
        base.to_str().unwrap(),
        other.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    let out = run_typoclip(&args, "typoclip-report-test-cache");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("variant sets differ") && err.contains("--force"),
        "{err}"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(run_typoclip(&forced, "typoclip-report-test-cache")
        .status
        .success());
}

/// Renders the report in headless Chromium; skipped (with a message) where it is absent.
#[test]
fn report_renders_in_a_real_browser() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        eprintln!("SKIP report_renders_in_a_real_browser: Chromium is not installed (scripts/setup.sh installs it from Debian)");
        return;
    };
    let dir = tmp("browser");
    write_run(
        &dir,
        &provenance(true, "2026-01-02T03:04:05Z", "2026-01-02T03:05:05Z"),
        &records(false, true),
        true,
    );
    report(&dir, &[]);
    let png = dir.join("shot.png");
    let profile = dir.join("profile");
    let status = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", dir.join("report.html").display()))
        .output()
        .expect("run chromium");
    assert!(
        png.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1200, 900));
    // Not blank: many distinct colours, and the red random-weights banner near the top.
    let mut colours = std::collections::BTreeSet::new();
    let mut red = 0;
    for p in img.pixels() {
        colours.insert(p.0);
        if p.0[0] > 180 && p.0[1] < 80 && p.0[2] < 80 {
            red += 1;
        }
    }
    assert!(colours.len() > 50, "{} colours: blank page?", colours.len());
    assert!(red > 1000, "no red banner ({red} red pixels)");
}

/// The image transform is part of what a run is: a run recorded with OpenAI's (absent) equals
/// one that names OpenAI's at its size, and resuming with another transform is refused.
#[test]
fn provenance_refuses_another_image_transform() {
    use typoclip::preprocess::PreprocessCfg;
    let path = Path::new("run/provenance.json");
    let old = provenance(false, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z");
    let mut same = old.clone();
    same.image_transform = Some(PreprocessCfg::square(224));
    old.check_same_run(&same, path).unwrap();
    let mut other = old.clone();
    other.image_transform = Some(
        PreprocessCfg::from_open_clip_json(
            &serde_json::json!({"size": 224, "resize_mode": "squash", "interpolation": "bilinear"}),
        )
        .unwrap(),
    );
    let e = other.check_same_run(&old, path).unwrap_err().to_string();
    assert!(e.contains("image transform"), "{e}");
    assert!(e.contains("bilinear squash"), "{e}");
    // It round-trips through provenance.json.
    let back: typoclip::sweep::provenance::Provenance =
        serde_json::from_str(&serde_json::to_string(&other).unwrap()).unwrap();
    assert_eq!(back, other);
}
