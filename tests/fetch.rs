//! The checkpoint registry end to end: downloads from a tiny HTTP/1.1 server on 127.0.0.1
//! (started per test, bounded, stops by itself), checksum failures, cut and stalled
//! connections, an unreachable host, `import`, and `typoclip models/fetch/import` through the
//! binary. Nothing here touches the internet.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use typoclip::registry::{self, FetchError, FetchOptions};

/// What the server sends on one connection.
#[derive(Clone)]
enum Reply {
    /// 200 with the whole body and its Content-Length.
    Full(Vec<u8>),
    /// 200 announcing the whole body, then closes after `send` bytes.
    Cut { body: Vec<u8>, send: usize },
    /// 200 announcing the whole body, sends `send` bytes, then goes silent for `stall`.
    Stall {
        body: Vec<u8>,
        send: usize,
        stall: Duration,
    },
    /// An error status with an empty body.
    Status(u16, &'static str),
}

/// Serves `replies`, one per connection in order, then exits. Gives up waiting for a
/// connection after 20 s, so the thread always ends. Returns the base URL and a handle whose
/// result is the request lines seen.
fn serve(replies: Vec<Reply>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        for reply in replies {
            let stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break Some(s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            break None;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break None,
                }
            };
            let Some(stream) = stream else { break };
            if let Some(line) = answer(stream, reply) {
                seen.push(line);
            }
        }
        seen
    });
    (base, handle)
}

