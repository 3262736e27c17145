//! The residual attention transformer shared by the ViT image towers and the text tower
//! (open_clip's `Transformer` / `ResidualAttentionBlock`: fused `in_proj`, MLP `c_fc` → activation
//! → `c_proj` of any width, GELU or QuickGELU, optional LayerScale `ls_1` / `ls_2`; timm's
//! `Block`, the same computation under timm's names, [`Naming`]), plus the small parameter
//! helpers used by every tower. Field names spell the checkpoint keys.

use tch::{nn, Tensor};

use super::config::Activation;
use super::kernels;
use super::probe::Probe;

/// The shape and options of every block of one [`Transformer`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockCfg {
    /// Residual width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// MLP hidden width.
    pub mlp_width: i64,
    /// MLP activation.
    pub act: Activation,
    /// LayerScale after attention and MLP (`ls_1.gamma`, `ls_2.gamma`).
    pub layer_scale: bool,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
}

/// Creates a trainable parameter at `p / name`, normal(0, std) initialised.
pub(crate) fn param(p: &nn::Path, name: &str, shape: &[i64], std: f64) -> Tensor {
    p.var(
        name,
        shape,
        nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )
}

/// `nn.Conv2d` with bias: its weight `[out, in / groups, k, k]` and bias.
#[derive(Debug)]
pub(crate) struct Conv2d {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Conv2d {
    /// `in_ch` is the input channels of each group.
    pub(crate) fn new(p: nn::Path, in_ch: i64, out_ch: i64, kernel: i64) -> Conv2d {
        let fan_in = (in_ch * kernel * kernel) as f64;
        Conv2d {
            weight: param(
                &p,
                "weight",
                &[out_ch, in_ch, kernel, kernel],
                fan_in.powf(-0.5),
            ),
            bias: p.var("bias", &[out_ch], nn::Init::Const(0.0)),
        }
    }

    /// The convolution of `x` `[B, C, H, W]`, stride `stride`, padding `pad`, `groups` groups.
    pub(crate) fn forward(&self, x: &Tensor, stride: i64, pad: i64, groups: i64) -> Tensor {
        x.conv2d(
            &self.weight,
            Some(&self.bias),
            [stride, stride],
            [pad, pad],
            [1, 1],
            groups,
        )
    }

    /// The same of channels-last `x` `[B, H, W, C]`; channels-last out.
    pub(crate) fn forward_nhwc(&self, x: &Tensor, stride: i64, pad: i64, groups: i64) -> Tensor {
        self.forward(&x.permute([0, 3, 1, 2]), stride, pad, groups)
            .permute([0, 2, 3, 1])
    }
}

/// timm's `LayerNorm2d`: a [`LayerNorm`] over the channels of `[B, C, H, W]`.
#[derive(Debug)]
pub(crate) struct LayerNorm2d(LayerNorm);

impl LayerNorm2d {
    pub(crate) fn new(p: nn::Path, c: i64, eps: f64) -> LayerNorm2d {
        LayerNorm2d(LayerNorm::with_eps(p, c, eps))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        self.0
            .forward(&x.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2])
    }
}

