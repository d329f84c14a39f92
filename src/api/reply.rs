//! Replies and their payloads: what the node answers to admin commands.
//! Plain data, shared by the repository core that builds most answers and
//! the admin socket that carries them. No I/O.

use serde::{Deserialize, Serialize};

use super::{PeerReplica, ReplicaStatus};
use crate::{git::RefSet, record::PeerHint};

/// The seeding policy's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDefault {
    /// Seed any repository asked for (e.g. by `git clone knot://`) unless blocked.
    #[default]
    Allow,
    /// Seed only what the operator added, followed or allowed.
    Deny,
}

/// A change to the seeding policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyRule {
    /// Seed it even when the default is deny.
    Allow,
    /// Never seed it; remove it if tracked.
    Block,
    /// Back to the default.
    Clear,
}

/// The seeding policy, as `policy show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    /// For repositories nobody asked for.
    pub default: PolicyDefault,
    /// Always allowed.
    pub allow: Vec<String>,
    /// Never tracked.
    pub block: Vec<String>,
}

/// One admin reply: `{"ok": {...}}` or `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The command succeeded.
    Ok(Payload),
    /// The command failed; the text says why and what to do.
    Error(String),
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Payload {
    /// A command with nothing to report but a message.
    Done {
        /// What happened.
        message: String,
    },
    /// Tracked repositories.
    Repos {
        /// One row per repository.
        repos: Vec<RepoSummary>,
    },
    /// Node status.
    Status(Box<NodeStatus>),
    /// Peers of one repository.
    Peers {
        /// The peers.
        peers: Vec<PeerView>,
    },
    /// A dialable ticket.
    Ticket {
        /// The endpoint ticket.
        ticket: String,
    },
    /// Result of a publish.
    Published(PublishReport),
    /// Result of a sync.
    Synced(SyncReport),
    /// Peers holding a state.
    Replicas(ReplicasReport),
    /// The seeding policy.
    Policy(PolicyView),
    /// A repository's ref state.
    Refs(RefsReport),
    /// What a check of held states found.
    Verified(VerifyReport),
    /// Mirrored repositories.
    Mirrors {
        /// One row per mirror.
        mirrors: Vec<MirrorView>,
    },
    /// From here on the connection carries a git protocol stream.
    Bridge,
}

/// One mirror: where it fetches from and how its last fetches went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorView {
    /// The repository its states are published under.
    pub repo_id: String,
    /// The git URL it fetches from.
    pub source: String,
    /// Whether a fetch runs now.
    pub fetching: bool,
    /// Unix time (ms) of the last fetch that reached the upstream.
    pub last_success: Option<u64>,
    /// Unix time (ms) the upstream's refs last changed here.
    pub last_change: Option<u64>,
    /// The manifest published from the last change.
    pub manifest: Option<String>,
    /// Failures in a row since the last success.
    pub failures: u32,
    /// The last failure, if the last fetch failed.
    pub error: Option<MirrorFailure>,
    /// Seconds until the next fetch (0: due or running).
    pub next_fetch_secs: u64,
    /// The latest states in which the upstream had deleted or rewritten
    /// refs, oldest first.
    #[serde(default)]
    pub rewrites: Vec<crate::state::MirrorRewrite>,
}

/// Why a mirror's last fetch failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorFailure {
    /// The class (`dns`, `tls`, `http-status`, `unreachable`, `not-found`,
    /// `too-large`, `timed-out`, `invalid-data`, `local`, `publish`, `git`).
    pub class: String,
    /// The HTTP status, for the `http-status` class.
    pub status: Option<u16>,
    /// What happened.
    pub message: String,
    /// What the operator can do.
    pub hint: String,
}

/// The ref state the node holds for a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefsReport {
    /// The repository.
    pub repo_id: String,
    /// The manifest the refs come from (`None`: no content yet).
    pub manifest: Option<String>,
    /// The refs and `HEAD`.
    pub refs: RefSet,
}

/// What `verify` found, one row per repository checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The repositories checked.
    pub repos: Vec<VerifyRow>,
}

/// The check of one repository's held state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRow {
    /// The repository.
    pub repo_id: String,
    /// The manifest checked (`None`: nothing held, nothing to check).
    pub manifest: Option<String>,
    /// Blobs that were missing and were rebuilt from the materialized copy.
    pub rebuilt: usize,
    /// Blobs that were missing and were fetched again from peers.
    pub fetched: usize,
    /// Why the state could not be made whole, if it could not (it is
    /// retried with backoff).
    #[serde(default)]
    pub error: Option<String>,
}

