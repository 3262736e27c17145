//! Rendering a [`Variant`] onto an image. Pure: image + variant + seed in, [`Rendered`] out.
//!
//! Glyph outlines (ab_glyph) and rectangles are flattened and scan-converted with exact area
//! coverage (ab_glyph_rasterizer), so edges are anti-aliased at any rotation. Each layer (each
//! instance of it: a grid cell, a scatter mark) is painted into a premultiplied linear-light
//! RGBA buffer (shadow, paper, border, glyph outline, glyph fill), which is then composited
//! onto the image with the layer's opacity in linear light (sRGB decoded through a table,
//! encoded back through a 16-bit table). Pixels no layer touches are never rewritten; the mask
//! is computed by comparing the result with the input, so it is exactly the changed pixels.

use std::sync::OnceLock;

use ab_glyph::{Font as _, OutlineCurve, Point};
use ab_glyph_rasterizer::Rasterizer;
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fonts::FontStack;
use super::spec::{
    Align, Layer, Place, Placement, Rgb, Shadow, Size, Stage, Stroke, TextStyle, Variant,
};

/// An attacked image.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The attacked image (same size as the input).
    pub image: RgbImage,
    /// 255 where the attacked image differs from the input, 0 elsewhere.
    pub mask: GrayImage,
    /// Number of changed pixels.
    pub changed: u64,
    /// Changed pixels / all pixels (0 for an empty image): Distill's `avg_img_l0_norm_diff`
    /// for one image.
    pub l0_fraction: f64,
}

/// An object's bounding box as fractions of the source image: `[x0, y0, x1, y1]`.
pub type ObjectBox = [f32; 4];

/// A variant rendered for a model's input transform.
#[derive(Debug, Clone)]
pub struct ModelRender {
    /// The clean model input: [`crate::preprocess::model_input`] of the source.
    pub clean_input: RgbImage,
    /// The attacked model input.
    pub attacked_input: RgbImage,
    /// The attack as drawn at its stage: on the source image for [`Stage::Source`] (mask and L0
    /// over the source), on the clean model input for [`Stage::ModelInput`].
    pub rendered: Rendered,
}

/// Draws `variant` on `image`. `seed` (e.g. the image's index) is mixed with the spec's seed
/// for random placements and scatter; the same inputs always give the same pixels.
/// `object_box` is used by `placement = "box"` (the image centre when `None`).
pub fn render(
    image: &RgbImage,
    variant: &Variant,
    seed: u64,
    object_box: Option<ObjectBox>,
) -> Rendered {
    let (w, h) = image.dimensions();
    let mut out = image.clone();
    let mut mask = GrayImage::new(w, h);
    if w == 0 || h == 0 {
        return Rendered {
            image: out,
            mask,
            changed: 0,
            l0_fraction: 0.0,
        };
    }
    let mut ctx = Ctx {
        img: &mut out,
        touched: Vec::new(),
        raster: Rasterizer::new(0, 0),
        flat: None,
    };
    draw_variant(&mut ctx, variant, seed, object_box);
    let touched = std::mem::take(&mut ctx.touched);
    let mut changed = 0u64;
    let (src, dst) = (image.as_raw(), out.as_raw());
    let mbuf: &mut [u8] = &mut mask;
    for r in touched {
        for y in r.y0 as usize..r.y1 as usize {
            let row = y * w as usize;
            for x in r.x0 as usize..r.x1 as usize {
                let i = row + x;
                if mbuf[i] == 0 && src[3 * i..3 * i + 3] != dst[3 * i..3 * i + 3] {
                    mbuf[i] = 255;
                    changed += 1;
                }
            }
        }
    }
    Rendered {
        image: out,
        mask,
        changed,
        l0_fraction: changed as f64 / (w as f64 * h as f64),
    }
}

/// A variant drawn once onto nothing: its shapes composed in order into one premultiplied
/// linear-light overlay, so that drawing it on an image of the same size is, per pixel with
/// `alpha > 0`, `encode(rgb + decode(pixel) · (1 − alpha))` ([`Flat::apply`]; pixels with
/// `alpha = 0` keep their bytes). For a variant of one shape that is exactly what [`render`]
/// computes; where shapes overlap [`render`] rounds to 8 bits between them, so the two differ
/// by at most one level there. What the device composite of a sweep draws from
/// ([`crate::attack::composite`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Flat {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Premultiplied linear-light colour, opacity included, `[H, W, 3]` row-major.
    pub rgb: Vec<f32>,
    /// Coverage (opacity included), `[H, W]`.
    pub alpha: Vec<f32>,
}

/// [`Flat`] of `variant` at `width × height`, with the same `seed` and `object_box` as
/// [`render`] takes.
pub fn flatten(
    variant: &Variant,
    width: u32,
    height: u32,
    seed: u64,
    object_box: Option<ObjectBox>,
) -> Flat {
    let n = width as usize * height as usize;
    let mut flat = Flat {
        width,
        height,
        rgb: vec![0.0; 3 * n],
        alpha: vec![0.0; n],
    };
    if n == 0 {
        return flat;
    }
    let mut canvas = RgbImage::new(width, height);
    let mut ctx = Ctx {
        img: &mut canvas,
        touched: Vec::new(),
        raster: Rasterizer::new(0, 0),
        flat: Some(&mut flat),
    };
    draw_variant(&mut ctx, variant, seed, object_box);
    drop(ctx);
    flat
}

/// Draws every layer of `variant`, bottom first, each with its own random stream from the
/// spec's seed and `seed`.
fn draw_variant(ctx: &mut Ctx, variant: &Variant, seed: u64, object_box: Option<ObjectBox>) {
    let mix = splitmix(variant.seed ^ splitmix(seed));
    for (li, layer) in variant.layers.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(splitmix(mix ^ li as u64));
        draw_layer(ctx, layer, &mut rng, object_box);
    }
}

/// The sRGB ↔ linear tables the renderer composites with: 256 decoded values and the 65 536
/// encoded bytes indexed by `⌊linear · 65535 + 0.5⌋` (for the device composite, which must
/// round exactly as [`render`] does).
pub fn srgb_tables() -> (&'static [f32; 256], &'static [u8]) {
    (decode_lut(), encode_lut())
}