/// A `LayerNorm` with `weight` and `bias`.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn with_eps(p: nn::Path, dim: i64, eps: f64) -> LayerNorm {
        LayerNorm {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            bias: p.var("bias", &[dim], nn::Init::Const(0.0)),
            dim,
            eps,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// A `Linear` with `weight` `[out, in]` and (usually) `bias`.
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(p: nn::Path, in_dim: i64, out_dim: i64) -> Linear {
        Linear::with_bias(p, in_dim, out_dim, true)
    }

    /// `nn.Linear(in_dim, out_dim, bias=bias)`.
    pub(crate) fn with_bias(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Linear {
        Linear {
            weight: param(&p, "weight", &[out_dim, in_dim], (in_dim as f64).powf(-0.5)),
            bias: bias.then(|| p.var("bias", &[out_dim], nn::Init::Const(0.0))),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        kernels::linear(x, &self.weight, self.bias.as_ref())
    }

    /// `residual + forward(x)`, the add fused into the kernel where it can be.
    pub(crate) fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Tensor {
        kernels::linear_add(x, &self.weight, self.bias.as_ref(), residual)
    }
}

/// The module names of a block stack: open_clip's (`resblocks.N.ln_1`, `attn.in_proj_weight`,
/// `attn.out_proj`, `mlp.c_fc`, `ls_1.gamma`, …) or timm's (`blocks.N.norm1`, `attn.qkv`,
/// `attn.proj`, `mlp.fc1`, `ls1.gamma`, …). The computation is the same: timm's fused `qkv`
/// stacks q, k and v by rows exactly as `in_proj_weight` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming {
    OpenClip,
    Timm,
}

impl Naming {
    /// (blocks, norm 1, layer scale 1, norm 2, layer scale 2, MLP in, MLP out).
    fn names(self) -> [&'static str; 7] {
        match self {
            Naming::OpenClip => [
                "resblocks",
                "ln_1",
                "ls_1",
                "ln_2",
                "ls_2",
                "c_fc",
                "c_proj",
            ],
            Naming::Timm => ["blocks", "norm1", "ls1", "norm2", "ls2", "fc1", "fc2"],
        }
    }
}

/// The MLP activation of `act` on `x`.
pub(crate) fn activate(x: Tensor, act: Activation) -> Tensor {
    match act {
        Activation::QuickGelu => quick_gelu(x),
        Activation::Gelu => x.gelu("none"),
        Activation::GeluTanh => x.gelu("tanh"),
    }
}

/// `x · σ(1.702 x)`. In inference (no gradient recorded) on a CPU fp32 tensor it overwrites `x`
/// in one pass (`kernels::quick_gelu_`); elsewhere ATen's ops write one new buffer.
fn quick_gelu(mut x: Tensor) -> Tensor {
    if kernels::grad_enabled() {
        return &x * (&x * 1.702).sigmoid();
    }
    if kernels::quick_gelu_(&mut x) {
        return x;
    }
    let mut out = &x * 1.702;
    let _ = out.sigmoid_();
    let _ = out.g_mul_(&x);
    out
}

/// Splits `[B, L, H*Dh]` into `[B, H, L, Dh]`.
fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, l, w) = x.size3().expect("[B, L, W]");
    x.view([b, l, heads, w / heads]).transpose(1, 2)
}

/// Which keys each query may attend to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mask<'a> {
    /// Every key.
    None,
    /// Keys at or before the query's position (the text tower).
    Causal,
    /// An additive mask (0 or -inf) broadcastable to `[B, H, Lq, L]` (CoCa's padding mask).
    Additive(&'a Tensor),
}

/// Scaled dot-product attention of the projected queries `q` `[B, Lq, W]` over the projected
/// keys and values `k`, `v` `[B, L, W]`, split into `heads`: the per-head outputs
/// `[B, H, Lq, W/H]` (a probe site), before [`merge_heads`].
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, mask: Mask) -> Tensor {
    let (attn_mask, causal) = match mask {
        Mask::None => (None, false),
        Mask::Causal => (None, true),
        Mask::Additive(m) => (Some(m), false),
    };
    kernels::attention(
        &split_heads(q, heads),
        &split_heads(k, heads),
        &split_heads(v, heads),
        attn_mask,
        causal,
    )
}

/// `[B, H, L, Dh]` → `[B, L, H*Dh]`, the inverse of the split in [`attend`].
pub(crate) fn merge_heads(heads: &Tensor) -> Tensor {
    let (b, h, l, d) = heads.size4().expect("[B, H, L, Dh]");
    heads.transpose(1, 2).reshape([b, l, h * d])
}

/// `nn.MultiheadAttention` with a fused `in_proj_weight` `[3W, W]` (OpenAI naming).
#[derive(Debug)]
pub(crate) struct MultiheadAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    heads: i64,
}

impl MultiheadAttention {
    fn new(p: nn::Path, width: i64, heads: i64, naming: Naming) -> MultiheadAttention {
        let std = (width as f64).powf(-0.5);
        let (in_proj_weight, in_proj_bias, out) = match naming {
            Naming::OpenClip => (
                param(&p, "in_proj_weight", &[3 * width, width], std),
                p.var("in_proj_bias", &[3 * width], nn::Init::Const(0.0)),
                "out_proj",
            ),
            Naming::Timm => {
                let qkv = &p / "qkv";
                (
                    param(&qkv, "weight", &[3 * width, width], std),
                    qkv.var("bias", &[3 * width], nn::Init::Const(0.0)),
                    "proj",
                )
            }
        };
        MultiheadAttention {
            in_proj_weight,
            in_proj_bias,
            out_proj: Linear::new(&p / out, width, width),
            heads,
        }
    }

