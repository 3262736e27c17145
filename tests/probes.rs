//! The research probes against the Python reference (`scripts/reference_probes.py`: forward
//! hooks on open_clip, scipy's nnls, scikit-learn's LogisticRegression) and end to end through
//! the binary: neurons, concepts, Stroop, probe fit and `sweep --probe`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{max_abs_diff, read_tensors};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use typoclip::model::load::load_checkpoint;
use typoclip::model::{l2_normalize, ClipModel, Probe};
use typoclip::probe::{concepts, linear, neurons, stroop};
use typoclip::tokenizer::ClipTokenizer;
use typoclip::zeroshot::{class_embeddings, ClassLabel, LabelSet, TemplateSet};

/// Runs the probe reference once per test binary (stamped by the hash of both scripts).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = common::repo().join("tests/fixtures/generated/probes");
        let mut h = Sha256::new();
        for s in ["scripts/reference_probes.py", "scripts/reference.py"] {
            h.update(std::fs::read(common::repo().join(s)).expect("reference script"));
        }
        let stamp_value = hex::encode(h.finalize());
        let stamp = out.join(".stamp");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(stamp_value.as_str()) {
            std::fs::create_dir_all(&out).unwrap();
            let status = Command::new(common::python())
                .arg(common::repo().join("scripts/reference_probes.py"))
                .arg("--out")
                .arg(&out)
                .status()
                .expect("cannot run Python: run scripts/test.sh, which installs the reference");
            assert!(status.success(), "scripts/reference_probes.py failed");
            std::fs::write(&stamp, stamp_value).unwrap();
        }
        out
    })
}

fn model(name: &str) -> ClipModel {
    load_checkpoint(
        &fixtures().join(format!("{name}.open_clip.safetensors")),
        None,
        Device::Cpu,
    )
    .unwrap()
    .model
}

fn typoclip(args: &[&str]) -> Output {
    common::run_typoclip(args, "typoclip-test-probes-cache")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
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
fn taps_and_pools_equal_the_python_hooks() {
    let _g = tch::no_grad_guard();
    for name in ["tiny-vit", "tiny-rn"] {
        let m = model(name);
        let io = read_tensors(&fixtures().join(format!("{name}.probes.safetensors")));
        let images = &io["images"];
        let sites: Vec<String> = io
            .keys()
            .filter_map(|k| k.strip_prefix("tap/").map(String::from))
            .collect();
        assert_eq!(sites.len(), 3, "{name}");
        let mut probe = Probe::capture(sites.iter().map(String::as_str));
        let feats = m.encode_image_probed(images, &mut probe);
        assert!(
            max_abs_diff(&feats, &io["image_features"]) < 1e-4,
            "{name} features"
        );
        for site in &sites {
            let ours = &probe.taps()[site.as_str()];
            let d = max_abs_diff(ours, &io[&format!("tap/{site}")]);
            assert!(d < 1e-4, "{name} {site}: tap differs by {d}");
            // The same site through the `--layer` names, pooled.
            let layer = site
                .trim_start_matches("visual.")
                .trim_start_matches("transformer.")
                .trim_end_matches(".c_fc");
            let resolved = neurons::resolve_layer(m.config(), layer).unwrap();
            assert_eq!(&resolved.site, site);
            let pooled = neurons::pooled_activations(&m, images, &resolved);
            let want = &io[&format!("pooled/{site}")];
            assert_eq!(pooled.size()[1], resolved.units, "{site}");
            let d = max_abs_diff(&pooled, want);
            assert!(d < 1e-4, "{name} {site}: pooled differs by {d}");
        }
    }
}

#[test]
fn concept_arithmetic_equals_python() {
    let _g = tch::no_grad_guard();
    let m = model("tiny-vit");
    let tok = ClipTokenizer::new();
    let t = read_tensors(&fixtures().join("concepts.safetensors"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("concepts.json")).unwrap()).unwrap();
    let expr: Vec<String> = meta["terms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}*{}", t[0].as_f64().unwrap(), t[1].as_str().unwrap()))
        .collect();
    // `1*finance + 0.5*toys + -1*illness + 2*soft smile` — written with real operators.
    let expression = expr.join(" + ").replace("+ -", "- ");
    let terms = concepts::parse_expression(&expression).unwrap();
    assert_eq!(terms.len(), 4);
    assert_eq!(terms[2].weight, -1.0);
    let names: Vec<String> = terms.iter().map(|t| t.concept.clone()).collect();
    let bare = concepts::template_set("{}").unwrap();
    let emb = concepts::concept_embeddings(&m, &tok, &names, &bare).unwrap();
    assert!(max_abs_diff(&emb, &t["concept_embeddings"]) < 1e-4);
    let v = concepts::combine(&terms, &emb).unwrap();
    assert!(max_abs_diff(&v, &t["vector"]) < 1e-4);
    let labels = LabelSet {
        name: "ref".into(),
        classes: meta["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| ClassLabel {
                name: n.as_str().unwrap().into(),
                wnid: None,
            })
            .collect(),
    };
    let lab = class_embeddings(
        &m,
        &tok,
        &labels,
        &TemplateSet::builtin("single").unwrap(),
        64,
    )
    .unwrap();
    assert!(max_abs_diff(&lab, &t["label_embeddings"]) < 1e-4);
    let ranked = concepts::rank(&v, &lab, 10);
    let want = Vec::<f64>::try_from(&t["label_cosines"]).unwrap();
    assert_eq!(ranked.len(), 10);
    for (i, c) in &ranked {
        assert!(
            (c - want[*i]).abs() < 1e-4,
            "label {i}: {c} vs {}",
            want[*i]
        );
    }
    assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1));
}

