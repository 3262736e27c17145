//! Typographic attention-head ablation (model hook, ViT image towers), after "Dyslexify"
//! (Hufe et al., "Dyslexify: A Mechanistic Defense Against Typographic Attacks in CLIP", 2025):
//! a few attention heads carry most of the typographic signal. `typoclip fit heads` scores every
//! head of the image tower by how much zeroing it (its output before `out_proj`, through the
//! model's `….attn.heads` taps) reduces attack success on a calibration set of rendered attacks
//! (ties broken by the drop of the mean probability of the written word); `--defense heads:file=PATH,k=4` zeroes the top `k` heads of that list on every
//! forward pass (`heads:k=4` reads `results/fitted/heads.json`, where `fit heads` writes by
//! default). `k = 0` ablates nothing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

/// The site of a head's output in the image tower.
pub fn head_site(layer: usize) -> String {
    format!("visual.transformer.resblocks.{layer}.attn.heads")
}

/// Zeroes a list of heads on every image forward pass.
#[derive(Debug, Clone)]
pub struct HeadAblation {
    /// `(layer, head)` pairs to zero.
    pub heads: Vec<(usize, usize)>,
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
        let k = p.usize("k", 4.min(list.len()), 0, list.len())?;
        let heads: Vec<(usize, usize)> = list.iter().take(k).map(|h| (h.layer, h.head)).collect();
        p.note(
            "ablated",
            serde_json::json!(heads
                .iter()
                .map(|(l, h)| format!("{l}.{h}"))
                .collect::<Vec<_>>()),
        );
        Ok(Box::new(HeadAblation {
            heads,
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
            .map(|&(layer, head)| Intervention {
                site: head_site(layer),
                unit: head as i64,
                action: InterventionAction::Zero,
            })
            .collect()
    }

    fn check_model(&self, model: &ClipModel, model_id: &str) -> Result<(), String> {
        let VisionConfig::VisionTransformer { layers, heads, .. } = model.config().vision else {
            return Err("head ablation needs a ViT image tower (this model is a ResNet)".into());
        };
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
