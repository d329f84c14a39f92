//! The mirror service's actor: one `select!` loop over operator commands,
//! finished fetches (child tasks in a JoinSet), push events from knots,
//! records read again, and the schedule's next wake-up. It owns the mirrors
//! as they are now (source, last outcome, what was last published), starts
//! fetches as the [`Planner`] allows, listens to one event stream per knot
//! host, follows a Tangled repository to another knot when its record says
//! it moved, and counts outcomes in the metrics. What survives a restart is
//! in the store: each mirror's row (its source kept up to date) and the
//! event cursors; the schedule starts again with every mirror due.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::failure::{FailureClass, FetchFailure};
use super::job::{FetchEnd, FetchJob, Fetched};
use super::plan::{Finished, Planner};
use super::tangled::{self, RecordSource, TangledError};
use super::upstream::{self, Listing, Upstream};
use super::{MirrorCommand, MirrorError, MirrorSettings, events, repo_dir};
use crate::{
    api::{MirrorFailure, MirrorView},
    atproto::XrpcClient,
    clock::unix_millis,
    config::AtprotoConfig,
    knot::KnotHandle,
    metrics::Metrics,
    repo_id::RepoId,
    state::{MAX_REWRITES, MAX_REWRITTEN_REFS, MirrorRewrite, MirrorRow},
    store::Store,
};

/// How often a mirror made from a Tangled record reads the record again to
/// follow the repository to another knot, while its fetches work. After a
/// failed fetch it is read again at most once per `retry_secs`.
const RESOLVE_EVERY: Duration = Duration::from_secs(6 * 3600);

/// A record read again: where it says the repository lives now.
struct Resolved {
    repo_id: RepoId,
    /// The record read (a mirror added again meanwhile may have another).
    record: String,
    result: Result<tangled::TangledRepo, TangledError>,
}

/// One mirror as the actor knows it.
struct Mirror {
    row: MirrorRow,
    upstream: Upstream,
    /// When its record was last read (service time), for Tangled mirrors.
    resolved_at: Duration,
    /// A read of its record is under way.
    resolving: bool,
    /// Its record is to be read again after the running fetch.
    resolve_soon: bool,
    /// Fetches started so far.
    started: u64,
    last_success: Option<u64>,
    last_change: Option<u64>,
    manifest: Option<String>,
    error: Option<FetchFailure>,
    /// The refs last published (none since the start: publish once).
    published: Option<Listing>,
}

struct Waiter {
    after: u64,
    reply: oneshot::Sender<Result<MirrorView, MirrorError>>,
}

/// The mirror service.
pub(super) struct Mirrors {
    settings: MirrorSettings,
    planner: Planner,
    store: Store,
    knot: KnotHandle,
    mirrors: BTreeMap<RepoId, Mirror>,
    waiters: HashMap<RepoId, Vec<Waiter>>,
    fetches: JoinSet<FetchEnd>,
    chores: JoinSet<()>,
    /// The fetch running for each mirror, aborted when it is removed (so
    /// that it cannot publish the repository again after `unmirror`).
    running: HashMap<RepoId, tokio::task::AbortHandle>,
    /// One push-event listener per knot host that has Tangled mirrors.
    listeners: HashMap<String, CancellationToken>,
    pushed_tx: mpsc::Sender<events::Pushed>,
    pushed_rx: mpsc::Receiver<events::Pushed>,
    rx: mpsc::Receiver<MirrorCommand>,
    origin: Instant,
    cancel: CancellationToken,
    metrics: Option<Arc<Metrics>>,
    xrpc: XrpcClient,
    atproto: AtprotoConfig,
    resolved_tx: mpsc::Sender<Resolved>,
    resolved_rx: mpsc::Receiver<Resolved>,
}

