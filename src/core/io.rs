//! The core's vocabulary: what goes in ([`Event`], [`CoreCommand`]), what
//! comes out ([`Effect`], with [`Write`]s for the database, [`JobSpec`]s
//! for content jobs, [`TimerKey`]s for timers and the [`ServedState`] of
//! each repository), the outcomes the actor reports ([`JobResult`],
//! [`JobProgress`], [`RecordPoll`], [`WrittenBack`]) and the time
//! ([`Now`]). Plain data: the I/O modules speak it to the core, the core
//! imports none of them. Nothing here survives a restart by itself; the
//! store persists [`Write`]s.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use iroh::EndpointId;
use iroh_blobs::Hash;

use crate::{
    announce::{Announcement, SignedStatement},
    api::{NodeEvent, PolicyRule, Reply},
    record::{ListedRecord, PeerHint, RepoRecord},
    repo_id::RepoId,
    state::{Bookkeeping, FollowConfig, Held, Locator, RecordCopy, RepoConfig},
};

/// Most repositories asked for in one pull ([`Effect::Pull`]).
pub const MAX_PULL_REPOS: usize = 64;

/// Identifies one read, so that a late report of a stale read is ignored.
pub type ReadId = u64;

/// Identifies a waiting caller; the actor keeps the reply channel.
pub type ReplyId = u64;
/// Identifies a content job.
pub type JobId = u64;

/// The time an event happens at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for timers.
    pub at: Instant,
    /// Wall-clock time in milliseconds since the Unix epoch, for `seq`.
    pub unix_ms: u64,
}

impl Now {
    /// Wall-clock seconds since the Unix epoch.
    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }
}

/// An admin command that changes what the node tracks or holds.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreCommand {
    /// Track a repository, or add peers and a record locator to it.
    AddRepo {
        /// The repository.
        repo_id: RepoId,
        /// Where its record lives.
        locator: Option<Locator>,
        /// Peers the operator trusts to publish it.
        peers: Vec<PeerHint>,
    },
    /// Stop trusting a peer the operator named.
    RemovePeer {
        /// The repository.
        repo_id: RepoId,
        /// The peer.
        node_id: EndpointId,
    },
    /// Stop tracking a repository and drop its content.
    RemoveRepo {
        /// The repository.
        repo_id: RepoId,
    },
    /// Publish a local git repository as the repository's new state.
    Publish {
        /// The repository.
        repo_id: RepoId,
        /// The local git repository.
        source: PathBuf,
        /// Accept non-fast-forward updates.
        force: bool,
        /// Refuse unless the held manifest is this one.
        expected_manifest: Option<String>,
    },
    /// Poll the record and fetch what it names, or wait for a first state.
    Sync {
        /// The repository.
        repo_id: RepoId,
    },
    /// Track every repository an identity's records list.
    Follow {
        /// The identity's DID.
        did: String,
    },
    /// Stop following an identity.
    Unfollow {
        /// The identity's DID.
        did: String,
    },
    /// Change the seeding policy for a DID or repository id.
    Policy {
        /// Allow, block or clear.
        rule: PolicyRule,
        /// A DID or a repository id.
        target: String,
    },
    /// Set (or clear, with `None`) a repository's storage limit.
    SetQuota {
        /// The repository.
        repo_id: RepoId,
        /// Most bytes its state may have.
        max_bytes: Option<u64>,
    },
    /// Check the held state of one repository, or of all.
    Verify {
        /// Only this repository.
        repo_id: Option<RepoId>,
    },
    /// Wait until `count` other peers hold the state held now.
    Replicas {
        /// The repository.
        repo_id: RepoId,
        /// How many peers.
        count: usize,
        /// How long to wait.
        timeout: Duration,
    },
}

/// How an announcement arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// On the repository's gossip topic.
    Gossip,
    /// Pushed or pulled over `/knot/heads/1`.
    Direct,
}

