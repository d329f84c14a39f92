//! The simulator's vocabulary: the world and everything it holds (nodes,
//! network, content, PDS, checks, trace), its events and messages, the
//! scenario and the outcome. Plain data; the behaviour is in the modules
//! beside it (`impl World` blocks), which import this one and nothing of
//! each other, so no import runs back up.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use iroh::{EndpointId, SecretKey};
use iroh_blobs::Hash;
use rand::rngs::StdRng;

use crate::{
    announce::Announcement,
    api::PolicyRule,
    core::{
        Core, CoreCommand, Event, JobId, JobResult, ProviderFault, ReadId, ReplyId, ServedState,
        TimerKey, Via, Write,
    },
    record::RepoRecord,
    repo_id::RepoId,
    state::{FollowConfig, Locator, RepoRow},
};

/// Wall-clock milliseconds at virtual time zero.
pub const T0_MS: u64 = 1_800_000_000_000;

/// Something scheduled to happen.
#[derive(Debug)]
pub enum Ev {
    /// An event for one incarnation of a node's core.
    Core {
        node: usize,
        life: u32,
        event: Event,
    },
    /// A message arriving at a node (whatever incarnation is up).
    Message { node: usize, msg: Msg },
    /// A timer of one incarnation.
    Timer {
        node: usize,
        life: u32,
        key: TimerKey,
    },
    /// A content job of one incarnation ends.
    Job {
        node: usize,
        life: u32,
        repo: RepoId,
        job: JobId,
        result: JobResult,
        faults: Vec<(EndpointId, ProviderFault)>,
    },
    /// Lazy writes of one incarnation reach the disk.
    Flush { node: usize, life: u32 },
    /// A record read of one incarnation reaches the PDS.
    Poll {
        node: usize,
        life: u32,
        repo: RepoId,
        locator: Locator,
        read: ReadId,
    },
    /// An identity listing of one incarnation reaches the PDS.
    List {
        node: usize,
        life: u32,
        did: String,
        read: ReadId,
    },
    /// An author publishes a new state of a repository.
    Publish { node: usize, repo: RepoId },
    /// A node crashes.
    Crash { node: usize },
    /// A crashed node starts again.
    Restart { node: usize },
    /// A partition starts.
    Partition,
    /// Links come back.
    Heal { pairs: Vec<(usize, usize)> },
    /// An owner's PDS goes down for a while.
    PdsDown { owner: usize },
    /// It is back.
    PdsUp { owner: usize },
    /// A node's disk fills up: its durable commits fail.
    DiskFull { node: usize },
    /// Space is freed.
    DiskOk { node: usize },
    /// A stranger acts.
    Adversary { node: usize },
    /// The owner deletes a repository's record.
    DeleteRecord { repo: RepoId },
    /// An operator runs an admin command.
    Admin {
        node: usize,
        command: crate::core::CoreCommand,
    },
    /// Faults stop; publishes stop.
    EndActive,
    /// The liveness bound is reached.
    Settled,
}

/// What travels between nodes.
#[derive(Debug)]
pub enum Msg {
    /// An announcement, by gossip or directly.
    Announcement {
        repo: RepoId,
        announcement: Box<Announcement>,
        via: Via,
    },
    /// A gossip neighbour came up.
    NeighborUp { repo: RepoId, peer: usize },
    /// A gossip neighbour went away.
    NeighborDown { repo: RepoId, peer: usize },
    /// A pull asks this node for its statements of `repos`.
    PullAsk { from: usize, repos: Vec<RepoId> },
}

/// One repository of the scenario.
#[derive(Debug, Clone)]
pub struct SimRepo {
    /// Its id.
    pub id: RepoId,
    /// Its owner (index into the owners: the author node has the same index).
    pub owner: usize,
}

