//! The OpenAI CLIP checkpoints typoclip knows: their official download URLs and sha256, the
//! local cache (`$XDG_CACHE_HOME/typoclip` or `--cache-dir`), downloading into it and importing
//! files placed by hand.
//!
//! Every write into the cache goes to `<file>.part` first, is checked against the expected
//! sha256 (computed while the bytes stream by), synced to disk and then renamed into place, so
//! the cache never holds a partial or unverified file under a checkpoint's name. Any failure
//! (wrong checksum, cut connection, timeout) deletes the partial file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressStyle;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::config::canonical_arch_name;

/// One official OpenAI CLIP checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownCheckpoint {
    /// open_clip architecture name (`ViT-B-32`), as in [`crate::model::config::KNOWN_ARCHITECTURES`].
    pub name: &'static str,
    /// OpenAI's own name (`ViT-B/32`).
    pub openai_name: &'static str,
    /// File name, in the cache and at the end of the URL (`ViT-B-32.pt`).
    pub file_name: &'static str,
    /// Public download URL; its path embeds the file's sha256.
    pub url: &'static str,
    /// Hex sha256 of the file.
    pub sha256: &'static str,
    /// Input side in pixels.
    pub image_resolution: i64,
}

macro_rules! checkpoint {
    ($name:literal, $openai:literal, $file:literal, $sha:literal, $res:literal) => {
        KnownCheckpoint {
            name: $name,
            openai_name: $openai,
            file_name: $file,
            url: concat!(
                "https://openaipublic.azureedge.net/clip/models/",
                $sha,
                "/",
                $file
            ),
            sha256: $sha,
            image_resolution: $res,
        }
    };
}

/// The official OpenAI checkpoints (URLs and hashes as in open_clip's `pretrained.py`).
pub const KNOWN_CHECKPOINTS: [KnownCheckpoint; 9] = [
    checkpoint!(
        "RN50",
        "RN50",
        "RN50.pt",
        "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        224
    ),
    checkpoint!(
        "RN101",
        "RN101",
        "RN101.pt",
        "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
        224
    ),
    checkpoint!(
        "RN50x4",
        "RN50x4",
        "RN50x4.pt",
        "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
        288
    ),
    checkpoint!(
        "RN50x16",
        "RN50x16",
        "RN50x16.pt",
        "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
        384
    ),
    checkpoint!(
        "RN50x64",
        "RN50x64",
        "RN50x64.pt",
        "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
        448
    ),
    checkpoint!(
        "ViT-B-32",
        "ViT-B/32",
        "ViT-B-32.pt",
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        224
    ),
    checkpoint!(
        "ViT-B-16",
        "ViT-B/16",
        "ViT-B-16.pt",
        "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        224
    ),
    checkpoint!(
        "ViT-L-14",
        "ViT-L/14",
        "ViT-L-14.pt",
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        224
    ),
    checkpoint!(
        "ViT-L-14-336",
        "ViT-L/14@336px",
        "ViT-L-14-336px.pt",
        "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
        336
    ),
];

/// The known checkpoint for any spelling of its name (`ViT-B-32`, `ViT-B/32`, `vit-b-32`).
pub fn find(name_or_arch: &str) -> Option<&'static KnownCheckpoint> {
    let arch = canonical_arch_name(name_or_arch)?;
    KNOWN_CHECKPOINTS.iter().find(|k| k.name == arch)
}

/// The known checkpoint whose file has this sha256 (hex, any case).
pub fn find_by_sha256(sha256: &str) -> Option<&'static KnownCheckpoint> {
    KNOWN_CHECKPOINTS
        .iter()
        .find(|k| k.sha256.eq_ignore_ascii_case(sha256))
}

/// The cache folder: `--cache-dir`, else `$XDG_CACHE_HOME/typoclip`, else `~/.cache/typoclip`.
pub fn cache_dir(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("typoclip");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("typoclip")
}

/// The file name a known checkpoint has in the cache (OpenAI's own file names); `<arch>.pt`
/// for a name not in the table.
pub fn cached_file_name(arch: &str) -> String {
    match find(arch) {
        Some(k) => k.file_name.to_string(),
        None => format!("{arch}.pt"),
    }
}

