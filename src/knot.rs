//! The repository actor: the one owner of the set of tracked repositories.
//!
//! Owns adding and removing repositories, their gossip topics, publishing,
//! fetching and materializing content, peer hints and status. It runs one
//! `select!` loop over admin commands, gossip events from the per-topic tasks,
//! and the results of content jobs (publish, fetch) that run as child tasks.
//! At most one content job runs per repository; later ones queue behind it.
//! Everything it decides is persisted in the database before it replies, so a
//! restart resumes the same repositories, topics, records and peers, and
//! re-fetches any state that was not yet materialized.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use iroh::{Endpoint, EndpointAddr, EndpointId, SecretKey, address_lookup::MemoryLookup};
use iroh_blobs::{Hash, store::fs::FsStore};
use iroh_gossip::{
    api::{Event, GossipReceiver, GossipSender},
    net::Gossip,
    proto::TopicId,
};
use iroh_tickets::endpoint::EndpointTicket;
use n0_future::StreamExt;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    admin::{
        Command, Executor, GossipStats, NodeStatus, Payload, PeerView, PublishReport, Reply,
        RepoSummary, SyncReport,
    },
    announce::{Adoption, AdoptionContext, Announcement, SignedStatement, Statement},
    atproto::{RecordWriter, XrpcClient},
    config::Config,
    content::{self, ContentError, Fetched, Published},
    heads::{self, HeadsEvent},
    poller::{PollError, PollOutcome, PollerHandle},
    record::{self, PeerHint, RecordError, RepoRecord},
    repo_id::{RepoId, validate_did},
    store::{Locator, RepoEntry, Store, StoreError, unix_millis, unix_now},
};

/// How long `sync` waits for a first state of a repository nobody has
/// announced yet.
const FIRST_STATE_WAIT: Duration = Duration::from_secs(30);
/// How often topics without neighbours re-dial the peers they know.
const REJOIN_INTERVAL: Duration = Duration::from_secs(5);
/// First wait before a failed fetch is tried again; doubles up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest wait between fetch retries.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Gossip messages a neighbour may deliver per topic in a burst...
const PEER_BURST: f64 = 64.0;
/// ...and per second after it.
const PEER_RATE: f64 = 16.0;
/// Most neighbours whose rate is tracked per topic.
const MAX_RATE_ENTRIES: usize = 1024;
/// Most peers contacted directly for one push or pull.
const MAX_DIRECT_PEERS: usize = 16;

/// Errors of repository commands; the text is shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum KnotError {
    /// The actor has stopped (the node is shutting down).
    #[error("knotd is shutting down")]
    Gone,
    /// Database failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record or hint is invalid.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Content could not be published, fetched or materialized.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// A peer ticket does not parse.
    #[error(
        "peer ticket {ticket:?} is invalid: {reason}; get a ticket with `knotd ticket` on the peer"
    )]
    BadTicket {
        /// The ticket as given (shortened).
        ticket: String,
        /// The parser's message.
        reason: String,
    },
    /// The record locator is invalid.
    #[error("record locator {0}")]
    BadLocator(String),
    /// Another publisher moved the repository first.
    #[error("{repo_id} has moved on (manifest {current}, expected {expected}); fetch and retry")]
    Stale {
        /// The repository.
        repo_id: String,
        /// The manifest held now.
        current: String,
        /// The manifest the caller expected.
        expected: String,
    },
    /// A command failed; the text says why.
    #[error("{0}")]
    Failed(String),
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the node was doing.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Everything the actor needs from the node.
pub struct KnotParts {
    /// Node configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// The blob store.
    pub blobs: FsStore,
    /// The iroh endpoint.
    pub endpoint: Endpoint,
    /// The gossip protocol.
    pub gossip: Gossip,
    /// The address book fed with learned peers.
    pub lookup: MemoryLookup,
    /// Requests arriving over the direct head exchange protocol.
    pub heads: mpsc::Receiver<HeadsEvent>,
    /// The ATProto record poller.
    pub poller: PollerHandle,
    /// Results of record polls.
    pub polls: mpsc::Receiver<PollOutcome>,
    /// Writes records back to the owner's PDS, when credentials are configured.
    pub writer: Option<RecordWriter>,
    /// XRPC client, used to resolve the PDS for write-back.
    pub xrpc: XrpcClient,
}

enum Message {
    Admin {
        command: Command,
        reply: oneshot::Sender<Reply>,
    },
    Gossip {
        repo_id: RepoId,
        event: TopicEvent,
    },
    FirstStateTimeout {
        repo_id: RepoId,
    },
    Pulled {
        from: EndpointId,
        announcements: Vec<Vec<u8>>,
    },
    SyncPolled {
        repo_id: RepoId,
        result: Result<RepoRecord, String>,
    },
    WrittenBack {
        repo_id: RepoId,
        result: Result<RepoRecord, String>,
    },
}

enum TopicEvent {
    Announcement(Box<Announcement>),
    Invalid { from: EndpointId, error: String },
    NeighborUp(EndpointId),
    NeighborDown(EndpointId),
    Closed,
}

/// Handle to the repository actor.
#[derive(Clone, Debug)]
pub struct KnotHandle {
    tx: mpsc::Sender<Message>,
}

impl KnotHandle {
    /// Run an admin command.
    pub async fn command(&self, command: Command) -> Result<Payload, KnotError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Admin { command, reply })
            .await
            .map_err(|_| KnotError::Gone)?;
        match rx.await.map_err(|_| KnotError::Gone)? {
            Reply::Ok(payload) => Ok(payload),
            Reply::Error(message) => Err(KnotError::Failed(message)),
        }
    }
}

impl Executor for KnotHandle {
    async fn execute(&self, command: Command) -> Reply {
        self.command(command)
            .await
            .map_or_else(|e| Reply::Error(e.to_string()), Reply::Ok)
    }
}

/// How far an announcement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Direct gossip neighbours only (greeting a new neighbour).
    Neighbors,
    /// The whole topic (a node that now provides a state).
    Topic,
    /// The topic, and known peers that are not neighbours directly (a new
    /// state published here, which must not wait for gossip to heal).
    TopicAndKnownPeers,
}

/// A content job waiting for its repository.
enum Job {
    Publish {
        path: PathBuf,
        force: bool,
        expected_manifest: Option<String>,
        /// The repository was added by this publish and goes if it fails.
        added: bool,
        reply: oneshot::Sender<Reply>,
    },
    Fetch {
        target: FetchTarget,
        providers: Vec<EndpointId>,
    },
}

/// What a fetch aims at.
#[derive(Clone, Debug)]
enum FetchTarget {
    /// A state a peer announced, with its publisher's signature.
    Statement(SignedStatement),
    /// The manifest the ATProto record names, or the one held before a restart.
    Manifest(Hash),
}

impl FetchTarget {
    fn manifest(&self) -> Hash {
        match self {
            FetchTarget::Statement(s) => s.statement.manifest_hash(),
            FetchTarget::Manifest(h) => *h,
        }
    }
}

enum JobDone {
    Published {
        repo_id: RepoId,
        result: Result<Published, ContentError>,
        added: bool,
        reply: oneshot::Sender<Reply>,
    },
    Fetched {
        repo_id: RepoId,
        target: FetchTarget,
        result: Result<Fetched, ContentError>,
    },
}

struct Topic {
    sender: GossipSender,
    neighbors: BTreeSet<EndpointId>,
    cancel: CancellationToken,
}

/// The actor state.
pub struct Knot {
    parts: KnotParts,
    secret_key: SecretKey,
    rx: mpsc::Receiver<Message>,
    tx: mpsc::WeakSender<Message>,
    cancel: CancellationToken,
    started: Instant,
    topics: HashMap<RepoId, Topic>,
    topic_tasks: JoinSet<()>,
    net_tasks: JoinSet<()>,
    jobs: JoinSet<JobDone>,
    busy: BTreeSet<RepoId>,
    queued: HashMap<RepoId, VecDeque<Job>>,
    sync_waiters: HashMap<RepoId, Vec<oneshot::Sender<Reply>>>,
    auto_added: BTreeSet<RepoId>,
    retries: HashMap<RepoId, Retry>,
    writer: Option<Arc<tokio::sync::Mutex<RecordWriter>>>,
    write_backs: HashMap<RepoId, WriteBackRetry>,
    counters: GossipStats,
    rate_limited: Arc<std::sync::atomic::AtomicU64>,
}

/// When a pending write-back is tried next.
struct WriteBackRetry {
    attempts: u32,
    due: Instant,
    in_flight: bool,
}

/// A fetch that failed and is tried again later.
struct Retry {
    target: FetchTarget,
    attempts: u32,
    due: Instant,
}

