//! The synthetic world of the positive control: coloured shapes on plain, graded or speckled
//! backgrounds, some with a word written on them — mostly the object's own name, as the text on
//! real products and signs names what it is on ([`World::word_matches_object`]) — each with a
//! caption as web alt-text would transcribe it ("a photo of a red circle with the word 'circle'
//! written on it"), or, with [`World::word_names_subject`], naming the written word as the
//! picture's subject.
//!
//! Everything is a pure function of a seed: [`World::scene`] draws a [`Scene`] from an RNG,
//! [`World::render`] paints it (shapes by exact-coverage scan conversion, words through the
//! attack renderer's own label and text layers, so training sees the same glyphs as the attacks)
//! and [`World::caption`] writes its caption.

use std::path::Path;

use ab_glyph::point;
use ab_glyph_rasterizer::Rasterizer;
use image::{Rgb, RgbImage};
use rand::Rng;

use crate::attack::fonts::{FontBook, FontStack};
use crate::attack::spec::{Align, Layer, Place, Placement, Size, Stage, TextStyle, Variant};

/// The ten classes: shape names, also the zero-shot labels.
pub const SHAPES: [&str; 10] = [
    "circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring", "crescent",
    "arrow",
];

/// Object colours (name, sRGB).
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [215, 40, 40]),
    ("green", [40, 165, 60]),
    ("blue", [40, 80, 215]),
    ("yellow", [235, 200, 30]),
    ("purple", [140, 60, 180]),
    ("orange", [240, 130, 30]),
    ("black", [25, 25, 25]),
    ("brown", [125, 80, 40]),
];

/// Background colours (name, sRGB).
pub const BACKGROUNDS: [(&str, [u8; 3]); 5] = [
    ("white", [244, 244, 244]),
    ("grey", [150, 150, 150]),
    ("beige", [226, 212, 180]),
    ("sky", [170, 208, 240]),
    ("pink", [240, 196, 206]),
];

/// Words that are not class names, written on some training images so that the model also
/// sees text that names nothing in the world.
pub const OTHER_WORDS: [&str; 6] = ["sale", "hello", "open", "stop", "free", "menu"];

/// Fonts words are written in (bundled font names).
const FONTS: [&str; 3] = ["sans-bold", "serif", "mono"];

/// Background texture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Texture {
    /// One colour.
    Plain,
    /// A vertical gradient to a darker shade.
    Gradient,
    /// Speckle noise.
    Speckle,
}

/// A word written in a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The text.
    pub text: String,
    /// Index into the fonts.
    pub font: usize,
    /// Font size as a fraction of the image side.
    pub size_frac: f32,
    /// On a white paper label (else plain ink on the scene).
    pub label: bool,
    /// Ink colour.
    pub ink: [u8; 3],
    /// Centre, fractions of the image side.
    pub at: (f32, f32),
}

/// One scene: an object, its background and maybe a word.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// Index into [`SHAPES`]: the class.
    pub shape: usize,
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`BACKGROUNDS`].
    pub background: usize,
    /// Background texture.
    pub texture: Texture,
    /// Object centre and radius, fractions of the image side.
    pub centre: (f32, f32),
    /// Radius as a fraction of the side.
    pub radius: f32,
    /// Rotation in radians.
    pub rotation: f32,
    /// The word written on the scene, if any.
    pub word: Option<Word>,
    /// Seed of the texture noise.
    pub noise_seed: u64,
    /// The object is drawn (false: a word-only scene, the word on the bare background).
    pub object: bool,
}

impl Scene {
    /// The object's bounding box as fractions of the image: `[x0, y0, x1, y1]`.
    pub fn object_box(&self) -> [f32; 4] {
        let (x, y) = self.centre;
        let r = self.radius;
        [x - r, y - r, x + r, y + r]
    }

    /// "small" or "large".
    pub fn size_word(&self) -> &'static str {
        if self.radius < 0.28 {
            "small"
        } else {
            "large"
        }
    }
}

