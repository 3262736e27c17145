//! The positive control: a tiny CLIP that typoclip trains itself on a synthetic world of
//! coloured shapes in which 40 % of the pictures carry a large written word (half of them the
//! object's own name; half of the class names shown alone, captioned as the thing they name)
//! that their captions transcribe, so that contrastive training teaches it to read and every
//! stage (attacks, metrics, defenses, probes, reports) can show a real effect on a machine
//! without downloaded weights. (The default training reads its own world's words; see the
//! README's "The positive control" for what it reaches on the sweeps.)
//!
//! - [`world`]: the synthetic scenes, their rendering and captions;
//! - [`train`](mod@train): contrastive training with checkpoints and resume;
//! - this module: the toy's architecture (an open_clip model config: a 64 px ViT and a causal
//!   text transformer with CLIP's BPE), its folder (`open_clip_config.json`,
//!   `open_clip_model.safetensors`, `typoclip-toy.json`, which open_clip itself loads) and where
//!   it lives in the cache.
//!
//! Everything printed with the toy says on its first line that it is a toy ([`TOY_BANNER`]).

pub mod train;
pub mod world;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::Device;

use crate::model::open_clip::ModelCfg;
use crate::model::{ClipConfig, ClipModel};
pub use train::{TrainOutcome, TrainSettings};
pub use world::World;

/// The first line of anything computed with the toy.
pub const TOY_BANNER: &str = "toy CLIP trained by typoclip on synthetic shapes — a positive \
                              control, not CLIP: its numbers describe the toy, not how CLIP \
                              behaves";

/// The marker file of a toy folder.
pub const MARKER: &str = "typoclip-toy.json";

/// The toy's side in pixels (images of the synthetic world and the model input).
pub const IMAGE_SIZE: u32 = 64;

/// The toy's architecture as an open_clip model config: ViT 64 px / patch 8, width 64, 4 layers
/// of 2 heads; text transformer width 64, 3 layers of 2 heads, context 32, CLIP's BPE
/// vocabulary; GELU. (Width 64 learns more per second of CPU than 128 here: 60.6 % held-out
/// clean accuracy after 1200 steps of batch 128 against 46.8 % after 400 steps at width 128, in
/// about the same time; patch 16 at width 96 gave 56.8 % after 1200 steps.)
pub fn model_cfg_json() -> serde_json::Value {
    json!({
        "embed_dim": 128,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "width": 64,
            "layers": 4,
            "head_width": 32,
            "mlp_ratio": 4.0
        },
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 3
        }
    })
}

/// The typed config of [`model_cfg_json`].
pub fn clip_config() -> ClipConfig {
    let cfg: ModelCfg = serde_json::from_value(model_cfg_json()).expect("the toy config parses");
    cfg.to_clip_config(false)
        .expect("the toy config uses open_clip's own towers")
}

/// The `preprocess_cfg` of the toy: OpenAI's transform at 64 px.
pub fn preprocess_cfg_json() -> serde_json::Value {
    json!({
        "size": IMAGE_SIZE,
        "mode": "RGB",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0
    })
}

/// What `typoclip-toy.json` records: how the toy was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToyRecord {
    /// Always [`TOY_BANNER`].
    pub what: String,
    /// The training settings.
    pub settings: TrainSettings,
    /// The run's outcome.
    pub outcome: TrainOutcome,
    /// Held-out zero-shot accuracy, clean and labelled, measured after training.
    pub held_out: HeldOut,
    /// libtorch threads the run used (results are bit-exact only at the same count).
    pub threads: i64,
    /// typoclip's version.
    pub typoclip: String,
}

/// Reads a toy folder's `typoclip-toy.json`.
pub fn read_record(dir: &Path) -> Result<ToyRecord> {
    let p = dir.join(MARKER);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a toy record", p.display()))
}

/// Where `--model toy` lives: `<cache>/toy`.
pub fn cache_folder(cache_dir: &Path) -> PathBuf {
    cache_dir.join("toy")
}

/// True when `dir` holds a finished toy.
pub fn is_toy_folder(dir: &Path) -> bool {
    dir.join(MARKER).is_file() && dir.join("open_clip_model.safetensors").is_file()
}

/// True when the checkpoint at `path` (a folder, or a file in one) is a toy.
pub fn is_toy_checkpoint(path: &Path) -> bool {
    if path.is_dir() {
        return is_toy_folder(path);
    }
    path.parent().is_some_and(is_toy_folder)
}

