//! Architecture configs: presets named after the OpenAI checkpoints, and inference of the
//! architecture from a state dict's tensor shapes, exactly as OpenAI's `build_model`
//! (`clip/model.py`, openai/CLIP@a1d0717) and open_clip's `build_model_from_openai_state_dict` do.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::ModelError;

/// The activation of a transformer MLP: open_clip's `nn.GELU` (exact erf, or the tanh
/// approximation through `act_kwargs`) or OpenAI's `QuickGELU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x · Φ(x)` (`nn.GELU()`).
    Gelu,
    /// `nn.GELU(approximate='tanh')`.
    GeluTanh,
    /// `x · σ(1.702 x)` (OpenAI's checkpoints, and open_clip's `quick_gelu: true`).
    QuickGelu,
}

/// What the ViT image tower pools (open_clip's `pool_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VitPool {
    /// The class token (`tok`).
    Tok,
    /// The mean of the patch tokens (`avg`).
    Avg,
}

/// Where the text tower takes its features (open_clip's `pool_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum TextPool {
    /// At the highest token id (OpenAI's end-of-text).
    Argmax,
    /// At the first occurrence of this token id.
    Eos(i64),
    /// At the last position.
    Last,
    /// At the first position.
    First,
}

/// The text tower's projection to the joint space (open_clip's `proj_type` / `proj_bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextProjection {
    /// A `[width, embed_dim]` parameter `text_projection`, applied as `x @ P`.
    Matrix,
    /// An `nn.Linear` `text_projection.{weight,bias}`.
    Linear,
    /// No projection (`proj_type: none`): the pooled width is the embedding.
    None,
}

/// CoCa's attentional pooler on the ViT tower (open_clip's `attentional_pool: true`): learned
/// queries attend over the LayerNorm-ed tokens; the pooled query is the embedding's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AttnPoolCfg {
    /// Learned queries (`attn_pooler_queries`).
    pub queries: i64,
    /// Attention heads (`attn_pooler_heads`).
    pub heads: i64,
}

/// CoCa's class token appended to the text (open_clip's `embed_cls: true`): pooled at the last
/// position, `ln_final` after pooling, padding masked as keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EmbedCls {
    /// The padding id masked as a key (`pad_id`).
    pub pad_id: i64,
}

/// open_clip's `TimmModel` head after a timm trunk (`timm_proj`, `timm_proj_bias`): the keys
/// `visual.head.proj.*` or `visual.head.mlp.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TimmProj {
    /// `timm_proj: none`: the trunk's pooled features are the embedding.
    None,
    /// `timm_proj: null` (not set): open_clip builds the trunk with `num_classes=embed_dim`, so
    /// the trunk's own classifier `trunk.head` (a Linear with bias) is the projection (EVA).
    Classifier,
    /// `timm_proj: linear`: `nn.Linear(num_features, embed_dim, bias=timm_proj_bias)`.
    Linear {
        /// `timm_proj_bias`.
        bias: bool,
    },
    /// `timm_proj: mlp`: timm's `Mlp(num_features, 2·embed_dim, embed_dim)`, GELU, `fc1` with a
    /// bias, `fc2` with one when `timm_proj_bias`.
    Mlp {
        /// `timm_proj_bias`.
        bias: bool,
    },
}

