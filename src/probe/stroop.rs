//! The Stroop experiment of the Distill article ("Multimodal Neurons", Goh et al. 2021): colour
//! words drawn in ink colours, classified zero-shot among the colour names with the prompt
//! "my favorite word, written in the color {}". Does the model report the ink or the word?
//!
//! Stimuli: a white square at the model's input size with the word centred in bold sans (the
//! attack renderer, so glyphs are anti-aliased and every changed pixel is a blend of white and
//! the ink). Pure: stimuli and rows are computed; the CLI prints and writes them.

use std::path::Path;

use image::{Rgb, RgbImage};
use serde::Serialize;
use tch::Tensor;

use super::ProbeError;
use crate::attack::{render, AttackSpec, FontBook, Rendered};
use crate::model::ClipModel;
use crate::text_tokenizer::TextTokenizer;
use crate::zeroshot::{ClassLabel, LabelSet, TemplateSet, ZeroShotClassifier};

/// The article's zero-shot prompt (its `zero_shot_setup` plus the colour).
pub const STROOP_TEMPLATE: &str = "my favorite word, written in the color {}";

/// The article's eight colours with the ink typoclip draws each in (sRGB).
pub const STROOP_COLOURS: [(&str, [u8; 3]); 8] = [
    ("black", [0, 0, 0]),
    ("red", [220, 20, 20]),
    ("green", [20, 150, 40]),
    ("blue", [25, 60, 230]),
    ("purple", [130, 40, 170]),
    ("orange", [255, 140, 0]),
    ("pink", [255, 105, 180]),
    ("yellow", [240, 215, 0]),
];

/// Text size as a fraction of the image side.
pub const STROOP_TEXT_SIZE: f64 = 0.17;

/// The ink of a colour name.
pub fn ink_of(name: &str) -> Option<[u8; 3]> {
    STROOP_COLOURS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
}

/// `word` drawn in `ink` on white, `n_px` square.
pub fn stimulus(word: &str, ink: [u8; 3], n_px: u32) -> Result<Rendered, ProbeError> {
    let text = word.replace('\\', "\\\\").replace('"', "\\\"");
    let spec = format!(
        "description = \"Stroop stimulus\"\nname = \"stroop\"\ntarget = \"ink\"\n\
         [[layers]]\nkind = \"text\"\ntext = \"{text}\"\nfont = \"sans-bold\"\n\
         size_frac = {STROOP_TEXT_SIZE}\ncolor = \"#{:02x}{:02x}{:02x}\"\nplacement = \"center\"\n",
        ink[0], ink[1], ink[2]
    );
    let spec = AttackSpec::parse(&spec, Path::new("<stroop>"), FontBook::global())
        .map_err(|e| ProbeError::Invalid(format!("stroop word `{word}`: {e}")))?;
    let canvas = RgbImage::from_pixel(n_px, n_px, Rgb([255, 255, 255]));
    Ok(render(&canvas, &spec.variants[0], 0, None))
}

/// One (word, ink) pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StroopRow {
    /// The written word.
    pub word: String,
    /// The ink colour.
    pub ink: String,
    /// P(ink colour) among the colour names.
    pub p_ink: f64,
    /// P(written word).
    pub p_word: f64,
    /// The top-1 colour.
    pub top1: String,
    /// The article's P(ink) for this pair, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_p_ink: Option<f64>,
    /// The article's P(word), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_p_word: Option<f64>,
}

/// Every (word, ink) pair of `colours` × `colours`, word-major.
pub fn pairs(colours: &[String]) -> Vec<(String, String)> {
    colours
        .iter()
        .flat_map(|w| colours.iter().map(move |i| (w.clone(), i.clone())))
        .collect()
}

/// The zero-shot classifier over the colour names with [`STROOP_TEMPLATE`].
pub fn colour_classifier(
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
    colours: &[String],
) -> Result<ZeroShotClassifier, ProbeError> {
    let labels = LabelSet {
        name: "stroop-colours".into(),
        classes: colours
            .iter()
            .map(|c| ClassLabel {
                name: c.clone(),
                wnid: None,
            })
            .collect(),
    };
    let templates = TemplateSet::parse("stroop", STROOP_TEMPLATE)
        .map_err(|e| ProbeError::Invalid(e.to_string()))?;
    ZeroShotClassifier::build(model, tokenizer, labels, templates)
        .map_err(|e| ProbeError::Invalid(e.to_string()))
}

