//! Linear probes: multinomial logistic regression on frozen image embeddings, L2-regularised,
//! fitted with tch (full-batch L-BFGS in f64, analytic gradients), as in the CLIP paper's and
//! the Distill study's linear-probe evaluations.
//!
//! Objective (`N` samples, features `x`, one-hot `y`, weights `W [D, C]`, bias `b [C]`):
//! `mean_i CE(softmax(x_i W + b), y_i) + l2/2 · ‖W‖²` — the bias is not penalised. This is
//! scikit-learn's `LogisticRegression(C)` objective divided by `C·N`, so `l2 = 1 / (C·N)`.
//! Pure: tensors in, tensors out; the train/eval split is a pure function of labels and seed.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::ProbeError;

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitSettings {
    /// L2 strength on the weights (see the module docs).
    pub l2: f64,
    /// At most this many L-BFGS iterations.
    pub max_iter: usize,
    /// Stop when the largest absolute gradient entry is below this.
    pub tol: f64,
    /// L-BFGS memory (pairs kept).
    pub memory: usize,
}

impl Default for FitSettings {
    fn default() -> Self {
        FitSettings {
            l2: 1e-4,
            max_iter: 1000,
            tol: 1e-8,
            memory: 10,
        }
    }
}

/// A fitted multinomial logistic regression.
#[derive(Debug)]
pub struct LogisticFit {
    /// `[D, C]` f64.
    pub weight: Tensor,
    /// `[C]` f64.
    pub bias: Tensor,
    /// Iterations taken.
    pub iterations: usize,
    /// Whether the gradient tolerance was reached.
    pub converged: bool,
    /// Final objective value.
    pub loss: f64,
}

impl LogisticFit {
    /// Class probabilities `[N, C]` (f64) for features `[N, D]`.
    pub fn probs(&self, x: &Tensor) -> Tensor {
        logits(&x.to_kind(Kind::Double), &self.weight, &self.bias).softmax(-1, Kind::Double)
    }
}

fn logits(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    x.matmul(w) + b
}

/// Objective and gradient at `theta = [vec(W) (row-major D×C), b]`.
struct Objective {
    x: Tensor,
    onehot: Tensor,
    d: i64,
    c: i64,
    l2: f64,
}

impl Objective {
    fn split(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let w = theta.narrow(0, 0, self.d * self.c).view([self.d, self.c]);
        let b = theta.narrow(0, self.d * self.c, self.c);
        (w, b)
    }

    fn eval(&self, theta: &Tensor) -> (f64, Tensor) {
        let (w, b) = self.split(theta);
        let n = self.x.size()[0] as f64;
        let logp = logits(&self.x, &w, &b).log_softmax(-1, Kind::Double);
        let ce = -f64::try_from((&logp * &self.onehot).sum(Kind::Double)).expect("scalar") / n;
        let reg = 0.5 * self.l2 * f64::try_from(w.square().sum(Kind::Double)).expect("scalar");
        let g = logp.exp() - &self.onehot;
        let gw = self.x.transpose(0, 1).matmul(&g) / n + &w * self.l2;
        let gb = g.sum_dim_intlist([0i64].as_slice(), false, Kind::Double) / n;
        (ce + reg, Tensor::cat(&[gw.view([-1]), gb], 0))
    }
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from(a.dot(b)).expect("scalar")
}

fn max_abs(a: &Tensor) -> f64 {
    f64::try_from(a.abs().max()).expect("scalar")
}

