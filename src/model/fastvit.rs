//! timm's FastViT under open_clip's `visual.trunk` — MobileCLIP's MCi image encoders
//! (`fastvit_mci0`–`mci4`) — with its reparameterisable blocks folded for inference.
//!
//! Checkpoints hold the train-time network, and so does this module's variable store (keys 1:1
//! with timm's). The trunk:
//! - `stem`: three `MobileOneBlock`s (3×3 stride 2; depthwise 3×3 stride 2; 1×1), GELU;
//! - `stages.S`: from the second on a `downsample` `PatchEmbed` (`proj.0` a
//!   `ReparamLargeKernelConv`: depthwise 7×7 plus 3×3 of stride 2 to twice the channels, SE where
//!   `se_downsample`, GELU; `proj.1` a 1×1 `MobileOneBlock`), in attention stages a
//!   `RepConditionalPosEnc` (`pos_emb.pos_enc`, depthwise 7×7, plus the input), then `blocks.M`:
//!   `RepMixerBlock` (`token_mixer`: `x + γ·(mixer(x) − norm(x))`; `x + γ·mlp(x)`) or
//!   `AttentionBlock` (`x + γ₁·attn(norm(x))`, heads of 32, `qkv` without bias;
//!   `x + γ₂·mlp(x)`), `ConvMlp` = depthwise 7×7 conv + BN, `fc1` 1×1, GELU, `fc2` 1×1;
//! - `final_conv`: a `MobileOneBlock` (depthwise 3×3 to twice the channels) with SE and GELU;
//! - `head`: the average pool and the classifier `head.fc` (open_clip's projection), or
//!   open_clip's [`TimmHead`].
//!
//! A `MobileOneBlock` sums BatchNormed branches — `conv_kxk.N` (k×k conv + BN), `conv_scale`
//! (1×1 conv + BN), `identity` (a BN, where the shape is kept) —, then SE and the activation.
//! Without gradients (inference) each reparameterisable block runs as the one convolution
//! timm's `reparameterize()` makes of it — the BNs folded into their kernels, the 1×1 and 3×3
//! kernels zero-padded to the block's size, the identity as a centred one-hot kernel, RepMixer's
//! `x + γ·(mixer − norm)` and RepCPE's `x + pos_enc(x)` as single depthwise convolutions — and
//! `ConvMlp`'s conv–BN as one conv; the kernels are derived once per weights generation. With
//! gradients the train-time branches run, so gradients reach the checkpoint's parameters. The
//! two paths agree to float rounding (unit test here; parity against timm's train-time forward
//! and its `reparameterize_model` in `tests/parity.rs`).
//!
//! Probe sites: `visual.trunk.stages.S.blocks.M`, `visual.trunk.stages.S` and
//! `visual.trunk.final_conv` (`[B, C, H, W]`, channels as units).
//! Reference: timm 1.0 `models/fastvit.py` (`MobileOneBlock`, `ReparamLargeKernelConv`,
//! `RepMixer`, `RepConditionalPosEnc`, `ConvMlp`, `Attention`, `FastVit`, `fastvit_mci*`),
//! `layers/squeeze_excite.py` (`SEModule`), `layers/classifier.py` (`ClassifierHead`).

use tch::{nn, Kind, Tensor};

use super::batch_norm::{BatchNorm, FoldCache};
use super::config::{FastVitNorm, FastVitShape, TimmProj};
use super::kernels;
use super::probe::Probe;
use super::timm::TimmHead;
use super::transformer::{attend, merge_heads, param, Conv2d, LayerNorm2d, Linear, Mask};

/// A timm FastViT trunk and open_clip's head on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastVitCfg {
    pub shape: FastVitShape,
    pub embed_dim: i64,
    pub proj: TimmProj,
}

/// `nn.GELU()` (erf).
fn gelu(x: Tensor) -> Tensor {
    x.gelu("none")
}

/// A convolution's geometry, padded by `k / 2` (timm's `create_conv2d` for odd kernels).
#[derive(Debug, Clone, Copy)]
struct Geom {
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    groups: i64,
}

