//! Direct pulls (`/knot/heads/1`): asking a peer what it holds of some
//! repositories. The sweeps (rejoin, resync, start-up) and single
//! repositories (a neighbour came up, a caller waits) queue, per peer, the
//! repositories to ask about; the queue sends them in pulls of at most
//! [`MAX_PULL_REPOS`], one pull per peer at a time and at most one every
//! [`PULL_SPACING`] (a peer's heads server admits a few a second from one
//! peer), so that 10,000 repositories shared with one peer are all asked
//! about, not only what the actor has room for at once. A pull the actor
//! had no room for goes back to the queue and waits
//! [`DEFERRED_PULL_WAIT`]; a failed pull puts the peer in backoff and drops
//! what was queued for it (the next sweep queues it again); a pull nobody
//! reports on counts as done after [`PULL_STALE`]. Kept in memory only.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use iroh::EndpointId;
use tracing::debug;

use super::{
    io::{Effect, MAX_PULL_REPOS, Now, TimerKey, later},
    machine::Core,
    queue,
    tables::MAX_PULL_PEERS,
};
use crate::repo_id::RepoId;

/// How long a pull the actor had no room for waits before it is sent again.
pub const DEFERRED_PULL_WAIT: Duration = Duration::from_secs(2);
/// Least time between two pulls sent to one peer from its queue.
pub const PULL_SPACING: Duration = Duration::from_millis(300);
/// A pull not reported on after this long no longer holds up the queue.
pub const PULL_STALE: Duration = Duration::from_secs(60);

/// What is still to be asked of one peer.
#[derive(Debug, Clone, Default)]
pub struct PullQueue {
    /// Repositories asked about for a reason of their own (a neighbour came
    /// up, a caller waits): sent first, and kept when a pull they were not
    /// in fails.
    pub urgent: BTreeSet<RepoId>,
    /// Repositories to ask about (only tracked ones are queued).
    pub waiting: BTreeSet<RepoId>,
    /// When the pull under way was sent.
    pub in_flight_since: Option<Instant>,
    /// No pull before this time.
    pub next_at: Option<Instant>,
}

impl PullQueue {
    fn in_flight(&self, now: Instant) -> bool {
        self.in_flight_since
            .is_some_and(|t| later(t, PULL_STALE) > now)
    }
}

impl Core {
    /// Ask each peer about its repositories, unless it is backing off.
    pub(super) fn pull_batches(&mut self, batches: BTreeMap<EndpointId, Vec<RepoId>>, now: Now) {
        for (peer, repos) in batches {
            let backoff = self.pulls.get(&peer).copied().unwrap_or_default();
            if !super::is_due(backoff.not_before, now) {
                continue;
            }
            self.queue_pulls(peer, repos);
            self.send_pulls(peer, now);
        }
    }

    /// Ask `peer` about one repository. Unlike a sweep's pulls this one
    /// does not wait out the peer's backoff (something happened: a
    /// neighbour came up, a caller waits), but it joins the peer's queue,
    /// so a burst of them to one peer goes out as a few pulls, not one
    /// connection per repository the peer's server would refuse.
    pub(super) fn pull_one(&mut self, peer: EndpointId, repo: RepoId, now: Now) {
        if !self.repos.contains_key(&repo) || !self.may_queue(peer) {
            return;
        }
        let queue = self.pull_queues.entry(peer).or_default();
        queue.waiting.remove(&repo);
        queue.urgent.insert(repo);
        self.send_pulls(peer, now);
    }

    /// Queue the tracked ones of `repos` for `peer` (at most
    /// [`MAX_PULL_PEERS`] peers have a queue).
    fn queue_pulls(&mut self, peer: EndpointId, repos: Vec<RepoId>) {
        let tracked: Vec<RepoId> = repos
            .into_iter()
            .filter(|r| self.repos.contains_key(r))
            .collect();
        if tracked.is_empty() || !self.may_queue(peer) {
            return;
        }
        self.pull_queues
            .entry(peer)
            .or_default()
            .waiting
            .extend(tracked);
    }

    /// Whether `peer` has a queue or may get one (at most
    /// [`MAX_PULL_PEERS`] peers have a queue).
    fn may_queue(&self, peer: EndpointId) -> bool {
        self.pull_queues.contains_key(&peer) || self.pull_queues.len() < MAX_PULL_PEERS
    }

