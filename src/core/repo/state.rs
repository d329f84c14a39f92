//! One repository as the core sees it: the persisted row plus what is in
//! flight (topic, wanted state, queued publishes, the running job, `sync`
//! callers, write-back, providers demoted for stalling or sending wrong
//! bytes), and the questions derived from them: who is trusted, whom to
//! dial, whom to fetch from and in which order. Plain data and pure methods.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::PathBuf,
    time::{Duration, Instant},
};

use iroh::EndpointId;

use super::outbox::Out;
use crate::core::{
    io::{JobId, ReplyId},
    trust::Position,
};
use crate::{
    announce::SignedStatement,
    record::PeerHint,
    state::{Bookkeeping, Held, Origin, RecordCopy, RepoConfig, RepoRow},
};

/// Most peers contacted directly for one push or pull, or asked for content.
pub const MAX_PEERS_CONTACTED: usize = 16;
/// How long a provider that stalled a fetch or sent wrong bytes is tried
/// after every other provider of the repository.
pub const DEMOTION: Duration = Duration::from_secs(10 * 60);
/// Most demoted providers remembered per repository.
pub const MAX_DEMOTED: usize = 64;

/// A state the node means to fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    /// The manifest.
    pub manifest: iroh_blobs::Hash,
    /// The sequence number the state will be held under.
    pub seq: u64,
    /// Why it is wanted.
    pub source: WantSource,
    /// Peers known to provide it, best first.
    pub providers: Vec<EndpointId>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried before this time (after a failure).
    pub not_before: Option<Instant>,
}

/// Why a state is wanted.
#[derive(Debug, Clone, PartialEq)]
pub enum WantSource {
    /// A statement taken because its publisher or its sender is trusted.
    Statement {
        /// The publisher's signed statement.
        statement: Box<SignedStatement>,
        /// The node that forwarded it.
        sender: EndpointId,
    },
    /// The owner's record names it.
    Record,
    /// The state held, to be checked and repaired (at start-up).
    Check,
}

/// A publish waiting for its turn.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPublish {
    /// Who waits for the result.
    pub reply: ReplyId,
    /// The local git repository to publish.
    pub source: PathBuf,
    /// Accept non-fast-forward updates.
    pub force: bool,
    /// Refuse unless the held manifest is this one (hex; empty: none held).
    pub expected_manifest: Option<String>,
    /// The publish created the repository, which goes if it fails.
    pub created: bool,
}

/// The job running for a repository.
#[derive(Debug, Clone, PartialEq)]
pub enum Running {
    /// A publish.
    Publish {
        /// Its id.
        id: JobId,
        /// The request.
        publish: PendingPublish,
    },
    /// A fetch of a wanted state.
    Fetch {
        /// Its id.
        id: JobId,
        /// What it fetches.
        want: Want,
    },
    /// Dropping content: of a removed repository, or leftovers of a first
    /// fetch that never finished.
    Discard {
        /// Its id.
        id: JobId,
    },
}

impl Running {
    /// The job's id.
    pub fn id(&self) -> JobId {
        match self {
            Running::Publish { id, .. } | Running::Fetch { id, .. } | Running::Discard { id } => {
                *id
            }
        }
    }
}

/// `sync` callers waiting for a repository to settle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncWait {
    /// Who waits.
    pub waiters: Vec<ReplyId>,
    /// A record poll was asked for and has not answered.
    pub awaiting_poll: bool,
    /// Waiting for a first state from peers (no record, nothing held), in this round.
    pub first_state_round: Option<u64>,
    /// Bytes fetched for the callers so far.
    pub bytes_fetched: u64,
    /// What to tell them, in words, when they get a state.
    pub message: Option<String>,
    /// The record poll they asked for failed with this.
    pub poll_error: Option<String>,
}

/// Write-back to the owner's PDS in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBack {
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// A write is running.
    pub in_flight: bool,
}

