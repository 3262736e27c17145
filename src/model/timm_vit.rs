//! timm's `VisionTransformer` under open_clip's `visual.trunk`, as SigLIP / SigLIP 2 and
//! MobileCLIP's ViTs build it: the patch embedding — `patch_embed.proj` (a patch conv, with bias
//! unless `pre_norm`), or `vit_base_mci_224`'s convolutional stem `patch_embed.backbone`
//! (`N.conv`, `N.bn`: 4×4/4 → BatchNorm → GELU → 2×2/2 → BatchNorm → GELU → 2×2/2 with bias) —
//! the class token `cls_token` (MobileCLIP; SigLIP has none), a learned `pos_embed` (over the
//! class token too, unless `no_embed_class`), `norm_pre` (`pre_norm`), the blocks (`blocks.N`,
//! timm's names, [`Naming::Timm`]), the final `norm`, then the pool — the MAP head `attn_pool`
//! (timm's `AttentionPoolLatent`: one learned `latent` query attends over the tokens through `q`
//! and `kv`, `proj`, then `x + mlp(norm(x))`) or the class token — and open_clip's
//! [`TimmHead`] (`visual.head`, or the trunk's classifier `visual.trunk.head`).
//! Reference: timm 1.0 `models/vision_transformer.py` (`VisionTransformer`, `_pos_embed`,
//! `forward_head`, `vit_large_patch14_clip_224`), `models/vision_transformer_hybrid.py`
//! (`ConvStem`, `vit_base_mci_224`), `layers/attention_pool.py` (`AttentionPoolLatent`).

use tch::{nn, Tensor};

use super::batch_norm::BatchNorm;
use super::config::{Activation, TimmProj, TimmVitLayout, TimmVitPool, TimmVitStem};
use super::probe::Probe;
use super::timm::TimmHead;
use super::transformer::{
    activate, attend, merge_heads, param, BlockCfg, LayerNorm, Linear, Mask, Naming, Transformer,
};

/// timm's `AttentionPoolLatent` with one latent query, `pool_type='token'`: `latent` attends
/// over the tokens through `q` and `kv`, `proj`, then `x + mlp(norm(x))`.
#[derive(Debug)]
pub(crate) struct AttentionPoolLatent {
    latent: Tensor,
    q: Linear,
    kv: Linear,
    proj: Linear,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
    act: Activation,
}

impl AttentionPoolLatent {
    /// The pool under `p` (`trunk.attn_pool`) over tokens of `width`.
    pub(crate) fn new(
        p: nn::Path,
        width: i64,
        heads: i64,
        mlp_width: i64,
        ln_eps: f64,
        act: Activation,
    ) -> AttentionPoolLatent {
        let w = width;
        let mlp = &p / "mlp";
        AttentionPoolLatent {
            latent: param(&p, "latent", &[1, 1, w], (w as f64).powf(-0.5)),
            q: Linear::new(&p / "q", w, w),
            kv: Linear::new(&p / "kv", w, 2 * w),
            proj: Linear::new(&p / "proj", w, w),
            norm: LayerNorm::with_eps(&p / "norm", w, ln_eps),
            fc1: Linear::new(&mlp / "fc1", w, mlp_width),
            fc2: Linear::new(&mlp / "fc2", mlp_width, w),
            heads,
            act,
        }
    }

    /// `[B, N, W] → [B, W]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let (b, _, w) = x.size3().expect("[B, N, W]");
        // The query does not depend on the image: project the latent once.
        let q = self.q.forward(&self.latent).expand([b, 1, w], false);
        let kv = self.kv.forward(x);
        let parts = kv.chunk(2, -1);
        let heads = attend(
            &q.contiguous(),
            &parts[0],
            &parts[1],
            self.heads,
            Mask::None,
        );
        let x = self.proj.forward(&merge_heads(&heads));
        let hidden = activate(self.fc1.forward(&self.norm.forward(&x)), self.act);
        self.fc2.forward_add(&hidden, &x).select(1, 0)
    }
}

/// timm's `PatchEmbed` (`patch_embed.proj`): a `patch × patch` convolution, stride `patch`,
/// with bias (or without: PE's, before its `norm_pre`), its output flattened to tokens.
#[derive(Debug)]
pub(crate) struct PatchEmbed {
    weight: Tensor,
    bias: Option<Tensor>,
    patch: i64,
}

impl PatchEmbed {
    /// The stem under `trunk` (`trunk.patch_embed.proj`).
    pub(crate) fn new(trunk: &nn::Path, width: i64, patch: i64, bias: bool) -> PatchEmbed {
        let p = trunk / "patch_embed" / "proj";
        PatchEmbed {
            weight: param(&p, "weight", &[width, 3, patch, patch], 0.02),
            bias: bias.then(|| p.var("bias", &[width], nn::Init::Const(0.0))),
            patch,
        }
    }

    /// `[B, 3, R, R] → [B, (R / patch)², W]`.
    pub(crate) fn forward(&self, images: &Tensor) -> Tensor {
        let p = self.patch;
        images
            .conv2d(&self.weight, self.bias.as_ref(), [p, p], [0, 0], [1, 1], 1)
            .flatten(2, 3)
            .transpose(1, 2)
    }
}

/// The shape of a timm ViT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimmVitCfg {
    pub image_resolution: i64,
    pub patch_size: i64,
    pub layers: i64,
    pub embed_dim: i64,
    pub layout: TimmVitLayout,
    pub proj: TimmProj,
}