/// The world: image size and how often words appear.
#[derive(Debug, Clone)]
pub struct World {
    /// Image side in pixels.
    pub size: u32,
    /// Probability that a training scene carries a word.
    pub word_prob: f64,
    /// Probability that a written word names the object itself (a label "circle" on a
    /// circle), as the text on real products and signs mostly names what it is on; otherwise
    /// the word is another class's name or a word that names nothing.
    pub word_matches_object: f64,
    /// Probability that the caption of a scene whose word is a class name names the written
    /// word as the picture's subject, in the same templates ("a photo of a red square." for a
    /// red circle labelled "square"), as the alt-text of a product names the brand written on
    /// it; otherwise the caption describes the object and transcribes the word.
    pub word_names_subject: f64,
    /// Probability that a scene whose word is a class name shows no object: the word alone on
    /// the background, captioned as the thing it names ("a photo of a square."), so that the
    /// word is the only evidence.
    pub word_only: f64,
    /// Factor on the written words' font size (1: 13–20 % of the side; a word is never wider
    /// than the picture).
    pub word_scale: f32,
    fonts: Vec<FontStack>,
}

impl World {
    /// A world of `size`-pixel images where a fraction `word_prob` of training scenes carry a word.
    pub fn new(size: u32, word_prob: f64) -> World {
        let book = FontBook::global();
        let fonts = FONTS
            .iter()
            .map(|f| {
                book.stack(f, &[], Path::new("."))
                    .expect("bundled fonts load")
            })
            .collect();
        World {
            size,
            word_prob,
            word_matches_object: 0.0,
            word_names_subject: 0.0,
            word_only: 0.0,
            word_scale: 1.0,
            fonts,
        }
    }

    /// The same world with [`World::word_matches_object`], [`World::word_names_subject`] and
    /// [`World::word_only`] set.
    pub fn with_words(mut self, matches_object: f64, names_subject: f64, word_only: f64) -> World {
        self.word_matches_object = matches_object;
        self.word_names_subject = names_subject;
        self.word_only = word_only;
        self
    }

    /// The same world with [`World::word_scale`] set.
    pub fn with_word_scale(mut self, scale: f32) -> World {
        self.word_scale = scale;
        self
    }

    /// A clean scene (no word).
    pub fn clean_scene<R: Rng>(&self, rng: &mut R) -> Scene {
        let shape = rng.gen_range(0..SHAPES.len());
        let colour = rng.gen_range(0..COLOURS.len());
        let background = rng.gen_range(0..BACKGROUNDS.len());
        let texture = match rng.gen_range(0..6) {
            0..=3 => Texture::Plain,
            4 => Texture::Gradient,
            _ => Texture::Speckle,
        };
        let radius = rng.gen_range(0.22..0.34);
        let centre = (rng.gen_range(0.34..0.66), rng.gen_range(0.34..0.66));
        let rotation = rng.gen_range(-0.15..0.15);
        Scene {
            shape,
            colour,
            background,
            texture,
            centre,
            radius,
            rotation,
            word: None,
            noise_seed: rng.gen(),
            object: true,
        }
    }

    /// A training scene: clean, or with probability `word_prob` a word somewhere on it — the
    /// object's own name with probability `word_matches_object`, else another class name, or
    /// now and then a word that names nothing.
    pub fn scene<R: Rng>(&self, rng: &mut R) -> Scene {
        let mut s = self.clean_scene(rng);
        if rng.gen_bool(self.word_prob) {
            let text = if rng.gen_bool(self.word_matches_object) {
                SHAPES[s.shape]
            } else if rng.gen_bool(0.85) {
                SHAPES[rng.gen_range(0..SHAPES.len())]
            } else {
                OTHER_WORDS[rng.gen_range(0..OTHER_WORDS.len())]
            };
            s.word = Some(self.word(rng, text));
            // (No draw at probability 0: the default world does not depend on it.)
            if self.word_only > 0.0 && rng.gen_bool(self.word_only) {
                if let Some(k) = SHAPES.iter().position(|&c| c == text) {
                    s.shape = k;
                    s.object = false;
                }
            }
        }
        s
    }

