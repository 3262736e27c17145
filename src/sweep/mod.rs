//! The sweep stage: evaluates a dataset under attack and streams one [`Record`] per
//! (image, variant) to `records.jsonl`, then writes `summary.json` / `summary.csv`.
//!
//! Data flows one way: list → decode + preprocess (the model's own transform, as provenance
//! records it: [`crate::preprocess::model_input`] and its mean/std; worker threads, bounded
//! queue, ahead of the model) → batched model → scoring → records. Work is cut into fixed batches of cells; a batch's
//! records are appended and flushed together, and a resumed run redoes any incomplete batch,
//! so an interrupted run continues where it stopped and its final summary is byte-identical to
//! an uninterrupted one. Clean images are encoded once and reused by every variant.
//!
//! Two kinds of cells: *rendered* attacks (an `attacks/*.toml` variant drawn on a clean image by
//! [`crate::attack::render_for_model`], L0 recorded) and *physical* attacks, where the attack is
//! already in the photo and the attacked photo of a scene is compared with its clean
//! counterpart (SCAM vs NoSCAM / SynthSCAM vs NoSCAM, Distill's `<object>-<text>.jpg` vs
//! `<object>-blank.jpg`).
//!
//! Defenses ([`crate::defense`], `SweepSettings::defenses`) plug in at two points here: the
//! image hook on each model input before normalisation (with the renderer's mask for rendered
//! attacks), and the model + score hooks where batches are encoded. With no defense both are
//! the plain pipeline, bit for bit.

pub mod provenance;
pub mod run_spec;
pub mod shard;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::dataset::descriptor::Sample;
use crate::metrics::{summarize, VariantSummary};
use crate::model::ClipModel;
use crate::records::{parse_jsonl, Record, Scored};
use crate::zeroshot::ZeroShotClassifier;

/// How predictions are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalMode {
    /// Among every class of the label set.
    Zeroshot,
    /// Between the true object and the attack word only (SCAM's protocol).
    Binary,
}

/// One unit of work: a clean image, its attacked counterpart, and what the attack aims at.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Clean photo.
    pub clean: Sample,
    /// Attacked photo.
    pub attacked: Sample,
    /// Variant name (the condition, e.g. `SCAM`).
    pub variant: String,
    /// True class.
    pub true_label: Option<String>,
    /// Attack target (the written word, or the spec's target class).
    pub target: Option<String>,
    /// For rendered attacks: the variant drawn on `clean` to make the attacked image (then
    /// `attacked` is the same photo as `clean`), and the per-image seed.
    pub render: Option<(std::sync::Arc<crate::attack::Variant>, u64)>,
}

impl Cell {
    /// The clean photo's id when it is not the attacked sample itself (physical pairs).
    fn clean_id(&self) -> Option<String> {
        (self.clean.id != self.attacked.id).then(|| self.clean.id.clone())
    }

    /// The key of the attacked image (the photo id, or `id#variant` when rendered).
    fn attacked_key(&self) -> String {
        match &self.render {
            Some((v, _)) => format!("{}#{}", self.attacked.id, v.name),
            None => self.attacked.id.clone(),
        }
    }
}

/// Cells of a rendered-attack sweep: every sample × every variant, sample-major, the target
/// taken from the variant, the per-image seed derived from `seed` and the sample id (so it does
/// not depend on --limit or --shuffle). A `skip_own_class` variant has no cell for samples whose
/// true class is its target.
pub fn rendered_cells(
    samples: &[Sample],
    variants: &[crate::attack::Variant],
    seed: u64,
) -> Vec<Cell> {
    let variants: Vec<std::sync::Arc<crate::attack::Variant>> =
        variants.iter().cloned().map(std::sync::Arc::new).collect();
    let mut cells = Vec::with_capacity(samples.len() * variants.len());
    for s in samples {
        let image_seed = image_seed(&s.id, seed);
        for v in &variants {
            if v.skip_own_class && s.label.as_deref() == Some(v.target.as_str()) {
                continue;
            }
            cells.push(Cell {
                clean: s.clone(),
                attacked: s.clone(),
                variant: v.name.clone(),
                true_label: s.label.clone(),
                target: Some(v.target.clone()),
                render: Some((v.clone(), image_seed)),
            });
        }
    }
    cells
}

/// The render seed of one image: the run's seed mixed with the sample id, so it does not depend
/// on which other images are in the run (reports re-render examples with it).
pub fn image_seed(sample_id: &str, seed: u64) -> u64 {
    fnv1a(sample_id.as_bytes()) ^ seed
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Pairs the photos of a physical-attack dataset: each attacked photo with the clean photo of
/// the same scene (`NoSCAM` / `blank`). Photos without a clean partner are skipped.
pub fn physical_cells(samples: &[Sample]) -> Vec<Cell> {
    let mut clean: HashMap<&str, &Sample> = HashMap::new();
    for s in samples {
        if let (Some(p), Some("NoSCAM" | "blank")) = (s.pair.as_deref(), s.condition.as_deref()) {
            clean.insert(p, s);
        }
    }
    let mut cells = Vec::new();
    for s in samples {
        let (Some(p), Some(cond)) = (s.pair.as_deref(), s.condition.as_deref()) else {
            continue;
        };
        if matches!(cond, "NoSCAM" | "blank") {
            continue;
        }
        if let Some(c) = clean.get(p) {
            cells.push(Cell {
                clean: (*c).clone(),
                attacked: s.clone(),
                variant: cond.to_string(),
                true_label: s.label.clone(),
                target: s.attack_text.clone(),
                render: None,
            });
        }
    }
    cells.sort_by(|a, b| (&a.variant, &a.attacked.id).cmp(&(&b.variant, &b.attacked.id)));
    cells
}

/// Settings of one sweep.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Run folder.
    pub out_dir: PathBuf,
    /// Scoring mode.
    pub mode: EvalMode,
    /// Cells per batch (the resume granularity).
    pub batch_size: usize,
    /// Decode/preprocess worker threads.
    pub workers: usize,
    /// Continue a previous run in `out_dir`.
    pub resume: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Arithmetic of the image tower.
    pub precision: Precision,
    /// Defenses applied at their hooks (image: before normalisation; model and score: at
    /// encoding). Empty: the plain pipeline.
    pub defenses: std::sync::Arc<crate::defense::DefenseStack>,
    /// An extra scorer (`sweep --probe`): a linear probe whose top-5 go into the records and
    /// whose metrics go into `summary_probe.json` / `summary_probe.csv`.
    pub linear_probe: Option<std::sync::Arc<crate::probe::linear::LinearProbe>>,
    /// The trained text detector (`sweep --text-area`): each record gets the share of the
    /// attacked model input inside its text boxes and the best box score, before defenses.
    pub text_detector: Option<std::sync::Arc<crate::ocr::TextDetector>>,
    /// Composite image-independent variants on the model's device ([`Composite`]); ignored
    /// with defenses or the text detector, which need every attacked image on the CPU
    /// ([`SweepSettings::composites_on_device`]).
    pub composite_on_device: bool,
}

