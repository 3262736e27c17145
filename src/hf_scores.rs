//! Unigram piece scores read as Hugging Face's tokenizers reads them.
//!
//! A SentencePiece-style Unigram `tokenizer.json` (XLM-R's, T5's, SigLIP's) stores each
//! piece's log-probability as a 17-digit decimal. The tokenizers library parses it with
//! `serde_json` built without `float_roundtrip`: the significand is rounded to `f64` and then
//! multiplied or divided by a power of ten, so about one score in twelve lands one unit in
//! the last place away from the correctly rounded value. Segmentations whose scores tie up to
//! rounding (`00 00 … 0` against `0 00 … 00` in a run of zeros) are then decided by those
//! bits. typoclip's own JSON is read with `float_roundtrip` (records must round-trip), and
//! cargo unifies that feature for every crate, so the tokenizers crate linked here would read
//! the scores correctly rounded — and segment some texts differently from open_clip.
//!
//! This module owns the one fix: [`reread_unigram_scores`] takes the file's bytes and
//! replaces the parsed scores by [`serde_json_default_f64`] of their literal text, the
//! algorithm of `serde_json` 1.0's `f64_from_parts` without `float_roundtrip`, digit for digit.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// `1e0 … 1e308`, each correctly rounded (serde_json's `POW10`).
fn pow10() -> &'static [f64; 309] {
    static POW10: OnceLock<[f64; 309]> = OnceLock::new();
    POW10.get_or_init(|| {
        let mut t = [0.0; 309];
        for (i, v) in t.iter_mut().enumerate() {
            *v = format!("1e{i}").parse().expect("a power of ten");
        }
        t
    })
}

/// `a * 10 + digit` would exceed `u64::MAX` (serde_json's `overflow!`).
fn overflows(a: u64, digit: u64) -> bool {
    a > u64::MAX / 10 || (a == u64::MAX / 10 && digit > u64::MAX % 10)
}

/// The `f64` that `serde_json` without `float_roundtrip` reads from the JSON number `text`;
/// `None` where it is not a JSON number or is out of range (serde_json's errors).
pub fn serde_json_default_f64(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let mut i = 0;
    let positive = if b.first() == Some(&b'-') {
        i += 1;
        false
    } else {
        true
    };
    let digit = |i: usize| {
        b.get(i)
            .filter(|c| c.is_ascii_digit())
            .map(|c| (c - b'0') as u64)
    };
    let mut significand = digit(i)?;
    i += 1;
    let mut exponent: i32 = 0;
    if significand == 0 {
        if digit(i).is_some() {
            return None; // a leading zero
        }
    } else {
        while let Some(d) = digit(i) {
            if overflows(significand, d) {
                // parse_long_integer: further integer digits only scale.
                while digit(i).is_some() {
                    i += 1;
                    exponent += 1;
                }
                break;
            }
            significand = significand * 10 + d;
            i += 1;
        }
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(d) = digit(i) {
            if overflows(significand, d) {
                // parse_decimal_overflow: further fraction digits are ignored.
                while digit(i).is_some() {
                    i += 1;
                }
                break;
            }
            significand = significand * 10 + d;
            exponent -= 1;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let positive_exp = match b.get(i) {
            Some(b'+') => {
                i += 1;
                true
            }
            Some(b'-') => {
                i += 1;
                false
            }
            _ => true,
        };
        let mut exp = digit(i)? as i32;
        i += 1;
        while let Some(d) = digit(i) {
            let d = d as i32;
            if exp > i32::MAX / 10 || (exp == i32::MAX / 10 && d > i32::MAX % 10) {
                // parse_exponent_overflow: zero, or out of range.
                if significand != 0 && positive_exp {
                    return None;
                }
                while digit(i).is_some() {
                    i += 1;
                }
                return (i == b.len()).then_some(if positive { 0.0 } else { -0.0 });
            }
            exp = exp * 10 + d;
            i += 1;
        }
        exponent = if positive_exp {
            exponent.saturating_add(exp)
        } else {
            exponent.saturating_sub(exp)
        };
    }
    if i != b.len() {
        return None;
    }
    // f64_from_parts without float_roundtrip.
    let mut f = significand as f64;
    loop {
        match pow10().get(exponent.unsigned_abs() as usize) {
            Some(&pow) => {
                if exponent >= 0 {
                    f *= pow;
                    if f.is_infinite() {
                        return None;
                    }
                } else {
                    f /= pow;
                }
                break;
            }
            None => {
                if f == 0.0 {
                    break;
                }
                if exponent >= 0 {
                    return None;
                }
                f /= 1e308;
                exponent += 308;
            }
        }
    }
    Some(if positive { f } else { -f })
}

#[derive(Deserialize)]
struct File<'a> {
    #[serde(borrow)]
    model: Option<Model<'a>>,
}

