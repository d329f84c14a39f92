//! Prometheus metrics and a health check, served over HTTP when
//! `[metrics] bind` is set.
//!
//! Owns the metric registry and two tasks: one folds the node's event
//! stream (fetches, publishes, rejections, polls, write-backs) and the blob
//! provider's transfer events (bytes served) into counters and histograms;
//! the HTTP server answers `/metrics` in the Prometheus text format, taking
//! the node's status at each scrape for gauges (repositories by state,
//! pinned bytes, neighbours, jobs) and for counters kept by the node (the
//! mirror service counts its fetches here itself; packs indexed are
//! counted by the process, [`crate::materialize::indexing_counts`]), and
//! `/health`, which fails when the repository actor does not answer.
//! Nothing here survives a restart: counters start at zero.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use iroh_blobs::provider::events::{
    EventMask, EventSender, ProviderMessage, RequestMode, RequestUpdate,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::{Command, EventLine, NodeEvent, NodeStatus, Payload},
    knot::KnotHandle,
};

/// How long a scrape or health check waits for the node.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Indexer {
    indexer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepoState {
    state: String,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    received: Counter,
    rejected: Family<Reason, Counter>,
    dropped: Family<Reason, Counter>,
    fetches: Family<Outcome, Counter>,
    fetched_bytes: Counter,
    served_bytes: Counter,
    fetch_seconds: Histogram,
    publishes: Counter,
    publish_seconds: Histogram,
    poll_errors: Counter,
    store_failures: Counter,
    pulls_deferred: Counter,
    write_backs: Family<Outcome, Counter>,
    quota_refusals: Counter,
    blobs_repaired: Family<Outcome, Counter>,
    repos: Family<RepoState, Gauge>,
    pinned_bytes: Gauge,
    neighbours: Gauge,
    topics: Gauge,
    jobs: Family<RepoState, Gauge>,
    tasks: Gauge,
    connections: Gauge,
    mirror_fetches: Family<Outcome, Counter>,
    mirror_fetch_seconds: Histogram,
    mirrors: Family<RepoState, Gauge>,
    packs_indexed: Family<Indexer, Counter>,
    gix_refused: Counter,
    connectivity_walks: Counter,
    /// Node-kept counters already added, to add only what is new.
    seen: Mutex<HashMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 16)
}

