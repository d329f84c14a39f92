//! Node events as the admin protocol streams them: what `watch` prints and
//! what a command asking for progress sees before its reply.

use serde::{Deserialize, Serialize};

/// An event, as streamed by `watch` and to commands asking for progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The repository it concerns, if one.
    #[serde(default)]
    pub repo: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub event: NodeEvent,
}

impl EventLine {
    /// One line describing the event, for people: `<repo>: <what happened>`.
    pub fn describe(&self) -> String {
        let repo = self.repo.as_deref().unwrap_or("-");
        let short = |s: &str| s.chars().take(12).collect::<String>();
        let what = match &self.event {
            NodeEvent::Watching => "watching".to_string(),
            NodeEvent::Adopted {
                manifest,
                seq,
                source,
            } => format!(
                "adopted {} (seq {seq}) from {}",
                short(manifest),
                short(source)
            ),
            NodeEvent::FetchStarted {
                manifest,
                providers,
            } => format!(
                "fetch of {} started ({providers} providers)",
                short(manifest)
            ),
            NodeEvent::FetchProgress {
                manifest,
                bytes,
                total,
            } => match total {
                Some(total) => format!("fetching {}: {bytes}/{total} bytes", short(manifest)),
                None => format!("fetching {}: {bytes} bytes", short(manifest)),
            },
            NodeEvent::FetchFinished {
                manifest,
                bytes,
                ms,
            } => format!("fetched {}: {bytes} bytes in {ms} ms", short(manifest)),
            NodeEvent::FetchFailed { manifest, error } => {
                format!("fetch of {} failed: {error}", short(manifest))
            }
            NodeEvent::Published {
                manifest,
                seq,
                bytes,
                ms,
            } => format!(
                "published {} (seq {seq}, {bytes} bytes added, {ms} ms)",
                short(manifest)
            ),
            NodeEvent::Rejected { sender, reason } => {
                format!("rejected a state from {}: {reason}", short(sender))
            }
            NodeEvent::PersistFailed { error, retry_secs } => {
                format!(
                    "the database could not record a change ({error}); written again in {retry_secs} s"
                )
            }
            NodeEvent::QuotaRefused { manifest, error } => {
                format!("refused {}: {error}", short(manifest))
            }
            NodeEvent::Repaired {
                manifest,
                rebuilt,
                fetched,
            } => format!(
                "repaired {}: {rebuilt} blob(s) rebuilt from the materialized copy, {fetched} fetched again",
                short(manifest)
            ),
            NodeEvent::PeerUp { peer } => format!("peer {} up", short(peer)),
            NodeEvent::PeerDown { peer } => format!("peer {} down", short(peer)),
            NodeEvent::PeerState {
                peer,
                manifest,
                status,
            } => format!(
                "peer {} holds {} ({})",
                short(peer),
                short(manifest),
                status.as_str()
            ),
            NodeEvent::Replicas {
                manifest,
                holding,
                wanted,
            } => format!("{holding}/{wanted} peers hold {}", short(manifest)),
            NodeEvent::PollError { error } => format!("record poll failed: {error}"),
            NodeEvent::RecordDeleted { revoked, remove_at } => {
                let removal = match remove_at {
                    Some(at) => format!("; removed at {at} (Unix time) unless it comes back"),
                    None => "; the content stays".to_string(),
                };
                format!(
                    "the owner's record is gone: {} peers it named are no longer trusted{removal}",
                    revoked.len()
                )
            }
            NodeEvent::FollowLimit {
                did,
                limit,
                refused,
            } => format!(
                "{did} lists {refused} repositories beyond [follow] max_repos_per_identity = {limit}; not tracked"
            ),
            NodeEvent::WriteBack { ok: true, .. } => "record written back".to_string(),
            NodeEvent::WriteBack { error, .. } => format!(
                "record write-back failed: {}",
                error.as_deref().unwrap_or("unknown error")
            ),
        };
        format!("{repo}: {what}")
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NodeEvent {
    /// The first line of a `watch`: events from here on are streamed.
    Watching,
    /// A state was taken, to be fetched.
    Adopted {
        /// Its manifest.
        manifest: String,
        /// Its sequence number.
        seq: u64,
        /// Why: the peer whose announcement, or "record".
        source: String,
    },
    /// A fetch started.
    FetchStarted {
        /// The manifest fetched.
        manifest: String,
        /// Peers it may come from.
        providers: usize,
    },
    /// A fetch moved on.
    FetchProgress {
        /// The manifest fetched.
        manifest: String,
        /// Bytes received so far.
        bytes: u64,
        /// Bytes to receive, when known.
        #[serde(default)]
        total: Option<u64>,
    },
    /// A fetch ended with the state held (materialized and pinned).
    FetchFinished {
        /// The manifest.
        manifest: String,
        /// Bytes fetched.
        bytes: u64,
        /// How long it took.
        ms: u64,
    },
    /// A fetch failed; it is retried.
    FetchFailed {
        /// The manifest.
        manifest: String,
        /// Why.
        error: String,
    },
    /// A state was published here.
    Published {
        /// The manifest.
        manifest: String,
        /// Its sequence number.
        seq: u64,
        /// Bytes of new pack data.
        bytes: u64,
        /// How long it took.
        ms: u64,
    },
    /// An announced state was not taken.
    Rejected {
        /// Who sent it.
        sender: String,
        /// Why.
        reason: String,
    },
    /// A state was refused because it would exceed a storage quota.
    QuotaRefused {
        /// The manifest.
        manifest: String,
        /// Why.
        error: String,
    },
    /// A gossip neighbour joined the repository's topic.
    PeerUp {
        /// The peer.
        peer: String,
    },
    /// A gossip neighbour left.
    PeerDown {
        /// The peer.
        peer: String,
    },
    /// A peer announced what it holds.
    PeerState {
        /// The peer.
        peer: String,
        /// Its manifest.
        manifest: String,
        /// Compared with this node's state.
        status: ReplicaStatus,
    },
    /// Peers holding the state waited for, so far.
    Replicas {
        /// The manifest waited for.
        manifest: String,
        /// Other peers holding it.
        holding: usize,
        /// How many are wanted.
        wanted: usize,
    },
    /// Reading the owner's record failed.
    PollError {
        /// Why.
        error: String,
    },
    /// Blobs of the held state were missing and were put back.
    Repaired {
        /// The manifest.
        manifest: String,
        /// Blobs rebuilt from the materialized copy.
        rebuilt: usize,
        /// Blobs fetched again from peers.
        fetched: usize,
    },
    /// The owner's record is gone (deleted, or no longer listed by the
    /// followed identity): the peers it named are no longer trusted.
    RecordDeleted {
        /// The node ids of the peers it named.
        revoked: Vec<String>,
        /// When a repository a followed identity brought is removed
        /// (seconds since the Unix epoch) unless the record comes back.
        #[serde(default)]
        remove_at: Option<u64>,
    },
    /// A followed identity lists more repositories than the node takes
    /// from one identity; the rest are not tracked.
    FollowLimit {
        /// The identity's DID.
        did: String,
        /// Most repositories one identity may bring
        /// (`[follow] max_repos_per_identity`).
        limit: usize,
        /// Listed repositories not tracked because of it.
        refused: usize,
    },
    /// The database could not record a change (disk full, I/O error): it
    /// is kept in memory and written again until the disk takes it.
    PersistFailed {
        /// The store's error.
        error: String,
        /// When it is written again (seconds from now).
        retry_secs: u64,
    },
    /// A record write-back ended.
    WriteBack {
        /// Whether it reached the PDS.
        ok: bool,
        /// Why not.
        #[serde(default)]
        error: Option<String>,
    },
}

/// How a peer's state compares with this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaStatus {
    /// The same state, announced by a trusted peer or proven.
    InSync,
    /// Claims the state held but has not proven it (a stranger's claim).
    Unproven,
    /// An older state.
    Behind,
    /// A newer state (or this node holds none).
    Ahead,
    /// Nothing announced yet, or not comparable.
    Unknown,
}

impl ReplicaStatus {
    /// The status in words, as `peers` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaStatus::InSync => "in sync",
            ReplicaStatus::Unproven => "unproven",
            ReplicaStatus::Behind => "behind",
            ReplicaStatus::Ahead => "ahead",
            ReplicaStatus::Unknown => "unknown",
        }
    }
}

/// What a peer last announced for a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReplica {
    /// The manifest it holds.
    pub manifest: String,
    /// Its sequence number.
    pub seq: u64,
    /// When it said so (seconds since the Unix epoch).
    pub seen: u64,
    /// It proved it holds that state (served chunks of its blobs).
    #[serde(default)]
    pub proven: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_flat_json() {
        let line = EventLine {
            at_ms: 5,
            repo: Some("did:plc:a/b".into()),
            event: NodeEvent::FetchFinished {
                manifest: "m".into(),
                bytes: 10,
                ms: 3,
            },
        };
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["kind"], "fetch-finished");
        assert_eq!(json["repo"], "did:plc:a/b");
        assert_eq!(json["bytes"], 10);
        assert_eq!(serde_json::from_value::<EventLine>(json).unwrap(), line);
    }
}
