//! Architecture configs: presets named after the OpenAI checkpoints, and inference of the
//! architecture from a state dict's tensor shapes, exactly as OpenAI's `build_model`
//! (`clip/model.py`, openai/CLIP@a1d0717) and open_clip's `build_model_from_openai_state_dict` do.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::ModelError;

/// The image tower of a CLIP model.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum VisionConfig {
    /// OpenAI `VisionTransformer`.
    VisionTransformer {
        /// Input side in pixels (`input_resolution`).
        image_resolution: i64,
        /// Patch side (`visual.conv1` kernel).
        patch_size: i64,
        /// Residual width.
        width: i64,
        /// Number of residual attention blocks.
        layers: i64,
        /// Attention heads (`width / 64`).
        heads: i64,
    },
    /// OpenAI `ModifiedResNet`.
    ModifiedResNet {
        /// Input side in pixels.
        image_resolution: i64,
        /// Bottleneck blocks per stage (`layer1` .. `layer4`).
        layers: [i64; 4],
        /// Stem width (`visual.layer1.0.conv1` output channels).
        width: i64,
        /// Attention-pool heads (`width * 32 / 64`).
        heads: i64,
    },
}

impl VisionConfig {
    /// The input side `n_px` the preprocessing must produce.
    pub fn image_resolution(&self) -> i64 {
        match self {
            VisionConfig::VisionTransformer {
                image_resolution, ..
            }
            | VisionConfig::ModifiedResNet {
                image_resolution, ..
            } => *image_resolution,
        }
    }

    /// `"ViT"` or `"ModifiedResNet"`.
    pub fn family(&self) -> &'static str {
        match self {
            VisionConfig::VisionTransformer { .. } => "ViT",
            VisionConfig::ModifiedResNet { .. } => "ModifiedResNet",
        }
    }
}

/// The text tower of a CLIP model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextConfig {
    /// Maximum number of tokens (77 for every OpenAI model).
    pub context_length: i64,
    /// BPE vocabulary size (49408).
    pub vocab_size: i64,
    /// Residual width.
    pub width: i64,
    /// Attention heads (`width / 64`).
    pub heads: i64,
    /// Number of residual attention blocks.
    pub layers: i64,
}

/// A whole CLIP model: joint embedding size plus both towers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipConfig {
    /// Dimension of the joint image-text embedding space.
    pub embed_dim: i64,
    /// Image tower.
    pub vision: VisionConfig,
    /// Text tower.
    pub text: TextConfig,
}

/// Names of the OpenAI checkpoints, in the spelling open_clip uses.
pub const KNOWN_ARCHITECTURES: [&str; 9] = [
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "ViT-B-32",
    "ViT-B-16",
    "ViT-L-14",
    "ViT-L-14-336",
];

fn text(width: i64) -> TextConfig {
    TextConfig {
        context_length: 77,
        vocab_size: 49408,
        width,
        heads: width / 64,
        layers: 12,
    }
}

fn vit(embed_dim: i64, res: i64, patch: i64, width: i64, layers: i64, tw: i64) -> ClipConfig {
    ClipConfig {
        embed_dim,
        vision: VisionConfig::VisionTransformer {
            image_resolution: res,
            patch_size: patch,
            width,
            layers,
            heads: width / 64,
        },
        text: text(tw),
    }
}

fn resnet(embed_dim: i64, res: i64, layers: [i64; 4], width: i64, tw: i64) -> ClipConfig {
    ClipConfig {
        embed_dim,
        vision: VisionConfig::ModifiedResNet {
            image_resolution: res,
            layers,
            width,
            heads: width * 32 / 64,
        },
        text: text(tw),
    }
}

impl ClipConfig {
    /// The preset of an OpenAI checkpoint, by open_clip name (`ViT-B-32`) or OpenAI name
    /// (`ViT-B/32`, `ViT-L/14@336px`). Shapes follow open_clip's `model_configs/*.json`.
    pub fn preset(name: &str) -> Option<ClipConfig> {
        let canonical = canonical_arch_name(name)?;
        Some(match canonical {
            "RN50" => resnet(1024, 224, [3, 4, 6, 3], 64, 512),
            "RN101" => resnet(512, 224, [3, 4, 23, 3], 64, 512),
            "RN50x4" => resnet(640, 288, [4, 6, 10, 6], 80, 640),
            "RN50x16" => resnet(768, 384, [6, 8, 18, 8], 96, 768),
            "RN50x64" => resnet(1024, 448, [3, 15, 36, 10], 128, 1024),
            "ViT-B-32" => vit(512, 224, 32, 768, 12, 512),
            "ViT-B-16" => vit(512, 224, 16, 768, 12, 512),
            "ViT-L-14" => vit(768, 224, 14, 1024, 24, 768),
            "ViT-L-14-336" => vit(768, 336, 14, 1024, 24, 768),
            _ => return None,
        })
    }

