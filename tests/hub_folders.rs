//! Models read from hub folders through the CLI, against open_clip given the same folders
//! (`scripts/reference.py`'s `hub-folders` config): a non-OpenAI `preprocess_cfg` (mean/std 0.5,
//! bilinear, squash) must give open_clip's pixels (within 1/255) and image embeddings (1e-4
//! relative) in `embed`, `classify` must take it, and a sweep must record it in its provenance
//! and refuse to resume with another; a text tower with a Hugging Face
//! `tokenizer.json` must give open_clip's `HFTokenizer` ids and text embeddings in
//! `embed --text` and a zero-shot classifier; without the tokenizer file, image commands still
//! work and text commands fail with one line naming the folder and the file; CLIP's BPE on a
//! text tower with another vocabulary is refused in one line.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{max_relative, read_npy_f32, read_tensors, run_typoclip};
use tch::{Kind, Tensor};

fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::generate("hub-folders", "hub-folders"))
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("hub-folders.json")).unwrap())
        .unwrap()
}

fn images() -> Vec<String> {
    meta()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn prompts() -> Vec<String> {
    meta()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "typoclip failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn hub_preprocess_cfg_gives_open_clip_pixels_and_embeddings() {
    let reference = read_tensors(&fixture().join("hub-folders.safetensors"));
    let folder = fixture().join("hub-preprocess");
    // The pixels: the transform typoclip reads from the folder, as the pipeline applies it.
    let cfg = typoclip::preprocess::PreprocessCfg::from_open_clip_json(&meta()["preprocess_cfg"])
        .unwrap();
    let cfg = typoclip::preprocess::PreprocessCfg {
        size: (64, 64),
        ..cfg
    };
    for (i, p) in images().iter().enumerate() {
        let img = typoclip::dataset::load_rgb(Path::new(p)).unwrap();
        let ours = typoclip::preprocess::model_tensor(&img, &cfg);
        let theirs = &reference[&format!("pre/{i}")];
        assert_eq!(ours.size(), theirs.size(), "{p}");
        // In pixel units (std 0.5).
        let w = f64::try_from(((ours - theirs).abs() * 0.5 * 255.0).max()).unwrap();
        assert!(w <= 1.0 + 1e-3, "{p}: max pixel difference {w:.3}/255");
    }
    // The embeddings, through the CLI.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("img.npy");
    let mut args = vec![
        "embed".to_string(),
        "--model".into(),
        folder.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(images());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&run_typoclip(&refs, "typoclip-hub-preprocess"));
    let ours = read_npy_f32(&out);
    let d = max_relative(&ours, &reference["image_features"]);
    assert!(
        d <= 1e-4,
        "image embeddings differ from open_clip's by {d:.2e} (relative)"
    );
    // An image command that also encodes text (CLIP's BPE here) takes the folder.
    let stdout = ok(&run_typoclip(
        &[
            "classify",
            "--model",
            folder.to_str().unwrap(),
            "--labels",
            "apple,iPod,library",
            "--templates",
            "single",
            "--json",
            &images()[0],
        ],
        "typoclip-hub-preprocess",
    ));
    let doc: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(doc["results"][0]["top"].as_array().unwrap().len(), 3);
}

#[test]
fn hub_hf_tokenizer_gives_open_clip_text_embeddings() {
    let reference = read_tensors(&fixture().join("hub-folders.safetensors"));
    let folder = fixture().join("hub-hf-text");
    let prompts = prompts();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("txt.npy");
    let mut args = vec![
        "embed".to_string(),
        "--model".into(),
        folder.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    for p in &prompts {
        args.push("--text".into());
        args.push(p.clone());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&run_typoclip(&refs, "typoclip-hub-hf-text"));
    let ours = read_npy_f32(&out);
    let d = max_relative(&ours, &reference["hf_text_features"]);
    assert!(
        d <= 1e-4,
        "text embeddings differ from open_clip's by {d:.2e} (relative)"
    );

    // The zero-shot classifier goes through the same tokenizer: its class embeddings (one
    // template, `{}`) are the normalised text embeddings of the names.
    let names = ["Granny Smith apple", "iPod"];
    let bare = dir.path().join("bare.txt");
    std::fs::write(&bare, "{}\n").unwrap();
    let stdout = ok(&run_typoclip(
        &[
            "classify",
            "--model",
            folder.to_str().unwrap(),
            "--labels",
            &names.join(","),
            "--templates",
            bare.to_str().unwrap(),
            "--json",
            &images()[0],
        ],
        "typoclip-hub-hf-text",
    ));
    let doc: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let top = doc["results"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    // Expected probabilities from open_clip's text features and typoclip's image features.
    let img_out = dir.path().join("img.npy");
    ok(&run_typoclip(
        &[
            "embed",
            "--model",
            folder.to_str().unwrap(),
            "--out",
            img_out.to_str().unwrap(),
            &images()[0],
        ],
        "typoclip-hub-hf-text",
    ));
    let img = read_npy_f32(&img_out);
    let text = &reference["hf_text_features"];
    let rows = Tensor::stack(
        &[
            text.get(prompts.iter().position(|p| p == names[0]).unwrap() as i64),
            text.get(prompts.iter().position(|p| p == names[1]).unwrap() as i64),
        ],
        0,
    );
    let norm = |t: &Tensor| t / t.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true);
    let scale = 1.0 / 0.07f64;
    let logits = norm(&img).matmul(&norm(&rows).transpose(0, 1)) * (scale.ln() + 0.1).exp();
    let probs = Vec::<f64>::try_from(
        logits
            .softmax(-1, Kind::Double)
            .view([-1])
            .to_kind(Kind::Double),
    )
    .unwrap();
    for t in top {
        let label = t["label"].as_str().unwrap();
        let i = names.iter().position(|n| *n == label).unwrap();
        let p = t["prob"].as_f64().unwrap();
        assert!(
            (p - probs[i]).abs() < 1e-3,
            "P({label}) = {p}, open_clip's text features give {}",
            probs[i]
        );
    }
}

#[test]
fn missing_tokenizer_fails_only_text_commands() {
    let src = fixture().join("hub-hf-text");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("no-tokenizer");
    std::fs::create_dir(&folder).unwrap();
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(src.join(f), folder.join(f)).unwrap();
    }
    let out = dir.path().join("img.npy");
    ok(&run_typoclip(
        &[
            "embed",
            "--model",
            folder.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            &images()[1],
        ],
        "typoclip-hub-no-tokenizer",
    ));
    assert_eq!(read_npy_f32(&out).size(), vec![1, 64]);
    for args in [
        vec!["embed", "--text", "a cat", "--out", out.to_str().unwrap()],
        vec!["classify", "--labels", "apple,iPod", &images()[1]],
    ] {
        let mut full = vec!["--model", folder.to_str().unwrap()];
        full.splice(0..0, [args[0]]);
        full.extend(&args[1..]);
        let o = run_typoclip(&full, "typoclip-hub-no-tokenizer");
        assert!(
            !o.status.success(),
            "{} succeeded without tokenizer.json",
            args[0]
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        let want = folder.join("tokenizer.json").display().to_string();
        assert!(lines[0].contains(&want), "{}: {stderr}", args[0]);
        assert!(lines[0].contains("missing"), "{stderr}");
    }
}

/// A text tower whose vocabulary is not CLIP's and whose config names no tokenizer is refused
/// when text is encoded (CLIP's BPE ids would fall outside its embedding), in one line.
#[test]
fn bpe_on_another_vocabulary_is_refused() {
    let model = common::fixtures().join("tiny-options.open_clip.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.npy");
    let o = run_typoclip(
        &[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--text",
            "a cat",
            "--out",
            out.to_str().unwrap(),
        ],
        "typoclip-hub-vocab",
    );
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("text_cfg.vocab_size 1000"), "{stderr}");
}

/// A sweep with a non-OpenAI transform records it in provenance.json, and resuming it after the
/// folder's `preprocess_cfg` changed (same weights) is refused, naming the transform.
#[test]
fn sweep_records_the_transform_and_refuses_another_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    std::fs::create_dir(&folder).unwrap();
    let src = fixture().join("hub-preprocess");
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(src.join(f), folder.join(f)).unwrap();
    }
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for (i, p) in images().iter().enumerate() {
        std::fs::copy(p, photos.join(format!("IMG_{i}.png"))).unwrap();
    }
    let out = dir.path().join("run");
    let spec = common::repo().join("attacks/ipod-label.toml");
    let args = |resume: bool| {
        let mut a = vec![
            "sweep",
            "--model",
            folder.to_str().unwrap(),
            "--dataset",
            photos.to_str().unwrap(),
            "--attacks",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run_typoclip(&refs, "typoclip-hub-sweep")
    };
    ok(&run(args(false)));
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    let t = &prov["image_transform"];
    assert_eq!(t["resize_mode"], "squash", "{prov}");
    assert_eq!(t["interpolation"], "bilinear", "{prov}");
    assert_eq!(t["mean"], serde_json::json!([0.5, 0.5, 0.5]), "{prov}");
    // The same inputs resume.
    ok(&run(args(true)));
    // Another transform in the folder, same weights: refused.
    let cfg_path = folder.join("open_clip_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["preprocess_cfg"]["interpolation"] = "bicubic".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let o = run(args(true));
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("image transform differs"), "{stderr}");
}

