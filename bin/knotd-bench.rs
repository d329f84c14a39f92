//! `knotd-bench`: measure replication, gossip propagation, scale and admin
//! latency of knotd on loopback, against `git daemon` as the baseline.
//!
//! Every scenario prints table rows to stdout; the whole run is written to
//! `<out>/<UTC timestamp>-<scenario set>.json`. Progress goes to stderr.

#[path = "bench/gitd.rs"]
mod gitd;
#[path = "bench/indexers.rs"]
mod indexers;
#[path = "bench/mirroring.rs"]
mod mirroring;
#[path = "bench/nodes.rs"]
mod nodes;
#[path = "bench/real.rs"]
mod real;
#[path = "bench/realrepo.rs"]
mod realrepo;
#[path = "bench/repogen.rs"]
mod repogen;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/scale_content.rs"]
mod scale_content;
#[path = "bench/scenarios.rs"]
mod scenarios;

use std::{path::PathBuf, time::Duration, time::Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::{
    report::{Machine, RunReport, ScenarioReport},
    scenarios::{Fixture, Plan},
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Every scenario.
    All,
    /// Full replication against `git clone` from `git daemon`.
    Full,
    /// Bytes and latency of a 10-commit update against `git fetch`.
    Incremental,
    /// Propagation of one update to 10 and 30 followers.
    Gossip,
    /// One node tracking thousands of repositories.
    Scale,
    /// Admin socket latency.
    Admin,
    /// A real-shaped repository (5,600 refs, real source text, ~60 MB):
    /// replication, push and clones against git, and process counts.
    Real,
    /// `git index-pack` against `gix-pack` on packs of several shapes (only
    /// when asked for).
    Indexers,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Size {
    /// About 1 MB packed, 200 commits.
    Small,
    /// About 50 MB packed, 2,000 commits.
    Medium,
}

#[derive(Parser, Debug)]
#[command(
    name = "knotd-bench",
    version,
    about = "Benchmarks of knotd on loopback, against git daemon"
)]
struct Cli {
    /// Scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Size of the replicated repository.
    #[arg(long, value_enum, default_value = "small")]
    size: Size,
    /// Seed of the generated repositories.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Each scenario once at minimum size (a tiny repository, 3 gossip
    /// followers, 50 repositories, 20 admin requests).
    #[arg(long)]
    smoke: bool,
    /// Directory for the JSON result.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Repetitions of the full and incremental measurements (default 3, smoke 1).
    #[arg(long)]
    iterations: Option<usize>,
    /// Repository counts of the scale scenario, comma-separated
    /// (default 1000; smoke 50).
    #[arg(long, value_delimiter = ',')]
    scale_repos: Vec<usize>,
    /// Repository counts of the scale scenario's second part, where every
    /// repository has content, a record and a peer (default 1000; smoke 10).
    #[arg(long, value_delimiter = ',')]
    scale_content_repos: Vec<usize>,
    /// Follower counts of the gossip scenario, comma-separated (default 10,30; smoke 3).
    #[arg(long, value_delimiter = ',')]
    gossip_nodes: Vec<usize>,
    /// Requests per command in the admin scenario (default 500; smoke 20).
    #[arg(long)]
    admin_requests: Option<usize>,
    /// Seconds of idle CPU measurement in the scale scenario (default 10; smoke 2).
    #[arg(long)]
    idle_secs: Option<u64>,
    /// `topic_idle_secs` of the nodes of the scale scenario with content:
    /// quiet topics are left this long after the last news, and the quiet
    /// figures are taken once they are (default 60; smoke 2).
    #[arg(long)]
    topic_idle_secs: Option<u64>,
    /// Seconds the scale scenario with content waits after its topics are
    /// left and before its idle window, so that record reads reach their
    /// quiet cadence (about 75 minutes at the default poll settings;
    /// default 0).
    #[arg(long, default_value_t = 0)]
    settle_secs: u64,
    /// The knotd binary run by the scale and admin scenarios (default: next to
    /// this executable).
    #[arg(long)]
    knotd: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn plan(cli: &Cli, work: PathBuf) -> Result<Plan> {
    let spec = match (cli.smoke, cli.size) {
        (true, _) => repogen::TINY,
        (false, Size::Small) => repogen::SMALL,
        (false, Size::Medium) => repogen::MEDIUM,
    };
    let pick = |given: &[usize], smoke: &[usize], normal: &[usize]| -> Vec<usize> {
        match (given.is_empty(), cli.smoke) {
            (false, _) => given.to_vec(),
            (true, true) => smoke.to_vec(),
            (true, false) => normal.to_vec(),
        }
    };
    let needs_knotd = matches!(
        cli.scenario,
        Scenario::All | Scenario::Scale | Scenario::Admin | Scenario::Real | Scenario::Indexers
    );
    let knotd = if needs_knotd {
        nodes::find_knotd(cli.knotd.as_deref())?
    } else {
        PathBuf::from("knotd")
    };
    Ok(Plan {
        spec,
        gossip_spec: repogen::TINY,
        seed: cli.seed,
        iterations: cli
            .iterations
            .unwrap_or(if cli.smoke { 1 } else { 3 })
            .max(1),
        incremental_commits: 10,
        gossip_nodes: pick(&cli.gossip_nodes, &[3], &[10, 30]),
        scale_repos: pick(&cli.scale_repos, &[50], &[1000]),
        scale_content: pick(&cli.scale_content_repos, &[10], &[1000]),
        admin_requests: cli
            .admin_requests
            .unwrap_or(if cli.smoke { 20 } else { 500 }),
        idle: Duration::from_secs(cli.idle_secs.unwrap_or(if cli.smoke { 2 } else { 10 })),
        topic_idle: cli
            .topic_idle_secs
            .unwrap_or(if cli.smoke { 2 } else { 60 }),
        settle: Duration::from_secs(cli.settle_secs),
        knotd,
        work,
    })
}

async fn run(cli: Cli) -> Result<bool> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("knotd-bench")
        .tempdir()
        .context("creating a work directory")?;
    let plan = plan(&cli, tmp.path().to_path_buf())?;
    let wants = |s: Scenario| cli.scenario == Scenario::All || cli.scenario == s;

