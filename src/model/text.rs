//! The text tower (top-level keys `token_embedding`, `positional_embedding`, `transformer`,
//! `ln_final`, `text_projection`) as open_clip's `TextTransformer` builds it: a causal (or, with
//! `no_causal_mask`, bidirectional) transformer over token ids, `ln_final`, features pooled at the
//! end-of-text token (`argmax`: the highest id, as OpenAI), the first `eos_id`, the last or the
//! first position, then the projection (a matrix, an `nn.Linear` with bias, or none).
//! Reference: open_clip `transformer.py` (`TextTransformer`, `text_global_pool`).

use tch::{nn, Kind, Tensor};

use super::config::{TextConfig, TextPool, TextProjection};
use super::probe::Probe;
use super::transformer::{param, BlockCfg, LayerNorm, Linear, Transformer};

#[derive(Debug)]
enum Projection {
    Matrix(Tensor),
    Linear(Linear),
    None,
}

/// The text encoder of CLIP. `[B, L] i64 tokens → [B, embed_dim]`.
#[derive(Debug)]
pub(crate) struct TextTransformer {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Projection,
    causal: bool,
    pool: TextPool,
}

impl TextTransformer {
    pub(crate) fn new(root: &nn::Path, c: &TextConfig, embed_dim: i64) -> TextTransformer {
        let width = c.width;
        TextTransformer {
            token_embedding: param(
                &(root / "token_embedding"),
                "weight",
                &[c.vocab_size, width],
                0.02,
            ),
            positional_embedding: param(
                root,
                "positional_embedding",
                &[c.context_length, width],
                0.01,
            ),
            transformer: Transformer::new(
                root / "transformer",
                "transformer",
                c.layers,
                BlockCfg {
                    width,
                    heads: c.heads,
                    mlp_width: c.mlp_width,
                    act: c.act,
                    layer_scale: c.layer_scale,
                    ln_eps: c.ln_eps,
                },
            ),
            ln_final: LayerNorm::with_eps(root / "ln_final", width, c.ln_eps),
            text_projection: match c.projection {
                TextProjection::Matrix => Projection::Matrix(param(
                    root,
                    "text_projection",
                    &[width, embed_dim],
                    (width as f64).powf(-0.5),
                )),
                TextProjection::Linear => {
                    Projection::Linear(Linear::new(root / "text_projection", width, embed_dim))
                }
                TextProjection::None => Projection::None,
            },
            causal: c.causal,
            pool: c.pool,
        }
    }

    /// Token embeddings `[B, L, W]` for token ids `[B, L]`.
    pub(crate) fn embed_tokens(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(&self.token_embedding, tokens, -1, false, false)
    }

    /// The position each row's features are taken at, from its token ids.
    pub(crate) fn pool_positions(&self, tokens: &Tensor) -> Tensor {
        let (b, l) = tokens.size2().expect("[B, L]");
        match self.pool {
            TextPool::Argmax => tokens.argmax(-1, false),
            TextPool::Eos(id) => tokens.eq(id).to_kind(Kind::Int).argmax(-1, false),
            TextPool::Last => Tensor::full([b], l - 1, (Kind::Int64, tokens.device())),
            TextPool::First => Tensor::zeros([b], (Kind::Int64, tokens.device())),
        }
    }

    /// Whether rows may be shorter than the context length: a causal tower pooled at a token
    /// inside the row ignores what follows it; a bidirectional one, or one pooled at the last
    /// position, sees the padding, so its rows must be padded to the context length.
    pub(crate) fn accepts_unpadded(&self) -> bool {
        self.causal
            && matches!(
                self.pool,
                TextPool::Argmax | TextPool::Eos(_) | TextPool::First
            )
    }

    /// Encodes token ids; `L` may be shorter than the context length where
    /// [`Self::accepts_unpadded`] (the causal mask makes the end-of-text features independent of
    /// what follows it).
    pub(crate) fn forward(&self, tokens: &Tensor, probe: &mut Probe) -> Tensor {
        let embedded = self.embed_tokens(tokens);
        let eot = self.pool_positions(tokens);
        self.forward_embedded(&embedded, &eot, probe)
    }

    /// Encodes already-embedded tokens `[B, L, W]`, pooling at positions `eot` `[B]`. Lets
    /// learned token embeddings (prompt prefixes) enter the text tower.
    pub(crate) fn forward_embedded(
        &self,
        embedded: &Tensor,
        eot: &Tensor,
        probe: &mut Probe,
    ) -> Tensor {
        let l = embedded.size()[1];
        let x = embedded + self.positional_embedding.narrow(0, 0, l);
        let x = self.transformer.forward(&x, self.causal, probe);
        let x = self.ln_final.forward(&x);
        let b = x.size()[0];
        let rows = Tensor::arange(b, (Kind::Int64, x.device()));
        let pooled = x.index(&[Some(rows), Some(eot.to_kind(Kind::Int64))]);
        match &self.text_projection {
            Projection::Matrix(p) => pooled.matmul(p),
            Projection::Linear(lin) => lin.forward(&pooled),
            Projection::None => pooled,
        }
    }
}
