//! Attack specs: the TOML schema, its validation (every error as `file:line:col: field: message`)
//! and the expansion of `[sweep]`, `[[cases]]` and multi-position placements into named
//! [`Variant`]s, each fully resolved (numbers checked, colours parsed, fonts loaded, every
//! character covered by a font), so that rendering a variant cannot fail.
//!
//! See the [module docs](super) for the schema.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml_edit::{ImDocument, Item, Table as EditTable, Value as EditValue};

use super::fonts::{FontBook, FontStack, DEFAULT_FONT};

/// At most this many variants per spec.
pub const MAX_VARIANTS: usize = 100_000;

/// The eight fixed positions (x, y as fractions of width and height; the text block's centre) of
/// `placement = "distill8"`.
///
/// **An approximation**: the Distill study's automated attack drew each word at eight fixed
/// positions, but the coordinates are not published with the data; these are the four inner
/// corner points and the four edge midpoints at a 20 % margin. Each position is one variant
/// (`…/pos=0` … `…/pos=7`): the study reports one number per attack word, which is the mean over
/// the eight position variants.
pub const DISTILL8: [(f32, f32); 8] = [
    (0.25, 0.25),
    (0.75, 0.25),
    (0.25, 0.75),
    (0.75, 0.75),
    (0.5, 0.2),
    (0.5, 0.8),
    (0.2, 0.5),
    (0.8, 0.5),
];

/// A spec that could not be read or is invalid.
#[derive(Debug, Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        /// The spec path.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A syntax, schema or range error at a place in the file.
    #[error("{}:{line}:{col}: {field}: {message}", file.display())]
    Invalid {
        /// The spec path.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        col: usize,
        /// The field, dotted (`layers.0.opacity`), or `toml` for syntax errors.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Where an attack is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// On the source image; sizes relative to it. The model input is the attacked image resized
    /// and cropped.
    #[default]
    Source,
    /// On the model input (after CLIP's resize and centre crop): pixel-exact control of what the
    /// model sees.
    ModelInput,
}

/// An RGB colour (sRGB, 8 bits per channel).
pub type Rgb = [u8; 3];

/// How big text is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    /// Font size (em) in pixels of the drawing stage's image.
    Px(f32),
    /// Font size as a fraction of the image's short side.
    Frac(f32),
    /// Labels only: the font size is chosen so that the label covers this fraction of the image
    /// area.
    AreaFrac(f32),
    /// Text and labels: the font size is chosen so that the text's widest line spans this
    /// fraction of the image width (a long word is written smaller than a short one).
    WidthFrac(f32),
}

/// Horizontal alignment of the lines of a multi-line text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Align {
    /// Left.
    Left,
    /// Centred.
    #[default]
    Center,
    /// Right.
    Right,
}

/// A stroke around glyphs or a border around a label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stroke {
    /// Width in pixels.
    pub width: f32,
    /// Colour.
    pub color: Rgb,
}

/// The text and its look, shared by all layer kinds.
#[derive(Debug, Clone)]
pub struct TextStyle {
    /// The text (`\n` breaks lines); may be empty.
    pub text: String,
    /// The font and its fallbacks.
    pub fonts: FontStack,
    /// Font size.
    pub size: Size,
    /// Fill colour.
    pub color: Rgb,
    /// Glyph outline.
    pub outline: Option<Stroke>,
    /// Opacity of the whole layer, 0..=1.
    pub opacity: f32,
    /// Rotation in degrees, counter-clockwise.
    pub rotation: f32,
    /// Extra space between letters, in em.
    pub letter_spacing: f32,
    /// Line height as a multiple of the font's line height.
    pub line_spacing: f32,
    /// Line alignment.
    pub align: Align,
}

/// Where a text block or label goes (its centre, unless an anchor says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Image centre.
    Center,
    /// Top-left corner, inset by the margin.
    TopLeft,
    /// Top-right corner.
    TopRight,
    /// Bottom-left corner.
    BottomLeft,
    /// Bottom-right corner.
    BottomRight,
    /// Centre at (x, y), fractions of width and height.
    At(f32, f32),
    /// Drawn at each of these positions, all in one image.
    AtAll(Vec<(f32, f32)>),
    /// Centre uniformly at random (seeded) where the block fits.
    Random,
    /// Tiled: drawn at the centre of each cell of a `cols × rows` grid.
    Grid(u32, u32),
    /// Centre of the object box given at render time (image centre when none is given).
    ObjectBox,
}

/// Where and how a text block or label is placed.
#[derive(Debug, Clone)]
pub struct Place {
    /// The placement.
    pub placement: Placement,
    /// Margin for corner anchors, as a fraction of the short side.
    pub margin: f32,
    /// Move a block that would cross the image border inside, when it fits.
    pub clamp: bool,
}

/// A drop shadow behind a label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shadow {
    /// Offset (x, y) in em (positive: right, down).
    pub offset: [f32; 2],
    /// Blur radius in pixels.
    pub blur: f32,
    /// Opacity of the (black) shadow.
    pub opacity: f32,
}

/// One resolved layer of a variant.
#[derive(Debug, Clone)]
pub enum Layer {
    /// Text drawn directly on the image.
    Text {
        /// The text.
        style: TextStyle,
        /// Where.
        place: Place,
    },
    /// A paper label or post-it: a filled rectangle with the text on it.
    Label {
        /// The text.
        style: TextStyle,
        /// Where.
        place: Place,
        /// Padding around the text block, in em.
        padding: f32,
        /// Paper colour.
        paper: Rgb,
        /// Border.
        border: Option<Stroke>,
        /// Drop shadow.
        shadow: Option<Shadow>,
    },
    /// N marks at random (seeded) positions and sizes.
    Scatter {
        /// The mark and its look; `size` is the mean size.
        style: TextStyle,
        /// Number of marks.
        count: u32,
        /// Sizes are uniform in `size × [1 − j, 1 + j]`.
        size_jitter: f32,
        /// Each mark is rotated by a uniform angle in `rotation ± rotation_jitter` degrees.
        rotation_jitter: f32,
        /// Marks do not overlap (a mark that finds no free place in 100 tries is skipped).
        no_overlap: bool,
    },
}

