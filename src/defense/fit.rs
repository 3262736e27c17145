//! Fitting the learned defenses on a [`CalibrationSet`] (the computations of `typoclip fit`):
//! [`fit_projection`] (reading directions), [`fit_learned_projection`] (a linear map by
//! gradient descent), [`fit_heads`] (head scores), [`fit_prefix`] (defense prefix by gradient
//! descent with tch autograd). Pure functions of the model and the
//! calibration set; the command writes their results as artifacts.

use tch::nn::OptimizerConfig;
use tch::{Kind, Tensor};

use super::calibration::CalibrationSet;
use super::heads::{head_site, Ablation, HeadMean, HeadScore};
use crate::model::{l2_normalize, ClipModel, Probe, VisionConfig};
use crate::text_tokenizer::TextTokenizer;
use crate::tokenizer::ClipTokenizer;
use crate::zeroshot::{ClassLabel, LabelSet, TemplateSet};

/// Encodes `[3, n, n]` inputs in batches through `probe()` (a fresh probe per batch); `[N, D]`
/// on the CPU.
pub fn encode_all(
    model: &ClipModel,
    images: &[&Tensor],
    batch_size: usize,
    probe: &dyn Fn() -> Probe,
) -> Tensor {
    let _g = tch::no_grad_guard();
    let feats: Vec<Tensor> = batches(images, batch_size)
        .map(|b| {
            model
                .encode_image_probed(&b, &mut probe())
                .to_device(tch::Device::Cpu)
        })
        .collect();
    Tensor::cat(&feats, 0)
}

/// `images` stacked into batches of at most `batch_size`.
fn batches<'a>(images: &'a [&Tensor], batch_size: usize) -> impl Iterator<Item = Tensor> + 'a {
    images
        .chunks(batch_size.max(1))
        .map(|c| Tensor::stack(&c.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>(), 0))
}

/// The classes of a calibration set: every true label and every word, in first-seen order.
pub fn calibration_classes(set: &CalibrationSet) -> LabelSet {
    let mut names: Vec<String> = Vec::new();
    for n in set.labels.iter().flatten().chain(set.record.words.iter()) {
        if !names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            names.push(n.clone());
        }
    }
    LabelSet {
        name: "calibration".into(),
        classes: names
            .into_iter()
            .map(|name| ClassLabel { name, wnid: None })
            .collect(),
    }
}

/// Normalised embedding differences `[N, D]` (attacked − clean) and the top-`k` reading
/// directions `[k, D]` with their singular values.
pub fn fit_projection(
    model: &ClipModel,
    set: &CalibrationSet,
    k: usize,
    batch_size: usize,
) -> (Tensor, Tensor) {
    let clean = l2_normalize(&encode_all(
        model,
        &set.clean.iter().collect::<Vec<_>>(),
        batch_size,
        &Probe::none,
    ));
    let attacked = l2_normalize(&encode_all(
        model,
        &set.items.iter().map(|i| &i.attacked).collect::<Vec<_>>(),
        batch_size,
        &Probe::none,
    ));
    let idx = Tensor::from_slice(&set.items.iter().map(|i| i.image as i64).collect::<Vec<_>>());
    let diffs = attacked - clean.index_select(0, &idx);
    super::projection::reading_directions(&diffs, k)
}

/// P(word) on each attacked image and whether the attack succeeded (the word is the top-1 and
/// the clean image's top-1 was not the word), for image embeddings `[N, D]`. P follows the
/// model's scoring: softmax over the classes, or each class's sigmoid with the logit `bias` of
/// a SigLIP-style model.
fn attack_pull(
    feats: &Tensor,
    class_weights: &Tensor,
    (scale, bias): (f64, Option<f64>),
    words: &[usize],
    clean_top1: &[i64],
) -> (f64, f64) {
    let logits = l2_normalize(feats).matmul(&class_weights.transpose(0, 1)) * scale;
    let probs = match bias {
        Some(b) => (logits + b).sigmoid(),
        None => logits.softmax(-1, Kind::Float),
    };
    let top1 = Vec::<i64>::try_from(probs.argmax(-1, false)).expect("i64");
    let idx = Tensor::from_slice(&words.iter().map(|&w| w as i64).collect::<Vec<_>>());
    let p_word = probs
        .gather(1, &idx.unsqueeze(1), false)
        .mean(Kind::Double)
        .double_value(&[]);
    let success = top1
        .iter()
        .zip(words)
        .zip(clean_top1)
        .filter(|((t, w), c)| **t == **w as i64 && **c != **w as i64)
        .count();
    (p_word, success as f64 / words.len().max(1) as f64)
}

