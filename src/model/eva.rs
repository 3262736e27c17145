//! timm's `Eva` under open_clip's `visual.trunk` — EVA-CLIP's image towers (EVA01, EVA02) and
//! Meta's Perception Encoder (PE-Core): a patch conv (`patch_embed.proj`, with bias unless the
//! trunk has `norm_pre`), the class token `cls_token` (PE-Core-G has none), a learned
//! `pos_embed` over the class token and the patches, `norm_pre` (PE), the blocks (`blocks.N`),
//! the final `norm`, then the pool — the class token (EVA) or the MAP head `attn_pool` (PE,
//! timm's `AttentionPoolLatent`) — and the trunk's own classifier `head` as the projection
//! (open_clip's `timm_proj: null`).
//!
//! The blocks are `EvaBlock` (pre-norm: `x + attn(norm1(x))`, `x + mlp(norm2(x))`) or
//! `EvaBlockPostNorm` (EVA02-E: `x + norm1(attn(x))`, `x + norm2(mlp(x))`). Their attention is
//! `EvaAttention` — a fused `qkv` without bias plus `q_bias` and `v_bias` (k has none), or
//! separate `q_proj` / `k_proj` (no bias) / `v_proj` — or PE's `AttentionRope` (one `qkv` with
//! bias). EVA02 and PE rotate the queries and keys of the patch tokens (not the class token) by
//! 2-D axial rotary embeddings (timm's `RotaryEmbeddingCat`: the 'index' grid plus
//! `rope_grid_offset`, rescaled to the reference grid `ref_feat_shape`, bands
//! `10000^(-i/(Dh/4))`, the row's bands first or, 'xy' indexing, the column's, interleaved
//! pairs); EVA02 normalises the merged heads (`attn.norm`, the sub-LN) before `proj`. The MLP is
//! timm's `Mlp` (`fc1` → GELU → `fc2`) or, for EVA02, its `SwiGLU`
//! (`silu(fc1_g(x)) · fc1_x(x)` → `norm` → `fc2`).
//!
//! Probe sites: `visual.trunk.blocks.N` (residual stream after the block), `….attn.heads`
//! (per-head outputs before the merge), `….mlp.fc1` / `….mlp.fc1_x` (the MLP's hidden units).
//! Reference: timm 1.0 `models/eva.py` (`Eva`, `EvaBlock`, `EvaBlockPostNorm`,
//! `EvaAttention`, `vit_pe_core_*`), `layers/attention.py` (`AttentionRope`),
//! `layers/pos_embed_sincos.py` (`RotaryEmbeddingCat`, `build_rotary_pos_embed`, `_build_grid`,
//! `apply_rot_embed_cat`), `layers/mlp.py` (`SwiGLU`), `layers/attention_pool.py`.

use tch::{nn, Device, Kind, Tensor};

use super::config::{Activation, EvaPool, EvaQkv, EvaRope, EvaShape, TimmProj};
use super::probe::Probe;
use super::timm::TimmHead;
use super::timm_vit::{AttentionPoolLatent, PatchEmbed};
use super::transformer::{merge_heads, param, LayerNorm, Linear};