/// One concrete attack: what a sweep evaluates and [`super::render`] draws.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Unique within the spec: `attack[/case][/key=value…][/pos=i]`.
    pub name: String,
    /// The spec's name.
    pub attack: String,
    /// The `[[cases]]` entry, if any.
    pub case: Option<String>,
    /// The class the attack pushes towards (a label-set class name, e.g. "piggy bank").
    pub target: String,
    /// Where the attack is drawn.
    pub stage: Stage,
    /// The spec's seed (mixed with the per-image seed at render time).
    pub seed: u64,
    /// The swept values of this variant, in the order of the name.
    pub params: Vec<(String, String)>,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// The attack writes another class's name: images whose true class is the target are not
    /// attacked with this variant (spec field `skip_own_class`).
    pub skip_own_class: bool,
}

/// A validated spec and all its variants.
#[derive(Debug, Clone)]
pub struct AttackSpec {
    /// `name` from the file, or the file stem.
    pub name: String,
    /// One line.
    pub description: String,
    /// The file it came from.
    pub path: PathBuf,
    /// All variants, in expansion order.
    pub variants: Vec<Variant>,
}

impl AttackSpec {
    /// Reads, validates and expands a spec file, with fonts from [`FontBook::global`].
    pub fn load(path: &Path) -> Result<AttackSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|error| SpecError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path, FontBook::global())
    }

    /// Validates and expands spec text; `origin` names it in errors, and relative font paths are
    /// taken from its folder.
    pub fn parse(text: &str, origin: &Path, fonts: &FontBook) -> Result<AttackSpec, SpecError> {
        Parser {
            text,
            origin,
            fonts,
        }
        .run()
    }

    /// The variant called `name`.
    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// The TOML schema.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    description: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    stage: Stage,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    skip_own_class: bool,
    #[serde(default)]
    layers: Vec<LayerSpec>,
    #[serde(default)]
    #[allow(dead_code)] // read from the document, typed here for the error messages
    sweep: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    cases: Vec<CaseSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    target: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LayerKind {
    Text,
    Label,
    Scatter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PlacementKind {
    Center,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Distill8,
    Positions,
    Random,
    Grid,
    Box,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ColorSpec {
    Name(String),
    Rgb([u8; 3]),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerSpec {
    kind: LayerKind,
    text: Option<String>,
    font: Option<String>,
    fallback_fonts: Option<Vec<String>>,
    size_px: Option<f64>,
    size_frac: Option<f64>,
    color: Option<ColorSpec>,
    opacity: Option<f64>,
    outline_width: Option<f64>,
    outline_color: Option<ColorSpec>,
    rotation: Option<f64>,
    letter_spacing: Option<f64>,
    line_spacing: Option<f64>,
    align: Option<Align>,
    placement: Option<PlacementKind>,
    positions: Option<Vec<[f64; 2]>>,
    all_positions: Option<bool>,
    margin: Option<f64>,
    clamp: Option<bool>,
    grid: Option<[u32; 2]>,
    area_frac: Option<f64>,
    width_frac: Option<f64>,
    padding: Option<f64>,
    paper_color: Option<ColorSpec>,
    border_width: Option<f64>,
    border_color: Option<ColorSpec>,
    shadow: Option<bool>,
    shadow_offset: Option<[f64; 2]>,
    shadow_blur: Option<f64>,
    shadow_opacity: Option<f64>,
    count: Option<u32>,
    size_jitter: Option<f64>,
    rotation_jitter: Option<f64>,
    no_overlap: Option<bool>,
}

const COMMON_FIELDS: &[&str] = &[
    "kind",
    "text",
    "font",
    "fallback_fonts",
    "size_px",
    "size_frac",
    "color",
    "opacity",
    "outline_width",
    "outline_color",
    "rotation",
];
const PLACED_FIELDS: &[&str] = &[
    "width_frac",
    "letter_spacing",
    "line_spacing",
    "align",
    "placement",
    "positions",
    "all_positions",
    "margin",
    "clamp",
    "grid",
];
const LABEL_FIELDS: &[&str] = &[
    "area_frac",
    "padding",
    "paper_color",
    "border_width",
    "border_color",
    "shadow",
    "shadow_offset",
    "shadow_blur",
    "shadow_opacity",
];
const SCATTER_FIELDS: &[&str] = &["count", "size_jitter", "rotation_jitter", "no_overlap"];
const TOP_SWEEPABLE: &[&str] = &["target", "stage", "seed"];

fn kind_allows(kind: LayerKind, field: &str) -> bool {
    COMMON_FIELDS.contains(&field)
        || match kind {
            LayerKind::Text => PLACED_FIELDS.contains(&field),
            LayerKind::Label => PLACED_FIELDS.contains(&field) || LABEL_FIELDS.contains(&field),
            LayerKind::Scatter => SCATTER_FIELDS.contains(&field),
        }
}

fn kind_name(kind: LayerKind) -> &'static str {
    match kind {
        LayerKind::Text => "text",
        LayerKind::Label => "label",
        LayerKind::Scatter => "scatter",
    }
}

// ---------------------------------------------------------------------------------------------
// Paths into the document.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_str(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn key_path(s: &str) -> Vec<Seg> {
    s.split('.')
        .map(|p| match p.parse::<usize>() {
            Ok(i) => Seg::Index(i),
            Err(_) => Seg::Key(p.to_string()),
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a EditValue),
    Table(&'a EditTable),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => match i {
                Item::Table(t) => t.span(),
                Item::ArrayOfTables(a) => a.span(),
                Item::Value(v) => v.span(),
                Item::None => None,
            },
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
        }
    }

    /// (key span, child) for a key.
    fn key(self, k: &str) -> Option<(Option<Range<usize>>, Node<'a>)> {
        match self {
            Node::Table(t) => t
                .get_key_value(k)
                .map(|(key, it)| (key.span(), Node::Item(it))),
            Node::Item(Item::Table(t)) => Node::Table(t).key(k),
            Node::Item(Item::Value(v)) => Node::Value(v).key(k),
            Node::Value(EditValue::InlineTable(t)) => t
                .get_key_value(k)
                .map(|(key, it)| (key.span(), Node::Item(it))),
            _ => None,
        }
    }

    fn index(self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(Item::Value(v)) => Node::Value(v).index(i),
            Node::Value(EditValue::Array(a)) => a.get(i).map(Node::Value),
            _ => None,
        }
    }

    fn keys(self) -> Vec<String> {
        match self {
            Node::Table(t) => t.iter().map(|(k, _)| k.to_string()).collect(),
            Node::Item(Item::Table(t)) => Node::Table(t).keys(),
            Node::Item(Item::Value(v)) => Node::Value(v).keys(),
            Node::Value(EditValue::InlineTable(t)) => {
                t.iter().map(|(k, _)| k.to_string()).collect()
            }
            _ => Vec::new(),
        }
    }

    fn len(self) -> usize {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.len(),
            Node::Item(Item::Value(v)) => Node::Value(v).len(),
            Node::Value(EditValue::Array(a)) => a.len(),
            _ => 0,
        }
    }
}

