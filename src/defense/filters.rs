//! Input filtering (image hook): Gaussian blur, downscale-upscale, JPEG re-compression and a
//! median filter on the model input, each at a chosen strength. Thin strokes of written text are
//! high-frequency detail, so these classical input-transformation defenses (Guo et al., "Countering
//! Adversarial Images using Input Transformations", ICLR 2018; Dziugaite et al., "A study of the
//! effect of JPG compression on adversarial images", 2016) trade text legibility against the
//! object's detail. Strength 0 (σ = 0, scale = 1, radius = 0) is the identity; JPEG has no
//! identity setting.

use std::io::Cursor;

use image::RgbImage;

use super::{Defense, DefenseError, ImageContext, Params};

/// Gaussian blur of standard deviation `sigma` pixels (imageproc's separable kernel).
#[derive(Debug, Clone)]
pub struct GaussianBlur {
    /// σ in pixels of the model input; 0 is the identity.
    pub sigma: f32,
}

impl GaussianBlur {
    /// `blur:sigma=1.0`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        Ok(Box::new(GaussianBlur {
            sigma: p.f64("sigma", 1.0, 0.0, 50.0)? as f32,
        }))
    }
}

impl Defense for GaussianBlur {
    fn transform_image(&self, image: RgbImage, _ctx: &ImageContext) -> RgbImage {
        if self.sigma == 0.0 || image.width() == 0 || image.height() == 0 {
            return image;
        }
        imageproc::filter::gaussian_blur_f32(&image, self.sigma)
    }
}

/// Downscale to `scale` × the side, then back up (Pillow-exact bicubic both ways).
#[derive(Debug, Clone)]
pub struct Downscale {
    /// Fraction of the side kept, in (0, 1]; 1 is the identity.
    pub scale: f64,
}

impl Downscale {
    /// `downscale:scale=0.5`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        Ok(Box::new(Downscale {
            scale: p.f64("scale", 0.5, 0.01, 1.0)?,
        }))
    }
}

impl Defense for Downscale {
    fn transform_image(&self, image: RgbImage, _ctx: &ImageContext) -> RgbImage {
        let (w, h) = image.dimensions();
        if self.scale >= 1.0 || w == 0 || h == 0 {
            return image;
        }
        let sw = ((w as f64 * self.scale).round() as u32).max(1);
        let sh = ((h as f64 * self.scale).round() as u32).max(1);
        let small = crate::preprocess::resize_bicubic(&image, sw, sh);
        crate::preprocess::resize_bicubic(&small, w, h)
    }
}

/// JPEG re-compression at `quality` (image's baseline encoder, then decoded again).
#[derive(Debug, Clone)]
pub struct JpegRecompress {
    /// JPEG quality, 1..=100.
    pub quality: u8,
}

impl JpegRecompress {
    /// `jpeg:quality=75`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        Ok(Box::new(JpegRecompress {
            quality: p.usize("quality", 75, 1, 100)? as u8,
        }))
    }
}

impl Defense for JpegRecompress {
    fn transform_image(&self, image: RgbImage, _ctx: &ImageContext) -> RgbImage {
        if image.width() == 0 || image.height() == 0 {
            return image;
        }
        let mut bytes = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, self.quality);
        if image.write_with_encoder(enc).is_err() {
            return image;
        }
        match image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg) {
            Ok(d) => d.to_rgb8(),
            Err(_) => image,
        }
    }
}

/// Median filter over a `(2r+1)²` window per channel (imageproc).
#[derive(Debug, Clone)]
pub struct Median {
    /// Window radius in pixels; 0 is the identity.
    pub radius: u32,
}

impl Median {
    /// `median:radius=1`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        Ok(Box::new(Median {
            radius: p.usize("radius", 1, 0, 16)? as u32,
        }))
    }
}

impl Defense for Median {
    fn transform_image(&self, image: RgbImage, _ctx: &ImageContext) -> RgbImage {
        if self.radius == 0 {
            return image;
        }
        imageproc::filter::median_filter(&image, self.radius, self.radius)
    }
}

/// Reads an encoded image from memory (used by tests of the JPEG path).
pub fn decode(bytes: &[u8]) -> Option<RgbImage> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .decode()
        .ok()
        .map(|d| d.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripes() -> RgbImage {
        RgbImage::from_fn(32, 32, |x, y| {
            let v = if (x / 2 + y) % 2 == 0 { 250 } else { 5 };
            image::Rgb([v, (x * 7) as u8, (y * 7) as u8])
        })
    }

    #[test]
    fn zero_strength_is_the_identity() {
        let img = stripes();
        let ctx = ImageContext::default();
        for d in [
            Box::new(GaussianBlur { sigma: 0.0 }) as Box<dyn Defense>,
            Box::new(Downscale { scale: 1.0 }),
            Box::new(Median { radius: 0 }),
        ] {
            assert_eq!(d.transform_image(img.clone(), &ctx), img, "{d:?}");
        }
    }

    #[test]
    fn stronger_filters_remove_more_detail() {
        let img = stripes();
        let ctx = ImageContext::default();
        // Total variation (sum of |horizontal differences|) falls as strength rises.
        let tv = |i: &RgbImage| -> u64 {
            let mut s = 0u64;
            for y in 0..i.height() {
                for x in 1..i.width() {
                    s += (i.get_pixel(x, y)[0] as i64 - i.get_pixel(x - 1, y)[0] as i64)
                        .unsigned_abs();
                }
            }
            s
        };
        let base = tv(&img);
        let b1 = tv(&GaussianBlur { sigma: 0.8 }.transform_image(img.clone(), &ctx));
        let b2 = tv(&GaussianBlur { sigma: 2.0 }.transform_image(img.clone(), &ctx));
        assert!(base > b1 && b1 > b2, "{base} {b1} {b2}");
        let d = tv(&Downscale { scale: 0.25 }.transform_image(img.clone(), &ctx));
        assert!(d < base);
        let m = Median { radius: 2 }.transform_image(img.clone(), &ctx);
        assert_eq!(m.dimensions(), img.dimensions());
        assert!(tv(&m) < base);
        let j = JpegRecompress { quality: 10 }.transform_image(img.clone(), &ctx);
        assert_eq!(j.dimensions(), img.dimensions());
        assert_ne!(j, img);
        // Higher quality stays closer to the input.
        let err = |q: u8| -> u64 {
            let j = JpegRecompress { quality: q }.transform_image(img.clone(), &ctx);
            j.as_raw()
                .iter()
                .zip(img.as_raw())
                .map(|(a, b)| (*a as i64 - *b as i64).unsigned_abs())
                .sum()
        };
        assert!(err(95) < err(10));
    }
}
