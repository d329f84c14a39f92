//! "No growth", made precise.
//!
//! Each node is sampled every ten seconds: RSS, open files, OS threads and
//! tasks alive in its runtime. A sample counts once its process is past
//! warm-up: up for at least `W = 120 s` and taken at least `W` into the
//! soak (caches, connection pools and gossip neighbour sets fill during the
//! first minute or two of work). Over the samples that count, the growth
//! rate is the Theil–Sen slope: the median of the slopes between every two
//! samples of the same process at least 20 s apart. The median ignores the
//! spikes of a fetch or a repack (up to about 29 % of the pairs may be
//! outliers), pairs never span a restart, whose fresh process starts low,
//! and a long-lived process weighs most (its pairs grow with the square of
//! its samples), so the slope is that of the longest stretches observed.
//!
//! A metric is **flat** when that rate, over the time its judged samples
//! span (each process from its first to its last sample past warm-up;
//! the soak's length after warm-up for a node never restarted), adds at
//! most `max(floor, 10 % of its median)`. A process restarted late is
//! judged on what it was seen to do, not on its slope stretched over the
//! whole soak: one step of a few MiB in the last minute of a five-minute
//! run (a catch-up burst after a peer's kill) is not three times that.
//! The floors: 16 MiB
//! of RSS, 8 open files, 8 threads and 200 tasks, the sizes of the ordinary
//! fluctuations measured in five-minute runs (a fetch's buffers and the
//! caches filling as the stores grow; a connection's sockets; the blocking
//! pool's threads, 5 to 12 in one process as git and file work comes and
//! goes, each retiring after 10 s idle; the tasks of the connections to
//! five peers and of the jobs in flight: every QUIC connection carries about
//! two tasks, and after kills and partitions gossip holds a peer's old
//! connection beside the new one until both sides move off it, so a node
//! with five peers was measured with up to 63 connections open at once,
//! each closed within about five minutes (`status` reports
//! `connections_open`; `KNOTD_SOAK_LOG` can log each one).
//! Why this bound: a leak grows with the work done, and the work is steady
//! (a push a second, each fetched by five nodes), so a leak is a positive
//! slope that goes on; the bound tightens as the soak lengthens (over an
//! hour, 16 MiB is 0.3 MiB a minute, 200 tasks fewer than one per 18
//! pushes), so the hour-long run catches what five minutes cannot. A
//! node with fewer than six samples past warm-up cannot be judged, and the
//! check fails rather than pass by saying nothing.

use std::collections::BTreeMap;

use crate::run::SampleRow;

/// Samples a verdict needs.
const MIN_SAMPLES: usize = 6;
/// Pairs closer than this are too noisy for a slope.
const MIN_PAIR_SECS: f64 = 20.0;

/// One metric of one node, judged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// The node.
    pub node: String,
    /// `rss_mib`, `open_files`, `threads` or `tasks`.
    pub metric: &'static str,
    /// Samples past warm-up.
    pub samples: usize,
    /// Median of those samples.
    pub median: f64,
    /// Theil–Sen slope, per hour.
    pub slope_per_hour: f64,
    /// What that slope adds over the time the judged samples span.
    pub growth: f64,
    /// The most it may add.
    pub limit: f64,
    /// `Some(true)`: flat; `Some(false)`: grows; `None`: too few samples.
    pub flat: Option<bool>,
}

/// The warm-up of each process, in seconds.
pub const WARM_UP: f64 = 120.0;

/// How a metric is read from a sample.
type Reader = fn(&SampleRow) -> Option<f64>;