/// What [`fit_heads`] found.
#[derive(Debug)]
pub struct HeadsFit {
    /// Every head, best first.
    pub scores: Vec<HeadScore>,
    /// Mean P(word) and attack success rate without ablation.
    pub baseline: (f64, f64),
    /// [`Ablation::Mean`]: the means of the first `keep_means` heads of `scores`.
    pub means: Vec<HeadMean>,
}

/// Each block's per-head mean output `[H, L, W/H]` over `images` (no gradients).
pub fn head_means(
    model: &ClipModel,
    images: &[&Tensor],
    layers: usize,
    batch_size: usize,
) -> Vec<Tensor> {
    let _g = tch::no_grad_guard();
    let sites: Vec<String> = (0..layers).map(head_site).collect();
    let mut sums: Vec<Option<Tensor>> = (0..layers).map(|_| None).collect();
    for b in batches(images, batch_size) {
        let mut probe = Probe::capture(sites.iter().map(String::as_str));
        let _ = model.encode_image_probed(&b, &mut probe);
        for (sum, site) in sums.iter_mut().zip(&sites) {
            let batch = probe.taps()[site]
                .to_kind(Kind::Double)
                .sum_dim_intlist(0, false, Kind::Double)
                .to_device(tch::Device::Cpu);
            *sum = Some(match sum.take() {
                None => batch,
                Some(s) => s + batch,
            });
        }
    }
    let n = images.len().max(1) as f64;
    sums.into_iter()
        .map(|s| (s.expect("at least one image") / n).to_kind(Kind::Float))
        .collect()
}

/// Settings of [`fit_heads`].
#[derive(Debug, Clone, Copy)]
pub struct HeadFitSettings {
    /// Images per forward pass.
    pub batch_size: usize,
    /// How a head is taken out.
    pub ablation: Ablation,
    /// How many of the best heads' means to keep ([`Ablation::Mean`]).
    pub keep_means: usize,
}

