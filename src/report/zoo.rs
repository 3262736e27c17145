//! The zoo view of a comparison: how a model's accuracy drop under attack relates to its size
//! and to the size of its pretraining set, as SCAM plots them (Westerhoff et al., 2025) —
//! scatter plots with a logarithmic x axis, one point per run.
//!
//! Inputs: the leaderboard rows ([`super::compare::Row`]): the parameter count comes from the
//! model itself (recorded by the sweep in `provenance.json`, `model_parameters`), the
//! pretraining set from what typoclip's registry knows about the checkpoint
//! ([`pretraining_of`]). A run without one of them (random or local weights, runs older than
//! the field) is left out of that plot, and a note under the plot names it; nothing is guessed.

use plotters::prelude::*;

use super::compare::Row;
use super::document::Block;
use crate::sweep::provenance::Provenance;

/// A model's pretraining set, as the registry knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pretraining {
    /// The set's name.
    pub name: &'static str,
    /// Image–text pairs in the set.
    pub pairs: f64,
    /// Where the size is stated.
    pub source: &'static str,
}

/// OpenAI's WebImageText, the pretraining set of every checkpoint in [`crate::registry`].
const WIT: Pretraining = Pretraining {
    name: "WIT (OpenAI)",
    pairs: 4.0e8,
    source: "Radford et al., \"Learning Transferable Visual Models From Natural Language \
             Supervision\", ICML 2021, §2.2: 400 million (image, text) pairs",
};

/// The pretraining set of a run's model, where the registry knows its checkpoint: the OpenAI
/// checkpoints (by the file's sha256, or named `ARCH,openai`). Random weights: never.
pub fn pretraining_of(p: &Provenance) -> Option<Pretraining> {
    if p.random_weights {
        return None;
    }
    if crate::registry::find_by_sha256(&p.model_id).is_some() {
        return Some(WIT.clone());
    }
    match p.model.split_once(',') {
        Some((arch, "openai")) if crate::registry::find(arch).is_some() => Some(WIT.clone()),
        _ => None,
    }
}

fn err(e: impl std::fmt::Debug) -> String {
    format!("plot: {e:?}")
}

/// A scatter plot of labelled points with a log-scaled x axis (`x > 0`) and a linear y axis.
pub fn scatter_log_x(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[(String, f64, f64)],
) -> Result<String, String> {
    super::plots::register_font();
    let (mut x0, mut x1) = points.iter().fold((f64::INFINITY, 0.0f64), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    if !(x0.is_finite() && x0 > 0.0) {
        return Err("plot: no positive x values".into());
    }
    // At least a decade wide, padded by a third of a decade each side.
    let pad = 10f64.powf(1.0 / 3.0);
    if x1 / x0 < 10.0 {
        let mid = (x0 * x1).sqrt();
        (x0, x1) = (mid / 10f64.sqrt(), mid * 10f64.sqrt());
    }
    let (x0, x1) = (x0 / pad, x1 * pad);
    let (mut y0, mut y1) = points
        .iter()
        .fold((0.0f64, 0.0f64), |(a, b), p| (a.min(p.2), b.max(p.2)));
    let span = (y1 - y0).max(10.0);
    y0 -= span * 0.1;
    y1 += span * 0.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        let blue = RGBColor(31, 119, 180);
        chart
            .draw_series(
                points
                    .iter()
                    .map(|(_, x, y)| Circle::new((*x, *y), 5, blue.filled())),
            )
            .map_err(err)?;
        chart
            .draw_series(points.iter().map(|(label, x, y)| {
                Text::new(
                    label.clone(),
                    (*x, *y + span * 0.04),
                    ("sans-serif", 11).into_font(),
                )
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Accuracy drop under attack of a row, in points: clean minus attacked accuracy, pooled.
fn drop_points(r: &Row) -> Option<f64> {
    Some(100.0 * (r.metrics.clean_accuracy?.value - r.metrics.attacked_accuracy?.value))
}

/// The zoo section's blocks: the two scatter plots (where any run has the x value) and, under
/// each, which runs were left out and why.
pub fn zoo_blocks(rows: &[Row]) -> Result<Vec<Block>, String> {
    let mut blocks = vec![Block::Para(
        "Accuracy drop under attack (clean minus attacked top-1 accuracy, pooled, in points) \
         against model size and pretraining-set size, as in SCAM (Westerhoff et al., 2025). \
         Parameters are counted from each model's weights; pretraining sets are what \
         typoclip's registry knows about a checkpoint. Runs without the fact are left out of \
         that plot and named below it."
            .into(),
    )];
    type Fact = fn(&Row) -> Result<f64, &'static str>;
    let plots: [(&str, &str, Fact); 2] = [
        (
            "accuracy drop vs parameters",
            "parameters (log scale)",
            |r| {
                r.parameters
                    .map(|p| p as f64)
                    .ok_or("no parameter count in its provenance")
            },
        ),
        (
            "accuracy drop vs pretraining-set size",
            "pretraining image-text pairs (log scale)",
            |r| {
                if r.random {
                    Err("random weights have no pretraining set")
                } else {
                    r.pretraining
                        .as_ref()
                        .map(|p| p.pairs)
                        .ok_or("the registry has no pretraining facts for this model")
                }
            },
        ),
    ];
    for (title, x_desc, fact) in plots {
        let mut points = Vec::new();
        let mut left_out = Vec::new();
        for r in rows {
            match (fact(r), drop_points(r)) {
                (Ok(x), Some(y)) => points.push((r.name.clone(), x, y)),
                (Err(why), _) => left_out.push(format!("{} ({why})", r.name)),
                (Ok(_), None) => left_out.push(format!("{} (no accuracy: no true labels)", r.name)),
            }
        }
        if !points.is_empty() {
            blocks.push(Block::Plot {
                title: title.into(),
                svg: scatter_log_x(title, x_desc, "accuracy drop (points)", &points)?,
            });
        }
        if !left_out.is_empty() {
            blocks.push(Block::Para(format!(
                "Left out of \"{title}\": {}.",
                left_out.join(", ")
            )));
        }
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_draws_every_point_on_a_log_axis() {
        let pts = vec![
            ("a".to_string(), 1.5e8, 12.0),
            ("b".to_string(), 4.3e8, 30.5),
            ("c".to_string(), 1.0e9, -2.0),
        ];
        let svg = scatter_log_x("t", "x", "y", &pts).unwrap();
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(
            svg.contains("1e8") && svg.contains("1e9"),
            "decade labels: {svg}"
        );
        assert!(scatter_log_x("t", "x", "y", &[]).is_err());
    }
}
