//! Hugging Face tokenizers, as open_clip's `HFTokenizer` uses them: a hub folder's
//! `tokenizer.json` run by the `tokenizers` crate (the library Hugging Face's Python tokenizers
//! are built on, same version as the reference's), after open_clip's text cleaning, truncated
//! and padded to the context length as `transformers` does for
//! `tokenizer(texts, max_length=n, padding="max_length", truncation=True)`.
//!
//! Inputs: the folder's `tokenizer.json`, and beside it `tokenizer_config.json` and
//! `special_tokens_map.json` when present (the pad and sep tokens, `padding_side`,
//! `truncation_side`, `tokenizer_class`, BERT's `do_lower_case`). Output: `[B, n] i64` ids.
//! Files are read once, by [`HfTokenizer::from_folder`] / [`HfTokenizer::from_file`];
//! encoding is pure.
//!
//! What is reproduced: open_clip's `clean` modes (`whitespace`, `lower`, `canonicalize`; each
//! starts with open_clip's `basic_clean`, the same ftfy-without-mojibake-repair and double
//! HTML unescape as [`crate::tokenizer`]), `strip_sep_token` (the sep id replaced by 0, not by
//! the pad id), transformers' special-token lookup (`special_tokens_map.json` over
//! `tokenizer_config.json` over the class defaults), its padding/truncation sides, and
//! `BertTokenizerFast` rewriting the `BertNormalizer` from `do_lower_case`, `strip_accents` and
//! `tokenize_chinese_chars`, and `LlamaTokenizerFast` / `GemmaTokenizerFast` (SigLIP 2's)
//! replacing the file's post-processor by `[bos] $A [eos]` from `add_bos_token` /
//! `add_eos_token` and padding on the left, and `NllbTokenizerFast` (NLLB-200's) replacing it
//! by `[lang] $A </s>` — the config's `src_lang`, else `eng_Latn`; `legacy_behaviour` puts it
//! after `</s>` instead. open_clip's `tokenizer_kwargs.language` is refused: with transformers
//! 4.57 every call resets the language to `src_lang`, so open_clip's `set_language` has no
//! effect and honouring it would not be what open_clip computes. Not reproduced: special tokens that are missing from
//! the vocabulary (refused), and open_clip's `tokenizer_mode="clips"` (refused).
//! A Unigram file's piece scores are read as the tokenizers library reads them
//! ([`crate::hf_scores`]): correctly rounded, some texts would segment differently.
//! Reference: open_clip 3.3.0 `tokenizer.py` (`HFTokenizer`, `get_clean_fn`,
//! `canonicalize_text`), `factory.py` (`get_tokenizer`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tch::Tensor;
use tokenizers::utils::padding::{PaddingDirection, PaddingParams, PaddingStrategy};
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{PostProcessor, Tokenizer};

use crate::html_unescape::unescape;
use crate::model::open_clip::TextCfg;
use crate::tokenizer::fix_text;

/// A tokenizer file or option that cannot be used. Displays as one line naming the file or the
/// config field.
#[derive(Debug, thiserror::Error)]
pub enum HfTokenizerError {
    /// A problem with one file.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A config field with a value typoclip cannot use.
    #[error("{field}: {message}")]
    Field {
        /// The field (`text_cfg.tokenizer_kwargs.clean`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn file_error(path: &Path, message: impl Into<String>) -> HfTokenizerError {
    HfTokenizerError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// open_clip's text cleaning for `HFTokenizer` (`clean=` of `get_clean_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clean {
    /// `_clean_whitespace`: basic clean, whitespace runs collapsed (open_clip's default).
    #[default]
    Whitespace,
    /// `_clean_lower`: as `Whitespace`, then lower-cased.
    Lower,
    /// `_clean_canonicalize`: basic clean, `_` → space, ASCII punctuation removed, lower-cased,
    /// whitespace collapsed (big_vision's `canonicalize_text`, SigLIP's).
    Canonicalize,
}

impl Clean {
    /// The mode named as open_clip names it.
    pub fn parse(name: &str) -> Option<Clean> {
        match name {
            "whitespace" => Some(Clean::Whitespace),
            "lower" => Some(Clean::Lower),
            "canonicalize" => Some(Clean::Canonicalize),
            _ => None,
        }
    }

