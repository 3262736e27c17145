//! Neuron activations: which units of the image tower fire for an image, which images make a
//! unit fire most, and how a rendered word changes a unit ("does the iPod neuron fire for the
//! word iPod?").
//!
//! A *layer* names a tap of [`crate::model::probe`]: ResNet stages and blocks
//! (`layer4`, `layer3.2`, `attnpool.input`; units are channels), FastViT stages and blocks
//! (`stages.3`, `stages.2.blocks.5`; channels), ViT MLP neurons
//! (`resblocks.N.mlp` → `visual.transformer.resblocks.N.mlp.c_fc`, units are the 4·W hidden
//! neurons after QuickGELU) and ViT residual directions (`resblocks.N`, units are the W
//! residual-stream coordinates). Activations are *spatially pooled*: the mean over H×W for
//! ResNet and FastViT sites, the mean over the patch tokens (the class token excluded) for ViT sites.
//!
//! Pure except for PNG encoding of thumbnails into the (self-contained) HTML contact sheet.

use std::io::Cursor;

use base64::Engine;
use image::RgbImage;
use tch::{Kind, Tensor};

use super::ProbeError;
use crate::model::{ClipModel, Probe, VisionConfig};

/// How a site's activation is pooled into one number per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteLayout {
    /// `[B, C, H, W]`: mean over H and W.
    Channels,
    /// `[B, L, U]` with `prefix` tokens (the class token) before the patches: mean over tokens
    /// `prefix..L`.
    Tokens {
        /// Tokens before the patches: 1 (a class token) or 0 (SigLIP, PE-Core-G).
        prefix: i64,
    },
}

/// A resolved layer: the tap's site name and how to pool it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSite {
    /// Site name in checkpoint naming (`visual.layer4`).
    pub site: String,
    /// Pooling layout.
    pub layout: SiteLayout,
    /// Number of units.
    pub units: i64,
}

/// Resolves a `--layer` value for a model (see the module docs for the accepted names; the full
/// site name is accepted too).
pub fn resolve_layer(
    config: &crate::model::ClipConfig,
    layer: &str,
) -> Result<LayerSite, ProbeError> {
    let l = layer.trim().trim_start_matches("visual.");
    let bad = |why: String| ProbeError::Site(format!("--layer {layer}: {why}"));
    match &config.vision {
        VisionConfig::ModifiedResNet { layers, width, .. } => {
            // Stage S has width·2^(S-1)·4 output channels.
            let stage_channels = |s: i64| width * (1 << (s - 1)) * 4;
            if l == "attnpool.input" {
                return Ok(LayerSite {
                    site: "visual.attnpool.input".into(),
                    layout: SiteLayout::Channels,
                    units: stage_channels(4),
                });
            }
            let usage = "a ModifiedResNet layer is layerS, layerS.M (S = 1..4) or attnpool.input";
            let rest = l.strip_prefix("layer").ok_or_else(|| bad(usage.into()))?;
            stage_layer(rest, ".", 1, layers, usage, layer, |s, m| {
                let site = match m {
                    None => format!("visual.layer{s}"),
                    Some(m) => format!("visual.layer{s}.{m}"),
                };
                (site, stage_channels(s as i64))
            })
        }
        VisionConfig::VisionTransformer {
            width,
            layers,
            mlp_width,
            ..
        } => vit_layer(
            l,
            layer,
            "transformer.",
            "resblocks",
            "c_fc",
            *layers,
            *width,
            *mlp_width,
            1,
        ),
        VisionConfig::TimmVit {
            width,
            layers,
            mlp_width,
            layout,
            ..
        } => vit_layer(
            l,
            layer,
            "trunk.",
            "blocks",
            "fc1",
            *layers,
            *width,
            *mlp_width,
            i64::from(layout.class_token),
        ),
        VisionConfig::TimmEva { shape: e, .. } => vit_layer(
            l,
            layer,
            "trunk.",
            "blocks",
            if e.swiglu { "fc1_x" } else { "fc1" },
            e.layers,
            e.width,
            e.mlp_width,
            i64::from(e.class_token),
        ),
        VisionConfig::TimmVitamin { shape: v, .. } => vit_layer(
            l,
            layer,
            "trunk.",
            "blocks",
            "w1",
            v.layers,
            v.width,
            v.mlp_width,
            0,
        ),
        VisionConfig::TimmFastVit { shape: f, .. } => {
            let usage = format!(
                "a FastViT layer is stages.S or stages.S.blocks.M (S = 0..{})",
                f.stages - 1
            );
            let rest = l
                .trim_start_matches("trunk.")
                .strip_prefix("stages.")
                .ok_or_else(|| bad(usage.clone()))?;
            stage_layer(
                rest,
                ".blocks.",
                0,
                &f.depths[..f.stages],
                &usage,
                layer,
                |s, m| {
                    let site = match m {
                        None => format!("visual.trunk.stages.{s}"),
                        Some(m) => format!("visual.trunk.stages.{s}.blocks.{m}"),
                    };
                    (site, f.dims[s])
                },
            )
        }
        VisionConfig::TimmConvNext { .. } => Err(bad(
            "the ConvNeXt tower records no per-unit sites (probe a ViT or ModifiedResNet model)"
                .into(),
        )),
    }
}

