//! A deterministic simulator of many knots: the real [`Core`] of every node
//! in one process, a virtual clock, one seeded random number generator,
//! faults and adversaries, and invariants checked after every step.
//!
//! The world ([`world::World`]) plays everything the actor and the network
//! do for a real node: it executes each core's effects (durable and lazy
//! writes, timers, content jobs, gossip topics, direct pushes and pulls,
//! record polls and write-backs, identity listings) and feeds the results
//! back as events, after latencies drawn from the RNG. Content is modelled
//! by blob hashes and sizes, not bytes: a fetch succeeds from a reachable
//! provider that holds the blobs, takes time proportional to their size,
//! and may meet a provider that stalls or serves wrong bytes. Each owner
//! has a PDS (records with compare-and-swap, lagging reads, outages).
//!
//! Faults (crash and restart from the durably written rows, partitions,
//! message loss, duplication and reordering, PDS outages) are drawn on a
//! seeded schedule; adversaries ([`adversary`]) are strangers with keys of
//! their own. After every step [`check`] asserts the safety invariants;
//! after the faults stop and a stated bound of virtual time passes, every
//! honest follower must hold its owner's newest state (liveness).
//!
//! Everything is a function of the seed: the same seed gives the same
//! trace. A failure names the seed, the command that replays it and the
//! last steps of the trace. See TESTING.md for what is and is not modelled.

mod adversary;
mod check;
mod content;
mod execute;
mod model;
mod net;
mod node;
mod owners;
mod pds;
#[cfg(test)]
mod tests;
mod trace;
mod world;

use std::{collections::VecDeque, fmt, time::Duration};

pub use model::{Adversary, Failure, Faults, Outcome, Scenario, Trace};

pub use model::World;

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self {
            crash_every: None,
            partition_every: None,
            pds_outage_every: None,
            disk_full_every: None,
            loss: 0.0,
            duplicate: 0.0,
            stale_neighbor: 0.0,
        }
    }
}

/// How long every honest follower may take to converge once faults stop:
/// a follower that learns of states only from the record may have backed
/// off its reads as far as the schedule allows (or a PDS asked it to wait
/// as long), then needs a few minutes to fetch.
pub fn settle_after_faults() -> Duration {
    crate::core::ReadSettings::default().max_backoff + Duration::from_secs(15 * 60)
}

impl Scenario {
    /// A small world without faults or adversaries.
    pub fn calm() -> Self {
        Self {
            owners: 1,
            repos_per_owner: 1,
            seeders: 1,
            homes: 1,
            adversaries: Vec::new(),
            active: Duration::from_secs(20 * 60),
            settle: Duration::from_secs(30 * 60),
            publish_every: Duration::from_secs(5 * 60),
            faults: Faults::none(),
            topic_idle: None,
        }
    }

    /// A scenario drawn from `seed`: a few nodes, faults of every kind and
    /// up to two adversaries.
    pub fn random(seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5ce7_a210);
        let minutes = |rng: &mut rand::rngs::StdRng, lo: u64, hi: u64| {
            Duration::from_secs(60 * rng.random_range(lo..=hi))
        };
        let maybe = |rng: &mut rand::rngs::StdRng, lo: u64, hi: u64| {
            rng.random_bool(0.7)
                .then(|| Duration::from_secs(60 * rng.random_range(lo..=hi)))
        };
        let adversaries = (0..rng.random_range(0..=2))
            .map(|_| Adversary::random(&mut rng))
            .collect();
        Self {
            owners: rng.random_range(1..=2),
            repos_per_owner: rng.random_range(1..=2),
            seeders: rng.random_range(1..=2),
            homes: rng.random_range(1..=3),
            adversaries,
            active: minutes(&mut rng, 10, 40),
            settle: settle_after_faults(),
            publish_every: minutes(&mut rng, 2, 10),
            faults: Faults {
                crash_every: maybe(&mut rng, 3, 20),
                partition_every: maybe(&mut rng, 3, 20),
                pds_outage_every: maybe(&mut rng, 5, 30),
                disk_full_every: maybe(&mut rng, 5, 30),
                loss: if rng.random_bool(0.5) {
                    rng.random_range(0.0..0.2)
                } else {
                    0.0
                },
                duplicate: rng.random_range(0.0..0.05),
                stale_neighbor: rng.random_range(0.0..0.5),
            },
            // Drawn last, so the rest of a seed's scenario is what it was
            // before topics could be left.
            topic_idle: rng
                .random_bool(0.5)
                .then(|| Duration::from_secs(rng.random_range(30..=900))),
        }
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            lines: VecDeque::new(),
            steps: 0,
            print: std::env::var("KNOTD_SIM_TRACE").as_deref() == Ok("1"),
            digest: blake3::Hasher::new(),
        }
    }
}

/// Trace lines kept for a failure report.
const TRACE_KEPT: usize = 400;

impl Trace {
    /// Note one step.
    pub fn push(&mut self, at: Duration, line: String) {
        self.steps += 1;
        if self.lines.len() == TRACE_KEPT {
            self.lines.pop_front();
        }
        let line = format!("{:>9.3}s  {line}", at.as_secs_f64());
        if self.print {
            eprintln!("{line}");
        }
        self.digest.update(line.as_bytes());
        self.digest.update(b"\n");
        self.lines.push_back(line);
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The last steps kept.
    pub fn tail(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }

    /// A digest of every step so far, to compare two runs of one seed.
    pub fn digest(&self) -> String {
        self.digest.finalize().to_hex()[..16].to_string()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} failed at {:.3}s: {}",
            self.seed,
            self.at.as_secs_f64(),
            self.message
        )?;
        writeln!(f, "last steps:")?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: KNOTD_SIM_SEED={} cargo test --lib core::sim::tests::replay -- --nocapture",
            self.seed
        )
    }
}

/// Run `scenario` under `seed` to its end.
pub fn run(seed: u64, scenario: &Scenario) -> Result<Outcome, Box<Failure>> {
    World::new(seed, scenario.clone()).run()
}