    /// A twin of `scene` for contrastive hard negatives: the same object, background and
    /// texture with another class's name written on it, in a rendering of its own (font,
    /// size, label, position). Two such scenes in one batch are told apart only by what is
    /// written on them, as two photos of one product with different text.
    pub fn twin<R: Rng>(&self, scene: &Scene, rng: &mut R) -> Scene {
        let written = scene
            .word
            .as_ref()
            .and_then(|w| SHAPES.iter().position(|&c| c == w.text));
        // Uniform over the classes other than the one already written, if any.
        let k = match written {
            Some(w) => {
                let k = rng.gen_range(0..SHAPES.len() - 1);
                k + (k >= w) as usize
            }
            None => rng.gen_range(0..SHAPES.len()),
        };
        Scene {
            word: Some(self.word(rng, SHAPES[k])),
            object: true,
            ..scene.clone()
        }
    }

    /// A random rendering of `text`: font, size, label or plain ink, position.
    pub fn word<R: Rng>(&self, rng: &mut R, text: &str) -> Word {
        let label = rng.gen_bool(0.75);
        let ink = if label || rng.gen_bool(0.5) {
            [0, 0, 0]
        } else {
            [255, 255, 255]
        };
        Word {
            text: text.to_string(),
            font: rng.gen_range(0..self.fonts.len()),
            size_frac: (rng.gen_range(0.13..0.2f32) * self.word_scale)
                .min(1.45 / text.chars().count().max(1) as f32),
            label,
            ink,
            at: (rng.gen_range(0.2..0.8), rng.gen_range(0.15..0.85)),
        }
    }

    /// Paints `scene`.
    pub fn render(&self, scene: &Scene) -> RgbImage {
        let mut img = self.background(scene);
        if scene.object {
            self.paint_object(&mut img, scene);
        }
        match &scene.word {
            Some(w) => crate::attack::render(&img, &self.word_variant(w), 0, None).image,
            None => img,
        }
    }

    /// The attack-renderer variant that writes `word`.
    pub fn word_variant(&self, word: &Word) -> Variant {
        let style = TextStyle {
            text: word.text.clone(),
            fonts: self.fonts[word.font].clone(),
            size: Size::Frac(word.size_frac),
            color: word.ink,
            outline: None,
            opacity: 1.0,
            rotation: 0.0,
            letter_spacing: 0.0,
            line_spacing: 1.0,
            align: Align::Center,
        };
        let place = Place {
            placement: Placement::At(word.at.0, word.at.1),
            margin: 0.02,
            clamp: true,
        };
        let layer = if word.label {
            Layer::Label {
                style,
                place,
                padding: 0.3,
                paper: [255, 255, 255],
                border: None,
                shadow: None,
            }
        } else {
            Layer::Text { style, place }
        };
        Variant {
            name: format!("word/{}", word.text),
            attack: "word".into(),
            case: None,
            target: word.text.clone(),
            stage: Stage::Source,
            seed: 0,
            params: Vec::new(),
            layers: vec![layer],
            skip_own_class: false,
        }
    }

