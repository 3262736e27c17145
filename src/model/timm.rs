//! timm image towers as open_clip wraps them (`TimmModel`): the table of timm model names
//! typoclip builds — each entry the arguments of timm's own model function — and open_clip's
//! head after the trunk (`visual.head.*`: `timm_proj` linear, mlp or none).
//!
//! A name not in the table is refused by the config stage, never approximated by a neighbour.
//! Reference: timm 1.0 `models/vision_transformer.py` (`vit_*_siglip_*`), `models/eva.py`
//! (`eva_giant_patch14_224`, `eva02_*_clip_*`), `models/convnext.py` (`convnext_*`),
//! `models/fastvit.py` (`fastvit_mci*`); open_clip
//! `timm_model.py`.

use tch::{nn, Tensor};

use super::config::{
    Activation, EvaPool, EvaQkv, EvaRope, EvaShape, FastVitNorm, FastVitShape, TimmProj,
    TimmVitLayout, TimmVitPool, TimmVitStem, VitaminShape,
};
use super::transformer::Linear;

/// The architecture a timm model name stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TimmArch {
    /// `VisionTransformer(class_token=False, global_pool='map', …)`.
    Vit {
        /// `img_size` (timm takes it from the name's pretrained config).
        image_size: i64,
        patch_size: i64,
        width: i64,
        depth: i64,
        heads: i64,
        mlp_ratio: f64,
        act: Activation,
        /// `norm_layer`'s epsilon.
        ln_eps: f64,
        layout: TimmVitLayout,
    },
    /// timm's `Eva` (`models/eva.py`), as its EVA-CLIP model functions set it: its `img_size`
    /// and the trunk's shape.
    Eva { image_size: i64, shape: EvaShape },
    /// ViTamin (`models/vitamin.py`): its `img_size` and the trunk's shape.
    Vitamin {
        image_size: i64,
        shape: VitaminShape,
    },
    /// timm's `FastVit` (`models/fastvit.py`), as the `fastvit_mci*` model functions set it.
    FastVit { shape: FastVitShape },
    /// `ConvNeXt(depths, dims, norm_eps)`.
    ConvNext {
        depths: [i64; 4],
        dims: [i64; 4],
        ln_eps: f64,
    },
}

/// EVA02's CLIP towers (`eva02_*_clip_*`): unfused q/k/v, SwiGLU with its hidden norm
/// (`mlp_ratio = 4·2/3`), the attention sub-LN, rotary positions on a 16×16 reference grid.
const fn eva02(image_size: i64, patch_size: i64, width: i64, depth: i64, heads: i64) -> TimmArch {
    TimmArch::Eva {
        image_size,
        shape: EvaShape {
            patch_size,
            width,
            layers: depth,
            heads,
            mlp_width: (width as f64 * (4.0 * 2.0 / 3.0)) as i64,
            swiglu: true,
            scale_mlp: true,
            qkv: EvaQkv::Separate,
            scale_attn_inner: true,
            rope: Some(EvaRope {
                ref_grid: 16,
                grid_offset: 0.0,
                xy: false,
            }),
            post_norm: false,
            class_token: true,
            pre_norm: false,
            pool: EvaPool::Token,
            ln_eps: 1e-6,
        },
    }
}

/// EVA's plain towers: fused qkv with q/v biases, GELU MLP, no rotary positions.
const fn eva_plain(width: i64, depth: i64, mlp_ratio: f64, post_norm: bool) -> TimmArch {
    TimmArch::Eva {
        image_size: 224,
        shape: EvaShape {
            patch_size: 14,
            width,
            layers: depth,
            heads: 16,
            mlp_width: (width as f64 * mlp_ratio) as i64,
            swiglu: false,
            scale_mlp: false,
            qkv: EvaQkv::FusedQvBias,
            scale_attn_inner: false,
            rope: None,
            post_norm,
            class_token: true,
            pre_norm: false,
            pool: EvaPool::Token,
            ln_eps: 1e-6,
        },
    }
}

