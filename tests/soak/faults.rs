//! The fault schedule: drawn from a seed before the soak starts, so a run
//! can be repeated, and played against the real processes and network.
//! The first faults cover every kind once (so even a five-minute run sees
//! each); later ones are drawn with weights. Two faults never act on the
//! same thing at once (a node's process, link, loss rule or forwarder; the
//! relay; the PDS). Each node is killed at most once per 20 minutes of soak
//! (at least once), so every node also runs long enough for its growth to
//! be judged. Each fault heals itself when its time is up; those still
//! acting when the soak stops heal then, so the end checks measure a
//! recovery.

use std::{sync::Arc, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use tokio_util::sync::CancellationToken;

use crate::Soak;

/// What a fault does.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` the node, start it again when the fault ends.
    Kill {
        /// The node.
        node: String,
    },
    /// Cut the nodes' links (relay, PDS, peers: everything).
    Partition {
        /// The nodes cut off.
        nodes: Vec<String>,
    },
    /// Drop packets in and out of a node at random.
    Loss {
        /// The node.
        node: String,
        /// Probability of dropping each packet.
        probability: f64,
    },
    /// Delay datagrams on the direct paths towards the nodes.
    Latency {
        /// The nodes.
        nodes: Vec<String>,
        /// Added delay, each way.
        delay_ms: u64,
    },
    /// Stop the relay; start it again on its address when the fault ends.
    RelayRestart,
    /// The PDS's port drops every packet.
    PdsOutage,
}