impl Geom {
    fn new(c_in: i64, c_out: i64, k: i64, stride: i64, groups: i64) -> Geom {
        Geom {
            c_in,
            c_out,
            k,
            stride,
            groups,
        }
    }

    /// A depthwise `k × k` convolution of stride 1 over `c` channels.
    fn depthwise(c: i64, k: i64) -> Geom {
        Geom::new(c, c, k, 1, c)
    }

    fn conv(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        x.conv2d(
            weight,
            bias,
            [self.stride, self.stride],
            [self.k / 2, self.k / 2],
            [1, 1],
            self.groups,
        )
    }

    /// The kernel of the identity map `[c_in, c_in / groups, k, k]` (timm's `id_tensor`): a one
    /// at the centre, at input channel `i mod (c_in / groups)` of output channel `i`.
    fn identity_kernel(&self, (kind, device): (Kind, tch::Device)) -> Tensor {
        let per_group = self.c_in / self.groups;
        let c = self.k / 2;
        Tensor::eye(per_group, (kind, device))
            .repeat([self.groups, 1])
            .view([self.c_in, per_group, 1, 1])
            .constant_pad_nd([c, c, c, c])
    }
}

/// Sums kernels and biases.
fn sum_kernels(parts: Vec<(Tensor, Tensor)>) -> (Tensor, Tensor) {
    parts
        .into_iter()
        .reduce(|(w, b), (w2, b2)| (w + w2, b + b2))
        .expect("a reparameterisable block has a branch")
}

/// `ConvNormAct(apply_act=False)`: a convolution without bias (`conv.weight`) and a BatchNorm
/// (`bn`).
#[derive(Debug)]
struct ConvBn {
    weight: Tensor,
    bn: BatchNorm,
    g: Geom,
    folded: FoldCache,
}

impl ConvBn {
    fn new(p: nn::Path, g: Geom) -> ConvBn {
        let per_group = g.c_in / g.groups;
        let fan_in = (per_group * g.k * g.k) as f64;
        ConvBn {
            weight: param(
                &(&p / "conv"),
                "weight",
                &[g.c_out, per_group, g.k, g.k],
                fan_in.powf(-0.5),
            ),
            bn: BatchNorm::new(&p / "bn", g.c_out),
            g,
            folded: FoldCache::default(),
        }
    }

    /// The BatchNorm folded into the kernel, zero-padded to side `k`.
    fn kernel_bias(&self, k: i64) -> (Tensor, Tensor) {
        let (w, b) = self.bn.fold(&self.weight, None);
        let pad = (k - self.g.k) / 2;
        (w.constant_pad_nd([pad, pad, pad, pad]), b)
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        match fold {
            Some(generation) => {
                let (w, b) = self.folded.get(generation, || self.kernel_bias(self.g.k));
                self.g.conv(x, &w, Some(&b))
            }
            None => self.bn.forward(&self.g.conv(x, &self.weight, None)),
        }
    }
}

/// timm's `SEModule`: `x · sigmoid(fc2(relu(fc1(mean_hw(x)))))`.
#[derive(Debug)]
struct SqueezeExcite {
    fc1: Conv2d,
    fc2: Conv2d,
}

