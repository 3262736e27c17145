//! Taps and interventions: what a forward pass records and what it changes, on the one code path.
//!
//! Every named *site* of the forward pass (a module path in checkpoint naming, plus a suffix for
//! sub-results such as `.attn.heads`) passes its activation through [`Probe::site`], which applies
//! the interventions aimed at it and records it when asked. With an empty probe this costs one
//! lookup per site.
//!
//! Sites (B = batch, L = tokens, H = heads, C = channels):
//! - `visual.transformer.resblocks.N`, `transformer.resblocks.N`: residual stream after block N, `[B, L, W]`
//! - `….resblocks.N.attn.heads`: per-head attention outputs before `out_proj`, `[B, H, L, W/H]`
//! - `….resblocks.N.mlp.c_fc`: MLP neurons after QuickGELU, `[B, L, 4W]`
//! - `visual.layerS` / `visual.layerS.M`: ResNet stage / block outputs, `[B, C, H, W]`
//! - `visual.trunk.stages.S` / `visual.trunk.stages.S.blocks.M` / `visual.trunk.final_conv`:
//!   FastViT stage / block / final-conv outputs, `[B, C, H, W]`
//! - `visual.attnpool.input`: the attention-pool input (= `visual.layer4`), `[B, C, H, W]`
//! - `visual.attnpool.heads`: attention-pool per-head outputs, `[B, H, 1, C/H]`
//!
//! The unit of an intervention is indexed along the site's unit axis: heads for `*.heads`,
//! channels for ResNet and FastViT sites, the last axis otherwise.

use std::collections::{BTreeMap, BTreeSet};

use tch::Tensor;

/// What an intervention does to its unit.
#[derive(Debug)]
pub enum InterventionAction {
    /// Set the unit's activation to zero (ablation).
    Zero,
    /// Replace the unit's activation with this tensor (broadcast to the unit's slice).
    Replace(Tensor),
    /// Multiply the unit's activation by a factor.
    Scale(f64),
}

/// One change to one unit at one site.
#[derive(Debug)]
pub struct Intervention {
    /// Site name (see the module docs).
    pub site: String,
    /// Index along the site's unit axis.
    pub unit: i64,
    /// What to do.
    pub action: InterventionAction,
}

/// Requests for a forward pass: sites to record and interventions to apply.
#[derive(Debug, Default)]
pub struct Probe {
    capture: BTreeSet<String>,
    interventions: Vec<Intervention>,
    taps: BTreeMap<String, Tensor>,
}

impl Probe {
    /// A probe that records nothing and changes nothing.
    pub fn none() -> Probe {
        Probe::default()
    }

    /// Records the given sites.
    pub fn capture<I, S>(sites: I) -> Probe
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Probe {
            capture: sites.into_iter().map(Into::into).collect(),
            ..Probe::default()
        }
    }

    /// Adds an intervention.
    pub fn with_intervention(mut self, intervention: Intervention) -> Probe {
        self.interventions.push(intervention);
        self
    }

    /// The recorded activations, by site name.
    pub fn taps(&self) -> &BTreeMap<String, Tensor> {
        &self.taps
    }

    /// Takes the recorded activations out of the probe.
    pub fn into_taps(self) -> BTreeMap<String, Tensor> {
        self.taps
    }

    /// Passes an activation through a site: applies the interventions aimed at `name`
    /// (along `unit_dim`), then records the result if `name` was requested.
    pub fn site(&mut self, name: &str, x: Tensor, unit_dim: i64) -> Tensor {
        let mut x = x;
        for iv in self.interventions.iter().filter(|iv| iv.site == name) {
            x = apply(&x, unit_dim, iv);
        }
        if self.capture.contains(name) {
            self.taps.insert(name.to_string(), x.shallow_clone());
        }
        x
    }

    /// True when `name` is recorded or intervened on (a forward pass may then take its
    /// explicit path instead of a fused kernel).
    pub fn touches(&self, name: &str) -> bool {
        self.capture.contains(name) || self.interventions.iter().any(|iv| iv.site == name)
    }

    /// True when nothing is recorded or changed.
    pub fn is_empty(&self) -> bool {
        self.capture.is_empty() && self.interventions.is_empty()
    }
}

fn apply(x: &Tensor, unit_dim: i64, iv: &Intervention) -> Tensor {
    let dim = if unit_dim < 0 {
        x.dim() as i64 + unit_dim
    } else {
        unit_dim
    };
    let n = x.size()[dim as usize];
    assert!(
        (0..n).contains(&iv.unit),
        "intervention unit {} out of range 0..{n} at site {}",
        iv.unit,
        iv.site
    );
    let y = x.copy();
    let mut slice = y.narrow(dim, iv.unit, 1);
    match &iv.action {
        InterventionAction::Zero => {
            let _ = slice.zero_();
        }
        InterventionAction::Scale(f) => {
            let _ = slice.g_mul_scalar_(*f);
        }
        InterventionAction::Replace(v) => {
            let v = v.to_device(x.device()).to_kind(x.kind());
            slice.copy_(&v.expand_as(&slice));
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ablation_touches_only_its_unit() {
        let x = Tensor::ones([2, 3, 4], (tch::Kind::Float, tch::Device::Cpu));
        let mut p = Probe::capture(["s"]).with_intervention(Intervention {
            site: "s".into(),
            unit: 1,
            action: InterventionAction::Zero,
        });
        let y = p.site("s", x.shallow_clone(), 1);
        assert_eq!(y.sum(tch::Kind::Float).double_value(&[]), 16.0);
        assert_eq!(
            y.narrow(1, 1, 1)
                .abs()
                .sum(tch::Kind::Float)
                .double_value(&[]),
            0.0
        );
        // The input is not modified in place.
        assert_eq!(x.sum(tch::Kind::Float).double_value(&[]), 24.0);
        assert!(p.taps().contains_key("s"));
    }

    #[test]
    fn unrequested_sites_are_not_recorded() {
        let x = Tensor::ones([2], (tch::Kind::Float, tch::Device::Cpu));
        let mut p = Probe::none();
        let y = p.site("s", x, -1);
        assert!(p.taps().is_empty());
        assert_eq!(y.sum(tch::Kind::Float).double_value(&[]), 2.0);
    }
}
