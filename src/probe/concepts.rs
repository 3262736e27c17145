//! Concept arithmetic over CLIP text embeddings, after the Distill article's "piggy bank ≈
//! finance + toys" view.
//!
//! An expression is a signed, weighted sum of concepts: `finance + toys`,
//! `soft smile + heart - illness`, `0.5*smile + shock`. A `+` or `-` is an operator at the start
//! or after white space, so hyphenated words (`t-shirt`) stay whole. Each concept is encoded
//! through a template set (default: the bare word) into a unit embedding; the expression's
//! vector is the weighted sum, L2-normalised. Candidates (label embeddings, image embeddings)
//! are ranked by cosine similarity.
//!
//! [`decompose`] goes the other way: an image embedding `x` as a sparse non-negative
//! combination of concept embeddings `D`, `argmin_{w ≥ 0} ½‖x − Dᵀw‖² + λ·Σw`, solved exactly by
//! the Lawson–Hanson active-set method (λ = 0 is scipy's `nnls`). Pure given the model.

use tch::{Device, Kind, Tensor};

use super::ProbeError;
use crate::model::{l2_normalize, ClipModel};
use crate::text_tokenizer::TextTokenizer;
use crate::zeroshot::{class_embeddings, ClassLabel, LabelSet, TemplateSet};

/// One weighted concept of an expression.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptTerm {
    /// Signed weight.
    pub weight: f64,
    /// The concept text (`soft smile`).
    pub concept: String,
}

/// Parses `a + 0.5*b - c` into terms (see the module docs).
pub fn parse_expression(expression: &str) -> Result<Vec<ConceptTerm>, ProbeError> {
    let err = |message: String| ProbeError::Expression {
        expression: expression.into(),
        message,
    };
    // Split at operators: `+`/`-` at the start or preceded by white space.
    let mut pieces: Vec<(f64, String)> = Vec::new();
    let mut pending: Option<char> = None;
    let mut current = String::new();
    let mut prev_space = true;
    let sign_of = |op: Option<char>| if op == Some('-') { -1.0 } else { 1.0 };
    for ch in expression.chars() {
        if (ch == '+' || ch == '-') && prev_space {
            if current.trim().is_empty() {
                if pending.is_some() || !pieces.is_empty() {
                    return Err(err(format!("operator `{ch}` without a concept before it")));
                }
            } else {
                pieces.push((sign_of(pending), std::mem::take(&mut current)));
            }
            pending = Some(ch);
            continue;
        }
        prev_space = ch.is_whitespace();
        current.push(ch);
    }
    if current.trim().is_empty() {
        return Err(err(if pieces.is_empty() && pending.is_none() {
            "no concepts".into()
        } else {
            "ends with an operator".into()
        }));
    }
    pieces.push((sign_of(pending), current));
    pieces
        .into_iter()
        .map(|(sign, text)| {
            let text = text.trim();
            let (weight, concept) = match text.split_once('*') {
                Some((w, c)) => {
                    let w: f64 = w
                        .trim()
                        .parse()
                        .map_err(|_| err(format!("`{}` is not a number", w.trim())))?;
                    if !w.is_finite() {
                        return Err(err(format!("weight `{w}` is not finite")));
                    }
                    (w, c.trim())
                }
                None => (1.0, text),
            };
            if concept.is_empty() {
                return Err(err(format!("term `{text}` has no concept")));
            }
            if concept.contains('*') {
                return Err(err(format!("term `{text}` has more than one `*`")));
            }
            Ok(ConceptTerm {
                weight: sign * weight,
                concept: concept.to_string(),
            })
        })
        .collect()
}

/// Template set from a CLI value: a literal template when it contains `{}` (`"{}"`,
/// `"a photo of {}"`), else a builtin set name or a file.
pub fn template_set(spec: &str) -> Result<TemplateSet, crate::zeroshot::ZeroShotError> {
    if spec.contains("{}") {
        TemplateSet::parse("inline", spec)
    } else {
        TemplateSet::resolve(spec)
    }
}

/// Unit embeddings `[K, D]` (CPU, f32) of concept texts, each through `templates` (the
/// normalised mean over templates, as for zero-shot class embeddings). Duplicates are allowed.
pub fn concept_embeddings(
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
    concepts: &[String],
    templates: &TemplateSet,
) -> Result<Tensor, ProbeError> {
    let labels = LabelSet {
        name: "concepts".into(),
        classes: concepts
            .iter()
            .map(|c| ClassLabel {
                name: c.clone(),
                wnid: None,
            })
            .collect(),
    };
    Ok(class_embeddings(model, tokenizer, &labels, templates, 256)
        .map_err(|e| ProbeError::Invalid(e.to_string()))?
        .to_device(Device::Cpu)
        .to_kind(Kind::Float))
}