impl SqueezeExcite {
    fn new(p: nn::Path, c: i64, reduced: i64) -> SqueezeExcite {
        SqueezeExcite {
            fc1: Conv2d::new(&p / "fc1", c, reduced, 1),
            fc2: Conv2d::new(&p / "fc2", reduced, c, 1),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.mean_dim([2i64, 3].as_slice(), true, x.kind());
        let s = self.fc1.forward(&s, 1, 0, 1).relu();
        x * self.fc2.forward(&s, 1, 0, 1).sigmoid()
    }
}

/// timm's `make_divisible(v, divisor, round_limit=0)`: `v` rounded half up to a multiple of
/// `divisor`, at least `divisor`.
fn make_divisible(v: f64, divisor: i64) -> i64 {
    let d = divisor as f64;
    (((v + d / 2.0) as i64) / divisor * divisor).max(divisor)
}

/// The options of a `MobileOneBlock`.
#[derive(Debug, Clone, Copy)]
struct MobileOneOpts {
    use_se: bool,
    use_act: bool,
    scale_branch: bool,
    conv_branches: i64,
}

impl MobileOneOpts {
    /// timm's defaults: GELU, the scale branch, one conv branch, no SE.
    const PLAIN: MobileOneOpts = MobileOneOpts {
        use_se: false,
        use_act: true,
        scale_branch: true,
        conv_branches: 1,
    };
}

/// `MobileOneBlock`.
#[derive(Debug)]
struct MobileOne {
    g: Geom,
    identity: Option<BatchNorm>,
    conv_kxk: Vec<ConvBn>,
    conv_scale: Option<ConvBn>,
    se: Option<SqueezeExcite>,
    act: bool,
    folded: FoldCache,
}

impl MobileOne {
    fn new(p: nn::Path, g: Geom, o: MobileOneOpts) -> MobileOne {
        MobileOne {
            identity: (g.c_in == g.c_out && g.stride == 1)
                .then(|| BatchNorm::new(&p / "identity", g.c_in)),
            conv_kxk: (0..o.conv_branches)
                .map(|i| ConvBn::new(&p / "conv_kxk" / i, g))
                .collect(),
            conv_scale: (g.k > 1 && o.scale_branch)
                .then(|| ConvBn::new(&p / "conv_scale", Geom { k: 1, ..g })),
            // `SqueezeExcite(out_chs, rd_divisor=1)`: rd_ratio 1/16.
            se: o.use_se.then(|| {
                SqueezeExcite::new(&p / "se", g.c_out, make_divisible(g.c_out as f64 / 16.0, 1))
            }),
            act: o.use_act,
            g,
            folded: FoldCache::default(),
        }
    }

    /// The branches as one kernel and bias (`_get_kernel_bias`).
    fn kernel_bias(&self) -> (Tensor, Tensor) {
        let k = self.g.k;
        let mut parts: Vec<(Tensor, Tensor)> =
            self.conv_kxk.iter().map(|c| c.kernel_bias(k)).collect();
        parts.extend(self.conv_scale.iter().map(|c| c.kernel_bias(k)));
        parts.extend(
            self.identity
                .iter()
                .map(|bn| bn.fold(&self.g.identity_kernel(bn.options()), None)),
        );
        sum_kernels(parts)
    }

