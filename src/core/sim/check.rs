//! The invariants, checked after every step.
//!
//! Safety, for every honest node and repository:
//! - it holds only states a publisher the owner sanctioned made (no
//!   stranger's state, whatever it announces);
//! - its held state never moves to an older state of the owner, and its
//!   `seq` never decreases, across restarts too;
//! - no held `seq` is more than an hour ahead of its clock;
//! - its tables stay within their documented caps;
//! - what it serves to git clients is exactly the states it holds;
//! - a peer it reports as holding a state (`--replicas`) holds it, or a
//!   newer state of the repository, complete.
//!
//! Liveness is checked by the world at the end of a run.

use super::model::*;
use std::{collections::BTreeMap, time::Duration};

use crate::{
    api::{Payload, Reply},
    core::{
        CoreCommand, ServedState,
        hints::MAX_HINTS,
        repo::{MAX_CATCH_UP_PUSHES, MAX_PROBES, MAX_REBROADCAST_DIRECT},
        repo::{MAX_DEMOTED, MAX_PEERS_CONTACTED},
        tables::MAX_PULL_PEERS,
        trust::MAX_SEQ_AHEAD_MS,
    },
    repo_id::RepoId,
};

/// The window over which a node's announcements of one statement count.
const FLOOD_WINDOW: Duration = Duration::from_secs(60);
/// Most announcements of one statement to the whole topic per window: the
/// first (a publish or a fetch) and one rebroadcast.
const MAX_TOPIC_ANNOUNCES: usize = 2;
/// Most peers told one statement directly per window: those a publish or a
/// fetch tells, the catch-up pushes and the rebroadcast budget.
const MAX_DIRECT_ANNOUNCES: usize =
    2 * MAX_PEERS_CONTACTED + MAX_CATCH_UP_PUSHES + MAX_REBROADCAST_DIRECT;

/// Most peers whose announced state is kept per repository.
const MAX_PEERS_SEEN: usize = crate::core::repo::MAX_PEERS_SEEN;

impl Checks {
    /// `node` starts from its disk, which holds these states (repository,
    /// seq, order): they are what its next states are judged against.
    pub fn resume(&mut self, node: usize, on_disk: Vec<(RepoId, u64, u64)>) {
        self.held.retain(|(n, _), _| *n != node);
        for (repo, seq, order) in on_disk {
            self.held.insert((node, repo), (seq, order));
        }
    }
}

impl World {
    /// Check `node` after a step.
    pub fn check_node(&mut self, node: usize) {
        let now_ms = self.unix_ms();
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        for repo in core.repos.values() {
            if let Some(m) = repo
                .held
                .as_ref()
                .and_then(|h| self.content.manifests.get_mut(&h.manifest_hash()))
            {
                m.held = true;
            }
        }
        let mut broken = Vec::new();
        let mut seen = Vec::new();
        if core.pulls.len() > MAX_PULL_PEERS {
            broken.push(format!("{} pull backoffs kept", core.pulls.len()));
        }
        if core.deferred_pulls.len() > MAX_PULL_PEERS
            || core
                .deferred_pulls
                .values()
                .any(|repos| repos.len() > crate::core::MAX_PULL_REPOS)
        {
            broken.push("deferred pulls over their cap".to_string());
        }
        let cap = core.settings.max_repos_per_identity;
        for did in core.follows.keys() {
            let brought = core
                .repos
                .values()
                .filter(|r| r.config.followed_via.as_deref() == Some(did.as_str()))
                .count();
            if brought > cap {
                broken.push(format!(
                    "{did} brought {brought} repositories, more than {cap}"
                ));
            }
        }
        let mut held_bytes = 0u64;
        for (repo_id, repo) in &core.repos {
            if repo.book.hints.len() > MAX_HINTS {
                broken.push(format!(
                    "{repo_id}: {} learned hints",
                    repo.book.hints.len()
                ));
            }
            if repo.book.peers_seen.len() > MAX_PEERS_SEEN {
                broken.push(format!(
                    "{repo_id}: {} peers seen",
                    repo.book.peers_seen.len()
                ));
            }
            if let Some(want) = &repo.want
                && want.providers.len() > 2 * MAX_PEERS_CONTACTED
            {
                broken.push(format!("{repo_id}: {} providers", want.providers.len()));
            }
            if repo.demoted.len() > MAX_DEMOTED {
                broken.push(format!(
                    "{repo_id}: {} providers demoted",
                    repo.demoted.len()
                ));
            }
            if repo.probes.len() > MAX_PEERS_SEEN + MAX_PROBES {
                broken.push(format!("{repo_id}: {} probes kept", repo.probes.len()));
            }
            let Some(held) = &repo.held else {
                continue;
            };
            let manifest = held.manifest_hash();
            let Some(info) = self.content.manifests.get(&manifest) else {
                broken.push(format!(
                    "{repo_id}: holds {} which nobody made",
                    short(&manifest)
                ));
                continue;
            };
            if !info.legit {
                broken.push(format!(
                    "{repo_id}: holds {} (seq {}), made by a publisher the owner never trusted",
                    short(&manifest),
                    held.seq()
                ));
            }
            if &info.repo != repo_id {
                broken.push(format!(
                    "{repo_id}: holds {}, a state of {}",
                    short(&manifest),
                    info.repo
                ));
            }
            if held.seq() > now_ms.saturating_add(MAX_SEQ_AHEAD_MS) {
                broken.push(format!(
                    "{repo_id}: holds seq {}, more than an hour ahead of the clock",
                    held.seq()
                ));
            }
            held_bytes = held_bytes.saturating_add(info.packs.iter().map(|p| p.size).sum::<u64>());
            seen.push((repo_id.clone(), held.seq(), info.order, manifest));
        }
        if let Some(max) = core.settings.max_total_bytes
            && held_bytes > max
        {
            broken.push(format!(
                "holds states of {held_bytes} bytes in all, over max_total_bytes {max}"
            ));
        }
        let should_serve: BTreeMap<&RepoId, ServedState> = core
            .repos
            .iter()
            .filter_map(|(id, r)| Some((id, r.served_state()?)))
            .collect();
        let served: BTreeMap<&RepoId, ServedState> = self.nodes[node]
            .served
            .iter()
            .map(|(id, s)| (id, s.clone()))
            .collect();
        if served != should_serve {
            broken.push(format!(
                "serves {} repositories but holds {}: {served:?} / {should_serve:?}",
                served.len(),
                should_serve.len()
            ));
        }
        let tracked: Vec<RepoId> = core.repos.keys().cloned().collect();
        for (repo_id, seq, order, manifest) in seen {
            let key = (node, repo_id.clone());
            if let Some(&(last_seq, last_order)) = self.checks.held.get(&key) {
                if seq < last_seq {
                    broken.push(format!("{repo_id}: seq went back from {last_seq} to {seq}"));
                }
                if order < last_order {
                    broken.push(format!(
                        "{repo_id}: moved to an older state {}",
                        short(&manifest)
                    ));
                }
            }
            self.checks.held.insert(key, (seq, order));
        }
        // A repository removed may come back with any state.
        self.checks
            .held
            .retain(|(n, r), _| *n != node || tracked.contains(r));
        if !broken.is_empty() {
            let role = self.nodes[node].role.name();
            self.fail(format!("n{node} ({role}): {}", broken.join("; ")));
        }
    }

