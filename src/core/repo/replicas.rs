//! Replication status of one repository: what each known peer last announced it holds, how
//! that compares with this node's state, and callers waiting until enough
//! peers hold a state (`--replicas N`).
//!
//! A peer's announcement says what it claims to hold (the envelope is its
//! own), so every announcement from a trusted peer or a learned hint
//! updates that peer's entry, at most [`MAX_PEERS_SEEN`] per repository,
//! most recent first, written lazily; an untrusted newcomer never evicts
//! the entry of a trusted peer or of one that proved its claim. A claim is
//! not a replica: a peer counts as holding a state only when it is trusted
//! (its signed envelope names the state) or when it *proved* it holds the
//! bytes, by serving a randomly chosen chunk of the manifest and of every
//! pack, verified against their BLAKE3 hashes ([`Effect::ProbeReplica`]).
//! `list`, `peers` and `--replicas` count only those. A waiter is answered
//! as soon as enough distinct peers other than this node hold the state (or
//! a newer one this node also holds), naming each and why it counted; while
//! it waits, the peers not known to hold it are asked directly every few
//! seconds and unproven claims are probed, and at its deadline it fails
//! naming who is missing. Probes run only while someone waits, to at most
//! [`MAX_PROBES`] peers of a repository at once, and a failed one is not
//! tried again for [`PROBE_RETRY`].

use std::{collections::BTreeSet, time::Duration};

use iroh::EndpointId;
use iroh_blobs::Hash;

use super::{
    outbox::{Ctx, Out},
    state::{MAX_PEERS_CONTACTED, Probe, ReplicaWait, Repo},
};
use crate::{
    api::{
        CountedReplica, NodeEvent, Payload, PeerReplica, ReplicaBasis, ReplicaStatus,
        ReplicasReport, Reply,
    },
    core::{
        hints,
        io::{Effect, ReplyId, TimerKey, later},
    },
    state::PeerSeen,
};

/// Most peers whose announced state is kept per repository.
pub const MAX_PEERS_SEEN: usize = 64;
/// Most peers told directly about a state this node just fetched: bounded,
/// so a topic of N followers costs O(N) pushes, not O(N²).
pub const MAX_CATCH_UP_PUSHES: usize = 4;
/// How often peers are asked directly while someone waits for replicas.
const ASK_EVERY: Duration = Duration::from_secs(2);
/// Most probes of one repository's peers running at once.
pub const MAX_PROBES: usize = MAX_PEERS_CONTACTED;
/// How long a peer whose probe failed is not probed again.
pub const PROBE_RETRY: Duration = Duration::from_secs(30);

/// How what a peer announced compares with this node's state. A claim of
/// the state held counts as in sync only from a `trusted` peer or one that
/// proved it.
pub fn status_of(seen: Option<&PeerSeen>, repo: &Repo, trusted: bool) -> ReplicaStatus {
    let Some(seen) = seen else {
        return ReplicaStatus::Unknown;
    };
    match &repo.held {
        None => ReplicaStatus::Ahead,
        Some(held) if held.manifest == seen.manifest => {
            if trusted || seen.proven {
                ReplicaStatus::InSync
            } else {
                ReplicaStatus::Unproven
            }
        }
        Some(held) if seen.seq < held.seq() => ReplicaStatus::Behind,
        Some(held) if seen.seq > held.seq() => ReplicaStatus::Ahead,
        Some(_) => ReplicaStatus::Unknown,
    }
}

impl Repo {
    /// Up to [`MAX_CATCH_UP_PUSHES`] peers last seen holding a state older
    /// than `seq`, other than `except`: trusted peers first, then the
    /// rest, each most recently seen first, so strangers announcing old
    /// states cannot take every slot.
    pub fn peers_behind(
        &self,
        me: EndpointId,
        seq: u64,
        except: Option<EndpointId>,
    ) -> Vec<EndpointId> {
        let trusted = self.trusted(me);
        let behind: Vec<EndpointId> = self
            .book
            .peers_seen
            .iter()
            .filter(|seen| seen.seq < seq)
            .map(|seen| seen.node_id)
            .filter(|peer| Some(*peer) != except && *peer != me)
            .collect();
        let (first, rest): (Vec<_>, Vec<_>) = behind.into_iter().partition(|p| trusted.contains(p));
        first
            .into_iter()
            .chain(rest)
            .take(MAX_CATCH_UP_PUSHES)
            .collect()
    }

