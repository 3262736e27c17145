//! Fonts for the attack renderer: the bundled fonts (embedded in the binary from
//! `assets/fonts/`, credited in `assets/fonts/CREDITS.md`), fonts loaded from a TTF/OTF path,
//! a cache of both, and per-character fallback ([`FontStack`]).
//!
//! This is the only file of the attack stage that reads files besides the spec loader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ab_glyph::{Font as _, FontArc, GlyphId};
use thiserror::Error;

/// A font bundled with typoclip, selectable in a spec by its `name`.
#[derive(Debug, Clone, Copy)]
pub struct BundledFont {
    /// The name used in specs (`font = "sans-bold"`).
    pub name: &'static str,
    /// The family and style.
    pub family: &'static str,
    /// The file under `assets/fonts/`.
    pub file: &'static str,
    /// Its licence.
    pub licence: &'static str,
    bytes: &'static [u8],
}

/// The bundled fonts. The first is the default of every text layer; all of them, in this order,
/// are the last-resort fallbacks for characters missing from a layer's font.
pub const BUNDLED: &[BundledFont] = &[
    BundledFont {
        name: "sans-bold",
        family: "DejaVu Sans Bold",
        file: "DejaVuSans-Bold.ttf",
        licence: "Bitstream Vera / DejaVu (free)",
        bytes: include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf"),
    },
    BundledFont {
        name: "serif",
        family: "DejaVu Serif",
        file: "DejaVuSerif.ttf",
        licence: "Bitstream Vera / DejaVu (free)",
        bytes: include_bytes!("../../assets/fonts/DejaVuSerif.ttf"),
    },
    BundledFont {
        name: "mono",
        family: "DejaVu Sans Mono",
        file: "DejaVuSansMono.ttf",
        licence: "Bitstream Vera / DejaVu (free)",
        bytes: include_bytes!("../../assets/fonts/DejaVuSansMono.ttf"),
    },
    BundledFont {
        name: "handwriting",
        family: "Breip",
        file: "Breip.ttf",
        licence: "SIL OFL 1.0",
        bytes: include_bytes!("../../assets/fonts/Breip.ttf"),
    },
    BundledFont {
        name: "handwriting-caps",
        family: "Humor Sans",
        file: "Humor-Sans.ttf",
        licence: "SIL OFL 1.1",
        bytes: include_bytes!("../../assets/fonts/Humor-Sans.ttf"),
    },
    BundledFont {
        name: "comic",
        family: "Comic Neue Bold",
        file: "ComicNeue-Bold.otf",
        licence: "SIL OFL 1.1",
        bytes: include_bytes!("../../assets/fonts/ComicNeue-Bold.otf"),
    },
];

/// The default font of text layers.
pub const DEFAULT_FONT: &str = "sans-bold";

/// Why a font could not be had.
#[derive(Debug, Error)]
pub enum FontError {
    /// The file could not be read.
    #[error("cannot read font {}: {error}", path.display())]
    Io {
        /// The font path.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The bytes are not a TrueType/OpenType font.
    #[error("{}: not a TrueType/OpenType font", path.display())]
    Invalid {
        /// The font path.
        path: PathBuf,
    },
    /// A name that is neither bundled nor a path.
    #[error(
        "unknown font `{name}` (bundled: {}; or give a path to a .ttf/.otf file)",
        bundled_names()
    )]
    Unknown {
        /// The name as written.
        name: String,
    },
}

fn bundled_names() -> String {
    BUNDLED
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One loaded font.
#[derive(Clone)]
pub struct Font {
    /// The bundled name, or the path as resolved.
    pub name: String,
    font: FontArc,
    scale_per_px: f32,
}

impl std::fmt::Debug for Font {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Font").field("name", &self.name).finish()
    }
}

impl Font {
    fn new(name: String, font: FontArc) -> Self {
        let upem = font.units_per_em().unwrap_or(1000.0).max(1.0);
        Font {
            name,
            font,
            scale_per_px: 1.0 / upem,
        }
    }

    /// The glyph of `c`, or `None` when the font lacks it.
    pub fn glyph(&self, c: char) -> Option<GlyphId> {
        let id = self.font.glyph_id(c);
        (id.0 != 0).then_some(id)
    }

    /// Font units → pixels for a font size (em size) in pixels, as PIL's `truetype(size)`.
    pub fn units_to_px(&self, size_px: f32) -> f32 {
        size_px * self.scale_per_px
    }

    /// The underlying ab_glyph font.
    pub fn ab(&self) -> &FontArc {
        &self.font
    }
}

/// A primary font and its fallbacks: each character is drawn with the first font that has it.
#[derive(Debug, Clone)]
pub struct FontStack {
    /// Primary first.
    pub fonts: Vec<Arc<Font>>,
}