    /// open_clip's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Clean::Whitespace => "whitespace",
            Clean::Lower => "lower",
            Clean::Canonicalize => "canonicalize",
        }
    }

    /// The cleaned text.
    pub fn apply(self, text: &str) -> String {
        let basic = basic_clean(text);
        match self {
            Clean::Whitespace => whitespace_clean(&basic),
            Clean::Lower => whitespace_clean(&basic).to_lowercase(),
            Clean::Canonicalize => {
                let kept: String = basic
                    .chars()
                    .map(|c| if c == '_' { ' ' } else { c })
                    .filter(|c| !c.is_ascii_punctuation())
                    .collect();
                whitespace_clean(&kept.to_lowercase())
            }
        }
    }
}

/// Python's `str.isspace` (Unicode `White_Space` plus the separators U+001C–U+001F).
fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// open_clip's `basic_clean`: ftfy's `fix_text`, `html.unescape` twice, `strip`.
fn basic_clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = unescape(&unescape(&fixed)).into_owned();
    unescaped.trim_matches(py_is_space).to_string()
}

/// open_clip's `whitespace_clean`: `" ".join(text.split())`.
fn whitespace_clean(text: &str) -> String {
    text.split(py_is_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What open_clip passes to `HFTokenizer` besides the tokenizer source and context length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HfOptions {
    /// The cleaning mode (`tokenizer_kwargs.clean`, default `whitespace`).
    pub clean: Clean,
    /// Replace the sep token's id by 0 (`tokenizer_kwargs.strip_sep_token`, CLIPA's BERT).
    pub strip_sep_token: bool,
}

impl HfOptions {
    /// The options of an open_clip text config: `tokenizer_kwargs` (`clean`,
    /// `strip_sep_token`; any other key, which open_clip hands to `AutoTokenizer`, is refused)
    /// and `tokenizer_mode` (only the standard mode).
    pub fn from_text_cfg(cfg: &TextCfg) -> Result<HfOptions, HfTokenizerError> {
        if let Some(mode) = cfg.tokenizer_mode.as_deref().filter(|m| !m.is_empty()) {
            return Err(HfTokenizerError::Field {
                field: "text_cfg.tokenizer_mode".into(),
                message: format!("{mode:?} is not supported (only the standard mode)"),
            });
        }
        let empty = BTreeMap::new();
        let mut options = HfOptions::default();
        for (key, value) in cfg.tokenizer_kwargs.as_ref().unwrap_or(&empty) {
            let field = format!("text_cfg.tokenizer_kwargs.{key}");
            match (key.as_str(), value) {
                ("clean", Value::String(s)) => {
                    options.clean = Clean::parse(s).ok_or_else(|| HfTokenizerError::Field {
                        field: field.clone(),
                        message: format!(
                            "{s:?} is not one of \"whitespace\", \"lower\", \"canonicalize\""
                        ),
                    })?
                }
                ("strip_sep_token", Value::Bool(b)) => options.strip_sep_token = *b,
                ("language", _) => {
                    return Err(HfTokenizerError::Field {
                        field,
                        message: format!(
                            "{value}: open_clip's set_language has no effect with transformers \
                             4.57 (each call resets NLLB's language to the tokenizer config's \
                             src_lang); set src_lang in the folder's tokenizer_config.json"
                        ),
                    })
                }
                _ => {
                    return Err(HfTokenizerError::Field {
                        field,
                        message: format!("{value} is not supported"),
                    })
                }
            }
        }
        Ok(options)
    }
}

/// A side of a row (`padding_side`, `truncation_side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// The files of a tokenizer folder, read.
struct Config {
    /// `tokenizer_config.json` (empty when absent).
    config: serde_json::Map<String, Value>,
    config_path: PathBuf,
    /// `special_tokens_map.json` (empty when absent).
    special: serde_json::Map<String, Value>,
    special_path: PathBuf,
    /// The transformers class, without `Fast` (`BertTokenizer`), if named.
    class: Option<String>,
}

/// A JSON object with the bytes it was read from.
type JsonFile = (serde_json::Map<String, Value>, Vec<u8>);

/// A JSON object file; `None` when it does not exist.
fn read_json_object(path: &Path) -> Result<Option<JsonFile>, HfTokenizerError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e.to_string())),
    };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(Some((map, bytes))),
        Ok(_) => Err(file_error(path, "not a JSON object")),
        Err(e) => Err(file_error(path, format!("invalid JSON: {e}"))),
    }
}

