//! Text masking (image hook): find the written text, then fill those pixels from their
//! surroundings, so the model sees the object without the words.
//!
//! Where the text is (`source=`):
//! - `oracle`: the attack renderer's own mask of changed pixels at the model input
//!   ([`oracle_mask`]) — perfect detection, hence an upper bound for any text detector; only
//!   for rendered attacks (physical photos carry no mask).
//! - `detector`: a classical, untrained scene-text detector in the stroke-width spirit of
//!   Epshtein et al., "Detecting Text in Natural Scenes with Stroke Width Transform" (CVPR
//!   2010): pixels of high local contrast form candidate strokes; connected components are kept
//!   when their stroke width (from a distance transform) is small against their size and nearly
//!   constant, their fill ratio and height are letter-like ([`detect_text`]). It fires on some
//!   textures and misses low-contrast text; it is not a trained OCR detector.
//! - `ocr`: PaddleOCR's trained PP-OCRv4 text detector ([`crate::ocr`]); the mask is its text
//!   boxes (after DB post-processing with `thresh`, `box_thresh` and `unclip`). It works on
//!   physical photos and hand-writing, and is the detector papers mask with.
//!
//! How it is filled (`fill=`), from unmasked pixels only, inward ring by ring: each pass gives
//! every masked pixel that has known pixels within `radius` their mean (`mean`) or
//! Gaussian-weighted mean (`blur`), then those pixels count as known. Pixels outside the mask
//! are never changed, and the fill depends only on pixels outside the mask, so when the mask
//! covers every changed pixel the result is identical for the attacked and the clean image.

use image::{GrayImage, Luma, RgbImage};
use imageproc::distance_transform::Norm;

use super::{Defense, DefenseError, ImageContext, Params};

/// Where the mask comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSource {
    /// The renderer's mask.
    Oracle,
    /// The classical detector.
    Detector,
    /// The trained OCR detector.
    Ocr,
}

/// Masks text and fills it from the surroundings.
#[derive(Debug, Clone)]
pub struct TextMask {
    /// Where the mask comes from.
    pub source: MaskSource,
    /// Gaussian-weighted (`true`) or plain (`false`) mean of the known neighbours.
    pub gaussian: bool,
    /// Grow the mask by this many pixels (L∞) before filling.
    pub dilate: u8,
    /// Neighbourhood radius of the fill.
    pub radius: u32,
    /// Detector: local contrast (0..255) above which a pixel is a stroke candidate.
    pub threshold: u8,
    /// The OCR detector (`source=ocr`), loaded once when the spec is parsed.
    pub ocr: Option<std::sync::Arc<crate::ocr::TextDetector>>,
}

impl TextMask {
    /// `mask:source=oracle,fill=blur,dilate=0,radius=2`; `source=detector` adds
    /// `threshold=40`; `source=ocr` adds `thresh=0.3,box_thresh=0.6,unclip=1.5` (PaddleOCR's
    /// DB defaults) and `device=cpu` (where the detector runs, as `--device` names it), and records
    /// the detector model's sha256.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        let source = p.choice("source", "oracle", &["oracle", "detector", "ocr"])?;
        let fill = p.choice("fill", "blur", &["blur", "mean"])?;
        let dilate = p.usize("dilate", if source == "oracle" { 0 } else { 1 }, 0, 32)? as u8;
        let radius = p.usize("radius", 2, 1, 16)? as u32;
        for (key, owner) in [
            ("threshold", "detector"),
            ("thresh", "ocr"),
            ("box_thresh", "ocr"),
            ("unclip", "ocr"),
            ("device", "ocr"),
        ] {
            if source != owner && p.raw(key).is_some() {
                return Err(p.error(format!("{key}: applies to source={owner} only")));
            }
        }
        let threshold = if source == "detector" {
            p.usize("threshold", 40, 1, 254)? as u8
        } else {
            40
        };
        let ocr = if source == "ocr" {
            let mut settings = crate::ocr::DetectorSettings::default();
            settings.db.thresh = p.f64("thresh", settings.db.thresh as f64, 0.01, 0.99)? as f32;
            settings.db.box_thresh =
                p.f64("box_thresh", settings.db.box_thresh as f64, 0.0, 0.99)? as f32;
            settings.db.unclip_ratio =
                p.f64("unclip", settings.db.unclip_ratio as f64, 0.0, 4.0)? as f32;
            let device = p.string("device", Some("cpu"))?;
            let device =
                crate::model::parse_device(&device).map_err(|e| p.error(format!("device: {e}")))?;
            let path = crate::ocr::model_path();
            let detector =
                crate::ocr::TextDetector::load(&path, settings, device).map_err(|e| p.error(e))?;
            p.note(
                "model_sha256",
                serde_json::Value::String(crate::ocr::MODEL_SHA256.into()),
            );
            Some(std::sync::Arc::new(detector))
        } else {
            None
        };
        Ok(Box::new(TextMask {
            source: match source.as_str() {
                "oracle" => MaskSource::Oracle,
                "detector" => MaskSource::Detector,
                _ => MaskSource::Ocr,
            },
            gaussian: fill == "blur",
            dilate,
            radius,
            threshold,
            ocr,
        }))
    }
}