/// The image tower of a CLIP model.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum VisionConfig {
    /// open_clip / OpenAI `VisionTransformer`.
    VisionTransformer {
        /// Input side in pixels (`image_size`).
        image_resolution: i64,
        /// Patch side (`visual.conv1` kernel).
        patch_size: i64,
        /// Residual width.
        width: i64,
        /// Number of residual attention blocks.
        layers: i64,
        /// Attention heads (`width / head_width`).
        heads: i64,
        /// Hidden width of each MLP (`width · mlp_ratio`).
        mlp_width: i64,
        /// The MLP activation.
        act: Activation,
        /// LayerScale after attention and MLP (`ls_init_value` set: `ls_1.gamma`, `ls_2.gamma`).
        layer_scale: bool,
        /// `ln_pre` before the transformer (`no_ln_pre: false`).
        ln_pre: bool,
        /// What is pooled.
        pool: VitPool,
        /// `ln_post` after pooling instead of before (`final_ln_after_pool`).
        final_ln_after_pool: bool,
        /// LayerNorm epsilon (`norm_kwargs.eps`, default 1e-5).
        ln_eps: f64,
        /// CoCa's attentional pooler, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        attn_pool: Option<AttnPoolCfg>,
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
    /// timm's `VisionTransformer` (`visual.trunk.*`) as SigLIP and SigLIP 2 use it — no class
    /// token, `global_pool='map'` (a learned latent query attends over the tokens, then an
    /// MLP) — or as MobileCLIP's ViTs do (a class token, token pooling, `norm_pre`, MCi's
    /// convolutional stem), then open_clip's [`TimmProj`] head or the trunk's classifier.
    TimmVit {
        /// timm's model name (`vit_base_patch16_siglip_224`).
        timm_model_name: String,
        /// Input side in pixels (timm's `img_size`).
        image_resolution: i64,
        /// Patch side.
        patch_size: i64,
        /// Residual width (`embed_dim`).
        width: i64,
        /// Blocks (`depth`).
        layers: i64,
        /// Attention heads.
        heads: i64,
        /// MLP hidden width (`int(width · mlp_ratio)`), of the blocks and the pool's MLP.
        mlp_width: i64,
        /// `act_layer`: GELU, or GELU-tanh.
        act: Activation,
        /// LayerNorm epsilon (timm's 1e-6; the `*_clip_*` ViTs' 1e-5).
        ln_eps: f64,
        /// Class token, positions, stem and pool.
        #[serde(flatten)]
        layout: TimmVitLayout,
        /// open_clip's head.
        proj: TimmProj,
    },
    /// timm's `Eva` (EVA-CLIP's EVA01 / EVA02 towers and Meta's Perception Encoder,
    /// `visual.trunk.*`): class token, learned positions, EVA blocks (rotary positions, SwiGLU
    /// and sub-LN for EVA02; post-norm for EVA02-E; timm's `AttentionRope` for PE), class-token
    /// pooling after `norm` (EVA) or the MAP head (PE), then the trunk's classifier or open_clip's
    /// [`TimmProj`] head.
    TimmEva {
        /// timm's model name (`eva02_base_patch16_clip_224`).
        timm_model_name: String,
        /// Input side in pixels.
        image_resolution: i64,
        /// The trunk's shape and options (timm's `Eva` arguments).
        #[serde(flatten)]
        shape: EvaShape,
        /// The projection.
        proj: TimmProj,
    },
    /// timm's ViTamin (`visual.trunk.*`): a `VisionTransformer` whose patch embedding is a
    /// convolutional backbone (`patch_embed.backbone`: stem, two MBConv stages, a strided conv;
    /// stride 16), no class token, learned positions (none for XL), GeGLU MLPs, the average over
    /// the tokens through `fc_norm`, then open_clip's [`TimmProj`] head.
    TimmVitamin {
        /// timm's model name (`vitamin_small_224`).
        timm_model_name: String,
        /// Input side in pixels.
        image_resolution: i64,
        /// The trunk's shape (timm's `VitCfg` and `VisionTransformer` arguments).
        #[serde(flatten)]
        shape: VitaminShape,
        /// open_clip's head.
        proj: TimmProj,
    },
    /// timm's `FastVit` as MobileCLIP's MCi image encoders set it (`visual.trunk.*`): MobileOne
    /// stem, RepMixer stages, then attention stages after a conditional position encoding,
    /// `final_conv` with SE, the average pool and the trunk's classifier (or open_clip's
    /// [`TimmProj`] head). The train-time branches of the reparameterisable blocks are what
    /// checkpoints hold; inference folds them (timm's `reparameterize`).
    TimmFastVit {
        /// timm's model name (`fastvit_mci2`).
        timm_model_name: String,
        /// Input side in pixels.
        image_resolution: i64,
        /// The trunk's shape and options (timm's `FastVit` arguments).
        #[serde(flatten)]
        shape: FastVitShape,
        /// The projection.
        proj: TimmProj,
    },
    /// timm's `ConvNeXt` (v1, `visual.trunk.*`): patchify stem, four stages of depthwise 7×7
    /// blocks with LayerScale, average pool and LayerNorm (timm's `NormMlpClassifierHead`), then
    /// open_clip's [`TimmProj`] head.
    TimmConvNext {
        /// timm's model name (`convnext_base`).
        timm_model_name: String,
        /// Input side in pixels.
        image_resolution: i64,
        /// Blocks per stage.
        depths: [i64; 4],
        /// Channels per stage.
        dims: [i64; 4],
        /// LayerNorm epsilon (`norm_eps`: 1e-6, `convnext_xxlarge` 1e-5).
        ln_eps: f64,
        /// open_clip's head.
        proj: TimmProj,
    },
}

