//! Typographic attention-head ablation (model hook, ViT image towers), after "Dyslexify"
//! (Hufe et al., "Dyslexify: A Mechanistic Defense Against Typographic Attacks in CLIP", 2025):
//! a few attention heads carry most of the typographic signal. `typoclip fit heads` scores every
//! head of the image tower by how much zeroing it (its output before `out_proj`, through the
//! model's `….attn.heads` taps) reduces attack success on a calibration set of rendered attacks
//! (ties broken by the drop of the mean probability of the written word); `--defense heads:file=PATH,k=4` zeroes the top `k` heads of that list on every
//! forward pass (`heads:k=4` reads `results/fitted/heads.json`, where `fit heads` writes by
//! default). `k = 0` ablates nothing.
//!
//! Two ablations (`fit heads --ablation zero|mean`, recorded in the artifact and used by the
//! defense): `zero` sets the head's output to zero; `mean` replaces it by the head's mean
//! output over the clean calibration images, position by position (mean-ablation, as
//! mechanistic-interpretability work ablates): the rest of the network keeps the head's
//! average contribution and loses only what the head says about this image. Zeroing a head
//! of a small model also removes its large constant part, which can cost more clean accuracy
//! than the attack. A mean artifact stores the means of the first heads of its ranking
//! (`data.means`), so `k` is at most their number.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::calibration::Artifact;
use super::{Defense, DefenseError, FittedRecord, Params};
use crate::model::{ClipModel, Intervention, InterventionAction, VisionConfig};

/// One scored head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadScore {
    /// Residual block index.
    pub layer: usize,
    /// Head index within the block.
    pub head: usize,
    /// Mean drop of P(written word) on the attacked calibration images when the head is zeroed.
    pub score: f64,
    /// Attack success rate on the calibration set with the head zeroed.
    pub asr_ablated: f64,
    /// Attack success rate without ablation minus `asr_ablated` (the ranking key).
    #[serde(default)]
    pub asr_drop: f64,
}

/// How a head is taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ablation {
    /// Its output set to zero.
    #[default]
    Zero,
    /// Its output replaced by its mean over the clean calibration images.
    Mean,
}

impl Ablation {
    /// `zero` / `mean`.
    pub fn parse(s: &str) -> Option<Ablation> {
        match s {
            "zero" => Some(Ablation::Zero),
            "mean" => Some(Ablation::Mean),
            _ => None,
        }
    }

    /// The intervention that takes out one head (`mean`: that head's `[L, W/H]` mean).
    pub fn intervention(&self, layer: usize, head: usize, mean: Option<&Tensor>) -> Intervention {
        Intervention {
            site: head_site(layer),
            unit: head as i64,
            action: match (self, mean) {
                (Ablation::Mean, Some(m)) => InterventionAction::Replace(m.shallow_clone()),
                (Ablation::Mean, None) => {
                    panic!("mean-ablation of head {layer}.{head} without its mean")
                }
                (Ablation::Zero, _) => InterventionAction::Zero,
            },
        }
    }
}

/// One head's mean output over the clean calibration images, as an artifact stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadMean {
    /// Residual block index.
    pub layer: usize,
    /// Head index within the block.
    pub head: usize,
    /// `[tokens, head width]`.
    pub shape: [i64; 2],
    /// Row-major values.
    pub values: Vec<f32>,
}

impl HeadMean {
    /// From a `[L, W/H]` tensor.
    pub fn new(layer: usize, head: usize, mean: &Tensor) -> HeadMean {
        let (l, d) = mean.size2().expect("[L, W/H]");
        HeadMean {
            layer,
            head,
            shape: [l, d],
            values: Vec::<f32>::try_from(mean.to_kind(tch::Kind::Float).flatten(0, -1))
                .expect("f32"),
        }
    }

    /// The `[L, W/H]` tensor, or `None` when the values do not fill the shape.
    pub fn tensor(&self) -> Option<Tensor> {
        let [l, d] = self.shape;
        (l > 0 && d > 0 && self.values.len() as i64 == l * d)
            .then(|| Tensor::from_slice(&self.values).view([l, d]))
    }
}

/// The site of a head's output in the image tower.
pub fn head_site(layer: usize) -> String {
    format!("visual.transformer.resblocks.{layer}.attn.heads")
}

