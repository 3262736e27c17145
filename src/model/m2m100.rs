//! NLLB-200's text tower as open_clip's `HFTextEncoder` wraps it: the encoder of transformers'
//! `M2M100Model` under `text.transformer.*` (transformers' names), then open_clip's pooler and
//! projection ([`HfHead`], `text.proj.*`).
//!
//! The token embeddings `embed_tokens` are scaled by `√d_model` (`scale_embedding`); the
//! positions are fixed sinusoids (`M2M100SinusoidalPositionalEmbedding`: `[sin | cos]` halves
//! with frequencies `10000^(-i/(W/2 - 1))`, the padding id's row zero), indexed like RoBERTa's
//! from `pad + 1` past the padding id, and not in the checkpoint. The layers are pre-LN
//! (`x + self_attn(self_attn_layer_norm(x))`, then `x + fc2(relu(fc1(final_layer_norm(x))))`)
//! with `self_attn.{q,k,v,out}_proj` attending only to non-padding tokens; the encoder ends in
//! `layer_norm`.
//!
//! Probe sites: `text.transformer.layers.N` (after the layer), `….self_attn.heads` (per-head
//! outputs before the merge), `….fc1` (the FFN's hidden units after ReLU).
//! Reference: transformers 4.57 `models/m2m_100/modeling_m2m_100.py` (`M2M100Encoder`,
//! `M2M100EncoderLayer`, `M2M100SinusoidalPositionalEmbedding`, `M2M100ScaledWordEmbedding`).

use tch::{nn, Device, Kind, Tensor};

use super::hf_text::{
    masked_attention, padding_mask, position_ids, HfEncoder, HfHead, HfTextConfig,
};
use super::probe::Probe;
use super::transformer::{param, LayerNorm, Linear};

/// `M2M100SinusoidalPositionalEmbedding.get_embedding(rows, width, padding_idx)`.
fn sinusoids(rows: i64, width: i64, pad: i64) -> Tensor {
    let half = width / 2;
    let step = 10000f64.ln() / (half - 1) as f64;
    let freq =
        (Tensor::arange(half, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) * -step).exp();
    let angle = Tensor::arange(rows, (Kind::Int64, Device::Cpu))
        .to_kind(Kind::Float)
        .unsqueeze(1)
        * freq.unsqueeze(0);
    let mut table = Tensor::cat(&[angle.sin(), angle.cos()], 1);
    if width % 2 == 1 {
        table = Tensor::cat(
            &[table, Tensor::zeros([rows, 1], (Kind::Float, Device::Cpu))],
            1,
        );
    }
    let _ = table.get(pad).fill_(0.0);
    table
}

#[derive(Debug)]
struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
    /// Site names: (layer, heads, fc1).
    sites: [String; 3],
}

/// `text` of an NLLB-CLIP model.
#[derive(Debug)]
pub(crate) struct M2M100Encoder {
    embed_tokens: Tensor,
    embed_scale: f64,
    /// The sinusoid table, `[max_positions + 2, W]` (transformers' offset of 2).
    positions: Tensor,
    layers: Vec<Layer>,
    layer_norm: LayerNorm,
    head: HfHead,
    heads: i64,
    pad: i64,
}

