//! The knot's own read-only web pages, served by the `[http]` server beside
//! smart HTTP (`[http] pages`, on by default):
//!
//! * `/`: the repositories the node seeds, a page of [`PAGE_SIZE`] at a
//!   time, filtered by `?q=` (the search box re-asks as you type);
//! * `/<did>/<name>`: one repository's refs (from the manifest held: no git
//!   process), its peers and the path to each, its recent events;
//! * `/status`: the node, and a live view of its events fed by
//!   `/status/events` (server-sent events, the stream `admin watch` reads);
//! * `/assets/*`, `/favicon.svg`: the stylesheet, the small script and
//!   the icon, compiled in.
//!
//! Every page asks the node through the same [`Executor`] the admin socket
//! uses and shows only what the node already serves to anyone. The list and
//! the status are reused for [`SNAPSHOT_TTL`], so a flood of page requests
//! costs the node one of each a second. Values are
//! escaped by the templates ([`render`]) and pages carry a
//! Content-Security-Policy that allows only the node's own script.
//!
//! Owns a ring of the node's recent events, filled by
//! [`Pages::record_events`], and the owners' verified handles
//! ([`handles`], resolved by [`Pages::resolve_handles`]): two tasks the
//! node runs; both are lost on restart.

pub mod handles;
pub mod render;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use maud::Markup;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::admin::{
    Command, EventLine, Executor, NodeEvent, NodeStatus, Payload, RefsReport, Reply, RepoSummary,
};
use crate::git::ObjectId;
use crate::repo_id::RepoId;
use render::{IndexPage, RepoPage, Site, Totals};

/// Repositories listed per page of `/`.
pub const PAGE_SIZE: usize = 50;
/// Events kept for the pages (newest last).
pub const RECENT_EVENTS: usize = 1000;
/// Events shown on a page.
const EVENTS_SHOWN: usize = 50;
/// Most live event streams open at once.
pub const MAX_WATCHERS: usize = 64;
/// How long one live view streams; the browser's EventSource then
/// reconnects on its own, so a client that left without closing frees its
/// slot.
pub const LIVE_VIEW_SPAN: Duration = Duration::from_secs(600);
/// Most pages rendered at once: the rest get 503 at once, so pages never
/// take the HTTP server's slots from git clients.
pub const MAX_PAGES_AT_ONCE: usize = 8;
/// Longest search text taken.
const MAX_QUERY: usize = 200;
/// What pages may load: their own stylesheet, script and event stream.
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A page could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The node did not answer a command.
    #[error("the node could not answer ({0}); retry shortly")]
    Node(String),
    /// Nothing is at this address.
    #[error("{0}")]
    NotFound(String),
    /// Too many live views are open.
    #[error("too many live views are open ({MAX_WATCHERS}); retry later")]
    Busy,
    /// Too many pages are being rendered.
    #[error("the knot is busy rendering other pages; retry in a moment")]
    TooManyPages,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, page) = match &self {
            WebError::NotFound(_) => (StatusCode::NOT_FOUND, render::not_found(&self.to_string())),
            WebError::Node(_) | WebError::Busy | WebError::TooManyPages => (
                StatusCode::SERVICE_UNAVAILABLE,
                render::unavailable(&self.to_string()),
            ),
        };
        html(status, page)
    }
}

/// The pages' state: how to ask the node, and what it recently did.
#[derive(Clone)]
pub struct Pages<E> {
    executor: E,
    recent: Arc<Mutex<VecDeque<EventLine>>>,
    max_total_bytes: Option<u64>,
    watchers: Arc<Semaphore>,
    rendering: Arc<Semaphore>,
    list: Snapshot<Vec<RepoSummary>>,
    status: Snapshot<NodeStatus>,
    handles: Arc<handles::Handles>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    served: Option<crate::served::ServedRepos>,
    peeled: PeeledCache,
    cancel: CancellationToken,
}

/// Annotated tags' object ids to the commits they peel to.
type Peeled = BTreeMap<ObjectId, ObjectId>;

/// Peeled tags by repository and state held.
type PeeledCache = Arc<Mutex<HashMap<(String, String), Arc<Peeled>>>>;

/// Repositories whose peeled tags are remembered (by state held).
const PEELED_KEPT: usize = 512;

/// How long the node's list and status are reused between page requests:
/// however many requests arrive, the node answers at most one of each a
/// second (at 10,000 repositories a list is the main cost of a page).
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(1);