impl SweepSettings {
    /// Whether this sweep composites image-independent variants on the model's device: asked
    /// for, and no defense or text detector needs the attacked images on the CPU.
    pub fn composites_on_device(&self) -> bool {
        self.composite_on_device && self.defenses.is_empty() && self.text_detector.is_none()
    }
}

/// Where a sweep draws the variants whose drawing is the same on every image (drawn on the model
/// input at fixed places, [`crate::attack::composite`]): in the image workers, with the rest,
/// or on the model's device, rasterised once and composited onto each batch as tensor
/// operations. The pixels are the same (exactly for a variant of one shape, within one level
/// where shapes overlap); `Auto` is the device path when the model runs on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Composite {
    /// The device path on CUDA, the workers elsewhere.
    #[default]
    Auto,
    /// Every variant drawn by the image workers.
    Cpu,
    /// Image-independent variants composited where the model runs (also on the CPU).
    Device,
}

impl Composite {
    /// Parses `--composite`.
    pub fn parse(s: &str) -> Option<Composite> {
        match s {
            "auto" => Some(Composite::Auto),
            "cpu" => Some(Composite::Cpu),
            "device" => Some(Composite::Device),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Composite::Auto => "auto",
            Composite::Cpu => "cpu",
            Composite::Device => "device",
        }
    }

    /// Whether image-independent variants are composited on the device for a model on `device`.
    pub fn on_device(self, device: tch::Device) -> bool {
        match self {
            Composite::Auto => device != tch::Device::Cpu,
            Composite::Cpu => false,
            Composite::Device => true,
        }
    }
}

/// The image tower's arithmetic in a sweep. `Bf16` and `Fp16` run the image encoder under
/// autocast ([`crate::model::kernels::Autocast`]): its matrix products and convolutions in the
/// reduced kind from the fp32 weights, LayerNorm, attention softmax and the residual stream in
/// fp32; features come back fp32 and the text classifier stays fp32. Never the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// fp32 (the reference).
    #[default]
    Fp32,
    /// bfloat16 products (autocast).
    Bf16,
    /// float16 products (autocast; meant for CUDA).
    Fp16,
}

impl Precision {
    /// Parses `--precision`.
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "fp32" => Some(Precision::Fp32),
            "bf16" => Some(Precision::Bf16),
            "fp16" => Some(Precision::Fp16),
            _ => None,
        }
    }

    /// The name recorded in provenance.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The reduced kind of the products, if any.
    pub fn reduced(self) -> Option<crate::model::kernels::Reduced> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(crate::model::kernels::Reduced::BFloat16),
            Precision::Fp16 => Some(crate::model::kernels::Reduced::Half),
        }
    }

    /// Image features (fp32) at this precision, from the model's fp32 weights.
    pub fn encode_image(self, model: &ClipModel, images: &Tensor) -> Tensor {
        match self.reduced() {
            None => model.encode_image(images),
            Some(r) => {
                let _autocast = crate::model::kernels::Autocast::enter(model.device(), Some(r));
                model.encode_image(images).to_kind(Kind::Float)
            }
        }
    }
}

/// What a finished sweep reports (`summary.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct SweepSummary {
    /// Present (and first) for random weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Total records.
    pub records: usize,
    /// Error records.
    pub errors: usize,
    /// Per-variant metrics.
    pub variants: Vec<VariantSummary>,
    /// With `--probe`: the same metrics for the linear probe's predictions (also written to
    /// `summary_probe.json` / `summary_probe.csv`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linear_probe: Option<Vec<VariantSummary>>,
    /// What the reader should know about absent metrics (e.g. a dataset without true labels).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl SweepSummary {
    /// The summary of `records` (records.jsonl's order), with `warning` first; the one place
    /// where records become a summary, for a sweep, a resumed sweep and a report alike.
    pub fn from_records(warning: Option<String>, records: &[Record]) -> SweepSummary {
        let mut notes = Vec::new();
        if records.iter().any(Record::is_ok)
            && !records.iter().any(|r| r.is_ok() && r.true_label.is_some())
        {
            notes.push(
                "no true labels in this dataset: accuracy, attack success rate and P(true) \
                 metrics are absent; targeted metrics (changed to target, target rank) remain"
                    .into(),
            );
        }
        SweepSummary {
            warning,
            records: records.len(),
            errors: records.iter().filter(|r| r.error.is_some()).count(),
            variants: summarize(records),
            linear_probe: None,
            notes,
        }
    }
}