/// The gossip topic, while joined.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topic {
    /// Current neighbours.
    pub neighbors: BTreeSet<EndpointId>,
    /// Re-dials since the topic was last lonely.
    pub rejoin_attempts: u32,
    /// When to re-dial next while it has no neighbour.
    pub rejoin_due: Option<Instant>,
}

/// A removed repository whose content is still to be deleted. Its id can
/// be tracked again meanwhile; the new entry's jobs wait until this is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discarding {
    /// A job of the removed repository that was running when it was removed.
    pub finishing: Option<JobId>,
    /// The discard job, once started.
    pub discard: Option<JobId>,
    /// Who waits for the removal to finish.
    pub reply: Option<ReplyId>,
}

/// A repository in the core.
#[derive(Debug, Clone, PartialEq)]
pub struct Repo {
    /// Operator configuration.
    pub config: RepoConfig,
    /// The owner's record as last read.
    pub record: Option<RecordCopy>,
    /// The state held.
    pub held: Option<Held>,
    /// Hints, last poll, last error.
    pub book: Bookkeeping,
    /// Nothing is held: pins and a copy a crashed first fetch left are to be dropped.
    pub clear_leftovers: bool,
    /// The gossip topic, while joined.
    pub topic: Option<Topic>,
    /// Until when the topic stays joined without news, when topics are
    /// left ([`Settings::topic_idle`](crate::core::Settings)); `None`:
    /// asleep since start-up. Kept in memory only.
    pub awake_until: Option<Instant>,
    /// The state to fetch next.
    pub want: Option<Want>,
    /// Publishes waiting.
    pub publishes: VecDeque<PendingPublish>,
    /// The running job.
    pub job: Option<Running>,
    /// When it started.
    pub job_started: Option<Instant>,
    /// `sync` callers.
    pub sync: SyncWait,
    /// Write-back bookkeeping.
    pub write_back: WriteBack,
    /// Callers waiting until enough peers hold a state.
    pub replica_waits: Vec<ReplicaWait>,
    /// A state refused because it would exceed a quota: not taken again
    /// until the quota changes.
    pub quota_refused: Option<iroh_blobs::Hash>,
    /// The held state is to be checked once nothing else is to do.
    pub check_pending: bool,
    /// Probes of peers that claim to hold a state, running or failed.
    pub probes: BTreeMap<EndpointId, Probe>,
    /// Rebroadcasts of this node's own state in the current window.
    pub rebroadcasts: Rebroadcasts,
    /// Providers that stalled a fetch or sent wrong bytes, and until when
    /// they are tried last. Kept in memory only.
    pub demoted: BTreeMap<EndpointId, Instant>,
    /// What the handlers decided and the core has not taken yet.
    pub out: Vec<Out>,
    /// Node ids parsed from the text peers are known by (parsing one
    /// checks its curve point, which costs more than every rule using it).
    ids: IdMemo,
}

/// Node ids parsed from text, remembered (at most [`IdMemo::KEPT`]; a
/// full memo starts over).
#[derive(Debug, Clone, Default)]
pub struct IdMemo(std::cell::RefCell<std::collections::HashMap<String, Option<EndpointId>>>);

impl IdMemo {
    /// Most node ids remembered.
    const KEPT: usize = 512;

    /// The node id `text` names, if it names one.
    pub fn parse(&self, text: &str) -> Option<EndpointId> {
        if let Some(id) = self.0.borrow().get(text) {
            return *id;
        }
        let id = text.parse::<EndpointId>().ok();
        let mut memo = self.0.borrow_mut();
        if memo.len() >= Self::KEPT {
            memo.clear();
        }
        memo.insert(text.to_string(), id);
        id
    }
}

impl PartialEq for IdMemo {
    /// A cache: never part of what a repository is.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A probe of a peer's claim to hold a state (see [`super::replicas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The manifest the peer claims.
    pub manifest: iroh_blobs::Hash,
    /// When it failed; `None` while it runs.
    pub failed_at: Option<Instant>,
}

