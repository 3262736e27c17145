//! `typoclip detect`: where the trained text detector ([`crate::ocr`]) sees text.
//!
//! - Images alone: each image's boxes (corners in image pixels, score) and text area as JSON,
//!   and with `--out` an overlay PNG per image (the probability map above `thresh` tinted, the
//!   boxes outlined).
//! - `--attacks SPEC…` (on the images or a `--dataset`): detectability of rendered attacks
//!   against the renderer's oracle mask, per variant ([`crate::ocr::measure::rendered`]).
//! - `--dataset` of photographed attacks: which photos have text boxes, per condition
//!   ([`crate::ocr::measure::physical`]).
//!
//! The measurements write `detectability.json`, `detectability.csv` and the report
//! (`report.html`, self-contained with its example images, and `report.md`; the project's
//! [`crate::report::document`]) into `--out`. Unreadable images are reported and skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::ocr::{DetectorSettings, TextBox, TextDetector};
use crate::report::document::{Block, Cell, Document, Figure, Section, Table};

/// `typoclip detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Images to look at (or `--dataset`).
    pub images: Vec<PathBuf>,
    /// Folder for `detections.json` and one `<name>.overlay.png` per image (default: JSON on
    /// standard output, no overlays).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Probability above which a pixel is text.
    #[arg(long, default_value_t = 0.3)]
    pub thresh: f32,
    /// Mean probability a box needs.
    #[arg(long, default_value_t = 0.6)]
    pub box_thresh: f32,
    /// DB unclip ratio (how far boxes grow).
    #[arg(long, default_value_t = 1.5)]
    pub unclip: f32,
    /// The longer side is scaled down to at most this many pixels.
    #[arg(long, default_value_t = 960)]
    pub limit_side_len: u32,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Attack specs to measure detectability of (repeatable; needs `--out`).
    #[arg(long)]
    pub attacks: Vec<PathBuf>,
    /// A dataset descriptor (or folder) to take the images from.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// At most this many images (the first in the dataset's order; 0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Measurements look at the model input: resize and centre crop to this many pixels
    /// (CLIP's 224).
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
    /// Seed of the attack rendering (mixed with each image's id, as sweeps do).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What `detect` does.
#[derive(Debug, Clone)]
pub enum DetectMode {
    /// Boxes per image.
    Boxes,
    /// Detectability of rendered attacks.
    Rendered(Vec<crate::attack::Variant>),
    /// Detection on photographed attacks.
    Physical,
}

/// Resolved settings of one `detect` run.
#[derive(Debug, Clone)]
pub struct DetectSettings {
    /// What to do.
    pub mode: DetectMode,
    /// Images: (id, path, the sample when from a dataset).
    pub images: Vec<crate::dataset::descriptor::Sample>,
    /// SCAM's post-it areas by pair id (empty for other data).
    pub postits: std::collections::BTreeMap<String, f64>,
    /// The transform measurements see images through.
    pub transform: crate::preprocess::PreprocessCfg,
    /// Rendering seed.
    pub seed: u64,
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Detector settings.
    pub detector: DetectorSettings,
    /// Device.
    pub device: tch::Device,
}