/// Scores every head of a ViT image tower by taking it out alone (`ablation`: zeroed, or
/// replaced by its mean over the clean calibration images) on the attacked calibration
/// images: the drop of the attack success rate and of the mean P(word), sorted best first
/// (attack-success drop, then P(word) drop). `progress` is called after each head.
pub fn fit_heads(
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
    set: &CalibrationSet,
    templates: &TemplateSet,
    settings: HeadFitSettings,
    progress: &dyn Fn(usize, usize),
) -> Result<HeadsFit, String> {
    let HeadFitSettings {
        batch_size,
        ablation,
        keep_means,
    } = settings;
    let VisionConfig::VisionTransformer { layers, heads, .. } = model.config().vision else {
        return Err("head ablation needs a ViT image tower (this model is a ResNet)".into());
    };
    let classes = calibration_classes(set);
    let weights = {
        let _g = tch::no_grad_guard();
        crate::zeroshot::class_embeddings(model, tokenizer, &classes, templates, 256)
            .map_err(|e| e.to_string())?
    };
    let scoring = (model.logit_scale_exp(), model.logit_bias());
    let words: Vec<usize> = set
        .items
        .iter()
        .map(|i| classes.index_of_name(&i.word).expect("words are classes"))
        .collect();
    let clean_images: Vec<&Tensor> = set.clean.iter().collect();
    let clean = encode_all(model, &clean_images, batch_size, &Probe::none);
    let clean_top1_img = Vec::<i64>::try_from(
        l2_normalize(&clean)
            .matmul(&weights.transpose(0, 1))
            .argmax(-1, false),
    )
    .expect("i64");
    let clean_top1: Vec<i64> = set.items.iter().map(|i| clean_top1_img[i.image]).collect();
    let means = match ablation {
        Ablation::Zero => Vec::new(),
        Ablation::Mean => head_means(model, &clean_images, layers as usize, batch_size),
    };
    let mean_of = |l: usize, h: usize| means.get(l).map(|m| m.get(h as i64));
    let attacked: Vec<&Tensor> = set.items.iter().map(|i| &i.attacked).collect();
    let base = encode_all(model, &attacked, batch_size, &Probe::none);
    let (p0, asr0) = attack_pull(&base, &weights, scoring, &words, &clean_top1);
    let total = (layers * heads) as usize;
    let mut scores = Vec::with_capacity(total);
    for l in 0..layers as usize {
        for h in 0..heads as usize {
            let mean = mean_of(l, h);
            let probe =
                || Probe::none().with_intervention(ablation.intervention(l, h, mean.as_ref()));
            let f = encode_all(model, &attacked, batch_size, &probe);
            let (p, asr) = attack_pull(&f, &weights, scoring, &words, &clean_top1);
            scores.push(HeadScore {
                layer: l,
                head: h,
                score: p0 - p,
                asr_ablated: asr,
                asr_drop: asr0 - asr,
            });
            progress(scores.len(), total);
        }
    }
    // Ranked by how much taking the head out reduces attack success; ties (frequent on small
    // calibration sets, where success moves in coarse steps) by the drop of P(word).
    scores.sort_by(|a, b| {
        b.asr_drop
            .partial_cmp(&a.asr_drop)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(
                b.score
                    .partial_cmp(&a.score)
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then((a.layer, a.head).cmp(&(b.layer, b.head)))
    });
    let kept = scores
        .iter()
        .take(keep_means)
        .filter_map(|s| mean_of(s.layer, s.head).map(|m| HeadMean::new(s.layer, s.head, &m)))
        .collect();
    Ok(HeadsFit {
        scores,
        baseline: (p0, asr0),
        means: kept,
    })
}

/// Settings of [`fit_prefix`].
#[derive(Debug, Clone)]
pub struct PrefixSettings {
    /// Optimisation steps (full batch).
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Weight of the class-preserving loss.
    pub preserve_weight: f64,
}

/// What [`fit_prefix`] learned.
#[derive(Debug)]
pub struct PrefixFit {
    /// The learned embedding `[W]`.
    pub embedding: Tensor,
    /// Total loss before each step and after the last (`steps + 1` values).
    pub losses: Vec<f64>,
}

/// What the Defense-Prefix losses are computed on: the calibration classes and templates, the
/// plain class embeddings, the attacked images' unit embeddings and their true classes.
#[derive(Debug)]
pub struct PrefixProblem<'a> {
    /// Calibration classes.
    pub classes: &'a LabelSet,
    /// Templates (the prefix goes in front of `{}`).
    pub templates: &'a TemplateSet,
    /// Unit class embeddings without the prefix `[C, D]`.
    pub plain: Tensor,
    /// Unit embeddings of the attacked images `[N, D]`.
    pub attacked: Tensor,
    /// True class of each attacked image `[N]`.
    pub truth: Tensor,
}

impl PrefixProblem<'_> {
    /// The two Defense-Prefix losses for a prefix `[W]`: (defense, class-preserving).
    pub fn losses(
        &self,
        model: &ClipModel,
        tokenizer: &ClipTokenizer,
        prefix: &Tensor,
    ) -> (Tensor, Tensor) {
        let w = super::prefix::class_embeddings(
            model,
            tokenizer,
            self.classes,
            self.templates,
            Some(prefix),
        );
        let logits = self.attacked.matmul(&w.transpose(0, 1)) * model.logit_scale_exp();
        let defense = logits.cross_entropy_for_logits(&self.truth);
        let cos = (&w * &self.plain).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
        let preserve = cos.neg().g_add_scalar(1.0).mean(Kind::Float);
        (defense, preserve)
    }
}

/// Learns a defense prefix on the calibration set (see [`super::prefix`]): the attacked images
/// must have a known true class. The model's weights are frozen here.
pub fn fit_prefix(
    model: &mut ClipModel,
    tokenizer: &ClipTokenizer,
    set: &CalibrationSet,
    templates: &TemplateSet,
    settings: &PrefixSettings,
    batch_size: usize,
) -> Result<PrefixFit, String> {
    let classes = calibration_classes(set);
    let mut truth = Vec::new();
    let mut used = Vec::new();
    for it in &set.items {
        if let Some(l) = &set.labels[it.image] {
            truth.push(classes.index_of_name(l).expect("labels are classes") as i64);
            used.push(&it.attacked);
        }
    }
    if used.is_empty() {
        return Err(
            "the calibration images have no class labels (use an image_folder dataset \
                    with one folder per class)"
                .into(),
        );
    }
    model.var_store_mut().freeze();
    let model = &*model;
    let attacked =
        l2_normalize(&encode_all(model, &used, batch_size, &Probe::none)).to_device(model.device());
    let truth = Tensor::from_slice(&truth).to_device(model.device());
    let pid = super::prefix::placeholder_id(tokenizer);
    tch::with_grad(|| {
        let plain = {
            let _g = tch::no_grad_guard();
            super::prefix::class_embeddings(model, tokenizer, &classes, templates, None)
        };
        let vs = tch::nn::VarStore::new(model.device());
        let init = {
            let _g = tch::no_grad_guard();
            model
                .embed_tokens(&Tensor::from_slice(&[pid]).view([1, 1]))
                .view([-1])
        };
        let problem = PrefixProblem {
            classes: &classes,
            templates,
            plain,
            attacked,
            truth,
        };
        let prefix = vs.root().var_copy("prefix", &init);
        let mut opt = tch::nn::Adam::default()
            .build(&vs, settings.lr)
            .map_err(|e| e.to_string())?;
        let mut losses = Vec::with_capacity(settings.steps + 1);
        for step in 0..=settings.steps {
            let (d, p) = problem.losses(model, tokenizer, &prefix);
            let loss = d + p * settings.preserve_weight;
            losses.push(loss.double_value(&[]));
            if step < settings.steps {
                opt.backward_step(&loss);
            }
        }
        Ok(PrefixFit {
            embedding: prefix.detach().to_device(tch::Device::Cpu),
            losses,
        })
    })
}