/// Errors that stop a sweep before or during work (bad images do not: they become records).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The run folder holds another run.
    #[error("{path}: cannot resume: {what} differs (was {before}, now {now})")]
    Mismatch {
        /// provenance.json
        path: String,
        /// The differing field.
        what: String,
        /// Old value.
        before: String,
        /// New value.
        now: String,
    },
    /// The run folder exists and --resume was not given.
    #[error(
        "{0}: run folder already has records; pass --resume to continue it or choose another --out"
    )]
    Exists(String),
    /// File I/O.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Nothing to do.
    #[error("{0}")]
    Empty(String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> SweepError {
    SweepError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A decoded photo and its clean model input, or why it could not be read.
type Decoded = Result<(RgbImage, RgbImage), String>;

struct Prepared {
    index: usize,
    /// Preprocessed image and what was seen of the attack; with `overlay`, the clean model
    /// input as `[H, W, 3]` u8 instead, to be attacked on the device.
    result: Result<(Tensor, Seen), String>,
    /// The overlay ([`crate::attack::composite::Overlays`]) still to draw on it.
    overlay: Option<usize>,
}

/// What a sweep measures of one (attacked) model input besides the model's view.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// The attack's L0 fraction (0 for photos as they are).
    l0: f64,
    /// The text detector's box area and best score, with `--text-area`.
    text: Option<(f64, f32)>,
}

/// The detector's view of a model input, before defenses.
fn text_seen(detector: Option<&crate::ocr::TextDetector>, input: &RgbImage) -> Option<(f64, f32)> {
    detector.map(|d| {
        let found = d.detect(input);
        let (w, h) = input.dimensions();
        (found.text_area(w, h), found.max_score())
    })
}

/// One image to decode, optionally attack, and preprocess.
#[derive(Clone)]
struct ImageJob {
    sample: Sample,
    render: Option<(std::sync::Arc<crate::attack::Variant>, u64)>,
}

/// The default number of image workers: every CPU. On the CPU they are kept off the cores while
/// the model runs (see [`ForwardGate`]), so they never compete with the forward pass.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Keeps the image workers and the model's forward pass off the CPU at the same time.
///
/// libtorch's forward uses every core (its intra-op threads); a worker that runs meanwhile
/// preempts one of them, and the others then spin at the next barrier, so each millisecond of
/// decoding costs the forward more than a millisecond (measured: 8–16 % of sweep throughput on 2
/// cores with 1–2 free-running workers). With the gate, workers prepare the next images in the
/// gaps between forward passes, on all cores: a worker enters the gate for each job (it waits
/// while a forward runs), and a forward starts only once the jobs in progress have ended. Not
/// used on CUDA, where the forward leaves the CPUs free and overlapping is pure gain.
#[derive(Debug, Default)]
pub struct ForwardGate {
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// A forward pass holds the gate (or waits for the jobs in progress to end).
    forward: bool,
    /// Worker jobs in progress.
    jobs: usize,
}

/// A worker's job in progress; dropping it lets a waiting forward pass start.
pub struct GateJob<'a>(&'a ForwardGate);

impl Drop for GateJob<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("forward gate").jobs -= 1;
        self.0.changed.notify_all();
    }
}

impl ForwardGate {
    /// Blocks while a forward pass holds the gate, then counts a job in progress until the
    /// returned guard is dropped.
    pub fn enter_job(&self) -> GateJob<'_> {
        let mut state = self.state.lock().expect("forward gate");
        while state.forward {
            state = self.changed.wait(state).expect("forward gate");
        }
        state.jobs += 1;
        GateJob(self)
    }

    /// Runs `forward` once the jobs in progress have ended, with new jobs held back until it
    /// returns (or panics).
    pub fn run<T>(&self, forward: impl FnOnce() -> T) -> T {
        struct Open<'a>(&'a ForwardGate);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                self.0.state.lock().expect("forward gate").forward = false;
                self.0.changed.notify_all();
            }
        }
        {
            let mut state = self.state.lock().expect("forward gate");
            state.forward = true;
            while state.jobs > 0 {
                state = self.changed.wait(state).expect("forward gate");
            }
        }
        let _open = Open(self);
        forward()
    }
}

/// Decodes, renders and preprocesses `jobs` (in the order given) on `workers` threads that
/// run ahead of the model: results go through a queue bounded at `ahead` images, so decoding
/// waits when the model is behind and memory stays flat. Results arrive in any order; the caller
/// reorders by `index`. Dropping the receiver stops the workers.
/// What every image worker applies: the model's transform, the image defenses, the text
/// detector and the overlays left to the device.
#[derive(Clone)]
struct ImageStage {
    transform: crate::preprocess::PreprocessCfg,
    defenses: std::sync::Arc<crate::defense::DefenseStack>,
    detector: Option<std::sync::Arc<crate::ocr::TextDetector>>,
    overlays: std::sync::Arc<crate::attack::composite::Overlays>,
}

