//! `typoclip attacks list|check` and `typoclip render`: look at attack specs and their renders
//! before sweeping. A bad spec fails with `file:line:col: field: message` before any work.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use image::{Rgb, RgbImage};

use crate::attack::spec::{Place, Placement, Size, TextStyle};
use crate::attack::{
    render, render_for_model, AttackSpec, FontBook, Layer, ObjectBox, Stage, Variant,
};

/// `writeln!` into a `String` (infallible).
macro_rules! outln {
    ($out:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($t)*);
    }};
}

/// `typoclip attacks …`.
#[derive(Debug, Subcommand)]
pub enum AttacksCommand {
    /// The shipped attack specs (`attacks/*.toml`) with their variant counts and descriptions.
    List {
        /// Folder of specs (default: `attacks/` here, else the one typoclip was built from).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Validate specs and print how many variants each expands to.
    Check {
        /// Spec files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also list every variant with its target.
        #[arg(long)]
        variants: bool,
    },
}

/// `typoclip render SPEC IMAGE... --out DIR`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Attack spec (`attacks/*.toml`).
    pub spec: PathBuf,
    /// Images to attack.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Output folder: `<image>/<variant>.png` per pair and `contact-sheet.png`.
    #[arg(long)]
    pub out: PathBuf,
    /// Only variants with this name (`*` matches any run of characters); repeatable.
    #[arg(long)]
    pub variant: Vec<String>,
    /// Seed mixed with the spec's seed (random placements, scatter).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model input size, for specs with `stage = "model_input"`.
    #[arg(long, default_value_t = 224)]
    pub n_px: u32,
    /// Object box for `placement = "box"`: `x0,y0,x1,y1` as fractions of the image.
    #[arg(long = "box")]
    pub object_box: Option<String>,
    /// Also write the changed-pixel mask of each render (`<variant>.mask.png`).
    #[arg(long)]
    pub masks: bool,
}