impl DetectArgs {
    /// Checks the arguments and resolves them.
    pub fn resolve(self) -> Result<DetectSettings> {
        for (name, v) in [("--thresh", self.thresh), ("--box-thresh", self.box_thresh)] {
            if !(0.0..1.0).contains(&v) {
                anyhow::bail!("{name}: {v} is not in [0, 1)");
            }
        }
        if !(0.0..=4.0).contains(&self.unclip) {
            anyhow::bail!("--unclip: {} is not in [0, 4]", self.unclip);
        }
        if self.limit_side_len < 32 {
            anyhow::bail!("--limit-side-len: {} is under 32", self.limit_side_len);
        }
        let mut detector = DetectorSettings {
            limit_side_len: self.limit_side_len,
            ..DetectorSettings::default()
        };
        detector.db.thresh = self.thresh;
        detector.db.box_thresh = self.box_thresh;
        detector.db.unclip_ratio = self.unclip;
        if !self.images.is_empty() && self.dataset.is_some() {
            anyhow::bail!("give image files or --dataset, not both");
        }
        let mut postits = std::collections::BTreeMap::new();
        let mut images: Vec<crate::dataset::descriptor::Sample> = match &self.dataset {
            Some(d) => {
                let opened = crate::dataset::descriptor::DatasetDescriptor::open(d)?;
                if opened.descriptor.kind == crate::dataset::descriptor::DatasetKind::Scam {
                    postits = crate::dataset::descriptor::scam_postit_areas(&opened.root)?;
                }
                opened.descriptor.samples(&opened.root)?
            }
            None => self
                .images
                .iter()
                .map(|p| crate::dataset::descriptor::Sample {
                    id: p.display().to_string(),
                    path: p.clone(),
                    label: None,
                    wnid: None,
                    attack_text: None,
                    condition: None,
                    pair: None,
                })
                .collect(),
        };
        if images.is_empty() {
            anyhow::bail!("nothing to look at: give image files or --dataset");
        }
        let mut variants = Vec::new();
        for a in &self.attacks {
            variants.extend(crate::attack::AttackSpec::load(a)?.variants);
        }
        let mode = if !variants.is_empty() {
            // Attacks are drawn on clean images only.
            images.retain(|s| s.attack_text.is_none());
            DetectMode::Rendered(variants)
        } else if self.dataset.is_some() {
            DetectMode::Physical
        } else {
            DetectMode::Boxes
        };
        if self.limit > 0 {
            images.truncate(self.limit);
        }
        if !matches!(mode, DetectMode::Boxes) && self.out.is_none() {
            anyhow::bail!("--out: the detectability measurements need an output folder");
        }
        if self.input_size < 32 {
            anyhow::bail!("--input-size: {} is under 32", self.input_size);
        }
        Ok(DetectSettings {
            mode,
            images,
            postits,
            transform: crate::preprocess::PreprocessCfg::square(self.input_size),
            seed: self.seed,
            out: self.out,
            detector,
            device: crate::cli::resolve::parse_device(&self.device)?,
        })
    }
}

