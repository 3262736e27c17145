//! The preprocessing stage: an RGB image → the model's input tensor, exactly as CLIP's
//! `Compose([Resize(n_px, BICUBIC), CenterCrop(n_px), RGB, ToTensor(), Normalize(mean, std)])`
//! ([`preprocess`]), or as open_clip's eval transform for a [`PreprocessCfg`]
//! ([`preprocess_with`]: `image_transform_v2(cfg, is_train=False)`, with the tag's mean/std,
//! `interpolation` bicubic / bilinear and `resize_mode` shortest / squash / longest).
//! The pipeline calls [`model_input`] / [`model_tensor`] with the model's config: CLIP's path
//! for OpenAI's geometry (so those inputs never change), open_clip's transform otherwise.
//!
//! The resize reproduces Pillow's `ImagingResample` for 8-bit images: separable bicubic
//! (a = −0.5) or bilinear (triangle) filter whose support widens with the downscale factor
//! (antialiasing), coefficients in 22-bit fixed point, horizontal pass then vertical pass, each
//! rounded and clipped to u8. Output sizes follow torchvision's `Resize(int)` / `Resize((h, w))`
//! and open_clip's `ResizeKeepRatio`; crop offsets use Python's `round`, padding follows
//! open_clip's `center_crop_or_pad`. Pure: no I/O.
//! Reference: open_clip 3.3.0 `transform.py` (`PreprocessCfg`, `image_transform`,
//! `ResizeKeepRatio`, `center_crop_or_pad`), `factory.py` (how a tag's config is merged),
//! Pillow `src/libImaging/Resample.c`.

use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::model::open_clip::{zoo, IntOrList, ModelCfg};

