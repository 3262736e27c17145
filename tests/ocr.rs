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
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    std::fs::write(path, typoclip::npy::npy_bytes(&data, &shape)).unwrap();
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