    /// Send `peer` its next pull if none is under way and its time has
    /// come; otherwise make sure the timer looks again when it may.
    fn send_pulls(&mut self, peer: EndpointId, now: Now) {
        let Some(queue) = self.pull_queues.get_mut(&peer) else {
            return;
        };
        if queue.waiting.is_empty() && queue.urgent.is_empty() {
            if !queue.in_flight(now.at) {
                self.pull_queues.remove(&peer);
            }
            return;
        }
        if let Some(since) = queue.in_flight_since.filter(|_| queue.in_flight(now.at)) {
            let stale = later(since, PULL_STALE);
            self.arm_pull_timer(stale);
            return;
        }
        if let Some(at) = queue.next_at.filter(|at| *at > now.at) {
            self.arm_pull_timer(at);
            return;
        }
        let mut repos = Vec::new();
        while repos.len() < MAX_PULL_REPOS {
            let next = match queue.urgent.pop_first() {
                Some(repo) => Some(repo),
                None => queue.waiting.pop_first(),
            };
            match next {
                // Removed since it was queued: not asked about.
                Some(repo) if !self.repos.contains_key(&repo) => {}
                Some(repo) => repos.push(repo),
                None => break,
            }
        }
        if repos.is_empty() {
            return self.send_pulls(peer, now);
        }
        queue.in_flight_since = Some(now.at);
        queue.next_at = Some(later(now.at, PULL_SPACING));
        self.out.push(Effect::Pull { peer, repos });
    }

    /// Make sure the queues are looked at no later than `due`.
    fn arm_pull_timer(&mut self, due: Instant) {
        if super::arm_earlier(&mut self.pull_timer, due) {
            self.set_timer(TimerKey::DeferredPulls, due);
        }
    }

    /// The queues' timer: send every pull whose time has come.
    pub(super) fn deferred_pulls(&mut self, now: Now) {
        self.pull_timer = None;
        let peers: Vec<EndpointId> = self.pull_queues.keys().copied().collect();
        for peer in peers {
            self.send_pulls(peer, now);
        }
    }

    /// The actor had no room for a pull: its repositories go back to the
    /// peer's queue, sent again [`DEFERRED_PULL_WAIT`] later.
    pub(super) fn pull_busy(&mut self, peer: EndpointId, repos: Vec<RepoId>, now: Now) {
        self.counters.pulls_deferred += 1;
        if let Some(queue) = self.pull_queues.get_mut(&peer) {
            queue.in_flight_since = None;
        }
        self.queue_pulls(peer, repos);
        let due = later(now.at, DEFERRED_PULL_WAIT);
        if let Some(queue) = self.pull_queues.get_mut(&peer) {
            queue.next_at = Some(queue.next_at.map_or(due, |t| t.max(due)));
            self.arm_pull_timer(due);
        }
    }

    /// A pull ended: the next one goes out, or after a failure the peer
    /// backs off and its queue is dropped.
    pub(super) fn handle_pulled(&mut self, peer: EndpointId, ok: bool, now: Now) {
        if let Some(queue) = self.pull_queues.get_mut(&peer) {
            queue.in_flight_since = None;
        }
        if ok {
            self.pulls.remove(&peer);
            self.send_pulls(peer, now);
            return;
        }
        if let Some(mut queue) = self.pull_queues.remove(&peer) {
            if !queue.waiting.is_empty() {
                debug!(peer = %peer.fmt_short(), dropped = queue.waiting.len(), "a pull failed; the peer's queued pulls wait for the next sweep");
            }
            // Repositories asked about for a reason of their own that the
            // failed pull did not carry are still asked, once, after the
            // usual spacing (each is sent at most once per reason).
            if !queue.urgent.is_empty() {
                queue.waiting.clear();
                queue.next_at = Some(later(now.at, PULL_SPACING));
                self.pull_queues.insert(peer, queue);
                self.send_pulls(peer, now);
            }
        }
        if self.pulls.len() >= MAX_PULL_PEERS && !self.pulls.contains_key(&peer) {
            // Forget peers whose backoff ran out rather than grow without bound.
            self.pulls
                .retain(|_, b| b.not_before.is_some_and(|t| t > now.at));
            if self.pulls.len() >= MAX_PULL_PEERS {
                return;
            }
        }
        let entry = self.pulls.entry(peer).or_default();
        entry.failures = entry.failures.saturating_add(1);
        let wait = queue::backoff(
            self.settings.rejoin_base,
            self.settings.rejoin_max,
            entry.failures,
        );
        entry.not_before = Some(later(now.at, wait));
    }
}
