//! The admin socket: how operators and tools steer a running node.
//!
//! Owns the wire protocol (newline-delimited JSON: one request line, then
//! event lines for commands that stream, then one reply line; the
//! [`Command`] type is shared by server and client), the Unix socket server
//! ([`server`]) and the client ([`client`]). Nothing here survives a
//! restart.

mod client;
mod events;
mod server;
mod transfer;

pub use client::{AdminClient, SOCKET_NAME, SYSTEM_SOCKET, locate_socket};
pub use events::{EventLine, NodeEvent, PeerReplica, ReplicaStatus};
pub use server::{Executor, PackBody, PublishRequest, bind, serve};
pub use transfer::{LocalPublish, PackProgress, current_git_dir};

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{git::RefSet, record::PeerHint, repo_id::RepoId};

/// Longest request line the node accepts, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;
/// Longest reply line the client accepts, in bytes (a `list` of many
/// thousands of repositories is several megabytes).
pub const MAX_REPLY_LINE: usize = 256 * 1024 * 1024;
/// How long the client waits for quick commands.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits for commands that move repository content.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(3600);

/// Errors of the admin socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another node is listening on the socket.
    #[error(
        "admin socket {0} is in use by a running knotd; stop it first or set another admin_socket"
    )]
    SocketInUse(PathBuf),
    /// The configured socket group does not exist.
    #[error(
        "admin_socket_group {0:?} does not exist; create it (groupadd {0}) or change the setting"
    )]
    NoSuchGroup(String),
    /// The client may not use the socket.
    #[error(
        "permission denied on {path}: ask the node's operator to add you to group {group} (then log in again)"
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// The socket's group.
        group: String,
    },
    /// The socket could not be created.
    #[error("cannot create admin socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The client could not reach the node.
    #[error(
        "cannot reach knotd at {path}: {source}; is the node running? start it with `knotd run`, or point --socket / KNOT_SOCKET at its admin socket"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("admin socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The node did not answer in time.
    #[error("knotd did not answer within {0:?}")]
    Timeout(Duration),
    /// A line was not valid protocol JSON.
    #[error("malformed admin message: {0}")]
    Protocol(String),
    /// The node answered with an error.
    #[error("{0}")]
    Remote(String),
    /// Work on the client's side (its git repository) failed.
    #[error("{0}")]
    Local(String),
}

/// One admin request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Start tracking a repository.
    AddRepo {
        /// The repository.
        repo_id: RepoId,
        /// The owner's PDS URL.
        #[serde(default)]
        pds: Option<String>,
        /// The record's AT URI, `at://<did>/<collection>/<rkey>`.
        #[serde(default)]
        record: Option<String>,
        /// Endpoint tickets of peers to bootstrap from.
        #[serde(default)]
        peers: Vec<String>,
    },
    /// Stop tracking a repository and unpin its blobs.
    RemoveRepo {
        /// The repository.
        repo_id: RepoId,
    },
    /// Stop trusting a peer the operator named for a repository.
    RemovePeer {
        /// The repository.
        repo_id: RepoId,
        /// The peer's node id.
        node_id: String,
    },
    /// List tracked repositories.
    List,
    /// Node status.
    Status,
    /// Known peers of a repository.
    Peers {
        /// The repository.
        repo_id: RepoId,
    },
    /// A ticket other nodes can dial.
    Ticket,
    /// Publish a new state: the complete ref state (`refs`) and, after the
    /// request line, a git pack with the objects the node lacks, up to the
    /// end of the client's side of the connection (nothing: no new
    /// objects). An untracked repository is added first. No file path
    /// crosses the socket: the client packs, the node indexes the pack in a
    /// temporary repository of its own.
    Publish {
        /// The repository.
        repo_id: RepoId,
        /// The state to publish.
        refs: RefSet,
        /// Accept updates that are not fast-forwards.
        #[serde(default)]
        force: bool,
        /// Refuse unless the current manifest is this one (hex), so that
        /// concurrent publishers cannot overwrite each other.
        #[serde(default)]
        expected_manifest: Option<String>,
    },
    /// The ref state the node holds for a repository (from its manifest).
    Refs {
        /// The repository.
        repo_id: RepoId,
    },
    /// Serve `git upload-pack` for a repository: after a `bridge` reply the
    /// connection carries the git pack protocol both ways.
    UploadPack {
        /// The repository.
        repo_id: RepoId,
        /// The client's `GIT_PROTOCOL` (e.g. `version=2`).
        #[serde(default)]
        protocol: Option<String>,
    },
    /// Fetch the record and content now, and materialize the repository.
    Sync {
        /// The repository.
        repo_id: RepoId,
    },
    /// Change the seeding policy for a DID or repository id.
    Policy {
        /// Allow, block, or clear.
        rule: PolicyRule,
        /// A DID or a repository id.
        target: String,
    },
    /// Show the seeding policy.
    PolicyShow,
    /// Set a repository's storage limit (`None`: the node's quotas apply).
    SetQuota {
        /// The repository.
        repo_id: RepoId,
        /// Most bytes of packs its state may have.
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    /// Wait until `count` peers other than this node announce the state held.
    Replicas {
        /// The repository.
        repo_id: RepoId,
        /// How many.
        count: u32,
        /// How long to wait, in seconds.
        timeout_secs: u64,
    },
    /// Stream events (of one repository, or all) until the client leaves.
    /// The first line says the stream is set up, so a client can watch a
    /// command it sends next on another connection.
    Watch {
        /// Only this repository's events.
        #[serde(default)]
        repo_id: Option<RepoId>,
    },
    /// Track every repository an identity (DID or handle) lists in its
    /// `app.knot.repo` records, now and as they change.
    Follow {
        /// A DID or a handle.
        identity: String,
    },
    /// Stop following an identity and remove the repositories it brought.
    Unfollow {
        /// A DID or a handle.
        identity: String,
    },
    /// Check that every blob of the held state of one repository (or of
    /// all) is stored complete and pinned; rebuild what is missing from the
    /// materialized copy, else fetch it again from peers.
    Verify {
        /// Only this repository.
        #[serde(default)]
        repo_id: Option<RepoId>,
    },
}