/// A timm `Eva` trunk and open_clip's head on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EvaCfg {
    pub image_resolution: i64,
    pub shape: EvaShape,
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
    /// ref_feat_shape, grid_offset, grid_indexing)` for heads of `head_dim`.
    fn new(grid: i64, r: EvaRope, head_dim: i64) -> Rope {
        let bands_n = head_dim / 4;
        let exp = Tensor::arange(bands_n, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float)
            / bands_n as f64;
        let bands = Tensor::pow_scalar(10000.0, &exp).reciprocal();
        // 'index' grid plus the offset, rescaled to the reference grid (EVA's scheme):
        // (t + offset) / grid · ref_grid.
        let t = (Tensor::arange(grid, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float)
            + r.grid_offset)
            / grid as f64
            * r.ref_grid as f64;
        let rows = t.view([grid, 1]).expand([grid, grid], false);
        let cols = t.view([1, grid]).expand([grid, grid], false);
        // [H, W, 2, bands]: one coordinate's bands, then the other's ('ij': the row first).
        let coords = if r.xy { [cols, rows] } else { [rows, cols] };
        let pos = Tensor::stack(&coords, -1).unsqueeze(-1) * bands.view([1, 1, 1, bands_n]);
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

/// The attention's projections: `EvaAttention`'s fused (`qkv` + `q_bias`, `v_bias`) or
/// separate ones, or `AttentionRope`'s fused `qkv` with bias.
#[derive(Debug)]
enum Qkv {
    FusedQvBias {
        weight: Tensor,
        q_bias: Tensor,
        v_bias: Tensor,
    },
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    Fused {
        qkv: Linear,
    },
}

#[derive(Debug)]
struct Attention {
    qkv: Qkv,
    norm: Option<LayerNorm>,
    proj: Linear,
    heads: i64,
    /// Tokens before the patches (the class token), which are not rotated.
    prefix: i64,
}

impl Attention {
    fn new(p: nn::Path, c: &EvaCfg) -> Attention {
        let w = c.shape.width;
        let std = (w as f64).powf(-0.5);
        let qkv = match c.shape.qkv {
            EvaQkv::FusedQvBias => Qkv::FusedQvBias {
                weight: param(&(&p / "qkv"), "weight", &[3 * w, w], std),
                q_bias: p.var("q_bias", &[w], nn::Init::Const(0.0)),
                v_bias: p.var("v_bias", &[w], nn::Init::Const(0.0)),
            },
            EvaQkv::Separate => Qkv::Separate {
                q_proj: Linear::new(&p / "q_proj", w, w),
                k_proj: Linear::with_bias(&p / "k_proj", w, w, false),
                v_proj: Linear::new(&p / "v_proj", w, w),
            },
            EvaQkv::Fused => Qkv::Fused {
                qkv: Linear::new(&p / "qkv", w, 3 * w),
            },
        };
        Attention {
            qkv,
            norm: c
                .shape
                .scale_attn_inner
                .then(|| LayerNorm::with_eps(&p / "norm", w, c.shape.ln_eps)),
            proj: Linear::new(&p / "proj", w, w),
            heads: c.shape.heads,
            prefix: i64::from(c.shape.class_token),
        }
    }

    /// `[B, N, W] → [B, N, W]`; the prefix tokens (the class token) are not rotated.
    fn forward(&self, x: &Tensor, rope: Option<&Rope>, site: &str, probe: &mut Probe) -> Tensor {
        let (b, n, w) = x.size3().expect("[B, N, W]");
        let (q, k, v) = match &self.qkv {
            Qkv::FusedQvBias {
                weight,
                q_bias,
                v_bias,
            } => {
                let bias = Tensor::cat(&[q_bias, &q_bias.zeros_like(), v_bias], 0);
                thirds(&super::kernels::linear(x, weight, Some(&bias)))
            }
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (q_proj.forward(x), k_proj.forward(x), v_proj.forward(x)),
            Qkv::Fused { qkv } => thirds(&qkv.forward(x)),
        };
        let split = |t: Tensor| t.view([b, n, self.heads, w / self.heads]).transpose(1, 2);
        let (mut q, mut k, v) = (split(q), split(k), split(v));
        if let Some(rope) = rope {
            let np = self.prefix;
            let rotate = |t: &Tensor| {
                Tensor::cat(
                    &[t.narrow(2, 0, np), rope.apply(&t.narrow(2, np, n - np))],
                    2,
                )
            };
            q = rotate(&q);
            k = rotate(&k);
        }
        let heads = super::kernels::attention(&q, &k, &v, None, false);
        let heads = probe.site(site, heads, 1);
        let merged = merge_heads(&heads);
        let merged = match &self.norm {
            Some(norm) => norm.forward(&merged),
            None => merged,
        };
        self.proj.forward(&merged)
    }
}

/// `[B, N, 3W]` → its three `[B, N, W]` parts (q, k, v).
fn thirds(qkv: &Tensor) -> (Tensor, Tensor, Tensor) {
    let parts = qkv.chunk(3, -1);
    (
        parts[0].shallow_clone(),
        parts[1].shallow_clone(),
        parts[2].shallow_clone(),
    )
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
                .then(|| LayerNorm::with_eps(&p / "norm", h, c.shape.ln_eps)),
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

/// The trunk's pool: the class token, or the MAP head.
#[derive(Debug)]
enum Pool {
    Token,
    Map(AttentionPoolLatent),
}

/// `visual` of an EVA or PE model: `visual.trunk.*` (and `visual.head.*` for a `timm_proj`).
#[derive(Debug)]
pub(crate) struct Eva {
    patch_embed: PatchEmbed,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    norm_pre: Option<LayerNorm>,
    rope: Option<Rope>,
    blocks: Vec<Block>,
    post_norm: bool,
    norm: LayerNorm,
    pool: Pool,
    /// `trunk.head` (the classifier as the projection), or open_clip's head.
    head: TimmHead,
}

impl Eva {
    /// The tower under `p` (`visual`).
    pub(crate) fn new(p: nn::Path, c: EvaCfg) -> Eva {
        let trunk = &p / "trunk";
        let (w, eps) = (c.shape.width, c.shape.ln_eps);
        let grid = c.image_resolution / c.shape.patch_size;
        let prefix = i64::from(c.shape.class_token);
        let bp = &trunk / "blocks";
        let blocks = (0..c.shape.layers)
            .map(|i| {
                let b = &bp / i;
                let name = format!("visual.trunk.blocks.{i}");
                let fc1 = if c.shape.swiglu { "fc1_x" } else { "fc1" };
                Block {
                    norm1: LayerNorm::with_eps(&b / "norm1", w, eps),
                    attn: Attention::new(&b / "attn", &c),
                    norm2: LayerNorm::with_eps(&b / "norm2", w, eps),
                    mlp: MlpBlock::new(&b / "mlp", &c),
                    sites: [
                        name.clone(),
                        format!("{name}.attn.heads"),
                        format!("{name}.mlp.{fc1}"),
                    ],
                }
            })
            .collect();
        let pool = match c.shape.pool {
            EvaPool::Token => Pool::Token,
            EvaPool::Map { heads, mlp_width } => Pool::Map(AttentionPoolLatent::new(
                &trunk / "attn_pool",
                w,
                heads,
                mlp_width,
                eps,
                Activation::Gelu,
            )),
        };
        Eva {
            patch_embed: PatchEmbed::new(&trunk, w, c.shape.patch_size, !c.shape.pre_norm),
            cls_token: c
                .shape
                .class_token
                .then(|| param(&trunk, "cls_token", &[1, 1, w], 0.02)),
            pos_embed: param(&trunk, "pos_embed", &[1, grid * grid + prefix, w], 0.02),
            norm_pre: c
                .shape
                .pre_norm
                .then(|| LayerNorm::with_eps(&trunk / "norm_pre", w, eps)),
            rope: c.shape.rope.map(|r| Rope::new(grid, r, w / c.shape.heads)),
            blocks,
            post_norm: c.shape.post_norm,
            norm: LayerNorm::with_eps(&trunk / "norm", w, eps),
            pool,
            head: TimmHead::new(&p, c.proj, w, c.embed_dim),
        }
    }
}

impl super::ImageTower for Eva {
    fn forward(&self, images: &Tensor, probe: &mut Probe, _weights_generation: u64) -> Tensor {
        let x = self.patch_embed.forward(images);
        let b = x.size()[0];
        let x = match &self.cls_token {
            Some(cls) => Tensor::cat(&[cls.expand([b, 1, -1], false), x], 1),
            None => x,
        };
        let mut x = x + &self.pos_embed;
        if let Some(norm_pre) = &self.norm_pre {
            x = norm_pre.forward(&x);
        }
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
        let x = self.norm.forward(&x);
        let pooled = match &self.pool {
            Pool::Token => x.select(1, 0),
            Pool::Map(attn_pool) => attn_pool.forward(&x),
        };
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
        let rope = Rope::new(
            4,
            EvaRope {
                ref_grid: 16,
                grid_offset: 0.0,
                xy: false,
            },
            8,
        );
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

    /// PE's grid: 'xy' indexing puts the column coordinate's bands first, and the offset is
    /// added before the rescaling to the reference grid: patch (row 1, column 2) of a 4×4 grid
    /// with offset 1 and reference 8 sits at column (2 + 1) / 4 · 8 = 6, row (1 + 1) / 4 · 8 = 4.
    #[test]
    fn rope_xy_grid_with_offset() {
        let rope = Rope::new(
            4,
            EvaRope {
                ref_grid: 8,
                grid_offset: 1.0,
                xy: true,
            },
            4,
        );
        let row = Vec::<f32>::try_from(rope.cos.get(6)).unwrap();
        let want = [6f64.cos(), 6f64.cos(), 4f64.cos(), 4f64.cos()];
        for (g, w) in row.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{row:?} vs {want:?}");
        }
    }

    /// Rotation preserves each pair's norm and rotates (x0, x1) by the angle.
    #[test]
    fn rope_rotates_pairs() {
        let rope = Rope::new(
            2,
            EvaRope {
                ref_grid: 2,
                grid_offset: 0.0,
                xy: false,
            },
            4,
        );
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
