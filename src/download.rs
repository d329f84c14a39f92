//! Downloading blobs from several providers for one fetch, so that no
//! provider can stall it and no blob can grow past the size it was
//! declared with.
//!
//! A [`Session`] serves one fetch (a manifest and its packs). Its providers
//! are tried in the order given (the core puts trusted peers first), each
//! with the iroh-blobs get protocol over a connection of the session's own
//! (kept for the next blob, dropped when it fails). Every attempt has its
//! own progress deadline, [`STALL_TIMEOUT`]: a provider that sends nothing
//! for that long is given up on and its connection closed. The download is
//! hedged: while no attempt makes progress ([`HEDGE_AFTER`] with fewer than
//! [`HEDGE_MIN_BYTES`]), the next provider starts alongside, up to
//! [`MAX_PARALLEL`], and the first to finish wins; they write the same
//! verified bytes into the store, each asking only for what is missing when
//! it starts. Each provider gets a second attempt on a fresh connection
//! after all others had their first: a peer that restarted under an old
//! connection (iroh draws a new stateless-reset key at each start, so the
//! old connection looks alive until the QUIC idle timeout) is reached again
//! within seconds.
//!
//! A blob is asked for only up to the size it is declared with (the chunks
//! covering it): a blob that is larger cannot fill the disk, and when the
//! bytes asked for all verify but the blob is still incomplete, it is
//! proven larger than declared ([`DownloadError::TooLarge`]).
//!
//! The session remembers which providers stalled (sent nothing for
//! [`STALL_TIMEOUT`], or nothing at all while another provider served the
//! whole blob) or sent bytes that do not match the hash
//! ([`Session::faults`]): they are tried last for the rest of the fetch,
//! and the caller reports them so the core demotes them for the
//! repository. Nothing is kept between sessions.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use iroh::{Endpoint, EndpointId, endpoint::Connection};
use iroh_blobs::{
    Hash,
    api::{Store, proto::BlobStatus, remote::GetProgressItem},
    get::{
        GetError,
        fsm::{AtBlobHeaderNextError, DecodeError},
    },
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
};
use n0_future::{FuturesUnordered, StreamExt, boxed::BoxFuture};
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, info};

use crate::core::ProviderFault;

pub use crate::core::{HEDGE_AFTER, STALL_TIMEOUT};
/// Fewer bytes than this in [`HEDGE_AFTER`] is slow enough to hedge.
pub const HEDGE_MIN_BYTES: u64 = 64 * 1024;
/// Most attempts running at once for one blob.
pub const MAX_PARALLEL: usize = 3;
/// Longest wait for a connection to a provider.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per provider and blob (the later ones on a fresh connection).
const PASSES: usize = 2;

/// Why a blob could not be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No provider was given.
    #[error("no peers known")]
    NoPeers,
    /// Every provider failed.
    #[error("{0}")]
    Failed(String),
    /// The download did not finish in time.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The blob has more bytes than it may: every byte up to the limit
    /// verified, and the blob goes on.
    #[error("it has more than {limit} bytes")]
    TooLarge {
        /// The most bytes it may have.
        limit: u64,
        /// Its size, when known.
        size: Option<u64>,
    },
    /// The local blob store failed.
    #[error("blob store: {0}")]
    Store(String),
}

/// How one attempt ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No connection.
    Unreachable(String),
    /// Nothing arrived for [`STALL_TIMEOUT`].
    Stalled,
    /// Bytes that do not match the hash.
    WrongBytes,
    /// The provider does not have the blob.
    Missing,
    /// Anything else (the connection broke, the stream was reset).
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(e) => write!(f, "unreachable ({e})"),
            Failure::Stalled => write!(f, "sent nothing for {}s", STALL_TIMEOUT.as_secs()),
            Failure::WrongBytes => f.write_str("sent bytes that do not match the hash"),
            Failure::Missing => f.write_str("does not have it"),
            Failure::Other(e) => f.write_str(e),
        }
    }
}

impl Failure {
    /// What the core should hold against the provider.
    fn fault(&self) -> Option<ProviderFault> {
        match self {
            Failure::Stalled => Some(ProviderFault::Stalled),
            Failure::WrongBytes => Some(ProviderFault::WrongBytes),
            _ => None,
        }
    }

    /// Whether another attempt at the same blob may go better.
    fn worth_retrying(&self) -> bool {
        !matches!(self, Failure::WrongBytes | Failure::Missing)
    }

    fn of(error: &GetError) -> Failure {
        match error {
            GetError::Decode {
                source:
                    DecodeError::ParentHashMismatch { .. } | DecodeError::LeafHashMismatch { .. },
                ..
            } => Failure::WrongBytes,
            GetError::AtBlobHeaderNext {
                source: AtBlobHeaderNextError::NotFound { .. },
                ..
            } => Failure::Missing,
            other => Failure::Other(other.to_string()),
        }
    }
}

