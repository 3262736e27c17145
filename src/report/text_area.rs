//! The report's "readable text" section (sweeps run with `--text-area`): attack success
//! against how much text the trained detector sees on the attacked model input — records
//! binned by the share of the input inside its text boxes, with the top-1 change rate and, for
//! targeted attacks, the changed-to-target rate per bin (95 % Wilson intervals).

use super::document::{Block, Cell, Table};
use crate::metrics::Rate;
use crate::records::Record;

/// Bin edges of the text area, as fractions of the input: none, then `(0, 1 %]`, …
const EDGES: [f64; 4] = [0.01, 0.03, 0.10, 0.30];

fn bin_of(area: f64) -> usize {
    if area <= 0.0 {
        return 0;
    }
    1 + EDGES.iter().take_while(|&&e| area > e).count()
}

fn bin_name(b: usize) -> String {
    let pct = |v: f64| format!("{}", v * 100.0);
    match b {
        0 => "no box".into(),
        1 => format!("(0, {}] %", pct(EDGES[0])),
        b if b <= EDGES.len() => format!("({}, {}] %", pct(EDGES[b - 2]), pct(EDGES[b - 1])),
        _ => format!("> {} %", pct(EDGES[EDGES.len() - 1])),
    }
}

/// The section's blocks, or `None` when no record has a text area.
pub fn blocks(records: &[Record]) -> Option<Vec<Block>> {
    let rows: Vec<&Record> = records
        .iter()
        .filter(|r| r.is_ok() && r.text_area.is_some())
        .collect();
    if rows.is_empty() {
        return None;
    }
    // Per bin: (records, top-1 changed, targeted records, changed to target).
    let mut bins = vec![(0u64, 0u64, 0u64, 0u64); EDGES.len() + 2];
    for r in &rows {
        let b = &mut bins[bin_of(r.text_area.expect("filtered"))];
        b.0 += 1;
        b.1 += (r.attacked_top1() != r.clean_top1()) as u64;
        if let Some(t) = &r.target {
            b.2 += 1;
            b.3 += (r.attacked_top1() == Some(t.as_str())) as u64;
        }
    }
    let table_rows = bins
        .iter()
        .enumerate()
        .filter(|(_, b)| b.0 > 0)
        .map(|(i, b)| {
            vec![
                Cell::text(bin_name(i)),
                Cell::number(b.0.to_string(), b.0 as f64),
                super::rate_cell(Some(Rate::new(b.1, b.0))),
                super::rate_cell((b.2 > 0).then(|| Rate::new(b.3, b.2))),
            ]
        })
        .collect();
    Some(vec![
        Block::Para(
            "Records binned by the share of the attacked model input inside the text boxes of \
             PP-OCRv4's trained detector (before defenses): how often the attack changed the \
             top-1, and moved it to the target, against how much readable text the detector sees."
                .into(),
        ),
        Block::Table(Table {
            headers: ["text area", "records", "top-1 changed", "changed to target"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            rows: table_rows,
            class: "text-area".into(),
        }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_area_once() {
        assert_eq!(bin_of(0.0), 0);
        assert_eq!(bin_of(0.005), 1);
        assert_eq!(bin_of(0.01), 1);
        assert_eq!(bin_of(0.02), 2);
        assert_eq!(bin_of(0.2), 4);
        assert_eq!(bin_of(0.9), 5);
        assert_eq!(bin_name(0), "no box");
        assert_eq!(bin_name(2), "(1, 3] %");
        assert_eq!(bin_name(5), "> 30 %");
    }
}
