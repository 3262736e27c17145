//! The defense stage: mitigations of typographic attacks as plug-ins on the sweep pipeline.
//!
//! One trait, [`Defense`], with four hook points, so a defense touches exactly the stage it works
//! on:
//! - **prompt** ([`Hook::Prompt`]): the template set and the zero-shot classifier
//!   ([`Defense::transform_templates`], [`Defense::transform_classifier`]);
//! - **image** ([`Hook::Image`]): the 8-bit RGB model input after CLIP's resize and centre crop,
//!   before normalisation ([`Defense::transform_image`]);
//! - **model** ([`Hook::Model`]): the weights ([`Defense::adapt_model`]), interventions through
//!   the model's taps ([`Defense::interventions`]) and test-time views of a batch
//!   ([`Defense::encode_views`]);
//! - **score** ([`Hook::Score`]): the image embeddings before they are scored
//!   ([`Defense::transform_features`]).
//!
//! `--defense name:key=value,…` is parsed by [`DefenseStack::parse`]; an unknown defense or
//! parameter, or a bad value, is a one-line [`DefenseError`]. Defenses compose in a defined
//! order ([`DefenseStack`]): by pipeline stage (prompt, image, model, score), and within a
//! stage in command-line order. Each defense's resolved parameters (defaults included) and, for
//! fitted defenses, the artifact, its sha256 and its calibration split go into the run's
//! provenance as a [`DefenseRecord`].
//!
//! Shipped defenses (sources in each module's docs): [`prompt`] (template sets naming the
//! confound), [`filters`] (Gaussian blur, downscale-upscale, JPEG re-compression, median),
//! [`mask`] (text masking: the renderer's oracle mask, a classical text detector, or the trained
//! OCR detector),
//! [`heads`] (typographic attention-head ablation), [`projection`] (reading-subspace
//! projection), [`prefix`] (Defense-Prefix), [`flip`] (flip consistency), [`interpolate`]
//! (weight interpolation). Fitting (`typoclip fit …`) lives in [`fit`]; calibration sets and
//! artifacts in [`calibration`].

pub mod calibration;
pub mod filters;
pub mod fit;
pub mod flip;
pub mod heads;
pub mod interpolate;
pub mod mask;
pub mod prefix;
pub mod projection;
pub mod prompt;

use std::collections::{BTreeMap, BTreeSet};

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::Tensor;

use crate::model::{ClipModel, Intervention, Probe};
use crate::tokenizer::ClipTokenizer;
use crate::zeroshot::{TemplateSet, ZeroShotClassifier};

pub use calibration::{CalibrationRecord, EvalSet};

/// Errors of the defense stage; each names the `--defense` spec or the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DefenseError {
    /// A bad `--defense` spec: unknown defense or parameter, or a bad value.
    #[error("--defense {spec}: {message}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
    /// A fitted artifact (or a checkpoint) that cannot be used.
    #[error("{path}: {message}")]
    Artifact {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A defense cannot run on this run's inputs (e.g. oracle masking on physical photos, or a
    /// calibration split that overlaps the evaluation).
    #[error("--defense {spec}: {message}")]
    Unusable {
        /// The spec as given.
        spec: String,
        /// Why.
        message: String,
    },
}

/// The pipeline stage a defense works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Prompt templates and the zero-shot classifier (applied first: the classifier is built
    /// before any image is seen).
    Prompt,
    /// The RGB model input, before normalisation.
    Image,
    /// Weights, interventions through the taps, test-time views.
    Model,
    /// Image embeddings before scoring.
    Score,
}

/// Per-image context of the image hook.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageContext<'a> {
    /// The attack renderer's mask at the model input (255 where the attack changed a pixel),
    /// when the image is a rendered attack; an all-zero mask (or `None` for clean images).
    pub oracle_mask: Option<&'a GrayImage>,
}

/// A mitigation. Every hook defaults to the identity; a defense overrides the hooks of its
/// stage only. Defenses are plain data (`Send + Sync`): the image hook runs on the sweep's
/// preprocessing threads.
pub trait Defense: Send + Sync + std::fmt::Debug {
    /// Image hook: the model input (`n×n` RGB after resize and centre crop) → defended input.
    fn transform_image(&self, image: RgbImage, _ctx: &ImageContext) -> RgbImage {
        image
    }

    /// Prompt hook: the template set the classifier is built from.
    fn transform_templates(&self, templates: TemplateSet) -> TemplateSet {
        templates
    }

    /// Prompt hook: the built classifier (e.g. rebuilt with learned token embeddings).
    fn transform_classifier(
        &self,
        _model: &ClipModel,
        _tokenizer: &ClipTokenizer,
        classifier: ZeroShotClassifier,
    ) -> Result<ZeroShotClassifier, DefenseError> {
        Ok(classifier)
    }

