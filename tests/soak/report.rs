//! The soak's results: `report.json` (settings, nodes, every push and its
//! convergence, every fault as played, every sample, the end checks and the
//! growth verdicts) and `soak.png` (convergence latency of each push and
//! RSS of each node over time, faults shaded), in the results folder with
//! the nodes' logs. The picture's text uses DejaVu Sans from the system's
//! fonts when it is there (Debian's fonts-dejavu-core), and is drawn
//! without text otherwise (the report says so).

use std::{path::PathBuf, sync::Arc};

use plotters::prelude::*;
use serde_json::json;

use crate::{
    Soak,
    checks::EndReport,
    faults::FaultKind,
    run::{FaultRecord, SampleRow},
    workload::PushRecord,
};

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Write `report.json` and `soak.png`; returns the report's path.
pub fn write(soak: &Arc<Soak>, end: &EndReport) -> PathBuf {
    let dir = &soak.settings.results;
    let pushes = soak.pushes.lock().unwrap().clone();
    let observed = soak.observed.lock().unwrap();
    let mut latencies: Vec<f64> = pushes.iter().filter_map(|p| p.converged_after).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| {
        (!latencies.is_empty())
            .then(|| latencies[((latencies.len() - 1) as f64 * q).round() as usize])
    };
    let done = pushes.iter().filter(|p| p.done).count();
    let picture = dir.join("soak.png");
    let text =
        draw(soak, &pushes, &observed.samples, &observed.faults, &picture).unwrap_or_else(|e| {
            eprintln!("soak: the picture could not be drawn: {e}");
            false
        });
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - soak.now();
    let report = json!({
        "settings": soak.settings,
        "started_unix": started_unix.round() as u64,
        "nodes": soak.nodes.iter().map(|n| json!({
            "name": n.spec.name,
            "role": n.spec.role,
            "node_id": n.node_id,
            "incarnations": n.incarnation(),
        })).collect::<Vec<_>>(),
        "repositories": soak.repos.iter().map(|r| &r.id).collect::<Vec<_>>(),
        "passed": end.failures().is_empty(),
        "failures": end.failures(),
        "end": end,
        "pushes": {
            "total": pushes.len(),
            "done": done,
            "failed": pushes.len() - done,
            "converged": latencies.len(),
            "convergence_secs": {
                "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0),
            },
        },
        "faults": observed.faults,
        "problems": observed.problems,
        "picture": { "file": "soak.png", "text": text },
        "push_log": pushes,
        "samples": observed.samples,
    });
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).expect("report written");
    path
}

fn fault_color(kind: &FaultKind) -> RGBColor {
    match kind {
        FaultKind::Kill { .. } => RGBColor(220, 40, 40),
        FaultKind::Partition { .. } => RGBColor(150, 60, 200),
        FaultKind::Loss { .. } => RGBColor(240, 150, 30),
        FaultKind::Latency { .. } => RGBColor(40, 160, 200),
        FaultKind::RelayRestart => RGBColor(60, 160, 60),
        FaultKind::PdsOutage => RGBColor(120, 120, 120),
    }
}

/// Load a font for the picture's text; false when none is there.
fn font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Draw the picture; returns whether it has text.
fn draw(
    soak: &Arc<Soak>,
    pushes: &[PushRecord],
    samples: &[SampleRow],
    faults: &[FaultRecord],
    path: &PathBuf,
) -> DrawResult<bool> {
    let text = font();
    let secs = soak.settings.secs as f64 + 30.0;
    let root = BitMapBackend::new(path, (1600, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(500);

    let max_latency = pushes
        .iter()
        .filter_map(|p| p.converged_after)
        .fold(5.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top);
    chart.margin(15);
    if text {
        chart
            .caption(
                format!(
                    "knotd soak: {} s, seed {}: convergence of each push (s)",
                    soak.settings.secs, soak.settings.seed
                ),
                ("sans-serif", 22),
            )
            .x_label_area_size(35)
            .y_label_area_size(55);
    }
    let mut chart = chart.build_cartesian_2d(0f64..secs, 0f64..max_latency)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("seconds into the soak")
            .y_desc("seconds until every node held it")
            .draw()?;
    }
    shade_faults(&mut chart, faults, max_latency, text)?;
    for (i, author) in ["author-a", "author-b"].into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series = chart.draw_series(
            pushes
                .iter()
                .filter(|p| p.author == author)
                .filter_map(|p| Some((p.finished, p.converged_after?)))
                .map(move |(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
        if text {
            series
                .label(format!("pushes through {author}"))
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }

    let max_rss = samples
        .iter()
        .map(|s| s.sample.rss_kib as f64 / 1024.0)
        .fold(10.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom);
    chart.margin(15);
    if text {
        chart
            .caption(
                "RSS of each node (MiB); a drop is a restart",
                ("sans-serif", 22),
            )
            .x_label_area_size(35)
            .y_label_area_size(55);
    }
    let mut chart = chart.build_cartesian_2d(0f64..secs, 0f64..max_rss)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("seconds into the soak")
            .y_desc("MiB")
            .draw()?;
    }
    shade_faults(&mut chart, faults, max_rss, false)?;
    for (i, node) in soak.nodes.iter().enumerate() {
        let color = Palette99::pick(i + 2).to_rgba();
        let rows: Vec<_> = samples
            .iter()
            .filter(|s| s.node == node.spec.name)
            .collect();
        let mut incarnations: Vec<u32> = rows.iter().map(|s| s.incarnation).collect();
        incarnations.dedup();
        for (k, inc) in incarnations.iter().enumerate() {
            let series = chart.draw_series(LineSeries::new(
                rows.iter()
                    .filter(|s| s.incarnation == *inc)
                    .map(|s| (s.t, s.sample.rss_kib as f64 / 1024.0)),
                color.stroke_width(2),
            ))?;
            if text && k == 0 {
                series.label(node.spec.name.clone()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(3))
                });
            }
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(text)
}

/// Shade each fault's time span; with `legend`, one legend entry per kind.
fn shade_faults<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    faults: &[FaultRecord],
    height: f64,
    legend: bool,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    let mut labelled: Vec<&'static str> = Vec::new();
    for fault in faults {
        let color = fault_color(&fault.fault.kind);
        let series = chart.draw_series(std::iter::once(Rectangle::new(
            [
                (fault.started, 0.0),
                (fault.ended.max(fault.started + 1.0), height),
            ],
            color.mix(0.18).filled(),
        )))?;
        let label = fault.fault.kind.label();
        if legend && !labelled.contains(&label) {
            labelled.push(label);
            series.label(label).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.5).filled())
            });
        }
    }
    Ok(())
}