impl Flat {
    /// Draws the overlay on `image` (same size): the attacked image and its changed pixels, as
    /// [`render`] returns them.
    pub fn apply(&self, image: &RgbImage) -> Rendered {
        assert_eq!(
            image.dimensions(),
            (self.width, self.height),
            "overlay size"
        );
        let (dec, enc) = srgb_tables();
        let mut out = image.clone();
        let mut mask = GrayImage::new(self.width, self.height);
        let mut changed = 0u64;
        let (src, dst) = (image.as_raw(), &mut *out);
        let mbuf: &mut [u8] = &mut mask;
        for (i, &a) in self.alpha.iter().enumerate() {
            if a <= 0.0 {
                continue;
            }
            let k = 1.0 - a;
            for c in 0..3 {
                dst[3 * i + c] =
                    encode(enc, self.rgb[3 * i + c] + dec[src[3 * i + c] as usize] * k);
            }
            if src[3 * i..3 * i + 3] != dst[3 * i..3 * i + 3] {
                mbuf[i] = 255;
                changed += 1;
            }
        }
        let total = self.width as f64 * self.height as f64;
        Rendered {
            image: out,
            mask,
            changed,
            l0_fraction: if total > 0.0 {
                changed as f64 / total
            } else {
                0.0
            },
        }
    }
}

/// Renders at the variant's stage for a model trained with the transform `cfg`: on the source
/// then brought to the model's input ([`Stage::Source`]), or on the clean model input
/// ([`Stage::ModelInput`]; `object_box` is mapped through the resize, crop or padding). Model
/// inputs are [`crate::preprocess::model_input`]. An empty source gives black, unattacked
/// inputs.
pub fn render_for_model(
    source: &RgbImage,
    variant: &Variant,
    cfg: &crate::preprocess::PreprocessCfg,
    seed: u64,
    object_box: Option<ObjectBox>,
) -> ModelRender {
    let (h, w) = cfg.size;
    if source.width() == 0 || source.height() == 0 || h == 0 || w == 0 {
        // Nothing to resize: an all-black input, unattacked.
        let blank = RgbImage::new(w, h);
        return ModelRender {
            clean_input: blank.clone(),
            attacked_input: blank,
            rendered: render(source, variant, seed, object_box),
        };
    }
    let clean_input = crate::preprocess::model_input(source, cfg);
    render_for_model_with_input(source, clean_input, variant, cfg, seed, object_box)
}

/// [`render_for_model`] with the clean model input already made
/// ([`crate::preprocess::model_input`] of `source` for `cfg`), so that many variants of one
/// image share one decode and one resize.
pub fn render_for_model_with_input(
    source: &RgbImage,
    clean_input: RgbImage,
    variant: &Variant,
    cfg: &crate::preprocess::PreprocessCfg,
    seed: u64,
    object_box: Option<ObjectBox>,
) -> ModelRender {
    match variant.stage {
        Stage::Source => {
            let rendered = render(source, variant, seed, object_box);
            let attacked_input = crate::preprocess::model_input(&rendered.image, cfg);
            ModelRender {
                clean_input,
                attacked_input,
                rendered,
            }
        }
        Stage::ModelInput => {
            let b = object_box.map(|b| map_box(b, source.width(), source.height(), cfg));
            let rendered = render(&clean_input, variant, seed, b);
            ModelRender {
                attacked_input: rendered.image.clone(),
                clean_input,
                rendered,
            }
        }
    }
}

/// A source-image box (fractions) → fractions of the model input after `cfg`'s resize and
/// crop (or padding).
fn map_box(b: ObjectBox, w: u32, h: u32, cfg: &crate::preprocess::PreprocessCfg) -> ObjectBox {
    let (out_h, out_w) = cfg.size;
    if w == 0 || h == 0 || out_h == 0 || out_w == 0 {
        return b;
    }
    let (rw, rh, left, top) = if crate::preprocess::is_clip_geometry(cfg) {
        let n_px = out_h;
        let (rw, rh) = crate::preprocess::resized_size(w, h, n_px);
        // torchvision CenterCrop: offsets int(round((size - n_px) / 2)).
        let left = ((rw as f64 - n_px as f64) / 2.0).round();
        let top = ((rh as f64 - n_px as f64) / 2.0).round();
        (rw, rh, left, top)
    } else {
        crate::preprocess::input_geometry(w, h, cfg)
    };
    let (left, top) = (left as f32, top as f32);
    let (nw, nh) = (out_w as f32, out_h as f32);
    let fx = |x: f32| ((x * rw as f32 - left) / nw).clamp(0.0, 1.0);
    let fy = |y: f32| ((y * rh as f32 - top) / nh).clamp(0.0, 1.0);
    [fx(b[0]), fy(b[1]), fx(b[2]), fy(b[3])]
}

/// SplitMix64's finaliser: the seed mixer of the renderer (and of the toy's training streams).
pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

// ---------------------------------------------------------------------------------------------
// sRGB ↔ linear.

fn decode_lut() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| {
        let mut t = [0f32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            let c = i as f64 / 255.0;
            *v = if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            } as f32;
        }
        t
    })
}

const ENC_BITS: usize = 16;
const ENC_SIZE: usize = 1 << ENC_BITS;

fn encode_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        (0..ENC_SIZE)
            .map(|i| {
                let l = i as f64 / (ENC_SIZE - 1) as f64;
                let c = if l <= 0.003_130_8 {
                    l * 12.92
                } else {
                    1.055 * l.powf(1.0 / 2.4) - 0.055
                };
                (c * 255.0).round().clamp(0.0, 255.0) as u8
            })
            .collect()
    })
}

#[inline]
fn encode(lut: &[u8], l: f32) -> u8 {
    let i = (l * (ENC_SIZE - 1) as f32 + 0.5) as usize;
    lut[i.min(ENC_SIZE - 1)]
}

fn lin(c: Rgb) -> [f32; 3] {
    let d = decode_lut();
    [d[c[0] as usize], d[c[1] as usize], d[c[2] as usize]]
}

// ---------------------------------------------------------------------------------------------
// Geometry and rasterisation.

