//! The actor's network side-tasks and address helpers: direct pushes and
//! pulls of announcements (bounded in number, pushes paced per peer at the
//! rate its heads server admits from one peer; pulled announcements are
//! verified on the task, not the actor, and an answer is charged to the
//! answering peer's budget of the direct exchange, the one its pushes
//! spend), record write-back, this node's own address and peer hint.
//! Nothing here is persisted.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use iroh::{Endpoint, EndpointAddr, EndpointId, Watcher};
use iroh_tickets::endpoint::EndpointTicket;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::{
    account::{Account, WriteBackRequest, WriteOutcome},
    announce::Announcement,
    core::{WriteFailure, WrittenBack},
    heads,
    limits::{DropCounters, RateLimiter, SharedLimiter},
    record::{self, PeerHint},
    repo_id::RepoId,
};

/// Most direct pushes and pulls in flight; more are not started and the
/// core is told ([`crate::core::Event::NetBusy`]).
pub(super) const MAX_NET_TASKS: usize = 64;
/// Longest wait for the endpoint to report a direct address.
const ADDR_TIMEOUT: Duration = Duration::from_secs(10);

/// What a network side-task reports to the actor.
pub(super) enum NetDone {
    /// A direct push to `peer` ended (its outcome only matters to the log).
    Pushed {
        /// The peer pushed to.
        peer: EndpointId,
    },
    /// A pull ended: the verified announcements, or none when it failed.
    Pulled {
        /// The peer asked.
        peer: EndpointId,
        /// Whether it answered.
        ok: bool,
        /// What it sent, verified.
        announcements: Vec<(RepoId, Announcement)>,
        /// Repositories to ask about again later: the answer came past the
        /// peer's rate and was dropped unread.
        ask_again: Vec<RepoId>,
    },
    /// A probe of a peer's claim to hold a state ended.
    Probed {
        /// The repository.
        repo: RepoId,
        /// The peer.
        peer: EndpointId,
        /// The manifest it claimed.
        manifest: iroh_blobs::Hash,
        /// Whether it served verified chunks of every blob.
        proved: bool,
    },
    /// A write-back ended.
    WrittenBack {
        /// The repository.
        repo: RepoId,
        /// The record on the PDS now, or why not.
        result: Result<WrittenBack, WriteFailure>,
    },
}

/// Bounded direct exchanges with peers.
pub(super) struct NetTasks {
    tasks: JoinSet<NetDone>,
    dropped: u64,
    limiter: SharedLimiter,
    drops: Arc<DropCounters>,
    /// Exchanges started with each peer (pushes and pulls), paced at the
    /// rate its heads server admits from one peer: one past it would be
    /// refused after a handshake.
    pace: RateLimiter,
    /// Direct pushes in flight per peer (its server serves few connections
    /// of one peer at once).
    pushing: HashMap<EndpointId, usize>,
}

/// Most direct pushes in flight to one peer: with a pull beside them, fewer
/// than the connections its heads server serves from one peer
/// ([`heads::MAX_CONNECTIONS_PER_PEER`]).
const MAX_PUSHES_PER_PEER: usize = heads::MAX_CONNECTIONS_PER_PEER / 2;

impl NetTasks {
    /// Charge pull answers to `limiter`; count the refused in `drops`.
    pub fn new(limiter: SharedLimiter, drops: Arc<DropCounters>) -> Self {
        Self {
            tasks: JoinSet::new(),
            dropped: 0,
            limiter,
            drops,
            pace: RateLimiter::new(heads::PEER_BURST, heads::PEER_RATE),
            pushing: HashMap::new(),
        }
    }

    /// The task set, to await the next finished task.
    pub fn set(&mut self) -> &mut JoinSet<NetDone> {
        &mut self.tasks
    }

    fn full(&mut self) -> bool {
        if self.tasks.len() >= MAX_NET_TASKS {
            self.dropped += 1;
            debug!(
                dropped = self.dropped,
                "too many direct exchanges in flight; dropping one"
            );
            return true;
        }
        false
    }

    /// Push an encoded announcement to `peer`; false when there is no room,
    /// when [`MAX_PUSHES_PER_PEER`] are in flight to it, or when `peer` was
    /// sent as many exchanges as its heads server admits from one peer (a
    /// burst of pushes to one peer, such as the catch-up pushes of many
    /// repositories followed from it, would otherwise cost a connection
    /// each only to be refused). Such a push is dropped, not delayed.
    pub fn push(&mut self, endpoint: &Endpoint, peer: EndpointId, message: Vec<u8>) -> bool {
        if !self.admit_push(peer, Instant::now()) {
            return false;
        }
        *self.pushing.entry(peer).or_default() += 1;
        let endpoint = endpoint.clone();
        self.tasks.spawn(async move {
            if let Err(e) = heads::push(&endpoint, peer, message).await {
                debug!(peer = %peer.fmt_short(), error = %e, "direct push failed");
            }
            NetDone::Pushed { peer }
        });
        true
    }