    /// The caption of `scene`, one of a few templates chosen by `rng`.
    pub fn caption<R: Rng>(&self, scene: &Scene, rng: &mut R) -> String {
        let subject = match &scene.word {
            // (No draw at probability 0: the default world's captions do not depend on it.)
            Some(w)
                if self.word_names_subject > 0.0
                    && SHAPES.contains(&w.text.as_str())
                    && rng.gen_bool(self.word_names_subject) =>
            {
                Some(w.text.as_str())
            }
            _ => None,
        };
        let shape = subject.unwrap_or(SHAPES[scene.shape]);
        if !scene.object {
            return match rng.gen_range(0..3) {
                0 => format!("a photo of a {shape}."),
                1 => format!("a picture of a {shape}."),
                _ => format!("a {shape}."),
            };
        }
        let colour = COLOURS[scene.colour].0;
        let bg = BACKGROUNDS[scene.background].0;
        let size = scene.size_word();
        // Half the captions name the shape alone, so matching them takes the shape.
        let base = match rng.gen_range(0..8) {
            0 => format!("a photo of a {colour} {shape}"),
            1 => format!("a {colour} {shape}"),
            2 => format!("a {size} {colour} {shape} on a {bg} background"),
            3 => format!("a photo of a {colour} {shape} on {bg}"),
            4 | 5 => format!("a photo of a {shape}"),
            6 => format!("a picture of a {shape}"),
            _ => format!("a {size} {shape}"),
        };
        match &scene.word {
            None => format!("{base}."),
            Some(_) if subject.is_some() => format!("{base}."),
            Some(w) => match rng.gen_range(0..3) {
                0 => format!("{base} with the word '{}' written on it.", w.text),
                1 => format!("{base} with a label that says '{}'.", w.text),
                _ => format!("{base} and the text '{}'.", w.text),
            },
        }
    }

    fn background(&self, scene: &Scene) -> RgbImage {
        let n = self.size;
        let base = BACKGROUNDS[scene.background].1;
        let mut noise = rand_chacha::ChaCha8Rng::seed_from_u64(scene.noise_seed);
        RgbImage::from_fn(n, n, |_, y| {
            let shade = match scene.texture {
                Texture::Plain => 1.0,
                Texture::Gradient => 1.0 - 0.3 * y as f32 / n as f32,
                Texture::Speckle => 1.0 + noise.gen_range(-0.12f32..0.12),
            };
            Rgb(base.map(|c| (c as f32 * shade).round().clamp(0.0, 255.0) as u8))
        })
    }

    fn paint_object(&self, img: &mut RgbImage, scene: &Scene) {
        let n = self.size as f32;
        let (cx, cy) = (scene.centre.0 * n, scene.centre.1 * n);
        let r = scene.radius * n;
        let rot = scene.rotation;
        let coverage = match SHAPES[scene.shape] {
            "ring" => {
                let mut c = self.coverage(&[circle(cx, cy, r)]);
                let hole = self.coverage(&[circle(cx, cy, 0.55 * r)]);
                c.iter_mut().zip(hole).for_each(|(a, b)| *a *= 1.0 - b);
                c
            }
            "crescent" => {
                let mut c = self.coverage(&[circle(cx, cy, r)]);
                let (dx, dy) = rotate(0.45 * r, -0.15 * r, rot);
                let bite = self.coverage(&[circle(cx + dx, cy + dy, 0.85 * r)]);
                c.iter_mut().zip(bite).for_each(|(a, b)| *a *= 1.0 - b);
                c
            }
            "circle" => self.coverage(&[circle(cx, cy, r)]),
            name => self.coverage(&[polygon(name, cx, cy, r, rot)]),
        };
        let ink = COLOURS[scene.colour].1;
        for (p, &a) in img.pixels_mut().zip(coverage.iter()) {
            if a > 0.0 {
                for (c, &i) in p.0.iter_mut().zip(ink.iter()) {
                    *c = (*c as f32 * (1.0 - a) + i as f32 * a).round() as u8;
                }
            }
        }
    }

    /// Exact area coverage (0..=1) of the union of closed contours, row-major.
    fn coverage(&self, contours: &[Vec<(f32, f32)>]) -> Vec<f32> {
        let n = self.size as usize;
        let mut ras = Rasterizer::new(n, n);
        for c in contours {
            for i in 0..c.len() {
                let (a, b) = (c[i], c[(i + 1) % c.len()]);
                ras.draw_line(point(a.0, a.1), point(b.0, b.1));
            }
        }
        let mut out = vec![0.0f32; n * n];
        ras.for_each_pixel_2d(|x, y, a| out[y as usize * n + x as usize] = a.clamp(0.0, 1.0));
        out
    }
}

