//! Zero-shot classification: prompt templates, label sets, class embeddings and scores, as in
//! the CLIP paper (openai/CLIP `notebooks/Prompt_Engineering_for_ImageNet.ipynb`) and open_clip's
//! `build_zero_shot_classifier`.
//!
//! For each class, every template is filled with the class name and encoded; the embeddings are
//! L2-normalised, averaged and re-normalised. Logits are `exp(logit_scale) · cos(image, class)`.
//!
//! Prompts go through the model's tokenizer ([`TextTokenizer`]: CLIP's BPE, or a Hugging Face
//! `tokenizer.json`) at the text config's context length. With CLIP's BPE text encoding is
//! fast: prompts are sorted by token length and each batch is cut to its longest prompt. Under
//! the causal mask the end-of-text features do not depend on the padding, so the result equals
//! the padded-to-77 computation (tested to 1e-4). Other tokenizers pad every row, as open_clip.
//!
//! Template sets and label sets ship as data (`datasets/templates/*.txt`,
//! `datasets/labels/imagenet.tsv`), compiled into the binary. Pure except for [`TextCache`].

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::model::{l2_normalize, ClipModel};
use crate::text_tokenizer::TextTokenizer;
use crate::tokenizer::pad_rows;

/// Errors of the zero-shot stage; each names its source (file or set) and line where known.
#[derive(Debug, thiserror::Error)]
pub enum ZeroShotError {
    /// A template or label file is malformed.
    #[error("{source_name}:{line}: {message}")]
    Parse {
        /// File or set name.
        source_name: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Something else is wrong with a set.
    #[error("{0}")]
    Invalid(String),
    /// File I/O.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Names of the template sets compiled into the binary.
pub const BUILTIN_TEMPLATE_SETS: [&str; 3] = ["imagenet80", "openai7", "single"];

/// A set of prompt templates, each with one `{}` placeholder for the class name.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSet {
    /// Set name (builtin name or file path).
    pub name: String,
    /// The templates.
    pub templates: Vec<String>,
}

fn hash_lines<'a>(tag: &str, lines: impl Iterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    for l in lines {
        h.update((l.len() as u64).to_le_bytes());
        h.update(l.as_bytes());
    }
    hex::encode(h.finalize())
}

impl TemplateSet {
    /// A builtin set: `imagenet80` (CLIP's 80 ImageNet templates), `openai7` (the 7 OpenAI
    /// recommends), `single` (`a photo of a {}.`).
    pub fn builtin(name: &str) -> Option<TemplateSet> {
        let text = match name {
            "imagenet80" => include_str!("../datasets/templates/imagenet80.txt"),
            "openai7" => include_str!("../datasets/templates/openai7.txt"),
            "single" => include_str!("../datasets/templates/single.txt"),
            _ => return None,
        };
        Some(TemplateSet::parse(name, text).expect("builtin template sets are valid"))
    }

    /// Parses one template per line (`#` starts a comment line, blank lines ignored); each
    /// template must contain `{}` exactly once.
    pub fn parse(name: &str, text: &str) -> Result<TemplateSet, ZeroShotError> {
        let mut templates = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_end_matches('\r');
            if t.trim().is_empty() || t.trim_start().starts_with('#') {
                continue;
            }
            let n = t.matches("{}").count();
            if n != 1 {
                return Err(ZeroShotError::Parse {
                    source_name: name.into(),
                    line: i + 1,
                    message: format!(
                        "template must contain the placeholder {{}} exactly once, found {n}: `{t}`"
                    ),
                });
            }
            templates.push(t.to_string());
        }
        if templates.is_empty() {
            return Err(ZeroShotError::Invalid(format!("{name}: no templates")));
        }
        Ok(TemplateSet {
            name: name.into(),
            templates,
        })
    }

    /// A builtin name, or a file with one template per line.
    pub fn resolve(spec: &str) -> Result<TemplateSet, ZeroShotError> {
        if let Some(t) = TemplateSet::builtin(spec) {
            return Ok(t);
        }
        let text = std::fs::read_to_string(spec).map_err(|e| ZeroShotError::Io {
            path: spec.into(),
            message: format!(
                "not a builtin template set ({}) and cannot be read: {e}",
                BUILTIN_TEMPLATE_SETS.join(", ")
            ),
        })?;
        TemplateSet::parse(spec, &text)
    }

    /// Fills every template with `class_name`.
    pub fn fill(&self, class_name: &str) -> Vec<String> {
        self.templates
            .iter()
            .map(|t| t.replacen("{}", class_name, 1))
            .collect()
    }

    /// Content hash (sha256 over the templates, in order).
    pub fn hash(&self) -> String {
        hash_lines("templates-v1", self.templates.iter().map(String::as_str))
    }
}

