//! What the node knows about one tracked repository, as plain data.
//!
//! Four parts with different owners and lifetimes, so that each is written
//! only when it changes and with the durability it needs:
//!
//! * [`RepoConfig`]: what the operator asked for (where the record lives, the
//!   peers named with `--peer`, how the repository came to be tracked);
//! * [`RecordCopy`]: the owner's `app.knot.repo` record as last read from (or
//!   written to) the PDS: the authority, and the source of record peers;
//! * [`Held`]: the state this node holds, pins, serves and announces;
//! * [`Bookkeeping`]: peer hints learned from gossip, the last poll and the
//!   last error: cheap to lose, written lazily.
//!
//! No I/O here. [`crate::store`] persists these; [`crate::core`] decides
//! how they change.

use iroh::EndpointId;
use iroh_blobs::Hash;
use serde::{Deserialize, Serialize};

use crate::{
    announce::SignedStatement,
    record::{PeerHint, RepoRecord},
    repo_id::RepoId,
};

/// Where a repository's ATProto record lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locator {
    /// The PDS base URL; resolved from the DID document when absent.
    pub pds: Option<String>,
    /// The DID whose repository holds the record.
    pub did: String,
    /// The record's collection.
    pub collection: String,
    /// The record key.
    pub rkey: String,
}

impl Locator {
    /// The record's AT URI.
    pub fn at_uri(&self) -> String {
        format!("at://{}/{}/{}", self.did, self.collection, self.rkey)
    }

    /// The default record of a repository: `at://<did>/app.knot.repo/<name>`.
    pub fn default_for(repo_id: &RepoId, pds: Option<String>) -> Self {
        Self {
            pds,
            did: repo_id.did().to_string(),
            collection: crate::record::COLLECTION.to_string(),
            rkey: repo_id.name().to_string(),
        }
    }
}

/// How a repository came to be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `add-repo` by the operator.
    #[default]
    Operator,
    /// A local publish.
    Publish,
    /// A `sync` of a repository nobody added (e.g. `git clone knot://`): kept
    /// once a state arrives, forgotten if the first sync fails.
    Sync,
    /// A record listed by a followed identity.
    Follow,
}

/// What the operator configured for a repository. Changes only by admin
/// command; written durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// The repository.
    pub repo_id: RepoId,
    /// Unix time it was added.
    pub added_at: u64,
    /// How it came to be tracked.
    #[serde(default)]
    pub origin: Origin,
    /// Where the owner's record lives, if it has one.
    #[serde(default)]
    pub locator: Option<Locator>,
    /// Peers the operator named with `--peer`: trusted publishers of this
    /// repository until removed.
    #[serde(default)]
    pub operator_peers: Vec<PeerHint>,
    /// The followed identity whose listing brought this repository.
    #[serde(default)]
    pub followed_via: Option<String>,
    /// The owner's record is gone: a poll found none, or the followed
    /// identity's listing no longer has it. The peers it named are no
    /// longer trusted; the content stays. A repository a followed identity
    /// brought is then no longer polled and is removed after the grace
    /// period unless the record comes back.
    #[serde(default)]
    pub record_deleted: bool,
    /// Unix time the record was found gone.
    #[serde(default)]
    pub record_deleted_at: Option<u64>,
    /// A storage limit for this repository's state, overriding
    /// `max_repo_bytes` (bytes).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

impl RepoConfig {
    /// A new configuration.
    pub fn new(repo_id: RepoId, origin: Origin, added_at: u64) -> Self {
        Self {
            repo_id,
            added_at,
            origin,
            locator: None,
            operator_peers: Vec::new(),
            followed_via: None,
            record_deleted: false,
            record_deleted_at: None,
            max_bytes: None,
        }
    }
}

/// The owner's record as last read from (or written to) its PDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCopy {
    /// The validated record.
    pub record: RepoRecord,
    /// Unix time it was read or written.
    pub read_at: u64,
    /// The node decided to take the state the record names and does not
    /// hold it yet (a fetch interrupted by a restart resumes).
    #[serde(default)]
    pub pending: bool,
    /// Manifests (hex) earlier reads of the record named, oldest first, at
    /// most [`RecordCopy::NAMED_KEPT`]: a record without a usable `seq` is
    /// taken only when it names a state it never named before, so a read
    /// that lags a version behind cannot roll the node back.
    #[serde(default)]
    pub named: Vec<String>,
}

impl RecordCopy {
    /// Earlier manifests kept in [`RecordCopy::named`].
    pub const NAMED_KEPT: usize = 16;