impl M2M100Encoder {
    /// The tower under `p` (`text`).
    pub(crate) fn new(p: &nn::Path, c: &HfTextConfig, embed_dim: i64) -> M2M100Encoder {
        let t = p / "transformer";
        let w = c.width;
        let lp = &t / "layers";
        let layers = (0..c.layers)
            .map(|i| {
                let l = &lp / i;
                let a = &l / "self_attn";
                let name = format!("text.transformer.layers.{i}");
                Layer {
                    q_proj: Linear::new(&a / "q_proj", w, w),
                    k_proj: Linear::new(&a / "k_proj", w, w),
                    v_proj: Linear::new(&a / "v_proj", w, w),
                    out_proj: Linear::new(&a / "out_proj", w, w),
                    self_attn_layer_norm: LayerNorm::with_eps(
                        &l / "self_attn_layer_norm",
                        w,
                        c.ln_eps,
                    ),
                    fc1: Linear::new(&l / "fc1", w, c.intermediate),
                    fc2: Linear::new(&l / "fc2", c.intermediate, w),
                    final_layer_norm: LayerNorm::with_eps(&l / "final_layer_norm", w, c.ln_eps),
                    sites: [
                        name.clone(),
                        format!("{name}.self_attn.heads"),
                        format!("{name}.fc1"),
                    ],
                }
            })
            .collect();
        M2M100Encoder {
            embed_tokens: param(&(&t / "embed_tokens"), "weight", &[c.vocab_size, w], 0.02),
            embed_scale: (w as f64).sqrt(),
            positions: sinusoids(c.max_positions + 2, w, c.pad_token_id),
            layers,
            layer_norm: LayerNorm::with_eps(&t / "layer_norm", w, c.ln_eps),
            head: HfHead::new(p, c, embed_dim),
            heads: c.heads,
            pad: c.pad_token_id,
        }
    }
}

impl HfEncoder for M2M100Encoder {
    fn pad(&self) -> i64 {
        self.pad
    }

    /// Scaled token embeddings plus the sinusoids of their positions.
    fn embed(&self, tokens: &Tensor) -> Tensor {
        let words = Tensor::embedding(&self.embed_tokens, tokens, -1, false, false);
        let positions = self
            .positions
            .to_device(tokens.device())
            .index_select(0, &position_ids(tokens, self.pad).view([-1]))
            .view([tokens.size()[0], tokens.size()[1], -1])
            .to_kind(words.kind());
        words * self.embed_scale + positions
    }

    /// The pre-LN layers, the final `layer_norm`, then open_clip's pooler and projection.
    fn encode(&self, x: &Tensor, valid: &Tensor, probe: &mut Probe) -> Tensor {
        let mask = padding_mask(valid, x.kind());
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            let [name, heads, fc1] = &layer.sites;
            let h = layer.self_attn_layer_norm.forward(&x);
            let qkv = (
                layer.q_proj.forward(&h),
                layer.k_proj.forward(&h),
                layer.v_proj.forward(&h),
            );
            let merged = masked_attention(qkv, &mask, self.heads, heads, probe);
            x = layer.out_proj.forward_add(&merged, &x);
            let hidden = layer
                .fc1
                .forward(&layer.final_layer_norm.forward(&x))
                .relu();
            let hidden = probe.site(fc1, hidden, -1);
            x = layer.fc2.forward_add(&hidden, &x);
            x = probe.site(name, x, -1);
        }
        self.head.forward(&self.layer_norm.forward(&x), valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' table: row `r`, column `i < W/2` is `sin(r · f_i)`, column `W/2 + i` is
    /// `cos(r · f_i)`, `f_i = exp(-i · ln(10000) / (W/2 - 1))`; the padding row is zero.
    #[test]
    fn sinusoids_follow_transformers() {
        let t = sinusoids(6, 8, 1);
        assert_eq!(t.size(), vec![6, 8]);
        let f1 = (-(10000f64.ln()) / 3.0).exp();
        let row = Vec::<f32>::try_from(t.get(3)).unwrap();
        let want = [
            3f64.sin(),
            (3.0 * f1).sin(),
            (3.0 * f1 * f1).sin(),
            (3.0 * f1 * f1 * f1).sin(),
            3f64.cos(),
            (3.0 * f1).cos(),
            (3.0 * f1 * f1).cos(),
            (3.0 * f1 * f1 * f1).cos(),
        ];
        for (g, w) in row.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{row:?} vs {want:?}");
        }
        assert_eq!(f64::try_from(t.get(1).abs().sum(Kind::Float)).unwrap(), 0.0);
    }
}
