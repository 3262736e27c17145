//! Honest fitting: calibration sets and fitted-defense artifacts.
//!
//! A defense that learns something (head ablation, reading-subspace projection, defense prefix)
//! is fitted by `typoclip fit …` on a *calibration set*: clean images of a dataset, each with
//! every calibration word rendered on it in every calibration font ([`CalibrationSet`]). The
//! artifact records the split ([`CalibrationRecord`]: image ids and content sha256s, words,
//! fonts, seed, model). At sweep time [`CalibrationRecord::check_disjoint`] refuses an evaluation
//! that shares an image (by content), a word (case-insensitive; rendered texts and attack
//! targets, or the words written in physical photos) or a font with the calibration set. Fonts
//! of physical photos are unknown and not checked.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::Tensor;

use super::DefenseError;
use crate::dataset::descriptor::Sample;

/// What a fitted defense was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// Dataset name.
    pub dataset: String,
    /// Sample ids of the calibration images, in order.
    pub images: Vec<String>,
    /// sha256 of each image file, in the same order.
    pub images_sha256: Vec<String>,
    /// The calibration words.
    pub words: Vec<String>,
    /// The calibration fonts.
    pub fonts: Vec<String>,
    /// The size of the calibration labels (artifacts written before this field: the default).
    #[serde(default)]
    pub label_size: LabelSize,
    /// Seed of the rendering (placements) and of any fitting randomness.
    pub seed: u64,
    /// The model it was fitted with (checkpoint sha256 or random spec).
    pub model_id: String,
}

/// What an evaluation run shows: image contents, words and fonts.
#[derive(Debug, Clone, Default)]
pub struct EvalSet {
    /// sha256 of every evaluated image file, with its id.
    pub images: Vec<(String, String)>,
    /// Words (lowercase).
    pub words: BTreeSet<String>,
    /// Fonts (names as resolved by the font book); empty when unknown.
    pub fonts: BTreeSet<String>,
}

impl CalibrationRecord {
    /// `Err(reason)` when the calibration set shares an image, word or font with `eval`.
    pub fn check_disjoint(&self, eval: &EvalSet) -> Result<(), String> {
        let mine: HashSet<&str> = self.images_sha256.iter().map(String::as_str).collect();
        let shared: Vec<&str> = eval
            .images
            .iter()
            .filter(|(_, h)| mine.contains(h.as_str()))
            .map(|(id, _)| id.as_str())
            .collect();
        if let Some(first) = shared.first() {
            return Err(format!(
                "fitted on images this run evaluates ({} shared, e.g. `{first}`); fit on a \
                 disjoint calibration split",
                shared.len()
            ));
        }
        let words: Vec<String> = self
            .words
            .iter()
            .map(|w| w.to_lowercase())
            .filter(|w| eval.words.contains(w))
            .collect();
        if !words.is_empty() {
            return Err(format!(
                "fitted on words this run evaluates ({}); calibrate with other words",
                words.join(", ")
            ));
        }
        let fonts: Vec<&String> = self
            .fonts
            .iter()
            .filter(|f| eval.fonts.contains(*f))
            .collect();
        if !fonts.is_empty() {
            return Err(format!(
                "fitted on fonts this run evaluates ({}); calibrate with other fonts",
                fonts
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }
}

/// Where `typoclip fit KIND` writes its artifact and `--defense KIND` reads it unless told
/// otherwise: `results/fitted/KIND.json` (relative to the working directory).
pub fn default_artifact(kind: &str) -> String {
    format!("results/fitted/{kind}.json")
}

/// Format tag of artifact files.
pub const ARTIFACT_FORMAT: &str = "typoclip-defense-artifact/1";

/// A fitted defense on disk (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    /// [`ARTIFACT_FORMAT`].
    pub format: String,
    /// `projection`, `heads` or `prefix`.
    pub kind: String,
    /// Present (and first among the facts) when fitted with random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// typoclip version.
    pub typoclip_version: String,
    /// Git commit typoclip was built from.
    pub git_commit: String,
    /// The model spec.
    pub model: String,
    /// True when the weights were random.
    pub random_weights: bool,
    /// The calibration split.
    pub calibration: CalibrationRecord,
    /// Fitting settings and outcomes (losses, scores).
    pub fit: BTreeMap<String, Value>,
    /// The fitted values.
    pub data: Value,
}

impl Artifact {
    /// Writes the artifact (pretty JSON).
    pub fn write(&self, path: &Path) -> Result<(), DefenseError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DefenseError::Artifact {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
        }
        std::fs::write(
            path,
            serde_json::to_vec_pretty(self).expect("serialisable artifact"),
        )
        .map_err(|e| DefenseError::Artifact {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Reads an artifact of `kind`; returns it with the file's sha256.
    pub fn read(path: &Path, kind: &str) -> Result<(Artifact, String), DefenseError> {
        let err = |message: String| DefenseError::Artifact {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let a: Artifact = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("not a typoclip defense artifact: {e}")))?;
        if a.format != ARTIFACT_FORMAT {
            return Err(err(format!(
                "format: `{}` is not {ARTIFACT_FORMAT}",
                a.format
            )));
        }
        if a.kind != kind {
            return Err(err(format!(
                "kind: this artifact is `{}`, not `{kind}` (made by `typoclip fit {}`)",
                a.kind, a.kind
            )));
        }
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&bytes))
        };
        Ok((a, sha))
    }

