//! The metrics stage: pure functions from [`Record`]s to per-variant summaries, each rate with
//! its n and a Wilson 95 % interval.
//!
//! Targeted (the Distill study's table fields, Goh et al. 2021, typographic attack data): with
//! `c` = clean top-1, `a` = attacked top-1, `t` = target — `fraction_changed_to` (c≠t, a=t),
//! `fraction_already_equal` (c=t, a=t), `fraction_changed_away` (c=t, a≠t),
//! `fraction_both_results_not_target` (c≠t, a≠t), `avg_img_l0_norm_diff` (mean L0 fraction).
//! Untargeted: clean / attacked top-1 and top-5 accuracy, flip rate (a≠c), attack success rate in
//! TextAttack's sense (successes / (successes + failures), images misclassified when clean are
//! skipped), mean drop of P(true), mean rank of the target after the attack.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::records::Record;

/// A proportion with its Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Successes.
    pub k: u64,
    /// Trials.
    pub n: u64,
    /// k / n (0 when n = 0).
    pub value: f64,
    /// Wilson 95 % lower bound.
    pub lo: f64,
    /// Wilson 95 % upper bound.
    pub hi: f64,
}

/// z for a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval for `k` of `n` at `z`.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

impl Rate {
    /// `k` of `n` with its 95 % interval.
    pub fn new(k: u64, n: u64) -> Rate {
        let (lo, hi) = wilson(k, n, Z95);
        Rate {
            k,
            n,
            value: if n == 0 { 0.0 } else { k as f64 / n as f64 },
            lo,
            hi,
        }
    }
}

/// Everything measured for one attack variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantSummary {
    /// Variant name.
    pub variant: String,
    /// Target class, when the variant is targeted.
    pub target: Option<String>,
    /// Records (including errors).
    pub records: u64,
    /// Error records.
    pub errors: u64,
    /// Distill: clean ≠ target, attacked = target.
    pub fraction_changed_to: Option<Rate>,
    /// Distill: clean = target, attacked = target.
    pub fraction_already_equal: Option<Rate>,
    /// Distill: clean = target, attacked ≠ target.
    pub fraction_changed_away: Option<Rate>,
    /// Distill: neither prediction is the target.
    pub fraction_both_results_not_target: Option<Rate>,
    /// Distill: mean fraction of changed pixels.
    pub avg_img_l0_norm_diff: f64,
    /// Top-1 accuracy on clean images (records with a true label).
    pub clean_accuracy: Option<Rate>,
    /// Top-1 accuracy on attacked images.
    pub attacked_accuracy: Option<Rate>,
    /// Top-5 accuracy, clean.
    pub clean_top5_accuracy: Option<Rate>,
    /// Top-5 accuracy, attacked.
    pub attacked_top5_accuracy: Option<Rate>,
    /// Attacked top-1 differs from clean top-1.
    pub flip_rate: Rate,
    /// TextAttack ASR: of the images correct when clean, the fraction wrong when attacked.
    pub attack_success_rate: Option<Rate>,
    /// Clean minus attacked top-1 accuracy (SCAM's accuracy drop, e.g. NoSCAM → SCAM).
    pub accuracy_drop: Option<f64>,
    /// Mean of P(true | clean) − P(true | attacked).
    pub mean_true_prob_drop: Option<f64>,
    /// Mean 1-based rank of the target class after the attack.
    pub mean_target_rank: Option<f64>,
}

fn rate_if(k: u64, n: u64) -> Option<Rate> {
    (n > 0).then(|| Rate::new(k, n))
}

/// An exact, order-independent sum of finite `f64`s: Shewchuk's non-overlapping partials with
/// one correctly rounded result at the end, the algorithm of Python's `math.fsum`. The result is
/// the exact sum rounded once, so it does not depend on the order the terms arrive in — which is
/// what keeps summaries byte-identical however a run was interrupted, sharded or resumed.
#[derive(Debug, Clone, Default)]
pub struct ExactSum {
    partials: Vec<f64>,
}

impl ExactSum {
    /// Adds one term (finite; a non-finite term makes the sum meaningless, as with `fsum`).
    pub fn add(&mut self, mut x: f64) {
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    /// The exact sum, correctly rounded (ties to even).
    pub fn value(&self) -> f64 {
        let p = &self.partials;
        let Some(&last) = p.last() else {
            return 0.0;
        };
        let mut n = p.len() - 1;
        let mut hi = last;
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // Round half to even across the remaining partials, as `math.fsum` does.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

impl FromIterator<f64> for ExactSum {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        let mut s = ExactSum::default();
        for x in iter {
            s.add(x);
        }
        s
    }
}

/// The mean of `v` from its [`ExactSum`]: the same bits for any order of `v`.
pub fn exact_mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().copied().collect::<ExactSum>().value() / v.len() as f64)
}

