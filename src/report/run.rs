//! A finished (or interrupted) run folder read back: provenance, records and summary. An
//! unfinished run has no `summary.json`; its summary is then recomputed from the records.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::records::{parse_jsonl, Record};
use crate::sweep::provenance::Provenance;
use crate::sweep::SweepSummary;

/// Errors reading a run folder: the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RunError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn run_err(path: &Path, message: impl std::fmt::Display) -> RunError {
    RunError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// A run folder's contents.
#[derive(Debug)]
pub struct RunData {
    /// The folder.
    pub dir: PathBuf,
    /// `provenance.json`, typed.
    pub provenance: Provenance,
    /// `provenance.json` as written, fields added by later versions or plug-ins included.
    pub provenance_json: serde_json::Value,
    /// Complete records, in file order.
    pub records: Vec<Record>,
    /// `summary.json`, or the summary recomputed from the records for an unfinished run.
    pub summary: SweepSummary,
    /// True when `summary.json` was absent and the summary was recomputed.
    pub unfinished: bool,
}

impl RunData {
    /// Reads `dir`; a missing or unreadable file is an error naming it.
    pub fn load(dir: &Path) -> Result<RunData, RunError> {
        if !dir.is_dir() {
            return Err(run_err(
                dir,
                "not a folder (give a run folder, results/NAME)",
            ));
        }
        let prov_path = dir.join("provenance.json");
        let text = std::fs::read_to_string(&prov_path).map_err(|e| {
            run_err(
                &prov_path,
                format!("cannot read ({e}): not a typoclip run folder?"),
            )
        })?;
        let provenance_json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| run_err(&prov_path, e))?;
        let provenance: Provenance =
            serde_json::from_value(provenance_json.clone()).map_err(|e| run_err(&prov_path, e))?;
        let rec_path = dir.join("records.jsonl");
        let rec_text = std::fs::read_to_string(&rec_path).map_err(|e| run_err(&rec_path, e))?;
        let (records, _) = parse_jsonl(&rec_text);
        let sum_path = dir.join("summary.json");
        let (summary, unfinished) = if sum_path.exists() {
            let t = std::fs::read_to_string(&sum_path).map_err(|e| run_err(&sum_path, e))?;
            let s: SweepSummary = serde_json::from_str(&t).map_err(|e| run_err(&sum_path, e))?;
            (s, false)
        } else {
            (
                SweepSummary::from_records(provenance.caveat(), &records),
                true,
            )
        };
        Ok(RunData {
            dir: dir.to_path_buf(),
            provenance,
            provenance_json,
            records,
            summary,
            unfinished,
        })
    }

    /// Distinct evaluated images (attacked sample ids).
    pub fn images(&self) -> usize {
        self.records
            .iter()
            .map(|r| r.sample_id.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The variant names, in summary order.
    pub fn variant_names(&self) -> Vec<String> {
        self.summary
            .variants
            .iter()
            .map(|v| v.variant.clone())
            .collect()
    }

    /// The folder's name for tables (`results/NAME` → `NAME`).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// Wall-clock seconds from start to finish, when both are recorded.
    pub fn duration_s(&self) -> Option<f64> {
        let start = parse_rfc3339(&self.provenance.started)?;
        let end = parse_rfc3339(self.provenance.finished.as_deref()?)?;
        Some((end - start) as f64)
    }

    /// The defenses the run applied, as recorded (`defenses` in provenance), one line each.
    pub fn defenses(&self) -> Vec<String> {
        self.provenance_json
            .get("defenses")
            .and_then(|d| d.as_array())
            .map(|a| {
                a.iter()
                    .map(|d| {
                        let spec = d
                            .get("spec")
                            .and_then(|s| s.as_str())
                            .map(String::from)
                            .unwrap_or_else(|| d.to_string());
                        match d.get("fitted") {
                            Some(f) if !f.is_null() => format!("{spec} (fitted)"),
                            _ => spec,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ` (what provenance writes).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_seconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