/// The end of one attempt: the connection to keep, or what went wrong.
type AttemptEnd = (EndpointId, Result<Connection, Failure>);

/// Downloads for one fetch. See the module documentation.
pub struct Session {
    store: Store,
    endpoint: Endpoint,
    providers: Vec<EndpointId>,
    connections: HashMap<EndpointId, Connection>,
    faults: Vec<(EndpointId, ProviderFault)>,
}

impl Session {
    /// A session fetching from `providers`, best first.
    pub fn new(store: &Store, endpoint: &Endpoint, providers: &[EndpointId]) -> Self {
        let mut unique = Vec::with_capacity(providers.len());
        for p in providers {
            if !unique.contains(p) {
                unique.push(*p);
            }
        }
        Self {
            store: store.clone(),
            endpoint: endpoint.clone(),
            providers: unique,
            connections: HashMap::new(),
            faults: Vec::new(),
        }
    }

    /// The providers, in the order given.
    pub fn providers(&self) -> &[EndpointId] {
        &self.providers
    }

    /// Providers that stalled or sent wrong bytes so far, each once per kind.
    pub fn faults(&self) -> &[(EndpointId, ProviderFault)] {
        &self.faults
    }

    /// Download `hash` (a raw blob of at most `limit` bytes) into the store,
    /// within `timeout`, and return its size. `progress` is told the bytes
    /// received so far for this blob.
    pub async fn download(
        &mut self,
        hash: Hash,
        limit: u64,
        timeout: Duration,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, DownloadError> {
        if let Some(size) = self.complete_size(hash).await? {
            return self.within(size, limit);
        }
        if self.providers.is_empty() {
            return Err(DownloadError::NoPeers);
        }
        let deadline = Instant::now() + timeout;
        // Providers that failed this fetch go last; every provider gets
        // [`PASSES`] turns.
        let faulty = |p: &EndpointId| self.faults.iter().any(|(f, _)| f == p);
        let (mut order, last): (Vec<_>, Vec<_>) =
            self.providers.iter().copied().partition(|p| !faulty(p));
        order.extend(last);
        let mut turns: VecDeque<(EndpointId, usize)> = (0..PASSES)
            .flat_map(|pass| order.iter().map(move |p| (*p, pass)))
            .collect();
        let (bytes_tx, mut bytes_rx) = mpsc::unbounded_channel::<(EndpointId, u64)>();
        let mut running: FuturesUnordered<BoxFuture<AttemptEnd>> = FuturesUnordered::new();
        // Attempts running: when each started and the bytes it brought.
        let mut active: HashMap<EndpointId, (Instant, u64)> = HashMap::new();
        let mut outcomes: Vec<(EndpointId, Failure)> = Vec::new();
        let mut received = 0u64;
        let mut at_last_check = 0u64;
        let mut next_check = Instant::now() + HEDGE_AFTER;

        self.start_next(
            &mut turns,
            &mut active,
            &mut running,
            hash,
            limit,
            &bytes_tx,
        );
        loop {
            tokio::select! {
                Some((peer, end)) = running.next() => {
                    active.remove(&peer);
                    match end {
                        Ok(connection) => {
                            self.connections.insert(peer, connection);
                            // Those that sent nothing while another served
                            // the whole blob stalled it.
                            for (other, (since, bytes)) in &active {
                                if *bytes == 0 && since.elapsed() >= HEDGE_AFTER {
                                    self.fault(*other, ProviderFault::Stalled);
                                }
                            }
                            match self.store.blobs().status(hash).await {
                                Ok(BlobStatus::Complete { size }) => return self.within(size, limit),
                                Ok(_) => {
                                    // Every chunk up to the limit verified
                                    // and the blob goes on.
                                    return Err(DownloadError::TooLarge { limit, size: None });
                                }
                                Err(e) => return Err(DownloadError::Store(e.to_string())),
                            }
                        }
                        Err(failure) => {
                            debug!(%hash, peer = %peer.fmt_short(), %failure, "provider failed");
                            self.connections.remove(&peer);
                            if let Some(fault) = failure.fault() {
                                self.fault(peer, fault);
                            }
                            if !failure.worth_retrying() {
                                turns.retain(|(p, _)| *p != peer);
                            }
                            outcomes.retain(|(p, _)| *p != peer);
                            outcomes.push((peer, failure));
                            self.start_next(&mut turns, &mut active, &mut running, hash, limit, &bytes_tx);
                            if running.is_empty() {
                                return Err(DownloadError::Failed(summary(&outcomes)));
                            }
                        }
                    }
                }
                Some((peer, bytes)) = bytes_rx.recv() => {
                    if let Some((_, brought)) = active.get_mut(&peer) {
                        *brought = brought.saturating_add(bytes);
                    }
                    received = received.saturating_add(bytes);
                    progress(received.min(limit));
                }
                () = tokio::time::sleep_until(next_check) => {
                    let slow = received.saturating_sub(at_last_check) < HEDGE_MIN_BYTES;
                    if slow && running.len() < MAX_PARALLEL
                        && self.start_next(&mut turns, &mut active, &mut running, hash, limit, &bytes_tx)
                    {
                        info!(%hash, running = running.len(), "transfer slow; asking the next provider too");
                    }
                    at_last_check = received;
                    next_check = Instant::now() + HEDGE_AFTER;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(DownloadError::TimedOut(timeout));
                }
            }
        }
    }

    /// Start an attempt on the next provider whose turn it is and that has
    /// no attempt running. Returns whether one started.
    fn start_next(
        &mut self,
        turns: &mut VecDeque<(EndpointId, usize)>,
        active: &mut HashMap<EndpointId, (Instant, u64)>,
        running: &mut FuturesUnordered<BoxFuture<AttemptEnd>>,
        hash: Hash,
        limit: u64,
        bytes: &mpsc::UnboundedSender<(EndpointId, u64)>,
    ) -> bool {
        let Some(index) = turns.iter().position(|(p, _)| !active.contains_key(p)) else {
            return false;
        };
        let (peer, pass) = turns.remove(index).expect("found above");
        // A later turn starts over on a fresh connection.
        let connection = if pass == 0 {
            self.connections.get(&peer).cloned()
        } else {
            self.connections.remove(&peer);
            None
        };
        active.insert(peer, (Instant::now(), 0));
        running.push(Box::pin(attempt(
            self.store.clone(),
            self.endpoint.clone(),
            peer,
            connection,
            hash,
            limit,
            bytes.clone(),
        )));
        true
    }

    /// Note that `peer` failed this fetch so (once per kind).
    fn fault(&mut self, peer: EndpointId, fault: ProviderFault) {
        if !self.faults.contains(&(peer, fault)) {
            self.faults.push((peer, fault));
        }
    }

    /// The size of `hash` if the store has all of it.
    async fn complete_size(&self, hash: Hash) -> Result<Option<u64>, DownloadError> {
        match self.store.blobs().status(hash).await {
            Ok(BlobStatus::Complete { size }) => Ok(Some(size)),
            Ok(_) => Ok(None),
            Err(e) => Err(DownloadError::Store(e.to_string())),
        }
    }

    fn within(&self, size: u64, limit: u64) -> Result<u64, DownloadError> {
        if size > limit {
            return Err(DownloadError::TooLarge {
                limit,
                size: Some(size),
            });
        }
        Ok(size)
    }
}

/// What each provider did, for the error of a download nobody served.
fn summary(outcomes: &[(EndpointId, Failure)]) -> String {
    outcomes
        .iter()
        .map(|(peer, failure)| format!("{}: {failure}", peer.fmt_short()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One provider's attempt at the chunks of `hash` up to `limit` bytes that
/// the store lacks when it starts, on `connection` or a new one. Bytes
/// received go to `bytes` as they verify.
async fn attempt(
    store: Store,
    endpoint: Endpoint,
    peer: EndpointId,
    connection: Option<Connection>,
    hash: Hash,
    limit: u64,
    bytes: mpsc::UnboundedSender<(EndpointId, u64)>,
) -> AttemptEnd {
    let connection = match connection {
        Some(c) => c,
        None => {
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(peer, iroh_blobs::ALPN))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return (peer, Err(Failure::Unreachable(e.to_string()))),
                Err(_) => {
                    return (
                        peer,
                        Err(Failure::Unreachable(format!(
                            "no connection within {}s",
                            CONNECT_TIMEOUT.as_secs()
                        ))),
                    );
                }
            }
        }
    };
    let result = get(&store, &connection, hash, limit, &|n| {
        let _ = bytes.send((peer, n));
    })
    .await;
    match result {
        Ok(()) => (peer, Ok(connection)),
        Err(failure) => {
            connection.close(0u32.into(), b"giving up");
            (peer, Err(failure))
        }
    }
}

async fn get(
    store: &Store,
    connection: &Connection,
    hash: Hash,
    limit: u64,
    bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), Failure> {
    let have = store
        .observe(hash)
        .await
        .map_err(|e| Failure::Other(format!("local store: {e}")))?;
    let wanted = &ChunkRanges::bytes(0..limit) - &have.ranges;
    if wanted.is_empty() {
        return Ok(());
    }
    let request = GetRequest::builder().root(wanted).build(hash);
    let stream = store
        .remote()
        .execute_get(connection.clone(), request)
        .stream();
    tokio::pin!(stream);
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(STALL_TIMEOUT, stream.next()).await {
            Err(_) => return Err(Failure::Stalled),
            Ok(None) => return Err(Failure::Other("the transfer ended without a result".into())),
            Ok(Some(GetProgressItem::Progress(total))) => {
                bytes(total.saturating_sub(seen));
                seen = seen.max(total);
            }
            Ok(Some(GetProgressItem::Done(_))) => return Ok(()),
            Ok(Some(GetProgressItem::Error(e))) => return Err(Failure::of(&e)),
        }
    }
}
