//! The `typoclip` binary end to end: bad input gives one line naming the file and the
//! problem with exit code 2; good input gives the promised outputs.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, read_tensors};
use tch::Tensor;

fn typoclip(args: &[&str]) -> Output {
    common::run_typoclip(args, "typoclip-test-empty-cache")
}

/// Asserts exit code 2 and a single stderr line containing every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "`{}` does not mention `{n}`",
            lines[0]
        );
    }
}

#[test]
fn missing_model_file_is_one_line() {
    let out = typoclip(&["info", "--model", "/no/such/model.pt"]);
    assert_one_line_error(&out, &["/no/such/model.pt"]);
}

#[test]
fn unknown_format_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("weights.bin");
    std::fs::write(&p, b"definitely not a checkpoint, just some text").unwrap();
    let out = typoclip(&["info", "--model", p.to_str().unwrap()]);
    assert_one_line_error(&out, &["weights.bin", "unknown checkpoint format"]);
}

#[test]
fn truncated_files_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "tiny-vit.state_dict.pt",
        "tiny-vit.ts.pt",
        "tiny-vit.open_clip.safetensors",
    ] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let p = dir.path().join(format!("cut-{name}"));
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let out = typoclip(&["info", "--model", p.to_str().unwrap()]);
        assert_one_line_error(&out, &[&format!("cut-{name}")]);
    }
}

#[test]
fn wrong_shapes_and_missing_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = read_tensors(&fixtures().join("tiny-vit.open_clip.safetensors"));
    sd.insert(
        "visual.ln_post.weight".into(),
        Tensor::zeros([7], (tch::Kind::Float, tch::Device::Cpu)),
    );
    sd.remove("transformer.resblocks.1.mlp.c_fc.bias");
    let named: Vec<(String, Tensor)> = sd.into_iter().collect();
    let p = dir.path().join("bad-shapes.safetensors");
    Tensor::write_safetensors(&named, &p).unwrap();
    std::fs::copy(
        fixtures().join("tiny-vit.open_clip_config.json"),
        dir.path().join("bad-shapes.open_clip_config.json"),
    )
    .unwrap();
    let out = typoclip(&["info", "--model", p.to_str().unwrap()]);
    assert_one_line_error(
        &out,
        &[
            "bad-shapes.safetensors",
            "visual.ln_post.weight",
            "transformer.resblocks.1.mlp.c_fc.bias",
            "missing",
            "mis-shaped",
        ],
    );
}

#[test]
fn corrupt_image_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.jpg");
    std::fs::write(&p, b"\xFF\xD8\xFF\xE0 this is not really a jpeg").unwrap();
    let model = fixtures().join("tiny-vit.state_dict.pt");
    let out = typoclip(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--labels",
        "a,b",
        p.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["broken.jpg"]);
}

#[test]
fn unknown_cached_name_points_to_fetch_and_random() {
    let out = typoclip(&["info", "--model", "ViT-B-32"]);
    assert_one_line_error(&out, &["fetch ViT-B-32", "random:ViT-B-32"]);
}

fn write_png(path: &Path, seed: u8) {
    let img = image::RgbImage::from_fn(80, 60, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_mul(3),
            seed,
        ])
    });
    img.save(path).unwrap();
}

fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = b[10 + hlen..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

#[test]
fn embed_images_and_text_write_npy() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    write_png(&a, 3);
    write_png(&b, 7);
    let model = fixtures().join("tiny-rn.open_clip.safetensors");
    let out_img = dir.path().join("img.npy");
    let o = typoclip(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--normalize",
        "--out",
        out_img.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, data) = read_npy_f32(&out_img);
    assert_eq!(shape, vec![2, 64]);
    for row in data.chunks(64) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row norm {norm}");
    }
    let out_txt = dir.path().join("txt.npy");
    let o = typoclip(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "an apple",
        "--text",
        "iPod",
        "--out",
        out_txt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, data) = read_npy_f32(&out_txt);
    assert_eq!(shape, vec![2, 64]);
    assert_ne!(data[..64], data[64..]);
}