/// Runs `typoclip attacks list|check`.
pub fn run_attacks(command: AttacksCommand) -> Result<()> {
    match command {
        AttacksCommand::List { dir } => {
            let dir = dir.unwrap_or_else(default_dir);
            let files = crate::attack::spec_files(&dir)
                .with_context(|| format!("{}: cannot list attack specs", dir.display()))?;
            if files.is_empty() {
                bail!("{}: no attack specs (*.toml)", dir.display());
            }
            let mut bad = 0;
            let mut out = String::new();
            for f in files {
                let stem = f
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                match AttackSpec::load(&f) {
                    Ok(s) => outln!(
                        out,
                        "{stem:<22} {:>5} variants  {}",
                        s.variants.len(),
                        s.description
                    ),
                    Err(e) => {
                        bad += 1;
                        outln!(out, "{stem:<22} INVALID  {e}");
                    }
                }
            }
            print_out(&out)?;
            if bad > 0 {
                bail!("{bad} invalid spec(s) in {}", dir.display());
            }
            Ok(())
        }
        AttacksCommand::Check { files, variants } => {
            let mut out = String::new();
            for f in &files {
                let s = AttackSpec::load(f)?;
                outln!(out, "{}: ok, {} variants", f.display(), s.variants.len());
                if variants {
                    for v in &s.variants {
                        outln!(out, "  {}  → {}", v.name, v.target);
                    }
                }
            }
            print_out(&out)
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print_out(s: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(s.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn default_dir() -> PathBuf {
    let here = PathBuf::from("attacks");
    if here.is_dir() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("attacks")
    }
}

/// Runs `typoclip render`.
pub fn run_render(args: RenderArgs) -> Result<()> {
    // Everything is checked before any image is written.
    let spec = AttackSpec::load(&args.spec)?;
    let chosen: Vec<&Variant> = if args.variant.is_empty() {
        spec.variants.iter().collect()
    } else {
        let mut v = Vec::new();
        for pat in &args.variant {
            let m: Vec<&Variant> = spec
                .variants
                .iter()
                .filter(|v| glob(pat, &v.name))
                .collect();
            if m.is_empty() {
                bail!(
                    "--variant: no variant of {} matches `{pat}` (e.g. `{}`; see `typoclip attacks check --variants`)",
                    args.spec.display(),
                    spec.variants[0].name
                );
            }
            v.extend(m);
        }
        v.dedup_by(|a, b| a.name == b.name);
        v
    };
    if args.n_px == 0 {
        bail!("--n-px: must be at least 1");
    }
    let object_box = args.object_box.as_deref().map(parse_box).transpose()?;
    let mut images = Vec::new();
    for p in &args.images {
        images.push((p.clone(), crate::dataset::load_rgb(p)?));
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;

    let mut cells: Vec<(RgbImage, String)> = Vec::new();
    let mut row_starts = Vec::new();
    let mut written = 0usize;
    let mut l0_sum = vec![0f64; chosen.len()];
    let mut used_dirs = std::collections::HashSet::new();
    for (i, (path, img)) in images.iter().enumerate() {
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dirname = if used_dirs.insert(stem.clone()) {
            stem
        } else {
            format!("{i}-{stem}")
        };
        let dir = args.out.join(&dirname);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        row_starts.push(cells.len());
        let mut clean_shown = false;
        for (k, v) in chosen.iter().enumerate() {
            let (attacked, r) = match v.stage {
                Stage::Source => {
                    let r = render(img, v, args.seed, object_box);
                    (r.image.clone(), r)
                }
                Stage::ModelInput => {
                    let m = render_for_model(
                        img,
                        v,
                        &crate::preprocess::PreprocessCfg::square(args.n_px),
                        args.seed,
                        object_box,
                    );
                    if !clean_shown {
                        cells.push((m.clean_input.clone(), format!("{dirname} (model input)")));
                        clean_shown = true;
                    }
                    (m.attacked_input, m.rendered)
                }
            };
            if !clean_shown {
                cells.push((img.clone(), dirname.clone()));
                clean_shown = true;
            }
            let file = dir.join(format!("{}.png", v.name.replace('/', "__")));
            attacked
                .save(&file)
                .with_context(|| format!("{}: cannot write", file.display()))?;
            if args.masks {
                let mfile = dir.join(format!("{}.mask.png", v.name.replace('/', "__")));
                r.mask
                    .save(&mfile)
                    .with_context(|| format!("{}: cannot write", mfile.display()))?;
            }
            written += 1;
            l0_sum[k] += r.l0_fraction;
            let short = v
                .name
                .strip_prefix(&format!("{}/", v.attack))
                .unwrap_or(&v.name);
            cells.push((attacked, format!("{short}  L0 {:.3}", r.l0_fraction)));
        }
    }
    let sheet = contact_sheet(&cells, &row_starts);
    let sheet_path = args.out.join("contact-sheet.png");
    sheet
        .save(&sheet_path)
        .with_context(|| format!("{}: cannot write", sheet_path.display()))?;
    let mut out = String::new();
    outln!(
        out,
        "# {}: {} variants × {} images",
        spec.name,
        chosen.len(),
        images.len()
    );
    outln!(out, "{:<48} {:>10}  target", "variant", "mean L0");
    for (k, v) in chosen.iter().enumerate() {
        outln!(
            out,
            "{:<48} {:>10.4}  {}",
            v.name,
            l0_sum[k] / images.len() as f64,
            v.target
        );
    }
    outln!(out, "wrote {written} images and {}", sheet_path.display());
    print_out(&out)
}

fn parse_box(s: &str) -> Result<ObjectBox> {
    let v: Vec<f32> = s
        .split(',')
        .map(|t| t.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--box: `{s}` is not x0,y0,x1,y1"))?;
    match v.as_slice() {
        [x0, y0, x1, y1]
            if [x0, y0, x1, y1].iter().all(|c| (0.0..=1.0).contains(*c)) && x0 < x1 && y0 < y1 =>
        {
            Ok([*x0, *y0, *x1, *y1])
        }
        _ => bail!("--box: `{s}` must be x0,y0,x1,y1 fractions in [0, 1] with x0 < x1, y0 < y1"),
    }
}

/// `*` matches any run of characters; everything else literally.
/// `*` matches any run of characters; everything else literally.
pub(crate) fn glob(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(j) => rest = &rest[j + p.len()..],
                None => return false,
            }
        }
    }
    true
}

const THUMB: u32 = 160;
const CAPTION: u32 = 18;
const COLS: usize = 6;

/// A grid of thumbnails with captions: each image starts a new row (clean first, then its
/// variants), wrapping after `COLS` cells.
fn contact_sheet(cells: &[(RgbImage, String)], row_starts: &[usize]) -> RgbImage {
    let mut rows = 0usize;
    for (i, &s) in row_starts.iter().enumerate() {
        let e = row_starts.get(i + 1).copied().unwrap_or(cells.len());
        rows += (e - s).div_ceil(COLS).max(1);
    }
    let cw = THUMB + 8;
    let ch = THUMB + CAPTION + 8;
    let mut sheet = RgbImage::from_pixel(
        cw * COLS as u32,
        ch * rows.max(1) as u32,
        Rgb([255, 255, 255]),
    );
    let caption_layer = |text: &str| -> Option<Variant> {
        let fonts = FontBook::global()
            .stack("sans-bold", &[], Path::new("."))
            .ok()?;
        let n = text.chars().count();
        let text: String = if n > 26 {
            std::iter::once('…')
                .chain(text.chars().skip(n - 25))
                .collect()
        } else {
            text.to_string()
        };
        let text = if fonts.missing(&text).is_some() {
            String::from("?")
        } else {
            text
        };
        Some(Variant {
            name: String::new(),
            attack: String::new(),
            case: None,
            target: String::new(),
            stage: Stage::Source,
            seed: 0,
            params: Vec::new(),
            skip_own_class: false,
            layers: vec![Layer::Text {
                style: TextStyle {
                    text,
                    fonts,
                    size: Size::Px(10.0),
                    color: [0, 0, 0],
                    outline: None,
                    opacity: 1.0,
                    rotation: 0.0,
                    letter_spacing: 0.0,
                    line_spacing: 1.0,
                    align: crate::attack::spec::Align::Left,
                },
                place: Place {
                    placement: Placement::Center,
                    margin: 0.0,
                    clamp: true,
                },
            }],
        })
    };
    let mut row = 0u32;
    for (i, &s) in row_starts.iter().enumerate() {
        let e = row_starts.get(i + 1).copied().unwrap_or(cells.len());
        for (j, (img, caption)) in cells[s..e].iter().enumerate() {
            let (r, c) = (row + (j / COLS) as u32, (j % COLS) as u32);
            let (x0, y0) = (c * cw + 4, r * ch + 4);
            let (w, h) = img.dimensions();
            if w > 0 && h > 0 {
                let k = THUMB as f32 / w.max(h) as f32;
                let (tw, th) = (
                    ((w as f32 * k).round() as u32).max(1),
                    ((h as f32 * k).round() as u32).max(1),
                );
                let t = image::imageops::resize(img, tw, th, image::imageops::FilterType::Triangle);
                image::imageops::overlay(
                    &mut sheet,
                    &t,
                    (x0 + (THUMB - tw) / 2) as i64,
                    (y0 + (THUMB - th) / 2) as i64,
                );
            }
            if let Some(v) = caption_layer(caption) {
                let strip = RgbImage::from_pixel(THUMB, CAPTION, Rgb([255, 255, 255]));
                let strip = render(&strip, &v, 0, None).image;
                image::imageops::overlay(&mut sheet, &strip, x0 as i64, (y0 + THUMB) as i64);
            }
        }
        row += (e - s).div_ceil(COLS).max(1) as u32;
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches() {
        assert!(glob("ipod", "ipod"));
        assert!(!glob("ipod", "ipod/x"));
        assert!(glob("distill/*/pos=0", "distill/trash/pos=0"));
        assert!(!glob("distill/*/pos=0", "distill/trash/pos=1"));
        assert!(glob("*size=24*", "ipod/size=24/opacity=0.5"));
    }

    #[test]
    fn boxes_parse() {
        assert_eq!(parse_box("0.1,0.2,0.5,0.9").unwrap(), [0.1, 0.2, 0.5, 0.9]);
        assert!(parse_box("0.5,0.2,0.1,0.9").is_err());
        assert!(parse_box("a,b").is_err());
    }
}
