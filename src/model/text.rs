//! The text tower (top-level keys `token_embedding`, `positional_embedding`, `transformer`,
//! `ln_final`, `text_projection`): causal transformer over BPE tokens, features taken at the
//! end-of-text token (the highest token id, as OpenAI's `text.argmax(-1)`).

use tch::{nn, Kind, Tensor};

use super::probe::Probe;
use super::transformer::{param, LayerNorm, Transformer};

/// The text encoder of CLIP. `[B, L] i64 tokens → [B, embed_dim]`.
#[derive(Debug)]
pub(crate) struct TextTransformer {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
}

impl TextTransformer {
    pub(crate) fn new(
        root: &nn::Path,
        context_length: i64,
        vocab_size: i64,
        width: i64,
        layers: i64,
        heads: i64,
        embed_dim: i64,
    ) -> TextTransformer {
        TextTransformer {
            token_embedding: param(
                &(root / "token_embedding"),
                "weight",
                &[vocab_size, width],
                0.02,
            ),
            positional_embedding: param(
                root,
                "positional_embedding",
                &[context_length, width],
                0.01,
            ),
            transformer: Transformer::new(
                root / "transformer",
                "transformer",
                width,
                layers,
                heads,
            ),
            ln_final: LayerNorm::new(root / "ln_final", width),
            text_projection: param(
                root,
                "text_projection",
                &[width, embed_dim],
                (width as f64).powf(-0.5),
            ),
        }
    }

    /// Token embeddings `[B, L, W]` for token ids `[B, L]`.
    pub(crate) fn embed_tokens(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(&self.token_embedding, tokens, -1, false, false)
    }

    /// Encodes token ids; `L` may be shorter than the context length (the causal mask makes the
    /// end-of-text features independent of what follows it).
    pub(crate) fn forward(&self, tokens: &Tensor, probe: &mut Probe) -> Tensor {
        let embedded = self.embed_tokens(tokens);
        let eot = tokens.argmax(-1, false);
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
        let x = self.transformer.forward(&x, true, probe);
        let x = self.ln_final.forward(&x);
        let b = x.size()[0];
        let rows = Tensor::arange(b, (Kind::Int64, x.device()));
        let pooled = x.index(&[Some(rows), Some(eot.to_kind(Kind::Int64))]);
        pooled.matmul(&self.text_projection)
    }
}
