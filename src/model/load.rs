//! The only code that reads weight files. Detects the checkpoint format from the file's content
//! (never its extension), reads the state dict, maps other namings onto OpenAI/open_clip keys,
//! infers the architecture, builds the model and copies every tensor in with a key audit.
//!
//! Formats:
//! - OpenAI TorchScript `.pt` (fp16; read through the C++ shim, parameters *and* buffers);
//! - `torch.save(state_dict)` zip archives (OpenAI naming as `clip.load(jit=False)`, OpenCLIP
//!   `.pt/.bin`, optionally wrapped as `{"state_dict": …}` and/or with a `module.` prefix);
//! - safetensors in OpenCLIP naming or Hugging Face `CLIPModel` naming (ViT only).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::pickle::{self, TensorRef, Value};
use super::{ClipConfig, ClipModel, ModelError};

/// How a checkpoint file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CheckpointFormat {
    /// A TorchScript archive (`torch.jit.save`), e.g. OpenAI's official `.pt` files.
    TorchScript,
    /// A `torch.save` zip archive of a state dict.
    TorchSave,
    /// A safetensors file.
    Safetensors,
}

/// Which key scheme the file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeyNaming {
    /// OpenAI / open_clip (`visual.transformer.resblocks.N…`).
    OpenAi,
    /// Hugging Face `CLIPModel` (`vision_model.encoder.layers.N…`).
    HuggingFace,
}

/// A state dict in OpenAI naming, with where it came from.
#[derive(Debug)]
pub struct StateDict {
    /// Tensors by OpenAI/open_clip key, converted to float32 where floating.
    pub tensors: BTreeMap<String, Tensor>,
    /// File layout.
    pub format: CheckpointFormat,
    /// Key scheme found in the file.
    pub naming: KeyNaming,
}

fn bad(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Detects the format from the first bytes and, for zip files, the entry names.
pub fn detect_format(path: &Path) -> Result<CheckpointFormat, ModelError> {
    let mut f = File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = [0u8; 16];
    let n = f
        .read(&mut head)
        .map_err(|e| bad(path, format!("cannot read: {e}")))?;
    if n == 0 {
        return Err(bad(path, "empty file"));
    }
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        f.seek(SeekFrom::Start(0))
            .map_err(|e| bad(path, e.to_string()))?;
        let zip = zip::ZipArchive::new(f)
            .map_err(|e| bad(path, format!("zip archive is truncated or corrupt ({e})")))?;
        let names: Vec<&str> = zip.file_names().collect();
        if names
            .iter()
            .any(|n| n.ends_with("/constants.pkl") || n.contains("/code/"))
        {
            return Ok(CheckpointFormat::TorchScript);
        }
        if names.iter().any(|n| n.ends_with("data.pkl")) {
            return Ok(CheckpointFormat::TorchSave);
        }
        return Err(bad(
            path,
            "zip archive is neither TorchScript nor torch.save (no data.pkl)",
        ));
    }
    if n >= 9 && head[8] == b'{' {
        let header_len = u64::from_le_bytes(head[..8].try_into().unwrap());
        if header_len + 8 > len {
            return Err(bad(path, format!("safetensors header claims {header_len} bytes but the file has {len}: truncated")));
        }
        return Ok(CheckpointFormat::Safetensors);
    }
    if head[0] == 0x80 && n >= 2 && head[1] <= 5 {
        return Err(bad(
            path,
            "legacy (pre-1.6, non-zip) torch.save format is not supported: re-save it with a current torch.save",
        ));
    }
    Err(bad(
        path,
        "unknown checkpoint format (expected a TorchScript/torch.save zip or safetensors)",
    ))
}

/// Reads a checkpoint into a state dict in OpenAI naming.
pub fn read_state_dict(path: &Path) -> Result<StateDict, ModelError> {
    let format = detect_format(path)?;
    let raw: Vec<(String, Tensor)> =
        match format {
            CheckpointFormat::TorchScript => super::jit::named_tensors(path)
                .map_err(|m| bad(path, format!("TorchScript: {m}")))?,
            CheckpointFormat::TorchSave => read_torch_save(path)?,
            CheckpointFormat::Safetensors => Tensor::read_safetensors(path)
                .map_err(|e| bad(path, format!("safetensors: {e}")))?,
        };
    let (tensors, naming) = normalize_keys(raw).map_err(|m| bad(path, m))?;
    Ok(StateDict {
        tensors,
        format,
        naming,
    })
}