/// `info` says which transform and which tokenizer a folder's model takes.
#[test]
fn info_names_the_transform_and_the_tokenizer() {
    let info = |folder: &str| -> serde_json::Value {
        let f = fixture().join(folder);
        let out = ok(&run_typoclip(
            &["info", "--json", "--model", f.to_str().unwrap()],
            "typoclip-hub-info",
        ));
        serde_json::from_str(&out).unwrap()
    };
    let pre = info("hub-preprocess");
    let t = pre["image_transform"].as_str().unwrap();
    assert!(t.starts_with("bilinear squash") && t.contains("0.5"), "{t}");
    let from = pre["image_transform_source"].as_str().unwrap();
    assert!(
        from.starts_with("preprocess_cfg of") && from.contains("open_clip_config.json"),
        "{from}"
    );
    assert!(pre["tokenizer"].as_str().unwrap().starts_with("CLIP BPE"));
    let hf = info("hub-hf-text");
    let tok = hf["tokenizer"].as_str().unwrap();
    assert!(
        tok.starts_with("Hugging Face") && tok.ends_with("tokenizer.json)"),
        "{tok}"
    );
}

/// `tokenize --model` tokenizes as the model's text tower does: the hub folder's
/// `tokenizer.json`, open_clip's `HFTokenizer` ids, full rows at the model's context length.
#[test]
fn tokenize_with_a_model_uses_its_tokenizer() {
    let reference = read_tensors(&fixture().join("hub-folders.safetensors"));
    let folder = fixture().join("hub-hf-text");
    let prompts = prompts();
    let mut args = vec![
        "tokenize".to_string(),
        "--model".into(),
        folder.display().to_string(),
    ];
    args.extend(prompts.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&run_typoclip(&refs, "typoclip-hub-tokenize"));
    let rows: Vec<Vec<i64>> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let theirs: Vec<Vec<i64>> = (0..prompts.len() as i64)
        .map(|i| Vec::<i64>::try_from(reference["hf_tokens"].get(i)).unwrap())
        .collect();
    assert_eq!(rows, theirs);
}
