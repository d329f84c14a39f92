//! Scale with content: one `knotd run` child tracking many repositories
//! that each have content, an ATProto record and a peer, as a seeding node
//! does in production. A second node publishes the repositories (one small
//! source, so their packs dedupe), a loopback stand-in for the owners' PDS
//! serves their records, and the measured node follows every repository
//! from its record and the publisher's ticket. Memory is measured with
//! every topic joined (just after the last fetch), once the topics were
//! left for want of news (`--topic-idle-secs` later; idle CPU and syncs
//! are measured then), and after a restart.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
};
use knotd::{
    admin::{Command as Admin, Payload},
    record::{PeerHint, RepoRecord},
};
use n0_future::{BufferedStreamExt, StreamExt};

use crate::{
    nodes::{ChildNode, rid},
    repogen::{RepoGen, TINY},
    report::{ScenarioReport, ms, round3},
    scenarios::Plan,
};

/// The records the bench's PDS serves, and how many reads it answered.
#[derive(Clone, Default)]
struct Records {
    values: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    reads: Arc<std::sync::atomic::AtomicU64>,
}

impl Records {
    fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Publishes the scale scenario keeps in flight at once.
const PUBLISH_CLIENTS: usize = 8;

fn progress(text: &str) {
    eprintln!("knotd-bench: scale: {text}");
}

/// `com.atproto.repo.getRecord` for the records in `records`.
async fn get_record(
    State(records): State<Records>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let (Some(repo), Some(rkey)) = (q.get("repo"), q.get("rkey")) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "InvalidRequest"})),
        );
    };
    let key = format!("{repo}/{rkey}");
    records
        .reads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let value = records.values.lock().unwrap().get(&key).cloned();
    match value {
        Some(value) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "uri": format!("at://{repo}/app.knot.repo/{rkey}"),
                "value": value,
            })),
        ),
        None => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "RecordNotFound", "message": "no record"})),
        ),
    }
}

/// Count the `fsync`/`fdatasync` calls on `file` that the process `pid`
/// makes during `window`, with strace; `None` when strace is not here.
fn syncs_during(pid: u32, file: &str, window: Duration, trace: &Path) -> Result<Option<usize>> {
    let tracer = Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(trace)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut tracer) = tracer else {
        return Ok(None);
    };
    std::thread::sleep(window);
    let _ = Command::new("kill")
        .args(["-INT", &tracer.id().to_string()])
        .status();
    let _ = tracer.wait();
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    Ok(Some(
        text.lines()
            .filter(|l| l.contains(file) && !l.contains("resumed"))
            .count(),
    ))
}

/// Measure one node following `count` repositories with content.
/// Topics the node has joined.
async fn topics_joined(node: &ChildNode) -> Result<usize> {
    match node.request(&Admin::List).await? {
        Payload::Repos { repos } => Ok(repos.iter().filter(|r| r.topic_joined).count()),
        other => bail!("unexpected payload {other:?}"),
    }
}

