//! The records stage: one [`Record`] per (image, attack variant) — what the model predicted on
//! the clean and on the attacked image — streamed as JSON lines so that partial runs survive
//! and summaries can be rebuilt without a model. Pure data; the sweep writes them.

use serde::{Deserialize, Serialize};

/// A label with its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
}

/// One (image, variant) outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Record {
    /// Stable sample id (dataset-relative path or file name).
    pub sample_id: String,
    /// The clean photo of a physical-attack pair (absent when it is the same image).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub clean_id: Option<String>,
    /// Attack variant name (`ipod/size=24`), or the physical-attack condition (`SCAM`).
    pub variant: String,
    /// Ground-truth class name, when the dataset has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub true_label: Option<String>,
    /// Target class of a targeted attack.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
    /// Top-5 on the clean image.
    #[serde(default)]
    pub clean_top5: Vec<Scored>,
    /// Top-5 on the attacked image.
    #[serde(default)]
    pub attacked_top5: Vec<Scored>,
    /// P(true class), clean.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p_true_clean: Option<f32>,
    /// P(true class), attacked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p_true_attacked: Option<f32>,
    /// P(target), clean.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p_target_clean: Option<f32>,
    /// P(target), attacked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p_target_attacked: Option<f32>,
    /// 1-based rank of the target class after the attack.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target_rank_attacked: Option<u32>,
    /// Fraction of the model-input pixels the attack changed.
    #[serde(default)]
    pub l0: f64,
    /// Why this sample could not be evaluated (corrupt image, …); other fields are then empty.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Top-5 of the sweep's linear probe (`--probe`) on the clean image; empty without one.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub probe_clean_top5: Vec<Scored>,
    /// Top-5 of the linear probe on the attacked image.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub probe_attacked_top5: Vec<Scored>,
    /// Share of the attacked model input inside the text detector's boxes (`--text-area`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text_area: Option<f64>,
    /// The text detector's best box score on the attacked model input (`--text-area`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text_score: Option<f32>,
}

impl Record {
    /// Top-1 label on the clean image.
    pub fn clean_top1(&self) -> Option<&str> {
        self.clean_top5.first().map(|s| s.label.as_str())
    }

    /// Top-1 label on the attacked image.
    pub fn attacked_top1(&self) -> Option<&str> {
        self.attacked_top5.first().map(|s| s.label.as_str())
    }

    /// True when the record holds predictions (not an error).
    pub fn is_ok(&self) -> bool {
        self.error.is_none() && !self.clean_top5.is_empty() && !self.attacked_top5.is_empty()
    }

    /// The same outcome as the linear probe saw it: its top-5 in place of the zero-shot ones
    /// (probabilities of the true class / target and the target rank are zero-shot-only and
    /// left out). `None` when the record has no probe predictions.
    pub fn linear_probe_view(&self) -> Option<Record> {
        if self.probe_clean_top5.is_empty() && self.error.is_none() {
            return None;
        }
        Some(Record {
            sample_id: self.sample_id.clone(),
            variant: self.variant.clone(),
            true_label: self.true_label.clone(),
            target: self.target.clone(),
            clean_top5: self.probe_clean_top5.clone(),
            attacked_top5: self.probe_attacked_top5.clone(),
            l0: self.l0,
            error: self.error.clone(),
            ..Record::default()
        })
    }

    /// One JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("records serialise")
    }
}

/// Parses a `records.jsonl` text. Returns the complete records and the byte length of the
/// valid prefix: a torn last line (no newline, or unparsable) is excluded, to be redone.
pub fn parse_jsonl(text: &str) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut valid = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        pos += line.len();
        if !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Record>(line.trim_end()) {
            Ok(r) => {
                out.push(r);
                valid = pos;
            }
            Err(_) => break,
        }
    }
    (out, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run aggregates records parsed from records.jsonl beside records it computed;
    /// the two agree only if every float reads back to the same bits (serde_json's
    /// `float_roundtrip`; its default parser is off by one ulp on some inputs).
    #[test]
    fn floats_read_back_bit_exactly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..20_000 {
            let rec = Record {
                l0: rng.gen::<f64>() * rng.gen::<f64>(),
                p_true_clean: Some(rng.gen::<f32>().powi(3)),
                clean_top5: vec![Scored {
                    label: "a".into(),
                    prob: rng.gen::<f32>() * 1e-3,
                }],
                ..Record::default()
            };
            let back: Record = serde_json::from_str(&rec.to_json_line()).unwrap();
            assert_eq!(back.l0.to_bits(), rec.l0.to_bits(), "{}", rec.l0);
            assert_eq!(
                back.p_true_clean.unwrap().to_bits(),
                rec.p_true_clean.unwrap().to_bits()
            );
            assert_eq!(
                back.clean_top5[0].prob.to_bits(),
                rec.clean_top5[0].prob.to_bits()
            );
        }
    }

    #[test]
    fn torn_last_line_is_dropped() {
        let a = Record {
            sample_id: "a".into(),
            variant: "v".into(),
            ..Record::default()
        };
        let mut text = format!("{}\n{}\n", a.to_json_line(), a.to_json_line());
        let full = text.len();
        text.push_str("{\"sample_id\": \"b\", \"vari");
        let (recs, valid) = parse_jsonl(&text);
        assert_eq!(recs.len(), 2);
        assert_eq!(valid, full);
        // A complete but corrupt line stops parsing too.
        let (recs, _) = parse_jsonl("not json\n");
        assert!(recs.is_empty());
    }
}
