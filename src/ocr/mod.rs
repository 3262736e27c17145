//! A trained scene-text detector: PaddleOCR's PP-OCRv4 detector (a DBNet with a PP-LCNetV3
//! backbone; Apache-2.0), read from its ONNX export and run on libtorch, on the CPU or the GPU.
//!
//! This module owns where the model file is and that it is the expected one ([`model_path`],
//! [`MODEL_SHA256`]), the detector's input rules as PaddleOCR's `DetResizeForTest` and
//! `NormalizeImage` apply them ([`DetectorSettings`]: the long side capped at `limit_side_len`,
//! sides rounded to multiples of 32, bilinear resize, BGR channel order, ImageNet mean and std),
//! and [`TextDetector::detect`]: probability map → boxes ([`db`]) → image coordinates.
//! [`onnx`] reads the file, [`graph`] runs it.
//!
//! The model ships inside the `rapidocr-onnxruntime` wheel; `scripts/setup.sh` extracts it into
//! `.cache/ocr/` (it is not part of this project).

pub mod db;
pub mod graph;
pub mod measure;
pub mod onnx;

use std::path::{Path, PathBuf};

use image::RgbImage;
use sha2::Digest;
use tch::{Device, Kind, Tensor};

pub use db::{DbParams, ProbMap, TextBox};

/// The model's file name.
pub const MODEL_FILE: &str = "ch_PP-OCRv4_det_infer.onnx";
/// What the model is, as outputs and provenance name it.
pub const MODEL_NAME: &str = "PP-OCRv4 det (PaddleOCR, via rapidocr-onnxruntime 1.4.4)";
/// The sha256 of `rapidocr_onnxruntime-1.4.4`'s `models/ch_PP-OCRv4_det_infer.onnx`.
pub const MODEL_SHA256: &str = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9";

/// Where the model is read from: `$TYPOCLIP_OCR_MODEL`, else `.cache/ocr/` in the source
/// checkout (where set-up puts it).
pub fn model_path() -> PathBuf {
    std::env::var_os("TYPOCLIP_OCR_MODEL")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/ocr")
                .join(MODEL_FILE)
        })
}

/// The detector's input rules and post-processing (PaddleOCR's defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectorSettings {
    /// The longer side is scaled down to at most this (`det_limit_side_len`, 960; images are
    /// never scaled up).
    pub limit_side_len: u32,
    /// Post-processing.
    pub db: DbParams,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            limit_side_len: 960,
            db: DbParams::default(),
        }
    }
}

/// The network's input size for an image: scaled so the long side is at most
/// `limit_side_len`, each side then rounded to a multiple of 32 (at least 32).
pub fn input_size(width: u32, height: u32, limit_side_len: u32) -> (u32, u32) {
    let long = width.max(height) as f64;
    let ratio = if long > limit_side_len as f64 {
        limit_side_len as f64 / long
    } else {
        1.0
    };
    // PaddleOCR: `int(h * ratio)`, then Python's `round` (ties to even) of a 32nd.
    let round32 = |v: f64| ((((v * ratio).floor()) / 32.0).round_ties_even() as u32 * 32).max(32);
    (round32(width as f64), round32(height as f64))
}

/// ImageNet's mean and std, in the order PaddleOCR applies them to its BGR arrays.
const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The loaded detector.
#[derive(Debug)]
pub struct TextDetector {
    graph: graph::Graph,
    /// Input rules and post-processing.
    pub settings: DetectorSettings,
}

// SAFETY: the graph's tensors are constants written once at load and only read afterwards;
// libtorch's operators may read one tensor from several threads at once.
unsafe impl Sync for TextDetector {}

/// What the detector found in one image.
#[derive(Debug, Clone)]
pub struct Detection {
    /// Text boxes in image pixels.
    pub boxes: Vec<TextBox>,
    /// The probability map at the network's resolution.
    pub map: ProbMap,
}

impl Detection {
    /// The fraction of the image's pixels inside a box.
    pub fn text_area(&self, width: u32, height: u32) -> f64 {
        let mask = db::boxes_mask(&self.boxes, width, height);
        let n = mask.pixels().filter(|p| p[0] > 0).count();
        n as f64 / (width as f64 * height as f64).max(1.0)
    }