/// The simulated world. See the module documentation.
pub struct World {
    pub seed: u64,
    pub scenario: Scenario,
    pub rng: StdRng,
    pub t0: Instant,
    pub now: Duration,
    pub queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pub events: HashMap<u64, Ev>,
    pub next_event: u64,
    pub nodes: Vec<SimNode>,
    pub ids: BTreeMap<EndpointId, usize>,
    pub repos: Vec<SimRepo>,
    pub net: Net,
    pub content: Content,
    pub pds: Pds,
    pub trace: Trace,
    pub checks: Checks,
    pub owner_faults: OwnerFaults,
    pub outcome: Outcome,
    /// Faults and publishes are on.
    pub active: bool,
    pub failure: Option<Box<Failure>>,
}

/// The first 8 hex digits of a hash, for traces.
pub fn short(hash: &iroh_blobs::Hash) -> String {
    hash.to_hex()[..8].to_string()
}

/// What a stranger does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adversary {
    /// Replays statements it heard, old ones too, on topics and directly.
    Replayer,
    /// Announces statements of its own: any seq (0, far future,
    /// `u64::MAX`), manifests it made up or other repositories'.
    Forger,
    /// Forwards trusted statements, so that it is asked for their content,
    /// and then never sends a byte.
    Staller,
    /// Forwards trusted statements and serves wrong bytes.
    Liar,
    /// Claims to hold every state it hears of, holding nothing.
    FakeReplica,
    /// Announces held states under many fresh keys, to crowd real peers
    /// out of every table.
    Displacer,
    /// A publisher a careless owner named in the record, whose manifests
    /// declare packs far smaller than they are.
    LyingPublisher,
    /// A peer the record named until the owner deleted the record, which
    /// then publishes states of its own.
    RogueExPeer,
    /// The owner's clock is broken: one write-back stores a `seq` at the end
    /// of time, and a follower crashes while fetching that state.
    FarFutureRecord,
    /// An identity the seeders follow that renames its records on every
    /// listing.
    ChurningIdentity,
    /// An operator (or a group member on the socket) sending admin commands
    /// with extreme values.
    ExtremeOperator,
    /// Joins every topic and never says anything: a neighbour that neither
    /// is trusted nor provides, so no node may learn it as a peer.
    Lurker,
}

/// How a stranger answers a request for a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// Serves what it holds.
    Honest,
    /// Accepts the request and sends nothing.
    Stall,
    /// Sends bytes that do not match.
    WrongBytes,
}

/// A stranger's state.
#[derive(Debug, Clone)]
pub struct Stranger {
    pub behaviour: Adversary,
    /// Announcements heard, oldest first.
    pub heard: VecDeque<(RepoId, Announcement)>,
    pub joined: bool,
}

/// One statement announced by one incarnation: node, life, repository, seq.
pub type Announced = (usize, u32, RepoId, u64);
/// One announcement of it: when, to the topic or not, to how many peers.
pub type Sent = (Duration, bool, usize);

/// What the checks remember between steps.
#[derive(Debug, Default)]
pub struct Checks {
    /// The last held state per node and repository: (seq, order of its
    /// manifest among the repository's).
    pub held: BTreeMap<(usize, RepoId), (u64, u64)>,
    /// Announcements of one statement by one incarnation of a node in the
    /// last [`FLOOD_WINDOW`] (its limits are kept in memory): when, to the
    /// topic or not, and how many peers directly.
    pub announced: BTreeMap<Announced, Vec<Sent>>,
    /// Per incarnation of a node and repository: the providers its fetches
    /// reported as stalling or sending wrong bytes, and when (the core
    /// demotes them, in memory).
    pub faulted: BTreeMap<Incarnation, BTreeMap<EndpointId, Duration>>,
    /// Per incarnation of a node and repository, as of the last step: the
    /// protected peers in its learned hints (trusted ones) and in its peers
    /// seen (trusted or proven ones).
    pub protected: BTreeMap<Incarnation, (BTreeSet<String>, BTreeSet<EndpointId>)>,
}

/// One repository of one incarnation of a node: node, life, repository.
pub type Incarnation = (usize, u32, RepoId);

/// A pack: its hash, true size and the size its manifest declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    pub hash: Hash,
    pub size: u64,
    pub declared: u64,
}