/// Fits weights and bias to features `x [N, D]` and labels `y` (class indices `< n_classes`)
/// by L-BFGS with a backtracking (Armijo) line search, from zero.
pub fn fit_logistic(
    x: &Tensor,
    y: &[i64],
    n_classes: usize,
    settings: &FitSettings,
) -> Result<LogisticFit, ProbeError> {
    let x = x.to_device(Device::Cpu).to_kind(Kind::Double).contiguous();
    let (n, d) = x.size2().map_err(|e| ProbeError::Invalid(e.to_string()))?;
    if n == 0 || n as usize != y.len() {
        return Err(ProbeError::Invalid(format!(
            "linear probe: {n} feature rows but {} labels",
            y.len()
        )));
    }
    if n_classes < 2 {
        return Err(ProbeError::Invalid(
            "linear probe: needs at least two classes".into(),
        ));
    }
    if let Some(bad) = y.iter().find(|&&c| c < 0 || c as usize >= n_classes) {
        return Err(ProbeError::Invalid(format!(
            "linear probe: label {bad} outside 0..{n_classes}"
        )));
    }
    if !(settings.l2 >= 0.0 && settings.l2.is_finite()) {
        return Err(ProbeError::Invalid(format!(
            "linear probe: l2 must be a finite number >= 0, got {}",
            settings.l2
        )));
    }
    let c = n_classes as i64;
    let onehot = Tensor::from_slice(y).one_hot(c).to_kind(Kind::Double);
    let obj = Objective {
        x,
        onehot,
        d,
        c,
        l2: settings.l2,
    };
    let mut theta = Tensor::zeros([d * c + c], (Kind::Double, Device::Cpu));
    let (mut f, mut g) = obj.eval(&theta);
    let mut history: std::collections::VecDeque<(Tensor, Tensor, f64)> = Default::default();
    let mut iterations = 0;
    let mut converged = max_abs(&g) < settings.tol;
    while !converged && iterations < settings.max_iter {
        iterations += 1;
        // Two-loop recursion: direction = -H·g.
        let mut q = g.copy();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, yv, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q -= yv * a;
            alphas.push(a);
        }
        let gamma = match history.back() {
            Some((s, yv, _)) => dot(s, yv) / dot(yv, yv),
            None => 1.0 / max_abs(&g).max(1e-300),
        };
        let mut r = q * gamma;
        for ((s, yv, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(yv, &r);
            r += s * (a - beta);
        }
        let mut dir = -r;
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            dir = -&g / max_abs(&g).max(1e-300);
            slope = dot(&g, &dir);
        }
        let mut step = 1.0;
        let (mut f_new, mut g_new, mut theta_new);
        loop {
            theta_new = &theta + &dir * step;
            let (fv, gv) = obj.eval(&theta_new);
            f_new = fv;
            g_new = gv;
            if f_new <= f + 1e-4 * step * slope || step < 1e-20 {
                break;
            }
            step *= 0.5;
        }
        let s = &theta_new - &theta;
        let yv = &g_new - &g;
        let sy = dot(&s, &yv);
        if sy > 1e-300 {
            if history.len() == settings.memory.max(1) {
                history.pop_front();
            }
            history.push_back((s, yv, 1.0 / sy));
        }
        let f_change = (f - f_new).abs();
        theta = theta_new;
        f = f_new;
        g = g_new;
        converged = max_abs(&g) < settings.tol;
        if !converged && f_change <= f64::EPSILON * f.abs().max(1.0) && step < 1e-12 {
            break;
        }
    }
    let (w, b) = obj.split(&theta);
    Ok(LogisticFit {
        weight: w.copy(),
        bias: b.copy(),
        iterations,
        converged,
        loss: f,
    })
}

/// Top-1 accuracy of probabilities `[N, C]` against labels.
pub fn accuracy(probs: &Tensor, y: &[i64]) -> f64 {
    if y.is_empty() {
        return 0.0;
    }
    let pred = Vec::<i64>::try_from(probs.argmax(-1, false)).expect("i64");
    pred.iter().zip(y).filter(|(p, t)| p == t).count() as f64 / y.len() as f64
}

/// A deterministic stratified split: per class, the samples are shuffled with a ChaCha8 stream
/// seeded by `seed` and `round(eval_fraction · n)` go to eval, always leaving one for training.
/// Returns (train, eval) indices, each sorted.
pub fn stratified_split(labels: &[i64], eval_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut classes: Vec<i64> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for c in classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        idx.shuffle(&mut rng);
        let k = ((eval_fraction * idx.len() as f64).round() as usize).min(idx.len() - 1);
        eval.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    eval.sort_unstable();
    (train, eval)
}

/// One class of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeClass {
    /// Class name (as in the dataset's label set).
    pub name: String,
    /// WordNet id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wnid: Option<String>,
}

/// The train/eval split a probe was fitted and evaluated on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSplit {
    /// Seed of the split.
    pub seed: u64,
    /// Requested eval fraction (per class).
    pub eval_fraction: f64,
    /// Sample ids used for fitting.
    pub train: Vec<String>,
    /// Sample ids held out.
    pub eval: Vec<String>,
}