/// Writes `model` as an open_clip folder: `open_clip_config.json` (`model_cfg` +
/// `preprocess_cfg`), `open_clip_model.safetensors` (checkpoint keys) and the marker.
pub fn save_folder(model: &ClipModel, dir: &Path, record: &ToyRecord) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let cfg = json!({"model_cfg": model_cfg_json(), "preprocess_cfg": preprocess_cfg_json()});
    std::fs::write(
        dir.join("open_clip_config.json"),
        serde_json::to_string_pretty(&cfg)? + "\n",
    )?;
    let mut named: Vec<(String, tch::Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let weights = dir.join("open_clip_model.safetensors");
    let tmp = dir.join("open_clip_model.safetensors.tmp");
    tch::Tensor::write_safetensors(&named, &tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &weights)?;
    std::fs::write(
        dir.join(MARKER),
        serde_json::to_string_pretty(record)? + "\n",
    )?;
    Ok(())
}

/// Builds the toy at its initial weights (seeded) and trains it into `dir`, resuming from a
/// checkpoint there; `on_step(step, loss, model)` reports progress. `None` when `stop_after` stopped
/// it first (checkpointed).
pub fn train_into(
    dir: &Path,
    settings: &TrainSettings,
    stop_after: Option<usize>,
    on_step: impl FnMut(usize, f64, &ClipModel),
) -> Result<Option<(ClipModel, ToyRecord)>> {
    tch::manual_seed(settings.seed as i64);
    let model = ClipModel::new(&clip_config(), Device::Cpu)?;
    let world = settings.world();
    let Some(outcome) = train::train(&model, &world, settings, dir, stop_after, on_step)? else {
        return Ok(None);
    };
    let record = ToyRecord {
        what: TOY_BANNER.into(),
        settings: settings.clone(),
        outcome,
        held_out: held_out(&model, &world, 500, settings.seed ^ 0x5eed)?,
        threads: tch::get_num_threads() as i64,
        typoclip: env!("CARGO_PKG_VERSION").into(),
    };
    save_folder(&model, dir, &record)?;
    for f in ["train-state.safetensors", "train-settings.json"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(Some((model, record)))
}

/// Held-out accuracy of a toy, measured at the end of training: the sweeps' zero-shot
/// classifier (template set `single`, "a photo of a {shape}.") over [`world::SHAPES`], on clean
/// scenes and on the same scenes with a label that names another class.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct HeldOut {
    /// Scenes.
    pub n: usize,
    /// Clean top-1 accuracy.
    pub clean_accuracy: f64,
    /// Top-1 accuracy with the label.
    pub attacked_accuracy: f64,
    /// Fraction of labelled scenes classified as the written class.
    pub to_target: f64,
}

/// Measures [`HeldOut`] on `n` scenes of a stream disjoint from training (`seed`).
pub fn held_out(model: &ClipModel, world: &World, n: usize, seed: u64) -> Result<HeldOut> {
    use crate::zeroshot::{LabelSet, TemplateSet, ZeroShotClassifier};
    use rand::{Rng, SeedableRng};
    let _g = tch::no_grad_guard();
    let classifier = ZeroShotClassifier::build(
        model,
        &crate::tokenizer::ClipTokenizer::new(),
        LabelSet::parse_list("toy", &world::SHAPES.join(","))?,
        TemplateSet::builtin("single").expect("the single template set ships"),
    )?;
    let (mut clean, mut attacked, mut target) = (0usize, 0usize, 0usize);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let mut imgs = Vec::new();
        let mut truth = Vec::new();
        for &i in chunk {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(train::stream(
                seed,
                train::HELD_OUT_STREAM,
                i as u64,
            ));
            let scene = world.clean_scene(&mut rng);
            let t = (scene.shape + rng.gen_range(1..world::SHAPES.len())) % world::SHAPES.len();
            let mut w = world.word(&mut rng, world::SHAPES[t]);
            w.label = true;
            w.ink = [0, 0, 0];
            let labelled = world::Scene {
                word: Some(w),
                ..scene.clone()
            };
            imgs.push(crate::preprocess::to_normalized_tensor(
                &world.render(&scene),
            ));
            imgs.push(crate::preprocess::to_normalized_tensor(
                &world.render(&labelled),
            ));
            truth.push((scene.shape as i64, t as i64));
        }
        let f = model.encode_image(&crate::preprocess::batch(&imgs));
        let pred: Vec<i64> = Vec::try_from(classifier.logits(&f).argmax(-1, false))?;
        for (k, (c, t)) in truth.iter().enumerate() {
            clean += (pred[2 * k] == *c) as usize;
            attacked += (pred[2 * k + 1] == *c) as usize;
            target += (pred[2 * k + 1] == *t) as usize;
        }
    }
    let f = |k: usize| k as f64 / n.max(1) as f64;
    Ok(HeldOut {
        n,
        clean_accuracy: f(clean),
        attacked_accuracy: f(attacked),
        to_target: f(target),
    })
}
