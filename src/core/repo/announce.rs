//! Announcements and the gossip topic of one repository.
//!
//! A verified announcement is judged by [`crate::core::trust`]; one taken
//! becomes the wanted state. Its sender, or a gossip neighbour, is
//! remembered as a learned hint only when it is trusted or provides a state
//! of interest (the state held or being fetched), so strangers announcing
//! anything else, or merely joining the topic, leave no trace, and a
//! stranger's hint never evicts a trusted peer's. A peer answering a pull
//! of this node's with an older state this node published is told the
//! current one, but those rebroadcasts are limited per repository
//! ([`REBROADCAST_WINDOW`]), whoever triggers them, so replays from any
//! number of keys cannot make the node flood its topic. The topic is joined
//! while the repository has something to serve or someone to ask; when it
//! has no neighbours it is due for the core's rejoin sweep.

use std::{net::SocketAddr, time::Duration};

use iroh::EndpointId;
use tracing::{debug, info};

use super::{
    outbox::{Ctx, Out},
    state::{MAX_PEERS_CONTACTED, Rebroadcasts, Repo, Running, Topic, Want, WantSource},
};
use crate::{
    announce::Announcement,
    api::NodeEvent,
    core::{
        hints,
        io::{Audience, Effect, Now, Via, is_due, later},
        trust::{self, Verdict},
    },
    record::PeerHint,
};

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

impl Repo {
    /// Whether `manifest` is the state held or being fetched.
    fn of_interest(&self, manifest: iroh_blobs::Hash) -> bool {
        self.held.as_ref().is_some_and(|h| h.manifest == manifest)
            || self
                .wanted_position()
                .is_some_and(|w| w.manifest == *manifest.as_bytes())
    }

    /// A verified announcement of this repository arrived `via` gossip or
    /// the direct path.
    pub fn on_announcement(&mut self, ctx: &Ctx, announcement: Announcement, via: Via) {
        let me = ctx.me;
        let now = ctx.now;
        let repo_id = self.config.repo_id.clone();
        let Some(sender) = announcement.sender_id() else {
            return;
        };
        if sender == me {
            return;
        }
        let statement = &announcement.statement.statement;
        let trusted = self.trusted(me);
        let refused = self.quota_refused == Some(statement.manifest_hash());
        let verdict = trust::judge_statement(
            statement,
            sender,
            &trusted,
            self.held_position(),
            self.wanted_position(),
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
            let expired = hints::expire(&mut self.book.hints, now.unix_ms);
            let learned = hints::remember(&mut self.book.hints, hint.clone(), now.unix_ms, |id| {
                trusted_ids.contains(id)
            });
            if learned {
                self.emit(Effect::LearnAddrs(vec![hint]));
            }
            if learned || expired {
                self.persist_book();
            }
        }
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
                self.want = Some(Want {
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
                self.request(Out::Schedule);
                self.request(Out::Pump);
            }
            Verdict::Wanted => {
                if let Some(want) = self.want.as_mut()
                    && want.manifest == statement.manifest_hash()
                {
                    if !want.providers.contains(&sender)
                        && want.providers.len() < MAX_PEERS_CONTACTED
                    {
                        want.providers.push(sender);
                    }
                    // A trusted peer says it holds the state a failed fetch
                    // waits to retry: it is back, try now.
                    if trusted.contains(&sender) && !is_due(want.not_before, now) {
                        want.not_before = None;
                        self.request(Out::Schedule);
                        self.request(Out::Pump);
                    }
                }
            }
            Verdict::Held => {}
            Verdict::Reject(rejection) => {
                self.request(Out::Rejected(rejection.reason()));
                debug!(repo = %repo_id, from = %sender.fmt_short(), publisher = %data_encoding::HEXLOWER.encode(&statement.publisher[..5]), seq = statement.seq, reason = rejection.reason(), ?via, "ignoring an announced state");
                // A peer answered a pull of this node's (its topic was
                // empty: it restarted, and gossip elsewhere may still count
                // it as a neighbour, so nobody greets it) with an older
                // state this node published: tell it the current one. A
                // replay triggers the same, so this is limited per
                // repository whoever sends it.
                if via == Via::Direct
                    && rejection == trust::Rejection::NotNewer
                    && statement.publisher == *me.as_bytes()
                    && let Some(held) = &self.held
                    && held.seq() > statement.seq
                    && held.statement.statement.publisher == *me.as_bytes()
                {
                    let statement = held.statement.clone();
                    let (topic, direct) = rebroadcast_allowance(&mut self.rebroadcasts, now);
                    let direct = if direct { vec![sender] } else { Vec::new() };
                    let audience = if topic {
                        Some(Audience::Everyone { direct })
                    } else if !direct.is_empty() {
                        Some(Audience::Direct { direct })
                    } else {
                        None
                    };
                    match audience {
                        Some(audience) => self.emit(Effect::Announce {
                            repo: repo_id.clone(),
                            statement,
                            audience,
                        }),
                        None => {
                            debug!(repo = %repo_id, from = %sender.fmt_short(), "rebroadcast budget spent; not telling the sender again")
                        }
                    }
                }
                self.notify(NodeEvent::Rejected {
                    sender: sender.to_string(),
                    reason: rejection.reason().to_string(),
                });
            }
        }
        if verdict == Verdict::Adopt && !refused {
            self.notify(NodeEvent::Adopted {
                manifest: statement.manifest_hash().to_hex(),
                seq: statement.seq,
                source: sender.to_string(),
            });
            self.wake(ctx);
        }
        if known {
            // What the sender holds: its envelope says so.
            self.peer_seen(ctx, sender, statement.manifest, statement.seq);
        }
    }

