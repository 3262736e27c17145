//! Where the text is, measured: how much of an attack the trained detector finds.
//!
//! - [`rendered`]: for rendered attacks, the detector's boxes at the model input against the
//!   renderer's oracle mask (every pixel the attack changed): pixel recall (oracle pixels inside
//!   a box), pixel precision (box pixels the attack changed) and the share of images where some
//!   box touches the attack, per variant — a dose-response of detectability over font, size,
//!   colour, opacity and rotation. Clean inputs give the false-positive area.
//! - [`physical`]: for photographed attacks (SCAM's post-its, Distill's paper labels), which
//!   photos have a box, per condition (attacked, clean twin), and for SCAM the box area against
//!   the post-it area the dataset states (`postit_area_pct`), by post-it size.
//!
//! Images are seen as the mask defense sees them: [`crate::preprocess::model_input`] of the
//! given transform. Totals are summed in the order images and variants are given, so the same
//! inputs give byte-identical tables.

use std::collections::BTreeMap;

use image::{GrayImage, RgbImage};
use serde::Serialize;

use super::{db, TextDetector};
use crate::attack::Variant;
use crate::preprocess::PreprocessCfg;

/// Pixel counts over a set of images.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PixelScore {
    /// Images.
    pub images: usize,
    /// Images where some box overlaps the oracle mask.
    pub detected: usize,
    /// Pixels the attack changed.
    pub oracle_px: u64,
    /// Pixels inside a box.
    pub box_px: u64,
    /// Pixels both.
    pub hit_px: u64,
}

impl PixelScore {
    /// Oracle pixels inside a box (`None` when the attack changed nothing).
    pub fn recall(&self) -> Option<f64> {
        (self.oracle_px > 0).then(|| self.hit_px as f64 / self.oracle_px as f64)
    }

    /// Box pixels the attack changed (`None` without boxes).
    pub fn precision(&self) -> Option<f64> {
        (self.box_px > 0).then(|| self.hit_px as f64 / self.box_px as f64)
    }

    /// The share of images with a box on the attack.
    pub fn detected_rate(&self) -> f64 {
        self.detected as f64 / (self.images as f64).max(1.0)
    }

    /// Adds one image: the oracle mask and the detector's box mask.
    pub fn add(&mut self, oracle: &GrayImage, boxes: &GrayImage) {
        let (mut o, mut b, mut h) = (0u64, 0u64, 0u64);
        for (p, q) in oracle.as_raw().iter().zip(boxes.as_raw()) {
            let (po, pb) = (*p > 0, *q > 0);
            o += po as u64;
            b += pb as u64;
            h += (po && pb) as u64;
        }
        self.images += 1;
        self.detected += (h > 0) as usize;
        self.oracle_px += o;
        self.box_px += b;
        self.hit_px += h;
    }
}

/// One variant's row.
#[derive(Debug, Clone, Serialize)]
pub struct VariantRow {
    /// The variant's name.
    pub variant: String,
    /// Its spec.
    pub attack: String,
    /// Its swept values.
    pub params: Vec<(String, String)>,
    /// Counts.
    pub score: PixelScore,
}

/// What [`rendered`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct RenderedTable {
    /// One row per variant, in the given order.
    pub rows: Vec<VariantRow>,
    /// Boxes on the clean inputs (every box pixel is a false positive).
    pub clean_box_fraction: f64,
    /// Clean inputs with some box.
    pub clean_with_boxes: usize,
    /// Images.
    pub images: usize,
}

/// One rendered example: the attacked input with the oracle mask and the boxes drawn.
pub struct Example {
    /// The variant.
    pub variant: String,
    /// Attacked input, oracle in blue, boxes outlined.
    pub image: RgbImage,
}

