//! `typoclip sweep`: resolves the dataset, labels, templates and model, checks everything
//! before any work, then runs the sweep stage.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::args::SweepArgs;
use super::resolve::{cache_dir, open_model};
use crate::dataset::descriptor::{file_list_hash, DatasetDescriptor};
use crate::sweep::provenance::{now_rfc3339, Provenance, LIBTORCH_VERSION};
use crate::sweep::{physical_cells, rendered_cells, run_physical, EvalMode, SweepSettings};
use crate::tokenizer::ClipTokenizer;
use crate::zeroshot::{ClassLabel, LabelSet, TemplateSet, TextCache};

/// Runs `typoclip sweep`.
pub fn run_sweep(args: SweepArgs) -> Result<()> {
    let mode = match args.mode.as_str() {
        "zeroshot" => EvalMode::Zeroshot,
        "binary" => EvalMode::Binary,
        other => bail!("--mode: `{other}` is not one of zeroshot, binary"),
    };
    if args.batch_size == 0 {
        bail!("--batch-size: must be at least 1");
    }
    let (descriptor, mut root) = DatasetDescriptor::load(&args.dataset)?;
    if let Some(r) = &args.data_root {
        root = r.clone();
    }
    let descriptor_text = std::fs::read_to_string(&args.dataset)
        .with_context(|| args.dataset.display().to_string())?;
    let samples = descriptor.samples(&root)?;
    // A bad spec is rejected here, before any work.
    let spec = match &args.attacks {
        Some(p) => Some((
            crate::attack::AttackSpec::load(p)?,
            std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
        )),
        None => None,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut cells = match &spec {
        Some((spec, _)) => {
            let mut clean: Vec<_> = samples
                .into_iter()
                .filter(|s| s.attack_text.is_none())
                .collect();
            if args.shuffle {
                clean.shuffle(&mut rng);
            }
            if let Some(n) = args.limit {
                clean.truncate(n);
            }
            rendered_cells(&clean, &spec.variants, args.seed)
        }
        None => {
            let mut cells = physical_cells(&samples);
            if args.shuffle {
                cells.shuffle(&mut rng);
            }
            if let Some(n) = args.limit {
                cells.truncate(n);
            }
            cells
        }
    };
    if cells.is_empty() {
        bail!(
            "{}: dataset `{}` gives nothing to evaluate: no (clean, attacked) photo pairs{}",
            args.dataset.display(),
            descriptor.name,
            if spec.is_some() {
                " and no clean images"
            } else {
                "; give --attacks SPEC to render attacks on its images"
            }
        );
    }
    let templates = TemplateSet::resolve(&args.templates)?;
    let label_spec = args
        .labels
        .clone()
        .unwrap_or_else(|| descriptor.labels.clone());
    let mut labels = if label_spec == "dataset" {
        // The classes found in the data: every object and every written word.
        let names: BTreeSet<String> = cells
            .iter()
            .flat_map(|c| [c.true_label.clone(), c.target.clone()])
            .flatten()
            .collect();
        LabelSet {
            name: format!("{}/dataset", descriptor.name),
            classes: names
                .into_iter()
                .map(|name| ClassLabel { name, wnid: None })
                .collect(),
        }
    } else {
        let base = args.dataset.parent().unwrap_or(std::path::Path::new("."));
        let as_file = base.join(&label_spec);
        LabelSet::resolve(if as_file.is_file() {
            as_file.to_str().unwrap_or(&label_spec)
        } else {
            &label_spec
        })?
    };
    // Every attack target must be a class the classifier can predict.
    for t in cells
        .iter()
        .filter_map(|c| c.target.as_ref())
        .collect::<BTreeSet<_>>()
    {
        if labels.index_of_name(t).is_none() {
            labels.classes.push(ClassLabel {
                name: t.clone(),
                wnid: None,
            });
            labels.name = format!("{}+targets", labels.name.trim_end_matches("+targets"));
        }
    }
    // True labels: the label set's own spelling, found by WordNet id where the dataset has one.
    for c in cells.iter_mut() {
        if let Some(i) = c
            .clean
            .wnid
            .as_deref()
            .and_then(|w| labels.index_of_wnid(w))
        {
            c.true_label = Some(labels.classes[i].name.clone());
        }
    }
    let linear_probe = match &args.probe {
        Some(p) => Some((crate::probe::linear::LinearProbe::load(p)?, p)),
        None => None,
    };
    let m = open_model(&args.model)?;
    let probe_note = match &linear_probe {
        Some((probe, path)) => {
            if probe.model_id != m.cache_id() {
                bail!(
                    "{}: model_id: the probe was fitted on `{}` ({}), this sweep uses `{}` ({})",
                    path.display(),
                    probe.model,
                    probe.model_id,
                    m.spec,
                    m.cache_id()
                );
            }
            if probe.dim() as i64 != m.model.config().embed_dim {
                bail!(
                    "{}: weight: rows of {} for embeddings of {}",
                    path.display(),
                    probe.dim(),
                    m.model.config().embed_dim
                );
            }
            let sha = crate::model::load::sha256_file(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            Some(format!("{} (sha256 {sha})", path.display()))
        }
        None => None,
    };
    let tok = ClipTokenizer::new();
    let cache = TextCache::new(cache_dir(args.model.cache_dir.as_deref()).join("text-classifiers"));
    let (classifier, _) = cache.load_or_build(&m.cache_id(), &m.model, &tok, labels, templates)?;
    let ids: Vec<_> = cells
        .iter()
        .flat_map(|c| [c.clean.clone(), c.attacked.clone()])
        .collect();
    let provenance = Provenance {
        warning: m.random_warning(),
        typoclip_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: env!("TYPOCLIP_GIT_COMMIT").into(),
        model: m.spec.clone(),
        model_id: m.cache_id(),
        random_weights: m.random,
        dataset: descriptor.name.clone(),
        dataset_descriptor: descriptor_text,
        file_list_hash: file_list_hash(&ids),
        cells: cells.len(),
        attack: match &spec {
            Some((_, text)) => text.clone(),
            None => format!(
                "physical ({:?}: attacks already in the photos)",
                descriptor.kind
            ),
        },
        mode: args.mode.clone(),
        labels: classifier.labels.name.clone(),
        labels_hash: classifier.labels.hash(),
        templates: classifier.templates.name.clone(),
        templates_hash: classifier.templates.hash(),
        seed: args.seed,
        batch_size: args.batch_size,
        threads: tch::get_num_threads(),
        workers: args.workers,
        libtorch_version: LIBTORCH_VERSION.into(),
        started: now_rfc3339(),
        finished: None,
        linear_probe: probe_note,
    };
    let settings = SweepSettings {
        out_dir: args.out.clone(),
        mode,
        batch_size: args.batch_size,
        workers: args.workers.max(1),
        resume: args.resume,
        progress: !args.quiet,
        linear_probe: linear_probe.map(|(p, _)| std::sync::Arc::new(p)),
    };
    if !args.json {
        eprintln!("{}", m.banner_line());
    }
    let summary = run_physical(&m.model, &classifier, &cells, &settings, &provenance)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", m.banner_line());
        println!(
            "{} records ({} errors) in {}",
            summary.records,
            summary.errors,
            args.out.display()
        );
        let pct = |r: &Option<crate::metrics::Rate>| {
            r.map(|r| {
                format!(
                    "{:.1}% [{:.1}, {:.1}]",
                    100.0 * r.value,
                    100.0 * r.lo,
                    100.0 * r.hi
                )
            })
            .unwrap_or_else(|| "-".into())
        };
        let scorers = std::iter::once(("", &summary.variants))
            .chain(summary.linear_probe.as_ref().map(|v| ("linear probe: ", v)));
        for (scorer, variants) in scorers {
            for v in variants {
                println!(
                    "  {scorer}{:<12} n={:<5} clean acc {}  attacked acc {}  changed to target {}  ASR {}",
                    v.variant,
                    v.records - v.errors,
                    pct(&v.clean_accuracy),
                    pct(&v.attacked_accuracy),
                    pct(&v.fraction_changed_to),
                    pct(&v.attack_success_rate)
                );
            }
        }
    }
    Ok(())
}