/// The expression's unit vector `[D]` from its terms' unit embeddings `[K, D]`.
pub fn combine(terms: &[ConceptTerm], embeddings: &Tensor) -> Result<Tensor, ProbeError> {
    let w: Vec<f32> = terms.iter().map(|t| t.weight as f32).collect();
    let v = Tensor::from_slice(&w)
        .view([1, -1])
        .matmul(&embeddings.to_kind(Kind::Float))
        .squeeze_dim(0);
    let norm = f64::try_from(v.norm()).unwrap_or(0.0);
    if norm < 1e-12 {
        return Err(ProbeError::Invalid(
            "the weighted sum of the concepts is zero: nothing to compare with".into(),
        ));
    }
    Ok(l2_normalize(&v))
}

/// Candidates by cosine similarity to `v` `[D]`: `(index, cosine)`, best first, at most `top`.
pub fn rank(v: &Tensor, candidates: &Tensor, top: usize) -> Vec<(usize, f64)> {
    let sims = l2_normalize(&candidates.to_kind(Kind::Float))
        .matmul(&l2_normalize(&v.to_kind(Kind::Float)));
    let sims = Vec::<f32>::try_from(sims).expect("f32");
    let mut order: Vec<usize> = (0..sims.len()).collect();
    order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(top)
        .map(|i| (i, sims[i] as f64))
        .collect()
}

/// A sparse non-negative decomposition.
#[derive(Debug)]
pub struct Decomposition {
    /// `[K]` weights (≥ 0), f64.
    pub weights: Vec<f64>,
    /// Cosine between the target and its reconstruction `Dᵀw` (0 when `w = 0`).
    pub reconstruction_cosine: f64,
    /// `‖x − Dᵀw‖`.
    pub residual_norm: f64,
}

/// Solves `argmin_{w ≥ 0} ½‖x − Dᵀw‖² + l1·Σw` for `x [D]`, `dict [K, D]` by Lawson–Hanson's
/// active-set method on the Gram matrix, in f64.
pub fn decompose(x: &Tensor, dict: &Tensor, l1: f64) -> Result<Decomposition, ProbeError> {
    if !(l1 >= 0.0 && l1.is_finite()) {
        return Err(ProbeError::Invalid(format!(
            "--sparsity: must be a finite number >= 0, got {l1}"
        )));
    }
    let x = x.to_device(Device::Cpu).to_kind(Kind::Double).view([-1]);
    let a = dict.to_device(Device::Cpu).to_kind(Kind::Double);
    let k = a.size()[0] as usize;
    let gram = Vec::<Vec<f64>>::try_from(a.matmul(&a.transpose(0, 1))).expect("f64 matrix");
    let c: Vec<f64> = Vec::<f64>::try_from(a.matmul(&x))
        .expect("f64")
        .into_iter()
        .map(|v| v - l1)
        .collect();
    let weights = nnls_gram(&gram, &c, k);
    let wt = Tensor::from_slice(&weights);
    let recon = wt.view([1, -1]).matmul(&a).view([-1]);
    let residual_norm = f64::try_from((&x - &recon).norm()).expect("scalar");
    let rn = f64::try_from(recon.norm()).expect("scalar");
    let xn = f64::try_from(x.norm()).expect("scalar");
    let reconstruction_cosine = if rn > 0.0 && xn > 0.0 {
        f64::try_from(x.dot(&recon)).expect("scalar") / (rn * xn)
    } else {
        0.0
    };
    Ok(Decomposition {
        weights,
        reconstruction_cosine,
        residual_norm,
    })
}

/// Lawson–Hanson for `min ½wᵀGw − cᵀw, w ≥ 0`.
fn nnls_gram(g: &[Vec<f64>], c: &[f64], k: usize) -> Vec<f64> {
    let tol = 1e-10 * (1.0 + c.iter().fold(0.0f64, |m, v| m.max(v.abs())));
    let mut w = vec![0.0; k];
    let mut passive = vec![false; k];
    let grad = |w: &[f64]| -> Vec<f64> {
        (0..k)
            .map(|i| c[i] - (0..k).map(|j| g[i][j] * w[j]).sum::<f64>())
            .collect()
    };
    for _outer in 0..(3 * k + 10) {
        let gr = grad(&w);
        let Some(j) = (0..k)
            .filter(|&i| !passive[i])
            .filter(|&i| gr[i] > tol)
            .max_by(|&a, &b| gr[a].total_cmp(&gr[b]))
        else {
            break;
        };
        passive[j] = true;
        for _inner in 0..(3 * k + 10) {
            let p: Vec<usize> = (0..k).filter(|&i| passive[i]).collect();
            let s_p = solve_sub(g, c, &p);
            if s_p.iter().all(|&v| v > 0.0) {
                for (&i, &v) in p.iter().zip(&s_p) {
                    w[i] = v;
                }
                break;
            }
            let mut alpha = f64::INFINITY;
            for (&i, &v) in p.iter().zip(&s_p) {
                if v <= 0.0 {
                    alpha = alpha.min(w[i] / (w[i] - v));
                }
            }
            for (&i, &v) in p.iter().zip(&s_p) {
                w[i] += alpha * (v - w[i]);
                if w[i] <= 1e-15 {
                    w[i] = 0.0;
                    passive[i] = false;
                }
            }
            if !passive.iter().any(|&b| b) {
                break;
            }
        }
    }
    w
}

