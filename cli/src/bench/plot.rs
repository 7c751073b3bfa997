//! `--plot FILE.svg`: throughput over the run (payments seen succeeded in each second) above
//! the latency distribution (each latency's value at every per-mille rank, so the tail is as
//! visible as the median). Integer coordinates throughout: microseconds, per-mille ranks.

#[allow(unused_imports)]
use super::*;

use plotters::prelude::*;

/// Each latency the run measured, sorted, with its legend label.
pub(crate) fn distributions(m: &Measured) -> Vec<(&'static str, Vec<u64>)> {
    let mut recorded = Vec::new();
    let mut webhook = Vec::new();
    let mut intended = Vec::new();
    let mut seen = Vec::new();
    for d in m.outcomes.iter().filter_map(|o| o.result.as_ref().ok()) {
        recorded.extend(d.recorded_us);
        webhook.extend(d.webhook_us);
        intended.push(d.intended_us);
        seen.push(d.observed_us);
    }
    let mut out = vec![
        ("confirm sent -> succeeded (worker's updatedAt)", recorded),
        ("succeeded -> webhook received", webhook),
        ("confirm sent -> succeeded seen", seen),
        ("intended start -> succeeded seen", intended),
    ];
    out.retain(|(_, v)| !v.is_empty());
    for (_, v) in &mut out {
        v.sort_unstable();
    }
    out
}

/// (per-mille rank, value) for ranks 1..=1000, nearest-rank like [`percentile`].
pub(crate) fn rank_curve(sorted: &[u64]) -> Vec<(u64, u64)> {
    let n = u64::try_from(sorted.len()).unwrap_or(u64::MAX);
    if n == 0 {
        return Vec::new();
    }
    (1..=1000u64)
        .filter_map(|k| {
            let rank = (k * n).div_ceil(1000).clamp(1, n);
            let v = *sorted.get(usize::try_from(rank - 1).ok()?)?;
            Some((k, v))
        })
        .collect()
}

fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}

pub(crate) fn write(path: &Path, m: &Measured) -> anyhow::Result<()> {
    let timeline = report::timeline(m);
    let curves = distributions(m);
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(360);

    let seconds = u64::try_from(timeline.len()).unwrap_or(u64::MAX).max(1);
    let peak = timeline.iter().copied().max().unwrap_or(0).max(1);
    let mut chart = ChartBuilder::on(&top)
        .caption("payments succeeded per second", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..seconds, 0u64..peak + peak / 10 + 1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("payments/s")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(
            timeline
                .iter()
                .enumerate()
                .map(|(s, n)| (u64::try_from(s).unwrap_or(u64::MAX), *n)),
            &BLUE,
        ))
        .map_err(plot_error)?;

    let top_us = curves
        .iter()
        .filter_map(|(_, v)| v.last().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency distribution", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..1000u64, 0u64..top_us + top_us / 20 + 1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_label_formatter(&|k| format!("{}.{}", k / 10, k % 10))
        .y_label_formatter(&|us| fixed3((*us).into()))
        .draw()
        .map_err(plot_error)?;
    let colors = [RED, GREEN, BLUE, MAGENTA];
    for (i, (label, sorted)) in curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(rank_curve(sorted), &color))
            .map_err(plot_error)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(started: Instant, second: u64, us: u64) -> Outcome {
        Outcome {
            finished: started + Duration::from_millis(second * 1000 + 500),
            create_us: 100,
            confirm_us: Some(100),
            result: Ok(Done {
                observed_us: us,
                uncertainty_us: 0,
                recorded_us: Some(us / 2),
                webhook_us: Some(us / 4),
                intended_us: us + 200,
            }),
        }
    }

    #[test]
    fn the_curve_follows_nearest_rank() {
        let v: Vec<u64> = (1..=10).collect();
        let c = rank_curve(&v);
        assert_eq!(c.len(), 1000);
        assert_eq!(c[0], (1, 1));
        assert_eq!(c[499], (500, 5));
        assert_eq!(c[999], (1000, 10));
        assert!(rank_curve(&[]).is_empty());
    }

    #[test]
    fn a_run_is_drawn_to_svg() {
        let started = Instant::now();
        let m = Measured {
            outcomes: (0..50)
                .map(|i| outcome(started, i / 20, 1000 + i * 10))
                .collect(),
            started,
            wall: Duration::from_secs(3),
            observer_requests: 0,
            observer_errors: 0,
            retries: 0,
            sink: None,
            max_send_lag_us: None,
            rss: Vec::new(),
        };
        assert_eq!(report::timeline(&m), vec![20, 20, 10]);
        let path = std::env::temp_dir().join(format!("bench-plot-{}.svg", std::process::id()));
        write(&path, &m).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("payments succeeded per second"));
        assert!(
            svg.contains("succeeded -&gt; webhook received")
                || svg.contains("succeeded -> webhook received")
        );
        assert!(svg.contains("<polyline"));
    }
}
