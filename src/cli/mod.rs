//! The command-line stage: parses arguments, resolves them into typed settings (model spec,
//! device), runs the command and maps errors to one line and an exit code.

pub mod args;
pub mod attack_cmd;
pub mod bench_cmd;
pub mod detect_cmd;
pub mod fit_cmd;
pub mod models_cmd;
pub mod plan_cmd;
pub mod probe_cmd;
pub mod report_cmd;
pub mod resolve;
pub mod sweep_cmd;
pub mod toy_cmd;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use tch::Tensor;

use crate::model::l2_normalize;
use crate::tokenizer::ClipTokenizer;
use crate::zeroshot::{LabelSet, TemplateSet, TextCache};
use args::{Cli, Command};
use resolve::{cache_dir, open_model, open_model_or_random, OpenedModel};

/// Exit code for bad input or configuration.
pub const EXIT_USAGE: u8 = 2;

/// Parses `std::env::args`, runs, and returns the process exit code.
pub fn main_exit_code() -> std::process::ExitCode {
    crate::model::kernels::retain_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            std::process::ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let _guard = tch::no_grad_guard();
    match cli.command {
        Command::Models(args) => models_cmd::run_models(args),
        Command::Report(args) => report_cmd::run_report(args),
        Command::Compare(args) => report_cmd::run_compare(args),
        Command::Plan(args) => plan_cmd::run_plan(args),
        Command::Toy(args) => toy_cmd::run_toy(args),
        Command::Detect(args) => detect_cmd::run_detect(args),
        Command::Fetch(args) => models_cmd::run_fetch(args),
        Command::Import(args) => models_cmd::run_import(args),
        Command::Embed {
            model,
            text,
            normalize,
            out,
            batch_size,
            images,
        } => {
            let m = open_model(&model)?;
            if !text.is_empty() && !images.is_empty() {
                bail!("give either --text or images, not both");
            }
            if text.is_empty() && images.is_empty() {
                bail!("nothing to embed: give images or --text");
            }
            let features = if text.is_empty() {
                encode_image_files(&m, &images, batch_size.max(1))?
            } else {
                let tok = m.tokenizer()?;
                let refs: Vec<&str> = text.iter().map(String::as_str).collect();
                let ids = tok
                    .tokenize_tensor(&refs, m.model.config().text.context_length as usize)
                    .map_err(|e| anyhow::anyhow!("--text: {e}"))?;
                m.model.encode_text(&ids)
            };
            let features = if normalize {
                l2_normalize(&features)
            } else {
                features
            };
            write_npy(&out, &features)?;
            eprintln!("{}", m.banner_line());
            eprintln!(
                "wrote {} embeddings of dimension {} to {}",
                features.size()[0],
                features.size()[1],
                out.display()
            );
            Ok(())
        }
        Command::Classify {
            model,
            labels,
            templates,
            builtin,
            fallback_random,
            top,
            json,
            mut images,
        } => {
            let labels = LabelSet::resolve(&labels)?;
            let templates = TemplateSet::resolve(&templates)?;
            let mut expected: Vec<Option<String>> = vec![None; images.len()];
            if builtin {
                for b in crate::dataset::builtin_images()? {
                    images.push(b.path);
                    expected.push(Some(b.label));
                }
            }
            if images.is_empty() {
                bail!("nothing to classify: give image files or --builtin");
            }
            let m = open_model_or_random(&model, fallback_random)?;
            let tok = m.tokenizer()?;
            let cache =
                TextCache::new(cache_dir(model.cache_dir.as_deref()).join("text-classifiers"));
            let (clf, _) =
                cache.load_or_build(&m.cache_id(), &m.model, &*tok, labels, templates)?;
            let image = encode_image_files(&m, &images, 32)?;
            let probs = clf.probs(&image);
            let k = top.clamp(1, clf.labels.len());
            let results: Vec<ClassifyResult> = images
                .iter()
                .zip(expected)
                .enumerate()
                .map(|(i, (path, expected))| {
                    let (vals, idx) = probs.get(i as i64).topk(k as i64, -1, true, true);
                    let vals = Vec::<f32>::try_from(vals).expect("f32 probabilities");
                    let idx = Vec::<i64>::try_from(idx).expect("i64 indices");
                    ClassifyResult {
                        image: path.display().to_string(),
                        expected,
                        top: idx
                            .iter()
                            .zip(vals)
                            .map(|(&j, p)| LabelProb {
                                label: clf.labels.classes[j as usize].name.clone(),
                                prob: p,
                            })
                            .collect(),
                    }
                })
                .collect();
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if json {
                let doc = ClassifyReport {
                    warning: m.random_warning(),
                    model: m.spec.clone(),
                    random_weights: m.random,
                    labels: clf.labels.name.clone(),
                    templates: clf.templates.name.clone(),
                    results,
                };
                writeln!(out, "{}", serde_json::to_string(&doc)?)?;
            } else {
                writeln!(out, "{}", m.banner_line())?;
                writeln!(
                    out,
                    "# {} classes ({}), templates {}",
                    clf.labels.len(),
                    clf.labels.name,
                    clf.templates.name
                )?;
                for r in results {
                    match &r.expected {
                        Some(e) => writeln!(out, "{} (shows: {e})", r.image)?,
                        None => writeln!(out, "{}", r.image)?,
                    }
                    for lp in r.top {
                        writeln!(out, "  {:>7.2}%  {}", lp.prob * 100.0, lp.label)?;
                    }
                }
            }
            Ok(())
        }
        Command::Sweep(args) => sweep_cmd::run_sweep(args),
        Command::Fit(args) => fit_cmd::run_fit(args),
        Command::Bench(args) => bench_cmd::run_bench(args),
        Command::Tokenize {
            text,
            context_length,
            model,
            arch,
            cache_dir,
        } => {
            if context_length.is_some_and(|c| c < 2) {
                bail!("--context-length: must be at least 2");
            }
            let Some(spec) = model else {
                let tok = ClipTokenizer::new();
                for t in text {
                    let row = tok.encode_row(&t, context_length.unwrap_or(77));
                    println!("{}", serde_json::to_string(&row)?);
                }
                return Ok(());
            };
            let m = open_model(&args::ModelArgs {
                model: Some(spec),
                arch,
                device: "cpu".into(),
                cache_dir,
            })?;
            if let Some(w) = m.random_warning() {
                println!("# {w}");
            }
            let tok = m.tokenizer()?;
            let ctx = context_length.unwrap_or(m.model.config().text.context_length as usize);
            let texts: Vec<&str> = text.iter().map(String::as_str).collect();
            for row in tok.tokenize_rows(&texts, ctx)? {
                println!("{}", serde_json::to_string(&row)?);
            }
            Ok(())
        }
        Command::Info { model, json } => {
            let m = open_model(&model)?;
            let info = m.info();
            if json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("{}", m.banner_line());
                println!("architecture:  {}", info.architecture);
                println!("config from:   {}", info.config_source);
                println!("input size:    {} px", info.image_resolution);
                println!("embed dim:     {}", info.embed_dim);
                println!(
                    "text:          width {}, {} layers, context {}",
                    info.text_width, info.text_layers, info.context_length
                );
                println!("parameters:    {}", info.parameters);
                println!(
                    "transform:     {} (from {})",
                    info.image_transform, info.image_transform_source
                );
                println!("tokenizer:     {}", info.tokenizer);
                println!("format:        {}", info.format);
                println!(
                    "sha256:        {}",
                    info.sha256
                        .as_deref()
                        .unwrap_or("- (random weights, no file)")
                );
            }
            Ok(())
        }
        Command::Attacks { command } => attack_cmd::run_attacks(command),
        Command::Render(args) => attack_cmd::run_render(args),
        Command::Neurons(args) => probe_cmd::run_neurons(args),
        Command::Concepts(args) => probe_cmd::run_concepts(args),
        Command::Stroop(args) => probe_cmd::run_stroop(args),
        Command::Probe { command } => probe_cmd::run_probe(command),
    }
}

