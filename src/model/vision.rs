//! The `VisionTransformer` image tower (`visual.*`) as open_clip builds it: patch conv, class
//! token, positional embedding, `ln_pre` (unless `no_ln_pre`), transformer, pooling of the class
//! token (`tok`) or the mean of the patch tokens (`avg`), `ln_post` before pooling (or after,
//! `final_ln_after_pool`), projection `visual.proj`. With CoCa's `attentional_pool`, an
//! [`AttentionalPooler`] (`visual.attn_pool`) first turns the tokens into learned queries' outputs
//! of the embedding width, then `ln_post` and the pooling apply to those (open_clip's "original
//! OpenCLIP CoCa setup").
//! Reference: open_clip `transformer.py` (`VisionTransformer._pool`, `_global_pool`,
//! `AttentionalPooler`).

use tch::{nn, Tensor};

use super::config::{AttnPoolCfg, VitPool};
use super::kernels;
use super::probe::Probe;
use super::transformer::{
    attend, merge_heads, param, BlockCfg, LayerNorm, Linear, Mask, Transformer,
};

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
    pub attn_pool: Option<AttnPoolCfg>,
}

/// The query, key and value projections of an `nn.MultiheadAttention` whose keys are wider than
/// its queries (`kdim`, `vdim`): three matrices; of one whose widths agree: the fused
/// `in_proj_weight`.
#[derive(Debug)]
enum QkvWeights {
    Separate {
        q_proj_weight: Tensor,
        k_proj_weight: Tensor,
        v_proj_weight: Tensor,
    },
    Fused(Tensor),
}

/// open_clip's `AttentionalPooler`: `attn(ln_q(query), ln_k(x), ln_k(x))`, `batch_first`.
/// `[B, L, context_dim] → [B, Q, d_model]`.
#[derive(Debug)]
pub(crate) struct AttentionalPooler {
    query: Tensor,
    weights: QkvWeights,
    in_proj_bias: Tensor,
    out_proj: Linear,
    ln_q: LayerNorm,
    ln_k: LayerNorm,
    heads: i64,
    d_model: i64,
}

impl AttentionalPooler {
    fn new(p: nn::Path, d_model: i64, context_dim: i64, cfg: AttnPoolCfg, eps: f64) -> Self {
        let a = &p / "attn";
        let std = (d_model as f64).powf(-0.5);
        let weights = if d_model == context_dim {
            QkvWeights::Fused(param(&a, "in_proj_weight", &[3 * d_model, d_model], std))
        } else {
            QkvWeights::Separate {
                q_proj_weight: param(&a, "q_proj_weight", &[d_model, d_model], std),
                k_proj_weight: param(&a, "k_proj_weight", &[d_model, context_dim], std),
                v_proj_weight: param(&a, "v_proj_weight", &[d_model, context_dim], std),
            }
        };
        AttentionalPooler {
            query: param(&p, "query", &[cfg.queries, d_model], 1.0),
            weights,
            in_proj_bias: a.var("in_proj_bias", &[3 * d_model], nn::Init::Const(0.0)),
            out_proj: Linear::new(&a / "out_proj", d_model, d_model),
            ln_q: LayerNorm::with_eps(&p / "ln_q", d_model, eps),
            ln_k: LayerNorm::with_eps(&p / "ln_k", context_dim, eps),
            heads: cfg.heads,
            d_model,
        }
    }

    /// The outputs of the first `queries` queries (each query's output depends on itself and
    /// the tokens only, so fewer queries give the same rows).
    fn forward(&self, x: &Tensor, queries: i64) -> Tensor {
        let d = self.d_model;
        let b = x.size()[0];
        let x = self.ln_k.forward(x);
        let q = self.ln_q.forward(&self.query.narrow(0, 0, queries));
        let (wq, wk, wv) = match &self.weights {
            QkvWeights::Separate {
                q_proj_weight,
                k_proj_weight,
                v_proj_weight,
            } => (
                q_proj_weight.shallow_clone(),
                k_proj_weight.shallow_clone(),
                v_proj_weight.shallow_clone(),
            ),
            QkvWeights::Fused(w) => (w.narrow(0, 0, d), w.narrow(0, d, d), w.narrow(0, 2 * d, d)),
        };
        let bias = |i: i64| self.in_proj_bias.narrow(0, i * d, d);
        let q = kernels::linear(&q, &wq, Some(&bias(0)))
            .unsqueeze(0)
            .expand([b, queries, d], false)
            .contiguous();
        let k = kernels::linear(&x, &wk, Some(&bias(1)));
        let v = kernels::linear(&x, &wv, Some(&bias(2)));
        let heads = attend(&q, &k, &v, self.heads, Mask::None);
        self.out_proj.forward(&merge_heads(&heads))
    }
}

/// `visual` of a ViT CLIP. `[B, 3, R, R] f32 → [B, embed_dim]`.
#[derive(Debug)]
pub(crate) struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: Option<LayerNorm>,
    transformer: Transformer,
    attn_pool: Option<AttentionalPooler>,
    ln_post: LayerNorm,
    proj: Tensor,
    cfg: VitCfg,
}

impl VisionTransformer {
    pub(crate) fn new(p: nn::Path, cfg: VitCfg, block: BlockCfg) -> VisionTransformer {
        let width = block.width;
        let scale = (width as f64).powf(-0.5);
        let grid = cfg.image_resolution / cfg.patch_size;
        let pool_dim = if cfg.attn_pool.is_some() {
            cfg.embed_dim
        } else {
            width
        };
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
            attn_pool: cfg.attn_pool.map(|a| {
                AttentionalPooler::new(&p / "attn_pool", cfg.embed_dim, width, a, block.ln_eps)
            }),
            ln_post: LayerNorm::with_eps(&p / "ln_post", pool_dim, block.ln_eps),
            proj: param(&p, "proj", &[pool_dim, cfg.embed_dim], scale),
            cfg,
        }
    }

    fn forward_vit(&self, images: &Tensor, probe: &mut Probe) -> Tensor {
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
        if let Some(pooler) = &self.attn_pool {
            let x = self.transformer.forward(&x, Mask::None, probe);
            let pooled = match self.cfg.pool {
                // `tok` keeps the first query's output: only that query is computed.
                VitPool::Tok => self.ln_post.forward(&pooler.forward(&x, 1)).select(1, 0),
                VitPool::Avg => {
                    let q = pooler.query.size()[0];
                    let y = self.ln_post.forward(&pooler.forward(&x, q));
                    y.narrow(1, 1, q - 1).mean_dim(1, false, None)
                }
            };
            return pooled.matmul(&self.proj);
        }
        let pooled = match self.cfg.pool {
            // Only the class token reaches the output: the last block runs for it alone.
            VitPool::Tok => {
                let class_token = self.transformer.forward_first_token(&x, probe);
                self.ln_post.forward(&class_token)
            }
            VitPool::Avg => {
                let x = self.transformer.forward(&x, Mask::None, probe);
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

impl super::ImageTower for VisionTransformer {
    fn forward(&self, images: &Tensor, probe: &mut Probe, _weights_generation: u64) -> Tensor {
        self.forward_vit(images, probe)
    }
}