/// Solves `G[P,P] s = c[P]` (Cholesky-free Gaussian elimination with partial pivoting; P is
/// small). A singular sub-system (duplicate concepts) gets a tiny ridge.
fn solve_sub(g: &[Vec<f64>], c: &[f64], p: &[usize]) -> Vec<f64> {
    let n = p.len();
    let scale = p
        .iter()
        .map(|&i| g[i][i])
        .fold(0.0f64, f64::max)
        .max(1e-300);
    let mut m: Vec<Vec<f64>> = p
        .iter()
        .enumerate()
        .map(|(r, &i)| {
            let mut row: Vec<f64> = p.iter().map(|&j| g[i][j]).collect();
            row[r] += 1e-12 * scale;
            row.push(c[i]);
            row
        })
        .collect();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .expect("non-empty");
        m.swap(col, piv);
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            if r != col && f != 0.0 {
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    (0..n).map(|r| m[r][n] / m[r][r]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_parse() {
        let t = parse_expression("finance + toys").unwrap();
        assert_eq!(
            t,
            vec![
                ConceptTerm {
                    weight: 1.0,
                    concept: "finance".into()
                },
                ConceptTerm {
                    weight: 1.0,
                    concept: "toys".into()
                }
            ]
        );
        let t = parse_expression("soft smile + heart - illness").unwrap();
        assert_eq!(t[0].concept, "soft smile");
        assert_eq!((t[2].weight, t[2].concept.as_str()), (-1.0, "illness"));
        let t = parse_expression("-0.5*smile + 2 * shock - t-shirt").unwrap();
        assert_eq!((t[0].weight, t[0].concept.as_str()), (-0.5, "smile"));
        assert_eq!((t[1].weight, t[1].concept.as_str()), (2.0, "shock"));
        assert_eq!((t[2].weight, t[2].concept.as_str()), (-1.0, "t-shirt"));
        for bad in ["", "a +", "+ + b", "x*y*z", "abc*dog", "*dog", "a + - b"] {
            let e = parse_expression(bad).unwrap_err().to_string();
            assert!(e.starts_with("concept expression"), "{bad}: {e}");
        }
    }

    #[test]
    fn combine_and_rank() {
        let e = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0]).view([2, 3]);
        let terms = parse_expression("a + b").unwrap();
        let v = combine(&terms, &e).unwrap();
        let s = std::f64::consts::FRAC_1_SQRT_2;
        assert!((f64::try_from(v.get(0)).unwrap() - s).abs() < 1e-6);
        let cands =
            Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]).view([3, 3]);
        let r = rank(&v, &cands, 2);
        assert_eq!(r[0].0, 1);
        assert!((r[0].1 - 1.0).abs() < 1e-6);
        assert_eq!(r[1].0, 2);
        assert!(combine(
            &parse_expression("a - a").unwrap(),
            &e.narrow(0, 0, 1).repeat([2, 1])
        )
        .is_err());
    }

    #[test]
    fn decomposition_recovers_a_sparse_combination() {
        tch::manual_seed(5);
        let dict = l2_normalize(&Tensor::randn([8, 32], (Kind::Double, Device::Cpu)));
        let x = dict.get(1) * 0.7 + dict.get(5) * 0.3;
        let d = decompose(&x, &dict, 0.0).unwrap();
        for (i, w) in d.weights.iter().enumerate() {
            let want = match i {
                1 => 0.7,
                5 => 0.3,
                _ => 0.0,
            };
            assert!((w - want).abs() < 1e-9, "w[{i}] = {w}");
        }
        assert!(d.residual_norm < 1e-9);
        assert!((d.reconstruction_cosine - 1.0).abs() < 1e-9);
        // A negative coefficient cannot be represented: it is clipped to zero.
        let y = dict.get(2) - dict.get(3) * 0.5;
        let d = decompose(&y, &dict, 0.0).unwrap();
        assert!(d.weights.iter().all(|&w| w >= 0.0));
        assert_eq!(d.weights[3], 0.0);
        // The L1 term makes it sparser.
        let noisy = &x + Tensor::randn([32], (Kind::Double, Device::Cpu)) * 0.05;
        let dense = decompose(&noisy, &dict, 0.0).unwrap();
        let sparse = decompose(&noisy, &dict, 0.1).unwrap();
        let nnz = |d: &Decomposition| d.weights.iter().filter(|&&w| w > 0.0).count();
        assert!(nnz(&sparse) <= nnz(&dense));
        assert!(sparse.weights[1] > 0.0);
    }
}