#[derive(Deserialize)]
struct Model<'a> {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    vocab: Option<&'a RawValue>,
}

/// Replaces `tokenizer_json.model.vocab[i][1]` of a Unigram model by the score the tokenizers
/// library reads from `bytes` (the same file's text). Other models, and files whose vocab is
/// not a list of `[piece, score]` pairs, are left as they are (the tokenizers crate then
/// reports what it cannot read).
pub fn reread_unigram_scores(bytes: &[u8], tokenizer_json: &mut Value) {
    let Ok(file) = serde_json::from_slice::<File>(bytes) else {
        return;
    };
    let Some(Model {
        kind: Some(kind),
        vocab: Some(vocab),
    }) = file.model
    else {
        return;
    };
    if kind != "Unigram" {
        return;
    }
    let Ok(pairs) = serde_json::from_str::<Vec<(serde::de::IgnoredAny, &RawValue)>>(vocab.get())
    else {
        return;
    };
    let Some(Value::Array(entries)) = tokenizer_json
        .get_mut("model")
        .and_then(|m| m.get_mut("vocab"))
    else {
        return;
    };
    if entries.len() != pairs.len() {
        return;
    }
    for (entry, (_, raw)) in entries.iter_mut().zip(pairs) {
        let (Some(slot), Some(score)) =
            (entry.get_mut(1), serde_json_default_f64(raw.get().trim()))
        else {
            continue;
        };
        if let Some(n) = serde_json::Number::from_f64(score) {
            *slot = Value::Number(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seventeen_digit_scores_land_where_the_tokenizers_library_puts_them() {
        // Python's tokenizers 0.22.2 reads this score and writes it back as
        // -3.884205920848967: one unit in the last place above the correctly rounded value.
        let text = "-3.8842059208489674";
        let correct: f64 = text.parse().unwrap();
        let read = serde_json_default_f64(text).unwrap();
        assert_eq!(read, -3.884205920848967);
        assert_eq!(read.to_bits(), correct.to_bits() - 1);
        assert_eq!(
            serde_json_default_f64("-7.3616263184192645"),
            Some(-7.361626318419264)
        );
    }

    #[test]
    fn short_numbers_and_json_forms() {
        for (text, want) in [
            ("0", 0.0),
            ("-0.5", -0.5),
            ("0.1", 0.1),
            ("12", 12.0),
            ("-1.25e-5", -1.25e-5),
            ("3E2", 300.0),
            ("2e+3", 2000.0),
            ("1e-400", 0.0),
        ] {
            assert_eq!(serde_json_default_f64(text), Some(want), "{text}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "1x", "1e400", "--1"] {
            assert_eq!(serde_json_default_f64(bad), None, "{bad}");
        }
        // 21 integer digits: the ones past u64 only scale.
        assert_eq!(
            serde_json_default_f64("184467440737095516159"),
            Some(18446744073709551615u64 as f64 * 10.0)
        );
    }

    #[test]
    fn unigram_vocab_scores_are_replaced_and_others_left() {
        let text = br#"{"model": {"type": "Unigram", "vocab": [["a", -3.8842059208489674], ["\u2581b", -1.5]]}}"#;
        let mut json: Value = serde_json::from_slice(text).unwrap();
        reread_unigram_scores(text, &mut json);
        assert_eq!(
            json["model"]["vocab"][0][1].as_f64(),
            Some(-3.884205920848967)
        );
        assert_eq!(json["model"]["vocab"][1][1].as_f64(), Some(-1.5));
        let bpe = br#"{"model": {"type": "BPE", "vocab": {"a": 0}}}"#;
        let mut json: Value = serde_json::from_slice(bpe).unwrap();
        let before = json.clone();
        reread_unigram_scores(bpe, &mut json);
        assert_eq!(json, before);
    }
}
