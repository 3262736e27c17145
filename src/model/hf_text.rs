//! Hugging Face text towers as open_clip's `HFTextEncoder` wraps them (`text.transformer.*`,
//! transformers' own names, and `text.proj.*`): today the RoBERTa family (`roberta-base`,
//! `xlm-roberta-base`, `xlm-roberta-large`) — token, position (offset past the padding id, as
//! transformers' `create_position_ids_from_input_ids`) and token-type embeddings with a
//! LayerNorm, post-LN encoder layers (`attention.self.{query,key,value}`,
//! `attention.output.{dense,LayerNorm}`, `intermediate.dense` → GELU, `output.{dense,LayerNorm}`)
//! attending only to non-padding tokens — then open_clip's pooler over the non-padding tokens
//! (`mean_pooler`, `cls_last_hidden_state_pooler`) and projection (`hf_proj_type`: `mlp` —
//! Linear without bias to `(width + embed_dim) / 2`, GELU, Linear without bias — or `linear`).
//!
//! open_clip builds the encoder from `AutoConfig.from_pretrained(hf_model_name)`, which needs
//! the hub; typoclip knows the configs of the names open_clip's pretrained models use
//! ([`hf_text_arch`], the values of their `config.json`) and refuses any other name.
//! Reference: transformers 4.57 `models/roberta/modeling_roberta.py`, open_clip `hf_model.py`.

use serde::Serialize;
use tch::{nn, Kind, Tensor};

use super::probe::Probe;
use super::transformer::{param, LayerNorm, Linear};

/// open_clip's pooler of the encoder's last hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HfPooler {
    /// `mean_pooler`: the mean over non-padding tokens.
    Mean,
    /// `cls_last_hidden_state_pooler`: the first token's last hidden state.
    ClsLastHiddenState,
}

/// open_clip's `hf_proj_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HfProj {
    /// `linear`: `Linear(width, embed_dim, bias=False)`.
    Linear,
    /// `mlp`: `Linear(width, (width + embed_dim) // 2, bias=False)`, GELU, `Linear(…, embed_dim,
    /// bias=False)`.
    Mlp,
    /// No projection (`hf_proj_type: null` with `width == embed_dim`).
    None,
}

/// A RoBERTa-family encoder and open_clip's head on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HfTextConfig {
    /// `hf_model_name` (`xlm-roberta-base`).
    pub hf_model_name: String,
    /// `vocab_size`.
    pub vocab_size: i64,
    /// `hidden_size`.
    pub width: i64,
    /// `num_hidden_layers`.
    pub layers: i64,
    /// `num_attention_heads`.
    pub heads: i64,
    /// `intermediate_size`.
    pub intermediate: i64,
    /// `max_position_embeddings`.
    pub max_positions: i64,
    /// `type_vocab_size`.
    pub type_vocab: i64,
    /// `pad_token_id` (also the position ids' offset).
    pub pad_token_id: i64,
    /// `layer_norm_eps`.
    pub ln_eps: f64,
    pub pooler: HfPooler,
    pub proj: HfProj,
}

/// The `config.json` values of the Hugging Face encoders open_clip's pretrained models name:
/// (vocab, hidden, layers, heads, intermediate) — every one RoBERTa-style with 514 positions,
/// one token type, padding id 1, LayerNorm eps 1e-5, GELU.
pub(crate) fn hf_text_arch(name: &str) -> Option<(i64, i64, i64, i64, i64)> {
    match name {
        "roberta-base" => Some((50265, 768, 12, 12, 3072)),
        "xlm-roberta-base" => Some((250002, 768, 12, 12, 3072)),
        "xlm-roberta-large" => Some((250002, 1024, 24, 16, 4096)),
        _ => None,
    }
}

#[derive(Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    intermediate: Linear,
    out: Linear,
    out_ln: LayerNorm,
    /// Site names: (layer, heads, intermediate).
    sites: [String; 3],
}

#[derive(Debug)]
enum Proj {
    Linear(Linear),
    Mlp(Linear, Linear),
    None,
}

/// `text` of a model with a Hugging Face text tower.
#[derive(Debug)]
pub(crate) struct HfTextEncoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_ln: LayerNorm,
    layers: Vec<Layer>,
    proj: Proj,
    heads: i64,
    pad: i64,
    pooler: HfPooler,
}