/// A convolutional tower's stage (`S`) or block (`S{sep}M`) output, from `rest` (what follows
/// the stage prefix): stages numbered from `first`, `depths` blocks each; `site` names the tap
/// of stage `S` (block `M`) and counts its channels.
fn stage_layer(
    rest: &str,
    sep: &str,
    first: usize,
    depths: &[i64],
    usage: &str,
    layer: &str,
    site: impl Fn(usize, Option<i64>) -> (String, i64),
) -> Result<LayerSite, ProbeError> {
    let bad = |why: String| ProbeError::Site(format!("--layer {layer}: {why}"));
    let (s, m) = match rest.split_once(sep) {
        Some((s, m)) => (s, Some(m)),
        None => (rest, None),
    };
    let s: usize = s
        .parse()
        .ok()
        .filter(|s| (first..first + depths.len()).contains(s))
        .ok_or_else(|| bad(usage.into()))?;
    let m = match m {
        None => None,
        Some(m) => {
            let blocks = depths[s - first];
            Some(
                m.parse()
                    .ok()
                    .filter(|m| (0..blocks).contains(m))
                    .ok_or_else(|| bad(format!("stage {s} has blocks 0..{}", blocks - 1)))?,
            )
        }
    };
    let (site, units) = site(s, m);
    Ok(LayerSite {
        site,
        layout: SiteLayout::Channels,
        units,
    })
}

/// A ViT block's residual stream (`BLOCKS.N`) or MLP neurons (`BLOCKS.N.mlp`), for a tower
/// whose blocks sit at `visual.{trunk}{blocks}.N` with MLP input layer `fc`.
#[allow(clippy::too_many_arguments)]
fn vit_layer(
    l: &str,
    layer: &str,
    trunk: &str,
    blocks: &str,
    fc: &str,
    layers: i64,
    width: i64,
    mlp_width: i64,
    prefix: i64,
) -> Result<LayerSite, ProbeError> {
    let bad = |why: String| ProbeError::Site(format!("--layer {layer}: {why}"));
    let l = l
        .trim_start_matches(trunk)
        .trim_start_matches(blocks)
        .trim_start_matches('.');
    let (n, sub) = match l.split_once('.') {
        Some((n, sub)) => (n, Some(sub)),
        None => (l, None),
    };
    let n: i64 = n
        .parse()
        .ok()
        .filter(|n| (0..layers).contains(n))
        .ok_or_else(|| {
            bad(format!(
                "a ViT layer is {blocks}.N (residual stream) or {blocks}.N.mlp (MLP neurons), N = 0..{}",
                layers - 1
            ))
        })?;
    let base = format!("visual.{trunk}{blocks}.{n}");
    match sub {
        None => Ok(LayerSite {
            site: base,
            layout: SiteLayout::Tokens { prefix },
            units: width,
        }),
        Some(s) if s == "mlp" || s == format!("mlp.{fc}") => Ok(LayerSite {
            site: format!("{base}.mlp.{fc}"),
            layout: SiteLayout::Tokens { prefix },
            units: mlp_width,
        }),
        Some(other) => Err(bad(format!(
            "`{other}`: only the residual stream ({blocks}.N) and MLP neurons ({blocks}.N.mlp) are pooled per unit"
        ))),
    }
}

