//! Turns raw arguments into typed settings: the model spec (path, cached name, or
//! `random:<arch>[:seed]`), the device, the cache directory; opens the model with what its
//! folder or tag says about its inputs: the image transform ([`OpenedModel::preprocess`]) and
//! the tokenizer ([`TokenizerSource`]: CLIP's BPE, or a Hugging Face `tokenizer.json` beside the
//! weights, read only when text is encoded).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use tch::Device;

use super::args::ModelArgs;
use crate::model::config::{canonical_arch_name, KNOWN_ARCHITECTURES};
use crate::model::load::{load_checkpoint, sha256_file};
use crate::model::{ClipConfig, ClipModel};
use crate::text_tokenizer::TextTokenizer;

/// The line every output made with random weights starts with.
pub const RANDOM_WEIGHTS_BANNER: &str = "random weights — output is not a property of CLIP";

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A checkpoint file or a hub snapshot / Hugging Face folder.
    Path(PathBuf),
    /// A known OpenAI checkpoint, looked up in the cache.
    Known(&'static str),
    /// An open_clip `ARCH:TAG` (other than OpenAI's), looked up in the cache as a hub folder.
    Tagged {
        /// open_clip architecture name.
        arch: String,
        /// Pretrained tag.
        tag: String,
    },
    /// The positive control typoclip trains itself (`typoclip toy train`), in the cache.
    Toy,
    /// Seeded random weights at the shapes of an open_clip architecture (`ViT-B-32` is GELU,
    /// `ViT-B-32-quickgelu` OpenAI's; `ARCH:TAG` as open_clip builds it for that tag).
    Random {
        /// open_clip architecture name, or `ARCH:TAG`.
        arch: String,
        /// libtorch seed.
        seed: i64,
    },
}

impl ModelSpec {
    /// Parses `toy`, `random:<arch>[:seed]`, a known name, `ARCH:TAG`, or a path (anything
    /// else).
    pub fn parse(s: &str) -> Result<ModelSpec> {
        if s == "toy" {
            return Ok(ModelSpec::Toy);
        }
        if let Some(rest) = s.strip_prefix("random:") {
            let (arch, seed) = match rest.rsplit_once(':') {
                Some((a, seed)) if seed.parse::<i64>().is_ok() => (a, seed.parse::<i64>()?),
                _ => (rest, 0),
            };
            let arch = match canonical_arch_name(arch) {
                // OpenAI's spellings (`ViT-B/32`) name OpenAI's models.
                Some(a) if arch.contains('/') || arch.contains('@') => format!("{a}-quickgelu"),
                _ => arch.to_string(),
            };
            ClipConfig::from_arch(&arch).map_err(|e| anyhow!("--model {s}: {e}"))?;
            return Ok(ModelSpec::Random { arch, seed });
        }
        let path = PathBuf::from(s);
        if path.exists() {
            return Ok(ModelSpec::Path(path));
        }
        if let Some((arch, tag)) = s.split_once(':') {
            if tag == "openai" {
                if let Some(name) = canonical_arch_name(arch.trim_end_matches("-quickgelu")) {
                    return Ok(ModelSpec::Known(name));
                }
            }
            if crate::model::open_clip::zoo()
                .pretrained(arch, tag)
                .is_some()
            {
                return Ok(ModelSpec::Tagged {
                    arch: arch.into(),
                    tag: tag.into(),
                });
            }
            bail!("--model {s}: not in open_clip's pretrained list (`typoclip models` lists every ARCH:TAG)");
        }
        if let Some(name) = canonical_arch_name(s) {
            return Ok(ModelSpec::Known(name));
        }
        bail!(
            "--model: {s}: no such file or folder, and not a known model name ({}), ARCH:TAG nor random:<arch>[:seed]",
            KNOWN_ARCHITECTURES.join(", ")
        )
    }
}

pub use crate::registry::{cache_dir, cached_file_name};

/// Parses `--device` ([`crate::model::parse_device`]).
pub fn parse_device(s: &str) -> Result<Device> {
    crate::model::parse_device(s).map_err(|e| anyhow!("--device: {e}"))
}