/// The shape and options of timm's `Eva` trunk, as its EVA-CLIP and PE model functions set them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvaShape {
    /// Patch side.
    pub patch_size: i64,
    /// Residual width (`embed_dim`).
    pub width: i64,
    /// Blocks (`depth`).
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// MLP hidden width (`int(width · mlp_ratio)`, as Python computes it).
    pub mlp_width: i64,
    /// `swiglu_mlp`: `silu(fc1_g) · fc1_x`, else `fc1` → GELU.
    pub swiglu: bool,
    /// `scale_mlp`: a LayerNorm on the MLP's hidden units.
    pub scale_mlp: bool,
    /// The attention's projections (`attn_type`, `qkv_fused`).
    pub qkv: EvaQkv,
    /// `scale_attn_inner`: a LayerNorm on the merged heads before `proj`.
    pub scale_attn_inner: bool,
    /// Rotary positions (`use_rot_pos_emb`, timm's `RotaryEmbeddingCat`).
    pub rope: Option<EvaRope>,
    /// `use_post_norm`: `EvaBlockPostNorm`.
    pub post_norm: bool,
    /// `class_token`: a learned class token before the patches (with its own position).
    pub class_token: bool,
    /// `use_pre_transformer_norm`: `norm_pre` before the blocks (and a patch conv without bias).
    pub pre_norm: bool,
    /// `global_pool`.
    pub pool: EvaPool,
    /// LayerNorm epsilon (`norm_layer`: timm's 1e-6; PE's 1e-5).
    pub ln_eps: f64,
}

/// The parts of timm's `VisionTransformer` around the blocks, as a model function sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimmVitLayout {
    /// `class_token`: a learned `cls_token` before the patches.
    pub class_token: bool,
    /// `no_embed_class`: `pos_embed` covers the patches only (added before the class token).
    pub no_embed_class: bool,
    /// `pre_norm`: `norm_pre` before the blocks (and a patch conv without bias).
    pub pre_norm: bool,
    /// The patch embedding.
    pub stem: TimmVitStem,
    /// `global_pool`.
    pub pool: TimmVitPool,
}

/// A timm ViT's patch embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimmVitStem {
    /// `PatchEmbed`: a `patch × patch` convolution of stride `patch` (`patch_embed.proj`).
    Patch,
    /// `vit_base_mci_224`'s `ConvStem` (`patch_embed.backbone`): 4×4 stride 4 → BatchNorm →
    /// GELU → 2×2 stride 2 → BatchNorm → GELU → 2×2 stride 2 with bias (stride 16).
    MciConvStem {
        /// The first two convolutions' channels (`width / 4`).
        mid: i64,
    },
}

/// A timm ViT's `global_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimmVitPool {
    /// `map`: `AttentionPoolLatent` after `norm`.
    Map,
    /// `token`: the class token after `norm`.
    Token,
}

impl TimmVitPool {
    /// timm's name (open_clip's `timm_pool`).
    pub fn timm_name(self) -> &'static str {
        match self {
            TimmVitPool::Map => "map",
            TimmVitPool::Token => "token",
        }
    }
}

