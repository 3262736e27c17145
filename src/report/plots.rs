//! The report's figures as standalone SVG documents drawn with `plotters`: horizontal bars with
//! 95 % interval whiskers (one bar per attack variant or category) and dose-response lines
//! (a swept number → a rate, with whiskers). Text is measured with a bundled font, so the
//! output does not depend on the fonts installed on the machine.

use std::sync::Once;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::metrics::Rate;

static FONT: Once = Once::new();

pub(super) fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf");
        // The bundled font is known to parse; if it ever did not, text would be skipped.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

fn err(e: impl std::fmt::Debug) -> String {
    format!("plot: {e:?}")
}

/// Keeps axis labels readable: long variant names are shortened from the left.
fn short_label(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        s.to_string()
    } else {
        format!("…{}", s.chars().skip(n + 1 - max).collect::<String>())
    }
}

/// One bar per item (value with its Wilson interval), horizontal, labelled on the left.
pub fn bar_chart(title: &str, x_desc: &str, items: &[(String, Rate)]) -> Result<String, String> {
    register_font();
    let n = items.len().max(1);
    let label_chars = items
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(4)
        .min(40);
    let height = (70 + 18 * n) as u32;
    let label_w = (label_chars as u32) * 7 + 10;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..1f64, (0usize..n).into_segmented())
            .map_err(err)?;
        let names: Vec<String> = items.iter().map(|(l, _)| short_label(l, 40)).collect();
        let fmt_y = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&fmt_y)
            .x_labels(6)
            .x_label_formatter(&|x| format!("{:.0}%", x * 100.0))
            .x_desc(x_desc)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        let bar = RGBColor(66, 110, 180);
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, r))| {
                let mut rect = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (r.value.clamp(0.0, 1.0), SegmentValue::Exact(i + 1)),
                    ],
                    bar.filled(),
                );
                rect.set_margin(3, 3, 0, 0);
                rect
            }))
            .map_err(err)?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, r))| {
                PathElement::new(
                    vec![
                        (r.lo, SegmentValue::CenterOf(i)),
                        (r.hi, SegmentValue::CenterOf(i)),
                    ],
                    BLACK.stroke_width(1),
                )
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A named series of (x, rate) points.
pub type Series = (String, Vec<(f64, Rate)>);

/// Dose-response: one line per series over a numeric x, y in [0, 1], with interval whiskers.
pub fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<String, String> {
    register_font();
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
    let (mut lo, mut hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.04;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d((lo - pad)..(hi + pad), 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (k, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let mut pts = points.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|(x, r)| (*x, r.value)),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(short_label(name, 48))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    pts.iter()
                        .map(|(x, r)| Circle::new((*x, r.value), 3, color.filled())),
                )
                .map_err(err)?;
            chart
                .draw_series(pts.iter().map(|(x, r)| {
                    PathElement::new(vec![(*x, r.lo), (*x, r.hi)], color.stroke_width(1))
                }))
                .map_err(err)?;
        }
        if series.len() > 1 || series.iter().any(|(n, _)| !n.is_empty()) {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_chart_is_an_svg_with_one_bar_per_item() {
        let items = vec![
            ("a".to_string(), Rate::new(1, 4)),
            ("b".to_string(), Rate::new(3, 4)),
        ];
        let svg = bar_chart("t", "rate", &items).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">\na\n</text>") && svg.contains(">\nb\n</text>"));
    }

    #[test]
    fn line_chart_handles_one_point_and_empty_series() {
        let s = vec![("iPod".to_string(), vec![(0.1, Rate::new(1, 2))])];
        assert!(line_chart("t", "x", "y", &s).unwrap().contains("<svg"));
        assert!(line_chart("t", "x", "y", &[]).unwrap().contains("<svg"));
    }

    #[test]
    fn long_labels_keep_their_end() {
        assert_eq!(short_label("abcdef", 4), "…def");
        assert_eq!(short_label("abc", 4), "abc");
    }
}
