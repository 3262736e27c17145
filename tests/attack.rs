//! The attack stage end to end: every shipped spec in `attacks/` validates and renders, golden
//! pixel hashes per family, spec errors as `file:line:col: field: message` (library and CLI),
//! and `typoclip render`.
//!
//! Golden hashes live in `tests/golden/attack_hashes.json` (sha256 of the raw RGB bytes of each
//! render, then of its mask). After an intended change to rendering, regenerate them with
//!
//! ```sh
//! TYPOCLIP_UPDATE_GOLDEN=1 cargo test --test attack
//! ```
//!
//! and look at the renders (`typoclip render attacks/<spec>.toml IMAGE --out DIR`) before
//! committing the new file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use image::{Rgb, RgbImage};
use sha2::{Digest, Sha256};
use typoclip::attack::{render, render_for_model, spec_files, AttackSpec, Stage};
use typoclip::preprocess::PreprocessCfg;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A deterministic test picture: smooth gradients plus a few hard edges.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let edge = if (x / 16 + y / 16) % 2 == 0 { 30 } else { 0 };
        Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            (((x + y) * 2) % 200) as u8 + edge,
        ])
    })
}

fn shipped() -> Vec<(PathBuf, AttackSpec)> {
    spec_files(&root().join("attacks"))
        .unwrap()
        .into_iter()
        .map(|p| {
            let s = AttackSpec::load(&p).unwrap_or_else(|e| panic!("{e}"));
            (p, s)
        })
        .collect()
}

#[test]
fn shipped_specs_validate_with_the_expected_variant_counts() {
    let specs = shipped();
    let count = |stem: &str| {
        specs
            .iter()
            .find(|(p, _)| p.file_stem().unwrap() == stem)
            .unwrap_or_else(|| panic!("attacks/{stem}.toml is shipped"))
            .1
            .variants
            .len()
    };
    assert_eq!(count("distill-suite"), 9 * 8);
    assert_eq!(count("ipod-label"), 1);
    assert_eq!(count("dollar-marks"), 1);
    assert_eq!(count("scam-postit"), 5);
    assert_eq!(count("sweep-size"), 9);
    assert_eq!(count("sweep-opacity"), 7);
    assert_eq!(count("sweep-position"), 5 + 8);
    assert_eq!(count("sweep-font"), 6);
    assert_eq!(count("sweep-color"), 15);
    assert_eq!(count("sweep-rotation"), 8);
    for (_, s) in &specs {
        assert!(!s.description.is_empty());
        for v in &s.variants {
            assert!(!v.target.is_empty(), "{}", v.name);
        }
    }
}