/// A reply of the node reused for [`SNAPSHOT_TTL`]; requests arriving while
/// it is asked for wait for that one answer.
type Snapshot<T> = Arc<tokio::sync::Mutex<Option<(Instant, Arc<T>)>>>;

/// The snapshot in `slot` if fresh, else `fetch`'s answer, kept.
async fn snapshot<T, Fut>(slot: &Snapshot<T>, fetch: Fut) -> Result<Arc<T>, WebError>
where
    Fut: Future<Output = Result<T, WebError>>,
{
    let mut held = slot.lock().await;
    if let Some((at, value)) = held.as_ref()
        && at.elapsed() < SNAPSHOT_TTL
    {
        return Ok(value.clone());
    }
    let value = Arc::new(fetch.await?);
    *held = Some((Instant::now(), value.clone()));
    Ok(value)
}

impl<E: Executor> Pages<E> {
    /// Pages asking `executor`; `max_total_bytes` is the node's storage
    /// limit, shown beside what is used. Live event streams end when
    /// `cancel` fires, so an open page does not hold up a shutdown.
    pub fn new(executor: E, max_total_bytes: Option<u64>, cancel: CancellationToken) -> Self {
        Self {
            executor,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT_EVENTS))),
            max_total_bytes,
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
            rendering: Arc::new(Semaphore::new(MAX_PAGES_AT_ONCE)),
            list: Arc::default(),
            status: Arc::default(),
            handles: Arc::default(),
            metrics: None,
            served: None,
            peeled: Arc::default(),
            cancel,
        }
    }

    /// Keep the node's last [`RECENT_EVENTS`] events for the pages until
    /// the pages are cancelled or the node's event stream ends.
    pub async fn record_events(self) {
        let Some(mut events) = self.executor.events() else {
            return;
        };
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Ok(event) if shown(&event) => {
                    let mut recent = self.recent.lock().expect("event ring poisoned");
                    if recent.len() == RECENT_EVENTS {
                        recent.pop_front();
                    }
                    recent.push_back(event);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(missed, "the pages' event ring fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// The newest events (of one repository, or all), newest first.
    fn recent(&self, repo: Option<&str>) -> Vec<EventLine> {
        let recent = self.recent.lock().expect("event ring poisoned");
        recent
            .iter()
            .rev()
            .filter(|e| repo.is_none_or(|r| e.repo.as_deref() == Some(r)))
            .take(EVENTS_SHOWN)
            .cloned()
            .collect()
    }

    async fn ask(&self, command: Command) -> Result<Payload, WebError> {
        match self.executor.execute(command).await {
            Reply::Ok(payload) => Ok(payload),
            Reply::Error(e) => Err(WebError::Node(e)),
        }
    }

    /// Show `metrics` (the node's Prometheus series, when `[metrics]` is
    /// on) on `/status`, the same numbers `/metrics` exports.
    pub fn with_metrics(mut self, metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Read annotated tags' commits from the repositories `served` names
    /// (one `git cat-file` per repository state, remembered).
    pub fn with_served(mut self, served: crate::served::ServedRepos) -> Self {
        self.served = Some(served);
        self
    }

    /// The commits the annotated tags among `refs` peel to, read once per
    /// state held; empty when the repository is not served or git fails.
    async fn peeled(&self, repo_id: &RepoId, refs: &RefsReport) -> Arc<Peeled> {
        let key = (
            repo_id.as_str().to_string(),
            refs.manifest.clone().unwrap_or_default(),
        );
        if let Some(known) = self.peeled.lock().expect("peeled cache poisoned").get(&key) {
            return known.clone();
        }
        let tags: Vec<ObjectId> = refs
            .refs
            .refs
            .iter()
            .filter(|(name, _)| name.starts_with("refs/tags/"))
            .map(|(_, id)| id.clone())
            .collect();
        let Some(repo) = self.served.as_ref().and_then(|s| s.get(repo_id)) else {
            return Arc::default();
        };
        if tags.is_empty() {
            return Arc::default();
        }
        let dir = repo.dir.clone();
        let peeled = tokio::task::spawn_blocking(move || crate::git::peel_objects(&dir, &tags))
            .await
            .ok()
            .and_then(|r| {
                r.map_err(|e| debug!(error = %e, "could not peel tags"))
                    .ok()
            })
            .unwrap_or_default();
        // Only what changed: an object that peels to itself is not a tag.
        let peeled: Peeled = peeled
            .into_iter()
            .filter(|(tag, commit)| tag != commit)
            .collect();
        let peeled = Arc::new(peeled);
        let mut cache = self.peeled.lock().expect("peeled cache poisoned");
        if cache.len() >= PEELED_KEPT {
            cache.clear();
        }
        cache.insert(key, peeled.clone());
        peeled
    }

    /// Resolve the handles of owners the pages show with `resolver` until
    /// the pages are cancelled (without it, owners are shown as DIDs).
    pub async fn resolve_handles<R: handles::ResolveHandle>(self, resolver: R) {
        self.handles
            .clone()
            .run(resolver, self.cancel.clone())
            .await;
    }

    /// The verified handle of the owner of `repo_id`, if known.
    fn owner_handle(&self, repo_id: &str) -> Option<String> {
        let did = repo_id.split_once('/').map_or(repo_id, |(did, _)| did);
        self.handles.lookup(did)
    }

    /// A slot to render a page in, if one is free.
    fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, WebError> {
        self.rendering
            .clone()
            .try_acquire_owned()
            .map_err(|_| WebError::TooManyPages)
    }

    /// The node's repositories, at most [`SNAPSHOT_TTL`] old.
    async fn list(&self) -> Result<Arc<Vec<RepoSummary>>, WebError> {
        snapshot(&self.list, async {
            match self.ask(Command::List).await? {
                Payload::Repos { repos } => Ok(repos),
                _ => Err(WebError::Node("unexpected reply to list".into())),
            }
        })
        .await
    }

    /// The node's status, at most [`SNAPSHOT_TTL`] old.
    async fn status(&self) -> Result<Arc<NodeStatus>, WebError> {
        snapshot(&self.status, async {
            match self.ask(Command::Status).await? {
                Payload::Status(status) => Ok(*status),
                _ => Err(WebError::Node("unexpected reply to status".into())),
            }
        })
        .await
    }

    /// The routes of the pages (merged into the smart HTTP router).
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(index::<E>))
            .route("/status", get(status::<E>))
            .route("/status/events", get(live_events::<E>))
            .route("/assets/knot.css", get(stylesheet))
            .route("/assets/knot.js", get(script))
            .route("/favicon.svg", get(icon))
            .route("/{did}/{name}", get(repo::<E>))
            .with_state(self)
    }
}

/// Whether an event is worth a line on a page (progress is not).
fn shown(event: &EventLine) -> bool {
    !matches!(
        event.event,
        NodeEvent::FetchProgress { .. } | NodeEvent::Watching
    )
}

fn html(status: StatusCode, page: Markup) -> Response {
    let mut response = (status, page.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Clone commands name the host and scheme the browser used.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Host, X-Forwarded-Proto"),
    );
    response
}

/// The site as the browser addressed it, for clone commands. A Host header
/// with anything but host characters is not echoed.
fn site(headers: &HeaderMap) -> Site {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    Site {
        scheme: if https { "https" } else { "http" }.into(),
        host: host.to_string(),
    }
}

fn now_secs() -> u64 {
    crate::clock::unix_millis() / 1000
}

/// `?q=…&page=…&rows=1` (rows: only the list, for the search box).
#[derive(Debug, Default, Deserialize)]
struct IndexQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: usize,
    #[serde(default)]
    rows: Option<u8>,
}

