//! Flip consistency (model hook), after MirrorCLIP ("MirrorCLIP: Extracting Visual
//! Features in CLIP Models with Mirror Reflections", 2025): a mirrored word stops reading as that
//! word while the object stays the same object, so features that agree between an image and its
//! horizontal mirror are visual, features that differ are textual.
//!
//! Two training-free combinations of the embeddings `f` (image) and `g` (mirror):
//! - `mode=mean`: `(f + g) / 2` (test-time augmentation with the mirror);
//! - `mode=mask`: MirrorCLIP's disentangling mask in its simplest form — keep the dimensions where
//!   `f` and `g` have the same sign (`f ⊙ [sign f = sign g]`), zero the others.

use tch::Tensor;

use super::{Defense, DefenseError, Params};

/// Combines the embeddings of each image and its horizontal mirror.
#[derive(Debug, Clone)]
pub struct FlipConsistency {
    /// `true`: sign-agreement mask; `false`: mean.
    pub mask: bool,
}

impl FlipConsistency {
    /// `flip:mode=mean`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        let mode = p.choice("mode", "mean", &["mean", "mask"])?;
        Ok(Box::new(FlipConsistency {
            mask: mode == "mask",
        }))
    }
}

impl Defense for FlipConsistency {
    fn encode_views(&self, images: &Tensor, encode: &dyn Fn(&Tensor) -> Tensor) -> Tensor {
        let f = encode(images);
        let g = encode(&images.flip([3]));
        let g = g.to_device(f.device());
        if self.mask {
            let agree = f.sign().eq_tensor(&g.sign()).to_kind(f.kind());
            f * agree
        } else {
            (f + g) / 2.0
        }
    }
}
