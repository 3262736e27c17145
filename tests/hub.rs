//! `typoclip fetch ARCH:TAG` against a tiny hub on 127.0.0.1 (routes by path, bounded, stops by
//! itself): the config and the weights behind a redirect whose `X-Linked-Etag` states the
//! sha256, the `.bin` fallback, a wrong hash (nothing left behind), an unreachable hub (one line
//! pointing to `import`), `import DIR --name ARCH:TAG`, and `--model ARCH:TAG` resolving to the
//! cached snapshot. Nothing here touches the internet.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use typoclip::registry::{FetchError, FetchOptions};

/// One route's answer.
#[derive(Clone)]
struct Route {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn ok(body: Vec<u8>, etag: &str) -> Route {
    Route {
        status: 200,
        headers: vec![("ETag".into(), format!("\"{etag}\""))],
        body,
    }
}

fn redirect(to: &str, sha256: &str) -> Route {
    Route {
        status: 302,
        headers: vec![
            ("Location".into(), to.into()),
            ("X-Linked-Etag".into(), format!("\"{sha256}\"")),
        ],
        body: Vec::new(),
    }
}

/// Serves `routes` (unknown paths: 404) until dropped or 30 s pass. Returns the base URL and a
/// flag that stops it.
struct Hub {
    base: String,
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(routes: HashMap<String, Route>) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stop2, seen2) = (stop.clone(), seen.clone());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            s.set_nonblocking(false).ok();
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            seen2.lock().unwrap().push(path.clone());
            let r = routes.get(&path).cloned().unwrap_or(Route {
                status: 404,
                headers: Vec::new(),
                body: Vec::new(),
            });
            let mut out = format!(
                "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                r.status,
                if r.status == 404 { "Not Found" } else { "OK" },
                r.body.len()
            );
            for (k, v) in &r.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = s.write_all(out.as_bytes());
            let _ = s.write_all(&r.body);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    Hub { base, stop, seen }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

const ARCH: &str = "ViT-B-32";
const TAG: &str = "laion2b_s34b_b79k";

fn repo() -> String {
    typoclip::model::open_clip::zoo()
        .pretrained(ARCH, TAG)
        .unwrap()
        .hf_hub
        .clone()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

/// The snapshot the test hub serves: the tiny ViT fixture's config and weights (a tag's name is
/// only where they are filed; the config in the folder is what builds the model).
fn snapshot() -> (Vec<u8>, Vec<u8>) {
    let f = common::fixtures();
    (
        std::fs::read(f.join("tiny-vit.open_clip_config.json")).unwrap(),
        std::fs::read(f.join("tiny-vit.open_clip.safetensors")).unwrap(),
    )
}

fn quiet() -> FetchOptions {
    FetchOptions {
        progress: false,
        ..FetchOptions::default()
    }
}

fn typoclip(xdg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(args)
        .env("XDG_CACHE_HOME", xdg)
        .output()
        .unwrap()
}

#[test]
fn fetches_a_tag_checks_lfs_hashes_and_loads_it() {
    let (config, weights) = snapshot();
    let r = repo();
    let mut routes = HashMap::new();
    routes.insert(
        format!("/{r}/resolve/main/open_clip_config.json"),
        ok(config.clone(), "0123456789abcdef0123456789abcdef01234567"),
    );
    routes.insert(
        format!("/{r}/resolve/main/open_clip_model.safetensors"),
        redirect("/cdn/blob-1", &sha256_hex(&weights)),
    );
    routes.insert("/cdn/blob-1".into(), ok(weights.clone(), "cdn"));
    let hub = serve(routes);
    let xdg = tempfile::tempdir().unwrap();
    let o = typoclip(
        xdg.path(),
        &[
            "fetch",
            &format!("{ARCH}:{TAG}"),
            "--url",
            &hub.base,
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = xdg.path().join("typoclip/hub").join(ARCH).join(TAG);
    assert_eq!(
        std::fs::read(dir.join("open_clip_config.json")).unwrap(),
        config
    );
    assert_eq!(
        std::fs::read(dir.join("open_clip_model.safetensors")).unwrap(),
        weights
    );
    assert!(!dir.with_file_name(format!("{TAG}.partial")).exists());
    assert!(hub.seen.lock().unwrap().iter().any(|p| p == "/cdn/blob-1"));
    // `--model ARCH:TAG` resolves to the snapshot and builds it from its config.
    let o = typoclip(xdg.path(), &["info", "--model", &format!("{ARCH}:{TAG}")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("config from:   open_clip config"), "{out}");
    assert!(
        out.contains("open_clip_model.safetensors") || out.contains("sha256"),
        "{out}"
    );
    // A second fetch keeps the snapshot without asking the hub.
    drop(hub);
    let o = typoclip(
        xdg.path(),
        &[
            "fetch",
            &format!("{ARCH}:{TAG}"),
            "--url",
            "http://127.0.0.1:9",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn wrong_hash_leaves_nothing_and_bin_weights_are_the_fallback() {
    let (config, weights) = snapshot();
    let r = repo();
    let mut routes = HashMap::new();
    routes.insert(
        format!("/{r}/resolve/main/open_clip_config.json"),
        ok(config.clone(), "cfg"),
    );
    routes.insert(
        format!("/{r}/resolve/main/open_clip_model.safetensors"),
        redirect("/cdn/blob-2", &sha256_hex(b"something else")),
    );
    routes.insert("/cdn/blob-2".into(), ok(weights.clone(), "cdn"));
    let hub = serve(routes);
    let cache = tempfile::tempdir().unwrap();
    let e = typoclip::hub::fetch_tag(ARCH, TAG, cache.path(), &hub.base, &quiet()).unwrap_err();
    assert!(matches!(e, FetchError::ChecksumMismatch { .. }), "{e}");
    let parent = cache.path().join("hub").join(ARCH);
    let left: Vec<_> = std::fs::read_dir(&parent)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(hub);

    // No safetensors in the repository: the pickled weights are taken, hash-checked.
    let mut routes = HashMap::new();
    routes.insert(
        format!("/{r}/resolve/main/open_clip_config.json"),
        ok(config, "cfg"),
    );
    routes.insert(
        format!("/{r}/resolve/main/open_clip_pytorch_model.bin"),
        redirect("/cdn/blob-3", &sha256_hex(&weights)),
    );
    routes.insert("/cdn/blob-3".into(), ok(weights.clone(), "cdn"));
    let hub = serve(routes);
    let dir = typoclip::hub::fetch_tag(ARCH, TAG, cache.path(), &hub.base, &quiet()).unwrap();
    assert_eq!(
        std::fs::read(dir.join("open_clip_pytorch_model.bin")).unwrap(),
        weights
    );
}

#[test]
fn unreachable_hub_points_to_import_and_import_takes_a_folder() {
    let xdg = tempfile::tempdir().unwrap();
    let o = typoclip(
        xdg.path(),
        &[
            "fetch",
            &format!("{ARCH}:{TAG}"),
            "--url",
            "http://127.0.0.1:9",
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("typoclip import DIR --name ViT-B-32:laion2b_s34b_b79k"),
        "{e}"
    );

    let (config, weights) = snapshot();
    let src = xdg.path().join("by-hand");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("open_clip_config.json"), &config).unwrap();
    std::fs::write(src.join("open_clip_model.safetensors"), &weights).unwrap();
    let o = typoclip(
        xdg.path(),
        &[
            "import",
            src.to_str().unwrap(),
            "--name",
            &format!("{ARCH}:{TAG}"),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = typoclip(xdg.path(), &["info", "--model", &format!("{ARCH}:{TAG}")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A folder without a config is refused, naming it.
    let bare = xdg.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("open_clip_model.safetensors"), &weights).unwrap();
    let o = typoclip(
        xdg.path(),
        &[
            "import",
            bare.to_str().unwrap(),
            "--name",
            &format!("{ARCH}:{TAG}"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bare"));
}
