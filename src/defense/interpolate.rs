//! Weight interpolation (model hook), after PAINT (Ilharco et al., "Patching open-vocabulary
//! models by interpolating weights", NeurIPS 2022): `θ = (1 − α)·θ_run + α·θ_with`, parameter by
//! parameter, between the run's `--model` and a second checkpoint of the same architecture
//! (typically one fine-tuned on typographic images). α = 0 is the run's model unchanged, α = 1
//! the other checkpoint.

use std::path::PathBuf;

use super::{Defense, DefenseError, Params};
use crate::model::ClipModel;

/// Interpolates the run's weights towards another checkpoint.
#[derive(Debug, Clone)]
pub struct Interpolate {
    /// The other checkpoint.
    pub with: PathBuf,
    /// Its weight, in [0, 1].
    pub alpha: f64,
    /// sha256 of the other checkpoint.
    pub sha256: String,
}

impl Interpolate {
    /// `interpolate:with=PATH,alpha=0.5`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        let with = PathBuf::from(p.string("with", None)?);
        let alpha = p.f64("alpha", 0.5, 0.0, 1.0)?;
        let sha256 =
            crate::model::load::sha256_file(&with).map_err(|e| DefenseError::Artifact {
                path: with.display().to_string(),
                message: format!("cannot read the checkpoint to interpolate with: {e}"),
            })?;
        p.note("with_sha256", serde_json::json!(sha256));
        Ok(Box::new(Interpolate {
            with,
            alpha,
            sha256,
        }))
    }
}

impl Defense for Interpolate {
    fn adapt_model(&self, model: &mut ClipModel) -> Result<(), DefenseError> {
        let err = |message: String| DefenseError::Artifact {
            path: self.with.display().to_string(),
            message,
        };
        if self.alpha == 0.0 {
            return Ok(());
        }
        let other = crate::model::load::load_checkpoint(&self.with, None, model.device())
            .map_err(|e| err(e.to_string()))?
            .model;
        if other.config() != model.config() {
            return Err(err(format!(
                "architecture differs from the run's model ({} vs {})",
                other.config().describe(),
                model.config().describe()
            )));
        }
        let _guard = tch::no_grad_guard();
        let theirs = other.var_store().variables();
        for (name, mut mine) in model.var_store().variables() {
            let Some(t) = theirs.get(&name) else {
                return Err(err(format!("no parameter `{name}`")));
            };
            let mixed = &mine * (1.0 - self.alpha) + t.to_kind(mine.kind()) * self.alpha;
            mine.copy_(&mixed);
        }
        model.weights_changed();
        Ok(())
    }

    fn text_cache_tag(&self) -> Option<String> {
        (self.alpha != 0.0).then(|| format!("interpolate:{}:{}", self.sha256, self.alpha))
    }
}
