//! The attack stage: declarative typographic attacks (TOML specs in `attacks/`) rendered onto
//! images.
//!
//! Inputs: a spec file and RGB images. Outputs: per (image, variant) the attacked image, the
//! mask of changed pixels and the L0 fraction (Distill's `avg_img_l0_norm_diff`).
//!
//! - [`spec`]: the schema, validation (`file:line:col: field: message` errors) and expansion of
//!   sweeps, cases and multi-position placements into named [`Variant`]s;
//! - [`render`](mod@render): pure rendering of a variant ([`render()`], [`render_for_model`]);
//! - [`composite`]: image-independent variants rasterised once and composited onto batches of
//!   model inputs as tensor operations on the model's device;
//! - [`fonts`]: bundled fonts, font files, fallback, cache (the only file I/O here besides
//!   reading the spec).
//!
//! # Spec format
//!
//! ```toml
//! description = "A white paper label saying iPod"   # one line, required
//! name = "ipod"            # default: the file stem
//! target = "iPod"          # the class the attack aims at (or per [[cases]])
//! stage = "source"         # or "model_input" (drawn after CLIP's resize + centre crop)
//! seed = 0                 # mixed with the per-image seed given at render time
//! skip_own_class = false   # true: images of the target class are not attacked (the attack
//!                          # writes another class's name)
//!
//! [[layers]]               # one or more, drawn bottom first
//! kind = "label"           # "text" | "label" (paper/post-it behind the text) | "scatter"
//! text = "iPod"            # UTF-8, "\n" breaks lines
//! font = "sans-bold"       # bundled: sans-bold, serif, mono, handwriting, handwriting-caps,
//!                          # comic (assets/fonts/CREDITS.md); or a .ttf/.otf path
//! fallback_fonts = []      # tried per character before the bundled fonts
//! size_px = 24             # or size_frac (of the short side), width_frac (the text spans that
//!                          # fraction of the width), or (labels) area_frac
//! color = "black"          # "#rgb", "#rrggbb", [r, g, b] or a basic name
//! opacity = 1.0
//! outline_width = 0        # px; outline_color
//! rotation = 0             # degrees, counter-clockwise
//! letter_spacing = 0.0     # em; line_spacing = 1.0; align = "center"
//! placement = "center"     # center, top_left, top_right, bottom_left, bottom_right,
//!                          # distill8, positions (+ positions = [[x, y], …]), random,
//!                          # grid (+ grid = [cols, rows]), box (the object box)
//! margin = 0.04            # corner inset, fraction of the short side; clamp = true
//! padding = 0.35           # labels: em; paper_color, border_width, border_color,
//! shadow = false           # shadow_offset = [0.08, 0.1] (em), shadow_blur (px), shadow_opacity
//!
//! # scatter: text = "$", count = 20, size_jitter = 0.0, rotation_jitter = 0.0, no_overlap
//!
//! [sweep]                  # cartesian product → variants named ipod/size_px=16/opacity=0.5
//! size_px = [16, 24, 32]   # a bare field sets it on every layer that has it
//! "layers.0.opacity" = [0.5, 1.0]
//!
//! [[cases]]                # optional: (name, target, text) triples, e.g. the Distill words;
//! name = "trash"           # `text` fills the text/label layers that have no text
//! target = "waste container"
//! text = "trash"
//! ```
//!
//! `placement = "distill8"` and `"positions"` give one variant per position (`…/pos=3`)
//! unless `all_positions = true`. See [`spec::DISTILL8`] for the (approximate) coordinates.

pub mod composite;
pub mod fonts;
pub mod render;
pub mod spec;

pub use fonts::{FontBook, FontError};
pub use render::{
    flatten, render, render_for_model, render_for_model_with_input, Flat, ModelRender, ObjectBox,
    Rendered,
};
pub use spec::{AttackSpec, Layer, SpecError, Stage, Variant};

use std::path::{Path, PathBuf};

/// The attack specs of a folder (its `.toml` files, sorted by name), without the comparison
/// plans that live beside them (`*-bench.toml`, e.g. `attacks/defense-bench.toml`).
pub fn spec_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("-bench.toml"))
        })
        .collect();
    v.sort();
    Ok(v)
}