/// Rebroadcasts of this node's own state that peers triggered by
/// answering with an older one, in the window that started at `since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebroadcasts {
    /// When the current window started.
    pub since: Option<Instant>,
    /// Whether the whole topic was told in this window.
    pub topic: bool,
    /// Peers told directly in this window.
    pub direct: usize,
}

/// A caller waiting for replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaWait {
    /// Who waits.
    pub reply: ReplyId,
    /// How many peers are wanted.
    pub count: usize,
    /// The state waited for.
    pub manifest: iroh_blobs::Hash,
    /// Its sequence number.
    pub seq: u64,
    /// Identifies the waiter's deadline timer.
    pub id: u64,
    /// Holders counted at the last report.
    pub reported: usize,
}

impl Repo {
    /// A repository loaded from (or about to be written to) the database.
    pub fn from_row(row: RepoRow) -> Self {
        Self {
            config: row.config,
            record: row.record,
            held: row.held,
            book: row.bookkeeping,
            clear_leftovers: false,
            topic: None,
            awake_until: None,
            want: None,
            publishes: VecDeque::new(),
            job: None,
            job_started: None,
            sync: SyncWait::default(),
            write_back: WriteBack::default(),
            replica_waits: Vec::new(),
            quota_refused: None,
            check_pending: false,
            probes: BTreeMap::new(),
            rebroadcasts: Rebroadcasts::default(),
            demoted: BTreeMap::new(),
            out: Vec::new(),
            ids: IdMemo::default(),
        }
    }

    /// The node id `text` names (a hint's, a peer seen's), if it names one.
    pub fn peer_id(&self, text: &str) -> Option<EndpointId> {
        self.ids.parse(text)
    }

    /// Node ids allowed to publish: the record's peers, the operator's
    /// peers and `me`. Derived afresh every time, so a peer removed from the
    /// record or by the operator is no longer trusted.
    pub fn trusted(&self, me: EndpointId) -> BTreeSet<EndpointId> {
        self.trusted_hints()
            .filter_map(|h| self.peer_id(&h.node_id))
            .chain(std::iter::once(me))
            .collect()
    }

    /// Node ids (as text) allowed to publish, `me` included; see [`Repo::trusted`].
    pub fn trusted_ids(&self, me: EndpointId) -> BTreeSet<String> {
        self.trusted(me).iter().map(|id| id.to_string()).collect()
    }

    /// Hints of trusted peers: operator peers, then record peers.
    pub fn trusted_hints(&self) -> impl Iterator<Item = &PeerHint> {
        self.config
            .operator_peers
            .iter()
            .chain(self.record.iter().flat_map(|r| r.record.peers.iter()))
    }

    /// Every hint known: trusted peers first, then learned ones.
    pub fn all_hints(&self) -> impl Iterator<Item = &PeerHint> {
        self.trusted_hints()
            .chain(self.book.hints.iter().map(|h| &h.hint))
    }

    /// The held state's position.
    pub fn held_position(&self) -> Option<Position> {
        self.held.as_ref().map(|h| Position {
            manifest: *h.manifest_hash().as_bytes(),
            seq: h.seq(),
        })
    }

    /// The wanted state's position (a check of the held state does not count).
    pub fn wanted_position(&self) -> Option<Position> {
        let from = |w: &Want| Position {
            manifest: *w.manifest.as_bytes(),
            seq: w.seq,
        };
        let running = match &self.job {
            Some(Running::Fetch { want, .. }) => Some(want),
            _ => None,
        };
        running
            .into_iter()
            .chain(self.want.iter())
            .filter(|w| w.source != WantSource::Check)
            .map(from)
            .max_by_key(|p| p.seq)
    }

    /// The newest of the held and wanted states.
    pub fn current_position(&self) -> Option<Position> {
        match (self.held_position(), self.wanted_position()) {
            (Some(h), Some(w)) if w.seq > h.seq => Some(w),
            (Some(h), _) => Some(h),
            (None, w) => w,
        }
    }

