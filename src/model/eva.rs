//! timm's `Eva` (EVA-CLIP's image towers, EVA01 and EVA02) under open_clip's `visual.trunk`: a
//! patch conv with bias (`patch_embed.proj`), the class token `cls_token`, a learned `pos_embed`
//! over the class token and the patches, the blocks (`blocks.N`), the final `norm`, the class
//! token pooled, and the trunk's own classifier `head` as the projection (open_clip's
//! `timm_proj: null`).
//!
//! The blocks are `EvaBlock` (pre-norm: `x + attn(norm1(x))`, `x + mlp(norm2(x))`) or
//! `EvaBlockPostNorm` (EVA02-E: `x + norm1(attn(x))`, `x + norm2(mlp(x))`). Their attention is
//! `EvaAttention`: a fused `qkv` without bias plus `q_bias` and `v_bias` (k has none), or
//! separate `q_proj` / `k_proj` (no bias) / `v_proj`; EVA02 rotates the queries and keys of the
//! patch tokens (not the class token) by 2-D axial rotary embeddings (timm's
//! `RotaryEmbeddingCat`: 'index' grid rescaled to the reference grid `ref_feat_shape`, bands
//! `10000^(-i/(Dh/4))`, interleaved pairs) and normalises the merged heads (`attn.norm`, the
//! sub-LN) before `proj`. The MLP is timm's `Mlp` (`fc1` → GELU → `fc2`) or, for EVA02, its
//! `SwiGLU` (`silu(fc1_g(x)) · fc1_x(x)` → `norm` → `fc2`).
//!
//! Probe sites: `visual.trunk.blocks.N` (residual stream after the block), `….attn.heads`
//! (per-head outputs before the merge), `….mlp.fc1` / `….mlp.fc1_x` (the MLP's hidden units).
//! Reference: timm 1.0 `models/eva.py` (`Eva`, `EvaBlock`, `EvaBlockPostNorm`,
//! `EvaAttention`), `layers/pos_embed_sincos.py` (`RotaryEmbeddingCat`,
//! `build_rotary_pos_embed`, `apply_rot_embed_cat`), `layers/mlp.py` (`SwiGLU`).

use tch::{nn, Device, Kind, Tensor};

use super::config::{EvaShape, TimmProj};
use super::probe::Probe;
use super::timm::TimmHead;
use super::timm_vit::PatchEmbed;
use super::transformer::{merge_heads, param, LayerNorm, Linear};

/// A timm `Eva` trunk and open_clip's head on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EvaCfg {
    pub image_resolution: i64,
    pub shape: EvaShape,
    pub ln_eps: f64,
    pub embed_dim: i64,
    pub proj: TimmProj,
}

/// Axial rotary embeddings of the patch grid: `sin`, `cos` `[N, Dh]`, float32, interleaved.
#[derive(Debug)]
struct Rope {
    sin: Tensor,
    cos: Tensor,
}

impl Rope {
    /// timm's `build_rotary_pos_embed(feat_shape=(grid, grid), in_pixels=False,
    /// ref_feat_shape=(ref_grid, ref_grid))` for heads of `head_dim`.
    fn new(grid: i64, ref_grid: i64, head_dim: i64) -> Rope {
        let bands_n = head_dim / 4;
        let exp = Tensor::arange(bands_n, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float)
            / bands_n as f64;
        let bands = Tensor::pow_scalar(10000.0, &exp).reciprocal();
        // 'index' grid, rescaled to the reference grid (EVA's scheme): t / grid · ref_grid.
        let t = Tensor::arange(grid, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / grid as f64
            * ref_grid as f64;
        let rows = t.view([grid, 1]).expand([grid, grid], false);
        let cols = t.view([1, grid]).expand([grid, grid], false);
        // [H, W, 2, bands]: the row coordinate's bands, then the column's.
        let pos = Tensor::stack(&[rows, cols], -1).unsqueeze(-1) * bands.view([1, 1, 1, bands_n]);
        let layout = |x: Tensor| {
            x.flatten(-2, -1)
                .flatten(0, 1)
                .repeat_interleave_self_int(2, -1, None::<i64>)
        };
        Rope {
            sin: layout(pos.sin()),
            cos: layout(pos.cos()),
        }
    }

    /// `x · cos + rot(x) · sin` for `x` `[B, H, N, Dh]` (rot: `[-x1, x0, -x3, x2, …]`), computed
    /// in float32 and returned in `x`'s kind.
    fn apply(&self, x: &Tensor) -> Tensor {
        let dev = x.device();
        let xf = x.to_kind(Kind::Float);
        let size = xf.size();
        let d = size[3];
        let pairs = xf.view([size[0], size[1], size[2], d / 2, 2]);
        let rot =
            Tensor::stack(&[-pairs.select(-1, 1), pairs.select(-1, 0)], -1).view(size.as_slice());
        (xf * self.cos.to_device(dev) + rot * self.sin.to_device(dev)).to_kind(x.kind())
    }
}

/// `EvaAttention`'s projections: fused (`qkv` + `q_bias`, `v_bias`) or separate.
#[derive(Debug)]
enum Qkv {
    Fused {
        weight: Tensor,
        q_bias: Tensor,
        v_bias: Tensor,
    },
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
}

#[derive(Debug)]
struct Attention {
    qkv: Qkv,
    norm: Option<LayerNorm>,
    proj: Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, c: &EvaCfg) -> Attention {
        let w = c.shape.width;
        let std = (w as f64).powf(-0.5);
        let qkv = if c.shape.qkv_fused {
            Qkv::Fused {
                weight: param(&(&p / "qkv"), "weight", &[3 * w, w], std),
                q_bias: p.var("q_bias", &[w], nn::Init::Const(0.0)),
                v_bias: p.var("v_bias", &[w], nn::Init::Const(0.0)),
            }
        } else {
            Qkv::Separate {
                q_proj: Linear::new(&p / "q_proj", w, w),
                k_proj: Linear::with_bias(&p / "k_proj", w, w, false),
                v_proj: Linear::new(&p / "v_proj", w, w),
            }
        };
        Attention {
            qkv,
            norm: c
                .shape
                .scale_attn_inner
                .then(|| LayerNorm::with_eps(&p / "norm", w, c.ln_eps)),
            proj: Linear::new(&p / "proj", w, w),
            heads: c.shape.heads,
        }
    }