/// The span of the deepest node along `path` that exists (the value itself when present).
fn locate(doc: &EditTable, path: &[Seg]) -> Option<Range<usize>> {
    let mut node = Node::Table(doc);
    let mut best = None;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => node.key(k).map(|(ks, n)| {
                if let Some(s) = ks {
                    best = Some(s);
                }
                n
            }),
            Seg::Index(i) => node.index(*i),
        };
        match next {
            Some(n) => {
                if let Some(s) = n.span() {
                    best = Some(s);
                }
                node = n;
            }
            None => break,
        }
    }
    best
}

/// The dotted path of the deepest key whose key or value contains `offset`.
fn path_at(doc: &EditTable, offset: usize) -> Vec<Seg> {
    fn walk(node: Node, offset: usize, path: &mut Vec<Seg>) {
        for k in node.keys() {
            if let Some((ks, child)) = node.key(&k) {
                let inside = |r: &Option<Range<usize>>| {
                    r.as_ref()
                        .is_some_and(|r| r.start <= offset && offset < r.end.max(r.start + 1))
                };
                let child_has = inside(&child.span())
                    || (0..child.len())
                        .any(|i| child.index(i).is_some_and(|c| contains(c, offset)));
                if inside(&ks) || child_has {
                    path.push(Seg::Key(k));
                    for i in 0..child.len() {
                        if let Some(c) = child.index(i) {
                            if contains(c, offset) {
                                path.push(Seg::Index(i));
                                walk(c, offset, path);
                                return;
                            }
                        }
                    }
                    walk(child, offset, path);
                    return;
                }
            }
        }
    }
    fn contains(n: Node, offset: usize) -> bool {
        if n.span()
            .is_some_and(|r| r.start <= offset && offset < r.end)
        {
            return true;
        }
        // A `[[table]]` element's span is its header only: look at its keys too.
        n.keys().iter().any(|k| {
            n.key(k).is_some_and(|(ks, c)| {
                ks.is_some_and(|r| r.start <= offset && offset < r.end) || contains(c, offset)
            })
        })
    }
    let mut path = Vec::new();
    walk(Node::Table(doc), offset, &mut path);
    path
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// Parsing and expansion.

struct Parser<'a> {
    text: &'a str,
    origin: &'a Path,
    fonts: &'a FontBook,
}

/// A value set by a sweep or a case: where it goes and where it was written.
#[derive(Clone)]
struct Override {
    path: Vec<Seg>,
    value: toml::Value,
    span: Option<Range<usize>>,
}

struct SweepAxis {
    key: String,
    targets: Vec<Vec<Seg>>,
    values: Vec<(toml::Value, Option<Range<usize>>)>,
}

/// An error found while resolving a variant: the field path and the message.
struct FieldError {
    path: Vec<Seg>,
    message: String,
}

fn ferr(path: Vec<Seg>, message: impl Into<String>) -> FieldError {
    FieldError {
        path,
        message: message.into(),
    }
}