/// One class: the name used in prompts, and its WordNet id when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLabel {
    /// Name put into the templates.
    pub name: String,
    /// WordNet id (`n01440764`), if known.
    pub wnid: Option<String>,
}

/// An ordered list of classes.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    /// Set name.
    pub name: String,
    /// Classes, in index order.
    pub classes: Vec<ClassLabel>,
}

impl LabelSet {
    /// The 1000 ImageNet classes as named in the CLIP notebook, with wnids (index order =
    /// sorted wnids, the usual ILSVRC-2012 order).
    pub fn imagenet() -> LabelSet {
        LabelSet::parse_tsv("imagenet", include_str!("../datasets/labels/imagenet.tsv"))
            .expect("builtin label set is valid")
    }

    /// `wnid<TAB>name` lines (or `name` alone); `#` comments.
    pub fn parse_tsv(name: &str, text: &str) -> Result<LabelSet, ZeroShotError> {
        let mut classes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim_end_matches('\r');
            if l.trim().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            let (wnid, cname) = match l.split_once('\t') {
                Some((w, n)) => (Some(w.trim().to_string()), n.trim()),
                None => (None, l.trim()),
            };
            if cname.is_empty() {
                return Err(ZeroShotError::Parse {
                    source_name: name.into(),
                    line: i + 1,
                    message: "empty class name".into(),
                });
            }
            classes.push(ClassLabel {
                name: cname.to_string(),
                wnid,
            });
        }
        LabelSet::new(name, classes)
    }

    /// A comma-separated list of names.
    pub fn parse_list(name: &str, list: &str) -> Result<LabelSet, ZeroShotError> {
        let classes = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| ClassLabel {
                name: s.to_string(),
                wnid: None,
            })
            .collect();
        LabelSet::new(name, classes)
    }

    /// A CSV file with a header containing `name` and optionally `wnid`.
    pub fn parse_csv(name: &str, text: &str) -> Result<LabelSet, ZeroShotError> {
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let headers = rdr
            .headers()
            .map_err(|e| ZeroShotError::Invalid(format!("{name}: {e}")))?
            .clone();
        let col = |c: &str| headers.iter().position(|h| h.trim() == c);
        let name_col = col("name").ok_or_else(|| ZeroShotError::Parse {
            source_name: name.into(),
            line: 1,
            message: "header has no `name` column".into(),
        })?;
        let wnid_col = col("wnid");
        let mut classes = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let rec = rec.map_err(|e| ZeroShotError::Parse {
                source_name: name.into(),
                line: i + 2,
                message: e.to_string(),
            })?;
            let cname = rec.get(name_col).unwrap_or("").trim();
            if cname.is_empty() {
                return Err(ZeroShotError::Parse {
                    source_name: name.into(),
                    line: i + 2,
                    message: "name: empty class name".into(),
                });
            }
            classes.push(ClassLabel {
                name: cname.into(),
                wnid: wnid_col
                    .and_then(|c| rec.get(c))
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            });
        }
        LabelSet::new(name, classes)
    }

    /// `imagenet`, a `.csv`/`.tsv`/`.txt` file, or a comma-separated list.
    pub fn resolve(spec: &str) -> Result<LabelSet, ZeroShotError> {
        if spec == "imagenet" {
            return Ok(LabelSet::imagenet());
        }
        let path = Path::new(spec);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| ZeroShotError::Io {
                path: spec.into(),
                message: e.to_string(),
            })?;
            return if spec.ends_with(".csv") {
                LabelSet::parse_csv(spec, &text)
            } else {
                LabelSet::parse_tsv(spec, &text)
            };
        }
        LabelSet::parse_list("labels", spec)
    }

    fn new(name: &str, classes: Vec<ClassLabel>) -> Result<LabelSet, ZeroShotError> {
        if classes.is_empty() {
            return Err(ZeroShotError::Invalid(format!("{name}: no class names")));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &classes {
            if !seen.insert(c.name.as_str()) {
                return Err(ZeroShotError::Invalid(format!(
                    "{name}: class name `{}` appears twice",
                    c.name
                )));
            }
        }
        Ok(LabelSet {
            name: name.into(),
            classes,
        })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when empty (never, for a constructed set).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Class names in index order.
    pub fn names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }

    /// Index of a class by WordNet id.
    pub fn index_of_wnid(&self, wnid: &str) -> Option<usize> {
        self.classes
            .iter()
            .position(|c| c.wnid.as_deref() == Some(wnid))
    }

    /// Index of a class by name (exact, then case-insensitive).
    pub fn index_of_name(&self, name: &str) -> Option<usize> {
        self.classes
            .iter()
            .position(|c| c.name == name)
            .or_else(|| {
                self.classes
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(name))
            })
    }

    /// Content hash (names and wnids, in order).
    pub fn hash(&self) -> String {
        let rows: Vec<String> = self
            .classes
            .iter()
            .map(|c| format!("{}\t{}", c.wnid.as_deref().unwrap_or(""), c.name))
            .collect();
        hash_lines("labels-v1", rows.iter().map(String::as_str))
    }
}