    /// The sum of the branches, before SE and the activation.
    fn branches(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        if let Some(generation) = fold {
            let (w, b) = self.folded.get(generation, || self.kernel_bias());
            return self.g.conv(x, &w, Some(&b));
        }
        let mut out: Option<Tensor> = self.identity.as_ref().map(|bn| bn.forward(x));
        for c in self.conv_scale.iter().chain(&self.conv_kxk) {
            let y = c.forward(x, None);
            out = Some(match out {
                Some(o) => o + y,
                None => y,
            });
        }
        out.expect("a MobileOne block has a branch")
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        let mut y = self.branches(x, fold);
        if let Some(se) = &self.se {
            y = se.forward(&y);
        }
        if self.act {
            y = gelu(y);
        }
        y
    }
}

/// `ReparamLargeKernelConv`: `act(se(bn(conv_k(x)) + bn(conv_3(x))))`.
#[derive(Debug)]
struct LargeKernel {
    large_conv: ConvBn,
    small_conv: ConvBn,
    se: Option<SqueezeExcite>,
    folded: FoldCache,
}

impl LargeKernel {
    fn new(p: nn::Path, g: Geom, small: i64, use_se: bool) -> LargeKernel {
        LargeKernel {
            large_conv: ConvBn::new(&p / "large_conv", g),
            small_conv: ConvBn::new(&p / "small_conv", Geom { k: small, ..g }),
            // `SqueezeExcite(out_chs, rd_ratio=0.25)`: rd_divisor 8.
            se: use_se.then(|| {
                SqueezeExcite::new(&p / "se", g.c_out, make_divisible(g.c_out as f64 / 4.0, 8))
            }),
            folded: FoldCache::default(),
        }
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        let g = self.large_conv.g;
        let mut y = match fold {
            Some(generation) => {
                let (w, b) = self.folded.get(generation, || {
                    sum_kernels(vec![
                        self.large_conv.kernel_bias(g.k),
                        self.small_conv.kernel_bias(g.k),
                    ])
                });
                g.conv(x, &w, Some(&b))
            }
            None => self.large_conv.forward(x, None) + self.small_conv.forward(x, None),
        };
        if let Some(se) = &self.se {
            y = se.forward(&y);
        }
        // `lkc_use_act=True` in every MCi model function.
        gelu(y)
    }
}

/// `PatchEmbed`: the stride-2 large-kernel conv to the stage's channels, then a 1×1
/// `MobileOneBlock`.
#[derive(Debug)]
struct PatchEmbed {
    lkc: LargeKernel,
    pointwise: MobileOne,
}

impl PatchEmbed {
    fn new(p: nn::Path, c_in: i64, c_out: i64, use_se: bool) -> PatchEmbed {
        let proj = &p / "proj";
        PatchEmbed {
            // `down_patch_size` 7, `down_stride` 2, `group_size=1`: one group per input channel.
            lkc: LargeKernel::new(&proj / "0", Geom::new(c_in, c_out, 7, 2, c_in), 3, use_se),
            pointwise: MobileOne::new(
                &proj / "1",
                Geom::new(c_out, c_out, 1, 1, 1),
                MobileOneOpts::PLAIN,
            ),
        }
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        self.pointwise.forward(&self.lkc.forward(x, fold), fold)
    }
}

/// `RepConditionalPosEnc`: `x + pos_enc(x)`, a depthwise 7×7 convolution with bias.
#[derive(Debug)]
struct RepCpe {
    pos_enc: Conv2d,
    g: Geom,
    folded: FoldCache,
}

impl RepCpe {
    fn new(p: nn::Path, c: i64) -> RepCpe {
        RepCpe {
            pos_enc: Conv2d::new(&p / "pos_enc", 1, c, 7),
            g: Geom::depthwise(c, 7),
            folded: FoldCache::default(),
        }
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        let w = &self.pos_enc.weight;
        match fold {
            Some(generation) => {
                let (w, b) = self.folded.get(generation, || {
                    (
                        w + self.g.identity_kernel((w.kind(), w.device())),
                        self.pos_enc.bias.copy(),
                    )
                });
                self.g.conv(x, &w, Some(&b))
            }
            None => self.g.conv(x, w, Some(&self.pos_enc.bias)) + x,
        }
    }
}

/// `RepMixer`: `x + γ·(mixer(x) − norm(x))`, `mixer` a depthwise 3×3 `MobileOneBlock` without
/// activation, `norm` one with only its identity branch.
#[derive(Debug)]
struct RepMixer {
    norm: MobileOne,
    mixer: MobileOne,
    gamma: Tensor,
    g: Geom,
    folded: FoldCache,
}

impl RepMixer {
    fn new(p: nn::Path, c: i64) -> RepMixer {
        let g = Geom::depthwise(c, 3);
        let bare = MobileOneOpts {
            use_act: false,
            ..MobileOneOpts::PLAIN
        };
        RepMixer {
            norm: MobileOne::new(
                &p / "norm",
                g,
                MobileOneOpts {
                    scale_branch: false,
                    conv_branches: 0,
                    ..bare
                },
            ),
            mixer: MobileOne::new(&p / "mixer", g, bare),
            gamma: layer_scale(&(&p / "layer_scale"), c),
            g,
            folded: FoldCache::default(),
        }
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        match fold {
            Some(generation) => {
                let (w, b) = self.folded.get(generation, || {
                    let (wm, bm) = self.mixer.kernel_bias();
                    let (wn, bn) = self.norm.kernel_bias();
                    let id = self.g.identity_kernel((wm.kind(), wm.device()));
                    (
                        id + self.gamma.unsqueeze(-1) * (wm - wn),
                        self.gamma.view([-1]) * (bm - bn),
                    )
                });
                self.g.conv(x, &w, Some(&b))
            }
            None => x + &self.gamma * (self.mixer.forward(x, None) - self.norm.forward(x, None)),
        }
    }
}

/// `LayerScale2d`'s `gamma` `[C, 1, 1]` (initialised at 1e-5 as timm does).
fn layer_scale(p: &nn::Path, c: i64) -> Tensor {
    p.var("gamma", &[c, 1, 1], nn::Init::Const(1e-5))
}

/// `ConvMlp`: `fc2(gelu(fc1(bn(dwconv7(x)))))`.
#[derive(Debug)]
struct ConvMlp {
    conv: ConvBn,
    fc1: Conv2d,
    fc2: Conv2d,
}

impl ConvMlp {
    fn new(p: nn::Path, c: i64, hidden: i64) -> ConvMlp {
        ConvMlp {
            conv: ConvBn::new(&p / "conv", Geom::depthwise(c, 7)),
            fc1: Conv2d::new(&p / "fc1", c, hidden, 1),
            fc2: Conv2d::new(&p / "fc2", hidden, c, 1),
        }
    }

    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        let x = self.conv.forward(x, fold);
        let x = gelu(self.fc1.forward(&x, 1, 0, 1));
        self.fc2.forward(&x, 1, 0, 1)
    }
}