    /// Note what `peer` announced it holds.
    pub fn peer_seen(&mut self, ctx: &Ctx, peer: EndpointId, manifest: [u8; 32], seq: u64) {
        let trusted = self.trusted(ctx.me);
        let manifest = Hash::from_bytes(manifest);
        let seen = &mut self.book.peers_seen;
        let previous = seen
            .iter()
            .position(|s| s.node_id == peer)
            .map(|i| seen.remove(i));
        let changed = previous
            .as_ref()
            .is_none_or(|p| p.manifest != manifest || p.seq != seq);
        // A proof holds for the manifest it was made for.
        let proven = previous
            .as_ref()
            .is_some_and(|p| p.proven && p.manifest == manifest);
        seen.insert(
            0,
            PeerSeen {
                node_id: peer,
                manifest,
                seq,
                seen_ms: ctx.now.unix_ms,
                proven,
            },
        );
        hints::evict(seen, MAX_PEERS_SEEN, |s| {
            s.proven || trusted.contains(&s.node_id)
        });
        if !changed || !seen.iter().any(|s| s.node_id == peer) {
            return;
        }
        let status = status_of(self.book.peers_seen.first(), self, trusted.contains(&peer));
        self.persist_book();
        self.notify(NodeEvent::PeerState {
            peer: peer.to_string(),
            manifest: manifest.to_hex(),
            status,
        });
        self.check_replicas(ctx.me);
        self.probe_claims(ctx);
    }

    /// Peers other than this node that hold `manifest`, or a newer state
    /// this node holds too: trusted peers that announced it, and peers that
    /// proved it.
    fn holders(&self, me: EndpointId, manifest: Hash, seq: u64) -> Vec<CountedReplica> {
        let trusted = self.trusted(me);
        let held_newer = self
            .held
            .as_ref()
            .filter(|h| h.seq() > seq)
            .map(|h| h.manifest);
        self.book
            .peers_seen
            .iter()
            .filter(|s| s.node_id != me)
            .filter(|s| s.manifest == manifest || Some(s.manifest) == held_newer)
            .filter_map(|s| {
                let basis = if trusted.contains(&s.node_id) {
                    ReplicaBasis::Trusted
                } else if s.proven {
                    ReplicaBasis::Proved
                } else {
                    return None;
                };
                Some(CountedReplica {
                    node_id: s.node_id.to_string(),
                    basis,
                })
            })
            .collect()
    }

    /// Peers whose unproven claims would count for a waiter: they claim a
    /// state waited for (or the newer one held), are not trusted, and are
    /// not being probed nor failed a probe lately.
    fn claims_to_probe(&self, ctx: &Ctx) -> Vec<(EndpointId, Hash)> {
        let me = ctx.me;
        let trusted = self.trusted(ctx.me);
        let waited: BTreeSet<Hash> = self
            .replica_waits
            .iter()
            .map(|w| w.manifest)
            .chain(self.held.iter().map(|h| h.manifest))
            .collect();
        let running = self
            .probes
            .values()
            .filter(|p| p.failed_at.is_none())
            .count();
        self.book
            .peers_seen
            .iter()
            .filter(|s| s.node_id != me && !s.proven && !trusted.contains(&s.node_id))
            .filter(|s| waited.contains(&s.manifest))
            .map(|s| (s.node_id, s))
            .filter(|(peer, s)| match self.probes.get(peer) {
                None => true,
                Some(p) if p.manifest != s.manifest => true,
                Some(Probe {
                    failed_at: Some(at),
                    ..
                }) => ctx.now.at.saturating_duration_since(*at) >= PROBE_RETRY,
                Some(_) => false,
            })
            .map(|(peer, s)| (peer, s.manifest))
            .take(MAX_PROBES.saturating_sub(running))
            .collect()
    }