async fn index<E: Executor>(
    State(pages): State<Pages<E>>,
    headers: HeaderMap,
    Query(query): Query<IndexQuery>,
) -> Result<Response, WebError> {
    let _slot = pages.slot()?;
    let repos = pages.list().await?;
    let needle: String = query.q.trim().chars().take(MAX_QUERY).collect();
    let lowered = needle.to_lowercase();
    let matching: Vec<_> = repos
        .iter()
        .filter(|r| lowered.is_empty() || r.repo_id.to_lowercase().contains(&lowered))
        .collect();
    let pages_count = matching.len().div_ceil(PAGE_SIZE).max(1);
    let page = query.page.min(pages_count - 1);
    let rows: Vec<_> = matching
        .iter()
        .skip(page * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|r| (*r).clone())
        .collect();
    let handles: std::collections::HashMap<String, String> = rows
        .iter()
        .filter_map(|r| Some((r.repo_id.clone(), pages.owner_handle(&r.repo_id)?)))
        .collect();
    let view = IndexPage {
        handles: &handles,
        repos: &rows,
        total: repos.len(),
        matched: matching.len(),
        query: &needle,
        page,
        pages: pages_count,
    };
    let site = site(&headers);
    let markup = if query.rows.is_some() {
        render::index_rows(&site, &view, now_secs())
    } else {
        render::index(&site, &view, now_secs())
    };
    Ok(html(StatusCode::OK, markup))
}