/// One image's result.
#[derive(Debug, Serialize)]
struct ImageResult {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_area: Option<f64>,
    boxes: Vec<TextBox>,
    #[serde(skip_serializing_if = "Option::is_none")]
    overlay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct DetectOutput {
    detector: &'static str,
    model_sha256: &'static str,
    settings: DetectorSettings,
    images: Vec<ImageResult>,
}

/// Runs `typoclip detect`.
pub fn run_detect(args: DetectArgs) -> Result<()> {
    let s = args.resolve()?;
    let det = TextDetector::load(&crate::ocr::model_path(), s.detector, s.device)
        .map_err(anyhow::Error::msg)?;
    if let Some(out) = &s.out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create", out.display()))?;
    }
    match &s.mode {
        DetectMode::Boxes => {}
        DetectMode::Rendered(variants) => return run_rendered(&s, &det, variants),
        DetectMode::Physical => return run_physical(&s, &det),
    }
    let mut results = Vec::new();
    for (i, sample) in s.images.iter().enumerate() {
        let path = &sample.path;
        let img = match crate::dataset::load_rgb(path) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("skipped: {e}");
                results.push(ImageResult {
                    image: path.display().to_string(),
                    width: None,
                    height: None,
                    text_area: None,
                    boxes: Vec::new(),
                    overlay: None,
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let found = det.detect(&img);
        let (w, h) = img.dimensions();
        let overlay = match &s.out {
            Some(out) => {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into());
                let name = format!("{i:04}-{stem}.overlay.png");
                let file = out.join(&name);
                overlay_image(&img, &found, s.detector.db.thresh)
                    .save(&file)
                    .with_context(|| format!("{}: cannot write", file.display()))?;
                Some(name)
            }
            None => None,
        };
        results.push(ImageResult {
            image: path.display().to_string(),
            width: Some(w),
            height: Some(h),
            text_area: Some(found.text_area(w, h)),
            boxes: found.boxes,
            overlay,
            error: None,
        });
    }
    let output = DetectOutput {
        detector: crate::ocr::MODEL_NAME,
        model_sha256: crate::ocr::MODEL_SHA256,
        settings: s.detector,
        images: results,
    };
    let json = serde_json::to_string_pretty(&output)? + "\n";
    match &s.out {
        Some(out) => {
            let file = out.join("detections.json");
            std::fs::write(&file, json)
                .with_context(|| format!("{}: cannot write", file.display()))?;
            let n: usize = output.images.iter().map(|r| r.boxes.len()).sum();
            eprintln!(
                "{} images, {n} text boxes: {}",
                output.images.len(),
                file.display()
            );
        }
        None => print!("{json}"),
    }
    Ok(())
}

/// The image with the text probability above `thresh` tinted red and the boxes outlined.
pub fn overlay_image(img: &RgbImage, found: &crate::ocr::Detection, thresh: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let map = &found.map;
    let mut out = RgbImage::from_fn(w, h, |x, y| {
        let mx = ((x as u64 * map.width as u64) / w as u64) as u32;
        let my = ((y as u64 * map.height as u64) / h as u64) as u32;
        let p = map.values[(my * map.width + mx) as usize];
        let px = img.get_pixel(x, y);
        if p > thresh {
            let a = 0.45 * p;
            Rgb([
                (px[0] as f32 * (1.0 - a) + 255.0 * a) as u8,
                (px[1] as f32 * (1.0 - a)) as u8,
                (px[2] as f32 * (1.0 - a)) as u8,
            ])
        } else {
            *px
        }
    });
    crate::ocr::measure::outline_boxes(&mut out, &found.boxes);
    out
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_default()
}

/// A rate cell, or "–" where it does not apply.
fn share_cell(v: Option<f64>) -> Cell {
    match v {
        Some(v) => Cell::number(format!("{:.1} %", 100.0 * v), v),
        None => Cell::none(),
    }
}

/// The report's first line and the detector's provenance as a table.
fn report(title: &str, s: &DetectSettings, sections: Vec<Section>) -> Document {
    let prov = provenance(s);
    let rows = prov
        .as_object()
        .expect("an object")
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            vec![Cell::text(k), Cell::text(text)]
        })
        .collect();
    let mut sections = sections;
    sections.push(Section {
        id: "provenance".into(),
        title: "Provenance".into(),
        blocks: vec![Block::Table(Table {
            headers: vec!["field".into(), "value".into()],
            rows,
            class: "provenance".into(),
        })],
    });
    Document {
        title: title.into(),
        first_line: format!(
            "{} (a trained detector; no CLIP weights involved), at the model input: {}",
            crate::ocr::MODEL_NAME,
            s.transform.describe()
        ),
        banner: None,
        sections,
    }
}

/// Writes `report.html` and `report.md`.
fn write_report(out: &std::path::Path, doc: &Document) -> Result<()> {
    crate::report::write_file(&out.join("report.html"), doc.to_html().as_bytes())?;
    crate::report::write_file(&out.join("report.md"), doc.to_markdown().as_bytes())?;
    Ok(())
}

/// The provenance block every measurement carries.
fn provenance(s: &DetectSettings) -> serde_json::Value {
    serde_json::json!({
        "detector": crate::ocr::MODEL_NAME,
        "model_sha256": crate::ocr::MODEL_SHA256,
        "settings": s.detector,
        "transform": s.transform.describe(),
        "seed": s.seed,
        "images": s.images.len(),
        "typoclip": env!("CARGO_PKG_VERSION"),
    })
}

fn load_images(s: &DetectSettings) -> Vec<(String, RgbImage)> {
    s.images
        .iter()
        .filter_map(|sample| match crate::dataset::load_rgb(&sample.path) {
            Ok(img) => Some((sample.id.clone(), img)),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        })
        .collect()
}

