//! The trained text detector (PP-OCRv4's, run on libtorch): parity of its probability map with
//! onnxruntime on real photos, what it finds on rendered attacks, the `mask:source=ocr` defense
//! and the `detect` command. The model is extracted by set-up; without it (or without the shared
//! photos) the tests that need it skip and say why.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Tensor};
use typoclip::ocr::{DetectorSettings, TextDetector};

fn detector() -> Option<TextDetector> {
    let path = typoclip::ocr::model_path();
    if !path.is_file() {
        eprintln!(
            "SKIP: {} is absent (scripts/setup.sh extracts it from the rapidocr-onnxruntime wheel)",
            path.display()
        );
        return None;
    }
    Some(TextDetector::load(&path, DetectorSettings::default(), Device::Cpu).unwrap())
}

/// A few real photos: Distill's labelled apple, a SCAM post-it photo and its clean twin, an
/// ImageNet photo.
fn photos() -> Option<Vec<PathBuf>> {
    let Some(data) = common::shared_data() else {
        eprintln!("SKIP: ../shared/data is absent");
        return None;
    };
    Some(vec![
        data.join("distill-in-the-wild/in-the-wild-2/apple-ipod.jpg"),
        data.join("scam-preview/SCAM/SCAM_img_0001.webp"),
        data.join("scam-preview/NoSCAM/NoSCAM_img_0001.webp"),
        data.join("imagenet-sample/n00007846_147031_person.jpg"),
    ])
}

fn save_npy(t: &Tensor, path: &Path) {
    std::fs::write(path, typoclip::npy::tensor_npy_bytes(t)).unwrap();
}

#[test]
fn the_probability_map_matches_onnxruntime_on_real_photos() {
    let (Some(det), Some(photos)) = (detector(), photos()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    let mut ours = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        let img = typoclip::dataset::load_rgb(p).unwrap();
        let x = det.input(&img);
        let path = dir.path().join(format!("in{i}.npy"));
        save_npy(&x, &path);
        ours.push(det.probability(&x));
        inputs.push(path);
    }
    let status = Command::new(common::python())
        .arg(common::repo().join("scripts/reference_ocr.py"))
        .arg(typoclip::ocr::model_path())
        .arg(dir.path())
        .args(&inputs)
        .status()
        .expect("run scripts/reference_ocr.py");
    assert!(status.success(), "scripts/reference_ocr.py failed");
    for (i, (p, y)) in photos.iter().zip(&ours).enumerate() {
        let want = common::read_npy_f32(&dir.path().join(format!("in{i}.prob.npy")));
        let d = common::max_abs_diff(y, &want);
        eprintln!("{}: max |Δp| = {d:.2e}", p.display());
        assert!(d <= 1e-4, "{}: max |Δp| = {d}", p.display());
    }
}

#[test]
fn the_detector_boxes_the_word_on_distills_labelled_apple() {
    let (Some(det), Some(photos)) = (detector(), photos()) else {
        return;
    };
    let labelled = typoclip::dataset::load_rgb(&photos[0]).unwrap();
    let found = det.detect(&labelled);
    eprintln!("apple-ipod: {:?}", found.boxes);
    assert!(!found.boxes.is_empty(), "no box on the hand-written label");
    let blank = typoclip::dataset::load_rgb(&photos[0].with_file_name("apple-blank.jpg")).unwrap();
    let clean = det.detect(&blank);
    let (w, h) = labelled.dimensions();
    assert!(
        found.text_area(w, h) > clean.text_area(w, h),
        "labelled {} vs blank {}",
        found.text_area(w, h),
        clean.text_area(w, h)
    );
}