/// Spatial pooling of one recorded activation (see [`SiteLayout`]): `→ [B, U]` f32.
pub fn pool(activation: &Tensor, layout: SiteLayout) -> Tensor {
    let a = activation.to_kind(Kind::Float);
    match layout {
        SiteLayout::Channels => a.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
        SiteLayout::Tokens { prefix } => {
            let l = a.size()[1];
            a.narrow(1, prefix, l - prefix)
                .mean_dim([1i64].as_slice(), false, Kind::Float)
        }
    }
}

/// Pooled activations `[B, U]` (CPU, f32) of preprocessed images `[B, 3, R, R]`.
pub fn pooled_activations(model: &ClipModel, images: &Tensor, layer: &LayerSite) -> Tensor {
    let mut probe = Probe::capture([layer.site.as_str()]);
    let _ = model.encode_image_probed(images, &mut probe);
    let taps = probe.into_taps();
    let a = taps
        .get(&layer.site)
        .unwrap_or_else(|| panic!("site {} was not recorded", layer.site));
    pool(a, layer.layout).to_device(tch::Device::Cpu)
}

/// Checks unit indices against the layer.
pub fn check_units(layer: &LayerSite, units: &[i64]) -> Result<(), ProbeError> {
    match units.iter().find(|&&u| !(0..layer.units).contains(&u)) {
        Some(u) => Err(ProbeError::Site(format!(
            "--unit {u}: {} has units 0..{}",
            layer.site,
            layer.units - 1
        ))),
        None => Ok(()),
    }
}

