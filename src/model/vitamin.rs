//! timm's ViTamin under open_clip's `visual.trunk`: a `VisionTransformer` whose patch embedding
//! is a convolutional backbone (`patch_embed.backbone`, timm's `HybridEmbed` without a
//! projection), then learned positions (`pos_embed`, none for XL), pre-norm blocks with GeGLU
//! MLPs, the average over the tokens (no class token) through `fc_norm`, and open_clip's
//! [`TimmHead`] (`visual.head.proj`).
//!
//! The backbone (`MbConvStages`): `stem` (`conv1` 3×3 stride 2 → `norm1` LayerNorm2d + GELU →
//! `conv2` 3×3), two stages of `MbConvLNBlock`s (`pre_norm` LayerNorm2d → `conv1_1x1` expand ×4
//! → GELU → `conv2_kxk` depthwise 3×3, stride 2 in a stage's first block → GELU → `conv3_1x1`,
//! plus the shortcut: a 3×3 average pool of stride 2 (padding not counted) and a 1×1 `expand`
//! where the channels change), then `pool` (LayerNorm2d `norm` → `proj` 3×3 stride 2 to the
//! transformer's width). LayerNorms have eps 1e-6. The blocks: `x + attn(norm1(x))` (fused
//! `qkv` with bias, `proj`), `x + mlp(norm2(x))` with GeGLU `mlp`: `norm` →
//! `gelu(w0(x)) · w1(x)` → `w2`.
//!
//! Probe sites: `visual.trunk.blocks.N` (residual stream after the block), `….attn.heads`
//! (per-head outputs before the merge), `….mlp.w1` (the GeGLU's gated hidden units).
//! Reference: timm 1.0 `models/vitamin.py` (`MbConvStages`, `Stem`, `MbConvLNBlock`,
//! `Downsample2d`, `StridedConv`, `GeGluMlp`, `vitamin_*`), `models/vision_transformer.py`
//! (`VisionTransformer`, `Block`), `layers/hybrid_embed.py`.

use tch::{nn, Tensor};

use super::config::{TimmProj, VitaminShape};
use super::probe::Probe;
use super::timm::TimmHead;
use super::transformer::{
    attend, merge_heads, param, Conv2d, LayerNorm, LayerNorm2d, Linear, Mask,
};

const EPS: f64 = 1e-6;

/// A timm ViTamin trunk and open_clip's head on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VitaminCfg {
    pub image_resolution: i64,
    pub shape: VitaminShape,
    pub embed_dim: i64,
    pub proj: TimmProj,
}

/// A [`Conv2d`] with its stride and groups, padded by `k / 2` (timm's `create_conv2d` default
/// for odd kernels).
#[derive(Debug)]
struct Conv {
    conv: Conv2d,
    pad: i64,
    stride: i64,
    groups: i64,
}

impl Conv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> Conv {
        Conv {
            conv: Conv2d::new(p, c_in / groups, c_out, k),
            pad: k / 2,
            stride,
            groups,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(x, self.stride, self.pad, self.groups)
    }
}

/// `MbConvLNBlock`.
#[derive(Debug)]
struct MbConv {
    /// Stride 2: the pooled shortcut (with `expand` when the channels change); else a 1×1
    /// conv when they change, else the identity.
    pool_shortcut: bool,
    expand: Option<Conv>,
    pre_norm: LayerNorm2d,
    conv1_1x1: Conv,
    conv2_kxk: Conv,
    conv3_1x1: Conv,
}

impl MbConv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> MbConv {
        let mid = 4 * c_out;
        let expand = (c_in != c_out).then(|| {
            let sp = &p / "shortcut";
            let path = if stride == 2 { &sp / "expand" } else { sp };
            Conv::new(path, c_in, c_out, 1, 1, 1)
        });
        MbConv {
            pool_shortcut: stride == 2,
            expand,
            pre_norm: LayerNorm2d::new(&p / "pre_norm", c_in, EPS),
            conv1_1x1: Conv::new(&p / "conv1_1x1", c_in, mid, 1, 1, 1),
            conv2_kxk: Conv::new(&p / "conv2_kxk", mid, mid, 3, stride, mid),
            conv3_1x1: Conv::new(&p / "conv3_1x1", mid, c_out, 1, 1, 1),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut shortcut = if self.pool_shortcut {
            // nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False).
            x.avg_pool2d([3, 3], [2, 2], [1, 1], false, false, None::<i64>)
        } else {
            x.shallow_clone()
        };
        if let Some(expand) = &self.expand {
            shortcut = expand.forward(&shortcut);
        }
        let h = self
            .conv1_1x1
            .forward(&self.pre_norm.forward(x))
            .gelu("none");
        let h = self.conv2_kxk.forward(&h).gelu("none");
        self.conv3_1x1.forward(&h) + shortcut
    }
}

/// A transformer block with a GeGLU MLP.
#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    mlp_norm: LayerNorm,
    w0: Linear,
    w1: Linear,
    w2: Linear,
    /// Site names: (block, heads, mlp).
    sites: [String; 3],
}

