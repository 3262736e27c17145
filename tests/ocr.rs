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