/// Runs the experiment: renders each pair (at the model's input side), encodes the stimuli in
/// batches, normalised with the model's transform's mean/std, and scores them.
/// Returns the rows and the stimuli (in pair order).
pub fn run(
    model: &ClipModel,
    classifier: &ZeroShotClassifier,
    pairs: &[(String, String)],
    transform: &crate::preprocess::PreprocessCfg,
) -> Result<(Vec<StroopRow>, Vec<RgbImage>), ProbeError> {
    let n_px = model.image_resolution() as u32;
    let mut images = Vec::with_capacity(pairs.len());
    for (word, ink) in pairs {
        let rgb = ink_of(ink).ok_or_else(|| {
            ProbeError::Invalid(format!(
                "stroop: no ink for `{ink}` (known: {})",
                STROOP_COLOURS.map(|c| c.0).join(", ")
            ))
        })?;
        images.push(stimulus(word, rgb, n_px)?.image);
    }
    let mut rows = Vec::with_capacity(pairs.len());
    for (chunk_pairs, chunk_imgs) in pairs.chunks(16).zip(images.chunks(16)) {
        let batch = Tensor::stack(
            &chunk_imgs
                .iter()
                .map(|i| crate::preprocess::to_normalized_tensor_with(i, transform))
                .collect::<Vec<_>>(),
            0,
        );
        let probs = classifier.probs(&model.encode_image(&batch).to_device(tch::Device::Cpu));
        for (j, (word, ink)) in chunk_pairs.iter().enumerate() {
            let p = Vec::<f32>::try_from(probs.get(j as i64)).expect("f32");
            let at = |name: &str| {
                classifier
                    .labels
                    .index_of_name(name)
                    .map(|i| p[i] as f64)
                    .unwrap_or(0.0)
            };
            let top = (0..p.len())
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .expect("classes");
            rows.push(StroopRow {
                word: word.clone(),
                ink: ink.clone(),
                p_ink: at(ink),
                p_word: at(word),
                top1: classifier.labels.classes[top].name.clone(),
                published_p_ink: None,
                published_p_word: None,
            });
        }
    }
    Ok((rows, images))
}

/// Fills the article's numbers from its `stroop_experiment.json` (`output[ink][word].results`
/// = `[[p, colour], …]`) into the rows it covers. Returns how many rows got numbers.
pub fn attach_published(rows: &mut [StroopRow], json: &serde_json::Value) -> usize {
    let mut n = 0;
    for r in rows.iter_mut() {
        let Some(results) = json
            .get("output")
            .and_then(|o| o.get(&r.ink))
            .and_then(|o| o.get(&r.word))
            .and_then(|o| o.get("results"))
            .and_then(|o| o.as_array())
        else {
            continue;
        };
        let prob = |name: &str| {
            results.iter().find_map(|e| {
                let e = e.as_array()?;
                (e.get(1)?.as_str()? == name).then(|| e.first()?.as_f64())?
            })
        };
        r.published_p_ink = prob(&r.ink);
        r.published_p_word = prob(&r.word);
        if r.published_p_ink.is_some() {
            n += 1;
        }
    }
    n
}

/// Over the incongruent pairs (word ≠ ink): the fraction where the top-1 is the word, and where
/// it is the ink.
pub fn incongruent_summary(rows: &[StroopRow]) -> (usize, f64, f64) {
    let inc: Vec<&StroopRow> = rows.iter().filter(|r| r.word != r.ink).collect();
    if inc.is_empty() {
        return (0, 0.0, 0.0);
    }
    let n = inc.len() as f64;
    let word = inc.iter().filter(|r| r.top1 == r.word).count() as f64 / n;
    let ink = inc.iter().filter(|r| r.top1 == r.ink).count() as f64 / n;
    (inc.len(), word, ink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_numbers_attach_by_ink_then_word() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"output": {"blue": {"red": {"results": [[0.2, "blue"], [0.7, "red"], [0.1, "green"]]}}}}"#,
        )
        .unwrap();
        let mut rows = vec![
            StroopRow {
                word: "red".into(),
                ink: "blue".into(),
                p_ink: 0.0,
                p_word: 0.0,
                top1: "red".into(),
                published_p_ink: None,
                published_p_word: None,
            };
            2
        ];
        rows[1].ink = "green".into();
        assert_eq!(attach_published(&mut rows, &json), 1);
        assert_eq!(rows[0].published_p_ink, Some(0.2));
        assert_eq!(rows[0].published_p_word, Some(0.7));
        assert_eq!(rows[1].published_p_ink, None);
        let (n, word, ink) = incongruent_summary(&rows);
        assert_eq!((n, word, ink), (2, 1.0, 0.0));
    }

    #[test]
    fn pairs_cover_the_square() {
        let c: Vec<String> = ["red", "blue"].map(String::from).to_vec();
        assert_eq!(pairs(&c).len(), 4);
        assert_eq!(pairs(&c)[1], ("red".to_string(), "blue".to_string()));
    }
}