/// What a content job produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StateInfo {
    /// The manifest's hash.
    pub manifest: Hash,
    /// Object id HEAD resolves to.
    pub head: Option<String>,
    /// Packs the manifest lists.
    pub pack_count: usize,
    /// Bytes of those packs.
    pub bytes: u64,
    /// Bytes fetched from peers, or added by a publish.
    pub bytes_moved: u64,
    /// A publish found nothing changed.
    pub unchanged: bool,
    /// A publish consolidated all packs into one.
    pub consolidated: bool,
    /// Blobs that were missing and were rebuilt from the materialized copy.
    pub blobs_rebuilt: usize,
    /// Blobs that were missing and were fetched.
    pub blobs_fetched: usize,
    /// Some blob of the state was stored already without this repository's
    /// pin when the collector had started this many passes: check the state
    /// again once the next pass starts.
    pub recheck_after_gc_pass: Option<u64>,
}

/// Why a content job failed; the text is for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The state does not fit this node: a storage quota, or packs not the
    /// sizes its manifest declares. Not retried until the quota changes.
    #[error("{0}")]
    Refused(String),
    /// No provider served what was missing (unreachable, stalled, wrong
    /// bytes). Retried with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// This node failed (git, the blob store, the disk). Retried with
    /// backoff.
    #[error("{0}")]
    Failed(String),
}

impl JobError {
    /// The operator's text.
    pub fn message(&self) -> &str {
        match self {
            JobError::Refused(m) | JobError::Unavailable(m) | JobError::Failed(m) => m,
        }
    }

    /// Whether the state was refused (not retried).
    pub fn refuses_state(&self) -> bool {
        matches!(self, JobError::Refused(_))
    }
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        JobError::Failed(message)
    }
}

impl From<&str> for JobError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// The result of a content job.
pub type JobResult = Result<StateInfo, JobError>;

/// How far a running fetch has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobProgress {
    /// Bytes of packs received so far.
    pub bytes: u64,
    /// Bytes of packs to receive in all.
    pub total: u64,
}

/// What the node serves of a repository to git clients: the state it
/// holds, materialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedState {
    /// The held manifest.
    pub manifest: Hash,
    /// Object id HEAD resolves to.
    pub head: Option<String>,
    /// The materialized repository, relative to the repositories' root.
    pub path: PathBuf,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An admin command; the answer goes to `reply`.
    Command {
        /// Who waits.
        reply: ReplyId,
        /// The command.
        command: CoreCommand,
    },
    /// A verified announcement for a repository.
    Announcement {
        /// The repository (the topic's, or the one the statement names).
        repo: RepoId,
        /// The verified announcement.
        announcement: Box<Announcement>,
        /// How it came.
        via: Via,
    },
    /// A gossip neighbour joined a repository's topic.
    NeighborUp {
        /// The repository.
        repo: RepoId,
        /// The neighbour.
        peer: EndpointId,
        /// Where it was reached.
        addrs: Vec<SocketAddr>,
    },
    /// A gossip neighbour left.
    NeighborDown {
        /// The repository.
        repo: RepoId,
        /// The neighbour.
        peer: EndpointId,
    },
    /// A topic's subscription ended.
    TopicClosed {
        /// The repository.
        repo: RepoId,
    },
    /// A pull from a peer finished (its announcements arrive as events of their own).
    Pulled {
        /// The peer.
        peer: EndpointId,
        /// Whether it answered.
        ok: bool,
    },
    /// A record read ([`Effect::PollRecord`]) finished.
    Polled {
        /// The repository.
        repo: RepoId,
        /// The read.
        read: ReadId,
        /// What it found.
        outcome: RecordPoll,
        /// How long the PDS asked not to be asked again (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// A content job finished.
    JobDone {
        /// The repository.
        repo: RepoId,
        /// The job.
        job: JobId,
        /// What it produced.
        result: JobResult,
        /// Providers that failed it, and how (a fetch that succeeded may
        /// have had some too).
        faults: Vec<(EndpointId, ProviderFault)>,
    },
    /// A running content job reported how far it has got.
    JobProgress {
        /// The repository.
        repo: RepoId,
        /// The job.
        job: JobId,
        /// How far it has got.
        progress: JobProgress,
    },
    /// A write-back finished.
    WrittenBack {
        /// The repository.
        repo: RepoId,
        /// The record on the PDS now, or why not.
        result: Result<WrittenBack, WriteFailure>,
    },
    /// A listing of a followed identity ([`Effect::ListIdentity`]) finished.
    Listed {
        /// The identity's DID.
        did: String,
        /// The read.
        read: ReadId,
        /// Its records and whether that is all of them, or why not.
        result: Result<(Vec<ListedRecord>, bool), String>,
        /// How long the PDS asked not to be asked again (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The blob store's collector started its `passes`-th pass since the
    /// node started, so every earlier pass is over.
    GcPass {
        /// Passes started.
        passes: u64,
    },
    /// A probe of a peer's claim to hold a state finished.
    ReplicaProbed {
        /// The repository.
        repo: RepoId,
        /// The peer probed.
        peer: EndpointId,
        /// The manifest it claimed.
        manifest: Hash,
        /// Whether it served verified chunks of the manifest and every pack.
        proved: bool,
    },
    /// A commit of durable writes failed: nothing of it reached the disk,
    /// and announcements of the same batch were not sent.
    PersistFailed {
        /// What the failed writes were about.
        subjects: Vec<Subject>,
        /// The store's error.
        error: String,
    },
    /// Network work was not started: too many exchanges in flight.
    NetBusy(Busy),
    /// The node's account was resolved to this DID.
    AccountResolved {
        /// The account's DID.
        did: String,
    },
    /// A timer set with [`Effect::SetTimer`] expired.
    Timer(TimerKey),
}

/// What one poll of a repository's record found.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordPoll {
    /// The record, validated.
    Found(RepoRecord),
    /// The PDS answered that the record does not exist: the owner deleted
    /// it, and the trust it granted is withdrawn. The text says where.
    NotFound(String),
    /// The PDS or the DID directory could not be asked, or did not answer
    /// usefully (timeout, HTTP error, rate limit): the copy held stays.
    Unreachable(String),
    /// The PDS answered with something that is not a valid record of this
    /// repository: the copy held stays.
    Invalid(String),
}