impl Defense for TextMask {
    fn transform_image(&self, image: RgbImage, ctx: &ImageContext) -> RgbImage {
        let mask = match self.source {
            MaskSource::Oracle => match ctx.oracle_mask {
                Some(m) => m.clone(),
                None => return image,
            },
            MaskSource::Detector => detect_text(&image, self.threshold),
            MaskSource::Ocr => {
                let detector = self.ocr.as_ref().expect("source=ocr loads its detector");
                let (w, h) = image.dimensions();
                crate::ocr::db::boxes_mask(&detector.detect(&image).boxes, w, h)
            }
        };
        let mask = if self.dilate > 0 {
            imageproc::morphology::dilate(&mask, Norm::LInf, self.dilate)
        } else {
            mask
        };
        fill_masked(&image, &mask, self.radius, self.gaussian)
    }

    fn needs_oracle_mask(&self) -> bool {
        self.source == MaskSource::Oracle
    }
}

/// The renderer's mask at the model input: for attacks drawn on the model input, the renderer's
/// mask itself; for attacks drawn on the source photo, every model-input pixel the attack
/// changed (the source mask carried through CLIP's resize and crop, which spreads it by the
/// bicubic kernel).
pub fn oracle_mask(render: &crate::attack::ModelRender) -> GrayImage {
    if render.rendered.mask.dimensions() == render.attacked_input.dimensions()
        && render.rendered.image.dimensions() == render.attacked_input.dimensions()
        && render.rendered.image == render.attacked_input
    {
        return render.rendered.mask.clone();
    }
    changed_pixels(&render.clean_input, &render.attacked_input)
}

/// 255 where the two images differ, 0 elsewhere.
pub fn changed_pixels(a: &RgbImage, b: &RgbImage) -> GrayImage {
    GrayImage::from_fn(a.width(), a.height(), |x, y| {
        Luma([if a.get_pixel(x, y) == b.get_pixel(x, y) {
            0
        } else {
            255
        }])
    })
}

