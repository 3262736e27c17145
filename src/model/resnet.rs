//! OpenAI `ModifiedResNet` image tower (`visual.*`): 3-conv stem with average pool, bottleneck
//! stages whose stride is an anti-aliasing `AvgPool2d` before the last 1x1 conv, and a QKV
//! attention pool (`visual.attnpool`) instead of global average pooling.
//! Reference: openai/CLIP `clip/model.py` (`Bottleneck`, `AttentionPool2d`, `ModifiedResNet`).

use tch::{nn, Tensor};

use super::batch_norm::{BatchNorm, FoldCache};
use super::kernels;
use super::probe::Probe;
use super::transformer::{attend, merge_heads, param, Linear, Mask};

/// `Conv2d` without bias.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    stride: i64,
    padding: i64,
    /// The eval-mode `BatchNorm` that follows this conv, folded into its weight and a bias,
    /// for one weights generation.
    folded: FoldCache,
}

impl Conv {
    fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Conv {
        let fan_in = (c_in * k * k) as f64;
        Conv {
            weight: param(&p, "weight", &[c_out, c_in, k, k], fan_in.powf(-0.5)),
            stride,
            padding,
            folded: FoldCache::default(),
        }
    }

    /// `bn(conv(x))`. With `fold = Some(generation)` (CPU fp32 inference) the BatchNorm is
    /// folded into the conv: `W·s`, bias `β − μ·s` with `s = γ / √(σ² + ε)`, as
    /// `torch.jit.freeze` does; computed once per weights generation (see
    /// `ClipModel::weights_changed`). Equal up to float rounding.
    fn forward_bn(&self, bn: &BatchNorm, x: &Tensor, fold: Option<u64>) -> Tensor {
        let Some(generation) = fold else {
            return bn.forward(&self.forward(x));
        };
        let (weight, bias) = self.folded.get(generation, || bn.fold(&self.weight, None));
        x.conv2d(
            &weight,
            Some(&bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

fn avg_pool(x: &Tensor, k: i64) -> Tensor {
    x.avg_pool2d([k, k], [k, k], [0, 0], false, true, None)
}

/// `Bottleneck` (expansion 4); `downsample` = `AvgPool2d(stride)` → 1x1 conv (`downsample.0`) → BN (`downsample.1`).
#[derive(Debug)]
struct Bottleneck {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    conv3: Conv,
    bn3: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
    stride: i64,
}

impl Bottleneck {
    fn new(p: nn::Path, inplanes: i64, planes: i64, stride: i64) -> Bottleneck {
        let downsample = (stride > 1 || inplanes != planes * 4).then(|| {
            let d = &p / "downsample";
            (
                Conv::new(&d / "0", inplanes, planes * 4, 1, 1, 0),
                BatchNorm::new(&d / "1", planes * 4),
            )
        });
        Bottleneck {
            conv1: Conv::new(&p / "conv1", inplanes, planes, 1, 1, 0),
            bn1: BatchNorm::new(&p / "bn1", planes),
            conv2: Conv::new(&p / "conv2", planes, planes, 3, 1, 1),
            bn2: BatchNorm::new(&p / "bn2", planes),
            conv3: Conv::new(&p / "conv3", planes, planes * 4, 1, 1, 0),
            bn3: BatchNorm::new(&p / "bn3", planes * 4),
            downsample,
            stride,
        }
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        let out = self.conv1.forward_bn(&self.bn1, x, fold).relu();
        let out = self.conv2.forward_bn(&self.bn2, &out, fold).relu();
        let out = if self.stride > 1 {
            avg_pool(&out, self.stride)
        } else {
            out
        };
        let out = self.conv3.forward_bn(&self.bn3, &out, fold);
        let identity = match &self.downsample {
            Some((conv, bn)) => {
                let x = if self.stride > 1 {
                    avg_pool(x, self.stride)
                } else {
                    x.shallow_clone()
                };
                conv.forward_bn(bn, &x, fold)
            }
            None => x.shallow_clone(),
        };
        (out + identity).relu()
    }
}

/// `AttentionPool2d`: the mean token attends over all spatial tokens.
#[derive(Debug)]
struct AttentionPool2d {
    positional_embedding: Tensor,
    k_proj: Linear,
    q_proj: Linear,
    v_proj: Linear,
    c_proj: Linear,
    heads: i64,
}

impl AttentionPool2d {
    fn new(
        p: nn::Path,
        spacial_dim: i64,
        embed_dim: i64,
        heads: i64,
        output_dim: i64,
    ) -> AttentionPool2d {
        AttentionPool2d {
            positional_embedding: param(
                &p,
                "positional_embedding",
                &[spacial_dim * spacial_dim + 1, embed_dim],
                (embed_dim as f64).powf(-0.5),
            ),
            k_proj: Linear::new(&p / "k_proj", embed_dim, embed_dim),
            q_proj: Linear::new(&p / "q_proj", embed_dim, embed_dim),
            v_proj: Linear::new(&p / "v_proj", embed_dim, embed_dim),
            c_proj: Linear::new(&p / "c_proj", embed_dim, output_dim),
            heads,
        }
    }

    /// `[B, C, H, W] → [B, output_dim]`.
    fn forward(&self, x: &Tensor, probe: &mut Probe) -> Tensor {
        let (b, c, _, _) = x.size4().expect("[B, C, H, W]");
        let x = x.flatten(2, 3).permute([0, 2, 1]); // [B, HW, C]
        let x = Tensor::cat(&[x.mean_dim(1, true, None), x], 1) + &self.positional_embedding;
        let heads = attend(
            &self.q_proj.forward(&x.narrow(1, 0, 1)),
            &self.k_proj.forward(&x),
            &self.v_proj.forward(&x),
            self.heads,
            Mask::None,
        );
        let heads = probe.site("visual.attnpool.heads", heads, 1);
        let merged = merge_heads(&heads).reshape([b, c]);
        self.c_proj.forward(&merged)
    }
}

/// `visual` of a ModifiedResNet CLIP. `[B, 3, R, R] f32 → [B, embed_dim]`.
#[derive(Debug)]
pub(crate) struct ModifiedResNet {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    conv3: Conv,
    bn3: BatchNorm,
    stages: Vec<Vec<Bottleneck>>,
    attnpool: AttentionPool2d,
}

impl ModifiedResNet {
    pub(crate) fn new(
        p: nn::Path,
        layers: [i64; 4],
        output_dim: i64,
        heads: i64,
        image_resolution: i64,
        width: i64,
    ) -> ModifiedResNet {
        let mut inplanes = width;
        let mut stages = Vec::new();
        for (s, &blocks) in layers.iter().enumerate() {
            let planes = width << s;
            let stride = if s == 0 { 1 } else { 2 };
            let sp = &p / format!("layer{}", s + 1);
            let mut stage = vec![Bottleneck::new(&sp / 0, inplanes, planes, stride)];
            inplanes = planes * 4;
            for i in 1..blocks {
                stage.push(Bottleneck::new(&sp / i, inplanes, planes, 1));
            }
            stages.push(stage);
        }
        let embed_dim = width * 32;
        ModifiedResNet {
            conv1: Conv::new(&p / "conv1", 3, width / 2, 3, 2, 1),
            bn1: BatchNorm::new(&p / "bn1", width / 2),
            conv2: Conv::new(&p / "conv2", width / 2, width / 2, 3, 1, 1),
            bn2: BatchNorm::new(&p / "bn2", width / 2),
            conv3: Conv::new(&p / "conv3", width / 2, width, 3, 1, 1),
            bn3: BatchNorm::new(&p / "bn3", width),
            stages,
            attnpool: AttentionPool2d::new(
                &p / "attnpool",
                image_resolution / 32,
                embed_dim,
                heads,
                output_dim,
            ),
        }
    }

    /// `[B, 3, R, R] → [B, output_dim]`. `generation` is the model's weights generation: on the
    /// CPU in fp32 without gradients, activations run channels-last and every BatchNorm is
    /// folded into its conv (cached per generation).
    fn forward_resnet(&self, images: &Tensor, probe: &mut Probe, generation: u64) -> Tensor {
        let inference = kernels::uses_onednn(images);
        let fold = inference.then_some(generation);
        let images = if inference {
            kernels::channels_last(images)
        } else {
            images.shallow_clone()
        };
        let x = self.conv1.forward_bn(&self.bn1, &images, fold).relu();
        let x = self.conv2.forward_bn(&self.bn2, &x, fold).relu();
        let x = self.conv3.forward_bn(&self.bn3, &x, fold).relu();
        let mut x = avg_pool(&x, 2);
        for (s, stage) in self.stages.iter().enumerate() {
            for (i, block) in stage.iter().enumerate() {
                x = block.forward(&x, fold);
                x = probe.site(&format!("visual.layer{}.{i}", s + 1), x, 1);
            }
            x = probe.site(&format!("visual.layer{}", s + 1), x, 1);
        }
        let x = probe.site("visual.attnpool.input", x, 1);
        self.attnpool.forward(&x, probe)
    }
}

impl super::ImageTower for ModifiedResNet {
    fn forward(&self, images: &Tensor, probe: &mut Probe, weights_generation: u64) -> Tensor {
        self.forward_resnet(images, probe, weights_generation)
    }
}