impl Config {
    fn read(dir: &Path, digest: &mut Sha256) -> Result<Config, HfTokenizerError> {
        let config_path = dir.join("tokenizer_config.json");
        let special_path = dir.join("special_tokens_map.json");
        let mut object = |path: &Path| -> Result<serde_json::Map<String, Value>, HfTokenizerError> {
            Ok(match read_json_object(path)? {
                Some((map, bytes)) => {
                    digest.update(&bytes);
                    map
                }
                None => serde_json::Map::new(),
            })
        };
        let config = object(&config_path)?;
        let special = object(&special_path)?;
        let model_type = read_json_object(&dir.join("config.json"))
            .ok()
            .flatten()
            .and_then(|(m, _)| {
                m.get("model_type")
                    .and_then(Value::as_str)
                    .map(String::from)
            });
        let class = match config.get("tokenizer_class") {
            Some(Value::String(c)) => Some(c.strip_suffix("Fast").unwrap_or(c).to_string()),
            _ => model_type
                .as_deref()
                .and_then(class_of_model_type)
                .map(String::from),
        };
        Ok(Config {
            config,
            config_path,
            special,
            special_path,
            class,
        })
    }

    /// A special token as transformers resolves it: `special_tokens_map.json`, then
    /// `tokenizer_config.json`, then the class default. The file it came from, for errors.
    fn special_token(&self, name: &str) -> Option<(String, PathBuf)> {
        let content = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        if let Some(t) = self.special.get(name).and_then(content) {
            return Some((t, self.special_path.clone()));
        }
        if let Some(v) = self.config.get(name) {
            return content(v).map(|t| (t, self.config_path.clone()));
        }
        class_default(self.class.as_deref()?, name)
            .map(|t| (t.to_string(), self.config_path.clone()))
    }