#[test]
fn classify_json_with_random_weights_says_so_first() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.png");
    write_png(&a, 5);
    let o = typoclip(&[
        "classify",
        "--model",
        "random:RN50:3",
        "--labels",
        "cat,dog,iPod",
        "--top",
        "2",
        "--json",
        a.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        stdout.starts_with("{\"warning\":\"random weights"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let top = v["results"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert!(top[0]["prob"].as_f64().unwrap() >= top[1]["prob"].as_f64().unwrap());
    let plain = typoclip(&[
        "classify",
        "--model",
        "random:RN50:3",
        "--labels",
        "cat,dog",
        a.to_str().unwrap(),
    ]);
    let text = String::from_utf8(plain.stdout).unwrap();
    assert!(text
        .lines()
        .next()
        .unwrap()
        .starts_with("# random weights — output is not a property of CLIP"));
}

/// The README's first command, as written there (less its set-up step and with a temporary
/// `--out`): with no checkpoint cached it runs the positive control — the toy on its synthetic
/// scenes with its label attack — says so on its first line, writes the report and prints the
/// report's path last; run again, it continues the finished run.
#[test]
fn readme_first_command_sweeps_and_reports() {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```sh block in the README");
    let line = block.trim();
    let command = line
        .strip_prefix("bash scripts/setup.sh && ./target/release/typoclip ")
        .unwrap_or_else(|| panic!("the first command is not set-up then typoclip: {line}"));
    let mut args: Vec<String> = command.split_whitespace().map(String::from).collect();
    assert_eq!(args[0], "sweep", "{line}");
    assert!(args.iter().any(|a| a == "--report"), "{line}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first-run");
    let i = args.iter().position(|a| a == "--out").expect("--out") + 1;
    args[i] = out.display().to_string();
    if !common::repo().join(".cache/builtin/chelsea.png").exists() {
        eprintln!("skipping: the built-in images are not extracted (run scripts/setup.sh)");
        return;
    }
    // The cache as set-up leaves it offline: the toy trained (here a few steps of it), no
    // checkpoint — so the first command falls back to the positive control.
    let cache = dir.path().join("cache");
    let toy = cache.join("typoclip").join("toy");
    let trained = Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(["toy", "train", "--out", toy.to_str().unwrap()])
        .args(["--steps", "4", "--batch", "8", "--quiet"])
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(&args)
        .current_dir(common::repo())
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.starts_with("# toy CLIP trained by typoclip"),
        "first line: {}",
        stdout.lines().next().unwrap_or("")
    );
    let last = stdout.lines().last().unwrap();
    let html = out.join("report.html");
    assert!(
        last.starts_with("report: ") && last.contains(&html.display().to_string()),
        "last line: {last}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("toy CLIP trained by typoclip"),
        "no banner in the report"
    );
    // The toy's 400 held-out scenes, each with the other nine classes' names.
    let records = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    let spec = typoclip::attack::AttackSpec::load(&common::repo().join("attacks/toy-labels.toml"))
        .unwrap();
    assert_eq!(records.lines().count(), 400 * (spec.variants.len() - 1));
    // Running it again continues the finished run instead of failing.
    let again = Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(&args)
        .current_dir(common::repo())
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A model trained with another image transform (its folder's `preprocess_cfg` says squash,
/// mean 0.5) is run with that transform: `classify` takes it, and `embed` gives other
/// embeddings than the same weights with OpenAI's transform; `info` describes it.
#[test]
fn other_image_transforms_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("squash.safetensors");
    std::fs::copy(fixtures().join("tiny-vit.open_clip.safetensors"), &weights).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-vit.open_clip_config.json")).unwrap(),
    )
    .unwrap();
    cfg["preprocess_cfg"] = serde_json::json!({"resize_mode": "squash", "mean": [0.5, 0.5, 0.5]});
    std::fs::write(
        dir.path().join("squash.open_clip_config.json"),
        cfg.to_string(),
    )
    .unwrap();
    let img = dir.path().join("a.png");
    write_png(&img, 3);
    let w = weights.to_str().unwrap();
    let out = typoclip(&[
        "classify",
        "--model",
        w,
        "--labels",
        "cat,dog",
        img.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let embed = |model: &str, name: &str| {
        let npy = dir.path().join(name);
        let o = typoclip(&[
            "embed",
            "--model",
            model,
            "--out",
            npy.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_npy_f32(&npy).1
    };
    let plain = fixtures().join("tiny-vit.open_clip.safetensors");
    assert_ne!(
        embed(w, "squash.npy"),
        embed(plain.to_str().unwrap(), "plain.npy")
    );
    let o = typoclip(&["info", "--model", w]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