/// Meta's Perception Encoder towers (`vit_pe_core_*`): `AttentionRope` (fused `qkv` with bias),
/// rotary positions on the 'xy' index grid offset by `rope_grid_offset`, `norm_pre` (and a patch
/// conv without bias), GELU MLP, the MAP head (8 heads, MLP ratio 4), LayerNorm eps 1e-5.
#[allow(clippy::too_many_arguments)]
const fn pe_core(
    image_size: i64,
    patch_size: i64,
    width: i64,
    depth: i64,
    heads: i64,
    mlp_width: i64,
    ref_grid: i64,
    class_token: bool,
) -> TimmArch {
    TimmArch::Eva {
        image_size,
        shape: EvaShape {
            patch_size,
            width,
            layers: depth,
            heads,
            mlp_width,
            swiglu: false,
            scale_mlp: false,
            qkv: EvaQkv::Fused,
            scale_attn_inner: false,
            rope: Some(EvaRope {
                ref_grid,
                // The functions with a class token set `rope_grid_offset=1.`; gigantic (no class
                // token) keeps timm's 0.
                grid_offset: if class_token { 1.0 } else { 0.0 },
                xy: true,
            }),
            post_norm: false,
            class_token,
            pre_norm: true,
            pool: EvaPool::Map {
                heads: 8,
                mlp_width: 4 * width,
            },
            ln_eps: 1e-5,
        },
    }
}

/// The PE-Core towers open_clip's PE configs name.
const PE_CORES: [(&str, TimmArch); 5] = [
    (
        "vit_pe_core_tiny_patch16_384",
        pe_core(384, 16, 192, 12, 3, 768, 24, true),
    ),
    (
        "vit_pe_core_small_patch16_384",
        pe_core(384, 16, 384, 12, 6, 1536, 24, true),
    ),
    (
        "vit_pe_core_base_patch16_224",
        pe_core(224, 16, 768, 12, 12, 3072, 14, true),
    ),
    (
        "vit_pe_core_large_patch14_336",
        pe_core(336, 14, 1024, 24, 16, 4096, 24, true),
    ),
    // mlp_ratio 8960 / 1536: Python's int(1536 * (8960 / 1536)) is 8960.
    (
        "vit_pe_core_gigantic_patch14_448",
        pe_core(448, 14, 1536, 50, 16, 8960, 32, false),
    ),
];

/// A ViTamin trunk (`VitCfg(embed_dim=(stem, 2·stem, width), depths=(2, 4, 1),
/// stem_width=stem)`, GeGLU with `mlp_ratio=2`, no class token, average pool) at `image_size`.
const fn vitamin(
    image_size: i64,
    stem: i64,
    width: i64,
    depth: i64,
    heads: i64,
    pos_embed: bool,
) -> TimmArch {
    TimmArch::Vitamin {
        image_size,
        shape: VitaminShape {
            stem_width: stem,
            conv_dims: [stem, 2 * stem],
            conv_depths: [2, 4],
            width,
            layers: depth,
            heads,
            mlp_width: 2 * width,
            pos_embed,
        },
    }
}

/// The ViTamin towers open_clip's ViTamin configs name (`vitamin_large2_*` has the same
/// arguments as `vitamin_large_*`; the XL ones have no `pos_embed`).
const VITAMINS: [(&str, TimmArch); 13] = [
    ("vitamin_small_224", vitamin(224, 64, 384, 14, 6, true)),
    ("vitamin_base_224", vitamin(224, 128, 768, 14, 12, true)),
    ("vitamin_large_224", vitamin(224, 160, 1024, 31, 16, true)),
    ("vitamin_large_256", vitamin(256, 160, 1024, 31, 16, true)),
    ("vitamin_large_336", vitamin(336, 160, 1024, 31, 16, true)),
    ("vitamin_large_384", vitamin(384, 160, 1024, 31, 16, true)),
    ("vitamin_large2_224", vitamin(224, 160, 1024, 31, 16, true)),
    ("vitamin_large2_256", vitamin(256, 160, 1024, 31, 16, true)),
    ("vitamin_large2_336", vitamin(336, 160, 1024, 31, 16, true)),
    ("vitamin_large2_384", vitamin(384, 160, 1024, 31, 16, true)),
    ("vitamin_xlarge_256", vitamin(256, 192, 1152, 32, 16, false)),
    ("vitamin_xlarge_336", vitamin(336, 192, 1152, 32, 16, false)),
    ("vitamin_xlarge_384", vitamin(384, 192, 1152, 32, 16, false)),
];

