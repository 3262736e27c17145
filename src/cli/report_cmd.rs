//! `typoclip report` and `typoclip compare`: thin wrappers over the report stage.

use std::path::PathBuf;

use anyhow::Result;

use crate::report::compare::{write_comparison, CompareOptions};
use crate::report::{write_report, Reference, ReportOptions};

/// `typoclip report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run folder (`results/NAME`).
    pub run: PathBuf,
    /// Put published figures beside ours: `distill` (Goh et al. 2021).
    #[arg(long)]
    pub reference: Option<String>,
    /// Examples of each outcome (successes and failures) in the grid.
    #[arg(long, default_value_t = 6)]
    pub examples: usize,
}

/// `typoclip compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Run folders.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The run the others are measured against (default: the first).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Compare even when datasets, variants, mode or label sets differ.
    #[arg(long)]
    pub force: bool,
    /// Output folder.
    #[arg(long, default_value = "results/comparison")]
    pub out: PathBuf,
}

/// Runs `typoclip report`.
pub fn run_report(args: ReportArgs) -> Result<()> {
    let opts = ReportOptions {
        reference: args
            .reference
            .as_deref()
            .map(Reference::parse)
            .transpose()?,
        examples_per_outcome: args.examples,
    };
    let (html, md) = write_report(&args.run, &opts)?;
    println!("wrote {} and {}", html.display(), md.display());
    Ok(())
}

/// Runs `typoclip compare`.
pub fn run_compare(args: CompareArgs) -> Result<()> {
    let opts = CompareOptions {
        baseline: args.baseline,
        force: args.force,
        out: args.out,
    };
    let rows = write_comparison(&args.runs, &opts)?;
    if rows.iter().any(|r| r.random) {
        println!("# {}", crate::cli::resolve::RANDOM_WEIGHTS_BANNER);
    }
    if rows.iter().any(|r| r.toy) {
        println!("# {}", crate::toy::TOY_BANNER);
    }
    for r in &rows {
        let pct = |x: Option<crate::metrics::Rate>| {
            x.map(|r| format!("{:.1}%", 100.0 * r.value))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<24} clean {:>6}  attacked {:>6}  ASR {:>6}",
            r.name,
            pct(r.metrics.clean_accuracy),
            pct(r.metrics.attacked_accuracy),
            pct(r.metrics.attack_success_rate)
        );
    }
    println!("wrote {}", opts.out.join("comparison.html").display());
    Ok(())
}
