//! SVG plots of the report (plotters; text as SVG `<text>`, so no fonts are needed to make
//! them).

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return (1.0, 10.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, y1)
}

/// Latency distribution as a CDF: x = latency in ms (log scale), y = share of requests at or
/// below it, in percent.
pub fn cdf_points(samples: &[Duration]) -> Vec<(f64, f64)> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let mut qs: Vec<f64> = (1..=99).map(|p| p as f64 / 100.0).collect();
    qs.extend([0.995, 0.999, 0.9999, 1.0]);
    qs.into_iter()
        .filter(|_| !s.is_empty())
        .map(|q| {
            let d = crate::stats::quantile(&s, q);
            ((d.as_secs_f64() * 1e3).max(0.001), q * 100.0)
        })
        .collect()
}

/// Lines over linear axes, or a log-scaled x axis with `log_x`.
pub fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_x: bool,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    draw_panel(&root, title, x_desc, y_desc, series, log_x)?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Several CDF panels in a grid of `cols` columns, each a set of lines.
pub fn cdf_grid(path: &Path, panels: &[(String, Vec<Series>)], cols: usize) -> anyhow::Result<()> {
    let rows = panels.len().div_ceil(cols).max(1);
    let root = SVGBackend::new(path, (520 * cols as u32, 360 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((rows, cols));
    for ((title, series), area) in panels.iter().zip(areas.iter()) {
        draw_panel(
            area,
            title,
            "latency, ms (log)",
            "% of requests",
            series,
            true,
        )?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_x: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (x0, x1, y0, y1) = bounds(series);
    let y_range = if y0 >= 0.0 { 0.0..y1 * 1.05 } else { y0..y1 };
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (i, s) in series.iter().enumerate() {
                let c = color(i);
                chart
                    .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(s.points.iter().map(|p| Circle::new(*p, 2, c.filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }};
    }
    if log_x {
        let lo = (x0 * 0.8).max(0.001);
        let chart = b
            .build_cartesian_2d((lo..x1 * 1.25).log_scale(), y_range)
            .map_err(|e| anyhow!("{e}"))?;
        finish!(chart);
    } else {
        let chart = b
            .build_cartesian_2d(0.0..x1 * 1.05, y_range)
            .map_err(|e| anyhow!("{e}"))?;
        finish!(chart);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        let samples: Vec<Duration> = (1..=500).map(Duration::from_micros).collect();
        let s = vec![
            Series {
                name: "alpha".into(),
                points: vec![(1.0, 10.0), (16.0, 40.0), (256.0, 80.0)],
            },
            Series {
                name: "beta".into(),
                points: cdf_points(&samples),
            },
        ];
        lines(&path, "a title", "x axis", "y axis", &s, true).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for text in ["a title", "x axis", "alpha", "beta"] {
            assert!(svg.contains(text), "{text} missing");
        }
        let grid = dir.path().join("g.svg");
        cdf_grid(&grid, &[("p1".into(), s), ("p2".into(), Vec::new())], 2).unwrap();
        assert!(std::fs::read_to_string(&grid).unwrap().contains("p1"));
        // The CDF ends at the maximum and 100 %.
        let last = *cdf_points(&samples).last().unwrap();
        assert_eq!(last, (0.5, 100.0));
    }
}
