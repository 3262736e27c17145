//! The preprocessing stage: an RGB image → the model's input tensor, exactly as CLIP's
//! `Compose([Resize(n_px, BICUBIC), CenterCrop(n_px), RGB, ToTensor(), Normalize(mean, std)])`.
//!
//! The resize reproduces Pillow's `ImagingResample` for 8-bit images: separable bicubic
//! (a = −0.5) whose support widens with the downscale factor (antialiasing), coefficients in
//! 22-bit fixed point, horizontal pass then vertical pass, each rounded and clipped to u8.
//! Output size follows torchvision's `Resize(int)`; the crop offset uses Python's `round`.
//! Pure: no I/O.

use image::RgbImage;
use tch::{Kind, Tensor};

/// CLIP's per-channel normalisation mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel normalisation standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

const PRECISION_BITS: u32 = 32 - 8 - 2;

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

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
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
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
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

/// Pillow-exact `Image.resize((width, height), Image.BICUBIC)` of an 8-bit RGB image.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
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
    let cv = precompute_coeffs(h0, h1);
    // Only rows used by the vertical pass are resampled horizontally.
    let y_first = cv.bounds[0].0;
    let y_last = cv.bounds[h1 - 1].0 + cv.bounds[h1 - 1].1;
    let (tmp, tmp_w) = if w1 != w0 {
        let ch = precompute_coeffs(w0, w1);
        let rows = y_last - y_first;
        let mut tmp = vec![0u8; rows * w1 * 3];
        for y in 0..rows {
            let in_row = &src[(y + y_first) * w0 * 3..(y + y_first + 1) * w0 * 3];
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
        (tmp, w1)
    } else {
        (src[y_first * w0 * 3..y_last * w0 * 3].to_vec(), w0)
    };
    if h1 == h0 {
        return RgbImage::from_raw(width, height, tmp).expect("sized buffer");
    }
    let mut out = vec![0u8; w1 * h1 * 3];
    let stride = tmp_w * 3;
    for yy in 0..h1 {
        let (ymin, n) = cv.bounds[yy];
        let ymin = ymin - y_first;
        let k = &cv.weights[yy * cv.ksize..yy * cv.ksize + n];
        let out_row = &mut out[yy * stride..(yy + 1) * stride];
        for (xc, o) in out_row.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                acc += tmp[(ymin + y) * stride + xc] as i32 * ky;
            }
            *o = clip8(acc);
        }
    }
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
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * w * h];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * w * h + i] = (p[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    Tensor::from_slice(&data).view([3, h as i64, w as i64])
}

/// The whole CLIP transform: RGB image → `[3, n_px, n_px] f32`.
pub fn preprocess(img: &RgbImage, n_px: u32) -> Tensor {
    to_normalized_tensor(&resize_and_crop(img, n_px))
}

/// Stacks preprocessed images into a batch `[B, 3, n, n]`.
pub fn batch(images: &[Tensor]) -> Tensor {
    Tensor::stack(images, 0).to_kind(Kind::Float)
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
}