#[test]
fn distill_suite_has_the_nine_words_and_their_targets() {
    let s = AttackSpec::load(&root().join("attacks/distill-suite.toml")).unwrap();
    let mut pairs: Vec<(String, String)> = s
        .variants
        .iter()
        .filter(|v| v.name.ends_with("/pos=0"))
        .map(|v| {
            let typoclip::attack::Layer::Label { style, .. } = &v.layers[0] else {
                panic!("label layer")
            };
            (style.text.clone(), v.target.clone())
        })
        .collect();
    pairs.sort();
    let want = [
        ("$$$", "piggy bank"),
        ("iPod", "iPod"),
        ("library", "library"),
        ("meow", "Siamese cat"),
        ("pizza", "pizza"),
        ("radio", "radio"),
        ("rifle", "rifle"),
        ("shark", "great white shark"),
        ("trash", "waste container"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(pairs, want);
    assert!(s.variants.iter().all(|v| v.stage == Stage::ModelInput));
}

#[test]
fn every_shipped_variant_renders_and_changes_pixels() {
    let img = picture(160, 120);
    for (p, s) in shipped() {
        for v in &s.variants {
            let m = render_for_model(&img, v, &PreprocessCfg::square(224), 7, None);
            let r = &m.rendered;
            assert!((0.0..=1.0).contains(&r.l0_fraction));
            assert_eq!(m.attacked_input.dimensions(), (224, 224));
            let opacity_zero = v.params.iter().any(|(k, val)| k == "opacity" && val == "0");
            if opacity_zero {
                assert_eq!(r.changed, 0, "{}: {}", p.display(), v.name);
            } else {
                assert!(
                    r.changed > 20,
                    "{}: {} changed {}",
                    p.display(),
                    v.name,
                    r.changed
                );
            }
        }
    }
}

#[test]
fn distill_label_size_matches_the_published_l0_of_ipod() {
    // The spec's size is calibrated on "iPod": ≈ 6.8 % of a 224 px input (published
    // avg_img_l0_norm_diff 0.068); every word stays within a factor of 1.6 of its published L0.
    let published = [
        ("trash", 0.0759),
        ("iPod", 0.0680),
        ("pizza", 0.0811),
        ("rifle", 0.0641),
        ("radio", 0.0773),
        ("library", 0.0995),
        ("shark", 0.0833),
        ("meow", 0.0844),
        ("dollars", 0.0699),
    ];
    let s = AttackSpec::load(&root().join("attacks/distill-suite.toml")).unwrap();
    let img = picture(300, 300);
    for (case, want) in published {
        let vs: Vec<_> = s
            .variants
            .iter()
            .filter(|v| v.case.as_deref() == Some(case))
            .collect();
        assert_eq!(vs.len(), 8);
        let mean = vs
            .iter()
            .map(|v| {
                render_for_model(&img, v, &PreprocessCfg::square(224), 0, None)
                    .rendered
                    .l0_fraction
            })
            .sum::<f64>()
            / 8.0;
        if case == "iPod" {
            assert!((mean - want).abs() < 0.006, "iPod: {mean}");
        }
        assert!(
            mean / want < 1.6 && want / mean < 1.6,
            "{case}: {mean} vs published {want}"
        );
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn golden_hashes() {
    let path = root().join("tests/golden/attack_hashes.json");
    let img = picture(96, 72);
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for (p, s) in shipped() {
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        let n = s.variants.len();
        for v in [&s.variants[0], &s.variants[n - 1]] {
            let m = render_for_model(&img, v, &PreprocessCfg::square(64), 1, None);
            let key = format!("{stem}::{}", v.name);
            got.insert(
                key,
                format!(
                    "{} {}",
                    sha(m.attacked_input.as_raw()),
                    sha(m.rendered.mask.as_raw())
                ),
            );
        }
    }
    if std::env::var_os("TYPOCLIP_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let want: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} missing: run TYPOCLIP_UPDATE_GOLDEN=1 cargo test --test attack",
                path.display()
            )
        }))
        .unwrap();
    let mut diffs = Vec::new();
    for (k, v) in &got {
        match want.get(k) {
            Some(w) if w == v => {}
            Some(_) => diffs.push(format!("{k}: pixels changed")),
            None => diffs.push(format!("{k}: not in the golden file")),
        }
    }
    for k in want.keys().filter(|k| !got.contains_key(*k)) {
        diffs.push(format!("{k}: no longer rendered"));
    }
    assert!(
        diffs.is_empty(),
        "golden renders differ (if intended: TYPOCLIP_UPDATE_GOLDEN=1 cargo test --test attack):\n{}",
        diffs.join("\n")
    );
}

#[test]
fn rendering_is_deterministic_across_calls_and_threads() {
    let s = AttackSpec::load(&root().join("attacks/dollar-marks.toml")).unwrap();
    let img = picture(200, 150);
    let a = render(&img, &s.variants[0], 11, None);
    let v = s.variants[0].clone();
    let img2 = img.clone();
    let b = std::thread::spawn(move || render(&img2, &v, 11, None))
        .join()
        .unwrap();
    assert_eq!(a.image, b.image);
    assert_eq!(a.mask, b.mask);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const BAD: &[(&str, &str)] = &[
    // (spec, expected "line:col: field: message" prefix)
    (
        "description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\nopacity = 1.5\n",
        "6:11: layers.0.opacity: 1.5 is out of range [0, 1]",
    ),
    (
        "description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\nfontsize = 3\n",
        "6:1: layers.0.fontsize: unknown field `fontsize`",
    ),
    (
        "description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"label\"\ntext = \"a\"\nrotation = \"left\"\n",
        "6:12: layers.0.rotation: invalid type: string \"left\"",
    ),
    (
        "description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"label\"\ntext = \"a\"\nfont = \"fonts/missing.ttf\"\n",
        "6:8: layers.0.font: cannot read font",
    ),
    (
        "description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"label\"\ntext = \"a\"\n[sweep]\nsize_px = [10, -3]\n",
        "7:16: layers.0.size_px: -3 is out of range",
    ),
];

#[test]
fn bad_specs_report_file_line_col_field() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, want)) in BAD.iter().enumerate() {
        let p = write(dir.path(), &format!("bad{i}.toml"), text);
        let e = AttackSpec::load(&p).unwrap_err().to_string();
        let want = format!("{}:{want}", p.display());
        assert!(e.starts_with(&want), "got  {e}\nwant {want}…");
    }
}

fn typoclip(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn cli_check_rejects_a_bad_spec_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "bad.toml", BAD[0].0);
    let out = typoclip(&["attacks", "check", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {}:6:11: layers.0.opacity: 1.5 is out of range [0, 1]",
            p.display()
        )
    );
    // Same for render, before anything is written.
    let outdir = dir.path().join("out");
    let img = dir.path().join("x.png");
    picture(32, 32).save(&img).unwrap();
    let out = typoclip(&[
        "render",
        p.to_str().unwrap(),
        img.to_str().unwrap(),
        "--out",
        outdir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!outdir.exists());
}

