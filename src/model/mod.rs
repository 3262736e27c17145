//! The model stage: CLIP-family models (open_clip's `VisionTransformer` — CoCa's attentional
//! pooler included —, OpenAI's `ModifiedResNet`, timm's image towers — `VisionTransformer`
//! (SigLIP, MobileCLIP), `Eva` (EVA, PE-Core), ViTamin, FastViT (MobileCLIP's MCi) and
//! `ConvNeXt` —, open_clip's `TextTransformer` and the Hugging Face text encoders it wraps)
//! implemented natively on libtorch through `tch`.
//!
//! Inputs: preprocessed images `[B, 3, R, R] f32` and token ids `[B, L] i64`. Outputs:
//! projected embeddings `[B, embed_dim] f32` (not normalised) and, through a [`Probe`], chosen
//! intermediate activations, with optional interventions on heads / channels / neurons.
//!
//! Each tower family is one file behind [`ImageTower`] or [`TextTower`]; [`image_tower`] and
//! [`text_tower`] are the registry that maps a config to the file that builds it.
//! Every parameter lives in one [`tch::nn::VarStore`] at the path of its checkpoint key
//! (`visual.transformer.resblocks.3.attn.in_proj_weight`, …), so loading is a 1:1 copy audited in
//! [`load`]. Reference: openai/CLIP `clip/model.py` at a1d0717; open_clip `model.py`,
//! `coca_model.py`.

mod batch_norm;
pub mod config;
mod convnext;
mod eva;
mod fastvit;
pub mod hf_text;
pub mod jit;
pub mod kernels;
pub mod load;
mod m2m100;
pub mod open_clip;
pub mod pickle;
pub mod probe;
mod resnet;
mod text;
mod timm;
mod timm_vit;
mod transformer;
mod vision;
mod vitamin;

use std::path::PathBuf;

use tch::{nn, Device, Kind, Tensor};

pub use config::{ClipConfig, TextConfig, VisionConfig};
pub use probe::{Intervention, InterventionAction, Probe};

