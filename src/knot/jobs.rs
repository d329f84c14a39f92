//! Content jobs as the actor runs them: each [`Effect::StartJob`] spawns
//! [`content::jobs::run`] as a child task and what it ends with goes back
//! to the core as [`Event::JobDone`]; a fetch's progress goes to watchers.
//! The sequences themselves live in [`content::jobs`]. Owns the node's
//! [`Optimizer`], stopped with the jobs at shutdown. Nothing here survives
//! a restart: the core resumes interrupted fetches when it loads.
//!
//! [`Effect::StartJob`]: crate::core::Effect::StartJob

use std::{collections::HashMap, path::PathBuf};

use tokio::{
    sync::broadcast,
    task::{self, JoinError, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::KnotParts;
use crate::{
    admin::{EventLine, NodeEvent},
    clock,
    content::{
        self, Optimizer,
        jobs::{JobContext, JobOutcome, ReportProgress},
    },
    core::{Event, JobId, JobSpec},
    repo_id::RepoId,
};

/// The content jobs running, and what they need.
pub(super) struct Jobs {
    set: JoinSet<JobOutcome>,
    ids: HashMap<task::Id, (RepoId, JobId)>,
    ctx: JobContext,
    events: broadcast::Sender<EventLine>,
}

impl Jobs {
    /// Nothing running yet; jobs materialize under `repos_root`, and
    /// background optimizations stop when `cancel` fires.
    pub(super) fn new(
        parts: &KnotParts,
        repos_root: PathBuf,
        cancel: CancellationToken,
        events: broadcast::Sender<EventLine>,
    ) -> Self {
        let config = &parts.config;
        let ctx = JobContext {
            blobs: parts.blobs.clone(),
            gc_guard: parts.gc_guard.clone(),
            endpoint: parts.endpoint.clone(),
            repos_root,
            data_dir: config.data_dir.clone(),
            fetch_timeout: config.fetch_timeout(),
            max_packs: config.max_packs,
            optimizer: Optimizer::new(cancel),
        };
        Self {
            set: JoinSet::new(),
            ids: HashMap::new(),
            ctx,
            events,
        }
    }

    /// Start job `job` of `repo`.
    pub(super) fn start(&mut self, repo: RepoId, job: JobId, spec: JobSpec) {
        let progress = self.progress(&repo, &spec);
        let run = content::jobs::run(self.ctx.clone(), repo.clone(), spec, progress);
        let handle = self.set.spawn(run);
        self.ids.insert(handle.id(), (repo, job));
    }

    /// Where a job's progress goes: a fetch's to watchers.
    fn progress(&self, repo: &RepoId, spec: &JobSpec) -> ReportProgress {
        let JobSpec::Fetch { manifest, .. } = spec else {
            return Box::new(|_| {});
        };
        let events = self.events.clone();
        let manifest = manifest.to_hex();
        let repo = repo.to_string();
        Box::new(move |progress| {
            // Nobody watching is fine.
            let _ = events.send(EventLine {
                at_ms: clock::unix_millis(),
                repo: Some(repo.clone()),
                event: NodeEvent::FetchProgress {
                    manifest: manifest.clone(),
                    bytes: progress.bytes,
                    total: Some(progress.total),
                },
            });
        })
    }

    /// The next job to end, as an event for the core; waits while none
    /// runs. Cancel-safe.
    pub(super) async fn next(&mut self) -> Event {
        loop {
            let Some(done) = self.set.join_next_with_id().await else {
                return std::future::pending().await;
            };
            if let Some(event) = self.finished(done) {
                return event;
            }
        }
    }

    fn finished(&mut self, done: Result<(task::Id, JobOutcome), JoinError>) -> Option<Event> {
        let (task, (result, faults)) = match done {
            Ok(done) => done,
            Err(e) => {
                error!(error = %e, "a content job panicked");
                (
                    e.id(),
                    (
                        Err(format!("internal error: the job stopped: {e}").into()),
                        Vec::new(),
                    ),
                )
            }
        };
        let (repo, job) = self.ids.remove(&task)?;
        Some(Event::JobDone {
            repo,
            job,
            result,
            faults,
        })
    }

    /// Stop every job (each leaves what it did for the core to resume or
    /// check at the next start), then the background optimizations.
    pub(super) async fn shutdown(&mut self) {
        self.set.shutdown().await;
        self.ctx.optimizer.shutdown().await;
    }
}
