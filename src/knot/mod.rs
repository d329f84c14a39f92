//! The repository actor: executes what [`crate::core`] decides.
//!
//! Owns the I/O around the core: the admin command channel and reply
//! channels, the database writes, one task per joined gossip topic
//! ([`topics`]), content jobs ([`jobs`]), direct pushes, pulls and record
//! write-backs ([`net`]), ATProto reads ([`reads`]), what is served to git
//! clients ([`crate::served`]), and one timer queue ([`timers`]).
//! One `select!` loop turns everything that happens into core events and
//! executes the effects that come back, in order: a durable write is
//! committed before the effects after it run, so a held state is on disk
//! before it is announced. Bookkeeping writes are batched and committed at
//! most every [`BOOKKEEPING_FLUSH`]. Everything that survives a restart is
//! in the database and the blob store; at start the core resumes from them.
//!
//! The loop awaits nothing that can wait on the network or on the loop
//! itself: gossip is driven by the topics' tasks (a peer can hold gossip up
//! indefinitely), and content, network and ATProto work runs on child tasks.

mod admin;
mod input;
mod jobs;
mod net;
mod outbox;
mod paths;
mod reads;
mod serve;
mod timers;
mod topics;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use iroh::{Endpoint, SecretKey, address_lookup::MemoryLookup};
use iroh_blobs::store::fs::FsStore;
use iroh_gossip::net::Gossip;
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use input::{build_locator, parse_ticket, valid_rkey};
pub use net::{hint_to_addr, wait_for_addr};

use crate::{
    account::{Account, WriteBackRequest},
    admin::{Command, EventLine, Executor, PackBody, Payload, PublishRequest, Reply},
    atproto::XrpcClient,
    clock,
    config::Config,
    core::{Busy, Core, CoreCommand, Effect, Event, Now, ReplyId, Settings, Subject, Via},
    gitserve::ServeTarget,
    heads::HeadsEvent,
    limits::DropCounters,
    repo_id::RepoId,
    served::ServedRepos,
    store::{Store, StoreError, Write},
};
use topics::{JoinedTopic, TopicCommand, TopicContext, TopicEvent};

/// Events kept for watchers that fall behind.
const EVENT_BUFFER: usize = 1024;
/// Longest time bookkeeping (hints, last poll, errors) waits to be written.
pub const BOOKKEEPING_FLUSH: Duration = Duration::from_secs(30);

/// Errors of repository commands; the text is shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum KnotError {
    /// The actor has stopped (the node is shutting down).
    #[error("knotd is shutting down")]
    Gone,
    /// The database could not be read at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A peer ticket does not parse.
    #[error(
        "peer ticket {ticket:?} is invalid: {reason}; get a ticket with `knotd ticket` on the peer, or give its node id when discovery is on"
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
    /// A command failed; the text says why.
    #[error("{0}")]
    Failed(String),
}

/// Everything the actor needs from the node.
pub struct KnotParts {
    /// Node configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// The blob store.
    pub blobs: FsStore,
    /// Holds new blobs' temporary tags across garbage collection.
    pub gc_guard: crate::content::GcGuard,
    /// The iroh endpoint.
    pub endpoint: Endpoint,
    /// The gossip protocol.
    pub gossip: Gossip,
    /// The address book fed with learned peers.
    pub lookup: MemoryLookup,
    /// Requests arriving over the direct head exchange protocol.
    pub heads: mpsc::Receiver<HeadsEvent>,
    /// Per-peer budget of the direct head exchange; answers to this node's
    /// pulls are charged to it.
    pub heads_limiter: crate::limits::SharedLimiter,
    /// The node's ATProto account, when credentials are configured.
    pub account: Option<Account>,
    /// XRPC client, used to resolve handles to follow.
    pub xrpc: XrpcClient,
    /// Counters of messages dropped before reaching the actor.
    pub drops: Arc<DropCounters>,
}

struct AdminMessage {
    request: Request,
    reply: oneshot::Sender<Reply>,
}