impl Command {
    /// How long a client waits for each line of the answer (`None`: forever).
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Command::Watch { .. } => None,
            Command::Replicas { timeout_secs, .. } => {
                Some(Duration::from_secs(*timeout_secs).saturating_add(QUICK_TIMEOUT))
            }
            Command::Publish { .. }
            | Command::Sync { .. }
            | Command::Follow { .. }
            | Command::Verify { .. } => Some(LONG_TIMEOUT),
            _ => Some(QUICK_TIMEOUT),
        }
    }

    /// The repository the command is about, if one.
    pub fn repo_id(&self) -> Option<&RepoId> {
        match self {
            Command::AddRepo { repo_id, .. }
            | Command::RemoveRepo { repo_id }
            | Command::RemovePeer { repo_id, .. }
            | Command::Peers { repo_id }
            | Command::Publish { repo_id, .. }
            | Command::Refs { repo_id }
            | Command::UploadPack { repo_id, .. }
            | Command::Sync { repo_id }
            | Command::SetQuota { repo_id, .. }
            | Command::Replicas { repo_id, .. } => Some(repo_id),
            Command::Watch { repo_id } | Command::Verify { repo_id } => repo_id.as_ref(),
            Command::List
            | Command::Status
            | Command::Ticket
            | Command::Policy { .. }
            | Command::PolicyShow
            | Command::Follow { .. }
            | Command::Unfollow { .. } => None,
        }
    }

    /// Whether a byte stream follows the request line (until the client
    /// closes its side).
    pub fn has_body(&self) -> bool {
        matches!(self, Command::Publish { .. })
    }

    /// Whether the command streams events, and of which repository
    /// (`Some(None)`: all).
    pub fn streamed_events(&self) -> Option<Option<String>> {
        match self {
            Command::Watch { repo_id } => Some(repo_id.as_ref().map(|r| r.to_string())),
            _ => None,
        }
    }
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
    pub default: crate::config::PolicyDefault,
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
    /// From here on the connection carries a git protocol stream.
    Bridge,
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
    /// The followed identity no longer lists its record; the content stays
    /// until `remove-repo`.
    #[serde(default)]
    pub record_deleted: bool,
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

/// Parse one request line.
pub fn parse_command(line: &[u8]) -> Result<Command, AdminError> {
    serde_json::from_slice(line).map_err(|e| AdminError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_wire_format() {
        let c =
            parse_command(br#"{"cmd":"add-repo","repo_id":"did:plc:a/b","peers":["t1"]}"#).unwrap();
        assert_eq!(
            c,
            Command::AddRepo {
                repo_id: RepoId::parse("did:plc:a/b").unwrap(),
                pds: None,
                record: None,
                peers: vec!["t1".into()],
            }
        );
        assert_eq!(
            parse_command(br#"{"cmd":"status"}"#).unwrap(),
            Command::Status
        );
        let json = serde_json::to_string(&Command::List).unwrap();
        assert_eq!(json, r#"{"cmd":"list"}"#);
    }

    #[test]
    fn bad_commands_are_rejected_with_reason() {
        for (line, needle) in [
            (
                &br#"{"cmd":"add-repo","repo_id":"did:plc:a/../x"}"#[..],
                "name",
            ),
            (br#"{"cmd":"explode"}"#, "explode"),
            (
                br#"{"cmd":"remove-repo","repo_id":"did:plc:a/b","extra":1}"#,
                "extra",
            ),
            (br#"not json"#, "expected"),
            (br#"{"cmd":"remove-repo"}"#, "repo_id"),
        ] {
            let err = parse_command(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn reply_wire_format() {
        let r = Reply::Error("nope".into());
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"error":"nope"}"#);
        let r = Reply::Ok(Payload::Ticket { ticket: "t".into() });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"kind":"ticket","ticket":"t"}}"#
        );
    }
}