    /// A push to `peer` ended.
    pub fn pushed(&mut self, peer: EndpointId) {
        if let Some(n) = self.pushing.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pushing.remove(&peer);
            }
        }
    }

    /// Whether a push to `peer` at `now` may start: there is room, and the
    /// peer's server would admit it.
    fn admit_push(&mut self, peer: EndpointId, now: Instant) -> bool {
        if self.full() {
            return false;
        }
        if self.pushing.get(&peer).copied().unwrap_or(0) >= MAX_PUSHES_PER_PEER
            || !self.pace.allow(peer, now)
        {
            self.dropped += 1;
            debug!(peer = %peer.fmt_short(), dropped = self.dropped, "past what the peer admits; dropping a direct push");
            return false;
        }
        true
    }

    /// Pull `repos` from `peer`; hands them back when there is no room or
    /// the peer's server would not admit another exchange now.
    pub fn pull(
        &mut self,
        endpoint: &Endpoint,
        peer: EndpointId,
        repos: Vec<RepoId>,
    ) -> Result<(), Vec<RepoId>> {
        if self.full() || !self.pace.allow(peer, Instant::now()) {
            return Err(repos);
        }
        let endpoint = endpoint.clone();
        let (limiter, drops) = (self.limiter.clone(), self.drops.clone());
        self.tasks.spawn(async move {
            match heads::pull(&endpoint, peer, &repos).await {
                Ok(announcements) => {
                    // An answer costs the peer what a push costs it; one
                    // past its rate is dropped and its repositories are
                    // asked about again later.
                    if announcements.is_empty() || limiter.allow(peer) {
                        NetDone::Pulled {
                            peer,
                            ok: true,
                            announcements,
                            ask_again: Vec::new(),
                        }
                    } else {
                        drops.rate_limited();
                        debug!(peer = %peer.fmt_short(), "pull answer over the peer's rate; dropped");
                        NetDone::Pulled {
                            peer,
                            ok: true,
                            announcements: Vec::new(),
                            ask_again: repos,
                        }
                    }
                }
                Err(e) => {
                    debug!(peer = %peer.fmt_short(), error = %e, "pull failed");
                    NetDone::Pulled {
                        peer,
                        ok: false,
                        announcements: Vec::new(),
                        ask_again: Vec::new(),
                    }
                }
            }
        });
        Ok(())
    }

    /// Probe whether `peer` holds the state `manifest` of `repo` (see
    /// [`crate::probe`]). When too many exchanges are in flight the probe
    /// fails at once; the core tries again later.
    pub fn probe(
        &mut self,
        endpoint: &Endpoint,
        blobs: &iroh_blobs::api::Store,
        repo: RepoId,
        peer: EndpointId,
        manifest: iroh_blobs::Hash,
    ) {
        let failed = NetDone::Probed {
            repo: repo.clone(),
            peer,
            manifest,
            proved: false,
        };
        if self.full() {
            self.tasks.spawn(async move { failed });
            return;
        }
        let (endpoint, blobs) = (endpoint.clone(), blobs.clone());
        self.tasks.spawn(async move {
            let proved = async {
                let held = crate::probe::held_blobs(&blobs, &repo, manifest).await?;
                crate::probe::prove_holds(&endpoint, peer, &held).await
            }
            .await;
            if let Err(e) = &proved {
                debug!(repo = %repo, peer = %peer.fmt_short(), error = %e, "a peer did not prove it holds a state");
            }
            NetDone::Probed {
                repo,
                peer,
                manifest,
                proved: proved.is_ok(),
            }
        });
    }

    /// Abort everything in flight.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }
}

/// The node's account, present when credentials are configured.
#[derive(Clone)]
pub(super) struct WriteBackContext {
    pub endpoint: Endpoint,
    pub account: Arc<tokio::sync::Mutex<Account>>,
}