    /// `Err` when the run's model is not the one the artifact was fitted with.
    pub fn check_model(&self, model_id: &str) -> Result<(), String> {
        if self.calibration.model_id != model_id {
            return Err(format!(
                "fitted with model {} but this run uses {}",
                short(&self.calibration.model_id),
                short(model_id)
            ));
        }
        Ok(())
    }
}

fn short(s: &str) -> String {
    if s.len() > 24 {
        format!("{}…", &s[..24])
    } else {
        s.to_string()
    }
}

/// One attacked calibration image.
#[derive(Debug)]
pub struct CalibrationItem {
    /// Index of the clean image in [`CalibrationSet::clean`].
    pub image: usize,
    /// The word written on it.
    pub word: String,
    /// The font it is written in.
    pub font: String,
    /// The attacked model input, normalised `[3, n, n]`.
    pub attacked: Tensor,
}

/// Clean calibration images and every (image, word, font) attack on them.
#[derive(Debug)]
pub struct CalibrationSet {
    /// What it is made of.
    pub record: CalibrationRecord,
    /// Clean model inputs, normalised `[3, n, n]`.
    pub clean: Vec<Tensor>,
    /// True class of each clean image, when known.
    pub labels: Vec<Option<String>>,
    /// The attacked images, image-major.
    pub items: Vec<CalibrationItem>,
}

/// How large the calibration labels are written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSize {
    /// The font size as a fraction of the model input's side (`size_frac`).
    SizeFrac(f64),
    /// The text spans this fraction of the input's width (`width_frac`): as a model that reads
    /// only large words (the toy) is attacked.
    WidthFrac(f64),
}

impl Default for LabelSize {
    /// `size_frac = 0.12`.
    fn default() -> Self {
        LabelSize::SizeFrac(0.12)
    }
}

/// The attack spec that writes each calibration word in each font: a white paper label with
/// black text of `size` at a random (seeded) place on the model input.
pub fn calibration_spec(words: &[String], fonts: &[String], size: LabelSize) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("string");
    let size = match size {
        LabelSize::SizeFrac(f) => format!("size_frac = {f}"),
        LabelSize::WidthFrac(f) => format!("width_frac = {f}"),
    };
    let mut t = format!(
        "description = \"typoclip fit: calibration words on paper labels\"\nname = \"calibration\"\n\
         stage = \"model_input\"\n\n[[layers]]\nkind = \"label\"\nplacement = \"random\"\n\
         {size}\ncolor = \"black\"\npaper_color = \"white\"\n",
    );
    for w in words {
        t.push_str(&format!(
            "\n[[cases]]\nname = {}\ntarget = {}\ntext = {}\n",
            q(w),
            q(w),
            q(w)
        ));
    }
    t.push_str(&format!(
        "\n[sweep]\nfont = [{}]\n",
        fonts.iter().map(|f| q(f)).collect::<Vec<_>>().join(", ")
    ));
    t
}

/// What the calibration labels say and how they are written.
#[derive(Debug, Clone, Copy)]
pub struct CalibrationWords<'a> {
    /// The words.
    pub words: &'a [String],
    /// The fonts, each word written in each.
    pub fonts: &'a [String],
    /// The labels' size.
    pub size: LabelSize,
}