/// What the service starts from.
pub(super) struct Parts {
    pub(super) settings: MirrorSettings,
    pub(super) store: Store,
    pub(super) knot: KnotHandle,
    pub(super) rx: mpsc::Receiver<MirrorCommand>,
    pub(super) cancel: CancellationToken,
    pub(super) metrics: Option<Arc<Metrics>>,
    pub(super) xrpc: XrpcClient,
    pub(super) atproto: AtprotoConfig,
    /// The mirrors kept in the store and named in the configuration.
    pub(super) rows: Vec<MirrorRow>,
}

impl Mirrors {
    /// The service with every mirror of `parts` due at once.
    pub(super) fn new(parts: Parts) -> Self {
        let (pushed_tx, pushed_rx) = mpsc::channel(256);
        let (resolved_tx, resolved_rx) = mpsc::channel(64);
        let mut service = Mirrors {
            planner: Planner::new(parts.settings.plan.clone(), rand::random()),
            settings: parts.settings,
            store: parts.store,
            knot: parts.knot,
            mirrors: BTreeMap::new(),
            waiters: HashMap::new(),
            fetches: JoinSet::new(),
            chores: JoinSet::new(),
            running: HashMap::new(),
            listeners: HashMap::new(),
            pushed_tx,
            pushed_rx,
            rx: parts.rx,
            origin: Instant::now(),
            cancel: parts.cancel,
            metrics: parts.metrics,
            xrpc: parts.xrpc,
            atproto: parts.atproto,
            resolved_tx,
            resolved_rx,
        };
        for row in parts.rows {
            service.insert(row);
        }
        service.count();
        info!(mirrors = service.mirrors.len(), "mirror service running");
        service
    }

    pub(super) async fn run(mut self) {
        loop {
            self.start_due();
            let wake = self.planner.next_wakeup().map(|d| self.origin + d);
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(command) = self.rx.recv() => self.handle_command(command),
                Some(ended) = self.fetches.join_next_with_id(), if !self.fetches.is_empty() => {
                    match ended {
                        Ok((task, end)) => self.handle_fetched(task, end),
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => self.handle_fetch_panic(e),
                    }
                }
                Some(_) = self.chores.join_next(), if !self.chores.is_empty() => {}
                Some(pushed) = self.pushed_rx.recv() => self.handle_pushed(pushed),
                Some(resolved) = self.resolved_rx.recv() => self.handle_resolved(resolved),
                _ = sleep_until(wake) => {}
            }
        }
        for listener in self.listeners.values() {
            listener.cancel();
        }
        self.fetches.shutdown().await;
        self.chores.shutdown().await;
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn insert(&mut self, row: MirrorRow) {
        let upstream = match Upstream::parse(&row.source, self.settings.allow_local) {
            Ok(upstream) => upstream,
            Err(e) => {
                warn!(repo = %row.repo_id, error = %e, "a stored mirror's source is refused now; it is not fetched");
                return;
            }
        };
        let now = self.now();
        self.planner.add(row.repo_id.clone(), upstream.host(), now);
        if has_push_events(&row, &upstream) {
            self.listen_to(&upstream);
        }
        self.mirrors.insert(
            row.repo_id.clone(),
            Mirror {
                row,
                upstream,
                resolved_at: now,
                resolving: false,
                resolve_soon: false,
                started: 0,
                last_success: None,
                last_change: None,
                manifest: None,
                error: None,
                published: None,
            },
        );
    }

    fn handle_command(&mut self, command: MirrorCommand) {
        match command {
            MirrorCommand::Add { row, reply } => {
                let _ = reply.send(self.handle_add(row));
            }
            MirrorCommand::Remove { repo_id, reply } => self.handle_remove(repo_id, reply),
            MirrorCommand::List { reply } => {
                let views = self.mirrors.keys().filter_map(|id| self.view(id)).collect();
                let _ = reply.send(views);
            }
            MirrorCommand::Sync { repo_id, reply } => {
                let now = self.now();
                match self.mirrors.get(&repo_id) {
                    Some(mirror) if self.planner.fetch_now(&repo_id, true, now) => {
                        let after = mirror.started + 1;
                        self.waiters
                            .entry(repo_id)
                            .or_default()
                            .push(Waiter { after, reply });
                    }
                    _ => {
                        let _ = reply.send(Err(MirrorError::NotMirrored(repo_id)));
                    }
                }
            }
            MirrorCommand::Lookup { repo_id, reply } => {
                let _ = reply.send(self.mirrors.get(&repo_id).map(|m| m.row.source.clone()));
            }
        }
    }

