//! timm's `VisionTransformer` as SigLIP and SigLIP 2 build it, under open_clip's `visual.trunk`:
//! patch conv with bias (`patch_embed.proj`), a learned `pos_embed` `[1, N, W]` added to the
//! patch tokens (no class token), the blocks (`blocks.N`, timm's names, [`Naming::Timm`]), the
//! final `norm`, then the MAP head `attn_pool` (timm's `AttentionPoolLatent`: one learned
//! `latent` query attends over the tokens through `q` and `kv`, `proj`, then
//! `x + mlp(norm(x))`), then open_clip's [`TimmHead`] (`visual.head`).
//! Reference: timm 1.0 `models/vision_transformer.py` (`VisionTransformer`, `_pos_embed`,
//! `forward_head`), `layers/attention_pool.py` (`AttentionPoolLatent`).

use tch::{nn, Tensor};

use super::config::{Activation, TimmProj};
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

/// The shape of a timm SigLIP ViT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimmVitCfg {
    pub image_resolution: i64,
    pub patch_size: i64,
    pub layers: i64,
    pub embed_dim: i64,
    pub proj: TimmProj,
}

/// `visual` of a SigLIP model: `visual.trunk.*` and `visual.head.*`.
#[derive(Debug)]
pub(crate) struct TimmVisionTransformer {
    patch_embed: PatchEmbed,
    pos_embed: Tensor,
    blocks: Transformer,
    norm: LayerNorm,
    attn_pool: AttentionPoolLatent,
    head: TimmHead,
}

impl TimmVisionTransformer {
    pub(crate) fn new(p: nn::Path, cfg: TimmVitCfg, block: BlockCfg) -> TimmVisionTransformer {
        let trunk = &p / "trunk";
        let w = block.width;
        let grid = cfg.image_resolution / cfg.patch_size;
        TimmVisionTransformer {
            patch_embed: PatchEmbed::new(&trunk, w, cfg.patch_size, true),
            pos_embed: param(&trunk, "pos_embed", &[1, grid * grid, w], 0.02),
            blocks: Transformer::with_naming(
                trunk.clone(),
                "visual.trunk",
                cfg.layers,
                block,
                Naming::Timm,
            ),
            norm: LayerNorm::with_eps(&trunk / "norm", w, block.ln_eps),
            attn_pool: AttentionPoolLatent::new(
                &trunk / "attn_pool",
                w,
                block.heads,
                block.mlp_width,
                block.ln_eps,
                block.act,
            ),
            head: TimmHead::new(&p, cfg.proj, w, cfg.embed_dim),
        }
    }
}

impl super::ImageTower for TimmVisionTransformer {
    fn forward(&self, images: &Tensor, probe: &mut Probe, _weights_generation: u64) -> Tensor {
        let x = self.patch_embed.forward(images) + &self.pos_embed;
        let x = self.blocks.forward(&x, Mask::None, probe);
        let pooled = self.attn_pool.forward(&self.norm.forward(&x));
        self.head.forward(&pooled)
    }
}
