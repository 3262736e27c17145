//! Comparing runs (models or defenses) on the same images and attacks: a leaderboard of pooled
//! clean / attacked accuracy, attack success and their change against a baseline run, each with
//! its 95 % interval, and McNemar's exact test on the per-image paired outcomes. Runs whose
//! dataset, variants, scoring mode or label set differ are refused unless forced.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::document::{Block, Cell, Document, Section, Table};
use super::run::RunData;
use super::{plots, rate_cell, write_file, ReportError};
use crate::metrics::Rate;
use crate::records::Record;

/// McNemar's test on paired binary outcomes (correct / wrong) of a run against the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McNemar {
    /// Pairs compared.
    pub pairs: u64,
    /// Baseline right, this run wrong.
    pub worse: u64,
    /// Baseline wrong, this run right.
    pub better: u64,
    /// Exact two-sided p-value (binomial on the discordant pairs).
    pub p_value: f64,
}

/// Exact two-sided McNemar p-value for `b` and `c` discordant pairs.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X ≤ k) for X ~ Binomial(n, 1/2), summed in log space.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_term = ln_half_n; // i = 0: C(n,0) / 2^n
    let mut terms = vec![ln_term];
    for i in 0..k {
        ln_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        terms.push(ln_term);
    }
    let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let cdf = m.exp() * terms.iter().map(|t| (t - m).exp()).sum::<f64>();
    (2.0 * cdf).min(1.0)
}

/// Pooled metrics of one run.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    /// Top-1 accuracy on the clean images (each image once).
    pub clean_accuracy: Option<Rate>,
    /// Top-1 accuracy on every attacked image.
    pub attacked_accuracy: Option<Rate>,
    /// TextAttack ASR pooled over every variant.
    pub attack_success_rate: Option<Rate>,
    /// Distill's fraction changed to the target, pooled.
    pub changed_to_target: Option<Rate>,
    /// Top-1 flip rate, pooled.
    pub flip_rate: Rate,
}

fn rate_opt(k: u64, n: u64) -> Option<Rate> {
    (n > 0).then(|| Rate::new(k, n))
}

fn clean_key(r: &Record) -> &str {
    r.clean_id.as_deref().unwrap_or(&r.sample_id)
}

/// Pools a run's records.
pub fn run_metrics(records: &[Record]) -> RunMetrics {
    let ok: Vec<&Record> = records.iter().filter(|r| r.is_ok()).collect();
    let mut seen = BTreeSet::new();
    let (mut cn, mut ck) = (0, 0);
    let (mut an, mut ak, mut succ, mut fail, mut tn, mut tk, mut flips) = (0, 0, 0, 0, 0, 0, 0);
    for r in &ok {
        let (c, a) = (
            r.clean_top1().unwrap_or(""),
            r.attacked_top1().unwrap_or(""),
        );
        flips += (c != a) as u64;
        if let Some(y) = r.true_label.as_deref() {
            if seen.insert(clean_key(r)) {
                cn += 1;
                ck += (c == y) as u64;
            }
            an += 1;
            ak += (a == y) as u64;
            if c == y {
                if a == y {
                    fail += 1
                } else {
                    succ += 1
                }
            }
        }
        if let Some(t) = r.target.as_deref() {
            tn += 1;
            tk += (c != t && a == t) as u64;
        }
    }
    RunMetrics {
        clean_accuracy: rate_opt(ck, cn),
        attacked_accuracy: rate_opt(ak, an),
        attack_success_rate: rate_opt(succ, succ + fail),
        changed_to_target: rate_opt(tk, tn),
        flip_rate: Rate::new(flips, ok.len() as u64),
    }
}