    /// Whether the repository needs its gossip topic: it has content to
    /// serve, peers to talk to, or a record that will name some, and it is
    /// not retired.
    pub fn wants_topic(&self) -> bool {
        !self.retired()
            && (self.held.is_some()
                || self.config.locator.is_some()
                || self.all_hints().next().is_some())
    }

    /// Whether a followed identity brought the repository and no longer
    /// lists its record: it is not polled, has no topic, and is removed
    /// after the grace period unless the record comes back.
    pub fn retired(&self) -> bool {
        self.config.record_deleted
            && self.config.origin == Origin::Follow
            && self.config.followed_via.is_some()
    }

    /// Whether the record is read on the schedule: there is a locator and
    /// the repository is not retired.
    pub fn record_read(&self) -> bool {
        self.config.locator.is_some() && !self.retired()
    }

    /// Peers to dial for the topic or ask directly, never `me`: trusted
    /// peers first, then learned hints, at most [`MAX_PEERS_CONTACTED`].
    pub fn dial_targets(&self, me: EndpointId) -> Vec<EndpointId> {
        let mut out: Vec<EndpointId> = Vec::new();
        for hint in self.all_hints() {
            if out.len() >= MAX_PEERS_CONTACTED {
                break;
            }
            if let Some(id) = self.peer_id(&hint.node_id)
                && id != me
                && !out.contains(&id)
            {
                out.push(id);
            }
        }
        out
    }

    /// Peers to fetch `want` from, never `me`, at most
    /// `2 * MAX_PEERS_CONTACTED`. Trusted providers come first: those that
    /// announced the state (the vouching sender, the publisher), then the
    /// operator's and the record's peers. Learned ones follow: untrusted
    /// peers that forwarded the state, gossip neighbours, learned hints. A
    /// provider demoted at `now` goes after all others. So a stranger that
    /// forwards a trusted statement first, or a neighbour of a record-driven
    /// fetch, is never tried before a trusted peer.
    pub fn providers(&self, want: &Want, me: EndpointId, now: Instant) -> Vec<EndpointId> {
        let trusted = self.trusted(me);
        let announced = want.providers.iter().copied();
        let trusted_peers = self
            .trusted_hints()
            .filter_map(|h| self.peer_id(&h.node_id));
        let neighbors = self.topic.iter().flat_map(|t| t.neighbors.iter().copied());
        let learned = self
            .book
            .hints
            .iter()
            .filter_map(|h| self.peer_id(&h.hint.node_id));
        let ordered = announced
            .clone()
            .filter(|p| trusted.contains(p))
            .chain(trusted_peers)
            .chain(announced.filter(|p| !trusted.contains(p)))
            .chain(neighbors)
            .chain(learned);
        let mut out: Vec<EndpointId> = Vec::new();
        for id in ordered {
            if id != me && !out.contains(&id) {
                out.push(id);
            }
        }
        let demoted = |p: &EndpointId| self.demoted.get(p).is_some_and(|until| *until > now);
        let (mut first, last): (Vec<_>, Vec<_>) = out.into_iter().partition(|p| !demoted(p));
        first.extend(last);
        first.truncate(2 * MAX_PEERS_CONTACTED);
        first
    }

    /// Try `peer` after every other provider until `until`. Expired entries
    /// go; beyond [`MAX_DEMOTED`] the one that ends soonest goes.
    pub fn demote(&mut self, peer: EndpointId, now: Instant, until: Instant) {
        self.demoted.retain(|_, u| *u > now);
        self.demoted.insert(peer, until);
        while self.demoted.len() > MAX_DEMOTED {
            let soonest = self
                .demoted
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(p, _)| *p)
                .expect("not empty");
            self.demoted.remove(&soonest);
        }
    }

    /// Whether someone waits on this repository right now.
    pub fn has_waiters(&self) -> bool {
        !self.sync.waiters.is_empty() || !self.publishes.is_empty()
    }
}
