//! OpenAI `VisionTransformer` image tower (`visual.*`): patch conv, class token, positional
//! embedding, `ln_pre`, transformer, `ln_post` on the class token, projection `visual.proj`.
//! Reference: openai/CLIP `clip/model.py` (`VisionTransformer`), open_clip `transformer.py`.

use tch::{nn, Tensor};

use super::probe::Probe;
use super::transformer::{param, LayerNorm, Transformer};

/// `visual` of a ViT CLIP. `[B, 3, R, R] f32 → [B, embed_dim]`.
#[derive(Debug)]
pub(crate) struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor,
    patch_size: i64,
}

impl VisionTransformer {
    pub(crate) fn new(
        p: nn::Path,
        image_resolution: i64,
        patch_size: i64,
        width: i64,
        layers: i64,
        heads: i64,
        embed_dim: i64,
    ) -> VisionTransformer {
        let scale = (width as f64).powf(-0.5);
        let grid = image_resolution / patch_size;
        VisionTransformer {
            conv1: param(
                &(&p / "conv1"),
                "weight",
                &[width, 3, patch_size, patch_size],
                0.02,
            ),
            class_embedding: param(&p, "class_embedding", &[width], scale),
            positional_embedding: param(
                &p,
                "positional_embedding",
                &[grid * grid + 1, width],
                scale,
            ),
            ln_pre: LayerNorm::new(&p / "ln_pre", width),
            transformer: Transformer::new(
                &p / "transformer",
                "visual.transformer",
                width,
                layers,
                heads,
            ),
            ln_post: LayerNorm::new(&p / "ln_post", width),
            proj: param(&p, "proj", &[width, embed_dim], scale),
            patch_size,
        }
    }

    pub(crate) fn forward(&self, images: &Tensor, probe: &mut Probe) -> Tensor {
        let x = images.conv2d(
            &self.conv1,
            None::<Tensor>,
            [self.patch_size, self.patch_size],
            [0, 0],
            [1, 1],
            1,
        );
        let (b, w, _, _) = x.size4().expect("[B, W, g, g]");
        let x = x.reshape([b, w, -1]).permute([0, 2, 1]);
        let cls = self
            .class_embedding
            .view([1, 1, w])
            .expand([b, 1, w], false);
        let x = Tensor::cat(&[cls, x], 1) + &self.positional_embedding;
        let x = self.ln_pre.forward(&x);
        let class_token = self.transformer.forward_first_token(&x, probe);
        let pooled = self.ln_post.forward(&class_token);
        pooled.matmul(&self.proj)
    }
}