    fn handle_add(&mut self, row: MirrorRow) -> Result<MirrorView, MirrorError> {
        let repo_id = row.repo_id.clone();
        if let Some(existing) = self.mirrors.get(&repo_id) {
            if existing.row.source != row.source {
                return Err(MirrorError::OtherSource {
                    repo_id,
                    source_url: existing.row.source.clone(),
                });
            }
        } else {
            self.store.put_mirror(&row)?;
            info!(repo = %repo_id, source = %row.source, "mirroring");
            self.insert(row);
            self.count();
        }
        self.view(&repo_id).ok_or(MirrorError::NotMirrored(repo_id))
    }

    fn handle_remove(&mut self, repo_id: RepoId, reply: oneshot::Sender<Result<(), MirrorError>>) {
        if !self.mirrors.contains_key(&repo_id) {
            let _ = reply.send(Err(MirrorError::NotMirrored(repo_id)));
            return;
        }
        if let Err(e) = self.store.remove_mirror(&repo_id) {
            let _ = reply.send(Err(e.into()));
            return;
        }
        if let Some(gone) = self.mirrors.remove(&repo_id) {
            self.stop_listening_if_unused(&gone.upstream.host());
        }
        self.planner.remove(&repo_id);
        let fetch = self.running.remove(&repo_id);
        if let Some(fetch) = &fetch {
            fetch.abort();
        }
        for waiter in self.waiters.remove(&repo_id).unwrap_or_default() {
            let _ = waiter
                .reply
                .send(Err(MirrorError::NotMirrored(repo_id.clone())));
        }
        info!(repo = %repo_id, "no longer mirrored");
        self.count();
        let knot = self.knot.clone();
        let dir = repo_dir(&self.settings.dir, &repo_id);
        let store = self.store.clone();
        self.chores.spawn(async move {
            // The aborted fetch ends (its git killed) before anything is
            // removed: git could otherwise write into what was removed.
            if let Some(fetch) = fetch {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !fetch.is_finished() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // Always through the node's queue, behind a publish the aborted
            // fetch may have handed it already; a refusal is fine when the
            // repository is not tracked (a first fetch never worked).
            let removed = match knot
                .command(crate::admin::Command::RemoveRepo {
                    repo_id: repo_id.clone(),
                })
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    let check = store.clone();
                    let id = repo_id.clone();
                    match tokio::task::spawn_blocking(move || check.has_repo(&id)).await {
                        Ok(Ok(false)) => Ok(()),
                        _ => Err(MirrorError::Node(e.to_string())),
                    }
                }
            };
            for dir in [upstream::clone_dir(&dir), dir.clone()] {
                if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(repo = %repo_id, dir = %dir.display(), error = %e, "cannot delete the mirror's repository");
                }
            }
            let _ = reply.send(removed);
        });
    }

    /// Start listening to the push events of `upstream`'s knot, once per host.
    fn listen_to(&mut self, upstream: &Upstream) {
        let host = upstream.host();
        if self.listeners.contains_key(&host) {
            return;
        }
        let token = self.cancel.child_token();
        self.listeners.insert(host.clone(), token.clone());
        let secure = upstream.url().starts_with("https:");
        let listener = events::listen(
            host,
            secure,
            self.store.clone(),
            self.pushed_tx.clone(),
            token,
        );
        self.chores.spawn(listener);
    }

    /// A knot said a repository was pushed to: fetch its mirror now.
    fn handle_pushed(&mut self, pushed: events::Pushed) {
        let Some(repo_id) = pushed.repo_id else {
            return;
        };
        let Some(mirror) = self.mirrors.get(&repo_id) else {
            return;
        };
        if mirror.upstream.host() != pushed.host {
            return;
        }
        tracing::debug!(repo = %repo_id, host = %pushed.host, "push event: fetching now");
        let now = self.now();
        self.planner.fetch_now(&repo_id, false, now);
    }

    fn start_due(&mut self) {
        let now = self.now();
        for repo_id in self.planner.start_due(now) {
            let Some(mirror) = self.mirrors.get_mut(&repo_id) else {
                continue;
            };
            mirror.started += 1;
            let job = FetchJob {
                number: mirror.started,
                dir: repo_dir(&self.settings.dir, &repo_id),
                repo_id,
                upstream: mirror.upstream.clone(),
                published: mirror.published.clone(),
                manifest: mirror.manifest.clone(),
                limits: self.settings.limits,
                knot: self.knot.clone(),
            };
            let repo_id = job.repo_id.clone();
            let fetch = self.fetches.spawn(job.run());
            self.running.insert(repo_id, fetch);
        }
    }

    /// A fetch task panicked: a failure of its mirror, so that its slots
    /// in the schedule are given back.
    fn handle_fetch_panic(&mut self, e: tokio::task::JoinError) {
        warn!(error = %e, "a mirror fetch task failed");
        let task = e.id();
        let Some(repo_id) = self
            .running
            .iter()
            .find(|(_, handle)| handle.id() == task)
            .map(|(repo_id, _)| repo_id.clone())
        else {
            return;
        };
        let number = self.mirrors.get(&repo_id).map_or(0, |m| m.started);
        let end = FetchEnd {
            repo_id,
            number,
            result: Err(FetchFailure {
                class: FailureClass::Local,
                message: format!("the fetch task failed: {e}"),
                retry_after: None,
            }),
            took: Duration::ZERO,
        };
        self.handle_fetched(task, end);
    }

    fn handle_fetched(&mut self, task: tokio::task::Id, end: FetchEnd) {
        // Only the fetch running for the mirror as it is now counts: one of
        // a mirror removed (and perhaps added again) meanwhile does not.
        match self.running.get(&end.repo_id) {
            Some(handle) if handle.id() == task => {
                self.running.remove(&end.repo_id);
            }
            _ => return,
        }
        let now = self.now();
        let finished = match &end.result {
            Ok(_) => Finished::Succeeded,
            Err(failure) => Finished::Failed {
                retry_after: failure.retry_after,
            },
        };
        self.planner.finish(&end.repo_id, finished, now);
        if let Some(metrics) = &self.metrics {
            let result = match &end.result {
                Ok(Fetched::Unchanged)
                | Ok(Fetched::Published {
                    unchanged: true, ..
                }) => "unchanged".to_owned(),
                Ok(Fetched::Published { .. }) => "published".to_owned(),
                Err(failure) => failure.class.name(),
            };
            metrics.mirror_fetched(&result, end.took);
        }
        let Some(mirror) = self.mirrors.get_mut(&end.repo_id) else {
            return;
        };
        match end.result {
            Ok(fetched) => {
                mirror.last_success = Some(unix_millis());
                mirror.error = None;
                if let Fetched::Published {
                    manifest,
                    listing,
                    unchanged,
                    rewritten,
                } = fetched
                {
                    if !unchanged || mirror.manifest.is_none() {
                        mirror.last_change = mirror.last_success;
                    }
                    if !unchanged {
                        info!(repo = %end.repo_id, %manifest, "published the upstream's new refs");
                    }
                    if !unchanged && !rewritten.is_empty() {
                        let shown = &rewritten[..rewritten.len().min(10)];
                        warn!(repo = %end.repo_id, %manifest, count = rewritten.len(), refs = ?shown, "the upstream deleted or rewrote refs; the mirror follows it");
                        let rewrite = MirrorRewrite {
                            at: mirror.last_success.unwrap_or_default(),
                            manifest: manifest.clone(),
                            more: rewritten.len().saturating_sub(MAX_REWRITTEN_REFS),
                            refs: rewritten.into_iter().take(MAX_REWRITTEN_REFS).collect(),
                        };
                        let mut row = mirror.row.clone();
                        row.rewrites.push(rewrite);
                        let excess = row.rewrites.len().saturating_sub(MAX_REWRITES);
                        row.rewrites.drain(..excess);
                        match self.store.put_mirror(&row) {
                            Ok(()) => mirror.row = row,
                            Err(e) => {
                                warn!(repo = %end.repo_id, error = %e, "cannot keep the mirror's rewrite history")
                            }
                        }
                    }
                    mirror.manifest = Some(manifest);
                    mirror.published = Some(listing);
                }
            }
            Err(failure) => {
                warn!(repo = %end.repo_id, source = %mirror.row.source, class = ?failure.class, error = %failure.message, "mirror fetch failed");
                mirror.error = Some(failure);
            }
        }
        self.count();
        self.maybe_resolve(&end.repo_id, now);
        let Some(waiters) = self.waiters.remove(&end.repo_id) else {
            return;
        };
        let (ready, later): (Vec<_>, Vec<_>) =
            waiters.into_iter().partition(|w| w.after <= end.number);
        if !later.is_empty() {
            self.waiters.insert(end.repo_id.clone(), later);
        }
        let view = self.view(&end.repo_id);
        for waiter in ready {
            let _ = waiter.reply.send(
                view.clone()
                    .ok_or(MirrorError::NotMirrored(end.repo_id.clone())),
            );
        }
    }

    /// Stop listening to `host`'s push events when no mirror needs them.
    fn stop_listening_if_unused(&mut self, host: &str) {
        let still_used = self
            .mirrors
            .values()
            .any(|m| m.upstream.host() == host && has_push_events(&m.row, &m.upstream));
        if !still_used && let Some(listener) = self.listeners.remove(host) {
            listener.cancel();
        }
    }

    /// Read a Tangled mirror's record again when it is time: every
    /// [`RESOLVE_EVERY`], or after a failed fetch at most once per
    /// `retry_secs` (the repository may have moved to another knot).
    fn maybe_resolve(&mut self, repo_id: &RepoId, now: Duration) {
        let Some(mirror) = self.mirrors.get_mut(repo_id) else {
            return;
        };
        let Some(record) = mirror.row.record.clone() else {
            return;
        };
        let since = now.saturating_sub(mirror.resolved_at);
        let due = match &mirror.error {
            _ if mirror.resolve_soon => true,
            Some(_) => since >= self.settings.plan.failure_base,
            None => since >= RESOLVE_EVERY,
        };
        let Some(source) = RecordSource::parse(&record).filter(|_| due && !mirror.resolving) else {
            return;
        };
        mirror.resolved_at = now;
        mirror.resolving = true;
        mirror.resolve_soon = false;
        let (xrpc, atproto, tx) = (
            self.xrpc.clone(),
            self.atproto.clone(),
            self.resolved_tx.clone(),
        );
        let repo_id = repo_id.clone();
        self.chores.spawn(async move {
            let result = tangled::resolve(&xrpc, &atproto, &source, &record).await;
            let _ = tx
                .send(Resolved {
                    repo_id,
                    record,
                    result,
                })
                .await;
        });
    }

    /// A record read again: follow the repository when its record names
    /// another knot (the same repository id only).
    fn handle_resolved(&mut self, resolved: Resolved) {
        let Resolved {
            repo_id,
            record,
            result,
        } = resolved;
        let Some(mirror) = self
            .mirrors
            .get_mut(&repo_id)
            .filter(|m| m.resolving && m.row.record.as_deref() == Some(&*record))
        else {
            return;
        };
        mirror.resolving = false;
        let (old, mut row) = (mirror.upstream.clone(), mirror.row.clone());
        let repo = match result {
            Ok(repo) => repo,
            Err(e) => {
                debug!(repo = %repo_id, error = %e, "cannot read the mirror's record again; keeping its source");
                return;
            }
        };
        if repo.repo_id != repo_id {
            warn!(repo = %repo_id, names = %repo.repo_id, "the mirror's record now names another repository; keeping its source");
            return;
        }
        let url = repo.git_url(self.atproto.allow_insecure_http);
        let upstream = match Upstream::parse(&url, self.settings.allow_local) {
            Ok(upstream) if upstream != old => upstream,
            Ok(_) => return,
            Err(e) => {
                warn!(repo = %repo_id, error = %e, "the mirror's record names a source that is refused; keeping the old one");
                return;
            }
        };
        if !self.planner.rehost(&repo_id, upstream.host()) {
            // A fetch is running; the next one that ends reads it again.
            if let Some(mirror) = self.mirrors.get_mut(&repo_id) {
                mirror.resolve_soon = true;
            }
            return;
        }
        row.source = upstream.url().to_owned();
        if let Err(e) = self.store.put_mirror(&row) {
            warn!(repo = %repo_id, error = %e, "cannot keep the mirror's new source");
            self.planner.rehost(&repo_id, old.host());
            return;
        }
        info!(repo = %repo_id, from = %old.url(), to = %row.source, "the mirror's record moved the repository to another knot");
        let push_events = has_push_events(&row, &upstream);
        if let Some(mirror) = self.mirrors.get_mut(&repo_id) {
            mirror.row = row;
            mirror.upstream = upstream.clone();
        }
        self.stop_listening_if_unused(&old.host());
        if push_events {
            self.listen_to(&upstream);
        }
        self.planner.fetch_now(&repo_id, false, self.now());
    }

    /// Tell the metrics how many mirrors are ok, failing and pending.
    fn count(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let failing = self.mirrors.values().filter(|m| m.error.is_some()).count();
        let ok = self
            .mirrors
            .values()
            .filter(|m| m.error.is_none() && m.last_success.is_some())
            .count();
        metrics.mirror_counts(ok, failing, self.mirrors.len() - ok - failing);
    }

    fn view(&self, repo_id: &RepoId) -> Option<MirrorView> {
        let mirror = self.mirrors.get(repo_id)?;
        let (due, failures, fetching) = self.planner.describe(repo_id)?;
        Some(MirrorView {
            repo_id: repo_id.to_string(),
            source: mirror.row.source.clone(),
            fetching,
            last_success: mirror.last_success,
            last_change: mirror.last_change,
            manifest: mirror.manifest.clone(),
            failures,
            error: mirror.error.as_ref().map(failure_view),
            next_fetch_secs: due.saturating_sub(self.now()).as_secs(),
            rewrites: mirror.row.rewrites.clone(),
        })
    }
}

fn failure_view(failure: &FetchFailure) -> MirrorFailure {
    let status = match failure.class {
        FailureClass::HttpStatus(code) => Some(code),
        _ => None,
    };
    MirrorFailure {
        class: failure.class.name(),
        status,
        message: failure.message.clone(),
        hint: failure.class.hint().to_owned(),
    }
}

/// Whether a mirror's upstream is a Tangled knot, which publishes push
/// events: it came from a record, or its URL is the knot's
/// `/<did>/<name>` of the very repository id.
fn has_push_events(row: &MirrorRow, upstream: &Upstream) -> bool {
    row.record.is_some() || upstream.implied_repo_id().as_ref() == Some(&row.repo_id)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