fn tokenizer_error(e: crate::hf_tokenizer::HfTokenizerError) -> ZeroShotError {
    ZeroShotError::Invalid(e.to_string())
}

/// Encodes prompts with the model's tokenizer at the text config's context length. Where the
/// tokenizer gives rows that may be cut ([`TextTokenizer::unpadded_row`], CLIP's BPE) and the
/// text tower allows it ([`ClipModel::text_accepts_unpadded`]), prompts are sorted by token
/// length and each batch is cut to its longest prompt; otherwise every row is padded to the
/// context length, as open_clip does. Returns `[N, D]` in the input order, not normalised.
pub fn encode_prompts(
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
    prompts: &[String],
    batch_size: usize,
) -> Result<Tensor, ZeroShotError> {
    let ctx = model.config().text.context_length as usize;
    let rows: Option<Vec<Vec<i64>>> = if model.text_accepts_unpadded() {
        prompts
            .iter()
            .map(|p| tokenizer.unpadded_row(p, ctx))
            .collect()
    } else {
        None
    };
    let Some(rows) = rows else {
        return encode_prompts_padded(model, tokenizer, prompts, batch_size);
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].len());
    let mut out: Vec<Option<Tensor>> = (0..rows.len()).map(|_| None).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let width = chunk.iter().map(|&i| rows[i].len()).max().unwrap_or(1);
        let batch: Vec<Vec<i64>> = chunk.iter().map(|&i| rows[i].clone()).collect();
        let feats = model
            .encode_text(&pad_rows(&batch, width))
            .to_device(tch::Device::Cpu);
        for (j, &i) in chunk.iter().enumerate() {
            out[i] = Some(feats.get(j as i64));
        }
    }
    let out: Vec<Tensor> = out
        .into_iter()
        .map(|t| t.expect("every prompt encoded"))
        .collect();
    if out.is_empty() {
        return Ok(Tensor::zeros(
            [0, model.config().embed_dim],
            (Kind::Float, tch::Device::Cpu),
        ));
    }
    Ok(Tensor::stack(&out, 0))
}

/// The straightforward computation (every prompt padded to the context length with the
/// tokenizer's pad id), as open_clip does it: the reference for [`encode_prompts`].
pub fn encode_prompts_padded(
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
    prompts: &[String],
    batch_size: usize,
) -> Result<Tensor, ZeroShotError> {
    let ctx = model.config().text.context_length as usize;
    let mut feats = Vec::new();
    for chunk in prompts.chunks(batch_size.max(1)) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let ids = tokenizer
            .tokenize_tensor(&refs, ctx)
            .map_err(tokenizer_error)?;
        feats.push(
            model
                .encode_text(&ids.to_device(model.device()))
                .to_device(tch::Device::Cpu),
        );
    }
    if feats.is_empty() {
        return Ok(Tensor::zeros(
            [0, model.config().embed_dim],
            (Kind::Float, tch::Device::Cpu),
        ));
    }
    Ok(Tensor::cat(&feats, 0))
}