#[test]
fn graph_fusion_keeps_the_map_and_shrinks_the_graph() {
    let (Some(det), Some(photos)) = (detector(), photos()) else {
        return;
    };
    let path = typoclip::ocr::model_path();
    let bytes = std::fs::read(&path).unwrap();
    let model = typoclip::ocr::onnx::read_model(&path, &bytes).unwrap();
    let plain = typoclip::ocr::graph::Graph::compile_with(&model, Device::Cpu, false).unwrap();
    let fused = typoclip::ocr::graph::Graph::compile_with(&model, Device::Cpu, true).unwrap();
    let (before, after) = (plain.op_counts(), fused.op_counts());
    eprintln!(
        "unfused {} steps {before:?}\nfused {} steps {after:?}",
        plain.steps(),
        fused.steps()
    );
    // PP-OCRv4's export spells each hard-swish as Add, Clip, Mul, Div: all of them fuse. Of its
    // three batch norms, the two after a convolution fuse into it; the one after the head's
    // transposed convolution stays.
    let n = |m: &std::collections::BTreeMap<String, usize>, k: &str| m.get(k).copied().unwrap_or(0);
    assert_eq!(n(&after, "HardSwish"), n(&before, "Clip"), "{after:?}");
    assert_eq!((n(&before, "BatchNorm"), n(&after, "BatchNorm")), (3, 1));
    for gone in ["Clip", "Div"] {
        assert_eq!(n(&after, gone), 0, "{gone} left: {after:?}");
    }
    assert!(n(&after, "Mul") < n(&before, "Mul") / 2, "{after:?}");
    let img = typoclip::dataset::load_rgb(&photos[1]).unwrap();
    let x = det.input(&img);
    let _guard = tch::no_grad_guard();
    let d = common::max_abs_diff(&fused.forward(&x), &plain.forward(&x));
    eprintln!("fused vs unfused: max |Δp| = {d:.2e}");
    assert!(d <= 1e-4, "{d}");
}