impl VerifyRow {
    /// Whether the state is whole now.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Peers holding a state, when enough do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicasReport {
    /// The repository.
    pub repo_id: String,
    /// The manifest.
    pub manifest: String,
    /// The peers counted as holding it, and why each counted.
    pub holding: Vec<CountedReplica>,
}

/// A peer counted as holding a state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountedReplica {
    /// The peer's node id.
    pub node_id: String,
    /// Why it counted.
    pub basis: ReplicaBasis,
}

/// Why a peer counted as holding a state. A peer's claim alone never counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaBasis {
    /// A trusted peer (operator or record) whose signed announcement names it.
    Trusted,
    /// It served a randomly chosen chunk of the manifest and of every pack,
    /// verified against their hashes.
    Proved,
}

impl ReplicaBasis {
    /// The basis in words, as the CLI prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaBasis::Trusted => "trusted",
            ReplicaBasis::Proved => "proved",
        }
    }
}

impl std::fmt::Display for CountedReplica {
    /// `<short node id> (<basis>)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: String = self.node_id.chars().take(10).collect();
        write!(f, "{short} ({})", self.basis.as_str())
    }
}

/// One tracked repository as shown by `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoSummary {
    /// The repository.
    pub repo_id: String,
    /// Object id HEAD points to.
    pub head: Option<String>,
    /// Current manifest hash.
    pub manifest: Option<String>,
    /// Manifest hash the materialized repository reflects.
    pub materialized: Option<String>,
    /// Sequence number of the state held.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Manifest hash of a newer state being fetched (or waiting to be).
    #[serde(default)]
    pub fetching: Option<String>,
    /// Packs in the current manifest.
    pub pack_count: usize,
    /// Bytes pinned for the current manifest.
    pub bytes_pinned: u64,
    /// Unix time of the last content sync.
    pub last_sync: Option<u64>,
    /// Unix time of the last successful record poll.
    pub last_poll: Option<u64>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Peers known: trusted ones and hints learned from gossip.
    pub peers_known: usize,
    /// Peers trusted to publish: the record's and the operator's.
    #[serde(default)]
    pub trusted_peers: usize,
    /// Gossip neighbours currently connected.
    pub peers_connected: usize,
    /// The repository's gossip topic is joined (a quiet one is left after
    /// `topic_idle_secs` and joined again by its next news).
    #[serde(default)]
    pub topic_joined: bool,
    /// Known peers that announced the state held here.
    #[serde(default)]
    pub peers_in_sync: usize,
    /// A per-repository storage limit set by the operator (bytes).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Where the record lives.
    pub record: Option<String>,
    /// A record write-back is waiting to be retried.
    pub write_back_pending: bool,
    /// The followed identity that brought the repository.
    #[serde(default)]
    pub followed_via: Option<String>,
    /// The owner's record is gone (deleted, or no longer listed by the
    /// followed identity): the peers it named are no longer trusted; the
    /// content stays.
    #[serde(default)]
    pub record_deleted: bool,
    /// When a repository a followed identity brought and no longer lists is
    /// removed (Unix time), unless its record comes back.
    #[serde(default)]
    pub remove_at: Option<u64>,
}

/// A followed identity as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowSummary {
    /// The identity's DID.
    pub did: String,
    /// Repositories it brought.
    pub repos: usize,
    /// Unix time of the last successful listing.
    pub last_list: Option<u64>,
    /// The last listing error.
    pub last_error: Option<String>,
}

