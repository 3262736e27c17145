//! `scripts/device_check.sh`, the GPU check, run end to end on the CPU (`DEVICE=cpu`) with the
//! default build on two of the built-in images: every step it takes on the GPU machine runs and
//! lands in `device-check.json` — parity against carried CPU embeddings (made here with
//! `typoclip embed`, as `scripts/device_prepare.sh` makes them), the fp32 / bf16 / fp16 sweeps
//! and their agreement, the bare forwards, the Python side, the OCR mask sweep, `detect`.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_gpu_check_runs_every_step_on_the_cpu() {
    let repo = common::repo();
    let builtin = repo.join(".cache/builtin");
    let photos: Vec<_> = ["chelsea.png", "coffee.png"]
        .iter()
        .map(|f| builtin.join(f))
        .collect();
    if photos.iter().any(|p| !p.exists()) {
        eprintln!("SKIP the_gpu_check_runs_every_step_on_the_cpu: no built-in images (scripts/setup.sh extracts them)");
        return;
    }
    let forward = repo.join("target/release/examples/forward_throughput");
    if !forward.exists() {
        eprintln!(
            "SKIP the_gpu_check_runs_every_step_on_the_cpu: {} is not built (cargo test --release builds it)",
            forward.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let carry = tmp.path().join("carry");
    std::fs::create_dir_all(carry.join("photos")).unwrap();
    for p in &photos {
        std::fs::copy(p, carry.join("photos").join(p.file_name().unwrap())).unwrap();
    }
    let onnx = repo.join(".cache/ocr/ch_PP-OCRv4_det_infer.onnx");
    if onnx.exists() {
        std::fs::copy(&onnx, carry.join("ocr.onnx")).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_typoclip");
    for arch in ["ViT-B-32", "ViT-L-14", "RN50"] {
        let out = carry.join(format!("cpu-{arch}.npy"));
        let o = Command::new(bin)
            .args(["embed", "--model", &format!("random:{arch}-quickgelu")])
            .args(["--device", "cpu", "--out", out.to_str().unwrap()])
            .args(&photos)
            .env("XDG_CACHE_HOME", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let out = tmp.path().join("out");
    let python = common::python();
    let o = Command::new("bash")
        .arg(repo.join("scripts/device_check.sh"))
        .current_dir(&repo)
        .env("DEVICE", "cpu")
        .env("OUT", &out)
        .env("CARRY", &carry)
        .env("PHOTOS", "2")
        .env("FWD_BATCH", "2")
        .env("FWD_IMAGES", "2")
        .env("PYTHON", &python)
        .env("TYPOCLIP_BIN", bin)
        .env("FORWARD_BIN", &forward)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("device-check.json")).unwrap())
            .unwrap_or_else(|e| panic!("device-check.json: {e}\n{log}"));
    assert_eq!(r["device"], "cpu");
    assert!(r["note"].as_str().unwrap().starts_with("random weights"));
    for arch in ["ViT-B-32", "ViT-L-14", "RN50"] {
        for key in ["vs_carried_cpu", "vs_this_cpu"] {
            let p = &r["parity"][arch][key];
            assert_eq!(p["ok"], true, "{arch} {key}: {p}");
        }
    }
    for p in ["fp32", "bf16", "fp16"] {
        assert!(
            r["sweeps"][p]["images_per_s"].as_f64().unwrap() > 0.0,
            "{p}: {}",
            r["sweeps"][p]
        );
    }
    for p in ["bf16", "fp16"] {
        let a = r["sweeps"][p]["top1_agreement_with_fp32"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{p}: {a}");
    }
    assert!(
        r["forward"]["images_per_s"].as_f64().unwrap() > 0.0,
        "{}",
        r["forward"]
    );
    for arch in ["ViT-B-16", "ViT-L-14", "RN50"] {
        assert!(
            r["forward_by_arch"][arch]["images_per_s"].as_f64().unwrap() > 0.0,
            "{arch}: {}",
            r["forward_by_arch"][arch]
        );
    }
    assert!(
        r["python"]["images_per_s"].as_f64().unwrap() > 0.0,
        "the Python side: {} ({})",
        r["python"],
        std::fs::read_to_string(out.join("python.err")).unwrap_or_default()
    );
    assert!(r["ratios"]["sweep_over_forward"].as_f64().unwrap() > 0.0);
    assert!(r["ratios"]["sweep_over_python"].as_f64().unwrap() > 0.0);
    if Path::new(&carry.join("ocr.onnx")).exists() {
        assert!(
            r["ratios"]["ocr_mask_sweep_over_sweep"].as_f64().unwrap() > 0.0,
            "{}",
            r["sweeps"]["ocr"]
        );
        assert!(r["detect_cpu_images_per_s"].as_f64().unwrap() > 0.0);
    }
}