impl Knot {
    /// Start the actor in `tasks`; it stops when `cancel` fires.
    pub fn spawn(
        mut parts: KnotParts,
        cancel: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> KnotHandle {
        let (tx, rx) = mpsc::channel(1024);
        let writer = parts
            .writer
            .take()
            .map(|w| Arc::new(tokio::sync::Mutex::new(w)));
        let secret_key = parts.endpoint.secret_key().clone();
        let actor = Knot {
            parts,
            secret_key,
            rx,
            tx: tx.downgrade(),
            cancel,
            started: Instant::now(),
            topics: HashMap::new(),
            topic_tasks: JoinSet::new(),
            net_tasks: JoinSet::new(),
            jobs: JoinSet::new(),
            busy: BTreeSet::new(),
            queued: HashMap::new(),
            sync_waiters: HashMap::new(),
            auto_added: BTreeSet::new(),
            retries: HashMap::new(),
            writer,
            write_backs: HashMap::new(),
            counters: GossipStats::default(),
            rate_limited: Arc::default(),
        };
        tasks.spawn(actor.run());
        KnotHandle { tx }
    }

    async fn run(mut self) {
        self.resume().await;
        let mut rejoin = tokio::time::interval(REJOIN_INTERVAL);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = rejoin.tick() => self.handle_rejoin_tick().await,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle_message(msg).await,
                    None => break,
                },
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => match done {
                    Ok(done) => self.handle_job_done(done).await,
                    Err(e) => warn!(error = %e, "content job failed to complete"),
                },
                Some(_) = self.topic_tasks.join_next(), if !self.topic_tasks.is_empty() => {}
                Some(_) = self.net_tasks.join_next(), if !self.net_tasks.is_empty() => {}
                Some(event) = self.parts.heads.recv() => self.handle_heads_event(event).await,
                Some(outcome) = self.parts.polls.recv() => {
                    self.handle_poll_result(outcome.repo_id, outcome.result.map_err(|e| e.to_string())).await;
                }
            }
        }
        for topic in self.topics.values() {
            topic.cancel.cancel();
        }
        self.topics.clear();
        self.jobs.shutdown().await;
        self.topic_tasks.shutdown().await;
        self.net_tasks.shutdown().await;
        debug!(
            received = self.counters.received,
            dropped_invalid = self.counters.dropped_invalid,
            rejected = self.counters.rejected,
            "repository actor stopped"
        );
    }

    /// Restore the address book, join every topic, and verify or repair the
    /// state of every repository (resuming syncs that did not finish).
    async fn resume(&mut self) {
        let repos = match self.parts.store.repos() {
            Ok(repos) => repos,
            Err(e) => {
                tracing::error!(error = %e, "cannot read repositories at start");
                return;
            }
        };
        for entry in &repos {
            self.learn_peers(&entry.record.peers);
        }
        for entry in repos {
            let repo_id = entry.record.repo_id.clone();
            if wants_topic(&entry) {
                self.join_topic(&repo_id, &entry).await;
            }
            if let Some(locator) = &entry.locator
                && self
                    .parts
                    .poller
                    .track(repo_id.clone(), locator.clone())
                    .await
                    .is_err()
            {
                warn!(repo = %repo_id, "record poller is not running");
            }
            if entry.write_back_pending {
                self.schedule_write_back(&repo_id, Duration::ZERO);
            }
            let Some(hash) = entry.record.manifest_hash() else {
                // No state yet: drop pins a crashed first fetch may have left.
                if let Err(e) = content::unpin_all(&self.parts.blobs, &repo_id).await {
                    warn!(repo = %repo_id, error = %e, "cannot clear stale pins");
                }
                continue;
            };
            // Verify the held state: blobs present, pins matching the database,
            // materialized copy current. With everything in place this fetches
            // nothing and materializing is a no-op; after a crash it repairs.
            if entry.materialized.as_deref() != entry.record.manifest.as_deref() {
                info!(repo = %repo_id, "resuming an unfinished sync");
            }
            self.fetch_manifest(repo_id, &entry, hash);
        }
    }

    /// Re-dial known peers of every topic that has no neighbour, so that two
    /// nodes that lost each other (a restart, a network change) meet again.
    async fn handle_rejoin_tick(&mut self) {
        let now = Instant::now();
        let writes: Vec<RepoId> = self
            .write_backs
            .iter()
            .filter(|(_, w)| w.due <= now && !w.in_flight)
            .map(|(id, _)| id.clone())
            .collect();
        for repo_id in writes {
            self.start_write_back(&repo_id).await;
        }
        let due: Vec<RepoId> = self
            .retries
            .iter()
            .filter(|(id, r)| r.due <= now && !self.busy.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for repo_id in due {
            let Some(retry) = self.retries.get(&repo_id) else {
                continue;
            };
            let target = retry.target.clone();
            let Ok(Some(entry)) = self.parts.store.repo(&repo_id) else {
                self.retries.remove(&repo_id);
                continue;
            };
            if !self.still_wanted(&entry, &target) {
                self.retries.remove(&repo_id);
                continue;
            }
            info!(repo = %repo_id, attempts = retry.attempts, "retrying a failed fetch");
            let providers = self.providers(&entry, None);
            self.enqueue(repo_id, Job::Fetch { target, providers });
        }
        let lonely: Vec<RepoId> = self
            .topics
            .iter()
            .filter(|(_, t)| t.neighbors.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for repo_id in lonely {
            let Ok(Some(entry)) = self.parts.store.repo(&repo_id) else {
                continue;
            };
            let peers = self.bootstrap(&entry);
            if peers.is_empty() {
                continue;
            }
            if let Some(topic) = self.topics.get(&repo_id)
                && let Err(e) = topic.sender.join_peers(peers.clone()).await
            {
                debug!(repo = %repo_id, error = %e, "re-dialing peers failed");
            }
            // Gossip may take a while to notice a restarted peer: ask directly.
            self.pull_from(&peers, vec![repo_id.to_string()]);
        }
    }

    /// Whether a fetch target still describes the state to reach: a statement
    /// that the adoption rule still accepts, or the manifest the record names.
    fn still_wanted(&self, entry: &RepoEntry, target: &FetchTarget) -> bool {
        match target {
            FetchTarget::Manifest(hash) => entry.record.manifest_hash() == Some(*hash),
            FetchTarget::Statement(signed) => {
                let trusted = self.trusted_publishers(entry);
                let ctx = AdoptionContext {
                    record_manifest: remote_manifest(entry),
                    current_manifest: entry.materialized.as_deref(),
                    current_seq: entry.seq,
                    trusted_publishers: &trusted,
                };
                matches!(
                    crate::announce::decide_adoption(&signed.statement, &ctx),
                    Adoption::Adopt
                )
            }
        }
    }

    /// Node ids allowed to publish `entry`'s repository, this node included.
    fn trusted_publishers(&self, entry: &RepoEntry) -> Vec<String> {
        let mut trusted = entry.trusted.clone();
        trusted.push(self.parts.endpoint.id().to_string());
        trusted
    }

    /// Ask each of `peers` for its announcements of `repo_ids`; answers come
    /// back as [`Message::Pulled`].
    fn pull_from(&mut self, peers: &[EndpointId], repo_ids: Vec<String>) {
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        for peer in peers.iter().take(MAX_DIRECT_PEERS) {
            let endpoint = self.parts.endpoint.clone();
            let tx = tx.clone();
            let peer = *peer;
            let repo_ids = repo_ids.clone();
            self.net_tasks.spawn(async move {
                match heads::pull(&endpoint, peer, repo_ids).await {
                    Ok(announcements) if !announcements.is_empty() => {
                        let _ = tx
                            .send(Message::Pulled {
                                from: peer,
                                announcements,
                            })
                            .await;
                    }
                    Ok(_) => {}
                    Err(e) => debug!(peer = %peer.fmt_short(), error = %e, "pull failed"),
                }
            });
        }
    }

    async fn handle_heads_event(&mut self, event: HeadsEvent) {
        match event {
            HeadsEvent::Pushed { from, announcement } => {
                self.handle_direct_announcement(from, &announcement).await;
            }
            HeadsEvent::Pull {
                from,
                repo_ids,
                reply,
            } => {
                let mut out = Vec::new();
                for id in repo_ids {
                    let Ok(repo_id) = RepoId::parse(&id) else {
                        continue;
                    };
                    if let Ok(Some(entry)) = self.parts.store.repo(&repo_id)
                        && let Some(statement) = entry.statement
                    {
                        out.push(self.envelope(statement));
                    }
                }
                debug!(peer = %from.fmt_short(), count = out.len(), "served a pull");
                let _ = reply.send(out);
            }
        }
    }

    /// An announcement that came over the direct protocol: verified exactly
    /// like one from gossip.
    async fn handle_direct_announcement(&mut self, from: EndpointId, bytes: &[u8]) {
        let tracked = Announcement::peek_repo_id(bytes)
            .filter(|id| matches!(self.parts.store.repo(id), Ok(Some(_))));
        let Some(repo_id) = tracked else {
            self.counters.dropped_invalid += 1;
            debug!(peer = %from.fmt_short(), "dropped a direct announcement for an untracked or unreadable repository");
            return;
        };
        match Announcement::decode_verified(bytes, &repo_id) {
            Ok(ann) => self.handle_announcement(repo_id, ann).await,
            Err(error) => {
                self.counters.dropped_invalid += 1;
                debug!(repo = %repo_id, peer = %from.fmt_short(), %error, "dropped a direct announcement");
            }
        }
    }

    /// Wrap a statement in this node's signed envelope.
    fn envelope(&self, statement: SignedStatement) -> Vec<u8> {
        let addrs = self
            .parts
            .endpoint
            .addr()
            .ip_addrs()
            .copied()
            .collect::<Vec<_>>();
        Announcement::new(statement, &self.secret_key, addrs).encode()
    }

    /// Merge a polled record: peers are always unioned (and the record's peers
    /// trusted as publishers); the head and manifest win whenever the record
    /// changed them since it was last read, which starts a fetch.
    async fn handle_poll_result(&mut self, repo_id: RepoId, result: Result<RepoRecord, String>) {
        let remote = match result {
            Ok(remote) => remote,
            Err(error) => {
                warn!(repo = %repo_id, %error, "record poll failed");
                let _ = self.parts.store.update_repo(&repo_id, |e| {
                    e.last_error = Some(format!("record poll failed: {error}"));
                });
                return;
            }
        };
        let updated = self.parts.store.update_repo(&repo_id, |e| {
            // The record wins when it names another state, unless it names an
            // older one than the node holds (a record lagging behind gossip).
            let differs = remote.manifest.is_some() && remote.manifest != e.record.manifest;
            let not_older = remote.seq.is_none_or(|seq| seq >= e.seq);
            let changed = differs && not_older;
            let merged = if changed {
                record::merge_record(&e.record, &remote)
            } else {
                record::merge_record(
                    &e.record,
                    &RepoRecord {
                        head: None,
                        manifest: None,
                        seq: None,
                        ..remote.clone()
                    },
                )
            };
            match merged {
                Ok(merged) => {
                    if changed && let Some(seq) = remote.seq {
                        e.seq = e.seq.max(seq);
                    }
                    e.record = merged;
                    for peer in &remote.peers {
                        if !e.trusted.contains(&peer.node_id) {
                            e.trusted.push(peer.node_id.clone());
                        }
                    }
                    e.remote = Some(remote.clone());
                    e.last_poll = Some(unix_now());
                    if e.last_error
                        .as_deref()
                        .is_some_and(|m| m.starts_with("record poll"))
                    {
                        e.last_error = None;
                    }
                    Ok(changed)
                }
                Err(err) => {
                    e.last_error = Some(format!("record poll failed: {err}"));
                    Err(err)
                }
            }
        });
        let (entry, changed) = match updated {
            Ok((entry, Ok(changed))) => (entry, changed),
            Ok((_, Err(e))) => {
                warn!(repo = %repo_id, error = %e, "rejected a polled record");
                return;
            }
            Err(e) => {
                debug!(repo = %repo_id, error = %e, "poll result for an untracked repository");
                return;
            }
        };
        self.learn_peers(&remote.peers);
        if changed {
            info!(repo = %repo_id, manifest = ?entry.record.manifest, "the record names a new state");
        }
        if changed || !self.topics.contains_key(&repo_id) {
            // Dial the record's peers on the topic as well.
            self.join_topic(&repo_id, &entry).await;
        }
        if let Some(hash) = entry.record.manifest_hash()
            && entry.materialized != entry.record.manifest
            && !self.busy.contains(&repo_id)
        {
            self.fetch_manifest(repo_id, &entry, hash);
        }
    }

    /// Answer `sync` callers once the record was polled and nothing remains to fetch.
    /// Returns whether the callers got a state (`None` when nobody was answered).
    fn finish_polled_sync(&mut self, repo_id: &RepoId, poll_error: Option<String>) -> Option<bool> {
        if self.busy.contains(repo_id) || self.queued.contains_key(repo_id) {
            return None; // the running job answers them
        }
        let waiters = self.sync_waiters.remove(repo_id)?;
        let reply = match (self.parts.store.require_repo(repo_id), poll_error) {
            (Err(e), _) => Reply::Error(e.to_string()),
            (Ok(entry), Some(error)) if entry.materialized.is_none() => Reply::Error(format!(
                "cannot read the record of {repo_id}: {error}; no copy is held yet"
            )),
            (Ok(entry), Some(error)) => Reply::Ok(self.sync_report(
                &entry,
                0,
                &format!("record poll failed ({error}); serving the state held"),
            )),
            (Ok(entry), None) if entry.materialized.is_none() => Reply::Error(format!(
                "the record of {repo_id} names no manifest yet; publish first"
            )),
            (Ok(entry), None) => Reply::Ok(self.sync_report(&entry, 0, "up to date")),
        };
        let ok = matches!(reply, Reply::Ok(_));
        for w in waiters {
            let _ = w.send(reply.clone());
        }
        if ok {
            self.auto_added.remove(repo_id);
        }
        Some(ok)
    }

    fn schedule_write_back(&mut self, repo_id: &RepoId, after: Duration) {
        if self.writer.is_none() {
            return;
        }
        let retry = self
            .write_backs
            .entry(repo_id.clone())
            .or_insert(WriteBackRetry {
                attempts: 0,
                due: Instant::now(),
                in_flight: false,
            });
        retry.due = Instant::now() + after;
    }

    /// Write the current state to the owner's PDS in a child task.
    async fn start_write_back(&mut self, repo_id: &RepoId) {
        let (Some(writer), Ok(Some(entry))) = (self.writer.clone(), self.parts.store.repo(repo_id))
        else {
            self.write_backs.remove(repo_id);
            return;
        };
        let Some(locator) = entry.locator.clone() else {
            self.write_backs.remove(repo_id);
            return;
        };
        if let Some(w) = self.write_backs.get_mut(repo_id) {
            w.in_flight = true;
        }
        let addr = crate::node::wait_for_addr(&self.parts.endpoint).await;
        // Keep the hint within what every reader accepts.
        let ticket = EndpointTicket::new(addr.clone()).to_string();
        let mut addrs: Vec<String> = addr.ip_addrs().map(|a| a.to_string()).collect();
        addrs.truncate(record::MAX_ADDRS_PER_PEER);
        let own = PeerHint::new(
            self.parts.endpoint.id().to_string(),
            addrs,
            (ticket.len() <= record::MAX_TICKET_LEN).then_some(ticket),
        );
        let remote_peers = entry
            .remote
            .as_ref()
            .map(|r| r.peers.clone())
            .unwrap_or_default();
        let record = RepoRecord {
            record_type: record::COLLECTION.to_string(),
            repo_id: repo_id.clone(),
            head: entry.record.head.clone(),
            manifest: entry.record.manifest.clone(),
            peers: record::merge_peers(remote_peers, vec![own]),
            seq: Some(entry.seq),
        };
        let xrpc = self.parts.xrpc.clone();
        let plc = self.parts.config.atproto.plc_directory.clone();
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        let repo_id = repo_id.clone();
        self.net_tasks.spawn(async move {
            let result = async {
                let pds = match &locator.pds {
                    Some(pds) => pds.clone(),
                    None => xrpc
                        .resolve_pds(&plc, &locator.did)
                        .await
                        .map_err(|e| e.to_string())?,
                };
                writer
                    .lock()
                    .await
                    .write(
                        &pds,
                        &locator.did,
                        &locator.collection,
                        &locator.rkey,
                        &record,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(record)
            }
            .await;
            let _ = tx.send(Message::WrittenBack { repo_id, result }).await;
        });
    }

    fn handle_written_back(&mut self, repo_id: RepoId, result: Result<RepoRecord, String>) {
        match result {
            Ok(written) => {
                let current = self.parts.store.update_repo(&repo_id, |e| {
                    let current = e.record.manifest == written.manifest;
                    e.remote = Some(written.clone());
                    if current {
                        e.write_back_pending = false;
                    }
                    if e.last_error
                        .as_deref()
                        .is_some_and(|m| m.starts_with("write-back"))
                    {
                        e.last_error = None;
                    }
                    current
                });
                info!(repo = %repo_id, manifest = ?written.manifest, "record written back");
                match current {
                    Ok((_, true)) => {
                        self.write_backs.remove(&repo_id);
                    }
                    Ok((_, false)) => {
                        // A newer state arrived meanwhile: write again.
                        if let Some(w) = self.write_backs.get_mut(&repo_id) {
                            w.in_flight = false;
                            w.attempts = 0;
                            w.due = Instant::now();
                        }
                    }
                    Err(_) => {
                        self.write_backs.remove(&repo_id);
                    }
                }
            }
            Err(error) => {
                warn!(repo = %repo_id, %error, "record write-back failed; will retry");
                let _ = self.parts.store.update_repo(&repo_id, |e| {
                    e.last_error = Some(format!("write-back failed: {error}"));
                });
                if let Some(w) = self.write_backs.get_mut(&repo_id) {
                    w.in_flight = false;
                    w.attempts += 1;
                    w.due = Instant::now() + retry_delay(w.attempts);
                }
            }
        }
    }

    fn learn_peers(&self, peers: &[PeerHint]) {
        for hint in peers {
            if let Some(addr) = hint_to_addr(hint) {
                if addr.id == self.parts.endpoint.id() {
                    continue;
                }
                self.parts.lookup.add_endpoint_info(addr);
            }
        }
    }

    async fn handle_message(&mut self, msg: Message) {
        match msg {
            Message::Admin { command, reply } => self.handle_admin(command, reply).await,
            Message::Gossip { repo_id, event } => self.handle_topic_event(repo_id, event).await,
            Message::Pulled {
                from,
                announcements,
            } => {
                for bytes in announcements {
                    self.handle_direct_announcement(from, &bytes).await;
                }
            }
            Message::SyncPolled { repo_id, result } => {
                let failed = result.as_ref().err().cloned();
                self.handle_poll_result(repo_id.clone(), result).await;
                if self.finish_polled_sync(&repo_id, failed) == Some(false) {
                    self.forget_if_auto_added(&repo_id).await;
                }
            }
            Message::WrittenBack { repo_id, result } => {
                self.handle_written_back(repo_id, result);
            }
            Message::FirstStateTimeout { repo_id } => {
                if let Some(waiters) = self.sync_waiters.remove(&repo_id) {
                    let peers = self
                        .parts
                        .store
                        .repo(&repo_id)
                        .ok()
                        .flatten()
                        .map(|e| peer_list(&e.record.peers))
                        .unwrap_or_default();
                    let text = format!(
                        "no state of {repo_id} arrived within {FIRST_STATE_WAIT:?}: no record names a manifest and no trusted peer announced one (peers known: {peers}); add a peer with `knotd admin add-repo {repo_id} --peer <ticket>` or a record with --pds"
                    );
                    for w in waiters {
                        let _ = w.send(Reply::Error(text.clone()));
                    }
                }
            }
        }
    }

    async fn handle_admin(&mut self, command: Command, reply: oneshot::Sender<Reply>) {
        let result = match command {
            Command::AddRepo {
                repo_id,
                pds,
                record,
                peers,
            } => self.handle_add_repo(repo_id, pds, record, peers).await,
            Command::RemoveRepo { repo_id } => self.handle_remove_repo(repo_id).await,
            Command::List => self.summaries().map(|repos| Payload::Repos { repos }),
            Command::Status => self.handle_status().await,
            Command::Peers { repo_id } => self.handle_peers(&repo_id),
            Command::Ticket => Ok(Payload::Ticket {
                ticket: self.ticket().await,
            }),
            Command::Publish {
                repo_id,
                path,
                force,
                expected_manifest,
            } => {
                return self
                    .handle_publish(repo_id, path, force, expected_manifest, reply)
                    .await;
            }
            Command::Sync { repo_id } => return self.handle_sync(repo_id, reply).await,
        };
        let _ = reply.send(match result {
            Ok(payload) => Reply::Ok(payload),
            Err(e) => Reply::Error(e.to_string()),
        });
    }

    async fn handle_add_repo(
        &mut self,
        repo_id: RepoId,
        pds: Option<String>,
        record: Option<String>,
        tickets: Vec<String>,
    ) -> Result<Payload, KnotError> {
        let peers = tickets
            .iter()
            .map(|t| parse_ticket(t))
            .collect::<Result<Vec<_>, _>>()?;
        let locator = build_locator(&repo_id, pds, record)?;
        let trusted: Vec<String> = peers.iter().map(|p| p.node_id.clone()).collect();
        let mut entry = RepoEntry::new(repo_id.clone(), locator.clone(), peers.clone());
        entry.trusted = trusted.clone();
        let message = if self.parts.store.insert_repo(&entry)? {
            info!(repo = %repo_id, "repository added");
            format!("added {repo_id}")
        } else {
            (entry, _) = self.parts.store.update_repo(&repo_id, |e| {
                e.record.peers = record::merge_peers(e.record.peers.clone(), peers.clone());
                for id in &trusted {
                    if !e.trusted.contains(id) {
                        e.trusted.push(id.clone());
                    }
                }
                if locator.is_some() {
                    e.locator = locator.clone();
                }
            })?;
            format!("{repo_id} was already tracked; peers and locator updated")
        };
        self.learn_peers(&peers);
        if wants_topic(&entry) {
            self.join_topic(&repo_id, &entry).await;
        }
        if let Some(locator) = &entry.locator {
            self.parts
                .poller
                .track(repo_id.clone(), locator.clone())
                .await
                .map_err(|_| KnotError::Failed("the record poller has stopped".into()))?;
        }
        Ok(Payload::Done { message })
    }

    async fn handle_remove_repo(&mut self, repo_id: RepoId) -> Result<Payload, KnotError> {
        let removed = self.parts.store.remove_repo(&repo_id)?;
        if removed.is_none() {
            return Err(StoreError::UnknownRepo(repo_id.to_string()).into());
        }
        self.leave_topic(&repo_id);
        self.queued.remove(&repo_id);
        self.retries.remove(&repo_id);
        self.auto_added.remove(&repo_id);
        self.write_backs.remove(&repo_id);
        let _ = self.parts.poller.untrack(&repo_id).await;
        if let Some(waiters) = self.sync_waiters.remove(&repo_id) {
            for w in waiters {
                let _ = w.send(Reply::Error(format!("{repo_id} was removed")));
            }
        }
        if !self.busy.contains(&repo_id) {
            self.discard_content(&repo_id).await?;
        }
        info!(repo = %repo_id, "repository removed");
        Ok(Payload::Done {
            message: format!("removed {repo_id}"),
        })
    }

    /// Unpin a removed repository's blobs and delete its materialized copy.
    async fn discard_content(&self, repo_id: &RepoId) -> Result<(), KnotError> {
        content::unpin_all(&self.parts.blobs, repo_id).await?;
        let path = self.materialized_path(repo_id);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| KnotError::Io {
                what: format!("removing {}", path.display()),
                source,
            })?;
        }
        Ok(())
    }

    fn handle_peers(&self, repo_id: &RepoId) -> Result<Payload, KnotError> {
        let entry = self.parts.store.require_repo(repo_id)?;
        let neighbors = self.topics.get(repo_id).map(|t| &t.neighbors);
        let peers = entry
            .record
            .peers
            .into_iter()
            .map(|hint| {
                let connected = neighbors.is_some_and(|n| {
                    hint.node_id
                        .parse::<EndpointId>()
                        .is_ok_and(|id| n.contains(&id))
                });
                PeerView { hint, connected }
            })
            .collect();
        Ok(Payload::Peers { peers })
    }

    async fn handle_publish(
        &mut self,
        repo_id: RepoId,
        path: PathBuf,
        force: bool,
        expected_manifest: Option<String>,
        reply: oneshot::Sender<Reply>,
    ) {
        let added = match self.parts.store.repo(&repo_id) {
            Ok(Some(_)) => false,
            Ok(None) => {
                let entry = RepoEntry::new(repo_id.clone(), None, Vec::new());
                if let Err(e) = self.parts.store.insert_repo(&entry) {
                    let _ = reply.send(Reply::Error(e.to_string()));
                    return;
                }
                info!(repo = %repo_id, "repository added by publish");
                self.join_topic(&repo_id, &entry).await;
                true
            }
            Err(e) => {
                let _ = reply.send(Reply::Error(e.to_string()));
                return;
            }
        };
        self.enqueue(
            repo_id,
            Job::Publish {
                path,
                force,
                expected_manifest,
                added,
                reply,
            },
        );
    }

    async fn handle_sync(&mut self, repo_id: RepoId, reply: oneshot::Sender<Reply>) {
        let entry = match self.parts.store.require_repo(&repo_id) {
            Ok(entry) => entry,
            Err(StoreError::UnknownRepo(_)) => {
                // Never seen: follow the record in the owner's repository,
                // `at://<did>/app.knot.repo/<name>`, found through the DID document.
                match self.add_from_record(&repo_id).await {
                    Ok(entry) => entry,
                    Err(e) => {
                        let _ = reply.send(Reply::Error(e.to_string()));
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = reply.send(Reply::Error(e.to_string()));
                return;
            }
        };
        if entry.locator.is_some() {
            // Ask the record first; the answer decides what to fetch.
            self.sync_waiters
                .entry(repo_id.clone())
                .or_default()
                .push(reply);
            let poller = self.parts.poller.clone();
            if let Some(tx) = self.tx.upgrade() {
                tokio::spawn(async move {
                    let result = match poller.poll_now(repo_id.clone()).await {
                        Ok(record) => Ok(record),
                        Err(PollError::Atproto(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = tx.send(Message::SyncPolled { repo_id, result }).await;
                });
            }
            return;
        }
        let up_to_date = entry.record.manifest.is_some()
            && entry.materialized == entry.record.manifest
            && !self.busy.contains(&repo_id);
        if up_to_date {
            let _ = reply.send(Reply::Ok(self.sync_report(&entry, 0, "up to date")));
            return;
        }
        let first_waiter = !self.sync_waiters.contains_key(&repo_id);
        self.sync_waiters
            .entry(repo_id.clone())
            .or_default()
            .push(reply);
        if let Some(hash) = entry.record.manifest_hash() {
            if !self.busy.contains(&repo_id) {
                self.fetch_manifest(repo_id, &entry, hash);
            }
        } else if first_waiter && !self.busy.contains(&repo_id) {
            // Nothing known yet: ask the neighbours, and give up after a while.
            if let Some(tx) = self.tx.upgrade() {
                tokio::spawn(async move {
                    tokio::time::sleep(FIRST_STATE_WAIT).await;
                    let _ = tx.send(Message::FirstStateTimeout { repo_id }).await;
                });
            }
        }
    }

    /// Track a repository nobody named yet by its default record location.
    /// It stays tracked once a sync succeeds and is forgotten if it fails.
    async fn add_from_record(&mut self, repo_id: &RepoId) -> Result<RepoEntry, KnotError> {
        let locator = Locator {
            pds: None,
            did: repo_id.did().to_string(),
            collection: record::COLLECTION.to_string(),
            rkey: repo_id.name().to_string(),
        };
        let entry = RepoEntry::new(repo_id.clone(), Some(locator.clone()), Vec::new());
        self.parts.store.insert_repo(&entry)?;
        self.auto_added.insert(repo_id.clone());
        self.parts
            .poller
            .track(repo_id.clone(), locator)
            .await
            .map_err(|_| KnotError::Failed("the record poller has stopped".into()))?;
        info!(repo = %repo_id, "following a repository first asked for by sync");
        Ok(entry)
    }

    /// Forget a repository added by a sync that did not get any state.
    async fn forget_if_auto_added(&mut self, repo_id: &RepoId) {
        if !self.auto_added.remove(repo_id) {
            return;
        }
        let held =
            matches!(self.parts.store.repo(repo_id), Ok(Some(e)) if e.materialized.is_some());
        if held {
            return;
        }
        let _ = self.parts.store.remove_repo(repo_id);
        self.leave_topic(repo_id);
        self.retries.remove(repo_id);
        let _ = self.parts.poller.untrack(repo_id).await;
        if let Err(e) = self.discard_content(repo_id).await {
            debug!(repo = %repo_id, error = %e, "cleanup after a failed first sync");
        }
    }

    fn sync_report(&self, entry: &RepoEntry, bytes_fetched: u64, message: &str) -> Payload {
        let path = self.materialized_path(&entry.record.repo_id);
        Payload::Synced(SyncReport {
            repo_id: entry.record.repo_id.to_string(),
            manifest: entry.record.manifest.clone(),
            head: entry.record.head.clone(),
            path: entry.materialized.is_some().then_some(path),
            bytes_fetched,
            message: message.to_string(),
        })
    }

    /// Queue a fetch of `hash` (a manifest the record names, or the one held)
    /// from every provider the node knows for `entry`.
    fn fetch_manifest(&mut self, repo_id: RepoId, entry: &RepoEntry, hash: Hash) {
        let providers = self.providers(entry, None);
        self.enqueue(
            repo_id,
            Job::Fetch {
                target: FetchTarget::Manifest(hash),
                providers,
            },
        );
    }

    /// Queue a content job; it starts at once when the repository is idle.
    fn enqueue(&mut self, repo_id: RepoId, job: Job) {
        let queue = self.queued.entry(repo_id.clone()).or_default();
        // A newer fetch replaces queued fetches: only the latest target matters.
        if matches!(job, Job::Fetch { .. }) {
            queue.retain(|j| !matches!(j, Job::Fetch { .. }));
        }
        queue.push_back(job);
        self.start_next(&repo_id);
    }

    fn start_next(&mut self, repo_id: &RepoId) {
        if self.busy.contains(repo_id) {
            return;
        }
        let Some(job) = self.queued.get_mut(repo_id).and_then(|q| q.pop_front()) else {
            self.queued.remove(repo_id);
            return;
        };
        let entry = match self.parts.store.require_repo(repo_id) {
            Ok(entry) => entry,
            Err(e) => {
                if let Job::Publish { reply, .. } = job {
                    let _ = reply.send(Reply::Error(e.to_string()));
                }
                return;
            }
        };
        self.busy.insert(repo_id.clone());
        let blobs = self.parts.blobs.clone();
        let dest = self.materialized_path(repo_id);
        let repo_id = repo_id.clone();
        match job {
            Job::Publish {
                path,
                force,
                expected_manifest,
                added,
                reply,
            } => {
                if let Some(expected) = expected_manifest
                    && entry.record.manifest.as_deref() != Some(expected.as_str())
                    && !(expected.is_empty() && entry.record.manifest.is_none())
                {
                    let err = KnotError::Stale {
                        repo_id: repo_id.to_string(),
                        current: entry
                            .record
                            .manifest
                            .clone()
                            .unwrap_or_else(|| "none".into()),
                        expected,
                    };
                    let _ = reply.send(Reply::Error(err.to_string()));
                    self.busy.remove(&repo_id);
                    self.start_next(&repo_id);
                    return;
                }
                let max_packs = self.parts.config.max_packs;
                let previous = entry.record.manifest_hash();
                self.jobs.spawn(async move {
                    let result = async {
                        let previous = match previous {
                            Some(h) => Some(content::load_manifest(&blobs, h, &repo_id).await?),
                            None => None,
                        };
                        let published = content::publish(
                            &blobs,
                            &repo_id,
                            &path,
                            previous.as_ref(),
                            max_packs,
                            force,
                        )
                        .await?;
                        content::materialize(&blobs, &dest, published.hash, &published.manifest)
                            .await?;
                        Ok(published)
                    }
                    .await;
                    JobDone::Published {
                        repo_id,
                        result,
                        added,
                        reply,
                    }
                });
            }
            Job::Fetch { target, providers } => {
                // A fresh downloader per job: its connections are new, so a
                // peer that restarted since the last fetch is dialed afresh.
                let downloader = blobs.downloader(&self.parts.endpoint);
                let timeout = self.parts.config.fetch_timeout();
                let previous = entry.record.manifest_hash();
                let data_dir = self.parts.config.data_dir.clone();
                self.jobs.spawn(async move {
                    let hash = target.manifest();
                    let result = async {
                        let fetched = content::fetch(
                            &blobs,
                            &downloader,
                            &repo_id,
                            hash,
                            &providers,
                            timeout,
                            &data_dir,
                        )
                        .await?;
                        content::materialize(&blobs, &dest, hash, &fetched.manifest).await?;
                        content::pin(&blobs, &repo_id, hash, &fetched.manifest).await?;
                        Ok(fetched)
                    }
                    .await;
                    if result.is_err() {
                        // Drop pins taken for the failed state; keep the previous one.
                        restore_pins(&blobs, &repo_id, previous).await;
                    }
                    JobDone::Fetched {
                        repo_id,
                        target,
                        result,
                    }
                });
            }
        }
    }

    async fn handle_job_done(&mut self, done: JobDone) {
        let repo_id = match &done {
            JobDone::Published { repo_id, .. } | JobDone::Fetched { repo_id, .. } => {
                repo_id.clone()
            }
        };
        self.busy.remove(&repo_id);
        let tracked = matches!(self.parts.store.repo(&repo_id), Ok(Some(_)));
        if !tracked {
            // Removed while the job ran.
            if let Err(e) = self.discard_content(&repo_id).await {
                warn!(repo = %repo_id, error = %e, "cleanup after removal failed");
            }
            if let JobDone::Published { reply, .. } = done {
                let _ = reply.send(Reply::Error(format!("{repo_id} was removed")));
            }
            return;
        }
        match done {
            JobDone::Published {
                repo_id,
                result,
                added,
                reply,
            } => {
                let outcome = match result {
                    Ok(published) => self.adopt_published(&repo_id, published).await,
                    Err(e) => {
                        if added {
                            // Leave no trace of a repository whose first publish failed.
                            let _ = self.parts.store.remove_repo(&repo_id);
                            self.leave_topic(&repo_id);
                            if let Err(e) = self.discard_content(&repo_id).await {
                                warn!(repo = %repo_id, error = %e, "cleanup after a failed publish failed");
                            }
                        }
                        Err(e.into())
                    }
                };
                let _ = reply.send(match outcome {
                    Ok(payload) => Reply::Ok(payload),
                    Err(e) => Reply::Error(e.to_string()),
                });
                self.reply_sync_waiters(&repo_id, 0, "published here");
            }
            JobDone::Fetched {
                repo_id,
                target,
                result,
            } => match result {
                Ok(fetched) => {
                    self.retries.remove(&repo_id);
                    if let Err(e) = self.adopt_fetched(&repo_id, target, &fetched).await {
                        warn!(repo = %repo_id, error = %e, "cannot record fetched state");
                    }
                    self.reply_sync_waiters(&repo_id, fetched.bytes_fetched, "fetched from peers");
                }
                Err(e) => {
                    warn!(repo = %repo_id, manifest = %content::hex(&target.manifest()), error = %e, "fetch failed");
                    let attempts = self
                        .retries
                        .get(&repo_id)
                        .filter(|r| r.target.manifest() == target.manifest())
                        .map_or(1, |r| r.attempts + 1);
                    let wait = retry_delay(attempts);
                    self.retries.insert(
                        repo_id.clone(),
                        Retry {
                            target: target.clone(),
                            attempts,
                            due: Instant::now() + wait,
                        },
                    );
                    let text = e.to_string();
                    let _ = self
                        .parts
                        .store
                        .update_repo(&repo_id, |entry| entry.last_error = Some(text.clone()));
                    if let Some(waiters) = self.sync_waiters.remove(&repo_id) {
                        for w in waiters {
                            let _ = w.send(Reply::Error(text.clone()));
                        }
                        self.forget_if_auto_added(&repo_id).await;
                        if !matches!(self.parts.store.repo(&repo_id), Ok(Some(_))) {
                            return;
                        }
                    }
                }
            },
        }
        self.start_next(&repo_id);
    }

    fn reply_sync_waiters(&mut self, repo_id: &RepoId, bytes_fetched: u64, message: &str) {
        if self.busy.contains(repo_id) {
            return;
        }
        let Some(waiters) = self.sync_waiters.remove(repo_id) else {
            return;
        };
        let reply = match self.parts.store.require_repo(repo_id) {
            Ok(entry) => Reply::Ok(self.sync_report(&entry, bytes_fetched, message)),
            Err(e) => Reply::Error(e.to_string()),
        };
        self.auto_added.remove(repo_id);
        for w in waiters {
            let _ = w.send(reply.clone());
        }
    }

    async fn adopt_published(
        &mut self,
        repo_id: &RepoId,
        published: Published,
    ) -> Result<Payload, KnotError> {
        let manifest_hex = content::hex(&published.hash);
        let head = published.manifest.head_oid().map(|o| o.to_string());
        let pack_count = published.manifest.packs.len();
        let has_writer = self.writer.is_some();
        let (entry, statement) = self.parts.store.update_repo(repo_id, |e| {
            let unchanged = published.unchanged && e.statement.is_some();
            if !unchanged {
                e.seq = unix_millis().max(e.seq + 1);
                e.statement = Some(self.own_statement(repo_id, &head, published.hash, e.seq));
            }
            record_held_state(e, published.hash, &published.manifest);
            if e.locator.is_some() && !published.unchanged && has_writer {
                e.write_back_pending = true;
            }
            e.statement.clone()
        })?;
        if let Some(statement) = statement
            && !published.unchanged
        {
            self.join_topic(repo_id, &entry).await;
            self.announce(repo_id, statement, Reach::TopicAndKnownPeers)
                .await;
        }
        if entry.write_back_pending {
            self.schedule_write_back(repo_id, Duration::ZERO);
        }
        Ok(Payload::Published(PublishReport {
            repo_id: repo_id.to_string(),
            head: entry.record.head.clone(),
            manifest: manifest_hex,
            pack_count,
            bytes_added: published.bytes_added,
            consolidated: published.consolidated,
            unchanged: published.unchanged,
            path: self.materialized_path(repo_id),
        }))
    }

    async fn adopt_fetched(
        &mut self,
        repo_id: &RepoId,
        target: FetchTarget,
        fetched: &Fetched,
    ) -> Result<(), KnotError> {
        let hash = target.manifest();
        let manifest_hex = content::hex(&hash);
        let head = fetched.manifest.head_oid().map(|o| o.to_string());
        let (entry, statement) = self.parts.store.update_repo(repo_id, |e| {
            match &target {
                FetchTarget::Statement(signed) => {
                    e.seq = e.seq.max(signed.statement.seq);
                    e.statement = Some(signed.clone());
                }
                FetchTarget::Manifest(_) => {
                    // Vouch for the record's state ourselves; peers that follow
                    // the same record accept it because the record names it.
                    let keep = e
                        .statement
                        .as_ref()
                        .is_some_and(|s| s.statement.manifest_hash() == hash);
                    if !keep {
                        e.statement = Some(self.own_statement(repo_id, &head, hash, e.seq));
                    }
                }
            }
            record_held_state(e, hash, &fetched.manifest);
            e.statement.clone()
        })?;
        info!(repo = %repo_id, manifest = %manifest_hex, bytes = fetched.bytes_fetched, "synced");
        if let Some(statement) = statement {
            // Tell the topic this node now provides the state.
            self.join_topic(repo_id, &entry).await;
            self.announce(repo_id, statement, Reach::Topic).await;
        }
        Ok(())
    }

    /// A statement of a state, signed by this node as its publisher.
    fn own_statement(
        &self,
        repo_id: &RepoId,
        head: &Option<String>,
        manifest: Hash,
        seq: u64,
    ) -> SignedStatement {
        Statement {
            repo_id: repo_id.to_string(),
            head: head.clone(),
            manifest: *manifest.as_bytes(),
            seq,
            publisher: *self.parts.endpoint.id().as_bytes(),
        }
        .sign(&self.secret_key)
    }

    /// Send a statement under this node's envelope as far as `reach` says.
    async fn announce(&mut self, repo_id: &RepoId, statement: SignedStatement, reach: Reach) {
        let message = self.envelope(statement);
        let Some(topic) = self.topics.get(repo_id) else {
            return;
        };
        let result = if reach == Reach::Neighbors {
            topic
                .sender
                .broadcast_neighbors(message.clone().into())
                .await
        } else {
            topic.sender.broadcast(message.clone().into()).await
        };
        if let Err(e) = result {
            warn!(repo = %repo_id, error = %e, "gossip broadcast failed");
        }
        if reach != Reach::TopicAndKnownPeers {
            return;
        }
        // Known peers that are not neighbours right now hear it directly.
        let neighbors = topic.neighbors.clone();
        let Ok(Some(entry)) = self.parts.store.repo(repo_id) else {
            return;
        };
        let targets: Vec<EndpointId> = self
            .bootstrap(&entry)
            .into_iter()
            .filter(|id| !neighbors.contains(id))
            .take(MAX_DIRECT_PEERS)
            .collect();
        for peer in targets {
            let endpoint = self.parts.endpoint.clone();
            let message = message.clone();
            self.net_tasks.spawn(async move {
                if let Err(e) = heads::push(&endpoint, peer, message).await {
                    debug!(peer = %peer.fmt_short(), error = %e, "direct push failed");
                }
            });
        }
    }

    async fn handle_topic_event(&mut self, repo_id: RepoId, event: TopicEvent) {
        match event {
            TopicEvent::Announcement(ann) => self.handle_announcement(repo_id, *ann).await,
            TopicEvent::Invalid { from, error } => {
                self.counters.dropped_invalid += 1;
                debug!(repo = %repo_id, from = %from.fmt_short(), %error, "dropped gossip message");
            }
            TopicEvent::NeighborUp(id) => {
                if let Some(topic) = self.topics.get_mut(&repo_id) {
                    topic.neighbors.insert(id);
                }
                debug!(repo = %repo_id, peer = %id.fmt_short(), "neighbour up");
                self.remember_neighbor(&repo_id, id).await;
                // Greet the newcomer with the state held here.
                if let Ok(Some(entry)) = self.parts.store.repo(&repo_id)
                    && let Some(statement) = entry.statement
                {
                    self.announce(&repo_id, statement, Reach::Neighbors).await;
                }
            }
            TopicEvent::NeighborDown(id) => {
                if let Some(topic) = self.topics.get_mut(&repo_id) {
                    topic.neighbors.remove(&id);
                }
            }
            TopicEvent::Closed => {
                if let Some(topic) = self.topics.remove(&repo_id) {
                    topic.cancel.cancel();
                }
                // Rejoin if the repository is still tracked.
                if let Ok(Some(entry)) = self.parts.store.repo(&repo_id)
                    && !self.cancel.is_cancelled()
                {
                    self.join_topic(&repo_id, &entry).await;
                }
            }
        }
    }

    /// Keep a neighbour's current addresses as a peer hint, so that after a
    /// restart this node can dial it again without discovery.
    async fn remember_neighbor(&self, repo_id: &RepoId, id: EndpointId) {
        let Some(info) = self.parts.endpoint.remote_info(id).await else {
            return;
        };
        let addrs: Vec<String> = info
            .addrs()
            .filter_map(|a| match a.addr() {
                iroh::TransportAddr::Ip(sock) => Some(sock.to_string()),
                _ => None,
            })
            .collect();
        if addrs.is_empty() {
            return;
        }
        let hint = PeerHint::new(id.to_string(), addrs, None);
        if let Err(e) = self.remember_hint(repo_id, hint) {
            debug!(repo = %repo_id, error = %e, "cannot record neighbour");
        }
    }

    /// Merge one peer hint into a repository's peers, writing only when it
    /// adds something (announcements repeat the same hints all the time).
    fn remember_hint(&self, repo_id: &RepoId, hint: PeerHint) -> Result<RepoEntry, StoreError> {
        let entry = self.parts.store.require_repo(repo_id)?;
        let merged = record::merge_peers(entry.record.peers.clone(), vec![hint]);
        if merged == entry.record.peers {
            return Ok(entry);
        }
        let (entry, ()) = self
            .parts
            .store
            .update_repo(repo_id, |e| e.record.peers = merged)?;
        Ok(entry)
    }

    async fn handle_announcement(&mut self, repo_id: RepoId, ann: Announcement) {
        self.counters.received += 1;
        let Some(sender) = ann.sender_id() else {
            return;
        };
        if sender == self.parts.endpoint.id() {
            return;
        }
        let hint = PeerHint::new(
            sender.to_string(),
            ann.sender_addrs.iter().map(|a| a.to_string()).collect(),
            None,
        );
        self.learn_peers(std::slice::from_ref(&hint));
        let entry = match self.remember_hint(&repo_id, hint) {
            Ok(entry) => entry,
            Err(e) => {
                debug!(repo = %repo_id, error = %e, "announcement for a repository no longer tracked");
                return;
            }
        };
        let statement = &ann.statement.statement;
        let trusted = self.trusted_publishers(&entry);
        let ctx = AdoptionContext {
            record_manifest: remote_manifest(&entry),
            current_manifest: entry.record.manifest.as_deref(),
            current_seq: entry.seq,
            trusted_publishers: &trusted,
        };
        match crate::announce::decide_adoption(statement, &ctx) {
            Adoption::Adopt => {
                info!(repo = %repo_id, manifest = %content::hex(&statement.manifest_hash()), from = %sender.fmt_short(), "adopting announced state");
                let providers = self.providers(&entry, Some(&ann));
                self.enqueue(
                    repo_id,
                    Job::Fetch {
                        target: FetchTarget::Statement(ann.statement),
                        providers,
                    },
                );
            }
            Adoption::AlreadyCurrent => {
                // A materialized state that a peer also holds: nothing to do.
                if entry.materialized != entry.record.manifest && !self.busy.contains(&repo_id) {
                    let providers = self.providers(&entry, Some(&ann));
                    self.enqueue(
                        repo_id,
                        Job::Fetch {
                            target: FetchTarget::Statement(ann.statement),
                            providers,
                        },
                    );
                }
            }
            Adoption::Reject(reason) => {
                self.counters.rejected += 1;
                info!(repo = %repo_id, from = %sender.fmt_short(), publisher = %statement.publisher_id().map(|p| p.fmt_short().to_string()).unwrap_or_default(), reason, "ignoring announced state");
            }
        }
    }

    /// Peers to fetch from: the announcer, the publisher, every known peer and
    /// every current neighbour, never this node.
    fn providers(&self, entry: &RepoEntry, ann: Option<&Announcement>) -> Vec<EndpointId> {
        let own = self.parts.endpoint.id();
        let mut out: Vec<EndpointId> = Vec::new();
        let mut push = |id: EndpointId| {
            if id != own && !out.contains(&id) {
                out.push(id);
            }
        };
        if let Some(ann) = ann {
            if let Some(id) = ann.sender_id() {
                push(id);
            }
            if let Some(id) = ann.statement.statement.publisher_id() {
                push(id);
            }
        }
        if let Some(topic) = self.topics.get(&entry.record.repo_id) {
            for id in &topic.neighbors {
                push(*id);
            }
        }
        for hint in &entry.record.peers {
            if let Ok(id) = hint.node_id.parse() {
                push(id);
            }
        }
        out
    }

    async fn join_topic(&mut self, repo_id: &RepoId, entry: &RepoEntry) {
        if self.topics.contains_key(repo_id) {
            // Already joined: make sure new peers are dialed.
            let peers: Vec<EndpointId> = self.bootstrap(entry);
            if !peers.is_empty()
                && let Some(topic) = self.topics.get(repo_id)
                && let Err(e) = topic.sender.join_peers(peers).await
            {
                debug!(repo = %repo_id, error = %e, "joining peers failed");
            }
            return;
        }
        let topic_id = TopicId::from_bytes(repo_id.topic_bytes());
        let bootstrap = self.bootstrap(entry);
        let sub = match self.parts.gossip.subscribe(topic_id, bootstrap).await {
            Ok(sub) => sub,
            Err(e) => {
                warn!(repo = %repo_id, error = %e, "cannot join gossip topic");
                return;
            }
        };
        let (sender, receiver) = sub.split();
        let cancel = self.cancel.child_token();
        let Some(tx) = self.tx.upgrade() else {
            return;
        };
        self.topic_tasks.spawn(topic_task(
            repo_id.clone(),
            receiver,
            tx,
            cancel.clone(),
            self.rate_limited.clone(),
        ));
        self.topics.insert(
            repo_id.clone(),
            Topic {
                sender,
                neighbors: BTreeSet::new(),
                cancel,
            },
        );
        debug!(repo = %repo_id, "joined gossip topic");
    }

    fn bootstrap(&self, entry: &RepoEntry) -> Vec<EndpointId> {
        let own = self.parts.endpoint.id();
        entry
            .record
            .peers
            .iter()
            .filter_map(|p| p.node_id.parse().ok())
            .filter(|id| *id != own)
            .collect()
    }

    fn leave_topic(&mut self, repo_id: &RepoId) {
        if let Some(topic) = self.topics.remove(repo_id) {
            topic.cancel.cancel();
            debug!(repo = %repo_id, "left gossip topic");
        }
    }

    /// Where the materialized bare repository of `repo_id` lives.
    fn materialized_path(&self, repo_id: &RepoId) -> PathBuf {
        self.parts
            .config
            .data_dir
            .join("repos")
            .join(repo_id.relative_path())
    }

    fn summaries(&self) -> Result<Vec<RepoSummary>, KnotError> {
        Ok(self
            .parts
            .store
            .repos()?
            .into_iter()
            .map(|e| {
                let connected = self
                    .topics
                    .get(&e.record.repo_id)
                    .map_or(0, |t| t.neighbors.len());
                summarize(&e, connected)
            })
            .collect())
    }

    async fn handle_status(&self) -> Result<Payload, KnotError> {
        let addr = crate::node::wait_for_addr(&self.parts.endpoint).await;
        Ok(Payload::Status(NodeStatus {
            node_id: self.parts.endpoint.id().to_string(),
            ticket: EndpointTicket::new(addr.clone()).to_string(),
            addrs: addr.ip_addrs().map(|a| a.to_string()).collect(),
            repo_count: self.parts.store.repo_count()?,
            uptime_secs: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            gossip: GossipStats {
                rate_limited: self.rate_limited.load(std::sync::atomic::Ordering::Relaxed),
                ..self.counters.clone()
            },
            repos: self.summaries()?,
        }))
    }

    async fn ticket(&self) -> String {
        let addr = crate::node::wait_for_addr(&self.parts.endpoint).await;
        EndpointTicket::new(addr).to_string()
    }
}

/// Wait before the `attempts`-th retry: [`RETRY_BASE`] doubling up to [`RETRY_MAX`].
fn retry_delay(attempts: u32) -> Duration {
    RETRY_BASE
        .saturating_mul(1u32 << attempts.clamp(1, 16).saturating_sub(1))
        .min(RETRY_MAX)
}

/// Whether a repository needs its gossip topic: it has content to serve,
/// peers to talk to, or a record that will name some. An empty repository
/// nobody is known for joins when that changes.
fn wants_topic(entry: &RepoEntry) -> bool {
    entry.record.manifest.is_some() || !entry.record.peers.is_empty() || entry.locator.is_some()
}

/// Record in `entry` that the node now holds, pins and has materialized
/// `manifest` (stored under `hash`).
fn record_held_state(entry: &mut RepoEntry, hash: Hash, manifest: &crate::manifest::Manifest) {
    let hex = content::hex(&hash);
    entry.record.manifest = Some(hex.clone());
    entry.record.head = manifest.head_oid().map(|o| o.to_string());
    entry.materialized = Some(hex);
    entry.pack_count = manifest.packs.len();
    entry.bytes_pinned = manifest.packs.iter().map(|p| p.size).sum();
    entry.last_sync = Some(unix_now());
    entry.last_error = None;
}

/// The manifest the owner's ATProto record named when last read.
fn remote_manifest(entry: &RepoEntry) -> Option<&str> {
    entry
        .locator
        .as_ref()
        .and(entry.remote.as_ref())
        .and_then(|r| r.manifest.as_deref())
}

/// After a failed fetch, put the pins back to the previous manifest (or none).
async fn restore_pins(blobs: &FsStore, repo_id: &RepoId, previous: Option<Hash>) {
    let result = match previous {
        Some(hash) => match content::load_manifest(blobs, hash, repo_id).await {
            Ok(manifest) => content::pin(blobs, repo_id, hash, &manifest).await,
            Err(e) => Err(e),
        },
        None => content::unpin_all(blobs, repo_id).await,
    };
    if let Err(e) = result {
        warn!(repo = %repo_id, error = %e, "cannot restore pins after a failed fetch");
    }
}

/// A token bucket per delivering neighbour.
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: HashMap<EndpointId, (f64, Instant)>,
}

impl RateLimiter {
    /// Whether a message from `peer` at `now` is within its rate.
    fn allow(&mut self, peer: EndpointId, now: Instant) -> bool {
        if self.buckets.len() >= MAX_RATE_ENTRIES && !self.buckets.contains_key(&peer) {
            // Forget idle neighbours rather than grow without bound.
            self.buckets.retain(|_, (tokens, last)| {
                *tokens < PEER_BURST && now.duration_since(*last) < Duration::from_secs(60)
            });
            if self.buckets.len() >= MAX_RATE_ENTRIES {
                return false;
            }
        }
        let (tokens, last) = self.buckets.entry(peer).or_insert((PEER_BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * PEER_RATE).min(PEER_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Read a topic and forward verified announcements and neighbour changes.
/// Messages beyond a neighbour's rate are dropped before any decoding.
async fn topic_task(
    repo_id: RepoId,
    mut receiver: GossipReceiver,
    tx: mpsc::Sender<Message>,
    cancel: CancellationToken,
    rate_limited: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut limiter = RateLimiter::default();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = receiver.next() => event,
        };
        let event = match event {
            Some(Ok(Event::Received(msg))) => {
                if !limiter.allow(msg.delivered_from, Instant::now()) {
                    rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                match Announcement::decode_verified(&msg.content, &repo_id) {
                    Ok(ann) => TopicEvent::Announcement(Box::new(ann)),
                    Err(e) => TopicEvent::Invalid {
                        from: msg.delivered_from,
                        error: e.to_string(),
                    },
                }
            }
            Some(Ok(Event::NeighborUp(id))) => TopicEvent::NeighborUp(id),
            Some(Ok(Event::NeighborDown(id))) => TopicEvent::NeighborDown(id),
            Some(Ok(Event::Lagged)) => {
                warn!(repo = %repo_id, "gossip receiver lagged; some announcements were missed");
                continue;
            }
            Some(Err(e)) => {
                warn!(repo = %repo_id, error = %e, "gossip topic failed");
                TopicEvent::Closed
            }
            None => TopicEvent::Closed,
        };
        let closed = matches!(event, TopicEvent::Closed);
        let msg = Message::Gossip {
            repo_id: repo_id.clone(),
            event,
        };
        if tx.send(msg).await.is_err() || closed {
            return;
        }
    }
}

fn peer_list(peers: &[PeerHint]) -> String {
    if peers.is_empty() {
        return "none".into();
    }
    peers
        .iter()
        .map(|p| p.node_id.chars().take(10).collect::<String>())
        .collect::<Vec<_>>()
        .join(", ")
}

fn summarize(entry: &RepoEntry, peers_connected: usize) -> RepoSummary {
    RepoSummary {
        repo_id: entry.record.repo_id.to_string(),
        head: entry.record.head.clone(),
        manifest: entry.record.manifest.clone(),
        materialized: entry.materialized.clone(),
        pack_count: entry.pack_count,
        bytes_pinned: entry.bytes_pinned,
        last_sync: entry.last_sync,
        last_poll: entry.last_poll,
        last_error: entry.last_error.clone(),
        peers_known: entry.record.peers.len(),
        peers_connected,
        record: entry
            .locator
            .as_ref()
            .map(|l| format!("at://{}/{}/{}", l.did, l.collection, l.rkey)),
        write_back_pending: entry.write_back_pending,
    }
}

/// Parse an endpoint ticket into a peer hint that keeps the ticket.
pub fn parse_ticket(ticket: &str) -> Result<PeerHint, KnotError> {
    let parsed: EndpointTicket = ticket.trim().parse().map_err(|e| KnotError::BadTicket {
        ticket: ticket.chars().take(24).collect(),
        reason: format!("{e}"),
    })?;
    let addr: EndpointAddr = parsed.into();
    Ok(PeerHint::new(
        addr.id.to_string(),
        addr.ip_addrs().map(|a| a.to_string()).collect(),
        Some(ticket.trim().to_string()),
    ))
}

/// The endpoint address a hint describes (ticket first, then node id and addresses).
pub fn hint_to_addr(hint: &PeerHint) -> Option<EndpointAddr> {
    let id: iroh::EndpointId = hint.node_id.parse().ok()?;
    let mut addr = hint
        .ticket
        .as_deref()
        .and_then(|t| t.parse::<EndpointTicket>().ok())
        .map(EndpointAddr::from)
        .filter(|a| a.id == id)
        .unwrap_or_else(|| EndpointAddr::new(id));
    for a in &hint.addrs {
        if let Ok(sock) = a.parse() {
            addr = addr.with_ip_addr(sock);
        }
    }
    Some(addr)
}

/// Build the record locator from `--pds` and `--record`.
///
/// `--record` is an AT URI `at://<did>/<collection>/<rkey>` whose DID must be the
/// repository owner's; without it, the record is `at://<did>/app.knot.repo/<name>`
/// when `--pds` is given, and the repository has no record otherwise.
pub fn build_locator(
    repo_id: &RepoId,
    pds: Option<String>,
    record: Option<String>,
) -> Result<Option<Locator>, KnotError> {
    if let Some(pds) = &pds
        && !(pds.starts_with("https://") || pds.starts_with("http://"))
    {
        return Err(KnotError::BadLocator(format!(
            "--pds {pds:?} must be an http(s) URL such as https://pds.example.com"
        )));
    }
    let (did, collection, rkey) = match record {
        Some(uri) => {
            let rest = uri
                .strip_prefix("at://")
                .ok_or_else(|| KnotError::BadLocator(format!("{uri:?} must start with at://")))?;
            let parts: Vec<&str> = rest.split('/').collect();
            let [did, collection, rkey] = parts[..] else {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?} must have the form at://<did>/<collection>/<rkey>"
                )));
            };
            validate_did(did).map_err(|r| KnotError::BadLocator(format!("{uri:?}: {r}")))?;
            if did != repo_id.did() {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?} belongs to {did}, but {repo_id} is owned by {}; a repository's record must live in its owner's repository",
                    repo_id.did()
                )));
            }
            if collection != record::COLLECTION {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?}: collection must be {}",
                    record::COLLECTION
                )));
            }
            if !valid_rkey(rkey) {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?}: record key must be 1-512 characters of [A-Za-z0-9._:~-] and not . or .."
                )));
            }
            (did.to_string(), collection.to_string(), rkey.to_string())
        }
        None if pds.is_some() => (
            repo_id.did().to_string(),
            record::COLLECTION.to_string(),
            repo_id.name().to_string(),
        ),
        None => return Ok(None),
    };
    Ok(Some(Locator {
        pds,
        did,
        collection,
        rkey,
    }))
}