/// MCi0–2 (`fastvit_mci0`–`mci2`): four stages, RepMixer in the first three, attention with a
/// BatchNorm in the last (after a 7×7 `RepConditionalPosEnc`), SE in the downsampling of stages
/// 2 and 3, `mlp_ratio` 3.
const fn mci(depths: [i64; 4], dims: [i64; 4]) -> TimmArch {
    TimmArch::FastVit {
        shape: FastVitShape {
            stages: 4,
            depths: [depths[0], depths[1], depths[2], depths[3], 0],
            dims: [dims[0], dims[1], dims[2], dims[3], 0],
            mlp_ratio: 3,
            se_downsample: [false, false, true, true, false],
            attention_from: 3,
            attention_norm: FastVitNorm::BatchNorm,
            stem_scale_branch: true,
        },
    }
}

/// MCi3 and MCi4 (MobileCLIP 2's `fastvit_mci3`, `mci4`): five stages, attention in the last two
/// with `LayerNorm2d` (eps 1e-5), no SE, `mlp_ratio` 4, stem blocks without the scale branch.
const fn mci_large(depths: [i64; 5], dims: [i64; 5]) -> TimmArch {
    TimmArch::FastVit {
        shape: FastVitShape {
            stages: 5,
            depths,
            dims,
            mlp_ratio: 4,
            se_downsample: [false; 5],
            attention_from: 3,
            attention_norm: FastVitNorm::LayerNorm,
            stem_scale_branch: false,
        },
    }
}

/// The FastViT towers of MobileCLIP's and MobileCLIP 2's S configs.
const FASTVITS: [(&str, TimmArch); 5] = [
    ("fastvit_mci0", mci([2, 6, 10, 2], [64, 128, 256, 512])),
    ("fastvit_mci1", mci([4, 12, 20, 4], [64, 128, 256, 512])),
    ("fastvit_mci2", mci([4, 12, 24, 4], [80, 160, 320, 640])),
    (
        "fastvit_mci3",
        mci_large([2, 12, 24, 4, 2], [96, 192, 384, 768, 1536]),
    ),
    (
        "fastvit_mci4",
        mci_large([2, 12, 24, 4, 4], [128, 256, 512, 1024, 2048]),
    ),
];

/// The EVA towers open_clip's EVA configs name.
const EVAS: [(&str, TimmArch); 5] = [
    (
        "eva_giant_patch14_224",
        eva_plain(1408, 40, 6144.0 / 1408.0, false),
    ),
    ("eva02_base_patch16_clip_224", eva02(224, 16, 768, 12, 12)),
    ("eva02_large_patch14_clip_224", eva02(224, 14, 1024, 24, 16)),
    ("eva02_large_patch14_clip_336", eva02(336, 14, 1024, 24, 16)),
    (
        "eva02_enormous_patch14_clip_224",
        eva_plain(1792, 64, 15360.0 / 1792.0, true),
    ),
];

/// SigLIP's layout: no class token, the patch conv with bias, the MAP head.
const SIGLIP: TimmVitLayout = TimmVitLayout {
    class_token: false,
    no_embed_class: false,
    pre_norm: false,
    stem: TimmVitStem::Patch,
    pool: TimmVitPool::Map,
};

/// `TimmArch::Vit` from timm's arguments: image size, patch, width, depth, heads, MLP ratio, act.
const fn vit(
    image_size: i64,
    patch_size: i64,
    width: i64,
    depth: i64,
    heads: i64,
    mlp_ratio: f64,
    act: Activation,
) -> TimmArch {
    TimmArch::Vit {
        image_size,
        patch_size,
        width,
        depth,
        heads,
        mlp_ratio,
        act,
        ln_eps: 1e-6,
        layout: SIGLIP,
    }
}