    /// `[B, N, W] → [B, N, W]`; the first token (the class token) is not rotated.
    fn forward(&self, x: &Tensor, rope: Option<&Rope>, site: &str, probe: &mut Probe) -> Tensor {
        let (b, n, w) = x.size3().expect("[B, N, W]");
        let (q, k, v) = match &self.qkv {
            Qkv::Fused {
                weight,
                q_bias,
                v_bias,
            } => {
                let bias = Tensor::cat(&[q_bias, &q_bias.zeros_like(), v_bias], 0);
                let qkv = super::kernels::linear(x, weight, Some(&bias));
                let parts = qkv.chunk(3, -1);
                (
                    parts[0].shallow_clone(),
                    parts[1].shallow_clone(),
                    parts[2].shallow_clone(),
                )
            }
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (q_proj.forward(x), k_proj.forward(x), v_proj.forward(x)),
        };
        let split = |t: Tensor| t.view([b, n, self.heads, w / self.heads]).transpose(1, 2);
        let (mut q, mut k, v) = (split(q), split(k), split(v));
        if let Some(rope) = rope {
            let rotate = |t: &Tensor| {
                Tensor::cat(&[t.narrow(2, 0, 1), rope.apply(&t.narrow(2, 1, n - 1))], 2)
            };
            q = rotate(&q);
            k = rotate(&k);
        }
        let heads = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let heads = probe.site(site, heads, 1);
        let merged = merge_heads(&heads);
        let merged = match &self.norm {
            Some(norm) => norm.forward(&merged),
            None => merged,
        };
        self.proj.forward(&merged)
    }
}

/// timm's `Mlp` (GELU) or `SwiGLU`, with the optional hidden LayerNorm.
#[derive(Debug)]
enum Mlp {
    Gelu { fc1: Linear },
    SwiGlu { fc1_g: Linear, fc1_x: Linear },
}

#[derive(Debug)]
struct MlpBlock {
    kind: Mlp,
    norm: Option<LayerNorm>,
    fc2: Linear,
}

impl MlpBlock {
    fn new(p: nn::Path, c: &EvaCfg) -> MlpBlock {
        let (w, h) = (c.shape.width, c.shape.mlp_width);
        let kind = if c.shape.swiglu {
            Mlp::SwiGlu {
                fc1_g: Linear::new(&p / "fc1_g", w, h),
                fc1_x: Linear::new(&p / "fc1_x", w, h),
            }
        } else {
            Mlp::Gelu {
                fc1: Linear::new(&p / "fc1", w, h),
            }
        };
        MlpBlock {
            kind,
            norm: c
                .shape
                .scale_mlp
                .then(|| LayerNorm::with_eps(&p / "norm", h, c.ln_eps)),
            fc2: Linear::new(&p / "fc2", h, w),
        }
    }

    fn forward(&self, x: &Tensor, site: &str, probe: &mut Probe) -> Tensor {
        let hidden = match &self.kind {
            Mlp::Gelu { fc1 } => fc1.forward(x).gelu("none"),
            Mlp::SwiGlu { fc1_g, fc1_x } => fc1_g.forward(x).silu() * fc1_x.forward(x),
        };
        let hidden = probe.site(site, hidden, -1);
        let hidden = match &self.norm {
            Some(norm) => norm.forward(&hidden),
            None => hidden,
        };
        self.fc2.forward(&hidden)
    }
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    /// Site names: (block, heads, mlp).
    sites: [String; 3],
}

/// `visual` of an EVA model: `visual.trunk.*` (and `visual.head.*` for a `timm_proj`).
#[derive(Debug)]
pub(crate) struct Eva {
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    pos_embed: Tensor,
    rope: Option<Rope>,
    blocks: Vec<Block>,
    post_norm: bool,
    norm: LayerNorm,
    /// `trunk.head` (the classifier as the projection), or open_clip's head.
    head: TimmHead,
}

