//! Defenses: identity settings leave outputs unchanged, projection is idempotent, head ablation
//! equals the Python reference (`scripts/reference_defense.py`), prefix fitting lowers its
//! loss, oracle masking restores the clean image, composed defenses apply in a defined order,
//! fitted defenses refuse evaluations that share images, words or fonts with their calibration
//! split, and everything lands in provenance.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::RgbImage;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use typoclip::defense::calibration::{Artifact, CalibrationRecord, ARTIFACT_FORMAT};
use typoclip::defense::{DefenseStack, ImageContext};
use typoclip::model::{ClipModel, Probe};

fn typoclip(args: &[&str]) -> std::process::Output {
    common::run_typoclip(args, "typoclip-test-defense-cache")
}

/// `typoclip fit KIND` on `calib` with the words banana and violin in mono, quiet.
fn fit_cli(
    kind: &str,
    model: &str,
    calib: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "fit",
        kind,
        "--model",
        model,
        "--dataset",
        calib.to_str().unwrap(),
        "--words",
        "banana,violin",
        "--fonts",
        "mono",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    typoclip(&args)
}

/// `typoclip sweep` of `attacks/ipod-label.toml` on `dataset` with `defenses`, quiet.
fn ipod_sweep(model: &str, dataset: &Path, out: &Path, defenses: &[&str]) -> std::process::Output {
    let spec = common::repo().join("attacks/ipod-label.toml");
    let mut args = vec![
        "sweep",
        "--model",
        model,
        "--dataset",
        dataset.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    for d in defenses {
        args.extend(["--defense", d]);
    }
    typoclip(&args)
}

fn tiny() -> PathBuf {
    common::fixtures().join("tiny-vit.state_dict.pt")
}

fn tiny_model() -> ClipModel {
    typoclip::model::load::load_checkpoint(&tiny(), None, Device::Cpu)
        .unwrap()
        .model
}

fn tiny_images() -> Tensor {
    common::read_tensors(&common::fixtures().join("tiny-vit.io.safetensors"))["images"]
        .shallow_clone()
}

/// `scripts/reference_defense.py` outputs, made once per test binary (stamped by the script and
/// the tiny-vit export).
fn reference() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use sha2::Digest;
        let out = common::repo().join("tests/fixtures/generated/defense");
        let script = common::repo().join("scripts/reference_defense.py");
        let mut h = sha2::Sha256::new();
        h.update(std::fs::read(&script).unwrap());
        h.update(std::fs::read(tiny()).unwrap());
        let stamp = hex::encode(h.finalize());
        if std::fs::read_to_string(out.join(".stamp")).ok().as_deref() == Some(stamp.as_str()) {
            return out;
        }
        std::fs::create_dir_all(&out).unwrap();
        let status = std::process::Command::new(common::python())
            .arg(&script)
            .arg("--fixtures")
            .arg(common::fixtures())
            .arg("--out")
            .arg(&out)
            .status()
            .expect("run Python");
        assert!(status.success(), "scripts/reference_defense.py failed");
        std::fs::write(out.join(".stamp"), stamp).unwrap();
        out
    })
}

fn model_id() -> String {
    typoclip::model::load::sha256_file(&tiny()).unwrap()
}

/// A hand-made artifact (the fitting itself is tested through `typoclip fit`).
fn write_artifact(path: &Path, kind: &str, data: Value) {
    Artifact {
        format: ARTIFACT_FORMAT.into(),
        kind: kind.into(),
        warning: None,
        typoclip_version: "test".into(),
        git_commit: "test".into(),
        model: tiny().display().to_string(),
        random_weights: false,
        calibration: CalibrationRecord {
            dataset: "test".into(),
            images: vec![],
            images_sha256: vec![],
            words: vec!["banana".into()],
            fonts: vec!["mono".into()],
            label_size: Default::default(),
            seed: 0,
            model_id: model_id(),
        },
        fit: Default::default(),
        data,
    }
    .write(path)
    .unwrap();
}

fn heads_artifact(dir: &Path, heads: &[(usize, usize)]) -> PathBuf {
    let p = dir.join(format!("heads-{}.json", heads.len()));
    let list: Vec<Value> = heads
        .iter()
        .map(|(l, h)| json!({"layer": l, "head": h, "score": 0.0, "asr_ablated": 0.0}))
        .collect();
    write_artifact(&p, "heads", json!({ "heads": list }));
    p
}

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(a, b)
}