/// Zeroes a list of heads on every image forward pass.
#[derive(Debug, Clone)]
pub struct HeadAblation {
    /// `(layer, head)` pairs to take out.
    pub heads: Vec<(usize, usize)>,
    /// How.
    pub ablation: Ablation,
    /// For [`Ablation::Mean`]: each head's mean, in the order of `heads`.
    pub means: Vec<HeadMean>,
    /// The artifact and its calibration split.
    pub fitted: Option<FittedRecord>,
}

impl HeadAblation {
    /// `heads:file=PATH,k=4`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        let file =
            PathBuf::from(p.string("file", Some(&super::calibration::default_artifact("heads")))?);
        let (a, sha256) = Artifact::read(&file, "heads")?;
        let list: Vec<HeadScore> =
            serde_json::from_value(a.data["heads"].clone()).map_err(|e| {
                DefenseError::Artifact {
                    path: file.display().to_string(),
                    message: format!("data.heads: {e}"),
                }
            })?;
        let artifact_error = |message: String| DefenseError::Artifact {
            path: file.display().to_string(),
            message,
        };
        let ablation: Ablation = match a.data.get("ablation") {
            None => Ablation::Zero,
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| artifact_error(format!("data.ablation: {e}")))?,
        };
        let stored: Vec<HeadMean> = match (ablation, a.data.get("means")) {
            (Ablation::Zero, _) => Vec::new(),
            (Ablation::Mean, None) => {
                return Err(artifact_error(
                    "data.means: missing, but data.ablation is mean".into(),
                ))
            }
            (Ablation::Mean, Some(v)) => serde_json::from_value(v.clone())
                .map_err(|e| artifact_error(format!("data.means: {e}")))?,
        };
        let most = match ablation {
            Ablation::Zero => list.len(),
            Ablation::Mean => list.len().min(stored.len()),
        };
        let k = p.usize("k", 4.min(most), 0, most)?;
        let heads: Vec<(usize, usize)> = list.iter().take(k).map(|h| (h.layer, h.head)).collect();
        let means = match ablation {
            Ablation::Zero => Vec::new(),
            Ablation::Mean => heads
                .iter()
                .map(|&(l, h)| {
                    stored
                        .iter()
                        .find(|m| m.layer == l && m.head == h && m.tensor().is_some())
                        .cloned()
                        .ok_or_else(|| {
                            artifact_error(format!(
                                "data.means: no {l}.{h} entry of the stated shape for ranked head {l}.{h}"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        p.note("ablation", serde_json::to_value(ablation).expect("enum"));
        p.note(
            "ablated",
            serde_json::json!(heads
                .iter()
                .map(|(l, h)| format!("{l}.{h}"))
                .collect::<Vec<_>>()),
        );
        Ok(Box::new(HeadAblation {
            heads,
            ablation,
            means,
            fitted: Some(FittedRecord {
                artifact: file.display().to_string(),
                sha256,
                calibration: a.calibration,
            }),
        }))
    }
}

impl Defense for HeadAblation {
    fn interventions(&self) -> Vec<Intervention> {
        self.heads
            .iter()
            .enumerate()
            .map(|(i, &(layer, head))| {
                let mean = self.means.get(i).and_then(HeadMean::tensor);
                self.ablation.intervention(layer, head, mean.as_ref())
            })
            .collect()
    }

    fn check_model(&self, model: &ClipModel, model_id: &str) -> Result<(), String> {
        let VisionConfig::VisionTransformer {
            layers,
            heads,
            width,
            image_resolution,
            patch_size,
            ..
        } = model.config().vision
        else {
            return Err("head ablation needs a ViT image tower (this model is a ResNet)".into());
        };
        let tokens = (image_resolution / patch_size).pow(2) + 1;
        if let Some((m, (l, h))) = self
            .means
            .iter()
            .zip(&self.heads)
            .find(|(m, _)| m.shape != [tokens, width / heads])
        {
            return Err(format!(
                "the mean of head {l}.{h} is {:?}, but this model's heads give [{tokens}, {}]",
                m.shape,
                width / heads
            ));
        }
        if let Some((l, h)) = self
            .heads
            .iter()
            .find(|(l, h)| *l as i64 >= layers || *h as i64 >= heads)
        {
            return Err(format!(
                "head {l}.{h} does not exist ({layers} layers × {heads} heads)"
            ));
        }
        match &self.fitted {
            Some(f) if f.calibration.model_id != model_id => Err(format!(
                "fitted with model {} but this run uses {model_id}",
                f.calibration.model_id
            )),
            _ => Ok(()),
        }
    }

    fn fitted(&self) -> Option<FittedRecord> {
        self.fitted.clone()
    }
}
