//! Mirrors: repositories this node keeps from a git upstream that is not a
//! knot (a Tangled knot, any git server), published as knot states so that
//! other knots replicate them and `git clone` works while the upstream is
//! down.
//!
//! Owns the list of mirrors (persisted in the store, `mirrors_v1`), one bare
//! repository per mirror under `<data_dir>/mirrors/`, and the schedule of
//! fetches ([`plan`], sans-IO). One actor ([`MirrorHandle`] to reach it)
//! runs a `select!` loop over admin commands, finished fetches and the
//! schedule's next wake-up; each fetch is a child task in a `JoinSet`:
//! `git ls-remote` against the upstream, `git fetch --prune` when it
//! changed ([`upstream`]), then the node publishes the mirror's repository
//! as the repository's new state (non-fast-forwards included: the upstream
//! is the authority), signed by this node. A mirror never writes to its
//! owner's records.
//!
//! What survives a restart: the list of mirrors and their repositories;
//! the schedule and the last outcomes do not (every mirror fetches once at
//! start, and publishing what is already held changes nothing).

pub mod events;
pub mod failure;
pub mod plan;
pub mod tangled;
pub mod upstream;

mod admin;
mod job;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use admin::WithMirrors;
use failure::{FailureClass, FetchFailure};
use job::{FetchEnd, FetchJob, Fetched};
use plan::{Finished, PlanSettings, Planner};
use tangled::{RecordSource, TangledError};
use upstream::{Limits, Listing, SourceError, Upstream};

use crate::{
    api::{MirrorFailure, MirrorView, Payload},
    atproto::XrpcClient,
    clock::unix_millis,
    config::{AtprotoConfig, Config, MirrorSource},
    knot::KnotHandle,
    repo_id::RepoId,
    state::MirrorRow,
    store::{Store, StoreError},
    supervise::Supervised,
};

/// Errors of the mirror service.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The source is not one a mirror can fetch from.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A Tangled record does not resolve.
    #[error(transparent)]
    Tangled(#[from] TangledError),
    /// The repository id given is not the one the record names.
    #[error("the record names {named}, not {given}; leave out --repo-id")]
    OtherRepoId {
        /// The id given.
        given: RepoId,
        /// The id the record names.
        named: RepoId,
    },
    /// A record source in the configuration (it needs the network).
    #[error("{0:?} in [mirror] sources names a record; give its knot's git URL there")]
    RecordInConfig(String),
    /// No repository id was given and the URL names none.
    #[error(
        "{0:?} does not name a repository id; give one with --repo-id <did>/<name> (the id other knots track it by)"
    )]
    NoRepoId(String),
    /// The repository is tracked already, not as a mirror.
    #[error(
        "{0} is tracked already and is not a mirror; remove it first (`knotd admin remove-repo {0}`) or mirror under another id"
    )]
    Tracked(RepoId),
    /// The repository is mirrored from another source.
    #[error(
        "{repo_id} is mirrored from {source_url} already; unmirror it first to change its source"
    )]
    OtherSource {
        /// The repository.
        repo_id: RepoId,
        /// Its source.
        source_url: String,
    },
    /// The repository is not mirrored.
    #[error("{0} is not mirrored here; `knotd admin mirrors` lists the mirrors")]
    NotMirrored(RepoId),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node's repository actor refused or failed.
    #[error("{0}")]
    Node(String),
    /// The mirror service has stopped.
    #[error("knotd is shutting down")]
    Gone,
}

/// What the mirror service needs from the configuration.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// The schedule.
    pub plan: PlanSettings,
    /// Limits of each git process.
    pub limits: Limits,
    /// Whether local paths are allowed as sources.
    pub allow_local: bool,
    /// Where the mirrors' repositories live.
    pub dir: PathBuf,
}

impl MirrorSettings {
    /// The settings `config` gives.
    pub fn from_config(config: &Config) -> Self {
        let m = &config.mirror;
        MirrorSettings {
            plan: PlanSettings {
                interval: Duration::from_secs(m.poll_interval_secs),
                jitter: m.poll_jitter,
                failure_base: Duration::from_secs(m.retry_secs),
                max_backoff: Duration::from_secs(m.max_backoff_secs),
                per_host: m.max_per_host,
                max_running: m.max_concurrent,
            },
            limits: Limits {
                idle: Duration::from_secs(m.idle_timeout_secs),
                total: Duration::from_secs(m.fetch_timeout_secs),
                max_bytes: config.max_repo_bytes,
            },
            allow_local: m.allow_local,
            dir: config.data_dir.join("mirrors"),
        }
    }
}