/// A perturbed copy of the tiny model, as an open_clip-named safetensors checkpoint.
fn perturbed_checkpoint(dir: &Path) -> PathBuf {
    let m = tiny_model();
    tch::manual_seed(11);
    let vars: Vec<(String, Tensor)> = m
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| {
            let noisy = &v + Tensor::randn_like(&v) * 0.02;
            (k, noisy)
        })
        .collect();
    let p = dir.join("other.safetensors");
    Tensor::write_safetensors(&vars, &p).unwrap();
    std::fs::copy(
        common::fixtures().join("tiny-vit.open_clip_config.json"),
        dir.join("other.open_clip_config.json"),
    )
    .unwrap();
    p
}

#[test]
fn identity_settings_leave_embeddings_unchanged() {
    let _g = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    let images = tiny_images();
    let base = model.encode_image(&images);
    // Ablating no head.
    let heads = heads_artifact(dir.path(), &[(0, 0), (1, 1)]);
    let s = DefenseStack::parse(&[format!("heads:file={},k=0", heads.display())]).unwrap();
    assert!(diff(&s.encode_images(&model, &images), &base) <= 1e-6);
    // Projection onto an empty subspace.
    let proj = dir.path().join("proj.json");
    let e0: Vec<f32> = (0..64).map(|i| (i == 0) as i32 as f32).collect();
    write_artifact(&proj, "projection", json!({"dim": 64, "basis": [e0]}));
    let s = DefenseStack::parse(&[format!("projection:file={},k=0", proj.display())]).unwrap();
    assert!(diff(&s.encode_images(&model, &images), &base) <= 1e-6);
    // ... while k=1 removes that direction and nothing else changes sign of the rest.
    let s = DefenseStack::parse(&[format!("projection:file={}", proj.display())]).unwrap();
    let p = s.encode_images(&model, &images);
    assert!(f64::try_from(p.select(1, 0).abs().max()).unwrap() <= 1e-6);
    assert!(diff(&p.narrow(1, 1, 63), &base.narrow(1, 1, 63)) <= 1e-6);
    // Blur σ=0 on the model input.
    let s = DefenseStack::parse(&["blur:sigma=0"]).unwrap();
    let img = RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 77])
    });
    let plain = typoclip::preprocess::to_normalized_tensor(&img).unsqueeze(0);
    let through = typoclip::preprocess::to_normalized_tensor(
        &s.transform_image(img.clone(), &ImageContext::default()),
    )
    .unsqueeze(0);
    assert!(
        diff(
            &s.encode_images(&model, &through),
            &model.encode_image(&plain)
        ) <= 1e-6
    );
    // α = 0 interpolation.
    let other = perturbed_checkpoint(dir.path());
    let s =
        DefenseStack::parse(&[format!("interpolate:with={},alpha=0", other.display())]).unwrap();
    s.adapt_model(&mut model).unwrap();
    assert!(diff(&model.encode_image(&images), &base) <= 1e-6);
    assert_eq!(s.text_cache_tag(), None);
}

#[test]
fn interpolation_reaches_the_other_checkpoint() {
    let _g = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let other_path = perturbed_checkpoint(dir.path());
    let other = typoclip::model::load::load_checkpoint(&other_path, None, Device::Cpu)
        .unwrap()
        .model;
    let images = tiny_images();
    let mut full = tiny_model();
    let s = DefenseStack::parse(&[format!("interpolate:with={},alpha=1", other_path.display())])
        .unwrap();
    s.adapt_model(&mut full).unwrap();
    assert!(diff(&full.encode_image(&images), &other.encode_image(&images)) <= 1e-5);
    assert!(s.text_cache_tag().is_some());
    let mut half = tiny_model();
    DefenseStack::parse(&[format!(
        "interpolate:with={},alpha=0.5",
        other_path.display()
    )])
    .unwrap()
    .adapt_model(&mut half)
    .unwrap();
    let h = half.encode_image(&images);
    assert!(diff(&h, &other.encode_image(&images)) > 1e-4);
    assert!(diff(&h, &tiny_model().encode_image(&images)) > 1e-4);
    // Another architecture is refused, naming the file.
    let rn = common::fixtures().join("tiny-rn.state_dict.pt");
    let e = DefenseStack::parse(&[format!("interpolate:with={}", rn.display())])
        .unwrap()
        .adapt_model(&mut tiny_model())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tiny-rn.state_dict.pt") && e.contains("architecture"),
        "{e}"
    );
}

