//! The attack stage as tensor operations, where the model runs: a variant whose drawing does
//! not depend on the image (drawn on the model input, at fixed places) is rasterised once into
//! an overlay ([`Flat`]), and composited onto whole batches of clean model inputs on the
//! model's device — sRGB decode, composite in linear light, encode through the renderer's own
//! 16-bit table, normalisation — so a fast accelerator is not held back by drawing the same
//! label on the CPU for every photo.
//!
//! Inputs: the run's variants and its transform. Outputs: [`Overlays`] (plain data, shared by
//! the image workers, which then send clean inputs only) and, on the forward thread,
//! [`DeviceOverlays::composite`]: normalised attacked inputs and each one's changed-pixel count.
//! The pixels equal [`crate::attack::render`]'s exactly for a variant of one shape (a label
//! with its text, a word) and within one level where shapes overlap (`tests/attack.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::render::{flatten, srgb_tables, Flat};
use super::spec::{Stage, Variant};
use crate::preprocess::PreprocessCfg;

/// The overlay of `variant` at `width × height` if its drawing is the same on every image: drawn
/// on the model input ([`Stage::ModelInput`]) and independent of the per-image seed and the
/// object box (checked by drawing it with two different ones).
pub fn image_independent(variant: &Variant, width: u32, height: u32) -> Option<Flat> {
    if variant.stage != Stage::ModelInput {
        return None;
    }
    let a = flatten(variant, width, height, 1, None);
    let b = flatten(
        variant,
        width,
        height,
        0x005E_ED0F_0A7A,
        Some([0.13, 0.21, 0.58, 0.87]),
    );
    (a == b).then_some(a)
}

/// The overlays of a run's image-independent variants, by variant name.
#[derive(Debug, Default)]
pub struct Overlays {
    index: HashMap<String, usize>,
    flats: Vec<Flat>,
}

impl Overlays {
    /// The overlays of those of `variants` that are image-independent at `cfg`'s model input.
    pub fn for_variants<'a>(
        variants: impl IntoIterator<Item = &'a Arc<Variant>>,
        cfg: &PreprocessCfg,
    ) -> Overlays {
        let (h, w) = cfg.size;
        let mut o = Overlays::default();
        for v in variants {
            if o.index.contains_key(&v.name) {
                continue;
            }
            if let Some(flat) = image_independent(v, w, h) {
                o.index.insert(v.name.clone(), o.flats.len());
                o.flats.push(flat);
            }
        }
        o
    }

    /// The overlay index of the variant named `name`, if it has one.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// How many variants have an overlay.
    pub fn len(&self) -> usize {
        self.flats.len()
    }

    /// Whether no variant has one.
    pub fn is_empty(&self) -> bool {
        self.flats.is_empty()
    }
}

/// [`Overlays`] uploaded to a device with the tables and the normalisation of a transform.
#[derive(Debug)]
pub struct DeviceOverlays {
    rgb: Tensor,
    keep: Tensor,
    touched: Tensor,
    decode: Tensor,
    encode: Tensor,
    mean: Tensor,
    std: Tensor,
    device: Device,
}

impl DeviceOverlays {
    /// Uploads `overlays` (at least one) to `device`, normalising as `cfg` does.
    pub fn new(overlays: &Overlays, cfg: &PreprocessCfg, device: Device) -> DeviceOverlays {
        assert!(!overlays.is_empty(), "no overlays to upload");
        let f = &overlays.flats[0];
        let (h, w) = (f.height as i64, f.width as i64);
        let v = overlays.flats.len() as i64;
        let rgb: Vec<f32> = overlays
            .flats
            .iter()
            .flat_map(|f| f.rgb.iter().copied())
            .collect();
        let alpha: Vec<f32> = overlays
            .flats
            .iter()
            .flat_map(|f| f.alpha.iter().copied())
            .collect();
        let alpha = Tensor::from_slice(&alpha).view([v, h, w, 1]);
        let (dec, enc) = srgb_tables();
        let (mean, std) = (cfg.mean_f32(), cfg.std_f32());
        DeviceOverlays {
            rgb: Tensor::from_slice(&rgb)
                .view([v, h, w, 3])
                .to_device(device),
            // 1 − alpha exactly as the renderer computes it, in f32 on the CPU.
            keep: (1.0f64 - &alpha).to_kind(Kind::Float).to_device(device),
            touched: alpha.gt(0.0).to_device(device),
            decode: Tensor::from_slice(&dec[..]).to_device(device),
            encode: Tensor::from_slice(enc).to_device(device),
            mean: Tensor::from_slice(&mean)
                .view([1, 3, 1, 1])
                .to_device(device),
            std: Tensor::from_slice(&std)
                .view([1, 3, 1, 1])
                .to_device(device),
            device,
        }
    }

    /// Composites overlay `ids[i]` onto clean model input `i` (`clean`: `[B, H, W, 3]` u8, any
    /// device): the normalised attacked inputs `[B, 3, H, W]` f32 on the device, and each one's
    /// number of changed pixels.
    pub fn composite(&self, clean: &Tensor, ids: &[i64]) -> (Tensor, Vec<i64>) {
        let idx = Tensor::from_slice(ids).to_device(self.device);
        // The clean bytes are a quarter of the normalised floats' size.
        let src = crate::model::upload(clean, self.device);
        let rgb = self.rgb.index_select(0, &idx);
        let keep = self.keep.index_select(0, &idx);
        let touched = self.touched.index_select(0, &idx);
        let flat_src = src.flatten(0, -1).to_kind(Kind::Int64);
        let linear = self.decode.index_select(0, &flat_src).view_as(&src);
        // encode(rgb + decode(src) · (1 − alpha)), rounded as the renderer's table lookup.
        let mixed = &rgb + linear * &keep;
        let code = (mixed * 65535.0f64 + 0.5f64)
            .to_kind(Kind::Int64)
            .clamp(0, 65535);
        let encoded = self
            .encode
            .index_select(0, &code.flatten(0, -1))
            .view_as(&src);
        let out = encoded.where_self(&touched, &src);
        let changed = out
            .ne_tensor(&src)
            .any_dim(-1, false)
            .sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Int64)
            .to_device(Device::Cpu);
        let changed = Vec::<i64>::try_from(&changed).expect("counts");
        let x = out.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0f64;
        let x = ((x - &self.mean) / &self.std).contiguous();
        (x, changed)
    }
}

/// A clean model input as the `[H, W, 3]` u8 tensor [`DeviceOverlays::composite`] takes.
pub fn image_tensor(img: &image::RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw()).view([h as i64, w as i64, 3])
}