pub async fn scale_content(
    plan: &Plan,
    count: usize,
    ticks: f64,
    report: &mut ScenarioReport,
) -> Result<()> {
    let dir = plan.work.join(format!("scale-content-{count}"));
    let source = RepoGen::create(&dir.join("src.git"), TINY, plan.seed)?;
    let records = Records::default();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let pds = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let app = Router::new()
        .route("/xrpc/com.atproto.repo.getRecord", get(get_record))
        .with_state(records.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    progress(&format!("publishing {count} repositories"));
    // Extra configuration for both nodes, for experiments (TOML lines).
    let extra = std::env::var("KNOTD_BENCH_NODE_CONFIG").unwrap_or_default();
    let config = format!("topic_idle_secs = {}\n{extra}\n", plan.topic_idle);
    // The publisher also serves the web pages, measured once it is idle.
    let pages_port = crate::gitd::free_port()?;
    let publisher_config =
        format!("{config}[http]\nenabled = true\nbind = \"127.0.0.1:{pages_port}\"\n");
    let (publisher, _) =
        ChildNode::spawn_configured(&plan.knotd, &dir.join("publisher"), &publisher_config).await?;
    let ticket = match publisher.request(&Admin::Ticket).await? {
        Payload::Ticket { ticket } => ticket,
        other => bail!("unexpected payload {other:?}"),
    };
    let publisher_id = match publisher.request(&Admin::Status).await? {
        Payload::Status(status) => status.node_id,
        other => bail!("unexpected payload {other:?}"),
    };
    let started = Instant::now();
    let id = |i: usize| format!("did:plc:scalec{i:06}/repo");
    // Several clients at once, as an operator importing many repositories
    // would publish: the node runs the publishes' jobs side by side.
    let publisher_ref = &publisher;
    let source_dir = source.git_dir();
    let mut publishes = n0_future::stream::iter(0..count)
        .map(|i| async move {
            let published = publisher_ref.publish(&id(i), source_dir).await;
            published.map(|p| (i, p))
        })
        .buffered_unordered(PUBLISH_CLIENTS);
    while let Some(result) = publishes.next().await {
        let (i, published) = result?;
        let mut record = RepoRecord::empty(rid(&id(i))?);
        record.head = published.head.clone();
        record.manifest = Some(published.manifest.clone());
        record.peers = vec![PeerHint::new(
            publisher_id.clone(),
            Vec::new(),
            Some(ticket.clone()),
        )];
        records.values.lock().unwrap().insert(
            format!("did:plc:scalec{i:06}/repo"),
            serde_json::to_value(&record)?,
        );
    }
    drop(publishes);
    let publish_secs = started.elapsed().as_secs_f64();

    progress(&format!("following {count} repositories"));
    let (node, _) = ChildNode::spawn_configured(&plan.knotd, &dir.join("node"), &config).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = node.rss_bytes()?;
    let with_records = std::env::var_os("KNOTD_BENCH_NO_RECORDS").is_none();
    let node_cpu0 = node.cpu_ticks_with_children()?;
    let publisher_cpu0 = publisher.cpu_ticks_with_children()?;
    let started = Instant::now();
    for i in 0..count {
        let added = node
            .request(&Admin::AddRepo {
                repo_id: rid(&id(i))?,
                pds: with_records.then(|| pds.clone()),
                record: with_records
                    .then(|| format!("at://did:plc:scalec{i:06}/app.knot.repo/repo")),
                peers: vec![ticket.clone()],
            })
            .await;
        if let Err(e) = added {
            let log = std::env::temp_dir().join("knotd-bench-scale-node.log");
            let _ = std::fs::copy(dir.join("node/bench-node.log"), &log);
            let _ = std::fs::copy(
                dir.join("publisher/bench-node.log"),
                std::env::temp_dir().join("knotd-bench-scale-publisher.log"),
            );
            bail!(
                "add-repo of repository {i} after {:.1} s: {e:#} (node log kept in {})",
                started.elapsed().as_secs_f64(),
                log.display()
            );
        }
    }
    let add_secs = started.elapsed().as_secs_f64();
    // Every repository materialized: its marker is on disk. Only those not
    // seen materialized yet are looked at again, so the bench's own scans
    // do not compete with the node.
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut waiting: Vec<usize> = (0..count).collect();
    while !waiting.is_empty() {
        waiting.retain(|i| {
            !node
                .repo_path(&id(*i))
                .map(|p| p.join("knot-manifest").is_file())
                .unwrap_or(false)
        });
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} repositories materialized within 30 minutes",
                count - waiting.len()
            );
        }
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let follow_secs = started.elapsed().as_secs_f64();
    // CPU per followed repository, git processes included: unlike the
    // rate, it does not depend on what else the machine's cores run.
    let cpu_ms = |used: u64| used as f64 / ticks * 1000.0 / count as f64;
    let node_cpu_ms = cpu_ms(node.cpu_ticks_with_children()? - node_cpu0);
    let publisher_cpu_ms = cpu_ms(publisher.cpu_ticks_with_children()? - publisher_cpu0);
    // Let the last jobs, bitmaps and bookkeeping settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = node.rss_bytes()?;
    let joined = topics_joined(&node).await?;
    // Then quiet: every topic left once no news came for `topic_idle`.
    progress(&format!(
        "waiting for {joined} topics to be left ({} s without news)",
        plan.topic_idle
    ));
    let deadline = Instant::now() + Duration::from_secs(plan.topic_idle + 300);
    let mut left_after = None;
    while Instant::now() < deadline {
        if topics_joined(&node).await? == 0 {
            left_after = Some(started.elapsed().as_secs_f64() - follow_secs);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some(left_after) = left_after else {
        bail!(
            "topics still joined {} s after the last news",
            plan.topic_idle + 300
        );
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_quiet = node.rss_bytes()?;
    if !plan.settle.is_zero() {
        progress(&format!(
            "letting record reads settle for {} s",
            plan.settle.as_secs()
        ));
        tokio::time::sleep(plan.settle).await;
    }
    // Idle CPU first, untraced: strace cannot filter calls of a process it
    // attaches to, so it stops the node on every system call and its window
    // would count the tracing. The syncs are counted in a second window.
    let window = plan.idle;
    let cpu0 = node.cpu_ticks()?;
    let reads0 = records.reads();
    tokio::time::sleep(window).await;
    let idle_cpu = (node.cpu_ticks()? - cpu0) as f64 / ticks / window.as_secs_f64();
    let idle_reads = (records.reads() - reads0) as f64 / window.as_secs_f64();
    // The quiet figure again once the node has idled a whole window: what
    // the allocator gave back after the burst's memory was freed.
    let rss_idle = node.rss_bytes()?;
    let syncs = syncs_during(node.pid(), "knotd.redb", window, &dir.join("syncs.trace"))?;
    progress(&format!("restarting with {count} repositories"));
    let (node, restart) = node.restart().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_restarted = node.rss_bytes()?;
    let joined_restarted = topics_joined(&node).await?;
    let connected = match node.request(&Admin::List).await? {
        Payload::Repos { repos } => repos.iter().filter(|r| r.materialized.is_some()).count(),
        other => bail!("unexpected payload {other:?}"),
    };
    node.stop().await?;
    progress("timing the web pages of the publisher");
    let pages = time_pages(pages_port, &id(count / 2)).await?;
    publisher.stop().await?;
    server.abort();
    std::fs::remove_dir_all(&dir).context("removing the work directory")?;

    let mb = |b: u64| round3(b as f64 / (1024.0 * 1024.0));
    let p = format!("c{count}");
    report.fig(format!("{p}_rss_empty_mib"), mb(rss_empty), "MiB");
    report.fig(format!("{p}_rss_mib"), mb(rss), "MiB");
    report.fig(format!("{p}_rss_quiet_mib"), mb(rss_quiet), "MiB");
    report.fig(format!("{p}_rss_idle_mib"), mb(rss_idle), "MiB");
    report.fig(format!("{p}_rss_restarted_mib"), mb(rss_restarted), "MiB");
    report.param(&format!("{p}_topics_joined"), joined);
    report.param(
        &format!("{p}_topics_joined_after_restart"),
        joined_restarted,
    );
    report.fig(format!("{p}_topics_left_after_s"), round3(left_after), "s");
    report.fig(format!("{p}_idle_cpu_pct"), round3(idle_cpu * 100.0), "%");
    report.fig(
        format!("{p}_idle_record_reads_per_s"),
        round3(idle_reads),
        "1/s",
    );
    report.param(&format!("{p}_idle_after_settle_s"), plan.settle.as_secs());
    report.param(&format!("{p}_publish_clients"), PUBLISH_CLIENTS);
    report.fig(format!("{p}_startup_ms"), round3(ms(restart)), "ms");
    // Each page request asked the node anew (no snapshot reused).
    for (name, page) in &pages {
        report.fig(format!("{p}_page_{name}_ms"), round3(page.median_ms), "ms");
        report.fig(
            format!("{p}_page_{name}_kib"),
            round3(page.bytes as f64 / 1024.0),
            "KiB",
        );
        report.fig(
            format!("{p}_page_{name}_vs_info_refs"),
            round3(page.median_ms / pages[0].1.median_ms),
            "x",
        );
    }
    report.fig(
        format!("{p}_follow_per_s"),
        round3(count as f64 / follow_secs),
        "repo/s",
    );
    report.fig(
        format!("{p}_follow_cpu_ms_per_repo"),
        round3(node_cpu_ms),
        "ms",
    );
    report.fig(
        format!("{p}_follow_publisher_cpu_ms_per_repo"),
        round3(publisher_cpu_ms),
        "ms",
    );
    report.fig(
        format!("{p}_follow_add_repo_per_s"),
        round3(count as f64 / add_secs),
        "repo/s",
    );
    report.param(&format!("{p}_node_config"), extra);
    report.fig(
        format!("{p}_publish_per_s"),
        round3(count as f64 / publish_secs),
        "repo/s",
    );
    match syncs {
        Some(n) => report.fig(
            format!("{p}_redb_syncs_per_s"),
            round3(n as f64 / window.as_secs_f64()),
            "1/s",
        ),
        None => report.param(&format!("{p}_redb_syncs"), "strace not installed"),
    }
    report.param(&format!("{p}_materialized_after_restart"), connected);
    Ok(())
}

/// One page's timing: the median of [`PAGE_SAMPLES`] requests.
struct PageTiming {
    median_ms: f64,
    bytes: usize,
}

/// Requests per page timed.
const PAGE_SAMPLES: usize = 11;

/// Time the pages of a node serving HTTP on `port`, one request at a time,
/// first the baseline: the smart HTTP ref advertisement of `repo` (what
/// `git ls-remote` asks, one git process). Each request comes after the
/// pages' snapshot of the node has expired, so every one asks the node
/// again (a visitor after a quiet second; a busy page is cheaper).
async fn time_pages(port: u16, repo: &str) -> Result<Vec<(&'static str, PageTiming)>> {
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut timings = Vec::new();
    for (name, path) in [
        (
            "info_refs",
            format!("/{repo}/info/refs?service=git-upload-pack"),
        ),
        ("index", "/".to_string()),
        ("search", "/?q=scalec0012".to_string()),
        ("last_page", "/?page=1000000".to_string()),
        ("repo", format!("/{repo}")),
        ("status", "/status".to_string()),
    ] {
        let mut samples = Vec::with_capacity(PAGE_SAMPLES);
        let mut bytes = 0;
        for _ in 0..PAGE_SAMPLES {
            tokio::time::sleep(knotd::web::SNAPSHOT_TTL + Duration::from_millis(100)).await;
            let started = Instant::now();
            let response = client
                .get(format!("{base}{path}"))
                .header("accept", "text/html")
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("{path}: {}", response.status());
            }
            bytes = response.bytes().await?.len();
            samples.push(ms(started.elapsed()));
        }
        samples.sort_by(f64::total_cmp);
        let median_ms = samples[PAGE_SAMPLES / 2];
        timings.push((name, PageTiming { median_ms, bytes }));
    }
    Ok(timings)
}
