//! `typoclip models`, `typoclip fetch` and `typoclip import`: the known OpenAI checkpoints and
//! the local cache (see [`crate::registry`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::registry::{self, ModelStatus};

/// `typoclip models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// Cache folder (default `$XDG_CACHE_HOME/typoclip`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `typoclip fetch`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Model name: `ViT-B-32`, `ViT-B/32`, `RN50`, … (OpenAI's files), or an open_clip
    /// `ARCH:TAG` (its hub snapshot; see `typoclip models`).
    pub name: String,
    /// Cache folder (default `$XDG_CACHE_HOME/typoclip`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Download from this URL (a mirror) instead of OpenAI's; the official sha256 is still
    /// required. For `ARCH:TAG`: the hub's address (default `HF_ENDPOINT` or huggingface.co).
    #[arg(long)]
    pub url: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `typoclip import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A checkpoint file downloaded by hand.
    pub path: PathBuf,
    /// Cache folder (default `$XDG_CACHE_HOME/typoclip`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// With --force: the model name to import a non-official file under; for a snapshot
    /// folder: its `ARCH:TAG`.
    #[arg(long)]
    pub name: Option<String>,
    /// Import a file whose sha256 is not an official one (needs --name).
    #[arg(long, requires = "name")]
    pub force: bool,
}

#[derive(Serialize)]
struct ModelsReport {
    cache_dir: PathBuf,
    models: Vec<ModelStatus>,
    open_clip: Vec<PretrainedStatus>,
}

/// One of open_clip's pretrained pairs, as `typoclip models` lists it.
#[derive(Debug, Serialize)]
struct PretrainedStatus {
    /// `ARCH:TAG`, as `--model` takes it.
    name: String,
    /// Tower family (`ViT`, `ModifiedResNet`, or the tower typoclip does not build yet).
    family: String,
    /// Input side in pixels.
    image_size: Option<i64>,
    /// QuickGELU (the tag's or the architecture's).
    quick_gelu: bool,
    /// Scoring: `softmax`, or `sigmoid` for models with a logit bias.
    scoring: &'static str,
    /// Hugging Face hub repository of the weights.
    hf_hub: Option<String>,
    /// typoclip builds this model (else: why not).
    supported: Result<(), String>,
    /// The hub folder in the cache (`hub/ARCH/TAG/`), or OpenAI's file, exists.
    cached: bool,
}

fn pretrained_status(dir: &std::path::Path) -> Vec<PretrainedStatus> {
    use crate::model::open_clip::{zoo, IntOrList};
    let zoo = zoo();
    zoo.pretrained
        .iter()
        .map(|p| {
            let cfg = zoo.model(&p.arch).expect("every pair has a config");
            let v = &cfg.vision_cfg;
            let family = if let Some(t) = &v.timm_model_name {
                format!("timm {t}")
            } else if let Some(h) = &cfg.text_cfg.hf_model_name {
                format!("HF text {h}")
            } else if matches!(v.layers, IntOrList::Many(_)) {
                "ModifiedResNet".into()
            } else if v.attentional_pool {
                "CoCa".into()
            } else {
                "ViT".into()
            };
            let supported = crate::model::ClipConfig::for_tag(&p.arch, &p.tag)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let cached = if p.tag == "openai" {
                registry::find(p.arch.trim_end_matches("-quickgelu"))
                    .is_some_and(|k| dir.join(k.file_name).is_file())
            } else {
                dir.join("hub").join(&p.arch).join(&p.tag).is_dir()
            };
            PretrainedStatus {
                name: format!("{}:{}", p.arch, p.tag),
                family,
                image_size: match &v.image_size {
                    IntOrList::One(s) => Some(*s),
                    IntOrList::Many(hw) => hw.first().copied(),
                },
                quick_gelu: p.quick_gelu || cfg.quick_gelu,
                scoring: if cfg.init_logit_bias.is_some() {
                    "sigmoid"
                } else {
                    "softmax"
                },
                hf_hub: p.hf_hub.clone().filter(|h| !h.is_empty()),
                supported,
                cached,
            }
        })
        .collect()
}

/// Lists the known checkpoints and their cache state.
pub fn run_models(args: ModelsArgs) -> Result<()> {
    let dir = registry::cache_dir(args.cache_dir.as_deref());
    let models = registry::list(&dir);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let doc = ModelsReport {
            open_clip: pretrained_status(&dir),
            cache_dir: dir,
            models,
        };
        writeln!(out, "{}", serde_json::to_string(&doc)?)?;
        return Ok(());
    }
    writeln!(out, "# cache: {}", dir.display())?;
    writeln!(
        out,
        "{:<14} {:<16} {:>6}  {:<6} path",
        "name", "openai name", "input", "cached"
    )?;
    for m in models {
        writeln!(
            out,
            "{:<14} {:<16} {:>6}  {:<6} {}",
            m.name,
            m.openai_name,
            m.image_resolution,
            if m.cached { "yes" } else { "no" },
            m.path.display()
        )?;
    }
    let pairs = pretrained_status(&dir);
    let built = pairs.iter().filter(|p| p.supported.is_ok()).count();
    writeln!(
        out,
        "\n# open_clip's pretrained models ({} pairs; typoclip builds {built}; {})",
        pairs.len(),
        crate::model::open_clip::zoo().source
    )?;
    writeln!(
        out,
        "{:<52} {:<34} {:>5}  {:<9} {:<7} {:<6} {:<6}",
        "ARCH:TAG", "family", "input", "quickgelu", "scoring", "built", "cached"
    )?;
    for p in pairs {
        writeln!(
            out,
            "{:<52} {:<34} {:>5}  {:<9} {:<7} {:<6} {:<6}",
            p.name,
            p.family,
            p.image_size.map(|s| s.to_string()).unwrap_or_default(),
            if p.quick_gelu { "yes" } else { "no" },
            p.scoring,
            if p.supported.is_ok() { "yes" } else { "no" },
            if p.cached { "yes" } else { "no" }
        )?;
    }
    Ok(())
}

/// Downloads one checkpoint into the cache.
pub fn run_fetch(args: FetchArgs) -> Result<()> {
    if let Some((arch, tag)) = args.name.split_once(':').filter(|(_, t)| *t != "openai") {
        let dir = registry::cache_dir(args.cache_dir.as_deref());
        let opts = registry::FetchOptions {
            progress: !args.quiet,
            ..registry::FetchOptions::default()
        };
        let base = args.url.clone().unwrap_or_else(crate::hub::endpoint);
        let path = crate::hub::fetch_tag(arch, tag, &dir, base.trim_end_matches('/'), &opts)
            .map_err(|e| match e {
                registry::FetchError::Unreachable { host, detail, .. } => anyhow::anyhow!(
                    "fetch {arch}:{tag}: cannot reach {host} ({detail}): no network? Download \
                     the tag's hub snapshot elsewhere and run 'typoclip import DIR --name {arch}:{tag}'"
                ),
                other => other.into(),
            })?;
        println!("{arch}:{tag}: fetched to {}", path.display());
        return Ok(());
    }
    let name = args.name.trim_end_matches(":openai");
    let Some(k) = registry::find(name) else {
        return Err(registry::FetchError::UnknownModel(args.name).into());
    };
    let dir = registry::cache_dir(args.cache_dir.as_deref());
    let dest = dir.join(k.file_name);
    if dest.is_file() && crate::model::load::sha256_file(&dest).is_ok_and(|h| h == k.sha256) {
        println!(
            "{}: already in the cache: {} (sha256 verified)",
            k.name,
            dest.display()
        );
        return Ok(());
    }
    let path = registry::fetch(k.name, &dir, args.url.as_deref(), !args.quiet)?;
    println!(
        "{}: fetched to {} (sha256 {} verified)",
        k.name,
        path.display(),
        k.sha256
    );
    Ok(())
}

/// Copies a checkpoint file into the cache after checking its sha256.
pub fn run_import(args: ImportArgs) -> Result<()> {
    let dir = registry::cache_dir(args.cache_dir.as_deref());
    if args.path.is_dir() {
        let Some((arch, tag)) = args.name.as_deref().and_then(|n| n.split_once(':')) else {
            bail!(
                "import {}: a snapshot folder needs --name ARCH:TAG",
                args.path.display()
            );
        };
        let path = crate::hub::import_tag(&args.path, arch, tag, &dir)?;
        println!(
            "{}: imported as {arch}:{tag}: {}",
            args.path.display(),
            path.display()
        );
        return Ok(());
    }
    match (&args.name, args.force) {
        (Some(name), true) => {
            let (path, sha) = registry::import_forced(&args.path, name, &dir)?;
            println!(
                "{}: imported as {name} (not an official checkpoint; sha256 {sha}): {}",
                args.path.display(),
                path.display()
            );
        }
        (None, false) => {
            let (name, path) = registry::import(&args.path, &dir)?;
            println!(
                "{}: official {name} checkpoint, imported to {}",
                args.path.display(),
                path.display()
            );
        }
        _ => bail!("import: --name and --force go together"),
    }
    Ok(())
}