/// The shape of a timm ViTamin trunk, as its model functions set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VitaminShape {
    /// `VitCfg.stem_width`.
    pub stem_width: i64,
    /// `VitCfg.embed_dim[:2]`: the MBConv stages' channels.
    pub conv_dims: [i64; 2],
    /// `VitCfg.depths[:2]`: the MBConv stages' blocks.
    pub conv_depths: [i64; 2],
    /// The transformer's width (`embed_dim`, also `VitCfg.embed_dim[2]`).
    pub width: i64,
    /// Transformer blocks (`depth`).
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// GeGLU hidden width (`int(width · mlp_ratio)`, ratio 2).
    pub mlp_width: i64,
    /// A learned `pos_embed` (`pos_embed='none'` for XL: none).
    pub pos_embed: bool,
}

/// The shape of a timm `FastVit` trunk, as the `fastvit_mci*` model functions set it. Stage `i`
/// (after the first) starts with a stride-2 `PatchEmbed`; stages from `attention_from` on start
/// with a `RepConditionalPosEnc` and use attention as their token mixer, the others RepMixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastVitShape {
    /// Stages: 4 (MCi0–2) or 5 (MCi3, MCi4); the arrays' first `stages` entries are used.
    pub stages: usize,
    /// `layers`: blocks per stage.
    pub depths: [i64; 5],
    /// `embed_dims`: channels per stage.
    pub dims: [i64; 5],
    /// `mlp_ratios` (the same in every stage): the `ConvMlp` hidden width is `ratio · dim`.
    pub mlp_ratio: i64,
    /// `se_downsamples`: a squeeze-excite in the stage's downsampling large-kernel conv.
    pub se_downsample: [bool; 5],
    /// The first stage whose token mixer is attention (with `pos_emb`).
    pub attention_from: usize,
    /// The attention blocks' `norm_layer`.
    pub attention_norm: FastVitNorm,
    /// `stem_use_scale_branch`: the stem's MobileOne blocks have their 1×1 scale branch.
    pub stem_scale_branch: bool,
}

impl Serialize for FastVitShape {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let n = self.stages;
        let mut m = s.serialize_struct("FastVitShape", 6)?;
        m.serialize_field("depths", &self.depths[..n])?;
        m.serialize_field("dims", &self.dims[..n])?;
        m.serialize_field("mlp_ratio", &self.mlp_ratio)?;
        m.serialize_field("se_downsample", &self.se_downsample[..n])?;
        m.serialize_field("attention_from", &self.attention_from)?;
        m.serialize_field("attention_norm", &self.attention_norm)?;
        m.serialize_field("stem_scale_branch", &self.stem_scale_branch)?;
        m.end()
    }
}

/// The normalisation before a FastViT attention block's token mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FastVitNorm {
    /// `nn.BatchNorm2d` (MCi0–2).
    BatchNorm,
    /// timm's `LayerNorm2d` with eps 1e-5 (MCi3, MCi4).
    LayerNorm,
}

/// The projections of timm's Eva attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaQkv {
    /// `EvaAttention`, `qkv_fused`: one `qkv` without bias, plus `q_bias` and `v_bias`.
    FusedQvBias,
    /// `EvaAttention`, unfused: `q_proj`, `k_proj` (no bias), `v_proj`.
    Separate,
    /// `AttentionRope` (`attn_type='rope'`), fused: one `qkv` with bias.
    Fused,
}

/// timm's `RotaryEmbeddingCat` options (`in_pixels=False`: the 'index' grid).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvaRope {
    /// `ref_feat_shape`: positions rescaled so the patch grid spans this side.
    pub ref_grid: i64,
    /// `rope_grid_offset`, added to the indices before the rescaling.
    pub grid_offset: f64,
    /// `rope_grid_indexing='xy'`: the column coordinate's bands first (else the row's).
    pub xy: bool,
}

/// timm's Eva `global_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaPool {
    /// `token`: the class token after `norm`.
    Token,
    /// `map`: `AttentionPoolLatent` (one latent query) after `norm`.
    Map {
        /// `attn_pool_num_heads`.
        heads: i64,
        /// `int(width · attn_pool_mlp_ratio)`.
        mlp_width: i64,
    },
}