/// What the actor is asked through its handle.
enum Request {
    /// A command from the admin socket.
    Admin(Command),
    /// Publish the repository the node itself prepared at `source` (a
    /// received pack indexed in a temporary repository).
    PublishFrom {
        repo_id: RepoId,
        source: PathBuf,
        force: bool,
        expected_manifest: Option<String>,
    },
}

/// Handle to the repository actor.
#[derive(Clone, Debug)]
pub struct KnotHandle {
    tx: mpsc::Sender<AdminMessage>,
    events: broadcast::Sender<EventLine>,
    /// What is served to git clients, as the core says.
    served: ServedRepos,
    /// The node's temporary directory (received packs, empty stand-ins).
    tmp_dir: PathBuf,
    /// Most bytes a received pack may have.
    max_receive_bytes: u64,
}

impl KnotHandle {
    /// Run an admin command (refused when a number is over its limit).
    pub async fn command(&self, command: Command) -> Result<Payload, KnotError> {
        command
            .check_limits()
            .map_err(|e| KnotError::Failed(e.to_string()))?;
        self.request(Request::Admin(command)).await
    }

    /// Publish the git repository at `source`, which this node prepared
    /// itself (a mirror's repository), as the new state of `repo_id`,
    /// non-fast-forward updates included. An untracked repository is added.
    pub async fn publish_prepared(
        &self,
        repo_id: RepoId,
        source: std::path::PathBuf,
    ) -> Result<Payload, KnotError> {
        self.request(Request::PublishFrom {
            repo_id,
            source,
            force: true,
            expected_manifest: None,
        })
        .await
    }

    async fn request(&self, request: Request) -> Result<Payload, KnotError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(AdminMessage { request, reply })
            .await
            .map_err(|_| KnotError::Gone)?;
        match rx.await.map_err(|_| KnotError::Gone)? {
            Reply::Ok(payload) => Ok(payload),
            Reply::Error(message) => Err(KnotError::Failed(message)),
        }
    }

    /// Subscribe to the node's events.
    pub fn subscribe(&self) -> broadcast::Receiver<EventLine> {
        self.events.subscribe()
    }

    /// What the node serves to git clients (shared, kept up to date).
    pub fn served(&self) -> ServedRepos {
        self.served.clone()
    }
}

impl Executor for KnotHandle {
    async fn execute(&self, command: Command) -> Reply {
        self.command(command)
            .await
            .map_or_else(|e| Reply::Error(e.to_string()), Reply::Ok)
    }

    fn events(&self) -> Option<broadcast::Receiver<EventLine>> {
        Some(self.subscribe())
    }

    async fn publish<'a>(&'a self, request: PublishRequest, pack: PackBody<'a>) -> Reply {
        self.publish_received(request, pack)
            .await
            .map_or_else(|e| Reply::Error(e.to_string()), Reply::Ok)
    }

    async fn serve_target(&self, repo_id: RepoId) -> Result<ServeTarget, String> {
        self.locate_served(&repo_id)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The actor. See the module documentation.
pub struct Knot {
    core: Core,
    parts: KnotParts,
    secret_key: SecretKey,
    rx: mpsc::Receiver<AdminMessage>,
    cancel: CancellationToken,
    started: Instant,
    replies: HashMap<ReplyId, oneshot::Sender<Reply>>,
    next_reply: ReplyId,
    timers: timers::Timers,
    topics: HashMap<RepoId, JoinedTopic>,
    topic_tasks: JoinSet<()>,
    topic_ctx: TopicContext,
    topic_rx: mpsc::Receiver<(RepoId, u64, TopicEvent)>,
    /// The epoch of the next topic joined (see [`JoinedTopic::epoch`]).
    next_topic_epoch: u64,
    net: net::NetTasks,
    jobs: jobs::Jobs,
    side: JoinSet<Side>,
    reader: crate::reader::Reader,
    reads: JoinSet<Event>,
    read_fallbacks: HashMap<tokio::task::Id, Event>,
    gc_passes: tokio::sync::watch::Receiver<u64>,
    write_back: Option<net::WriteBackContext>,
    book_pending: BTreeMap<String, Write>,
    /// Events the actor itself reports to the core (a failed commit, work
    /// it had no room for), fed right after the batch that caused them.
    reported: std::collections::VecDeque<Event>,
    flush_at: Option<tokio::time::Instant>,
    events: broadcast::Sender<EventLine>,
    served: ServedRepos,
}

/// What a side task of the actor hands back.
enum Side {
    /// Nothing more to do.
    Done,
    /// An event for the core.
    Event(Event),
    /// A command for the core, prepared off the loop (a handle resolved).
    Command(oneshot::Sender<Reply>, CoreCommand),
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: clock::unix_millis(),
    }
}