/// A manifest the world knows.
#[derive(Debug, Clone)]
pub struct ManifestInfo {
    pub repo: RepoId,
    pub packs: Vec<Pack>,
    pub head: String,
    /// Made by a publisher the owner sanctioned at the time.
    pub legit: bool,
    /// Held by some honest node (a publish that crashed before it finished
    /// makes a manifest nobody ever holds).
    pub held: bool,
    /// On some honest node's disk (held durably) at some point.
    pub durable: bool,
    /// Made by the owner's own knot: the states every follower must reach.
    pub honest: bool,
    /// Order of creation among the repository's manifests.
    pub order: u64,
}

/// Every manifest made in the world.
#[derive(Debug, Default)]
pub struct Content {
    pub manifests: BTreeMap<Hash, ManifestInfo>,
    pub made: u64,
}

/// What a run looks like: who takes part, for how long, and how hostile
/// the world is. [`Scenario::random`] draws one from a seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Owners, each with one author knot publishing its repositories.
    pub owners: usize,
    /// Repositories each owner publishes.
    pub repos_per_owner: usize,
    /// Seeders: follow every repository, trusting its author and record.
    pub seeders: usize,
    /// Home followers: follow every repository, trusting only a seeder, or
    /// only the record.
    pub homes: usize,
    /// Hostile strangers, one behaviour each.
    pub adversaries: Vec<Adversary>,
    /// Virtual time during which faults are injected and authors publish.
    pub active: Duration,
    /// Virtual time after the faults stop within which every honest
    /// follower must hold its owner's newest state.
    pub settle: Duration,
    /// Mean time between two publishes of one author.
    pub publish_every: Duration,
    /// Fault rates while active.
    pub faults: Faults,
    /// How long honest nodes keep a quiet repository's topic joined
    /// ([`crate::core::Settings::topic_idle`]; `None`: never left).
    pub topic_idle: Option<Duration>,
}

/// How often faults happen while a scenario is active.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Mean time between crashes of some node (`None`: no crashes).
    pub crash_every: Option<Duration>,
    /// Mean time between partitions (`None`: none).
    pub partition_every: Option<Duration>,
    /// Mean time between PDS outages (`None`: none).
    pub pds_outage_every: Option<Duration>,
    /// Mean time between spells of a full disk on some node, during which
    /// its durable commits fail (`None`: none).
    pub disk_full_every: Option<Duration>,
    /// Chance that one message is lost.
    pub loss: f64,
    /// Chance that one message is delivered twice.
    pub duplicate: f64,
    /// Chance that a crashed node stays a gossip neighbour of its peers
    /// (iroh-gossip keeps a restarted peer's stale connection).
    pub stale_neighbor: f64,
}

/// Steps of a run, the last [`TRACE_KEPT`] of them kept for a failure;
/// with `KNOTD_SIM_TRACE=1` every step is printed as it happens.
#[derive(Debug)]
pub struct Trace {
    pub lines: VecDeque<String>,
    pub steps: u64,
    pub print: bool,
    pub digest: blake3::Hasher,
}

/// A run that broke an invariant.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Which invariant, and how.
    pub message: String,
    /// The last steps before it.
    pub trace: Vec<String>,
    /// Virtual time of the failure.
    pub at: Duration,
}

/// What a run that passed did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Events handled by cores.
    pub steps: u64,
    /// Virtual time simulated.
    pub simulated: Duration,
    /// Node-hours simulated (nodes × virtual hours).
    pub node_hours: f64,
    /// Publishes done.
    pub publishes: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Digest of the whole trace.
    pub digest: String,
}

/// How long a dial to an unreachable peer takes to fail.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One gossip topic.
#[derive(Debug, Default, Clone)]
pub struct Topic {
    /// Nodes that joined it.
    pub members: BTreeSet<usize>,
    /// Neighbour links (lower index first).
    pub links: BTreeSet<(usize, usize)>,
    /// Links one side still believes in after the other crashed.
    pub stale: BTreeSet<(usize, usize)>,
}

/// Links and topics.
#[derive(Debug, Default)]
pub struct Net {
    /// Cut links (lower index first).
    pub cut: BTreeSet<(usize, usize)>,
    pub topics: BTreeMap<RepoId, Topic>,
}