/// A timer; setting one with the same key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKey {
    /// A failed fetch may be tried again.
    Retry(RepoId),
    /// A write-back is due.
    WriteBack(RepoId),
    /// A `sync` waiting for a first state gives up (for that round).
    FirstState(RepoId, u64),
    /// Topics without neighbours re-dial their peers.
    Rejoin,
    /// A replicas waiter (by id) gives up.
    ReplicasDeadline(RepoId, u64),
    /// Ask peers again what they hold, for replicas waiters.
    ReplicasAsk(RepoId),
    /// Check every held state (the verify schedule).
    VerifyAll,
    /// Ask trusted peers what they hold (anti-entropy).
    Resync,
    /// Remove the retired repositories of followed identities whose grace
    /// period is over.
    RemoveRetired,
    /// Record reads may start (the earliest due, or a slot freed).
    RecordReads,
    /// Identity listings may start.
    Listings,
    /// Write again what a failed commit lost.
    Repersist,
    /// Pulls the actor had no room for are due again.
    DeferredPulls,
    /// Leave the topics of quiet repositories.
    TopicSleep,
}

/// What a content job does.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSpec {
    /// Pack the git repository at `source` as the new state.
    Publish {
        /// The local git repository.
        source: PathBuf,
        /// Accept non-fast-forward updates.
        force: bool,
        /// The state held now, to build on and to restore on failure.
        previous: Option<Hash>,
    },
    /// Fetch what `manifest` needs, materialize, pin.
    Fetch {
        /// The manifest.
        manifest: Hash,
        /// The state held now, to restore on failure.
        previous: Option<Hash>,
        /// Peers to fetch from, best first.
        providers: Vec<EndpointId>,
        /// Most bytes of packs the state may have (quotas), if limited.
        limit: Option<u64>,
        /// The held state is checked: rebuild missing blobs from the
        /// materialized copy before fetching.
        repair: bool,
    },
    /// Unpin everything of the repository and delete its materialized copy.
    Discard,
}

/// Who hears an announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Direct gossip neighbours, and these peers directly.
    Neighbors {
        /// Peers to push to over `/knot/heads/1`.
        direct: Vec<EndpointId>,
    },
    /// The whole topic, and these peers directly (not neighbours now).
    Everyone {
        /// Peers to push to over `/knot/heads/1`.
        direct: Vec<EndpointId>,
    },
    /// Only these peers, directly; nothing goes to the topic.
    Direct {
        /// Peers to push to over `/knot/heads/1`.
        direct: Vec<EndpointId>,
    },
}