async fn repo<E: Executor>(
    State(pages): State<Pages<E>>,
    headers: HeaderMap,
    UrlPath((did, name)): UrlPath<(String, String)>,
) -> Result<Response, WebError> {
    let _slot = pages.slot()?;
    let name = name.strip_suffix(".git").unwrap_or(&name);
    let repo_id = RepoId::parse(&format!("{did}/{name}"))
        .map_err(|_| WebError::NotFound("There is no such page on this knot.".into()))?;
    let status = pages.status().await?;
    let Some(summary) = status.repos.iter().find(|r| r.repo_id == repo_id.as_str()) else {
        return Err(WebError::NotFound(format!(
            "This knot does not seed {repo_id}."
        )));
    };
    let refs = match pages
        .ask(Command::Refs {
            repo_id: repo_id.clone(),
        })
        .await
    {
        Ok(Payload::Refs(refs)) => Some(refs),
        _ => None,
    };
    let peeled = match &refs {
        Some(refs) => pages.peeled(&repo_id, refs).await,
        None => Arc::default(),
    };
    let peers = match pages
        .ask(Command::Peers {
            repo_id: repo_id.clone(),
        })
        .await?
    {
        Payload::Peers { peers } => peers,
        _ => Vec::new(),
    };
    let peers: Vec<_> = peers
        .into_iter()
        .map(|peer| {
            let path = status
                .peer_paths
                .iter()
                .find(|p| p.node_id == peer.hint.node_id)
                .map(|p| p.path);
            (peer, path)
        })
        .collect();
    let events = pages.recent(Some(repo_id.as_str()));
    let handle = pages.owner_handle(&summary.repo_id);
    let view = RepoPage {
        peeled: &peeled,
        handle: handle.as_deref(),
        repo: summary,
        refs: refs.as_ref(),
        peers: &peers,
        events: &events,
    };
    Ok(html(
        StatusCode::OK,
        render::repo(&site(&headers), &view, now_secs()),
    ))
}

async fn status<E: Executor>(State(pages): State<Pages<E>>) -> Result<Response, WebError> {
    let _slot = pages.slot()?;
    let status = pages.status().await?;
    let totals = Totals::of(&status.repos, pages.max_total_bytes);
    let events = pages.recent(None);
    let metrics = pages.metrics.as_ref().map(|metrics| {
        metrics.update(&status);
        metrics.encode()
    });
    Ok(html(
        StatusCode::OK,
        render::status(&status, &totals, &events, metrics.as_deref()),
    ))
}

/// One event as the live view receives it.
#[derive(Debug, Serialize)]
struct LiveEvent {
    /// `HH:MM:SS` UTC.
    time: String,
    /// The repository, if one.
    repo: Option<String>,
    /// The event in words.
    text: String,
}

async fn live_events<E: Executor>(State(pages): State<Pages<E>>) -> Result<Response, WebError> {
    let permit = pages
        .watchers
        .clone()
        .try_acquire_owned()
        .map_err(|_| WebError::Busy)?;
    let Some(events) = pages.executor.events() else {
        return Err(WebError::NotFound("This node streams no events.".into()));
    };
    let cancel = pages.cancel.clone();
    let ends = tokio::time::Instant::now() + LIVE_VIEW_SPAN;
    let stream = n0_future::stream::unfold((events, permit), move |(mut events, permit)| {
        let cancel = cancel.clone();
        async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep_until(ends) => return None,
                    event = events.recv() => event,
                };
                match event {
                    Ok(event) if shown(&event) => {
                        let live = LiveEvent {
                            time: render::clock(event.at_ms),
                            repo: event.repo.clone(),
                            text: event.describe(),
                        };
                        let sse = Event::default()
                            .event("node")
                            .json_data(&live)
                            .unwrap_or_else(|_| Event::default().comment("unencodable event"));
                        return Some((Ok::<_, std::convert::Infallible>(sse), (events, permit)));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let note = Event::default().event("lagged").data(missed.to_string());
                        return Some((Ok(note), (events, permit)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/knot.css"))
}

async fn icon() -> Response {
    asset("image/svg+xml", include_str!("assets/favicon.svg"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/knot.js"),
    )
}

#[cfg(test)]
mod tests;
