//! Raw command-line arguments (clap derive). Nothing here is used past `cli::run`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// typoclip: a testbed for typographic attacks on CLIP.
#[derive(Debug, Parser)]
#[command(name = "typoclip", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Model selection shared by the commands.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// A checkpoint path (format detected from content), a known name resolved in the cache
    /// (`ViT-B-32`, `RN50`, …), or `random:<arch>[:seed]` (seeded random weights, plumbing only).
    /// Default: the cached `ViT-B-32`.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// The architecture of a checkpoint that does not say it (a bare state dict): an open_clip
    /// name (`ViT-B-32` is GELU, `ViT-B-32-quickgelu` OpenAI's) or `ARCH:TAG`.
    #[arg(long)]
    pub arch: Option<String>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when libtorch has it).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Where downloaded checkpoints live (default `$XDG_CACHE_HOME/typoclip`).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The known OpenAI checkpoints: input size, whether each is cached, and where.
    Models(crate::cli::models_cmd::ModelsArgs),
    /// Download an official OpenAI checkpoint into the cache (sha256-verified).
    Fetch(crate::cli::models_cmd::FetchArgs),
    /// Copy a checkpoint downloaded by hand into the cache (sha256-checked).
    Import(crate::cli::models_cmd::ImportArgs),
    /// Image or text embeddings to a float32 `.npy` of shape [N, D].
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// Text to embed (repeatable); when given, images are not accepted.
        #[arg(long)]
        text: Vec<String>,
        /// L2-normalise each embedding.
        #[arg(long)]
        normalize: bool,
        /// Output `.npy` file.
        #[arg(long)]
        out: PathBuf,
        /// Batch size for images.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Images to embed.
        images: Vec<PathBuf>,
    },
    /// Zero-shot classification of images among the given labels.
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        /// Classes: `imagenet` (the 1000 ImageNet classes), a label file (`.tsv`: `wnid<TAB>name`
        /// or one name per line; `.csv` with a `name` column), or a comma-separated list.
        #[arg(long, default_value = "imagenet")]
        labels: String,
        /// Prompt templates: `single` ("a photo of a {}."), `openai7`, `imagenet80`, or a file
        /// with one template per line containing `{}`.
        #[arg(long, default_value = "single")]
        templates: String,
        /// Classify the built-in default images (see datasets/builtin.toml).
        #[arg(long)]
        builtin: bool,
        /// When no --model is given and the default checkpoint is not cached, use
        /// `random:ViT-B-32-quickgelu`, OpenAI's architecture (every output then says it is random).
        #[arg(long)]
        fallback_random: bool,
        /// How many labels to show per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Images to classify.
        images: Vec<PathBuf>,
    },
    /// Evaluate a dataset under attack; writes records, summary and provenance into --out.
    Sweep(SweepArgs),
    /// CLIP BPE token ids of each text (one JSON array per line), as the text tower sees them.
    Tokenize {
        /// Texts to tokenize.
        #[arg(required = true)]
        text: Vec<String>,
        /// Context length (rows are truncated to it, keeping the end-of-text token) [default:
        /// the model's, or 77].
        #[arg(long)]
        context_length: Option<usize>,
        /// Tokenize as this model's text tower does (its tokenizer: CLIP's BPE or the hub
        /// folder's `tokenizer.json`), printing full padded rows; without it, CLIP's BPE rows
        /// up to their end-of-text token.
        #[arg(long, short = 'm')]
        model: Option<String>,
        /// The architecture of a bare checkpoint given as --model.
        #[arg(long)]
        arch: Option<String>,
        /// Where downloaded checkpoints live (default `$XDG_CACHE_HOME/typoclip`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Architecture, input size, embedding size, parameter count and sha256 of a model.
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attack specs: `list` the shipped ones, `check` a file (validation, variant count).
    Attacks {
        #[command(subcommand)]
        command: crate::cli::attack_cmd::AttacksCommand,
    },
    /// Draw an attack spec's variants onto images: PNGs and a contact sheet in --out.
    Render(crate::cli::attack_cmd::RenderArgs),
    /// Write report.html (self-contained) and report.md for a run folder.
    Report(crate::cli::report_cmd::ReportArgs),
    /// Compare runs (models or defenses): comparison.html / .md / .csv.
    Compare(crate::cli::report_cmd::CompareArgs),
    /// Fit a learned defense (projection, heads, prefix) on a calibration set of rendered
    /// words; writes an artifact for `sweep --defense NAME:file=ARTIFACT`.
    Fit(crate::cli::fit_cmd::FitArgs),
    /// Run a comparison plan (`attacks/defense-bench.toml`): fit, then one sweep per
    /// (attack, defense set) into `--out/<attack>/<defense>`.
    Bench(crate::cli::bench_cmd::BenchArgs),
    /// Expand a plan (models × datasets × attacks, sharded) into jobs: `jobs.tsv`, a Slurm
    /// array script, a Kubernetes Indexed Job; `--job K`, `--local -j N`, `--status`, `--merge`.
    Plan(crate::cli::plan_cmd::PlanArgs),
    /// The positive control: train the toy CLIP that reads (`--model toy`), or look at its world.
    Toy(crate::cli::toy_cmd::ToyArgs),
    /// Where the trained text detector (PaddleOCR's PP-OCRv4) sees text: boxes as JSON, and
    /// with `--out` an overlay PNG per image.
    Detect(crate::cli::detect_cmd::DetectArgs),
    /// Spatially pooled activations of image-tower units; top-activating images (HTML contact
    /// sheet); activation change per unit under an attack.
    Neurons(crate::cli::probe_cmd::NeuronsArgs),
    /// Arithmetic over text embeddings (`finance + toys`): nearest labels / images; `--image`
    /// decomposes an image as a sparse non-negative combination of concepts.
    Concepts(crate::cli::probe_cmd::ConceptsArgs),
    /// The Stroop experiment: colour words in other ink colours, P(ink) vs P(word).
    Stroop(crate::cli::probe_cmd::StroopArgs),
    /// Linear probes on frozen image embeddings: `fit`.
    Probe {
        #[command(subcommand)]
        command: crate::cli::probe_cmd::ProbeCommand,
    },
}

