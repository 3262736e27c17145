//! Reading-subspace projection (score hook), after the training-free form of Materzynska et al.,
//! "Disentangling visual and written concepts in CLIP" (CVPR 2022): the directions along which
//! image embeddings move when text is written on an image are estimated on a calibration set
//! (rendered words vs the same blank images: the top right-singular vectors of the normalised
//! embedding differences, `typoclip fit projection`), and projected out of every image embedding:
//! `f ↦ f − (f Uᵀ) U` with `U` `[k, D]` orthonormal. The projection is idempotent; `k = 0` (an
//! empty subspace) is the identity.
//!
//! The learned form (`typoclip fit projection --learned`, Materzynska et al.'s learned linear
//! projection in a simplified form): a `D × D` map `W`, initialised to the identity and trained
//! with tch autograd so that the attacked and the clean calibration images, mapped by `W`, are
//! classified as their true object (cross-entropy against the calibration classes' text
//! embeddings), with `‖W − I‖²` keeping it near the identity; applied as `f ↦ f Wᵀ`.

use std::path::PathBuf;

use tch::{Kind, Tensor};

use super::calibration::Artifact;
use super::{Defense, DefenseError, FittedRecord, Params};
use crate::model::ClipModel;

/// `f − (f Uᵀ) U` for features `[N, D]` and an orthonormal basis `[k, D]` (`k` may be 0).
pub fn project_out(features: &Tensor, basis: &Tensor) -> Tensor {
    if basis.size()[0] == 0 {
        return features.shallow_clone();
    }
    let b = basis.to_device(features.device()).to_kind(features.kind());
    features - features.matmul(&b.transpose(0, 1)).matmul(&b)
}

/// Projects the fitted reading directions out of image embeddings.
#[derive(Debug, Clone)]
pub struct Projection {
    /// Row-major `[k, dim]` basis.
    pub basis: Vec<f32>,
    /// Number of directions used.
    pub k: usize,
    /// Embedding size.
    pub dim: usize,
    /// The learned form: a row-major `[dim, dim]` map `W` (`f ↦ f Wᵀ`) instead of the basis.
    pub matrix: Option<Vec<f32>>,
    /// The artifact and its calibration split.
    pub fitted: Option<FittedRecord>,
}

impl Projection {
    /// `projection:file=PATH,k=K` (default: every stored direction).
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        let file = PathBuf::from(p.string(
            "file",
            Some(&super::calibration::default_artifact("projection")),
        )?);
        let (a, sha256) = Artifact::read(&file, "projection")?;
        let bad = |m: String| DefenseError::Artifact {
            path: file.display().to_string(),
            message: m,
        };
        let dim = a.data["dim"]
            .as_u64()
            .ok_or_else(|| bad("data.dim: missing".into()))? as usize;
        let fitted = Some(FittedRecord {
            artifact: file.display().to_string(),
            sha256: sha256.clone(),
            calibration: a.calibration.clone(),
        });
        p.note("model_id", serde_json::json!(a.calibration.model_id));
        if !a.data["matrix"].is_null() {
            if p.spec().contains("k=") {
                return Err(p.error("k: applies to the training-free (subspace) projection only"));
            }
            let rows: Vec<Vec<f32>> = serde_json::from_value(a.data["matrix"].clone())
                .map_err(|e| bad(format!("data.matrix: {e}")))?;
            if rows.len() != dim || rows.iter().any(|r| r.len() != dim) {
                return Err(bad(format!("data.matrix: must be {dim} × {dim}")));
            }
            p.note("form", serde_json::json!("learned"));
            return Ok(Box::new(Projection {
                basis: Vec::new(),
                k: 0,
                dim,
                matrix: Some(rows.into_iter().flatten().collect()),
                fitted,
            }));
        }
        p.note("form", serde_json::json!("subspace"));
        let rows: Vec<Vec<f32>> = serde_json::from_value(a.data["basis"].clone())
            .map_err(|e| bad(format!("data.basis: {e}")))?;
        if rows.iter().any(|r| r.len() != dim) {
            return Err(bad(format!("data.basis: every row must have {dim} values")));
        }
        let k = p.usize("k", rows.len(), 0, rows.len())?;
        Ok(Box::new(Projection {
            basis: rows.into_iter().take(k).flatten().collect(),
            k,
            dim,
            matrix: None,
            fitted,
        }))
    }

    /// The basis `[k, dim]`.
    pub fn basis_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.basis).view([self.k as i64, self.dim as i64])
    }
}

impl Defense for Projection {
    fn transform_features(&self, features: &Tensor) -> Tensor {
        match &self.matrix {
            Some(m) => {
                let w = Tensor::from_slice(m)
                    .view([self.dim as i64, self.dim as i64])
                    .to_device(features.device())
                    .to_kind(features.kind());
                features.matmul(&w.transpose(0, 1))
            }
            None => project_out(features, &self.basis_tensor()),
        }
    }

    fn check_model(&self, model: &ClipModel, model_id: &str) -> Result<(), String> {
        if model.config().embed_dim as usize != self.dim {
            return Err(format!(
                "the basis has dimension {} but the model embeds in {}",
                self.dim,
                model.config().embed_dim
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

/// The top-`k` reading directions: right-singular vectors of the differences
/// `normalise(f(attacked)) − normalise(f(clean))` `[N, D]`, with their singular values.
pub fn reading_directions(differences: &Tensor, k: usize) -> (Tensor, Tensor) {
    let (_, s, v) = differences.to_kind(Kind::Double).svd(true, true);
    let vh = v.transpose(0, 1);
    let k = (k as i64).min(vh.size()[0]);
    (
        vh.narrow(0, 0, k).to_kind(Kind::Float),
        s.narrow(0, 0, k).to_kind(Kind::Float),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_idempotent_and_empty_is_identity() {
        tch::manual_seed(3);
        let f = Tensor::randn([5, 16], (Kind::Float, tch::Device::Cpu));
        let d = Tensor::randn([12, 16], (Kind::Float, tch::Device::Cpu));
        let (u, s) = reading_directions(&d, 3);
        assert_eq!(u.size(), vec![3, 16]);
        // Orthonormal rows, singular values descending.
        let gram = u.matmul(&u.transpose(0, 1));
        let eye = Tensor::eye(3, (Kind::Float, tch::Device::Cpu));
        assert!(f64::try_from((gram - eye).abs().max()).unwrap() < 1e-5);
        let s = Vec::<f32>::try_from(s).unwrap();
        assert!(s[0] >= s[1] && s[1] >= s[2]);
        let once = project_out(&f, &u);
        let twice = project_out(&once, &u);
        assert!(f64::try_from((&once - &twice).abs().max()).unwrap() < 1e-5);
        // Nothing is left along the removed directions.
        assert!(f64::try_from(once.matmul(&u.transpose(0, 1)).abs().max()).unwrap() < 1e-5);
        let empty = Tensor::zeros([0, 16], (Kind::Float, tch::Device::Cpu));
        assert!(f64::try_from((project_out(&f, &empty) - &f).abs().max()).unwrap() < 1e-6);
    }
}