    /// Infers the architecture from tensor shapes (keys in OpenAI/open_clip naming), as
    /// OpenAI's `build_model` does.
    pub fn from_shapes(shapes: &BTreeMap<String, Vec<i64>>) -> Result<ClipConfig, ModelError> {
        let get = |key: &str| -> Result<&Vec<i64>, ModelError> {
            shapes
                .get(key)
                .ok_or_else(|| ModelError::Config(format!("missing key `{key}`")))
        };
        let dim = |key: &str, i: usize| -> Result<i64, ModelError> {
            let s = get(key)?;
            s.get(i).copied().ok_or_else(|| {
                ModelError::Config(format!("key `{key}` has shape {s:?}, expected rank > {i}"))
            })
        };
        let count_blocks = |prefix: &str| -> i64 {
            shapes
                .keys()
                .filter_map(|k| k.strip_prefix(prefix))
                .filter_map(|rest| rest.split('.').next())
                .filter(|s| s.parse::<u32>().is_ok())
                .collect::<BTreeSet<_>>()
                .len() as i64
        };
        let vision = if shapes.contains_key("visual.proj") {
            let width = dim("visual.conv1.weight", 0)?;
            let patch_size = dim("visual.conv1.weight", 3)?;
            let layers = count_blocks("visual.transformer.resblocks.");
            let n_pos = dim("visual.positional_embedding", 0)?;
            let grid = (((n_pos - 1) as f64).sqrt()).round() as i64;
            VisionConfig::VisionTransformer {
                image_resolution: patch_size * grid,
                patch_size,
                width,
                layers,
                heads: width / 64,
            }
        } else if shapes.contains_key("visual.attnpool.positional_embedding") {
            let layers = [
                count_blocks("visual.layer1."),
                count_blocks("visual.layer2."),
                count_blocks("visual.layer3."),
                count_blocks("visual.layer4."),
            ];
            let width = dim("visual.layer1.0.conv1.weight", 0)?;
            let n_pos = dim("visual.attnpool.positional_embedding", 0)?;
            let output_width = (((n_pos - 1) as f64).sqrt()).round() as i64;
            VisionConfig::ModifiedResNet {
                image_resolution: output_width * 32,
                layers,
                width,
                heads: width * 32 / 64,
            }
        } else {
            return Err(ModelError::Config(
                "neither `visual.proj` (ViT) nor `visual.attnpool.positional_embedding` \
                 (ModifiedResNet) found: not a CLIP checkpoint"
                    .into(),
            ));
        };
        let width = dim("ln_final.weight", 0)?;
        let config = ClipConfig {
            embed_dim: dim("text_projection", 1)?,
            vision,
            text: TextConfig {
                context_length: dim("positional_embedding", 0)?,
                vocab_size: dim("token_embedding.weight", 0)?,
                width,
                heads: width / 64,
                layers: count_blocks("transformer.resblocks."),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Rejects configs that cannot be built (zero layers, widths not divisible by heads).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        match &self.vision {
            VisionConfig::VisionTransformer {
                width,
                layers,
                heads,
                patch_size,
                ..
            } => {
                if *layers < 1 || *heads < 1 || width % heads != 0 || *patch_size < 1 {
                    return bad(format!(
                        "invalid ViT shape: width {width}, layers {layers}, heads {heads}"
                    ));
                }
            }
            VisionConfig::ModifiedResNet {
                layers,
                width,
                heads,
                ..
            } => {
                if layers.iter().any(|&l| l < 1) || *heads < 1 || (width * 32) % heads != 0 {
                    return bad(format!(
                        "invalid ModifiedResNet shape: layers {layers:?}, width {width}"
                    ));
                }
            }
        }
        let t = &self.text;
        if t.layers < 1 || t.heads < 1 || t.width % t.heads != 0 {
            return bad(format!(
                "invalid text transformer: width {}, layers {}, heads {}",
                t.width, t.layers, t.heads
            ));
        }
        Ok(())
    }

    /// A short architecture description such as `ViT-B/32-like (ViT, width 768, 12 layers, patch 32)`.
    pub fn describe(&self) -> String {
        match &self.vision {
            VisionConfig::VisionTransformer {
                image_resolution,
                patch_size,
                width,
                layers,
                ..
            } => format!(
                "ViT (width {width}, {layers} layers, patch {patch_size}, {image_resolution} px)"
            ),
            VisionConfig::ModifiedResNet {
                image_resolution,
                layers,
                width,
                ..
            } => {
                format!("ModifiedResNet (stages {layers:?}, width {width}, {image_resolution} px)")
            }
        }
    }
}

/// Maps user spellings of an OpenAI architecture to the open_clip name.
pub fn canonical_arch_name(name: &str) -> Option<&'static str> {
    let n = name.trim().replace('/', "-").replace("@336px", "-336");
    KNOWN_ARCHITECTURES
        .iter()
        .find(|k| k.eq_ignore_ascii_case(&n))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_expected_resolutions() {
        let res: Vec<i64> = KNOWN_ARCHITECTURES
            .iter()
            .map(|n| ClipConfig::preset(n).unwrap().vision.image_resolution())
            .collect();
        assert_eq!(res, vec![224, 224, 288, 384, 448, 224, 224, 224, 336]);
        for n in KNOWN_ARCHITECTURES {
            ClipConfig::preset(n).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn openai_spellings_resolve() {
        assert_eq!(canonical_arch_name("ViT-B/32"), Some("ViT-B-32"));
        assert_eq!(canonical_arch_name("ViT-L/14@336px"), Some("ViT-L-14-336"));
        assert_eq!(canonical_arch_name("rn50x4"), Some("RN50x4"));
        assert_eq!(canonical_arch_name("ViT-H-14"), None);
    }
}