/// Something the actor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Answer a waiting caller.
    Reply {
        /// Who.
        to: ReplyId,
        /// The answer.
        reply: Reply,
    },
    /// Write to the database; durable writes are committed before the next
    /// effect runs. When that commit fails, the actor sends none of the
    /// batch's later announcements, turns its later successful replies
    /// into errors (what they report was not recorded), and reports
    /// [`Event::PersistFailed`] before anything else.
    Persist(Write),
    /// Start a content job.
    StartJob {
        /// The repository.
        repo: RepoId,
        /// The job's id, echoed in [`Event::JobDone`].
        job: JobId,
        /// What to do.
        spec: JobSpec,
        /// Someone waits on it (an operator, a `git` client): it goes
        /// ahead of background work in the executor's limits too.
        interactive: bool,
    },
    /// Join a repository's gossip topic.
    JoinTopic {
        /// The repository.
        repo: RepoId,
        /// Peers to bootstrap from.
        peers: Vec<EndpointId>,
    },
    /// Dial more peers on a joined topic.
    DialPeers {
        /// The repository.
        repo: RepoId,
        /// The peers.
        peers: Vec<EndpointId>,
    },
    /// Leave a repository's topic.
    LeaveTopic {
        /// The repository.
        repo: RepoId,
    },
    /// Send a statement under this node's envelope.
    Announce {
        /// The repository.
        repo: RepoId,
        /// The statement.
        statement: SignedStatement,
        /// Who hears it.
        audience: Audience,
    },
    /// Ask a peer for its announcements of these repositories.
    Pull {
        /// The peer.
        peer: EndpointId,
        /// At most [`MAX_PULL_REPOS`] repositories.
        repos: Vec<RepoId>,
    },
    /// Check that a peer holds a state this node holds: ask it for a
    /// randomly chosen chunk of the manifest and of every pack it lists,
    /// verified against their hashes; the result comes as
    /// [`Event::ReplicaProbed`] (a probe that cannot run fails).
    ProbeReplica {
        /// The repository.
        repo: RepoId,
        /// The peer.
        peer: EndpointId,
        /// The manifest it claims to hold.
        manifest: Hash,
    },
    /// Add peers' addresses to the endpoint's address book.
    LearnAddrs(Vec<PeerHint>),
    /// Read a repository's record once; the result comes as
    /// [`Event::Polled`] with the same `read`.
    PollRecord {
        /// The repository.
        repo: RepoId,
        /// Where the record lives.
        locator: Locator,
        /// Which read this is.
        read: ReadId,
    },
    /// List a followed identity's records once; the result comes as
    /// [`Event::Listed`] with the same `read`.
    ListIdentity {
        /// The identity's DID.
        did: String,
        /// Which read this is.
        read: ReadId,
    },
    /// Write the held state into the account's record (read, merge, write
    /// with compare-and-swap), adding this node's peer hint.
    WriteBack {
        /// The repository (the account's own).
        repo: RepoId,
        /// The record's collection.
        collection: String,
        /// The record key.
        rkey: String,
        /// Object id HEAD resolves to.
        head: Option<String>,
        /// The manifest hash (hex).
        manifest: String,
        /// The state's sequence number.
        seq: u64,
    },
    /// What the node holds of a repository changed: serve this state to
    /// git clients from now on, or (`None`) nothing. Emitted when a state
    /// is loaded at start-up, taken (published or fetched), and when the
    /// repository is removed; a repository without one is not served.
    Served {
        /// The repository.
        repo: RepoId,
        /// The state to serve.
        state: Option<ServedState>,
    },
    /// Tell watchers what happened.
    Notify {
        /// The repository it concerns, if one.
        repo: Option<RepoId>,
        /// What happened.
        event: NodeEvent,
    },
    /// Set (or replace) a timer.
    SetTimer {
        /// Which.
        key: TimerKey,
        /// When it fires.
        at: Instant,
    },
}

/// A write-back that reached the PDS.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenBack {
    /// The record on the PDS now.
    pub record: RepoRecord,
    /// The record named a newer state and was left alone.
    pub superseded: bool,
}

/// A write-back that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteFailure {
    /// Why, for the operator.
    pub message: String,
    /// How long the PDS asked to wait, if it did.
    pub retry_after: Option<Duration>,
}

/// How long one provider of a fetch may send nothing before the job gives
/// up on it ([`ProviderFault::Stalled`]).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the providers of a fetch running may make (almost) no progress
/// before the job starts the next provider alongside them.
pub const HEDGE_AFTER: Duration = Duration::from_secs(2);