/// The ViTs MobileCLIP's B and MobileCLIP 2's L-14 configs name: `vit_base_mci_224` (MCi's
/// convolutional stem, `no_embed_class`, eps 1e-6) and `vit_large_patch14_clip_224` (`pre_norm`,
/// eps 1e-5), both with a class token, pooled by open_clip's `timm_pool: token`.
const MOBILECLIP_VITS: [(&str, TimmArch); 2] = [
    (
        "vit_base_mci_224",
        TimmArch::Vit {
            image_size: 224,
            patch_size: 16,
            width: 768,
            depth: 12,
            heads: 12,
            mlp_ratio: 4.0,
            act: Activation::Gelu,
            ln_eps: 1e-6,
            layout: TimmVitLayout {
                class_token: true,
                no_embed_class: true,
                pre_norm: false,
                stem: TimmVitStem::MciConvStem { mid: 192 },
                pool: TimmVitPool::Token,
            },
        },
    ),
    (
        "vit_large_patch14_clip_224",
        TimmArch::Vit {
            image_size: 224,
            patch_size: 14,
            width: 1024,
            depth: 24,
            heads: 16,
            mlp_ratio: 4.0,
            act: Activation::Gelu,
            ln_eps: 1e-5,
            layout: TimmVitLayout {
                class_token: true,
                no_embed_class: false,
                pre_norm: true,
                stem: TimmVitStem::Patch,
                pool: TimmVitPool::Token,
            },
        },
    ),
];

/// The SigLIP ViTs of timm.
const SIGLIP_VITS: [(&str, TimmArch); 16] = {
    use Activation::{Gelu, GeluTanh};
    [
        (
            "vit_base_patch32_siglip_256",
            vit(256, 32, 768, 12, 12, 4.0, GeluTanh),
        ),
        (
            "vit_base_patch16_siglip_224",
            vit(224, 16, 768, 12, 12, 4.0, Gelu),
        ),
        (
            "vit_base_patch16_siglip_256",
            vit(256, 16, 768, 12, 12, 4.0, Gelu),
        ),
        (
            "vit_base_patch16_siglip_384",
            vit(384, 16, 768, 12, 12, 4.0, Gelu),
        ),
        (
            "vit_base_patch16_siglip_512",
            vit(512, 16, 768, 12, 12, 4.0, Gelu),
        ),
        (
            "vit_large_patch16_siglip_256",
            vit(256, 16, 1024, 24, 16, 4.0, Gelu),
        ),
        (
            "vit_large_patch16_siglip_384",
            vit(384, 16, 1024, 24, 16, 4.0, Gelu),
        ),
        (
            "vit_large_patch16_siglip_512",
            vit(512, 16, 1024, 24, 16, 4.0, GeluTanh),
        ),
        (
            "vit_so400m_patch14_siglip_224",
            vit(224, 14, 1152, 27, 16, 3.7362, Gelu),
        ),
        (
            "vit_so400m_patch14_siglip_378",
            vit(378, 14, 1152, 27, 16, 3.7362, Gelu),
        ),
        (
            "vit_so400m_patch14_siglip_384",
            vit(384, 14, 1152, 27, 16, 3.7362, Gelu),
        ),
        (
            "vit_so400m_patch16_siglip_256",
            vit(256, 16, 1152, 27, 16, 3.7362, GeluTanh),
        ),
        (
            "vit_so400m_patch16_siglip_384",
            vit(384, 16, 1152, 27, 16, 3.7362, GeluTanh),
        ),
        (
            "vit_so400m_patch16_siglip_512",
            vit(512, 16, 1152, 27, 16, 3.7362, GeluTanh),
        ),
        (
            "vit_giantopt_patch16_siglip_256",
            vit(256, 16, 1536, 40, 16, 4.0, GeluTanh),
        ),
        (
            "vit_giantopt_patch16_siglip_384",
            vit(384, 16, 1536, 40, 16, 4.0, GeluTanh),
        ),
    ]
};

/// timm's ConvNeXt v1 models: (name, depths, dims, norm_eps).
const CONVNEXTS: [(&str, [i64; 4], [i64; 4], f64); 6] = [
    ("convnext_tiny", [3, 3, 9, 3], [96, 192, 384, 768], 1e-6),
    ("convnext_small", [3, 3, 27, 3], [96, 192, 384, 768], 1e-6),
    ("convnext_base", [3, 3, 27, 3], [128, 256, 512, 1024], 1e-6),
    ("convnext_large", [3, 3, 27, 3], [192, 384, 768, 1536], 1e-6),
    (
        "convnext_xlarge",
        [3, 3, 27, 3],
        [256, 512, 1024, 2048],
        1e-6,
    ),
    (
        "convnext_xxlarge",
        [3, 4, 30, 3],
        [384, 768, 1536, 3072],
        1e-5,
    ),
];