/// Refuses CLIP's BPE for a text tower whose vocabulary is not CLIP's 49408 ids (its ids would
/// fall outside the token embedding); other tokenizers are the model's own.
pub fn check_vocabulary(
    model_id: &str,
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
) -> Result<(), ZeroShotError> {
    let vocab = model.config().text.vocab_size;
    if tokenizer.identity() == "clip-bpe" && vocab != 49408 {
        return Err(ZeroShotError::Invalid(format!(
            "{model_id}: text_cfg.vocab_size {vocab}: CLIP's BPE has 49408 ids, and the model's \
             config names no other tokenizer (hf_tokenizer_name)"
        )));
    }
    Ok(())
}

/// Class embeddings `[C, D]` (unit rows): per class, the normalised mean of the normalised
/// template embeddings.
pub fn class_embeddings(
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
    labels: &LabelSet,
    templates: &TemplateSet,
    batch_size: usize,
) -> Result<Tensor, ZeroShotError> {
    let prompts: Vec<String> = labels
        .classes
        .iter()
        .flat_map(|c| templates.fill(&c.name))
        .collect();
    let feats = l2_normalize(&encode_prompts(model, tokenizer, &prompts, batch_size)?);
    let t = templates.templates.len() as i64;
    let per_class = feats
        .view([labels.len() as i64, t, -1])
        .mean_dim(1, false, None);
    Ok(l2_normalize(&per_class))
}

/// A zero-shot classifier: class embeddings plus the model's temperature.
#[derive(Debug)]
pub struct ZeroShotClassifier {
    /// `[C, D]` unit class embeddings (CPU, f32).
    pub weights: Tensor,
    /// `exp(logit_scale)`.
    pub logit_scale: f64,
    /// The learned logit bias of a sigmoid-scored (SigLIP-style) model: probabilities are then
    /// `sigmoid(scale · cos + bias)`, independent per class; `None`: softmax over the classes.
    pub logit_bias: Option<f64>,
    /// The classes, in row order.
    pub labels: LabelSet,
    /// The templates used.
    pub templates: TemplateSet,
}

impl ZeroShotClassifier {
    /// Builds the classifier by encoding every (class, template) prompt.
    pub fn build(
        model: &ClipModel,
        tokenizer: &dyn TextTokenizer,
        labels: LabelSet,
        templates: TemplateSet,
    ) -> Result<ZeroShotClassifier, ZeroShotError> {
        let weights = class_embeddings(model, tokenizer, &labels, &templates, 256)?;
        Ok(ZeroShotClassifier {
            weights,
            logit_scale: model.logit_scale_exp(),
            logit_bias: model.logit_bias(),
            labels,
            templates,
        })
    }

    /// `softmax` or `sigmoid`: how [`Self::probs`] turns logits into probabilities.
    pub fn scoring(&self) -> &'static str {
        if self.logit_bias.is_some() {
            "sigmoid"
        } else {
            "softmax"
        }
    }

    /// Logits `[N, C]` for image embeddings `[N, D]` (normalised here).
    pub fn logits(&self, image_features: &Tensor) -> Tensor {
        let img = l2_normalize(
            &image_features
                .to_device(self.weights.device())
                .to_kind(Kind::Float),
        );
        let logits = img.matmul(&self.weights.transpose(0, 1)) * self.logit_scale;
        match self.logit_bias {
            Some(b) => logits + b,
            None => logits,
        }
    }

    /// Probabilities `[N, C]`: softmax over the classes, or — for a model with a logit bias —
    /// each class's own sigmoid (SigLIP's zero-shot formula). Rankings follow the logits either
    /// way.
    pub fn probs(&self, image_features: &Tensor) -> Tensor {
        let logits = self.logits(image_features);
        match self.logit_bias {
            Some(_) => logits.sigmoid(),
            None => logits.softmax(-1, Kind::Float),
        }
    }

    /// The classifier restricted to some classes (small-set / binary mode, e.g. SCAM's
    /// true object vs attack word), in the given order.
    pub fn subset(&self, indices: &[usize]) -> ZeroShotClassifier {
        let idx = Tensor::from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>());
        ZeroShotClassifier {
            weights: self.weights.index_select(0, &idx),
            logit_scale: self.logit_scale,
            logit_bias: self.logit_bias,
            labels: LabelSet {
                name: format!("{}[subset]", self.labels.name),
                classes: indices
                    .iter()
                    .map(|&i| self.labels.classes[i].clone())
                    .collect(),
            },
            templates: self.templates.clone(),
        }
    }
}

