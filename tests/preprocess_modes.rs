//! Per-tag preprocessing parity: `preprocess_with` against open_clip's own eval transform
//! (`image_transform_v2(PreprocessCfg(...), is_train=False)`, made by `scripts/reference.py`'s
//! `preprocess-modes` config) for every (interpolation, resize_mode) pair, square and
//! non-square sizes, on generated odd-aspect images and a few shared photos when present.
//! Each pair must be within 1/255 in pixel units (before normalisation).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::read_tensors;
use tch::{Kind, Tensor};
use typoclip::preprocess::{preprocess_with, PreprocessCfg};

#[test]
fn preprocess_modes_match_open_clip_transform() {
    let dir = common::generate("preprocess-modes", "preprocess-modes");
    let meta: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("preprocess-modes.json")).unwrap())
            .unwrap();
    let reference = read_tensors(&dir.join("preprocess-modes.safetensors"));
    // (interpolation, resize_mode, size) → (images, worst difference in 1/255).
    let mut worst: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for m in &meta {
        let path = Path::new(m["path"].as_str().unwrap());
        let cfg = PreprocessCfg::from_open_clip_json(&m["cfg"]).unwrap();
        let img = typoclip::dataset::load_rgb(path).unwrap();
        let ours = preprocess_with(&img, &cfg);
        let theirs = &reference[m["key"].as_str().unwrap()];
        assert_eq!(
            ours.size(),
            theirs.size(),
            "{}: {:?}",
            path.display(),
            m["cfg"]
        );
        let std = Tensor::from_slice(&cfg.std_f32()).view([3, 1, 1]);
        let diff = ((ours - theirs) * &std).abs() * 255.0;
        let w = f64::try_from(diff.max().to_kind(Kind::Double)).unwrap();
        assert!(
            w <= 1.0 + 1e-3,
            "{}: max pixel difference {w:.3}/255 with {}",
            path.display(),
            m["cfg"]
        );
        let key = format!(
            "{:?} {:?} {:?}",
            cfg.interpolation, cfg.resize_mode, cfg.size
        );
        let e = worst.entry(key).or_default();
        e.0 += 1;
        e.1 = e.1.max(w);
    }
    assert_eq!(worst.len(), 12, "{worst:?}");
    for (k, (n, w)) in &worst {
        eprintln!("preprocess {k}: {n} images, max {w:.4}/255");
    }
}
