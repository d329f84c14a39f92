//! The real-shaped scenario: a repository with thousands of refs and real
//! source text ([`crate::realrepo`]), replicated, pushed to and cloned from
//! `knotd` child processes, each against the same operation with plain git
//! in the same run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use knotd::admin::{Command as Admin, Payload};

use crate::{
    gitd::{GitDaemon, free_port},
    nodes::{BenchNode, ChildNode, rid},
    realrepo::{Corpus, RealRepo, RealSpec},
    repogen::{git, git_command, pack_bytes},
    report::{ScenarioReport, median, ms, round3},
    scenarios::{Plan, REPO},
};

/// Name of the source repository below the git daemon's base path.
const SRC: &str = "real.git";
/// Poll interval while waiting for a node.
const POLL: Duration = Duration::from_millis(5);
/// Commits per measured push.
const PUSH_COMMITS: usize = 10;

fn progress(text: &str) {
    eprintln!("knotd-bench: real: {text}");
}

/// Where cargo keeps its registry.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

/// The `Cargo.lock` whose crates make the corpus.
fn lock_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")
}

/// Time a command; fail with its stderr.
fn timed(mut cmd: Command, what: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// `git clone --mirror` of `url` into `dest`, timed; `dest` is removed after.
pub fn mirror_clone(url: &str, dest: &Path, env: &[(&str, String)]) -> Result<Duration> {
    let mut cmd = git_command(dest.parent().context("clone parent")?);
    cmd.args(["clone", "--mirror", "--no-local", "-q", url])
        .arg(dest);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let took = timed(cmd, &format!("git clone --mirror {url}"))?;
    let refs = git(dest, &["for-each-ref", "--format=x"])?.lines().count();
    std::fs::remove_dir_all(dest)?;
    if refs == 0 {
        bail!("git clone --mirror {url} brought no refs");
    }
    Ok(took)
}

/// Wait until the materialized repository at `path` has a multi-pack
/// bitmap; returns how long that took, or `None` after `timeout` or at
/// once for a repository too small to get one
/// ([`knotd::materialize::OPTIMIZE_MIN_PACK_BYTES`]).
async fn wait_bitmap(path: &Path, timeout: Duration) -> Result<Option<Duration>> {
    let started = Instant::now();
    let pack = path.join("objects/pack");
    let pack_bytes: u64 = std::fs::read_dir(&pack)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    if pack_bytes < knotd::materialize::OPTIMIZE_MIN_PACK_BYTES {
        return Ok(None);
    }
    loop {
        let done = std::fs::read_dir(&pack)
            .map(|entries| {
                let names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names
                    .iter()
                    .any(|n| n.starts_with("multi-pack-index-") && n.ends_with(".bitmap"))
                    && !names.iter().any(|n| n == "multi-pack-index.lock")
            })
            .unwrap_or(false);
        if done {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > timeout {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Count `execve` calls in an strace output file.
fn count_execs(trace: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(trace)?;
    Ok(text
        .lines()
        .filter(|l| l.contains("execve(") && !l.contains("ENOENT"))
        .count())
}

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The real-shaped scenario on the repository `spec`, reported as
/// `scenario`.
/// Pushes (each one thin pack) in the state whose full replication is
/// measured against `git clone --mirror` of the same commits.
const MULTI_PACK_PUSHES: usize = 8;

/// A fresh follower at `data_dir` that adds the repository with the
/// author's `ticket`; returns it once it has materialized `manifest`, with
/// the time since the add.
async fn replicate_fresh(
    knotd: &Path,
    data_dir: &Path,
    http_port: Option<u16>,
    ticket: &str,
    manifest: &str,
) -> Result<(ChildNode, Duration)> {
    let (node, _) = ChildNode::spawn_with(knotd, data_dir, http_port).await?;
    let start = Instant::now();
    node.request(&Admin::AddRepo {
        repo_id: rid(REPO)?,
        pds: None,
        record: None,
        peers: vec![ticket.to_owned()],
    })
    .await?;
    let took = node
        .wait_materialized(REPO, manifest, start, POLL, Duration::from_secs(900))
        .await?
        .context("the follower did not materialize the repository within 900 s")?;
    Ok((node, took))
}

/// How many `.pack` files the repository at `git_dir` holds.
fn pack_files(git_dir: &Path) -> Result<usize> {
    Ok(std::fs::read_dir(git_dir.join("objects/pack"))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count())
}

pub async fn real(plan: &Plan, scenario: &'static str, spec: RealSpec) -> Result<ScenarioReport> {
    let mut report = ScenarioReport::new(scenario);
    let dir = plan.work.join(spec.label);
    let base = dir.join("daemon");
    std::fs::create_dir_all(&base)?;
    let cargo = cargo_home();
    progress(&format!("reading the corpus from {}", cargo.display()));
    let corpus = Corpus::load(&lock_file(), &cargo, spec.crates)?;
    let (corpus_digest, corpus_bytes, crates) = (corpus.digest.clone(), corpus.bytes, corpus.len());
    progress(&format!(
        "generating the {} repository ({crates} crates, {:.0} MB of text)",
        spec.label,
        corpus_bytes as f64 / 1e6
    ));
    let started = Instant::now();
    let src = base.join(SRC);
    let mut repo = RealRepo::create(&src, spec, plan.seed, corpus)?;
    let generate_ms = ms(started.elapsed());
    // The same input gives the same stream: generate it again, hashed only.
    let again = RealRepo::stream_digest(
        spec,
        plan.seed,
        Corpus::load(&lock_file(), &cargo, spec.crates)?,
    )?;
    if again != repo.stream_digest {
        bail!("the same corpus and seed gave two different repositories");
    }
    let head = repo.head()?;
    let refs = git(&src, &["for-each-ref", "--format=x"])?.lines().count();
    let commits: usize = git(&src, &["rev-list", "--all", "--count"])?.parse()?;
    let source_pack = pack_bytes(&src)?;
    report.param("repository", spec.label);
    report.param("refs", refs);
    report.param("commits", commits);
    report.param("crates", crates);
    report.param("corpus_bytes", corpus_bytes);
    report.param("corpus_digest", corpus_digest);
    report.param("head", head);
    report.param("deterministic", true);
    report.fig("source_pack_bytes", source_pack as f64, "bytes");
    report.fig("refs", refs as f64, "refs");
    report.fig("generate_ms", round3(generate_ms), "ms");

    let daemon = GitDaemon::spawn(&base)?;
    let knotd = &plan.knotd;
    let bin_dir = knotd
        .parent()
        .context("the knotd binary's directory")?
        .to_path_buf();
    let path_env = match std::env::var("PATH") {
        Ok(p) => format!("{}:{p}", bin_dir.display()),
        Err(_) => bin_dir.display().to_string(),
    };

    // Publishing the whole repository into a fresh author node (the helper
    // packs on the client, the node indexes that pack and keeps it as the
    // blob), against `git push --mirror` into an empty bare repository,
    // alternating which goes first.
    let (mut publish_s, mut push_mirror_s) = (Vec::new(), Vec::new());
    let mut authors = None;
    let push_mirror = || -> Result<f64> {
        let target = dir.join("pushed.git");
        let _ = std::fs::remove_dir_all(&target);
        git(
            &dir,
            &["init", "-q", "--bare", target.to_str().context("path")?],
        )?;
        let mut cmd = git_command(&src);
        cmd.args(["push", "-q", "--mirror"]).arg(&target);
        let took = timed(cmd, "git push --mirror")?;
        std::fs::remove_dir_all(&target)?;
        Ok(took.as_secs_f64())
    };
    for i in 0..plan.iterations {
        progress(&format!("publish {}/{}", i + 1, plan.iterations));
        let git_first = i % 2 == 1;
        if git_first {
            push_mirror_s.push(push_mirror()?);
        }
        if let Some((previous, _)) = authors.take() {
            ChildNode::stop(previous).await?;
        }
        let (node, _) = ChildNode::spawn(knotd, &dir.join(format!("author-{i}"))).await?;
        let started = Instant::now();
        let published = node.publish(REPO, &src).await?;
        publish_s.push(started.elapsed().as_secs_f64());
        // Let the author's background bitmap finish: it would share the CPU
        // with the measurements after it.
        wait_bitmap(&node.repo_path(REPO)?, Duration::from_secs(600)).await?;
        if !git_first {
            push_mirror_s.push(push_mirror()?);
        }
        authors = Some((node, published));
    }
    let (author, published) = authors.context("no iteration ran")?;
    let (p, g) = (median(&publish_s), median(&push_mirror_s));
    report.fig("publish_ms", round3(p * 1000.0), "ms");
    report.fig("publish_git_push_mirror_ms", round3(g * 1000.0), "ms");
    report.fig_target("publish_ratio", round3(p / g), "x", "<= 1.0");
    report.fig("knotd_pack_bytes", published.bytes_added as f64, "bytes");
    let ticket = match author.request(&Admin::Ticket).await? {
        Payload::Ticket { ticket } => ticket,
        other => bail!("unexpected payload {other:?}"),
    };

    // Full replication, alternating which side goes first.
    let mut knot_s = Vec::new();
    let mut git_s = Vec::new();
    let mut hwm = Vec::new();
    let mut bitmap_s = Vec::new();
    let mut follower = None;
    let http_port = free_port()?;
    for i in 0..plan.iterations {
        progress(&format!("full replication {}/{}", i + 1, plan.iterations));
        let git_first = i % 2 == 1;
        if git_first {
            let took = mirror_clone(&daemon.url(SRC), &dir.join("mirror.git"), &[])?;
            git_s.push(took.as_secs_f64());
        }
        if let Some(previous) = follower.take() {
            ChildNode::stop(previous).await?;
        }
        let (node, took) = replicate_fresh(
            knotd,
            &dir.join(format!("follower-{i}")),
            Some(http_port),
            &ticket,
            &published.manifest,
        )
        .await?;
        knot_s.push(took.as_secs_f64());
        hwm.push(node.hwm_bytes()? as f64);
        // The bitmap is written in the background; let it finish before the
        // baseline runs, and say how long it took.
        let path = node.repo_path(REPO)?;
        if let Some(d) = wait_bitmap(&path, Duration::from_secs(600)).await? {
            bitmap_s.push(d.as_secs_f64());
        }
        if !git_first {
            let took = mirror_clone(&daemon.url(SRC), &dir.join("mirror.git"), &[])?;
            git_s.push(took.as_secs_f64());
        }
        follower = Some(node);
    }
    let follower = follower.context("no iteration ran")?;
    let (k, g) = (median(&knot_s), median(&git_s));
    report.fig("full_knotd_ms", round3(k * 1000.0), "ms");
    report.fig("full_git_clone_mirror_ms", round3(g * 1000.0), "ms");
    report.fig_target("full_ratio", round3(k / g), "x", "<= 1.0 (aim 0.5)");
    let mib = |b: f64| round3(b / (1024.0 * 1024.0));
    report.fig_target("follower_hwm_mib", mib(median(&hwm)), "MiB", "< 100");
    report.param(
        "full_knotd_samples_s",
        knot_s.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
    );
    report.param(
        "full_git_samples_s",
        git_s.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
    );

    // Mirroring the repository from the git daemon into a fresh node.
    crate::mirroring::measure(plan, &mut report, &dir, &daemon.url(SRC)).await?;

    // Serving clones from the follower once its bitmap is written (a
    // repository under 1 MiB, as in the smoke run, gets none).
    if bitmap_s.is_empty() {
        report.param("follower_bitmap", "none: the repository is under 1 MiB");
    } else {
        report.fig(
            "follower_bitmap_after_ms",
            round3(median(&bitmap_s) * 1000.0),
            "ms",
        );
    }
    let knot_url = format!("knot://{REPO}");
    let http_url = format!("http://127.0.0.1:{http_port}/{REPO}");
    let helper_env = [
        ("PATH", path_env.clone()),
        ("KNOT_SOCKET", follower.socket().display().to_string()),
    ];
    let (mut helper, mut http, mut daemon_clone) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..plan.iterations {
        progress(&format!("clones {}/{}", i + 1, plan.iterations));
        let dest = dir.join("clone.git");
        let mut order = [0, 1, 2];
        order.rotate_left(i % 3);
        for which in order {
            match which {
                0 => helper.push(mirror_clone(&knot_url, &dest, &helper_env)?.as_secs_f64()),
                1 => http.push(mirror_clone(&http_url, &dest, &[])?.as_secs_f64()),
                _ => daemon_clone.push(mirror_clone(&daemon.url(SRC), &dest, &[])?.as_secs_f64()),
            }
        }
    }
    let d = median(&daemon_clone);
    report.fig("clone_git_daemon_ms", round3(d * 1000.0), "ms");
    report.fig("clone_helper_ms", round3(median(&helper) * 1000.0), "ms");
    report.fig("clone_helper_ratio", round3(median(&helper) / d), "x");
    report.fig("clone_http_ms", round3(median(&http) * 1000.0), "ms");
    report.fig("clone_http_ratio", round3(median(&http) / d), "x");

    // Push of 10 commits: through the helper into the author node, against
    // `git push` into a bare copy.
    let copy = dir.join("copy.git");
    timed(
        {
            let mut c = git_command(&dir);
            c.args(["clone", "--mirror", "-q"]).arg(&src).arg(&copy);
            c
        },
        "git clone --mirror (the bare copy)",
    )?;
    let push = |target: &str, knot: bool| {
        let mut cmd = git_command(&src);
        cmd.args(["push", "-q", target, "refs/heads/main:refs/heads/main"]);
        if knot {
            cmd.env("PATH", &path_env)
                .env("KNOT_SOCKET", author.socket());
        }
        cmd
    };
    let (mut knot_push, mut git_push, mut spread) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..plan.iterations {
        progress(&format!("push {}/{}", i + 1, plan.iterations));
        repo.add_commits(PUSH_COMMITS)?;
        let git_first = i % 2 == 1;
        if git_first {
            git_push.push(timed(push(&copy.display().to_string(), false), "git push")?);
        }
        knot_push.push(timed(push(&knot_url, true), "git push knot://")?);
        let pushed_at = Instant::now();
        if !git_first {
            git_push.push(timed(push(&copy.display().to_string(), false), "git push")?);
        }
        // The follower hears of it by gossip.
        let manifest = author
            .materialized(REPO)
            .await?
            .context("the author has no state after the push")?;
        if let Some(took) = follower
            .wait_materialized(REPO, &manifest, pushed_at, POLL, Duration::from_secs(120))
            .await?
        {
            spread.push(ms(took));
        }
    }
    let secs = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    let (kp, gp) = (median(&secs(&knot_push)), median(&secs(&git_push)));
    report.fig("push_knotd_ms", round3(kp * 1000.0), "ms");
    report.fig("push_git_ms", round3(gp * 1000.0), "ms");
    report.fig_target("push_ratio", round3(kp / gp), "x", "<= 3");
    report.fig("push_follower_ms", round3(median(&spread)), "ms");
    report.param("push_commits", PUSH_COMMITS);

    // Full replication of a state of several packs (the first publish and
    // the pushes after it, each a thin pack indexed by git after the first),
    // against `git clone --mirror` of the same commits.
    let mut pushes = plan.iterations;
    while pushes < MULTI_PACK_PUSHES {
        progress(&format!(
            "push {}/{MULTI_PACK_PUSHES} (untimed)",
            pushes + 1
        ));
        repo.add_commits(PUSH_COMMITS)?;
        let mut cmd = push(&knot_url, true);
        cmd.stdout(Stdio::null());
        timed(cmd, "git push knot://")?;
        pushes += 1;
    }
    let manifest = author
        .materialized(REPO)
        .await?
        .context("the author has no state after the pushes")?;
    let (mut multi_knot, mut multi_git, mut multi_packs) = (Vec::new(), Vec::new(), 0);
    for i in 0..plan.iterations {
        progress(&format!(
            "full replication of {pushes} pushes {}/{}",
            i + 1,
            plan.iterations
        ));
        let git_first = i % 2 == 1;
        let mirror = dir.join(format!("multi-mirror-{i}.git"));
        if git_first {
            multi_git.push(mirror_clone(&daemon.url(SRC), &mirror, &[])?.as_secs_f64());
        }
        let (node, took) = replicate_fresh(
            knotd,
            &dir.join(format!("multi-follower-{i}")),
            None,
            &ticket,
            &manifest,
        )
        .await?;
        multi_knot.push(took.as_secs_f64());
        multi_packs = pack_files(&node.repo_path(REPO)?)?;
        node.stop().await?;
        if !git_first {
            multi_git.push(mirror_clone(&daemon.url(SRC), &mirror, &[])?.as_secs_f64());
        }
    }
    let (k, g) = (median(&multi_knot), median(&multi_git));
    report.fig("full_multi_pack_knotd_ms", round3(k * 1000.0), "ms");
    report.fig(
        "full_multi_pack_git_clone_mirror_ms",
        round3(g * 1000.0),
        "ms",
    );
    report.fig("full_multi_pack_ratio", round3(k / g), "x");
    report.fig("full_multi_pack_packs", multi_packs as f64, "packs");

    // Processes spawned by one push, counted with strace when it is here.
    if have_strace() {
        repo.add_commits(PUSH_COMMITS)?;
        let node_trace = dir.join("node.trace");
        let mut tracer = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=execve", "-o"])
            .arg(&node_trace)
            .args(["-p", &author.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let client_trace = dir.join("client.trace");
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-e", "trace=execve", "-o"])
            .arg(&client_trace)
            .arg("git")
            .current_dir(&src)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("PATH", &path_env)
            .env("KNOT_SOCKET", author.socket())
            .args(["push", "-q", &knot_url, "refs/heads/main:refs/heads/main"]);
        timed(cmd, "git push knot:// under strace")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = Command::new("kill")
            .args(["-INT", &tracer.id().to_string()])
            .status();
        let _ = tracer.wait();
        let git_trace = dir.join("git.trace");
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-e", "trace=execve", "-o"])
            .arg(&git_trace)
            .arg("git")
            .current_dir(&src)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["push", "-q"])
            .arg(&copy)
            .arg("refs/heads/main:refs/heads/main");
        timed(cmd, "git push under strace")?;
        report.fig(
            "push_processes_node",
            count_execs(&node_trace)? as f64,
            "procs",
        );
        report.fig(
            "push_processes_client",
            count_execs(&client_trace)?.saturating_sub(1) as f64,
            "procs",
        );
        report.fig(
            "push_processes_git",
            count_execs(&git_trace)?.saturating_sub(1) as f64,
            "procs",
        );
    } else {
        report.param("strace", "not installed: process counts skipped");
    }

    follower.stop().await?;
    author.stop().await?;
    drop(daemon);
    std::fs::remove_dir_all(&dir)?;
    Ok(report)
}