/// Keys that checkpoints carry but that are not weights of the model.
fn is_ignored_key(key: &str) -> bool {
    matches!(key, "input_resolution" | "context_length" | "vocab_size")
        || key.ends_with("attn_mask")
        || key.ends_with("num_batches_tracked")
        || key.ends_with("position_ids")
}

/// Strips `module.` prefixes, maps Hugging Face naming, drops non-weight keys, converts floats to f32.
pub fn normalize_keys(
    raw: Vec<(String, Tensor)>,
) -> Result<(BTreeMap<String, Tensor>, KeyNaming), String> {
    let mut map: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, t) in raw {
        let k = k.strip_prefix("module.").unwrap_or(&k).to_string();
        let t = if t.is_floating_point() {
            t.to_kind(Kind::Float)
        } else {
            t
        };
        map.insert(k, t);
    }
    let naming = if map
        .keys()
        .any(|k| k.starts_with("vision_model.") || k.starts_with("text_model."))
    {
        map = map_hugging_face(map)?;
        KeyNaming::HuggingFace
    } else {
        KeyNaming::OpenAi
    };
    map.retain(|k, _| !is_ignored_key(k));
    Ok((map, naming))
}

/// Maps Hugging Face `CLIPModel` keys onto OpenAI keys: fuses `q/k/v_proj` into `in_proj_*`,
/// transposes the projection matrices, renames the rest.
fn map_hugging_face(hf: BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>, String> {
    let mut out = BTreeMap::new();
    let mut qkv: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    for (k, t) in hf {
        let (tower, rest) = if let Some(r) = k.strip_prefix("vision_model.") {
            ("visual.", r)
        } else if let Some(r) = k.strip_prefix("text_model.") {
            ("", r)
        } else {
            match k.as_str() {
                "visual_projection.weight" => {
                    out.insert("visual.proj".into(), t.transpose(0, 1).contiguous());
                }
                "text_projection.weight" => {
                    out.insert("text_projection".into(), t.transpose(0, 1).contiguous());
                }
                _ => {
                    out.insert(k, t);
                }
            }
            continue;
        };
        if let Some(layer_rest) = rest.strip_prefix("encoder.layers.") {
            let (idx, sub) = layer_rest
                .split_once('.')
                .ok_or_else(|| format!("bad key {k}"))?;
            let block = format!("{tower}transformer.resblocks.{idx}");
            for (i, p) in [
                "self_attn.q_proj.",
                "self_attn.k_proj.",
                "self_attn.v_proj.",
            ]
            .iter()
            .enumerate()
            {
                if let Some(param) = sub.strip_prefix(p) {
                    let fused = if param == "weight" {
                        "in_proj_weight"
                    } else {
                        "in_proj_bias"
                    };
                    qkv.entry(format!("{block}.attn.{fused}")).or_default()[i] =
                        Some(t.shallow_clone());
                }
            }
            if sub.starts_with("self_attn.") && !sub.starts_with("self_attn.out_proj.") {
                continue;
            }
            let mapped = sub
                .replace("self_attn.out_proj.", "attn.out_proj.")
                .replace("layer_norm1.", "ln_1.")
                .replace("layer_norm2.", "ln_2.")
                .replace("mlp.fc1.", "mlp.c_fc.")
                .replace("mlp.fc2.", "mlp.c_proj.");
            out.insert(format!("{block}.{mapped}"), t);
            continue;
        }
        let mapped = match rest {
            "embeddings.class_embedding" => "class_embedding".to_string(),
            "embeddings.patch_embedding.weight" => "conv1.weight".to_string(),
            "embeddings.position_embedding.weight" => "positional_embedding".to_string(),
            "embeddings.token_embedding.weight" => "token_embedding.weight".to_string(),
            "pre_layrnorm.weight" => "ln_pre.weight".to_string(),
            "pre_layrnorm.bias" => "ln_pre.bias".to_string(),
            "post_layernorm.weight" => "ln_post.weight".to_string(),
            "post_layernorm.bias" => "ln_post.bias".to_string(),
            "final_layer_norm.weight" => "ln_final.weight".to_string(),
            "final_layer_norm.bias" => "ln_final.bias".to_string(),
            other => other.to_string(),
        };
        out.insert(format!("{tower}{mapped}"), t);
    }
    for (key, parts) in qkv {
        match parts {
            [Some(q), Some(k), Some(v)] => {
                out.insert(key, Tensor::cat(&[q, k, v], 0));
            }
            _ => {
                return Err(format!(
                    "{key}: q_proj, k_proj and v_proj must all be present"
                ))
            }
        }
    }
    Ok(out)
}

fn read_torch_save(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let f = File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| bad(path, format!("zip archive is truncated or corrupt ({e})")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad(path, "no data.pkl in archive"))?
        .to_string();
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .and_then(|mut e| e.read_to_end(&mut pkl).map_err(Into::into))
        .map_err(|e| bad(path, format!("{pkl_name}: {e}")))?;
    let value = pickle::unpickle(&pkl).map_err(|e| bad(path, format!("{pkl_name}: {e}")))?;
    let dict = match value {
        Value::Dict(items) => {
            // Training checkpoints wrap the weights: {"state_dict": {...}, "epoch": ...}.
            let wrapped = items.iter().find_map(|(k, v)| match (k, v) {
                (Value::Str(s), Value::Dict(inner)) if s == "state_dict" => Some(inner.clone()),
                _ => None,
            });
            wrapped.unwrap_or(items)
        }
        other => {
            return Err(bad(
                path,
                format!("data.pkl holds {other:?}, not a state dict"),
            ))
        }
    };
    let mut storages: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut out = Vec::new();
    for (k, v) in dict {
        let (Value::Str(key), Value::Tensor(tref)) = (k, v) else {
            continue; // non-tensor entries (metadata) are not weights
        };
        let storage = match storages.get(&tref.storage_key) {
            Some(s) => s.shallow_clone(),
            None => {
                let s = read_storage(&mut zip, &prefix, &tref)
                    .map_err(|m| bad(path, format!("{key}: {m}")))?;
                storages.insert(tref.storage_key.clone(), s.shallow_clone());
                s
            }
        };
        let needed = tref.offset
            + tref
                .size
                .iter()
                .zip(&tref.stride)
                .map(|(s, st)| (s - 1).max(0) * st)
                .sum::<i64>()
            + 1;
        if tref.size.iter().all(|&s| s > 0) && needed > tref.storage_numel {
            return Err(bad(path, format!("{key}: view exceeds its storage")));
        }
        let t = storage
            .f_as_strided(tref.size.as_slice(), tref.stride.as_slice(), tref.offset)
            .map_err(|e| bad(path, format!("{key}: {e}")))?
            .contiguous();
        out.push((key, t));
    }
    Ok(out)
}

fn read_storage(
    zip: &mut zip::ZipArchive<File>,
    prefix: &str,
    tref: &TensorRef,
) -> Result<Tensor, String> {
    let name = format!("{prefix}data/{}", tref.storage_key);
    let mut entry = zip
        .by_name(&name)
        .map_err(|e| format!("storage {name}: {e}"))?;
    let expected = tref.storage_numel as usize * tref.dtype.size();
    let mut bytes = Vec::with_capacity(expected);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| format!("storage {name}: {e}"))?;
    if bytes.len() != expected {
        return Err(format!(
            "storage {name} has {} bytes, expected {expected}",
            bytes.len()
        ));
    }
    Tensor::f_from_data_size(&bytes, &[tref.storage_numel], tref.dtype.kind())
        .map_err(|e| e.to_string())
}