/// A model ready to use, with where it came from.
#[derive(Debug)]
pub struct OpenedModel {
    /// The model.
    pub model: ClipModel,
    /// The spec as given on the command line.
    pub spec: String,
    /// True for `random:` weights.
    pub random: bool,
    /// True for the positive-control toy (`--model toy`, or a folder typoclip trained it into).
    pub toy: bool,
    /// sha256 of the checkpoint file (none for random weights).
    pub sha256: Option<String>,
    /// Checkpoint format, or `random`.
    pub format: String,
    /// The file the weights came from.
    pub path: Option<PathBuf>,
    /// Where the architecture came from (`--arch`, a config file, OpenAI's build_model).
    pub config_source: String,
    /// Where the text tower's tokenizer comes from; loaded only when text is encoded
    /// ([`OpenedModel::tokenizer`]).
    pub tokenizer: TokenizerSource,
    /// The image transform the model was trained with (its hub folder's `preprocess_cfg`, its
    /// tag's, or OpenAI's), which every image command applies.
    pub preprocess: crate::preprocess::PreprocessCfg,
    /// Where [`OpenedModel::preprocess`] came from.
    pub preprocess_source: String,
}

/// The tokenizer a model's text tower takes: CLIP's BPE unless its open_clip text config
/// names a Hugging Face tokenizer (`hf_tokenizer_name`), whose `tokenizer.json` is read from the
/// hub folder (the folder of the weights).
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// OpenAI's BPE (open_clip's `SimpleTokenizer`).
    ClipBpe,
    /// A Hugging Face tokenizer, as open_clip's `HFTokenizer`.
    HuggingFace {
        /// `text_cfg.hf_tokenizer_name`.
        name: String,
        /// The folder holding `tokenizer.json` (none for random weights).
        dir: Option<PathBuf>,
        /// The text config (`context_length`, `tokenizer_kwargs`, `tokenizer_mode`).
        text_cfg: Box<crate::model::open_clip::TextCfg>,
    },
}

impl TokenizerSource {
    /// The source for an open_clip text config (none: CLIP's BPE) with its files in `dir`.
    pub fn for_text_cfg(
        text_cfg: Option<&crate::model::open_clip::TextCfg>,
        dir: Option<PathBuf>,
    ) -> TokenizerSource {
        match text_cfg {
            Some(t) => match t.hf_tokenizer_name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) => TokenizerSource::HuggingFace {
                    name: name.to_string(),
                    dir,
                    text_cfg: Box::new(t.clone()),
                },
                None => TokenizerSource::ClipBpe,
            },
            None => TokenizerSource::ClipBpe,
        }
    }
}

/// The open_clip text config of an architecture name (`ARCH` or `ARCH:TAG`), when open_clip
/// has the architecture.
fn arch_text_cfg(arch: &str) -> Option<crate::model::open_clip::TextCfg> {
    let name = arch.split_once(':').map_or(arch, |(a, _)| a);
    crate::model::open_clip::zoo()
        .model(name)
        .map(|m| m.text_cfg.clone())
}

/// What `typoclip info` prints.
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    /// Present (and first) when the weights are random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The model spec.
    pub model: String,
    /// Architecture description.
    pub architecture: String,
    /// `ViT` or `ModifiedResNet`.
    pub family: String,
    /// Input side in pixels.
    pub image_resolution: i64,
    /// Joint embedding size.
    pub embed_dim: i64,
    /// Text transformer width.
    pub text_width: i64,
    /// Text transformer layers.
    pub text_layers: i64,
    /// Context length.
    pub context_length: i64,
    /// Scalar parameter count.
    pub parameters: i64,
    /// Checkpoint format.
    pub format: String,
    /// sha256 of the file.
    pub sha256: Option<String>,
    /// True for random weights.
    pub random_weights: bool,
    /// Where the architecture came from (`--arch`, an open_clip or Hugging Face config,
    /// OpenAI's build_model, or the random spec's open_clip name).
    pub config_source: String,
    /// The image transform every image command applies (resize mode, interpolation, size,
    /// mean / std).
    pub image_transform: String,
    /// Where the transform came from.
    pub image_transform_source: String,
    /// The text tower's tokenizer and where it is read from.
    pub tokenizer: String,
    /// The full resolved config.
    pub config: ClipConfig,
}

