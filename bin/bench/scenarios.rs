//! The five scenarios.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use knotd::admin::{Command, Payload, PublishReport};

use crate::{
    gitd::{CountingProxy, GitDaemon},
    nodes::{BenchNode, ChildNode, InNode, clock_ticks, rid},
    repogen::{RepoGen, RepoSpec, git_command, pack_bytes, pack_files},
    report::{ScenarioReport, max, median, ms, percentile, round3},
};

/// The repository every replication scenario publishes.
pub const REPO: &str = "did:plc:benchauthor/bench";
/// Name of the source repository below the git daemon's base path.
const SRC: &str = "src.git";
/// Poll interval while waiting for a single follower.
const POLL: Duration = Duration::from_millis(5);

/// What a run measures, derived from the command line.
pub struct Plan {
    pub spec: RepoSpec,
    pub gossip_spec: RepoSpec,
    pub seed: u64,
    pub iterations: usize,
    pub incremental_commits: usize,
    pub gossip_nodes: Vec<usize>,
    pub scale_repos: Vec<usize>,
    pub scale_content: Vec<usize>,
    pub admin_requests: usize,
    pub idle: Duration,
    /// `topic_idle_secs` of the nodes of the scale scenario with content.
    pub topic_idle: u64,
    /// How long the scale scenario with content waits, once topics are
    /// left, before its idle window.
    pub settle: Duration,
    pub knotd: PathBuf,
    pub work: PathBuf,
}

fn progress(text: &str) {
    eprintln!("knotd-bench: {text}");
}

/// A published repository, its author node and a git daemon serving the same
/// repository, shared by the `full` and `incremental` scenarios.
pub struct Fixture {
    generator: RepoGen,
    author: InNode,
    daemon: GitDaemon,
    initial: PublishReport,
    head: String,
    deterministic: bool,
    generate_ms: f64,
    publish_ms: f64,
    git_pack_bytes: u64,
}

impl Fixture {
    /// Generate the repository (twice, to check determinism), publish it on
    /// an author node and serve it with `git daemon`.
    pub async fn create(plan: &Plan) -> Result<Self> {
        progress(&format!(
            "generating the {} repository (seed {})",
            plan.spec.label, plan.seed
        ));
        let base = plan.work.join("daemon");
        let started = Instant::now();
        let generator = RepoGen::create(&base.join(SRC), plan.spec, plan.seed)?;
        let generate_ms = ms(started.elapsed());
        let head = generator.head()?;
        let again = RepoGen::create(&plan.work.join("determinism.git"), plan.spec, plan.seed)?;
        let deterministic = again.head()? == head;
        std::fs::remove_dir_all(again.git_dir())?;
        if !deterministic {
            bail!("the same seed gave two different repositories");
        }
        let git_pack_bytes = pack_bytes(generator.git_dir())?;
        let daemon = GitDaemon::spawn(&base)?;
        let author = InNode::spawn(&plan.work).await?;
        let started = Instant::now();
        let initial = author.publish(REPO, generator.git_dir()).await?;
        let publish_ms = ms(started.elapsed());
        Ok(Fixture {
            generator,
            author,
            daemon,
            initial,
            head,
            deterministic,
            generate_ms,
            publish_ms,
            git_pack_bytes,
        })
    }

    /// Stop the author node and the daemon.
    pub async fn shutdown(self) -> Result<()> {
        drop(self.daemon);
        self.author.shutdown().await
    }
}

/// Time a mirror clone over `git daemon`; returns the time and the pack size.
fn git_clone(url: &str, dest: &std::path::Path) -> Result<(Duration, u64)> {
    let parent = dest.parent().context("clone parent")?;
    let started = Instant::now();
    let status = git_command(parent)
        .args(["clone", "--mirror", "--no-local", "-q", url])
        .arg(dest)
        .status()?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("git clone {url} failed: {status}");
    }
    Ok((elapsed, pack_bytes(dest)?))
}

