//! Shared test helpers: the Python reference fixtures (made once per test binary by
//! `scripts/reference.py` into the git-ignored `tests/fixtures/generated/`), the shared data
//! folder, and comparison helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter that carries torch + open_clip (`.venv`, made by the test command).
pub fn python() -> PathBuf {
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// `../shared/data`, when present.
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    p.is_dir().then_some(p)
}

/// The small configs every test binary shares (the real shapes are exported one model at a
/// time by [`with_export`], so a run never holds them all on disk at once).
pub const CI_CONFIGS: &str = "tiny-vit,tiny-rn,tiny-options,tiny-eos,tokenizer,preprocess";

/// Runs `scripts/reference.py` for `configs` into `tests/fixtures/generated/<subdir>` unless a
/// stamp shows the same script already made them. Returns the folder.
pub fn generate(subdir: &str, configs: &str) -> PathBuf {
    let out = repo().join("tests/fixtures/generated").join(subdir);
    let script = repo().join("scripts/reference.py");
    let mut h = Sha256::new();
    h.update(std::fs::read(&script).expect("scripts/reference.py"));
    h.update(configs.as_bytes());
    let stamp_value = hex::encode(h.finalize());
    let stamp = out.join(".stamp");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_value.as_str()) {
        return out;
    }
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new(python())
        .arg(&script)
        .arg("--out")
        .arg(&out)
        .arg("--configs")
        .arg(configs)
        .status()
        .expect("cannot run Python: run the README's test command, which installs the reference into .venv");
    assert!(
        status.success(),
        "scripts/reference.py failed for {configs}"
    );
    std::fs::write(&stamp, stamp_value).unwrap();
    out
}

/// Exports `configs` into `tests/fixtures/generated/<subdir>`, runs `check` on the folder, and
/// removes the folder when `check` returns (a failing check panics first and leaves the files
/// for inspection). For real-shape exports, which take gigabytes each.
/// One export at a time per test binary: tests run in parallel threads.
pub fn with_export<T>(subdir: &str, configs: &str, check: impl FnOnce(&Path) -> T) -> T {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = generate(subdir, configs);
    let out = check(&dir);
    std::fs::remove_dir_all(&dir).ok();
    out
}

/// The CI fixtures, generated once per test binary.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| generate("ci", CI_CONFIGS))
}

/// Reads a safetensors file into a name → tensor map.
pub fn read_tensors(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute difference between two tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    f64::try_from(
        (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
            .abs()
            .max(),
    )
    .unwrap()
}

/// Runs the `typoclip` binary with `XDG_CACHE_HOME` set to a test-specific folder under the
/// temporary directory (so the user's cache is never touched).
pub fn run_typoclip(args: &[&str], cache_name: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(args)
        .env("XDG_CACHE_HOME", std::env::temp_dir().join(cache_name))
        .output()
        .expect("run typoclip")
}

/// Reads a float32 `.npy` file (what `typoclip embed` writes) into a tensor.
pub fn read_npy_f32(path: &Path) -> Tensor {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let shape: Vec<i64> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = b[10 + hlen..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Tensor::from_slice(&data).view(shape.as_slice())
}

/// Largest row-wise `‖a − b‖ / ‖b‖`.
pub fn max_relative(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let num = (&a - &b).norm_scalaropt_dim(2.0, [-1i64].as_slice(), false);
    let den = b.norm_scalaropt_dim(2.0, [-1i64].as_slice(), false);
    f64::try_from((num / den).max()).unwrap()
}

/// SigLIP's zero-shot formula on a reference fixture: the classifier `model` builds from the
/// fixture's prompts (`tokens`) scores its `images` with `sigmoid(open_clip's logits)` — each
/// class's own sigmoid, rows not summing to one. Returns the largest difference.
pub fn sigmoid_scores_match(
    model: &typoclip::model::ClipModel,
    io: &std::collections::BTreeMap<String, Tensor>,
) -> f64 {
    use typoclip::zeroshot::{LabelSet, TemplateSet, ZeroShotClassifier};
    assert!(model.logit_bias().is_some(), "not a sigmoid-scored model");
    let names: Vec<String> = (0..io["tokens"].size()[0])
        .map(|i| format!("c{i}"))
        .collect();
    let clf = ZeroShotClassifier {
        weights: typoclip::model::l2_normalize(&model.encode_text(&io["tokens"])),
        logit_scale: model.logit_scale_exp(),
        logit_bias: model.logit_bias(),
        labels: LabelSet::parse_list("test", &names.join(",")).unwrap(),
        templates: TemplateSet::builtin("single").unwrap(),
    };
    assert_eq!(clf.scoring(), "sigmoid");
    let probs = clf.probs(&model.encode_image(&io["images"]));
    let sums = Vec::<f32>::try_from(probs.sum_dim_intlist(-1, false, Kind::Float)).unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() > 1e-3), "{sums:?}");
    max_abs_diff(&probs, &io["logits"].sigmoid())
}

/// `typoclip sweep --model M --dataset D --attacks SPEC --out OUT --quiet`, then `extra`.
pub fn sweep_args(
    model: &Path,
    dataset: &Path,
    spec: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = vec![
        "sweep".into(),
        "--model".into(),
        path(model),
        "--dataset".into(),
        path(dataset),
        "--attacks".into(),
        path(spec),
        "--out".into(),
        path(out),
        "--quiet".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}