impl Metrics {
    /// A registry with every metric, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("knotd");
        let m = Self {
            received: Counter::default(),
            rejected: Family::default(),
            dropped: Family::default(),
            fetches: Family::default(),
            fetched_bytes: Counter::default(),
            served_bytes: Counter::default(),
            fetch_seconds: Histogram::new(seconds_buckets()),
            publishes: Counter::default(),
            publish_seconds: Histogram::new(seconds_buckets()),
            poll_errors: Counter::default(),
            store_failures: Counter::default(),
            pulls_deferred: Counter::default(),
            write_backs: Family::default(),
            quota_refusals: Counter::default(),
            blobs_repaired: Family::default(),
            repos: Family::default(),
            pinned_bytes: Gauge::default(),
            neighbours: Gauge::default(),
            topics: Gauge::default(),
            jobs: Family::default(),
            tasks: Gauge::default(),
            connections: Gauge::default(),
            mirror_fetches: Family::default(),
            mirror_fetch_seconds: Histogram::new(seconds_buckets()),
            mirrors: Family::default(),
            packs_indexed: Family::default(),
            gix_refused: Counter::default(),
            connectivity_walks: Counter::default(),
            seen: Mutex::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "packs_indexed",
            "Packs indexed into materialized repositories, by indexer (gix, git)",
            m.packs_indexed.clone(),
        );
        r.register(
            "pack_indexer_fallbacks",
            "Packs gix-pack refused that git then indexed (the node's warnings say why)",
            m.gix_refused.clone(),
        );
        r.register(
            "connectivity_walks",
            "New repositories whose connectivity git walked because a pack was not found connected",
            m.connectivity_walks.clone(),
        );
        r.register(
            "announcements_received",
            "Verified announcements handled",
            m.received.clone(),
        );
        r.register(
            "announcements_rejected",
            "Announcements not taken, by reason",
            m.rejected.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages dropped unread, by reason",
            m.dropped.clone(),
        );
        r.register("fetches", "Fetches of states, by result", m.fetches.clone());
        r.register(
            "fetched_bytes",
            "Bytes of blobs fetched from peers",
            m.fetched_bytes.clone(),
        );
        r.register(
            "served_bytes",
            "Bytes of blobs served to peers",
            m.served_bytes.clone(),
        );
        r.register(
            "fetch_duration_seconds",
            "Time to fetch, materialize and pin a state",
            m.fetch_seconds.clone(),
        );
        r.register("publishes", "States published here", m.publishes.clone());
        r.register(
            "publish_duration_seconds",
            "Time to pack, materialize and pin a published state",
            m.publish_seconds.clone(),
        );
        r.register(
            "poll_errors",
            "Failed reads of owners' records",
            m.poll_errors.clone(),
        );
        r.register(
            "store_failures",
            "Commits to the database that failed (written again later)",
            m.store_failures.clone(),
        );
        r.register(
            "pulls_deferred",
            "Direct pulls put off because too many exchanges were in flight",
            m.pulls_deferred.clone(),
        );
        r.register(
            "write_backs",
            "Record write-backs, by result",
            m.write_backs.clone(),
        );
        r.register(
            "quota_refusals",
            "States refused because of a storage quota",
            m.quota_refusals.clone(),
        );
        r.register(
            "blobs_repaired",
            "Blobs of held states found missing and put back, by how (rebuilt from the materialized copy or fetched)",
            m.blobs_repaired.clone(),
        );
        r.register(
            "repositories",
            "Tracked repositories, by state",
            m.repos.clone(),
        );
        r.register(
            "pinned_bytes",
            "Bytes of packs held for the states held",
            m.pinned_bytes.clone(),
        );
        r.register(
            "gossip_topics",
            "Gossip topics joined (a quiet repository's topic is left after topic_idle_secs)",
            m.topics.clone(),
        );
        r.register(
            "gossip_neighbours",
            "Gossip neighbours over all topics",
            m.neighbours.clone(),
        );
        r.register("jobs", "Content jobs, running or waiting", m.jobs.clone());
        r.register(
            "runtime_tasks",
            "Tasks alive in the node's async runtime",
            m.tasks.clone(),
        );
        r.register(
            "connections",
            "QUIC connections open, to and from peers",
            m.connections.clone(),
        );
        r.register(
            "mirror_fetches",
            "Fetches of mirrors' upstreams, by result: published, unchanged, or the failure's class",
            m.mirror_fetches.clone(),
        );
        r.register(
            "mirror_fetch_duration_seconds",
            "Time to fetch from a mirror's upstream and publish what changed",
            m.mirror_fetch_seconds.clone(),
        );
        r.register(
            "mirrors",
            "Mirrors, by the outcome of their last fetch (ok, failing, or pending before the first)",
            m.mirrors.clone(),
        );
        Self { registry, ..m }
    }

    /// Count what an event says.
    pub fn observe(&self, event: &EventLine) {
        let outcome = |result: &str| Outcome {
            result: result.into(),
        };
        match &event.event {
            NodeEvent::FetchFinished { bytes, ms, .. } => {
                self.fetches.get_or_create(&outcome("ok")).inc();
                self.fetched_bytes.inc_by(*bytes);
                self.fetch_seconds.observe(*ms as f64 / 1000.0);
            }
            NodeEvent::FetchFailed { .. } => {
                self.fetches.get_or_create(&outcome("failed")).inc();
            }
            NodeEvent::Published { ms, .. } => {
                self.publishes.inc();
                self.publish_seconds.observe(*ms as f64 / 1000.0);
            }
            NodeEvent::PollError { .. } => {
                self.poll_errors.inc();
            }
            NodeEvent::WriteBack { ok, .. } => {
                let result = if *ok { "ok" } else { "failed" };
                self.write_backs.get_or_create(&outcome(result)).inc();
            }
            NodeEvent::QuotaRefused { .. } => {
                self.quota_refusals.inc();
            }
            NodeEvent::Repaired {
                rebuilt, fetched, ..
            } => {
                self.blobs_repaired
                    .get_or_create(&outcome("rebuilt"))
                    .inc_by(*rebuilt as u64);
                self.blobs_repaired
                    .get_or_create(&outcome("fetched"))
                    .inc_by(*fetched as u64);
            }
            _ => {}
        }
    }

    /// Count one fetch of a mirror's upstream that ended with `result`.
    pub fn mirror_fetched(&self, result: &str, took: Duration) {
        self.mirror_fetches
            .get_or_create(&Outcome {
                result: result.into(),
            })
            .inc();
        self.mirror_fetch_seconds.observe(took.as_secs_f64());
    }

    /// Set how many mirrors are ok, failing and pending.
    pub fn mirror_counts(&self, ok: usize, failing: usize, pending: usize) {
        for (state, n) in [("ok", ok), ("failing", failing), ("pending", pending)] {
            self.mirrors
                .get_or_create(&RepoState {
                    state: state.into(),
                })
                .set(n as i64);
        }
    }

    /// Count bytes served to a peer.
    pub fn served(&self, bytes: u64) {
        self.served_bytes.inc_by(bytes);
    }

    /// Take the node's status: gauges, and counters the node keeps.
    pub fn update(&self, status: &NodeStatus) {
        let state = |s: &str| RepoState { state: s.into() };
        let held = status
            .repos
            .iter()
            .filter(|r| r.materialized.is_some())
            .count();
        let fetching = status.repos.iter().filter(|r| r.fetching.is_some()).count();
        let empty = status
            .repos
            .iter()
            .filter(|r| r.materialized.is_none() && r.fetching.is_none())
            .count();
        self.repos.get_or_create(&state("held")).set(held as i64);
        self.repos
            .get_or_create(&state("fetching"))
            .set(fetching as i64);
        self.repos.get_or_create(&state("empty")).set(empty as i64);
        let pinned: u64 = status.repos.iter().map(|r| r.bytes_pinned).sum();
        self.pinned_bytes
            .set(i64::try_from(pinned).unwrap_or(i64::MAX));
        let neighbours: usize = status.repos.iter().map(|r| r.peers_connected).sum();
        self.neighbours.set(neighbours as i64);
        let topics = status.repos.iter().filter(|r| r.topic_joined).count();
        self.topics.set(topics as i64);
        self.jobs
            .get_or_create(&state("running"))
            .set(status.jobs_running as i64);
        self.jobs
            .get_or_create(&state("waiting"))
            .set(status.jobs_waiting as i64);
        self.tasks.set(status.tasks_alive as i64);
        self.connections
            .set(i64::try_from(status.connections_open).unwrap_or(i64::MAX));
        let mut seen = self.seen.lock().expect("metrics lock");
        let mut add = |key: String, total: u64, counter: &Counter| {
            let before = seen.insert(key, total).unwrap_or(0);
            counter.inc_by(total.saturating_sub(before));
        };
        add("received".into(), status.gossip.received, &self.received);
        add(
            "store_failures".into(),
            status.gossip.store_failures,
            &self.store_failures,
        );
        add(
            "pulls_deferred".into(),
            status.gossip.pulls_deferred,
            &self.pulls_deferred,
        );
        for (reason, n) in &status.gossip.rejected_by_reason {
            let counter = self.rejected.get_or_create(&Reason {
                reason: reason.clone(),
            });
            add(format!("rejected:{reason}"), *n, &counter);
        }
        let indexing = crate::materialize::indexing_counts();
        for (indexer, n) in [("gix", indexing.by_gix), ("git", indexing.by_git)] {
            let counter = self.packs_indexed.get_or_create(&Indexer {
                indexer: indexer.into(),
            });
            add(format!("indexed:{indexer}"), n, &counter);
        }
        add(
            "gix_refused".into(),
            indexing.gix_refused,
            &self.gix_refused,
        );
        add(
            "connectivity_walks".into(),
            indexing.connectivity_walks,
            &self.connectivity_walks,
        );
        for (reason, n) in [
            ("invalid", status.gossip.dropped_invalid),
            ("rate_limited", status.gossip.rate_limited),
            ("push_busy", status.gossip.pushes_dropped),
        ] {
            let counter = self.dropped.get_or_create(&Reason {
                reason: reason.into(),
            });
            add(format!("dropped:{reason}"), n, &counter);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a string cannot fail");
        out
    }
}