impl FaultKind {
    /// A short label for the picture and the log.
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Kill { .. } => "kill -9",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Latency { .. } => "latency",
            FaultKind::RelayRestart => "relay restart",
            FaultKind::PdsOutage => "PDS outage",
        }
    }

    /// What the fault holds while it acts.
    fn resources(&self) -> Vec<String> {
        match self {
            FaultKind::Kill { node } => vec![format!("proc:{node}")],
            FaultKind::Partition { nodes } => nodes.iter().map(|n| format!("link:{n}")).collect(),
            FaultKind::Loss { node, .. } => vec![format!("loss:{node}")],
            FaultKind::Latency { nodes, .. } => {
                nodes.iter().map(|n| format!("delay:{n}")).collect()
            }
            FaultKind::RelayRestart => vec!["relay".into()],
            FaultKind::PdsOutage => vec!["pds".into()],
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fault {
    /// Seconds after the soak began that it starts.
    pub at: f64,
    /// How long it acts, in seconds.
    pub duration: f64,
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// How long a PDS outage lasts.
pub const PDS_OUTAGE_SECS: f64 = 60.0;

/// Draw the schedule for a soak of `secs` seconds over `nodes`.
pub fn schedule(seed: u64, secs: f64, nodes: &[String]) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut busy: Vec<(String, f64)> = Vec::new();
    let mut faults = Vec::new();
    let mut cover = vec![0usize, 1, 2, 3, 4, 5];
    let max_kills = ((secs / 1200.0).ceil() as usize).max(1);
    let mut kills: Vec<usize> = vec![0; nodes.len()];
    cover.shuffle(&mut rng);
    // The last fault starts 10 s before the end and may act past it.
    let last_start = secs - 10.0;
    let mut t = 10.0;
    while t < last_start {
        let kind_index = if cover.is_empty() {
            // kill, partition, loss, latency, relay, PDS
            let weights = [30, 20, 20, 20, 7, 3];
            let total: u32 = weights.iter().sum();
            let mut pick = rng.random_range(0..total);
            weights
                .iter()
                .position(|w| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap()
        } else {
            cover.remove(0)
        };
        let pick_node = |rng: &mut StdRng| nodes[rng.random_range(0..nodes.len())].clone();
        let killable: Vec<usize> = (0..nodes.len()).filter(|i| kills[*i] < max_kills).collect();
        let kind_index = if kind_index == 0 && killable.is_empty() {
            2
        } else {
            kind_index
        };
        let (kind, duration) = match kind_index {
            0 => {
                let i = killable[rng.random_range(0..killable.len())];
                (
                    FaultKind::Kill {
                        node: nodes[i].clone(),
                    },
                    rng.random_range(2.0..15.0),
                )
            }
            1 => {
                let mut picked = vec![pick_node(&mut rng)];
                if rng.random_bool(0.3) {
                    let other = pick_node(&mut rng);
                    if !picked.contains(&other) {
                        picked.push(other);
                    }
                }
                (
                    FaultKind::Partition { nodes: picked },
                    rng.random_range(15.0..60.0),
                )
            }
            2 => (
                FaultKind::Loss {
                    node: pick_node(&mut rng),
                    probability: [0.05, 0.1, 0.2, 0.3][rng.random_range(0..4)],
                },
                rng.random_range(20.0..90.0),
            ),
            3 => {
                let mut picked: Vec<String> = nodes.to_vec();
                picked.shuffle(&mut rng);
                picked.truncate(rng.random_range(1..=3));
                (
                    FaultKind::Latency {
                        nodes: picked,
                        delay_ms: rng.random_range(50..400),
                    },
                    rng.random_range(20.0..90.0),
                )
            }
            4 => (FaultKind::RelayRestart, rng.random_range(3.0..15.0)),
            _ => (FaultKind::PdsOutage, PDS_OUTAGE_SECS),
        };
        let resources = kind.resources();
        let free = resources
            .iter()
            .all(|r| busy.iter().all(|(b, until)| b != r || *until <= t));
        if free {
            if let FaultKind::Kill { node } = &kind {
                kills[nodes.iter().position(|n| n == node).unwrap()] += 1;
            }
            busy.retain(|(_, until)| *until > t);
            busy.extend(resources.into_iter().map(|r| (r, t + duration)));
            faults.push(Fault {
                at: (t * 10.0).round() / 10.0,
                duration: (duration * 10.0).round() / 10.0,
                kind,
            });
        }
        t += rng.random_range(12.0..30.0);
    }
    faults
}

/// Start the fault, wait its time (or until `stop`), then heal it. Returns
/// (start, end) in seconds since the soak began, and a problem if healing
/// failed (a node that does not start again).
pub async fn play(
    soak: Arc<Soak>,
    fault: Fault,
    stop: CancellationToken,
) -> Option<(f64, f64, Option<String>)> {
    let start_in = Duration::from_secs_f64(fault.at).saturating_sub(soak.started().elapsed());
    tokio::select! {
        _ = stop.cancelled() => return None,
        _ = tokio::time::sleep(start_in) => {}
    }
    let started = soak.now();
    act(&soak, &fault.kind, true).await;
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs_f64(fault.duration)) => {}
    }
    let problem = act(&soak, &fault.kind, false).await;
    Some((started, soak.now(), problem))
}

/// Apply (`start`) or heal a fault.
async fn act(soak: &Arc<Soak>, kind: &FaultKind, start: bool) -> Option<String> {
    let what = format!("{} {}", if start { "start" } else { "heal" }, kind.label());
    eprintln!("soak {:7.1}s: {what} {kind:?}", soak.now());
    match kind {
        FaultKind::Kill { node } => {
            let node = soak.node(node).clone();
            if start {
                node.kill9();
                None
            } else {
                node.spawn("started again after kill -9");
                node.wait_ready().await.err()
            }
        }
        FaultKind::Partition { nodes } => {
            for n in nodes {
                soak.net.set_link(n, !start);
            }
            None
        }
        FaultKind::Loss { node, probability } => {
            soak.net
                .set_loss(node, if start { *probability } else { 0.0 });
            None
        }
        FaultKind::Latency { nodes, delay_ms } => {
            let delay = Duration::from_millis(if start { *delay_ms } else { 0 });
            for n in nodes {
                soak.net.set_delay(n, delay);
            }
            None
        }
        FaultKind::RelayRestart => {
            let net = soak.clone();
            tokio::task::spawn_blocking(move || {
                if start {
                    net.net.lab.stop_relay()
                } else {
                    net.net.lab.start_relay()
                }
            })
            .await
            .err()
            .map(|e| format!("the relay did not restart: {e}"))
        }
        FaultKind::PdsOutage => {
            soak.net.set_pds_blocked(soak.pds.pds_port(), start);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn the_schedule_covers_every_kind_and_repeats_with_its_seed() {
        let schedule = schedule(22, 300.0, &nodes());
        let labels: Vec<&str> = schedule.iter().take(6).map(|f| f.kind.label()).collect();
        for kind in [
            "kill -9",
            "partition",
            "loss",
            "latency",
            "relay restart",
            "PDS outage",
        ] {
            assert!(labels.contains(&kind), "{kind} missing from {labels:?}");
        }
        let again = schedule_labels(22);
        assert_eq!(again, schedule_labels(22));
        assert_ne!(again, schedule_labels(23));
    }

    fn schedule_labels(seed: u64) -> Vec<(u64, String)> {
        schedule(seed, 3600.0, &nodes())
            .iter()
            .map(|f| (f.at as u64, format!("{:?}", f.kind)))
            .collect()
    }

    #[test]
    fn nothing_is_faulted_twice_at_once_and_kills_are_rationed() {
        let schedule = schedule(7, 3600.0, &nodes());
        for (i, a) in schedule.iter().enumerate() {
            for b in &schedule[i + 1..] {
                let overlap = b.at < a.at + a.duration && a.at < b.at + b.duration;
                let shared = a
                    .kind
                    .resources()
                    .iter()
                    .any(|r| b.kind.resources().contains(r));
                assert!(!(overlap && shared), "{a:?} and {b:?} overlap");
            }
        }
        for node in nodes() {
            let kills = schedule
                .iter()
                .filter(|f| f.kind == FaultKind::Kill { node: node.clone() })
                .count();
            assert!(kills <= 3, "{node} killed {kills} times in an hour");
        }
    }
}
