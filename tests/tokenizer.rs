//! Tokenizer fuzz parity: typoclip's `ClipTokenizer` against open_clip's `tokenize` on a
//! deterministic fuzzed corpus made by `scripts/reference_tokenizer.py` (ASCII, punctuation,
//! accents, Greek, Cyrillic, CJK, emoji, zero-width and no-break spaces, every kind of HTML
//! character reference, long repeats, very long strings). Every row must be identical.

mod common;

use std::process::Command;

use common::{python, repo};
use typoclip::tokenizer::ClipTokenizer;

struct Row {
    text: String,
    tokens: Vec<i64>,
    mojibake: bool,
}

/// Runs the reference script (about 10 s, mostly importing torch) and reads its corpus.
fn reference_corpus() -> Vec<Row> {
    let dir = repo().join("tests/fixtures/generated");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("tokenizer-fuzz.json");
    let status = Command::new(python())
        .arg(repo().join("scripts/reference_tokenizer.py"))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("cannot run Python: run the README's test command, which installs the reference into .venv");
    assert!(status.success(), "scripts/reference_tokenizer.py failed");
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    json.iter()
        .map(|e| Row {
            text: e["text"].as_str().unwrap().to_string(),
            tokens: e["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect(),
            mojibake: e["mojibake"].as_bool().unwrap(),
        })
        .collect()
}

/// A token row without its zero padding, for printing.
fn unpadded(row: &[i64]) -> &[i64] {
    let n = row.iter().rposition(|&t| t != 0).map_or(0, |i| i + 1);
    &row[..n]
}

#[test]
fn tokenizer_matches_open_clip_on_fuzzed_entities_corpus() {
    let corpus = reference_corpus();
    let tok = ClipTokenizer::new();
    let mut mismatches = Vec::new();
    let (mut mojibake, mut mojibake_differ) = (0, 0);
    for row in &corpus {
        let ours = tok.encode_row(&row.text, 77);
        let same = unpadded(&row.tokens) == ours.as_slice() && row.tokens.len() == 77;
        if row.mojibake {
            // ftfy's mojibake repair is outside what typoclip reproduces (see tokenizer.rs).
            mojibake += 1;
            mojibake_differ += usize::from(!same);
        } else if !same {
            mismatches.push((row, ours));
        }
    }
    let compared = corpus.len() - mojibake;
    eprintln!(
        "tokenizer fuzz: {compared} texts compared exactly, {} differ; {mojibake} mojibake texts \
         excluded, {mojibake_differ} of them differ",
        mismatches.len()
    );
    assert!(compared >= 1500, "only {compared} texts compared");
    if !mismatches.is_empty() {
        for (row, ours) in mismatches.iter().take(5) {
            eprintln!(
                "text:       {:?}\ncleaned:    {:?}\nopen_clip:  {:?}\ntypoclip:   {:?}\n",
                row.text,
                tok.clean(&row.text),
                unpadded(&row.tokens),
                ours
            );
        }
        panic!(
            "{} of {compared} texts tokenize differently from open_clip (first ones above)",
            mismatches.len()
        );
    }
}