#[test]
fn decomposition_equals_scipy_nnls() {
    let t = read_tensors(&fixtures().join("concepts.safetensors"));
    let d = concepts::decompose(&t["nnls_target"], &t["label_embeddings"], 0.0).unwrap();
    let want = Vec::<f64>::try_from(&t["nnls_weights"]).unwrap();
    for (i, (a, b)) in d.weights.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-6, "weight {i}: {a} vs scipy {b}");
    }
    assert!(want.iter().any(|&w| w > 0.0) && want.contains(&0.0));
    // And the image embedding typoclip computes is the one the reference used.
    let _g = tch::no_grad_guard();
    let m = model("tiny-vit");
    let io = read_tensors(&fixtures().join("tiny-vit.probes.safetensors"));
    let x = l2_normalize(&m.encode_image(&io["images"].narrow(0, 0, 1))).squeeze_dim(0);
    assert!(max_abs_diff(&x, &t["image_embedding"].to_kind(Kind::Float)) < 1e-4);
}

#[test]
fn linear_probe_matches_scikit_learn() {
    let t = read_tensors(&fixtures().join("logistic.safetensors"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("logistic.json")).unwrap()).unwrap();
    for name in ["separable", "overlapping"] {
        let x = &t[&format!("{name}/x")];
        let y = Vec::<i64>::try_from(&t[&format!("{name}/y")]).unwrap();
        let c = meta[name]["C"].as_f64().unwrap();
        let classes = meta[name]["classes"].as_u64().unwrap() as usize;
        let settings = linear::FitSettings {
            l2: 1.0 / (c * y.len() as f64),
            max_iter: 5000,
            tol: 1e-10,
            ..linear::FitSettings::default()
        };
        let fit = linear::fit_logistic(x, &y, classes, &settings).unwrap();
        assert!(fit.converged, "{name}: {} iterations", fit.iterations);
        let coef = fit.weight.transpose(0, 1);
        let dc = max_abs_diff(&coef, &t[&format!("{name}/coef")]);
        assert!(dc < 1e-3, "{name}: coef differs by {dc}");
        // The intercepts are defined up to a common shift (softmax); compare them centred.
        let centre = |b: &Tensor| b - b.mean(Kind::Double);
        let di = max_abs_diff(
            &centre(&fit.bias),
            &centre(&t[&format!("{name}/intercept")]),
        );
        assert!(di < 1e-3, "{name}: intercept differs by {di}");
        let probs = fit.probs(x);
        let dp = max_abs_diff(&probs, &t[&format!("{name}/proba")]);
        assert!(dp < 1e-3, "{name}: probabilities differ by {dp}");
        let acc = linear::accuracy(&probs, &y);
        assert!(
            (acc - meta[name]["train_accuracy"].as_f64().unwrap()).abs() < 1e-9,
            "{name}: accuracy {acc}"
        );
        if name == "separable" {
            assert!(acc >= 0.99, "separable set: train accuracy {acc}");
        }
    }
}