impl OpenedModel {
    /// The id that keys caches of things computed from this model (file sha256, or the
    /// random spec).
    pub fn cache_id(&self) -> String {
        self.sha256.clone().unwrap_or_else(|| self.spec.clone())
    }

    /// The model's transform when it is not OpenAI's at its input size (what provenance
    /// records); `None` for OpenAI's.
    pub fn nondefault_transform(&self) -> Option<crate::preprocess::PreprocessCfg> {
        let r = self.model.image_resolution() as u32;
        (self.preprocess != crate::preprocess::PreprocessCfg::square(r))
            .then(|| self.preprocess.clone())
    }

    /// The text tower's tokenizer, loaded now: CLIP's BPE, or the Hugging Face tokenizer of
    /// the model's folder. A missing or unusable `tokenizer.json` is one line naming the file;
    /// only commands that encode text call this.
    pub fn tokenizer(&self) -> Result<Box<dyn TextTokenizer>> {
        match &self.tokenizer {
            TokenizerSource::ClipBpe => {
                let tok = crate::tokenizer::ClipTokenizer::new();
                crate::zeroshot::check_vocabulary(&format!("--model {}", self.spec), &self.model, &tok)?;
                Ok(Box::new(tok))
            }
            TokenizerSource::HuggingFace {
                name,
                dir: Some(dir),
                text_cfg,
            } => crate::hf_tokenizer::HfTokenizer::for_text_cfg(dir, text_cfg)
                .map(|t| Box::new(t) as Box<dyn TextTokenizer>)
                .map_err(|e| {
                    anyhow!(
                        "--model {}: text needs the Hugging Face tokenizer {name} from {}: {e}",
                        self.spec,
                        dir.display()
                    )
                }),
            TokenizerSource::HuggingFace {
                name, dir: None, ..
            } => bail!(
                "--model {}: its text tower takes the Hugging Face tokenizer {name}, and random                  weights have no folder to read its tokenizer.json from",
                self.spec
            ),
        }
    }

    /// True when the text tower takes CLIP's BPE (what the prefix defense's token edits need).
    pub fn uses_clip_bpe(&self) -> bool {
        matches!(self.tokenizer, TokenizerSource::ClipBpe)
    }

    /// `Some(banner)` for random weights or the toy: the first line of anything computed
    /// with them.
    pub fn random_warning(&self) -> Option<String> {
        if self.toy {
            return Some(format!("{} (model {})", crate::toy::TOY_BANNER, self.spec));
        }
        self.random
            .then(|| format!("{RANDOM_WEIGHTS_BANNER} (model {})", self.spec))
    }

    /// The first line of any output: the random-weights banner, or the model and its hash.
    pub fn banner_line(&self) -> String {
        match self.random_warning() {
            Some(w) => format!("# {w}"),
            None => format!(
                "# model {} ({}, sha256 {})",
                self.spec,
                self.format,
                self.sha256
                    .as_deref()
                    .map(|s| &s[..12.min(s.len())])
                    .unwrap_or("-")
            ),
        }
    }