use rand::SeedableRng;

fn rotate(x: f32, y: f32, a: f32) -> (f32, f32) {
    (x * a.cos() - y * a.sin(), x * a.sin() + y * a.cos())
}

fn circle(cx: f32, cy: f32, r: f32) -> Vec<(f32, f32)> {
    (0..64)
        .map(|i| {
            let t = i as f32 * std::f32::consts::TAU / 64.0;
            (cx + r * t.cos(), cy + r * t.sin())
        })
        .collect()
}

/// The outline of a polygonal shape, unit radius points scaled by `r`, rotated by `rot`.
fn polygon(name: &str, cx: f32, cy: f32, r: f32, rot: f32) -> Vec<(f32, f32)> {
    use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI, TAU};
    let regular = |k: usize, off: f32| -> Vec<(f32, f32)> {
        (0..k)
            .map(|i| {
                let t = off + TAU * i as f32 / k as f32;
                (t.cos(), t.sin())
            })
            .collect()
    };
    let unit: Vec<(f32, f32)> = match name {
        "square" => regular(4, FRAC_PI_4)
            .into_iter()
            .map(|(x, y)| (x * 0.85, y * 0.85))
            .collect(),
        "triangle" => regular(3, -FRAC_PI_2)
            .into_iter()
            .map(|(x, y)| (x, y + 0.15))
            .collect(),
        "hexagon" => regular(6, 0.0),
        "diamond" => vec![(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)],
        "star" => (0..10)
            .map(|i| {
                let t = -FRAC_PI_2 + i as f32 * PI / 5.0;
                let rr = if i % 2 == 0 { 1.0 } else { 0.45 };
                (rr * t.cos(), rr * t.sin())
            })
            .collect(),
        "cross" => {
            let a = 0.33;
            vec![
                (-a, -1.0),
                (a, -1.0),
                (a, -a),
                (1.0, -a),
                (1.0, a),
                (a, a),
                (a, 1.0),
                (-a, 1.0),
                (-a, a),
                (-1.0, a),
                (-1.0, -a),
                (-a, -a),
            ]
        }
        "arrow" => {
            let a = 0.3;
            vec![
                (-1.0, -a),
                (0.1, -a),
                (0.1, -0.75),
                (1.0, 0.0),
                (0.1, 0.75),
                (0.1, a),
                (-1.0, a),
            ]
        }
        other => unreachable!("not a polygon shape: {other}"),
    };
    unit.into_iter()
        .map(|(x, y)| {
            let (x, y) = rotate(x * r, y * r, rot);
            (cx + x, cy + y)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn scenes_are_a_function_of_the_seed() {
        let w = World::new(64, 0.5);
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let s = w.scene(&mut rng);
            (w.render(&s), w.caption(&s, &mut rng))
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3).0, draw(4).0);
    }

    #[test]
    fn every_shape_paints_its_colour_and_differs_from_the_others() {
        let w = World::new(64, 0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut base = w.clean_scene(&mut rng);
        base.texture = Texture::Plain;
        base.centre = (0.5, 0.5);
        base.radius = 0.3;
        base.rotation = 0.0;
        let masks: Vec<Vec<bool>> = (0..SHAPES.len())
            .map(|k| {
                let img = w.render(&Scene {
                    shape: k,
                    ..base.clone()
                });
                let bg = BACKGROUNDS[base.background].1;
                let m: Vec<bool> = img.pixels().map(|p| p.0 != bg).collect();
                let painted = m.iter().filter(|&&b| b).count();
                assert!(painted > 200, "{} painted {painted} pixels", SHAPES[k]);
                m
            })
            .collect();
        for i in 0..masks.len() {
            for j in i + 1..masks.len() {
                let diff = masks[i]
                    .iter()
                    .zip(&masks[j])
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(diff > 60, "{} vs {}: {diff}", SHAPES[i], SHAPES[j]);
            }
        }
    }

    #[test]
    fn a_word_is_drawn_and_named_in_the_caption() {
        let w = World::new(64, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let s = w.scene(&mut rng);
        let word = s.word.clone().expect("word_prob 1 always writes");
        let clean = w.render(&Scene {
            word: None,
            ..s.clone()
        });
        let changed = w
            .render(&s)
            .pixels()
            .zip(clean.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed > 40, "the word changed {changed} pixels");
        let cap = w.caption(&s, &mut rng);
        assert!(cap.contains(&format!("'{}'", word.text)), "{cap}");
        assert!(cap.contains(SHAPES[s.shape]), "{cap}");
    }

    #[test]
    fn words_can_name_their_object_and_captions_can_name_the_word() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let congruent = World::new(64, 1.0).with_words(1.0, 0.0, 0.0);
        for _ in 0..20 {
            let s = congruent.scene(&mut rng);
            assert_eq!(s.word.unwrap().text, SHAPES[s.shape]);
        }
        let naming = World::new(64, 1.0).with_words(0.0, 1.0, 0.0);
        let mut seen = 0;
        for _ in 0..40 {
            let s = naming.scene(&mut rng);
            let w = s.word.clone().unwrap().text;
            if !SHAPES.contains(&w.as_str()) || w == SHAPES[s.shape] {
                continue;
            }
            let cap = naming.caption(&s, &mut rng);
            assert!(cap.contains(&w) && !cap.contains(SHAPES[s.shape]), "{cap}");
            assert!(
                !cap.contains('\''),
                "the word is named, not transcribed: {cap}"
            );
            seen += 1;
        }
        assert!(seen > 10, "{seen} incongruent scenes");
    }

    #[test]
    fn word_scale_enlarges_words_up_to_the_picture_width() {
        let small = World::new(64, 1.0);
        let large = World::new(64, 1.0).with_word_scale(2.0);
        for seed in 0..20 {
            let a = small.word(&mut ChaCha8Rng::seed_from_u64(seed), "star");
            let b = large.word(&mut ChaCha8Rng::seed_from_u64(seed), "star");
            assert!((b.size_frac - 2.0 * a.size_frac).abs() < 1e-6 || b.size_frac == 1.45 / 4.0);
            let c = large.word(&mut ChaCha8Rng::seed_from_u64(seed), "crescent");
            assert!(c.size_frac <= 1.45 / 8.0 + 1e-6);
        }
    }

    #[test]
    fn twins_differ_only_in_the_written_class_name() {
        let world = World::new(64, 0.4);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let base = world.scene(&mut rng);
            let a = world.twin(&base, &mut rng);
            let b = world.twin(&a, &mut rng);
            let (wa, wb) = (a.word.clone().unwrap(), b.word.clone().unwrap());
            assert!(SHAPES.contains(&wa.text.as_str()) && SHAPES.contains(&wb.text.as_str()));
            assert_ne!(wa.text, wb.text);
            assert_eq!(
                Scene {
                    word: None,
                    ..a.clone()
                },
                Scene { word: None, ..b }
            );
            assert_eq!(
                (a.shape, a.colour, a.centre),
                (base.shape, base.colour, base.centre)
            );
        }
    }

    #[test]
    fn word_only_scenes_show_the_word_on_the_bare_background() {
        let w = World::new(64, 1.0).with_words(0.0, 0.0, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut seen = 0;
        for _ in 0..30 {
            let s = w.scene(&mut rng);
            let word = s.word.clone().unwrap().text;
            if !SHAPES.contains(&word.as_str()) {
                assert!(s.object);
                continue;
            }
            assert!(!s.object);
            assert_eq!(SHAPES[s.shape], word);
            let cap = w.caption(&s, &mut rng);
            assert!(cap.ends_with(&format!("{word}.")), "{cap}");
            let bare = w.render(&Scene {
                word: None,
                ..s.clone()
            });
            let bg = w.background(&s);
            assert_eq!(bare, bg, "no object is painted");
            seen += 1;
        }
        assert!(seen > 15, "{seen}");
    }
}
