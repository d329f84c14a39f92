//! Announcements, gossip topics and direct pulls.
//!
//! A verified announcement is judged by [`super::trust`]; one taken becomes
//! the wanted state. Its sender, or a gossip neighbour, is remembered as a
//! learned hint only when it is trusted or provides a state of interest
//! (the state held or being fetched), so strangers announcing anything
//! else, or merely joining the topic, leave no trace, and a stranger's hint
//! never evicts a trusted peer's. A peer answering a pull of this node's
//! with an older state this node published is told the current one, but
//! those rebroadcasts are limited per repository ([`REBROADCAST_WINDOW`]),
//! whoever triggers them, so replays from any number of keys cannot make
//! the node flood its topic. Topics are joined while a repository has
//! something to serve or someone to ask; a topic left without neighbours
//! re-dials its peers and pulls their announcements, with a backoff per
//! repository and per peer, in one pull per peer for up to
//! [`super::MAX_PULL_REPOS`] repositories.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use iroh::EndpointId;
use tracing::{debug, info};

use super::{
    Audience, Core, Effect, MAX_PULL_REPOS, Now, TimerKey, Via, hints, queue,
    repo::{MAX_PEERS_CONTACTED, Rebroadcasts, Repo, Topic, Want, WantSource},
    trust::{self, Verdict},
};
use crate::{announce::Announcement, api::NodeEvent, record::PeerHint, repo_id::RepoId};

/// Per-peer state of direct pulls.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PullBackoff {
    failures: u32,
    pub(super) not_before: Option<std::time::Instant>,
}

/// Most peers whose pull backoff is remembered.
pub(super) const MAX_PULL_PEERS: usize = 4096;

/// Announcements received and rejected since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Verified announcements handled.
    pub received: u64,
    /// Announcements not taken, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
}

/// How long a window of rebroadcasts of this node's own state lasts: in
/// each, at most one reaches the whole topic and at most
/// [`MAX_REBROADCAST_DIRECT`] peers are told directly.
pub const REBROADCAST_WINDOW: Duration = Duration::from_secs(60);
/// Most peers told this node's current state directly per window, for
/// having answered with an older one.
pub const MAX_REBROADCAST_DIRECT: usize = MAX_PEERS_CONTACTED;

/// What a rebroadcast may still reach in the current window, counting it.
/// Returns (the whole topic, the sender directly).
fn rebroadcast_allowance(budget: &mut Rebroadcasts, now: Now) -> (bool, bool) {
    if budget
        .since
        .is_none_or(|since| now.at.saturating_duration_since(since) >= REBROADCAST_WINDOW)
    {
        *budget = Rebroadcasts {
            since: Some(now.at),
            topic: false,
            direct: 0,
        };
    }
    let topic = !budget.topic;
    let direct = budget.direct < MAX_REBROADCAST_DIRECT;
    budget.topic = true;
    if direct {
        budget.direct += 1;
    }
    (topic, direct)
}

/// Whether `manifest` (hex) is the state `repo` holds or is fetching.
fn of_interest(repo: &Repo, manifest: &str) -> bool {
    repo.held.as_ref().is_some_and(|h| h.manifest == manifest)
        || repo
            .wanted_position()
            .is_some_and(|w| iroh_blobs::Hash::from_bytes(w.manifest).to_hex() == manifest)
}