/// The ImageNet sample's first photos, or the built-in images when it is absent.
fn clean_photos(n: usize) -> Vec<(String, image::RgbImage)> {
    let mut paths: Vec<PathBuf> = match common::shared_data() {
        Some(d) => std::fs::read_dir(d.join("imagenet-sample"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect(),
        None => typoclip::dataset::builtin_images()
            .unwrap()
            .into_iter()
            .map(|b| b.path)
            .collect(),
    };
    paths.sort();
    paths
        .into_iter()
        .take(n)
        .map(|p| {
            let img = typoclip::dataset::load_rgb(&p).unwrap();
            (p.display().to_string(), img)
        })
        .collect()
}

fn variants(spec: &str) -> Vec<typoclip::attack::Variant> {
    typoclip::attack::AttackSpec::load(&common::repo().join("attacks").join(spec))
        .unwrap()
        .variants
}

/// Over photos × attacks: the share of attack pixels the defense left untouched, and the share
/// of clean-input pixels it changed.
fn mask_effect(
    spec: &str,
    photos: &[(String, image::RgbImage)],
    attacks: &[typoclip::attack::Variant],
) -> (f64, f64) {
    let cfg = typoclip::preprocess::PreprocessCfg::square(224);
    let (_, defense) = typoclip::defense::parse_defense(spec).unwrap();
    let ctx = typoclip::defense::ImageContext::default();
    let (mut text, mut left, mut clean_px, mut clean_changed) = (0u64, 0u64, 0u64, 0u64);
    for (id, img) in photos {
        let clean = typoclip::preprocess::model_input(img, &cfg);
        let defended = defense.transform_image(clean.clone(), &ctx);
        clean_px += clean.as_raw().len() as u64 / 3;
        clean_changed += typoclip::defense::mask::changed_pixels(&clean, &defended)
            .pixels()
            .filter(|p| p[0] > 0)
            .count() as u64;
        for v in attacks {
            let seed = typoclip::sweep::image_seed(id, 0);
            let r = typoclip::attack::render_for_model(img, v, &cfg, seed, None);
            let oracle = typoclip::defense::mask::oracle_mask(&r);
            let defended = defense.transform_image(r.attacked_input.clone(), &ctx);
            let touched = typoclip::defense::mask::changed_pixels(&r.attacked_input, &defended);
            for (m, t) in oracle.as_raw().iter().zip(touched.as_raw()) {
                text += (*m > 0) as u64;
                left += (*m > 0 && *t == 0) as u64;
            }
        }
    }
    (
        left as f64 / text as f64,
        clean_changed as f64 / clean_px as f64,
    )
}

#[test]
fn mask_source_ocr_removes_most_text_pixels_of_rendered_attacks() {
    if detector().is_none() {
        return;
    }
    // Plain words (white, outlined: every changed pixel is ink) at 12–24 % of the side, drawn
    // on the model input of 12 photos; a text pixel is "left" when the defense did not touch it.
    let photos = clean_photos(12);
    let words: Vec<_> = variants("sweep-size.toml")
        .into_iter()
        .filter(|v| ["0.12", "0.16", "0.24"].iter().any(|s| v.name.ends_with(s)))
        .collect();
    assert_eq!(words.len(), 3);
    let (ocr, ocr_clean) = mask_effect("mask:source=ocr", &photos, &words);
    let (classical, classical_clean) = mask_effect("mask:source=detector", &photos, &words);
    eprintln!(
        "word pixels left: {:.1} % (ocr), {:.1} % (classical); clean pixels changed: {:.2} % \
         (ocr), {:.2} % (classical)",
        100.0 * ocr,
        100.0 * classical,
        100.0 * ocr_clean,
        100.0 * classical_clean
    );
    // (A paper label is left out: the fill paints its box with the surrounding paper, so the
    // paper pixels keep their value and this count cannot tell them from untouched ones.)
    assert!(
        ocr < 0.5,
        "source=ocr leaves {:.1} % of word pixels",
        100.0 * ocr
    );
    // The trained detector both finds more of the words and fires less on clean photos than
    // the classical one.
    assert!(
        ocr < classical,
        "word pixels left: ocr {ocr}, classical {classical}"
    );
    assert!(
        ocr_clean < classical_clean,
        "clean pixels changed: ocr {ocr_clean}, classical {classical_clean}"
    );
}

#[test]
fn detectability_rises_with_text_size() {
    let Some(det) = detector() else {
        return;
    };
    let photos = clean_photos(8);
    let cfg = typoclip::preprocess::PreprocessCfg::square(224);
    let size = variants("sweep-size.toml");
    let (table, examples) = typoclip::ocr::measure::rendered(&det, &photos, &size, &cfg, 0);
    assert_eq!((table.rows.len(), examples.len()), (9, 9));
    let recall: Vec<f64> = table
        .rows
        .iter()
        .map(|r| r.score.recall().unwrap())
        .collect();
    eprintln!("pixel recall by size: {recall:.2?}");
    // 2 % of the side (a 4-pixel word) hides from the detector; 16–24 % does not.
    assert!(recall[0] < 0.1, "{recall:?}");
    assert!(recall[5] > 0.6 && recall[6] > 0.6, "{recall:?}");
    // The same inputs give the same table.
    let (again, _) = typoclip::ocr::measure::rendered(&det, &photos, &size, &cfg, 0);
    assert_eq!(
        serde_json::to_string(&table).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
}

#[test]
fn detect_writes_boxes_and_overlays_and_skips_corrupt_images() {
    if detector().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let photos = clean_photos(1);
    let corrupt = dir.path().join("broken.jpg");
    std::fs::write(&corrupt, b"\xff\xd8 not a jpeg").unwrap();
    // A rendered word the detector must box.
    let word = dir.path().join("word.png");
    let v = &variants("sweep-size.toml")[6];
    let r = typoclip::attack::render(&photos[0].1, v, 0, None);
    r.image.save(&word).unwrap();
    let out = dir.path().join("out");
    let o = common::run_typoclip(
        &[
            "detect",
            word.to_str().unwrap(),
            corrupt.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "typoclip-test-detect",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("detections.json")).unwrap())
            .unwrap();
    assert_eq!(json["model_sha256"], typoclip::ocr::MODEL_SHA256);
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert!(
        !images[0]["boxes"].as_array().unwrap().is_empty(),
        "{}",
        images[0]
    );
    assert!(out.join(images[0]["overlay"].as_str().unwrap()).is_file());
    assert!(images[1]["error"].as_str().unwrap().contains("broken.jpg"));

    // A missing model is one line naming it, before any work.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(["detect", word.to_str().unwrap()])
        .env("TYPOCLIP_OCR_MODEL", "/nonexistent/det.onnx")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("/nonexistent/det.onnx") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn mask_source_ocr_records_its_parameters_and_refuses_foreign_ones() {
    if detector().is_none() {
        return;
    }
    let (record, _) =
        typoclip::defense::parse_defense("mask:source=ocr,box_thresh=0.5,unclip=2").unwrap();
    let p = &record.params;
    assert_eq!(p["source"], "ocr");
    assert_eq!(p["model_sha256"], typoclip::ocr::MODEL_SHA256);
    assert_eq!(
        (p["box_thresh"].as_f64(), p["unclip"].as_f64()),
        (Some(0.5), Some(2.0))
    );
    assert!((p["thresh"].as_f64().unwrap() - 0.3).abs() < 1e-6, "{p:?}");
    assert_eq!(p["device"], "cpu", "where the detector runs is recorded");
    if !tch::Cuda::is_available() {
        let e = typoclip::defense::parse_defense("mask:source=ocr,device=cuda")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no CUDA device `cuda` here"), "{e}");
    }
    for (spec, expect) in [
        (
            "mask:source=ocr,threshold=9",
            "threshold: applies to source=detector only",
        ),
        (
            "mask:source=oracle,unclip=2",
            "unclip: applies to source=ocr only",
        ),
        ("mask:source=ocr,thresh=1.5", "thresh"),
        (
            "mask:source=ocr,device=tpu",
            "device: `tpu` is not cpu, cuda or cuda:N",
        ),
        (
            "mask:source=oracle,device=cpu",
            "device: applies to source=ocr only",
        ),
    ] {
        let e = typoclip::defense::parse_defense(spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect) && !e.contains('\n'), "{spec}: {e}");
    }
}

#[test]
fn sweeps_with_text_area_record_what_the_detector_sees() {
    if detector().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Two classes of photos (six of the ImageNet sample, or the four built-in images).
    let photos = dir.path().join("photos");
    let clean = clean_photos(6);
    for (i, (_, img)) in clean.iter().enumerate() {
        let class = if i < clean.len() / 2 {
            "goldfish"
        } else {
            "radio"
        };
        std::fs::create_dir_all(photos.join(class)).unwrap();
        img.save(photos.join(class).join(format!("p{i}.png")))
            .unwrap();
    }
    let out = dir.path().join("run");
    let model = common::fixtures().join("tiny-vit.state_dict.pt");
    let spec = common::repo().join("attacks/sweep-size.toml");
    let args = |extra: &[&str]| common::sweep_args(&model, &photos, &spec, &out, extra);
    let o = common::run_typoclip(
        &args(&["--text-area", "--report"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "typoclip-test-ocr-sweep",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<typoclip::records::Record> =
        std::fs::read_to_string(out.join("records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(records.len(), clean.len() * 9);
    let mean_area = |v: &str| -> f64 {
        let a: Vec<f64> = records
            .iter()
            .filter(|r| r.variant == v)
            .map(|r| r.text_area.expect("every record has a text area"))
            .collect();
        a.iter().sum::<f64>() / a.len() as f64
    };
    let (small, large) = (
        mean_area("size/size_frac=0.02"),
        mean_area("size/size_frac=0.24"),
    );
    eprintln!("mean text area: {small:.4} at size 0.02, {large:.4} at size 0.24");
    // (The tiny model's input is small, so the words are too: areas are small.)
    assert!(large > small && large > 0.01, "{small} vs {large}");
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert!(prov["text_detector"]
        .as_str()
        .unwrap()
        .contains(typoclip::ocr::MODEL_SHA256));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Attack success against readable text") && html.contains("text-area"));
    // Resuming without the detector would mix records with and without it: refused.
    let o = common::run_typoclip(
        &args(&["--resume"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "typoclip-test-ocr-sweep",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("text detector"),
        "{err}"
    );
}

#[test]
fn detect_measurements_write_tables_and_a_report_skipping_unreadable_photos() {
    if detector().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir_all(&folder).unwrap();
    // An unreadable photo sorts first, so every later row shifts against the sample list.
    std::fs::write(folder.join("a-broken.jpg"), b"\xff\xd8 not a jpeg").unwrap();
    for (i, (_, img)) in clean_photos(3).iter().enumerate() {
        img.save(folder.join(format!("p{i}.png"))).unwrap();
    }
    let run = |extra: &[&str], out: &Path| {
        let mut a = vec![
            "detect",
            "--dataset",
            folder.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        let o = common::run_typoclip(&a, "typoclip-test-detect-measure");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let rendered = dir.path().join("rendered");
    let spec = common::repo().join("attacks/sweep-rotation.toml");
    run(&["--attacks", spec.to_str().unwrap()], &rendered);
    let csv = std::fs::read_to_string(rendered.join("detectability.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8, "{csv}");
    let html = std::fs::read_to_string(rendered.join("report.html")).unwrap();
    assert_eq!(html.matches("<figure><img").count(), 8);
    assert!(html.contains("id=\"detectability\"") && html.contains("data:image/png;base64,"));
    assert!(rendered.join("report.md").is_file());

    let photos = dir.path().join("physical");
    run(&[], &photos);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(photos.join("detectability.json")).unwrap())
            .unwrap();
    assert_eq!(json["photos"].as_array().unwrap().len(), 3);
    assert!(json["errors"][0]["id"]
        .as_str()
        .unwrap()
        .contains("a-broken"));
    // One overlay per readable photo, captioned with the photo it shows.
    let html = std::fs::read_to_string(photos.join("report.html")).unwrap();
    assert_eq!(html.matches("<figure><img").count(), 3);
    for i in 0..3 {
        assert!(
            html.contains(&format!("p{i}.png</figcaption>")),
            "overlay of p{i}"
        );
    }
}