/// sRGB → linear light.
fn lin(c: u8) -> f64 {
    let c = c as f64 / 255.0;
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

#[test]
fn stroop_stimuli_are_the_word_in_the_ink() {
    let n = 224;
    let mut masks = std::collections::BTreeMap::new();
    for (word, ink_name) in [
        ("red", "blue"),
        ("red", "green"),
        ("blue", "red"),
        ("yellow", "purple"),
    ] {
        let ink = stroop::ink_of(ink_name).unwrap();
        let r = stroop::stimulus(word, ink, n).unwrap();
        assert_eq!(r.image.dimensions(), (n, n));
        let mut full = 0;
        let (mut x0, mut x1, mut y0, mut y1) = (n, 0, n, 0);
        for (x, y, p) in r.image.enumerate_pixels() {
            let changed = r.mask.get_pixel(x, y).0[0] == 255;
            if !changed {
                assert_eq!(
                    p.0,
                    [255, 255, 255],
                    "{word}/{ink_name}: untouched pixel not white"
                );
                continue;
            }
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            if p.0 == ink {
                full += 1;
            }
            // Anti-aliased edges: in linear light a blend of white and the ink with one
            // coverage for all three channels.
            let alphas: Vec<f64> = (0..3)
                .filter(|&c| ink[c] < 200)
                .map(|c| (1.0 - lin(p.0[c])) / (1.0 - lin(ink[c])))
                .collect();
            for (v, i) in p.0.iter().zip(ink) {
                assert!(
                    (i..=255).contains(v),
                    "{word}/{ink_name}: {p:?} outside white..ink"
                );
            }
            if let (Some(a), Some(b)) = (
                alphas.iter().cloned().reduce(f64::min),
                alphas.iter().cloned().reduce(f64::max),
            ) {
                assert!(
                    b - a < 0.06,
                    "{word}/{ink_name}: {p:?} is not a blend of white and {ink:?}"
                );
            }
        }
        // Solid strokes of exactly the ink, a text-sized block around the centre.
        assert!(
            full > 300,
            "{word}/{ink_name}: only {full} solid ink pixels"
        );
        let (cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2);
        assert!(
            cx.abs_diff(n / 2) <= 10 && cy.abs_diff(n / 2) <= 22,
            "not centred: {cx},{cy}"
        );
        assert!(
            x1 - x0 > n / 5 && y1 - y0 < n / 3,
            "not a line of text: {x0}..{x1} × {y0}..{y1}"
        );
        masks.insert((word, ink_name), r.mask);
    }
    // The shape is the word: the same word in two inks has the same glyphs, another word not.
    assert_eq!(masks[&("red", "blue")], masks[&("red", "green")]);
    assert_ne!(masks[&("red", "blue")], masks[&("blue", "red")]);
}

fn write_image(path: &Path, seed: u32, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 7 + seed * 40) % 256) as u8,
            ((y * 5 + seed * 90) % 256) as u8,
            ((x * y + seed * 13) % 256) as u8,
        ])
    })
    .save(path)
    .unwrap();
}