fn prepare_images(
    jobs: Vec<(usize, ImageJob)>,
    stage: ImageStage,
    workers: usize,
    ahead: usize,
    gate: Option<std::sync::Arc<ForwardGate>>,
) -> std::sync::mpsc::Receiver<Prepared> {
    let (tx, rx) = sync_channel::<Prepared>(ahead.max(1));
    let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs.into_iter().peekable()));
    for _ in 0..workers.max(1) {
        let tx = tx.clone();
        let jobs = jobs.clone();
        let ImageStage {
            transform,
            defenses,
            detector,
            overlays,
        } = stage.clone();
        let gate = gate.clone();
        std::thread::spawn(move || {
            // The last photo this worker decoded and its clean model input. A worker takes all
            // the consecutive jobs of one photo (its clean image and its variants) at once, so
            // each photo is decoded and resized once, whatever the number of workers.
            let mut last: Option<(PathBuf, Decoded)> = None;
            let mut mine: std::collections::VecDeque<(usize, ImageJob)> = Default::default();
            loop {
                // Ended before the result is queued: a worker blocked on a full queue must not
                // hold back the forward pass that drains it.
                let in_progress = gate.as_deref().map(ForwardGate::enter_job);
                if mine.is_empty() {
                    let mut queue = jobs.lock().expect("job queue");
                    if let Some(first) = queue.next() {
                        let path = first.1.sample.path.clone();
                        mine.push_back(first);
                        while let Some(next) = queue.next_if(|(_, j)| j.sample.path == path) {
                            mine.push_back(next);
                        }
                    }
                }
                let Some((index, job)) = mine.pop_front() else {
                    break;
                };
                if last
                    .as_ref()
                    .map(|(p, _)| p != &job.sample.path)
                    .unwrap_or(true)
                {
                    let decoded = crate::dataset::load_rgb(&job.sample.path)
                        .map(|img| {
                            let input = crate::preprocess::model_input(&img, &transform);
                            (img, input)
                        })
                        .map_err(|e| e.to_string());
                    last = Some((job.sample.path.clone(), decoded));
                }
                let decoded = &last.as_ref().expect("just set").1;
                let overlay = job
                    .render
                    .as_ref()
                    .and_then(|(v, _)| overlays.index_of(&v.name));
                let result = decoded
                    .as_ref()
                    .map_err(Clone::clone)
                    .map(|(img, input)| match &job.render {
                        Some(_) if overlay.is_some() => (
                            crate::attack::composite::image_tensor(input),
                            Seen::default(),
                        ),
                        None => {
                            let ctx = crate::defense::ImageContext::default();
                            let text = text_seen(detector.as_deref(), input);
                            let input = defenses.transform_image(input.clone(), &ctx);
                            let t =
                                crate::preprocess::to_normalized_tensor_with(&input, &transform);
                            (t, Seen { l0: 0.0, text })
                        }
                        Some((variant, seed)) => {
                            let r = crate::attack::render_for_model_with_input(
                                img,
                                input.clone(),
                                variant,
                                &transform,
                                *seed,
                                None,
                            );
                            let mask = defenses
                                .needs_oracle_mask()
                                .then(|| crate::defense::mask::oracle_mask(&r));
                            let ctx = crate::defense::ImageContext {
                                oracle_mask: mask.as_ref(),
                            };
                            let l0 = r.rendered.l0_fraction;
                            let text = text_seen(detector.as_deref(), &r.attacked_input);
                            let input = defenses.transform_image(r.attacked_input, &ctx);
                            let t =
                                crate::preprocess::to_normalized_tensor_with(&input, &transform);
                            (t, Seen { l0, text })
                        }
                    });
                drop(in_progress);
                if tx
                    .send(Prepared {
                        index,
                        result,
                        overlay,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    rx
}

/// The model-input batch of `good`: the workers' normalised inputs, and the clean inputs of
/// overlay jobs composited on the overlays' device (their L0 into `l0`, by position).
fn assemble(
    good: &[&Prepared],
    overlays: Option<&crate::attack::composite::DeviceOverlays>,
    l0: &mut [Option<f64>],
) -> Tensor {
    let tensor = |p: &Prepared| p.result.as_ref().unwrap().0.shallow_clone();
    let (deferred, plain): (Vec<usize>, Vec<usize>) =
        (0..good.len()).partition(|&i| good[i].overlay.is_some());
    let Some(overlays) = overlays.filter(|_| !deferred.is_empty()) else {
        // The model uploads it ([`crate::model::upload`]).
        return Tensor::stack(&good.iter().map(|p| tensor(p)).collect::<Vec<_>>(), 0);
    };
    let clean = Tensor::stack(
        &deferred
            .iter()
            .map(|&i| tensor(good[i]))
            .collect::<Vec<_>>(),
        0,
    );
    let ids: Vec<i64> = deferred
        .iter()
        .map(|&i| good[i].overlay.expect("deferred") as i64)
        .collect();
    let (attacked, changed) = overlays.composite(&clean, &ids);
    let device = attacked.device();
    let (h, w) = (attacked.size()[2], attacked.size()[3]);
    for (&i, c) in deferred.iter().zip(changed) {
        l0[i] = Some(c as f64 / (h * w) as f64);
    }
    if plain.is_empty() {
        return attacked;
    }
    let mut out = Tensor::zeros([good.len() as i64, 3, h, w], (tch::Kind::Float, device));
    let rest = Tensor::stack(
        &plain.iter().map(|&i| tensor(good[i])).collect::<Vec<_>>(),
        0,
    );
    let index = |v: &[usize]| {
        Tensor::from_slice(&v.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device)
    };
    let _ = out.index_copy_(0, &index(&plain), &crate::model::upload(&rest, device));
    let _ = out.index_copy_(0, &index(&deferred), &attacked);
    out
}

fn top5(probs: &Tensor, labels: &crate::zeroshot::LabelSet) -> Vec<Scored> {
    let k = 5.min(labels.len()) as i64;
    let (v, i) = probs.topk(k, -1, true, true);
    let v = Vec::<f32>::try_from(v).expect("f32");
    let i = Vec::<i64>::try_from(i).expect("i64");
    i.iter()
        .zip(v)
        .map(|(&j, p)| Scored {
            label: labels.classes[j as usize].name.clone(),
            prob: p,
        })
        .collect()
}

fn score(
    cell: &Cell,
    clean: &Tensor,
    attacked: &Tensor,
    full: &ZeroShotClassifier,
    mode: EvalMode,
    l0: f64,
) -> Record {
    let subset;
    let clf = match mode {
        EvalMode::Zeroshot => full,
        EvalMode::Binary => {
            let idx: Vec<usize> = [cell.true_label.as_deref(), cell.target.as_deref()]
                .iter()
                .flatten()
                .filter_map(|n| full.labels.index_of_name(n))
                .collect();
            subset = full.subset(&idx);
            &subset
        }
    };
    let pc = clf.probs(&clean.unsqueeze(0)).squeeze_dim(0);
    let pa = clf.probs(&attacked.unsqueeze(0)).squeeze_dim(0);
    let find = |name: &Option<String>| name.as_deref().and_then(|n| clf.labels.index_of_name(n));
    let ti = find(&cell.true_label);
    let gi = find(&cell.target);
    let p = |t: &Tensor, i: Option<usize>| {
        i.map(|i| f64::try_from(t.get(i as i64)).unwrap_or(0.0) as f32)
    };
    let rank = gi.map(|g| {
        let pg = f64::try_from(pa.get(g as i64)).unwrap_or(0.0);
        1 + i64::try_from(pa.gt(pg).sum(Kind::Int64)).unwrap_or(0) as u32
    });
    let canonical = |name: &Option<String>, i: Option<usize>| {
        name.clone()
            .map(|n| i.map(|i| clf.labels.classes[i].name.clone()).unwrap_or(n))
    };
    Record {
        sample_id: cell.attacked.id.clone(),
        clean_id: cell.clean_id(),
        variant: cell.variant.clone(),
        true_label: canonical(&cell.true_label, ti),
        target: canonical(&cell.target, gi),
        clean_top5: top5(&pc, &clf.labels),
        attacked_top5: top5(&pa, &clf.labels),
        p_true_clean: p(&pc, ti),
        p_true_attacked: p(&pa, ti),
        p_target_clean: p(&pc, gi),
        p_target_attacked: p(&pa, gi),
        target_rank_attacked: rank,
        l0,
        error: None,
        probe_clean_top5: Vec::new(),
        probe_attacked_top5: Vec::new(),
        text_area: None,
        text_score: None,
    }
}

/// Runs (or resumes) a sweep over cells (physical pairs or rendered attacks); `provenance` is written (or checked, on resume)
/// before any work. Returns the summary.
pub fn run_physical(
    model: &ClipModel,
    classifier: &ZeroShotClassifier,
    cells: &[Cell],
    settings: &SweepSettings,
    provenance: &provenance::Provenance,
) -> Result<SweepSummary, SweepError> {
    run_cells(
        model,
        classifier,
        cells,
        0..cells.len(),
        settings,
        provenance,
    )
}

/// As [`run_physical`], for the cells `cell_range` of `cells` only (a shard: it starts at a
/// multiple of the batch size). The images are still encoded in the whole run's fixed image
/// batches, so each record equals the one an unsharded run writes for the same cell.
pub fn run_cells(
    model: &ClipModel,
    classifier: &ZeroShotClassifier,
    cells: &[Cell],
    cell_range: std::ops::Range<usize>,
    settings: &SweepSettings,
    provenance: &provenance::Provenance,
) -> Result<SweepSummary, SweepError> {
    if cells.is_empty() {
        return Err(SweepError::Empty(
            "no (clean, attacked) pairs to evaluate in this dataset".into(),
        ));
    }
    assert!(cell_range.end <= cells.len() && cell_range.start.is_multiple_of(settings.batch_size));
    let out = &settings.out_dir;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let records_path = out.join("records.jsonl");
    let mut done: Vec<Record> = Vec::new();
    if records_path.exists() {
        if !settings.resume {
            return Err(SweepError::Exists(out.display().to_string()));
        }
        provenance.check_resumable(&out.join("provenance.json"))?;
        let text = std::fs::read_to_string(&records_path).map_err(|e| io_err(&records_path, e))?;
        let (recs, _) = parse_jsonl(&text);
        // Keep whole batches only: a partly written batch is redone with the same composition.
        let whole = (recs.len() / settings.batch_size * settings.batch_size).min(cell_range.len());
        done = recs.into_iter().take(whole).collect();
        let keep: String = done.iter().map(|r| r.to_json_line() + "\n").collect();
        std::fs::write(&records_path, keep).map_err(|e| io_err(&records_path, e))?;
    }
    provenance.write(&out.join("provenance.json"))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&records_path)
        .map_err(|e| io_err(&records_path, e))?;
    // The run's transform as its provenance records it (absent there: OpenAI's).
    let transform = provenance.image_transform.clone().unwrap_or_else(|| {
        crate::preprocess::PreprocessCfg::square(model.image_resolution() as u32)
    });
    let bar = crate::progress::bar(cell_range.len() as u64, settings.progress);
    bar.set_position(done.len() as u64);
    // Every distinct image, in first-use order, encoded in fixed image batches: the batch an
    // image falls in never depends on where a run was resumed, so the floating-point results
    // (and the summary) are identical to an uninterrupted run's.
    let mut images: Vec<ImageJob> = Vec::new();
    let mut image_index: HashMap<String, usize> = HashMap::new();
    let mut cell_images: Vec<[usize; 2]> = Vec::with_capacity(cells.len());
    for c in cells {
        let clean = (
            c.clean.id.clone(),
            ImageJob {
                sample: c.clean.clone(),
                render: None,
            },
        );
        let attacked = (
            c.attacked_key(),
            ImageJob {
                sample: c.attacked.clone(),
                render: c.render.clone(),
            },
        );
        let mut pair = [0; 2];
        for (slot, (key, job)) in [clean, attacked].into_iter().enumerate() {
            pair[slot] = *image_index.entry(key).or_insert_with(|| {
                images.push(job);
                images.len() - 1
            });
        }
        cell_images.push(pair);
    }
    drop(image_index);
    let start = cell_range.start + done.len();
    // How many remaining cells still need each image: a feature is dropped after its last use,
    // so memory holds only what is in flight, whatever the dataset's size.
    let mut uses = vec![0u32; images.len()];
    for pair in &cell_images[start..cell_range.end] {
        for &i in pair {
            uses[i] += 1;
        }
    }
    // The probe's class names in the zero-shot label set's spelling where the WordNet ids agree,
    // so true labels and targets compare across the two scorers.
    let probe_scorer = settings.linear_probe.as_ref().map(|p| {
        let mut l = p.label_set();
        for c in l.classes.iter_mut() {
            if let Some(i) = c
                .wnid
                .as_deref()
                .and_then(|w| classifier.labels.index_of_wnid(w))
            {
                c.name = classifier.labels.classes[i].name.clone();
            }
        }
        (p.scorer(), l)
    });
    let image_batch = settings.batch_size * 2;
    let mut needed: Vec<usize> = (0..images.len())
        .filter(|&i| uses[i] > 0)
        .map(|i| i / image_batch)
        .collect();
    needed.dedup();
    let jobs: Vec<(usize, ImageJob)> = needed
        .iter()
        .flat_map(|&ib| ib * image_batch..((ib + 1) * image_batch).min(images.len()))
        .map(|i| (i, images[i].clone()))
        .collect();
    drop(images);
    let encoded_total = jobs.len();
    let mut on_device = 0usize;
    let clock = std::time::Instant::now();
    let gate =
        (model.device() == tch::Device::Cpu).then(|| std::sync::Arc::new(ForwardGate::default()));
    // Variants drawn the same on every image, composited on the device when asked for.
    let overlays = std::sync::Arc::new(if settings.composites_on_device() {
        crate::attack::composite::Overlays::for_variants(
            jobs.iter()
                .filter_map(|(_, j)| j.render.as_ref().map(|(v, _)| v)),
            &transform,
        )
    } else {
        Default::default()
    });
    let device_overlays = (!overlays.is_empty()).then(|| {
        crate::attack::composite::DeviceOverlays::new(&overlays, &transform, model.device())
    });
    let prepared = prepare_images(
        jobs,
        ImageStage {
            transform,
            defenses: settings.defenses.clone(),
            detector: settings.text_detector.clone(),
            overlays: overlays.clone(),
        },
        settings.workers,
        image_batch * 2,
        gate.clone(),
    );
    let mut waiting: HashMap<usize, Prepared> = HashMap::new();
    // Where the main thread's time goes, for the closing timing line.
    let (mut time_forward, mut time_waiting, mut time_writing) = (0.0f64, 0.0f64, 0.0f64);
    let mut features: HashMap<usize, Result<(Tensor, Seen), String>> = HashMap::new();
    let mut next_cell = start;
    let mut lines = String::new();
    let _guard = tch::no_grad_guard();
    for ib in needed {
        let range = ib * image_batch..((ib + 1) * image_batch).min(uses.len());
        // Gather this image batch from the queue (later images wait in `waiting`).
        let mut batch: Vec<Prepared> = Vec::with_capacity(range.len());
        let waited = std::time::Instant::now();
        for i in range.clone() {
            loop {
                if let Some(p) = waiting.remove(&i) {
                    batch.push(p);
                    break;
                }
                let p = prepared
                    .recv()
                    .map_err(|_| io_err(out, "image workers stopped"))?;
                waiting.insert(p.index, p);
            }
        }
        time_waiting += waited.elapsed().as_secs_f64();
        let good: Vec<&Prepared> = batch.iter().filter(|p| p.result.is_ok()).collect();
        if !good.is_empty() {
            // The L0 of the inputs attacked on the device, known once they are composited.
            let mut device_l0: Vec<Option<f64>> = vec![None; good.len()];
            let mut encode = || {
                let batch_t = assemble(&good, device_overlays.as_ref(), &mut device_l0);
                if settings.defenses.is_empty() {
                    settings.precision.encode_image(model, &batch_t)
                } else {
                    settings.defenses.encode_images(model, &batch_t)
                }
                .to_device(tch::Device::Cpu)
            };
            let forward = std::time::Instant::now();
            let f = match &gate {
                Some(gate) => gate.run(&mut encode),
                None => encode(),
            };
            time_forward += forward.elapsed().as_secs_f64();
            on_device += device_l0.iter().filter(|l| l.is_some()).count();
            for (i, p) in good.iter().enumerate() {
                if uses[p.index] > 0 {
                    let mut seen = p.result.as_ref().unwrap().1;
                    if let Some(l0) = device_l0[i] {
                        seen.l0 = l0;
                    }
                    features.insert(p.index, Ok((f.get(i as i64), seen)));
                }
            }
        }
        for p in batch.iter().filter(|p| p.result.is_err()) {
            if uses[p.index] > 0 {
                features.insert(p.index, Err(p.result.as_ref().unwrap_err().clone()));
            }
        }
        drop(batch);
        // Score every cell whose images are ready, in order; write whole cell batches.
        while next_cell < cell_range.end {
            let [ci, ai] = cell_images[next_cell];
            let (Some(clean), Some(attacked)) = (features.get(&ci), features.get(&ai)) else {
                break;
            };
            let c = &cells[next_cell];
            let rec = match (clean, attacked) {
                (Ok((cf, _)), Ok((af, seen))) => {
                    let mut rec = score(c, cf, af, classifier, settings.mode, seen.l0);
                    rec.text_area = seen.text.map(|t| t.0);
                    rec.text_score = seen.text.map(|t| t.1);
                    if let Some((scorer, labels)) = &probe_scorer {
                        let probs = scorer.probs(&Tensor::stack(&[cf, af], 0));
                        rec.probe_clean_top5 = top5(&probs.get(0), labels);
                        rec.probe_attacked_top5 = top5(&probs.get(1), labels);
                    }
                    rec
                }
                (Err(e), _) | (_, Err(e)) => Record {
                    sample_id: c.attacked.id.clone(),
                    clean_id: c.clean_id(),
                    variant: c.variant.clone(),
                    true_label: c.true_label.clone(),
                    target: c.target.clone(),
                    error: Some(e.clone()),
                    ..Record::default()
                },
            };
            for i in [ci, ai] {
                uses[i] -= 1;
                if uses[i] == 0 {
                    features.remove(&i);
                }
            }
            let line = rec.to_json_line();
            // The summary is made from records as they read back from records.jsonl, so a
            // fresh run and a resumed one (whose first records come from the file) aggregate
            // the very same values.
            done.push(serde_json::from_str(&line).expect("a record reads back"));
            lines.push_str(&line);
            lines.push('\n');
            next_cell += 1;
            if next_cell.is_multiple_of(settings.batch_size) || next_cell == cell_range.end {
                let writing = std::time::Instant::now();
                file.write_all(lines.as_bytes())
                    .map_err(|e| io_err(&records_path, e))?;
                file.flush().map_err(|e| io_err(&records_path, e))?;
                file.sync_data().map_err(|e| io_err(&records_path, e))?;
                time_writing += writing.elapsed().as_secs_f64();
                lines.clear();
                bar.set_position(done.len() as u64);
            }
        }
    }
    debug_assert_eq!(next_cell, cell_range.end);
    let secs = clock.elapsed().as_secs_f64();
    eprintln!(
        "[sweep] {encoded_total} images read, attacked and encoded in {secs:.1} s ({:.2} images/s; \
         model {time_forward:.1} s, waiting for images {time_waiting:.1} s, writing records \
         {time_writing:.1} s, scoring and the rest {:.1} s){}",
        encoded_total as f64 / secs.max(1e-9),
        secs - time_forward - time_waiting - time_writing,
        if on_device > 0 {
            format!("; {on_device} attacked where the model runs")
        } else {
            String::new()
        }
    );
    bar.finish_and_clear();
    let summary = write_run_summary(out, provenance, &done)?;
    let mut finished = provenance.clone();
    finished.finish();
    finished.write(&out.join("provenance.json"))?;
    Ok(summary)
}

/// Summarises a run's records (records.jsonl's order) and writes `summary.json` / `.csv`, and
/// with a linear probe (`provenance.linear_probe`) `summary_probe.json` / `.csv`: the tail of
/// a sweep, and all of a shard merge.
pub fn write_run_summary(
    out: &Path,
    provenance: &provenance::Provenance,
    records: &[Record],
) -> Result<SweepSummary, SweepError> {
    let warning = provenance.caveat();
    let probe_view: Option<Vec<Record>> = provenance.linear_probe.as_ref().map(|_| {
        records
            .iter()
            .filter_map(Record::linear_probe_view)
            .collect()
    });
    let summary = SweepSummary {
        linear_probe: probe_view.as_deref().map(summarize),
        ..SweepSummary::from_records(warning.clone(), records)
    };
    write_summary(out, &summary)?;
    if let Some(view) = &probe_view {
        let probe_summary = SweepSummary::from_records(warning, view);
        write_summary_named(out, "summary_probe", &probe_summary)?;
    }
    Ok(summary)
}

/// Writes a file through a temporary sibling, synced to disk, and a rename, so readers (and a
/// resume after power loss) see the old file or the whole new one, never half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SweepError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Writes `summary.json` and `summary.csv` (atomically; the CSV's first line is the
/// random-weights banner when it applies).
pub fn write_summary(out: &Path, summary: &SweepSummary) -> Result<(), SweepError> {
    write_summary_named(out, "summary", summary)
}

/// As [`write_summary`], into `<stem>.json` and `<stem>.csv`.
pub fn write_summary_named(
    out: &Path,
    stem: &str,
    summary: &SweepSummary,
) -> Result<(), SweepError> {
    write_atomic(
        &out.join(format!("{stem}.json")),
        &serde_json::to_vec_pretty(summary).expect("serialisable"),
    )?;
    let csv_path = out.join(format!("{stem}.csv"));
    let mut csv = Vec::new();
    if let Some(w) = &summary.warning {
        csv.extend_from_slice(format!("# {w}\n").as_bytes());
    }
    let mut writer = csv::Writer::from_writer(csv);
    let werr = |e: csv::Error| io_err(&csv_path, e);
    writer.write_record(summary_csv_header()).map_err(werr)?;
    for v in &summary.variants {
        writer.write_record(summary_csv_row(v)).map_err(werr)?;
    }
    let csv = writer
        .into_inner()
        .map_err(|e| io_err(&csv_path, e.error()))?;
    write_atomic(&csv_path, &csv)
}

/// A `summary.csv` column group: its name and how to read it from a variant summary.
type SummaryColumn<T> = (&'static str, fn(&VariantSummary) -> Option<T>);

/// The rates of a variant summary in `summary.csv`, in column order, each written as value,
/// Wilson 95 % bounds and n.
const SUMMARY_CSV_RATES: [SummaryColumn<crate::metrics::Rate>; 10] = [
    ("fraction_changed_to", |v| v.fraction_changed_to),
    ("fraction_already_equal", |v| v.fraction_already_equal),
    ("fraction_changed_away", |v| v.fraction_changed_away),
    ("fraction_both_results_not_target", |v| {
        v.fraction_both_results_not_target
    }),
    ("clean_accuracy", |v| v.clean_accuracy),
    ("attacked_accuracy", |v| v.attacked_accuracy),
    ("clean_top5_accuracy", |v| v.clean_top5_accuracy),
    ("attacked_top5_accuracy", |v| v.attacked_top5_accuracy),
    ("attack_success_rate", |v| v.attack_success_rate),
    ("flip_rate", |v| Some(v.flip_rate)),
];

/// The means of a variant summary in `summary.csv`, after the rates.
const SUMMARY_CSV_MEANS: [SummaryColumn<f64>; 3] = [
    ("accuracy_drop", |v| v.accuracy_drop),
    ("mean_true_prob_drop", |v| v.mean_true_prob_drop),
    ("mean_target_rank", |v| v.mean_target_rank),
];

fn summary_csv_header() -> Vec<String> {
    let mut header: Vec<String> = [
        "variant",
        "target",
        "records",
        "errors",
        "avg_img_l0_norm_diff",
    ]
    .map(String::from)
    .to_vec();
    for (r, _) in SUMMARY_CSV_RATES {
        header.extend([
            r.to_string(),
            format!("{r}_lo"),
            format!("{r}_hi"),
            format!("{r}_n"),
        ]);
    }
    header.extend(SUMMARY_CSV_MEANS.map(|(m, _)| m.to_string()));
    header
}

/// One `summary.csv` row, in [`summary_csv_header`]'s order; absent metrics are empty cells.
fn summary_csv_row(v: &VariantSummary) -> Vec<String> {
    let mut row = vec![
        v.variant.clone(),
        v.target.clone().unwrap_or_default(),
        v.records.to_string(),
        v.errors.to_string(),
        format!("{:.6}", v.avg_img_l0_norm_diff),
    ];
    for (_, rate) in SUMMARY_CSV_RATES {
        match rate(v) {
            Some(r) => row.extend([
                format!("{:.6}", r.value),
                format!("{:.6}", r.lo),
                format!("{:.6}", r.hi),
                r.n.to_string(),
            ]),
            None => row.extend([String::new(), String::new(), String::new(), String::new()]),
        }
    }
    for (_, mean) in SUMMARY_CSV_MEANS {
        row.push(mean(v).map(|x| format!("{x:.6}")).unwrap_or_default());
    }
    row
}

#[cfg(test)]
mod tests {
    use super::ForwardGate;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn forward_gate_holds_workers_until_the_forward_ends() {
        let gate = Arc::new(ForwardGate::default());
        let passed = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let worker = gate.run(|| {
            let (gate, flag) = (gate.clone(), passed.clone());
            let worker = std::thread::spawn(move || {
                started_tx.send(()).unwrap();
                let _job = gate.enter_job();
                flag.store(true, Ordering::SeqCst);
            });
            started_rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(
                !passed.load(Ordering::SeqCst),
                "a worker ran during the forward"
            );
            worker
        });
        worker.join().unwrap();
        assert!(passed.load(Ordering::SeqCst));
        // A panicking forward still opens the gate.
        let g = gate.clone();
        let _ = std::thread::spawn(move || g.run(|| panic!("forward failed"))).join();
        drop(gate.enter_job());
    }

    #[test]
    fn forward_waits_for_the_jobs_in_progress() {
        let gate = Arc::new(ForwardGate::default());
        let job_ended = Arc::new(AtomicBool::new(false));
        let job = gate.enter_job();
        let (g, ended) = (gate.clone(), job_ended.clone());
        let forward = std::thread::spawn(move || g.run(|| ended.load(Ordering::SeqCst)));
        std::thread::sleep(std::time::Duration::from_millis(50));
        job_ended.store(true, Ordering::SeqCst);
        drop(job);
        assert!(
            forward.join().unwrap(),
            "the forward started while a job was in progress"
        );
    }

    #[test]
    fn summary_csv_has_every_metric_and_quotes_names() {
        use crate::metrics::{summarize_variant, Rate};
        let mut v = summarize_variant("label \"iPod\", top-left", &[]);
        v.target = Some("iPod".into());
        v.clean_top5_accuracy = Some(Rate::new(3, 4));
        v.mean_target_rank = Some(2.5);
        v.accuracy_drop = None;
        let dir = std::env::temp_dir().join(format!("typoclip-summary-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let summary = super::SweepSummary {
            warning: Some("random weights — test".into()),
            records: 0,
            errors: 0,
            variants: vec![v],
            linear_probe: None,
            notes: Vec::new(),
        };
        super::write_summary(&dir, &summary).unwrap();
        let text = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let (banner, table) = text.split_once('\n').unwrap();
        assert_eq!(banner, "# random weights — test");
        let mut reader = csv::Reader::from_reader(table.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header, super::summary_csv_header());
        assert_eq!(header.len(), 5 + 4 * 10 + 3);
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        let cell = |name: &str| rows[0][header.iter().position(|h| h == name).unwrap()].to_string();
        assert_eq!(cell("variant"), "label \"iPod\", top-left");
        assert_eq!(cell("target"), "iPod");
        assert_eq!(cell("clean_top5_accuracy"), "0.750000");
        assert_eq!(cell("clean_top5_accuracy_n"), "4");
        assert_eq!(cell("mean_target_rank"), "2.500000");
        assert_eq!(cell("accuracy_drop"), "");
    }
}