#[derive(Debug, Clone, Copy)]
struct IRect {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

/// Local frame (origin at the block centre, y down) → image: rotate then translate.
#[derive(Clone, Copy)]
struct Xf {
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
}

impl Xf {
    fn new(cx: f32, cy: f32, rotation_deg: f32) -> Self {
        let r = rotation_deg.to_radians();
        Xf {
            cx,
            cy,
            cos: r.cos(),
            sin: r.sin(),
        }
    }
    #[inline]
    fn apply(&self, x: f32, y: f32) -> Point {
        Point {
            x: self.cx + x * self.cos + y * self.sin,
            y: self.cy - x * self.sin + y * self.cos,
        }
    }
}

/// An axis-aligned rectangle in the local frame.
#[derive(Debug, Clone, Copy)]
struct FRect {
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
}

impl FRect {
    fn union(self, o: FRect) -> FRect {
        FRect {
            x0: self.x0.min(o.x0),
            y0: self.y0.min(o.y0),
            x1: self.x1.max(o.x1),
            y1: self.y1.max(o.y1),
        }
    }
    fn grow(self, d: f32) -> FRect {
        FRect {
            x0: self.x0 - d,
            y0: self.y0 - d,
            x1: self.x1 + d,
            y1: self.y1 + d,
        }
    }
    fn offset(self, dx: f32, dy: f32) -> FRect {
        FRect {
            x0: self.x0 + dx,
            y0: self.y0 + dy,
            x1: self.x1 + dx,
            y1: self.y1 + dy,
        }
    }
    /// The axis-aligned bounds of this rectangle rotated by `xf` (relative to `xf`'s centre).
    fn rotated_bounds(self, rot: &Xf) -> FRect {
        let xf = Xf {
            cx: 0.0,
            cy: 0.0,
            ..*rot
        };
        let pts = [
            xf.apply(self.x0, self.y0),
            xf.apply(self.x1, self.y0),
            xf.apply(self.x0, self.y1),
            xf.apply(self.x1, self.y1),
        ];
        FRect {
            x0: pts.iter().map(|p| p.x).fold(f32::INFINITY, f32::min),
            y0: pts.iter().map(|p| p.y).fold(f32::INFINITY, f32::min),
            x1: pts.iter().map(|p| p.x).fold(f32::NEG_INFINITY, f32::max),
            y1: pts.iter().map(|p| p.y).fold(f32::NEG_INFINITY, f32::max),
        }
    }
}

struct Ctx<'a> {
    img: &'a mut RgbImage,
    touched: Vec<IRect>,
    raster: Rasterizer,
    /// When set, shapes are composed into this overlay instead of onto `img` ([`flatten`]).
    flat: Option<&'a mut Flat>,
}

/// A coverage raster over a region of the image (which may extend past the image).
struct Cover {
    x0: i64,
    y0: i64,
    w: usize,
    h: usize,
}

/// Scan-converts line segments (image coordinates) into `raster` over `c`. The raster is two
/// columns wider than the region; segments are clipped to it horizontally (the parts outside
/// become vertical edges on the border, which keeps the coverage exact inside).
struct Scan<'r> {
    raster: &'r mut Rasterizer,
    ox: f32,
    oy: f32,
    xmax: f32,
}