    /// Facts about the model.
    pub fn info(&self) -> ModelInfo {
        let c = self.model.config();
        ModelInfo {
            warning: self.random_warning(),
            model: self.spec.clone(),
            architecture: c.describe(),
            family: c.vision.family().into(),
            image_resolution: c.vision.image_resolution(),
            embed_dim: c.embed_dim,
            text_width: c.text.width,
            text_layers: c.text.layers,
            context_length: c.text.context_length,
            parameters: self.model.parameter_count(),
            format: self.format.clone(),
            sha256: self.sha256.clone(),
            random_weights: self.random,
            config_source: self.config_source.clone(),
            image_transform: self.preprocess.describe(),
            image_transform_source: self.preprocess_source.clone(),
            tokenizer: match &self.tokenizer {
                TokenizerSource::ClipBpe => "CLIP BPE (open_clip's SimpleTokenizer)".into(),
                TokenizerSource::HuggingFace { name, dir, .. } => match dir {
                    Some(d) => format!(
                        "Hugging Face {name} ({})",
                        d.join("tokenizer.json").display()
                    ),
                    None => format!("Hugging Face {name} (no folder: random weights)"),
                },
            },
            config: c.clone(),
        }
    }
}

/// The checkpoint used when `--model` is not given.
pub const DEFAULT_MODEL: &str = "ViT-B-32";

/// Whether the [`DEFAULT_MODEL`] checkpoint is in the cache.
pub fn default_model_cached(cache: Option<&std::path::Path>) -> bool {
    cache_dir(cache)
        .join(cached_file_name(DEFAULT_MODEL))
        .exists()
}

/// Resolves `--model` (default: the cached [`DEFAULT_MODEL`]) and loads it on `--device`.
pub fn open_model(args: &ModelArgs) -> Result<OpenedModel> {
    open_model_or_random(args, false)
}

/// `cfg` at the model's input side.
fn sized(cfg: crate::preprocess::PreprocessCfg, res: i64) -> crate::preprocess::PreprocessCfg {
    crate::preprocess::PreprocessCfg {
        size: (res as u32, res as u32),
        ..cfg
    }
}

/// What the transform is when nothing names one.
const DEFAULT_TRANSFORM: &str = "open_clip's default (OpenAI's), at the model's input size";

/// The transform of an `--arch`/`random:` name: the tag's for `ARCH:TAG`, else open_clip's
/// defaults (OpenAI's) at the model's size; and where it came from.
fn arch_preprocess(arch: &str, res: i64) -> Result<(crate::preprocess::PreprocessCfg, String)> {
    let (cfg, source) = match arch.split_once(':') {
        Some((a, t)) => (
            crate::preprocess::PreprocessCfg::for_tag(a, t)
                .map_err(|e| anyhow!("--arch {arch}: {e}"))?,
            format!("open_clip's pretrained table for {a}:{t}"),
        ),
        None => (
            crate::preprocess::PreprocessCfg::default(),
            DEFAULT_TRANSFORM.to_string(),
        ),
    };
    Ok((sized(cfg, res), source))
}