/// `typoclip sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dataset: a descriptor (`datasets/*.toml`), or a plain folder — of class sub-folders
    /// (class = folder name, or the ImageNet name of a WordNet-id folder) or of unlabelled
    /// images.
    #[arg(
        long,
        required_unless_present_any = ["builtin", "merge"],
        conflicts_with = "builtin"
    )]
    pub dataset: Option<PathBuf>,
    /// Sweep the built-in default images (`datasets/builtin-images.toml`).
    #[arg(long)]
    pub builtin: bool,
    /// When no --model is given and the default checkpoint is not cached, use
    /// `random:ViT-B-32-quickgelu`, OpenAI's architecture (every output then says it is random).
    #[arg(long)]
    pub fallback_random: bool,
    /// When no --model is given and the default checkpoint is not cached, run the positive
    /// control instead: `--model toy` (the toy CLIP `typoclip toy train` makes) on
    /// `datasets/synthetic.toml` with `attacks/toy-labels.toml`, replacing the dataset and
    /// attacks given (every output then says it is the toy).
    #[arg(long, conflicts_with = "fallback_random")]
    pub fallback_toy: bool,
    /// Write the run's report (`report.html`, `report.md`) when the sweep ends and print its path.
    #[arg(long)]
    pub report: bool,
    /// Override the descriptor's data folder.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Run folder (`results/NAME`).
    #[arg(long)]
    pub out: PathBuf,
    /// Attack spec (`attacks/*.toml`) to render on the dataset's clean images. Without it, the
    /// dataset's physical attacks (photos with the attack in them) are evaluated.
    #[arg(long)]
    pub attacks: Option<PathBuf>,
    /// `zeroshot` (all classes of the label set) or `binary` (true object vs attack word).
    #[arg(long, default_value = "zeroshot")]
    pub mode: String,
    /// Override the descriptor's label set (`imagenet`, a file, a comma list, or `dataset`).
    #[arg(long)]
    pub labels: Option<String>,
    /// Template set: `single`, `openai7`, `imagenet80` or a file.
    #[arg(long, default_value = "single")]
    pub templates: String,
    /// Evaluate at most N images (rendered attacks) or N (clean, attacked) pairs (physical).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only the spec's variants with this name (`*` matches any run of characters); repeatable.
    #[arg(long)]
    pub variant: Vec<String>,
    /// Keep only these classes of the dataset (comma-separated class names or WordNet ids, as
    /// the dataset labels them), before --shuffle and --limit.
    #[arg(long)]
    pub classes: Option<String>,
    /// Image-tower arithmetic: `fp32` (default), `bf16` or `fp16` (autocast: products in the
    /// reduced kind, LayerNorm, softmax and the residual stream in fp32; bf16 is faster on
    /// CPUs with AVX512-BF16, fp16 meant for CUDA; the text classifier stays fp32).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Where variants drawn the same on every image (on the model input, at fixed places) are
    /// drawn: `auto` (on the model's device when it is CUDA), `cpu` (the image workers) or
    /// `device` (rasterised once, composited onto each batch as tensor operations).
    #[arg(long, default_value = "auto", value_parser = parse_composite)]
    pub composite: crate::sweep::Composite,
    /// Shuffle the pairs (with --seed) before --limit.
    #[arg(long)]
    pub shuffle: bool,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pairs per batch (also the resume granularity).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Decode/render/preprocess threads [default: one per CPU]. On the CPU they wait while the
    /// model runs a forward pass, so they never preempt its threads.
    #[arg(long)]
    pub workers: Option<usize>,
    /// libtorch threads [default: libtorch's; on --resume, the count the run started with].
    /// Recorded in provenance: records are bit-identical only at the same count.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// A defense, `name[:key=value,…]` (repeatable; applied by stage — prompt, image, model,
    /// score — then in the order given): prompt, prefix, blur, downscale, jpeg, median, mask,
    /// heads, flip, interpolate, projection. See `src/defense/`.
    #[arg(long = "defense")]
    pub defense: Vec<String>,
    /// A linear probe (`typoclip probe fit`) fitted on this model: its top-5 go into the records
    /// (`probe_clean_top5`, `probe_attacked_top5`) and its metrics into `summary_probe.json/csv`.
    #[arg(long)]
    pub probe: Option<PathBuf>,
    /// Run the trained text detector (PP-OCRv4, `typoclip detect`) on each attacked model
    /// input: records get `text_area` (share of the input inside its boxes) and `text_score`,
    /// so reports show attack success against how much readable text the detector sees.
    #[arg(long)]
    pub text_area: bool,
    /// Evaluate only shard `I` of `N` (zero-based) of the sweep's cells, into
    /// `--out/shards/I-of-N/`; `--merge` then joins the shards (see `src/sweep/shard.rs`).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Merge the finished shards in `--out/shards/` into `--out` (records, summary,
    /// provenance); nothing is evaluated.
    #[arg(long, conflicts_with = "shard")]
    pub merge: bool,
}

fn parse_composite(s: &str) -> Result<crate::sweep::Composite, String> {
    crate::sweep::Composite::parse(s)
        .ok_or_else(|| format!("`{s}` is not one of auto, cpu, device"))
}