/// Fills the pixels where `mask > 0` from the others, ring by ring (see the module docs).
pub fn fill_masked(image: &RgbImage, mask: &GrayImage, radius: u32, gaussian: bool) -> RgbImage {
    let (w, h) = image.dimensions();
    let (wi, hi) = (w as i64, h as i64);
    let mut px: Vec<[f32; 3]> = image
        .pixels()
        .map(|p| [p[0] as f32, p[1] as f32, p[2] as f32])
        .collect();
    let mut known: Vec<bool> = mask.pixels().map(|m| m[0] == 0).collect();
    if known.iter().all(|&k| k) {
        return image.clone();
    }
    if !known.iter().any(|&k| k) {
        // Nothing to fill from: mid grey.
        return RgbImage::from_pixel(w, h, image::Rgb([128, 128, 128]));
    }
    let r = radius as i64;
    let sigma = (radius as f32 / 2.0).max(0.5);
    let weight = |dx: i64, dy: i64| -> f32 {
        if gaussian {
            (-((dx * dx + dy * dy) as f32) / (2.0 * sigma * sigma)).exp()
        } else {
            1.0
        }
    };
    let mut todo: Vec<usize> = (0..known.len()).filter(|&i| !known[i]).collect();
    while !todo.is_empty() {
        let mut filled: Vec<(usize, [f32; 3])> = Vec::new();
        let mut rest = Vec::new();
        for &i in &todo {
            let (x, y) = ((i as i64) % wi, (i as i64) / wi);
            let (mut acc, mut wsum) = ([0f32; 3], 0f32);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= wi || ny >= hi {
                        continue;
                    }
                    let j = (ny * wi + nx) as usize;
                    if known[j] {
                        let wt = weight(dx, dy);
                        for c in 0..3 {
                            acc[c] += wt * px[j][c];
                        }
                        wsum += wt;
                    }
                }
            }
            if wsum > 0.0 {
                filled.push((i, [acc[0] / wsum, acc[1] / wsum, acc[2] / wsum]));
            } else {
                rest.push(i);
            }
        }
        if filled.is_empty() {
            break;
        }
        for (i, v) in filled {
            px[i] = v;
            known[i] = true;
        }
        todo = rest;
    }
    let mut out = image.clone();
    for (i, p) in out.pixels_mut().enumerate() {
        if mask.as_raw()[i] > 0 {
            for c in 0..3 {
                p[c] = px[i][c].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// A classical text mask (see the module docs): 255 on the bounding boxes of letter-like
/// stroke components.
pub fn detect_text(image: &RgbImage, threshold: u8) -> GrayImage {
    let (w, h) = image.dimensions();
    let mut mask = GrayImage::new(w, h);
    if w < 4 || h < 4 {
        return mask;
    }
    let gray = image::imageops::grayscale(image);
    let radius = (w.min(h) / 16).max(2);
    let local = imageproc::filter::box_filter(&gray, radius, radius);
    let ink = GrayImage::from_fn(w, h, |x, y| {
        let d = (gray.get_pixel(x, y)[0] as i32 - local.get_pixel(x, y)[0] as i32).abs();
        Luma([if d > threshold as i32 { 255 } else { 0 }])
    });
    // Distance of each ink pixel to the nearest non-ink pixel: half the stroke width.
    let background = GrayImage::from_fn(w, h, |x, y| Luma([255 - ink.get_pixel(x, y)[0]]));
    let dist = imageproc::distance_transform::distance_transform(&background, Norm::LInf);
    let labels = imageproc::region_labelling::connected_components(
        &ink,
        imageproc::region_labelling::Connectivity::Eight,
        Luma([0u8]),
    );
    #[derive(Clone)]
    struct Comp {
        x0: u32,
        y0: u32,
        x1: u32,
        y1: u32,
        area: u32,
        widths: Vec<f32>,
    }
    let mut comps: std::collections::HashMap<u32, Comp> = std::collections::HashMap::new();
    for (x, y, l) in labels.enumerate_pixels() {
        if l[0] == 0 {
            continue;
        }
        let c = comps.entry(l[0]).or_insert(Comp {
            x0: x,
            y0: y,
            x1: x,
            y1: y,
            area: 0,
            widths: Vec::new(),
        });
        c.x0 = c.x0.min(x);
        c.y0 = c.y0.min(y);
        c.x1 = c.x1.max(x);
        c.y1 = c.y1.max(y);
        c.area += 1;
        c.widths.push(dist.get_pixel(x, y)[0] as f32);
    }
    let min_side = w.min(h) as f32;
    for c in comps.values() {
        let bw = (c.x1 - c.x0 + 1) as f32;
        let bh = (c.y1 - c.y0 + 1) as f32;
        let fill = c.area as f32 / (bw * bh);
        let n = c.widths.len() as f32;
        let mean = c.widths.iter().sum::<f32>() / n;
        let var = c
            .widths
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>()
            / n;
        let stroke = 2.0 * mean;
        let letter_like = bh >= 4.0
            && bh <= 0.5 * min_side
            && bw <= 0.8 * min_side
            && c.area >= 8
            && (0.08..=0.9).contains(&fill)
            && stroke <= 0.35 * bw.min(bh).max(1.0) + 1.0
            && var.sqrt() <= 0.8 * mean.max(1.0);
        if letter_like {
            for y in c.y0..=c.y1 {
                for x in c.x0..=c.x1 {
                    mask.put_pixel(x, y, Luma([255]));
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smooth(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (60 + x * 2) as u8,
                (80 + y * 2) as u8,
                (100 + (x + y)) as u8,
            ])
        })
    }

    #[test]
    fn oracle_fill_restores_what_the_attack_did_not_touch() {
        let clean = smooth(48, 40);
        let mut attacked = clean.clone();
        for y in 10..20 {
            for x in 12..30 {
                attacked.put_pixel(x, y, image::Rgb([0, 0, 0]));
            }
        }
        let mask = changed_pixels(&clean, &attacked);
        for gaussian in [false, true] {
            let a = fill_masked(&attacked, &mask, 2, gaussian);
            let c = fill_masked(&clean, &mask, 2, gaussian);
            // Identical whether or not the attack is there: the fill reads only unmasked pixels.
            assert_eq!(a, c);
            // Outside the mask, exactly the clean image.
            for (x, y, p) in a.enumerate_pixels() {
                if mask.get_pixel(x, y)[0] == 0 {
                    assert_eq!(p, clean.get_pixel(x, y));
                }
            }
            // On a smooth image the fill is close to the clean pixels.
            let err = a
                .as_raw()
                .iter()
                .zip(clean.as_raw())
                .map(|(x, y)| (*x as i32 - *y as i32).abs())
                .max()
                .unwrap();
            assert!(err <= 20, "fill error {err}");
        }
        // An empty mask is the identity.
        let empty = GrayImage::new(48, 40);
        assert_eq!(fill_masked(&attacked, &empty, 2, true), attacked);
    }

    #[test]
    fn detector_finds_drawn_text_and_ignores_smooth_images() {
        let clean = smooth(96, 96);
        assert_eq!(
            detect_text(&clean, 40)
                .pixels()
                .filter(|p| p[0] > 0)
                .count(),
            0
        );
        let spec = crate::attack::AttackSpec::parse(
            "description = \"t\"\ntarget = \"iPod\"\n[[layers]]\nkind = \"text\"\ntext = \"iPod\"\nsize_px = 28\ncolor = \"black\"\n",
            std::path::Path::new("t.toml"),
            crate::attack::FontBook::global(),
        )
        .unwrap();
        let r = crate::attack::render(&clean, &spec.variants[0], 0, None);
        let found = detect_text(&r.image, 40);
        let text_px = r.mask.pixels().filter(|p| p[0] > 0).count();
        let covered = r
            .mask
            .enumerate_pixels()
            .filter(|(x, y, p)| p[0] > 0 && found.get_pixel(*x, *y)[0] > 0)
            .count();
        assert!(
            covered as f64 >= 0.5 * text_px as f64,
            "detector covers {covered} of {text_px} text pixels"
        );
    }
}