enum MirrorCommand {
    Add {
        row: MirrorRow,
        reply: oneshot::Sender<Result<MirrorView, MirrorError>>,
    },
    Remove {
        repo_id: RepoId,
        reply: oneshot::Sender<Result<(), MirrorError>>,
    },
    List {
        reply: oneshot::Sender<Vec<MirrorView>>,
    },
    Sync {
        repo_id: RepoId,
        reply: oneshot::Sender<Result<MirrorView, MirrorError>>,
    },
    Lookup {
        repo_id: RepoId,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// Handle to the mirror service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MirrorHandle {
    tx: mpsc::Sender<MirrorCommand>,
    knot: KnotHandle,
    allow_local: bool,
    xrpc: XrpcClient,
    atproto: AtprotoConfig,
}

impl MirrorHandle {
    /// Mirror `source` as `repo_id` (or the id its URL or record names),
    /// fetching at once. Mirroring the same source again changes nothing.
    pub async fn add(
        &self,
        source: &str,
        repo_id: Option<RepoId>,
    ) -> Result<MirrorView, MirrorError> {
        let (upstream, named, record) = match RecordSource::parse(source) {
            Some(record_source) => {
                let repo =
                    tangled::resolve(&self.xrpc, &self.atproto, &record_source, source).await?;
                let url = repo.git_url(self.atproto.allow_insecure_http);
                let upstream = Upstream::parse(&url, self.allow_local)?;
                (upstream, Some(repo.repo_id), Some(repo.record))
            }
            None => {
                let upstream = Upstream::parse(source, self.allow_local)?;
                let implied = upstream.implied_repo_id();
                (upstream, implied, None)
            }
        };
        if let (Some(given), Some(named), Some(_)) = (&repo_id, &named, &record)
            && given != named
        {
            return Err(MirrorError::OtherRepoId {
                given: given.clone(),
                named: named.clone(),
            });
        }
        let repo_id = repo_id
            .or(named)
            .ok_or_else(|| MirrorError::NoRepoId(source.to_owned()))?;
        if self.source_of(&repo_id).await?.is_none() && self.tracked(&repo_id).await? {
            return Err(MirrorError::Tracked(repo_id));
        }
        let row = MirrorRow {
            repo_id,
            source: upstream.url().to_owned(),
            record,
            added_at: unix_millis(),
        };
        self.ask(|reply| MirrorCommand::Add { row, reply }).await?
    }

    /// Stop mirroring `repo_id` and remove the repository from the node.
    pub async fn remove(&self, repo_id: RepoId) -> Result<(), MirrorError> {
        self.ask(|reply| MirrorCommand::Remove { repo_id, reply })
            .await?
    }

    /// Every mirror.
    pub async fn list(&self) -> Result<Vec<MirrorView>, MirrorError> {
        self.ask(|reply| MirrorCommand::List { reply }).await
    }

    /// Fetch `repo_id`'s upstream now and wait for the outcome.
    pub async fn sync(&self, repo_id: RepoId) -> Result<MirrorView, MirrorError> {
        self.ask(|reply| MirrorCommand::Sync { repo_id, reply })
            .await?
    }

    /// The source of `repo_id` when it is a mirror.
    pub async fn source_of(&self, repo_id: &RepoId) -> Result<Option<String>, MirrorError> {
        let repo_id = repo_id.clone();
        self.ask(|reply| MirrorCommand::Lookup { repo_id, reply })
            .await
    }

    async fn tracked(&self, repo_id: &RepoId) -> Result<bool, MirrorError> {
        match self.knot.command(crate::admin::Command::List).await {
            Ok(Payload::Repos { repos }) => Ok(repos.iter().any(|r| r.repo_id == repo_id.as_str())),
            Ok(_) => Ok(false),
            Err(e) => Err(MirrorError::Node(e.to_string())),
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> MirrorCommand,
    ) -> Result<T, MirrorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| MirrorError::Gone)?;
        rx.await.map_err(|_| MirrorError::Gone)
    }
}

