//! Content jobs as the actor runs them: each [`Effect::StartJob`] spawns
//! [`content::jobs::run`] as a child task and what it ends with goes back
//! to the core as [`Event::JobDone`]. Its progress goes to the core too
//! ([`Event::JobProgress`]), which tells watchers while the job is still
//! the repository's: through a bounded channel a job never waits on (when
//! it is full, progress is dropped), and read before the job's end, so
//! what a job reported arrives before its result. The sequences themselves
//! live in [`content::jobs`]. Owns the node's
//! [`Optimizer`], stopped with the jobs at shutdown. Nothing here survives
//! a restart: the core resumes interrupted fetches when it loads.
//!
//! [`Effect::StartJob`]: crate::core::Effect::StartJob

use std::{collections::HashMap, path::PathBuf};

use tokio::{
    sync::mpsc,
    task::{self, JoinError, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::KnotParts;
use crate::{
    content::{
        self, Optimizer,
        jobs::{JobContext, JobOutcome, LargeJobs, ReportProgress},
    },
    core::{Event, JobId, JobProgress, JobSpec},
    repo_id::RepoId,
};

/// Progress reports of all jobs waiting for the actor; more are dropped.
const PROGRESS_BUFFER: usize = 256;

/// One job's progress report.
type Report = (RepoId, JobId, JobProgress);

/// The content jobs running, and what they need.
pub(super) struct Jobs {
    set: JoinSet<JobOutcome>,
    ids: HashMap<task::Id, (RepoId, JobId)>,
    ctx: JobContext,
    progress_tx: mpsc::Sender<Report>,
    progress_rx: mpsc::Receiver<Report>,
}

impl Jobs {
    /// Nothing running yet; jobs materialize under `repos_root`, and
    /// background optimizations stop when `cancel` fires.
    pub(super) fn new(parts: &KnotParts, repos_root: PathBuf, cancel: CancellationToken) -> Self {
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
            large_jobs: LargeJobs::new(config.max_large_jobs),
            // Checked when the node started (`Config::check`).
            indexer: config.pack_indexer().unwrap_or_default(),
        };
        let (progress_tx, progress_rx) = mpsc::channel(PROGRESS_BUFFER);
        Self {
            set: JoinSet::new(),
            ids: HashMap::new(),
            ctx,
            progress_tx,
            progress_rx,
        }
    }

    /// Start job `job` of `repo` (`interactive` when someone waits on it).
    pub(super) fn start(&mut self, repo: RepoId, job: JobId, spec: JobSpec, interactive: bool) {
        let progress = forward_progress(self.progress_tx.clone(), repo.clone(), job);
        let run = content::jobs::run(self.ctx.clone(), repo.clone(), spec, interactive, progress);
        let handle = self.set.spawn(run);
        self.ids.insert(handle.id(), (repo, job));
    }

    /// The next progress report or end of a job, as an event for the
    /// core; waits while there is none. Reports come first, so those a
    /// job sent before it ended are not overtaken by its end. Cancel-safe.
    pub(super) async fn next(&mut self) -> Event {
        loop {
            tokio::select! {
                biased;
                Some((repo, job, progress)) = self.progress_rx.recv() => {
                    return Event::JobProgress { repo, job, progress };
                }
                Some(done) = self.set.join_next_with_id(), if !self.set.is_empty() => {
                    if let Some(event) = self.finished(done) {
                        return event;
                    }
                }
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

/// Where job `job` of `repo` reports its progress: into the actor's
/// channel, or nowhere when it is full (a job never waits for the actor).
fn forward_progress(tx: mpsc::Sender<Report>, repo: RepoId, job: JobId) -> ReportProgress {
    Box::new(move |progress| {
        let _ = tx.try_send((repo.clone(), job, progress));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_is_dropped_rather_than_waited_for_when_the_actor_lags() {
        let (tx, mut rx) = mpsc::channel(2);
        let repo = RepoId::parse("did:plc:abc/site").unwrap();
        let report = forward_progress(tx, repo.clone(), 7);
        for bytes in 1..=5 {
            report(JobProgress { bytes, total: 5 });
        }
        let progress = |bytes| (repo.clone(), 7, JobProgress { bytes, total: 5 });
        assert_eq!(rx.recv().await, Some(progress(1)));
        assert_eq!(rx.recv().await, Some(progress(2)));
        assert!(
            rx.try_recv().is_err(),
            "reports beyond the buffer are dropped"
        );
        report(JobProgress { bytes: 5, total: 5 });
        assert_eq!(rx.recv().await, Some(progress(5)));
    }
}
