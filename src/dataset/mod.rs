//! The dataset stage: reading images from disk into 8-bit RGB, with a pixel limit against
//! decompression bombs. Every error names the file.
//!
//! JPEGs are decoded with libjpeg-turbo's algorithms (through the `mozjpeg` crate: accurate
//! integer IDCT, fancy upsampling), as Pillow does, so that pixels equal the Python reference's;
//! truncated JPEGs (no end-of-image marker after the last scan) are refused as Pillow refuses
//! them. Four-component (CMYK and YCCK) JPEGs give Pillow's `convert("RGB")` bytes exactly:
//! libjpeg-turbo decodes them to CMYK, every sample is inverted (Pillow reads every CMYK JPEG
//! with Adobe polarity, rawmode `CMYK;I`, whether or not an Adobe marker is present), then
//! libImaging's integer `cmyk2rgb` applies (see [`pillow_cmyk_to_rgb`]). Other formats go
//! through the `image` crate.
//!
//! Known, deliberate differences from Pillow: 16-bit samples (e.g. a 16-bit grayscale PNG) are
//! scaled to 8 bits, `round(v * 255 / 65535)`, where Pillow's `convert("RGB")` clips them to 255.
//! Like Pillow's `Image.open`, EXIF orientation is not applied.

pub mod descriptor;
pub mod synthetic;

use std::path::Path;

use image::RgbImage;
use std::path::PathBuf;

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
    // Decoders' messages may span lines; a record's error is one line.
    let fail = |message: String| ImageError {
        path: path.display().to_string(),
        message: message.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    let size = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot open: {e}")))?
        .len();
    if size == 0 {
        return Err(fail("empty file (0 bytes)".into()));
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| fail(format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(fail("not a recognised image format".into()));
    }
    let is_jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
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
    if is_jpeg {
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        match decode_jpeg(&bytes) {
            Ok(img) => return Ok(img),
            Err(JpegOutcome::Invalid(m)) => return Err(fail(m)),
            Err(JpegOutcome::Unsupported) => {} // e.g. CMYK: the image crate converts it
        }
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

enum JpegOutcome {
    Invalid(String),
    Unsupported,
}

/// True when the entropy-coded data of the last scan is followed by an end-of-image marker.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(pos) => bytes[pos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, JpegOutcome> {
    if !jpeg_is_complete(bytes) {
        return Err(JpegOutcome::Invalid(
            "truncated JPEG (no end-of-image marker after the last scan)".into(),
        ));
    }
    let result = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        use mozjpeg::ColorSpace as Cs;
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        match d.color_space() {
            Cs::JCS_YCbCr | Cs::JCS_GRAYSCALE | Cs::JCS_RGB => {
                let mut started = d.rgb()?;
                let (w, h) = (started.width() as u32, started.height() as u32);
                let data = started.read_scanlines::<u8>()?;
                started.finish()?;
                Ok(RgbImage::from_raw(w, h, data))
            }
            // libjpeg picks YCCK for an Adobe marker with transform 2 and CMYK otherwise, and
            // turns YCCK into CMYK itself, as it does for Pillow (out_color_space JCS_CMYK).
            Cs::JCS_CMYK | Cs::JCS_YCCK => {
                let mut started = d.to_colorspace(Cs::JCS_CMYK)?;
                let (w, h) = (started.width() as u32, started.height() as u32);
                let data = started.read_scanlines::<u8>()?;
                started.finish()?;
                if data.len() != w as usize * h as usize * 4 {
                    return Ok(None);
                }
                Ok(RgbImage::from_raw(w, h, pillow_cmyk_to_rgb(&data)))
            }
            _ => Ok(None),
        }
    });
    match result {
        Ok(Ok(Some(img))) => Ok(img),
        Ok(Ok(None)) => Err(JpegOutcome::Unsupported),
        Ok(Err(e)) => Err(JpegOutcome::Invalid(format!("cannot decode JPEG: {e}"))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".into());
            Err(JpegOutcome::Invalid(format!("cannot decode JPEG: {msg}")))
        }
    }
}

/// The RGB bytes Pillow gives for a CMYK JPEG whose decoded samples (libjpeg's JCS_CMYK output,
/// four bytes a pixel) are `cmyk`: `Image.open(p).convert("RGB")`.
///
/// Pillow decodes every four-component JPEG with rawmode `CMYK;I` ("assume adobe conventions",
/// PIL/JpegImagePlugin.py), which inverts each sample (`255 - v`), and converts with libImaging's
/// `cmyk2rgb`: `nk = 255 - k; r = nk - MULDIV255(c, nk)` (likewise g from m, b from y), where
/// `MULDIV255(a, b) = (t + (t >> 8)) >> 8` with `t = a * b + 128` (a * b / 255, rounded).
pub fn pillow_cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    fn muldiv255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        // After Pillow's inversion, 255 - k is the stored K sample.
        let nk = px[3] as u32;
        for &v in &px[..3] {
            rgb.push((nk - muldiv255(255 - v as u32, nk)) as u8);
        }
    }
    rgb
}

/// One built-in default image and the ImageNet class it shows.
#[derive(Debug, Clone)]
pub struct BuiltinImage {
    /// The file (extracted by `scripts/setup.sh`).
    pub path: PathBuf,
    /// ImageNet class name.
    pub label: String,
}

#[derive(serde::Deserialize)]
struct BuiltinManifest {
    root: String,
    images: Vec<BuiltinEntry>,
}

