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
    /// Model name: `ViT-B-32`, `ViT-B/32`, `RN50`, … (see `typoclip models`).
    pub name: String,
    /// Cache folder (default `$XDG_CACHE_HOME/typoclip`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Download from this URL (a mirror) instead of OpenAI's; the official sha256 is still
    /// required.
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
    /// With --force: the model name to import a non-official file under.
    #[arg(long, requires = "force")]
    pub name: Option<String>,
    /// Import a file whose sha256 is not an official one (needs --name).
    #[arg(long, requires = "name")]
    pub force: bool,
}

#[derive(Serialize)]
struct ModelsReport {
    cache_dir: PathBuf,
    models: Vec<ModelStatus>,
}

/// Lists the known checkpoints and their cache state.
pub fn run_models(args: ModelsArgs) -> Result<()> {
    let dir = registry::cache_dir(args.cache_dir.as_deref());
    let models = registry::list(&dir);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let doc = ModelsReport {
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
    Ok(())
}

/// Downloads one checkpoint into the cache.
pub fn run_fetch(args: FetchArgs) -> Result<()> {
    let Some(k) = registry::find(&args.name) else {
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