#[test]
fn head_ablation_matches_python_reference() {
    let _g = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    let refs = common::read_tensors(&reference().join("heads.safetensors"));
    let cases: Vec<Vec<(usize, usize)>> =
        serde_json::from_str(&std::fs::read_to_string(reference().join("heads.json")).unwrap())
            .unwrap();
    let model = tiny_model();
    let images = tiny_images();
    let base = model.encode_image(&images);
    for (i, heads) in cases.iter().enumerate() {
        let sub = dir.path().join(format!("c{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let file = heads_artifact(&sub, heads);
        let s = DefenseStack::parse(&[format!("heads:file={},k={}", file.display(), heads.len())])
            .unwrap();
        s.check_model(&model, &model_id()).unwrap();
        let ours = s.encode_images(&model, &images);
        let theirs = &refs[&format!("case{i}")];
        let d = diff(&ours, theirs);
        assert!(d <= 1e-4, "case {heads:?}: max abs diff {d}");
        if !heads.is_empty() {
            assert!(
                diff(&ours, &base) > 1e-3,
                "ablating {heads:?} changed nothing"
            );
        }
    }
    // A head the model does not have, or another model, is refused.
    let file = heads_artifact(dir.path(), &[(5, 0)]);
    let s = DefenseStack::parse(&[format!("heads:file={},k=1", file.display())]).unwrap();
    assert!(s.check_model(&model, &model_id()).is_err());
    let file = heads_artifact(dir.path(), &[(0, 0)]);
    let s = DefenseStack::parse(&[format!("heads:file={}", file.display())]).unwrap();
    let e = s
        .check_model(&model, "another-model")
        .unwrap_err()
        .to_string();
    assert!(e.contains("fitted with model"), "{e}");
}

#[test]
fn learned_token_embeddings_enter_the_text_encoder() {
    let _g = tch::no_grad_guard();
    let model = tiny_model();
    let tok = typoclip::tokenizer::ClipTokenizer::new();
    let prompts = vec![
        "a photo of a * apple.".to_string(),
        "a photo of a * piggy bank.".to_string(),
    ];
    let pid = typoclip::defense::prefix::placeholder_id(&tok);
    let star = model
        .embed_tokens(&Tensor::from_slice(&[pid]).view([1, 1]))
        .view([-1]);
    let via_embedding =
        typoclip::defense::prefix::encode_with_prefix(&model, &tok, &prompts, Some(&star));
    let plain = model.encode_text(&tok.tokenize(&prompts, 77));
    assert!(diff(&via_embedding, &plain) <= 1e-5);
    let other = Tensor::randn_like(&star) * 0.05;
    let changed =
        typoclip::defense::prefix::encode_with_prefix(&model, &tok, &prompts, Some(&other));
    assert!(diff(&changed, &plain) > 1e-4);
}

#[test]
fn oracle_masking_restores_the_clean_image() {
    let photo = RgbImage::from_fn(120, 90, |x, y| {
        image::Rgb([(30 + x) as u8, (50 + y) as u8, ((x + y) / 2) as u8])
    });
    let s = DefenseStack::parse(&["mask:source=oracle,fill=mean"]).unwrap();
    assert!(s.needs_oracle_mask());
    for spec in ["ipod-label.toml", "distill-suite.toml"] {
        let spec =
            typoclip::attack::AttackSpec::load(&common::repo().join("attacks").join(spec)).unwrap();
        let v = &spec.variants[0];
        let r = typoclip::attack::render_for_model(
            &photo,
            v,
            &typoclip::preprocess::PreprocessCfg::square(64),
            3,
            None,
        );
        let mask = typoclip::defense::mask::oracle_mask(&r);
        // The mask covers every changed model-input pixel.
        for (x, y, p) in r.attacked_input.enumerate_pixels() {
            if p != r.clean_input.get_pixel(x, y) {
                assert_eq!(mask.get_pixel(x, y)[0], 255);
            }
        }
        assert!(mask.pixels().any(|p| p[0] > 0));
        let ctx = ImageContext {
            oracle_mask: Some(&mask),
        };
        let defended = s.transform_image(r.attacked_input.clone(), &ctx);
        let clean_defended = s.transform_image(r.clean_input.clone(), &ctx);
        assert_eq!(defended, clean_defended, "{}", v.name);
        for (x, y, p) in defended.enumerate_pixels() {
            if mask.get_pixel(x, y)[0] == 0 {
                assert_eq!(p, r.clean_input.get_pixel(x, y));
            }
        }
        // Clean images carry no mask and pass unchanged.
        assert_eq!(
            s.transform_image(r.clean_input.clone(), &ImageContext::default()),
            r.clean_input
        );
    }
}

#[test]
fn composed_defenses_apply_in_stage_then_given_order() {
    let img = RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([((x * 13) ^ (y * 7)) as u8, (x * 4) as u8, (y * 4) as u8])
    });
    let ctx = ImageContext::default();
    let one = |spec: &str, i: RgbImage| {
        DefenseStack::parse(&[spec])
            .unwrap()
            .transform_image(i, &ctx)
    };
    let jpeg_then_blur = one("blur:sigma=1.5", one("jpeg:quality=40", img.clone()));
    let blur_then_jpeg = one("jpeg:quality=40", one("blur:sigma=1.5", img.clone()));
    assert_ne!(jpeg_then_blur, blur_then_jpeg);
    let s = DefenseStack::parse(&["jpeg:quality=40", "blur:sigma=1.5"]).unwrap();
    assert_eq!(s.transform_image(img.clone(), &ctx), jpeg_then_blur);
    let s = DefenseStack::parse(&["blur:sigma=1.5", "jpeg:quality=40"]).unwrap();
    assert_eq!(s.transform_image(img, &ctx), blur_then_jpeg);
    // Stages first: a score defense given first still runs after the model's views.
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("p.json");
    let e0: Vec<f32> = (0..64).map(|i| (i == 3) as i32 as f32).collect();
    write_artifact(&proj, "projection", json!({"dim": 64, "basis": [e0]}));
    let s = DefenseStack::parse(&[
        format!("projection:file={}", proj.display()),
        "flip:mode=mask".into(),
        "median:radius=1".into(),
        "prompt:set=with-label".into(),
    ])
    .unwrap();
    let names: Vec<String> = s.records().into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["prompt", "median", "flip", "projection"]);
    let _g = tch::no_grad_guard();
    let model = tiny_model();
    let images = tiny_images();
    let f = model.encode_image(&images);
    let g = model.encode_image(&images.flip([3]));
    let masked = &f * f.sign().eq_tensor(&g.sign()).to_kind(Kind::Float);
    let expected = typoclip::defense::projection::project_out(
        &masked,
        &Tensor::from_slice(&(0..64).map(|i| (i == 3) as i32 as f32).collect::<Vec<_>>())
            .view([1, 64]),
    );
    assert!(diff(&s.encode_images(&model, &images), &expected) <= 1e-5);
}