impl EvaPool {
    /// timm's name of the pool (`global_pool`), as open_clip's `timm_pool` names it.
    pub fn timm_name(self) -> &'static str {
        match self {
            EvaPool::Token => "token",
            EvaPool::Map { .. } => "map",
        }
    }
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
            }
            | VisionConfig::TimmVit {
                image_resolution, ..
            }
            | VisionConfig::TimmEva {
                image_resolution, ..
            }
            | VisionConfig::TimmVitamin {
                image_resolution, ..
            }
            | VisionConfig::TimmConvNext {
                image_resolution, ..
            }
            | VisionConfig::TimmFastVit {
                image_resolution, ..
            } => *image_resolution,
        }
    }

    /// `"ViT"`, `"ModifiedResNet"`, `"timm ViT"` (SigLIP's), `"timm ViT (class token)"`
    /// (MobileCLIP's), `"timm EVA"`, `"timm PE"` (an `Eva` trunk with
    /// `AttentionRope` and the MAP head), `"timm ViTamin"`, `"timm ConvNeXt"` or
    /// `"timm FastViT"`.
    pub fn family(&self) -> &'static str {
        match self {
            VisionConfig::VisionTransformer { .. } => "ViT",
            VisionConfig::ModifiedResNet { .. } => "ModifiedResNet",
            VisionConfig::TimmVit {
                layout: TimmVitLayout {
                    class_token: true, ..
                },
                ..
            } => "timm ViT (class token)",
            VisionConfig::TimmVit { .. } => "timm ViT",
            VisionConfig::TimmEva {
                shape:
                    EvaShape {
                        pool: EvaPool::Map { .. },
                        ..
                    },
                ..
            } => "timm PE",
            VisionConfig::TimmEva { .. } => "timm EVA",
            VisionConfig::TimmVitamin { .. } => "timm ViTamin",
            VisionConfig::TimmConvNext { .. } => "timm ConvNeXt",
            VisionConfig::TimmFastVit { .. } => "timm FastViT",
        }
    }

    /// A timm tower's pooled feature width (`num_features`) and open_clip's head after it.
    fn timm_head(&self) -> Option<(i64, TimmProj)> {
        match self {
            VisionConfig::TimmVit { width, proj, .. }
            | VisionConfig::TimmEva {
                shape: EvaShape { width, .. },
                proj,
                ..
            }
            | VisionConfig::TimmVitamin {
                shape: VitaminShape { width, .. },
                proj,
                ..
            } => Some((*width, *proj)),
            VisionConfig::TimmConvNext { dims, proj, .. } => Some((dims[3], *proj)),
            // `final_conv` doubles the last stage's channels (`cls_ratio` 2).
            VisionConfig::TimmFastVit { shape, proj, .. } => {
                Some((2 * shape.dims[shape.stages - 1], *proj))
            }
            _ => None,
        }
    }
}

/// The text tower of a CLIP model (open_clip's `TextTransformer`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextConfig {
    /// Maximum number of tokens (77 for every OpenAI model).
    pub context_length: i64,
    /// Vocabulary size (49408 for CLIP's BPE).
    pub vocab_size: i64,
    /// Residual width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// Number of residual attention blocks.
    pub layers: i64,
    /// Hidden width of each MLP (`width · mlp_ratio`).
    pub mlp_width: i64,
    /// The MLP activation.
    pub act: Activation,
    /// LayerScale in each block (`ls_init_value` set).
    pub layer_scale: bool,
    /// Causal attention mask (`no_causal_mask: false`).
    pub causal: bool,
    /// Where the features are taken.
    pub pool: TextPool,
    /// The projection.
    pub projection: TextProjection,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// CoCa's appended class token, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed_cls: Option<EmbedCls>,
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
    /// The model has a learned `logit_bias` (`init_logit_bias`: SigLIP-style sigmoid scoring).
    pub logit_bias: bool,
    /// The text tower's keys live under `text.` (open_clip's `CustomTextCLIP` and `CoCa`), not
    /// at the top level.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub custom_text: bool,
    /// CoCa: the checkpoint also holds a captioning decoder (`text_decoder.*`, open_clip's
    /// `multimodal_cfg`). Embeddings do not use it; the loader sets its keys aside and counts
    /// them ([`super::load::LoadedCheckpoint::unused_keys`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_decoder: bool,
    /// A Hugging Face text tower (open_clip's `HFTextEncoder`, under `text.`) in place of the
    /// `TextTransformer`; [`ClipConfig::text`] then holds its encoder's shapes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hf_text: Option<super::hf_text::HfTextConfig>,
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