fn run_rendered(
    s: &DetectSettings,
    det: &TextDetector,
    variants: &[crate::attack::Variant],
) -> Result<()> {
    let out = s.out.as_ref().expect("resolve requires --out");
    let images = load_images(s);
    if images.is_empty() {
        anyhow::bail!("no readable clean image to draw the attacks on");
    }
    let (table, examples) =
        crate::ocr::measure::rendered(det, &images, variants, &s.transform, s.seed);
    let mut csv = String::from(
        "attack,variant,params,images,detected_rate,pixel_recall,pixel_precision,oracle_px,box_px,hit_px\n",
    );
    for r in &table.rows {
        let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        csv += &format!(
            "{},{},{},{},{:.4},{},{},{},{},{}\n",
            r.attack,
            r.variant,
            params.join(";"),
            r.score.images,
            r.score.detected_rate(),
            fmt_opt(r.score.recall()),
            fmt_opt(r.score.precision()),
            r.score.oracle_px,
            r.score.box_px,
            r.score.hit_px
        );
    }
    crate::report::write_file(&out.join("detectability.csv"), csv.as_bytes())?;
    let json = serde_json::json!({
        "provenance": provenance(s),
        "clean_box_fraction": table.clean_box_fraction,
        "clean_with_boxes": table.clean_with_boxes,
        "rows": table.rows.iter().map(|r| serde_json::json!({
            "variant": r.variant, "attack": r.attack, "params": r.params,
            "score": r.score, "recall": r.score.recall(), "precision": r.score.precision(),
            "detected_rate": r.score.detected_rate(),
        })).collect::<Vec<_>>(),
    });
    crate::report::write_file(
        &out.join("detectability.json"),
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )?;
    let rows = table
        .rows
        .iter()
        .map(|r| {
            vec![
                Cell::text(&r.variant),
                Cell::number(r.score.images.to_string(), r.score.images as f64),
                share_cell(Some(r.score.detected_rate())),
                share_cell(r.score.recall()),
                share_cell(r.score.precision()),
            ]
        })
        .collect();
    let figures = examples
        .iter()
        .map(|ex| Figure {
            caption: ex.variant.clone(),
            png: crate::report::examples::png_bytes(&ex.image),
        })
        .collect();
    let doc = report(
        "Detectability of rendered attacks by PP-OCRv4's text detector",
        s,
        vec![
            Section {
                id: "detectability".into(),
                title: "Per attack variant".into(),
                blocks: vec![
                    Block::Para(format!(
                        "Boxes at the model input against every pixel the attack changed. Recall: attack pixels inside a box; precision: box pixels the attack changed (a label's paper counts as attack); detected: images with a box touching the attack. Clean inputs: {} of {} have a box; {:.3} % of their pixels are inside one.",
                        table.clean_with_boxes,
                        table.images,
                        100.0 * table.clean_box_fraction
                    )),
                    Block::Table(Table {
                        headers: ["variant", "images", "detected", "pixel recall", "pixel precision"]
                            .map(String::from)
                            .to_vec(),
                        rows,
                        class: "detectability".into(),
                    }),
                ],
            },
            Section {
                id: "examples".into(),
                title: "Examples (first image; attack pixels tinted blue, boxes green)".into(),
                blocks: vec![Block::Figures(figures)],
            },
        ],
    );
    write_report(out, &doc)?;
    eprintln!(
        "{} variants on {} images: {}",
        table.rows.len(),
        images.len(),
        out.join("report.html").display()
    );
    Ok(())
}

