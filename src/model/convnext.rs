//! timm's `ConvNeXt` (v1) under open_clip's `visual.trunk`, as its `TimmModel` wraps it: the
//! patchify `stem` (4×4 conv, stride 4, then LayerNorm2d), four `stages` (each but the first
//! opens with `downsample`: LayerNorm2d, 2×2 conv, stride 2) of `blocks` (depthwise 7×7
//! `conv_dw`, channels-last `norm`, `mlp.fc1` → GELU → `mlp.fc2`, LayerScale `gamma`, residual),
//! then timm's head (`head.norm` after average pooling) and open_clip's [`TimmHead`]
//! (`visual.head`).
//!
//! Activations stay channels-last (`[B, H, W, C]`) from the stem to the pool: the norms and the
//! MLP work on the last dimension, and the convolutions see the same memory as `NCHW` tensors in
//! channels-last layout, so no block copies its input to change layout.
//! Reference: timm 1.0 `models/convnext.py` (`ConvNeXt`, `ConvNeXtStage`, `ConvNeXtBlock`),
//! `layers/classifier.py` (`NormMlpClassifierHead`).

use tch::{nn, Tensor};

use super::config::TimmProj;
use super::probe::Probe;
use super::timm::TimmHead;
use super::transformer::{Conv2d as Conv, LayerNorm, Linear};

#[derive(Debug)]
struct Block {
    conv_dw: Conv,
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    gamma: Tensor,
    channels: i64,
}

impl Block {
    fn new(p: nn::Path, c: i64, eps: f64) -> Block {
        let mlp = &p / "mlp";
        Block {
            // Depthwise: one input channel per group.
            conv_dw: Conv::new(&p / "conv_dw", 1, c, 7),
            norm: LayerNorm::with_eps(&p / "norm", c, eps),
            fc1: Linear::new(&mlp / "fc1", c, 4 * c),
            fc2: Linear::new(&mlp / "fc2", 4 * c, c),
            gamma: p.var("gamma", &[c], nn::Init::Const(1e-6)),
            channels: c,
        }
    }

    /// `x + gamma · mlp(norm(conv_dw(x)))`, channels-last.
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.conv_dw.forward_nhwc(x, 1, 3, self.channels);
        let y = self
            .fc2
            .forward(&self.fc1.forward(&self.norm.forward(&y)).gelu("none"));
        x.addcmul(&y, &self.gamma)
    }
}

#[derive(Debug)]
struct Stage {
    /// LayerNorm2d and the 2×2 stride-2 convolution (every stage but the first).
    downsample: Option<(LayerNorm, Conv)>,
    blocks: Vec<Block>,
}

/// The shape of a timm ConvNeXt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvNextCfg {
    pub depths: [i64; 4],
    pub dims: [i64; 4],
    pub ln_eps: f64,
    pub embed_dim: i64,
    pub proj: TimmProj,
}

/// `visual` of a ConvNeXt CLIP: `visual.trunk.*` and `visual.head.*`.
#[derive(Debug)]
pub(crate) struct ConvNext {
    stem: Conv,
    stem_norm: LayerNorm,
    stages: Vec<Stage>,
    head_norm: LayerNorm,
    head: TimmHead,
}

impl ConvNext {
    pub(crate) fn new(p: nn::Path, cfg: ConvNextCfg) -> ConvNext {
        let trunk = &p / "trunk";
        let eps = cfg.ln_eps;
        let stem = &trunk / "stem";
        let stages = (0..4)
            .map(|i| {
                let sp = &trunk / "stages" / i;
                let c = cfg.dims[i];
                let downsample = (i > 0).then(|| {
                    let d = &sp / "downsample";
                    (
                        LayerNorm::with_eps(&d / 0, cfg.dims[i - 1], eps),
                        Conv::new(&d / 1, cfg.dims[i - 1], c, 2),
                    )
                });
                let blocks = (0..cfg.depths[i])
                    .map(|j| Block::new(&sp / "blocks" / j, c, eps))
                    .collect();
                Stage { downsample, blocks }
            })
            .collect();
        let features = cfg.dims[3];
        ConvNext {
            stem: Conv::new(&stem / 0, 3, cfg.dims[0], 4),
            stem_norm: LayerNorm::with_eps(&stem / 1, cfg.dims[0], eps),
            stages,
            head_norm: LayerNorm::with_eps(&trunk / "head" / "norm", features, eps),
            head: TimmHead::new(&p, cfg.proj, features, cfg.embed_dim),
        }
    }
}

impl super::ImageTower for ConvNext {
    fn forward(&self, images: &Tensor, _probe: &mut Probe, _weights_generation: u64) -> Tensor {
        let x = self.stem.forward(images, 4, 0, 1).permute([0, 2, 3, 1]);
        let mut x = self.stem_norm.forward(&x);
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward_nhwc(&norm.forward(&x), 2, 0, 1);
            }
            for block in &stage.blocks {
                x = block.forward(&x);
            }
        }
        let pooled = self
            .head_norm
            .forward(&x.mean_dim([1i64, 2].as_slice(), false, None));
        self.head.forward(&pooled)
    }
}