/// An event sender for the blob provider that counts bytes served.
pub fn provider_events(metrics: Arc<Metrics>) -> EventSender {
    let mask = EventMask {
        get: RequestMode::NotifyLog,
        get_many: RequestMode::NotifyLog,
        ..EventMask::DEFAULT
    };
    let (sender, mut rx) = EventSender::channel(64, mask);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let updates = match msg {
                ProviderMessage::GetRequestReceivedNotify(msg) => msg.rx,
                ProviderMessage::GetManyRequestReceivedNotify(msg) => msg.rx,
                _ => continue,
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut updates = updates;
                while let Ok(Some(update)) = updates.recv().await {
                    if let RequestUpdate::Completed(done) = update {
                        metrics.served(done.stats.payload_bytes_sent);
                    }
                }
            });
        }
    });
    sender
}

#[derive(Clone)]
struct Served {
    knot: KnotHandle,
    metrics: Arc<Metrics>,
}

async fn status(knot: &KnotHandle) -> Result<NodeStatus, String> {
    match tokio::time::timeout(STATUS_TIMEOUT, knot.command(Command::Status)).await {
        Ok(Ok(Payload::Status(status))) => Ok(*status),
        Ok(Ok(_)) => Err("unexpected answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {STATUS_TIMEOUT:?}")),
    }
}

async fn scrape(State(s): State<Served>) -> impl IntoResponse {
    match status(&s.knot).await {
        Ok(status) => {
            s.metrics.update(&status);
            (
                StatusCode::OK,
                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                s.metrics.encode(),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the repository core does not answer: {e}\n"),
        )
            .into_response(),
    }
}

async fn health(State(s): State<Served>) -> impl IntoResponse {
    match status(&s.knot).await {
        Ok(_) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: the repository core does not answer: {e}\n"),
        ),
    }
}

/// Serve `/metrics` and `/health` on `listener` until `cancel` fires, and
/// fold the node's events into `metrics` meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    knot: KnotHandle,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut events = knot.subscribe();
    let folding = metrics.clone();
    let stop = cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = events.recv() => match event {
                    Ok(event) => folding.observe(&event),
                    Err(broadcast::error::RecvError::Lagged(n)) => warn!(missed = n, "metrics missed events"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(health))
        .with_state(Served { knot, metrics });
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(?addr, "serving metrics");
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        warn!(error = %e, "the metrics server stopped");
    }
}