/// Copies `state` into `model`'s variables, refusing any missing, unexpected or mis-shaped key.
pub fn copy_into(
    model: &mut ClipModel,
    state: &BTreeMap<String, Tensor>,
) -> Result<(), ModelError> {
    let mut vars = model.var_store().variables();
    let mut missing: Vec<&String> = vars.keys().filter(|k| !state.contains_key(*k)).collect();
    missing.sort();
    let unexpected: Vec<&String> = state.keys().filter(|k| !vars.contains_key(*k)).collect();
    let misshaped: Vec<String> = state
        .iter()
        .filter_map(|(k, t)| {
            let v = vars.get(k)?;
            (v.size() != t.size())
                .then(|| format!("{k}: file {:?} vs model {:?}", t.size(), v.size()))
        })
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !misshaped.is_empty() {
        let list = |name: &str, items: Vec<String>| -> Option<String> {
            if items.is_empty() {
                return None;
            }
            let shown: Vec<String> = items.iter().take(6).cloned().collect();
            let more = if items.len() > 6 {
                format!(", … {} more", items.len() - 6)
            } else {
                String::new()
            };
            Some(format!(
                "{name} ({}): {}{more}",
                items.len(),
                shown.join(", ")
            ))
        };
        let parts: Vec<String> = [
            list(
                "missing keys",
                missing.iter().map(|s| s.to_string()).collect(),
            ),
            list(
                "unexpected keys",
                unexpected.iter().map(|s| s.to_string()).collect(),
            ),
            list("mis-shaped keys", misshaped),
        ]
        .into_iter()
        .flatten()
        .collect();
        return Err(ModelError::Config(format!(
            "checkpoint does not match the configured {}: {}",
            model.config().describe(),
            parts.join("; ")
        )));
    }
    let _guard = tch::no_grad_guard();
    for (k, t) in state {
        let v = vars.get_mut(k).expect("checked above");
        v.f_copy_(&t.to_kind(v.kind()))?;
    }
    model.weights_changed();
    Ok(())
}

