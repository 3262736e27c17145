//! The dataset stage: reading images from disk into 8-bit RGB, with a pixel limit against
//! decompression bombs. Every error names the file.

use std::path::Path;

use image::RgbImage;

/// Images with more pixels than this are refused (decompression-bomb guard).
pub const MAX_PIXELS: u64 = 100_000_000;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ImageError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// Decodes an image file (format from content) into RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let fail = |message: String| ImageError {
        path: path.display().to_string(),
        message,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| fail(format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(fail("not a recognised image format".into()));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| fail(format!("cannot decode image header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(fail(format!("zero-size image ({w}x{h})")));
    }
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(fail(format!(
            "{w}x{h} exceeds the {MAX_PIXELS}-pixel limit"
        )));
    }
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| fail(format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| fail(format!("cannot decode image: {e}")))?;
    Ok(img.to_rgb8())
}
