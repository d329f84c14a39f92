//! The invariants, checked after every step.
//!
//! Safety, for every honest node and repository:
//! - it holds only states a publisher the owner sanctioned made (no
//!   stranger's state, whatever it announces);
//! - its held state never moves to an older state of the owner, and its
//!   `seq` never decreases, across restarts too;
//! - no held `seq` is more than an hour ahead of its clock;
//! - its tables stay within their documented caps, and a trusted peer's
//!   entry in its learned hints or peers seen is never pushed out while a
//!   stranger's stays;
//! - the peers told directly of a state just taken are the trusted peers
//!   behind first, strangers only after them;
//! - a neighbour that is neither trusted nor announced anything is not
//!   learned as a peer;
//! - a retired repository (its record gone, brought by a followed
//!   identity) has left its topic;
//! - a fetch asks no untrusted peer before a trusted one, and no peer that
//!   stalled it or sent wrong bytes for the repository within the
//!   demotion before one that did not;
//! - what it serves to git clients is exactly the states it holds;
//! - a peer it reports as holding a state (`--replicas`) holds it, or a
//!   newer state of the repository, complete.
//!
//! Liveness is checked by the world at the end of a run.

use super::model::*;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use iroh::EndpointId;

use crate::{
    api::{Payload, Reply},
    core::{
        CoreCommand, ProviderFault, ServedState,
        hints::MAX_HINTS,
        repo::{DEMOTION, MAX_DEMOTED, MAX_PEERS_CONTACTED},
        repo::{MAX_CATCH_UP_PUSHES, MAX_PROBES, MAX_REBROADCAST_DIRECT},
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
        // Demotions and the tables' entries lived in the memory of the
        // incarnation that ended.
        self.faulted.retain(|(n, _, _), _| *n != node);
        self.protected.retain(|(n, _, _), _| *n != node);
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
        let me = self.nodes[node].key.public();
        let life = self.nodes[node].life;
        let mut broken = Vec::new();
        let mut seen = Vec::new();
        if core.pulls.len() > MAX_PULL_PEERS {
            broken.push(format!("{} pull backoffs kept", core.pulls.len()));
        }
        if core.pull_queues.len() > MAX_PULL_PEERS {
            broken.push(format!("{} pull queues kept", core.pull_queues.len()));
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
        let lurkers: BTreeSet<String> = self
            .nodes
            .iter()
            .filter(|n| {
                n.stranger
                    .as_ref()
                    .is_some_and(|s| s.behaviour == Adversary::Lurker)
            })
            .map(|n| n.key.public().to_string())
            .collect();
        for (repo_id, repo) in &core.repos {
            if let Some(h) = repo
                .book
                .hints
                .iter()
                .find(|h| lurkers.contains(&h.hint.node_id))
            {
                broken.push(format!(
                    "{repo_id}: learned {} as a peer, a neighbour that never announced anything",
                    &h.hint.node_id[..10]
                ));
            }
            if repo.retired() && repo.topic.is_some() {
                broken.push(format!(
                    "{repo_id}: retired (its record is gone and it came with a followed identity), yet still on its topic"
                ));
            }
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
            let trusted_keys = repo.trusted(me);
            let trusted: BTreeSet<String> = trusted_keys.iter().map(|id| id.to_string()).collect();
            let hints: Vec<(String, bool)> = repo
                .book
                .hints
                .iter()
                .map(|h| {
                    let id = h.hint.node_id.clone();
                    let trusted = trusted.contains(&id);
                    (id, trusted)
                })
                .collect();
            let peers_seen: Vec<(EndpointId, bool)> = repo
                .book
                .peers_seen
                .iter()
                .map(|s| (s.node_id, s.proven || trusted_keys.contains(&s.node_id)))
                .collect();
            let key = (node, life, repo_id.clone());
            if let Some((hints_before, seen_before)) = self.checks.protected.get(&key) {
                let gone = displaced(hints_before, &hints, &trusted)
                    .map(|id| ("learned hints", id))
                    .or_else(|| {
                        displaced(seen_before, &peers_seen, &trusted_keys)
                            .map(|id| ("peers seen", id.to_string()))
                    });
                if let Some((table, gone)) = gone {
                    broken.push(format!(
                        "{repo_id}: trusted peer {}'s entry in the {table} was pushed out while a stranger's stays",
                        &gone[..gone.len().min(10)]
                    ));
                }
            }
            self.checks
                .protected
                .insert(key, (protected(&hints), protected(&peers_seen)));
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
        self.checks
            .protected
            .retain(|(n, _, r), _| *n != node || tracked.contains(r));
        self.checks
            .faulted
            .retain(|(n, _, r), _| *n != node || tracked.contains(r));
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

    /// A node tells peers only of a state its database holds: otherwise a
    /// crash before the rows are written leaves a state spread that the
    /// node itself lost (for its own states, one it never takes back).
    pub fn check_told_durable(
        &mut self,
        node: usize,
        repo: &RepoId,
        statement: &crate::announce::SignedStatement,
    ) {
        let seq = statement.statement.seq;
        let on_disk = self.nodes[node]
            .disk
            .rows
            .get(repo)
            .and_then(|row| row.held.as_ref())
            .is_some_and(|held| held.statement == *statement);
        if !on_disk {
            let role = self.nodes[node].role.name();
            self.fail(format!(
                "n{node} ({role}) tells peers of {repo} seq {seq}, which its database does not hold"
            ));
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

/// A peer of `before` (protected then) whose entry is gone from `now` while
/// it is still trusted or was proven, and while `now` keeps an entry that is
/// not protected: a stranger's entry pushed it out.
fn displaced<T: Ord + Clone>(
    before: &BTreeSet<T>,
    now: &[(T, bool)],
    trusted: &BTreeSet<T>,
) -> Option<T> {
    if now.iter().all(|(_, protected)| *protected) {
        return None;
    }
    before
        .iter()
        .find(|id| !now.iter().any(|(n, _)| n == *id) && trusted.contains(*id))
        .cloned()
}

/// The protected entries of a table: those marked so.
fn protected<T: Ord + Clone>(entries: &[(T, bool)]) -> BTreeSet<T> {
    entries
        .iter()
        .filter(|(_, p)| *p)
        .map(|(id, _)| id.clone())
        .collect()
}

impl World {
    /// The peers a node tells directly of a state it just took (catch-up
    /// pushes) are the trusted peers last seen behind first: a stranger is
    /// among them only when every trusted peer behind is too.
    pub fn check_catch_up(&mut self, node: usize, repo: &RepoId, seq: u64, direct: &[EndpointId]) {
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        let Some(r) = core.repos.get(repo) else {
            return;
        };
        let me = self.nodes[node].key.public();
        let trusted = r.trusted(me);
        if direct.iter().all(|p| trusted.contains(p)) {
            return;
        }
        // Behind by what this node saw last, and behind in truth: a
        // replayed old statement can make a peer that sent the new one (and
        // is left out as its sender) look behind.
        let held = &self.checks.held;
        let ids = &self.ids;
        let left_out = r.book.peers_seen.iter().find(|s| {
            s.seq < seq
                && s.node_id != me
                && trusted.contains(&s.node_id)
                && !direct.contains(&s.node_id)
                && ids
                    .get(&s.node_id)
                    .and_then(|i| held.get(&(*i, repo.clone())))
                    .is_none_or(|(held_seq, _)| *held_seq < seq)
        });
        if let Some(left_out) = left_out {
            let message = format!(
                "n{node}: {repo}: catch-up pushes go to strangers while trusted peer {} is behind",
                left_out.node_id.fmt_short()
            );
            self.fail(message);
        }
    }
}

/// Margin around the demotion's end, for the clock of a job's end.
const DEMOTION_MARGIN: Duration = Duration::from_secs(5);

impl World {
    /// A fetch of `node` for `repo` reported these providers as failing it.
    pub fn note_faults(
        &mut self,
        node: usize,
        repo: &RepoId,
        faults: &[(EndpointId, ProviderFault)],
    ) {
        let tracked = self.nodes[node]
            .core
            .as_ref()
            .is_some_and(|c| c.repos.contains_key(repo) && !c.discarding.contains_key(repo));
        if faults.is_empty() || !tracked {
            return;
        }
        let key = (node, self.nodes[node].life, repo.clone());
        let now = self.now;
        let entry = self.checks.faulted.entry(key).or_default();
        for (peer, _) in faults {
            entry.insert(*peer, now);
        }
    }

    /// A fetch of `node` for `repo` asks `providers` in this order: no
    /// untrusted peer before a trusted one, and no peer that stalled or
    /// sent wrong bytes for this repository within [`DEMOTION`] before one
    /// that did not.
    pub fn check_providers(&mut self, node: usize, repo_id: &RepoId, providers: &[EndpointId]) {
        let me = self.nodes[node].key.public();
        let life = self.nodes[node].life;
        let Some(repo) = self.nodes[node]
            .core
            .as_ref()
            .and_then(|c| c.repos.get(repo_id))
        else {
            return;
        };
        let trusted = repo.trusted(me);
        let faulted = self.checks.faulted.get(&(node, life, repo_id.clone()));
        let ago = |p: &EndpointId| {
            faulted
                .and_then(|f| f.get(p))
                .map(|at| self.now.saturating_sub(*at))
        };
        let demoted = |p: &EndpointId| ago(p).is_some_and(|a| a + DEMOTION_MARGIN < DEMOTION);
        let clear = |p: &EndpointId| ago(p).is_none_or(|a| a > DEMOTION + DEMOTION_MARGIN);
        let mut broken = None;
        for (i, a) in providers.iter().enumerate() {
            for b in &providers[i + 1..] {
                if !trusted.contains(a) && trusted.contains(b) && clear(b) {
                    broken = Some(format!(
                        "asks untrusted {} before trusted {}",
                        a.fmt_short(),
                        b.fmt_short()
                    ));
                } else if demoted(a) && clear(b) {
                    broken = Some(format!(
                        "asks {}, which failed its fetch {} s ago, before {}",
                        a.fmt_short(),
                        ago(a).unwrap_or_default().as_secs(),
                        b.fmt_short()
                    ));
                }
                if broken.is_some() {
                    break;
                }
            }
            if broken.is_some() {
                break;
            }
        }
        if let Some(broken) = broken {
            let role = self.nodes[node].role.name();
            self.fail(format!("n{node} ({role}): fetch of {repo_id} {broken}"));
        }
    }
}
