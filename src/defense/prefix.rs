//! Defense prefix (prompt hook), after Azuma & Matsui, "Defense-Prefix for Preventing
//! Typographic Attacks on CLIP" (ICCV Workshops 2023): one learned token embedding is put in
//! front of the class name ("a photo of a * {class}.", the `*` token's embedding replaced by the
//! learned one), and the classifier is built from those prompts. The embedding is learned with tch
//! autograd by `typoclip fit prefix` on synthetic typographic images with two losses: the
//! *defense* loss (cross-entropy of the attacked images against their true class, scored with the
//! prefixed class embeddings) and the *class-preserving* loss (`1 − cos` between each class's
//! prefixed and plain prompt embeddings, so the prefix keeps class meaning). The model's
//! weights are frozen; only the prefix is trained.

use std::path::PathBuf;

use tch::{Kind, Tensor};

use super::calibration::Artifact;
use super::{Defense, DefenseError, FittedRecord, Params};
use crate::model::{l2_normalize, ClipModel, Probe};
use crate::tokenizer::{pad_rows, ClipTokenizer, END_OF_TEXT};
use crate::zeroshot::{LabelSet, TemplateSet, ZeroShotClassifier};

/// The placeholder written where the learned embedding goes.
pub const PLACEHOLDER: &str = "*";

/// The id of [`PLACEHOLDER`] (a single BPE token).
pub fn placeholder_id(tokenizer: &ClipTokenizer) -> i64 {
    let row = tokenizer.encode_row(PLACEHOLDER, 77);
    assert_eq!(row.len(), 3, "the placeholder must be one BPE token");
    row[1]
}

/// Text embeddings `[N, D]` of `prompts`; in each prompt the first [`PLACEHOLDER`] token's
/// embedding is replaced by `prefix` `[W]` when given. Differentiable in `prefix`.
pub fn encode_with_prefix(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    prompts: &[String],
    prefix: Option<&Tensor>,
) -> Tensor {
    let ctx = model.config().text.context_length as usize;
    let pid = placeholder_id(tokenizer);
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| tokenizer.encode_row(p, ctx))
        .collect();
    let width = rows.iter().map(Vec::len).max().unwrap_or(1);
    let ids = pad_rows(&rows, width).to_device(model.device());
    let mut embedded = model.embed_tokens(&ids);
    if let Some(p) = prefix {
        let mut mask = vec![0f32; rows.len() * width];
        for (i, r) in rows.iter().enumerate() {
            if let Some(j) = r.iter().skip(1).position(|&t| t == pid) {
                mask[i * width + j + 1] = 1.0;
            }
        }
        let mask = Tensor::from_slice(&mask)
            .view([rows.len() as i64, width as i64, 1])
            .to_device(model.device());
        let p = p.to_device(model.device()).view([1, 1, -1]);
        embedded = &embedded * (1.0 - &mask) + &mask * p;
    }
    let eot: Vec<i64> = rows
        .iter()
        .map(|r| {
            r.iter()
                .position(|&t| t == END_OF_TEXT)
                .unwrap_or(r.len() - 1) as i64
        })
        .collect();
    model.encode_text_embedded(&embedded, &Tensor::from_slice(&eot), &mut Probe::none())
}

/// The templates with [`PLACEHOLDER`] put in front of the class name.
pub fn prefixed_templates(templates: &TemplateSet) -> Vec<String> {
    templates
        .templates
        .iter()
        .map(|t| t.replacen("{}", &format!("{PLACEHOLDER} {{}}"), 1))
        .collect()
}

/// Unit class embeddings `[C, D]`: per class the normalised mean over the templates of the
/// normalised prompt embeddings, with the prefix in front of the class name (or the plain
/// templates when `prefix` is `None`). Differentiable in `prefix`.
pub fn class_embeddings(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    labels: &LabelSet,
    templates: &TemplateSet,
    prefix: Option<&Tensor>,
) -> Tensor {
    let tpl = match prefix {
        Some(_) => prefixed_templates(templates),
        None => templates.templates.clone(),
    };
    let prompts: Vec<String> = labels
        .classes
        .iter()
        .flat_map(|c| tpl.iter().map(move |t| t.replacen("{}", &c.name, 1)))
        .collect();
    let mut feats = Vec::new();
    for chunk in prompts.chunks(256) {
        feats.push(l2_normalize(&encode_with_prefix(
            model, tokenizer, chunk, prefix,
        )));
    }
    let feats = Tensor::cat(&feats, 0);
    let per_class = feats
        .view([labels.len() as i64, tpl.len() as i64, -1])
        .mean_dim(1, false, None);
    l2_normalize(&per_class)
}

/// Rebuilds the classifier with the learned prefix in front of every class name.
#[derive(Debug, Clone)]
pub struct PrefixDefense {
    /// The learned token embedding `[W]`.
    pub embedding: Vec<f32>,
    /// The artifact and its calibration split.
    pub fitted: Option<FittedRecord>,
}

impl PrefixDefense {
    /// `prefix:file=PATH`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        let file = PathBuf::from(p.string(
            "file",
            Some(&super::calibration::default_artifact("prefix")),
        )?);
        let (a, sha256) = Artifact::read(&file, "prefix")?;
        let embedding: Vec<f32> =
            serde_json::from_value(a.data["embedding"].clone()).map_err(|e| {
                DefenseError::Artifact {
                    path: file.display().to_string(),
                    message: format!("data.embedding: {e}"),
                }
            })?;
        Ok(Box::new(PrefixDefense {
            embedding,
            fitted: Some(FittedRecord {
                artifact: file.display().to_string(),
                sha256,
                calibration: a.calibration,
            }),
        }))
    }
}

impl Defense for PrefixDefense {
    fn transform_classifier(
        &self,
        model: &ClipModel,
        tokenizer: &ClipTokenizer,
        classifier: ZeroShotClassifier,
    ) -> Result<ZeroShotClassifier, DefenseError> {
        let p = Tensor::from_slice(&self.embedding);
        let weights = class_embeddings(
            model,
            tokenizer,
            &classifier.labels,
            &classifier.templates,
            Some(&p),
        )
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float);
        Ok(ZeroShotClassifier {
            weights,
            templates: TemplateSet {
                name: format!("{}+prefix", classifier.templates.name),
                templates: prefixed_templates(&classifier.templates),
            },
            ..classifier
        })
    }

    fn check_model(&self, model: &ClipModel, model_id: &str) -> Result<(), String> {
        if self.embedding.len() as i64 != model.config().text.width {
            return Err(format!(
                "the prefix has width {} but the text tower's is {}",
                self.embedding.len(),
                model.config().text.width
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