/// McNemar on (image, variant) pairs shared by both runs; `clean` compares the clean
/// predictions (each image once), otherwise the attacked ones.
pub fn paired_test(base: &[Record], run: &[Record], clean: bool) -> Option<McNemar> {
    let key = |r: &Record| {
        if clean {
            clean_key(r).to_string()
        } else {
            format!("{}#{}", r.sample_id, r.variant)
        }
    };
    let correct = |r: &Record| {
        let y = r.true_label.as_deref()?;
        let top = if clean {
            r.clean_top1()
        } else {
            r.attacked_top1()
        }?;
        Some(top == y)
    };
    let mut b: HashMap<String, bool> = HashMap::new();
    for r in base.iter().filter(|r| r.is_ok()) {
        if let Some(c) = correct(r) {
            b.entry(key(r)).or_insert(c);
        }
    }
    let (mut pairs, mut worse, mut better) = (0, 0, 0);
    let mut done = BTreeSet::new();
    for r in run.iter().filter(|r| r.is_ok()) {
        let k = key(r);
        let (Some(&bc), Some(rc)) = (b.get(&k), correct(r)) else {
            continue;
        };
        if !done.insert(k) {
            continue;
        }
        pairs += 1;
        worse += (bc && !rc) as u64;
        better += (!bc && rc) as u64;
    }
    (pairs > 0).then(|| McNemar {
        pairs,
        worse,
        better,
        p_value: mcnemar_exact(worse, better),
    })
}

/// What differs between two runs that makes their numbers incomparable (empty: comparable).
pub fn differences(base: &RunData, run: &RunData) -> Vec<String> {
    let (a, b) = (&base.provenance, &run.provenance);
    let mut out = Vec::new();
    if a.dataset != b.dataset || a.file_list_hash != b.file_list_hash {
        out.push(format!(
            "dataset differs ({} {} vs {} {})",
            a.dataset,
            &a.file_list_hash.get(..12).unwrap_or(&a.file_list_hash),
            b.dataset,
            &b.file_list_hash.get(..12).unwrap_or(&b.file_list_hash)
        ));
    }
    let va: BTreeSet<String> = base.variant_names().into_iter().collect();
    let vb: BTreeSet<String> = run.variant_names().into_iter().collect();
    if va != vb {
        let only_a: Vec<_> = va.difference(&vb).take(3).cloned().collect();
        let only_b: Vec<_> = vb.difference(&va).take(3).cloned().collect();
        out.push(format!(
            "variant sets differ (only in baseline: [{}]; only here: [{}])",
            only_a.join(", "),
            only_b.join(", ")
        ));
    }
    if a.mode != b.mode {
        out.push(format!("scoring mode differs ({} vs {})", a.mode, b.mode));
    }
    if a.labels_hash != b.labels_hash {
        out.push(format!("label set differs ({} vs {})", a.labels, b.labels));
    }
    out
}

/// Compare options.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The run others are measured against (default: the first).
    pub baseline: Option<PathBuf>,
    /// Compare even when datasets or variants differ.
    pub force: bool,
    /// Folder for comparison.html / .md / .csv.
    pub out: PathBuf,
}

/// One leaderboard row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Run folder name.
    pub name: String,
    /// The model.
    pub model: String,
    /// Defenses, as recorded.
    pub defenses: Vec<String>,
    /// Pooled metrics.
    pub metrics: RunMetrics,
    /// Clean accuracy minus the baseline's (points as a fraction).
    pub clean_change: Option<f64>,
    /// Attacked accuracy minus the baseline's.
    pub attacked_change: Option<f64>,
    /// ASR minus the baseline's.
    pub asr_change: Option<f64>,
    /// Attacked accuracy gained per point of clean accuracy lost (when clean accuracy fell).
    pub gain_per_clean_point: Option<f64>,
    /// Run time in seconds.
    pub duration_s: Option<f64>,
    /// Run time / baseline's.
    pub time_ratio: Option<f64>,
    /// Paired test on attacked predictions.
    pub attacked_test: Option<McNemar>,
    /// Paired test on clean predictions.
    pub clean_test: Option<McNemar>,
    /// Random weights.
    pub random: bool,
    /// The positive-control toy.
    pub toy: bool,
    /// What differs from the baseline (forced comparisons).
    pub differs: Vec<String>,
    /// Fitted defenses (spec, artifact and calibration split).
    pub fitted: Vec<(String, crate::defense::FittedRecord)>,
    /// The model's parameter count, as the sweep counted it.
    pub parameters: Option<u64>,
    /// The model's pretraining set, where the registry knows it.
    pub pretraining: Option<super::zoo::Pretraining>,
}

fn diff(a: Option<Rate>, b: Option<Rate>) -> Option<f64> {
    Some(a?.value - b?.value)
}

