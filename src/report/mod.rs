//! The report stage: turns a run folder into `report.html` (self-contained: inline CSS, inline
//! SVG plots, thumbnails as data URIs) and its Markdown twin `report.md`, and compares runs
//! (`comparison.*`). Reads only what a sweep wrote; needs no model.

pub mod compare;
pub mod document;
pub mod examples;
pub mod plots;
pub mod reference;
pub mod run;
pub mod text_area;
pub mod zoo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::metrics::{Rate, VariantSummary};
use document::{Block, Cell, Document, Section, Table};
pub use run::{RunData, RunError};

/// Errors of the report stage.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A run folder could not be read.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Writing an output failed.
    #[error("{path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A plot could not be drawn.
    #[error("{0}")]
    Plot(String),
    /// Runs that cannot be compared.
    #[error("{0}")]
    Incompatible(String),
    /// A bad option.
    #[error("{0}")]
    Usage(String),
}

/// Published figures to show beside a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// Goh et al., Distill 2021.
    Distill,
}

impl Reference {
    /// Parses `--reference`.
    pub fn parse(s: &str) -> Result<Reference, ReportError> {
        match s {
            "distill" => Ok(Reference::Distill),
            other => Err(ReportError::Usage(format!(
                "--reference: `{other}` is not known (known: distill)"
            ))),
        }
    }
}

/// Report options.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Published figures to add.
    pub reference: Option<Reference>,
    /// Examples of each outcome (successes, failures) in the grid.
    pub examples_per_outcome: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            reference: None,
            examples_per_outcome: 6,
        }
    }
}

/// `12.3% [8.1, 17.9]` with the exact value kept.
pub fn rate_cell(r: Option<Rate>) -> Cell {
    match r {
        Some(r) => Cell::number(
            format!(
                "{:.1}% [{:.1}, {:.1}]",
                100.0 * r.value,
                100.0 * r.lo,
                100.0 * r.hi
            ),
            r.value,
        ),
        None => Cell::none(),
    }
}

fn num_cell(v: Option<f64>, decimals: usize) -> Cell {
    match v {
        Some(v) => {
            let shown = format!("{v:.decimals$}");
            // A tiny negative mean prints as "-0.0000": show it as zero.
            let shown = match shown.strip_prefix('-') {
                Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
                _ => shown,
            };
            Cell::number(shown, v)
        }
        None => Cell::none(),
    }
}

fn headers(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The rate a report calls "success" for a run: Distill's fraction changed to the target when
/// the attacks are targeted, else TextAttack's attack success rate, else the flip rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessMetric {
    /// `fraction_changed_to`.
    ChangedToTarget,
    /// `attack_success_rate`.
    AttackSuccessRate,
    /// `flip_rate`.
    FlipRate,
}

impl SuccessMetric {
    /// The metric that applies to these variants.
    pub fn for_variants(vs: &[VariantSummary]) -> SuccessMetric {
        if vs.iter().any(|v| v.fraction_changed_to.is_some()) {
            SuccessMetric::ChangedToTarget
        } else if vs.iter().any(|v| v.attack_success_rate.is_some()) {
            SuccessMetric::AttackSuccessRate
        } else {
            SuccessMetric::FlipRate
        }
    }

    /// Its value for one variant.
    pub fn of(self, v: &VariantSummary) -> Option<Rate> {
        match self {
            SuccessMetric::ChangedToTarget => v.fraction_changed_to,
            SuccessMetric::AttackSuccessRate => v.attack_success_rate,
            SuccessMetric::FlipRate => Some(v.flip_rate),
        }
    }

    /// Axis label.
    pub fn label(self) -> &'static str {
        match self {
            SuccessMetric::ChangedToTarget => "changed to target (Distill)",
            SuccessMetric::AttackSuccessRate => "attack success rate (TextAttack)",
            SuccessMetric::FlipRate => "top-1 flip rate",
        }
    }
}