/// Scenario 1: a fresh node replicates the repository from a seeding node,
/// against `git clone` from `git daemon`. Returns the last follower, which has
/// the repository, for the incremental scenario.
pub async fn full(plan: &Plan, fx: &Fixture) -> Result<(ScenarioReport, InNode)> {
    let mut report = ScenarioReport::new("full");
    let ticket = fx.author.ticket().await?;
    let manifest = fx.initial.manifest.clone();
    let mut knot = Vec::new();
    let mut git = Vec::new();
    let mut clone_pack = 0;
    let mut last = None;
    for i in 0..plan.iterations {
        progress(&format!("full: iteration {}/{}", i + 1, plan.iterations));
        if let Some(previous) = last.take() {
            InNode::shutdown(previous).await?;
        }
        let follower = InNode::spawn(&plan.work).await?;
        let start = Instant::now();
        follower.follow(REPO, vec![ticket.clone()]).await?;
        let took = follower
            .wait_materialized(REPO, &manifest, start, POLL, Duration::from_secs(600))
            .await?
            .context("the follower did not materialize the repository within 600 s")?;
        knot.push(took.as_secs_f64());
        last = Some(follower);

        let dest = plan.work.join(format!("clone-{i}.git"));
        let (took, pack) = git_clone(&fx.daemon.url(SRC), &dest)?;
        git.push(took.as_secs_f64());
        clone_pack = pack;
        std::fs::remove_dir_all(&dest)?;
    }
    let (k, g) = (median(&knot), median(&git));
    let knot_bytes = fx.initial.bytes_added;
    report.fig("knotd_ms", round3(k * 1000.0), "ms");
    report.fig("git_daemon_ms", round3(g * 1000.0), "ms");
    report.fig_target("ratio_knotd_over_git", round3(k / g), "x", "<= 1.5");
    report.fig(
        "knotd_mb_per_s",
        round3(knot_bytes as f64 / 1e6 / k),
        "MB/s",
    );
    report.fig("git_mb_per_s", round3(clone_pack as f64 / 1e6 / g), "MB/s");
    report.fig("knotd_pack_bytes", knot_bytes as f64, "bytes");
    report.fig("git_clone_pack_bytes", clone_pack as f64, "bytes");
    report.fig("source_pack_bytes", fx.git_pack_bytes as f64, "bytes");
    report.fig("publish_ms", round3(fx.publish_ms), "ms");
    report.fig("generate_ms", round3(fx.generate_ms), "ms");
    report.param("repository", plan.spec.label);
    report.param("commits", plan.spec.commits);
    report.param("head", fx.head.clone());
    report.param("deterministic", fx.deterministic);
    report.param("iterations", plan.iterations);
    report.param(
        "knotd_samples_s",
        knot.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
    );
    report.param(
        "git_samples_s",
        git.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
    );
    let last = last.context("no iteration ran")?;
    Ok((report, last))
}