fn metrics() -> [(&'static str, f64, Reader); 4] {
    [
        ("rss_mib", 16.0, |s| Some(s.sample.rss_kib as f64 / 1024.0)),
        ("open_files", 8.0, |s| Some(s.sample.fds as f64)),
        ("threads", 8.0, |s| Some(s.sample.threads as f64)),
        ("tasks", 200.0, |s| s.sample.tasks.map(|t| t as f64)),
    ]
}

/// Judge every metric of every node.
pub fn analyse(samples: &[SampleRow], secs: f64) -> Vec<Verdict> {
    let warm = WARM_UP;
    let window = (secs - warm).max(1.0);
    let mut by_node: BTreeMap<&str, Vec<&SampleRow>> = BTreeMap::new();
    for s in samples {
        if s.t >= warm && s.uptime >= warm {
            by_node.entry(&s.node).or_default().push(s);
        }
    }
    let mut nodes: Vec<&str> = samples.iter().map(|s| s.node.as_str()).collect();
    nodes.sort();
    nodes.dedup();
    let mut verdicts = Vec::new();
    for node in nodes {
        let rows = by_node.get(node).cloned().unwrap_or_default();
        for (metric, floor, get) in metrics() {
            let points: Vec<(u32, f64, f64)> = rows
                .iter()
                .filter_map(|s| Some((s.incarnation, s.t, get(s)?)))
                .collect();
            let mut values: Vec<f64> = points.iter().map(|p| p.2).collect();
            let median = median(&mut values).unwrap_or(0.0);
            let slope = theil_sen(&points);
            let limit = floor.max(0.1 * median);
            let (growth, flat) = match slope {
                Some(slope) if points.len() >= MIN_SAMPLES => {
                    let growth = slope * span(&points).clamp(MIN_PAIR_SECS, window);
                    (growth, Some(growth <= limit))
                }
                _ => (0.0, None),
            };
            verdicts.push(Verdict {
                node: node.to_string(),
                metric,
                samples: points.len(),
                median,
                slope_per_hour: slope.unwrap_or(0.0) * 3600.0,
                growth,
                limit,
                flat,
            });
        }
    }
    verdicts
}

/// The time the samples span: each process from its first sample to its
/// last, summed.
fn span(points: &[(u32, f64, f64)]) -> f64 {
    let mut by_process: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
    for &(incarnation, t, _) in points {
        let e = by_process.entry(incarnation).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
    }
    by_process.values().map(|(first, last)| last - first).sum()
}

/// The median of the slopes between samples of the same process.
fn theil_sen(points: &[(u32, f64, f64)]) -> Option<f64> {
    let mut slopes = Vec::new();
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if a.0 == b.0 && (b.1 - a.1).abs() >= MIN_PAIR_SECS {
                slopes.push((b.2 - a.2) / (b.1 - a.1));
            }
        }
    }
    median(&mut slopes)
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::ProcSample;

    fn rows(f: impl Fn(f64) -> f64, restart_at: Option<f64>) -> Vec<SampleRow> {
        (0..360)
            .map(|i| {
                let t = i as f64 * 10.0;
                let (incarnation, uptime) = match restart_at {
                    Some(r) if t >= r => (2, t - r),
                    _ => (1, t + 600.0),
                };
                SampleRow {
                    t,
                    node: "n".into(),
                    incarnation,
                    uptime,
                    sample: ProcSample {
                        rss_kib: (f(t) * 1024.0) as u64,
                        fds: 40,
                        threads: 10,
                        tasks: Some(200),
                        connections: Some(10),
                    },
                }
            })
            .collect()
    }

    fn rss(verdicts: &[Verdict]) -> &Verdict {
        verdicts.iter().find(|v| v.metric == "rss_mib").unwrap()
    }

    #[test]
    fn a_steady_leak_is_caught_and_spikes_are_not() {
        // 24 MiB an hour on top of 60 MiB: caught.
        let leak = analyse(&rows(|t| 60.0 + t / 150.0, None), 3600.0);
        assert_eq!(rss(&leak).flat, Some(false), "{:?}", rss(&leak));
        // Flat with a 40 MiB spike every tenth sample: flat.
        let spiky = analyse(
            &rows(
                |t| {
                    if (t as u64 / 10).is_multiple_of(10) {
                        100.0
                    } else {
                        60.0
                    }
                },
                None,
            ),
            3600.0,
        );
        assert_eq!(rss(&spiky).flat, Some(true), "{:?}", rss(&spiky));
    }

    #[test]
    fn a_restart_is_not_growth() {
        // A process that restarts low and climbs back to the same plateau
        // within its warm-up is flat.
        let restarted = analyse(
            &rows(
                |t| {
                    if (1800.0..1830.0).contains(&t) {
                        20.0
                    } else {
                        60.0
                    }
                },
                Some(1800.0),
            ),
            3600.0,
        );
        assert_eq!(rss(&restarted).flat, Some(true), "{:?}", rss(&restarted));
    }

    #[test]
    fn a_late_restart_is_judged_on_what_it_did() {
        // Five minutes; restarted at 100 s, so judged from 220 s: flat,
        // then one step of 7 MiB at 280 s. Stretched over the three minutes
        // after warm-up that slope would be 19.5 MiB; seen, it is 8.7.
        let late: Vec<SampleRow> = rows(|t| if t >= 280.0 { 49.0 } else { 42.0 }, Some(100.0))
            .into_iter()
            .take(31)
            .collect();
        let verdicts = analyse(&late, 300.0);
        assert_eq!(rss(&verdicts).flat, Some(true), "{:?}", rss(&verdicts));
        // The same step in a process that lived the whole run, sampled
        // from 120 s, is the slope of a steady climb only where it is one.
        let climbing = analyse(
            &rows(|t| 42.0 + (t - 120.0).max(0.0) / 6.0, None)
                .into_iter()
                .take(31)
                .collect::<Vec<_>>(),
            300.0,
        );
        assert_eq!(rss(&climbing).flat, Some(false), "{:?}", rss(&climbing));
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        let short: Vec<SampleRow> = rows(|_| 60.0, None).into_iter().take(8).collect();
        let verdicts = analyse(&short, 3600.0);
        assert_eq!(rss(&verdicts).flat, None);
    }
}
