//! Contrastive training of the toy CLIP on the synthetic world, natively in tch: autograd,
//! AdamW (decoupled weight decay, open_clip's exclusions), linear warm-up then cosine decay,
//! CLIP's symmetric cross-entropy with a learned temperature clamped at 100.
//!
//! Deterministic from its seed: the initial weights come from `tch::manual_seed(seed)`; image
//! `i` of step `s` is drawn from its own ChaCha stream keyed by `(seed, s, i)`, so batches do not
//! depend on what ran before. The optimiser is written here (not libtorch's) so its moments can
//! be checkpointed: `train-state.safetensors` holds every parameter and both moments, written
//! atomically every `checkpoint_every` steps; a resumed run continues from it and ends with the
//! same weights as one that was never interrupted (same thread count). The result is an
//! open_clip folder ([`super::save_folder`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::world::World;
use crate::attack::render::splitmix;
use crate::model::ClipModel;
use crate::tokenizer::ClipTokenizer;

/// What one training run is: the world, the model and the optimiser's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Seed of the weights and of every batch.
    pub seed: u64,
    /// Optimiser steps.
    pub steps: usize,
    /// Images (and captions) per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// AdamW weight decay (not on gains, biases, embeddings' scale or the temperature).
    pub weight_decay: f64,
    /// Fraction of training scenes with a word written on them.
    pub word_prob: f64,
    /// Fraction of written words that name the object they are on
    /// ([`World::word_matches_object`]).
    #[serde(default)]
    pub word_matches_object: f64,
    /// Fraction of the captions of scenes whose word is a class name that name the word as the
    /// picture's subject ([`World::word_names_subject`]).
    #[serde(default)]
    pub word_names_subject: f64,
    /// Fraction of scenes with a class-name word that show the word alone, no object
    /// ([`World::word_only`]).
    #[serde(default)]
    pub word_only: f64,
    /// Fraction of batch pairs (items 2k, 2k+1) made twins ([`World::twin`]): one object
    /// scene twice, with two different class names written on it, so that only reading tells
    /// the pair apart.
    #[serde(default)]
    pub word_twins: f64,
    /// Factor on the written words' font size ([`World::word_scale`]).
    #[serde(default = "one")]
    pub word_scale: f32,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            seed: 0,
            steps: 1600,
            batch: 128,
            lr: 1e-3,
            warmup: 40,
            weight_decay: 0.1,
            word_prob: 0.4,
            word_matches_object: 0.5,
            word_names_subject: 0.0,
            word_only: 0.5,
            word_twins: 0.0,
            word_scale: 2.5,
            checkpoint_every: 50,
        }
    }
}

