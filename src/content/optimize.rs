//! Background runs writing a materialized repository's multi-pack-index
//! and bitmap ([`materialize::optimize`]): they speed up serving clones but
//! are no part of a state, so content jobs ask for one and do not wait.
//!
//! An [`Optimizer`] is owned by the node's repository actor, which creates
//! it and shuts it down. It runs at most one optimization per repository
//! at a time (git removes the other run's locks), on blocking threads;
//! requests for a repository being optimized are coalesced into one more
//! run after it. Once shut down it starts nothing, and shutting down waits
//! for the runs under way (each bounded by the git timeout), so no run
//! outlives the node that asked for it. Nothing here survives a restart:
//! the next new state of a repository asks again.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use crate::materialize;

/// What one optimization of a repository directory does.
type Run = dyn Fn(&Path) + Send + Sync;

/// Coalesced background optimizations; clones share them.
#[derive(Clone)]
pub struct Optimizer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Repositories being optimized, and whether another run was asked for.
    running: Mutex<HashMap<PathBuf, bool>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    run: Box<Run>,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("running", &self.inner.tasks.len())
            .finish()
    }
}

impl Optimizer {
    /// An optimizer that stops when `cancel` fires (or [`Optimizer::shutdown`]).
    pub fn new(cancel: CancellationToken) -> Self {
        Self::with_run(cancel, |dest| {
            if let Err(e) = materialize::optimize(dest) {
                // Serving works without it; the next update tries again.
                debug!(path = %dest.display(), error = %e, "cannot write the multi-pack-index");
            }
        })
    }

    fn with_run(cancel: CancellationToken, run: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                running: Mutex::default(),
                tasks: TaskTracker::new(),
                cancel,
                run: Box::new(run),
            }),
        }
    }

    /// Optimize the repository at `dest` in the background: now, or once
    /// more after the run under way for it. Nothing once shut down.
    pub fn optimize_later(&self, dest: PathBuf) {
        if self.inner.cancel.is_cancelled() {
            return;
        }
        {
            let mut running = self.inner.lock();
            if let Some(again) = running.get_mut(&dest) {
                *again = true;
                return;
            }
            running.insert(dest.clone(), false);
        }
        let inner = self.inner.clone();
        self.inner.tasks.spawn_blocking(move || {
            loop {
                if !inner.cancel.is_cancelled() {
                    (inner.run)(&dest);
                }
                let mut running = inner.lock();
                if running.get(&dest) == Some(&true) && !inner.cancel.is_cancelled() {
                    running.insert(dest.clone(), false);
                    continue;
                }
                running.remove(&dest);
                break;
            }
        });
    }

    /// Start nothing more, and wait for the runs under way to end.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, bool>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    };

    use super::*;

    /// An optimizer whose runs count themselves and each wait for a go.
    fn counting() -> (Optimizer, Arc<AtomicUsize>, mpsc::SyncSender<()>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let (go, wait) = mpsc::sync_channel::<()>(16);
        let wait = Mutex::new(wait);
        let counted = runs.clone();
        let optimizer = Optimizer::with_run(CancellationToken::new(), move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = wait.lock().unwrap().recv();
        });
        (optimizer, runs, go)
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..1000 {
            if check() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_during_a_run_are_coalesced_into_one_more() {
        let (optimizer, runs, go) = counting();
        let dest = PathBuf::from("/data/repos/did:plc:a/b.git");
        optimizer.optimize_later(dest.clone());
        until("the first run", || runs.load(Ordering::SeqCst) == 1).await;
        for _ in 0..5 {
            optimizer.optimize_later(dest.clone());
        }
        go.send(()).unwrap();
        until("the second run", || runs.load(Ordering::SeqCst) == 2).await;
        go.send(()).unwrap();
        optimizer.shutdown().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(optimizer.inner.lock().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutting_down_waits_for_the_run_under_way_and_starts_no_more() {
        let (optimizer, runs, go) = counting();
        let dest = PathBuf::from("/data/repos/did:plc:a/b.git");
        optimizer.optimize_later(dest.clone());
        until("the first run", || runs.load(Ordering::SeqCst) == 1).await;
        optimizer.optimize_later(dest.clone());
        let stopping = tokio::spawn({
            let optimizer = optimizer.clone();
            async move { optimizer.shutdown().await }
        });
        until("the cancellation", || optimizer.inner.cancel.is_cancelled()).await;
        assert!(!stopping.is_finished(), "shutdown did not wait for the run");
        go.send(()).unwrap();
        stopping.await.unwrap();
        optimizer.optimize_later(dest);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "a run started after shutdown"
        );
        assert!(optimizer.inner.lock().is_empty());
    }
}