/// Renders the calibration set: `samples` (clean images) × `words` × `fonts` for a model
/// trained with the transform `transform` (its input size, resize and normalisation).
/// Unreadable images are an error naming the file.
pub fn build_calibration_set(
    dataset: &str,
    samples: &[Sample],
    text: CalibrationWords<'_>,
    seed: u64,
    transform: &crate::preprocess::PreprocessCfg,
    model_id: &str,
) -> Result<CalibrationSet, DefenseError> {
    let CalibrationWords {
        words,
        fonts,
        size: label_size,
    } = text;
    let err = |path: &str, message: String| DefenseError::Artifact {
        path: path.into(),
        message,
    };
    if words.is_empty() || fonts.is_empty() || samples.is_empty() {
        return Err(err(
            dataset,
            "a calibration set needs at least one image, one word and one font".into(),
        ));
    }
    let spec_text = calibration_spec(words, fonts, label_size);
    let spec = crate::attack::AttackSpec::parse(
        &spec_text,
        Path::new("calibration.toml"),
        crate::attack::FontBook::global(),
    )
    .map_err(|e| err("--words/--fonts", e.to_string()))?;
    let mut clean = Vec::new();
    let mut labels = Vec::new();
    let mut items = Vec::new();
    let mut hashes = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let path = s.path.display().to_string();
        let img = crate::dataset::load_rgb(&s.path).map_err(|e| err(&path, e.to_string()))?;
        hashes
            .push(crate::model::load::sha256_file(&s.path).map_err(|e| err(&path, e.to_string()))?);
        clean.push(crate::preprocess::model_tensor(&img, transform));
        labels.push(s.label.clone());
        for v in &spec.variants {
            let r = crate::attack::render_for_model(&img, v, transform, seed ^ (i as u64), None);
            let (word, font) = match v.layers.first() {
                Some(crate::attack::Layer::Label { style, .. }) => (
                    style.text.clone(),
                    style
                        .fonts
                        .fonts
                        .first()
                        .map(|f| f.name.clone())
                        .unwrap_or_default(),
                ),
                _ => unreachable!("the calibration spec has one label layer"),
            };
            items.push(CalibrationItem {
                image: i,
                word,
                font,
                attacked: crate::preprocess::to_normalized_tensor_with(
                    &r.attacked_input,
                    transform,
                ),
            });
        }
    }
    let mut used_fonts: Vec<String> = items.iter().map(|it| it.font.clone()).collect();
    used_fonts.sort();
    used_fonts.dedup();
    Ok(CalibrationSet {
        record: CalibrationRecord {
            dataset: dataset.into(),
            images: samples.iter().map(|s| s.id.clone()).collect(),
            images_sha256: hashes,
            words: words.to_vec(),
            fonts: used_fonts,
            label_size,
            seed,
            model_id: model_id.into(),
        },
        clean,
        labels,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CalibrationRecord {
        CalibrationRecord {
            dataset: "d".into(),
            images: vec!["a.png".into()],
            images_sha256: vec!["h1".into()],
            words: vec!["Radio".into()],
            fonts: vec!["mono".into()],
            label_size: LabelSize::default(),
            seed: 0,
            model_id: "m".into(),
        }
    }

    #[test]
    fn overlap_in_images_words_or_fonts_is_refused() {
        let r = record();
        let mut eval = EvalSet {
            images: vec![("x.png".into(), "h2".into())],
            words: ["ipod".to_string()].into(),
            fonts: ["serif".to_string()].into(),
        };
        assert!(r.check_disjoint(&eval).is_ok());
        eval.images.push(("copy-of-a.png".into(), "h1".into()));
        let e = r.check_disjoint(&eval).unwrap_err();
        assert!(e.contains("copy-of-a.png"), "{e}");
        eval.images.pop();
        eval.words.insert("radio".into());
        assert!(r.check_disjoint(&eval).unwrap_err().contains("radio"));
        eval.words.remove("radio");
        eval.fonts.insert("mono".into());
        assert!(r.check_disjoint(&eval).unwrap_err().contains("mono"));
    }

    #[test]
    fn calibration_spec_expands_words_times_fonts() {
        let words = vec!["radio".to_string(), "say \"hi\"".to_string()];
        let fonts = vec!["mono".to_string(), "comic".to_string()];
        let spec = crate::attack::AttackSpec::parse(
            &calibration_spec(&words, &fonts, LabelSize::WidthFrac(0.8)),
            Path::new("c.toml"),
            crate::attack::FontBook::global(),
        )
        .unwrap();
        assert_eq!(spec.variants.len(), 4);
        let (w, f) = crate::defense::variant_words_and_fonts(&spec.variants);
        assert!(w.contains("say \"hi\"") && w.contains("radio"));
        assert_eq!(f.len(), 2);
        let Some(crate::attack::Layer::Label { style, .. }) = spec.variants[0].layers.first()
        else {
            panic!("a label")
        };
        assert_eq!(style.size, crate::attack::spec::Size::WidthFrac(0.8));
        // Artifacts written before the label size was recorded read as the default.
        let mut old = serde_json::to_value(record()).unwrap();
        old.as_object_mut().unwrap().remove("label_size");
        let back: CalibrationRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.label_size, LabelSize::SizeFrac(0.12));
    }
}