impl TrainSettings {
    /// The learning rate at step `s` (0-based): linear warm-up, then cosine to 0.
    pub fn lr_at(&self, s: usize) -> f64 {
        if s < self.warmup {
            return self.lr * (s + 1) as f64 / self.warmup as f64;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let t = (s - self.warmup) as f64 / span;
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// The world these settings train on (the toy's image size, their word probabilities and
    /// size).
    pub fn world(&self) -> World {
        World::new(super::IMAGE_SIZE, self.word_prob)
            .with_words(
                self.word_matches_object,
                self.word_names_subject,
                self.word_only,
            )
            .with_word_scale(self.word_scale)
    }

    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch < 2 || self.checkpoint_every == 0 {
            bail!("toy train: steps and checkpoint_every must be ≥ 1 and batch ≥ 2");
        }
        let unit = 0.0..=1.0;
        if !unit.contains(&self.word_prob)
            || !unit.contains(&self.word_matches_object)
            || !unit.contains(&self.word_names_subject)
            || !unit.contains(&self.word_only)
            || !unit.contains(&self.word_twins)
            || !(0.25..=4.0).contains(&self.word_scale)
            || self.lr.is_nan()
            || self.lr <= 0.0
        {
            bail!("toy train: word_prob, word_matches_object, word_names_subject, word_only and word_twins must be in [0, 1], word_scale in [0.25, 4] and lr > 0");
        }
        Ok(())
    }
}

fn one() -> f32 {
    1.0
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Mean loss over the last 20 steps.
    pub final_loss: f64,
    /// Loss at the first step.
    pub first_loss: f64,
    /// Steps run by this process (the rest came from a checkpoint).
    pub steps_run: usize,
    /// Wall-clock seconds of this process's steps.
    pub seconds: f64,
}

/// A batch: normalised images `[B, 3, n, n]` and caption tokens `[B, L]`, `L` the context
/// length, or with `unpadded` (a causal text tower pooled inside the row, which ignores what
/// follows its end-of-text token) the longest caption's length.
pub fn batch(
    world: &World,
    tok: &ClipTokenizer,
    settings: &TrainSettings,
    step: usize,
    context_length: usize,
    unpadded: bool,
) -> (Tensor, Tensor) {
    let items: Vec<(Tensor, Vec<i64>)> = (0..settings.batch)
        .into_par_iter()
        .map(|i| {
            let seed = |i: usize| stream(settings.seed, step as u64, i as u64);
            let mut rng = ChaCha8Rng::seed_from_u64(seed(i));
            let mut scene = world.scene(&mut rng);
            // (No draw at probability 0: the default world's batches do not depend on it.)
            if settings.word_twins > 0.0 && i / 2 * 2 + 1 < settings.batch {
                // Both items of pair k draw the pair's decision and its first scene from the
                // streams of item 2k and of `TWIN_STREAM`.
                let first = i / 2 * 2;
                let mut pair = ChaCha8Rng::seed_from_u64(seed(first) ^ TWIN_STREAM);
                if pair.gen_bool(settings.word_twins) {
                    let base = if i == first {
                        scene
                    } else {
                        world.scene(&mut ChaCha8Rng::seed_from_u64(seed(first)))
                    };
                    let a = world.twin(&base, &mut pair);
                    scene = if i == first {
                        a
                    } else {
                        world.twin(&a, &mut pair)
                    };
                }
            }
            let caption = world.caption(&scene, &mut rng);
            let img = world.render(&scene);
            (
                crate::preprocess::to_normalized_tensor(&img),
                tok.encode_row(&caption, context_length),
            )
        })
        .collect();
    let (imgs, rows): (Vec<Tensor>, Vec<Vec<i64>>) = items.into_iter().unzip();
    let width = if unpadded {
        rows.iter().map(Vec::len).max().unwrap_or(1)
    } else {
        context_length
    };
    (
        crate::preprocess::batch(&imgs),
        crate::tokenizer::pad_rows(&rows, width),
    )
}

/// Mixed into item 2k's stream seed for the draws of its twin pair ([`TrainSettings::word_twins`]).
const TWIN_STREAM: u64 = 0x7715_7715_7715_7715;

/// The `s` of [`stream`] for `typoclip toy world`'s sample scenes (training steps count up from
/// 0, so these streams never meet a training batch).
pub const SAMPLES_STREAM: u64 = u64::MAX;
/// The `s` of [`stream`] for the held-out scenes measured after training.
pub const HELD_OUT_STREAM: u64 = u64::MAX - 1;
/// The `s` of [`stream`] for the `synthetic` dataset kind's scenes.
pub const DATASET_STREAM: u64 = u64::MAX - 2;

/// The seed of item `i` of step `s` of a run seeded `seed`.
pub fn stream(seed: u64, s: u64, i: u64) -> u64 {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for v in [s, i] {
        x = splitmix(x ^ splitmix(v.wrapping_add(0x632b_e59b_d9b4_e019)));
    }
    x
}

/// AdamW over named parameters, in name order, with its state as tensors.
struct AdamW {
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
    t: i64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.98;
const EPS: f64 = 1e-6;

impl AdamW {
    fn new(model: &ClipModel) -> AdamW {
        let mut vars: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let decay = vars.iter().map(|(n, p)| decays(n, p)).collect();
        let m = vars.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = vars.iter().map(|(_, p)| p.zeros_like()).collect();
        let (names, params) = vars.into_iter().unzip();
        AdamW {
            names,
            params,
            m,
            v,
            decay,
            t: 0,
        }
    }