/// The norm before an attention block's token mixer.
#[derive(Debug)]
enum Norm2d {
    Batch(BatchNorm),
    Layer(LayerNorm2d),
}

impl Norm2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm2d::Batch(bn) => bn.forward(x),
            Norm2d::Layer(ln) => ln.forward(x),
        }
    }
}

/// FastViT's `Attention` over the `H·W` positions of `[B, C, H, W]`: heads of 32, `qkv`
/// without bias, `proj` with one.
#[derive(Debug)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, c: i64) -> Attention {
        Attention {
            qkv: Linear::with_bias(&p / "qkv", c, 3 * c, false),
            proj: Linear::new(&p / "proj", c, c),
            heads: c / 32,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("[B, C, H, W]");
        let tokens = x.flatten(2, 3).transpose(1, 2);
        let qkv = self.qkv.forward(&tokens).chunk(3, -1);
        let heads = attend(&qkv[0], &qkv[1], &qkv[2], self.heads, Mask::None);
        self.proj
            .forward(&merge_heads(&heads))
            .transpose(1, 2)
            .reshape([b, c, h, w])
    }
}

/// A stage's block: `RepMixerBlock` or `AttentionBlock`.
#[derive(Debug)]
enum Block {
    RepMixer {
        token_mixer: Box<RepMixer>,
        mlp: ConvMlp,
        layer_scale: Tensor,
    },
    Attention {
        norm: Norm2d,
        token_mixer: Attention,
        layer_scale_1: Tensor,
        mlp: ConvMlp,
        layer_scale_2: Tensor,
    },
}

impl Block {
    fn forward(&self, x: &Tensor, fold: Option<u64>) -> Tensor {
        match self {
            Block::RepMixer {
                token_mixer,
                mlp,
                layer_scale,
            } => {
                let x = token_mixer.forward(x, fold);
                &x + layer_scale * mlp.forward(&x, fold)
            }
            Block::Attention {
                norm,
                token_mixer,
                layer_scale_1,
                mlp,
                layer_scale_2,
            } => {
                let x = x + layer_scale_1 * token_mixer.forward(&norm.forward(x));
                &x + layer_scale_2 * mlp.forward(&x, fold)
            }
        }
    }
}

/// `FastVitStage`.
#[derive(Debug)]
struct Stage {
    downsample: Option<PatchEmbed>,
    pos_emb: Option<RepCpe>,
    blocks: Vec<Block>,
}

/// timm's `FastVit` (MCi) and open_clip's head.
#[derive(Debug)]
pub(crate) struct FastVit {
    stem: [MobileOne; 3],
    stages: Vec<Stage>,
    final_conv: MobileOne,
    head: TimmHead,
}