    report::print_header();
    let mut results: Vec<Result<ScenarioReport>> = Vec::new();
    let mut names = Vec::new();
    let mut record = |name: &'static str, r: Result<ScenarioReport>| {
        match &r {
            Ok(rep) => report::print_rows(rep),
            Err(e) => println!("| {name:<11} | failed: {e:#}"),
        }
        names.push(name);
        results.push(r);
    };

    if wants(Scenario::Full) || wants(Scenario::Incremental) {
        match Fixture::create(&plan).await {
            Ok(mut fx) => {
                let mut follower = None;
                if wants(Scenario::Full) {
                    match scenarios::full(&plan, &fx).await {
                        Ok((rep, f)) => {
                            follower = Some(f);
                            record("full", Ok(rep));
                        }
                        Err(e) => record("full", Err(e)),
                    }
                }
                if wants(Scenario::Incremental) {
                    record(
                        "incremental",
                        scenarios::incremental(&plan, &mut fx, follower).await,
                    );
                } else if let Some(f) = follower {
                    f.shutdown().await?;
                }
                fx.shutdown().await?;
            }
            Err(e) => {
                let text = format!("{e:#}");
                if wants(Scenario::Full) {
                    record("full", Err(anyhow::anyhow!("{text}")));
                }
                if wants(Scenario::Incremental) {
                    record("incremental", Err(anyhow::anyhow!("{text}")));
                }
            }
        }
    }
    if wants(Scenario::Gossip) {
        record("gossip", scenarios::gossip(&plan).await);
    }
    if wants(Scenario::Scale) {
        record("scale", scenarios::scale(&plan).await);
    }
    if wants(Scenario::Admin) {
        record("admin", scenarios::admin(&plan).await);
    }
    if wants(Scenario::Real) {
        if cli.smoke {
            record("real", real::real(&plan, "real", realrepo::REAL_TINY).await);
        } else {
            record(
                "real-small",
                real::real(&plan, "real-small", realrepo::REAL_SMALL).await,
            );
            record("real", real::real(&plan, "real", realrepo::REAL).await);
        }
    }

    if cli.scenario == Scenario::Indexers {
        record("indexers", indexers::indexers(&plan).await);
    }

    let mut ok = true;
    let mut scenarios = serde_json::Map::new();
    for (name, result) in names.into_iter().zip(results) {
        let value = match result {
            Ok(rep) => serde_json::to_value(rep)?,
            Err(e) => {
                ok = false;
                serde_json::json!({ "scenario": name, "error": format!("{e:#}") })
            }
        };
        scenarios.insert(name.to_string(), value);
    }
    let scenario_set = if cli.smoke {
        "smoke".to_string()
    } else if cli.scenario == Scenario::Real {
        // The real-shaped repository does not depend on --size.
        "real".to_string()
    } else {
        format!(
            "{}-{}",
            format!("{:?}", cli.scenario).to_lowercase(),
            plan.spec.label
        )
    };
    let run = RunReport {
        machine: Machine::collect(),
        scenario_set,
        size: plan.spec.label.to_string(),
        seed: plan.seed,
        smoke: cli.smoke,
        iterations: plan.iterations,
        total_secs: report::round3(started.elapsed().as_secs_f64()),
        scenarios,
    };
    let path = report::write_json(&cli.out, &run)?;
    println!("results: {}", path.display());
    Ok(ok)
}