/// ATProto record key syntax.
pub fn valid_rkey(rkey: &str) -> bool {
    !rkey.is_empty()
        && rkey.len() <= 512
        && rkey != "."
        && rkey != ".."
        && rkey
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'~' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid() -> RepoId {
        RepoId::parse("did:plc:abc123/website").unwrap()
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_delay(1), RETRY_BASE);
        assert_eq!(retry_delay(2), RETRY_BASE * 2);
        assert_eq!(retry_delay(3), RETRY_BASE * 4);
        assert_eq!(retry_delay(40), RETRY_MAX);
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let mut limiter = RateLimiter::default();
        let peer = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let other = iroh::SecretKey::from_bytes(&[2; 32]).public();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| limiter.allow(peer, t0)).count();
        assert_eq!(allowed, PEER_BURST as usize);
        assert!(limiter.allow(other, t0), "peers have separate budgets");
        let later = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| limiter.allow(peer, later)).count();
        assert_eq!(allowed, PEER_RATE as usize);
    }

    #[test]
    fn locator_defaults_and_checks() {
        assert_eq!(build_locator(&rid(), None, None).unwrap(), None);
        let l = build_locator(&rid(), Some("https://pds.example".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.did.as_str(), l.collection.as_str(), l.rkey.as_str()),
            ("did:plc:abc123", "app.knot.repo", "website")
        );
        let l = build_locator(
            &rid(),
            None,
            Some("at://did:plc:abc123/app.knot.repo/other".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(l.rkey, "other");
        for bad in [
            "at://did:plc:evil/app.knot.repo/website",
            "at://did:plc:abc123/app.bsky.feed.post/x",
            "at://did:plc:abc123/app.knot.repo/..",
            "at://did:plc:abc123/app.knot.repo",
            "https://x/y/z",
            "at://did:plc:abc123/app.knot.repo/a/b",
        ] {
            assert!(
                build_locator(&rid(), None, Some(bad.into())).is_err(),
                "{bad}"
            );
        }
        assert!(build_locator(&rid(), Some("ftp://x".into()), None).is_err());
    }

    #[test]
    fn tickets_round_trip_into_hints() {
        let key = iroh::SecretKey::from_bytes(&[3; 32]);
        let addr = EndpointAddr::new(key.public()).with_ip_addr("127.0.0.1:4000".parse().unwrap());
        let ticket = EndpointTicket::new(addr.clone()).to_string();
        let hint = parse_ticket(&ticket).unwrap();
        assert_eq!(hint.node_id, key.public().to_string());
        assert_eq!(hint.addrs, vec!["127.0.0.1:4000"]);
        assert_eq!(hint_to_addr(&hint).unwrap(), addr);
        assert!(parse_ticket("endpointgarbage").is_err());
    }
}