    /// The copy for `record`, read after this one: this one's manifest
    /// joins the ones named before.
    pub fn next(&self, record: RepoRecord, read_at: u64, pending: bool) -> Self {
        let mut named = self.named.clone();
        if let Some(m) = &self.record.manifest {
            named.retain(|n| n != m);
            named.push(m.clone());
        }
        if named.len() > Self::NAMED_KEPT {
            named.drain(..named.len() - Self::NAMED_KEPT);
        }
        Self {
            record,
            read_at,
            pending,
            named,
        }
    }

    /// Whether this record, or an earlier read of it, named `manifest`.
    pub fn ever_named(&self, manifest: &str) -> bool {
        self.record.manifest.as_deref() == Some(manifest)
            || self.named.iter().any(|n| n == manifest)
    }
}

/// The state a node holds: pinned, materialized, served and announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// BLAKE3 hash of the manifest (stored as hex).
    pub manifest: Hash,
    /// Object id HEAD resolves to.
    pub head: Option<String>,
    /// The statement behind the state: its publisher's, when adopted from a
    /// trusted peer, or this node's own. `statement.seq` is the state's
    /// sequence number.
    pub statement: SignedStatement,
    /// Packs the manifest lists.
    pub pack_count: usize,
    /// Bytes of those packs.
    pub bytes: u64,
    /// Unix time the state was taken.
    pub since: u64,
    /// Whether the owner's record still has to be told about this state.
    #[serde(default)]
    pub write_back_pending: bool,
}

impl Held {
    /// The state's sequence number.
    pub fn seq(&self) -> u64 {
        self.statement.statement.seq
    }

    /// The manifest as a blob hash (the statement's).
    pub fn manifest_hash(&self) -> Hash {
        self.statement.statement.manifest_hash()
    }
}

/// A peer hint learned from gossip (an announcer or a neighbour), with when
/// it was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedHint {
    /// Where the peer was reached.
    pub hint: PeerHint,
    /// Unix time in milliseconds it was last seen.
    pub seen_ms: u64,
}

/// Cheap per-repository facts, written lazily (batched).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bookkeeping {
    /// Peer hints learned from gossip, most recent first.
    #[serde(default)]
    pub hints: Vec<LearnedHint>,
    /// Unix time of the last successful record poll.
    #[serde(default)]
    pub last_poll: Option<u64>,
    /// The last error seen (poll, fetch, publish or write-back).
    #[serde(default)]
    pub last_error: Option<String>,
    /// What known peers last announced they hold, most recent first.
    #[serde(default)]
    pub peers_seen: Vec<PeerSeen>,
}

/// What a peer last announced it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSeen {
    /// The peer's node id.
    pub node_id: EndpointId,
    /// The manifest it holds (stored as hex).
    pub manifest: Hash,
    /// That state's sequence number.
    pub seq: u64,
    /// Unix time in milliseconds it said so.
    pub seen_ms: u64,
    /// The peer proved it holds `manifest`: it served a randomly chosen
    /// chunk of the manifest and of every pack, verified against their
    /// BLAKE3 hashes. A claim alone is not proof.
    #[serde(default)]
    pub proven: bool,
}

/// An identity (DID) whose repositories the node tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowConfig {
    /// The DID.
    pub did: String,
    /// Unix time it was followed.
    pub added_at: u64,
}

/// A repository this node mirrors from a git upstream
/// ([`crate::mirror`]): it publishes what it fetches there as the
/// repository's states, signed by this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorRow {
    /// The repository id its states are published under.
    pub repo_id: RepoId,
    /// The git URL fetched from, as checked when it was added.
    pub source: String,
    /// The Tangled record (AT URI) the source was resolved from, if any.
    #[serde(default)]
    pub record: Option<String>,
    /// Unix time (ms) it was added.
    pub added_at: u64,
    /// The latest times the upstream deleted or rewrote refs, oldest first
    /// ([`MAX_REWRITES`] at most).
    #[serde(default)]
    pub rewrites: Vec<MirrorRewrite>,
}

/// How many rewrites a mirror's row keeps.
pub const MAX_REWRITES: usize = 20;
/// How many ref names one rewrite keeps.
pub const MAX_REWRITTEN_REFS: usize = 100;

/// A state a mirror published in which the upstream had deleted refs or
/// moved them other than forward (a force-push, a moved tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorRewrite {
    /// Unix time (ms) of the publish.
    pub at: u64,
    /// The manifest published.
    pub manifest: String,
    /// The refs deleted or rewritten (the first [`MAX_REWRITTEN_REFS`]).
    pub refs: Vec<String>,
    /// How many more there were.
    #[serde(default)]
    pub more: usize,
}

/// Everything persisted about one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRow {
    /// Operator configuration.
    pub config: RepoConfig,
    /// The owner's record as last read.
    pub record: Option<RecordCopy>,
    /// The state held.
    pub held: Option<Held>,
    /// Hints, last poll, last error.
    pub bookkeeping: Bookkeeping,
}
