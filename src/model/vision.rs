//! The `VisionTransformer` image tower (`visual.*`) as open_clip builds it: patch conv, class
//! token, positional embedding, `ln_pre` (unless `no_ln_pre`), transformer, pooling of the class
//! token (`tok`) or the mean of the patch tokens (`avg`), `ln_post` before pooling (or after,
//! `final_ln_after_pool`), projection `visual.proj`.
//! Reference: open_clip `transformer.py` (`VisionTransformer._pool`, `_global_pool`).

use tch::{nn, Tensor};

use super::config::VitPool;
use super::probe::Probe;
use super::transformer::{param, BlockCfg, LayerNorm, Transformer};

/// The options of a ViT tower beyond its block shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VitCfg {
    pub image_resolution: i64,
    pub patch_size: i64,
    pub layers: i64,
    pub ln_pre: bool,
    pub pool: VitPool,
    pub final_ln_after_pool: bool,
    pub embed_dim: i64,
}

/// `visual` of a ViT CLIP. `[B, 3, R, R] f32 → [B, embed_dim]`.
#[derive(Debug)]
pub(crate) struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: Option<LayerNorm>,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor,
    cfg: VitCfg,
}

impl VisionTransformer {
    pub(crate) fn new(p: nn::Path, cfg: VitCfg, block: BlockCfg) -> VisionTransformer {
        let width = block.width;
        let scale = (width as f64).powf(-0.5);
        let grid = cfg.image_resolution / cfg.patch_size;
        VisionTransformer {
            conv1: param(
                &(&p / "conv1"),
                "weight",
                &[width, 3, cfg.patch_size, cfg.patch_size],
                0.02,
            ),
            class_embedding: param(&p, "class_embedding", &[width], scale),
            positional_embedding: param(
                &p,
                "positional_embedding",
                &[grid * grid + 1, width],
                scale,
            ),
            ln_pre: cfg
                .ln_pre
                .then(|| LayerNorm::with_eps(&p / "ln_pre", width, block.ln_eps)),
            transformer: Transformer::new(
                &p / "transformer",
                "visual.transformer",
                cfg.layers,
                block,
            ),
            ln_post: LayerNorm::with_eps(&p / "ln_post", width, block.ln_eps),
            proj: param(&p, "proj", &[width, cfg.embed_dim], scale),
            cfg,
        }
    }

    pub(crate) fn forward(&self, images: &Tensor, probe: &mut Probe) -> Tensor {
        let patch = self.cfg.patch_size;
        let x = images.conv2d(
            &self.conv1,
            None::<Tensor>,
            [patch, patch],
            [0, 0],
            [1, 1],
            1,
        );
        let (b, w, _, _) = x.size4().expect("[B, W, g, g]");
        let x = x.reshape([b, w, -1]).permute([0, 2, 1]);
        let cls = self
            .class_embedding
            .view([1, 1, w])
            .expand([b, 1, w], false);
        let x = Tensor::cat(&[cls, x], 1) + &self.positional_embedding;
        let x = match &self.ln_pre {
            Some(ln) => ln.forward(&x),
            None => x,
        };
        let pooled = match self.cfg.pool {
            // Only the class token reaches the output: the last block runs for it alone.
            VitPool::Tok => {
                let class_token = self.transformer.forward_first_token(&x, probe);
                self.ln_post.forward(&class_token)
            }
            VitPool::Avg => {
                let x = self.transformer.forward(&x, false, probe);
                let l = x.size()[1];
                if self.cfg.final_ln_after_pool {
                    self.ln_post
                        .forward(&x.narrow(1, 1, l - 1).mean_dim(1, false, None))
                } else {
                    self.ln_post
                        .forward(&x)
                        .narrow(1, 1, l - 1)
                        .mean_dim(1, false, None)
                }
            }
        };
        pooled.matmul(&self.proj)
    }
}
