//! `typoclip toy train`: trains the positive-control toy CLIP ([`crate::toy`]) into a folder
//! (default: the cache's `toy/`, what `--model toy` opens), resuming from its checkpoint;
//! `typoclip toy world --out DIR`: writes sample scenes and captions to look at.

use std::path::PathBuf;

use anyhow::{bail, Result};
use rand::SeedableRng;

use crate::toy::{self, TrainSettings, TOY_BANNER};

/// `typoclip toy`.
#[derive(Debug, clap::Args)]
pub struct ToyArgs {
    #[command(subcommand)]
    pub command: ToyCommand,
}

/// The `toy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ToyCommand {
    /// Train the toy (deterministic from --seed; resumes from the checkpoint in --out).
    Train(TrainArgs),
    /// Write sample training scenes (PNG) and their captions (captions.tsv) to a folder.
    World {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// How many scenes.
        #[arg(long, default_value_t = 32)]
        count: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// `typoclip toy train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Output folder [default: <cache>/toy, what `--model toy` opens].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cache directory [default: $XDG_CACHE_HOME/typoclip or ~/.cache/typoclip].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Seed of the initial weights and of every batch.
    #[arg(long, default_value_t = TrainSettings::default().seed)]
    pub seed: u64,
    /// Optimiser steps.
    #[arg(long, default_value_t = TrainSettings::default().steps)]
    pub steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = TrainSettings::default().batch)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = TrainSettings::default().lr)]
    pub lr: f64,
    /// Fraction of training scenes with a word written on them.
    #[arg(long, default_value_t = TrainSettings::default().word_prob)]
    pub word_prob: f64,
    /// Fraction of written words that name the object they are on (a label "circle" on a
    /// circle).
    #[arg(long, default_value_t = TrainSettings::default().word_matches_object)]
    pub word_matches_object: f64,
    /// Fraction of the captions of scenes whose word is a class name that name the word as the
    /// picture's subject ("a photo of a square." for a circle labelled "square").
    #[arg(long, default_value_t = TrainSettings::default().word_names_subject)]
    pub word_names_subject: f64,
    /// Fraction of scenes with a class-name word that show the word alone on the background,
    /// captioned as the thing it names.
    #[arg(long, default_value_t = TrainSettings::default().word_only)]
    pub word_only: f64,
    /// Fraction of batch pairs that are twins: one object scene twice with two different class
    /// names written on it, so that only reading tells them apart.
    #[arg(long, default_value_t = TrainSettings::default().word_twins)]
    pub word_twins: f64,
    /// Factor on the written words' font size (1: 13–20 % of the picture's side).
    #[arg(long, default_value_t = TrainSettings::default().word_scale)]
    pub word_scale: f32,
    /// Measure held-out accuracy (200 scenes) every N steps and print it.
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = TrainSettings::default().checkpoint_every)]
    pub checkpoint_every: usize,
    /// Stop after this many steps of this call (checkpointed; run again to resume).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Train again even when --out already holds a finished toy.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `typoclip toy …`.
pub fn run_toy(args: ToyArgs) -> Result<()> {
    match args.command {
        ToyCommand::Train(a) => run_train(a),
        ToyCommand::World { out, count, seed } => run_world(out, count, seed),
    }
}

fn run_train(a: TrainArgs) -> Result<()> {
    let dir = a
        .out
        .unwrap_or_else(|| toy::cache_folder(&crate::registry::cache_dir(a.cache_dir.as_deref())));
    let settings = TrainSettings {
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: TrainSettings::default().warmup.min(a.steps / 4),
        checkpoint_every: a.checkpoint_every,
        word_prob: a.word_prob,
        word_matches_object: a.word_matches_object,
        word_names_subject: a.word_names_subject,
        word_only: a.word_only,
        word_twins: a.word_twins,
        word_scale: a.word_scale,
        ..TrainSettings::default()
    };
    settings.validate()?;
    println!("{TOY_BANNER}");
    if a.force {
        for f in [
            toy::MARKER,
            "train-state.safetensors",
            "train-settings.json",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    if toy::is_toy_folder(&dir) {
        let rec = toy::read_record(&dir)?;
        if rec.settings == settings {
            println!(
                "already trained (seed {}, {} steps)",
                rec.settings.seed, rec.settings.steps
            );
            // The folder last, on its own line, as after training.
            println!("{}", dir.display());
            return Ok(());
        }
        bail!(
            "{}: holds a toy trained with other settings ({}); pass --force to train it anew",
            dir.display(),
            serde_json::to_string(&rec.settings)?
        );
    }
    let pb = crate::progress::bar(settings.steps as u64, !a.quiet);
    let eval_world = settings.world();
    let mut eval_error = None;
    let trained = toy::train_into(&dir, &settings, a.stop_after, |s, loss, model| {
        pb.set_position(s as u64 + 1);
        pb.set_message(format!("loss {loss:.3}"));
        if a.eval_every.is_some_and(|k| k > 0 && (s + 1) % k == 0) {
            match toy::held_out(model, &eval_world, 200, settings.seed ^ 0xe7a1) {
                Ok(h) => pb.suspend(|| {
                    println!(
                        "step {}: loss {loss:.3}; held-out clean {:.1} %, labelled {:.1} %, read {:.1} %",
                        s + 1,
                        100.0 * h.clean_accuracy,
                        100.0 * h.attacked_accuracy,
                        100.0 * h.to_target
                    )
                }),
                Err(e) => eval_error = Some(e),
            }
        }
    })?;
    if let Some(e) = eval_error {
        return Err(e.context("measuring held-out accuracy during training"));
    }
    pb.finish_and_clear();
    let Some((_, rec)) = trained else {
        println!(
            "stopped after {} steps (checkpoint in {}); run the same command again to resume",
            a.stop_after.unwrap_or_default(),
            dir.display()
        );
        return Ok(());
    };
    println!(
        "trained {} steps in {:.0} s ({} libtorch threads): loss {:.3} → {:.3}",
        rec.outcome.steps_run,
        rec.outcome.seconds,
        rec.threads,
        rec.outcome.first_loss,
        rec.outcome.final_loss
    );
    let h = rec.held_out;
    println!(
        "held-out scenes ({}): clean accuracy {:.1} %; with another class's name on a label {:.1} % ({:.1} % read as the written class)",
        h.n, 100.0 * h.clean_accuracy, 100.0 * h.attacked_accuracy, 100.0 * h.to_target
    );
    println!("{}", dir.display());
    Ok(())
}

fn run_world(out: PathBuf, count: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(&out)?;
    let world = TrainSettings::default().world();
    let mut tsv = String::from("file\tcaption\n");
    for i in 0..count {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(toy::train::stream(
            seed,
            toy::train::SAMPLES_STREAM,
            i as u64,
        ));
        let scene = world.scene(&mut rng);
        let caption = world.caption(&scene, &mut rng);
        let file = format!("{i:04}.png");
        world.render(&scene).save(out.join(&file))?;
        tsv.push_str(&format!("{file}\t{caption}\n"));
    }
    std::fs::write(out.join("captions.tsv"), tsv)?;
    println!("{TOY_BANNER}");
    println!("{count} scenes in {}", out.display());
    Ok(())
}