    fn step(&mut self, lr: f64, weight_decay: f64) {
        let _g = tch::no_grad_guard();
        self.t += 1;
        let c1 = 1.0 - BETA1.powi(self.t as i32);
        let c2 = 1.0 - BETA2.powi(self.t as i32);
        for k in 0..self.params.len() {
            let p = &mut self.params[k];
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            if self.decay[k] {
                let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
            }
            let _ = self.m[k].g_mul_scalar_(BETA1).g_add_(&(&g * (1.0 - BETA1)));
            let _ = self.v[k]
                .g_mul_scalar_(BETA2)
                .g_add_(&(&g * &g * (1.0 - BETA2)));
            let denom = (&self.v[k] / c2).sqrt() + EPS;
            let update = (&self.m[k] / c1) / denom * lr;
            let _ = p.g_sub_(&update);
            let _ = p.grad().zero_();
        }
    }

    fn state_path(dir: &Path) -> PathBuf {
        dir.join("train-state.safetensors")
    }

    fn save(&self, dir: &Path, step: usize, settings: &TrainSettings) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for k in 0..self.params.len() {
            let n = &self.names[k];
            named.push((format!("param/{n}"), self.params[k].detach()));
            named.push((format!("m/{n}"), self.m[k].shallow_clone()));
            named.push((format!("v/{n}"), self.v[k].shallow_clone()));
        }
        named.push(("t".into(), Tensor::from(self.t)));
        named.push(("step".into(), Tensor::from(step as i64)));
        let tmp = dir.join("train-state.safetensors.tmp");
        Tensor::write_safetensors(&named, &tmp).context("writing the training checkpoint")?;
        std::fs::write(
            dir.join("train-settings.json.tmp"),
            serde_json::to_string_pretty(settings)?,
        )?;
        std::fs::rename(
            dir.join("train-settings.json.tmp"),
            dir.join("train-settings.json"),
        )?;
        std::fs::rename(&tmp, Self::state_path(dir))?;
        Ok(())
    }