/// Where the architecture of a loaded model came from. Nothing is guessed: a file whose
/// configuration none of these gives is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "from", rename_all = "snake_case")]
pub enum ConfigSource {
    /// `--arch NAME[:TAG]` (open_clip's names).
    Arch(String),
    /// An `open_clip_config.json` (`model_cfg`), in a hub folder or beside the weights.
    OpenClipConfig(String),
    /// A Hugging Face `config.json` (`CLIPConfig`).
    HuggingFaceConfig(String),
    /// OpenAI's own file — a TorchScript archive, or one of the nine official sha256s — whose
    /// architecture OpenAI's `build_model` reads from the tensor shapes (all QuickGELU).
    OpenAi(String),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Arch(a) => write!(f, "--arch {a}"),
            ConfigSource::OpenClipConfig(p) => write!(f, "open_clip config {p}"),
            ConfigSource::HuggingFaceConfig(p) => write!(f, "Hugging Face config {p}"),
            ConfigSource::OpenAi(why) => write!(f, "OpenAI build_model ({why})"),
        }
    }
}

/// A model loaded from a file, with what was learned about the file.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The model, weights in place.
    pub model: ClipModel,
    /// File layout.
    pub format: CheckpointFormat,
    /// Key scheme of the file.
    pub naming: KeyNaming,
    /// The weights file (inside the folder, when a folder was given).
    pub weights: std::path::PathBuf,
    /// Where the architecture came from.
    pub config_source: ConfigSource,
    /// `preprocess_cfg` of an `open_clip_config.json`, when there is one.
    pub preprocess_cfg: Option<serde_json::Value>,
    /// `model_cfg.text_cfg` of that `open_clip_config.json` (or of `--arch`'s open_clip
    /// architecture): which tokenizer the text tower takes (`hf_tokenizer_name`,
    /// `tokenizer_kwargs`). `None`: OpenAI's file or a Hugging Face config (CLIP's BPE).
    pub text_cfg: Option<super::open_clip::TextCfg>,
    /// Keys of the file the model does not use, set aside (CoCa's captioning decoder,
    /// `text_decoder.*`).
    pub unused_keys: usize,
}

/// The weight files a hub snapshot folder may hold, in the order they are preferred.
pub const HUB_WEIGHT_FILES: [&str; 4] = [
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
];

/// `open_clip_config.json` files that describe `weights`: `<prefix>.open_clip_config.json`
/// (`prefix` = the file name up to its first `.`), then `open_clip_config.json` in its folder.
fn configs_beside(weights: &Path) -> Vec<std::path::PathBuf> {
    let dir = weights.parent().unwrap_or(Path::new("."));
    let name = weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = name.split('.').next().unwrap_or(&name);
    vec![
        dir.join(format!("{prefix}.open_clip_config.json")),
        dir.join("open_clip_config.json"),
    ]
}

/// An `open_clip_config.json`: its model config (typed, and as open_clip's text config) and
/// preprocessing config.
type OpenClipFile = (
    ClipConfig,
    super::open_clip::TextCfg,
    Option<serde_json::Value>,
);

fn read_open_clip_config(path: &Path) -> Result<OpenClipFile, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("line {}: {e}", e.line())))?;
    let model_cfg = v
        .get("model_cfg")
        .ok_or_else(|| bad(path, "model_cfg: missing"))?;
    let cfg: super::open_clip::ModelCfg = serde_json::from_value(model_cfg.clone())
        .map_err(|e| bad(path, format!("model_cfg: {e}")))?;
    let config = cfg
        .to_clip_config(false)
        .map_err(|e| bad(path, format!("model_cfg.{e}")))?;
    Ok((config, cfg.text_cfg, v.get("preprocess_cfg").cloned()))
}