impl Knot {
    /// Load the database and start the actor in `tasks`; it stops when
    /// `cancel` fires. Fails when the database cannot be read.
    pub fn spawn(
        mut parts: KnotParts,
        cancel: CancellationToken,
        tasks: &mut crate::supervise::Supervised,
    ) -> Result<KnotHandle, KnotError> {
        let rows = parts.store.load_all()?;
        let follows = parts.store.load_follows()?;
        let rules = parts.store.load_policy()?;
        let (tx, rx) = mpsc::channel(1024);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (topic_tx, topic_rx) = mpsc::channel(1024);
        let account = parts
            .account
            .take()
            .map(|a| Arc::new(tokio::sync::Mutex::new(a)));
        let secret_key = parts.endpoint.secret_key().clone();
        let config = &parts.config;
        let repos_root = config.data_dir.join("repos");
        let served = ServedRepos::new(repos_root.clone());
        let mut settings = Settings::new(repos_root.clone());
        settings.write_back = account.is_some();
        settings.max_jobs = config.max_concurrent_jobs;
        settings.max_repo_bytes = config.max_repo_bytes;
        settings.max_total_bytes = config.max_total_bytes;
        settings.verify_interval = config.verify_interval();
        settings.topic_idle = config.topic_idle();
        settings.max_repos_per_identity = config.follow.max_repos_per_identity;
        settings.retired_grace = config.follow.retired_grace();
        settings.record_reads = reads::settings(&config.atproto);
        settings.listings = reads::settings(&config.atproto);
        let tmp_dir = config.data_dir.join("tmp");
        crate::gitserve::clear_tmp(&tmp_dir);
        let max_receive_bytes = config
            .max_repo_bytes
            .or(config.max_total_bytes)
            .unwrap_or(crate::gitserve::MAX_RECEIVE_BYTES);
        let mut core = Core::new(secret_key.clone(), settings);
        let mut policy = crate::core::Policy {
            default: config.policy.default,
            ..Default::default()
        };
        for (target, rule) in rules {
            match rule {
                crate::admin::PolicyRule::Allow => policy.allow.insert(target),
                crate::admin::PolicyRule::Block => policy.block.insert(target),
                crate::admin::PolicyRule::Clear => false,
            };
        }
        core.set_policy(policy);
        let repos = rows.len();
        let loaded = core.load(rows, follows, now());
        // What is held is served before the servers start, which is once
        // this returns.
        for effect in &loaded {
            if let Effect::Served { repo, state } = effect {
                served.set(repo.clone(), state.clone());
            }
        }
        let jobs = jobs::Jobs::new(&parts, repos_root.clone(), cancel.child_token());
        let actor = Knot {
            core,
            secret_key,
            rx,
            cancel,
            started: Instant::now(),
            replies: HashMap::new(),
            next_reply: 1,
            timers: timers::Timers::default(),
            topics: HashMap::new(),
            topic_tasks: JoinSet::new(),
            topic_ctx: TopicContext {
                gossip: parts.gossip.clone(),
                endpoint: parts.endpoint.clone(),
                tx: topic_tx,
                drops: parts.drops.clone(),
            },
            topic_rx,
            next_topic_epoch: 0,
            net: net::NetTasks::new(parts.heads_limiter.clone(), parts.drops.clone()),
            jobs,
            side: JoinSet::new(),
            reader: crate::reader::Reader::new(
                parts.xrpc.clone(),
                parts.config.atproto.plc_directory.clone(),
            ),
            reads: JoinSet::new(),
            read_fallbacks: HashMap::new(),
            gc_passes: parts.gc_guard.subscribe(),
            write_back: account.map(|account| net::WriteBackContext {
                endpoint: parts.endpoint.clone(),
                account,
            }),
            book_pending: BTreeMap::new(),
            reported: std::collections::VecDeque::new(),
            flush_at: None,
            events: events.clone(),
            served: served.clone(),
            parts,
        };
        tasks.spawn("repository actor", actor.run(repos, loaded));
        Ok(KnotHandle {
            tx,
            events,
            served,
            tmp_dir,
            max_receive_bytes,
        })
    }

