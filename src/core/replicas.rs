//! Replication status: what each known peer last announced it holds, how
//! that compares with this node's state, and callers waiting until enough
//! peers hold a state (`--replicas N`).
//!
//! A peer's announcement says what it holds (the envelope is its own), so
//! every announcement from a trusted peer or a learned hint updates that
//! peer's entry, at most [`MAX_PEERS_SEEN`] per repository, most recent
//! first, written lazily. A waiter is answered as soon as enough distinct
//! peers other than this node hold the state (or a newer one this node also
//! holds); while it waits, the peers not known to hold it are asked directly
//! every few seconds, and at its deadline it fails naming who is missing.

use std::time::Duration;

use iroh::EndpointId;

use super::{
    Core, Effect, Now, ReplyId, TimerKey,
    repo::{ReplicaWait, Repo},
};
use crate::{
    admin::{NodeEvent, Payload, PeerReplica, ReplicaStatus, ReplicasReport, Reply},
    repo_id::RepoId,
    state::PeerSeen,
};

/// Most peers whose announced state is kept per repository.
pub const MAX_PEERS_SEEN: usize = 64;
/// Most peers told directly about a state this node just fetched: bounded,
/// so a topic of N followers costs O(N) pushes, not O(N²).
pub const MAX_CATCH_UP_PUSHES: usize = 4;
/// How often peers are asked directly while someone waits for replicas.
const ASK_EVERY: Duration = Duration::from_secs(2);

/// How what a peer announced compares with this node's state.
pub fn status_of(seen: Option<&PeerSeen>, repo: &Repo) -> ReplicaStatus {
    let Some(seen) = seen else {
        return ReplicaStatus::Unknown;
    };
    match &repo.held {
        None => ReplicaStatus::Ahead,
        Some(held) if held.manifest == seen.manifest => ReplicaStatus::InSync,
        Some(held) if seen.seq < held.seq() => ReplicaStatus::Behind,
        Some(held) if seen.seq > held.seq() => ReplicaStatus::Ahead,
        Some(_) => ReplicaStatus::Unknown,
    }
}

impl Core {
    /// Note what `peer` announced it holds for `repo_id`.
    /// Up to [`MAX_CATCH_UP_PUSHES`] peers last seen holding a state older
    /// than `seq`, most recently seen first, other than `except`.
    pub(super) fn peers_behind(
        &self,
        repo_id: &RepoId,
        seq: u64,
        except: Option<EndpointId>,
    ) -> Vec<EndpointId> {
        let Some(repo) = self.repos.get(repo_id) else {
            return Vec::new();
        };
        repo.book
            .peers_seen
            .iter()
            .filter(|seen| seen.seq < seq)
            .filter_map(|seen| seen.node_id.parse::<EndpointId>().ok())
            .filter(|peer| Some(*peer) != except)
            .take(MAX_CATCH_UP_PUSHES)
            .collect()
    }