    /// Restores a checkpoint; returns the step it was taken after.
    fn load(&mut self, dir: &Path, settings: &TrainSettings) -> Result<Option<usize>> {
        let path = Self::state_path(dir);
        if !path.exists() {
            return Ok(None);
        }
        let sp = dir.join("train-settings.json");
        let saved: TrainSettings = serde_json::from_str(
            &std::fs::read_to_string(&sp).with_context(|| format!("{}", sp.display()))?,
        )
        .with_context(|| format!("{}: not a toy training settings file", sp.display()))?;
        if &saved != settings {
            bail!(
                "{}: a checkpoint of other settings ({}); use another --out or delete it",
                path.display(),
                serde_json::to_string(&saved)?
            );
        }
        let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .with_context(|| format!("{}: unreadable checkpoint", path.display()))?
            .into_iter()
            .collect();
        let get = |k: &str| {
            tensors
                .get(k)
                .with_context(|| format!("{}: missing {k}", path.display()))
        };
        let _g = tch::no_grad_guard();
        for k in 0..self.params.len() {
            let n = self.names[k].clone();
            self.params[k].copy_(get(&format!("param/{n}"))?);
            self.m[k].copy_(get(&format!("m/{n}"))?);
            self.v[k].copy_(get(&format!("v/{n}"))?);
        }
        self.t = get("t")?.int64_value(&[]);
        Ok(Some(get("step")?.int64_value(&[]) as usize))
    }
}

/// open_clip's weight-decay rule: no decay for gains, biases, LayerNorms, the temperature, or
/// any tensor of fewer than two dimensions.
fn decays(name: &str, p: &Tensor) -> bool {
    !(p.dim() < 2
        || name.contains("bn")
        || name.contains("ln")
        || name.contains("bias")
        || name.contains("logit_scale"))
}

/// CLIP's contrastive loss of one batch.
pub fn loss(model: &ClipModel, images: &Tensor, tokens: &Tensor) -> Tensor {
    let fi = crate::model::l2_normalize(&model.encode_image(images));
    let ft = crate::model::l2_normalize(&model.encode_text(tokens));
    let logits = fi.matmul(&ft.transpose(0, 1)) * model.logit_scale_tensor().exp();
    let n = images.size()[0];
    let labels = Tensor::arange(n, (Kind::Int64, images.device()));
    (logits.cross_entropy_for_logits(&labels)
        + logits.transpose(0, 1).cross_entropy_for_logits(&labels))
        / 2.0
}

/// Scales the residual branches' output projections by `(2·layers)^-½` (open_clip's
/// `proj_std`), so the freshly built towers start near the identity.
fn scale_residual_outputs(model: &ClipModel) {
    let cfg = model.config();
    let _g = tch::no_grad_guard();
    for (name, mut t) in model.var_store().variables() {
        let tower_layers = if name.starts_with("visual.") {
            match &cfg.vision {
                crate::model::VisionConfig::VisionTransformer { layers, .. } => *layers,
                _ => 1,
            }
        } else {
            cfg.text.layers
        };
        if name.ends_with("attn.out_proj.weight") || name.ends_with("mlp.c_proj.weight") {
            let _ = t.g_mul_scalar_((2.0 * tower_layers as f64).powf(-0.5));
        }
    }
}

/// Trains `model` (freshly built from the toy config) in `dir`, resuming from the checkpoint
/// there when one of the same settings exists. `on_step(step, loss, model)` is called after each step.
/// With `stop_after = Some(k)`, stops after `k` steps of this call, checkpointed, and returns
/// `None` (a later call resumes there).
pub fn train(
    model: &ClipModel,
    world: &World,
    settings: &TrainSettings,
    dir: &Path,
    stop_after: Option<usize>,
    mut on_step: impl FnMut(usize, f64, &ClipModel),
) -> Result<Option<TrainOutcome>> {
    settings.validate()?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    scale_residual_outputs(model);
    let mut opt = AdamW::new(model);
    let start = opt.load(dir, settings)?.unwrap_or(0);
    let ctx = model.config().text.context_length as usize;
    let unpadded = model.text_accepts_unpadded();
    let max_scale = 100f64.ln();
    let t0 = Instant::now();
    let mut losses = Vec::new();
    let tok = ClipTokenizer::new();
    for s in start..settings.steps {
        let (images, tokens) = batch(world, &tok, settings, s, ctx, unpadded);
        // The CLI runs under a global no-grad guard; training records.
        let l = tch::with_grad(|| {
            let l = loss(model, &images, &tokens);
            l.backward();
            l
        });
        opt.step(settings.lr_at(s), settings.weight_decay);
        {
            let _g = tch::no_grad_guard();
            let _ = model
                .logit_scale_tensor()
                .shallow_clone()
                .clamp_(0.0, max_scale);
        }
        let lv = l.double_value(&[]);
        if !lv.is_finite() {
            bail!("toy train: the loss became {lv} at step {s}");
        }
        losses.push(lv);
        on_step(s, lv, model);
        let stop = stop_after.is_some_and(|k| losses.len() >= k) && s + 1 < settings.steps;
        if stop || ((s + 1) % settings.checkpoint_every == 0 && s + 1 < settings.steps) {
            opt.save(dir, s + 1, settings)?;
        }
        if stop {
            return Ok(None);
        }
    }
    model.weights_changed();
    let tail = &losses[losses.len().saturating_sub(20)..];
    Ok(Some(TrainOutcome {
        final_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        steps_run: losses.len(),
        seconds: t0.elapsed().as_secs_f64(),
    }))
}