/// Measures the detector against the oracle mask for each variant on each image; returns the
/// table and, per variant, the first image's example.
pub fn rendered(
    det: &TextDetector,
    images: &[(String, RgbImage)],
    variants: &[Variant],
    cfg: &PreprocessCfg,
    seed: u64,
) -> (RenderedTable, Vec<Example>) {
    let inputs: Vec<RgbImage> = images
        .iter()
        .map(|(_, img)| crate::preprocess::model_input(img, cfg))
        .collect();
    let (mut clean_box_px, mut clean_px, mut clean_with_boxes) = (0u64, 0u64, 0usize);
    for input in &inputs {
        let (w, h) = input.dimensions();
        let mask = db::boxes_mask(&det.detect(input).boxes, w, h);
        let n = mask.pixels().filter(|p| p[0] > 0).count() as u64;
        clean_box_px += n;
        clean_px += w as u64 * h as u64;
        clean_with_boxes += (n > 0) as usize;
    }
    let mut rows = Vec::new();
    let mut examples = Vec::new();
    for v in variants {
        let mut score = PixelScore::default();
        for (k, ((id, img), input)) in images.iter().zip(&inputs).enumerate() {
            let r = crate::attack::render_for_model_with_input(
                img,
                input.clone(),
                v,
                cfg,
                // Each image's rendering seed, as sweeps derive it.
                crate::sweep::image_seed(id, seed),
                None,
            );
            let oracle = crate::defense::mask::oracle_mask(&r);
            let found = det.detect(&r.attacked_input);
            let (w, h) = r.attacked_input.dimensions();
            let boxes = db::boxes_mask(&found.boxes, w, h);
            score.add(&oracle, &boxes);
            if k == 0 {
                examples.push(Example {
                    variant: v.name.clone(),
                    image: example_image(&r.attacked_input, &oracle, &found.boxes),
                });
            }
        }
        rows.push(VariantRow {
            variant: v.name.clone(),
            attack: v.attack.clone(),
            params: v.params.clone(),
            score,
        });
    }
    let table = RenderedTable {
        rows,
        clean_box_fraction: clean_box_px as f64 / (clean_px as f64).max(1.0),
        clean_with_boxes,
        images: images.len(),
    };
    (table, examples)
}

/// The attacked input with the oracle mask tinted blue and the boxes outlined green.
pub fn example_image(input: &RgbImage, oracle: &GrayImage, boxes: &[db::TextBox]) -> RgbImage {
    let mut out = RgbImage::from_fn(input.width(), input.height(), |x, y| {
        let p = *input.get_pixel(x, y);
        if oracle.get_pixel(x, y)[0] > 0 {
            image::Rgb([
                (p[0] as u16 * 2 / 3) as u8,
                (p[1] as u16 * 2 / 3) as u8,
                (p[2] as u16 * 2 / 3 + 85) as u8,
            ])
        } else {
            p
        }
    });
    outline_boxes(&mut out, boxes);
    out
}

/// Draws each box's outline in green.
pub fn outline_boxes(out: &mut RgbImage, boxes: &[db::TextBox]) {
    for b in boxes {
        for k in 0..4 {
            let (p, q) = (b.points[k], b.points[(k + 1) % 4]);
            for off in [-0.5f32, 0.5] {
                imageproc::drawing::draw_line_segment_mut(
                    out,
                    (p[0] + off, p[1] + off),
                    (q[0] + off, q[1] + off),
                    image::Rgb([0, 255, 64]),
                );
            }
        }
    }
}

/// One photo's detection.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoRow {
    /// Sample id.
    pub id: String,
    /// Condition (`SCAM`, `NoSCAM`, `blank`, the written word's condition, …).
    pub condition: String,
    /// The written word, when the photo carries one.
    pub attack_text: Option<String>,
    /// Boxes found.
    pub boxes: usize,
    /// Fraction of the model input inside a box.
    pub text_area: f64,
    /// Highest box score.
    pub max_score: f32,
    /// SCAM's stated post-it area, percent of the photo.
    pub postit_area_pct: Option<f64>,
}

/// Per-condition summary of [`physical`].
#[derive(Debug, Clone, Serialize)]
pub struct ConditionRow {
    /// Condition.
    pub condition: String,
    /// Photos.
    pub photos: usize,
    /// Photos with some box.
    pub with_boxes: usize,
    /// Mean text area (fraction of the input).
    pub mean_text_area: f64,
}