    /// `padding_side` / `truncation_side`: the config's, else the class attribute (transformers'
    /// `LlamaTokenizerFast` and `GemmaTokenizerFast` pad on the left), else right.
    fn side(&self, key: &str) -> Result<Side, HfTokenizerError> {
        let class_side = if key == "padding_side" && self.is_llama_class() {
            Side::Left
        } else {
            Side::Right
        };
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(class_side),
            Some(Value::String(s)) if s == "right" => Ok(Side::Right),
            Some(Value::String(s)) if s == "left" => Ok(Side::Left),
            Some(v) => Err(file_error(
                &self.config_path,
                format!("{key}: {v} is neither \"left\" nor \"right\""),
            )),
        }
    }

    /// `BertTokenizerFast.__init__`: the `BertNormalizer` takes `do_lower_case` (default true),
    /// `strip_accents` (default none) and `tokenize_chinese_chars` (default true).
    fn patch_bert_normalizer(&self, tokenizer_json: &mut Value) {
        if self.class.as_deref() != Some("BertTokenizer") {
            return;
        }
        let Some(normalizer) = tokenizer_json.get_mut("normalizer") else {
            return;
        };
        if normalizer.get("type").and_then(Value::as_str) != Some("BertNormalizer") {
            return;
        }
        let get = |key: &str, default: Value| self.config.get(key).cloned().unwrap_or(default);
        normalizer["lowercase"] = get("do_lower_case", Value::Bool(true));
        normalizer["strip_accents"] = get("strip_accents", Value::Null);
        normalizer["handle_chinese_chars"] = get("tokenize_chinese_chars", Value::Bool(true));
    }

    /// `NllbTokenizerFast.set_src_lang_special_tokens(src_lang)`, which every call runs:
    /// whatever the file's post-processor, the class replaces it by `lang $A </s>`
    /// (`legacy_behaviour`: `$A </s> lang`), `lang` being `src_lang`, else `eng_Latn`.
    fn rewrite_nllb_post_processor(
        &self,
        tokenizer: &mut Tokenizer,
        path: &Path,
    ) -> Result<(), HfTokenizerError> {
        if self.class.as_deref() != Some("NllbTokenizer") {
            return Ok(());
        }
        let lang = match self.config.get("src_lang") {
            None | Some(Value::Null) => "eng_Latn".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                return Err(file_error(
                    &self.config_path,
                    format!("src_lang: {v} is not a language code"),
                ))
            }
        };
        let lang_id = tokenizer.token_to_id(&lang).ok_or_else(|| {
            file_error(
                path,
                format!("the language code {lang:?} is not in the vocabulary"),
            )
        })?;
        let (eos, source) = self
            .special_token("eos_token")
            .unwrap_or_else(|| ("</s>".to_string(), self.config_path.clone()));
        let eos_id = tokenizer.token_to_id(&eos).ok_or_else(|| {
            file_error(
                &source,
                format!(
                    "eos_token {eos:?} is not in {}'s vocabulary",
                    path.display()
                ),
            )
        })?;
        let legacy = matches!(self.config.get("legacy_behaviour"), Some(Value::Bool(true)));
        let (single, pair) = if legacy {
            (
                format!("$A:0 {eos}:0 {lang}:0"),
                format!("$A:0 $B:0 {eos}:0 {lang}:0"),
            )
        } else {
            (
                format!("{lang}:0 $A:0 {eos}:0"),
                format!("{lang}:0 $A:0 $B:0 {eos}:0"),
            )
        };
        let template = tokenizers::processors::template::TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair))
            .map_err(|e| file_error(&self.config_path, e.to_string()))?
            .special_tokens(vec![(lang.clone(), lang_id), (eos.clone(), eos_id)])
            .build()
            .map_err(|e| file_error(&self.config_path, e.to_string()))?;
        tokenizer.with_post_processor(Some(template));
        Ok(())
    }

    /// Whether the class is transformers' `LlamaTokenizer(Fast)` or `GemmaTokenizer(Fast)`, which
    /// pad on the left and rebuild their post-processor from their flags.
    fn is_llama_class(&self) -> bool {
        matches!(
            self.class.as_deref(),
            Some("GemmaTokenizer" | "LlamaTokenizer")
        )
    }

    /// `LlamaTokenizerFast` / `GemmaTokenizerFast.update_post_processor`: whatever the file's
    /// post-processor, these classes replace it by `[bos] $A [eos]` from `add_bos_token`
    /// (default true) and `add_eos_token` (default false).
    fn rewrite_llama_post_processor(
        &self,
        tokenizer: &mut Tokenizer,
        path: &Path,
    ) -> Result<(), HfTokenizerError> {
        if !self.is_llama_class() {
            return Ok(());
        }
        let flag = |key: &str, default: bool| -> Result<bool, HfTokenizerError> {
            match self.config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(file_error(
                    &self.config_path,
                    format!("{key}: {v} is not a boolean"),
                )),
            }
        };
        let mut specials = Vec::new();
        let mut piece = |name: &str, on: bool, seq: u32| -> Result<String, HfTokenizerError> {
            if !on {
                return Ok(String::new());
            }
            let (token, source) = self.special_token(name).ok_or_else(|| {
                file_error(
                    &self.config_path,
                    format!("add_{name} is set but no {name} is named"),
                )
            })?;
            let id = tokenizer.token_to_id(&token).ok_or_else(|| {
                file_error(
                    &source,
                    format!("{name} {token:?} is not in {}'s vocabulary", path.display()),
                )
            })?;
            specials.push((token.clone(), id));
            Ok(format!("{token}:{seq} "))
        };
        let (bos, eos) = (flag("add_bos_token", true)?, flag("add_eos_token", false)?);
        let single = format!(
            "{}$A:0 {}",
            piece("bos_token", bos, 0)?,
            piece("eos_token", eos, 0)?
        );
        let pair = format!(
            "{single}{}$B:1 {}",
            piece("bos_token", bos, 1)?,
            piece("eos_token", eos, 1)?
        );
        specials.dedup();
        let template = tokenizers::processors::template::TemplateProcessing::builder()
            .try_single(single.trim())
            .and_then(|b| b.try_pair(pair.trim()))
            .map_err(|e| file_error(&self.config_path, e.to_string()))?
            .special_tokens(specials)
            .build()
            .map_err(|e| file_error(&self.config_path, e.to_string()))?;
        tokenizer.with_post_processor(Some(template));
        Ok(())
    }
}