/// The swept `key=value` parts of a variant name (`attack[/case][/key=value…]`).
pub fn variant_params(name: &str) -> Vec<(String, String)> {
    name.split('/')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The variant name without its `key=…` part: the family a swept field varies within.
fn family_without(name: &str, key: &str) -> String {
    name.split('/')
        .filter(|p| p.split_once('=').map(|(k, _)| k != key).unwrap_or(true))
        .collect::<Vec<_>>()
        .join("/")
}

/// A dose-response figure: a swept field and the success of each family along it.
#[derive(Debug, Clone)]
pub struct DoseResponse {
    /// The swept field (`size_frac`, `opacity`, …).
    pub field: String,
    /// Numeric fields give lines; the others bars.
    pub numeric: bool,
    /// Family → (value, rate) points in variant order.
    pub series: Vec<(String, Vec<(String, Rate)>)>,
}

/// Every field swept over at least two values within some family.
pub fn dose_responses(vs: &[VariantSummary], metric: SuccessMetric) -> Vec<DoseResponse> {
    let mut fields: Vec<String> = Vec::new();
    for v in vs {
        for (k, _) in variant_params(&v.variant) {
            if !fields.contains(&k) {
                fields.push(k);
            }
        }
    }
    let mut out = Vec::new();
    for field in fields {
        let mut families: Vec<(String, Vec<(String, Rate)>)> = Vec::new();
        for v in vs {
            let Some(value) = variant_params(&v.variant)
                .into_iter()
                .find(|(k, _)| *k == field)
                .map(|(_, x)| x)
            else {
                continue;
            };
            let Some(rate) = metric.of(v) else { continue };
            let fam = family_without(&v.variant, &field);
            match families.iter_mut().find(|(f, _)| *f == fam) {
                Some((_, pts)) => pts.push((value, rate)),
                None => families.push((fam, vec![(value, rate)])),
            }
        }
        families.retain(|(_, pts)| pts.len() >= 2);
        if families.is_empty() {
            continue;
        }
        let numeric = families
            .iter()
            .all(|(_, pts)| pts.iter().all(|(x, _)| x.parse::<f64>().is_ok()));
        out.push(DoseResponse {
            field,
            numeric,
            series: families,
        });
    }
    out
}

/// Series drawn per figure at most; the rest are listed in a note.
const MAX_SERIES: usize = 8;

fn dose_blocks(vs: &[VariantSummary], metric: SuccessMetric) -> Result<Vec<Block>, ReportError> {
    let mut blocks = Vec::new();
    for d in dose_responses(vs, metric) {
        let shown = &d.series[..d.series.len().min(MAX_SERIES)];
        let title = format!("{} vs {}", metric.label(), d.field);
        let svg = if d.numeric {
            let series: Vec<plots::Series> = shown
                .iter()
                .map(|(f, pts)| {
                    (
                        f.clone(),
                        pts.iter()
                            .map(|(x, r)| (x.parse::<f64>().unwrap_or(0.0), *r))
                            .collect(),
                    )
                })
                .collect();
            plots::line_chart(&title, &d.field, metric.label(), &series)
        } else {
            let field = &d.field;
            let items: Vec<(String, Rate)> = shown
                .iter()
                .flat_map(|(f, pts)| {
                    pts.iter()
                        .map(move |(x, r)| (format!("{f} · {field}={x}"), *r))
                })
                .collect();
            plots::bar_chart(&title, metric.label(), &items)
        }
        .map_err(ReportError::Plot)?;
        blocks.push(Block::Plot { title, svg });
        if d.series.len() > MAX_SERIES {
            blocks.push(Block::Para(format!(
                "{} more families swept over {} are in the summary table.",
                d.series.len() - MAX_SERIES,
                d.field
            )));
        }
    }
    // Attack area (L0) → success, one line per attack.
    let mut by_attack: Vec<plots::Series> = Vec::new();
    for v in vs {
        let Some(rate) = metric.of(v) else { continue };
        let attack = v.variant.split('/').next().unwrap_or("").to_string();
        let point = (v.avg_img_l0_norm_diff, rate);
        match by_attack.iter_mut().find(|(a, _)| *a == attack) {
            Some((_, pts)) => pts.push(point),
            None => by_attack.push((attack, vec![point])),
        }
    }
    by_attack.retain(|(_, p)| p.len() >= 2 && p.iter().any(|(x, _)| *x > 0.0));
    if !by_attack.is_empty() {
        by_attack.truncate(MAX_SERIES);
        let title = format!("{} vs fraction of pixels changed (L0)", metric.label());
        let svg = plots::line_chart(&title, "L0 fraction", metric.label(), &by_attack)
            .map_err(ReportError::Plot)?;
        blocks.push(Block::Plot { title, svg });
    }
    if blocks.is_empty() {
        blocks.push(Block::Para(
            "No field was swept over two or more values, so there is no dose-response to draw."
                .into(),
        ));
    }
    Ok(blocks)
}

fn summary_tables(vs: &[VariantSummary]) -> Vec<Block> {
    let distill: Vec<Vec<Cell>> = vs
        .iter()
        .map(|v| {
            vec![
                Cell::text(&v.variant),
                Cell::text(v.target.clone().unwrap_or_else(|| "–".into())),
                Cell::number(
                    (v.records - v.errors).to_string(),
                    (v.records - v.errors) as f64,
                ),
                rate_cell(v.fraction_changed_to),
                rate_cell(v.fraction_already_equal),
                rate_cell(v.fraction_changed_away),
                rate_cell(v.fraction_both_results_not_target),
                Cell::number(
                    format!("{:.4}", v.avg_img_l0_norm_diff),
                    v.avg_img_l0_norm_diff,
                ),
            ]
        })
        .collect();
    let robust: Vec<Vec<Cell>> = vs
        .iter()
        .map(|v| {
            vec![
                Cell::text(&v.variant),
                rate_cell(v.clean_accuracy),
                rate_cell(v.attacked_accuracy),
                rate_cell(v.clean_top5_accuracy),
                rate_cell(v.attacked_top5_accuracy),
                rate_cell(Some(v.flip_rate)),
                rate_cell(v.attack_success_rate),
                num_cell(v.accuracy_drop, 4),
                num_cell(v.mean_true_prob_drop, 4),
                num_cell(v.mean_target_rank, 1),
                Cell::number(v.errors.to_string(), v.errors as f64),
            ]
        })
        .collect();
    vec![
        Block::Para(
            "Distill's fields for targeted attacks (Goh et al. 2021), each with its Wilson 95 % \
             interval; n counts images evaluated (errors excluded)."
                .into(),
        ),
        Block::Table(Table {
            headers: headers(&[
                "variant",
                "target",
                "n",
                "fraction_changed_to",
                "fraction_already_equal",
                "fraction_changed_away",
                "fraction_both_results_not_target",
                "avg_img_l0_norm_diff",
            ]),
            rows: distill,
            class: "summary distill".into(),
        }),
        Block::Para(
            "Robustness metrics: top-1/top-5 accuracy clean and attacked, flip rate, attack \
             success rate (TextAttack: of the images right when clean, the fraction wrong when \
             attacked), accuracy drop, mean drop of P(true class), mean rank of the target."
                .into(),
        ),
        Block::Table(Table {
            headers: headers(&[
                "variant",
                "clean accuracy",
                "attacked accuracy",
                "clean top-5",
                "attacked top-5",
                "flip rate",
                "attack success rate",
                "accuracy drop",
                "mean P(true) drop",
                "mean target rank",
                "errors",
            ]),
            rows: robust,
            class: "summary robustness".into(),
        }),
    ]
}

fn changed_to_table(run: &RunData) -> Table {
    let mut per: BTreeMap<&str, (u64, u64, BTreeMap<&str, u64>)> = BTreeMap::new();
    for r in run.records.iter().filter(|r| r.is_ok()) {
        let e = per.entry(r.variant.as_str()).or_default();
        e.1 += 1;
        let (c, a) = (
            r.clean_top1().unwrap_or(""),
            r.attacked_top1().unwrap_or(""),
        );
        if a != c {
            e.0 += 1;
            *e.2.entry(a).or_default() += 1;
        }
    }
    let rows = run
        .summary
        .variants
        .iter()
        .filter_map(|v| per.get(v.variant.as_str()).map(|p| (v, p)))
        .map(|(v, (flips, n, to))| {
            let mut top: Vec<(&str, u64)> = to.iter().map(|(k, c)| (*k, *c)).collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            vec![
                Cell::text(&v.variant),
                Cell::text(v.target.clone().unwrap_or_else(|| "–".into())),
                Cell::number(format!("{flips} / {n}"), *flips as f64),
                Cell::text(
                    top.iter()
                        .take(5)
                        .map(|(l, c)| format!("{l} ({c})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ]
        })
        .collect();
    Table {
        headers: headers(&["variant", "target", "top-1 changed", "changed to (count)"]),
        rows,
        class: "changed-to".into(),
    }
}

fn provenance_blocks(run: &RunData) -> Vec<Block> {
    let mut rows = Vec::new();
    let mut details = Vec::new();
    if let Some(obj) = run.provenance_json.as_object() {
        for (k, v) in obj {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.contains('\n') {
                details.push(Block::Details {
                    summary: k.clone(),
                    text,
                });
            } else {
                rows.push(vec![Cell::text(k), Cell::text(text)]);
            }
        }
    }
    let mut blocks = vec![Block::Table(Table {
        headers: headers(&["field", "value"]),
        rows,
        class: "provenance".into(),
    })];
    blocks.extend(details);
    blocks
}

fn errors_blocks(run: &RunData) -> Vec<Block> {
    let errs: Vec<&crate::records::Record> =
        run.records.iter().filter(|r| r.error.is_some()).collect();
    if errs.is_empty() {
        return vec![Block::Para(
            "No error records: every image was read.".into(),
        )];
    }
    vec![
        Block::Para(format!(
            "{} error records (images that could not be read; they are counted, not scored).",
            errs.len()
        )),
        Block::Table(Table {
            headers: headers(&["sample", "variant", "error"]),
            rows: errs
                .iter()
                .map(|r| {
                    vec![
                        Cell::text(&r.sample_id),
                        Cell::text(&r.variant),
                        Cell::text(r.error.clone().unwrap_or_default()),
                    ]
                })
                .collect(),
            class: "errors".into(),
        }),
    ]
}

/// The first line of a report: random-weights warning (when so), model, dataset, n, date.
pub fn first_line(run: &RunData) -> String {
    let p = &run.provenance;
    let mut s = String::new();
    if p.random_weights {
        s.push_str(crate::cli::resolve::RANDOM_WEIGHTS_BANNER);
        s.push_str(" · ");
    }
    if p.toy_model {
        s.push_str(crate::toy::TOY_BANNER);
        s.push_str(" · ");
    }
    s.push_str(&format!(
        "model {} · dataset {} · n = {} images, {} records · {}",
        p.model,
        p.dataset,
        run.images(),
        run.summary.records,
        p.started.get(..10).unwrap_or(&p.started)
    ));
    if p.scoring != "softmax" {
        s.push_str(&format!(" · {} scoring", p.scoring));
    }
    if run.unfinished {
        s.push_str(" · unfinished run");
    }
    s
}

/// Builds the report document of a run.
pub fn build_report(run: &RunData, opts: &ReportOptions) -> Result<Document, ReportError> {
    let vs = &run.summary.variants;
    let metric = SuccessMetric::for_variants(vs);
    let mut sections = vec![Section {
        id: "summary".into(),
        title: "Summary per attack variant".into(),
        blocks: summary_tables(vs),
    }];
    let mut success = Vec::new();
    let items: Vec<(String, Rate)> = vs
        .iter()
        .filter_map(|v| metric.of(v).map(|r| (v.variant.clone(), r)))
        .collect();
    success.push(Block::Plot {
        title: format!("{} per attack, 95 % intervals", metric.label()),
        svg: plots::bar_chart(metric.label(), metric.label(), &items).map_err(ReportError::Plot)?,
    });
    if metric == SuccessMetric::ChangedToTarget {
        let asr: Vec<(String, Rate)> = vs
            .iter()
            .filter_map(|v| v.attack_success_rate.map(|r| (v.variant.clone(), r)))
            .collect();
        if !asr.is_empty() {
            let l = SuccessMetric::AttackSuccessRate.label();
            success.push(Block::Plot {
                title: format!("{l} per attack, 95 % intervals"),
                svg: plots::bar_chart(l, l, &asr).map_err(ReportError::Plot)?,
            });
        }
    }
    sections.push(Section {
        id: "success".into(),
        title: "Success per attack".into(),
        blocks: success,
    });
    sections.push(Section {
        id: "dose-response".into(),
        title: "Dose-response".into(),
        blocks: dose_blocks(vs, metric)?,
    });
    sections.push(Section {
        id: "changed-to".into(),
        title: "Where the predictions went".into(),
        blocks: vec![
            Block::Para(
                "Among images whose top-1 changed under the attack, the classes it changed to."
                    .into(),
            ),
            Block::Table(changed_to_table(run)),
        ],
    });
    if let Some(blocks) = text_area::blocks(&run.records) {
        sections.push(Section {
            id: "text-area".into(),
            title: "Attack success against readable text".into(),
            blocks,
        });
    }
    let (examples, note) = examples::examples(run, opts.examples_per_outcome);
    let mut ex_blocks = Vec::new();
    if let Some(n) = note {
        ex_blocks.push(Block::Para(format!("Thumbnails unavailable: {n}.")));
    }
    ex_blocks.push(Block::Para(
        "Clean vs attacked model inputs with the top-3 labels before and after; successes and \
         failures, chosen by a seeded hash of (image, variant)."
            .into(),
    ));
    ex_blocks.push(Block::Examples(examples));
    sections.push(Section {
        id: "examples".into(),
        title: "Examples".into(),
        blocks: ex_blocks,
    });
    sections.push(Section {
        id: "errors".into(),
        title: "Error records".into(),
        blocks: errors_blocks(run),
    });
    if opts.reference == Some(Reference::Distill) {
        sections.push(Section {
            id: "reference".into(),
            title: "Published figures (Distill 2021) beside ours".into(),
            blocks: reference::distill_blocks(run),
        });
    }
    sections.push(Section {
        id: "provenance".into(),
        title: "Provenance".into(),
        blocks: provenance_blocks(run),
    });
    Ok(Document {
        title: format!("typoclip report: {}", run.name()),
        first_line: first_line(run),
        banner: if run.provenance.toy_model {
            run.provenance.caveat()
        } else {
            run.provenance.random_weights.then(|| {
                format!(
                    "{} — these numbers describe random weights and are not findings about CLIP.",
                    run.provenance.banner()
                )
            })
        },
        sections,
    })
}

/// Writes `bytes` to `path` atomically ([`crate::sweep::write_atomic`]), as a report error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    crate::sweep::write_atomic(path, bytes).map_err(|e| match e {
        crate::sweep::SweepError::Io { path, message } => ReportError::Write { path, message },
        other => ReportError::Write {
            path: path.display().to_string(),
            message: other.to_string(),
        },
    })
}

/// `typoclip report`: writes `report.html` and `report.md` into the run folder; returns their
/// paths.
pub fn write_report(dir: &Path, opts: &ReportOptions) -> Result<(PathBuf, PathBuf), ReportError> {
    let run = RunData::load(dir)?;
    let doc = build_report(&run, opts)?;
    let html = dir.join("report.html");
    let md = dir.join("report.md");
    write_file(&html, doc.to_html().as_bytes())?;
    write_file(&md, doc.to_markdown().as_bytes())?;
    Ok((html, md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_families() {
        assert_eq!(
            variant_params("size/ipod/size_frac=0.1/opacity=0.5"),
            vec![
                ("size_frac".to_string(), "0.1".to_string()),
                ("opacity".to_string(), "0.5".to_string())
            ]
        );
        assert_eq!(
            family_without("size/ipod/size_frac=0.1/opacity=0.5", "size_frac"),
            "size/ipod/opacity=0.5"
        );
    }

    fn vs(name: &str, k: u64) -> VariantSummary {
        let recs: Vec<crate::records::Record> = Vec::new();
        let refs: Vec<&crate::records::Record> = recs.iter().collect();
        let mut v = crate::metrics::summarize_variant(name, &refs);
        v.fraction_changed_to = Some(Rate::new(k, 10));
        v
    }

    #[test]
    fn dose_response_groups_numeric_and_categorical_fields() {
        let v = vec![
            vs("a/size=0.1", 1),
            vs("a/size=0.2", 3),
            vs("a/size=0.3", 5),
            vs("p/pos=center", 2),
            vs("p/pos=corner", 4),
            vs("single/x=1", 4),
        ];
        let d = dose_responses(&v, SuccessMetric::ChangedToTarget);
        assert_eq!(d.len(), 2, "x has one value only: {d:?}");
        assert!(d[0].numeric && d[0].field == "size");
        assert_eq!(d[0].series[0].1.len(), 3);
        assert!(!d[1].numeric && d[1].field == "pos");
    }
}