/// What `typoclip models` shows for one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// open_clip name (`ViT-B-32`), what `--model` and `fetch` take.
    pub name: String,
    /// OpenAI's name (`ViT-B/32`).
    pub openai_name: String,
    /// Input side in pixels.
    pub image_resolution: i64,
    /// True when the file is in the cache (its hash is not checked here).
    pub cached: bool,
    /// Where the file is, or would be, in the cache.
    pub path: PathBuf,
    /// Size of the cached file in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Official download URL.
    pub url: String,
    /// Expected sha256.
    pub sha256: String,
}

/// Every known checkpoint with whether it is in `cache_dir`, in table order.
pub fn list(cache_dir: &Path) -> Vec<ModelStatus> {
    KNOWN_CHECKPOINTS
        .iter()
        .map(|k| {
            let path = cache_dir.join(k.file_name);
            let size = std::fs::metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            ModelStatus {
                name: k.name.into(),
                openai_name: k.openai_name.into(),
                image_resolution: k.image_resolution,
                cached: size.is_some(),
                path,
                size_bytes: size,
                url: k.url.into(),
                sha256: k.sha256.into(),
            }
        })
        .collect()
}

/// Why a fetch or import failed. Each message is one line naming the model or file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The name is not one of [`KNOWN_CHECKPOINTS`].
    #[error("{}: not a known OpenAI checkpoint (known: {})", .0, known_names())]
    UnknownModel(String),
    /// The server could not be reached (no network, DNS, refused, connect timeout).
    #[error(
        "fetch {name}: cannot reach {host} ({detail}): no network? \
         Download {url} elsewhere and run 'typoclip import FILE'"
    )]
    Unreachable {
        /// The model being fetched.
        name: String,
        /// Host (and port) of the URL.
        host: String,
        /// The underlying error.
        detail: String,
        /// The URL that was tried.
        url: String,
    },
    /// The server answered with an HTTP error status.
    #[error("fetch {name}: {url} answered HTTP {status} {reason}")]
    Http {
        /// The model being fetched.
        name: String,
        /// The URL.
        url: String,
        /// Status code.
        status: u16,
        /// Status text.
        reason: String,
    },
    /// Any other request failure before the body started.
    #[error("fetch {name}: request to {url} failed: {detail}")]
    Request {
        /// The model being fetched.
        name: String,
        /// The URL.
        url: String,
        /// The underlying error.
        detail: String,
    },
    /// The body stopped early (cut connection, timeout, fewer bytes than Content-Length).
    #[error(
        "fetch {name}: download from {url} broke off after {received} of {expected} bytes \
         ({detail}); partial file deleted, run the fetch again"
    )]
    Incomplete {
        /// The model being fetched.
        name: String,
        /// The URL.
        url: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced (`?` when the server sent no Content-Length).
        expected: String,
        /// What stopped it.
        detail: String,
    },
    /// The bytes do not have the expected sha256.
    #[error(
        "{what}: sha256 mismatch: expected {expected}, got {got}; {} deleted",
        partial.display()
    )]
    ChecksumMismatch {
        /// `fetch NAME` or `import FILE`.
        what: String,
        /// Expected hex sha256.
        expected: String,
        /// Hex sha256 of the bytes received.
        got: String,
        /// The partial file that was deleted.
        partial: PathBuf,
    },
    /// An imported file is not one of the official checkpoints.
    #[error(
        "import {}: sha256 {sha256} is not that of an official OpenAI CLIP checkpoint \
         ({}); to import it anyway give --name NAME --force",
        path.display(),
        known_names()
    )]
    NotOfficial {
        /// The file.
        path: PathBuf,
        /// Its sha256.
        sha256: String,
    },
    /// A file-system error.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// What was being done (`cannot write`, `cannot read`, …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A forced import of something that is not a checkpoint at all.
    #[error("import: {0}")]
    NotACheckpoint(String),
}

fn known_names() -> String {
    KNOWN_CHECKPOINTS
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io { what, path, source }
}