#[test]
fn neurons_command_tables_sheet_and_attack_change() {
    let dir = tempfile::tempdir().unwrap();
    let imgs: Vec<String> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("img{i}.png"));
            write_image(&p, i, 80, 64);
            p.display().to_string()
        })
        .collect();
    let out = dir.path().join("n");
    let spec = common::repo().join("attacks/ipod-label.toml");
    let mut args = vec![
        "neurons",
        "--model",
        "random:RN50:3",
        "--layer",
        "layer4",
        "--unit",
        "5,700",
        "--attack",
        spec.to_str().unwrap(),
        "--top",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(imgs.iter().map(String::as_str));
    let text = stdout(&typoclip(&args));
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("# random weights"), "{first}");
    assert!(
        text.contains("visual.layer4 (2048 units), 3 images"),
        "{text}"
    );
    assert!(
        text.contains("activation change under attack `ipod`"),
        "{text}"
    );
    // The printed activations equal the library's computation on the same inputs.
    let csv = std::fs::read_to_string(out.join("activations.csv")).unwrap();
    assert!(csv.starts_with("# random weights"));
    let rows: Vec<&str> = csv.lines().skip(2).collect();
    assert_eq!(rows.len(), 3);
    let cfg = typoclip::model::ClipConfig::preset("RN50").unwrap();
    let m = ClipModel::random(&cfg, 3, Device::Cpu).unwrap();
    let _g = tch::no_grad_guard();
    let layer = neurons::resolve_layer(&cfg, "layer4").unwrap();
    let inputs: Vec<Tensor> = imgs
        .iter()
        .map(|p| {
            typoclip::preprocess::preprocess(
                &typoclip::dataset::load_rgb(Path::new(p)).unwrap(),
                224,
            )
        })
        .collect();
    let acts = neurons::pooled_activations(&m, &Tensor::stack(&inputs, 0), &layer);
    for (i, row) in rows.iter().enumerate() {
        let v: Vec<f64> = row.split(',').skip(1).map(|s| s.parse().unwrap()).collect();
        for (j, u) in [5i64, 700].iter().enumerate() {
            let want = f64::try_from(acts.get(i as i64).get(*u)).unwrap();
            assert!(
                (v[j] - want).abs() < 1e-4,
                "image {i} unit {u}: {} vs {want}",
                v[j]
            );
        }
    }
    let html = std::fs::read_to_string(out.join("contact-sheet.html")).unwrap();
    assert!(html.starts_with("<!-- # random weights") || html.starts_with("<!-- random weights"));
    assert_eq!(
        html.matches("<img src=\"data:image/png;base64,").count(),
        2 * 2 * 2
    );
    assert!(!html.contains("src=\"http"));
    let change = std::fs::read_to_string(out.join("attack-change.csv")).unwrap();
    assert!(change.starts_with("# random weights"));
    assert_eq!(change.lines().count(), 2 + 2048);
    // Bad layer / unit: one line naming the flag.
    let o = typoclip(&[
        "neurons",
        "--model",
        "random:RN50",
        "--layer",
        "layer9",
        &imgs[0],
    ]);
    assert_one_line_error(&o, &["--layer layer9"]);
    let o = typoclip(&[
        "neurons",
        "--model",
        "random:RN50",
        "--layer",
        "layer1",
        "--unit",
        "256",
        &imgs[0],
    ]);
    assert_one_line_error(&o, &["--unit 256", "0..255"]);
}