/// The architecture of a timm model name, if typoclip builds it.
pub(crate) fn timm_arch(name: &str) -> Option<TimmArch> {
    if let Some(&(_, arch)) = SIGLIP_VITS
        .iter()
        .chain(&EVAS)
        .chain(&PE_CORES)
        .chain(&VITAMINS)
        .chain(&MOBILECLIP_VITS)
        .chain(&FASTVITS)
        .find(|v| v.0 == name)
    {
        return Some(arch);
    }
    CONVNEXTS
        .iter()
        .find(|c| c.0 == name)
        .map(|&(_, depths, dims, ln_eps)| TimmArch::ConvNext {
            depths,
            dims,
            ln_eps,
        })
}

/// open_clip's `TimmModel.head`: `[B, num_features] → [B, embed_dim]`.
#[derive(Debug)]
pub(crate) enum TimmHead {
    None,
    /// The trunk's classifier, `visual.trunk.head`.
    Classifier(Linear),
    Proj(Linear),
    Mlp {
        fc1: Linear,
        fc2: Linear,
    },
}

impl TimmHead {
    /// The head of the tower under `visual` (`visual.head`, or `visual.trunk.head` for the
    /// trunk's classifier).
    pub(crate) fn new(
        visual: &nn::Path,
        proj: TimmProj,
        features: i64,
        embed_dim: i64,
    ) -> TimmHead {
        let p = visual / "head";
        match proj {
            TimmProj::None => TimmHead::None,
            TimmProj::Classifier => {
                TimmHead::Classifier(Linear::new(visual / "trunk" / "head", features, embed_dim))
            }
            TimmProj::Linear { bias } => {
                TimmHead::Proj(Linear::with_bias(&p / "proj", features, embed_dim, bias))
            }
            TimmProj::Mlp { bias } => {
                let m = &p / "mlp";
                TimmHead::Mlp {
                    fc1: Linear::new(&m / "fc1", features, 2 * embed_dim),
                    fc2: Linear::with_bias(&m / "fc2", 2 * embed_dim, embed_dim, bias),
                }
            }
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            TimmHead::None => x.shallow_clone(),
            TimmHead::Proj(l) | TimmHead::Classifier(l) => l.forward(x),
            TimmHead::Mlp { fc1, fc2 } => fc2.forward(&fc1.forward(x).gelu("none")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_timms_arguments() {
        assert_eq!(
            timm_arch("vit_so400m_patch14_siglip_378"),
            Some(TimmArch::Vit {
                image_size: 378,
                patch_size: 14,
                width: 1152,
                depth: 27,
                heads: 16,
                mlp_ratio: 3.7362,
                act: Activation::Gelu,
                ln_eps: 1e-6,
                layout: SIGLIP,
            })
        );
        assert!(matches!(
            timm_arch("convnext_xxlarge"),
            Some(TimmArch::ConvNext { ln_eps, .. }) if ln_eps == 1e-5
        ));
        assert_eq!(timm_arch("vit_base_patch16_siglip_gap_224"), None);
        // Python's int(768 * (4 * 2 / 3)) and int(1408 * (6144 / 1408)).
        let Some(TimmArch::Eva { shape: b, .. }) = timm_arch("eva02_base_patch16_clip_224") else {
            panic!("EVA02-B")
        };
        assert_eq!(
            (b.mlp_width, b.rope.map(|r| r.ref_grid), b.qkv),
            (2048, Some(16), EvaQkv::Separate)
        );
        let Some(TimmArch::Eva { shape: g, .. }) = timm_arch("eva_giant_patch14_224") else {
            panic!("EVA-g")
        };
        assert_eq!(
            (g.mlp_width, g.layers, g.qkv),
            (6144, 40, EvaQkv::FusedQvBias)
        );
        let Some(TimmArch::Eva { shape: pe, .. }) = timm_arch("vit_pe_core_gigantic_patch14_448")
        else {
            panic!("PE-Core-G")
        };
        assert_eq!(
            (pe.class_token, pe.rope.map(|r| r.grid_offset), pe.pool),
            (
                false,
                Some(0.0),
                EvaPool::Map {
                    heads: 8,
                    mlp_width: 6144
                }
            )
        );
        assert_eq!(timm_arch("eva02_small_patch14_224"), None);
    }
}