/// As [`open_model`]; with `fallback_random`, a missing default checkpoint becomes
/// `random:<default>` instead of an error.
pub fn open_model_or_random(args: &ModelArgs, fallback_random: bool) -> Result<OpenedModel> {
    let device = parse_device(&args.device)?;
    let spec_text = match &args.model {
        Some(m) => m.clone(),
        None => {
            if fallback_random && !default_model_cached(args.cache_dir.as_deref()) {
                format!("random:{DEFAULT_MODEL}-quickgelu")
            } else {
                DEFAULT_MODEL.to_string()
            }
        }
    };
    let spec = ModelSpec::parse(&spec_text)?;
    let path = match spec {
        ModelSpec::Random { arch, seed } => {
            let config = ClipConfig::from_arch(&arch)?;
            let model = ClipModel::random(&config, seed, device)?;
            let (preprocess, preprocess_source) = arch_preprocess(&arch, model.image_resolution())?;
            return Ok(OpenedModel {
                preprocess,
                preprocess_source,
                tokenizer: TokenizerSource::for_text_cfg(arch_text_cfg(&arch).as_ref(), None),
                model,
                spec: format!("random:{arch}:{seed}"),
                random: true,
                toy: false,
                sha256: None,
                format: "random".into(),
                path: None,
                config_source: format!("{arch} (open_clip's config)"),
            });
        }
        ModelSpec::Path(p) => p,
        ModelSpec::Toy => {
            let p = crate::toy::cache_folder(&cache_dir(args.cache_dir.as_deref()));
            if !crate::toy::is_toy_folder(&p) {
                bail!(
                    "--model toy: not trained yet ({}); run `typoclip toy train` \
                     (a few minutes on 2 cores; scripts/setup.sh does it)",
                    p.display()
                );
            }
            p
        }
        ModelSpec::Tagged { arch, tag } => {
            let p = cache_dir(args.cache_dir.as_deref())
                .join("hub")
                .join(&arch)
                .join(&tag);
            if !p.is_dir() {
                bail!(
                    "--model {arch}:{tag}: not in the cache ({}); download the tag's hub snapshot \
                     (open_clip_config.json and weights) into that folder, or pass its folder as --model",
                    p.display()
                );
            }
            p
        }
        ModelSpec::Known(name) => {
            let p = cache_dir(args.cache_dir.as_deref()).join(cached_file_name(name));
            if !p.exists() {
                bail!(
                    "--model {name}: not in the cache ({}); run `typoclip fetch {name}` (needs internet), \
                     `typoclip import FILE` for a file downloaded elsewhere, \
                     or use `random:{name}` for plumbing with random weights",
                    p.display()
                );
            }
            p
        }
    };
    let loaded = load_checkpoint(&path, args.arch.as_deref(), device)?;
    let weights = loaded.weights.clone();
    let res = loaded.model.image_resolution();
    let (preprocess, preprocess_source) = match (&loaded.preprocess_cfg, &args.arch) {
        (Some(v), _) => (
            sized(
                crate::preprocess::PreprocessCfg::from_open_clip_json(v)
                    .map_err(|e| anyhow!("{}: {e}", weights.display()))?,
                res,
            ),
            format!("preprocess_cfg of {}", loaded.config_source),
        ),
        (None, Some(a)) => arch_preprocess(a, res)?,
        (None, None) => (
            sized(crate::preprocess::PreprocessCfg::default(), res),
            DEFAULT_TRANSFORM.to_string(),
        ),
    };
    let tokenizer = TokenizerSource::for_text_cfg(
        loaded.text_cfg.as_ref(),
        weights.parent().map(std::path::Path::to_path_buf),
    );
    let sha256 =
        sha256_file(&weights).map_err(|e| anyhow!("{}: cannot read: {e}", weights.display()))?;
    Ok(OpenedModel {
        model: loaded.model,
        toy: crate::toy::is_toy_checkpoint(&path),
        spec: spec_text,
        random: false,
        sha256: Some(sha256),
        format: format!("{:?}/{:?}", loaded.format, loaded.naming),
        path: Some(weights),
        config_source: loaded.config_source.to_string(),
        preprocess,
        preprocess_source,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_specs() {
        assert_eq!(
            ModelSpec::parse("random:ViT-B/32:7").unwrap(),
            ModelSpec::Random {
                arch: "ViT-B-32-quickgelu".into(),
                seed: 7
            }
        );
        assert_eq!(
            ModelSpec::parse("random:RN50").unwrap(),
            ModelSpec::Random {
                arch: "RN50".into(),
                seed: 0
            }
        );
        assert_eq!(
            ModelSpec::parse("random:ViT-H-14:3").unwrap(),
            ModelSpec::Random {
                arch: "ViT-H-14".into(),
                seed: 3
            }
        );
        assert!(matches!(
            ModelSpec::parse("ViT-B-32:openai"),
            Ok(ModelSpec::Known("ViT-B-32"))
        ));
        assert!(matches!(
            ModelSpec::parse("ViT-B-32:laion2b_s34b_b79k"),
            Ok(ModelSpec::Tagged { .. })
        ));
        assert!(ModelSpec::parse("ViT-B-32:no_such_tag").is_err());
        assert!(ModelSpec::parse("random:ViT-Z").is_err());
        assert!(matches!(
            ModelSpec::parse("ViT-L-14"),
            Ok(ModelSpec::Known("ViT-L-14"))
        ));
        let e = ModelSpec::parse("/nonexistent/model.pt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/model.pt"), "{e}");
    }
}
