//! Published figures shown beside a run (`--reference distill`): the Distill article's
//! automated-attack table (linear probe) and its in-the-wild photos (zero-shot), from the small
//! data file `datasets/reference/distill.json` with its citation. These are facts to read next
//! to ours — clearly marked as published — never targets.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::document::{Block, Cell, Table};
use super::rate_cell;
use super::run::RunData;
use crate::metrics::summarize_variant;
use crate::records::Record;

/// The published data, compiled in.
pub const DISTILL_JSON: &str = include_str!("../../datasets/reference/distill.json");

/// One row of the automated-attack table.
#[derive(Debug, Clone, Deserialize)]
pub struct AttackRow {
    /// Target class.
    pub target: String,
    /// The word written on the images.
    pub word: String,
    /// Distill field.
    pub fraction_changed_to: f64,
    /// Distill field.
    pub fraction_already_equal: f64,
    /// Distill field.
    pub fraction_changed_away: f64,
    /// Distill field.
    pub fraction_both_results_not_target: f64,
    /// Distill field.
    pub avg_img_l0_norm_diff: f64,
}

/// The automated-attack experiment.
#[derive(Debug, Clone, Deserialize)]
pub struct AutomatedAttack {
    /// What it is.
    pub what: String,
    /// Images per attack.
    pub n: u64,
    /// One row per (target, word).
    pub rows: Vec<AttackRow>,
}

/// One published in-the-wild photo: `[probability, class]` lists.
#[derive(Debug, Clone, Deserialize)]
pub struct WildPhoto {
    /// Round of the article (1, 2, 3).
    pub round: u32,
    /// Object photographed.
    pub object: String,
    /// Written text (`blank` = none).
    pub text: String,
    /// Zero-shot probabilities.
    pub zero_shot: Vec<(f64, String)>,
    /// Linear-probe probabilities.
    pub linear_probe: Vec<(f64, String)>,
}

/// The in-the-wild photos.
#[derive(Debug, Clone, Deserialize)]
pub struct InTheWild {
    /// What it is.
    pub what: String,
    /// The photos.
    pub photos: Vec<WildPhoto>,
}

/// The whole published data file.
#[derive(Debug, Clone, Deserialize)]
pub struct DistillReference {
    /// Whom to cite.
    pub citation: String,
    /// Which model and what the figures are.
    pub note: String,
    /// The automated attack table.
    pub automated_attack: AutomatedAttack,
    /// The physical attacks.
    pub in_the_wild: InTheWild,
}

impl DistillReference {
    /// The compiled-in data.
    pub fn load() -> DistillReference {
        serde_json::from_str(DISTILL_JSON).expect("datasets/reference/distill.json is valid")
    }

    fn photo(&self, round: u32, object: &str, text: &str) -> Option<&WildPhoto> {
        self.in_the_wild
            .photos
            .iter()
            .find(|p| p.round == round && p.object == object && p.text == text)
    }
}

fn pct(v: f64) -> Cell {
    Cell::number(format!("{:.1}%", 100.0 * v), v)
}

fn top1(list: &[(f64, String)]) -> Option<&(f64, String)> {
    list.iter().max_by(|a, b| a.0.total_cmp(&b.0))
}

fn prob_of<'a>(list: &'a [(f64, String)], name: &str) -> Option<&'a (f64, String)> {
    list.iter().find(|(_, l)| l.eq_ignore_ascii_case(name))
}

/// `in-the-wild-2/apple-ipod.jpg` → (2, "apple", "ipod").
fn wild_key(sample_id: &str) -> Option<(u32, String, String)> {
    let (folder, file) = sample_id.rsplit_once('/')?;
    let round: u32 = folder.rsplit('-').next()?.parse().ok()?;
    let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
    let (object, text) = stem.split_once('-')?;
    Some((round, object.to_string(), text.to_string()))
}