    /// A gossip neighbour joined the topic.
    pub fn on_neighbor_up(&mut self, ctx: &Ctx, peer: EndpointId, addrs: Vec<SocketAddr>) {
        let repo_id = self.config.repo_id.clone();
        let Some(topic) = self.topic.as_mut() else {
            return;
        };
        topic.neighbors.insert(peer);
        topic.rejoin_attempts = 0;
        topic.rejoin_due = None;
        debug!(repo = %repo_id, peer = %peer.fmt_short(), "neighbour up");
        self.notify(NodeEvent::PeerUp {
            peer: peer.to_string(),
        });
        // Learned only when trusted, or when it last announced the state
        // held or being fetched: joining the topic proves nothing.
        let trusted_ids = self.trusted_ids(ctx.me);
        let provides = self
            .book
            .peers_seen
            .iter()
            .find(|s| s.node_id == peer)
            .is_some_and(|s| self.of_interest(s.manifest));
        let node_id = peer.to_string();
        if !addrs.is_empty() && (trusted_ids.contains(&node_id) || provides) {
            let hint = PeerHint::new(node_id, addrs.iter().map(|a| a.to_string()).collect(), None);
            if hints::remember(&mut self.book.hints, hint, ctx.now.unix_ms, |id| {
                trusted_ids.contains(id)
            }) {
                self.persist_book();
            }
        }
        // Ask the newcomer what it holds: a peer that restarted may be a
        // neighbour again without announcing anything (its gossip layer may
        // think this node never left).
        self.request(Out::Pull(peer));
        // Greet it with the state held here.
        if let Some(held) = &self.held {
            let statement = held.statement.clone();
            self.emit(Effect::Announce {
                repo: repo_id,
                statement,
                audience: Audience::Neighbors { direct: Vec::new() },
            });
        }
    }

    /// A gossip neighbour left the topic; without neighbours the topic is
    /// due for the rejoin sweep.
    pub fn on_neighbor_down(&mut self, ctx: &Ctx, peer: EndpointId) {
        let base = ctx.settings.rejoin_base;
        let Some(topic) = self.topic.as_mut() else {
            return;
        };
        let was = topic.neighbors.remove(&peer);
        let lonely = topic.neighbors.is_empty();
        if was {
            self.notify(NodeEvent::PeerDown {
                peer: peer.to_string(),
            });
        }
        let Some(topic) = self.topic.as_mut() else {
            return;
        };
        if lonely {
            let due = later(ctx.now.at, base);
            topic.rejoin_due = Some(due);
            self.request(Out::ArmRejoin(due));
        }
    }

