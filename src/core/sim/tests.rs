//! Runs of the simulator: many seeds in CI, one seed replayed, and each
//! adversary on its own.
//!
//! `KNOTD_SIM_SEEDS` sets how many seeds `many_seeds` runs (default 1000)
//! and `KNOTD_SIM_FIRST` the first; `KNOTD_SIM_SEED` the seed `replay`
//! runs, printing its trace (`KNOTD_SIM_ONLY=<adversary>` or `none` keeps
//! one adversary or none); `KNOTD_SIM_SWEEP=N` runs each adversary alone in
//! N scenarios (only the one `KNOTD_SIM_ONLY` names, if set);
//! `KNOTD_SIM_KEEP_GOING=1` makes `many_seeds` run every seed and report
//! every failure instead of stopping at the first; `KNOTD_SIM_DIGESTS=N`
//! prints each seed's trace digest, to compare two versions of the core. TESTING.md says how to use them.

use std::time::Duration;

use super::{Adversary, Faults, Scenario, run};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Run `seeds` seeds on every core of the machine; panic with the first
/// failure's report. With `keep_going`, every seed runs and the panic lists
/// each failing seed's report (for long runs, where one failure should not
/// hide the next).
fn run_seeds(first: u64, count: u64, keep_going: bool) -> super::Outcome {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicU64::new(first);
    let total = std::sync::Mutex::new(super::Outcome::default());
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= first + count
                        || (!keep_going && !failures.lock().unwrap().is_empty())
                    {
                        return;
                    }
                    match run(seed, &Scenario::random(seed)) {
                        Ok(outcome) => {
                            let mut t = total.lock().unwrap();
                            t.steps += outcome.steps;
                            t.node_hours += outcome.node_hours;
                            t.publishes += outcome.publishes;
                            t.crashes += outcome.crashes;
                        }
                        Err(f) => {
                            eprintln!("seed {seed} FAILED: {f}");
                            failures.lock().unwrap().push(f.to_string());
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let total = total.into_inner().unwrap();
    if !failures.is_empty() {
        panic!(
            "{} failing seed(s) ({:.0} node-hours in passing seeds):\n{}",
            failures.len(),
            total.node_hours,
            failures.join("\n")
        );
    }
    total
}

#[test]
fn many_seeds() {
    let first = env_u64("KNOTD_SIM_FIRST").unwrap_or(0);
    let count = env_u64("KNOTD_SIM_SEEDS").unwrap_or(1000);
    let started = std::time::Instant::now();
    let keep_going = env_u64("KNOTD_SIM_KEEP_GOING").is_some_and(|v| v != 0);
    let total = run_seeds(first, count, keep_going);
    eprintln!(
        "{count} seeds: {} steps, {:.0} node-hours, {} publishes, {} crashes in {:.1} s",
        total.steps,
        total.node_hours,
        total.publishes,
        total.crashes,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn replay() {
    let Some(seed) = env_u64("KNOTD_SIM_SEED") else {
        return;
    };
    let mut scenario = Scenario::random(seed);
    if let Ok(only) = std::env::var("KNOTD_SIM_ONLY") {
        // `none` or one adversary's name, as `sweep` prints it.
        scenario.adversaries = Adversary::ALL
            .into_iter()
            .filter(|a| format!("{a:?}") == only)
            .collect();
    }
    eprintln!("{scenario:#?}");
    match run(seed, &scenario) {
        Ok(outcome) => eprintln!("seed {seed} passes: {outcome:?}"),
        Err(f) => panic!("{f}"),
    }
}

/// The seeds of the long runs that found holes (TESTING.md, "What it
/// found"), in the core and in the simulator, each fixed since: they must
/// keep passing, whatever the 1,000 seeds of `many_seeds` are.
#[test]
fn the_seeds_that_found_holes_pass() {
    let seeds = [
        1_937, 8_140, 38_305, 88_225, 602_100, 618_398, 628_077, 906_499, 1_024_640,
    ];
    for seed in seeds {
        if let Err(f) = run(seed, &Scenario::random(seed)) {
            panic!("{f}");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [1, 7, 42] {
        let scenario = Scenario::random(seed);
        let a = super::World::new(seed, scenario.clone());
        let b = super::World::new(seed, scenario);
        let (ta, tb) = (trace_of(a), trace_of(b));
        assert_eq!(ta, tb, "seed {seed} ran two ways");
    }
}

fn trace_of(world: super::World) -> (Vec<String>, u64) {
    let seed = world.seed;
    match world.run() {
        Ok(o) => (vec![format!("{o:?}")], seed),
        Err(f) => (f.trace, seed),
    }
}

#[test]
fn a_calm_world_converges() {
    let outcome = run(3, &Scenario::calm()).unwrap_or_else(|f| panic!("{f}"));
    assert!(outcome.publishes > 0);
}

/// Topics left a minute after their last news, between publishes five
/// minutes apart: every follower, those that trust only the record (read
/// every five minutes) included, holds its owner's newest state within
/// two and a half minutes after the last publish could have happened,
/// not only after the hour and a quarter a world with faults is given:
/// direct pushes carry the states between quiet topics.
#[test]
fn a_calm_world_with_quiet_topics_converges_within_minutes() {
    let scenario = Scenario {
        topic_idle: Some(Duration::from_secs(60)),
        settle: Duration::from_secs(150),
        homes: 3,
        seeders: 2,
        repos_per_owner: 2,
        ..Scenario::calm()
    };
    for seed in 0..10 {
        if let Err(f) = run(seed, &scenario) {
            panic!("{f}");
        }
    }
}

/// A calm world with one adversary.
fn with(adversary: Adversary) -> Scenario {
    Scenario {
        adversaries: vec![adversary],
        homes: 2,
        ..Scenario::calm()
    }
}

#[test]
fn each_adversary_alone_is_harmless() {
    for adversary in Adversary::ALL {
        for seed in 0..5 {
            if let Err(f) = run(seed, &with(adversary)) {
                panic!("{adversary:?}: {f}");
            }
        }
    }
}

#[test]
fn faults_without_adversaries_heal() {
    let scenario = Scenario {
        faults: Faults {
            crash_every: Some(Duration::from_secs(120)),
            partition_every: Some(Duration::from_secs(180)),
            pds_outage_every: Some(Duration::from_secs(300)),
            disk_full_every: Some(Duration::from_secs(300)),
            loss: 0.1,
            duplicate: 0.02,
            stale_neighbor: 0.3,
        },
        homes: 2,
        seeders: 2,
        settle: super::settle_after_faults(),
        ..Scenario::calm()
    };
    for seed in 0..20 {
        if let Err(f) = run(seed, &scenario) {
            panic!("{f}");
        }
    }
}

/// Each adversary alone (or only `KNOTD_SIM_ONLY`) in `KNOTD_SIM_SWEEP`
/// random scenarios: how many fail and the first failure's report. This is how a fix is checked: revert
/// it and the adversary it stops must fail here.
#[test]
fn sweep() {
    let Some(count) = env_u64("KNOTD_SIM_SWEEP") else {
        return;
    };
    let only = std::env::var("KNOTD_SIM_ONLY").ok();
    for adversary in Adversary::ALL {
        if only
            .as_ref()
            .is_some_and(|o| *o != format!("{adversary:?}"))
        {
            continue;
        }
        let mut failed = 0;
        let mut first = None;
        for seed in 0..count {
            let mut scenario = Scenario::random(seed);
            scenario.adversaries = vec![adversary];
            if let Err(f) = run(seed, &scenario) {
                failed += 1;
                first.get_or_insert((seed, f.message.chars().take(300).collect::<String>()));
            }
        }
        println!("{adversary:?}: {failed}/{count} failed; first: {first:?}");
    }
}

/// Print `seed digest` for seeds `KNOTD_SIM_FIRST..+KNOTD_SIM_DIGESTS`, to
/// compare the traces of two versions of the core seed by seed.
#[test]
fn digests() {
    let Some(count) = env_u64("KNOTD_SIM_DIGESTS") else {
        return;
    };
    let first = env_u64("KNOTD_SIM_FIRST").unwrap_or(0);
    for seed in first..first + count {
        let digest = match run(seed, &Scenario::random(seed)) {
            Ok(o) => o.digest,
            Err(f) => format!("failed: {}", f.message),
        };
        println!("digest {seed} {digest}");
    }
}