impl Parser<'_> {
    fn err_at(
        &self,
        span: Option<Range<usize>>,
        field: &str,
        message: impl Into<String>,
    ) -> SpecError {
        let (line, col) = line_col(self.text, span.map_or(0, |r| r.start));
        SpecError::Invalid {
            file: self.origin.to_path_buf(),
            line,
            col,
            field: if field.is_empty() {
                "(root)".into()
            } else {
                field.into()
            },
            message: message.into(),
        }
    }

    fn run(&self) -> Result<AttackSpec, SpecError> {
        let doc = ImDocument::parse(self.text)
            .map_err(|e| self.err_at(e.span(), "toml", e.message().trim().to_string()))?;
        let root = doc.as_table();
        // Schema check with the file's own spans.
        let file: SpecFile = toml::from_str(self.text).map_err(|e| self.serde_error(root, &e))?;
        let base: toml::Table =
            toml::from_str(self.text).map_err(|e| self.serde_error(root, &e))?;

        // Fields that exist but not for this layer kind.
        for (i, layer) in file.layers.iter().enumerate() {
            let node = Node::Table(root)
                .key("layers")
                .and_then(|(_, n)| n.index(i));
            let Some(node) = node else { continue };
            for k in node.keys() {
                if !kind_allows(layer.kind, &k) {
                    let span = node.key(&k).and_then(|(ks, _)| ks);
                    return Err(self.err_at(
                        span,
                        &format!("layers.{i}.{k}"),
                        format!("not a field of `{}` layers", kind_name(layer.kind)),
                    ));
                }
            }
        }
        if file.layers.is_empty() {
            return Err(self.err_at(None, "layers", "at least one [[layers]] entry is needed"));
        }
        let name = file.name.clone().unwrap_or_else(|| {
            self.origin
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "attack".into())
        });
        if name.is_empty() || name.contains('/') {
            return Err(self.err_at(
                locate(root, &[Seg::Key("name".into())]),
                "name",
                "must be non-empty and contain no `/`",
            ));
        }
        if file.description.trim().is_empty() || file.description.contains('\n') {
            return Err(self.err_at(
                locate(root, &[Seg::Key("description".into())]),
                "description",
                "must be one non-empty line",
            ));
        }

        let axes = self.sweep_axes(root, &base, &file)?;
        let cases = self.cases(root, &file)?;

        let mut total: usize = cases.len().max(1);
        for a in &axes {
            total = total.saturating_mul(a.values.len());
        }
        if total > MAX_VARIANTS {
            return Err(self.err_at(
                locate(root, &[Seg::Key("sweep".into())]),
                "sweep",
                format!("expands to {total} variants (at most {MAX_VARIANTS})"),
            ));
        }

        let base_dir = self
            .origin
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut variants = Vec::new();
        let case_list: Vec<Option<&(String, Vec<Override>)>> = if cases.is_empty() {
            vec![None]
        } else {
            cases.iter().map(Some).collect()
        };
        let mut combos: Vec<Vec<usize>> = vec![Vec::new()];
        for a in &axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    (0..a.values.len()).map(move |i| {
                        let mut c = c.clone();
                        c.push(i);
                        c
                    })
                })
                .collect();
        }
        for case in case_list {
            for idx in &combos {
                let mut overrides: Vec<Override> = case.map(|c| c.1.clone()).unwrap_or_default();
                let mut params = Vec::new();
                for (a, &i) in axes.iter().zip(idx) {
                    let (v, span) = &a.values[i];
                    params.push((a.key.clone(), value_label(v)));
                    for t in &a.targets {
                        overrides.push(Override {
                            path: t.clone(),
                            value: v.clone(),
                            span: span.clone(),
                        });
                    }
                }
                let mut prefix = name.clone();
                if let Some((cname, _)) = case {
                    prefix = format!("{prefix}/{cname}");
                }
                for (k, v) in &params {
                    prefix = format!("{prefix}/{k}={v}");
                }
                let expanded = self
                    .variant(
                        &base,
                        &overrides,
                        &base_dir,
                        &name,
                        case.map(|c| c.0.clone()),
                        params,
                    )
                    .map_err(|e| self.field_error(root, &overrides, e))?;
                for (suffix, mut v) in expanded {
                    v.name = format!("{prefix}{suffix}");
                    variants.push(v);
                }
                if variants.len() > MAX_VARIANTS {
                    break;
                }
            }
        }
        if variants.len() > MAX_VARIANTS {
            return Err(self.err_at(
                None,
                "layers",
                format!(
                    "expands to {} variants (at most {MAX_VARIANTS})",
                    variants.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for v in &variants {
            if !seen.insert(v.name.as_str()) {
                return Err(self.err_at(
                    locate(root, &[Seg::Key("sweep".into())]),
                    "sweep",
                    format!(
                        "two variants are both called `{}` (repeated sweep value?)",
                        v.name
                    ),
                ));
            }
        }
        Ok(AttackSpec {
            name,
            description: file.description.trim().to_string(),
            path: self.origin.to_path_buf(),
            variants,
        })
    }

    fn serde_error(&self, root: &EditTable, e: &toml::de::Error) -> SpecError {
        let mut msg = e.message().trim().to_string();
        if let (Some(field), Some(i)) = (
            backticked(&msg, "unknown field `"),
            msg.find(", expected one of "),
        ) {
            let known: Vec<String> = msg[i..]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
            let best = known
                .iter()
                .map(|k| (edit_distance(&field, k), k))
                .min()
                .filter(|(d, _)| *d <= 3);
            msg = match best {
                Some((_, k)) => format!("unknown field `{field}`; did you mean `{k}`?"),
                None => format!("unknown field `{field}`"),
            };
        }
        let mut path = e.span().map(|s| path_at(root, s.start)).unwrap_or_default();
        if let Some(f) = backticked(&msg, "missing field `") {
            path.push(Seg::Key(f));
        }
        self.err_at(e.span(), &path_str(&path), msg)
    }

    fn field_error(&self, root: &EditTable, overrides: &[Override], e: FieldError) -> SpecError {
        // A value that came from a sweep or a case is reported where it was written.
        let from = overrides
            .iter()
            .rev()
            .find(|o| e.path.starts_with(&o.path) || o.path.starts_with(&e.path));
        let span = match from {
            Some(o) if o.span.is_some() => o.span.clone(),
            _ => locate(root, &e.path),
        };
        self.err_at(span, &path_str(&e.path), e.message)
    }

    fn sweep_axes(
        &self,
        root: &EditTable,
        base: &toml::Table,
        file: &SpecFile,
    ) -> Result<Vec<SweepAxis>, SpecError> {
        let Some((_, sweep)) = Node::Table(root).key("sweep") else {
            return Ok(Vec::new());
        };
        let mut axes = Vec::new();
        for key in sweep.keys() {
            let (kspan, vals) = sweep.key(&key).expect("listed key");
            let field = format!("sweep.{key}");
            let n = vals.len();
            if n == 0 {
                return Err(self.err_at(
                    vals.span().or(kspan),
                    &field,
                    "needs a non-empty list of values",
                ));
            }
            let targets = self
                .sweep_targets(&key, file)
                .map_err(|m| self.err_at(kspan.clone(), &field, m))?;
            let raw = base
                .get("sweep")
                .and_then(|s| s.get(&key))
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            let mut values = Vec::new();
            let mut labels = std::collections::HashSet::new();
            for (i, v) in raw.into_iter().enumerate() {
                let span = vals.index(i).and_then(|n| n.span());
                // Type-check the value alone at each place it goes.
                let mut t = base.clone();
                t.remove("sweep");
                for p in &targets {
                    set_path(&mut t, p, v.clone());
                }
                if let Err(e) = SpecFile::deserialize(toml::Value::Table(t)) {
                    return Err(self.err_at(span, &key, e.message().trim().to_string()));
                }
                if !labels.insert(value_label(&v)) {
                    return Err(self.err_at(span, &key, "repeated value"));
                }
                values.push((v, span));
            }
            axes.push(SweepAxis {
                key,
                targets,
                values,
            });
        }
        Ok(axes)
    }

    /// The paths a sweep key sets: a top-level field, a dotted path (`layers.1.size_px`), or a
    /// bare layer field set on every layer whose kind has it.
    fn sweep_targets(&self, key: &str, file: &SpecFile) -> Result<Vec<Vec<Seg>>, String> {
        if TOP_SWEEPABLE.contains(&key) {
            return Ok(vec![vec![Seg::Key(key.into())]]);
        }
        if key.contains('.') {
            let p = key_path(key);
            match p.as_slice() {
                [Seg::Key(l), Seg::Index(i), Seg::Key(f), ..] if l == "layers" => {
                    let layer = file.layers.get(*i).ok_or_else(|| {
                        format!("there is no layers.{i} ({} layers)", file.layers.len())
                    })?;
                    if !kind_allows(layer.kind, f) || f == "kind" {
                        return Err(format!(
                            "`{f}` is not a sweepable field of `{}` layers",
                            kind_name(layer.kind)
                        ));
                    }
                    Ok(vec![p])
                }
                _ => Err("a dotted sweep key must look like `layers.N.field`".into()),
            }
        } else {
            if key == "kind" {
                return Err("`kind` cannot be swept".into());
            }
            let t: Vec<Vec<Seg>> = file
                .layers
                .iter()
                .enumerate()
                .filter(|(_, l)| kind_allows(l.kind, key))
                .map(|(i, _)| {
                    vec![
                        Seg::Key("layers".into()),
                        Seg::Index(i),
                        Seg::Key(key.into()),
                    ]
                })
                .collect();
            if t.is_empty() {
                Err(format!(
                    "no layer has a field `{key}` (top-level sweepable fields: {})",
                    TOP_SWEEPABLE.join(", ")
                ))
            } else {
                Ok(t)
            }
        }
    }

    fn cases(
        &self,
        root: &EditTable,
        file: &SpecFile,
    ) -> Result<Vec<(String, Vec<Override>)>, SpecError> {
        let mut out = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, c) in file.cases.iter().enumerate() {
            let cpath = |f: &str| vec![Seg::Key("cases".into()), Seg::Index(i), Seg::Key(f.into())];
            if c.name.is_empty() || c.name.contains('/') || !names.insert(c.name.clone()) {
                return Err(self.err_at(
                    locate(root, &cpath("name")),
                    &path_str(&cpath("name")),
                    "case names must be unique, non-empty and contain no `/`",
                ));
            }
            let mut ov = vec![Override {
                path: vec![Seg::Key("target".into())],
                value: toml::Value::String(c.target.clone()),
                span: locate(root, &cpath("target")),
            }];
            if let Some(text) = &c.text {
                for (j, l) in file.layers.iter().enumerate() {
                    if l.text.is_none() && l.kind != LayerKind::Scatter {
                        ov.push(Override {
                            path: vec![
                                Seg::Key("layers".into()),
                                Seg::Index(j),
                                Seg::Key("text".into()),
                            ],
                            value: toml::Value::String(text.clone()),
                            span: locate(root, &cpath("text")),
                        });
                    }
                }
            }
            out.push((c.name.clone(), ov));
        }
        Ok(out)
    }

    /// One combination of sweep values and case → one or more variants (multi-position
    /// placements), each with its name suffix.
    fn variant(
        &self,
        base: &toml::Table,
        overrides: &[Override],
        base_dir: &Path,
        attack: &str,
        case: Option<String>,
        params: Vec<(String, String)>,
    ) -> Result<Vec<(String, Variant)>, FieldError> {
        let mut t = base.clone();
        t.remove("sweep");
        t.remove("cases");
        for o in overrides {
            set_path(&mut t, &o.path, o.value.clone());
        }
        let file = SpecFile::deserialize(toml::Value::Table(t))
            .map_err(|e| ferr(Vec::new(), e.message().trim().to_string()))?;
        let target = file.target.clone().ok_or_else(|| {
            ferr(
                vec![Seg::Key("target".into())],
                "missing: the class this attack aims at (or give [[cases]] with targets)",
            )
        })?;
        if target.trim().is_empty() {
            return Err(ferr(vec![Seg::Key("target".into())], "must not be empty"));
        }
        let mut layers = Vec::new();
        let mut choices: Vec<(usize, Vec<Placement>)> = Vec::new();
        for (i, l) in file.layers.iter().enumerate() {
            let p = |f: &str| vec![Seg::Key("layers".into()), Seg::Index(i), Seg::Key(f.into())];
            let (layer, multi) = self.layer(l, &p, base_dir)?;
            if let Some(m) = multi {
                choices.push((i, m));
            }
            layers.push(layer);
        }
        let mut out = Vec::new();
        let proto = Variant {
            name: String::new(),
            attack: attack.to_string(),
            case,
            target: target.trim().to_string(),
            stage: file.stage,
            seed: file.seed,
            params,
            layers,
            skip_own_class: file.skip_own_class,
        };
        // Cartesian product of the multi-position layers.
        let mut combos: Vec<(String, Vec<(usize, Placement)>)> = vec![(String::new(), Vec::new())];
        let named_by_layer = choices.len() > 1;
        for (li, options) in &choices {
            let mut next = Vec::new();
            for (suffix, sel) in &combos {
                for (k, pl) in options.iter().enumerate() {
                    let tag = if named_by_layer {
                        format!("/pos{li}={k}")
                    } else {
                        format!("/pos={k}")
                    };
                    let mut s = sel.clone();
                    s.push((*li, pl.clone()));
                    next.push((format!("{suffix}{tag}"), s));
                }
            }
            combos = next;
        }
        for (suffix, sel) in combos {
            let mut v = proto.clone();
            for (li, pl) in sel {
                if let Layer::Text { place, .. } | Layer::Label { place, .. } = &mut v.layers[li] {
                    place.placement = pl;
                }
            }
            let mut params = v.params.clone();
            if !suffix.is_empty() {
                for part in suffix.trim_start_matches('/').split('/') {
                    if let Some((k, val)) = part.split_once('=') {
                        params.push((k.to_string(), val.to_string()));
                    }
                }
            }
            v.params = params;
            out.push((suffix, v));
        }
        Ok(out)
    }

    /// A resolved layer, and the positions it expands to when it has several (one variant each).
    fn layer(
        &self,
        l: &LayerSpec,
        p: &dyn Fn(&str) -> Vec<Seg>,
        base_dir: &Path,
    ) -> Result<(Layer, Option<Vec<Placement>>), FieldError> {
        let num = |v: Option<f64>, f: &str, lo: f64, hi: f64, d: f64| -> Result<f32, FieldError> {
            match v {
                None => Ok(d as f32),
                Some(x) if x >= lo && x <= hi => Ok(x as f32),
                Some(x) => Err(ferr(p(f), format!("{x} is out of range [{lo}, {hi}]"))),
            }
        };
        let col = |v: &Option<ColorSpec>, f: &str, d: Rgb| -> Result<Rgb, FieldError> {
            match v {
                None => Ok(d),
                Some(c) => parse_color(c).map_err(|m| ferr(p(f), m)),
            }
        };
        let default_text = match l.kind {
            LayerKind::Scatter => Some("$".to_string()),
            _ => None,
        };
        let text =
            l.text.clone().or(default_text).ok_or_else(|| {
                ferr(p("text"), "missing (give `text`, or [[cases]] with `text`)")
            })?;
        if text.chars().count() > 10_000 {
            return Err(ferr(p("text"), "longer than 10000 characters"));
        }
        if let Some(c) = text
            .chars()
            .find(|&c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(ferr(
                p("text"),
                format!("control character U+{:04X}", c as u32),
            ));
        }
        let font = l.font.clone().unwrap_or_else(|| DEFAULT_FONT.to_string());
        let fallbacks = l.fallback_fonts.clone().unwrap_or_default();
        for (j, f) in fallbacks.iter().enumerate() {
            self.fonts.load(f, base_dir).map_err(|e| {
                let mut q = p("fallback_fonts");
                q.push(Seg::Index(j));
                ferr(q, e.to_string())
            })?;
        }
        let fonts = self
            .fonts
            .stack(&font, &fallbacks, base_dir)
            .map_err(|e| ferr(p("font"), e.to_string()))?;
        if let Some(c) = fonts.missing(&text) {
            return Err(ferr(
                p("text"),
                format!(
                    "character {c:?} (U+{:04X}) is in none of the fonts ({}); add a font that has it to `fallback_fonts`",
                    c as u32,
                    fonts.fonts.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let sizes = [
            ("size_px", l.size_px.is_some()),
            ("size_frac", l.size_frac.is_some()),
            ("area_frac", l.area_frac.is_some()),
            ("width_frac", l.width_frac.is_some()),
        ];
        if sizes.iter().filter(|s| s.1).count() > 1 {
            let f = sizes.iter().find(|s| s.1).expect("two are given").0;
            return Err(ferr(
                p(f),
                "give only one of size_px, size_frac, area_frac, width_frac",
            ));
        }
        let size = if let Some(x) = l.size_px {
            Size::Px(num(Some(x), "size_px", 0.5, 4096.0, 0.0)?)
        } else if let Some(x) = l.size_frac {
            Size::Frac(num(Some(x), "size_frac", 0.001, 4.0, 0.0)?)
        } else if let Some(x) = l.area_frac {
            Size::AreaFrac(num(Some(x), "area_frac", 0.0001, 1.0, 0.0)?)
        } else if let Some(x) = l.width_frac {
            Size::WidthFrac(num(Some(x), "width_frac", 0.01, 1.0, 0.0)?)
        } else {
            Size::Frac(match l.kind {
                LayerKind::Scatter => 0.08,
                _ => 0.12,
            })
        };
        let outline_width = num(l.outline_width, "outline_width", 0.0, 32.0, 0.0)?;
        let outline_color = col(&l.outline_color, "outline_color", [0, 0, 0])?;
        if l.outline_color.is_some() && l.outline_width.is_none() {
            return Err(ferr(
                p("outline_color"),
                "has no effect without outline_width",
            ));
        }
        let style = TextStyle {
            text,
            fonts,
            size,
            color: col(&l.color, "color", [0, 0, 0])?,
            outline: (outline_width > 0.0).then_some(Stroke {
                width: outline_width,
                color: outline_color,
            }),
            opacity: num(l.opacity, "opacity", 0.0, 1.0, 1.0)?,
            rotation: num(l.rotation, "rotation", -360.0, 360.0, 0.0)?,
            letter_spacing: num(l.letter_spacing, "letter_spacing", -0.5, 4.0, 0.0)?,
            line_spacing: num(l.line_spacing, "line_spacing", 0.5, 5.0, 1.0)?,
            align: l.align.unwrap_or_default(),
        };
        if l.kind == LayerKind::Scatter {
            let count = l.count.unwrap_or(20);
            if count > 10_000 {
                return Err(ferr(
                    p("count"),
                    format!("{count} is out of range [0, 10000]"),
                ));
            }
            return Ok((
                Layer::Scatter {
                    style,
                    count,
                    size_jitter: num(l.size_jitter, "size_jitter", 0.0, 0.95, 0.0)?,
                    rotation_jitter: num(l.rotation_jitter, "rotation_jitter", 0.0, 180.0, 0.0)?,
                    no_overlap: l.no_overlap.unwrap_or(false),
                },
                None,
            ));
        }
        if matches!(style.size, Size::AreaFrac(_)) && l.kind != LayerKind::Label {
            return Err(ferr(p("area_frac"), "only labels can be sized by area"));
        }
        // Placement.
        let kind = l.placement.unwrap_or(if l.positions.is_some() {
            PlacementKind::Positions
        } else {
            PlacementKind::Center
        });
        if l.positions.is_some() && kind != PlacementKind::Positions {
            return Err(ferr(p("positions"), "only with placement = \"positions\""));
        }
        if l.grid.is_some() && kind != PlacementKind::Grid {
            return Err(ferr(p("grid"), "only with placement = \"grid\""));
        }
        let all = l.all_positions.unwrap_or(false);
        let list: Option<Vec<(f32, f32)>> = match kind {
            PlacementKind::Distill8 => Some(DISTILL8.to_vec()),
            PlacementKind::Positions => {
                let ps = l
                    .positions
                    .as_ref()
                    .ok_or_else(|| ferr(p("positions"), "missing: a list of [x, y] fractions"))?;
                if ps.is_empty() {
                    return Err(ferr(p("positions"), "must not be empty"));
                }
                let mut v = Vec::new();
                for (j, [x, y]) in ps.iter().enumerate() {
                    if !((0.0..=1.0).contains(x) && (0.0..=1.0).contains(y)) {
                        let mut q = p("positions");
                        q.push(Seg::Index(j));
                        return Err(ferr(
                            q,
                            format!("[{x}, {y}]: x and y must be fractions in [0, 1]"),
                        ));
                    }
                    v.push((*x as f32, *y as f32));
                }
                Some(v)
            }
            _ => None,
        };
        if l.all_positions.is_some() && list.is_none() {
            return Err(ferr(
                p("all_positions"),
                "only with placement = \"distill8\" or \"positions\"",
            ));
        }
        let (placement, multi) = match (kind, list) {
            (_, Some(list)) if all => (Placement::AtAll(list), None),
            (_, Some(list)) if list.len() == 1 => (Placement::At(list[0].0, list[0].1), None),
            (_, Some(list)) => (
                Placement::At(list[0].0, list[0].1),
                Some(list.into_iter().map(|(x, y)| Placement::At(x, y)).collect()),
            ),
            (PlacementKind::Center, None) => (Placement::Center, None),
            (PlacementKind::TopLeft, None) => (Placement::TopLeft, None),
            (PlacementKind::TopRight, None) => (Placement::TopRight, None),
            (PlacementKind::BottomLeft, None) => (Placement::BottomLeft, None),
            (PlacementKind::BottomRight, None) => (Placement::BottomRight, None),
            (PlacementKind::Random, None) => (Placement::Random, None),
            (PlacementKind::Box, None) => (Placement::ObjectBox, None),
            (PlacementKind::Grid, None) => {
                let [c, r] = l.grid.unwrap_or([3, 3]);
                if !(1..=64).contains(&c) || !(1..=64).contains(&r) {
                    return Err(ferr(p("grid"), "cols and rows must be in [1, 64]"));
                }
                (Placement::Grid(c, r), None)
            }
            (PlacementKind::Distill8 | PlacementKind::Positions, None) => {
                unreachable!("has a list")
            }
        };
        let place = Place {
            placement,
            margin: num(l.margin, "margin", 0.0, 0.5, 0.04)?,
            clamp: l.clamp.unwrap_or(true),
        };
        let layer = if l.kind == LayerKind::Label {
            let bw = num(l.border_width, "border_width", 0.0, 1024.0, 0.0)?;
            let bc = col(&l.border_color, "border_color", [60, 60, 60])?;
            let shadow_on = l.shadow.unwrap_or(false);
            for f in ["shadow_offset", "shadow_blur", "shadow_opacity"] {
                let set = match f {
                    "shadow_offset" => l.shadow_offset.is_some(),
                    "shadow_blur" => l.shadow_blur.is_some(),
                    _ => l.shadow_opacity.is_some(),
                };
                if set && !shadow_on {
                    return Err(ferr(p(f), "has no effect without shadow = true"));
                }
            }
            let [ox, oy] = l.shadow_offset.unwrap_or([0.08, 0.1]);
            for (j, o) in [ox, oy].iter().enumerate() {
                if !(-2.0..=2.0).contains(o) {
                    let mut q = p("shadow_offset");
                    q.push(Seg::Index(j));
                    return Err(ferr(q, format!("{o} is out of range [-2, 2] (em)")));
                }
            }
            Layer::Label {
                style,
                place,
                padding: num(l.padding, "padding", 0.0, 4.0, 0.35)?,
                paper: col(&l.paper_color, "paper_color", [255, 255, 255])?,
                border: (bw > 0.0).then_some(Stroke {
                    width: bw,
                    color: bc,
                }),
                shadow: shadow_on
                    .then(|| -> Result<Shadow, FieldError> {
                        Ok(Shadow {
                            offset: [ox as f32, oy as f32],
                            blur: num(l.shadow_blur, "shadow_blur", 0.0, 64.0, 2.0)?,
                            opacity: num(l.shadow_opacity, "shadow_opacity", 0.0, 1.0, 0.35)?,
                        })
                    })
                    .transpose()?,
            }
        } else {
            Layer::Text { style, place }
        };
        Ok((layer, multi))
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

fn backticked(msg: &str, prefix: &str) -> Option<String> {
    let rest = &msg[msg.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

fn set_path(t: &mut toml::Table, path: &[Seg], value: toml::Value) {
    fn go(v: &mut toml::Value, path: &[Seg], value: toml::Value) {
        match path.split_first() {
            None => *v = value,
            Some((Seg::Key(k), rest)) => {
                if let toml::Value::Table(t) = v {
                    let e = t
                        .entry(k.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    go(e, rest, value);
                }
            }
            Some((Seg::Index(i), rest)) => {
                if let toml::Value::Array(a) = v {
                    if let Some(e) = a.get_mut(*i) {
                        go(e, rest, value);
                    }
                }
            }
        }
    }
    let mut root = toml::Value::Table(std::mem::take(t));
    go(&mut root, path, value);
    if let toml::Value::Table(r) = root {
        *t = r;
    }
}

/// How a swept value appears in a variant name: numbers as written, strings bare (`/` → `_`).
fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.replace('/', "_"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => format!("{f}"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(a) => format!(
            "[{}]",
            a.iter().map(value_label).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string().replace('/', "_"),
    }
}

/// Parses `#rgb`, `#rrggbb`, a basic colour name, or `[r, g, b]`.
fn parse_color(c: &ColorSpec) -> Result<Rgb, String> {
    let s = match c {
        ColorSpec::Rgb(rgb) => return Ok(*rgb),
        ColorSpec::Name(s) => s.trim().to_ascii_lowercase(),
    };
    let named = match s.as_str() {
        "white" => Some([255, 255, 255]),
        "black" => Some([0, 0, 0]),
        "red" => Some([255, 0, 0]),
        "green" => Some([0, 128, 0]),
        "blue" => Some([0, 0, 255]),
        "yellow" => Some([255, 255, 0]),
        "orange" => Some([255, 165, 0]),
        "purple" => Some([128, 0, 128]),
        "pink" => Some([255, 192, 203]),
        "brown" => Some([139, 69, 19]),
        "gray" | "grey" => Some([128, 128, 128]),
        "cyan" => Some([0, 255, 255]),
        "magenta" => Some([255, 0, 255]),
        "postit" | "post-it" => Some([255, 236, 110]),
        _ => None,
    };
    if let Some(n) = named {
        return Ok(n);
    }
    let hex = s.strip_prefix('#').ok_or_else(|| {
        format!("`{s}` is not a colour (#rgb, #rrggbb, [r, g, b] or a name like white)")
    })?;
    let digits: Vec<u8> = hex
        .chars()
        .map(|ch| ch.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("`{s}`: bad hex digit"))?;
    match digits.as_slice() {
        [r, g, b] => Ok([r * 17, g * 17, b * 17]),
        [r1, r0, g1, g0, b1, b0] => Ok([r1 * 16 + r0, g1 * 16 + g0, b1 * 16 + b0]),
        _ => Err(format!("`{s}`: use #rgb or #rrggbb")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AttackSpec, SpecError> {
        AttackSpec::parse(s, Path::new("attacks/t.toml"), FontBook::global())
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    const IPOD: &str = r#"
description = "iPod label"
name = "ipod"
target = "iPod"

[[layers]]
kind = "label"
text = "iPod"
size_px = 24
"#;

    #[test]
    fn minimal_spec_has_one_variant() {
        let s = parse(IPOD).unwrap();
        assert_eq!(s.variants.len(), 1);
        assert_eq!(s.variants[0].name, "ipod");
        assert_eq!(s.variants[0].target, "iPod");
        assert!(matches!(s.variants[0].layers[0], Layer::Label { .. }));
    }

    #[test]
    fn sweep_expands_the_cartesian_product_in_file_order() {
        let s = parse(&format!(
            "{IPOD}\n[sweep]\nsize_px = [16, 24, 32]\nopacity = [0.5, 1.0]\n"
        ))
        .unwrap();
        assert_eq!(s.variants.len(), 6);
        assert_eq!(s.variants[0].name, "ipod/size_px=16/opacity=0.5");
        assert_eq!(s.variants[3].name, "ipod/size_px=24/opacity=1");
        assert_eq!(
            s.variants[5].params,
            vec![
                ("size_px".to_string(), "32".to_string()),
                ("opacity".to_string(), "1".to_string())
            ]
        );
        let Layer::Label { style, .. } = &s.variants[5].layers[0] else {
            panic!()
        };
        assert_eq!(style.size, Size::Px(32.0));
        assert_eq!(style.opacity, 1.0);
    }

    #[test]
    fn distill8_gives_eight_variants_per_case() {
        let s = parse(
            r#"
description = "d"
name = "d"
[[layers]]
kind = "text"
placement = "distill8"
[[cases]]
name = "trash"
target = "waste container"
text = "trash"
[[cases]]
name = "meow"
target = "Siamese cat"
text = "meow"
[sweep]
color = ["black", "white"]
"#,
        )
        .unwrap();
        assert_eq!(s.variants.len(), 2 * 2 * 8);
        assert_eq!(s.variants[0].name, "d/trash/color=black/pos=0");
        assert_eq!(s.variants[17].name, "d/meow/color=black/pos=1");
        assert_eq!(s.variants[17].target, "Siamese cat");
        let Layer::Text { style, place } = &s.variants[17].layers[0] else {
            panic!()
        };
        assert_eq!(style.text, "meow");
        assert_eq!(place.placement, Placement::At(DISTILL8[1].0, DISTILL8[1].1));
    }

    #[test]
    fn errors_have_file_line_col_field() {
        let e = err("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\ncolour = \"red\"\n");
        assert_eq!(
            e,
            "attacks/t.toml:6:1: layers.0.colour: unknown field `colour`; did you mean `color`?"
        );
        let e = err("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\nopacity = 1.5\n");
        assert_eq!(
            e,
            "attacks/t.toml:6:11: layers.0.opacity: 1.5 is out of range [0, 1]"
        );
        let e = err("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\nsize_px = \"big\"\n");
        assert!(
            e.starts_with("attacks/t.toml:6:11: layers.0.size_px: invalid type"),
            "{e}"
        );
        let e = err("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\nfont = \"nope.ttf\"\n");
        assert!(
            e.starts_with("attacks/t.toml:6:8: layers.0.font: cannot read font"),
            "{e}"
        );
        let e = err("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\ncount = 3\n");
        assert_eq!(
            e,
            "attacks/t.toml:6:1: layers.0.count: not a field of `text` layers"
        );
        let e = err("description = \"x\"\n[[layers]]\nkind = \"text\"\ntext = \"a\"\n");
        assert!(e.contains(": target: missing"), "{e}");
        let e = err("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"txt\"\n");
        assert!(
            e.starts_with("attacks/t.toml:4:8: layers.0.kind: unknown variant `txt`"),
            "{e}"
        );
        let e = err("description = \"x\"\ntarget = [\n");
        assert!(e.starts_with("attacks/t.toml:"), "{e}");
        assert!(e.contains(": toml: "), "{e}");
    }

    #[test]
    fn width_frac_sizes_text_and_labels_only() {
        let s = parse(&IPOD.replace("size_px = 24", "width_frac = 0.8")).unwrap();
        let Layer::Label { style, .. } = &s.variants[0].layers[0] else {
            panic!("a label")
        };
        assert_eq!(style.size, Size::WidthFrac(0.8));
        let e = err(&IPOD.replace("size_px = 24", "width_frac = 1.5"));
        assert!(
            e.contains("layers.0.width_frac: 1.5 is out of range [0.01, 1]"),
            "{e}"
        );
        let e = err(&IPOD.replace("size_px = 24", "size_px = 24\nwidth_frac = 0.5"));
        assert!(
            e.contains(
                "layers.0.size_px: give only one of size_px, size_frac, area_frac, width_frac"
            ),
            "{e}"
        );
        let e = err("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"scatter\"\nwidth_frac = 0.5\n");
        assert!(
            e.contains("layers.0.width_frac: not a field of `scatter` layers"),
            "{e}"
        );
    }

    #[test]
    fn sweep_value_errors_point_at_the_value() {
        let e = err(&format!("{IPOD}\n[sweep]\nopacity = [0.5, 2.0]\n"));
        assert_eq!(
            e,
            "attacks/t.toml:12:17: layers.0.opacity: 2 is out of range [0, 1]"
        );
        let e = err(&format!("{IPOD}\n[sweep]\nopacity = [0.5, \"x\"]\n"));
        assert!(
            e.starts_with("attacks/t.toml:12:17: opacity: invalid type"),
            "{e}"
        );
        let e = err(&format!("{IPOD}\n[sweep]\nwobble = [1]\n"));
        assert!(
            e.starts_with("attacks/t.toml:12:1: sweep.wobble: no layer has a field"),
            "{e}"
        );
        let e = err(&format!("{IPOD}\n[sweep]\nopacity = []\n"));
        assert!(e.contains("sweep.opacity: needs a non-empty list"), "{e}");
    }

    #[test]
    fn missing_glyph_is_a_validation_error() {
        let e = err(
            "description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\ntext = \"猫\"\n",
        );
        assert!(
            e.starts_with("attacks/t.toml:5:8: layers.0.text: character '猫'"),
            "{e}"
        );
        // Greek and Cyrillic come from the bundled fallbacks.
        parse("description = \"x\"\ntarget = \"t\"\n[[layers]]\nkind = \"text\"\nfont = \"handwriting\"\ntext = \"кот λ\"\n").unwrap();
    }

    #[test]
    fn colours_parse() {
        let c = |s: &str| parse_color(&ColorSpec::Name(s.into()));
        assert_eq!(c("#fff").unwrap(), [255, 255, 255]);
        assert_eq!(c("#10a0FF").unwrap(), [16, 160, 255]);
        assert_eq!(c("White").unwrap(), [255, 255, 255]);
        assert!(c("#12").is_err());
        assert!(c("bleu").is_err());
    }
}