/// The blocks of the reference section for `run`.
pub fn distill_blocks(run: &RunData) -> Vec<Block> {
    let r = DistillReference::load();
    let mut blocks = vec![Block::Para(format!(
        "Published figures (not computed by typoclip), source: {} {}",
        r.citation, r.note
    ))];
    // Automated attack: our records pooled by target class, beside the published row.
    let by_target: BTreeMap<String, Vec<&Record>> =
        run.records.iter().fold(BTreeMap::new(), |mut m, rec| {
            if let Some(t) = &rec.target {
                m.entry(t.to_lowercase()).or_default().push(rec);
            }
            m
        });
    let mut rows = Vec::new();
    for row in &r.automated_attack.rows {
        let ours = by_target
            .get(&row.target.to_lowercase())
            .map(|recs| summarize_variant(&row.target, recs));
        rows.push(vec![
            Cell::text(&row.target),
            Cell::text(&row.word),
            pct(row.fraction_changed_to),
            rate_cell(ours.as_ref().and_then(|o| o.fraction_changed_to)),
            pct(row.fraction_already_equal),
            rate_cell(ours.as_ref().and_then(|o| o.fraction_already_equal)),
            pct(row.fraction_changed_away),
            rate_cell(ours.as_ref().and_then(|o| o.fraction_changed_away)),
            pct(row.fraction_both_results_not_target),
            rate_cell(
                ours.as_ref()
                    .and_then(|o| o.fraction_both_results_not_target),
            ),
            Cell::number(
                format!("{:.3}", row.avg_img_l0_norm_diff),
                row.avg_img_l0_norm_diff,
            ),
            ours.as_ref()
                .map(|o| {
                    Cell::number(
                        format!("{:.3}", o.avg_img_l0_norm_diff),
                        o.avg_img_l0_norm_diff,
                    )
                })
                .unwrap_or_else(Cell::none),
            Cell::text(
                ours.as_ref()
                    .map(|o| (o.records - o.errors).to_string())
                    .unwrap_or_else(|| "0".into()),
            ),
        ]);
    }
    blocks.push(Block::Para(format!(
        "{} — published n = {} per attack, linear probe; ours: this run's records with that \
         target class pooled over its variants, {} scoring.",
        r.automated_attack.what, r.automated_attack.n, run.provenance.mode
    )));
    let h = |s: &str| s.to_string();
    blocks.push(Block::Table(Table {
        headers: vec![
            h("target"),
            h("word (published)"),
            h("changed to: published"),
            h("changed to: ours"),
            h("already equal: published"),
            h("already equal: ours"),
            h("changed away: published"),
            h("changed away: ours"),
            h("both not target: published"),
            h("both not target: ours"),
            h("L0: published"),
            h("L0: ours"),
            h("n ours"),
        ],
        rows,
        class: "reference-automated".into(),
    }));
    // In-the-wild photos, matched by round / object / text.
    let mut wild_rows = Vec::new();
    for rec in run.records.iter().filter(|r| r.is_ok()) {
        let Some((round, object, text)) = wild_key(&rec.sample_id) else {
            continue;
        };
        let Some(published) = r.photo(round, &object, &text) else {
            continue;
        };
        let blank = r.photo(round, &object, "blank");
        let fmt = |e: Option<&(f64, String)>| {
            e.map(|(p, l)| Cell::number(format!("{l} {:.1}%", 100.0 * p), *p))
                .unwrap_or_else(Cell::none)
        };
        let ours = |top: &[crate::records::Scored]| {
            top.first()
                .map(|s| Cell::number(format!("{} {:.1}%", s.label, 100.0 * s.prob), s.prob as f64))
                .unwrap_or_else(Cell::none)
        };
        wild_rows.push(vec![
            Cell::text(&rec.sample_id),
            ours(&rec.clean_top5),
            fmt(blank.and_then(|b| top1(&b.zero_shot))),
            ours(&rec.attacked_top5),
            fmt(top1(&published.zero_shot)),
            rec.p_target_attacked
                .map(|p| pct(p as f64))
                .unwrap_or_else(Cell::none),
            fmt(prob_of(&published.zero_shot, &text)),
        ]);
    }
    if wild_rows.is_empty() {
        blocks.push(Block::Para(
            "In-the-wild photos: this run has none of the article's photos (dataset \
             distill-in-the-wild), so there is nothing to set beside them."
                .into(),
        ));
    } else {
        blocks.push(Block::Para(format!(
            "{}; published zero-shot uses the article's label set, ours this run's ({}).",
            r.in_the_wild.what, run.provenance.labels
        )));
        blocks.push(Block::Table(Table {
            headers: vec![
                h("photo"),
                h("clean top-1: ours"),
                h("blank photo top-1: published"),
                h("attacked top-1: ours"),
                h("attacked top-1: published"),
                h("P(written word): ours"),
                h("P(written word): published"),
            ],
            rows: wild_rows,
            class: "reference-in-the-wild".into(),
        }));
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_data_is_complete() {
        let r = DistillReference::load();
        assert_eq!(r.automated_attack.rows.len(), 9);
        assert!(r.citation.contains("Distill"));
        let apple = r
            .photo(2, "apple", "ipod")
            .expect("apple with an iPod label");
        let (p, l) = top1(&apple.zero_shot).unwrap();
        assert_eq!(l, "iPod");
        assert!(*p > 0.9);
    }

    #[test]
    fn wild_keys_parse() {
        assert_eq!(
            wild_key("in-the-wild-2/apple-ipod.jpg"),
            Some((2, "apple".into(), "ipod".into()))
        );
        assert_eq!(wild_key("apple.jpg"), None);
    }
}