impl FastVit {
    pub(crate) fn new(visual: nn::Path, cfg: FastVitCfg) -> FastVit {
        let s = cfg.shape;
        let t = &visual / "trunk";
        let st = &t / "stem";
        let d0 = s.dims[0];
        let stem_opts = MobileOneOpts {
            scale_branch: s.stem_scale_branch,
            ..MobileOneOpts::PLAIN
        };
        let stem = [
            MobileOne::new(&st / "0", Geom::new(3, d0, 3, 2, 1), stem_opts),
            MobileOne::new(&st / "1", Geom::new(d0, d0, 3, 2, d0), stem_opts),
            MobileOne::new(&st / "2", Geom::new(d0, d0, 1, 1, 1), stem_opts),
        ];
        let stages = (0..s.stages)
            .map(|i| {
                let p = &t / "stages" / i;
                let (c_in, c) = (s.dims[i.saturating_sub(1)], s.dims[i]);
                let attention = i >= s.attention_from;
                let hidden = s.mlp_ratio * c;
                let blocks = (0..s.depths[i])
                    .map(|m| {
                        let b = &p / "blocks" / m;
                        if attention {
                            Block::Attention {
                                norm: match s.attention_norm {
                                    FastVitNorm::BatchNorm => {
                                        Norm2d::Batch(BatchNorm::new(&b / "norm", c))
                                    }
                                    FastVitNorm::LayerNorm => {
                                        Norm2d::Layer(LayerNorm2d::new(&b / "norm", c, 1e-5))
                                    }
                                },
                                token_mixer: Attention::new(&b / "token_mixer", c),
                                layer_scale_1: layer_scale(&(&b / "layer_scale_1"), c),
                                mlp: ConvMlp::new(&b / "mlp", c, hidden),
                                layer_scale_2: layer_scale(&(&b / "layer_scale_2"), c),
                            }
                        } else {
                            Block::RepMixer {
                                token_mixer: Box::new(RepMixer::new(&b / "token_mixer", c)),
                                mlp: ConvMlp::new(&b / "mlp", c, hidden),
                                layer_scale: layer_scale(&(&b / "layer_scale"), c),
                            }
                        }
                    })
                    .collect();
                Stage {
                    // `downsamples[i] or prev_dim != embed_dims[i]`: every stage after the first.
                    downsample: (i > 0)
                        .then(|| PatchEmbed::new(&p / "downsample", c_in, c, s.se_downsample[i])),
                    pos_emb: attention.then(|| RepCpe::new(&p / "pos_emb", c)),
                    blocks,
                }
            })
            .collect();
        let last = s.dims[s.stages - 1];
        let features = 2 * last;
        let head = match cfg.proj {
            TimmProj::Classifier => {
                TimmHead::Classifier(Linear::new(&t / "head" / "fc", features, cfg.embed_dim))
            }
            proj => TimmHead::new(&visual, proj, features, cfg.embed_dim),
        };
        FastVit {
            stem,
            stages,
            final_conv: MobileOne::new(
                &t / "final_conv",
                Geom::new(last, features, 3, 1, last),
                MobileOneOpts {
                    use_se: true,
                    ..MobileOneOpts::PLAIN
                },
            ),
            head,
        }
    }

    /// `[B, 3, R, R] → [B, embed_dim]`; `fold`: the weights generation to run reparameterised
    /// at, or `None` for the train-time branches.
    fn forward_with(&self, images: &Tensor, probe: &mut Probe, fold: Option<u64>) -> Tensor {
        let mut x = images.shallow_clone();
        for block in &self.stem {
            x = block.forward(&x, fold);
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if let Some(d) = &stage.downsample {
                x = d.forward(&x, fold);
            }
            if let Some(pe) = &stage.pos_emb {
                x = pe.forward(&x, fold);
            }
            for (m, block) in stage.blocks.iter().enumerate() {
                x = block.forward(&x, fold);
                x = probe.site(&format!("visual.trunk.stages.{i}.blocks.{m}"), x, 1);
            }
            x = probe.site(&format!("visual.trunk.stages.{i}"), x, 1);
        }
        let x = probe.site(
            "visual.trunk.final_conv",
            self.final_conv.forward(&x, fold),
            1,
        );
        let pooled = x.mean_dim([2i64, 3].as_slice(), false, x.kind());
        self.head.forward(&pooled)
    }
}