/// How a provider failed a fetch, as the job saw it. The core demotes such
/// a provider for the repository for [`DEMOTION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderFault {
    /// It accepted the request and then sent nothing for the progress deadline.
    Stalled,
    /// It sent bytes that do not match the hash asked for.
    WrongBytes,
}

impl ProviderFault {
    /// What the provider did, in words, as logged.
    pub fn reason(self) -> &'static str {
        match self {
            ProviderFault::Stalled => "it sent nothing in time",
            ProviderFault::WrongBytes => "it sent bytes that do not match the hash",
        }
    }
}

/// One change to a repository's row.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Insert or replace the configuration (adds the repository).
    Config(RepoConfig),
    /// Replace or clear the record copy.
    Record(RepoId, Option<RecordCopy>),
    /// Replace or clear the held state.
    Held(RepoId, Option<Box<Held>>),
    /// Replace the bookkeeping.
    Bookkeeping(RepoId, Bookkeeping),
    /// Remove the repository and everything known about it.
    Remove(RepoId),
    /// Follow an identity.
    Follow(FollowConfig),
    /// Stop following an identity.
    Unfollow(String),
    /// Set (or clear) the policy rule for a DID or repository id.
    Policy(String, Option<PolicyRule>),
}

impl Write {
    /// Whether the write must reach the disk before the caller acts on it.
    /// Bookkeeping may be lost in a crash; everything else may not.
    pub fn needs_durability(&self) -> bool {
        !matches!(self, Write::Bookkeeping(..))
    }

    /// What the write is about.
    pub fn subject(&self) -> Subject {
        match self {
            Write::Config(c) => Subject::Repo(c.repo_id.clone()),
            Write::Record(id, _)
            | Write::Held(id, _)
            | Write::Bookkeeping(id, _)
            | Write::Remove(id) => Subject::Repo(id.clone()),
            Write::Follow(f) => Subject::Follow(f.did.clone()),
            Write::Unfollow(did) => Subject::Follow(did.clone()),
            Write::Policy(target, _) => Subject::Policy(target.clone()),
        }
    }

    /// The key written: a repository id, or a followed DID.
    pub fn key(&self) -> &str {
        match self {
            Write::Config(c) => c.repo_id.as_str(),
            Write::Record(id, _)
            | Write::Held(id, _)
            | Write::Bookkeeping(id, _)
            | Write::Remove(id) => id.as_str(),
            Write::Follow(f) => &f.did,
            Write::Unfollow(did) => did,
            Write::Policy(target, _) => target,
        }
    }
}

/// What a durable write is about: the rows the core writes again, from
/// what it holds then, after a commit failed ([`Event::PersistFailed`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// A repository's configuration, record copy and held state.
    Repo(RepoId),
    /// A followed identity.
    Follow(String),
    /// A policy rule for a DID or repository id.
    Policy(String),
}

/// Network work the actor did not start because as many exchanges as it
/// allows were in flight ([`Event::NetBusy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Busy {
    /// An announcement pushed to a peer.
    Push {
        /// The peer.
        peer: EndpointId,
    },
    /// A pull of repositories from a peer.
    Pull {
        /// The peer.
        peer: EndpointId,
        /// The repositories.
        repos: Vec<RepoId>,
    },
}

/// Longest wait a timer of the core is set for: a longer one (an admin
/// timeout, a configured period) ends after this instead, so no value can
/// overflow the clock or go past what the actor's timer queue holds (the
/// removal of retired repositories checks the time again and re-arms).
pub const MAX_TIMER_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The time `wait` after `at`, saturating: at most [`MAX_TIMER_WAIT`] later.
pub fn later(at: Instant, wait: Duration) -> Instant {
    let wait = wait.min(MAX_TIMER_WAIT);
    at.checked_add(wait).unwrap_or(at)
}

/// Keep in `armed` the earliest time a timer must fire: true (and `armed`
/// set to `due`) when the timer must be set for `due`, false when it is
/// already armed no later.
pub fn arm_earlier(armed: &mut Option<Instant>, due: Instant) -> bool {
    if armed.is_some_and(|t| t <= due) {
        return false;
    }
    *armed = Some(due);
    true
}

/// Whether a `not_before` time has come.
pub fn is_due(not_before: Option<Instant>, now: Now) -> bool {
    not_before.is_none_or(|t| t <= now.at)
}