/// `vit_base_mci_224`'s `ConvStem`: three `ConvNormAct`s, the last without norm and act.
#[derive(Debug)]
struct ConvStem {
    conv0: Tensor,
    bn0: BatchNorm,
    conv1: Tensor,
    bn1: BatchNorm,
    conv2: Tensor,
    conv2_bias: Tensor,
}

impl ConvStem {
    fn new(trunk: &nn::Path, mid: i64, width: i64) -> ConvStem {
        let b = trunk / "patch_embed" / "backbone";
        let conv = |i: i64, c_in: i64, c_out: i64, k: i64| {
            let p = &b / i / "conv";
            param(
                &p,
                "weight",
                &[c_out, c_in, k, k],
                ((c_in * k * k) as f64).powf(-0.5),
            )
        };
        ConvStem {
            conv0: conv(0, 3, mid, 4),
            bn0: BatchNorm::new(&b / 0 / "bn", mid),
            conv1: conv(1, mid, mid, 2),
            bn1: BatchNorm::new(&b / 1 / "bn", mid),
            conv2: conv(2, mid, width, 2),
            conv2_bias: (&b / 2 / "conv").var("bias", &[width], nn::Init::Const(0.0)),
        }
    }

    /// `[B, 3, R, R] → [B, (R / 16)², W]`.
    fn forward(&self, images: &Tensor) -> Tensor {
        let x = images.conv2d(&self.conv0, None::<&Tensor>, [4, 4], [0, 0], [1, 1], 1);
        let x = self.bn0.forward(&x).gelu("none");
        let x = x.conv2d(&self.conv1, None::<&Tensor>, [2, 2], [0, 0], [1, 1], 1);
        let x = self.bn1.forward(&x).gelu("none");
        x.conv2d(
            &self.conv2,
            Some(&self.conv2_bias),
            [2, 2],
            [0, 0],
            [1, 1],
            1,
        )
        .flatten(2, 3)
        .transpose(1, 2)
    }
}

/// The patch embedding of a timm ViT.
#[derive(Debug)]
enum Stem {
    Patch(PatchEmbed),
    Conv(ConvStem),
}

/// What the trunk pools.
#[derive(Debug)]
enum Pool {
    Map(AttentionPoolLatent),
    Token,
}

/// `visual` of a SigLIP or MobileCLIP-ViT model: `visual.trunk.*` and `visual.head.*`.
#[derive(Debug)]
pub(crate) struct TimmVisionTransformer {
    stem: Stem,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    no_embed_class: bool,
    norm_pre: Option<LayerNorm>,
    blocks: Transformer,
    norm: LayerNorm,
    pool: Pool,
    head: TimmHead,
}

impl TimmVisionTransformer {
    pub(crate) fn new(p: nn::Path, cfg: TimmVitCfg, block: BlockCfg) -> TimmVisionTransformer {
        let trunk = &p / "trunk";
        let (w, l) = (block.width, cfg.layout);
        let grid = cfg.image_resolution / cfg.patch_size;
        let stem = match l.stem {
            TimmVitStem::Patch => {
                Stem::Patch(PatchEmbed::new(&trunk, w, cfg.patch_size, !l.pre_norm))
            }
            TimmVitStem::MciConvStem { mid } => Stem::Conv(ConvStem::new(&trunk, mid, w)),
        };
        let positions = grid * grid + i64::from(l.class_token && !l.no_embed_class);
        TimmVisionTransformer {
            stem,
            cls_token: l
                .class_token
                .then(|| param(&trunk, "cls_token", &[1, 1, w], 0.02)),
            pos_embed: param(&trunk, "pos_embed", &[1, positions, w], 0.02),
            no_embed_class: l.no_embed_class,
            norm_pre: l
                .pre_norm
                .then(|| LayerNorm::with_eps(&trunk / "norm_pre", w, block.ln_eps)),
            blocks: Transformer::with_naming(
                trunk.clone(),
                "visual.trunk",
                cfg.layers,
                block,
                Naming::Timm,
            ),
            norm: LayerNorm::with_eps(&trunk / "norm", w, block.ln_eps),
            pool: match l.pool {
                TimmVitPool::Map => Pool::Map(AttentionPoolLatent::new(
                    &trunk / "attn_pool",
                    w,
                    block.heads,
                    block.mlp_width,
                    block.ln_eps,
                    block.act,
                )),
                TimmVitPool::Token => Pool::Token,
            },
            head: TimmHead::new(&p, cfg.proj, w, cfg.embed_dim),
        }
    }
}

impl super::ImageTower for TimmVisionTransformer {
    fn forward(&self, images: &Tensor, probe: &mut Probe, _weights_generation: u64) -> Tensor {
        let x = match &self.stem {
            Stem::Patch(p) => p.forward(images),
            Stem::Conv(c) => c.forward(images),
        };
        // timm's `_pos_embed`: positions added after the class token is prepended, or before
        // (`no_embed_class`).
        let with_cls = |x: Tensor| match &self.cls_token {
            Some(cls) => Tensor::cat(&[cls.expand([x.size()[0], 1, -1], false), x], 1),
            None => x,
        };
        let mut x = if self.no_embed_class {
            with_cls(x + &self.pos_embed)
        } else {
            with_cls(x) + &self.pos_embed
        };
        if let Some(norm_pre) = &self.norm_pre {
            x = norm_pre.forward(&x);
        }
        let x = self
            .norm
            .forward(&self.blocks.forward(&x, Mask::None, probe));
        let pooled = match &self.pool {
            Pool::Map(attn_pool) => attn_pool.forward(&x),
            Pool::Token => x.select(1, 0),
        };
        self.head.forward(&pooled)
    }
}