/// The `k` rows with the largest value in column `unit` of `acts [N, U]`: `(row, value)`,
/// largest first (ties by row).
pub fn top_activating(acts: &Tensor, unit: i64, k: usize) -> Vec<(usize, f64)> {
    let col = Vec::<f32>::try_from(acts.select(1, unit).contiguous()).expect("f32");
    let mut order: Vec<usize> = (0..col.len()).collect();
    order.sort_by(|&a, &b| col[b].total_cmp(&col[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| (i, col[i] as f64))
        .collect()
}

/// The `k` units with the largest variance across the rows of `acts [N, U]` (the units that
/// tell images apart), largest first.
pub fn most_variable_units(acts: &Tensor, k: usize) -> Vec<i64> {
    let var = if acts.size()[0] > 1 {
        acts.var_dim([0i64].as_slice(), false, false)
    } else {
        acts.get(0).abs()
    };
    let var = Vec::<f32>::try_from(var).expect("f32");
    let mut order: Vec<usize> = (0..var.len()).collect();
    order.sort_by(|&a, &b| var[b].total_cmp(&var[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|u| u as i64).collect()
}

/// How one unit responds to an attack, over a set of images.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnitChange {
    /// Unit index.
    pub unit: i64,
    /// Mean pooled activation on the clean images.
    pub clean_mean: f64,
    /// Mean pooled activation on the attacked images.
    pub attacked_mean: f64,
    /// `attacked_mean − clean_mean`.
    pub mean_change: f64,
    /// Mean change over the clean activations' standard deviation across images (0 when
    /// that is 0): the change in units of how much the neuron varies between images.
    pub standardized_change: f64,
    /// Fraction of images on which the activation went up.
    pub fraction_increased: f64,
}

/// Per-unit change between clean and attacked activations (`[N, U]` each, row i = the same
/// image), for `units` (all when empty), sorted by `mean_change`, largest first.
pub fn activation_change(clean: &Tensor, attacked: &Tensor, units: &[i64]) -> Vec<UnitChange> {
    let n = clean.size()[0];
    let all: Vec<i64> = if units.is_empty() {
        (0..clean.size()[1]).collect()
    } else {
        units.to_vec()
    };
    let c = clean.to_kind(Kind::Double);
    let a = attacked.to_kind(Kind::Double);
    let cm = Vec::<f64>::try_from(c.mean_dim([0i64].as_slice(), false, Kind::Double)).expect("f64");
    let am = Vec::<f64>::try_from(a.mean_dim([0i64].as_slice(), false, Kind::Double)).expect("f64");
    let sd = if n > 1 {
        Vec::<f64>::try_from(c.std_dim([0i64].as_slice(), true, false)).expect("f64")
    } else {
        vec![0.0; cm.len()]
    };
    let up = Vec::<f64>::try_from(a.gt_tensor(&c).to_kind(Kind::Double).mean_dim(
        [0i64].as_slice(),
        false,
        Kind::Double,
    ))
    .expect("f64");
    let mut rows: Vec<UnitChange> = all
        .into_iter()
        .map(|u| {
            let i = u as usize;
            let change = am[i] - cm[i];
            UnitChange {
                unit: u,
                clean_mean: cm[i],
                attacked_mean: am[i],
                mean_change: change,
                standardized_change: if sd[i] > 0.0 { change / sd[i] } else { 0.0 },
                fraction_increased: up[i],
            }
        })
        .collect();
    rows.sort_by(|x, y| {
        y.mean_change
            .total_cmp(&x.mean_change)
            .then(x.unit.cmp(&y.unit))
    });
    rows
}

/// One thumbnail of a contact sheet.
#[derive(Debug, Clone)]
pub struct SheetEntry {
    /// Caption (image name and activation).
    pub caption: String,
    /// The image (the model input).
    pub image: RgbImage,
}

/// One row of a contact sheet: a unit and its images.
#[derive(Debug, Clone)]
pub struct SheetRow {
    /// Row title (`unit 17`).
    pub title: String,
    /// Thumbnails, left to right.
    pub entries: Vec<SheetEntry>,
}

/// Longest thumbnail side in the contact sheet, pixels.
pub const THUMB_PX: u32 = 128;

/// A PNG data URI of `img` scaled to fit [`THUMB_PX`].
pub fn thumbnail_data_uri(img: &RgbImage) -> String {
    let (w, h) = img.dimensions();
    let k = THUMB_PX as f32 / w.max(h).max(1) as f32;
    let thumb = if k < 1.0 {
        image::imageops::resize(
            img,
            ((w as f32 * k).round() as u32).max(1),
            ((h as f32 * k).round() as u32).max(1),
            image::imageops::FilterType::Triangle,
        )
    } else {
        img.clone()
    };
    let mut png = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("PNG encoding into memory");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// A self-contained HTML page (inline CSS, thumbnails as data URIs, nothing fetched). Its first
/// line is `<!-- {first_line} -->` (the random-weights banner when it applies), repeated
/// visibly at the top of the page.
pub fn contact_sheet_html(
    first_line: &str,
    title: &str,
    notes: &[String],
    rows: &[SheetRow],
) -> String {
    use html_escape::encode_text as esc;
    let mut s = String::new();
    s.push_str(&format!("<!-- {} -->\n", first_line.replace("--", "- -")));
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    s.push_str(&format!("<title>{}</title>\n", esc(title)));
    s.push_str(
        "<style>body{font-family:sans-serif;margin:1em;color:#222}\
         .banner{background:#fde8e8;border:1px solid #e0a0a0;padding:.4em .8em;font-weight:bold}\
         .row{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:1.2em}\
         figure{margin:0;width:136px;text-align:center}\
         img{max-width:128px;max-height:128px;border:1px solid #ccc;image-rendering:auto}\
         figcaption{font-size:11px;word-break:break-all}</style>\n</head><body>\n",
    );
    s.push_str(&format!("<p class=\"banner\">{}</p>\n", esc(first_line)));
    s.push_str(&format!("<h1>{}</h1>\n", esc(title)));
    for n in notes {
        s.push_str(&format!("<p>{}</p>\n", esc(n)));
    }
    for row in rows {
        s.push_str(&format!(
            "<h2>{}</h2>\n<div class=\"row\">\n",
            esc(&row.title)
        ));
        for e in &row.entries {
            s.push_str(&format!(
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n",
                thumbnail_data_uri(&e.image),
                html_escape::encode_double_quoted_attribute(&e.caption),
                esc(&e.caption)
            ));
        }
        s.push_str("</div>\n");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClipConfig;

    #[test]
    fn layers_resolve_per_family() {
        let rn = ClipConfig::preset("RN50").unwrap();
        let l4 = resolve_layer(&rn, "layer4").unwrap();
        assert_eq!((l4.site.as_str(), l4.units), ("visual.layer4", 2048));
        assert_eq!(resolve_layer(&rn, "visual.layer3.5").unwrap().units, 1024);
        assert!(resolve_layer(&rn, "layer3.6").is_err());
        assert!(resolve_layer(&rn, "layer5").is_err());
        assert!(resolve_layer(&rn, "resblocks.0").is_err());
        let vit = ClipConfig::preset("ViT-B-32").unwrap();
        let mlp = resolve_layer(&vit, "resblocks.11.mlp").unwrap();
        assert_eq!(
            (mlp.site.as_str(), mlp.units, mlp.layout),
            (
                "visual.transformer.resblocks.11.mlp.c_fc",
                3072,
                SiteLayout::Tokens { prefix: 1 }
            )
        );
        assert_eq!(
            resolve_layer(&vit, "visual.transformer.resblocks.3")
                .unwrap()
                .units,
            768
        );
        assert!(resolve_layer(&vit, "resblocks.12").is_err());
        assert!(resolve_layer(&vit, "resblocks.1.attn").is_err());
        // MobileCLIP2-S4's FastViT: five stages of channels, blocks per stage.
        let fv = ClipConfig::preset("MobileCLIP2-S4").unwrap();
        let s4 = resolve_layer(&fv, "stages.4").unwrap();
        assert_eq!(
            (s4.site.as_str(), s4.units, s4.layout),
            ("visual.trunk.stages.4", 2048, SiteLayout::Channels)
        );
        let b = resolve_layer(&fv, "visual.trunk.stages.2.blocks.23").unwrap();
        assert_eq!(
            (b.site.as_str(), b.units),
            ("visual.trunk.stages.2.blocks.23", 512)
        );
        assert!(resolve_layer(&fv, "stages.2.blocks.24").is_err());
        assert!(resolve_layer(&fv, "stages.5").is_err());
        assert!(resolve_layer(&fv, "blocks.0").is_err());
    }

    #[test]
    fn pooling_excludes_the_class_token() {
        let x = Tensor::from_slice(&[100.0f32, 1.0, 3.0]).view([1, 3, 1]);
        assert_eq!(
            f64::try_from(pool(&x, SiteLayout::Tokens { prefix: 1 }).get(0).get(0)).unwrap(),
            2.0
        );
        // No class token (SigLIP, PE-Core-G): every token is a patch.
        let all = f64::try_from(pool(&x, SiteLayout::Tokens { prefix: 0 }).get(0).get(0)).unwrap();
        assert!((all - 104.0 / 3.0).abs() < 1e-5, "{all}");
        let siglip = ClipConfig::preset("ViT-B-16-SigLIP").unwrap();
        let pe_g = ClipConfig::preset("PE-Core-bigG-14-448").unwrap();
        let pe_b = ClipConfig::preset("PE-Core-B-16").unwrap();
        for (config, prefix) in [(&siglip, 0), (&pe_g, 0), (&pe_b, 1)] {
            assert_eq!(
                resolve_layer(config, "blocks.1.mlp").unwrap().layout,
                SiteLayout::Tokens { prefix }
            );
        }
        let y = Tensor::arange(8, (Kind::Float, tch::Device::Cpu)).view([1, 2, 2, 2]);
        let p = Vec::<f32>::try_from(pool(&y, SiteLayout::Channels).get(0)).unwrap();
        assert_eq!(p, vec![1.5, 5.5]);
    }

    #[test]
    fn ranking_and_change() {
        let acts = Tensor::from_slice(&[1.0f32, 5.0, 3.0, 2.0, 2.0, 9.0]).view([3, 2]);
        assert_eq!(top_activating(&acts, 1, 2), vec![(2, 9.0), (0, 5.0)]);
        assert_eq!(most_variable_units(&acts, 1), vec![1]);
        let attacked = &acts + Tensor::from_slice(&[1.0f32, -1.0]);
        let ch = activation_change(&acts, &attacked, &[]);
        assert_eq!(ch[0].unit, 0);
        assert!((ch[0].mean_change - 1.0).abs() < 1e-9);
        assert_eq!(ch[0].fraction_increased, 1.0);
        assert!((ch[1].mean_change + 1.0).abs() < 1e-9);
        assert_eq!(ch[1].fraction_increased, 0.0);
    }

    #[test]
    fn contact_sheet_is_self_contained() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([10, 200, 30]));
        let html = contact_sheet_html(
            "# random weights — test",
            "unit <7>",
            &[],
            &[SheetRow {
                title: "unit 7".into(),
                entries: vec![SheetEntry {
                    caption: "a&b.jpg 1.5".into(),
                    image: img,
                }],
            }],
        );
        assert!(html.starts_with("<!-- # random weights"));
        assert!(html.contains("data:image/png;base64,"));
        assert!(html.contains("unit &lt;7&gt;"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        let b64 = html
            .split("base64,")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (128, 85));
    }
}