    /// `residual` + `gamma` · self-attention over `x` `[B, L, W]` (`gamma`: LayerScale, or none)
    /// under `mask`.
    fn forward_add(
        &self,
        x: &Tensor,
        residual: &Tensor,
        mask: Mask,
        gamma: Option<&Tensor>,
        site: &str,
        probe: &mut Probe,
    ) -> Tensor {
        let w = x.size3().expect("[B, L, W]").2;
        if let (Mask::None, None, Some(out_bias)) = (mask, gamma, &self.out_proj.bias) {
            if !probe.touches(site)
                && !x.requires_grad()
                && !kernels::uses_onednn(x)
                && !kernels::autocast_active(x.device())
            {
                // libtorch's fused kernel (what nn.MultiheadAttention runs in eval under no_grad).
                let (out, _) = Tensor::internal_native_multi_head_attention(
                    x,
                    x,
                    x,
                    w,
                    self.heads,
                    &self.in_proj_weight,
                    &self.in_proj_bias,
                    &self.out_proj.weight,
                    out_bias,
                    None::<Tensor>,
                    false,
                    false,
                    None,
                );
                return residual + out;
            }
        }
        let qkv = kernels::linear(x, &self.in_proj_weight, Some(&self.in_proj_bias));
        let parts = qkv.chunk(3, -1);
        let heads = attend(&parts[0], &parts[1], &parts[2], self.heads, mask);
        let heads = probe.site(site, heads, 1);
        match gamma {
            None => self.out_proj.forward_add(&merge_heads(&heads), residual),
            Some(g) => residual + self.out_proj.forward(&merge_heads(&heads)) * g,
        }
    }