fn run_physical(s: &DetectSettings, det: &TextDetector) -> Result<()> {
    let out = s.out.as_ref().expect("resolve requires --out");
    let mut errors = Vec::new();
    let (rows, conditions, postits) =
        crate::ocr::measure::physical(det, &s.images, &s.postits, &s.transform, |id, e| {
            eprintln!("skipped: {e}");
            errors.push(serde_json::json!({"id": id, "error": e}));
        });
    let mut csv =
        String::from("id,condition,attack_text,boxes,text_area,max_score,postit_area_pct\n");
    for r in &rows {
        csv += &format!(
            "{},{},{},{},{:.5},{:.4},{}\n",
            r.id,
            r.condition,
            r.attack_text.as_deref().unwrap_or(""),
            r.boxes,
            r.text_area,
            r.max_score,
            r.postit_area_pct
                .map(|a| format!("{a:.4}"))
                .unwrap_or_default()
        );
    }
    crate::report::write_file(&out.join("detectability.csv"), csv.as_bytes())?;
    let json = serde_json::json!({
        "provenance": provenance(s),
        "conditions": conditions,
        "postit_sizes": postits,
        "photos": rows,
        "errors": errors,
    });
    crate::report::write_file(
        &out.join("detectability.json"),
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )?;
    let mut sections = vec![Section {
        id: "conditions".into(),
        title: "Photos with a text box, per condition".into(),
        blocks: vec![Block::Table(Table {
            headers: ["condition", "photos", "with a box", "mean text area"]
                .map(String::from)
                .to_vec(),
            rows: conditions
                .iter()
                .map(|c| {
                    vec![
                        Cell::text(&c.condition),
                        Cell::number(c.photos.to_string(), c.photos as f64),
                        share_cell(Some(c.with_boxes as f64 / (c.photos as f64).max(1.0))),
                        share_cell(Some(c.mean_text_area)),
                    ]
                })
                .collect(),
            class: "conditions".into(),
        })],
    }];
    if !postits.is_empty() {
        sections.push(Section {
            id: "postit-sizes".into(),
            title: "SCAM: photos with a box, by the post-it area the dataset states".into(),
            blocks: vec![Block::Table(Table {
                headers: [
                    "post-it area %",
                    "photos",
                    "with a box",
                    "median box area / post-it area",
                ]
                .map(String::from)
                .to_vec(),
                rows: postits
                    .iter()
                    .map(|p| {
                        vec![
                            Cell::text(format!("[{}, {})", p.range_pct.0, p.range_pct.1)),
                            Cell::number(p.photos.to_string(), p.photos as f64),
                            Cell::number(p.with_boxes.to_string(), p.with_boxes as f64),
                            match p.median_area_ratio {
                                Some(r) => Cell::number(format!("{r:.2}"), r),
                                None => Cell::none(),
                            },
                        ]
                    })
                    .collect(),
                class: "postit-sizes".into(),
            })],
        });
    }
    // Overlays of the first photos of each condition, for inspection (rows skip unreadable
    // photos, so each row finds its sample by id).
    let by_id: BTreeMap<&str, &crate::dataset::descriptor::Sample> =
        s.images.iter().map(|x| (x.id.as_str(), x)).collect();
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    let mut figures = Vec::new();
    for r in &rows {
        let n = shown.entry(r.condition.as_str()).or_default();
        if *n >= 12 {
            continue;
        }
        *n += 1;
        let Ok(img) = crate::dataset::load_rgb(&by_id[r.id.as_str()].path) else {
            continue;
        };
        let input = crate::preprocess::model_input(&img, &s.transform);
        let found = det.detect(&input);
        figures.push(Figure {
            caption: format!("{} · {}", r.condition, r.id),
            png: crate::report::examples::png_bytes(&overlay_image(
                &input,
                &found,
                s.detector.db.thresh,
            )),
        });
    }
    sections.push(Section {
        id: "overlays".into(),
        title: "Overlays (boxes green, probability above thresh red)".into(),
        blocks: vec![Block::Figures(figures)],
    });
    let doc = report(
        "Text detection on photographed attacks by PP-OCRv4's text detector",
        s,
        sections,
    );
    write_report(out, &doc)?;
    eprintln!(
        "{} photos: {}",
        rows.len(),
        out.join("report.html").display()
    );
    Ok(())
}