impl TextConfig {
    /// OpenAI's text tower of `width` (what `build_model` makes: QuickGELU, causal, argmax pool).
    pub fn openai(context_length: i64, vocab_size: i64, width: i64, layers: i64) -> TextConfig {
        TextConfig {
            context_length,
            vocab_size,
            width,
            heads: width / 64,
            layers,
            mlp_width: 4 * width,
            act: Activation::QuickGelu,
            layer_scale: false,
            causal: true,
            pool: TextPool::Argmax,
            projection: TextProjection::Matrix,
            ln_eps: 1e-5,
            embed_cls: None,
        }
    }
}

impl ClipConfig {
    /// The config open_clip builds for an architecture name of its `model_configs/`
    /// (`ViT-B-32`, `ViT-B-32-quickgelu`, `ViT-H-14`, …), as `create_model(name)` does: note that
    /// `ViT-B-32` is GELU — OpenAI's weights are `ViT-B-32-quickgelu` or `ViT-B-32:openai`. OpenAI's
    /// own spellings (`ViT-B/32`, `ViT-L/14@336px`) name OpenAI's checkpoints, hence QuickGELU.
    /// `None` for a name open_clip does not know or whose towers typoclip does not build (see
    /// [`super::open_clip::ModelCfg::to_clip_config`] for the reason).
    pub fn preset(name: &str) -> Option<ClipConfig> {
        if name.contains('/') || name.contains('@') {
            let arch = canonical_arch_name(name)?;
            return ClipConfig::for_tag(arch, "openai").ok();
        }
        super::open_clip::zoo()
            .model(name)?
            .to_clip_config(false)
            .ok()
    }

    /// `NAME` or `NAME:TAG` as `--arch` takes it: [`ClipConfig::preset`] or
    /// [`ClipConfig::for_tag`], with the reason when neither applies.
    pub fn from_arch(spec: &str) -> Result<ClipConfig, ModelError> {
        if let Some((arch, tag)) = spec.split_once(':') {
            return ClipConfig::for_tag(arch, tag);
        }
        if let Some(c) = ClipConfig::preset(spec) {
            return Ok(c);
        }
        match super::open_clip::zoo().model(spec) {
            Some(cfg) => cfg
                .to_clip_config(false)
                .map_err(|e| ModelError::Config(format!("`{spec}`: {e}"))),
            None => Err(ModelError::Config(format!(
                "`{spec}` is not an open_clip architecture name (`typoclip models` lists them)"
            ))),
        }
    }

    /// The config open_clip builds for `ARCH:TAG`: the architecture's config with the tag's
    /// `quick_gelu` (open_clip turns QuickGELU on for `openai` and a few other tags).
    pub fn for_tag(arch: &str, tag: &str) -> Result<ClipConfig, ModelError> {
        let zoo = super::open_clip::zoo();
        let cfg = zoo.model(arch).ok_or_else(|| {
            ModelError::Config(format!("`{arch}` is not an open_clip architecture name"))
        })?;
        let quick = zoo.pretrained(arch, tag).map(|p| p.quick_gelu).ok_or_else(|| {
            ModelError::Config(format!(
                "`{arch}:{tag}` is not in open_clip's pretrained list (`typoclip models` lists them)"
            ))
        })?;
        cfg.to_clip_config(quick)
    }