/// Loads the runs and builds the leaderboard rows (the baseline first).
pub fn leaderboard(dirs: &[PathBuf], opts: &CompareOptions) -> Result<Vec<Row>, ReportError> {
    if dirs.len() < 2 && opts.baseline.is_none() {
        return Err(ReportError::Usage(
            "compare: give at least two run folders".into(),
        ));
    }
    let mut runs = Vec::new();
    for d in dirs {
        runs.push(RunData::load(d)?);
    }
    let base_idx = match &opts.baseline {
        None => 0,
        Some(b) => match dirs.iter().position(|d| same_path(d, b)) {
            Some(i) => i,
            None => {
                runs.insert(0, RunData::load(b)?);
                0
            }
        },
    };
    let base_run = runs.remove(base_idx);
    runs.insert(0, base_run);
    let base = &runs[0];
    let base_m = run_metrics(&base.records);
    let mut rows = Vec::new();
    for run in &runs {
        let differs = differences(base, run);
        if !differs.is_empty() && !opts.force {
            return Err(ReportError::Incompatible(format!(
                "{}: cannot compare with baseline {}: {} (pass --force to compare anyway)",
                run.dir.display(),
                base.dir.display(),
                differs.join("; ")
            )));
        }
        let m = run_metrics(&run.records);
        let clean_change = diff(m.clean_accuracy, base_m.clean_accuracy);
        let attacked_change = diff(m.attacked_accuracy, base_m.attacked_accuracy);
        let is_base = std::ptr::eq(run, base);
        rows.push(Row {
            name: run.name(),
            model: run.provenance.model.clone(),
            defenses: run.defenses(),
            clean_change,
            attacked_change,
            asr_change: diff(m.attack_success_rate, base_m.attack_success_rate),
            gain_per_clean_point: match (clean_change, attacked_change) {
                (Some(c), Some(a)) if c < 0.0 => Some(a / -c),
                _ => None,
            },
            duration_s: run.duration_s(),
            time_ratio: match (run.duration_s(), base.duration_s()) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
            attacked_test: (!is_base)
                .then(|| paired_test(&base.records, &run.records, false))
                .flatten(),
            clean_test: (!is_base)
                .then(|| paired_test(&base.records, &run.records, true))
                .flatten(),
            random: run.provenance.random_weights,
            toy: run.provenance.toy_model,
            differs,
            fitted: run
                .provenance
                .defenses
                .iter()
                .filter_map(|d| d.fitted.clone().map(|f| (d.spec.clone(), f)))
                .collect(),
            parameters: run.provenance.model_parameters,
            pretraining: super::zoo::pretraining_of(&run.provenance),
            metrics: m,
        });
    }
    Ok(rows)
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn signed(v: Option<f64>, scale: f64, unit: &str) -> Cell {
    match v {
        Some(v) => Cell::number(format!("{:+.1}{unit}", v * scale), v),
        None => Cell::none(),
    }
}

/// A p-value in 3 significant digits (scientific below 0.001).
fn fmt_p(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.3}")
    } else {
        format!("{p:.2e}")
    }
}

fn test_cell(t: Option<McNemar>) -> Cell {
    match t {
        Some(t) => Cell::number(
            format!(
                "p = {} (+{} / −{} of {})",
                fmt_p(t.p_value),
                t.better,
                t.worse,
                t.pairs
            ),
            t.p_value,
        ),
        None => Cell::none(),
    }
}

