//! Which repositories may start a content job, and how long failures wait.
//!
//! [`JobQueue`] bounds the content jobs (publish, fetch, removal) running
//! at once across all repositories, so that a restart with a thousand
//! repositories does not start a thousand `git` processes. Repositories with
//! work wait in two FIFO lanes: interactive (an operator or a `git` client
//! is waiting) before background (gossip, records, start-up checks). With
//! more than one slot, background jobs never take the last one: however
//! long background fetches run (a slow provider, a stalling one), a publish
//! or a clone starts at once. At most one job runs per repository; that is
//! the caller's rule, the queue only counts. [`backoff`] is the one retry
//! schedule of the core. Pure data.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
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
    running: BTreeMap<RepoId, Lane>,
    interactive: VecDeque<RepoId>,
    background: VecDeque<RepoId>,
    queued: BTreeSet<RepoId>,
}

impl JobQueue {
    /// A queue allowing `max_running` jobs at once (at least one).
    pub fn new(max_running: usize) -> Self {
        Self {
            max_running: max_running.max(1),
            running: BTreeMap::new(),
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

    /// Most background jobs at once: all slots but one kept for
    /// interactive work, when there is more than one.
    fn max_background(&self) -> usize {
        self.max_running.saturating_sub(1).max(1)
    }

    /// The next repository to give a slot to, and its lane, if a slot is
    /// free for it. The caller starts its job and calls
    /// [`JobQueue::started`], or drops it when it has nothing to do after all.
    pub fn pop(&mut self) -> Option<(RepoId, Lane)> {
        if self.running.len() >= self.max_running {
            return None;
        }
        let (repo, lane) = match self.interactive.pop_front() {
            Some(repo) => (repo, Lane::Interactive),
            None => {
                let background = self
                    .running
                    .values()
                    .filter(|l| **l == Lane::Background)
                    .count();
                if background >= self.max_background() {
                    return None;
                }
                (self.background.pop_front()?, Lane::Background)
            }
        };
        self.queued.remove(&repo);
        Some((repo, lane))
    }

    /// `repo`'s job took a slot of `lane`.
    pub fn started(&mut self, repo: &RepoId, lane: Lane) {
        self.running.insert(repo.clone(), lane);
    }

    /// `repo`'s job gave its slot back.
    pub fn finished(&mut self, repo: &RepoId) {
        self.running.remove(repo);
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.len()
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

    /// Start every job the queue allows; returns the repositories started.
    fn start_all(q: &mut JobQueue) -> Vec<RepoId> {
        let mut started = Vec::new();
        while let Some((r, lane)) = q.pop() {
            q.started(&r, lane);
            started.push(r);
        }
        started
    }

    #[test]
    fn slots_bound_running_jobs() {
        let mut q = JobQueue::new(3);
        for n in 0..5 {
            q.push(&rid(n), Lane::Background);
        }
        assert_eq!(q.waiting(), 5);
        assert_eq!(start_all(&mut q), vec![rid(0), rid(1)]);
        q.push(&rid(9), Lane::Interactive);
        assert_eq!(start_all(&mut q), vec![rid(9)]);
        assert_eq!(q.running(), 3);
        q.finished(&rid(0));
        assert_eq!(q.pop().map(|(r, _)| r), Some(rid(2)));
    }

    #[test]
    fn background_jobs_leave_a_slot_for_interactive_work() {
        let mut q = JobQueue::new(4);
        for n in 0..6 {
            q.push(&rid(n), Lane::Background);
        }
        assert_eq!(start_all(&mut q).len(), 3, "one slot kept free");
        // A publish or clone starts at once, however long those run.
        q.push(&rid(10), Lane::Interactive);
        assert_eq!(q.pop(), Some((rid(10), Lane::Interactive)));
        q.started(&rid(10), Lane::Interactive);
        assert_eq!(q.pop(), None, "every slot is taken");
        // A background job ending frees a background slot.
        q.finished(&rid(0));
        assert_eq!(q.pop(), Some((rid(3), Lane::Background)));
        // With one slot, background work still runs.
        let mut one = JobQueue::new(1);
        one.push(&rid(1), Lane::Background);
        assert_eq!(start_all(&mut one), vec![rid(1)]);
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
        let order: Vec<RepoId> = std::iter::from_fn(|| q.pop().map(|(r, _)| r)).collect();
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