    /// OpenAI's `build_model`: the architecture of one of OpenAI's checkpoints inferred from its
    /// tensor shapes (keys in OpenAI/open_clip naming). Every OpenAI model uses QuickGELU, a
    /// causal argmax-pooled text tower and default LayerNorms, so the shapes say everything —
    /// for OpenAI's files only (TorchScript archives, the nine official sha256s). Other
    /// checkpoints need their config ([`super::load`]).
    pub fn openai_from_shapes(
        shapes: &BTreeMap<String, Vec<i64>>,
    ) -> Result<ClipConfig, ModelError> {
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
                mlp_width: 4 * width,
                act: Activation::QuickGelu,
                layer_scale: false,
                ln_pre: true,
                pool: VitPool::Tok,
                final_ln_after_pool: false,
                ln_eps: 1e-5,
                attn_pool: None,
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
            text: TextConfig::openai(
                dim("positional_embedding", 0)?,
                dim("token_embedding.weight", 0)?,
                width,
                count_blocks("transformer.resblocks."),
            ),
            logit_bias: false,
            custom_text: false,
            text_decoder: false,
            hf_text: None,
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
                mlp_width,
                ..
            } => {
                if *layers < 1
                    || *heads < 1
                    || width % heads != 0
                    || *patch_size < 1
                    || *mlp_width < 1
                {
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
            VisionConfig::TimmVit {
                timm_model_name,
                image_resolution,
                patch_size,
                width,
                layers,
                heads,
                mlp_width,
                ..
            } => timm_vit_shape(
                timm_model_name,
                *image_resolution,
                *patch_size,
                *width,
                *layers,
                *heads,
                *mlp_width,
                true,
            )?,
            VisionConfig::TimmEva {
                timm_model_name,
                image_resolution,
                shape:
                    EvaShape {
                        patch_size,
                        width,
                        layers,
                        heads,
                        mlp_width,
                        rope,
                        ..
                    },
                ..
            } => timm_vit_shape(
                timm_model_name,
                *image_resolution,
                *patch_size,
                *width,
                *layers,
                *heads,
                *mlp_width,
                // Rotary positions split each head into 4 · bands.
                rope.is_none() || *heads < 1 || (width / heads) % 4 == 0,
            )?,
            VisionConfig::TimmVitamin {
                timm_model_name,
                image_resolution,
                shape: v,
                ..
            } => {
                timm_vit_shape(
                    timm_model_name,
                    *image_resolution,
                    16,
                    v.width,
                    v.layers,
                    v.heads,
                    v.mlp_width,
                    v.stem_width > 0 && v.conv_dims.iter().chain(&v.conv_depths).all(|&d| d > 0),
                )?;
                // The backbone's four stride-2 steps: the grid is the side over 16.
                if image_resolution % 16 != 0 {
                    return bad(format!(
                        "{timm_model_name}: {image_resolution} px is not a multiple of 16"
                    ));
                }
            }
            VisionConfig::TimmConvNext {
                timm_model_name,
                depths,
                dims,
                ..
            } => {
                if depths.iter().any(|&d| d < 1) || dims.iter().any(|&d| d < 1) {
                    return bad(format!(
                        "invalid {timm_model_name} shape: depths {depths:?}, dims {dims:?}"
                    ));
                }
            }
            VisionConfig::TimmFastVit {
                timm_model_name,
                shape: f,
                ..
            } => {
                let n = f.stages;
                let ok = (4..=5).contains(&n)
                    && f.depths[..n].iter().chain(&f.dims[..n]).all(|&d| d > 0)
                    && f.mlp_ratio > 0
                    && f.attention_from <= n
                    // Each downsampling conv has one group per input channel.
                    && f.dims[..n].windows(2).all(|w| w[1] % w[0] == 0)
                    // The attention heads are 32 wide.
                    && f.dims[f.attention_from.min(n)..n].iter().all(|d| d % 32 == 0);
                if !ok {
                    return bad(format!(
                        "invalid {timm_model_name} shape: depths {:?}, dims {:?}",
                        &f.depths[..n.min(5)],
                        &f.dims[..n.min(5)]
                    ));
                }
            }
        }
        if let Some((features, TimmProj::None)) = self.vision.timm_head() {
            if features != self.embed_dim {
                return bad(format!(
                    "timm_proj none: the trunk's {features} features are not embed_dim {}",
                    self.embed_dim
                ));
            }
        }
        let t = &self.text;
        if t.layers < 1 || t.heads < 1 || t.width % t.heads != 0 || t.mlp_width < 1 {
            return bad(format!(
                "invalid text transformer: width {}, layers {}, heads {}",
                t.width, t.layers, t.heads
            ));
        }
        Ok(())
    }