/// Summarises the records of one variant.
pub fn summarize_variant(variant: &str, records: &[&Record]) -> VariantSummary {
    let ok: Vec<&&Record> = records.iter().filter(|r| r.is_ok()).collect();
    // A variant is targeted at one class only if every record names the same target.
    let target = ok
        .iter()
        .find_map(|r| r.target.clone())
        .filter(|t| ok.iter().all(|r| r.target.as_ref() == Some(t)));
    let (mut to, mut already, mut away, mut neither, mut n_t) = (0, 0, 0, 0, 0);
    let (mut clean_ok, mut att_ok, mut clean5, mut att5, mut n_true) = (0, 0, 0, 0, 0);
    let (mut flips, mut succ, mut fail) = (0, 0, 0);
    let mut drops = Vec::new();
    let mut ranks = Vec::new();
    let mut l0 = Vec::new();
    for r in &ok {
        let c = r.clean_top1().unwrap_or("");
        let a = r.attacked_top1().unwrap_or("");
        l0.push(r.l0);
        flips += (a != c) as u64;
        if let Some(t) = r.target.as_deref() {
            n_t += 1;
            match (c == t, a == t) {
                (false, true) => to += 1,
                (true, true) => already += 1,
                (true, false) => away += 1,
                (false, false) => neither += 1,
            }
        }
        if let Some(rank) = r.target_rank_attacked {
            ranks.push(rank as f64);
        }
        if let Some(y) = r.true_label.as_deref() {
            n_true += 1;
            let cc = c == y;
            let ac = a == y;
            clean_ok += cc as u64;
            att_ok += ac as u64;
            clean5 += r.clean_top5.iter().any(|s| s.label == y) as u64;
            att5 += r.attacked_top5.iter().any(|s| s.label == y) as u64;
            if cc {
                if ac {
                    fail += 1;
                } else {
                    succ += 1;
                }
            }
            if let (Some(p0), Some(p1)) = (r.p_true_clean, r.p_true_attacked) {
                drops.push((p0 - p1) as f64);
            }
        }
    }
    VariantSummary {
        variant: variant.into(),
        target,
        records: records.len() as u64,
        errors: (records.len() - ok.len()) as u64,
        fraction_changed_to: rate_if(to, n_t),
        fraction_already_equal: rate_if(already, n_t),
        fraction_changed_away: rate_if(away, n_t),
        fraction_both_results_not_target: rate_if(neither, n_t),
        avg_img_l0_norm_diff: exact_mean(&l0).unwrap_or(0.0),
        clean_accuracy: rate_if(clean_ok, n_true),
        attacked_accuracy: rate_if(att_ok, n_true),
        clean_top5_accuracy: rate_if(clean5, n_true),
        attacked_top5_accuracy: rate_if(att5, n_true),
        flip_rate: Rate::new(flips, ok.len() as u64),
        attack_success_rate: rate_if(succ, succ + fail),
        accuracy_drop: (n_true > 0).then(|| (clean_ok as f64 - att_ok as f64) / n_true as f64),
        mean_true_prob_drop: exact_mean(&drops),
        mean_target_rank: exact_mean(&ranks),
    }
}