    pub(super) fn peer_seen(
        &mut self,
        repo_id: &RepoId,
        peer: EndpointId,
        manifest: [u8; 32],
        seq: u64,
        now: Now,
    ) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        let node_id = peer.to_string();
        let manifest = data_encoding::HEXLOWER.encode(&manifest);
        let seen = &mut repo.book.peers_seen;
        let previous = seen
            .iter()
            .position(|s| s.node_id == node_id)
            .map(|i| seen.remove(i));
        let changed = previous
            .as_ref()
            .is_none_or(|p| p.manifest != manifest || p.seq != seq);
        seen.insert(
            0,
            PeerSeen {
                node_id: node_id.clone(),
                manifest: manifest.clone(),
                seq,
                seen_ms: now.unix_ms,
            },
        );
        seen.truncate(MAX_PEERS_SEEN);
        if !changed {
            return;
        }
        let status = status_of(repo.book.peers_seen.first(), repo);
        self.persist_book(repo_id);
        self.notify(
            repo_id,
            NodeEvent::PeerState {
                peer: node_id,
                manifest,
                status,
            },
        );
        self.check_replicas(repo_id, now);
    }

    /// Peers (node ids) other than this node holding `manifest`, or a newer
    /// state this node holds too.
    fn holders(&self, repo: &Repo, manifest: &str, seq: u64) -> Vec<String> {
        let me = self.me.to_string();
        let held_newer = repo
            .held
            .as_ref()
            .filter(|h| h.seq() > seq)
            .map(|h| h.manifest.as_str());
        repo.book
            .peers_seen
            .iter()
            .filter(|s| s.node_id != me)
            .filter(|s| s.manifest == manifest || Some(s.manifest.as_str()) == held_newer)
            .map(|s| s.node_id.clone())
            .collect()
    }

    /// `replicas`: wait until `count` other peers hold the state held now.
    pub(super) fn await_replicas(
        &mut self,
        reply: ReplyId,
        repo_id: &RepoId,
        count: usize,
        timeout: Duration,
        now: Now,
    ) {
        let Some(repo) = self.repos.get(repo_id) else {
            return self.reply_err(reply, format!("repository {repo_id} is not tracked"));
        };
        let Some(held) = &repo.held else {
            return self.reply_err(
                reply,
                format!("{repo_id} holds no state yet; publish or sync first"),
            );
        };
        let (manifest, seq) = (held.manifest.clone(), held.seq());
        let id = self.next_round;
        self.next_round += 1;
        let repo = self.repos.get_mut(repo_id).expect("present above");
        repo.replica_waits.push(ReplicaWait {
            reply,
            count,
            manifest,
            seq,
            id,
            reported: usize::MAX,
        });
        self.set_timer(
            TimerKey::ReplicasDeadline(repo_id.clone(), id),
            super::later(now.at, timeout),
        );
        self.check_replicas(repo_id, now);
        if self
            .repos
            .get(repo_id)
            .is_some_and(|r| !r.replica_waits.is_empty())
        {
            self.ask_for_replicas(repo_id, now);
        }
    }

    /// The state held changed: peers' standing may have too.
    pub(super) fn check_replicas_now(&mut self, repo_id: &RepoId, now: Now) {
        self.check_replicas(repo_id, now);
    }

    /// Answer the waiters that have enough holders; report progress to the rest.
    fn check_replicas(&mut self, repo_id: &RepoId, _now: Now) {
        let Some(repo) = self.repos.get(repo_id) else {
            return;
        };
        let counts: Vec<(usize, Vec<String>)> = repo
            .replica_waits
            .iter()
            .map(|w| (w.count, self.holders(repo, &w.manifest, w.seq)))
            .collect();
        let mut done = Vec::new();
        let mut progress = Vec::new();
        let repo = self.repos.get_mut(repo_id).expect("present above");
        for (i, (count, holding)) in counts.into_iter().enumerate() {
            let wait = &mut repo.replica_waits[i];
            if holding.len() >= count {
                done.push((wait.reply, wait.manifest.clone(), holding));
            } else if holding.len() != wait.reported {
                wait.reported = holding.len();
                progress.push((wait.manifest.clone(), holding.len(), count));
            }
        }
        repo.replica_waits
            .retain(|w| !done.iter().any(|(reply, ..)| *reply == w.reply));
        for (manifest, holding, wanted) in progress {
            self.notify(
                repo_id,
                NodeEvent::Replicas {
                    manifest,
                    holding,
                    wanted,
                },
            );
        }
        for (reply, manifest, holding) in done {
            self.reply(
                reply,
                Reply::Ok(Payload::Replicas(ReplicasReport {
                    repo_id: repo_id.to_string(),
                    manifest,
                    holding,
                })),
            );
        }
    }

    /// Ask the known peers not yet holding the state what they hold.
    pub(super) fn ask_for_replicas(&mut self, repo_id: &RepoId, now: Now) {
        let Some(repo) = self
            .repos
            .get(repo_id)
            .filter(|r| !r.replica_waits.is_empty())
        else {
            return;
        };
        let seq = repo.replica_waits.iter().map(|w| w.seq).min().unwrap_or(0);
        let manifest = repo.replica_waits[0].manifest.clone();
        let holding = self.holders(repo, &manifest, seq);
        let ask: Vec<EndpointId> = repo
            .dial_targets(self.me)
            .into_iter()
            .filter(|p| !holding.contains(&p.to_string()))
            .collect();
        for peer in ask {
            self.out.push(Effect::Pull {
                peer,
                repos: vec![repo_id.clone()],
            });
        }
        self.set_timer(
            TimerKey::ReplicasAsk(repo_id.clone()),
            super::later(now.at, ASK_EVERY),
        );
    }

    /// A waiter's time ran out: fail it, naming who is missing.
    pub(super) fn replicas_deadline(&mut self, repo_id: &RepoId, id: u64) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        let Some(i) = repo.replica_waits.iter().position(|w| w.id == id) else {
            return;
        };
        let wait = repo.replica_waits.remove(i);
        let repo = self.repos.get(repo_id).expect("present above");
        let holding = self.holders(repo, &wait.manifest, wait.seq);
        let me = self.me;
        let missing: Vec<String> = repo
            .dial_targets(me)
            .into_iter()
            .filter(|p| !holding.contains(&p.to_string()))
            .map(|p| {
                let seen = repo
                    .book
                    .peers_seen
                    .iter()
                    .find(|s| s.node_id == p.to_string());
                format!("{} ({})", p.fmt_short(), status_of(seen, repo).as_str())
            })
            .collect();
        let missing = if missing.is_empty() {
            "no other peer is known".to_string()
        } else {
            format!("not yet: {}", missing.join(", "))
        };
        self.reply_err(
            wait.reply,
            format!(
                "only {} of {} peers hold {repo_id} at {}; {missing}",
                holding.len(),
                wait.count,
                &wait.manifest[..wait.manifest.len().min(12)]
            ),
        );
    }

    /// What a known peer last announced, for `peers`.
    pub(super) fn replica_of(repo: &Repo, node_id: &str) -> (Option<PeerReplica>, ReplicaStatus) {
        let seen = repo.book.peers_seen.iter().find(|s| s.node_id == node_id);
        let replica = seen.map(|s| PeerReplica {
            manifest: s.manifest.clone(),
            seq: s.seq,
            seen: s.seen_ms / 1000,
        });
        (replica, status_of(seen, repo))
    }

    /// Known peers holding the state held, for `list`.
    pub(super) fn in_sync_count(&self, repo: &Repo) -> usize {
        let me = self.me.to_string();
        let Some(held) = &repo.held else {
            return 0;
        };
        repo.book
            .peers_seen
            .iter()
            .filter(|s| s.node_id != me && s.manifest == held.manifest)
            .count()
    }

    /// Stream an event about `repo_id` to watchers.
    pub(super) fn notify(&mut self, repo_id: &RepoId, event: NodeEvent) {
        self.out.push(Effect::Notify {
            repo: Some(repo_id.clone()),
            event,
        });
    }
}