    /// While someone waits for replicas, probe the unproven claims that
    /// would count.
    fn probe_claims(&mut self, ctx: &Ctx) {
        if self.replica_waits.is_empty() {
            return;
        }
        let probes = self.claims_to_probe(ctx);
        // Failed probes are remembered only for peers still seen: fresh keys
        // churning through the table cannot grow it.
        let seen: BTreeSet<EndpointId> = self.book.peers_seen.iter().map(|s| s.node_id).collect();
        self.probes
            .retain(|peer, p| p.failed_at.is_none() || seen.contains(peer));
        for (peer, manifest) in probes {
            self.probes.insert(
                peer,
                Probe {
                    manifest,
                    failed_at: None,
                },
            );
            let repo = self.config.repo_id.clone();
            self.emit(Effect::ProbeReplica {
                repo,
                peer,
                manifest,
            });
        }
    }

    /// A probe of `peer`'s claim to hold `manifest` finished.
    pub fn on_probed(&mut self, ctx: &Ctx, peer: EndpointId, manifest: Hash, proved: bool) {
        if self
            .probes
            .get(&peer)
            .is_some_and(|p| p.manifest == manifest)
        {
            if proved {
                self.probes.remove(&peer);
            } else {
                self.probes.insert(
                    peer,
                    Probe {
                        manifest,
                        failed_at: Some(ctx.now.at),
                    },
                );
            }
        }
        let Some(seen) = self
            .book
            .peers_seen
            .iter_mut()
            .find(|s| s.node_id == peer && s.manifest == manifest)
        else {
            return;
        };
        if !proved || seen.proven {
            return;
        }
        seen.proven = true;
        let trusted = self.trusted(ctx.me).contains(&peer);
        let seen = self.book.peers_seen.iter().find(|s| s.node_id == peer);
        let status = status_of(seen, self, trusted);
        self.persist_book();
        self.notify(NodeEvent::PeerState {
            peer: peer.to_string(),
            manifest: manifest.to_hex(),
            status,
        });
        self.check_replicas(ctx.me);
    }

    /// `replicas`: wait until `count` other peers hold the state held now.
    pub fn await_replicas(
        &mut self,
        ctx: &mut Ctx,
        reply: ReplyId,
        count: usize,
        timeout: Duration,
    ) {
        let repo_id = self.config.repo_id.clone();
        let Some(held) = &self.held else {
            return self.reply_err(
                reply,
                format!("{repo_id} holds no state yet; publish or sync first"),
            );
        };
        let (manifest, seq) = (held.manifest, held.seq());
        // Peers say what they hold on the topic too: join it while waiting.
        self.wake(ctx);
        let id = ctx.round();
        // A new wait probes again peers whose probes failed before.
        self.probes.retain(|_, p| p.failed_at.is_none());
        self.replica_waits.push(ReplicaWait {
            reply,
            count,
            manifest,
            seq,
            id,
            reported: usize::MAX,
        });
        self.set_timer(
            TimerKey::ReplicasDeadline(repo_id, id),
            later(ctx.now.at, timeout),
        );
        self.check_replicas(ctx.me);
        if !self.replica_waits.is_empty() {
            self.ask_for_replicas(ctx);
        }
    }