/// A Hugging Face `CLIPConfig` (`config.json` of a `CLIPModel` folder).
pub fn read_hf_config(path: &Path) -> Result<ClipConfig, ModelError> {
    use super::config::{Activation, TextConfig, TextPool, TextProjection, VisionConfig, VitPool};
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("line {}: {e}", e.line())))?;
    let int = |tower: &str, key: &str, default: Option<i64>| -> Result<i64, ModelError> {
        v.get(tower)
            .and_then(|t| t.get(key))
            .and_then(|x| x.as_i64())
            .or(default)
            .ok_or_else(|| bad(path, format!("{tower}.{key}: missing")))
    };
    let act = |tower: &str| -> Result<Activation, ModelError> {
        let a = v
            .get(tower)
            .and_then(|t| t.get("hidden_act"))
            .and_then(|x| x.as_str())
            .unwrap_or("quick_gelu");
        match a {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => Err(bad(
                path,
                format!("{tower}.hidden_act: `{other}` is not one of quick_gelu, gelu, gelu_new"),
            )),
        }
    };
    let eps = |tower: &str| {
        v.get(tower)
            .and_then(|t| t.get("layer_norm_eps"))
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-5)
    };
    if let Some(m) = v.get("model_type").and_then(|m| m.as_str()) {
        if m != "clip" {
            return Err(bad(
                path,
                format!("model_type: `{m}`: only `clip` (CLIPModel) is read"),
            ));
        }
    }
    let vw = int("vision_config", "hidden_size", Some(768))?;
    let tw = int("text_config", "hidden_size", Some(512))?;
    let eos = int("text_config", "eos_token_id", Some(49407))?;
    let config = ClipConfig {
        embed_dim: v
            .get("projection_dim")
            .and_then(|x| x.as_i64())
            .unwrap_or(512),
        vision: VisionConfig::VisionTransformer {
            image_resolution: int("vision_config", "image_size", Some(224))?,
            patch_size: int("vision_config", "patch_size", Some(32))?,
            width: vw,
            layers: int("vision_config", "num_hidden_layers", Some(12))?,
            heads: int("vision_config", "num_attention_heads", Some(12))?,
            mlp_width: int("vision_config", "intermediate_size", Some(3072))?,
            act: act("vision_config")?,
            layer_scale: false,
            ln_pre: true,
            pool: VitPool::Tok,
            final_ln_after_pool: false,
            ln_eps: eps("vision_config"),
            attn_pool: None,
        },
        text: TextConfig {
            context_length: int("text_config", "max_position_embeddings", Some(77))?,
            vocab_size: int("text_config", "vocab_size", Some(49408))?,
            width: tw,
            heads: int("text_config", "num_attention_heads", Some(8))?,
            layers: int("text_config", "num_hidden_layers", Some(12))?,
            mlp_width: int("text_config", "intermediate_size", Some(2048))?,
            act: act("text_config")?,
            layer_scale: false,
            causal: true,
            // transformers' CLIPTextTransformer: eos_token_id 2 (old configs) means argmax.
            pool: if eos == 2 {
                TextPool::Argmax
            } else {
                TextPool::Eos(eos)
            },
            projection: TextProjection::Matrix,
            ln_eps: eps("text_config"),
            embed_cls: None,
        },
        logit_bias: false,
        custom_text: false,
        text_decoder: false,
        hf_text: None,
    };
    config.validate().map_err(|e| e.with_path(path))?;
    Ok(config)
}

/// open_clip names whose shapes match an OpenAI-style inference of `shapes` (for the refusal
/// message of a bare state dict).
fn matching_names(shapes: &BTreeMap<String, Vec<i64>>) -> Vec<String> {
    let Ok(inferred) = ClipConfig::openai_from_shapes(shapes) else {
        return Vec::new();
    };
    let size = |c: &ClipConfig| {
        let mut c = c.clone();
        c.text.act = super::config::Activation::QuickGelu;
        if let super::config::VisionConfig::VisionTransformer { act, .. } = &mut c.vision {
            *act = super::config::Activation::QuickGelu;
        }
        c
    };
    super::open_clip::zoo()
        .models
        .iter()
        .filter_map(|(name, cfg)| {
            let c = cfg.to_clip_config(false).ok()?;
            (size(&c) == inferred).then(|| name.clone())
        })
        .collect()
}