/// An image folder of `classes`, `per_class` images each; `salt` makes the pixels differ from
/// other folders'.
fn image_folder(dir: &Path, name: &str, classes: &[&str], per_class: u32, salt: u32) -> PathBuf {
    let root = dir.join(name);
    for (c, class) in classes.iter().enumerate() {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per_class {
            let img = RgbImage::from_fn(80, 64, |x, y| {
                image::Rgb([
                    (x * 3 + salt * 31 + i * 17) as u8,
                    (y * 3 + c as u32 * 60) as u8,
                    (salt * 50 + c as u32 * 20 + i * 9) as u8,
                ])
            });
            img.save(d.join(format!("{i}.png"))).unwrap();
        }
    }
    let desc = dir.join(format!("{name}.toml"));
    std::fs::write(
        &desc,
        format!(
            "name = \"{name}\"\nkind = \"image_folder\"\npath = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    desc
}

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn fitted_projection_is_recorded_and_refuses_overlapping_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let calib = image_folder(dir.path(), "calib", &["apple", "pear"], 2, 1);
    let eval = image_folder(dir.path(), "eval", &["apple", "pear"], 1, 2);
    let model = tiny().display().to_string();
    let art = dir.path().join("proj.json");
    let o = typoclip(&[
        "fit",
        "projection",
        "--model",
        &model,
        "--dataset",
        calib.to_str().unwrap(),
        "--words",
        "banana,violin",
        "--fonts",
        "mono,comic",
        "--k",
        "3",
        "--seed",
        "5",
        "--out",
        art.to_str().unwrap(),
        "--quiet",
    ]);
    ok(&o);
    let a = read_json(&art);
    assert_eq!(a["kind"], "projection");
    assert_eq!(a["data"]["basis"].as_array().unwrap().len(), 3);
    assert_eq!(a["calibration"]["images"].as_array().unwrap().len(), 4);
    assert_eq!(a["calibration"]["words"], json!(["banana", "violin"]));
    assert_eq!(a["calibration"]["fonts"], json!(["comic", "mono"]));
    assert_eq!(a["calibration"]["seed"], 5);
    assert_eq!(a["fit"]["attacked_images"], 16);
    let spec = common::repo().join("attacks/ipod-label.toml");
    let defense = format!("projection:file={}", art.display());
    let sweep = |ds: &Path, spec: &Path, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "sweep".to_string(),
            "--model".into(),
            model.clone(),
            "--dataset".into(),
            ds.display().to_string(),
            "--attacks".into(),
            spec.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--quiet".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        (typoclip(&refs), out)
    };
    // Same images as the calibration: refused before any work.
    let (o, out) = sweep(&calib, &spec, "same-images", &["--defense", &defense]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fitted on images this run evaluates"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!out.exists());
    // A calibration word in the attack: refused.
    let banana = dir.path().join("banana.toml");
    std::fs::write(
        &banana,
        "description = \"b\"\ntarget = \"banana\"\n[[layers]]\nkind = \"text\"\ntext = \"banana\"\nfont = \"serif\"\n",
    )
    .unwrap();
    let (o, _) = sweep(&eval, &banana, "same-word", &["--defense", &defense]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("banana"));
    // A calibration font: refused.
    let mono = dir.path().join("mono.toml");
    std::fs::write(
        &mono,
        "description = \"m\"\ntarget = \"iPod\"\n[[layers]]\nkind = \"text\"\ntext = \"iPod\"\nfont = \"mono\"\n",
    )
    .unwrap();
    let (o, _) = sweep(&eval, &mono, "same-font", &["--defense", &defense]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("fonts"));
    // Disjoint: runs, and provenance records every defense in application order.
    let (o, out) = sweep(
        &eval,
        &spec,
        "ok",
        &[
            "--defense",
            &defense,
            "--defense",
            "blur:sigma=1.5",
            "--json",
        ],
    );
    ok(&o);
    let prov = read_json(&out.join("provenance.json"));
    let d = prov["defenses"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["spec"], "blur:sigma=1.5");
    assert_eq!(d[0]["hook"], "image");
    assert_eq!(d[0]["params"]["sigma"], 1.5);
    assert!(d[0]["fitted"].is_null());
    assert_eq!(d[1]["name"], "projection");
    assert_eq!(d[1]["hook"], "score");
    assert_eq!(d[1]["params"]["k"], 3);
    assert_eq!(
        d[1]["fitted"]["calibration"]["words"],
        json!(["banana", "violin"])
    );
    assert_eq!(d[1]["fitted"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(d[1]["fitted"]["artifact"], art.display().to_string());
    // The defended run differs from the undefended one.
    let (o, plain) = sweep(&eval, &spec, "plain", &[]);
    ok(&o);
    assert_eq!(
        read_json(&plain.join("provenance.json"))["defenses"],
        json!([])
    );
    assert_ne!(
        std::fs::read(out.join("records.jsonl")).unwrap(),
        std::fs::read(plain.join("records.jsonl")).unwrap()
    );
    // Resuming with other defenses is refused.
    let (o, _) = sweep(&eval, &spec, "ok", &["--defense", &defense, "--resume"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("defenses differs"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An identity defense reproduces the undefended records exactly.
    let (o, ident) = sweep(&eval, &spec, "ident", &["--defense", "blur:sigma=0"]);
    ok(&o);
    assert_eq!(
        std::fs::read(ident.join("records.jsonl")).unwrap(),
        std::fs::read(plain.join("records.jsonl")).unwrap()
    );
}

#[test]
fn fit_heads_and_prefix_then_sweep_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let calib = image_folder(dir.path(), "calib", &["apple", "pear", "plum"], 2, 3);
    let eval = image_folder(dir.path(), "eval", &["apple", "pear"], 1, 4);
    let model = tiny().display().to_string();
    let heads = dir.path().join("heads.json");
    ok(&fit_cli("heads", &model, &calib, &heads, &[]));
    let h = read_json(&heads);
    let list = h["data"]["heads"].as_array().unwrap();
    assert_eq!(list.len(), 4, "2 layers × 2 heads");
    let keys: Vec<(f64, f64)> = list
        .iter()
        .map(|x| {
            (
                x["asr_drop"].as_f64().unwrap(),
                x["score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] >= w[1]),
        "not ranked by attack-success drop, then P(word) drop: {keys:?}"
    );
    let prefix = dir.path().join("prefix.json");
    ok(&fit_cli(
        "prefix",
        &model,
        &calib,
        &prefix,
        &["--steps", "25", "--lr", "0.01"],
    ));
    let p = read_json(&prefix);
    let before = p["fit"]["loss_before"].as_f64().unwrap();
    let after = p["fit"]["loss_after"].as_f64().unwrap();
    assert!(
        after < before,
        "prefix fitting did not lower its loss: {before} → {after}"
    );
    assert_eq!(p["fit"]["losses"].as_array().unwrap().len(), 26);
    assert_eq!(p["data"]["embedding"].as_array().unwrap().len(), 128);
    // A ResNet has no attention heads to score.
    let o = typoclip(&[
        "fit",
        "heads",
        "--model",
        common::fixtures()
            .join("tiny-rn.state_dict.pt")
            .to_str()
            .unwrap(),
        "--dataset",
        calib.to_str().unwrap(),
        "--out",
        dir.path().join("x.json").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let out = dir.path().join("run");
    ok(&ipod_sweep(
        &model,
        &eval,
        &out,
        &[
            &format!("heads:file={},k=2", heads.display()),
            &format!("prefix:file={}", prefix.display()),
            "mask:source=oracle",
        ],
    ));
    let prov = read_json(&out.join("provenance.json"));
    let names: Vec<&str> = prov["defenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["prefix", "mask", "heads"]);
    assert_eq!(
        prov["defenses"][2]["params"]["ablated"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(prov["templates"].as_str().unwrap().ends_with("+prefix"));
}

/// Mean-ablation: `fit heads --ablation mean` stores the best heads' means and the defense
/// replaces those heads' outputs by them; replacing a head by its mean over one image leaves
/// that image's embedding as it is, while zeroing the head changes it; a `k` beyond the stored
/// means is refused before any work.
#[test]
fn mean_ablation_replaces_heads_by_their_calibration_means() {
    use typoclip::defense::fit::head_means;
    use typoclip::defense::heads::Ablation;
    let model = tiny_model();
    let images = tiny_images();
    let one = images.get(0);
    let means = head_means(&model, &[&one], 2, 4);
    assert_eq!(means.len(), 2);
    let (h, l, d) = means[1].size3().unwrap();
    assert_eq!(h, 2);
    let plain = model.encode_image_probed(&one.unsqueeze(0), &mut Probe::none());
    let mean = means[1].get(1);
    assert_eq!(mean.size(), [l, d]);
    let own_mean = model.encode_image_probed(
        &one.unsqueeze(0),
        &mut Probe::none().with_intervention(Ablation::Mean.intervention(1, 1, Some(&mean))),
    );
    let zeroed = model.encode_image_probed(
        &one.unsqueeze(0),
        &mut Probe::none().with_intervention(Ablation::Zero.intervention(1, 1, None)),
    );
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        diff(&own_mean, &plain) < 1e-5,
        "{}",
        diff(&own_mean, &plain)
    );
    assert!(diff(&zeroed, &plain) > 1e-3, "{}", diff(&zeroed, &plain));
    // The mean over two images is their average, head by head.
    let two = head_means(&model, &[&images.get(0), &images.get(1)], 2, 1);
    let second = head_means(&model, &[&images.get(1)], 2, 4);
    let avg = (&means[0] + &second[0]) / 2.0;
    assert!(diff(&two[0], &avg) < 1e-5);

    let dir = tempfile::tempdir().unwrap();
    let calib = image_folder(dir.path(), "calib", &["apple", "pear", "plum"], 2, 3);
    let eval = image_folder(dir.path(), "eval", &["apple", "pear"], 1, 4);
    let tiny = tiny().display().to_string();
    let heads = dir.path().join("heads.json");
    ok(&fit_cli(
        "heads",
        &tiny,
        &calib,
        &heads,
        &["--ablation", "mean", "--keep-means", "3"],
    ));
    let h = read_json(&heads);
    assert_eq!(h["data"]["ablation"], "mean");
    let stored = h["data"]["means"].as_array().unwrap();
    assert_eq!(stored.len(), 3, "the best 3 of 4 heads");
    for (m, s) in stored.iter().zip(h["data"]["heads"].as_array().unwrap()) {
        assert_eq!((&m["layer"], &m["head"]), (&s["layer"], &s["head"]));
        let shape: Vec<i64> = serde_json::from_value(m["shape"].clone()).unwrap();
        assert_eq!(shape, vec![l, d]);
        assert_eq!(m["values"].as_array().unwrap().len() as i64, l * d);
    }
    let sweep = |out: &Path, k: usize| {
        ipod_sweep(
            &tiny,
            &eval,
            out,
            &[&format!("heads:file={},k={k}", heads.display())],
        )
    };
    let out = dir.path().join("run");
    ok(&sweep(&out, 3));
    let prov = read_json(&out.join("provenance.json"));
    assert_eq!(prov["defenses"][0]["params"]["ablation"], "mean");
    assert_eq!(
        prov["defenses"][0]["params"]["ablated"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let o = sweep(&dir.path().join("run4"), 4);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("k") && err.lines().count() == 1, "{err}");
}

#[test]
fn bad_defenses_are_one_line_errors_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let eval = image_folder(dir.path(), "eval", &["apple"], 1, 5);
    let model = tiny().display().to_string();
    let out = dir.path().join("run");
    let spec = common::repo().join("attacks/ipod-label.toml");
    for (defense, expect) in [
        ("sharpen:amount=2", "unknown defense `sharpen`"),
        ("blur:radius=2", "unknown parameter `radius` for blur"),
        ("jpeg:quality=0", "quality: 0 is outside"),
        ("projection:file=", "file: empty value"),
        (
            "mask:source=oracle,threshold=9",
            "applies to source=detector only",
        ),
        (
            "heads:file=/nonexistent/heads.json",
            "/nonexistent/heads.json",
        ),
    ] {
        let o = typoclip(&[
            "sweep",
            "--model",
            &model,
            "--dataset",
            eval.to_str().unwrap(),
            "--attacks",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--defense",
            defense,
        ]);
        assert_eq!(o.status.code(), Some(2), "{defense}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{defense}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
    // The oracle mask needs rendered attacks: physical photos are refused.
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for w in ["blank", "iPod"] {
        RgbImage::from_pixel(40, 40, image::Rgb([9, 9, 9]))
            .save(photos.join(format!("apple-{w}.png")))
            .unwrap();
    }
    let desc = dir.path().join("wild.toml");
    std::fs::write(
        &desc,
        format!(
            "name = \"w\"\nkind = \"distill_in_the_wild\"\npath = \"{}\"\n",
            photos.display()
        ),
    )
    .unwrap();
    let o = typoclip(&[
        "sweep",
        "--model",
        &model,
        "--dataset",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--defense",
        "mask:source=oracle",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mask:source=detector"));
    // ... while the detector and the other defenses run on physical photos.
    ok(&typoclip(&[
        "sweep",
        "--model",
        &model,
        "--dataset",
        desc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--defense",
        "mask:source=detector",
        "--defense",
        "flip",
        "--defense",
        "downscale:scale=0.5",
        "--defense",
        "median",
    ]));
}

#[test]
fn shipped_bench_plan_is_valid() {
    let path = common::repo().join("attacks/defense-bench.toml");
    let plan = typoclip::cli::bench_cmd::load_plan(&path).unwrap();
    let base = path.parent().unwrap();
    assert!(base.join(&plan.dataset).is_file());
    for a in &plan.attacks {
        typoclip::attack::AttackSpec::load(&base.join(a)).unwrap();
    }
    let names: Vec<&str> = plan.defenses.iter().map(|d| d.name.as_str()).collect();
    for n in [
        "none",
        "blur-1",
        "jpeg-50",
        "mask-oracle",
        "projection-4",
        "heads-4",
        "prefix",
    ] {
        assert!(names.contains(&n), "{n} missing");
    }
    // The calibration split shares no word or font with the plan's attacks.
    let c = plan.calibration.as_ref().unwrap();
    for a in &plan.attacks {
        let spec = typoclip::attack::AttackSpec::load(&base.join(a)).unwrap();
        let (words, fonts) = typoclip::defense::variant_words_and_fonts(&spec.variants);
        assert!(c.words.iter().all(|w| !words.contains(&w.to_lowercase())));
        assert!(c.fonts.iter().all(|f| !fonts.contains(f)), "{fonts:?}");
    }
    // Comparison plans are not attack specs.
    let specs = typoclip::attack::spec_files(base).unwrap();
    assert!(!specs.iter().any(|p| p.ends_with("defense-bench.toml")));
}

#[test]
fn bench_runs_every_attack_and_defense_in_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let calib = image_folder(dir.path(), "calib", &["apple", "pear"], 1, 6);
    let eval = image_folder(dir.path(), "eval", &["apple", "pear"], 1, 7);
    let repo = common::repo();
    let plan = dir.path().join("plan-bench.toml");
    std::fs::write(
        &plan,
        format!(
            "description = \"t\"\ndataset = \"{}\"\nattacks = [\"{}\", \"{}\"]\n\
             [calibration]\ndataset = \"{}\"\nwords = [\"banana\"]\nfonts = [\"mono\"]\n\
             [[defenses]]\nname = \"none\"\nspecs = []\n\
             [[defenses]]\nname = \"blur\"\nspecs = [\"blur:sigma=1\"]\n\
             [[defenses]]\nname = \"proj\"\nspecs = [\"projection:file={{fitted:projection}},k=2\"]\n",
            eval.display(),
            repo.join("attacks/ipod-label.toml").display(),
            repo.join("attacks/dollar-marks.toml").display(),
            calib.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("bench");
    let model = tiny().display().to_string();
    let o = typoclip(&[
        "bench",
        plan.to_str().unwrap(),
        "--model",
        &model,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    ok(&o);
    let index = read_json(&out.join("bench.json"));
    let runs = index["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    for r in runs {
        let prov = read_json(&Path::new(r["run"].as_str().unwrap()).join("provenance.json"));
        assert!(prov["finished"].is_string());
        let n = prov["defenses"].as_array().unwrap().len();
        assert_eq!(n, r["specs"].as_array().unwrap().len());
    }
    assert!(out.join("fitted/projection.json").is_file());
    assert!(out.join("dollar-marks/proj/summary.json").is_file());
    // Running it again resumes every run to the same records.
    let before = std::fs::read(out.join("ipod-label/blur/records.jsonl")).unwrap();
    ok(&typoclip(&[
        "bench",
        plan.to_str().unwrap(),
        "--model",
        &model,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--only",
        "blur",
    ]));
    assert_eq!(
        std::fs::read(out.join("ipod-label/blur/records.jsonl")).unwrap(),
        before
    );
    // A bad spec in a plan is refused, naming the plan and the entry.
    let bad = dir.path().join("bad-bench.toml");
    std::fs::write(
        &bad,
        "description = \"t\"\ndataset = \"x.toml\"\nattacks = [\"a.toml\"]\n\
         [[defenses]]\nname = \"b\"\nspecs = [\"blur:sigmx=1\"]\n",
    )
    .unwrap();
    let o = typoclip(&[
        "bench",
        bad.to_str().unwrap(),
        "--model",
        &model,
        "--out",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad-bench.toml: defenses.b") && err.contains("sigmx"),
        "{err}"
    );
}

#[test]
fn learned_projection_fits_and_the_identity_map_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let _g = tch::no_grad_guard();
        let model = tiny_model();
        let images = tiny_images();
        let eye: Vec<Vec<f32>> = (0..64)
            .map(|i| (0..64).map(|j| (i == j) as i32 as f32).collect())
            .collect();
        let ident = dir.path().join("eye.json");
        write_artifact(&ident, "projection", json!({"dim": 64, "matrix": eye}));
        let s = DefenseStack::parse(&[format!("projection:file={}", ident.display())]).unwrap();
        assert!(
            diff(
                &s.encode_images(&model, &images),
                &model.encode_image(&images)
            ) <= 1e-6
        );
        let e = DefenseStack::parse(&[format!("projection:file={},k=2", ident.display())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("training-free"), "{e}");
    }
    let calib = image_folder(dir.path(), "calib", &["apple", "pear"], 2, 8);
    let eval = image_folder(dir.path(), "eval", &["apple", "pear"], 1, 9);
    let model = tiny().display().to_string();
    let art = dir.path().join("learned.json");
    ok(&typoclip(&[
        "fit",
        "projection",
        "--learned",
        "--model",
        &model,
        "--dataset",
        calib.to_str().unwrap(),
        "--words",
        "banana",
        "--fonts",
        "mono",
        "--steps",
        "20",
        "--lr",
        "0.01",
        "--preserve-weight",
        "0.01",
        "--out",
        art.to_str().unwrap(),
        "--quiet",
    ]));
    let a = read_json(&art);
    let before = a["fit"]["loss_before"].as_f64().unwrap();
    let after = a["fit"]["loss_after"].as_f64().unwrap();
    assert!(
        after < before,
        "learned projection did not lower its loss: {before} → {after}"
    );
    assert_eq!(a["data"]["matrix"].as_array().unwrap().len(), 64);
    let out = dir.path().join("run");
    ok(&typoclip(&[
        "sweep",
        "--model",
        &model,
        "--dataset",
        eval.to_str().unwrap(),
        "--attacks",
        common::repo()
            .join("attacks/ipod-label.toml")
            .to_str()
            .unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--defense",
        &format!("projection:file={}", art.display()),
    ]));
    let prov = read_json(&out.join("provenance.json"));
    assert_eq!(prov["defenses"][0]["params"]["form"], "learned");
    let o = typoclip(&[
        "fit",
        "heads",
        "--learned",
        "--model",
        &model,
        "--dataset",
        calib.to_str().unwrap(),
        "--out",
        art.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}