impl Block {
    fn new(p: nn::Path, i: i64, s: &VitaminShape) -> Block {
        let (w, h) = (s.width, s.mlp_width);
        let (a, m) = (&p / "attn", &p / "mlp");
        let name = format!("visual.trunk.blocks.{i}");
        Block {
            norm1: LayerNorm::with_eps(&p / "norm1", w, EPS),
            qkv: Linear::new(&a / "qkv", w, 3 * w),
            proj: Linear::new(&a / "proj", w, w),
            norm2: LayerNorm::with_eps(&p / "norm2", w, EPS),
            mlp_norm: LayerNorm::with_eps(&m / "norm", w, EPS),
            w0: Linear::new(&m / "w0", w, h),
            w1: Linear::new(&m / "w1", w, h),
            w2: Linear::new(&m / "w2", h, w),
            sites: [
                name.clone(),
                format!("{name}.attn.heads"),
                format!("{name}.mlp.w1"),
            ],
        }
    }

    fn forward(&self, x: &Tensor, heads: i64, probe: &mut Probe) -> Tensor {
        let [name, heads_site, mlp_site] = &self.sites;
        let qkv = self.qkv.forward(&self.norm1.forward(x));
        let parts = qkv.chunk(3, -1);
        let out = attend(&parts[0], &parts[1], &parts[2], heads, Mask::None);
        let out = probe.site(heads_site, out, 1);
        let x = self.proj.forward_add(&merge_heads(&out), x);
        let m = self.mlp_norm.forward(&self.norm2.forward(&x));
        let hidden = self.w0.forward(&m).gelu("none") * self.w1.forward(&m);
        let hidden = probe.site(mlp_site, hidden, -1);
        let x = self.w2.forward_add(&hidden, &x);
        probe.site(name, x, -1)
    }
}

/// `visual` of a ViTamin model: `visual.trunk.*` and `visual.head.*`.
#[derive(Debug)]
pub(crate) struct Vitamin {
    stem_conv1: Conv,
    stem_norm1: LayerNorm2d,
    stem_conv2: Conv,
    stages: Vec<MbConv>,
    pool_norm: LayerNorm2d,
    pool_proj: Conv,
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    heads: i64,
    fc_norm: LayerNorm,
    head: TimmHead,
}

impl Vitamin {
    /// The tower under `p` (`visual`).
    pub(crate) fn new(p: nn::Path, c: VitaminCfg) -> Vitamin {
        let s = c.shape;
        let trunk = &p / "trunk";
        let bb = &trunk / "patch_embed" / "backbone";
        let stem = &bb / "stem";
        let mut stages = Vec::new();
        let mut c_in = s.stem_width;
        for (st, (&dim, &depth)) in s.conv_dims.iter().zip(&s.conv_depths).enumerate() {
            let sp = &bb / "stages" / st as i64;
            for d in 0..depth {
                stages.push(MbConv::new(
                    &sp / d,
                    if d == 0 { c_in } else { dim },
                    dim,
                    if d == 0 { 2 } else { 1 },
                ));
            }
            c_in = dim;
        }
        let pool = &bb / "pool";
        let grid = c.image_resolution / 16;
        let bp = &trunk / "blocks";
        Vitamin {
            stem_conv1: Conv::new(&stem / "conv1", 3, s.stem_width, 3, 2, 1),
            stem_norm1: LayerNorm2d::new(&stem / "norm1", s.stem_width, EPS),
            stem_conv2: Conv::new(&stem / "conv2", s.stem_width, s.stem_width, 3, 1, 1),
            stages,
            pool_norm: LayerNorm2d::new(&pool / "norm", c_in, EPS),
            pool_proj: Conv::new(&pool / "proj", c_in, s.width, 3, 2, 1),
            pos_embed: s
                .pos_embed
                .then(|| param(&trunk, "pos_embed", &[1, grid * grid, s.width], 0.02)),
            blocks: (0..s.layers).map(|i| Block::new(&bp / i, i, &s)).collect(),
            heads: s.heads,
            fc_norm: LayerNorm::with_eps(&trunk / "fc_norm", s.width, EPS),
            head: TimmHead::new(&p, c.proj, s.width, c.embed_dim),
        }
    }

    /// The backbone: `[B, 3, R, R] → [B, W, R/16, R/16]`.
    fn backbone(&self, images: &Tensor) -> Tensor {
        let x = self.stem_conv1.forward(images);
        let mut x = self
            .stem_conv2
            .forward(&self.stem_norm1.forward(&x).gelu("none"));
        for block in &self.stages {
            x = block.forward(&x);
        }
        self.pool_proj.forward(&self.pool_norm.forward(&x))
    }
}

impl super::ImageTower for Vitamin {
    fn forward(&self, images: &Tensor, probe: &mut Probe, _weights_generation: u64) -> Tensor {
        let mut x = self.backbone(images).flatten(2, 3).transpose(1, 2);
        if let Some(pos) = &self.pos_embed {
            x += pos;
        }
        for block in &self.blocks {
            x = block.forward(&x, self.heads, probe);
        }
        let pooled = x.mean_dim([1i64].as_slice(), false, None);
        self.head.forward(&self.fc_norm.forward(&pooled))
    }
}