    /// `residual` `[B, 1, W]` + the first token's row of non-causal self-attention over `x`
    /// `[B, L, W]`: the query of token 0 only, the keys and values of every token. Equal to
    /// `forward_add(x, …)[:, :1]` at a fraction of the cost.
    fn forward_first_token_add(
        &self,
        x: &Tensor,
        residual: &Tensor,
        gamma: Option<&Tensor>,
    ) -> Tensor {
        let w = x.size()[2];
        let q = kernels::linear(
            &x.narrow(1, 0, 1),
            &self.in_proj_weight.narrow(0, 0, w),
            Some(&self.in_proj_bias.narrow(0, 0, w)),
        );
        let kv = kernels::linear(
            x,
            &self.in_proj_weight.narrow(0, w, 2 * w),
            Some(&self.in_proj_bias.narrow(0, w, 2 * w)),
        );
        let parts = kv.chunk(2, -1);
        let heads = attend(&q, &parts[0], &parts[1], self.heads, Mask::None);
        match gamma {
            None => self.out_proj.forward_add(&merge_heads(&heads), residual),
            Some(g) => residual + self.out_proj.forward(&merge_heads(&heads)) * g,
        }
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

/// open_clip's `LayerScale`: a learned per-channel `gamma`.
#[derive(Debug)]
struct LayerScale {
    gamma: Tensor,
}

/// `ResidualAttentionBlock`: `x + ls_1(attn(ln_1(x)))`, then `x + ls_2(mlp(ln_2(x)))`.
#[derive(Debug)]
struct ResidualAttentionBlock {
    attn: MultiheadAttention,
    ln_1: LayerNorm,
    ls_1: Option<LayerScale>,
    mlp: Mlp,
    ln_2: LayerNorm,
    ls_2: Option<LayerScale>,
}

impl ResidualAttentionBlock {
    /// `x + ls_2(mlp(ln_2(x)))`, the MLP's hidden activation through `site`.
    fn mlp_add(&self, x: &Tensor, act: Activation, site: &str, probe: &mut Probe) -> Tensor {
        let hidden = activate(self.mlp.c_fc.forward(&self.ln_2.forward(x)), act);
        let hidden = probe.site(site, hidden, -1);
        match &self.ls_2 {
            None => self.mlp.c_proj.forward_add(&hidden, x),
            Some(ls) => x + self.mlp.c_proj.forward(&hidden) * &ls.gamma,
        }
    }
}

/// A stack of residual attention blocks (`<prefix>.resblocks.N`).
#[derive(Debug)]
pub(crate) struct Transformer {
    resblocks: Vec<ResidualAttentionBlock>,
    /// Site names per block: (block, heads, mlp).
    sites: Vec<[String; 3]>,
    act: Activation,
}

impl Transformer {
    /// Builds `layers` blocks under `p` (whose path is `prefix`, e.g. `visual.transformer`), with
    /// open_clip's module names.
    pub(crate) fn new(p: nn::Path, prefix: &str, layers: i64, c: BlockCfg) -> Transformer {
        Transformer::with_naming(p, prefix, layers, c, Naming::OpenClip)
    }

    /// Builds `layers` blocks under `p` (path `prefix`) with `naming`'s module names.
    pub(crate) fn with_naming(
        p: nn::Path,
        prefix: &str,
        layers: i64,
        c: BlockCfg,
        naming: Naming,
    ) -> Transformer {
        let [blocks, norm1, ls1, norm2, ls2, fc1, fc2] = naming.names();
        let rp = &p / blocks;
        let mut resblocks = Vec::new();
        let mut sites = Vec::new();
        let width = c.width;
        let ls = |bp: nn::Path| {
            c.layer_scale.then(|| LayerScale {
                gamma: bp.var("gamma", &[width], nn::Init::Const(1.0)),
            })
        };
        for i in 0..layers {
            let bp = &rp / i;
            let mp = &bp / "mlp";
            resblocks.push(ResidualAttentionBlock {
                attn: MultiheadAttention::new(&bp / "attn", width, c.heads, naming),
                ln_1: LayerNorm::with_eps(&bp / norm1, width, c.ln_eps),
                ls_1: ls(&bp / ls1),
                mlp: Mlp {
                    c_fc: Linear::new(&mp / fc1, width, c.mlp_width),
                    c_proj: Linear::new(&mp / fc2, c.mlp_width, width),
                },
                ln_2: LayerNorm::with_eps(&bp / norm2, width, c.ln_eps),
                ls_2: ls(&bp / ls2),
            });
            let name = format!("{prefix}.{blocks}.{i}");
            sites.push([
                name.clone(),
                format!("{name}.attn.heads"),
                format!("{name}.mlp.{fc1}"),
            ]);
        }
        Transformer {
            resblocks,
            sites,
            act: c.act,
        }
    }

    /// `[B, L, W] → [B, L, W]`.
    pub(crate) fn forward(&self, x: &Tensor, mask: Mask, probe: &mut Probe) -> Tensor {
        let mut x = x.shallow_clone();
        for i in 0..self.resblocks.len() {
            x = self.block_forward(i, &x, mask, probe);
        }
        x
    }

    /// The first token's output `[B, W]` of the non-causal stack, equal to
    /// `forward(x, Mask::None, probe)[:, 0]`. Only token 0 of the last block feeds the result, so that
    /// block computes its query, attention output and MLP for token 0 alone (keys and values still
    /// come from every token): about 6.5 % fewer multiply-adds for ViT-B/32. When a probe records
    /// or changes a site of the last block, the full pass runs instead.
    pub(crate) fn forward_first_token(&self, x: &Tensor, probe: &mut Probe) -> Tensor {
        let Some(last) = self.resblocks.len().checked_sub(1) else {
            return x.select(1, 0);
        };
        if self.sites[last].iter().any(|site| probe.touches(site)) {
            return self.forward(x, Mask::None, probe).select(1, 0);
        }
        let mut x = x.shallow_clone();
        for i in 0..last {
            x = self.block_forward(i, &x, Mask::None, probe);
        }
        let block = &self.resblocks[last];
        let x = block.attn.forward_first_token_add(
            &block.ln_1.forward(&x),
            &x.narrow(1, 0, 1),
            block.ls_1.as_ref().map(|l| &l.gamma),
        );
        block
            .mlp_add(&x, self.act, &self.sites[last][2], probe)
            .select(1, 0)
    }

    /// Block `i`: `x + attn(ln_1(x))`, then `+ mlp(ln_2(x))`, through the block's probe sites.
    fn block_forward(&self, i: usize, x: &Tensor, mask: Mask, probe: &mut Probe) -> Tensor {
        let block = &self.resblocks[i];
        let [name, heads, mlp] = &self.sites[i];
        let x = block.attn.forward_add(
            &block.ln_1.forward(x),
            x,
            mask,
            block.ls_1.as_ref().map(|l| &l.gamma),
            heads,
            probe,
        );
        let x = block.mlp_add(&x, self.act, mlp, probe);
        probe.site(name, x, -1)
    }
}