/// CLIP's per-channel normalisation mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel normalisation standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Per output pixel: first input index and fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize, filter: Interpolation) -> Coeffs {
    let (kernel, filter_support): (fn(f64) -> f64, f64) = match filter {
        Interpolation::Bicubic => (bicubic, 2.0),
        Interpolation::Bilinear => (bilinear, 1.0),
    };
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter_support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = kernel((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..n {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((width, height), Image.BICUBIC)` of an 8-bit RGB image, horizontal pass
/// first: Pillow-exact up to Pillow 12 always, and for Pillow 13 (the reference's) except
/// where the height shrinks by more than twice as many pixels as the width (see [`resize`]).
/// CLIP's default path ([`preprocess`]) uses it, so its output does not change.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resample(img, width, height, Interpolation::Bicubic, false)
}

/// Pillow 13-exact `Image.resize((width, height), filter)` of an 8-bit RGB image (what
/// torchvision's `Resize` does to a PIL image, antialiased): the vertical pass runs first when
/// the height shrinks by more than twice as many pixels as the width, as Pillow 13's
/// `ImagingResampleInner` does.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Interpolation) -> RgbImage {
    let shrink_h = img.height() as i64 - height as i64;
    let shrink_w = img.width() as i64 - width as i64;
    resample(
        img,
        width,
        height,
        filter,
        shrink_h > 0 && shrink_h > shrink_w * 2,
    )
}

/// One horizontal pass over rows `y0..y0 + rows` of `src` (`w0` pixels wide) to `ch`'s width.
fn horizontal_pass(src: &[u8], w0: usize, y0: usize, rows: usize, ch: &Coeffs) -> Vec<u8> {
    let w1 = ch.bounds.len();
    let mut tmp = vec![0u8; rows * w1 * 3];
    for y in 0..rows {
        let in_row = &src[(y + y0) * w0 * 3..(y + y0 + 1) * w0 * 3];
        let out_row = &mut tmp[y * w1 * 3..(y + 1) * w1 * 3];
        for xx in 0..w1 {
            let (xmin, n) = ch.bounds[xx];
            let k = &ch.weights[xx * ch.ksize..xx * ch.ksize + n];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &in_row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                acc[0] += p[0] as i32 * kx;
                acc[1] += p[1] as i32 * kx;
                acc[2] += p[2] as i32 * kx;
            }
            out_row[xx * 3] = clip8(acc[0]);
            out_row[xx * 3 + 1] = clip8(acc[1]);
            out_row[xx * 3 + 2] = clip8(acc[2]);
        }
    }
    tmp
}

/// One vertical pass of `src` (`width` pixels wide, its row 0 being source row `y0`).
fn vertical_pass(src: &[u8], width: usize, y0: usize, cv: &Coeffs) -> Vec<u8> {
    let h1 = cv.bounds.len();
    let stride = width * 3;
    let mut out = vec![0u8; h1 * stride];
    for yy in 0..h1 {
        let (ymin, n) = cv.bounds[yy];
        let ymin = ymin - y0;
        let k = &cv.weights[yy * cv.ksize..yy * cv.ksize + n];
        let out_row = &mut out[yy * stride..(yy + 1) * stride];
        for (xc, o) in out_row.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                acc += src[(ymin + y) * stride + xc] as i32 * ky;
            }
            *o = clip8(acc);
        }
    }
    out
}

/// Pillow's two-pass resample, horizontal or vertical pass first.
fn resample(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Interpolation,
    vertical_first: bool,
) -> RgbImage {
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let (w1, h1) = (width as usize, height as usize);
    if (w0, h0) == (w1, h1) || w1 == 0 || h1 == 0 || w0 == 0 || h0 == 0 {
        return if (w0, h0) == (w1, h1) {
            img.clone()
        } else {
            RgbImage::new(width, height)
        };
    }
    let src = img.as_raw();
    let cv = precompute_coeffs(h0, h1, filter);
    let out = if vertical_first {
        let tmp = if h1 != h0 {
            vertical_pass(src, w0, 0, &cv)
        } else {
            src.to_vec()
        };
        if w1 != w0 {
            horizontal_pass(&tmp, w0, 0, h1, &precompute_coeffs(w0, w1, filter))
        } else {
            tmp
        }
    } else {
        // Only rows used by the vertical pass are resampled horizontally.
        let y_first = cv.bounds[0].0;
        let y_last = cv.bounds[h1 - 1].0 + cv.bounds[h1 - 1].1;
        let (tmp, tmp_w) = if w1 != w0 {
            let ch = precompute_coeffs(w0, w1, filter);
            (horizontal_pass(src, w0, y_first, y_last - y_first, &ch), w1)
        } else {
            (src[y_first * w0 * 3..y_last * w0 * 3].to_vec(), w0)
        };
        if h1 == h0 {
            tmp
        } else {
            vertical_pass(&tmp, tmp_w, y_first, &cv)
        }
    };
    RgbImage::from_raw(width, height, out).expect("sized buffer")
}

/// The size torchvision's `Resize(n_px)` gives: shorter side `n_px`, longer side truncated.
pub fn resized_size(width: u32, height: u32, n_px: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (n_px as u64 * long as u64 / short.max(1) as u64) as u32;
    if width <= height {
        (n_px, new_long)
    } else {
        (new_long, n_px)
    }
}

/// torchvision's `CenterCrop`: offsets use Python's round-half-to-even.
pub fn center_crop(img: &RgbImage, n_px: u32) -> RgbImage {
    let top = ((img.height() as f64 - n_px as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as u32;
    let left = ((img.width() as f64 - n_px as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as u32;
    image::imageops::crop_imm(
        img,
        left,
        top,
        n_px.min(img.width()),
        n_px.min(img.height()),
    )
    .to_image()
}

/// Resize + centre crop to `n_px`, as 8-bit RGB (what the model sees, before normalisation).
pub fn resize_and_crop(img: &RgbImage, n_px: u32) -> RgbImage {
    let (w, h) = resized_size(img.width(), img.height(), n_px);
    let resized = resize_bicubic(img, w, h);
    center_crop(&resized, n_px)
}

/// `ToTensor` + `Normalize`: an `n×n` RGB image → `[3, n, n] f32`.
pub fn to_normalized_tensor(img: &RgbImage) -> Tensor {
    // OpenAI's mean/std (the default config's equal CLIP_MEAN / CLIP_STD, tested below).
    to_normalized_tensor_with(img, &PreprocessCfg::default())
}

/// The whole CLIP transform: RGB image → `[3, n_px, n_px] f32`.
pub fn preprocess(img: &RgbImage, n_px: u32) -> Tensor {
    to_normalized_tensor(&resize_and_crop(img, n_px))
}

/// Stacks preprocessed images into a batch `[B, 3, n, n]`.
pub fn batch(images: &[Tensor]) -> Tensor {
    Tensor::stack(images, 0).to_kind(Kind::Float)
}

/// The resampling filter (`interpolation` of open_clip's preprocess config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Pillow's `BICUBIC` (a = −0.5), open_clip's default.
    Bicubic,
    /// Pillow's `BILINEAR` (triangle filter).
    Bilinear,
}

/// How the image is brought to the model's size (`resize_mode` of open_clip's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Shorter side to the size, then a centre crop (CLIP's; open_clip's default).
    Shortest,
    /// Both sides to the size, aspect ratio not kept.
    Squash,
    /// Longer side to the size, then padded to a square with `fill_color`.
    Longest,
}

/// open_clip's `PreprocessCfg`: what a tag's eval transform does. Defaults are OpenAI's (224,
/// CLIP mean/std, bicubic, shortest, fill 0).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreprocessCfg {
    /// Model input `(height, width)` (`size`: an int or `[h, w]`).
    pub size: (u32, u32),
    /// Per-channel mean (RGB), subtracted after scaling to 0..1.
    pub mean: [f64; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f64; 3],
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// Resize mode.
    pub resize_mode: ResizeMode,
    /// Padding value of every channel in `longest` mode (0..255).
    pub fill_color: u8,
}

/// OpenAI's normalisation mean as open_clip writes it (`OPENAI_DATASET_MEAN`).
const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI's normalisation std (`OPENAI_DATASET_STD`).
const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl Default for PreprocessCfg {
    fn default() -> Self {
        PreprocessCfg {
            size: (224, 224),
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            interpolation: Interpolation::Bicubic,
            resize_mode: ResizeMode::Shortest,
            fill_color: 0,
        }
    }
}

/// A preprocess config that cannot be used; one line naming the field.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// A field with a value open_clip's eval transform would not take.
    #[error("{field}: {message}")]
    Field {
        /// The field (`preprocess_cfg.interpolation`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An (architecture, tag) pair that is not in open_clip's pretrained table.
    #[error("{arch}:{tag}: not a pretrained pair of open_clip's zoo")]
    UnknownTag {
        /// Architecture.
        arch: String,
        /// Tag.
        tag: String,
    },
}

fn field_error(field: &str, message: String) -> PreprocessError {
    PreprocessError::Field {
        field: format!("preprocess_cfg.{field}"),
        message,
    }
}

fn parse_size(v: &Value, field: &str) -> Result<(u32, u32), PreprocessError> {
    let one = |v: &Value| {
        v.as_u64()
            .filter(|&n| n > 0 && n <= 65_535)
            .map(|n| n as u32)
    };
    match v {
        Value::Array(a) if a.len() == 2 => match (one(&a[0]), one(&a[1])) {
            (Some(h), Some(w)) => Ok((h, w)),
            _ => Err(field_error(field, format!("{v} is not [height, width]"))),
        },
        _ => one(v)
            .map(|n| (n, n))
            .ok_or_else(|| field_error(field, format!("{v} is not a size"))),
    }
}

/// `mean` / `std`: three numbers, or one for every channel (open_clip's `(mean,) * 3`).
fn parse_channels(v: &Value, field: &str) -> Result<[f64; 3], PreprocessError> {
    let bad = || field_error(field, format!("{v} is not 1 or 3 numbers"));
    let nums: Vec<f64> = match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_f64().ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => vec![v.as_f64().ok_or_else(bad)?],
    };
    match nums.as_slice() {
        [x] => Ok([*x; 3]),
        [r, g, b] => Ok([*r, *g, *b]),
        _ => Err(bad()),
    }
}

impl PreprocessCfg {
    /// `object` merged over `self` as open_clip's `merge_preprocess_dict`: only
    /// `PreprocessCfg`'s keys count, `null` values are skipped; a bad value is an error naming
    /// `preprocess_cfg.<field>`. An empty `mean`/`std` means OpenAI's, as `image_transform`'s
    /// `mean or OPENAI_DATASET_MEAN`.
    pub fn merged(&self, object: &Value) -> Result<PreprocessCfg, PreprocessError> {
        let map = object.as_object().ok_or_else(|| PreprocessError::Field {
            field: "preprocess_cfg".into(),
            message: format!("{object} is not an object"),
        })?;
        let mut cfg = self.clone();
        for (key, v) in map {
            if v.is_null() {
                continue;
            }
            let text = || v.as_str().unwrap_or_default();
            match key.as_str() {
                "size" => cfg.size = parse_size(v, key)?,
                "mean" if v.as_array().is_some_and(Vec::is_empty) => cfg.mean = OPENAI_MEAN,
                "std" if v.as_array().is_some_and(Vec::is_empty) => cfg.std = OPENAI_STD,
                "mean" => cfg.mean = parse_channels(v, key)?,
                "std" => cfg.std = parse_channels(v, key)?,
                "interpolation" => {
                    cfg.interpolation = match text() {
                        "bicubic" => Interpolation::Bicubic,
                        "bilinear" => Interpolation::Bilinear,
                        // open_clip's eval transform takes anything but bilinear as bicubic.
                        "random" => Interpolation::Bicubic,
                        _ => {
                            return Err(field_error(
                                key,
                                format!("{v} is not \"bicubic\" or \"bilinear\""),
                            ))
                        }
                    }
                }
                "resize_mode" => {
                    cfg.resize_mode = match text() {
                        "shortest" => ResizeMode::Shortest,
                        "squash" => ResizeMode::Squash,
                        "longest" => ResizeMode::Longest,
                        _ => {
                            return Err(field_error(
                                key,
                                format!("{v} is not \"shortest\", \"squash\" or \"longest\""),
                            ))
                        }
                    }
                }
                "fill_color" => {
                    cfg.fill_color = v
                        .as_u64()
                        .filter(|&n| n <= 255)
                        .ok_or_else(|| field_error(key, format!("{v} is not 0..255")))?
                        as u8
                }
                "mode" if text() == "RGB" => {}
                "mode" => return Err(field_error(key, format!("{v} is not \"RGB\""))),
                _ => {}
            }
        }
        Ok(cfg)
    }

    /// The `preprocess_cfg` object of an `open_clip_config.json` over the defaults. open_clip
    /// then takes the size from the model ([`PreprocessCfg::for_model`] does both).
    pub fn from_open_clip_json(object: &Value) -> Result<PreprocessCfg, PreprocessError> {
        PreprocessCfg::default().merged(object)
    }

    /// What open_clip's `create_model` sets for a model config and its hub folder's
    /// `preprocess_cfg` (if any): defaults, the object merged over them, then the size of the
    /// vision tower (`vision_cfg.image_size`).
    pub fn for_model(
        model: &ModelCfg,
        preprocess_cfg: Option<&Value>,
    ) -> Result<PreprocessCfg, PreprocessError> {
        let mut cfg = match preprocess_cfg {
            Some(v) => PreprocessCfg::from_open_clip_json(v)?,
            None => PreprocessCfg::default(),
        };
        cfg.size = image_size(&model.vision_cfg.image_size)?;
        Ok(cfg)
    }

    /// The preprocessing of a pretrained (architecture, tag) pair of open_clip's zoo: the
    /// tag's mean, std, interpolation and resize mode, the architecture's image size.
    pub fn for_tag(arch: &str, tag: &str) -> Result<PreprocessCfg, PreprocessError> {
        let unknown = || PreprocessError::UnknownTag {
            arch: arch.into(),
            tag: tag.into(),
        };
        let pretrained = zoo().pretrained(arch, tag).ok_or_else(unknown)?;
        let model = zoo().model(arch).ok_or_else(unknown)?;
        let object = serde_json::json!({
            "mean": pretrained.mean,
            "std": pretrained.std,
            "interpolation": pretrained.interpolation,
            "resize_mode": pretrained.resize_mode,
        });
        PreprocessCfg::for_model(model, Some(&object))
    }

    /// OpenAI's transform at a square input side `n_px` (what a model without a config of
    /// its own, or the standalone `render --n-px`, uses).
    pub fn square(n_px: u32) -> PreprocessCfg {
        PreprocessCfg {
            size: (n_px, n_px),
            ..PreprocessCfg::default()
        }
    }

    /// One line naming the transform (`bicubic shortest 224x224 mean [..] std [..]`), as
    /// provenance records it.
    pub fn describe(&self) -> String {
        let mode = match self.resize_mode {
            ResizeMode::Shortest => "shortest",
            ResizeMode::Squash => "squash",
            ResizeMode::Longest => "longest",
        };
        let interp = match self.interpolation {
            Interpolation::Bicubic => "bicubic",
            Interpolation::Bilinear => "bilinear",
        };
        let fill = if self.resize_mode == ResizeMode::Longest {
            format!(" fill {}", self.fill_color)
        } else {
            String::new()
        };
        format!(
            "{interp} {mode} {}x{}{fill} mean {:?} std {:?}",
            self.size.0, self.size.1, self.mean, self.std
        )
    }

    /// The mean as the `f32` torchvision's `Normalize` subtracts.
    pub fn mean_f32(&self) -> [f32; 3] {
        self.mean.map(|x| x as f32)
    }

    /// The std as the `f32` torchvision's `Normalize` divides by.
    pub fn std_f32(&self) -> [f32; 3] {
        self.std.map(|x| x as f32)
    }
}

impl<'de> Deserialize<'de> for PreprocessCfg {
    /// Reads what [`PreprocessCfg::from_open_clip_json`] reads (so also what `Serialize` wrote).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        PreprocessCfg::from_open_clip_json(&v).map_err(serde::de::Error::custom)
    }
}

/// `vision_cfg.image_size` as `(height, width)`.
fn image_size(size: &IntOrList) -> Result<(u32, u32), PreprocessError> {
    let v = match size {
        IntOrList::One(n) => serde_json::json!(n),
        IntOrList::Many(l) => serde_json::json!(l),
    };
    parse_size(&v, "size").map_err(|_| PreprocessError::Field {
        field: "vision_cfg.image_size".into(),
        message: format!("{v} is not a size"),
    })
}

/// open_clip's `ResizeKeepRatio` size (`(width, height)`) for a target `(height, width)`:
/// `longest` scales the longer side to fit, otherwise the shorter side to cover; each side
/// is `round(side / ratio)` with Python's rounding, at least 1 (Pillow refuses 0).
pub fn keep_ratio_size(width: u32, height: u32, target: (u32, u32), longest: bool) -> (u32, u32) {
    let ratio_h = height as f64 / target.0 as f64;
    let ratio_w = width as f64 / target.1 as f64;
    let ratio = if longest {
        ratio_h.max(ratio_w)
    } else {
        ratio_h.min(ratio_w)
    };
    let side = |x: u32| ((x as f64 / ratio).round_ties_even() as u32).max(1);
    (side(width), side(height))
}

/// open_clip's `center_crop_or_pad` (also torchvision's `CenterCrop`, with `fill` 0): pads
/// each short side to the target (`(d) // 2` before, `(d + 1) // 2` after, with `fill`), then
/// crops the centre with Python-rounded offsets.
pub fn center_crop_or_pad(img: &RgbImage, width: u32, height: u32, fill: u8) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let padded;
    let img = if width > iw || height > ih {
        let (dw, dh) = (width.saturating_sub(iw), height.saturating_sub(ih));
        let (left, top) = (dw / 2, dh / 2);
        let mut out = RgbImage::from_pixel(iw + dw, ih + dh, image::Rgb([fill; 3]));
        image::imageops::replace(&mut out, img, left as i64, top as i64);
        if out.dimensions() == (width, height) {
            return out;
        }
        padded = out;
        &padded
    } else {
        img
    };
    let (iw, ih) = img.dimensions();
    let top = ((ih as f64 - height as f64) / 2.0).round_ties_even() as u32;
    let left = ((iw as f64 - width as f64) / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(img, left, top, width, height).to_image()
}

/// The 8-bit model input for `cfg` (before normalisation): open_clip's eval resize and crop.
/// `shortest` with a square size is [`resize_and_crop`] (with `cfg`'s filter); with a
/// non-square size it is open_clip's `ResizeKeepRatio` — which open_clip builds without the
/// configured interpolation, so bicubic — then a centre crop. `squash` resizes to the size;
/// `longest` keeps the ratio inside the size and pads with `fill_color`.
pub fn resize_and_crop_with(img: &RgbImage, cfg: &PreprocessCfg) -> RgbImage {
    let (h, w) = cfg.size;
    match cfg.resize_mode {
        ResizeMode::Shortest if h == w => {
            let (rw, rh) = resized_size(img.width(), img.height(), h);
            center_crop_or_pad(&resize(img, rw, rh, cfg.interpolation), w, h, 0)
        }
        ResizeMode::Shortest => {
            let (rw, rh) = keep_ratio_size(img.width(), img.height(), cfg.size, false);
            center_crop_or_pad(&resize(img, rw, rh, Interpolation::Bicubic), w, h, 0)
        }
        ResizeMode::Squash => resize(img, w, h, cfg.interpolation),
        ResizeMode::Longest => {
            let (rw, rh) = keep_ratio_size(img.width(), img.height(), cfg.size, true);
            let resized = resize(img, rw, rh, cfg.interpolation);
            center_crop_or_pad(&resized, w, h, cfg.fill_color)
        }
    }
}

/// True when `cfg` resizes as CLIP's own transform does: bicubic, shorter side to a square
/// size, centre crop (OpenAI's geometry, whatever the mean/std).
pub fn is_clip_geometry(cfg: &PreprocessCfg) -> bool {
    cfg.interpolation == Interpolation::Bicubic
        && cfg.resize_mode == ResizeMode::Shortest
        && cfg.size.0 == cfg.size.1
}

/// The 8-bit model input the pipeline feeds a model trained with `cfg` (sweeps, classify,
/// embed, attack renders, calibration, probes): for CLIP's geometry exactly
/// [`resize_and_crop`] (so OpenAI models' inputs are unchanged), otherwise
/// [`resize_and_crop_with`] (open_clip's eval transform for the mode).
pub fn model_input(img: &RgbImage, cfg: &PreprocessCfg) -> RgbImage {
    if is_clip_geometry(cfg) {
        resize_and_crop(img, cfg.size.0)
    } else {
        resize_and_crop_with(img, cfg)
    }
}

/// [`model_input`] then `cfg`'s normalisation: the model's input tensor `[3, H, W] f32`.
pub fn model_tensor(img: &RgbImage, cfg: &PreprocessCfg) -> Tensor {
    to_normalized_tensor_with(&model_input(img, cfg), cfg)
}

/// Where a `width × height` image lands in [`model_input`]'s output: the resized size
/// `(rw, rh)` and the offset `(left, top)` of the output's corner in the resized image
/// (negative where `longest` pads).
pub fn input_geometry(width: u32, height: u32, cfg: &PreprocessCfg) -> (u32, u32, f64, f64) {
    let (h, w) = cfg.size;
    let offset = |r: u32, n: u32| ((r as f64 - n as f64) / 2.0).round_ties_even();
    match cfg.resize_mode {
        ResizeMode::Shortest if h == w => {
            let (rw, rh) = resized_size(width, height, h);
            (rw, rh, offset(rw, w), offset(rh, h))
        }
        ResizeMode::Shortest => {
            let (rw, rh) = keep_ratio_size(width, height, cfg.size, false);
            (rw, rh, offset(rw, w), offset(rh, h))
        }
        ResizeMode::Squash => (w, h, 0.0, 0.0),
        ResizeMode::Longest => {
            let (rw, rh) = keep_ratio_size(width, height, cfg.size, true);
            // center_crop_or_pad: `d // 2` padding before.
            let pad = |r: u32, n: u32| -(((n.saturating_sub(r)) / 2) as f64);
            (rw, rh, pad(rw, w), pad(rh, h))
        }
    }
}

/// `ToTensor` + `Normalize(cfg.mean, cfg.std)`: an RGB image → `[3, H, W] f32`.
pub fn to_normalized_tensor_with(img: &RgbImage, cfg: &PreprocessCfg) -> Tensor {
    let (mean, std) = (cfg.mean_f32(), cfg.std_f32());
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * w * h];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * w * h + i] = (p[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    Tensor::from_slice(&data).view([3, h as i64, w as i64])
}

/// open_clip's eval transform for `cfg`: a decoded RGB image → `[3, H, W] f32`
/// (`image_transform_v2(cfg, is_train=False)`).
pub fn preprocess_with(img: &RgbImage, cfg: &PreprocessCfg) -> Tensor {
    to_normalized_tensor_with(&resize_and_crop_with(img, cfg), cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_resize_sizes() {
        assert_eq!(resized_size(500, 375, 224), (298, 224));
        assert_eq!(resized_size(375, 500, 224), (224, 298));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(97, 61, image::Rgb([10, 128, 250]));
        let out = resize_and_crop(&img, 32);
        assert_eq!(out.dimensions(), (32, 32));
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
        let up = resize_and_crop(&RgbImage::from_pixel(7, 9, image::Rgb([1, 2, 3])), 32);
        assert!(up.pixels().all(|p| p.0 == [1, 2, 3]));
    }

    #[test]
    fn normalisation_matches_formula() {
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 128]));
        let t = to_normalized_tensor(&img);
        let v = f64::try_from(t.get(0).get(0).get(0)).unwrap();
        assert!((v - ((1.0 - 0.48145466) / 0.26862954)).abs() < 1e-5);
    }

    /// A deterministic RGB pattern.
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 37 + y * 11 % 251) as u8,
                (x * x + 3 * y) as u8,
                ((x ^ y) * 29) as u8,
            ])
        })
    }

    #[test]
    fn default_config_is_the_clip_path() {
        let cfg = PreprocessCfg::default();
        assert_eq!(cfg.mean_f32(), CLIP_MEAN);
        assert_eq!(cfg.std_f32(), CLIP_STD);
        for (w, h) in [(500, 375), (375, 500), (224, 224), (9, 7), (1600, 90)] {
            let img = pattern(w, h);
            assert_eq!(resize_and_crop_with(&img, &cfg), resize_and_crop(&img, 224));
            assert!(preprocess_with(&img, &cfg).equal(&preprocess(&img, 224)));
        }
    }

    #[test]
    fn every_mode_gives_the_size() {
        for mode in ["shortest", "squash", "longest"] {
            for size in [serde_json::json!(64), serde_json::json!([48, 80])] {
                let cfg = PreprocessCfg::from_open_clip_json(
                    &serde_json::json!({"size": size, "resize_mode": mode, "interpolation": "bilinear"}),
                )
                .unwrap();
                for (w, h) in [(9, 7), (1600, 90), (60, 900), (64, 64)] {
                    let out = resize_and_crop_with(&pattern(w, h), &cfg);
                    assert_eq!(out.dimensions(), (cfg.size.1, cfg.size.0), "{mode} {w}x{h}");
                }
            }
        }
    }

    #[test]
    fn longest_pads_with_the_fill_colour() {
        let cfg = PreprocessCfg::from_open_clip_json(
            &serde_json::json!({"size": 32, "resize_mode": "longest", "fill_color": 200}),
        )
        .unwrap();
        let img = RgbImage::from_pixel(64, 16, image::Rgb([10, 20, 30]));
        let out = resize_and_crop_with(&img, &cfg);
        // 64×16 → 32×8, padded by 12 above and 12 below.
        assert_eq!(out.get_pixel(5, 0).0, [200; 3]);
        assert_eq!(out.get_pixel(5, 11).0, [200; 3]);
        assert_eq!(out.get_pixel(5, 12).0, [10, 20, 30]);
        assert_eq!(out.get_pixel(5, 19).0, [10, 20, 30]);
        assert_eq!(out.get_pixel(5, 20).0, [200; 3]);
    }

    #[test]
    fn tags_take_their_pretrained_config() {
        let openai = PreprocessCfg::for_tag("ViT-B-32", "openai").unwrap();
        assert_eq!(openai, PreprocessCfg::default());
        let zoo = zoo();
        let mut modes = std::collections::BTreeSet::new();
        for p in &zoo.pretrained {
            if zoo.model(&p.arch).is_none() {
                continue;
            }
            let cfg = PreprocessCfg::for_tag(&p.arch, &p.tag)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", p.arch, p.tag));
            modes.insert((
                format!("{:?}", cfg.interpolation),
                format!("{:?}", cfg.resize_mode),
            ));
            if let Some(m) = &p.mean {
                assert_eq!(cfg.mean.as_slice(), m.as_slice());
            }
        }
        assert!(modes.len() >= 4, "{modes:?}");
        let e = PreprocessCfg::for_tag("ViT-B-32", "nope")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "ViT-B-32:nope: not a pretrained pair of open_clip's zoo");
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, field) in [
            (
                serde_json::json!({"interpolation": "nearest"}),
                "preprocess_cfg.interpolation",
            ),
            (
                serde_json::json!({"resize_mode": "crop"}),
                "preprocess_cfg.resize_mode",
            ),
            (
                serde_json::json!({"mean": [0.5, 0.5]}),
                "preprocess_cfg.mean",
            ),
            (
                serde_json::json!({"fill_color": 300}),
                "preprocess_cfg.fill_color",
            ),
            (
                serde_json::json!({"size": [1, 2, 3]}),
                "preprocess_cfg.size",
            ),
            (serde_json::json!({"mode": "L"}), "preprocess_cfg.mode"),
        ] {
            let e = PreprocessCfg::from_open_clip_json(&json)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{e}");
        }
        let cfg = PreprocessCfg::from_open_clip_json(
            &serde_json::json!({"mean": 0.5, "std": null, "unknown": 1}),
        )
        .unwrap();
        assert_eq!(cfg.mean, [0.5; 3]);
        assert_eq!(cfg.std, PreprocessCfg::default().std);
        let round: PreprocessCfg =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(round, cfg);
    }
}