    /// The highest box score (0 when there is no box).
    pub fn max_score(&self) -> f32 {
        self.boxes.iter().map(|b| b.score).fold(0.0, f32::max)
    }
}

impl TextDetector {
    /// Loads the model at `path`, checking its sha256 against [`MODEL_SHA256`].
    pub fn load(
        path: &Path,
        settings: DetectorSettings,
        device: Device,
    ) -> Result<TextDetector, String> {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "{}: cannot read the text detector ({e}); scripts/setup.sh extracts it from the rapidocr-onnxruntime wheel, or set TYPOCLIP_OCR_MODEL",
                path.display()
            )
        })?;
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        if sha != MODEL_SHA256 {
            return Err(format!(
                "{}: sha256 {sha} is not PP-OCRv4's detector ({MODEL_SHA256}): the file is corrupt or another model",
                path.display()
            ));
        }
        Self::from_bytes(path, &bytes, settings, device)
    }

    /// Compiles a model from its bytes without the checksum (tests build small graphs).
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        settings: DetectorSettings,
        device: Device,
    ) -> Result<TextDetector, String> {
        let model = onnx::read_model(path, bytes)?;
        let graph = graph::Graph::compile(&model, device)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TextDetector { graph, settings })
    }

    /// The device the detector runs on.
    pub fn device(&self) -> Device {
        self.graph.device()
    }

    /// The network input for an image: `[1, 3, H, W]`, resized, BGR, normalised.
    pub fn input(&self, image: &RgbImage) -> Tensor {
        let (w, h) = image.dimensions();
        let (rw, rh) = input_size(w, h, self.settings.limit_side_len);
        let x = Tensor::from_slice(image.as_raw())
            .to_device(self.device())
            .reshape([h as i64, w as i64, 3])
            .permute([2, 0, 1])
            .unsqueeze(0)
            .to_kind(Kind::Float);
        let x = if (rw, rh) == (w, h) {
            x
        } else {
            x.upsample_bilinear2d([rh as i64, rw as i64], false, None, None)
        };
        let bgr = x.flip([1]) / 255.0;
        let mean = Tensor::from_slice(&MEAN)
            .to_kind(Kind::Float)
            .to_device(self.device());
        let std = Tensor::from_slice(&STD)
            .to_kind(Kind::Float)
            .to_device(self.device());
        (bgr - mean.view([1, 3, 1, 1])) / std.view([1, 3, 1, 1])
    }

    /// The probability map for a prepared input `[1, 3, H, W]`.
    pub fn probability(&self, input: &Tensor) -> Tensor {
        tch::no_grad(|| self.graph.forward(input))
    }

    /// Text boxes in one image.
    pub fn detect(&self, image: &RgbImage) -> Detection {
        let input = self.input(image);
        let p = self.probability(&input);
        let size = p.size();
        let (mh, mw) = (size[2] as u32, size[3] as u32);
        let values: Vec<f32> =
            Vec::<f32>::try_from(p.to_device(Device::Cpu).flatten(0, -1)).expect("a float map");
        let map = ProbMap {
            width: mw,
            height: mh,
            values,
        };
        let boxes = db::boxes_from_map(&map, &self.settings.db, image.dimensions());
        Detection { boxes, map }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sizes_follow_paddleocr() {
        assert_eq!(input_size(322, 322, 960), (320, 320));
        assert_eq!(input_size(384, 384, 960), (384, 384));
        assert_eq!(input_size(500, 375, 960), (512, 384));
        assert_eq!(input_size(2000, 1000, 960), (960, 480));
        assert_eq!(input_size(10, 10, 960), (32, 32));
        // 336 / 32 = 10.5 rounds to even.
        assert_eq!(input_size(336, 208, 960), (320, 192));
    }

    #[test]
    fn a_missing_or_wrong_model_file_is_one_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.onnx");
        let e = TextDetector::load(&missing, DetectorSettings::default(), Device::Cpu).unwrap_err();
        assert!(
            e.starts_with(&missing.display().to_string()) && !e.contains('\n'),
            "{e}"
        );
        let corrupt = dir.path().join("det.onnx");
        std::fs::write(&corrupt, b"not a model").unwrap();
        let e = TextDetector::load(&corrupt, DetectorSettings::default(), Device::Cpu).unwrap_err();
        assert!(
            e.contains("det.onnx: sha256") && e.contains("corrupt"),
            "{e}"
        );
    }
}