/// Timeouts and display of a download.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Show a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Limit on opening the connection.
    pub connect_timeout: Duration,
    /// Limit on each read (a stalled transfer fails after this long without bytes).
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            progress: true,
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Downloads a known checkpoint into `cache_dir` and returns its path. `url_override` is a
/// mirror to use instead of the official URL (the official sha256 is still required). A file
/// already in the cache with the right sha256 is kept without downloading; one with a wrong
/// sha256 is replaced.
pub fn fetch(
    name_or_arch: &str,
    cache_dir: &Path,
    url_override: Option<&str>,
    progress: bool,
) -> Result<PathBuf, FetchError> {
    let k = find(name_or_arch).ok_or_else(|| FetchError::UnknownModel(name_or_arch.into()))?;
    let dest = cache_dir.join(k.file_name);
    if dest.is_file() {
        let got = crate::model::load::sha256_file(&dest).map_err(io_err("cannot read", &dest))?;
        if got == k.sha256 {
            return Ok(dest);
        }
    }
    fetch_url_with(
        k.name,
        url_override.unwrap_or(k.url),
        k.sha256,
        &dest,
        &FetchOptions {
            progress,
            ..FetchOptions::default()
        },
    )
}

/// The download path of [`fetch`] with default timeouts: streams `url` into `<dest>.part`,
/// checks its sha256 against `expected_sha256`, syncs and renames it to `dest`. `name` only
/// labels messages.
pub fn fetch_url(
    name: &str,
    url: &str,
    expected_sha256: &str,
    dest: &Path,
    progress: bool,
) -> Result<PathBuf, FetchError> {
    fetch_url_with(
        name,
        url,
        expected_sha256,
        dest,
        &FetchOptions {
            progress,
            ..FetchOptions::default()
        },
    )
}

/// [`fetch_url`] with explicit [`FetchOptions`]; on any failure nothing is left at `dest` or
/// `<dest>.part` (a previous file at `dest` is only replaced by a verified one).
pub fn fetch_url_with(
    name: &str,
    url: &str,
    expected_sha256: &str,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, FetchError> {
    let response = http_get(name, url, opts, true)?;
    save_response(
        name,
        url,
        response,
        Some(expected_sha256),
        dest,
        opts.progress,
    )
}

/// GET `url` (following redirects or not) with `opts`' timeouts; an HTTP error status or a
/// transport failure becomes the matching one-line [`FetchError`] naming `name`.
pub fn http_get(
    name: &str,
    url: &str,
    opts: &FetchOptions,
    follow_redirects: bool,
) -> Result<ureq::Response, FetchError> {
    let host = host_of(url);
    let loopback = is_loopback(&host);
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(opts.connect_timeout)
        .timeout_read(opts.read_timeout)
        .user_agent(concat!("typoclip/", env!("CARGO_PKG_VERSION")))
        .try_proxy_from_env(!loopback)
        .redirects(if follow_redirects { 5 } else { 0 })
        .build();
    match agent.get(url).call() {
        Ok(r) => Ok(r),
        Err(ureq::Error::Status(status, r)) => Err(FetchError::Http {
            name: name.into(),
            url: url.into(),
            status,
            reason: r.status_text().to_string(),
        }),
        Err(ureq::Error::Transport(t)) => {
            let detail = transport_detail(&t);
            Err(match t.kind() {
                ureq::ErrorKind::Dns
                | ureq::ErrorKind::ConnectionFailed
                | ureq::ErrorKind::ProxyConnect
                | ureq::ErrorKind::Io => FetchError::Unreachable {
                    name: name.into(),
                    host,
                    detail,
                    url: url.into(),
                },
                _ => FetchError::Request {
                    name: name.into(),
                    url: url.into(),
                    detail,
                },
            })
        }
    }
}

/// Streams `response` (of `url`) into `<dest>.part`, hashing as it goes, checks the sha256
/// against `expected_sha256` when there is one, syncs and renames it to `dest`; on any failure
/// nothing is left at `<dest>.part` and a previous file at `dest` stays.
pub fn save_response(
    name: &str,
    url: &str,
    response: ureq::Response,
    expected_sha256: Option<&str>,
    dest: &Path,
    progress: bool,
) -> Result<PathBuf, FetchError> {
    let content_length: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create the cache folder", dir))?;
    }
    let part = part_path(dest);
    let result = stream_to_part(name, url, response, content_length, &part, progress)
        .and_then(|got| match expected_sha256 {
            Some(expected) if !got.eq_ignore_ascii_case(expected) => {
                Err(FetchError::ChecksumMismatch {
                    what: format!("fetch {name}"),
                    expected: expected.to_ascii_lowercase(),
                    got,
                    partial: part.clone(),
                })
            }
            _ => Ok(()),
        })
        .and_then(|()| commit(&part, dest));
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result.map(|()| dest.to_path_buf())
}