impl Core {
    pub(super) fn handle_announcement(
        &mut self,
        repo_id: &RepoId,
        announcement: Announcement,
        via: Via,
        now: Now,
    ) {
        self.counters.received += 1;
        let me = self.me;
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        let Some(sender) = announcement.sender_id() else {
            return;
        };
        if sender == me {
            return;
        }
        let statement = &announcement.statement.statement;
        let trusted = repo.trusted(me);
        let refused = repo.quota_refused == Some(statement.manifest_hash());
        let verdict = trust::judge_statement(
            statement,
            sender,
            &trusted,
            repo.held_position(),
            repo.wanted_position(),
            now.unix_ms,
        );
        let known = trusted.contains(&sender) || !matches!(verdict, Verdict::Reject(_));
        if known {
            let hint = PeerHint::new(
                sender.to_string(),
                announcement
                    .sender_addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                None,
            );
            let trusted_ids: std::collections::BTreeSet<String> =
                trusted.iter().map(|id| id.to_string()).collect();
            let expired = hints::expire(&mut repo.book.hints, now.unix_ms);
            let learned = hints::remember(&mut repo.book.hints, hint.clone(), now.unix_ms, |id| {
                trusted_ids.contains(id)
            });
            if learned {
                self.out.push(Effect::LearnAddrs(vec![hint]));
            }
            if learned || expired {
                self.persist_book(repo_id);
            }
        }
        let repo = self.repos.get_mut(repo_id).expect("present above");
        match verdict {
            Verdict::Adopt if refused => {
                debug!(repo = %repo_id, "a state refused by quota is announced again; not taken");
            }
            Verdict::Adopt => {
                info!(repo = %repo_id, manifest = %statement.manifest_hash().to_hex(), seq = statement.seq, from = %sender.fmt_short(), ?via, "taking an announced state");
                let mut providers = vec![sender];
                if let Some(p) = statement
                    .publisher_id()
                    .filter(|p| *p != sender && *p != me)
                {
                    providers.push(p);
                }
                repo.want = Some(Want {
                    manifest: statement.manifest_hash(),
                    seq: statement.seq,
                    source: WantSource::Statement {
                        statement: Box::new(announcement.statement.clone()),
                        sender,
                    },
                    providers,
                    attempts: 0,
                    not_before: None,
                });
                self.schedule(repo_id);
                self.pump(now);
            }
            Verdict::Wanted => {
                if let Some(want) = repo.want.as_mut()
                    && want.manifest == statement.manifest_hash()
                {
                    if !want.providers.contains(&sender)
                        && want.providers.len() < MAX_PEERS_CONTACTED
                    {
                        want.providers.push(sender);
                    }
                    // A trusted peer says it holds the state a failed fetch
                    // waits to retry: it is back, try now.
                    if trusted.contains(&sender) && !super::is_due(want.not_before, now) {
                        want.not_before = None;
                        self.schedule(repo_id);
                        self.pump(now);
                    }
                }
            }
            Verdict::Held => {}
            Verdict::Reject(rejection) => {
                *self
                    .counters
                    .rejected
                    .entry(rejection.reason())
                    .or_default() += 1;
                debug!(repo = %repo_id, from = %sender.fmt_short(), publisher = ?statement.publisher_id().map(|p| p.fmt_short().to_string()), seq = statement.seq, reason = rejection.reason(), ?via, "ignoring an announced state");
                // A peer answered a pull of this node's (its topic was
                // empty: it restarted, and gossip elsewhere may still count
                // it as a neighbour, so nobody greets it) with an older
                // state this node published: tell it the current one. A
                // replay triggers the same, so this is limited per
                // repository whoever sends it.
                if via == Via::Direct
                    && rejection == trust::Rejection::NotNewer
                    && statement.publisher_id() == Some(me)
                    && let Some(held) = &repo.held
                    && held.seq() > statement.seq
                    && held.statement.statement.publisher_id() == Some(me)
                {
                    let statement = held.statement.clone();
                    let (topic, direct) = rebroadcast_allowance(&mut repo.rebroadcasts, now);
                    let direct = if direct { vec![sender] } else { Vec::new() };
                    let audience = if topic {
                        Some(Audience::Everyone { direct })
                    } else if !direct.is_empty() {
                        Some(Audience::Direct { direct })
                    } else {
                        None
                    };
                    match audience {
                        Some(audience) => self.out.push(Effect::Announce {
                            repo: repo_id.clone(),
                            statement,
                            audience,
                        }),
                        None => {
                            debug!(repo = %repo_id, from = %sender.fmt_short(), "rebroadcast budget spent; not telling the sender again")
                        }
                    }
                }
                self.notify(
                    repo_id,
                    NodeEvent::Rejected {
                        sender: sender.to_string(),
                        reason: rejection.reason().to_string(),
                    },
                );
            }
        }
        if verdict == Verdict::Adopt && !refused {
            self.notify(
                repo_id,
                NodeEvent::Adopted {
                    manifest: statement.manifest_hash().to_hex(),
                    seq: statement.seq,
                    source: sender.to_string(),
                },
            );
        }
        if known {
            // What the sender holds: its envelope says so.
            let (manifest, seq) = (statement.manifest, statement.seq);
            self.with_repo(repo_id, now, |r, ctx| {
                r.peer_seen(ctx, sender, manifest, seq)
            });
        }
    }

