//! Gossip across repositories: the rejoin sweep (a topic left without
//! neighbours re-dials its peers and pulls their announcements, with a
//! backoff per repository and per peer), the resync sweep (trusted peers
//! are asked directly what they hold, however quiet the topic; the pulls
//! themselves are [`super::pulls`]), the sleep sweep (topics without news
//! for a while are left, and joined again by the next news), and the
//! counters of announcements. What one announcement does to its
//! repository is [`super::repo::Repo::on_announcement`].

use std::{collections::BTreeMap, time::Duration};

use iroh::EndpointId;
use tracing::debug;

use super::{
    io::{Busy, Effect, Now, TimerKey},
    machine::Core,
    queue,
};
use crate::repo_id::RepoId;

/// How often quiet topics are looked for: half the idle time, at least a
/// second and at most a minute.
pub fn sleep_check_every(idle: Duration) -> Duration {
    (idle / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

impl Core {
    /// The actor had no room for network work: a push is not sent again
    /// (gossip and the resync sweep carry the state too), a pull is put
    /// back in its peer's queue (see [`super::pulls`]).
    pub(super) fn handle_net_busy(&mut self, busy: Busy, now: Now) {
        match busy {
            Busy::Push { peer } => {
                self.counters.pushes_dropped += 1;
                debug!(peer = %peer.fmt_short(), "a direct push was not sent: too many exchanges in flight, or past the rate the peer admits");
            }
            Busy::Pull { peer, repos } => self.pull_busy(peer, repos, now),
        }
    }

    /// Join `repo_id`'s topic when it wants one (see [`Repo::ensure_topic`]).
    pub(super) fn ensure_topic(&mut self, repo_id: &RepoId, now: Now) {
        self.with_repo(repo_id, now, |r, ctx| r.ensure_topic(ctx));
    }

    /// News of `repo_id`: keep its topic joined (see [`Repo::wake`]).
    pub(super) fn wake(&mut self, repo_id: &RepoId, now: Now) {
        self.with_repo(repo_id, now, |r, ctx| r.wake(ctx));
    }

    /// Leave the topics of repositories without news for
    /// [`Settings::topic_idle`](super::Settings) and with nothing running
    /// (see [`Repo::awake`]), then check again in [`sleep_check_every`].
    pub(super) fn sleep_sweep(&mut self, now: Now) {
        let Some(idle) = self.settings.topic_idle else {
            return;
        };
        let mut left = 0usize;
        for (repo_id, repo) in &mut self.repos {
            if repo.topic.is_some() && !repo.awake(Some(idle), now.at) {
                repo.topic = None;
                self.out.push(Effect::LeaveTopic {
                    repo: repo_id.clone(),
                });
                left += 1;
            }
        }
        if left > 0 {
            debug!(left, "left the topics of quiet repositories");
        }
        self.set_timer(
            TimerKey::TopicSleep,
            super::later(now.at, sleep_check_every(idle)),
        );
    }

    /// At start-up, when topics are left while quiet: ask the peers of
    /// every repository that would have joined its topic what they hold,
    /// one pull per peer, as joining would have done (a neighbour is
    /// pulled when it comes up). What is newer wakes the repository.
    pub(super) fn startup_pulls(&mut self, now: Now) {
        let me = self.me;
        let mut batches: BTreeMap<EndpointId, Vec<RepoId>> = BTreeMap::new();
        for (repo_id, repo) in &self.repos {
            if !repo.wants_topic() || repo.topic.is_some() {
                continue;
            }
            for peer in repo.dial_targets(me) {
                batches.entry(peer).or_default().push(repo_id.clone());
            }
        }
        self.pull_batches(batches, now);
    }

    /// Make sure the rejoin sweep runs no later than `due`.
    pub(super) fn arm_rejoin(&mut self, due: std::time::Instant) {
        if super::arm_earlier(&mut self.rejoin_timer, due) {
            self.set_timer(TimerKey::Rejoin, due);
        }
    }

    /// Re-dial the peers of every topic without neighbours whose turn has
    /// come, and pull their announcements, one pull per peer.
    pub(super) fn rejoin_sweep(&mut self, now: Now) {
        self.rejoin_timer = None;
        let me = self.me;
        let (base, max) = (self.settings.rejoin_base, self.settings.rejoin_max);
        let mut batches: BTreeMap<EndpointId, Vec<RepoId>> = BTreeMap::new();
        let mut next: Option<std::time::Instant> = None;
        for (repo_id, repo) in &mut self.repos {
            let Some(topic) = repo.topic.as_ref().filter(|t| t.neighbors.is_empty()) else {
                continue;
            };
            let Some(due) = topic.rejoin_due else {
                continue;
            };
            if due > now.at {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            // Only a topic whose turn came costs its peers' look-up: the
            // sweep passes over every repository, often during a burst.
            let targets = repo.dial_targets(me);
            let Some(topic) = repo.topic.as_mut() else {
                continue;
            };
            topic.rejoin_attempts = topic.rejoin_attempts.saturating_add(1);
            let due = super::later(now.at, queue::backoff(base, max, topic.rejoin_attempts + 1));
            topic.rejoin_due = Some(due);
            next = Some(next.map_or(due, |n| n.min(due)));
            if targets.is_empty() {
                continue;
            }
            self.out.push(Effect::DialPeers {
                repo: repo_id.clone(),
                peers: targets.clone(),
            });
            // Gossip may take a while to notice a restarted peer: ask directly.
            for peer in targets {
                batches.entry(peer).or_default().push(repo_id.clone());
            }
        }
        self.pull_batches(batches, now);
        if let Some(at) = next {
            self.arm_rejoin(at);
        }
    }

    /// Ask every trusted peer directly what it holds of the repositories it
    /// is trusted for, one pull per peer for up to [`MAX_PULL_REPOS`] of
    /// them. Announcements reach only who is listening when they are sent:
    /// a lost message, a connection that broke, or a follower that joined
    /// the topic before its publisher did and has other neighbours would
    /// otherwise miss a state until the next one. Each round catches up
    /// whatever was missed, however quiet the topic.
    pub(super) fn resync_sweep(&mut self, now: Now) {
        let me = self.me;
        let mut batches: BTreeMap<EndpointId, Vec<RepoId>> = BTreeMap::new();
        for (repo_id, repo) in &self.repos {
            if !repo.wants_topic() {
                continue;
            }
            for peer in repo.trusted(me) {
                if peer != me {
                    batches.entry(peer).or_default().push(repo_id.clone());
                }
            }
        }
        self.pull_batches(batches, now);
        if let Some(every) = self.settings.resync_interval {
            self.set_timer(TimerKey::Resync, super::later(now.at, every));
        }
    }
}