impl Scan<'_> {
    fn begin<'r>(raster: &'r mut Rasterizer, c: &Cover) -> Scan<'r> {
        raster.reset(c.w + 2, c.h);
        Scan {
            raster,
            ox: c.x0 as f32,
            oy: c.y0 as f32,
            xmax: c.w as f32 + 1.0 - 1e-3,
        }
    }

    fn line(&mut self, a: Point, b: Point) {
        let a = Point {
            x: a.x - self.ox,
            y: a.y - self.oy,
        };
        let b = Point {
            x: b.x - self.ox,
            y: b.y - self.oy,
        };
        if !(a.x.is_finite() && a.y.is_finite() && b.x.is_finite() && b.y.is_finite()) {
            return;
        }
        let (lo, hi) = (0.0f32, self.xmax);
        let mut ts = [0.0f32, 1.0, 2.0, 2.0];
        let mut n = 2;
        let dx = b.x - a.x;
        if dx != 0.0 {
            for edge in [lo, hi] {
                let t = (edge - a.x) / dx;
                if t > 0.0 && t < 1.0 {
                    ts[n] = t;
                    n += 1;
                }
            }
        }
        let ts = &mut ts[..n];
        ts.sort_by(|p, q| p.total_cmp(q));
        for k in 0..n - 1 {
            let (t0, t1) = (ts[k], ts[k + 1]);
            let p0 = Point {
                x: (a.x + dx * t0).clamp(lo, hi),
                y: a.y + (b.y - a.y) * t0,
            };
            let p1 = Point {
                x: (a.x + dx * t1).clamp(lo, hi),
                y: a.y + (b.y - a.y) * t1,
            };
            self.raster.draw_line(p0, p1);
        }
    }

    fn quad(&mut self, p0: Point, p1: Point, p2: Point) {
        let dev = ((p0.x - 2.0 * p1.x + p2.x).powi(2) + (p0.y - 2.0 * p1.y + p2.y).powi(2)).sqrt();
        let n = ((dev / 0.4).sqrt().ceil() as usize).clamp(1, 128);
        let mut prev = p0;
        for i in 1..=n {
            let t = i as f32 / n as f32;
            let u = 1.0 - t;
            let p = Point {
                x: u * u * p0.x + 2.0 * u * t * p1.x + t * t * p2.x,
                y: u * u * p0.y + 2.0 * u * t * p1.y + t * t * p2.y,
            };
            self.line(prev, p);
            prev = p;
        }
    }

    fn cubic(&mut self, p0: Point, p1: Point, p2: Point, p3: Point) {
        let d1 = ((p0.x - 2.0 * p1.x + p2.x).powi(2) + (p0.y - 2.0 * p1.y + p2.y).powi(2)).sqrt();
        let d2 = ((p1.x - 2.0 * p2.x + p3.x).powi(2) + (p1.y - 2.0 * p2.y + p3.y).powi(2)).sqrt();
        let n = ((3.0 * d1.max(d2) / 0.4).sqrt().ceil() as usize).clamp(1, 128);
        let mut prev = p0;
        for i in 1..=n {
            let t = i as f32 / n as f32;
            let u = 1.0 - t;
            let (a, b, c, d) = (u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t);
            let p = Point {
                x: a * p0.x + b * p1.x + c * p2.x + d * p3.x,
                y: a * p0.y + b * p1.y + c * p2.y + d * p3.y,
            };
            self.line(prev, p);
            prev = p;
        }
    }

    fn rect(&mut self, r: FRect, xf: &Xf, reverse: bool) {
        let mut p = [
            xf.apply(r.x0, r.y0),
            xf.apply(r.x1, r.y0),
            xf.apply(r.x1, r.y1),
            xf.apply(r.x0, r.y1),
        ];
        if reverse {
            p.reverse();
        }
        for i in 0..4 {
            self.line(p[i], p[(i + 1) % 4]);
        }
    }

    /// Coverage per region pixel, clamped to [0, 1] (the guard columns dropped).
    fn finish(self, c: &Cover) -> Vec<f32> {
        let rw = c.w + 2;
        let mut out = vec![0f32; c.w * c.h];
        let (mut x, mut o) = (0usize, 0usize);
        self.raster.for_each_pixel(|_, a| {
            if x < c.w {
                out[o] = a.min(1.0);
                o += 1;
            }
            x += 1;
            if x == rw {
                x = 0;
            }
        });
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Text layout.

struct PlacedGlyph {
    font: usize,
    id: ab_glyph::GlyphId,
    /// Pen position (left, baseline) in the block frame (origin top-left, y down).
    x: f32,
    y: f32,
    scale: f32,
}

struct Block {
    glyphs: Vec<PlacedGlyph>,
    width: f32,
    height: f32,
    /// Ink bounds in the block frame.
    ink: Option<FRect>,
}

fn layout(style: &TextStyle, size: f32) -> Block {
    let fonts: &FontStack = &style.fonts;
    let primary = fonts.primary();
    let s0 = primary.units_to_px(size);
    let ab = primary.ab();
    let ascent = ab.ascent_unscaled() * s0;
    let descent = ab.descent_unscaled() * s0;
    let line_h = (ascent - descent + ab.line_gap_unscaled() * s0) * style.line_spacing;
    let spacing = style.letter_spacing * size;
    let lines: Vec<&str> = style.text.split('\n').collect();
    let mut glyphs = Vec::new();
    let mut widths = Vec::with_capacity(lines.len());
    let mut starts = Vec::with_capacity(lines.len());
    for (li, line) in lines.iter().enumerate() {
        let baseline = ascent + li as f32 * line_h;
        let start = glyphs.len();
        let mut pen = 0.0f32;
        let mut prev: Option<(usize, ab_glyph::GlyphId)> = None;
        for ch in line.chars() {
            let ch = if ch == '\t' { ' ' } else { ch };
            let Some((fi, id)) = fonts.lookup(ch) else {
                continue;
            };
            let f = &fonts.fonts[fi];
            let s = f.units_to_px(size);
            if let Some((pf, pid)) = prev {
                if pf == fi {
                    pen += f.ab().kern_unscaled(pid, id) * s;
                }
                pen += spacing;
            }
            glyphs.push(PlacedGlyph {
                font: fi,
                id,
                x: pen,
                y: baseline,
                scale: s,
            });
            pen += f.ab().h_advance_unscaled(id) * s;
            prev = Some((fi, id));
        }
        widths.push(pen.max(0.0));
        starts.push(start);
    }
    let width = widths.iter().cloned().fold(0.0, f32::max);
    for (li, &start) in starts.iter().enumerate() {
        let end = starts.get(li + 1).copied().unwrap_or(glyphs.len());
        let dx = match style.align {
            Align::Left => 0.0,
            Align::Center => (width - widths[li]) / 2.0,
            Align::Right => width - widths[li],
        };
        for g in &mut glyphs[start..end] {
            g.x += dx;
        }
    }
    let height = ascent - descent + (lines.len().saturating_sub(1)) as f32 * line_h;
    let mut ink: Option<FRect> = None;
    for g in &glyphs {
        let f = &fonts.fonts[g.font];
        if let Some(o) = f.ab().outline(g.id) {
            let r = FRect {
                x0: g.x + o.bounds.min.x * g.scale,
                x1: g.x + o.bounds.max.x * g.scale,
                y0: g.y - o.bounds.max.y * g.scale,
                y1: g.y - o.bounds.min.y * g.scale,
            };
            ink = Some(ink.map_or(r, |i| i.union(r)));
        }
    }
    Block {
        glyphs,
        width,
        height,
        ink,
    }
}

/// Draws the block's glyph outlines, centred at the local origin, through `xf`.
fn scan_glyphs(scan: &mut Scan, style: &TextStyle, block: &Block, xf: &Xf) {
    let (bx, by) = (block.width / 2.0, block.height / 2.0);
    for g in &block.glyphs {
        let Some(o) = style.fonts.fonts[g.font].ab().outline(g.id) else {
            continue;
        };
        let tp = |p: Point| xf.apply(g.x + p.x * g.scale - bx, g.y - p.y * g.scale - by);
        for c in &o.curves {
            match *c {
                OutlineCurve::Line(a, b) => scan.line(tp(a), tp(b)),
                OutlineCurve::Quad(a, b, c) => scan.quad(tp(a), tp(b), tp(c)),
                OutlineCurve::Cubic(a, b, c, d) => scan.cubic(tp(a), tp(b), tp(c), tp(d)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layers.

/// One drawable instance: text block (and label paper) centred at the local origin.
struct Shape<'a> {
    style: &'a TextStyle,
    block: Block,
    rotation: f32,
    paper: Option<FRect>,
    paper_color: Rgb,
    border: Option<Stroke>,
    shadow: Option<(Shadow, f32)>,
    /// Everything drawn, in the local frame.
    extent: FRect,
}

fn make_shape<'a>(
    style: &'a TextStyle,
    size: f32,
    rotation: f32,
    label: Option<(f32, Rgb, Option<Stroke>, Option<Shadow>)>,
) -> Shape<'a> {
    let block = layout(style, size);
    let (bx, by) = (block.width / 2.0, block.height / 2.0);
    let logical = FRect {
        x0: -bx,
        y0: -by,
        x1: bx,
        y1: by,
    };
    let ink = block.ink.map(|r| r.offset(-bx, -by));
    let ow = style.outline.map_or(0.0, |o| o.width);
    let mut extent = ink.map_or(logical, |i| i.grow(ow)).union(logical);
    let mut paper = None;
    let mut paper_color = [255, 255, 255];
    let mut border = None;
    let mut shadow = None;
    if let Some((pad, color, b, sh)) = label {
        let p = logical.grow(pad * size);
        extent = extent.union(p);
        paper = Some(p);
        paper_color = color;
        border = b;
        if let Some(sh) = sh {
            let so = p.offset(sh.offset[0] * size, sh.offset[1] * size);
            extent = extent.union(so.grow(sh.blur * 2.0));
            shadow = Some((sh, size));
        }
    }
    Shape {
        style,
        block,
        rotation,
        paper,
        paper_color,
        border,
        shadow,
        extent,
    }
}

/// The font size in pixels of `style` on a `w × h` image; `label` (padding and paper) for a
/// label sized by area.
fn font_size(
    style: &TextStyle,
    w: u32,
    h: u32,
    label: Option<(f32, Rgb, Option<Stroke>, Option<Shadow>)>,
) -> f32 {
    // Layouts scale linearly with the size: measure one at 100 px.
    const PROBE: f32 = 100.0;
    match style.size {
        Size::Px(p) => p,
        Size::Frac(f) => f * w.min(h) as f32,
        Size::AreaFrac(f) => {
            let probe = make_shape(style, PROBE, 0.0, label);
            let area = probe.paper.map_or(0.0, |p| (p.x1 - p.x0) * (p.y1 - p.y0));
            if area > 0.0 {
                PROBE * (f * w as f32 * h as f32 / area).sqrt()
            } else {
                0.0
            }
        }
        Size::WidthFrac(f) => {
            let width = layout(style, PROBE).width;
            if width > 0.0 {
                PROBE * f * w as f32 / width
            } else {
                0.0
            }
        }
    }
}

fn draw_layer(ctx: &mut Ctx, layer: &Layer, rng: &mut ChaCha8Rng, object_box: Option<ObjectBox>) {
    let (w, h) = ctx.img.dimensions();
    match layer {
        Layer::Text { style, place } => {
            let size = font_size(style, w, h, None);
            let shape = make_shape(style, size, style.rotation, None);
            for (cx, cy) in centres(place, &shape, w, h, rng, object_box) {
                draw_shape(ctx, &shape, cx, cy);
            }
        }
        Layer::Label {
            style,
            place,
            padding,
            paper,
            border,
            shadow,
        } => {
            let label = Some((*padding, *paper, *border, *shadow));
            let size = font_size(style, w, h, label);
            let shape = make_shape(style, size, style.rotation, label);
            for (cx, cy) in centres(place, &shape, w, h, rng, object_box) {
                draw_shape(ctx, &shape, cx, cy);
            }
        }
        Layer::Scatter {
            style,
            count,
            size_jitter,
            rotation_jitter,
            no_overlap,
        } => {
            let base = font_size(style, w, h, None);
            let mut placed: Vec<FRect> = Vec::new();
            for _ in 0..*count {
                let size = base * (1.0 + size_jitter * (2.0 * rng.gen::<f32>() - 1.0));
                let rot = style.rotation + rotation_jitter * (2.0 * rng.gen::<f32>() - 1.0);
                let shape = make_shape(style, size, rot, None);
                let b = shape.extent.rotated_bounds(&Xf::new(0.0, 0.0, rot));
                let tries = if *no_overlap { 100 } else { 1 };
                let mut spot = None;
                for _ in 0..tries {
                    let cx = uniform_fit(rng, b.x0, b.x1, w as f32);
                    let cy = uniform_fit(rng, b.y0, b.y1, h as f32);
                    let r = b.offset(cx, cy);
                    if !*no_overlap || !placed.iter().any(|q| overlaps(q, &r)) {
                        spot = Some((cx, cy, r));
                        break;
                    }
                }
                if let Some((cx, cy, r)) = spot {
                    placed.push(r);
                    draw_shape(ctx, &shape, cx, cy);
                }
            }
        }
    }
}

fn overlaps(a: &FRect, b: &FRect) -> bool {
    a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1
}

/// A centre uniform in the range that keeps `[lo, hi]` (relative bounds) inside `[0, len]`, or
/// anywhere in `[0, len]` when it does not fit.
fn uniform_fit(rng: &mut ChaCha8Rng, lo: f32, hi: f32, len: f32) -> f32 {
    let (a, b) = (-lo, len - hi);
    let u: f32 = rng.gen();
    if b >= a {
        a + u * (b - a)
    } else {
        u * len
    }
}

fn centres(
    place: &Place,
    shape: &Shape,
    w: u32,
    h: u32,
    rng: &mut ChaCha8Rng,
    object_box: Option<ObjectBox>,
) -> Vec<(f32, f32)> {
    let (wf, hf) = (w as f32, h as f32);
    let b = shape
        .extent
        .rotated_bounds(&Xf::new(0.0, 0.0, shape.rotation));
    let m = place.margin * wf.min(hf);
    let raw: Vec<(f32, f32)> = match &place.placement {
        Placement::Center => vec![(wf / 2.0, hf / 2.0)],
        Placement::TopLeft => vec![(m - b.x0, m - b.y0)],
        Placement::TopRight => vec![(wf - m - b.x1, m - b.y0)],
        Placement::BottomLeft => vec![(m - b.x0, hf - m - b.y1)],
        Placement::BottomRight => vec![(wf - m - b.x1, hf - m - b.y1)],
        Placement::At(x, y) => vec![(x * wf, y * hf)],
        Placement::AtAll(ps) => ps.iter().map(|(x, y)| (x * wf, y * hf)).collect(),
        Placement::Random => vec![(
            uniform_fit(rng, b.x0, b.x1, wf),
            uniform_fit(rng, b.y0, b.y1, hf),
        )],
        Placement::Grid(c, r) => (0..*r)
            .flat_map(|j| {
                (0..*c).map(move |i| {
                    (
                        (i as f32 + 0.5) * wf / *c as f32,
                        (j as f32 + 0.5) * hf / *r as f32,
                    )
                })
            })
            .collect(),
        Placement::ObjectBox => match object_box {
            Some([x0, y0, x1, y1]) => vec![((x0 + x1) / 2.0 * wf, (y0 + y1) / 2.0 * hf)],
            None => vec![(wf / 2.0, hf / 2.0)],
        },
    };
    let clampable = !matches!(place.placement, Placement::Grid(..));
    raw.into_iter()
        .map(|(cx, cy)| {
            if place.clamp && clampable {
                let cx = if b.x1 - b.x0 <= wf {
                    cx.clamp(-b.x0, wf - b.x1)
                } else {
                    cx
                };
                let cy = if b.y1 - b.y0 <= hf {
                    cy.clamp(-b.y0, hf - b.y1)
                } else {
                    cy
                };
                (cx, cy)
            } else {
                (cx, cy)
            }
        })
        .collect()
}

/// Paints one shape instance centred at (cx, cy) and composites it.
fn draw_shape(ctx: &mut Ctx, shape: &Shape, cx: f32, cy: f32) {
    let (w, h) = ctx.img.dimensions();
    let style = shape.style;
    if style.opacity <= 0.0 || !cx.is_finite() || !cy.is_finite() {
        return;
    }
    let xf = Xf::new(cx, cy, shape.rotation);
    let b = shape.extent.rotated_bounds(&xf).offset(cx, cy).grow(2.0);
    // The visible part, and the raster region around it (wider by what spreads: outline, blur).
    let vx0 = b.x0.floor().max(0.0) as i64;
    let vy0 = b.y0.floor().max(0.0) as i64;
    let vx1 = (b.x1.ceil() as i64).min(w as i64);
    let vy1 = (b.y1.ceil() as i64).min(h as i64);
    if vx1 <= vx0 || vy1 <= vy0 {
        return;
    }
    let spread = style
        .outline
        .map_or(0.0, |o| o.width)
        .max(shape.shadow.map_or(0.0, |(s, _)| s.blur * 2.0));
    let sp = spread.ceil() as i64 + 1;
    let cover = Cover {
        x0: vx0 - sp,
        y0: vy0 - sp,
        w: (vx1 - vx0 + 2 * sp) as usize,
        h: (vy1 - vy0 + 2 * sp) as usize,
    };
    let n = cover.w * cover.h;
    let mut buf = vec![[0f32; 4]; n];
    let raster = &mut ctx.raster;

    if let (Some(paper), Some((sh, size))) = (shape.paper, shape.shadow) {
        let mut s = Scan::begin(raster, &cover);
        let sxf = Xf {
            cx: cx + sh.offset[0] * size,
            cy: cy + sh.offset[1] * size,
            ..xf
        };
        s.rect(paper, &sxf, false);
        let mut cov = s.finish(&cover);
        box_blur(&mut cov, cover.w, cover.h, sh.blur);
        paint(&mut buf, &cov, [0.0; 3], sh.opacity);
    }
    if let Some(paper) = shape.paper {
        let mut s = Scan::begin(raster, &cover);
        s.rect(paper, &xf, false);
        let cov = s.finish(&cover);
        paint(&mut buf, &cov, lin(shape.paper_color), 1.0);
        if let Some(bd) = shape.border {
            let inner = paper.grow(-bd.width);
            let mut s = Scan::begin(raster, &cover);
            s.rect(paper, &xf, false);
            if inner.x1 > inner.x0 && inner.y1 > inner.y0 {
                s.rect(inner, &xf, true);
            }
            let cov = s.finish(&cover);
            paint(&mut buf, &cov, lin(bd.color), 1.0);
        }
    }
    if !shape.block.glyphs.is_empty() {
        let mut s = Scan::begin(raster, &cover);
        scan_glyphs(&mut s, style, &shape.block, &xf);
        let cov = s.finish(&cover);
        if let Some(o) = style.outline {
            let dil = dilate(&cov, cover.w, cover.h, o.width);
            paint(&mut buf, &dil, lin(o.color), 1.0);
        }
        paint(&mut buf, &cov, lin(style.color), 1.0);
    }

    let op = style.opacity;
    let iw = w as usize;
    if let Some(flat) = ctx.flat.as_deref_mut() {
        // Compose over what is already in the overlay (premultiplied, in linear light).
        for y in vy0..vy1 {
            let row = ((y - cover.y0) as usize) * cover.w;
            let brow = &buf[row + (vx0 - cover.x0) as usize..row + (vx1 - cover.x0) as usize];
            for (x, p) in (vx0 as usize..).zip(brow) {
                let a = p[3] * op;
                if a <= 0.0 {
                    continue;
                }
                let k = 1.0 - a;
                let i = y as usize * iw + x;
                for (q, &v) in flat.rgb[3 * i..3 * i + 3].iter_mut().zip(&p[..3]) {
                    *q = v * op + *q * k;
                }
                flat.alpha[i] = a + flat.alpha[i] * k;
            }
        }
        return;
    }
    // Composite the visible part.
    let dec = decode_lut();
    let enc = encode_lut();
    let pixels: &mut [u8] = &mut *ctx.img;
    for y in vy0..vy1 {
        let row = ((y - cover.y0) as usize) * cover.w;
        let brow = &buf[row + (vx0 - cover.x0) as usize..row + (vx1 - cover.x0) as usize];
        let irow =
            &mut pixels[3 * (y as usize * iw + vx0 as usize)..3 * (y as usize * iw + vx1 as usize)];
        for (p, px) in brow.iter().zip(irow.chunks_exact_mut(3)) {
            let a = p[3] * op;
            if a <= 0.0 {
                continue;
            }
            let k = 1.0 - a;
            for c in 0..3 {
                px[c] = encode(enc, p[c] * op + dec[px[c] as usize] * k);
            }
        }
    }
    ctx.touched.push(IRect {
        x0: vx0 as u32,
        y0: vy0 as u32,
        x1: vx1 as u32,
        y1: vy1 as u32,
    });
}

/// `color` with coverage × alpha, over the premultiplied buffer.
fn paint(buf: &mut [[f32; 4]], cov: &[f32], color: [f32; 3], alpha: f32) {
    for (p, &c) in buf.iter_mut().zip(cov) {
        let a = c * alpha;
        if a <= 0.0 {
            continue;
        }
        let k = 1.0 - a;
        p[0] = color[0] * a + p[0] * k;
        p[1] = color[1] * a + p[1] * k;
        p[2] = color[2] * a + p[2] * k;
        p[3] = a + p[3] * k;
    }
}

/// Grey-level dilation by a disc of radius `r` with a soft (anti-aliased) rim: the stroke of
/// width `r` around the coverage.
fn dilate(cov: &[f32], w: usize, h: usize, r: f32) -> Vec<f32> {
    let ri = r.ceil() as i64 + 1;
    let mut kernel = Vec::new();
    for dy in -ri..=ri {
        for dx in -ri..=ri {
            let d = ((dx * dx + dy * dy) as f32).sqrt();
            let k = (r + 0.5 - d).clamp(0.0, 1.0);
            if k > 0.0 {
                kernel.push((dx, dy, k));
            }
        }
    }
    let mut out = cov.to_vec();
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let c = cov[y as usize * w + x as usize];
            if c <= 0.0 {
                continue;
            }
            for &(dx, dy, k) in &kernel {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                    continue;
                }
                let o = &mut out[ny as usize * w + nx as usize];
                let v = c * k;
                if v > *o {
                    *o = v;
                }
            }
        }
    }
    out
}