impl HfTextEncoder {
    /// The tower under `p` (`text`).
    pub(crate) fn new(p: &nn::Path, c: &HfTextConfig, embed_dim: i64) -> HfTextEncoder {
        let t = p / "transformer";
        let e = &t / "embeddings";
        let w = c.width;
        let table = |name: &str, rows: i64| param(&(&e / name), "weight", &[rows, w], 0.02);
        let lp = &t / "encoder" / "layer";
        let layers = (0..c.layers)
            .map(|i| {
                let l = &lp / i;
                let a = &l / "attention";
                let name = format!("text.transformer.encoder.layer.{i}");
                Layer {
                    query: Linear::new(&a / "self" / "query", w, w),
                    key: Linear::new(&a / "self" / "key", w, w),
                    value: Linear::new(&a / "self" / "value", w, w),
                    attn_out: Linear::new(&a / "output" / "dense", w, w),
                    attn_ln: LayerNorm::with_eps(&a / "output" / "LayerNorm", w, c.ln_eps),
                    intermediate: Linear::new(&l / "intermediate" / "dense", w, c.intermediate),
                    out: Linear::new(&l / "output" / "dense", c.intermediate, w),
                    out_ln: LayerNorm::with_eps(&l / "output" / "LayerNorm", w, c.ln_eps),
                    sites: [
                        name.clone(),
                        format!("{name}.attention.heads"),
                        format!("{name}.intermediate"),
                    ],
                }
            })
            .collect();
        let pp = p / "proj";
        let proj = match c.proj {
            HfProj::Linear => Proj::Linear(Linear::with_bias(pp, w, embed_dim, false)),
            HfProj::Mlp => {
                let hidden = (w + embed_dim) / 2;
                Proj::Mlp(
                    Linear::with_bias(&pp / 0, w, hidden, false),
                    Linear::with_bias(&pp / 2, hidden, embed_dim, false),
                )
            }
            HfProj::None => Proj::None,
        };
        HfTextEncoder {
            word_embeddings: table("word_embeddings", c.vocab_size),
            position_embeddings: table("position_embeddings", c.max_positions),
            token_type_embeddings: table("token_type_embeddings", c.type_vocab),
            embeddings_ln: LayerNorm::with_eps(&e / "LayerNorm", w, c.ln_eps),
            layers,
            proj,
            heads: c.heads,
            pad: c.pad_token_id,
            pooler: c.pooler,
        }
    }

    /// The encoder over embeddings `x` `[B, L, W]` of tokens whose non-padding positions are
    /// `valid` `[B, L]`; pooled and projected.
    fn encode(&self, x: &Tensor, valid: &Tensor, probe: &mut Probe) -> Tensor {
        let (b, l, w) = x.size3().expect("[B, L, W]");
        let dh = w / self.heads;
        // transformers' extended mask: padding keys get the dtype's lowest value.
        let mask = Tensor::zeros([b, 1, 1, l], (x.kind(), x.device()))
            .masked_fill(&valid.logical_not().view([b, 1, 1, l]), f64::from(f32::MIN));
        let split = |t: Tensor| t.view([b, l, self.heads, dh]).transpose(1, 2);
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            let [name, heads, inter] = &layer.sites;
            let heads_out = Tensor::scaled_dot_product_attention(
                &split(layer.query.forward(&x)),
                &split(layer.key.forward(&x)),
                &split(layer.value.forward(&x)),
                Some(&mask),
                0.0,
                false,
                None,
                false,
            );
            let heads_out = probe.site(heads, heads_out, 1);
            let merged = heads_out.transpose(1, 2).reshape([b, l, w]);
            let a = layer
                .attn_ln
                .forward(&layer.attn_out.forward_add(&merged, &x));
            let hidden = probe.site(inter, layer.intermediate.forward(&a).gelu("none"), -1);
            x = layer.out_ln.forward(&layer.out.forward_add(&hidden, &a));
            x = probe.site(name, x, -1);
        }
        let pooled = match self.pooler {
            HfPooler::Mean => {
                let m = valid.to_kind(x.kind()).unsqueeze(-1);
                (&x * &m).sum_dim_intlist(1, false, None) / m.sum_dim_intlist(1, false, None)
            }
            HfPooler::ClsLastHiddenState => x.select(1, 0),
        };
        match &self.proj {
            Proj::Linear(l) => l.forward(&pooled),
            Proj::Mlp(a, b) => b.forward(&a.forward(&pooled).gelu("none")),
            Proj::None => pooled,
        }
    }

    /// transformers' `create_position_ids_from_input_ids`: non-padding tokens count up from
    /// `pad + 1`, padding stays at `pad`.
    fn position_ids(&self, tokens: &Tensor) -> Tensor {
        let valid = tokens.ne(self.pad).to_kind(Kind::Int64);
        valid.cumsum(1, Kind::Int64) * &valid + self.pad
    }
}

impl super::TextTower for HfTextEncoder {
    fn forward(&self, tokens: &Tensor, probe: &mut Probe) -> Tensor {
        let x = self.embed_tokens(tokens);
        self.encode(&x, &tokens.ne(self.pad), probe)
    }

    /// Word + position + token-type embeddings, then the embeddings' LayerNorm.
    fn embed_tokens(&self, tokens: &Tensor) -> Tensor {
        let words = Tensor::embedding(&self.word_embeddings, tokens, -1, false, false);
        let positions = Tensor::embedding(
            &self.position_embeddings,
            &self.position_ids(tokens),
            -1,
            false,
            false,
        );
        self.embeddings_ln
            .forward(&(words + positions + self.token_type_embeddings.get(0)))
    }

    /// Entered with embeddings, every position up to and including `eot` counts as a token.
    fn forward_embedded(&self, embedded: &Tensor, eot: &Tensor, probe: &mut Probe) -> Tensor {
        let l = embedded.size()[1];
        let pos = Tensor::arange(l, (Kind::Int64, embedded.device())).unsqueeze(0);
        let valid = pos.le_tensor(&eot.unsqueeze(1));
        self.encode(embedded, &valid, probe)
    }

    fn accepts_unpadded(&self) -> bool {
        // Non-padding tokens are attended to and pooled alone: padding changes nothing.
        true
    }
}