impl FontStack {
    /// The index into `fonts` and glyph for `c`, or `None` when no font has it.
    pub fn lookup(&self, c: char) -> Option<(usize, GlyphId)> {
        self.fonts
            .iter()
            .enumerate()
            .find_map(|(i, f)| f.glyph(c).map(|g| (i, g)))
    }

    /// The primary font.
    pub fn primary(&self) -> &Font {
        &self.fonts[0]
    }

    /// The first character of `text` (other than line breaks and tabs) that no font has.
    pub fn missing(&self, text: &str) -> Option<char> {
        text.chars()
            .filter(|&c| c != '\n' && c != '\t' && c != '\r')
            .find(|&c| self.lookup(c).is_none())
    }
}

/// Loads fonts by bundled name or path and keeps them, so each file is read once.
#[derive(Default)]
pub struct FontBook {
    cache: Mutex<HashMap<String, Arc<Font>>>,
}

impl FontBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide book.
    pub fn global() -> &'static FontBook {
        static BOOK: OnceLock<FontBook> = OnceLock::new();
        BOOK.get_or_init(FontBook::new)
    }

    /// Whether `s` names a file rather than a bundled font.
    pub fn is_path(s: &str) -> bool {
        let lower = s.to_ascii_lowercase();
        s.contains('/')
            || s.contains('\\')
            || [".ttf", ".otf", ".ttc"].iter().any(|e| lower.ends_with(e))
    }

    /// A bundled font by name, or a font file (relative paths are taken from `base_dir`, the
    /// spec file's folder).
    pub fn load(&self, name_or_path: &str, base_dir: &Path) -> Result<Arc<Font>, FontError> {
        let key = if Self::is_path(name_or_path) {
            let p = Path::new(name_or_path);
            let p = if p.is_relative() {
                base_dir.join(p)
            } else {
                p.to_path_buf()
            };
            format!("path:{}", p.display())
        } else {
            format!("bundled:{name_or_path}")
        };
        if let Some(f) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let font = if let Some(path) = key.strip_prefix("path:") {
            let path = PathBuf::from(path);
            let bytes = std::fs::read(&path).map_err(|error| FontError::Io {
                path: path.clone(),
                error,
            })?;
            let f = FontArc::try_from_vec(bytes)
                .map_err(|_| FontError::Invalid { path: path.clone() })?;
            Font::new(path.display().to_string(), f)
        } else {
            let b = bundled(name_or_path).ok_or_else(|| FontError::Unknown {
                name: name_or_path.to_string(),
            })?;
            let f = FontArc::try_from_slice(b.bytes).map_err(|_| FontError::Invalid {
                path: PathBuf::from(b.file),
            })?;
            Font::new(b.name.to_string(), f)
        };
        let font = Arc::new(font);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, font.clone());
        Ok(font)
    }

    /// `primary`, then `fallbacks`, then every bundled font (duplicates dropped).
    pub fn stack(
        &self,
        primary: &str,
        fallbacks: &[String],
        base_dir: &Path,
    ) -> Result<FontStack, FontError> {
        let mut fonts: Vec<Arc<Font>> = Vec::new();
        let names = std::iter::once(primary)
            .chain(fallbacks.iter().map(String::as_str))
            .chain(BUNDLED.iter().map(|b| b.name));
        for n in names {
            let f = self.load(n, base_dir)?;
            if !fonts.iter().any(|g| Arc::ptr_eq(g, &f)) {
                fonts.push(f);
            }
        }
        Ok(FontStack { fonts })
    }
}

/// The bundled font called `name`.
pub fn bundled(name: &str) -> Option<&'static BundledFont> {
    BUNDLED.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_font_parses_and_has_latin() {
        let book = FontBook::new();
        for b in BUNDLED {
            let f = book.load(b.name, Path::new(".")).unwrap();
            for c in "iPod$".chars() {
                assert!(f.glyph(c).is_some(), "{} lacks {c}", b.name);
            }
        }
    }

    #[test]
    fn fallback_covers_greek_and_cyrillic_but_not_cjk() {
        let book = FontBook::new();
        let s = book.stack("handwriting", &[], Path::new(".")).unwrap();
        assert!(s.fonts[0].glyph('Ж').is_none(), "Breip has no Cyrillic");
        assert_eq!(s.missing("Жλ iPod €"), None);
        assert_eq!(s.missing("猫"), Some('猫'));
    }

    #[test]
    fn unknown_name_and_missing_file_are_errors() {
        let book = FontBook::new();
        assert!(matches!(
            book.load("helvetica", Path::new(".")),
            Err(FontError::Unknown { .. })
        ));
        assert!(matches!(
            book.load("nope/x.ttf", Path::new("/nonexistent")),
            Err(FontError::Io { .. })
        ));
        assert!(book.load("Cargo.toml.ttf", Path::new(".")).is_err());
    }

    #[test]
    fn cache_returns_the_same_font() {
        let book = FontBook::new();
        let a = book.load("serif", Path::new(".")).unwrap();
        let b = book.load("serif", Path::new("/elsewhere")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
}
