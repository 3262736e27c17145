//! Hugging Face text towers as open_clip's `HFTextEncoder` wraps them (`text.transformer.*`,
//! transformers' own names, and `text.proj.*`): the configs typoclip knows ([`hf_text_arch`]),
//! open_clip's poolers and projection ([`HfHead`]), and the RoBERTa family's encoder
//! (`roberta-base`, `xlm-roberta-base`, `xlm-roberta-large`) — token, position (offset past the
//! padding id, as transformers' `create_position_ids_from_input_ids`) and token-type embeddings
//! with a LayerNorm, post-LN encoder layers (`attention.self.{query,key,value}`,
//! `attention.output.{dense,LayerNorm}`, `intermediate.dense` → GELU, `output.{dense,LayerNorm}`)
//! attending only to non-padding tokens. NLLB-200's M2M100 encoder is `m2m100.rs`.
//!
//! open_clip pools the encoder's last hidden state over the non-padding tokens (`mean_pooler`,
//! `cls_last_hidden_state_pooler`, or `cls_pooler`, the first token where the encoder has no
//! pooler output) and projects it (`hf_proj_type`: `mlp` — Linear without bias to
//! `(width + embed_dim) / 2`, GELU, Linear without bias — or `linear`).
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
    /// `cls_pooler` on an encoder without a pooler output (M2M100): the first token's last
    /// hidden state.
    Cls,
}

/// The encoder architecture behind a Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HfFamily {
    /// transformers' `RobertaModel` / `XLMRobertaModel` (this file).
    Roberta,
    /// The encoder of transformers' `M2M100Model` (NLLB-200; `m2m100.rs`).
    M2M100,
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

/// A Hugging Face encoder and open_clip's head on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HfTextConfig {
    /// `hf_model_name` (`xlm-roberta-base`).
    pub hf_model_name: String,
    /// The encoder's architecture.
    pub family: HfFamily,
    /// `vocab_size`.
    pub vocab_size: i64,
    /// `hidden_size` (M2M100: `d_model`).
    pub width: i64,
    /// `num_hidden_layers` (`encoder_layers`).
    pub layers: i64,
    /// `num_attention_heads` (`encoder_attention_heads`).
    pub heads: i64,
    /// `intermediate_size` (`encoder_ffn_dim`).
    pub intermediate: i64,
    /// `max_position_embeddings`.
    pub max_positions: i64,
    /// `type_vocab_size` (RoBERTa; 0 for M2M100, which has none).
    pub type_vocab: i64,
    /// `pad_token_id` (also the position ids' offset).
    pub pad_token_id: i64,
    /// `layer_norm_eps`.
    pub ln_eps: f64,
    pub pooler: HfPooler,
    pub proj: HfProj,
}

/// The encoders open_clip's pretrained models name, with their `config.json` values and
/// open_clip's `CLIPTextCfg` defaults for the head (`mean_pooler`, `mlp`), which the model's
/// `text_cfg` sets. RoBERTa-style ones have 514 positions, one token type, padding id 1,
/// LayerNorm eps 1e-5, GELU. NLLB-200's distilled models (`M2M100Config`: ReLU,
/// `scale_embedding`, 1024 sinusoidal positions, padding id 1, 16 heads, width 1024, 256 206
/// tokens, no token types, eps 1e-5) have 12 encoder layers with FFN 4096 (600M) or 24 with FFN
/// 8192 (1.3B), as their hub `config.json` and fairseq's `dense_600m` / `dense_distill_1b` give
/// them.
pub(crate) fn hf_text_arch(name: &str) -> Option<HfTextConfig> {
    let base =
        |family, vocab_size, width, layers, heads, intermediate, max_positions, type_vocab| {
            HfTextConfig {
                hf_model_name: name.to_string(),
                family,
                vocab_size,
                width,
                layers,
                heads,
                intermediate,
                max_positions,
                type_vocab,
                pad_token_id: 1,
                ln_eps: 1e-5,
                pooler: HfPooler::Mean,
                proj: HfProj::Mlp,
            }
        };
    let roberta = |vocab_size, width, layers, heads, intermediate| {
        base(
            HfFamily::Roberta,
            vocab_size,
            width,
            layers,
            heads,
            intermediate,
            514,
            1,
        )
    };
    let nllb = |layers, intermediate| {
        base(
            HfFamily::M2M100,
            256206,
            1024,
            layers,
            16,
            intermediate,
            1024,
            0,
        )
    };
    match name {
        "roberta-base" => Some(roberta(50265, 768, 12, 12, 3072)),
        "xlm-roberta-base" => Some(roberta(250002, 768, 12, 12, 3072)),
        "xlm-roberta-large" => Some(roberta(250002, 1024, 24, 16, 4096)),
        "facebook/nllb-200-distilled-600M" => Some(nllb(12, 4096)),
        "facebook/nllb-200-distilled-1.3B" => Some(nllb(24, 8192)),
        _ => None,
    }
}

