//! The shipped dataset descriptors read the real data in `../shared/data` (skipped when absent),
//! and images decode to the RGB bytes Pillow gives (`Image.open(p).convert("RGB")`, open_clip's
//! first step), from the `decode` fixture of `scripts/reference.py`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use typoclip::dataset::descriptor::{file_list_hash, DatasetDescriptor};

fn load(name: &str) -> Option<Vec<typoclip::dataset::descriptor::Sample>> {
    if common::shared_data().is_none() {
        eprintln!("SKIP: ../shared/data is absent");
        return None;
    }
    let (d, root) = DatasetDescriptor::load(&common::repo().join("datasets").join(name)).unwrap();
    Some(d.samples(&root).unwrap())
}

#[test]
fn imagenet_sample_lists_1000_labelled_photos() {
    let Some(s) = load("imagenet-sample.toml") else {
        return;
    };
    assert_eq!(s.len(), 1000);
    assert!(s.iter().all(|x| x.wnid.is_some() && x.label.is_some()));
    assert_eq!(
        file_list_hash(&s),
        file_list_hash(&load("imagenet-sample.toml").unwrap())
    );
}

#[test]
fn distill_in_the_wild_pairs_blank_controls() {
    let Some(s) = load("distill-in-the-wild.toml") else {
        return;
    };
    assert_eq!(s.len(), 171 + 56);
    let blanks = s.iter().filter(|x| x.attack_text.is_none()).count();
    assert!(blanks >= 9, "{blanks} blank controls");
    let apple_ipod = s
        .iter()
        .find(|x| x.id.ends_with("apple-ipod.jpg"))
        .expect("apple-ipod.jpg");
    assert_eq!(apple_ipod.label.as_deref(), Some("apple"));
}

#[test]
fn scam_has_three_conditions_per_image() {
    let Some(s) = load("scam.toml") else { return };
    assert_eq!(s.len(), 3 * 1162);
    for cond in ["NoSCAM", "SCAM", "SynthSCAM"] {
        assert_eq!(
            s.iter()
                .filter(|x| x.condition.as_deref() == Some(cond))
                .count(),
            1162
        );
    }
    assert!(s
        .iter()
        .filter(|x| x.condition.as_deref() == Some("NoSCAM"))
        .all(|x| x.attack_text.is_none()));
}

#[test]
fn missing_root_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.toml");
    std::fs::write(
        &p,
        "name = \"gone\"\nkind = \"image_folder\"\npath = \"nowhere\"\n",
    )
    .unwrap();
    let (d, root) = DatasetDescriptor::load(&p).unwrap();
    let e = d.samples(&root).unwrap_err().to_string();
    assert!(e.contains("nowhere") && e.contains("gone"), "{e}");
}

/// One image of the `decode` fixture, as `decode.json` lists it.
#[derive(serde::Deserialize)]
struct Decoded {
    name: String,
    file: String,
    sha256: String,
    width: u32,
    height: u32,
    pillow_mode: String,
    adobe_transform: Option<u8>,
}

impl Decoded {
    /// Pillow's RGB bytes for this image.
    fn pillow_rgb(&self, dir: &Path) -> Vec<u8> {
        let rgb = std::fs::read(dir.join(format!("{}.rgb", self.name))).unwrap();
        assert_eq!(
            rgb.len(),
            (self.width * self.height * 3) as usize,
            "{}",
            self.name
        );
        rgb
    }
}

/// A CMYK image written by libjpeg (the `mozjpeg` crate) with `jpeg_space` as the JPEG's colour
/// space (JCS_CMYK or JCS_YCCK; libjpeg writes an Adobe marker with transform 0 or 2).
fn mozjpeg_cmyk(jpeg_space: mozjpeg::ColorSpace, w: usize, h: usize) -> Vec<u8> {
    let mut px = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            let noise = ((x * 7919 + y * 104_729) ^ (x * y * 31)) % 61;
            px.extend_from_slice(&[
                (x * 255 / (w - 1)) as u8,
                (y * 255 / (h - 1)) as u8,
                ((x * 3 + y * 5) % 256) as u8 ^ noise as u8,
                if (x / 6 + y / 6) % 2 == 0 { 30 } else { 190 } + (noise as u8 / 2),
            ]);
        }
    }
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
    c.set_size(w, h);
    c.set_color_space(jpeg_space);
    c.set_quality(88.0);
    let mut started = c.start_compress(Vec::new()).unwrap();
    started.write_scanlines(&px).unwrap();
    started.finish().unwrap()
}

/// The JPEGs this test makes (not Pillow) for the script to decode: CMYK and YCCK from libjpeg,
/// and the YCCK one with its Adobe transform set to 1 (libjpeg then assumes YCCK).
fn rust_made_jpegs() -> Vec<(&'static str, Vec<u8>)> {
    let cmyk = mozjpeg_cmyk(mozjpeg::ColorSpace::JCS_CMYK, 77, 53);
    let ycck = mozjpeg_cmyk(mozjpeg::ColorSpace::JCS_YCCK, 93, 61);
    let mut transform1 = ycck.clone();
    let app14 = transform1
        .windows(9)
        .position(|w| w[..2] == [0xFF, 0xEE] && &w[4..] == b"Adobe")
        .expect("libjpeg writes an Adobe marker for YCCK");
    assert_eq!(transform1[app14 + 15], 2, "YCCK's Adobe transform");
    transform1[app14 + 15] = 1;
    vec![
        ("mozjpeg-cmyk", cmyk),
        ("mozjpeg-ycck", ycck),
        ("mozjpeg-ycck-transform1", transform1),
    ]
}