    /// Note that `node` announced the statement with `seq` of `repo`, to
    /// the topic or not and to `direct` peers directly; no statement may
    /// flood the topic or the peers.
    pub fn check_announce(
        &mut self,
        node: usize,
        repo: &RepoId,
        seq: u64,
        topic: bool,
        direct: usize,
    ) {
        let now = self.now;
        let life = self.nodes[node].life;
        let sent = self
            .checks
            .announced
            .entry((node, life, repo.clone(), seq))
            .or_default();
        sent.retain(|(at, _, _)| now.saturating_sub(*at) < FLOOD_WINDOW);
        sent.push((now, topic, direct));
        let topics = sent.iter().filter(|(_, t, _)| *t).count();
        let peers: usize = sent.iter().map(|(_, _, d)| d).sum();
        if topics > MAX_TOPIC_ANNOUNCES || peers > MAX_DIRECT_ANNOUNCES {
            self.fail(format!(
                "n{node} floods {repo}: seq {seq} announced to the topic {topics} times and to {peers} peers directly within {} s",
                FLOOD_WINDOW.as_secs()
            ));
        }
        // Forget statements nobody announced for a while.
        if self.checks.announced.len() > 4096 {
            self.checks.announced.retain(|_, v| {
                v.iter()
                    .any(|(at, _, _)| now.saturating_sub(*at) < FLOOD_WINDOW)
            });
        }
    }

    /// Check an answer to an admin command.
    pub fn check_reply(&mut self, node: usize, command: &CoreCommand, reply: &Reply) {
        let (CoreCommand::Replicas { .. }, Reply::Ok(Payload::Replicas(report))) = (command, reply)
        else {
            return;
        };
        let Some(manifest) = crate::record::parse_hash_hex(&report.manifest) else {
            return;
        };
        let Some(info) = self.content.manifests.get(&manifest).cloned() else {
            return;
        };
        for holder in &report.holding {
            let index = holder
                .node_id
                .parse::<iroh::EndpointId>()
                .ok()
                .and_then(|id| self.index_of(&id));
            // It holds the state, or a newer one of the repository (which
            // contains it), complete.
            let holds = index.is_some_and(|h| {
                let blobs = &self.nodes[h].blobs;
                self.content.manifests.iter().any(|(hash, m)| {
                    m.repo == info.repo
                        && m.order >= info.order
                        && blobs.contains(hash)
                        && m.packs.iter().all(|p| blobs.contains(&p.hash))
                })
            });
            if !holds {
                self.fail(format!(
                    "n{node} counted {} as holding {}, which it does not",
                    &holder.node_id[..holder.node_id.len().min(10)],
                    short(&manifest)
                ));
            }
        }
    }
}
