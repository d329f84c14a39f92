//! The invariants, checked after every step.
//!
//! Safety, for every honest node and repository:
//! - it holds only states a publisher the owner sanctioned made (no
//!   stranger's state, whatever it announces);
//! - its held state never moves to an older state of the owner, and its
//!   `seq` never decreases, across restarts too;
//! - no held `seq` is more than an hour ahead of its clock;
//! - its tables stay within their documented caps;
//! - a peer it reports as holding a state (`--replicas`) holds it, or a
//!   newer state of the repository, complete.
//!
//! Liveness is checked by the world at the end of a run.

use std::collections::BTreeMap;

use super::world::{World, short};
use crate::{
    admin::{Payload, Reply},
    core::{
        CoreCommand,
        gossip::MAX_PULL_PEERS,
        hints::MAX_HINTS,
        repo::MAX_PEERS_CONTACTED,
        trust::MAX_SEQ_AHEAD_MS,
    },
    repo_id::RepoId,
};

/// What the checks remember between steps.
#[derive(Debug, Default)]
pub struct Checks {
    /// The last held state per node and repository: (seq, order of its
    /// manifest among the repository's).
    held: BTreeMap<(usize, RepoId), (u64, u64)>,
}

/// Most peers whose announced state is kept per repository.
const MAX_PEERS_SEEN: usize = crate::core::replicas::MAX_PEERS_SEEN;

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
        for (repo_id, repo) in &core.repos {
            if repo.book.hints.len() > MAX_HINTS {
                broken.push(format!("{repo_id}: {} learned hints", repo.book.hints.len()));
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
            seen.push((repo_id.clone(), held.seq(), info.order, manifest));
        }
        let tracked: Vec<RepoId> = core.repos.keys().cloned().collect();
        for (repo_id, seq, order, manifest) in seen {
            let key = (node, repo_id.clone());
            if let Some(&(last_seq, last_order)) = self.checks.held.get(&key) {
                if seq < last_seq {
                    broken.push(format!(
                        "{repo_id}: seq went back from {last_seq} to {seq}"
                    ));
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