#[test]
fn concepts_command_ranks_and_decomposes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    write_image(&img, 4, 64, 64);
    let o = typoclip(&[
        "concepts",
        "--model",
        "random:ViT-B-32",
        "finance + toys",
        "--labels",
        "piggy bank,dog,iPod",
        "--top",
        "3",
        "--json",
        "--image",
        img.to_str().unwrap(),
        "--concepts",
        "finance,toys,dog,smile",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["warning"].as_str().unwrap().starts_with("random weights"));
    let labels = v["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 3);
    let cos: Vec<f64> = labels
        .iter()
        .map(|l| l["cosine"].as_f64().unwrap())
        .collect();
    assert!(cos[0] >= cos[1] && cos[1] >= cos[2]);
    let d = &v["decomposition"];
    assert!(d["nonzero"].as_u64().unwrap() >= 1);
    assert!(d["concepts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["weight"].as_f64().unwrap() > 0.0));
    let text = stdout(&typoclip(&[
        "concepts",
        "--model",
        "random:ViT-B-32",
        "soft smile + heart - illness",
        "--labels",
        "a,b",
    ]));
    assert!(text.starts_with("# random weights"));
    assert!(text.contains("+1·soft smile +1·heart -1·illness"), "{text}");
    let o = typoclip(&["concepts", "--model", "random:ViT-B-32", "finance +"]);
    assert_one_line_error(
        &o,
        &["concept expression `finance +`", "ends with an operator"],
    );
}

#[test]
fn stroop_command_writes_stimuli_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let published = dir.path().join("pub.json");
    std::fs::write(
        &published,
        r#"{"output": {"blue": {"red": {"results": [[0.25, "blue"], [0.75, "red"]]}}}}"#,
    )
    .unwrap();
    let o = typoclip(&[
        "stroop",
        "--model",
        "random:ViT-B-32",
        "--colours",
        "red,blue,green",
        "--out",
        out.to_str().unwrap(),
        "--published",
        published.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["warning"].as_str().unwrap().starts_with("random weights"));
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 9);
    assert_eq!(v["incongruent_pairs"], 6);
    for r in rows {
        let (pi, pw) = (r["p_ink"].as_f64().unwrap(), r["p_word"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&pi) && (0.0..=1.0).contains(&pw));
        if r["word"] == r["ink"] {
            assert_eq!(pi, pw);
        } else {
            assert!(pi + pw <= 1.0 + 1e-6);
        }
    }
    let rb = rows
        .iter()
        .find(|r| r["word"] == "red" && r["ink"] == "blue")
        .unwrap();
    assert_eq!(rb["published_p_word"], 0.75);
    let csv = std::fs::read_to_string(out.join("stroop.csv")).unwrap();
    assert!(csv.starts_with("# random weights"));
    assert_eq!(csv.lines().count(), 2 + 9);
    let img = image::open(out.join("red-blue.png")).unwrap().to_rgb8();
    let blue = stroop::ink_of("blue").unwrap();
    assert!(img.pixels().filter(|p| p.0 == blue).count() > 300);
    assert!(!img.pixels().any(|p| p.0 == stroop::ink_of("red").unwrap()));
    let o = typoclip(&[
        "stroop",
        "--model",
        "random:ViT-B-32",
        "--colours",
        "red,teal",
    ]);
    assert_one_line_error(&o, &["--colours", "teal"]);
}

/// An image folder with three classes of distinct flat-ish colours.
fn class_folder(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    for (c, class) in ["apple", "pizza", "radio"].iter().enumerate() {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..6u32 {
            let img = image::RgbImage::from_fn(48, 40, |x, y| {
                let base = [[200u8, 30, 30], [30, 200, 30], [30, 30, 200]][c];
                let j = ((x + y + i * 3) % 9) as u8;
                image::Rgb([base[0] + j, base[1] + j, base[2] + j])
            });
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let desc = dir.join("ds.toml");
    std::fs::write(
        &desc,
        format!(
            "name = \"colours\"\nkind = \"image_folder\"\npath = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    desc
}

#[test]
fn probe_fit_then_sweep_reports_probe_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let desc = class_folder(dir.path());
    let model = fixtures().join("tiny-vit.open_clip.safetensors");
    let model = model.to_str().unwrap();
    let probe = dir.path().join("probe.json");
    let text = stdout(&typoclip(&[
        "probe",
        "fit",
        "--model",
        model,
        "--dataset",
        desc.to_str().unwrap(),
        "--eval-fraction",
        "0.34",
        "--seed",
        "5",
        "--l2",
        "1e-5",
        "--out",
        probe.to_str().unwrap(),
    ]));
    assert!(text.starts_with("# model "), "{text}");
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&probe).unwrap()).unwrap();
    assert_eq!(p["format"], "typoclip-linear-probe-v1");
    assert_eq!(p["classes"].as_array().unwrap().len(), 3);
    let (train, eval) = (
        p["split"]["train"].as_array().unwrap(),
        p["split"]["eval"].as_array().unwrap(),
    );
    assert_eq!((train.len(), eval.len()), (12, 6));
    assert!(train.iter().all(|t| !eval.contains(t)));
    assert_eq!(p["split"]["seed"], 5);
    assert!(
        p["train_accuracy"].as_f64().unwrap() >= 0.99,
        "{}",
        p["train_accuracy"]
    );
    // The same seed gives the same split and weights.
    let again = dir.path().join("again.json");
    stdout(&typoclip(&[
        "probe",
        "fit",
        "--model",
        model,
        "--dataset",
        desc.to_str().unwrap(),
        "--eval-fraction",
        "0.34",
        "--seed",
        "5",
        "--l2",
        "1e-5",
        "--out",
        again.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(&probe).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let run = dir.path().join("run");
    let spec = common::repo().join("attacks/ipod-label.toml");
    let text = stdout(&typoclip(&[
        "sweep",
        "--model",
        model,
        "--dataset",
        desc.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--probe",
        probe.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(text.contains("  linear probe: ipod"), "{text}");
    let records = std::fs::read_to_string(run.join("records.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 18);
    let loaded = typoclip::probe::linear::LinearProbe::load(&probe).unwrap();
    for line in records.lines() {
        let r: typoclip::records::Record = serde_json::from_str(line).unwrap();
        assert_eq!(r.probe_clean_top5.len(), 3);
        assert_eq!(r.probe_attacked_top5.len(), 3);
        let probs: f32 = r.probe_clean_top5.iter().map(|s| s.prob).sum();
        assert!((probs - 1.0).abs() < 1e-4);
        assert!(loaded
            .classes
            .iter()
            .any(|c| c.name == r.probe_clean_top5[0].label));
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary_probe.json")).unwrap()).unwrap();
    assert_eq!(summary["records"], 18);
    let v = &summary["variants"][0];
    // The probe's clean accuracy counts the records whose probe top-1 is the true class.
    let correct = records
        .lines()
        .map(|l| serde_json::from_str::<typoclip::records::Record>(l).unwrap())
        .filter(|r| Some(r.probe_clean_top5[0].label.as_str()) == r.true_label.as_deref())
        .count();
    assert_eq!(v["clean_accuracy"]["k"], correct as u64);
    assert!(run.join("summary_probe.csv").exists());
    let zs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(zs["linear_probe"][0], *v);
    let prov = std::fs::read_to_string(run.join("provenance.json")).unwrap();
    assert!(prov.contains("\"linear_probe\""));
    // A probe fitted on another model is refused before any work.
    let o = typoclip(&[
        "sweep",
        "--model",
        "random:ViT-B-32",
        "--dataset",
        desc.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--out",
        dir.path().join("run2").to_str().unwrap(),
        "--probe",
        probe.to_str().unwrap(),
        "--quiet",
    ]);
    assert_one_line_error(&o, &["probe.json", "model_id"]);
    // A broken probe file names the file and the field.
    let bad = dir.path().join("bad.json");
    let mut doc = p.clone();
    doc["bias"] = serde_json::json!([0.0]);
    std::fs::write(&bad, serde_json::to_vec(&doc).unwrap()).unwrap();
    let o = typoclip(&[
        "sweep",
        "--model",
        model,
        "--dataset",
        desc.to_str().unwrap(),
        "--attacks",
        spec.to_str().unwrap(),
        "--out",
        dir.path().join("run3").to_str().unwrap(),
        "--probe",
        bad.to_str().unwrap(),
        "--quiet",
    ]);
    assert_one_line_error(&o, &["bad.json", "bias"]);
}