/// Every honest node's `max_total_bytes`.
pub const MAX_TOTAL_BYTES: u64 = 1 << 30;

/// Every honest node's `max_repos_per_identity`.
pub const MAX_REPOS_PER_IDENTITY: usize = 40;

/// How long lazy writes wait to be flushed, as in the actor.
pub const FLUSH_AFTER: Duration = Duration::from_secs(30);

/// What a node is in the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Publishes the repositories of `did`, with its credentials.
    Author { did: String },
    /// Follows every repository, trusting its author and its record.
    Seeder,
    /// Follows every repository, trusting only this seeder.
    HomeTrustingSeeder { seeder: usize },
    /// Follows every repository through its record only.
    HomeTrustingRecord,
    /// A hostile stranger without a core.
    Stranger,
}

/// What survives a crash: the rows committed to the database.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    pub rows: BTreeMap<RepoId, RepoRow>,
    pub follows: BTreeMap<String, FollowConfig>,
    pub policy: BTreeMap<String, PolicyRule>,
}

/// A node of the world.
pub struct SimNode {
    pub key: SecretKey,
    pub role: Role,
    /// The core, while up (strangers have none).
    pub core: Option<Core>,
    /// Incarnation: events of an earlier one are dropped.
    pub life: u32,
    pub up: bool,
    pub disk: Disk,
    /// Lazy writes not yet flushed (lost in a crash).
    pub pending: BTreeMap<String, Write>,
    /// The disk is full: durable commits fail.
    pub disk_full: bool,
    pub flush_scheduled: bool,
    pub timers: HashMap<TimerKey, Duration>,
    /// Complete blobs in the blob store (survive crashes).
    pub blobs: BTreeSet<Hash>,
    /// Admin commands waiting for their reply.
    pub waiting: BTreeMap<ReplyId, CoreCommand>,
    /// What the node serves to git clients, as its core last said (kept
    /// in memory, as the actor does).
    pub served: BTreeMap<RepoId, ServedState>,
    pub next_reply: ReplyId,
    /// The hostile behaviour of a stranger.
    pub stranger: Option<Stranger>,
}

/// The DID of the churning identity.
pub const CHURNER: &str = "did:plc:churner";

/// Most steps a run may take: a hundred times a typical run's. More means
/// some work never ends (a timer that re-arms itself, a table that grows).
pub const MAX_STEPS: u64 = 1_000_000;

/// How long a retired repository is kept before it is removed, in the
/// simulation (`[follow] retired_grace_secs`).
pub const RETIRED_GRACE: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// Records the churning identity lists each time, all renamed.
pub const CHURN_PER_LISTING: usize = 20;

/// A `seq` from an owner's clock at the end of time.
pub const FAR_FUTURE_SEQ: u64 = u64::MAX - 7;

/// What the owner-side adversaries need the world to remember.
#[derive(Debug, Default)]
pub struct OwnerFaults {
    /// A repository whose record the owner deleted, and when.
    pub deleted: Option<(RepoId, Duration)>,
    /// Honest nodes that read the record as gone since it was deleted.
    pub saw_deleted: BTreeSet<usize>,
    /// From when the owner's next write-back of this repository carries a
    /// `seq` at the end of time; whether it did.
    pub broken_clock: Option<(RepoId, Duration, bool)>,
    /// Nodes crashed while fetching the far-future record's state.
    pub crashed_on_far_record: BTreeSet<usize>,
    /// Listings of the churning identity so far.
    pub churn_listings: u64,
}

/// One owner's PDS.
#[derive(Debug, Default, Clone)]
pub struct OwnerPds {
    /// Records by record key.
    pub records: BTreeMap<String, RepoRecord>,
    /// The versions each record had before, newest last (a lagging read
    /// may answer with one of them).
    pub history: BTreeMap<String, Vec<RepoRecord>>,
    pub down: bool,
    /// Renames every record on every listing.
    pub churning: bool,
}

/// The PDSes of all owners, by DID.
#[derive(Debug, Default)]
pub struct Pds {
    pub owners: BTreeMap<String, OwnerPds>,
}