impl WriteBackContext {
    /// Write a held state into the account's record. Write-backs are few
    /// (one per repository at a time) and never dropped.
    pub fn spawn(&self, tasks: &mut JoinSet<NetDone>, repo: RepoId, mut req: WriteBackRequest) {
        let ctx = self.clone();
        tasks.spawn(async move {
            req.own = own_hint(&ctx.endpoint).await;
            let result = ctx
                .account
                .lock()
                .await
                .write_back(&req)
                .await
                .map(|outcome| match outcome {
                    WriteOutcome::Written(record) => WrittenBack {
                        record,
                        superseded: false,
                    },
                    WriteOutcome::Superseded(record) => WrittenBack {
                        record,
                        superseded: true,
                    },
                })
                .map_err(|e| WriteFailure {
                    message: e.to_string(),
                    retry_after: e.retry_after(),
                });
            NetDone::WrittenBack { repo, result }
        });
    }

    /// Resolve the account's DID, retrying with backoff until it works.
    pub async fn resolve(&self) -> String {
        let mut attempts = 0u32;
        loop {
            let resolved = self.account.lock().await.identity().await;
            match resolved {
                Ok(identity) => return identity.did,
                Err(e) => {
                    attempts = attempts.saturating_add(1);
                    let wait = crate::core::queue::backoff(
                        Duration::from_secs(5),
                        Duration::from_secs(300),
                        attempts,
                    );
                    warn!(error = %e, retry_in = ?wait, "cannot resolve the node's ATProto account; records are written back once it resolves");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// This node's peer hint, within what every reader accepts.
pub(super) async fn own_hint(endpoint: &Endpoint) -> PeerHint {
    let addr = wait_for_addr(endpoint).await;
    let ticket = EndpointTicket::new(addr.clone()).to_string();
    let mut addrs: Vec<String> = addr.ip_addrs().map(|a| a.to_string()).collect();
    addrs.truncate(record::MAX_ADDRS_PER_PEER);
    PeerHint::new(
        endpoint.id().to_string(),
        addrs,
        (ticket.len() <= record::MAX_TICKET_LEN).then_some(ticket),
    )
}

/// Wait until the endpoint reports a direct address (bounded), and return its address.
pub async fn wait_for_addr(endpoint: &Endpoint) -> EndpointAddr {
    let mut watcher = endpoint.watch_addr();
    let deadline = tokio::time::Instant::now() + ADDR_TIMEOUT;
    loop {
        let addr = watcher.get();
        if addr.ip_addrs().next().is_some() || tokio::time::Instant::now() >= deadline {
            return addr;
        }
        if tokio::time::timeout_at(deadline, watcher.updated())
            .await
            .is_err()
        {
            return watcher.get();
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_to_one_peer_are_paced_at_the_rate_its_server_admits() {
        let mut net = NetTasks::new(
            SharedLimiter::new(heads::PEER_BURST, heads::PEER_RATE),
            Arc::new(DropCounters::default()),
        );
        let (a, b) = (
            iroh::SecretKey::from_bytes(&[1; 32]).public(),
            iroh::SecretKey::from_bytes(&[2; 32]).public(),
        );
        let t0 = Instant::now();
        let burst = heads::PEER_BURST as usize;
        // Pushes that ended make room for more in flight.
        assert!((0..burst).all(|_| {
            let admitted = net.admit_push(a, t0);
            if admitted {
                *net.pushing.entry(a).or_default() += 1;
                net.pushed(a);
            }
            admitted
        }));
        assert!(!net.admit_push(a, t0), "past the peer's burst");
        assert!(net.admit_push(b, t0), "another peer has its own budget");
        let later = t0 + Duration::from_secs_f64(1.0 / heads::PEER_RATE);
        assert!(net.admit_push(a, later), "at the peer's rate again");
        assert!(!net.admit_push(a, later));
        // Pulls are charged to the same budget.
        let much_later = later + Duration::from_secs(60);
        assert!(net.admit_push(b, much_later));
        let c = iroh::SecretKey::from_bytes(&[3; 32]).public();
        assert!((0..burst).all(|_| net.pace.allow(c, much_later)));
        assert!(!net.admit_push(c, much_later), "its pulls used the budget");
    }

    #[test]
    fn few_pushes_to_one_peer_are_in_flight_at_once() {
        let mut net = NetTasks::new(
            SharedLimiter::new(heads::PEER_BURST, heads::PEER_RATE),
            Arc::new(DropCounters::default()),
        );
        let a = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let t0 = Instant::now();
        for _ in 0..MAX_PUSHES_PER_PEER {
            assert!(net.admit_push(a, t0));
            *net.pushing.entry(a).or_default() += 1;
        }
        assert!(!net.admit_push(a, t0), "as many in flight as allowed");
        net.pushed(a);
        assert!(net.admit_push(a, t0));
    }
}
