//! Read-only views of the core for `list`, `status` and `peers`.

use std::collections::BTreeSet;

use super::{machine::Core, repo::Repo};
use crate::{
    api::{PeerSource, PeerView, RepoSummary},
    record::PeerHint,
    repo_id::RepoId,
};

impl Core {
    /// One summary per tracked repository, ordered by id.
    pub fn summaries(&self) -> Vec<RepoSummary> {
        self.repos.values().map(|r| self.summary(r)).collect()
    }

    /// Number of tracked repositories.
    pub fn repo_count(&self) -> usize {
        self.repos.len()
    }

    fn summary(&self, repo: &Repo) -> RepoSummary {
        let held = repo.held.as_ref();
        let trusted: BTreeSet<&str> = repo.trusted_hints().map(|h| h.node_id.as_str()).collect();
        let learned = repo
            .book
            .hints
            .iter()
            .filter(|h| !trusted.contains(h.hint.node_id.as_str()))
            .count();
        let fetching = match &repo.job {
            Some(super::repo::Running::Fetch { want, .. }) => Some(want),
            _ => repo.want.as_ref(),
        }
        .filter(|w| w.source != super::repo::WantSource::Check)
        .map(|w| w.manifest.to_hex());
        RepoSummary {
            repo_id: repo.config.repo_id.to_string(),
            head: held.and_then(|h| h.head.clone()),
            manifest: held.map(|h| h.manifest.to_hex()),
            materialized: held.map(|h| h.manifest.to_hex()),
            seq: held.map(|h| h.seq()),
            fetching,
            pack_count: held.map_or(0, |h| h.pack_count),
            bytes_pinned: held.map_or(0, |h| h.bytes),
            last_sync: held.map(|h| h.since),
            last_poll: repo.book.last_poll,
            last_error: repo.book.last_error.clone(),
            peers_known: trusted.len() + learned,
            trusted_peers: trusted.len(),
            peers_connected: repo.topic.as_ref().map_or(0, |t| t.neighbors.len()),
            topic_joined: repo.topic.is_some(),
            peers_in_sync: repo.in_sync_count(self.me),
            max_bytes: repo.config.max_bytes,
            record: repo.config.locator.as_ref().map(|l| l.at_uri()),
            write_back_pending: held.is_some_and(|h| h.write_back_pending),
            followed_via: repo.config.followed_via.clone(),
            record_deleted: repo.config.record_deleted,
            remove_at: self.removal_time(&repo.config.repo_id),
        }
    }

    /// The peers known for `repo_id`: operator and record peers (trusted),
    /// then learned hints, each once.
    pub fn peers(&self, repo_id: &RepoId) -> Result<Vec<PeerView>, String> {
        let repo = self
            .repos
            .get(repo_id)
            .ok_or_else(|| super::commands::not_tracked(repo_id))?;
        let neighbors = repo.topic.as_ref().map(|t| &t.neighbors);
        let record_peers = repo.record.iter().flat_map(|c| c.record.peers.iter());
        let sources = repo
            .config
            .operator_peers
            .iter()
            .map(|h| (h, PeerSource::Operator))
            .chain(record_peers.map(|h| (h, PeerSource::Record)))
            .chain(
                repo.book
                    .hints
                    .iter()
                    .map(|h| (&h.hint, PeerSource::Learned)),
            );
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (hint, source) in sources {
            if !seen.insert(hint.node_id.clone()) {
                continue;
            }
            let connected = neighbors.is_some_and(|n| {
                hint.node_id
                    .parse::<iroh::EndpointId>()
                    .is_ok_and(|id| n.contains(&id))
            });
            let peer = repo.peer_id(&hint.node_id);
            let (replica, status) = repo.replica_of(peer, source != PeerSource::Learned);
            out.push(PeerView {
                hint: PeerHint::clone(hint),
                connected,
                trusted: source != PeerSource::Learned,
                source,
                replica,
                status,
            });
        }
        Ok(out)
    }
}

impl Core {
    /// The manifest (hex) held for a tracked repository (`None`: no
    /// content yet), or why there is none to show.
    pub fn held_manifest(&self, repo_id: &RepoId) -> Result<Option<String>, String> {
        let repo = self
            .repos
            .get(repo_id)
            .ok_or_else(|| super::commands::not_tracked(repo_id))?;
        Ok(repo.held.as_ref().map(|h| h.manifest.to_hex()))
    }
}