/// Summaries for every variant, in order of first appearance (records.jsonl is written in the
/// sweep's canonical cell order, so that is the spec's variant order). Every aggregate inside a
/// variant is a count or an [`ExactSum`], so it does not depend on the order of the records.
pub fn summarize(records: &[Record]) -> Vec<VariantSummary> {
    let mut order: Vec<&str> = Vec::new();
    let mut by: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by.entry(&r.variant)
            .or_insert_with(|| {
                order.push(&r.variant);
                Vec::new()
            })
            .push(r);
    }
    order.iter().map(|v| summarize_variant(v, &by[v])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Scored;

    fn rec(truth: &str, target: &str, clean: &str, attacked: &str) -> Record {
        Record {
            sample_id: format!("{truth}-{clean}-{attacked}"),
            variant: "v".into(),
            true_label: Some(truth.into()),
            target: Some(target.into()),
            clean_top5: vec![
                Scored {
                    label: clean.into(),
                    prob: 0.6,
                },
                Scored {
                    label: truth.into(),
                    prob: 0.3,
                },
            ],
            attacked_top5: vec![Scored {
                label: attacked.into(),
                prob: 0.7,
            }],
            p_true_clean: Some(0.6),
            p_true_attacked: Some(0.2),
            l0: 0.1,
            ..Record::default()
        }
    }

    #[test]
    fn wilson_known_values() {
        // Wilson 95 % for 8/10: (0.4902, 0.9433); for 0/10: (0, 0.2775).
        let (lo, hi) = wilson(8, 10, Z95);
        assert!(
            (lo - 0.4902).abs() < 1e-4 && (hi - 0.9433).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 10, Z95);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-4, "{hi}");
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }

    #[test]
    fn distill_fields_partition_the_records() {
        let rs = vec![
            rec("apple", "iPod", "apple", "iPod"),  // changed to
            rec("apple", "iPod", "iPod", "iPod"),   // already equal
            rec("apple", "iPod", "iPod", "apple"),  // changed away
            rec("apple", "iPod", "apple", "pear"),  // neither
            rec("apple", "iPod", "banana", "pear"), // neither
        ];
        let s = summarize(&rs);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.fraction_changed_to.unwrap().k, 1);
        assert_eq!(s.fraction_already_equal.unwrap().k, 1);
        assert_eq!(s.fraction_changed_away.unwrap().k, 1);
        assert_eq!(s.fraction_both_results_not_target.unwrap().k, 2);
        let total: f64 = [
            s.fraction_changed_to,
            s.fraction_already_equal,
            s.fraction_changed_away,
            s.fraction_both_results_not_target,
        ]
        .iter()
        .map(|r| r.unwrap().value)
        .sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!((s.avg_img_l0_norm_diff - 0.1).abs() < 1e-12);
    }

    #[test]
    fn attack_success_rate_skips_clean_mistakes() {
        let rs = vec![
            rec("apple", "iPod", "apple", "iPod"),  // success
            rec("apple", "iPod", "apple", "apple"), // failure
            rec("apple", "iPod", "pear", "iPod"),   // skipped: wrong when clean
        ];
        let s = &summarize(&rs)[0];
        let asr = s.attack_success_rate.unwrap();
        assert_eq!((asr.k, asr.n), (1, 2));
        assert_eq!(s.clean_accuracy.unwrap().k, 2);
        assert_eq!(s.attacked_accuracy.unwrap().k, 1);
        // Top-5 clean includes the true label in every record.
        assert_eq!(s.clean_top5_accuracy.unwrap().k, 3);
        assert_eq!(s.flip_rate.k, 2);
        assert!((s.mean_true_prob_drop.unwrap() - 0.4).abs() < 1e-6);
    }

    #[test]
    fn errors_are_counted_not_scored() {
        let mut bad = rec("apple", "iPod", "apple", "iPod");
        bad.error = Some("x.jpg: truncated".into());
        bad.clean_top5.clear();
        let rs = vec![bad, rec("apple", "iPod", "apple", "apple")];
        let s = &summarize(&rs)[0];
        assert_eq!((s.records, s.errors), (2, 1));
        assert_eq!(s.flip_rate.n, 1);
    }

    #[test]
    fn exact_sum_is_correctly_rounded_and_order_independent() {
        // Values math.fsum gives: naive summation gets each of these wrong.
        assert_eq!([0.1; 10].into_iter().collect::<ExactSum>().value(), 1.0);
        assert_eq!(
            [1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]
                .into_iter()
                .collect::<ExactSum>()
                .value(),
            1e-100
        );
        // Ties to even: 2**53 + 1 + 2**-52 needs the last partial to round up.
        let two53 = 9_007_199_254_740_992.0;
        assert_eq!(
            [two53, 1.0, 2f64.powi(-52)]
                .into_iter()
                .collect::<ExactSum>()
                .value(),
            two53 + 2.0
        );
        assert_eq!(ExactSum::default().value(), 0.0);
        // Every rotation and the reverse of an awkward list give the same bits.
        let v: Vec<f64> = (0..200)
            .map(|i| {
                ((i * 7919 % 1000) as f64 / 997.0).powi(3) * if i % 3 == 0 { -1.0 } else { 1.0 }
            })
            .collect();
        let reference = exact_mean(&v).unwrap();
        let naive: Vec<f64> = (0..v.len())
            .map(|k| {
                let mut r = v.clone();
                r.rotate_left(k);
                r.iter().sum::<f64>()
            })
            .collect();
        assert!(
            naive.iter().any(|s| s.to_bits() != naive[0].to_bits()),
            "the list does not exercise the order dependence of a naive sum"
        );
        for k in 0..v.len() {
            let mut r = v.clone();
            r.rotate_left(k);
            assert_eq!(exact_mean(&r).unwrap().to_bits(), reference.to_bits());
            r.reverse();
            assert_eq!(exact_mean(&r).unwrap().to_bits(), reference.to_bits());
        }
    }

    #[test]
    fn summaries_do_not_depend_on_record_order() {
        let mut rs: Vec<Record> = (0..60)
            .map(|i| {
                let mut r = rec(
                    "apple",
                    "iPod",
                    if i % 4 == 0 { "pear" } else { "apple" },
                    if i % 3 == 0 { "iPod" } else { "apple" },
                );
                r.l0 = 0.095 + (i as f64) * 1e-3 / 7.0;
                r.p_true_attacked = Some(0.1 + i as f32 / 97.0);
                r.target_rank_attacked = Some(1 + i % 9);
                r
            })
            .collect();
        let a = serde_json::to_string(&summarize(&rs)).unwrap();
        for k in [1, 7, 31, 59] {
            rs.rotate_left(k);
            assert_eq!(serde_json::to_string(&summarize(&rs)).unwrap(), a);
        }
        rs.reverse();
        assert_eq!(serde_json::to_string(&summarize(&rs)).unwrap(), a);
    }
}