/// `AutoTokenizer`'s class for a `config.json` `model_type` (the ones open_clip's zoo uses).
fn class_of_model_type(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "bert" => "BertTokenizer",
        "t5" | "mt5" | "umt5" => "T5Tokenizer",
        "roberta" => "RobertaTokenizer",
        "xlm-roberta" => "XLMRobertaTokenizer",
        "gemma" | "gemma2" | "gemma3" => "GemmaTokenizer",
        _ => return None,
    })
}

/// The special tokens a transformers class defaults to when its files name none.
fn class_default(class: &str, name: &str) -> Option<&'static str> {
    match (class, name) {
        ("BertTokenizer", "pad_token") => Some("[PAD]"),
        ("BertTokenizer", "sep_token") => Some("[SEP]"),
        ("T5Tokenizer" | "GemmaTokenizer", "pad_token") => Some("<pad>"),
        ("GemmaTokenizer", "bos_token") => Some("<bos>"),
        ("GemmaTokenizer", "eos_token") => Some("<eos>"),
        ("LlamaTokenizer", "bos_token") => Some("<s>"),
        ("LlamaTokenizer", "eos_token") => Some("</s>"),
        ("RobertaTokenizer" | "XLMRobertaTokenizer", "pad_token") => Some("<pad>"),
        ("RobertaTokenizer" | "XLMRobertaTokenizer", "sep_token") => Some("</s>"),
        ("NllbTokenizer", "pad_token") => Some("<pad>"),
        ("NllbTokenizer", "eos_token") => Some("</s>"),
        _ => None,
    }
}

/// A Hugging Face tokenizer as open_clip's `HFTokenizer` runs it.
pub struct HfTokenizer {
    /// Configured for `context_length` (truncation and padding as transformers sets them).
    tokenizer: Tokenizer,
    path: PathBuf,
    context_length: usize,
    options: HfOptions,
    layout: Layout,
    sep_id: Option<u32>,
    digest: String,
}

/// How rows are padded and truncated (transformers' `set_truncation_and_padding`).
#[derive(Debug, Clone)]
struct Layout {
    pad_id: u32,
    pad_token: String,
    padding: Side,
    truncation: Side,
}

impl Layout {
    /// Truncation longest-first with stride 0, padding to exactly `n`.
    fn configure(
        &self,
        tokenizer: &mut Tokenizer,
        n: usize,
        path: &Path,
    ) -> Result<(), HfTokenizerError> {
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if n <= added {
            return Err(file_error(
                path,
                format!("context length {n} leaves no room beside the {added} added tokens"),
            ));
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: match self.truncation {
                    Side::Left => TruncationDirection::Left,
                    Side::Right => TruncationDirection::Right,
                },
                max_length: n,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| file_error(path, e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(n),
            direction: match self.padding {
                Side::Left => PaddingDirection::Left,
                Side::Right => PaddingDirection::Right,
            },
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        Ok(())
    }
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("path", &self.path)
            .field("context_length", &self.context_length)
            .field("options", &self.options)
            .field("pad_id", &self.layout.pad_id)
            .field("sep_id", &self.sep_id)
            .finish()
    }
}

impl HfTokenizer {
    /// A hub folder's tokenizer: `dir/tokenizer.json`, with `tokenizer_config.json` and
    /// `special_tokens_map.json` beside it when present.
    pub fn from_folder(
        dir: &Path,
        context_length: usize,
        clean: Clean,
        strip_sep_token: bool,
    ) -> Result<HfTokenizer, HfTokenizerError> {
        Self::from_file(
            &dir.join("tokenizer.json"),
            context_length,
            HfOptions {
                clean,
                strip_sep_token,
            },
        )
    }

