//! Mirrors: repositories this node keeps from a git upstream that is not a
//! knot (a Tangled knot, any git server), published as knot states so that
//! other knots replicate them and `git clone` works while the upstream is
//! down.
//!
//! Owns the list of mirrors (persisted in the store, `mirrors_v1`), one bare
//! repository per mirror under `<data_dir>/mirrors/`, and the schedule of
//! fetches ([`plan`], sans-IO). One actor ([`MirrorHandle`] to reach it;
//! the loop in `service.rs`) runs over admin commands, finished fetches,
//! push events, records read again and the schedule's next wake-up; each
//! fetch is a child task (`job.rs`): `git clone --mirror` the first time,
//! then `git fetch --prune` ([`upstream`]), and the node publishes the
//! mirror's repository as the repository's new state (non-fast-forwards
//! included: the upstream is the authority), signed by this node. A mirror
//! never writes to its owner's records.
//!
//! What survives a restart: the list of mirrors (with their current
//! sources), their repositories and the knots' event cursors; the schedule
//! and the last outcomes do not (every mirror fetches once at start, and
//! publishing what is already held changes nothing).

pub mod events;
pub mod failure;
pub mod plan;
pub mod tangled;
pub mod upstream;

mod admin;
mod job;
mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use admin::WithMirrors;
use plan::PlanSettings;
use tangled::{RecordSource, TangledError};
use upstream::{Limits, SourceError, Upstream};

use crate::{
    api::MirrorView,
    atproto::XrpcClient,
    clock::unix_millis,
    config::{AtprotoConfig, Config, MirrorSource},
    knot::KnotHandle,
    metrics::Metrics,
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
                check_objects: m.check_objects,
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
    store: Store,
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
            rewrites: Vec::new(),
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
        let (store, id) = (self.store.clone(), repo_id.clone());
        tokio::task::spawn_blocking(move || store.has_repo(&id))
            .await
            .map_err(|_| MirrorError::Gone)?
            .map_err(MirrorError::from)
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
    metrics: Option<Arc<Metrics>>,
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
                rewrites: Vec::new(),
            };
            store.put_mirror(&row)?;
            slot.insert(row);
        }
    }
    let (tx, rx) = mpsc::channel(64);
    let handle = MirrorHandle {
        tx,
        store: store.clone(),
        allow_local: settings.allow_local,
        xrpc: XrpcClient::from_config(&config.atproto),
        atproto: config.atproto.clone(),
    };
    let service = service::Mirrors::new(service::Parts {
        settings,
        store,
        knot,
        rx,
        cancel,
        metrics,
        xrpc: handle.xrpc.clone(),
        atproto: handle.atproto.clone(),
        rows: rows.into_values().collect(),
    });
    tasks.spawn("mirror service", service.run());
    Ok(handle)
}

/// The mirror's own bare repository: named by a hash of the repository
/// id, so no id can reach outside `dir`.
fn repo_dir(dir: &Path, repo_id: &RepoId) -> PathBuf {
    let hash = blake3::hash(repo_id.as_str().as_bytes());
    dir.join(format!("{}.git", &hash.to_hex()[..32]))
}