    /// Model hook: changes the weights once, before anything is encoded.
    fn adapt_model(&self, _model: &mut ClipModel) -> Result<(), DefenseError> {
        Ok(())
    }

    /// Model hook: checks that the defense fits this model (architecture, fitted model id).
    fn check_model(&self, _model: &ClipModel, _model_id: &str) -> Result<(), String> {
        Ok(())
    }

    /// Model hook: interventions applied through the image tower's taps on every forward.
    fn interventions(&self) -> Vec<Intervention> {
        Vec::new()
    }

    /// Model hook: image embeddings `[B, D]` of a normalised batch `[B, 3, n, n]`, given the
    /// inner encoder (which applies the interventions); e.g. combining views of the batch.
    fn encode_views(&self, images: &Tensor, encode: &dyn Fn(&Tensor) -> Tensor) -> Tensor {
        encode(images)
    }

    /// Score hook: image embeddings `[B, D]` → defended embeddings `[B, D]` (not normalised).
    fn transform_features(&self, features: &Tensor) -> Tensor {
        features.shallow_clone()
    }

    /// True when the image hook needs the renderer's oracle mask.
    fn needs_oracle_mask(&self) -> bool {
        false
    }

    /// A tag that changes when the defense changes the text tower's output for the same
    /// prompts (keys the text-embedding cache); `None` when it does not.
    fn text_cache_tag(&self) -> Option<String> {
        None
    }

    /// The calibration split, for fitted defenses.
    fn fitted(&self) -> Option<FittedRecord> {
        None
    }
}

/// A fitted defense's artifact and what it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedRecord {
    /// The artifact file, as given.
    pub artifact: String,
    /// sha256 of the artifact file.
    pub sha256: String,
    /// What `typoclip fit` fitted it on.
    pub calibration: CalibrationRecord,
}

/// One `--defense` as recorded in `provenance.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefenseRecord {
    /// The spec as given on the command line.
    pub spec: String,
    /// The defense's name.
    pub name: String,
    /// The stage it works on.
    pub hook: Hook,
    /// Every parameter, defaults included.
    pub params: BTreeMap<String, Value>,
    /// For fitted defenses: the artifact and its calibration split; `null` otherwise.
    pub fitted: Option<FittedRecord>,
}

/// A `--defense` spec split into its name and `key=value` parameters, each parameter read at
/// most once; unknown parameters are an error.
#[derive(Debug)]
pub struct Params {
    spec: String,
    name: String,
    given: BTreeMap<String, String>,
    record: BTreeMap<String, Value>,
}