/// A linear probe as stored on disk (`typoclip probe fit --out FILE`, one JSON document):
/// weights, classes, the model it belongs to, how it was fitted and on what split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearProbe {
    /// Present (and first) when the features came from random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Format tag, `typoclip-linear-probe-v1`.
    pub format: String,
    /// The model spec the features came from.
    pub model: String,
    /// The model's cache id (file sha256, or the random spec): a probe only fits its model.
    pub model_id: String,
    /// True when the model had random weights.
    pub random_weights: bool,
    /// The dataset name.
    pub dataset: String,
    /// What the features are.
    pub features: String,
    /// Classes, in weight-column order.
    pub classes: Vec<ProbeClass>,
    /// L2 strength (see the module docs); scikit-learn's `C = 1 / (l2 · n_train)`.
    pub l2: f64,
    /// L-BFGS iterations taken.
    pub iterations: usize,
    /// Whether the optimiser converged.
    pub converged: bool,
    /// Train / eval split.
    pub split: ProbeSplit,
    /// Top-1 accuracy on the training split.
    pub train_accuracy: f64,
    /// Top-1 accuracy on the eval split (None when it is empty).
    pub eval_accuracy: Option<f64>,
    /// `[C][D]`: one weight row per class.
    pub weight: Vec<Vec<f32>>,
    /// `[C]`.
    pub bias: Vec<f32>,
}

/// A probe's weights as tensors (CPU, f32).
#[derive(Debug)]
pub struct ProbeScorer {
    /// `[D, C]`.
    weight_t: Tensor,
    /// `[C]`.
    bias: Tensor,
}

impl ProbeScorer {
    /// Probabilities `[N, C]` (f32, CPU) for raw image embeddings `[N, D]` (normalised here,
    /// as the features the probe was fitted on).
    pub fn probs(&self, image_features: &Tensor) -> Tensor {
        let x =
            crate::model::l2_normalize(&image_features.to_device(Device::Cpu).to_kind(Kind::Float));
        (x.matmul(&self.weight_t) + &self.bias).softmax(-1, Kind::Float)
    }
}

/// The format tag of [`LinearProbe`] files.
pub const PROBE_FORMAT: &str = "typoclip-linear-probe-v1";
/// The feature description of probes fitted by typoclip.
pub const PROBE_FEATURES: &str = "L2-normalised CLIP image embeddings";

impl LinearProbe {
    /// Weights `[D, C]` f32 and bias `[C]` f32 from a fit.
    pub fn set_weights(&mut self, fit: &LogisticFit) {
        let w = fit.weight.transpose(0, 1).to_kind(Kind::Float).contiguous();
        self.weight = Vec::<Vec<f32>>::try_from(w).expect("f32 matrix");
        self.bias = Vec::<f32>::try_from(fit.bias.to_kind(Kind::Float)).expect("f32 vector");
    }

    /// The weights as tensors, for scoring many images.
    pub fn scorer(&self) -> ProbeScorer {
        let rows: Vec<Tensor> = self.weight.iter().map(|r| Tensor::from_slice(r)).collect();
        ProbeScorer {
            weight_t: Tensor::stack(&rows, 0).transpose(0, 1).contiguous(),
            bias: Tensor::from_slice(&self.bias),
        }
    }

    /// Probabilities `[N, C]` (f32, CPU) for raw image embeddings `[N, D]` (normalised here).
    pub fn probs(&self, image_features: &Tensor) -> Tensor {
        self.scorer().probs(image_features)
    }