/// The comparison as a document.
pub fn comparison_document(rows: &[Row]) -> Result<Document, ReportError> {
    let any_random = rows.iter().any(|r| r.random);
    let base = &rows[0];
    let mut first = String::new();
    if any_random {
        first.push_str(crate::cli::resolve::RANDOM_WEIGHTS_BANNER);
        first.push_str(" · ");
    }
    if rows.iter().any(|r| r.toy) {
        first.push_str(crate::toy::TOY_BANNER);
        first.push_str(" · ");
    }
    first.push_str(&format!(
        "comparison of {} runs · baseline {} · model {}",
        rows.len(),
        base.name,
        base.model
    ));
    let h = |s: &str| s.to_string();
    let table = Table {
        headers: vec![
            h("run"),
            h("model"),
            h("defenses"),
            h("clean accuracy"),
            h("Δ clean"),
            h("attacked accuracy"),
            h("Δ attacked"),
            h("attack success rate"),
            h("Δ ASR"),
            h("changed to target"),
            h("flip rate"),
            h("attacked gained per clean point lost"),
            h("McNemar attacked vs baseline"),
            h("McNemar clean vs baseline"),
            h("run time (s)"),
            h("time vs baseline"),
        ],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    Cell::text(&r.name),
                    Cell::text(&r.model),
                    Cell::text(if r.defenses.is_empty() {
                        "none".to_string()
                    } else {
                        r.defenses.join(" → ")
                    }),
                    rate_cell(r.metrics.clean_accuracy),
                    signed(r.clean_change, 100.0, " pt"),
                    rate_cell(r.metrics.attacked_accuracy),
                    signed(r.attacked_change, 100.0, " pt"),
                    rate_cell(r.metrics.attack_success_rate),
                    signed(r.asr_change, 100.0, " pt"),
                    rate_cell(r.metrics.changed_to_target),
                    rate_cell(Some(r.metrics.flip_rate)),
                    r.gain_per_clean_point
                        .map(|g| Cell::number(format!("{g:.2}"), g))
                        .unwrap_or_else(Cell::none),
                    test_cell(r.attacked_test),
                    test_cell(r.clean_test),
                    r.duration_s
                        .map(|d| Cell::number(format!("{d:.0}"), d))
                        .unwrap_or_else(Cell::none),
                    r.time_ratio
                        .map(|t| Cell::number(format!("{t:.2}×"), t))
                        .unwrap_or_else(Cell::none),
                ]
            })
            .collect(),
        class: "leaderboard".into(),
    };
    let mut blocks = vec![
        Block::Para(
            "Pooled over every (image, variant) record; clean accuracy counts each image once. \
             Intervals are Wilson 95 %. Δ are against the baseline (first row). McNemar: exact \
             two-sided test on the images whose correctness differs (+ better, − worse)."
                .into(),
        ),
        Block::Table(table),
    ];
    for (title, get) in [
        (
            "attacked accuracy per run",
            (|r: &Row| r.metrics.attacked_accuracy) as fn(&Row) -> Option<Rate>,
        ),
        ("attack success rate per run", |r: &Row| {
            r.metrics.attack_success_rate
        }),
        ("clean accuracy per run", |r: &Row| r.metrics.clean_accuracy),
    ] {
        let items: Vec<(String, Rate)> = rows
            .iter()
            .filter_map(|r| get(r).map(|v| (r.name.clone(), v)))
            .collect();
        if !items.is_empty() {
            blocks.push(Block::Plot {
                title: title.into(),
                svg: plots::bar_chart(title, title, &items).map_err(ReportError::Plot)?,
            });
        }
    }
    let mut notes = Vec::new();
    for r in rows.iter().filter(|r| !r.differs.is_empty()) {
        notes.push(Block::Para(format!(
            "{} (compared with --force): {}",
            r.name,
            r.differs.join("; ")
        )));
    }
    let mut sections = vec![
        Section {
            id: "leaderboard".into(),
            title: "Leaderboard".into(),
            blocks,
        },
        Section {
            id: "zoo".into(),
            title: "Accuracy drop vs model and pretraining-set size".into(),
            blocks: super::zoo::zoo_blocks(rows).map_err(ReportError::Plot)?,
        },
    ];
    let fitted_rows: Vec<Vec<Cell>> = rows
        .iter()
        .flat_map(|r| {
            r.fitted.iter().map(move |(spec, f)| {
                let c = &f.calibration;
                vec![
                    Cell::text(&r.name),
                    Cell::text(spec),
                    Cell::text(format!(
                        "{} ({})",
                        f.artifact,
                        f.sha256.get(..12).unwrap_or(&f.sha256)
                    )),
                    Cell::text(format!("{}: {} images", c.dataset, c.images.len())),
                    Cell::text(c.words.join(", ")),
                    Cell::text(c.fonts.join(", ")),
                    Cell::text(c.seed.to_string()),
                ]
            })
        })
        .collect();
    if !fitted_rows.is_empty() {
        sections.push(Section {
            id: "fitted".into(),
            title: "Fitted defenses and their calibration splits".into(),
            blocks: vec![
                Block::Para(
                    "Learned defenses were fitted on these calibration splits; typoclip refuses \
                     a sweep whose images, words or fonts overlap them."
                        .into(),
                ),
                Block::Table(Table {
                    headers: [
                        "run",
                        "defense",
                        "artifact",
                        "calibration images",
                        "words",
                        "fonts",
                        "seed",
                    ]
                    .map(String::from)
                    .to_vec(),
                    rows: fitted_rows,
                    class: "fitted".into(),
                }),
            ],
        });
    }
    if !notes.is_empty() {
        sections.push(Section {
            id: "differences".into(),
            title: "Differences between runs".into(),
            blocks: notes,
        });
    }
    Ok(Document {
        title: "typoclip comparison".into(),
        first_line: first,
        banner: any_random.then(|| {
            format!(
                "{} — at least one run used random weights; its numbers are not findings about CLIP.",
                crate::cli::resolve::RANDOM_WEIGHTS_BANNER
            )
        }),
        sections,
    })
}