impl Eva {
    /// The tower under `p` (`visual`).
    pub(crate) fn new(p: nn::Path, c: EvaCfg) -> Eva {
        let trunk = &p / "trunk";
        let w = c.shape.width;
        let grid = c.image_resolution / c.shape.patch_size;
        let bp = &trunk / "blocks";
        let blocks = (0..c.shape.layers)
            .map(|i| {
                let b = &bp / i;
                let name = format!("visual.trunk.blocks.{i}");
                let fc1 = if c.shape.swiglu { "fc1_x" } else { "fc1" };
                Block {
                    norm1: LayerNorm::with_eps(&b / "norm1", w, c.ln_eps),
                    attn: Attention::new(&b / "attn", &c),
                    norm2: LayerNorm::with_eps(&b / "norm2", w, c.ln_eps),
                    mlp: MlpBlock::new(&b / "mlp", &c),
                    sites: [
                        name.clone(),
                        format!("{name}.attn.heads"),
                        format!("{name}.mlp.{fc1}"),
                    ],
                }
            })
            .collect();
        Eva {
            patch_embed: PatchEmbed::new(&trunk, w, c.shape.patch_size),
            cls_token: param(&trunk, "cls_token", &[1, 1, w], 0.02),
            pos_embed: param(&trunk, "pos_embed", &[1, grid * grid + 1, w], 0.02),
            rope: c
                .shape
                .rope_ref_grid
                .map(|r| Rope::new(grid, r, w / c.shape.heads)),
            blocks,
            post_norm: c.shape.post_norm,
            norm: LayerNorm::with_eps(&trunk / "norm", w, c.ln_eps),
            head: TimmHead::new(&p, c.proj, w, c.embed_dim),
        }
    }
}

impl super::ImageTower for Eva {
    fn forward(&self, images: &Tensor, probe: &mut Probe, _weights_generation: u64) -> Tensor {
        let x = self.patch_embed.forward(images);
        let b = x.size()[0];
        let cls = self.cls_token.expand([b, 1, -1], false);
        let mut x = Tensor::cat(&[cls, x], 1) + &self.pos_embed;
        let rope = self.rope.as_ref();
        for block in &self.blocks {
            let [name, heads, mlp] = &block.sites;
            x = if self.post_norm {
                let x = &x
                    + block
                        .norm1
                        .forward(&block.attn.forward(&x, rope, heads, probe));
                &x + block.norm2.forward(&block.mlp.forward(&x, mlp, probe))
            } else {
                let x = &x
                    + block
                        .attn
                        .forward(&block.norm1.forward(&x), rope, heads, probe);
                &x + block.mlp.forward(&block.norm2.forward(&x), mlp, probe)
            };
            x = probe.site(name, x, -1);
        }
        let pooled = self.norm.forward(&x).select(1, 0);
        self.head.forward(&pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// timm's layout: position (row, column) of a grid, head_dim 8 → 2 bands per axis, each
    /// value twice: [r·b0, r·b0, r·b1, r·b1, c·b0, c·b0, c·b1, c·b1].
    #[test]
    fn rope_follows_timms_layout() {
        let rope = Rope::new(4, 16, 8);
        assert_eq!(rope.sin.size(), vec![16, 8]);
        let b1 = 1.0 / 10000f64.powf(0.5);
        // Patch (1, 2): row coordinate 1/4·16 = 4, column 2/4·16 = 8.
        let row = Vec::<f32>::try_from(rope.sin.get(6)).unwrap();
        let want = [
            4f64.sin(),
            4f64.sin(),
            (4.0 * b1).sin(),
            (4.0 * b1).sin(),
            8f64.sin(),
            8f64.sin(),
            (8.0 * b1).sin(),
            (8.0 * b1).sin(),
        ];
        for (g, w) in row.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{row:?} vs {want:?}");
        }
    }

    /// Rotation preserves each pair's norm and rotates (x0, x1) by the angle.
    #[test]
    fn rope_rotates_pairs() {
        let rope = Rope::new(2, 2, 4);
        let x = Tensor::ones([1, 1, 4, 4], (Kind::Float, Device::Cpu));
        let y = rope.apply(&x);
        let norms = y
            .view([4, 2, 2])
            .square()
            .sum_dim_intlist(-1, false, Kind::Float);
        assert!(norms.allclose(
            &Tensor::full([4, 2], 2.0, (Kind::Float, Device::Cpu)),
            1e-5,
            1e-5,
            false
        ));
        // Patch (0, 1): row 0 (no rotation of the first pair), column 1/2·2 = 1 radian.
        let r = Vec::<f32>::try_from(y.view([4, 4]).get(1)).unwrap();
        assert!(
            (r[0] - 1.0).abs() < 1e-6 && (r[1] - 1.0).abs() < 1e-6,
            "{r:?}"
        );
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!(
            (r[2] - (c - s)).abs() < 1e-5 && (r[3] - (c + s)).abs() < 1e-5,
            "{r:?}"
        );
    }
}