    pub(super) fn handle_neighbor_up(
        &mut self,
        repo_id: &RepoId,
        peer: EndpointId,
        addrs: Vec<SocketAddr>,
        now: Now,
    ) {
        let me = self.me;
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        let Some(topic) = repo.topic.as_mut() else {
            return;
        };
        topic.neighbors.insert(peer);
        topic.rejoin_attempts = 0;
        topic.rejoin_due = None;
        debug!(repo = %repo_id, peer = %peer.fmt_short(), "neighbour up");
        self.out.push(Effect::Notify {
            repo: Some(repo_id.clone()),
            event: NodeEvent::PeerUp {
                peer: peer.to_string(),
            },
        });
        // Learned only when trusted, or when it last announced the state
        // held or being fetched: joining the topic proves nothing.
        let trusted_ids = repo.trusted_ids(me);
        let node_id = peer.to_string();
        let provides = repo
            .book
            .peers_seen
            .iter()
            .find(|s| s.node_id == node_id)
            .is_some_and(|s| of_interest(repo, &s.manifest));
        if !addrs.is_empty() && (trusted_ids.contains(&node_id) || provides) {
            let hint = PeerHint::new(node_id, addrs.iter().map(|a| a.to_string()).collect(), None);
            if hints::remember(&mut repo.book.hints, hint, now.unix_ms, |id| {
                trusted_ids.contains(id)
            }) {
                self.persist_book(repo_id);
            }
        }
        // Ask the newcomer what it holds: a peer that restarted may be a
        // neighbour again without announcing anything (its gossip layer may
        // think this node never left).
        self.out.push(Effect::Pull {
            peer,
            repos: vec![repo_id.clone()],
        });
        // Greet it with the state held here.
        let repo = self.repos.get(repo_id).expect("present above");
        if let Some(held) = &repo.held {
            self.out.push(Effect::Announce {
                repo: repo_id.clone(),
                statement: held.statement.clone(),
                audience: Audience::Neighbors { direct: Vec::new() },
            });
        }
    }

    pub(super) fn handle_neighbor_down(&mut self, repo_id: &RepoId, peer: EndpointId, now: Now) {
        let base = self.settings.rejoin_base;
        let Some(topic) = self.repos.get_mut(repo_id).and_then(|r| r.topic.as_mut()) else {
            return;
        };
        let was = topic.neighbors.remove(&peer);
        let lonely = topic.neighbors.is_empty();
        if was {
            self.notify(
                repo_id,
                NodeEvent::PeerDown {
                    peer: peer.to_string(),
                },
            );
        }
        let Some(topic) = self.repos.get_mut(repo_id).and_then(|r| r.topic.as_mut()) else {
            return;
        };
        if lonely {
            let due = super::later(now.at, base);
            topic.rejoin_due = Some(due);
            self.arm_rejoin(due);
        }
    }

    pub(super) fn handle_topic_closed(&mut self, repo_id: &RepoId, now: Now) {
        if let Some(repo) = self.repos.get_mut(repo_id) {
            repo.topic = None;
        }
        self.ensure_topic(repo_id, now);
    }

    /// Join the topic when the repository wants one; when joined already,
    /// dial the peers known now.
    pub(super) fn ensure_topic(&mut self, repo_id: &RepoId, now: Now) {
        let me = self.me;
        let base = self.settings.rejoin_base;
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        if !repo.wants_topic() {
            return;
        }
        let peers = repo.dial_targets(me);
        match &mut repo.topic {
            Some(topic) => {
                if !peers.is_empty() && topic.neighbors.is_empty() {
                    self.out.push(Effect::DialPeers {
                        repo: repo_id.clone(),
                        peers,
                    });
                }
            }
            None => {
                let due = super::later(now.at, base);
                repo.topic = Some(Topic {
                    rejoin_due: Some(due),
                    ..Topic::default()
                });
                self.out.push(Effect::JoinTopic {
                    repo: repo_id.clone(),
                    peers,
                });
                self.arm_rejoin(due);
            }
        }
    }

    /// Make sure the rejoin sweep runs no later than `due`.
    pub(super) fn arm_rejoin(&mut self, due: std::time::Instant) {
        if self.rejoin_timer.is_none_or(|t| t > due) {
            self.rejoin_timer = Some(due);
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
            let targets = repo.dial_targets(me);
            let Some(topic) = repo.topic.as_mut().filter(|t| t.neighbors.is_empty()) else {
                continue;
            };
            let Some(due) = topic.rejoin_due else {
                continue;
            };
            if due > now.at {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
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

    /// Pull each peer's announcements of its repositories, in chunks of
    /// [`MAX_PULL_REPOS`], unless the peer is backing off.
    fn pull_batches(&mut self, batches: BTreeMap<EndpointId, Vec<RepoId>>, now: Now) {
        for (peer, repos) in batches {
            let backoff = self.pulls.get(&peer).copied().unwrap_or_default();
            if !super::is_due(backoff.not_before, now) {
                continue;
            }
            for chunk in repos.chunks(MAX_PULL_REPOS) {
                self.out.push(Effect::Pull {
                    peer,
                    repos: chunk.to_vec(),
                });
            }
        }
    }

    pub(super) fn handle_pulled(&mut self, peer: EndpointId, ok: bool, now: Now) {
        if ok {
            self.pulls.remove(&peer);
            return;
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
        entry.not_before = Some(super::later(now.at, wait));
    }
}