/// Scenario 2: `commits` new commits, published on the author; bytes moved by
/// knotd against the pack `git fetch` receives, and the latency until the
/// follower has them.
pub async fn incremental(
    plan: &Plan,
    fx: &mut Fixture,
    follower: Option<InNode>,
) -> Result<ScenarioReport> {
    let mut report = ScenarioReport::new("incremental");
    let follower = match follower {
        Some(f) => f,
        None => {
            let f = InNode::spawn(&plan.work).await?;
            f.follow(REPO, vec![fx.author.ticket().await?]).await?;
            f.wait_materialized(
                REPO,
                &fx.initial.manifest,
                Instant::now(),
                POLL,
                Duration::from_secs(600),
            )
            .await?
            .context("the follower did not get the initial state")?;
            f
        }
    };
    // A clone of the state before the change, updated by `git fetch`.
    let prev = plan.work.join("fetcher.git");
    git_clone(&fx.daemon.url(SRC), &prev)?;
    let proxy = CountingProxy::spawn(fx.daemon.port()).await?;

    let mut knot_bytes = Vec::new();
    let mut manifest_bytes = Vec::new();
    let mut git_wire = Vec::new();
    let mut git_pack = Vec::new();
    let mut latency = Vec::new();
    let mut publish = Vec::new();
    for i in 0..plan.iterations {
        progress(&format!(
            "incremental: iteration {}/{}",
            i + 1,
            plan.iterations
        ));
        fx.generator.add_commits(plan.incremental_commits)?;
        let started = Instant::now();
        let published = fx.author.publish(REPO, fx.generator.git_dir()).await?;
        publish.push(ms(started.elapsed()));
        let start = Instant::now();
        let took = follower
            .wait_materialized(
                REPO,
                &published.manifest,
                start,
                POLL,
                Duration::from_secs(120),
            )
            .await?
            .context("the follower did not get the update within 120 s")?;
        latency.push(ms(took));
        let mbytes = fx.author.manifest_bytes(REPO, &published.manifest).await?;
        manifest_bytes.push(mbytes as f64);
        knot_bytes.push((published.bytes_added + mbytes) as f64);

        let before: Vec<PathBuf> = pack_files(&prev)?.into_iter().map(|(p, _)| p).collect();
        let down = proxy.bytes_down();
        let out = git_command(&prev)
            .args([
                "-c",
                "fetch.unpackLimit=1",
                "fetch",
                "-q",
                &proxy.url(SRC),
                "+refs/heads/*:refs/heads/*",
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "git fetch failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        git_wire.push((proxy.bytes_down() - down) as f64);
        let new_pack: u64 = pack_files(&prev)?
            .into_iter()
            .filter(|(p, _)| !before.contains(p))
            .map(|(_, size)| size)
            .sum();
        git_pack.push(new_pack as f64);
    }
    let (k, w, p) = (median(&knot_bytes), median(&git_wire), median(&git_pack));
    report.fig("knotd_bytes", k, "bytes");
    report.fig("knotd_manifest_bytes", median(&manifest_bytes), "bytes");
    report.fig("git_fetch_wire_bytes", w, "bytes");
    report.fig("git_fetch_pack_bytes", p, "bytes");
    report.fig_target("ratio_knotd_over_git_wire", round3(k / w), "x", "<= 1.2");
    report.fig("ratio_knotd_over_git_pack", round3(k / p), "x");
    report.fig("latency_p50_ms", round3(median(&latency)), "ms");
    report.fig("latency_max_ms", round3(max(&latency)), "ms");
    report.fig("publish_ms", round3(median(&publish)), "ms");
    report.param("commits_per_update", plan.incremental_commits);
    report.param("iterations", plan.iterations);
    report.param(
        "latency_samples_ms",
        latency.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
    );
    report.param("knotd_bytes_samples", knot_bytes);
    report.param("git_wire_samples", git_wire);
    follower.shutdown().await?;
    std::fs::remove_dir_all(&prev)?;
    Ok(report)
}

/// Scenario 3: one update propagating to `n` followers over gossip.
pub async fn gossip(plan: &Plan) -> Result<ScenarioReport> {
    let mut report = ScenarioReport::new("gossip");
    report.param("repository", plan.gossip_spec.label);
    report.param("nodes", plan.gossip_nodes.clone());
    for &n in &plan.gossip_nodes {
        progress(&format!("gossip: {n} followers"));
        let dir = plan.work.join(format!("gossip-{n}"));
        std::fs::create_dir_all(&dir)?;
        let mut generator = RepoGen::create(&dir.join("src.git"), plan.gossip_spec, plan.seed)?;
        let publisher = InNode::spawn(&dir).await?;
        let first = publisher.publish(REPO, generator.git_dir()).await?;
        let publisher_ticket = publisher.ticket().await?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(InNode::spawn(&dir).await?);
        }
        let mut tickets = Vec::with_capacity(n);
        for node in &nodes {
            tickets.push(node.ticket().await?);
        }
        let started = Instant::now();
        for (i, node) in nodes.iter().enumerate() {
            let mut peers = vec![publisher_ticket.clone()];
            for back in [1, 2] {
                let j = (i + n - back) % n;
                if j != i && !peers.contains(&tickets[j]) {
                    peers.push(tickets[j].clone());
                }
            }
            node.follow(REPO, peers).await?;
        }
        let waits = nodes.iter().map(|node| {
            node.wait_materialized(
                REPO,
                &first.manifest,
                started,
                Duration::from_millis(50),
                Duration::from_secs(300),
            )
        });
        let initial = n0_future::join_all(waits).await;
        let mut initial_ms = Vec::new();
        for r in initial {
            initial_ms.push(ms(r?.context("a node did not converge on the first state")?));
        }

        generator.add_commits(1)?;
        let second = publisher.publish(REPO, generator.git_dir()).await?;
        let start = Instant::now();
        let waits = nodes.iter().map(|node| {
            node.wait_received(
                REPO,
                &second.manifest,
                start,
                Duration::from_millis(10),
                Duration::from_secs(60),
            )
        });
        let mut samples = Vec::new();
        let mut receipts = Vec::new();
        let mut missed = 0;
        for r in n0_future::join_all(waits).await {
            let (received, materialized) = r?;
            if let Some(d) = received {
                receipts.push(ms(d));
            }
            match materialized {
                Some(d) => samples.push(ms(d)),
                None => missed += 1,
            }
        }
        report.fig(
            format!("n{n}_receipt_p50_ms"),
            round3(percentile(&receipts, 50.0)),
            "ms",
        );
        if n >= 30 {
            report.fig_target(
                format!("n{n}_receipt_p99_ms"),
                round3(percentile(&receipts, 99.0)),
                "ms",
                "< 500",
            );
        } else {
            report.fig(
                format!("n{n}_receipt_p99_ms"),
                round3(percentile(&receipts, 99.0)),
                "ms",
            );
        }
        report.fig(
            format!("n{n}_p50_ms"),
            round3(percentile(&samples, 50.0)),
            "ms",
        );
        if n >= 30 {
            report.fig_target(
                format!("n{n}_p99_ms"),
                round3(percentile(&samples, 99.0)),
                "ms",
                "< 1000",
            );
        } else {
            report.fig(
                format!("n{n}_p99_ms"),
                round3(percentile(&samples, 99.0)),
                "ms",
            );
        }
        report.fig(format!("n{n}_max_ms"), round3(max(&samples)), "ms");
        report.fig(format!("n{n}_missed"), missed as f64, "nodes");
        report.fig(
            format!("n{n}_initial_converge_ms"),
            round3(max(&initial_ms)),
            "ms",
        );
        report.param(
            &format!("n{n}_samples_ms"),
            samples.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
        );
        report.param(
            &format!("n{n}_receipt_samples_ms"),
            receipts.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
        );
        for node in nodes {
            node.shutdown().await?;
        }
        publisher.shutdown().await?;
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(report)
}

async fn add_repo(node: &ChildNode, i: usize, prefix: &str) -> Result<()> {
    node.request(&Command::AddRepo {
        repo_id: rid(&format!("did:plc:{prefix}{i:06}/repo"))?,
        pds: None,
        record: None,
        peers: Vec::new(),
    })
    .await?;
    Ok(())
}

async fn repo_count(node: &ChildNode) -> Result<u64> {
    match node.request(&Command::Status).await? {
        Payload::Status(status) => Ok(status.repo_count),
        other => bail!("unexpected payload {other:?}"),
    }
}

/// Scenario 4: one `knotd run` process tracking many repositories.
pub async fn scale(plan: &Plan) -> Result<ScenarioReport> {
    let mut report = ScenarioReport::new("scale");
    let ticks = clock_ticks() as f64;
    report.param("repos", plan.scale_repos.clone());
    report.param("idle_secs", plan.idle.as_secs_f64());
    report.param("knotd", plan.knotd.display().to_string());
    let mut failed = 0;
    for &count in &plan.scale_repos {
        progress(&format!("scale: {count} repositories"));
        if let Err(e) = scale_one(plan, count, ticks, &mut report).await {
            progress(&format!("scale: {count} repositories failed: {e:#}"));
            report.param(&format!("r{count}_error"), format!("{e:#}"));
            failed += 1;
        }
    }
    report.param("content_repos", plan.scale_content.clone());
    for &count in &plan.scale_content {
        progress(&format!("scale: {count} repositories with content"));
        if let Err(e) = crate::scale_content::scale_content(plan, count, ticks, &mut report).await {
            progress(&format!(
                "scale: {count} repositories with content failed: {e:#}"
            ));
            report.param(&format!("c{count}_error"), format!("{e:#}"));
            failed += 1;
        }
    }
    if failed == plan.scale_repos.len() + plan.scale_content.len() {
        bail!("every scale measurement failed");
    }
    Ok(report)
}

async fn scale_one(
    plan: &Plan,
    count: usize,
    ticks: f64,
    report: &mut ScenarioReport,
) -> Result<()> {
    let dir = plan.work.join(format!("scale-{count}"));
    let (node, empty_start) = ChildNode::spawn(&plan.knotd, &dir).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = node.rss_bytes()?;
    let started = Instant::now();
    for i in 0..count {
        add_repo(&node, i, "scale").await?;
    }
    let add_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = node.rss_bytes()?;
    let cpu0 = node.cpu_ticks()?;
    tokio::time::sleep(plan.idle).await;
    let idle_cpu = (node.cpu_ticks()? - cpu0) as f64 / ticks / plan.idle.as_secs_f64();
    progress(&format!("scale: restarting with {count} repositories"));
    let (node, restart) = node.restart().await?;
    // `status` lists every repository and outgrows the admin line limit at a
    // few thousand; ask for the last repository added instead.
    node.request(&Command::Peers {
        repo_id: rid(&format!("did:plc:scale{:06}/repo", count - 1))?,
    })
    .await
    .context("the last repository added is not tracked after restart")?;
    let status = node.request(&Command::Status).await;
    report.param(
        &format!("r{count}_status_after_restart"),
        match status {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_restarted = node.rss_bytes()?;
    node.stop().await?;
    std::fs::remove_dir_all(&dir)?;

    let mb = |b: u64| round3(b as f64 / (1024.0 * 1024.0));
    let p = format!("r{count}");
    report.fig(format!("{p}_rss_empty_mib"), mb(rss_empty), "MiB");
    if count >= 10_000 {
        report.fig_target(format!("{p}_rss_mib"), mb(rss), "MiB", "< 300 MB");
    } else {
        report.fig(format!("{p}_rss_mib"), mb(rss), "MiB");
    }
    report.fig(format!("{p}_rss_restarted_mib"), mb(rss_restarted), "MiB");
    report.fig(
        format!("{p}_add_per_s"),
        round3(count as f64 / add_secs),
        "repo/s",
    );
    report.fig(format!("{p}_idle_cpu_pct"), round3(idle_cpu * 100.0), "%");
    report.fig(
        format!("{p}_startup_empty_ms"),
        round3(ms(empty_start)),
        "ms",
    );
    report.fig(format!("{p}_startup_ms"), round3(ms(restart)), "ms");
    Ok(())
}

/// Scenario 5: admin socket latency of `add-repo` and `status`.
pub async fn admin(plan: &Plan) -> Result<ScenarioReport> {
    let mut report = ScenarioReport::new("admin");
    let n = plan.admin_requests;
    progress(&format!("admin: {n} add-repo and {n} status requests"));
    let dir = plan.work.join("admin");
    let (node, _) = ChildNode::spawn(&plan.knotd, &dir).await?;
    let mut add = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        add_repo(&node, i, "admin").await?;
        add.push(ms(started.elapsed()));
    }
    let mut status = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        repo_count(&node).await?;
        status.push(ms(started.elapsed()));
    }
    node.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    report.fig("add_repo_p50_ms", round3(percentile(&add, 50.0)), "ms");
    report.fig("add_repo_p99_ms", round3(percentile(&add, 99.0)), "ms");
    report.fig("add_repo_max_ms", round3(max(&add)), "ms");
    report.fig("status_p50_ms", round3(percentile(&status, 50.0)), "ms");
    report.fig("status_p99_ms", round3(percentile(&status, 99.0)), "ms");
    report.fig("status_max_ms", round3(max(&status)), "ms");
    report.param("requests", n);
    report.param("status_with_repos_tracked", n);
    Ok(report)
}