    /// A short architecture description such as `ViT-B/32-like (ViT, width 768, 12 layers, patch 32)`.
    pub fn describe(&self) -> String {
        let act = |a: Activation| match a {
            Activation::Gelu => "GELU",
            Activation::GeluTanh => "GELU-tanh",
            Activation::QuickGelu => "QuickGELU",
        };
        match &self.vision {
            VisionConfig::VisionTransformer {
                image_resolution,
                patch_size,
                width,
                layers,
                act: a,
                attn_pool,
                ..
            } => format!(
                "{} (width {width}, {layers} layers, patch {patch_size}, {image_resolution} px, {})",
                if attn_pool.is_some() {
                    "CoCa ViT"
                } else {
                    "ViT"
                },
                act(*a)
            ),
            VisionConfig::ModifiedResNet {
                image_resolution,
                layers,
                width,
                ..
            } => format!(
                "ModifiedResNet (stages {layers:?}, width {width}, {image_resolution} px; text {})",
                act(self.text.act)
            ),
            VisionConfig::TimmVit {
                timm_model_name,
                image_resolution,
                patch_size,
                width,
                layers,
                act: a,
                layout,
                ..
            } => format!(
                "timm {timm_model_name} (width {width}, {layers} layers, patch {patch_size}, \
                 {image_resolution} px, {}{}{}, {} pool)",
                act(*a),
                if layout.class_token { ", class token" } else { "" },
                match layout.stem {
                    TimmVitStem::Patch => "",
                    TimmVitStem::MciConvStem { .. } => ", convolutional stem",
                },
                match layout.pool {
                    TimmVitPool::Map => "MAP",
                    TimmVitPool::Token => "class-token",
                },
            ),
            VisionConfig::TimmEva {
                timm_model_name,
                image_resolution,
                shape: e,
                ..
            } => format!(
                "timm {timm_model_name} (width {}, {} layers, patch {}, {image_resolution} px, \
                 {}{}{}, {} pool)",
                e.width,
                e.layers,
                e.patch_size,
                if e.swiglu { "SwiGLU" } else { "GELU" },
                if e.rope.is_some() {
                    ", rotary positions"
                } else {
                    ""
                },
                if e.post_norm { ", post-norm" } else { "" },
                match e.pool {
                    EvaPool::Token => "class-token",
                    EvaPool::Map { .. } => "MAP",
                },
            ),
            VisionConfig::TimmVitamin {
                timm_model_name,
                image_resolution,
                shape: v,
                ..
            } => format!(
                "timm {timm_model_name} (MBConv stages {:?} × {:?}, width {}, {} layers, \
                 {image_resolution} px, GeGLU, average pool)",
                v.conv_dims, v.conv_depths, v.width, v.layers
            ),
            VisionConfig::TimmConvNext {
                timm_model_name,
                image_resolution,
                depths,
                dims,
                ..
            } => format!(
                "timm {timm_model_name} (depths {depths:?}, dims {dims:?}, {image_resolution} px)"
            ),
            VisionConfig::TimmFastVit {
                timm_model_name,
                image_resolution,
                shape: f,
                ..
            } => format!(
                "timm {timm_model_name} (FastViT: depths {:?}, dims {:?}, RepMixer, attention \
                 from stages.{}, {image_resolution} px, average pool)",
                &f.depths[..f.stages],
                &f.dims[..f.stages],
                f.attention_from
            ),
        }
    }
}

/// The shape check of a timm ViT-like trunk (SigLIP's ViT, EVA): `extra_ok` is the family's own
/// condition.
#[allow(clippy::too_many_arguments)]
fn timm_vit_shape(
    timm_model_name: &str,
    image_resolution: i64,
    patch_size: i64,
    width: i64,
    layers: i64,
    heads: i64,
    mlp_width: i64,
    extra_ok: bool,
) -> Result<(), ModelError> {
    if layers < 1
        || heads < 1
        || width % heads != 0
        || patch_size < 1
        || image_resolution < patch_size
        || mlp_width < 1
        || !extra_ok
    {
        return Err(ModelError::Config(format!(
            "invalid {timm_model_name} shape: width {width}, layers {layers}, heads {heads}, \
             patch {patch_size}, {image_resolution} px"
        )));
    }
    Ok(())
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