/// Errors of the model stage. Each names the file it concerns where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A problem with a checkpoint file: unreadable, truncated, unknown format, bad keys.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state dict does not describe a buildable CLIP model.
    #[error("{0}")]
    Config(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    /// Attaches a file to a path-less error.
    pub fn with_path(self, path: &std::path::Path) -> ModelError {
        match self {
            ModelError::Checkpoint { .. } => self,
            other => ModelError::Checkpoint {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        }
    }
}

/// An image tower: preprocessed images `[B, 3, R, R]` → embeddings `[B, embed_dim]`, with the
/// probe's taps and interventions. `weights_generation` moves whenever the parameters were edited
/// in place (towers that cache something derived from their weights recompute it).
pub(crate) trait ImageTower: std::fmt::Debug + Send {
    fn forward(&self, images: &Tensor, probe: &mut Probe, weights_generation: u64) -> Tensor;
}

/// A text tower: token ids `[B, L]` → embeddings `[B, embed_dim]`; also entered with token
/// embeddings (learned prompt prefixes).
pub(crate) trait TextTower: std::fmt::Debug + Send {
    fn forward(&self, tokens: &Tensor, probe: &mut Probe) -> Tensor;
    /// Token embeddings `[B, L, W]` for ids `[B, L]`.
    fn embed_tokens(&self, tokens: &Tensor) -> Tensor;
    /// Embeddings from token embeddings `[B, L, W]`, pooled at positions `eot` `[B]`.
    fn forward_embedded(&self, embedded: &Tensor, eot: &Tensor, probe: &mut Probe) -> Tensor;
    /// Whether rows may be shorter than the context length.
    fn accepts_unpadded(&self) -> bool;
}

/// The tower registry: which file builds the image tower of each [`VisionConfig`] family.
fn image_tower(vp: nn::Path, config: &ClipConfig) -> Box<dyn ImageTower> {
    match config.vision.clone() {
        VisionConfig::VisionTransformer {
            image_resolution,
            patch_size,
            width,
            layers,
            heads,
            mlp_width,
            act,
            layer_scale,
            ln_pre,
            pool,
            final_ln_after_pool,
            ln_eps,
            attn_pool,
        } => Box::new(vision::VisionTransformer::new(
            vp,
            vision::VitCfg {
                image_resolution,
                patch_size,
                layers,
                ln_pre,
                pool,
                final_ln_after_pool,
                embed_dim: config.embed_dim,
                attn_pool,
            },
            transformer::BlockCfg {
                width,
                heads,
                mlp_width,
                act,
                layer_scale,
                ln_eps,
            },
        )),
        VisionConfig::ModifiedResNet {
            image_resolution,
            layers,
            width,
            heads,
        } => Box::new(resnet::ModifiedResNet::new(
            vp,
            layers,
            config.embed_dim,
            heads,
            image_resolution,
            width,
        )),
        VisionConfig::TimmVit {
            image_resolution,
            patch_size,
            width,
            layers,
            heads,
            mlp_width,
            act,
            ln_eps,
            layout,
            proj,
            ..
        } => Box::new(timm_vit::TimmVisionTransformer::new(
            vp,
            timm_vit::TimmVitCfg {
                image_resolution,
                patch_size,
                layers,
                embed_dim: config.embed_dim,
                layout,
                proj,
            },
            transformer::BlockCfg {
                width,
                heads,
                mlp_width,
                act,
                layer_scale: false,
                ln_eps,
            },
        )),
        VisionConfig::TimmEva {
            image_resolution,
            shape,
            proj,
            ..
        } => Box::new(eva::Eva::new(
            vp,
            eva::EvaCfg {
                image_resolution,
                shape,
                embed_dim: config.embed_dim,
                proj,
            },
        )),
        VisionConfig::TimmVitamin {
            image_resolution,
            shape,
            proj,
            ..
        } => Box::new(vitamin::Vitamin::new(
            vp,
            vitamin::VitaminCfg {
                image_resolution,
                shape,
                embed_dim: config.embed_dim,
                proj,
            },
        )),
        VisionConfig::TimmFastVit { shape, proj, .. } => Box::new(fastvit::FastVit::new(
            vp,
            fastvit::FastVitCfg {
                shape,
                embed_dim: config.embed_dim,
                proj,
            },
        )),
        VisionConfig::TimmConvNext {
            depths,
            dims,
            ln_eps,
            proj,
            ..
        } => Box::new(convnext::ConvNext::new(
            vp,
            convnext::ConvNextCfg {
                depths,
                dims,
                ln_eps,
                embed_dim: config.embed_dim,
                proj,
            },
        )),
    }
}

/// The tower registry's text side: open_clip's `TextTransformer`, at the model root or under
/// `text.` (custom-text models), or a Hugging Face encoder under `text.`.
fn text_tower(root: &nn::Path, config: &ClipConfig) -> Box<dyn TextTower> {
    if let Some(hf) = &config.hf_text {
        let text = root / "text";
        return match hf.family {
            hf_text::HfFamily::Roberta => {
                Box::new(hf_text::HfTextEncoder::new(&text, hf, config.embed_dim))
            }
            hf_text::HfFamily::M2M100 => {
                Box::new(m2m100::M2M100Encoder::new(&text, hf, config.embed_dim))
            }
        };
    }
    let text_root = if config.custom_text {
        root / "text"
    } else {
        root.clone()
    };
    Box::new(text::TextTransformer::new(
        &text_root,
        &config.text,
        config.embed_dim,
    ))
}

/// A CLIP model: both towers and `logit_scale`, parameters in one `VarStore`.
#[derive(Debug)]
pub struct ClipModel {
    vs: nn::VarStore,
    config: ClipConfig,
    visual: Box<dyn ImageTower>,
    text: Box<dyn TextTower>,
    logit_scale: Tensor,
    /// SigLIP-style models' learned bias (`init_logit_bias`): their scores are
    /// `sigmoid(scale · cos + bias)`.
    logit_bias: Option<Tensor>,
    /// Bumped by [`ClipModel::weights_changed`]: caches derived from the weights (the ResNet
    /// tower's folded BatchNorms) are recomputed when it moves.
    weights_generation: std::sync::atomic::AtomicU64,
}

impl ClipModel {
    /// Builds a model with randomly initialised weights at the shapes of `config`, on `device`.
    /// Random draws come from libtorch's global generator: call `tch::manual_seed` first for
    /// reproducible weights (see [`ClipModel::random`]).
    pub fn new(config: &ClipConfig, device: Device) -> Result<ClipModel, ModelError> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let visual = image_tower(&root / "visual", config);
        let text = text_tower(&root, config);
        let logit_scale = root.var("logit_scale", &[], nn::Init::Const((1.0f64 / 0.07).ln()));
        let logit_bias = config
            .logit_bias
            .then(|| root.var("logit_bias", &[], nn::Init::Const(-10.0)));
        Ok(ClipModel {
            vs,
            config: config.clone(),
            visual,
            text,
            logit_scale,
            logit_bias,
            weights_generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Seeded random weights at the real shapes — for plumbing only: nothing computed with
    /// them is a property of CLIP. The weights are drawn on the CPU (libtorch's CPU generator)
    /// and copied to `device`, so one seed gives the same weights on every device.
    pub fn random(config: &ClipConfig, seed: i64, device: Device) -> Result<ClipModel, ModelError> {
        tch::manual_seed(seed);
        let cpu = ClipModel::new(config, Device::Cpu)?;
        if device == Device::Cpu {
            return Ok(cpu);
        }
        let mut model = ClipModel::new(config, device)?;
        model.vs.copy(&cpu.vs).map_err(|e| {
            ModelError::Config(format!("copying random weights to {device:?}: {e}"))
        })?;
        Ok(model)
    }

    /// The architecture.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The variable store holding every parameter under its checkpoint key. Code that edits
    /// parameters in place through it (`copy_`) must call [`ClipModel::weights_changed`]
    /// afterwards.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable access to the variable store (loading, freezing, device moves); counts as a
    /// change of weights.
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        self.weights_changed();
        &mut self.vs
    }

    /// Tells the model its parameters were edited in place, so inference caches derived from
    /// them (the ResNet tower's BatchNorms folded into its convolutions) are recomputed.
    pub fn weights_changed(&self) {
        self.weights_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Input side in pixels.
    pub fn image_resolution(&self) -> i64 {
        self.config.vision.image_resolution()
    }

    /// Number of scalar parameters (buffers included).
    pub fn parameter_count(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }

    /// `exp(logit_scale)`, the temperature applied to cosine similarities.
    pub fn logit_scale_exp(&self) -> f64 {
        self.logit_scale.exp().double_value(&[])
    }

    /// The `logit_scale` parameter itself (log temperature), for training.
    pub fn logit_scale_tensor(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The learned logit bias of a sigmoid-scored model (`None`: softmax scoring).
    pub fn logit_bias(&self) -> Option<f64> {
        self.logit_bias.as_ref().map(|b| b.double_value(&[]))
    }

    /// Whether text rows may be shorter than the context length (causal towers pooled inside
    /// the row); otherwise callers pad every row to the context length, as open_clip does.
    pub fn text_accepts_unpadded(&self) -> bool {
        self.text.accepts_unpadded()
    }

    /// Image embeddings: `[B, 3, R, R] f32 → [B, embed_dim] f32` (not normalised).
    pub fn encode_image(&self, images: &Tensor) -> Tensor {
        self.encode_image_probed(images, &mut Probe::none())
    }

    /// Image embeddings with taps and interventions (see [`probe`]).
    pub fn encode_image_probed(&self, images: &Tensor, probe: &mut Probe) -> Tensor {
        self.encode_image_in(images, Kind::Float, probe)
    }

    /// Image embeddings with every operation in `kind` (e.g. `BFloat16`), returned in that kind.
    /// The weights must already be in `kind` (`var_store_mut().bfloat16()`); the caller converts
    /// back. (`--precision bf16` is the mixed policy instead: [`crate::sweep::Precision`].)
    pub fn encode_image_as(&self, images: &Tensor, kind: Kind) -> Tensor {
        self.encode_image_in(images, kind, &mut Probe::none())
    }

    fn encode_image_in(&self, images: &Tensor, kind: Kind, probe: &mut Probe) -> Tensor {
        let images = upload(images, self.device()).to_kind(kind);
        self.visual.forward(
            &images,
            probe,
            self.weights_generation
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// Text embeddings: token ids `[B, L] i64 → [B, embed_dim] f32` (not normalised). `L` may be
    /// anything up to the context length as long as each row keeps its end-of-text token.
    pub fn encode_text(&self, tokens: &Tensor) -> Tensor {
        self.encode_text_probed(tokens, &mut Probe::none())
    }

    /// Text embeddings with taps and interventions.
    pub fn encode_text_probed(&self, tokens: &Tensor, probe: &mut Probe) -> Tensor {
        self.text.forward(&tokens.to_device(self.device()), probe)
    }

    /// Token embeddings `[B, L, W]` for ids `[B, L]` (the input of [`Self::encode_text_embedded`]).
    pub fn embed_tokens(&self, tokens: &Tensor) -> Tensor {
        self.text.embed_tokens(&tokens.to_device(self.device()))
    }

    /// Text embeddings from token embeddings `[B, L, W]` pooled at positions `eot` `[B]`.
    pub fn encode_text_embedded(
        &self,
        embedded: &Tensor,
        eot: &Tensor,
        probe: &mut Probe,
    ) -> Tensor {
        self.text
            .forward_embedded(embedded, &eot.to_device(self.device()), probe)
    }

    /// CLIP logits `exp(logit_scale) · cos(image, text)` (`+ logit_bias` for a sigmoid-scored
    /// model, as open_clip's SigLIP): `[N, D] × [M, D] → [N, M]`.
    pub fn logits(&self, image_features: &Tensor, text_features: &Tensor) -> Tensor {
        let i = l2_normalize(image_features);
        let t = l2_normalize(text_features);
        let logits = i.matmul(&t.transpose(0, 1)) * self.logit_scale_exp();
        match self.logit_bias() {
            Some(b) => logits + b,
            None => logits,
        }
    }
}

/// Divides each row by its L2 norm.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true)
}

/// A device name: `cpu`, `cuda` (device 0), `cuda:N` or `auto` (CUDA where there is one), refused
/// with the reason when no such device is here.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let index = match s {
        "cpu" => return Ok(Device::Cpu),
        "auto" => return Ok(Device::cuda_if_available()),
        "cuda" => Some(0),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok()),
    };
    match index {
        Some(n) if tch::Cuda::is_available() && (n as i64) < tch::Cuda::device_count() => {
            Ok(Device::Cuda(n))
        }
        Some(_) => Err(format!("no CUDA device `{s}` here")),
        None => Err(format!("`{s}` is not cpu, cuda or cuda:N, nor auto")),
    }
}

/// `t` on `device`: to CUDA from pinned host memory, asynchronously (the operations after it
/// are queued on the same stream); elsewhere a plain move.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) if t.device() == Device::Cpu => {
            t.pin_memory(device)
                .to_device_(device, t.kind(), true, false)
        }
        _ => t.to_device(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vit(width: i64, heads: i64) -> VisionConfig {
        VisionConfig::VisionTransformer {
            image_resolution: 32,
            patch_size: 8,
            width,
            layers: 2,
            heads,
            mlp_width: 4 * width,
            act: config::Activation::QuickGelu,
            layer_scale: false,
            ln_pre: true,
            pool: config::VitPool::Tok,
            final_ln_after_pool: false,
            ln_eps: 1e-5,
            attn_pool: None,
        }
    }

    fn tiny_vit() -> ClipConfig {
        ClipConfig {
            embed_dim: 32,
            vision: vit(64, 1),
            text: TextConfig {
                heads: 1,
                ..TextConfig::openai(77, 49408, 64, 2)
            },
            logit_bias: false,
            custom_text: false,
            text_decoder: false,
            hf_text: None,
        }
    }

    #[test]
    fn var_store_paths_are_checkpoint_keys() {
        let m = ClipModel::random(&tiny_vit(), 0, Device::Cpu).unwrap();
        let vars = m.var_store().variables();
        for key in [
            "visual.conv1.weight",
            "visual.class_embedding",
            "visual.transformer.resblocks.1.attn.in_proj_weight",
            "visual.transformer.resblocks.1.mlp.c_proj.bias",
            "visual.proj",
            "token_embedding.weight",
            "transformer.resblocks.0.ln_2.weight",
            "ln_final.bias",
            "text_projection",
            "logit_scale",
        ] {
            assert!(vars.contains_key(key), "missing {key}");
        }
    }

    #[test]
    fn shapes_round_trip_through_inference() {
        for name in ["RN50-quickgelu", "ViT-B-32-quickgelu"] {
            let cfg = ClipConfig::preset(name).unwrap();
            let m = ClipModel::random(&cfg, 0, Device::Cpu).unwrap();
            let shapes = m
                .var_store()
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.size()))
                .collect();
            assert_eq!(ClipConfig::openai_from_shapes(&shapes).unwrap(), cfg);
        }
    }

    #[test]
    fn forward_shapes_and_causality() {
        let m = ClipModel::random(&tiny_vit(), 0, Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let img = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(m.encode_image(&img).size(), vec![2, 32]);
        // Padding after the end-of-text token does not change the text features.
        let short = Tensor::from_slice(&[49406i64, 320, 1929, 49407]).view([1, 4]);
        let long = Tensor::cat(
            &[
                short.shallow_clone(),
                Tensor::zeros([1, 73], (Kind::Int64, Device::Cpu)),
            ],
            1,
        );
        let a = m.encode_text(&short);
        let b = m.encode_text(&long);
        assert!(f64::try_from((a - b).abs().max()).unwrap() < 1e-5);
    }

    #[test]
    fn head_ablation_changes_output_and_taps_record() {
        let cfg = ClipConfig {
            vision: vit(128, 2),
            ..tiny_vit()
        };
        let m = ClipModel::random(&cfg, 1, Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let img = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        let site = "visual.transformer.resblocks.1.attn.heads";
        let mut probe = Probe::capture([site]);
        let plain = m.encode_image_probed(&img, &mut probe);
        assert_eq!(probe.taps()[site].size(), vec![1, 2, 17, 64]);
        let mut ablate = Probe::none().with_intervention(Intervention {
            site: site.into(),
            unit: 0,
            action: InterventionAction::Zero,
        });
        let ablated = m.encode_image_probed(&img, &mut ablate);
        assert!(f64::try_from((&plain - &ablated).abs().max()).unwrap() > 1e-4);
        // Recording takes the explicit attention path, the plain forward libtorch's fused kernel:
        // the same function, computed in a different order.
        assert!(f64::try_from((plain - m.encode_image(&img)).abs().max()).unwrap() < 1e-5);
    }

    #[test]
    fn class_token_shortcut_equals_the_full_last_block() {
        // `encode_image` runs the last block for the class token alone; recording that block's
        // residual stream makes it run the whole block. At the ViT-B/32 shapes both must agree.
        let m =
            ClipModel::random(&ClipConfig::preset("ViT-B-32").unwrap(), 2, Device::Cpu).unwrap();
        let _g = tch::no_grad_guard();
        let img = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
        let site = "visual.transformer.resblocks.11";
        let mut probe = Probe::capture([site]);
        let full = m.encode_image_probed(&img, &mut probe);
        assert_eq!(probe.taps()[site].size(), vec![2, 50, 768]);
        let short = m.encode_image(&img);
        let scale = f64::try_from(full.abs().max()).unwrap();
        let diff = f64::try_from((&full - &short).abs().max()).unwrap();
        assert!(diff <= 1e-5 * scale, "max diff {diff} (scale {scale})");
        // A change to the last block still reaches the output through the full path.
        let mut ablate = Probe::none().with_intervention(Intervention {
            site: "visual.transformer.resblocks.11.mlp.c_fc".into(),
            unit: 7,
            action: InterventionAction::Scale(50.0),
        });
        let changed = m.encode_image_probed(&img, &mut ablate);
        assert!(f64::try_from((&full - &changed).abs().max()).unwrap() > 1e-4 * scale);
    }
}