/// The `decode` fixture (made once per test binary): the folder and its listing. The JPEGs of
/// [`rust_made_jpegs`] are written into its `inputs/` first; when one differs from what the
/// script decoded (its sha256), the script runs again.
fn decode_fixture() -> &'static (PathBuf, Vec<Decoded>) {
    static FIXTURE: OnceLock<(PathBuf, Vec<Decoded>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = common::repo().join("tests/fixtures/generated/decode");
        std::fs::create_dir_all(dir.join("inputs")).unwrap();
        let made = rust_made_jpegs();
        for (name, bytes) in &made {
            std::fs::write(dir.join(format!("inputs/{name}.jpg")), bytes).unwrap();
        }
        let read = |dir: &Path| -> Vec<Decoded> {
            std::fs::read_to_string(dir.join("decode.json"))
                .map(|s| serde_json::from_str(&s).unwrap())
                .unwrap_or_default()
        };
        let current = |entries: &[Decoded]| {
            made.iter().all(|(name, bytes)| {
                let sha = hex::encode(Sha256::digest(bytes));
                entries
                    .iter()
                    .any(|e| e.name == format!("inputs/{name}") && e.sha256 == sha)
            })
        };
        let mut dir = common::generate("decode", "decode");
        let mut entries = read(&dir);
        if !current(&entries) {
            let _ = std::fs::remove_file(dir.join(".stamp"));
            dir = common::generate("decode", "decode");
            entries = read(&dir);
            assert!(current(&entries), "decode.json misses this test's inputs");
        }
        (dir, entries)
    })
}

#[test]
fn cmyk_jpegs_decode_to_pillows_rgb_bytes() {
    let (dir, entries) = decode_fixture();
    let jpegs: Vec<&Decoded> = entries
        .iter()
        .filter(|e| e.file.ends_with(".jpg"))
        .collect();
    let transform = |name: &str| {
        jpegs
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} missing from decode.json"))
            .adobe_transform
    };
    // Pillow's own files carry an Adobe marker with transform 0; one has it removed; libjpeg
    // wrote YCCK with transform 2.
    for name in ["pillow-q90", "pillow-q75-420", "pillow-progressive"] {
        assert_eq!(transform(name), Some(0), "{name}");
    }
    assert_eq!(transform("no-adobe"), None);
    assert_eq!(transform("inputs/mozjpeg-cmyk"), Some(0));
    assert_eq!(transform("inputs/mozjpeg-ycck"), Some(2));
    assert_eq!(transform("inputs/mozjpeg-ycck-transform1"), Some(1));
    if common::shared_data().is_some() {
        transform("photo");
    }
    for e in &jpegs {
        assert_eq!(e.pillow_mode, "CMYK", "{}", e.name);
        let ours = typoclip::dataset::load_rgb(&dir.join(&e.file)).unwrap();
        assert_eq!(ours.dimensions(), (e.width, e.height), "{}", e.name);
        let theirs = e.pillow_rgb(dir);
        let ours = ours.into_raw();
        let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap_or(0);
        assert!(
            differing == 0,
            "{}: {differing} of {} samples differ from Pillow's (max {worst})",
            e.name,
            ours.len()
        );
    }
    eprintln!(
        "{} CMYK JPEGs decode to Pillow's bytes exactly",
        jpegs.len()
    );
}

#[test]
fn cmyk_to_rgb_is_pillows_over_every_c_and_k() {
    let (dir, entries) = decode_fixture();
    let e = entries.iter().find(|e| e.name == "cmyk-table").unwrap();
    // The table holds Pillow's CMYK values; libjpeg's samples for them are the inverse.
    let stored: Vec<u8> = std::fs::read(dir.join(&e.file))
        .unwrap()
        .iter()
        .map(|v| 255 - v)
        .collect();
    assert_eq!(stored.len(), 256 * 256 * 4);
    assert_eq!(
        typoclip::dataset::pillow_cmyk_to_rgb(&stored),
        e.pillow_rgb(dir)
    );
}

/// A known, deliberate difference: typoclip scales 16-bit samples to 8 bits
/// (`round(v * 255 / 65535)`), where Pillow's `convert("RGB")` clips them to 255.
#[test]
fn sixteen_bit_png_is_scaled_where_pillow_clips() {
    let (dir, entries) = decode_fixture();
    let e = entries.iter().find(|e| e.name == "gray16").unwrap();
    assert_eq!(e.pillow_mode, "I;16");
    let path = dir.join(&e.file);
    let raw = image::open(&path).unwrap().into_luma16().into_raw();
    let ours = typoclip::dataset::load_rgb(&path).unwrap().into_raw();
    let theirs = e.pillow_rgb(dir);
    assert!(raw.iter().any(|&v| v > 255) && raw.iter().any(|&v| v < 255));
    for (i, &v) in raw.iter().enumerate() {
        let scaled = ((v as u32 + 128) / 257) as u8;
        assert_eq!(&ours[3 * i..3 * i + 3], &[scaled; 3], "typoclip, value {v}");
        assert_eq!(
            &theirs[3 * i..3 * i + 3],
            &[v.min(255) as u8; 3],
            "Pillow, value {v}"
        );
    }
    assert_ne!(ours, theirs);
}