    /// The topic's subscription ended: join again if still wanted.
    pub fn on_topic_closed(&mut self, ctx: &Ctx) {
        self.topic = None;
        self.ensure_topic(ctx);
    }

    /// News of the repository: keep its topic joined for
    /// [`Settings::topic_idle`](crate::core::Settings) from now on, joining
    /// it when the repository wants one.
    pub fn wake(&mut self, ctx: &Ctx) {
        if let Some(idle) = ctx.settings.topic_idle {
            let until = later(ctx.now.at, idle);
            if self.awake_until.is_none_or(|t| t < until) {
                self.awake_until = Some(until);
            }
        }
        self.ensure_topic(ctx);
    }

    /// Whether the topic is to be joined at `at`: topics are never left
    /// (`idle` is `None`), there was news until recently, or something
    /// runs or waits that gossip serves (a new state fetched, a publish,
    /// callers waiting for a state or for replicas). A check of the state
    /// held (at start-up, on the schedule) is not news.
    pub fn awake(&self, idle: Option<Duration>, at: std::time::Instant) -> bool {
        let news = |want: &Want| want.source != WantSource::Check;
        idle.is_none()
            || self.awake_until.is_some_and(|t| t > at)
            || self.want.as_ref().is_some_and(news)
            || match &self.job {
                Some(Running::Publish { .. }) => true,
                Some(Running::Fetch { want, .. }) => news(want),
                Some(Running::Discard { .. }) | None => false,
            }
            || !self.publishes.is_empty()
            || !self.replica_waits.is_empty()
            || !self.sync.waiters.is_empty()
    }

    /// Join the topic when the repository wants one; when joined already
    /// and without neighbours, dial the peers known now.
    pub fn ensure_topic(&mut self, ctx: &Ctx) {
        if !self.wants_topic() || !self.awake(ctx.settings.topic_idle, ctx.now.at) {
            return;
        }
        let repo_id = self.config.repo_id.clone();
        let peers = self.dial_targets(ctx.me);
        match &mut self.topic {
            Some(topic) => {
                if !peers.is_empty() && topic.neighbors.is_empty() {
                    self.emit(Effect::DialPeers {
                        repo: repo_id,
                        peers,
                    });
                }
            }
            None => {
                let due = later(ctx.now.at, ctx.settings.rejoin_base);
                self.topic = Some(Topic {
                    rejoin_due: Some(due),
                    ..Topic::default()
                });
                self.emit(Effect::JoinTopic {
                    repo: repo_id,
                    peers,
                });
                self.request(Out::ArmRejoin(due));
            }
        }
    }
}

impl Repo {
    /// Write every durable row of this repository again (configuration,
    /// record copy, held state) after a commit failed, and announce the
    /// held state the failure may have kept from going out (within the
    /// rebroadcast budget: it may have gone out since). Returns whether it
    /// announced.
    pub fn rewrite(&mut self, ctx: &Ctx) -> bool {
        let repo_id = self.config.repo_id.clone();
        self.emit(Effect::Persist(crate::core::io::Write::Config(
            self.config.clone(),
        )));
        self.emit(Effect::Persist(crate::core::io::Write::Record(
            repo_id.clone(),
            self.record.clone(),
        )));
        self.emit(Effect::Persist(crate::core::io::Write::Held(
            repo_id.clone(),
            self.held.clone().map(Box::new),
        )));
        self.persist_book();
        self.clear_error_of(super::PERSIST_ERROR);
        let held = self.held.as_ref().map(|h| h.statement.clone());
        // Counted as a rebroadcast: the state may have gone out meanwhile.
        if let Some(statement) = held
            && rebroadcast_allowance(&mut self.rebroadcasts, ctx.now).0
        {
            let neighbors = self
                .topic
                .as_ref()
                .map(|t| t.neighbors.clone())
                .unwrap_or_default();
            let direct = self
                .dial_targets(ctx.me)
                .into_iter()
                .filter(|p| !neighbors.contains(p))
                .collect();
            self.emit(Effect::Announce {
                repo: repo_id,
                statement,
                audience: crate::core::io::Audience::Everyone { direct },
            });
            return true;
        }
        false
    }
}