/// Reads one request's head and writes `reply`; returns the request line.
fn answer(mut s: TcpStream, reply: Reply) -> Option<String> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let ok = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    };
    // Write errors are ignored: the client may give up first, which is the point of some tests.
    match reply {
        Reply::Full(body) => {
            let _ = s.write_all(ok(body.len()).as_bytes());
            let _ = s.write_all(&body);
        }
        Reply::Cut { body, send } => {
            let _ = s.write_all(ok(body.len()).as_bytes());
            let _ = s.write_all(&body[..send]);
            let _ = s.flush();
        }
        Reply::Stall { body, send, stall } => {
            let _ = s.write_all(ok(body.len()).as_bytes());
            let _ = s.write_all(&body[..send]);
            let _ = s.flush();
            std::thread::sleep(stall);
        }
        Reply::Status(code, reason) => {
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    Some(line)
}

/// `n` deterministic pseudo-random bytes (xorshift64*).
fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Names of the entries of a folder (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn quiet() -> FetchOptions {
    FetchOptions {
        progress: false,
        ..FetchOptions::default()
    }
}

const MB3: usize = 3 * 1024 * 1024 + 17;

#[test]
fn downloads_verifies_and_renames() {
    let body = pseudo_random(MB3, 1);
    let sha = sha256_hex(&body);
    let (base, server) = serve(vec![Reply::Full(body.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("sub").join("ViT-B-32.pt");
    let got = registry::fetch_url(
        "ViT-B-32",
        &format!("{base}/clip/models/{sha}/ViT-B-32.pt"),
        &sha,
        &dest,
        false,
    )
    .unwrap();
    assert_eq!(got, dest);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(
        typoclip::model::load::sha256_file(&dest).unwrap(),
        sha,
        "cached file hash"
    );
    assert_eq!(entries(&cache.path().join("sub")), vec!["ViT-B-32.pt"]);
    let requests = server.join().unwrap();
    assert_eq!(
        requests,
        vec![format!("GET /clip/models/{sha}/ViT-B-32.pt HTTP/1.1")]
    );
}

#[test]
fn wrong_checksum_deletes_the_partial_file() {
    let body = pseudo_random(MB3, 2);
    let expected = sha256_hex(&pseudo_random(MB3, 3));
    let (base, server) = serve(vec![Reply::Full(body.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("RN50.pt");
    let err = registry::fetch_url_with(
        "RN50",
        &format!("{base}/RN50.pt"),
        &expected,
        &dest,
        &quiet(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&expected) && msg.contains(&sha256_hex(&body)),
        "{msg}"
    );
    assert!(msg.contains("deleted") && !msg.contains('\n'), "{msg}");
    assert!(
        entries(cache.path()).is_empty(),
        "{:?}",
        entries(cache.path())
    );
    server.join().unwrap();
}

#[test]
fn failed_download_keeps_the_previous_file() {
    let body = pseudo_random(MB3, 4);
    let (base, server) = serve(vec![Reply::Full(body)]);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("RN101.pt");
    std::fs::write(&dest, b"old").unwrap();
    let wrong = "0".repeat(64);
    registry::fetch_url_with(
        "RN101",
        &format!("{base}/RN101.pt"),
        &wrong,
        &dest,
        &quiet(),
    )
    .unwrap_err();
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    assert_eq!(entries(cache.path()), vec!["RN101.pt"]);
    server.join().unwrap();
}

#[test]
fn connection_cut_mid_file_is_an_error_and_leaves_nothing() {
    let body = pseudo_random(MB3, 5);
    let sha = sha256_hex(&body);
    let (base, server) = serve(vec![Reply::Cut {
        body,
        send: 1024 * 1024 + 5,
    }]);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("ViT-B-16.pt");
    let err = registry::fetch_url_with(
        "ViT-B-16",
        &format!("{base}/ViT-B-16.pt"),
        &sha,
        &dest,
        &quiet(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Incomplete { .. }), "{msg}");
    assert!(msg.contains(&format!("of {MB3} bytes")), "{msg}");
    assert!(
        msg.contains("partial file deleted") && !msg.contains('\n'),
        "{msg}"
    );
    assert!(
        entries(cache.path()).is_empty(),
        "{:?}",
        entries(cache.path())
    );
    server.join().unwrap();
}

#[test]
fn stalled_transfer_times_out_and_leaves_nothing() {
    let body = pseudo_random(256 * 1024, 6);
    let sha = sha256_hex(&body);
    let (base, server) = serve(vec![Reply::Stall {
        body,
        send: 1000,
        stall: Duration::from_secs(3),
    }]);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("RN50x4.pt");
    let opts = FetchOptions {
        read_timeout: Duration::from_millis(500),
        ..quiet()
    };
    let t0 = Instant::now();
    let err = registry::fetch_url_with("RN50x4", &format!("{base}/RN50x4.pt"), &sha, &dest, &opts)
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Incomplete { .. }), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
    assert!(
        entries(cache.path()).is_empty(),
        "{:?}",
        entries(cache.path())
    );
    server.join().unwrap();
}

#[test]
fn http_error_status_is_reported() {
    let (base, server) = serve(vec![Reply::Status(404, "Not Found")]);
    let cache = tempfile::tempdir().unwrap();
    let dest = cache.path().join("RN50.pt");
    let err = registry::fetch_url_with(
        "RN50",
        &format!("{base}/RN50.pt"),
        &"0".repeat(64),
        &dest,
        &quiet(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert!(entries(cache.path()).is_empty());
    server.join().unwrap();
}

#[test]
fn unreachable_host_says_how_to_import_by_hand() {
    let cache = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:1/clip/models/x/ViT-B-32.pt";
    let err = registry::fetch("ViT-B/32", cache.path(), Some(url), false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{msg}");
    assert!(
        msg.starts_with("fetch ViT-B-32: cannot reach 127.0.0.1:1 ("),
        "{msg}"
    );
    assert!(msg.contains(&format!("Download {url} elsewhere")), "{msg}");
    assert!(
        msg.contains("typoclip import FILE") && !msg.contains('\n'),
        "{msg}"
    );
    assert!(entries(cache.path()).is_empty());
}

#[test]
fn fetch_refuses_unknown_names() {
    let cache = tempfile::tempdir().unwrap();
    let err = registry::fetch("ViT-H-14", cache.path(), None, false).unwrap_err();
    assert!(matches!(err, FetchError::UnknownModel(_)), "{err}");
    assert!(err.to_string().contains("ViT-L-14-336"), "{err}");
}

#[test]
fn import_refuses_unofficial_files_and_checks_hashes() {
    let src_dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let file = src_dir.path().join("downloaded.pt");
    let bytes = pseudo_random(100_000, 7);
    std::fs::write(&file, &bytes).unwrap();

    let err = registry::import(&file, cache.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::NotOfficial { .. }), "{msg}");
    assert!(
        msg.contains("downloaded.pt") && msg.contains("not that of an official OpenAI"),
        "{msg}"
    );
    assert!(
        entries(cache.path()).is_empty(),
        "{:?}",
        entries(cache.path())
    );

    let dest = cache.path().join("ViT-B-32.pt");
    let err = registry::import_as(&file, Some(&"a".repeat(64)), &dest).unwrap_err();
    assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{err}");
    assert!(entries(cache.path()).is_empty());

    let sha = registry::import_as(&file, Some(&sha256_hex(&bytes)), &dest).unwrap();
    assert_eq!(sha, sha256_hex(&bytes));
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(entries(cache.path()), vec!["ViT-B-32.pt"]);

    let err = registry::import(&src_dir.path().join("missing.pt"), cache.path()).unwrap_err();
    assert!(err.to_string().contains("missing.pt"), "{err}");
}

// ---- through the binary ----

fn typoclip(xdg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_typoclip"))
        .args(args)
        .env("XDG_CACHE_HOME", xdg)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap()
}

fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn models_json_lists_the_cache() {
    let xdg = tempfile::tempdir().unwrap();
    let cache: PathBuf = xdg.path().join("typoclip");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("ViT-L-14-336px.pt"), b"not really").unwrap();
    let out = typoclip(xdg.path(), &["models", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["cache_dir"].as_str().unwrap(), cache.to_str().unwrap());
    let models = doc["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "RN50",
            "RN101",
            "RN50x4",
            "RN50x16",
            "RN50x64",
            "ViT-B-32",
            "ViT-B-16",
            "ViT-L-14",
            "ViT-L-14-336"
        ]
    );
    let res: Vec<i64> = models
        .iter()
        .map(|m| m["image_resolution"].as_i64().unwrap())
        .collect();
    assert_eq!(res, [224, 224, 288, 384, 448, 224, 224, 224, 336]);
    for m in models {
        let cached = m["name"] == "ViT-L-14-336";
        assert_eq!(m["cached"].as_bool().unwrap(), cached, "{m}");
        assert!(
            Path::new(m["path"].as_str().unwrap()).starts_with(&cache),
            "{m}"
        );
        assert_eq!(m["sha256"].as_str().unwrap().len(), 64);
    }
    assert_eq!(models[8]["openai_name"], "ViT-L/14@336px");
    assert_eq!(models[8]["size_bytes"], 10);

    let out = typoclip(xdg.path(), &["models"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ViT-L/14@336px") && text.contains("yes"),
        "{text}"
    );
}

#[test]
fn cli_fetch_and_import_errors_are_one_line() {
    let xdg = tempfile::tempdir().unwrap();
    let cache = xdg.path().join("typoclip");

    let out = typoclip(
        xdg.path(),
        &[
            "fetch",
            "ViT-B-32",
            "--quiet",
            "--url",
            "http://127.0.0.1:1/ViT-B-32.pt",
        ],
    );
    let line = one_line_error(&out);
    assert!(line.contains("cannot reach 127.0.0.1:1"), "{line}");
    assert!(line.contains("'typoclip import FILE'"), "{line}");

    let body = pseudo_random(50_000, 8);
    let (base, server) = serve(vec![Reply::Full(body)]);
    let out = typoclip(
        xdg.path(),
        &[
            "fetch",
            "ViT-B/32",
            "--quiet",
            "--url",
            &format!("{base}/ViT-B-32.pt"),
        ],
    );
    let line = one_line_error(&out);
    assert!(
        line.contains("sha256 mismatch: expected 40d365715913c9da"),
        "{line}"
    );
    assert!(entries(&cache).is_empty(), "{:?}", entries(&cache));
    server.join().unwrap();

    let file = xdg.path().join("some.pt");
    std::fs::write(&file, b"hello").unwrap();
    let out = typoclip(xdg.path(), &["import", file.to_str().unwrap()]);
    let line = one_line_error(&out);
    assert!(
        line.contains("not that of an official OpenAI CLIP checkpoint"),
        "{line}"
    );
    assert!(entries(&cache).is_empty(), "{:?}", entries(&cache));

    let out = typoclip(xdg.path(), &["info", "--model", "ViT-B-32"]);
    let line = one_line_error(&out);
    assert!(
        line.contains("typoclip fetch ViT-B-32") && line.contains("random:ViT-B-32"),
        "{line}"
    );
}