/// Start the mirror service: the persisted mirrors plus those the
/// configuration names (a configured source that does not check stops the
/// start with its error).
pub fn spawn(
    config: &Config,
    store: Store,
    knot: KnotHandle,
    cancel: CancellationToken,
    tasks: &mut Supervised,
) -> Result<MirrorHandle, MirrorError> {
    let settings = MirrorSettings::from_config(config);
    let mut rows: BTreeMap<RepoId, MirrorRow> = store
        .load_mirrors()?
        .into_iter()
        .map(|row| (row.repo_id.clone(), row))
        .collect();
    for MirrorSource { source, repo_id } in &config.mirror.sources {
        if RecordSource::parse(source).is_some() {
            return Err(MirrorError::RecordInConfig(source.clone()));
        }
        let upstream = Upstream::parse(source, settings.allow_local)?;
        let repo_id = repo_id
            .clone()
            .or_else(|| upstream.implied_repo_id())
            .ok_or_else(|| MirrorError::NoRepoId(source.clone()))?;
        if let std::collections::btree_map::Entry::Vacant(slot) = rows.entry(repo_id.clone()) {
            let row = MirrorRow {
                repo_id,
                source: upstream.url().to_owned(),
                record: None,
                added_at: unix_millis(),
            };
            store.put_mirror(&row)?;
            slot.insert(row);
        }
    }
    let (tx, rx) = mpsc::channel(64);
    let handle = MirrorHandle {
        tx,
        knot: knot.clone(),
        allow_local: settings.allow_local,
        xrpc: XrpcClient::from_config(&config.atproto),
        atproto: config.atproto.clone(),
    };
    let (pushed_tx, pushed_rx) = mpsc::channel(256);
    let origin = Instant::now();
    let mut actor = Mirrors {
        planner: Planner::new(settings.plan.clone(), rand::random()),
        settings,
        store,
        knot,
        mirrors: BTreeMap::new(),
        waiters: HashMap::new(),
        fetches: JoinSet::new(),
        chores: JoinSet::new(),
        running: HashMap::new(),
        listeners: HashMap::new(),
        pushed_tx,
        pushed_rx,
        rx,
        origin,
        cancel,
    };
    for row in rows.into_values() {
        actor.insert(row);
    }
    info!(mirrors = actor.mirrors.len(), "mirror service running");
    tasks.spawn("mirror service", actor.run());
    Ok(handle)
}

/// One mirror as the actor knows it.
struct Mirror {
    row: MirrorRow,
    upstream: Upstream,
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

struct Mirrors {
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
}

impl Mirrors {
    async fn run(mut self) {
        loop {
            self.start_due();
            let wake = self.planner.next_wakeup().map(|d| self.origin + d);
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(command) = self.rx.recv() => self.handle_command(command),
                Some(ended) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    match ended {
                        Ok(end) => self.handle_fetched(end),
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => warn!(error = %e, "a mirror fetch task failed"),
                    }
                }
                Some(_) = self.chores.join_next(), if !self.chores.is_empty() => {}
                Some(pushed) = self.pushed_rx.recv() => self.handle_pushed(pushed),
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
            let host = gone.upstream.host();
            let still_used = self
                .mirrors
                .values()
                .any(|m| m.upstream.host() == host && has_push_events(&m.row, &m.upstream));
            if !still_used && let Some(listener) = self.listeners.remove(&host) {
                listener.cancel();
            }
        }
        self.planner.remove(&repo_id);
        if let Some(fetch) = self.running.remove(&repo_id) {
            fetch.abort();
        }
        for waiter in self.waiters.remove(&repo_id).unwrap_or_default() {
            let _ = waiter
                .reply
                .send(Err(MirrorError::NotMirrored(repo_id.clone())));
        }
        info!(repo = %repo_id, "no longer mirrored");
        let knot = self.knot.clone();
        let dir = repo_dir(&self.settings.dir, &repo_id);
        self.chores.spawn(async move {
            let removed = knot
                .command(crate::admin::Command::RemoveRepo {
                    repo_id: repo_id.clone(),
                })
                .await;
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(repo = %repo_id, dir = %dir.display(), error = %e, "cannot delete the mirror's repository");
            }
            let _ = reply.send(removed.map(|_| ()).or_else(|e| {
                // A mirror whose first fetch never worked was never tracked.
                if e.to_string().contains("not tracked") {
                    Ok(())
                } else {
                    Err(MirrorError::Node(e.to_string()))
                }
            }));
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

    fn handle_fetched(&mut self, end: FetchEnd) {
        self.running.remove(&end.repo_id);
        let now = self.now();
        let finished = match &end.result {
            Ok(_) => Finished::Succeeded,
            Err(failure) => Finished::Failed {
                retry_after: failure.retry_after,
            },
        };
        self.planner.finish(&end.repo_id, finished, now);
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
                } = fetched
                {
                    if !unchanged || mirror.manifest.is_none() {
                        mirror.last_change = mirror.last_success;
                    }
                    if !unchanged {
                        info!(repo = %end.repo_id, %manifest, "published the upstream's new refs");
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
        })
    }
}

fn failure_view(failure: &FetchFailure) -> MirrorFailure {
    let (class, status) = match failure.class {
        FailureClass::HttpStatus(code) => ("http-status".to_owned(), Some(code)),
        other => (
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{other:?}")),
            None,
        ),
    };
    MirrorFailure {
        class,
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

/// The mirror's own bare repository: named by a hash of the repository
/// id, so no id can reach outside `dir`.
fn repo_dir(dir: &Path, repo_id: &RepoId) -> PathBuf {
    let hash = blake3::hash(repo_id.as_str().as_bytes());
    dir.join(format!("{}.git", &hash.to_hex()[..32]))
}