    /// Execute what the core decided when it loaded (`repos`
    /// repositories), then run until cancelled.
    async fn run(mut self, repos: usize, loaded: Vec<Effect>) {
        self.execute(loaded).await;
        self.feed_reported().await;
        if let Some(ctx) = self.write_back.clone() {
            self.side.spawn(async move {
                Side::Event(Event::AccountResolved {
                    did: ctx.resolve().await,
                })
            });
        }
        info!(repos, "repositories resumed");
        loop {
            let flush_at = self.flush_at;
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle_request(msg.request, msg.reply).await,
                    None => break,
                },
                Some((repo, epoch, event)) = self.topic_rx.recv() => self.handle_topic_event(repo, epoch, event).await,
                Some(event) = self.parts.heads.recv() => self.handle_heads(event).await,
                Some(done) = self.reads.join_next_with_id(), if !self.reads.is_empty() => {
                    self.handle_read(done).await;
                }
                event = self.jobs.next() => self.feed(event).await,
                Some(done) = self.net.set().join_next(), if !self.net.set().is_empty() => {
                    if let Ok(done) = done {
                        self.handle_net(done).await;
                    }
                }
                Some(key) = self.timers.next(), if !self.timers.is_empty() => self.feed(Event::Timer(key)).await,
                Some(done) = self.side.join_next(), if !self.side.is_empty() => match done {
                    Ok(Side::Event(event)) => self.feed(event).await,
                    Ok(Side::Command(reply, command)) => self.command(reply, command).await,
                    Ok(Side::Done) | Err(_) => {}
                },
                Some(_) = self.topic_tasks.join_next(), if !self.topic_tasks.is_empty() => {}
                Ok(()) = self.gc_passes.changed() => {
                    let passes = *self.gc_passes.borrow_and_update();
                    self.feed(Event::GcPass { passes }).await;
                }
                _ = sleep_until(flush_at), if flush_at.is_some() => self.flush_bookkeeping(),
            }
        }
        self.flush_bookkeeping();
        for topic in self.topics.values() {
            topic.cancel.cancel();
        }
        self.topics.clear();
        self.jobs.shutdown().await;
        self.reads.shutdown().await;
        self.topic_tasks.shutdown().await;
        self.net.shutdown().await;
        self.side.shutdown().await;
        debug!("repository actor stopped");
    }

    /// Hand an event to the core and execute what it decides, then what
    /// the execution itself reported.
    async fn feed(&mut self, event: Event) {
        let effects = self.core.handle(event, now());
        self.execute(effects).await;
        self.feed_reported().await;
    }

    async fn feed_reported(&mut self) {
        while let Some(event) = self.reported.pop_front() {
            let effects = self.core.handle(event, now());
            self.execute(effects).await;
        }
    }

    async fn handle_topic_event(&mut self, repo: RepoId, epoch: u64, event: TopicEvent) {
        // Neighbours and the end of a subscription left behind (the topic
        // was left, and maybe joined again) are not this topic's. What an
        // announcement says holds wherever it came from.
        let current = self.topics.get(&repo).is_some_and(|t| t.epoch == epoch);
        if !current && !matches!(event, TopicEvent::Announcement(_)) {
            debug!(repo = %repo, "dropping an event of a topic left");
            return;
        }
        let event = match event {
            TopicEvent::Announcement(announcement) => Event::Announcement {
                repo,
                announcement,
                via: Via::Gossip,
            },
            TopicEvent::NeighborUp(peer, addrs) => Event::NeighborUp { repo, peer, addrs },
            TopicEvent::NeighborDown(peer) => Event::NeighborDown { repo, peer },
            TopicEvent::Closed => {
                if let Some(topic) = self.topics.remove(&repo) {
                    topic.cancel.cancel();
                }
                if self.cancel.is_cancelled() {
                    return;
                }
                Event::TopicClosed { repo }
            }
        };
        self.feed(event).await;
    }

    async fn handle_heads(&mut self, event: HeadsEvent) {
        match event {
            HeadsEvent::Pushed {
                repo, announcement, ..
            } => {
                self.feed(Event::Announcement {
                    repo,
                    announcement,
                    via: Via::Direct,
                })
                .await;
            }
            HeadsEvent::Pull {
                from,
                repo_ids,
                reply,
            } => {
                // Only a lookup here: the connection's task signs the envelopes.
                let statements = self.core.held_statements(&repo_ids);
                debug!(peer = %from.fmt_short(), count = statements.len(), "served a pull");
                let _ = reply.send(statements);
            }
        }
    }

    async fn handle_net(&mut self, done: net::NetDone) {
        match done {
            net::NetDone::Pushed { peer } => self.net.pushed(peer),
            net::NetDone::Pulled {
                peer,
                ok,
                announcements,
                ask_again,
            } => {
                self.feed(Event::Pulled { peer, ok }).await;
                if !ask_again.is_empty() {
                    self.reported.push_back(Event::NetBusy(Busy::Pull {
                        peer,
                        repos: ask_again,
                    }));
                }
                for (repo, announcement) in announcements {
                    self.feed(Event::Announcement {
                        repo,
                        announcement: Box::new(announcement),
                        via: Via::Direct,
                    })
                    .await;
                }
            }
            net::NetDone::Probed {
                repo,
                peer,
                manifest,
                proved,
            } => {
                self.feed(Event::ReplicaProbed {
                    repo,
                    peer,
                    manifest,
                    proved,
                })
                .await;
            }
            net::NetDone::WrittenBack { repo, result } => {
                self.feed(Event::WrittenBack { repo, result }).await;
            }
        }
    }

    /// Execute effects in order. Writes are grouped; a group with a durable
    /// write is committed before the next effect runs. If that commit
    /// fails, no later announcement of a repository it wrote goes out,
    /// later successful replies become errors, and the core hears of it
    /// next ([`Event::PersistFailed`]).
    async fn execute(&mut self, effects: Vec<Effect>) {
        let mut writes = Vec::new();
        let mut failed: Option<(Vec<Subject>, String)> = None;
        for mut effect in effects {
            if let Effect::Persist(write) = effect {
                writes.push(write);
                continue;
            }
            if !writes.is_empty() {
                self.commit(std::mem::take(&mut writes), &mut failed);
            }
            if let Some((subjects, error)) = &failed {
                match &mut effect {
                    Effect::Announce { repo, .. }
                        if subjects.contains(&Subject::Repo(repo.clone())) =>
                    {
                        warn!(repo = %repo, "not announcing a state the database could not record");
                        continue;
                    }
                    Effect::Reply { reply, .. } if matches!(reply, Reply::Ok(_)) => {
                        *reply = Reply::Error(format!(
                            "the database could not record this change ({error}); knotd keeps it in memory and writes it again: check the disk holding the data directory"
                        ));
                    }
                    _ => {}
                }
            }
            self.execute_one(effect).await;
        }
        if !writes.is_empty() {
            self.commit(writes, &mut failed);
        }
        if let Some((subjects, error)) = failed {
            self.reported
                .push_back(Event::PersistFailed { subjects, error });
        }
    }

    /// Commit durable writes now (with any bookkeeping waiting); batch the
    /// rest. A failed commit adds its subjects to `failed`.
    fn commit(&mut self, writes: Vec<Write>, failed: &mut Option<(Vec<Subject>, String)>) {
        let (durable, lazy): (Vec<Write>, Vec<Write>) =
            writes.into_iter().partition(Write::needs_durability);
        for write in lazy {
            self.book_pending.insert(write.key().to_string(), write);
        }
        if durable.is_empty() {
            if !self.book_pending.is_empty() && self.flush_at.is_none() {
                self.flush_at = Some(tokio::time::Instant::now() + BOOKKEEPING_FLUSH);
            }
            return;
        }
        let mut subjects: Vec<Subject> = durable.iter().map(Write::subject).collect();
        let mut all = durable;
        all.extend(std::mem::take(&mut self.book_pending).into_values());
        self.flush_at = None;
        if let Err(e) = self.parts.store.commit(&all) {
            error!(error = %e, "cannot write to the database");
            let (known, _) = failed.get_or_insert_with(|| (Vec::new(), e.to_string()));
            known.append(&mut subjects);
            known.sort();
            known.dedup();
            // The bookkeeping it took along waits for the next commit.
            for write in all.into_iter().filter(|w| !w.needs_durability()) {
                self.book_pending.insert(write.key().to_string(), write);
            }
            if self.flush_at.is_none() {
                self.flush_at = Some(tokio::time::Instant::now() + BOOKKEEPING_FLUSH);
            }
        }
    }

    fn flush_bookkeeping(&mut self) {
        self.flush_at = None;
        let writes: Vec<Write> = std::mem::take(&mut self.book_pending)
            .into_values()
            .collect();
        if let Err(e) = self.parts.store.commit(&writes) {
            warn!(error = %e, "cannot write bookkeeping to the database");
        }
    }

    async fn execute_one(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(_) => unreachable!("grouped by execute"),
            Effect::Reply { to, reply } => {
                if let Some(tx) = self.replies.remove(&to) {
                    let _ = tx.send(reply);
                }
            }
            Effect::StartJob {
                repo,
                job,
                spec,
                interactive,
            } => self.jobs.start(repo, job, spec, interactive),
            Effect::JoinTopic { repo, peers } => self.join_topic(repo, peers),
            Effect::DialPeers { repo, peers } => {
                if let Some(topic) = self.topics.get(&repo) {
                    topic.send(&repo, TopicCommand::JoinPeers(peers));
                }
            }
            Effect::LeaveTopic { repo } => {
                if let Some(topic) = self.topics.remove(&repo) {
                    topic.cancel.cancel();
                    debug!(repo = %repo, "left gossip topic");
                }
            }
            Effect::Announce {
                repo,
                statement,
                audience,
            } => self.announce(&repo, statement, audience),
            Effect::Pull { peer, repos } => {
                if let Err(repos) = self.net.pull(&self.parts.endpoint, peer, repos) {
                    self.reported
                        .push_back(Event::NetBusy(Busy::Pull { peer, repos }));
                }
            }
            Effect::ProbeReplica {
                repo,
                peer,
                manifest,
            } => self.net.probe(
                &self.parts.endpoint,
                &self.parts.blobs,
                repo,
                peer,
                manifest,
            ),
            Effect::LearnAddrs(hints) => {
                let me = self.parts.endpoint.id();
                for addr in hints.iter().filter_map(hint_to_addr) {
                    if addr.id != me {
                        self.parts.lookup.add_endpoint_info(addr);
                    }
                }
            }
            Effect::PollRecord {
                repo,
                locator,
                read,
            } => self.start_record_read(repo, locator, read),
            Effect::ListIdentity { did, read } => self.start_listing(did, read),
            Effect::Notify { repo, event } => {
                // Nobody watching is fine.
                let _ = self.events.send(EventLine {
                    at_ms: clock::unix_millis(),
                    repo: repo.map(|r| r.to_string()),
                    event,
                });
            }
            Effect::Served { repo, state } => self.served.set(repo, state),
            Effect::WriteBack {
                repo,
                collection,
                rkey,
                head,
                manifest,
                seq,
            } => match &self.write_back {
                Some(ctx) => {
                    let req = WriteBackRequest {
                        repo_id: repo.clone(),
                        collection,
                        rkey,
                        head,
                        manifest,
                        seq,
                        own: crate::record::PeerHint::new(String::new(), vec![], None),
                    };
                    ctx.spawn(self.net.set(), repo, req);
                }
                None => warn!(repo = %repo, "write-back asked for without credentials"),
            },
            Effect::SetTimer { key, at } => self.timers.set(key, at),
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