impl super::ImageTower for FastVit {
    fn forward(&self, images: &Tensor, probe: &mut Probe, weights_generation: u64) -> Tensor {
        let inference = !kernels::grad_enabled() && !images.requires_grad();
        self.forward_with(images, probe, inference.then_some(weights_generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::FastVitShape;

    /// A small MCi-shaped trunk: two RepMixer stages, then attention stages (with the
    /// BatchNorm or LayerNorm), SE in the downsampling.
    fn tiny(stages: usize, attention_norm: FastVitNorm, stem_scale_branch: bool) -> FastVitCfg {
        FastVitCfg {
            shape: FastVitShape {
                stages,
                depths: [1, 2, 1, 2, 1],
                dims: [16, 32, 64, 64, 128],
                mlp_ratio: 3,
                se_downsample: [false, false, true, true, false],
                attention_from: 2,
                attention_norm,
                stem_scale_branch,
            },
            embed_dim: 24,
            proj: TimmProj::Classifier,
        }
    }

    /// Randomises every parameter (BatchNorm statistics and layer scales included) so that
    /// no branch is negligible.
    fn randomise(vs: &nn::VarStore) {
        let _g = tch::no_grad_guard();
        for (name, mut v) in vs.variables() {
            let r = Tensor::randn_like(&v);
            if name.ends_with("running_var") {
                v.copy_(&(r.abs() * 0.5 + 0.5));
            } else if name.ends_with("gamma") {
                v.copy_(&(r * 0.3));
            } else if name.ends_with("bn.weight") || name.ends_with("identity.weight") {
                v.copy_(&(r * 0.2 + 1.0));
            } else {
                let _ = v.g_add_(&(r * 0.1));
            }
        }
    }

    #[test]
    fn folded_blocks_equal_the_train_time_branches() {
        tch::manual_seed(3);
        for cfg in [
            tiny(4, FastVitNorm::BatchNorm, true),
            tiny(5, FastVitNorm::LayerNorm, false),
        ] {
            let mut vs = nn::VarStore::new(tch::Device::Cpu);
            let tower = FastVit::new(vs.root() / "visual", cfg);
            randomise(&vs);
            // In f64, so that a wrong fold cannot hide in float rounding.
            vs.double();
            let images = Tensor::randn([2, 3, 96, 96], (Kind::Double, tch::Device::Cpu));
            let _g = tch::no_grad_guard();
            let unfolded = tower.forward_with(&images, &mut Probe::none(), None);
            let folded = tower.forward_with(&images, &mut Probe::none(), Some(0));
            assert_eq!(unfolded.size(), vec![2, 24]);
            let scale = f64::try_from(unfolded.abs().max()).unwrap();
            let diff = f64::try_from((&unfolded - &folded).abs().max()).unwrap();
            assert!(scale > 1e-2, "outputs too small to compare: {scale}");
            assert!(
                diff <= 1e-9 * scale.max(1.0),
                "folded differs by {diff} (scale {scale})"
            );
            // A second pass of the same generation reuses the cached kernels.
            let again = tower.forward_with(&images, &mut Probe::none(), Some(0));
            assert!(again.equal(&folded));
        }
    }

    #[test]
    fn identity_kernel_is_the_identity() {
        for (c_in, groups, k) in [(8, 8, 3), (8, 1, 3), (6, 2, 1), (4, 4, 7)] {
            let g = Geom::new(c_in, c_in, k, 1, groups);
            let x = Tensor::randn([1, c_in, 5, 5], (Kind::Float, tch::Device::Cpu));
            let y = g.conv(
                &x,
                &g.identity_kernel((Kind::Float, tch::Device::Cpu)),
                None,
            );
            assert!(
                y.allclose(&x, 0.0, 1e-6, false),
                "c {c_in} groups {groups} k {k}"
            );
        }
    }

    #[test]
    fn squeeze_excite_widths_follow_make_divisible() {
        // MobileOne's SE (rd_divisor 1) on MCi2's final 1280 channels; the downsampling SE
        // (ratio 1/4, divisor 8) on 320 and 160.
        assert_eq!(make_divisible(1280.0 / 16.0, 1), 80);
        assert_eq!(make_divisible(1024.0 / 16.0, 1), 64);
        assert_eq!(make_divisible(320.0 / 4.0, 8), 80);
        assert_eq!(make_divisible(36.0 / 4.0, 8), 8);
        assert_eq!(make_divisible(100.0 / 16.0, 1), 6);
    }
}