/// open_clip's projection after the pooler.
#[derive(Debug)]
enum Proj {
    Linear(Linear),
    Mlp(Linear, Linear),
    None,
}

/// open_clip's pooler and projection (`text.proj.*`) after a Hugging Face encoder.
#[derive(Debug)]
pub(crate) struct HfHead {
    pooler: HfPooler,
    proj: Proj,
}

impl HfHead {
    /// The head under `p` (`text`) from encoder states of `c.width` to `embed_dim`.
    pub(crate) fn new(p: &nn::Path, c: &HfTextConfig, embed_dim: i64) -> HfHead {
        let (w, pp) = (c.width, p / "proj");
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
        HfHead {
            pooler: c.pooler,
            proj,
        }
    }

    /// Last hidden states `x` `[B, L, W]` of tokens whose non-padding positions are `valid`
    /// `[B, L]` → `[B, embed_dim]`.
    pub(crate) fn forward(&self, x: &Tensor, valid: &Tensor) -> Tensor {
        let pooled = match self.pooler {
            HfPooler::Mean => {
                let m = valid.to_kind(x.kind()).unsqueeze(-1);
                (x * &m).sum_dim_intlist(1, false, None) / m.sum_dim_intlist(1, false, None)
            }
            HfPooler::ClsLastHiddenState | HfPooler::Cls => x.select(1, 0),
        };
        match &self.proj {
            Proj::Linear(l) => l.forward(&pooled),
            Proj::Mlp(a, b) => b.forward(&a.forward(&pooled).gelu("none")),
            Proj::None => pooled,
        }
    }
}

/// transformers' extended attention mask `[B, 1, 1, L]` of kind `kind`: padding keys get the
/// lowest float32 value, the others 0.
pub(crate) fn padding_mask(valid: &Tensor, kind: Kind) -> Tensor {
    let (b, l) = valid.size2().expect("[B, L]");
    Tensor::zeros([b, 1, 1, l], (kind, valid.device()))
        .masked_fill(&valid.logical_not().view([b, 1, 1, l]), f64::from(f32::MIN))
}

/// transformers' `create_position_ids_from_input_ids`: non-padding tokens count up from
/// `pad + 1`, padding stays at `pad`.
pub(crate) fn position_ids(tokens: &Tensor, pad: i64) -> Tensor {
    let valid = tokens.ne(pad).to_kind(Kind::Int64);
    valid.cumsum(1, Kind::Int64) * &valid + pad
}

/// Multi-head attention of projected queries, keys and values `[B, L, W]` over the keys
/// `mask` (from [`padding_mask`]) lets through; the per-head outputs are recorded at `site`,
/// the merged heads `[B, L, W]` returned.
pub(crate) fn masked_attention(
    (q, k, v): (Tensor, Tensor, Tensor),
    mask: &Tensor,
    heads: i64,
    site: &str,
    probe: &mut Probe,
) -> Tensor {
    let (b, l, w) = q.size3().expect("[B, L, W]");
    let split = |t: Tensor| t.view([b, l, heads, w / heads]).transpose(1, 2);
    let out = Tensor::scaled_dot_product_attention(
        &split(q),
        &split(k),
        &split(v),
        Some(mask),
        0.0,
        false,
        None,
        false,
    );
    let out = probe.site(site, out, 1);
    out.transpose(1, 2).reshape([b, l, w])
}