/// `<dest>.part`.
fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

/// Writes the body into `part`, hashing as it goes; returns the hex sha256. Fails when the
/// body ends before Content-Length bytes or a read fails.
fn stream_to_part(
    name: &str,
    url: &str,
    response: ureq::Response,
    content_length: Option<u64>,
    part: &Path,
    progress: bool,
) -> Result<String, FetchError> {
    let mut file = File::create(part).map_err(io_err("cannot write", part))?;
    let pb = crate::progress::bar(content_length.unwrap_or(0), progress);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{} {{bar:40}} {{bytes}}/{{total_bytes}} [{{elapsed_precise}}<{{eta_precise}}, {{bytes_per_sec}}]",
            name.replace('{', "{{").replace('}', "}}")
        ))
        .expect("valid template"),
    );
    let mut reader = response.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    let incomplete = |received: u64, detail: String| FetchError::Incomplete {
        name: name.into(),
        url: url.into(),
        received,
        expected: content_length
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into()),
        detail,
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                pb.abandon();
                return Err(incomplete(received, read_error_detail(&e)));
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(io_err("cannot write", part))?;
        received += n as u64;
        pb.set_position(received);
    }
    pb.finish_and_clear();
    if let Some(len) = content_length {
        if received != len {
            return Err(incomplete(
                received,
                "connection closed before the end of the file".into(),
            ));
        }
    }
    file.sync_all().map_err(io_err("cannot sync", part))?;
    Ok(hex::encode(hasher.finalize()))
}

fn read_error_detail(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "read timed out".into(),
        io::ErrorKind::UnexpectedEof => "connection closed before the end of the file".into(),
        _ => e.to_string(),
    }
}

/// Renames a verified `part` to `dest` and syncs the folder.
fn commit(part: &Path, dest: &Path) -> Result<(), FetchError> {
    std::fs::rename(part, dest).map_err(io_err("cannot rename into place", dest))?;
    if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn transport_detail(t: &ureq::Transport) -> String {
    let mut s = match t.message() {
        Some(m) => format!("{}: {m}", t.kind()),
        None => t.kind().to_string(),
    };
    if let Some(src) = std::error::Error::source(t) {
        s.push_str(&format!(": {src}"));
    }
    s.replace('\n', " ")
}

/// `host[:port]` of a URL, or the URL itself when it has no recognisable host.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.is_empty() {
        url.to_string()
    } else {
        authority.to_string()
    }
}

fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Copies `src` to `tmp` while hashing; returns the hex sha256.
fn copy_hashing(src: &Path, tmp: &Path) -> Result<String, FetchError> {
    let mut input = File::open(src).map_err(io_err("cannot open", src))?;
    let mut out = File::create(tmp).map_err(io_err("cannot write", tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("cannot read", src)(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io_err("cannot write", tmp))?;
    }
    out.sync_all().map_err(io_err("cannot sync", tmp))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Copies an official checkpoint placed by hand into the cache under its file name, found
/// from its sha256. Returns the model name and the cached path. A file whose sha256 is not
/// in [`KNOWN_CHECKPOINTS`] is refused and nothing is left in the cache.
pub fn import(path: &Path, cache_dir: &Path) -> Result<(&'static str, PathBuf), FetchError> {
    if !path.is_file() {
        return Err(io_err("cannot open", path)(io::Error::new(
            io::ErrorKind::NotFound,
            "no such file",
        )));
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(io_err("cannot create the cache folder", cache_dir))?;
    let tmp = cache_dir.join(format!(".import-{}.part", std::process::id()));
    let result = copy_hashing(path, &tmp).and_then(|sha| {
        let k = find_by_sha256(&sha).ok_or_else(|| FetchError::NotOfficial {
            path: path.to_path_buf(),
            sha256: sha,
        })?;
        let dest = cache_dir.join(k.file_name);
        commit(&tmp, &dest)?;
        Ok((k.name, dest))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies `path` to `dest` through `<dest>.part`, checking its sha256 against
/// `expected_sha256` when given (a mismatch deletes the partial copy and leaves `dest` as it
/// was). Returns the file's sha256.
pub fn import_as(
    path: &Path,
    expected_sha256: Option<&str>,
    dest: &Path,
) -> Result<String, FetchError> {
    if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create the cache folder", dir))?;
    }
    let part = part_path(dest);
    let result = copy_hashing(path, &part).and_then(|got| {
        match expected_sha256 {
            Some(exp) if !exp.eq_ignore_ascii_case(&got) => {
                return Err(FetchError::ChecksumMismatch {
                    what: format!("import {}", path.display()),
                    expected: exp.to_ascii_lowercase(),
                    got,
                    partial: part.clone(),
                })
            }
            _ => {}
        }
        commit(&part, dest)?;
        Ok(got)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Imports any checkpoint file (not necessarily an official one) under a known name: its
/// format must be recognised, its hash is not checked. Returns the cached path and sha256.
pub fn import_forced(
    path: &Path,
    name_or_arch: &str,
    cache_dir: &Path,
) -> Result<(PathBuf, String), FetchError> {
    let k = find(name_or_arch).ok_or_else(|| FetchError::UnknownModel(name_or_arch.into()))?;
    crate::model::load::detect_format(path)
        .map_err(|e| FetchError::NotACheckpoint(e.to_string()))?;
    let dest = cache_dir.join(k.file_name);
    let sha = import_as(path, None, &dest)?;
    Ok((dest, sha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{ClipConfig, KNOWN_ARCHITECTURES};

    const URL_BASE: &str = "https://openaipublic.azureedge.net/clip/models/";

    #[test]
    fn table_matches_architectures_and_urls() {
        assert_eq!(KNOWN_CHECKPOINTS.len(), 9);
        for (k, arch) in KNOWN_CHECKPOINTS.iter().zip(KNOWN_ARCHITECTURES) {
            assert_eq!(k.name, arch);
            assert_eq!(canonical_arch_name(k.name), Some(k.name));
            assert_eq!(canonical_arch_name(k.openai_name), Some(k.name));
            assert_eq!(find(k.openai_name).unwrap().name, k.name);
            assert_eq!(k.sha256.len(), 64, "{}", k.name);
            assert!(k
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let path = k.url.strip_prefix(URL_BASE).expect("official host");
            assert_eq!(path, format!("{}/{}", k.sha256, k.file_name));
            assert_eq!(cached_file_name(k.name), k.file_name);
            assert_eq!(
                ClipConfig::preset(k.name)
                    .unwrap()
                    .vision
                    .image_resolution(),
                k.image_resolution
            );
            assert_eq!(find_by_sha256(&k.sha256.to_uppercase()), Some(k));
        }
        assert_eq!(cached_file_name("ViT-L/14@336px"), "ViT-L-14-336px.pt");
        assert!(find("ViT-H-14").is_none());
    }

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("https://openaipublic.azureedge.net/clip/models/x/RN50.pt"),
            "openaipublic.azureedge.net"
        );
        assert_eq!(host_of("http://127.0.0.1:1/"), "127.0.0.1:1");
        assert!(is_loopback("127.0.0.1:8080"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:80"));
        assert!(!is_loopback("openaipublic.azureedge.net"));
    }

    #[test]
    fn list_reports_cache_state() {
        let dir = std::env::temp_dir().join(format!("typoclip-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("RN50x4.pt"), b"x").unwrap();
        let l = list(&dir);
        assert_eq!(l.len(), 9);
        for s in &l {
            assert_eq!(s.cached, s.name == "RN50x4", "{}", s.name);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