#[test]
fn cli_list_check_and_render() {
    let out = typoclip(&["attacks", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("distill-suite") && stdout.contains("72 variants"),
        "{stdout}"
    );

    let out = typoclip(&["attacks", "check", "attacks/sweep-opacity.toml"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "attacks/sweep-opacity.toml: ok, 7 variants"
    );

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("cat.png");
    picture(120, 90).save(&img).unwrap();
    let outdir = dir.path().join("r");
    let out = typoclip(&[
        "render",
        "attacks/sweep-opacity.toml",
        img.to_str().unwrap(),
        "--out",
        outdir.to_str().unwrap(),
        "--variant",
        "opacity/opacity=0.5",
        "--masks",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = image::open(outdir.join("cat/opacity__opacity=0.5.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(png.dimensions(), (120, 90));
    assert_ne!(png, picture(120, 90));
    assert!(outdir.join("cat/opacity__opacity=0.5.mask.png").exists());
    assert!(outdir.join("contact-sheet.png").exists());

    let out = typoclip(&[
        "render",
        "attacks/sweep-opacity.toml",
        img.to_str().unwrap(),
        "--out",
        outdir.to_str().unwrap(),
        "--variant",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--variant: no variant"));
}

/// A variant drawn the same on every image is rasterised once ([`typoclip::attack::Flat`]) and
/// composited as tensor operations (`sweep --composite device`): on the model input, the
/// overlay draws exactly what the renderer draws for a shape on its own, and within one level
/// where shapes overlap; the tensor composite (run here on the CPU device) equals it byte for
/// byte, and its normalisation equals the workers'. Variants that depend on the image (random
/// places, scatter, the object box) get no overlay.
#[test]
fn overlays_composite_what_the_renderer_draws() {
    use typoclip::attack::composite::{image_independent, image_tensor, DeviceOverlays, Overlays};
    let cfg = PreprocessCfg::square(224);
    let photos = [picture(224, 224), {
        let mut p = picture(224, 224);
        image::imageops::flip_horizontal_in_place(&mut p);
        p
    }];
    let (mut checked, mut exact_variants, mut refused) = (0, 0, Vec::new());
    for (path, spec) in shipped() {
        for v in &spec.variants {
            let mut v = v.clone();
            v.stage = Stage::ModelInput;
            let Some(flat) = image_independent(&v, 224, 224) else {
                refused.push(format!(
                    "{}:{}",
                    path.file_stem().unwrap().to_string_lossy(),
                    v.name
                ));
                continue;
            };
            checked += 1;
            let mut exact = true;
            for (i, photo) in photos.iter().enumerate() {
                let want = render(photo, &v, i as u64, None);
                let got = flat.apply(photo);
                let worst = want
                    .image
                    .as_raw()
                    .iter()
                    .zip(got.image.as_raw())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(
                    worst <= 1,
                    "{}: overlay differs from the render by {worst} levels",
                    v.name
                );
                exact &= want.image == got.image && want.changed == got.changed;
            }
            exact_variants += usize::from(exact);
        }
    }
    eprintln!(
        "{checked} variants with an overlay ({exact_variants} drawn exactly), {} refused",
        refused.len()
    );
    assert!(
        checked >= 72 && exact_variants * 10 >= checked * 9,
        "{exact_variants} of {checked}"
    );
    for needle in ["dollar-marks:", "scam-postit:"] {
        assert!(
            refused.iter().any(|r| r.starts_with(needle)),
            "{needle} variants depend on the image: {refused:?}"
        );
    }
    // The Distill suite's labels, on the tensor path.
    let suite = AttackSpec::load(&root().join("attacks/distill-suite.toml")).unwrap();
    let variants: Vec<_> = suite
        .variants
        .iter()
        .cloned()
        .map(std::sync::Arc::new)
        .collect();
    let overlays = Overlays::for_variants(variants.iter(), &cfg);
    assert_eq!(
        overlays.len(),
        variants.len(),
        "every Distill label is image-independent"
    );
    let device = DeviceOverlays::new(&overlays, &cfg, tch::Device::Cpu);
    let ids: Vec<i64> = (0..variants.len() as i64).step_by(7).collect();
    let clean = tch::Tensor::stack(
        &ids.iter()
            .map(|&i| image_tensor(&photos[i as usize % 2]))
            .collect::<Vec<_>>(),
        0,
    );
    let (x, changed) = device.composite(&clean, &ids);
    for (k, &i) in ids.iter().enumerate() {
        let r = typoclip::attack::render(&photos[i as usize % 2], &variants[i as usize], 0, None);
        assert_eq!(
            changed[k] as u64, r.changed,
            "{}: changed pixels",
            variants[i as usize].name
        );
        let want = typoclip::preprocess::to_normalized_tensor_with(&r.image, &cfg);
        let d = (x.get(k as i64) - want).abs().max().double_value(&[]);
        assert!(
            d == 0.0,
            "{}: normalised input differs by {d}",
            variants[i as usize].name
        );
    }
}