#[derive(serde::Deserialize)]
struct BuiltinEntry {
    file: String,
    label: String,
}

/// The built-in images listed in `datasets/builtin.toml` (compiled in), found under
/// `$TYPOCLIP_BUILTIN_DIR` or the manifest's `root` inside the source checkout.
pub fn builtin_images() -> Result<Vec<BuiltinImage>, ImageError> {
    let manifest: BuiltinManifest = toml::from_str(include_str!("../../datasets/builtin.toml"))
        .expect("valid builtin manifest");
    let root = std::env::var_os("TYPOCLIP_BUILTIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(&manifest.root));
    let mut out = Vec::new();
    for e in manifest.images {
        let path = root.join(&e.file);
        if !path.is_file() {
            return Err(ImageError {
                path: path.display().to_string(),
                message: "built-in image missing: run scripts/setup.sh (it extracts them from the scikit-image wheel)".into(),
            });
        }
        out.push(BuiltinImage {
            path,
            label: e.label,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        });
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    }

    /// CRC-32 (ISO-HDLC), as PNG chunks carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// The error `load_rgb` gives for `bytes` saved as `name`; it must name the file.
    fn error_for(dir: &Path, name: &str, bytes: &[u8]) -> String {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let message = load_rgb(&path).expect_err(name).to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
        message
    }

    #[test]
    fn cmyk_samples_convert_as_pillow_converts_them() {
        // libjpeg's samples of Adobe-polarity CMYK: 255 is no ink.
        let rgb = pillow_cmyk_to_rgb(&[
            255, 255, 255, 255, // no ink: white
            0, 255, 255, 255, // full cyan
            9, 80, 3, 0, // full black, whatever else
            128, 200, 10, 100, // Pillow's CMYK (127, 55, 245, 155) -> (50, 78, 4)
        ]);
        assert_eq!(rgb, [255, 255, 255, 0, 255, 255, 0, 0, 0, 50, 78, 4]);
    }

    #[test]
    fn cmyk_and_ycck_jpegs_take_the_libjpeg_path() {
        let dir = tempfile::tempdir().unwrap();
        // Flat dark-cyan ink: Pillow's CMYK (200, 0, 0, 60), stored inverted.
        let (w, h) = (40, 24);
        let px: Vec<u8> = [55u8, 255, 255, 195].repeat(w * h);
        for space in [mozjpeg::ColorSpace::JCS_CMYK, mozjpeg::ColorSpace::JCS_YCCK] {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
            c.set_size(w, h);
            c.set_color_space(space);
            c.set_quality(95.0);
            let mut started = c.start_compress(Vec::new()).unwrap();
            started.write_scanlines(&px).unwrap();
            let bytes = started.finish().unwrap();
            assert!(decode_jpeg(&bytes).is_ok(), "{space:?}");
            let path = dir.path().join("ink.jpg");
            std::fs::write(&path, &bytes).unwrap();
            let img = load_rgb(&path).unwrap();
            assert_eq!(img.dimensions(), (w as u32, h as u32));
            // nk = 195: r = 195 - round(200 * 195 / 255) = 42, g = b = 195 (± JPEG rounding).
            for p in img.pixels() {
                let d = [42i16, 195, 195]
                    .iter()
                    .zip(p.0)
                    .map(|(&e, v)| (e - v as i16).abs())
                    .max()
                    .unwrap();
                assert!(d <= 2, "{space:?}: {:?}", p.0);
            }
        }
    }

    #[test]
    fn every_kind_of_bad_image_is_one_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let jpeg = encoded(image::ImageFormat::Jpeg);
        let good = dir.path().join("good.jpg");
        std::fs::write(&good, &jpeg).unwrap();
        assert_eq!(load_rgb(&good).unwrap().dimensions(), (64, 48));

        // Cut inside the scan: the headers are whole, the pixels are not.
        let scan = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let truncated = error_for(dir.path(), "truncated.jpg", &jpeg[..scan + 40]);
        assert!(truncated.contains("truncated JPEG"), "{truncated}");

        // A JPEG whose frame header (SOF0) claims 0 components: libjpeg refuses it.
        let mut corrupt = jpeg.clone();
        let sof = corrupt.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        corrupt[sof + 9] = 0;
        let corrupt = error_for(dir.path(), "corrupt.jpg", &corrupt);
        assert!(corrupt.contains("cannot"), "{corrupt}");

        let empty = error_for(dir.path(), "empty.jpg", b"");
        assert!(empty.contains("empty file"), "{empty}");

        // The extension does not decide the format: a PNG named .jpg decodes, a text file named
        // .png is refused.
        let png_as_jpg = dir.path().join("really-a-png.jpg");
        std::fs::write(&png_as_jpg, encoded(image::ImageFormat::Png)).unwrap();
        assert_eq!(load_rgb(&png_as_jpg).unwrap().dimensions(), (64, 48));
        let text = error_for(dir.path(), "notes.png", b"label: iPod\n");
        assert!(text.contains("cannot decode image header"), "{text}");

        // A decompression bomb: a valid PNG header announcing 20000 x 20000 pixels.
        let mut bomb = encoded(image::ImageFormat::Png);
        bomb[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let bomb = error_for(dir.path(), "bomb.png", &bomb);
        assert!(bomb.contains("20000x20000 exceeds"), "{bomb}");
    }
}