/// Reads `path` — a weights file, or a hub snapshot / Hugging Face folder — resolves its
/// architecture (`arch` from `--arch`, else the folder's or a neighbouring config, else
/// OpenAI's own files) and returns the loaded model on `device`. A file whose configuration
/// cannot be known is refused with one line saying to pass `--arch`.
pub fn load_checkpoint(
    path: &Path,
    arch: Option<&str>,
    device: Device,
) -> Result<LoadedCheckpoint, ModelError> {
    let weights = if path.is_dir() {
        HUB_WEIGHT_FILES
            .iter()
            .map(|f| path.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "folder holds no weights (looked for {})",
                        HUB_WEIGHT_FILES.join(", ")
                    ),
                )
            })?
    } else {
        path.to_path_buf()
    };
    let sd = read_state_dict(&weights)?;
    let mut preprocess_cfg = None;
    let mut text_cfg = None;
    let (config, config_source) = if let Some(a) = arch {
        let name = a.split_once(':').map_or(a, |(n, _)| n);
        text_cfg = super::open_clip::zoo()
            .model(name)
            .map(|m| m.text_cfg.clone());
        (
            ClipConfig::from_arch(a).map_err(|e| bad(&weights, format!("--arch {e}")))?,
            ConfigSource::Arch(a.to_string()),
        )
    } else if let Some(cfg_path) = configs_beside(&weights).into_iter().find(|p| p.is_file()) {
        let (c, text, pre) = read_open_clip_config(&cfg_path)?;
        preprocess_cfg = pre;
        text_cfg = Some(text);
        (
            c,
            ConfigSource::OpenClipConfig(cfg_path.display().to_string()),
        )
    } else if let Some(hf) = Some(weights.with_file_name("config.json"))
        .filter(|p| p.is_file() && sd.naming == KeyNaming::HuggingFace)
    {
        (
            read_hf_config(&hf)?,
            ConfigSource::HuggingFaceConfig(hf.display().to_string()),
        )
    } else {
        let shapes: BTreeMap<String, Vec<i64>> = sd
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.size()))
            .collect();
        let why = if sd.format == CheckpointFormat::TorchScript {
            Some("a TorchScript archive, as OpenAI ships".to_string())
        } else {
            let sha =
                sha256_file(&weights).map_err(|e| bad(&weights, format!("cannot read: {e}")))?;
            crate::registry::KNOWN_CHECKPOINTS
                .iter()
                .find(|k| k.sha256 == sha)
                .map(|k| format!("the official {} file", k.openai_name))
        };
        match why {
            Some(why) => (
                ClipConfig::openai_from_shapes(&shapes).map_err(|e| e.with_path(&weights))?,
                ConfigSource::OpenAi(why),
            ),
            None => {
                let names = matching_names(&shapes);
                let hint = if names.is_empty() {
                    String::new()
                } else {
                    format!(" (open_clip names with these shapes: {})", names.join(", "))
                };
                return Err(bad(
                    &weights,
                    format!(
                        "a bare state dict says nothing of its activation (GELU or QuickGELU) \
                         or other options: pass --arch NAME[:TAG]{hint}, or put its \
                         open_clip_config.json beside it"
                    ),
                ));
            }
        }
    };
    let mut tensors = sd.tensors;
    if config.custom_text && tensors.contains_key("positional_embedding") {
        tensors = to_custom_text_keys(tensors);
    }
    let mut unused_keys = 0;
    if config.text_decoder {
        let before = tensors.len();
        tensors.retain(|k, _| !k.starts_with("text_decoder."));
        unused_keys = before - tensors.len();
    }
    let mut model = ClipModel::new(&config, device).map_err(|e| e.with_path(&weights))?;
    copy_into(&mut model, &tensors).map_err(|e| e.with_path(&weights))?;
    Ok(LoadedCheckpoint {
        model,
        format: sd.format,
        naming: sd.naming,
        weights,
        config_source,
        preprocess_cfg,
        text_cfg,
        unused_keys,
    })
}

/// open_clip's `convert_to_custom_text_state_dict`: a state dict saved with the text tower at
/// the top level, moved under `text.` for a `CustomTextCLIP` / CoCa model.
fn to_custom_text_keys(tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    const TEXT: [&str; 5] = [
        "text_projection",
        "positional_embedding",
        "token_embedding",
        "transformer",
        "ln_final",
    ];
    tensors
        .into_iter()
        .map(|(k, t)| {
            if TEXT.iter().any(|p| k.starts_with(p)) {
                (format!("text.{k}"), t)
            } else {
                (k, t)
            }
        })
        .collect()
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