/// Two passes of a separable box blur of radius `r` (≈ a Gaussian of σ ≈ r/√2·…).
fn box_blur(v: &mut [f32], w: usize, h: usize, r: f32) {
    let r = r.round() as usize;
    if r == 0 || w == 0 || h == 0 {
        return;
    }
    let mut tmp = vec![0f32; v.len()];
    for _ in 0..2 {
        for y in 0..h {
            blur_line(&v[y * w..(y + 1) * w], &mut tmp[y * w..(y + 1) * w], r);
        }
        let mut col = vec![0f32; h];
        let mut colo = vec![0f32; h];
        for x in 0..w {
            for y in 0..h {
                col[y] = tmp[y * w + x];
            }
            blur_line(&col, &mut colo, r);
            for y in 0..h {
                v[y * w + x] = colo[y];
            }
        }
    }
}

fn blur_line(src: &[f32], dst: &mut [f32], r: usize) {
    let n = src.len();
    let norm = 1.0 / (2 * r + 1) as f32;
    let mut prefix = vec![0f32; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + src[i];
    }
    for (i, d) in dst.iter_mut().enumerate() {
        let lo = i.saturating_sub(r);
        let hi = (i + r + 1).min(n);
        *d = (prefix[hi] - prefix[lo]) * norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::fonts::FontBook;
    use crate::attack::spec::AttackSpec;
    use std::path::Path;

    fn spec(s: &str) -> AttackSpec {
        AttackSpec::parse(s, Path::new("t.toml"), FontBook::global()).unwrap()
    }

    fn photo(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    const LABEL: &str = "description = \"d\"\ntarget = \"iPod\"\n[[layers]]\nkind = \"label\"\ntext = \"iPod\"\nsize_px = 30\nrotation = 7\nshadow = true\nborder_width = 2\n[[layers]]\nkind = \"scatter\"\ncount = 20\nsize_jitter = 0.5\ncolor = \"#208020\"\noutline_width = 1.5\n[[layers]]\nkind = \"text\"\ntext = \"two\\nlines\"\nplacement = \"top_right\"\nopacity = 0.6\ncolor = \"red\"\n";

    #[test]
    fn width_frac_sets_the_width_of_the_text() {
        for (text, f) in [("ring", 0.5), ("crescent", 0.5), ("hexagon", 0.8)] {
            let s = spec(&format!(
                "description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"{text}\"\nwidth_frac = {f}\n"
            ));
            let img = RgbImage::from_pixel(400, 300, image::Rgb([255, 255, 255]));
            let r = render(&img, &s.variants[0], 0, None);
            let xs: Vec<u32> = r
                .mask
                .enumerate_pixels()
                .filter(|p| p.2 .0[0] == 255)
                .map(|p| p.0)
                .collect();
            let (lo, hi) = (xs.iter().min().unwrap(), xs.iter().max().unwrap());
            // The ink spans the advance width less the side bearings of the end glyphs.
            let span = (hi - lo + 1) as f32 / 400.0;
            assert!(
                span <= f && span > f - 0.06,
                "{text} at {f}: ink spans {span}"
            );
        }
    }

    #[test]
    fn srgb_tables_round_trip_every_level() {
        let (d, e) = (decode_lut(), encode_lut());
        for v in 0..=255u8 {
            assert_eq!(encode(e, d[v as usize]), v);
        }
    }

    #[test]
    fn mask_is_exactly_the_changed_pixels() {
        let s = spec(LABEL);
        let img = photo(200, 150);
        let r = render(&img, &s.variants[0], 3, None);
        let mut n = 0;
        for (x, y, p) in img.enumerate_pixels() {
            let changed = r.image.get_pixel(x, y) != p;
            assert_eq!(r.mask.get_pixel(x, y).0[0] == 255, changed, "at {x},{y}");
            n += changed as u64;
        }
        assert!(n > 500, "something was drawn: {n}");
        assert_eq!(r.changed, n);
        assert!((r.l0_fraction - n as f64 / 30000.0).abs() < 1e-12);
    }

    #[test]
    fn opacity_zero_is_identity() {
        let s = spec(
            &LABEL
                .replace(
                    "[[layers]]\nkind = \"label\"",
                    "[[layers]]\nkind = \"label\"\nopacity = 0",
                )
                .replace("count = 20", "count = 20\nopacity = 0")
                .replace("opacity = 0.6", "opacity = 0.0"),
        );
        let img = photo(120, 90);
        let r = render(&img, &s.variants[0], 0, None);
        assert_eq!(r.image, img);
        assert_eq!(r.changed, 0);
        assert_eq!(r.l0_fraction, 0.0);
    }

    #[test]
    fn deterministic_per_seed_and_seed_matters() {
        let s = spec(LABEL);
        let img = photo(160, 120);
        let a = render(&img, &s.variants[0], 42, None);
        let b = render(&img, &s.variants[0], 42, None);
        let c = render(&img, &s.variants[0], 43, None);
        assert_eq!(a.image, b.image);
        assert_ne!(a.image, c.image, "scatter positions depend on the seed");
    }

    #[test]
    fn opaque_fill_gets_the_exact_colour_and_edges_are_antialiased() {
        let s = spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"H\"\nsize_px = 60\ncolor = [10, 200, 30]\n");
        let img = RgbImage::from_pixel(100, 100, image::Rgb([255, 255, 255]));
        let r = render(&img, &s.variants[0], 0, None);
        let exact = r.image.pixels().filter(|p| p.0 == [10, 200, 30]).count();
        let partial = r
            .image
            .pixels()
            .filter(|p| p.0 != [10, 200, 30] && p.0 != [255, 255, 255])
            .count();
        assert!(exact > 300, "solid interior: {exact}");
        assert!(partial > 20, "anti-aliased edge pixels: {partial}");
    }

    #[test]
    fn linear_light_blend_of_half_opacity() {
        // Black at 50 % over white in linear light is 0.5 linear = sRGB 188, not 128.
        let s = spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"label\"\ntext = \"\"\nsize_px = 40\npaper_color = \"black\"\nopacity = 0.5\n");
        let img = RgbImage::from_pixel(100, 100, image::Rgb([255, 255, 255]));
        let r = render(&img, &s.variants[0], 0, None);
        assert_eq!(r.image.get_pixel(50, 50).0, [188, 188, 188]);
    }

    #[test]
    fn huge_text_empty_text_and_empty_images_do_not_panic() {
        let big = spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"WWWWWWWW\"\nsize_frac = 4\nrotation = 33\noutline_width = 3\n");
        let r = render(&photo(64, 48), &big.variants[0], 0, None);
        assert!(r.l0_fraction > 0.1 && r.l0_fraction <= 1.0);
        for (w, h) in [(0, 0), (0, 10), (10, 0), (1, 1)] {
            let r = render(&photo(w, h), &big.variants[0], 0, None);
            assert_eq!(r.image.dimensions(), (w, h));
            assert!((0.0..=1.0).contains(&r.l0_fraction));
        }
        let empty =
            spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"\"\n");
        let img = photo(50, 50);
        assert_eq!(render(&img, &empty.variants[0], 0, None).image, img);
    }

    #[test]
    fn model_input_stage_renders_on_the_crop() {
        let s = spec("description = \"d\"\ntarget = \"t\"\nstage = \"model_input\"\n[[layers]]\nkind = \"label\"\ntext = \"iPod\"\nsize_px = 20\n");
        let img = photo(300, 200);
        let m = render_for_model(
            &img,
            &s.variants[0],
            &crate::preprocess::PreprocessCfg::square(64),
            0,
            None,
        );
        assert_eq!(m.clean_input.dimensions(), (64, 64));
        assert_eq!(m.rendered.image, m.attacked_input);
        assert_eq!(m.rendered.mask.dimensions(), (64, 64));
        let src = spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"label\"\ntext = \"iPod\"\nsize_px = 20\n");
        let m = render_for_model(
            &img,
            &src.variants[0],
            &crate::preprocess::PreprocessCfg::square(64),
            0,
            None,
        );
        assert_eq!(m.rendered.mask.dimensions(), (300, 200));
        assert_eq!(m.attacked_input.dimensions(), (64, 64));
        assert_ne!(m.attacked_input, m.clean_input);
    }

    #[test]
    fn box_placement_centres_in_the_box_and_maps_through_the_crop() {
        let s = spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"label\"\ntext = \"\"\nsize_px = 4\npadding = 1\nplacement = \"box\"\npaper_color = \"red\"\n");
        let img = RgbImage::from_pixel(100, 100, image::Rgb([0, 0, 0]));
        let r = render(&img, &s.variants[0], 0, Some([0.6, 0.6, 1.0, 1.0]));
        assert_eq!(r.image.get_pixel(80, 80).0, [255, 0, 0]);
        assert_eq!(r.image.get_pixel(50, 50).0, [0, 0, 0]);
        // 200×100 → resize to 128×64 → crop 64×64 from x = 32: source x 0.5..1 → 0.5..1.
        let b = map_box(
            [0.5, 0.0, 1.0, 1.0],
            200,
            100,
            &crate::preprocess::PreprocessCfg::square(64),
        );
        assert!(
            (b[0] - 0.5).abs() < 1e-6 && (b[2] - 1.0).abs() < 1e-6,
            "{b:?}"
        );
        // Squash keeps the fractions; longest (200×100 → 64×32, 16 rows of padding above)
        // maps y 0..1 to 0.25..0.75.
        let mode = |m: &str| {
            crate::preprocess::PreprocessCfg::from_open_clip_json(
                &serde_json::json!({"size": 64, "resize_mode": m}),
            )
            .unwrap()
        };
        let b = map_box([0.5, 0.0, 1.0, 1.0], 200, 100, &mode("squash"));
        assert_eq!(b, [0.5, 0.0, 1.0, 1.0]);
        let b = map_box([0.5, 0.0, 1.0, 1.0], 200, 100, &mode("longest"));
        assert!(
            (b[1] - 0.25).abs() < 1e-6 && (b[3] - 0.75).abs() < 1e-6,
            "{b:?}"
        );
    }

    #[test]
    fn area_frac_label_covers_that_fraction() {
        let s = spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"label\"\ntext = \"iPod\"\narea_frac = 0.1\npaper_color = \"#ffff00\"\n");
        let img = RgbImage::from_pixel(200, 200, image::Rgb([0, 0, 255]));
        let r = render(&img, &s.variants[0], 0, None);
        assert!((r.l0_fraction - 0.1).abs() < 0.01, "{}", r.l0_fraction);
    }

    #[test]
    fn no_overlap_scatter_marks_do_not_touch() {
        let s = spec("description = \"d\"\ntarget = \"t\"\n[[layers]]\nkind = \"scatter\"\ncount = 12\nsize_px = 12\nno_overlap = true\ncolor = \"white\"\n");
        let img = RgbImage::from_pixel(200, 200, image::Rgb([0, 0, 0]));
        let r = render(&img, &s.variants[0], 5, None);
        // Count connected blobs of changed pixels ≥ number of marks ("$" may be 1–2 blobs each).
        let blobs = count_blobs(&r.mask);
        assert!(blobs >= 12, "{blobs}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn layer() -> impl Strategy<Value = String> {
            let text = prop::sample::select(vec![
                "",
                "iPod",
                "$$$",
                "кот λ",
                "a\\nbb\\nccc",
                "WWWWWWWWWWWW",
                " ",
                "x",
            ]);
            let font = prop::sample::select(vec![
                "sans-bold",
                "serif",
                "mono",
                "handwriting",
                "handwriting-caps",
                "comic",
            ]);
            let kind = prop::sample::select(vec!["text", "label", "scatter"]);
            let placement = prop::sample::select(vec![
                "center",
                "top_left",
                "bottom_right",
                "distill8",
                "random",
                "grid",
                "box",
            ]);
            (
                (kind, text, font, prop::bool::ANY, 0.5f64..400.0, 0.001f64..3.0),
                (0.0f64..=1.0, -360.0f64..360.0, 0.0f64..6.0, -0.5f64..1.0, placement),
                (0u32..25, 0.0f64..0.9, prop::bool::ANY, 0.0f64..3.0, prop::bool::ANY),
            )
                .prop_map(|((kind, text, font, px, size_px, size_frac), (opacity, rotation, outline, spacing, placement), (count, jitter, no_overlap, padding, shadow))| {
                    let size = if px { format!("size_px = {size_px}") } else { format!("size_frac = {size_frac}") };
                    let mut s = format!(
                        "[[layers]]\nkind = \"{kind}\"\ntext = \"{text}\"\nfont = \"{font}\"\n{size}\nopacity = {opacity}\nrotation = {rotation}\noutline_width = {outline}\n"
                    );
                    match kind {
                        "scatter" => s += &format!("count = {count}\nsize_jitter = {jitter}\nno_overlap = {no_overlap}\nrotation_jitter = 30\n"),
                        _ => {
                            s += &format!("letter_spacing = {spacing}\nplacement = \"{placement}\"\n");
                            if kind == "label" {
                                s += &format!("padding = {padding}\nshadow = {shadow}\nborder_width = 2\n");
                            }
                        }
                    }
                    s
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
            #[test]
            fn random_valid_specs_render_without_panic(
                layers in prop::collection::vec(layer(), 1..3),
                w in 0u32..90,
                h in 0u32..90,
                seed in any::<u64>(),
                model_stage in prop::bool::ANY,
            ) {
                let stage = if model_stage { "model_input" } else { "source" };
                let text = format!("description = \"p\"\ntarget = \"t\"\nstage = \"{stage}\"\n{}", layers.concat());
                let s = AttackSpec::parse(&text, Path::new("p.toml"), FontBook::global())
                    .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                let img = photo(w, h);
                for v in s.variants.iter().take(2) {
                    let r = render(&img, v, seed, Some([0.1, 0.2, 0.6, 0.9]));
                    prop_assert_eq!(r.image.dimensions(), (w, h));
                    prop_assert_eq!(r.mask.dimensions(), (w, h));
                    prop_assert!((0.0..=1.0).contains(&r.l0_fraction));
                    let diff = img.pixels().zip(r.image.pixels()).filter(|(a, b)| a != b).count() as u64;
                    prop_assert_eq!(diff, r.changed);
                    prop_assert_eq!(r.mask.pixels().filter(|p| p.0[0] == 255).count() as u64, r.changed);
                    if w > 0 && h > 0 {
                        let m = render_for_model(&img, v, &crate::preprocess::PreprocessCfg::square(32), seed, None);
                        prop_assert_eq!(m.attacked_input.dimensions(), (32, 32));
                    }
                }
            }
        }
    }

    fn count_blobs(m: &GrayImage) -> usize {
        let (w, h) = m.dimensions();
        let mut seen = vec![false; (w * h) as usize];
        let mut n = 0;
        for s in 0..(w * h) {
            if seen[s as usize] || m.as_raw()[s as usize] == 0 {
                continue;
            }
            n += 1;
            let mut stack = vec![s];
            seen[s as usize] = true;
            while let Some(p) = stack.pop() {
                let (x, y) = ((p % w) as i64, (p / w) as i64);
                for (dx, dy) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx >= 0 && ny >= 0 && nx < w as i64 && ny < h as i64 {
                        let q = (ny as u32 * w + nx as u32) as usize;
                        if !seen[q] && m.as_raw()[q] != 0 {
                            seen[q] = true;
                            stack.push(q as u32);
                        }
                    }
                }
            }
        }
        n
    }
}