/// Positions `0..L` up to and including `eot` `[B]`: the tokens of rows entered as embeddings.
fn valid_through(eot: &Tensor, l: i64) -> Tensor {
    let pos = Tensor::arange(l, (Kind::Int64, eot.device())).unsqueeze(0);
    pos.le_tensor(&eot.unsqueeze(1))
}

/// A Hugging Face encoder with open_clip's head: its embeddings, and its layers, pooler and
/// projection over the tokens that are not padding. Every such encoder is a text tower.
pub(crate) trait HfEncoder: std::fmt::Debug + Send {
    /// The padding id (`pad_token_id`).
    fn pad(&self) -> i64;
    /// Token (and position) embeddings `[B, L, W]` of ids `[B, L]`.
    fn embed(&self, tokens: &Tensor) -> Tensor;
    /// Embeddings `x` `[B, L, W]` of tokens whose non-padding positions are `valid` `[B, L]`
    /// → pooled and projected `[B, embed_dim]`.
    fn encode(&self, x: &Tensor, valid: &Tensor, probe: &mut Probe) -> Tensor;
}

impl<T: HfEncoder> super::TextTower for T {
    fn forward(&self, tokens: &Tensor, probe: &mut Probe) -> Tensor {
        let x = self.embed(tokens);
        self.encode(&x, &tokens.ne(self.pad()), probe)
    }

    fn embed_tokens(&self, tokens: &Tensor) -> Tensor {
        self.embed(tokens)
    }

    /// Entered with embeddings, every position up to and including `eot` counts as a token.
    fn forward_embedded(&self, embedded: &Tensor, eot: &Tensor, probe: &mut Probe) -> Tensor {
        let valid = valid_through(eot, embedded.size()[1]);
        self.encode(embedded, &valid, probe)
    }

    fn accepts_unpadded(&self) -> bool {
        // Non-padding tokens are attended to and pooled alone: padding changes nothing.
        true
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

/// `text` of a model with a Hugging Face text tower.
#[derive(Debug)]
pub(crate) struct HfTextEncoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_ln: LayerNorm,
    layers: Vec<Layer>,
    head: HfHead,
    heads: i64,
    pad: i64,
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
        HfTextEncoder {
            word_embeddings: table("word_embeddings", c.vocab_size),
            position_embeddings: table("position_embeddings", c.max_positions),
            token_type_embeddings: table("token_type_embeddings", c.type_vocab),
            embeddings_ln: LayerNorm::with_eps(&e / "LayerNorm", w, c.ln_eps),
            layers,
            head: HfHead::new(p, c, embed_dim),
            heads: c.heads,
            pad: c.pad_token_id,
        }
    }
}

impl HfEncoder for HfTextEncoder {
    fn pad(&self) -> i64 {
        self.pad
    }

    /// Word + position + token-type embeddings, then the embeddings' LayerNorm.
    fn embed(&self, tokens: &Tensor) -> Tensor {
        let words = Tensor::embedding(&self.word_embeddings, tokens, -1, false, false);
        let positions = Tensor::embedding(
            &self.position_embeddings,
            &position_ids(tokens, self.pad),
            -1,
            false,
            false,
        );
        self.embeddings_ln
            .forward(&(words + positions + self.token_type_embeddings.get(0)))
    }

    /// The post-LN layers, then open_clip's pooler and projection.
    fn encode(&self, x: &Tensor, valid: &Tensor, probe: &mut Probe) -> Tensor {
        let mask = padding_mask(valid, x.kind());
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            let [name, heads, inter] = &layer.sites;
            let qkv = (
                layer.query.forward(&x),
                layer.key.forward(&x),
                layer.value.forward(&x),
            );
            let merged = masked_attention(qkv, &mask, self.heads, heads, probe);
            let a = layer
                .attn_ln
                .forward(&layer.attn_out.forward_add(&merged, &x));
            let hidden = probe.site(inter, layer.intermediate.forward(&a).gelu("none"), -1);
            x = layer.out_ln.forward(&layer.out.forward_add(&hidden, &a));
            x = probe.site(name, x, -1);
        }
        self.head.forward(&x, valid)
    }
}