fn csv_rows(rows: &[Row]) -> Result<Vec<u8>, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let rate = |r: Option<Rate>| -> [String; 3] {
        match r {
            Some(r) => [r.value, r.lo, r.hi].map(|x| format!("{x:.6}")),
            None => Default::default(),
        }
    };
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let mut header: Vec<String> = ["run", "model", "random_weights", "defenses"]
        .map(String::from)
        .to_vec();
    for m in [
        "clean_accuracy",
        "attacked_accuracy",
        "attack_success_rate",
        "changed_to_target",
        "flip_rate",
    ] {
        header.extend([m.to_string(), format!("{m}_lo"), format!("{m}_hi")]);
    }
    header.extend(
        [
            "clean_change",
            "attacked_change",
            "asr_change",
            "gain_per_clean_point",
            "mcnemar_attacked_p",
            "mcnemar_clean_p",
            "duration_s",
            "time_ratio",
        ]
        .map(String::from),
    );
    let werr = |e: csv::Error| ReportError::Write {
        path: "comparison.csv".into(),
        message: e.to_string(),
    };
    w.write_record(&header).map_err(werr)?;
    for r in rows {
        let mut rec = vec![
            r.name.clone(),
            r.model.clone(),
            r.random.to_string(),
            r.defenses.join(" -> "),
        ];
        for m in [
            r.metrics.clean_accuracy,
            r.metrics.attacked_accuracy,
            r.metrics.attack_success_rate,
            r.metrics.changed_to_target,
            Some(r.metrics.flip_rate),
        ] {
            rec.extend(rate(m));
        }
        rec.extend([
            opt(r.clean_change),
            opt(r.attacked_change),
            opt(r.asr_change),
            opt(r.gain_per_clean_point),
            opt(r.attacked_test.map(|t| t.p_value)),
            opt(r.clean_test.map(|t| t.p_value)),
            opt(r.duration_s),
            opt(r.time_ratio),
        ]);
        w.write_record(&rec).map_err(werr)?;
    }
    w.into_inner().map_err(|e| ReportError::Write {
        path: "comparison.csv".into(),
        message: e.to_string(),
    })
}

/// `typoclip compare`: writes comparison.html / .md / .csv into `opts.out`; returns the rows.
pub fn write_comparison(dirs: &[PathBuf], opts: &CompareOptions) -> Result<Vec<Row>, ReportError> {
    let rows = leaderboard(dirs, opts)?;
    let doc = comparison_document(&rows)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| ReportError::Write {
        path: opts.out.display().to_string(),
        message: e.to_string(),
    })?;
    let mut csv = Vec::new();
    if rows.iter().any(|r| r.random) {
        csv.extend_from_slice(
            format!("# {}\n", crate::cli::resolve::RANDOM_WEIGHTS_BANNER).as_bytes(),
        );
    }
    if rows.iter().any(|r| r.toy) {
        csv.extend_from_slice(format!("# {}\n", crate::toy::TOY_BANNER).as_bytes());
    }
    csv.extend(csv_rows(&rows)?);
    write_file(&opts.out.join("comparison.html"), doc.to_html().as_bytes())?;
    write_file(
        &opts.out.join("comparison.md"),
        doc.to_markdown().as_bytes(),
    )?;
    write_file(&opts.out.join("comparison.csv"), &csv)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_exact_matches_known_values() {
        // b = 0, c = 5: p = 2 * (1/2)^5 = 0.0625.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // b = 2, c = 8: 2 * (1 + 10 + 45) / 1024 = 0.109375.
        assert!((mcnemar_exact(2, 8) - 0.109_375).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large n stays finite and symmetric.
        let p = mcnemar_exact(4000, 4200);
        assert!(p > 0.0 && p < 0.05, "{p}");
        assert_eq!(p, mcnemar_exact(4200, 4000));
    }
}
