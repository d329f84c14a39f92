//! Downloading one blob from peers, without stalling on a peer that restarted.
//!
//! iroh draws a new QUIC stateless-reset key each time an endpoint binds, so
//! a peer that restarts (same key, same port) cannot make the other side
//! drop the connections it held to the peer's previous run: their packets
//! reach the new process, whose resets do not verify, and such a connection
//! looks alive until the QUIC idle timeout (30 s) ends it. A download that
//! was using it receives nothing all that time and then fails; the retry
//! after backoff dials the new process and works. That was the "first fetch
//! after a restart fails after about 40 s".
//!
//! Here a download that receives nothing for [`STALL_CHECK`] asks whether
//! its provider answers on a *fresh* connection. If it does, the old
//! connection is dead or wedged: the download starts over with a new
//! downloader (new connections) and resumes from the bytes already verified
//! in the store. A provider that is slow but alive costs at most a few such
//! restarts, each after a longer quiet spell. Nothing here is kept between
//! downloads.

use std::time::Duration;

use iroh::{Endpoint, EndpointId};
use iroh_blobs::{
    Hash, HashAndFormat,
    api::{
        Store,
        downloader::{DownloadProgressItem, Downloader},
    },
    util::connection_pool,
};
use n0_future::StreamExt;
use tokio::time::Instant;
use tracing::{debug, info};

/// How long a download may receive nothing before its provider is checked
/// on a fresh connection; doubled after each restart of the same download.
pub const STALL_CHECK: Duration = Duration::from_secs(1);
/// Longest wait for the fresh connection of a check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most restarts of one download; then it waits out its timeout as is.
pub const MAX_RESTARTS: u32 = 6;
/// Longest wait for a connection to a provider. iroh-blobs' default (1 s)
/// is short for a first connection through a relay on a busy machine.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// How one attempt ended.
enum Attempt {
    Done,
    Failed(String),
    TimedOut,
    /// The provider answered afresh while the download received nothing.
    Stalled(EndpointId),
}

/// Download `hash` (a raw blob) into `store` from the first of `providers`
/// that serves it, within `timeout`, starting over on fresh connections
/// when the provider in use goes quiet but answers a new connection.
/// `progress` is told the bytes received so far in the current attempt.
pub async fn download(
    store: &Store,
    endpoint: &Endpoint,
    hash: Hash,
    providers: &[EndpointId],
    timeout: Duration,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), DownloadError> {
    if providers.is_empty() {
        return Err(DownloadError::NoPeers);
    }
    let deadline = Instant::now() + timeout;
    let mut restarts = 0;
    loop {
        let quiet = STALL_CHECK * 2u32.pow(restarts);
        let checks = restarts < MAX_RESTARTS;
        let attempt = attempt(
            store, endpoint, hash, providers, deadline, quiet, checks, progress,
        );
        match attempt.await {
            Attempt::Done => return Ok(()),
            Attempt::Failed(message) => return Err(DownloadError::Failed(message)),
            Attempt::TimedOut => return Err(DownloadError::TimedOut(timeout)),
            Attempt::Stalled(peer) => {
                restarts += 1;
                info!(
                    %hash,
                    peer = %peer.fmt_short(),
                    restarts,
                    "download stalled while the peer answers a new connection \
                     (it may have restarted); starting over on a fresh connection"
                );
            }
        }
    }
}

/// One attempt with its own downloader, so its connections are new.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    store: &Store,
    endpoint: &Endpoint,
    hash: Hash,
    providers: &[EndpointId],
    deadline: Instant,
    quiet: Duration,
    checks: bool,
    report: &(dyn Fn(u64) + Send + Sync),
) -> Attempt {
    let mut options = connection_pool::Options::default();
    options.connect_timeout = CONNECT_TIMEOUT;
    let downloader = Downloader::builder(store, endpoint)
        .pool_options(options)
        .build();
    let progress = downloader.download(HashAndFormat::raw(hash), providers.to_vec());
    let mut progress = match tokio::time::timeout_at(deadline, progress.stream()).await {
        Ok(Ok(progress)) => progress,
        Ok(Err(e)) => return Attempt::Failed(e.to_string()),
        Err(_) => return Attempt::TimedOut,
    };
    let mut current = None;
    let mut last_heard = Instant::now();
    loop {
        let wake = if checks {
            (last_heard + quiet).min(deadline)
        } else {
            deadline
        };
        let item = match tokio::time::timeout_at(wake, progress.next()).await {
            Ok(item) => item,
            Err(_) if Instant::now() >= deadline => return Attempt::TimedOut,
            Err(_) => {
                if let Some(peer) = current
                    && answers_afresh(endpoint, peer).await
                {
                    return Attempt::Stalled(peer);
                }
                last_heard = Instant::now();
                continue;
            }
        };
        match item {
            None => return Attempt::Done,
            Some(DownloadProgressItem::TryProvider { id, .. }) => {
                current = Some(id);
                last_heard = Instant::now();
            }
            Some(DownloadProgressItem::Progress(bytes)) => {
                report(bytes);
                last_heard = Instant::now();
            }
            Some(DownloadProgressItem::PartComplete { .. }) => {
                last_heard = Instant::now();
            }
            Some(DownloadProgressItem::ProviderFailed { id, .. }) => {
                debug!(%hash, peer = %id.fmt_short(), "provider failed");
                current = None;
            }
            Some(DownloadProgressItem::Error(e)) => return Attempt::Failed(e.to_string()),
            Some(DownloadProgressItem::DownloadError) => {
                return Attempt::Failed("every peer failed".into());
            }
        }
    }
}

/// Whether `peer` accepts a new blobs connection now.
async fn answers_afresh(endpoint: &Endpoint, peer: EndpointId) -> bool {
    match tokio::time::timeout(CHECK_TIMEOUT, endpoint.connect(peer, iroh_blobs::ALPN)).await {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"checked");
            true
        }
        Ok(Err(e)) => {
            debug!(peer = %peer.fmt_short(), error = %e, "stalled provider does not answer");
            false
        }
        Err(_) => false,
    }
}