#[derive(Serialize)]
struct LabelProb {
    label: String,
    prob: f32,
}

#[derive(Serialize)]
struct ClassifyResult {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<String>,
    top: Vec<LabelProb>,
}

#[derive(Serialize)]
struct ClassifyReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    model: String,
    random_weights: bool,
    labels: String,
    templates: String,
    results: Vec<ClassifyResult>,
}

/// Loads, preprocesses and encodes image files in batches. Any unreadable file is an error
/// naming it (these commands work on a handful of explicit files).
fn encode_image_files(
    m: &OpenedModel,
    paths: &[impl AsRef<Path>],
    batch_size: usize,
) -> Result<Tensor> {
    let mut feats = Vec::new();
    for chunk in paths.chunks(batch_size) {
        let mut batch = Vec::with_capacity(chunk.len());
        for p in chunk {
            let img = crate::dataset::load_rgb(p.as_ref())?;
            batch.push(crate::preprocess::model_tensor(&img, &m.preprocess));
        }
        feats.push(m.model.encode_image(&crate::preprocess::batch(&batch)));
    }
    Ok(Tensor::cat(&feats, 0).to_device(tch::Device::Cpu))
}

fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    std::fs::write(path, crate::npy::tensor_npy_bytes(t))
        .with_context(|| format!("{}: cannot write", path.display()))
}
