//! open_clip's pretrained tags on the Hugging Face hub: `typoclip fetch ARCH:TAG` downloads a
//! tag's snapshot — `open_clip_config.json`, the weights (`open_clip_model.safetensors`, else
//! `open_clip_pytorch_model.bin`) and, for models with a Hugging Face tokenizer, its tokenizer
//! files — into `<cache>/hub/ARCH/TAG/`, the folder `--model ARCH:TAG` resolves to.
//!
//! Every file streams into `<file>.part` with its sha256 computed on the way; a large (LFS) file
//! is checked against the sha256 the hub states for it (`X-Linked-Etag`, else `ETag`, on the
//! response to `resolve/main/FILE`; small files carry a git blob id there instead, which is not
//! a sha256, and are taken as sent). The snapshot is assembled in `TAG.partial/` and renamed to
//! `TAG/` only when every file is in, so the cache never holds half a snapshot.

use std::path::{Path, PathBuf};

use crate::model::open_clip::zoo;
use crate::registry::{http_get, io_err, save_response, FetchError, FetchOptions};

/// The hub's address (`HF_ENDPOINT` overrides it, as for Hugging Face's own tools).
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into())
}

/// Tokenizer files fetched for models whose text config names a Hugging Face tokenizer.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

/// Where `ARCH:TAG` lives in the cache.
pub fn snapshot_dir(cache_dir: &Path, arch: &str, tag: &str) -> PathBuf {
    cache_dir.join("hub").join(arch).join(tag)
}

/// The sha256 a hub response states for its file: `X-Linked-Etag` (LFS files behind a
/// redirect), else `ETag`, when it is 64 hex digits.
pub fn stated_sha256(response: &ureq::Response) -> Option<String> {
    let raw = response
        .header("X-Linked-Etag")
        .or_else(|| response.header("ETag"))?;
    let v = raw.trim().trim_start_matches("W/").trim_matches('"');
    (v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
}

/// Downloads `file` of hub repository `repo` into `dest`; `Ok(None)` when the hub has no such
/// file (404) and `optional`.
fn fetch_file(
    base: &str,
    repo: &str,
    file: &str,
    dest: &Path,
    opts: &FetchOptions,
    optional: bool,
) -> Result<Option<PathBuf>, FetchError> {
    let url = format!("{base}/{repo}/resolve/main/{file}");
    let name = format!("{repo}/{file}");
    let first = match http_get(&name, &url, opts, false) {
        Ok(r) => r,
        Err(FetchError::Http { status: 404, .. }) if optional => return Ok(None),
        Err(e) => return Err(e),
    };
    let expected = stated_sha256(&first);
    let (response, at) = if (300..400).contains(&first.status()) {
        let location = first
            .header("Location")
            .ok_or_else(|| FetchError::Request {
                name: name.clone(),
                url: url.clone(),
                detail: format!("HTTP {} without a Location", first.status()),
            })?;
        let next = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{}", origin(&url), location)
        };
        (http_get(&name, &next, opts, true)?, next)
    } else {
        (first, url)
    };
    save_response(
        &name,
        &at,
        response,
        expected.as_deref(),
        dest,
        opts.progress,
    )
    .map(Some)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// Downloads the snapshot of `ARCH:TAG` into the cache (see the module doc) and returns its
/// folder; one already there is kept.
pub fn fetch_tag(
    arch: &str,
    tag: &str,
    cache_dir: &Path,
    base: &str,
    opts: &FetchOptions,
) -> Result<PathBuf, FetchError> {
    let zoo = zoo();
    let unknown = || FetchError::UnknownModel(format!("{arch}:{tag}"));
    let p = zoo.pretrained(arch, tag).ok_or_else(unknown)?;
    let repo = p
        .hf_hub
        .as_deref()
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| FetchError::Request {
            name: format!("{arch}:{tag}"),
            url: p.url.clone().unwrap_or_default(),
            detail: "open_clip names no hub repository for this tag".into(),
        })?;
    let dest = snapshot_dir(cache_dir, arch, tag);
    if dest.join("open_clip_config.json").is_file() {
        return Ok(dest);
    }
    let partial = dest.with_file_name(format!("{tag}.partial"));
    std::fs::create_dir_all(&partial)
        .map_err(io_err("cannot create the cache folder", &partial))?;
    let result = (|| {
        fetch_file(
            base,
            repo,
            "open_clip_config.json",
            &partial.join("open_clip_config.json"),
            opts,
            false,
        )?;
        let mut got_weights = false;
        for w in ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"] {
            if fetch_file(base, repo, w, &partial.join(w), opts, true)?.is_some() {
                got_weights = true;
                break;
            }
        }
        if !got_weights {
            return Err(FetchError::Http {
                name: format!("{arch}:{tag}"),
                url: format!("{base}/{repo}/resolve/main/open_clip_model.safetensors"),
                status: 404,
                reason: "no open_clip weights in the repository".into(),
            });
        }
        let cfg = zoo.model(arch).expect("every pair has a config");
        if let Some(tok) = cfg.text_cfg.hf_tokenizer_name.as_deref() {
            for f in TOKENIZER_FILES {
                fetch_file(base, tok, f, &partial.join(f), opts, true)?;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            std::fs::rename(&partial, &dest).map_err(io_err("cannot rename into place", &dest))?;
            Ok(dest)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

/// Copies a snapshot folder downloaded by hand (it must hold `open_clip_config.json` and open_clip
/// weights) into the cache as `ARCH:TAG`.
pub fn import_tag(
    src: &Path,
    arch: &str,
    tag: &str,
    cache_dir: &Path,
) -> Result<PathBuf, FetchError> {
    if zoo().pretrained(arch, tag).is_none() {
        return Err(FetchError::UnknownModel(format!("{arch}:{tag}")));
    }
    let has = |f: &str| src.join(f).is_file();
    if !has("open_clip_config.json")
        || !(has("open_clip_model.safetensors") || has("open_clip_pytorch_model.bin"))
    {
        return Err(FetchError::Io {
            what: "not an open_clip snapshot (needs open_clip_config.json and open_clip weights)",
            path: src.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let dest = snapshot_dir(cache_dir, arch, tag);
    let partial = dest.with_file_name(format!("{tag}.partial"));
    std::fs::create_dir_all(&partial)
        .map_err(io_err("cannot create the cache folder", &partial))?;
    for e in std::fs::read_dir(src).map_err(io_err("cannot list", src))? {
        let e = e.map_err(io_err("cannot list", src))?;
        if e.path().is_file() {
            std::fs::copy(e.path(), partial.join(e.file_name()))
                .map_err(io_err("cannot copy", &e.path()))?;
        }
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io_err("cannot replace", &dest))?;
    }
    std::fs::rename(&partial, &dest).map_err(io_err("cannot rename into place", &dest))?;
    Ok(dest)
}