/// Node-wide status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node id (hex public key).
    pub node_id: String,
    /// A ticket other nodes can dial.
    pub ticket: String,
    /// Direct addresses.
    pub addrs: Vec<String>,
    /// Tracked repositories.
    pub repo_count: u64,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// knotd version.
    pub version: String,
    /// Gossip traffic since start.
    pub gossip: GossipStats,
    /// Content jobs running now.
    #[serde(default)]
    pub jobs_running: usize,
    /// Repositories waiting for a content job slot.
    #[serde(default)]
    pub jobs_waiting: usize,
    /// Tasks alive in the node's async runtime: a number that keeps rising
    /// while the work stays the same is a leak.
    #[serde(default)]
    pub tasks_alive: usize,
    /// QUIC connections open now (to and from peers, all protocols): a
    /// number that keeps rising while the peers stay the same is a leak.
    #[serde(default)]
    pub connections_open: u64,
    /// Followed identities.
    #[serde(default)]
    pub follows: Vec<FollowSummary>,
    /// Per-repository status.
    pub repos: Vec<RepoSummary>,
    /// The relay setting: `disabled`, `default` or the relay URL.
    #[serde(default)]
    pub relay_mode: String,
    /// The discovery setting: `off`, `default` or the pkarr relay URL.
    #[serde(default)]
    pub discovery: String,
    /// The home relay(s) and whether this node is connected to them; empty
    /// when relays are disabled or none has been chosen yet.
    #[serde(default)]
    pub relays: Vec<RelayView>,
    /// How this node reaches each peer it knows: direct, relayed or idle.
    #[serde(default)]
    pub peer_paths: Vec<PeerPath>,
}

/// A home relay of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    /// The relay's URL.
    pub url: String,
    /// Whether this node holds a connection to it now.
    pub connected: bool,
    /// The last connection error, when not connected.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// How a peer is reached right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Over a direct UDP path (possibly hole-punched).
    Direct,
    /// Through a relay server.
    Relayed,
    /// No open path: no connection right now.
    Idle,
}

/// The path to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPath {
    /// The peer's node id.
    pub node_id: String,
    /// Direct, relayed or idle.
    pub path: PathKind,
    /// The address in use: a socket address or a relay URL.
    #[serde(default)]
    pub addr: Option<String>,
}

/// Gossip traffic counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    /// Valid announcements received.
    pub received: u64,
    /// Messages dropped as malformed, oversize, badly signed or off-topic.
    pub dropped_invalid: u64,
    /// Valid announcements whose state was not adopted (untrusted, older).
    pub rejected: u64,
    /// Messages dropped unread because their sender exceeded its rate.
    #[serde(default)]
    pub rate_limited: u64,
    /// Rejected announcements by reason.
    #[serde(default)]
    pub rejected_by_reason: std::collections::BTreeMap<String, u64>,
    /// Direct pushes not sent: too many exchanges were in flight.
    #[serde(default)]
    pub pushes_dropped: u64,
    /// Pulls put off: too many exchanges were in flight.
    #[serde(default)]
    pub pulls_deferred: u64,
    /// Commits to the database that failed (each written again later).
    #[serde(default)]
    pub store_failures: u64,
}

/// Where a peer of a repository is known from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerSource {
    /// Named by the operator with `--peer`.
    Operator,
    /// Listed in the owner's record.
    Record,
    /// Learned from gossip (an announcer or a neighbour).
    Learned,
}

/// A peer of a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// The hint as stored.
    #[serde(flatten)]
    pub hint: PeerHint,
    /// Whether the peer is a gossip neighbour right now.
    pub connected: bool,
    /// Whether the peer is trusted to publish.
    #[serde(default)]
    pub trusted: bool,
    /// Where the peer is known from.
    #[serde(default = "learned")]
    pub source: PeerSource,
    /// What it last announced.
    #[serde(default)]
    pub replica: Option<PeerReplica>,
    /// How that compares with this node's state.
    #[serde(default = "unknown")]
    pub status: ReplicaStatus,
}

fn unknown() -> ReplicaStatus {
    ReplicaStatus::Unknown
}

fn learned() -> PeerSource {
    PeerSource::Learned
}

/// Result of a publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishReport {
    /// The repository.
    pub repo_id: String,
    /// The new head object id.
    pub head: Option<String>,
    /// The new manifest hash.
    pub manifest: String,
    /// Packs in the new manifest.
    pub pack_count: usize,
    /// Bytes added to the store by this publish (new pack).
    pub bytes_added: u64,
    /// Whether the packs were consolidated into one.
    pub consolidated: bool,
    /// Whether nothing changed since the last publish.
    pub unchanged: bool,
}

/// Result of a sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The repository.
    pub repo_id: String,
    /// The manifest now held.
    pub manifest: Option<String>,
    /// The object id HEAD points to.
    pub head: Option<String>,
    /// Bytes fetched from peers.
    pub bytes_fetched: u64,
    /// What happened, in words.
    pub message: String,
}
