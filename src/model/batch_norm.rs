//! Eval-mode `BatchNorm2d` (running statistics, eps 1e-5) and its folding into the convolution
//! before it — `bn(conv(x; W, b))` is one convolution with `W·s` and `β + (b − μ)·s`,
//! `s = γ / √(σ² + ε)` (RepVGG's `_fuse_bn_tensor`, `torch.jit.freeze`'s conv–BN fold) — plus
//! [`FoldCache`], which keeps such derived weights for one weights generation
//! (`ClipModel::weights_changed`).

use std::sync::Mutex;

use tch::{nn, Kind, Tensor};

use super::transformer::param;

/// `BatchNorm2d`'s default epsilon, as in the references (timm's `BatchNormAct2d` too).
const BN_EPS: f64 = 1e-5;

/// A registered buffer (`running_mean`, `running_var`): loaded like a parameter, never trained,
/// so no gradient is asked of it.
fn buffer(p: &nn::Path, name: &str, c: i64, init: nn::Init) -> Tensor {
    p.add(
        name,
        nn::init(init, &[c], p.device()).to_kind(p.kind()),
        false,
    )
}

/// `BatchNorm2d` in eval mode (`weight`, `bias`, `running_mean`, `running_var`).
#[derive(Debug)]
pub(crate) struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    pub(crate) fn new(p: nn::Path, c: i64) -> BatchNorm {
        BatchNorm {
            weight: p.var("weight", &[c], nn::Init::Uniform { lo: 0.5, up: 1.5 }),
            bias: param(&p, "bias", &[c], 0.1),
            running_mean: buffer(
                &p,
                "running_mean",
                c,
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.1,
                },
            ),
            running_var: buffer(&p, "running_var", c, nn::Init::Uniform { lo: 0.5, up: 1.5 }),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.1,
            BN_EPS,
            false,
        )
    }

    /// This BatchNorm after a convolution of kernel `weight` `[out, in, k, k]` (and `bias`),
    /// as one convolution: its kernel and bias.
    pub(crate) fn fold(&self, weight: &Tensor, bias: Option<&Tensor>) -> (Tensor, Tensor) {
        let s = &self.weight / (&self.running_var + BN_EPS).sqrt();
        let w = weight * s.view([-1, 1, 1, 1]);
        let shift = match bias {
            Some(b) => b - &self.running_mean,
            None => -&self.running_mean,
        };
        (w, &self.bias + shift * &s)
    }

    /// The dtype and device of the statistics.
    pub(crate) fn options(&self) -> (Kind, tch::Device) {
        (self.weight.kind(), self.weight.device())
    }
}

/// A kernel and bias derived from the weights (a folded BatchNorm, a reparameterised block),
/// computed once per weights generation and shared by every forward pass of that generation.
#[derive(Debug, Default)]
pub(crate) struct FoldCache(Mutex<Option<(u64, Tensor, Tensor)>>);

impl FoldCache {
    /// The cached kernel and bias of `generation`, computed by `derive` (without gradients) when
    /// the cache holds another generation's.
    pub(crate) fn get(
        &self,
        generation: u64,
        derive: impl FnOnce() -> (Tensor, Tensor),
    ) -> (Tensor, Tensor) {
        let mut cache = self.0.lock().expect("fold cache");
        match cache.as_ref() {
            Some((g, w, b)) if *g == generation => (w.shallow_clone(), b.shallow_clone()),
            _ => {
                let _guard = tch::no_grad_guard();
                let (w, b) = derive();
                *cache = Some((generation, w.shallow_clone(), b.shallow_clone()));
                (w, b)
            }
        }
    }
}