    /// Checks shapes and the format tag; `origin` names the file in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ProbeError> {
        let bad = |field: &str, message: String| ProbeError::File {
            path: origin.into(),
            message: format!("{field}: {message}"),
        };
        if self.format != PROBE_FORMAT {
            return Err(bad(
                "format",
                format!("`{}` is not {PROBE_FORMAT}", self.format),
            ));
        }
        if self.classes.len() < 2 {
            return Err(bad("classes", "a probe needs at least two classes".into()));
        }
        if self.weight.len() != self.classes.len() {
            return Err(bad(
                "weight",
                format!(
                    "{} rows for {} classes",
                    self.weight.len(),
                    self.classes.len()
                ),
            ));
        }
        let d = self.weight[0].len();
        if d == 0 || self.weight.iter().any(|r| r.len() != d) {
            return Err(bad("weight", "rows of unequal or zero length".into()));
        }
        if self.bias.len() != self.classes.len() {
            return Err(bad(
                "bias",
                format!(
                    "{} entries for {} classes",
                    self.bias.len(),
                    self.classes.len()
                ),
            ));
        }
        Ok(())
    }

    /// Embedding size the probe expects.
    pub fn dim(&self) -> usize {
        self.weight.first().map(Vec::len).unwrap_or(0)
    }

    /// Class names in column order, as a label set (for scoring and metrics).
    pub fn label_set(&self) -> crate::zeroshot::LabelSet {
        crate::zeroshot::LabelSet {
            name: format!("linear-probe/{}", self.dataset),
            classes: self
                .classes
                .iter()
                .map(|c| crate::zeroshot::ClassLabel {
                    name: c.name.clone(),
                    wnid: c.wnid.clone(),
                })
                .collect(),
        }
    }

    /// Reads and validates a probe file.
    pub fn load(path: &std::path::Path) -> Result<LinearProbe, ProbeError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProbeError::File {
            path: origin.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let probe: LinearProbe = serde_json::from_str(&text).map_err(|e| ProbeError::File {
            path: origin.clone(),
            message: format!("line {}:{}: {e}", e.line(), e.column()),
        })?;
        probe.validate(&origin)?;
        Ok(probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-separated Gaussian clusters: `per` points per class around distinct centres.
    fn clusters(c: usize, per: usize, d: i64, seed: i64) -> (Tensor, Vec<i64>) {
        tch::manual_seed(seed);
        let centres = Tensor::randn([c as i64, d], (Kind::Double, Device::Cpu)) * 4.0;
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for k in 0..c {
            let noise = Tensor::randn([per as i64, d], (Kind::Double, Device::Cpu)) * 0.5;
            xs.push(noise + centres.get(k as i64));
            ys.extend(std::iter::repeat_n(k as i64, per));
        }
        (Tensor::cat(&xs, 0), ys)
    }

    #[test]
    fn separable_clusters_are_fitted_to_full_accuracy() {
        let (x, y) = clusters(5, 40, 16, 3);
        let fit = fit_logistic(&x, &y, 5, &FitSettings::default()).unwrap();
        assert!(fit.converged, "{} iterations", fit.iterations);
        assert!(accuracy(&fit.probs(&x), &y) >= 0.99);
    }

    #[test]
    fn gradient_vanishes_at_the_optimum() {
        // The optimum of the convex objective has a zero gradient: check it independently
        // of the optimiser, with autograd.
        let (x, y) = clusters(3, 20, 6, 4);
        let s = FitSettings {
            l2: 0.05,
            ..FitSettings::default()
        };
        let fit = fit_logistic(&x, &y, 3, &s).unwrap();
        let w = fit.weight.copy().set_requires_grad(true);
        let b = fit.bias.copy().set_requires_grad(true);
        let onehot = Tensor::from_slice(&y).one_hot(3).to_kind(Kind::Double);
        let loss = -(logits(&x, &w, &b).log_softmax(-1, Kind::Double) * onehot).sum(Kind::Double)
            / 60.0
            + w.square().sum(Kind::Double) * (0.5 * s.l2);
        loss.backward();
        assert!(max_abs(&w.grad()) < 1e-7);
        assert!(max_abs(&b.grad()) < 1e-7);
    }

    #[test]
    fn bad_labels_are_rejected() {
        let x = Tensor::zeros([2, 3], (Kind::Double, Device::Cpu));
        assert!(fit_logistic(&x, &[0, 5], 2, &FitSettings::default()).is_err());
        assert!(fit_logistic(&x, &[0], 2, &FitSettings::default()).is_err());
        assert!(fit_logistic(&x, &[0, 1], 1, &FitSettings::default()).is_err());
    }

    #[test]
    fn split_is_stratified_and_deterministic() {
        let labels: Vec<i64> = (0..30).map(|i| i % 3).collect();
        let (tr, ev) = stratified_split(&labels, 0.2, 7);
        assert_eq!(ev.len(), 6);
        assert_eq!(tr.len() + ev.len(), 30);
        for c in 0..3 {
            assert_eq!(ev.iter().filter(|&&i| labels[i] == c).count(), 2);
        }
        assert_eq!(stratified_split(&labels, 0.2, 7), (tr.clone(), ev.clone()));
        assert_ne!(stratified_split(&labels, 0.2, 8).1, ev);
        // A class with one sample stays in training.
        let (tr, ev) = stratified_split(&[0, 1, 1, 1], 0.5, 0);
        assert!(tr.contains(&0) && !ev.contains(&0));
    }
}
