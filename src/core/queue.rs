//! Which repositories may start a content job, and how long failures wait.
//!
//! [`JobQueue`] bounds the content jobs (publish, fetch, removal) running
//! at once across all repositories, so that a restart with a thousand
//! repositories does not start a thousand `git` processes. Repositories with
//! work wait in two FIFO lanes: interactive (an operator or a `git` client
//! is waiting) before background (gossip, records, start-up checks). At most
//! one job runs per repository; that is the caller's rule, the queue only
//! counts. [`backoff`] is the one retry schedule of the core. Pure data.

use std::{
    collections::{BTreeSet, VecDeque},
    time::Duration,
};

use crate::repo_id::RepoId;

/// How urgent a repository's next job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lane {
    /// Someone is waiting for it.
    Interactive,
    /// Nobody is waiting.
    Background,
}

/// Repositories waiting for a job slot, and the slots in use.
#[derive(Debug)]
pub struct JobQueue {
    max_running: usize,
    running: usize,
    interactive: VecDeque<RepoId>,
    background: VecDeque<RepoId>,
    queued: BTreeSet<RepoId>,
}

impl JobQueue {
    /// A queue allowing `max_running` jobs at once (at least one).
    pub fn new(max_running: usize) -> Self {
        Self {
            max_running: max_running.max(1),
            running: 0,
            interactive: VecDeque::new(),
            background: VecDeque::new(),
            queued: BTreeSet::new(),
        }
    }

    /// Note that `repo` has work. Queued once; an interactive request moves
    /// a repository waiting in the background lane to the interactive one.
    pub fn push(&mut self, repo: &RepoId, lane: Lane) {
        if self.queued.contains(repo) {
            if lane == Lane::Interactive && self.background.contains(repo) {
                self.background.retain(|r| r != repo);
                self.interactive.push_back(repo.clone());
            }
            return;
        }
        self.queued.insert(repo.clone());
        match lane {
            Lane::Interactive => self.interactive.push_back(repo.clone()),
            Lane::Background => self.background.push_back(repo.clone()),
        }
    }

    /// The next repository to give a slot to, if a slot is free. The caller
    /// starts its job and calls [`JobQueue::started`], or drops it when it
    /// has nothing to do after all.
    pub fn pop(&mut self) -> Option<RepoId> {
        if self.running >= self.max_running {
            return None;
        }
        let repo = self
            .interactive
            .pop_front()
            .or_else(|| self.background.pop_front())?;
        self.queued.remove(&repo);
        Some(repo)
    }

    /// A job took a slot.
    pub fn started(&mut self) {
        self.running += 1;
    }

    /// A job gave its slot back.
    pub fn finished(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Repositories waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.queued.len()
    }
}

/// The wait before attempt `attempts + 1` after `attempts` failures: `base`
/// doubling per failure, capped at `max`.
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(n: u32) -> RepoId {
        RepoId::parse(&format!("did:plc:a/r{n}")).unwrap()
    }

    #[test]
    fn slots_bound_running_jobs() {
        let mut q = JobQueue::new(2);
        for n in 0..5 {
            q.push(&rid(n), Lane::Background);
        }
        assert_eq!(q.waiting(), 5);
        let mut started = Vec::new();
        while let Some(r) = q.pop() {
            q.started();
            started.push(r);
        }
        assert_eq!(started, vec![rid(0), rid(1)]);
        q.finished();
        assert_eq!(q.pop(), Some(rid(2)));
    }

    #[test]
    fn interactive_work_goes_first_and_each_repository_queues_once() {
        let mut q = JobQueue::new(1);
        q.push(&rid(1), Lane::Background);
        q.push(&rid(2), Lane::Background);
        q.push(&rid(1), Lane::Background);
        q.push(&rid(3), Lane::Interactive);
        q.push(&rid(2), Lane::Interactive);
        assert_eq!(q.waiting(), 3);
        let order: Vec<RepoId> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![rid(3), rid(2), rid(1)]);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let (b, m) = (Duration::from_secs(5), Duration::from_secs(300));
        assert_eq!(backoff(b, m, 0), b);
        assert_eq!(backoff(b, m, 1), b);
        assert_eq!(backoff(b, m, 2), b * 2);
        assert_eq!(backoff(b, m, 3), b * 4);
        assert_eq!(backoff(b, m, u32::MAX), m);
    }
}