/// What [`fit_learned_projection`] learned.
#[derive(Debug)]
pub struct LearnedProjection {
    /// The map `W` `[D, D]` (applied as `f ↦ f Wᵀ`).
    pub matrix: Tensor,
    /// Total loss before each step and after the last (`steps + 1` values).
    pub losses: Vec<f64>,
}

/// Learns the linear projection of [`super::projection`] (learned form) on the calibration set:
/// cross-entropy of the mapped attacked and clean images against their true class plus
/// `weight · ‖W − I‖²`. The images must have a known true class.
pub fn fit_learned_projection(
    model: &ClipModel,
    tokenizer: &dyn TextTokenizer,
    set: &CalibrationSet,
    templates: &TemplateSet,
    settings: &PrefixSettings,
    batch_size: usize,
) -> Result<LearnedProjection, String> {
    let classes = calibration_classes(set);
    let mut feats = Vec::new();
    let mut truth = Vec::new();
    let clean = encode_all(
        model,
        &set.clean.iter().collect::<Vec<_>>(),
        batch_size,
        &Probe::none,
    );
    let attacked = encode_all(
        model,
        &set.items.iter().map(|i| &i.attacked).collect::<Vec<_>>(),
        batch_size,
        &Probe::none,
    );
    for (i, l) in set.labels.iter().enumerate() {
        if let Some(l) = l {
            feats.push(clean.get(i as i64));
            truth.push(classes.index_of_name(l).expect("labels are classes") as i64);
        }
    }
    for (j, it) in set.items.iter().enumerate() {
        if let Some(l) = &set.labels[it.image] {
            feats.push(attacked.get(j as i64));
            truth.push(classes.index_of_name(l).expect("labels are classes") as i64);
        }
    }
    if feats.is_empty() {
        return Err(
            "the calibration images have no class labels (use an image_folder dataset \
                    with one folder per class)"
                .into(),
        );
    }
    let feats = Tensor::stack(&feats, 0);
    let truth = Tensor::from_slice(&truth);
    let text = {
        let _g = tch::no_grad_guard();
        crate::zeroshot::class_embeddings(model, tokenizer, &classes, templates, 256)
            .map_err(|e| e.to_string())?
            .to_device(tch::Device::Cpu)
    };
    let scale = model.logit_scale_exp();
    let d = model.config().embed_dim;
    tch::with_grad(|| {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let eye = Tensor::eye(d, (Kind::Float, tch::Device::Cpu));
        let w = vs.root().var_copy("matrix", &eye);
        let mut opt = tch::nn::Adam::default()
            .build(&vs, settings.lr)
            .map_err(|e| e.to_string())?;
        let mut losses = Vec::with_capacity(settings.steps + 1);
        for step in 0..=settings.steps {
            let mapped = l2_normalize(&feats.matmul(&w.transpose(0, 1)));
            let ce =
                (mapped.matmul(&text.transpose(0, 1)) * scale).cross_entropy_for_logits(&truth);
            let reg = (&w - &eye).square().sum(Kind::Float);
            let loss = ce + reg * settings.preserve_weight;
            losses.push(loss.double_value(&[]));
            if step < settings.steps {
                opt.backward_step(&loss);
            }
        }
        Ok(LearnedProjection {
            matrix: w.detach(),
            losses,
        })
    })
}