    /// The tokenizer of an open_clip text config, from its hub folder: `context_length`,
    /// `tokenizer_kwargs` and `tokenizer_mode` as [`HfOptions::from_text_cfg`] reads them.
    pub fn for_text_cfg(dir: &Path, cfg: &TextCfg) -> Result<HfTokenizer, HfTokenizerError> {
        let options = HfOptions::from_text_cfg(cfg)?;
        let n = usize::try_from(cfg.context_length).map_err(|_| HfTokenizerError::Field {
            field: "text_cfg.context_length".into(),
            message: format!("{} is not a length", cfg.context_length),
        })?;
        Self::from_file(&dir.join("tokenizer.json"), n, options)
    }

    /// A `tokenizer.json` file; the config files are looked up in its folder.
    pub fn from_file(
        path: &Path,
        context_length: usize,
        options: HfOptions,
    ) -> Result<HfTokenizer, HfTokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| {
            file_error(
                path,
                if e.kind() == std::io::ErrorKind::NotFound {
                    "missing — this model's text tower needs its Hugging Face tokenizer file"
                        .to_string()
                } else {
                    e.to_string()
                },
            )
        })?;
        let mut digest = Sha256::new();
        digest.update(&bytes);
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = Config::read(dir, &mut digest)?;
        let mut json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| file_error(path, format!("invalid JSON: {e}")))?;
        config.patch_bert_normalizer(&mut json);
        crate::hf_scores::reread_unigram_scores(&bytes, &mut json);
        let tokenizer: Tokenizer = serde_json::from_value(json).map_err(|e| {
            file_error(
                path,
                format!("not a tokenizer the tokenizers crate reads: {e}"),
            )
        })?;
        let id_of = |name: &str| -> Result<Option<(String, u32)>, HfTokenizerError> {
            let Some((token, source)) = config.special_token(name) else {
                return Ok(None);
            };
            match tokenizer.token_to_id(&token) {
                Some(id) => Ok(Some((token, id))),
                None => Err(file_error(
                    &source,
                    format!("{name} {token:?} is not in {}'s vocabulary", path.display()),
                )),
            }
        };
        let (pad_token, pad_id) = id_of("pad_token")?.ok_or_else(|| {
            file_error(
                &config.config_path,
                "pad_token: none named (here, in special_tokens_map.json or by the tokenizer \
                 class), so rows cannot be padded to the context length",
            )
        })?;
        let sep_id = id_of("sep_token")?.map(|(_, id)| id);
        if options.strip_sep_token && sep_id.is_none() {
            return Err(file_error(
                &config.config_path,
                "sep_token: none named, but strip_sep_token is set",
            ));
        }
        let layout = Layout {
            pad_id,
            pad_token,
            padding: config.side("padding_side")?,
            truncation: config.side("truncation_side")?,
        };
        let mut tokenizer = tokenizer;
        config.rewrite_llama_post_processor(&mut tokenizer, path)?;
        config.rewrite_nllb_post_processor(&mut tokenizer, path)?;
        layout.configure(&mut tokenizer, context_length, path)?;
        Ok(HfTokenizer {
            tokenizer,
            path: path.to_path_buf(),
            context_length,
            options,
            layout,
            sep_id,
            digest: hex::encode(&digest.finalize()[..8]),
        })
    }

    /// The context length rows are made to.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The cleaning and sep options.
    pub fn options(&self) -> HfOptions {
        self.options
    }

    /// The pad id.
    pub fn pad_id(&self) -> i64 {
        self.layout.pad_id as i64
    }

    /// `hf:<digest of the files>:clean=<mode>:strip_sep=<bool>` (the digest covers the config
    /// files, NLLB's `src_lang` among them).
    pub fn identity(&self) -> String {
        format!(
            "hf:{}:clean={}:strip_sep={}",
            self.digest,
            self.options.clean.name(),
            self.options.strip_sep_token
        )
    }

    /// The cleaned text the tokenizer is given.
    pub fn clean(&self, text: &str) -> String {
        self.options.clean.apply(text)
    }

    fn encode_with(&self, tokenizer: &Tokenizer, text: &str) -> Result<Vec<i64>, HfTokenizerError> {
        let cleaned = self.clean(text);
        let encoding = tokenizer
            .encode(cleaned.as_str(), true)
            .map_err(|e| file_error(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(encoding
            .get_ids()
            .iter()
            .map(|&id| match self.sep_id {
                Some(sep) if self.options.strip_sep_token && id == sep => 0,
                _ => id as i64,
            })
            .collect())
    }

    /// One row of exactly [`HfTokenizer::context_length`] ids.
    pub fn encode_row(&self, text: &str) -> Result<Vec<i64>, HfTokenizerError> {
        self.encode_with(&self.tokenizer, text)
    }

    /// Rows of `context_length` ids (another length than the configured one reconfigures a
    /// copy of the tokenizer).
    pub fn encode_rows(
        &self,
        texts: &[&str],
        context_length: usize,
    ) -> Result<Vec<Vec<i64>>, HfTokenizerError> {
        let other;
        let tokenizer = if context_length == self.context_length {
            &self.tokenizer
        } else {
            let mut t = self.tokenizer.clone();
            self.layout.configure(&mut t, context_length, &self.path)?;
            other = t;
            &other
        };
        texts
            .iter()
            .map(|t| self.encode_with(tokenizer, t))
            .collect()
    }

    /// Token ids `[B, context_length] i64` — open_clip's `HFTokenizer(texts)`.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor, HfTokenizerError> {
        let refs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let rows = self.encode_rows(&refs, self.context_length)?;
        let flat = rows.concat();
        Ok(Tensor::from_slice(&flat).view([rows.len() as i64, self.context_length as i64]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_follows_open_clip() {
        assert_eq!(
            Clean::Whitespace.apply("  A\tphoto\u{3000}of\n a_CAT. "),
            "A photo of a_CAT."
        );
        assert_eq!(
            Clean::Lower.apply("  A\tphoto of\n a_CAT. "),
            "a photo of a_cat."
        );
        assert_eq!(
            Clean::Canonicalize.apply("A photo of a_CAT, (really)! &amp; ‘quoted’"),
            "a photo of a cat really quoted"
        );
        assert_eq!(Clean::parse("lower"), Some(Clean::Lower));
        assert_eq!(Clean::parse("Lower"), None);
    }

    #[test]
    fn options_come_from_tokenizer_kwargs() {
        let cfg: TextCfg = serde_json::from_str(
            r#"{"hf_tokenizer_name": "bert-base-uncased", "tokenizer_kwargs": {"strip_sep_token": true}}"#,
        )
        .unwrap();
        let o = HfOptions::from_text_cfg(&cfg).unwrap();
        assert!(o.strip_sep_token);
        assert_eq!(o.clean, Clean::Whitespace);
        let bad: TextCfg =
            serde_json::from_str(r#"{"tokenizer_kwargs": {"clean": "upper"}}"#).unwrap();
        let e = HfOptions::from_text_cfg(&bad).unwrap_err().to_string();
        assert!(e.starts_with("text_cfg.tokenizer_kwargs.clean: "), "{e}");
        let mode: TextCfg = serde_json::from_str(r#"{"tokenizer_mode": "clips"}"#).unwrap();
        let e = HfOptions::from_text_cfg(&mode).unwrap_err().to_string();
        assert!(e.starts_with("text_cfg.tokenizer_mode: "), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = std::env::temp_dir().join("typoclip-hf-tokenizer-missing");
        let e = HfTokenizer::from_folder(&dir, 32, Clean::Whitespace, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json: missing"), "{e}");
    }
}