    /// Answer the waiters that have enough holders; report progress to the
    /// rest. Called whenever the state held or a peer's standing changes.
    pub fn check_replicas(&mut self, me: EndpointId) {
        let counts: Vec<(usize, Vec<CountedReplica>)> = self
            .replica_waits
            .iter()
            .map(|w| (w.count, self.holders(me, w.manifest, w.seq)))
            .collect();
        let mut done = Vec::new();
        let mut progress = Vec::new();
        for (i, (count, holding)) in counts.into_iter().enumerate() {
            let wait = &mut self.replica_waits[i];
            if holding.len() >= count {
                done.push((wait.reply, wait.manifest, holding));
            } else if holding.len() != wait.reported {
                wait.reported = holding.len();
                progress.push((wait.manifest, holding.len(), count));
            }
        }
        self.replica_waits
            .retain(|w| !done.iter().any(|(reply, ..)| *reply == w.reply));
        for (manifest, holding, wanted) in progress {
            self.notify(NodeEvent::Replicas {
                manifest: manifest.to_hex(),
                holding,
                wanted,
            });
        }
        let repo_id = self.config.repo_id.to_string();
        for (reply, manifest, holding) in done {
            self.reply(
                reply,
                Reply::Ok(Payload::Replicas(ReplicasReport {
                    repo_id: repo_id.clone(),
                    manifest: manifest.to_hex(),
                    holding,
                })),
            );
        }
    }

    /// Ask the known peers not yet holding the state what they hold.
    pub fn ask_for_replicas(&mut self, ctx: &Ctx) {
        if self.replica_waits.is_empty() {
            return;
        }
        let seq = self.replica_waits.iter().map(|w| w.seq).min().unwrap_or(0);
        let manifest = self.replica_waits[0].manifest;
        let holding = self.holders(ctx.me, manifest, seq);
        let ask: Vec<EndpointId> = self
            .dial_targets(ctx.me)
            .into_iter()
            .filter(|p| !holding.iter().any(|h| h.node_id == p.to_string()))
            .collect();
        let repo_id = self.config.repo_id.clone();
        for peer in ask {
            self.request(Out::Pull(peer));
        }
        self.probe_claims(ctx);
        self.set_timer(TimerKey::ReplicasAsk(repo_id), later(ctx.now.at, ASK_EVERY));
    }

    /// A waiter's time ran out: fail it, naming who is missing.
    pub fn replicas_deadline(&mut self, me: EndpointId, id: u64) {
        let Some(i) = self.replica_waits.iter().position(|w| w.id == id) else {
            return;
        };
        let wait = self.replica_waits.remove(i);
        let holding = self.holders(me, wait.manifest, wait.seq);
        let trusted = self.trusted(me);
        let missing: Vec<String> = self
            .dial_targets(me)
            .into_iter()
            .filter(|p| !holding.iter().any(|h| h.node_id == p.to_string()))
            .map(|p| {
                let seen = self.book.peers_seen.iter().find(|s| s.node_id == p);
                let status = status_of(seen, self, trusted.contains(&p));
                format!("{} ({})", p.fmt_short(), status.as_str())
            })
            .collect();
        let missing = if missing.is_empty() {
            "no other peer is known".to_string()
        } else {
            format!("not yet: {}", missing.join(", "))
        };
        let repo_id = self.config.repo_id.clone();
        self.reply_err(
            wait.reply,
            format!(
                "only {} of {} peers hold {repo_id} at {}; {missing}",
                holding.len(),
                wait.count,
                &wait.manifest.to_hex()[..12]
            ),
        );
    }

    /// What a known peer last announced, for `peers`.
    pub fn replica_of(
        &self,
        peer: Option<EndpointId>,
        trusted: bool,
    ) -> (Option<PeerReplica>, ReplicaStatus) {
        let seen = peer.and_then(|p| self.book.peers_seen.iter().find(|s| s.node_id == p));
        let replica = seen.map(|s| PeerReplica {
            manifest: s.manifest.to_hex(),
            seq: s.seq,
            seen: s.seen_ms / 1000,
            proven: s.proven,
        });
        (replica, status_of(seen, self, trusted))
    }

    /// Known peers holding the state held, for `list`: trusted peers that
    /// announced it and peers that proved it (a claim alone does not count).
    pub fn in_sync_count(&self, me: EndpointId) -> usize {
        let trusted = self.trusted(me);
        let Some(held) = &self.held else {
            return 0;
        };
        self.book
            .peers_seen
            .iter()
            .filter(|s| s.node_id != me && s.manifest == held.manifest)
            .filter(|s| s.proven || trusted.contains(&s.node_id))
            .count()
    }
}
