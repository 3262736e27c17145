//! `typoclip detect`: where the trained text detector ([`crate::ocr`]) sees text. Writes each
//! image's boxes (corners in image pixels, score) and text area as JSON, and with `--out` an
//! overlay PNG per image (the probability map above `thresh` tinted, the boxes outlined).
//! Unreadable images are reported in the JSON and skipped.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::ocr::{DetectorSettings, TextBox, TextDetector};

/// `typoclip detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Images to look at.
    #[arg(required = true)]
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
}

/// Resolved settings of one `detect` run.
#[derive(Debug, Clone)]
pub struct DetectSettings {
    /// Images.
    pub images: Vec<PathBuf>,
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
        Ok(DetectSettings {
            images: self.images,
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
    let mut results = Vec::new();
    for (i, path) in s.images.iter().enumerate() {
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
        detector: "PP-OCRv4 det (PaddleOCR, via rapidocr-onnxruntime 1.4.4)",
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
    for b in &found.boxes {
        for k in 0..4 {
            let (p, q) = (b.points[k], b.points[(k + 1) % 4]);
            for off in [-0.5f32, 0.5] {
                imageproc::drawing::draw_line_segment_mut(
                    &mut out,
                    (p[0] + off, p[1] + off),
                    (q[0] + off, q[1] + off),
                    Rgb([0, 255, 64]),
                );
            }
        }
    }
    out
}