/// SCAM photos with a box, by stated post-it area.
#[derive(Debug, Clone, Serialize)]
pub struct PostitRow {
    /// Post-it area range, percent: `[lo, hi)`.
    pub range_pct: (f64, f64),
    /// SCAM photos in the range.
    pub photos: usize,
    /// With some box.
    pub with_boxes: usize,
    /// Median of box area / post-it area over photos with a box.
    pub median_area_ratio: Option<f64>,
}

/// Detects text on each photo (as model input) and summarises by condition; `postits` maps a
/// SCAM pair id to its post-it area.
pub fn physical(
    det: &TextDetector,
    samples: &[crate::dataset::descriptor::Sample],
    postits: &BTreeMap<String, f64>,
    cfg: &PreprocessCfg,
    mut on_error: impl FnMut(&str, String),
) -> (Vec<PhotoRow>, Vec<ConditionRow>, Vec<PostitRow>) {
    let mut rows = Vec::new();
    for s in samples {
        let img = match crate::dataset::load_rgb(&s.path) {
            Ok(i) => i,
            Err(e) => {
                on_error(&s.id, e.to_string());
                continue;
            }
        };
        let input = crate::preprocess::model_input(&img, cfg);
        let found = det.detect(&input);
        let (w, h) = input.dimensions();
        rows.push(PhotoRow {
            id: s.id.clone(),
            condition: s.condition.clone().unwrap_or_else(|| {
                if s.attack_text.is_some() {
                    "attacked"
                } else {
                    "clean"
                }
                .into()
            }),
            attack_text: s.attack_text.clone(),
            boxes: found.boxes.len(),
            text_area: found.text_area(w, h),
            max_score: found.max_score(),
            postit_area_pct: s.pair.as_ref().and_then(|p| postits.get(p)).copied(),
        });
    }
    let mut by: BTreeMap<String, (usize, usize, f64)> = BTreeMap::new();
    for r in &rows {
        let e = by.entry(r.condition.clone()).or_default();
        e.0 += 1;
        e.1 += (r.boxes > 0) as usize;
        e.2 += r.text_area;
    }
    let conditions = by
        .into_iter()
        .map(|(condition, (n, b, a))| ConditionRow {
            condition,
            photos: n,
            with_boxes: b,
            mean_text_area: a / (n as f64).max(1.0),
        })
        .collect();
    let ranges = [(0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 100.0)];
    let postit_rows = if postits.is_empty() {
        Vec::new()
    } else {
        ranges
            .iter()
            .map(|&(lo, hi)| {
                let sel: Vec<&PhotoRow> = rows
                    .iter()
                    .filter(|r| r.condition == "SCAM")
                    .filter(|r| r.postit_area_pct.is_some_and(|a| a >= lo && a < hi))
                    .collect();
                let mut ratios: Vec<f64> = sel
                    .iter()
                    .filter(|r| r.boxes > 0)
                    .map(|r| 100.0 * r.text_area / r.postit_area_pct.expect("selected"))
                    .collect();
                ratios.sort_by(f64::total_cmp);
                PostitRow {
                    range_pct: (lo, hi),
                    photos: sel.len(),
                    with_boxes: sel.iter().filter(|r| r.boxes > 0).count(),
                    median_area_ratio: (!ratios.is_empty()).then(|| ratios[ratios.len() / 2]),
                }
            })
            .collect()
    };
    (rows, conditions, postit_rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    #[test]
    fn pixel_scores_count_recall_precision_and_detection() {
        let mut oracle = GrayImage::new(10, 10);
        let mut boxes = GrayImage::new(10, 10);
        for x in 0..4 {
            oracle.put_pixel(x, 0, Luma([255]));
        }
        for x in 2..8 {
            boxes.put_pixel(x, 0, Luma([255]));
        }
        let mut s = PixelScore::default();
        s.add(&oracle, &boxes);
        s.add(&oracle, &GrayImage::new(10, 10));
        assert_eq!((s.images, s.detected), (2, 1));
        assert_eq!((s.oracle_px, s.box_px, s.hit_px), (8, 6, 2));
        assert_eq!(s.recall(), Some(0.25));
        assert_eq!(s.precision(), Some(2.0 / 6.0));
        assert_eq!(s.detected_rate(), 0.5);
        let empty = PixelScore::default();
        assert_eq!((empty.recall(), empty.precision()), (None, None));
    }
}