impl Params {
    /// Parses `name` or `name:key=value,key=value`.
    pub fn parse(spec: &str) -> Result<Params, DefenseError> {
        let err = |message: String| DefenseError::Spec {
            spec: spec.into(),
            message,
        };
        let (name, rest) = match spec.split_once(':') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (spec.trim(), None),
        };
        if name.is_empty() {
            return Err(err(format!(
                "empty defense name (known: {})",
                known_names().join(", ")
            )));
        }
        let mut given = BTreeMap::new();
        for part in rest
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let Some((k, v)) = part.split_once('=') else {
                return Err(err(format!("parameter `{part}` is not key=value")));
            };
            let k = k.trim().to_string();
            if given.insert(k.clone(), v.trim().to_string()).is_some() {
                return Err(err(format!("parameter `{k}` given twice")));
            }
        }
        Ok(Params {
            spec: spec.into(),
            name: name.into(),
            given,
            record: BTreeMap::new(),
        })
    }

    /// The defense's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole spec.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// An error about this spec.
    pub fn error(&self, message: impl Into<String>) -> DefenseError {
        DefenseError::Spec {
            spec: self.spec.clone(),
            message: message.into(),
        }
    }

    fn raw(&self, key: &str) -> Option<&str> {
        self.given.get(key).map(String::as_str)
    }

    /// A number in `[lo, hi]`, `default` when absent.
    pub fn f64(&mut self, key: &str, default: f64, lo: f64, hi: f64) -> Result<f64, DefenseError> {
        let v = match self.raw(key) {
            None => default,
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| self.error(format!("{key}: `{s}` is not a number")))?,
        };
        if !(lo..=hi).contains(&v) {
            return Err(self.error(format!("{key}: {v} is outside [{lo}, {hi}]")));
        }
        self.record.insert(key.into(), serde_json::json!(v));
        Ok(v)
    }

    /// A whole number in `[lo, hi]`, `default` when absent.
    pub fn usize(
        &mut self,
        key: &str,
        default: usize,
        lo: usize,
        hi: usize,
    ) -> Result<usize, DefenseError> {
        let v = match self.raw(key) {
            None => default,
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| self.error(format!("{key}: `{s}` is not a whole number")))?,
        };
        if !(lo..=hi).contains(&v) {
            return Err(self.error(format!("{key}: {v} is outside [{lo}, {hi}]")));
        }
        self.record.insert(key.into(), serde_json::json!(v));
        Ok(v)
    }

    /// One of `choices`, `default` when absent.
    pub fn choice(
        &mut self,
        key: &str,
        default: &str,
        choices: &[&str],
    ) -> Result<String, DefenseError> {
        let v = self.raw(key).unwrap_or(default).to_string();
        if !choices.contains(&v.as_str()) {
            return Err(self.error(format!("{key}: `{v}` is not one of {}", choices.join(", "))));
        }
        self.record.insert(key.into(), serde_json::json!(v));
        Ok(v)
    }

    /// A free string (a path, a set name); required when `default` is `None`.
    pub fn string(&mut self, key: &str, default: Option<&str>) -> Result<String, DefenseError> {
        let v = match (self.raw(key), default) {
            (Some(v), _) => v.to_string(),
            (None, Some(d)) => d.to_string(),
            (None, None) => return Err(self.error(format!("parameter `{key}` is required"))),
        };
        if v.is_empty() {
            return Err(self.error(format!("{key}: empty value")));
        }
        self.record.insert(key.into(), serde_json::json!(v));
        Ok(v)
    }

    /// Records a derived value (e.g. a file's sha256) with the parameters.
    pub fn note(&mut self, key: &str, value: Value) {
        self.record.insert(key.into(), value);
    }

    /// Fails on parameters the defense does not take; returns the recorded parameters.
    fn finish(self, known: &[&str]) -> Result<BTreeMap<String, Value>, DefenseError> {
        for k in self.given.keys() {
            if !known.contains(&k.as_str()) {
                return Err(self.error(format!(
                    "unknown parameter `{k}` for {} (it takes: {})",
                    self.name,
                    if known.is_empty() {
                        "no parameters".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        Ok(self.record)
    }
}

type Builder = fn(&mut Params) -> Result<Box<dyn Defense>, DefenseError>;

/// One shipped defense: its name, stage, parameters and constructor.
struct Entry {
    name: &'static str,
    hook: Hook,
    params: &'static [&'static str],
    build: Builder,
}

const REGISTRY: &[Entry] = &[
    Entry {
        name: "prompt",
        hook: Hook::Prompt,
        params: &["set", "mode"],
        build: prompt::PromptDefense::build,
    },
    Entry {
        name: "prefix",
        hook: Hook::Prompt,
        params: &["file"],
        build: prefix::PrefixDefense::build,
    },
    Entry {
        name: "blur",
        hook: Hook::Image,
        params: &["sigma"],
        build: filters::GaussianBlur::build,
    },
    Entry {
        name: "downscale",
        hook: Hook::Image,
        params: &["scale"],
        build: filters::Downscale::build,
    },
    Entry {
        name: "jpeg",
        hook: Hook::Image,
        params: &["quality"],
        build: filters::JpegRecompress::build,
    },
    Entry {
        name: "median",
        hook: Hook::Image,
        params: &["radius"],
        build: filters::Median::build,
    },
    Entry {
        name: "mask",
        hook: Hook::Image,
        params: &[
            "source",
            "fill",
            "dilate",
            "radius",
            "threshold",
            "thresh",
            "box_thresh",
            "unclip",
            "device",
        ],
        build: mask::TextMask::build,
    },
    Entry {
        name: "heads",
        hook: Hook::Model,
        params: &["file", "k"],
        build: heads::HeadAblation::build,
    },
    Entry {
        name: "flip",
        hook: Hook::Model,
        params: &["mode"],
        build: flip::FlipConsistency::build,
    },
    Entry {
        name: "interpolate",
        hook: Hook::Model,
        params: &["with", "alpha"],
        build: interpolate::Interpolate::build,
    },
    Entry {
        name: "projection",
        hook: Hook::Score,
        params: &["file", "k"],
        build: projection::Projection::build,
    },
];

/// Names of the shipped defenses.
pub fn known_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|e| e.name).collect()
}

/// Parses one `--defense` spec into a defense and its record.
pub fn parse_defense(spec: &str) -> Result<(DefenseRecord, Box<dyn Defense>), DefenseError> {
    let mut params = Params::parse(spec)?;
    let Some(entry) = REGISTRY.iter().find(|e| e.name == params.name()) else {
        return Err(params.error(format!(
            "unknown defense `{}` (known: {})",
            params.name(),
            known_names().join(", ")
        )));
    };
    // Unknown parameters are refused before any file is read.
    for k in params.given.keys() {
        if !entry.params.contains(&k.as_str()) {
            return Err(params.error(format!(
                "unknown parameter `{k}` for {} (it takes: {})",
                entry.name,
                entry.params.join(", ")
            )));
        }
    }
    let defense = (entry.build)(&mut params)?;
    let fitted = defense.fitted();
    let record_params = params.finish(entry.params)?;
    Ok((
        DefenseRecord {
            spec: spec.into(),
            name: entry.name.into(),
            hook: entry.hook,
            params: record_params,
            fitted,
        },
        defense,
    ))
}

/// The defenses of a run, in application order: by stage (prompt, image, model, score), then
/// in command-line order within a stage.
#[derive(Debug, Default)]
pub struct DefenseStack {
    defenses: Vec<(DefenseRecord, Box<dyn Defense>)>,
}

impl DefenseStack {
    /// No defense: every hook is the identity.
    pub fn none() -> DefenseStack {
        DefenseStack::default()
    }

    /// Parses every `--defense` spec (all errors before any work).
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<DefenseStack, DefenseError> {
        let mut defenses = Vec::new();
        for s in specs {
            defenses.push(parse_defense(s.as_ref())?);
        }
        // Stable: command-line order is kept within a stage.
        defenses.sort_by_key(|(r, _)| r.hook);
        Ok(DefenseStack { defenses })
    }

    /// True when there is no defense.
    pub fn is_empty(&self) -> bool {
        self.defenses.is_empty()
    }

    /// The provenance records, in application order.
    pub fn records(&self) -> Vec<DefenseRecord> {
        self.defenses.iter().map(|(r, _)| r.clone()).collect()
    }

    fn with_hook(&self, hook: Hook) -> impl Iterator<Item = &dyn Defense> {
        self.defenses
            .iter()
            .filter(move |(r, _)| r.hook == hook)
            .map(|(_, d)| d.as_ref())
    }

    /// True when some image defense needs the renderer's oracle mask.
    pub fn needs_oracle_mask(&self) -> bool {
        self.defenses.iter().any(|(_, d)| d.needs_oracle_mask())
    }

    /// Refuses defenses that cannot run on physical photos (no renderer, hence no oracle mask).
    pub fn check_physical(&self) -> Result<(), DefenseError> {
        match self.defenses.iter().find(|(_, d)| d.needs_oracle_mask()) {
            Some((r, _)) => Err(DefenseError::Unusable {
                spec: r.spec.clone(),
                message: "the oracle mask needs rendered attacks (--attacks SPEC); physical \
                          photos carry no mask — use mask:source=ocr or mask:source=detector"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    /// Checks each defense against the model (architecture, the model a defense was fitted on).
    pub fn check_model(&self, model: &ClipModel, model_id: &str) -> Result<(), DefenseError> {
        for (r, d) in &self.defenses {
            d.check_model(model, model_id)
                .map_err(|message| DefenseError::Unusable {
                    spec: r.spec.clone(),
                    message,
                })?;
        }
        Ok(())
    }

    /// Refuses fitted defenses whose calibration split shares an image, word or font with the
    /// evaluation.
    pub fn check_disjoint(&self, eval: &EvalSet) -> Result<(), DefenseError> {
        for (r, d) in &self.defenses {
            if let Some(f) = d.fitted() {
                f.calibration
                    .check_disjoint(eval)
                    .map_err(|message| DefenseError::Unusable {
                        spec: r.spec.clone(),
                        message,
                    })?;
            }
        }
        Ok(())
    }

    /// True when some defense is fitted.
    pub fn any_fitted(&self) -> bool {
        self.defenses.iter().any(|(r, _)| r.fitted.is_some())
    }

    /// Image hook, in order.
    pub fn transform_image(&self, image: RgbImage, ctx: &ImageContext) -> RgbImage {
        self.with_hook(Hook::Image)
            .fold(image, |img, d| d.transform_image(img, ctx))
    }

    /// Prompt hook on the template set, in order.
    pub fn transform_templates(&self, templates: TemplateSet) -> TemplateSet {
        self.defenses
            .iter()
            .fold(templates, |t, (_, d)| d.transform_templates(t))
    }

    /// Prompt hook on the classifier, in order.
    pub fn transform_classifier(
        &self,
        model: &ClipModel,
        tokenizer: &ClipTokenizer,
        classifier: ZeroShotClassifier,
    ) -> Result<ZeroShotClassifier, DefenseError> {
        let mut c = classifier;
        for (_, d) in &self.defenses {
            c = d.transform_classifier(model, tokenizer, c)?;
        }
        Ok(c)
    }

    /// Model hook: weight changes, in order.
    pub fn adapt_model(&self, model: &mut ClipModel) -> Result<(), DefenseError> {
        for (_, d) in &self.defenses {
            d.adapt_model(model)?;
        }
        Ok(())
    }

    /// The text-cache tag of the defenses that change text embeddings (`None` when none does).
    pub fn text_cache_tag(&self) -> Option<String> {
        let tags: Vec<String> = self
            .defenses
            .iter()
            .filter_map(|(_, d)| d.text_cache_tag())
            .collect();
        (!tags.is_empty()).then(|| tags.join("+"))
    }

    /// Image embeddings `[B, D]` of a normalised batch `[B, 3, n, n]` with the model and score
    /// hooks applied: interventions of every model defense on each forward, then each
    /// defense's views (the first defense innermost), then each score transform in order.
    /// With no defense this is exactly [`ClipModel::encode_image`].
    pub fn encode_images(&self, model: &ClipModel, images: &Tensor) -> Tensor {
        if self.is_empty() {
            return model.encode_image(images);
        }
        let base = |x: &Tensor| -> Tensor {
            let mut probe = Probe::none();
            for (_, d) in &self.defenses {
                for iv in d.interventions() {
                    probe = probe.with_intervention(iv);
                }
            }
            model.encode_image_probed(x, &mut probe)
        };
        let views: Vec<&dyn Defense> = self.with_hook(Hook::Model).collect();
        let f = encode_nested(&views, images, &base);
        self.with_hook(Hook::Score)
            .fold(f, |f, d| d.transform_features(&f))
    }
}

/// `views[last]( … views[0](encode) … )` applied to `images`.
fn encode_nested(
    views: &[&dyn Defense],
    images: &Tensor,
    encode: &dyn Fn(&Tensor) -> Tensor,
) -> Tensor {
    match views.split_last() {
        None => encode(images),
        Some((outer, inner)) => {
            outer.encode_views(images, &|x: &Tensor| encode_nested(inner, x, encode))
        }
    }
}

/// The words and fonts an evaluation shows, for the calibration disjointness check: the text
/// of every text layer and the target of every variant (rendered attacks) or the written word
/// (physical photos); the primary font of every text layer.
pub fn variant_words_and_fonts(
    variants: &[crate::attack::Variant],
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut words = BTreeSet::new();
    let mut fonts = BTreeSet::new();
    for v in variants {
        words.insert(v.target.to_lowercase());
        for l in &v.layers {
            let style = match l {
                crate::attack::Layer::Text { style, .. }
                | crate::attack::Layer::Label { style, .. }
                | crate::attack::Layer::Scatter { style, .. } => style,
            };
            if !style.text.trim().is_empty() {
                words.insert(style.text.trim().to_lowercase());
            }
            if let Some(f) = style.fonts.fonts.first() {
                fonts.insert(f.name.clone());
            }
        }
    }
    (words, fonts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_defense_and_parameter_are_one_line_errors() {
        let e = DefenseStack::parse(&["sharpen:amount=2"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("--defense sharpen:amount=2: unknown defense `sharpen`"));
        assert!(msg.contains("blur") && !msg.contains('\n'), "{msg}");
        let e = DefenseStack::parse(&["blur:sigmx=1"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--defense blur:sigmx=1: unknown parameter `sigmx` for blur (it takes: sigma)"
        );
        let e = DefenseStack::parse(&["blur:sigma=abc"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sigma: `abc` is not a number"), "{e}");
        let e = DefenseStack::parse(&["blur:sigma=-1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        let e = DefenseStack::parse(&["blur:sigma"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not key=value"), "{e}");
        let e = DefenseStack::parse(&["blur:sigma=1,sigma=2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn records_hold_defaults_and_stage_order() {
        let s = DefenseStack::parse(&["flip", "jpeg:quality=60", "blur", "prompt:set=ignore-text"])
            .unwrap();
        let r = s.records();
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["prompt", "jpeg", "blur", "flip"]);
        assert_eq!(r[1].params["quality"], serde_json::json!(60));
        assert_eq!(r[2].params["sigma"], serde_json::json!(1.0));
        assert!(r.iter().all(|r| r.fitted.is_none()));
        assert_eq!(r[0].hook, Hook::Prompt);
        let json = serde_json::to_value(&r[3]).unwrap();
        assert_eq!(json["hook"], "model");
        assert!(json["fitted"].is_null());
    }
}
