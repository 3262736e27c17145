//! The text tower (top-level keys `token_embedding`, `positional_embedding`, `transformer`,
//! `ln_final`, `text_projection`) as open_clip's `TextTransformer` builds it: a causal (or, with
//! `no_causal_mask`, bidirectional) transformer over token ids, `ln_final`, features pooled at the
//! end-of-text token (`argmax`: the highest id, as OpenAI), the first `eos_id`, the last or the
//! first position, then the projection (a matrix, an `nn.Linear` with bias, or none). Under
//! `CustomTextCLIP` / CoCa the same keys sit under `text.`. CoCa's `embed_cls` appends a learned
//! class token (`cls_emb`) after the tokens, masks padding keys, pools the class token and
//! applies `ln_final` to it alone.
//! Reference: open_clip `transformer.py` (`TextTransformer`, `_build_additive_mask`,
//! `text_global_pool`).

use tch::{nn, Kind, Tensor};

use super::config::{EmbedCls, TextConfig, TextPool, TextProjection};
use super::probe::Probe;
use super::transformer::{param, BlockCfg, LayerNorm, Linear, Mask, Transformer};

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
    /// CoCa's class token and its padding id.
    cls: Option<(Tensor, EmbedCls)>,
}

impl TextTransformer {
    /// Builds the tower under `root` (the model root, or its `text` path for custom-text models).
    pub(crate) fn new(root: &nn::Path, c: &TextConfig, embed_dim: i64) -> TextTransformer {
        let width = c.width;
        let positions = c.context_length + c.embed_cls.is_some() as i64;
        TextTransformer {
            token_embedding: param(
                &(root / "token_embedding"),
                "weight",
                &[c.vocab_size, width],
                0.02,
            ),
            positional_embedding: param(root, "positional_embedding", &[positions, width], 0.01),
            transformer: Transformer::new(
                root / "transformer",
                &format!("{}transformer", site_prefix(root)),
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
            cls: c
                .embed_cls
                .map(|e| (param(root, "cls_emb", &[width], 0.01), e)),
        }
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

    /// CoCa's text forward: the class token appended after the `L` tokens, the causal mask (if
    /// any) plus open_clip's legacy padding mask — key 0 and keys `j ≥ 1` where token `j − 1` is
    /// not padding (`valid` `[B, L]`), as the released CoCa weights were trained with — then
    /// `ln_final` on the class token's output.
    fn forward_cls(&self, embedded: &Tensor, valid: &Tensor, probe: &mut Probe) -> Tensor {
        let (cls, _) = self.cls.as_ref().expect("a CoCa text tower");
        let (b, l, w) = embedded.size3().expect("[B, L, W]");
        let n = l + 1;
        let x = Tensor::cat(
            &[
                embedded.shallow_clone(),
                cls.view([1, 1, w]).expand([b, 1, w], false),
            ],
            1,
        ) + self.positional_embedding.narrow(0, 0, n);
        let dev = x.device();
        let keys = Tensor::cat(
            &[
                Tensor::ones([b, 1], (Kind::Bool, dev)),
                valid.to_kind(Kind::Bool),
            ],
            1,
        );
        // allowed[b, q, k]: key k is valid and, in a causal tower, not after q.
        let mut allowed = keys.unsqueeze(1).expand([b, n, n], false);
        if self.causal {
            let causal = Tensor::ones([n, n], (Kind::Bool, dev)).tril(0);
            allowed = allowed.logical_and(&causal.unsqueeze(0));
        }
        let mask = Tensor::zeros([b, 1, n, n], (x.kind(), dev))
            .masked_fill(&allowed.unsqueeze(1).logical_not(), f64::NEG_INFINITY);
        let x = self.transformer.forward(&x, Mask::Additive(&mask), probe);
        let pooled = self.ln_final.forward(&x.select(1, n - 1));
        self.project(&pooled)
    }

    fn project(&self, pooled: &Tensor) -> Tensor {
        match &self.text_projection {
            Projection::Matrix(p) => pooled.matmul(p),
            Projection::Linear(lin) => lin.forward(pooled),
            Projection::None => pooled.shallow_clone(),
        }
    }
}

impl super::TextTower for TextTransformer {
    /// Encodes token ids; `L` may be shorter than the context length where
    /// [`Self::accepts_unpadded`] (the causal mask makes the end-of-text features independent of
    /// what follows it).
    fn forward(&self, tokens: &Tensor, probe: &mut Probe) -> Tensor {
        let embedded = self.embed_tokens(tokens);
        if let Some((_, e)) = &self.cls {
            return self.forward_cls(&embedded, &tokens.ne(e.pad_id), probe);
        }
        let eot = self.pool_positions(tokens);
        self.forward_embedded(&embedded, &eot, probe)
    }

    fn embed_tokens(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(&self.token_embedding, tokens, -1, false, false)
    }

    /// Lets learned token embeddings (prompt prefixes) enter the text tower. For a CoCa tower,
    /// the positions after `eot` are taken as the padding.
    fn forward_embedded(&self, embedded: &Tensor, eot: &Tensor, probe: &mut Probe) -> Tensor {
        let l = embedded.size()[1];
        if self.cls.is_some() {
            let pos = Tensor::arange(l, (Kind::Int64, embedded.device())).unsqueeze(0);
            let valid = pos.le_tensor(&eot.to_kind(Kind::Int64).unsqueeze(1));
            return self.forward_cls(embedded, &valid, probe);
        }
        let x = embedded + self.positional_embedding.narrow(0, 0, l);
        let mask = if self.causal {
            Mask::Causal
        } else {
            Mask::None
        };
        let x = self.transformer.forward(&x, mask, probe);
        let x = self.ln_final.forward(&x);
        let b = x.size()[0];
        let rows = Tensor::arange(b, (Kind::Int64, x.device()));
        let pooled = x.index(&[Some(rows), Some(eot.to_kind(Kind::Int64))]);
        self.project(&pooled)
    }

    /// A causal tower pooled at a token inside the row ignores what follows it; a
    /// bidirectional one, one pooled at the last position, or CoCa's (its class token sits after
    /// the padding) sees the padding, so its rows must be padded to the context length.
    fn accepts_unpadded(&self) -> bool {
        self.cls.is_none()
            && self.causal
            && matches!(
                self.pool,
                TextPool::Argmax | TextPool::Eos(_) | TextPool::First
            )
    }
}

/// The probe-site prefix of a tower built under `p`: `""` at the model root, `"text."` under
/// `text`.
fn site_prefix(p: &nn::Path) -> String {
    let path = p.components().collect::<Vec<_>>().join(".");
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    }
}