/// On-disk cache of class embeddings, keyed by (model id and tokenizer identity, template set
/// hash, label set hash).
/// A missing, corrupt or stale entry is rebuilt.
#[derive(Debug, Clone)]
pub struct TextCache {
    dir: PathBuf,
}

/// Whether [`TextCache::load_or_build`] found the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from disk.
    Hit,
    /// Not there: built and stored.
    Miss,
    /// There but corrupt or stale: rebuilt and replaced.
    Rebuilt,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheMeta {
    key: String,
    model_id: String,
    templates: String,
    templates_hash: String,
    labels: String,
    labels_hash: String,
    shape: Vec<i64>,
    logit_scale: f64,
    #[serde(default)]
    logit_bias: Option<f64>,
    data_sha256: String,
}

fn tensor_sha256(t: &Tensor) -> String {
    let v =
        Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).expect("f32 tensor");
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    hex::encode(h.finalize())
}

impl TextCache {
    /// A cache rooted at `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> TextCache {
        TextCache { dir: dir.into() }
    }

    /// The cache key.
    pub fn key(model_id: &str, templates: &TemplateSet, labels: &LabelSet) -> String {
        let mut h = Sha256::new();
        for part in [model_id, &templates.hash(), &labels.hash()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.safetensors")),
            self.dir.join(format!("{key}.json")),
        )
    }

    fn try_load(&self, key: &str, labels: &LabelSet) -> Option<(Tensor, f64, Option<f64>)> {
        let (data, meta) = self.paths(key);
        let meta: CacheMeta = serde_json::from_str(&std::fs::read_to_string(meta).ok()?).ok()?;
        if meta.key != key || meta.labels_hash != labels.hash() {
            return None;
        }
        let tensors = Tensor::read_safetensors(&data).ok()?;
        let (_, w) = tensors.into_iter().find(|(n, _)| n == "weights")?;
        if w.size() != meta.shape || w.size().first() != Some(&(labels.len() as i64)) {
            return None;
        }
        (tensor_sha256(&w) == meta.data_sha256).then_some((w, meta.logit_scale, meta.logit_bias))
    }

    /// The cache id of a model's classifiers with `tokenizer`: the model id for CLIP's BPE
    /// (`clip-bpe`, the entries made before other tokenizers were wired), else the model id and
    /// the tokenizer's identity ([`TextTokenizer::identity`]: its files' digest and options).
    pub fn text_id(model_id: &str, tokenizer: &dyn TextTokenizer) -> String {
        match tokenizer.identity() {
            id if id == "clip-bpe" => model_id.to_string(),
            id => format!("{model_id}+{id}"),
        }
    }

    /// Loads the classifier for (model_id, tokenizer, templates, labels) or builds and stores
    /// it (keyed by [`TextCache::text_id`]).
    pub fn load_or_build(
        &self,
        model_id: &str,
        model: &ClipModel,
        tokenizer: &dyn TextTokenizer,
        labels: LabelSet,
        templates: TemplateSet,
    ) -> Result<(ZeroShotClassifier, CacheOutcome), ZeroShotError> {
        check_vocabulary(model_id, model, tokenizer)?;
        let model_id = &TextCache::text_id(model_id, tokenizer);
        let key = TextCache::key(model_id, &templates, &labels);
        let (data, meta) = self.paths(&key);
        if let Some((weights, logit_scale, logit_bias)) = self.try_load(&key, &labels) {
            return Ok((
                ZeroShotClassifier {
                    weights,
                    logit_scale,
                    logit_bias,
                    labels,
                    templates,
                },
                CacheOutcome::Hit,
            ));
        }
        let existed = data.exists() || meta.exists();
        let clf = ZeroShotClassifier::build(model, tokenizer, labels, templates)?;
        self.store(&key, model_id, &clf)?;
        Ok((
            clf,
            if existed {
                CacheOutcome::Rebuilt
            } else {
                CacheOutcome::Miss
            },
        ))
    }

    fn store(
        &self,
        key: &str,
        model_id: &str,
        clf: &ZeroShotClassifier,
    ) -> Result<(), ZeroShotError> {
        let io = |path: &Path, e: &dyn std::fmt::Display| ZeroShotError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, &e))?;
        let (data, meta_path) = self.paths(key);
        let meta = CacheMeta {
            key: key.into(),
            model_id: model_id.into(),
            templates: clf.templates.name.clone(),
            templates_hash: clf.templates.hash(),
            labels: clf.labels.name.clone(),
            labels_hash: clf.labels.hash(),
            shape: clf.weights.size(),
            logit_scale: clf.logit_scale,
            logit_bias: clf.logit_bias,
            data_sha256: tensor_sha256(&clf.weights),
        };
        let tmp_data = data.with_extension(format!("tmp{}", std::process::id()));
        Tensor::write_safetensors(&[("weights", &clf.weights)], &tmp_data)
            .map_err(|e| io(&tmp_data, &e))?;
        std::fs::rename(&tmp_data, &data).map_err(|e| io(&data, &e))?;
        let tmp_meta = meta_path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(
            &tmp_meta,
            serde_json::to_vec_pretty(&meta).expect("serialisable"),
        )
        .map_err(|e| io(&tmp_meta, &e))?;
        std::fs::rename(&tmp_meta, &meta_path).map_err(|e| io(&meta_path, &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sets_have_expected_sizes() {
        assert_eq!(
            TemplateSet::builtin("imagenet80").unwrap().templates.len(),
            80
        );
        assert_eq!(TemplateSet::builtin("openai7").unwrap().templates.len(), 7);
        assert_eq!(
            TemplateSet::builtin("single").unwrap().templates,
            vec!["a photo of a {}."]
        );
        let inet = LabelSet::imagenet();
        assert_eq!(inet.len(), 1000);
        let unique: std::collections::HashSet<_> = inet.names().into_iter().collect();
        assert_eq!(unique.len(), 1000);
        assert_eq!(inet.index_of_wnid("n01440764"), Some(0));
        assert_eq!(inet.classes[0].name, "tench");
        assert_eq!(inet.index_of_name("iPod"), inet.index_of_wnid("n03584254"));
    }

    #[test]
    fn bad_template_names_its_line() {
        let e = TemplateSet::parse(
            "mine.txt",
            "a photo of a {}.\n# comment\nno placeholder here\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "mine.txt:3: template must contain the placeholder {} exactly once, found 0: `no placeholder here`");
        assert!(TemplateSet::parse("x", "{} and {}").is_err());
    }

    #[test]
    fn label_lists_and_csv() {
        let l = LabelSet::parse_list("l", "apple, iPod ,,piggy bank").unwrap();
        assert_eq!(l.names(), vec!["apple", "iPod", "piggy bank"]);
        assert!(LabelSet::parse_list("l", "a,a").is_err());
        let c = LabelSet::parse_csv("c.csv", "wnid,name\nn1,cat\nn2,dog\n").unwrap();
        assert_eq!(c.index_of_wnid("n2"), Some(1));
        let e = LabelSet::parse_csv("c.csv", "id,label\n1,cat\n").unwrap_err();
        assert!(e.to_string().starts_with("c.csv:1:"), "{e}");
    }

    #[test]
    fn hashes_depend_on_content_and_order() {
        let a = LabelSet::parse_list("a", "x,y").unwrap();
        let b = LabelSet::parse_list("b", "y,x").unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), LabelSet::parse_list("c", "x, y").unwrap().hash());
    }
}
