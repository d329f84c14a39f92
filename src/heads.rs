//! Direct head exchange between knots over `/knot/heads/1`.
//!
//! Gossip spreads announcements to a topic's current neighbours. This protocol
//! complements it for nodes that are not (or no longer) neighbours, for example
//! after one of them restarted: a node *pushes* a new announcement straight to
//! known peers, and a node that finds itself alone *pulls* the latest
//! announcements of its repositories from known peers. Every announcement that
//! arrives this way goes through exactly the same verification and adoption
//! rule as one from gossip. One request per bidirectional stream, postcard
//! encoded, size-bounded, every wait with a timeout.
//!
//! The accepting side bounds what a peer can make the node do: at most
//! [`MAX_CONNECTIONS`] connections are served at once and at most
//! [`MAX_CONNECTIONS_PER_PEER`] of them for one peer, each peer is rate
//! limited before its request is decoded, pushed announcements are verified
//! here, on the connection's task, so only valid ones reach the repository
//! actor, and a pull is answered by signing the envelopes here too (the
//! actor only hands over the statements it holds). The asking side keeps at
//! most one announcement per repository it asked for; the node charges
//! each answer to the answering peer's budget, the same one its pushes
//! spend ([`HeadsProtocol::limiter`]). Nothing here persists.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{Endpoint, EndpointId, endpoint::Connection, protocol::AcceptError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use crate::{
    announce::{Announcement, SignedStatement},
    limits::{DropCounters, SharedLimiter},
    repo_id::RepoId,
};

/// The protocol's ALPN.
pub const ALPN: &[u8] = b"/knot/heads/1";
/// Largest request accepted.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest response accepted.
pub const MAX_RESPONSE: usize = 512 * 1024;
pub use crate::core::MAX_PULL_REPOS;
/// Timeout of one exchange, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections of one peer served at once; more are closed at once,
/// so one peer cannot hold every slot.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Requests a peer may send in a burst...
pub const PEER_BURST: f64 = 32.0;
/// ...and per second after it.
pub const PEER_RATE: f64 = 4.0;

/// Errors of a head exchange.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    /// The peer could not be reached or the stream failed.
    #[error("head exchange with {peer} failed: {message}")]
    Transport {
        /// The peer (short id).
        peer: String,
        /// What went wrong.
        message: String,
    },
    /// The peer did not answer in time.
    #[error("head exchange with {0} timed out")]
    Timeout(String),
    /// The peer sent something that is not a valid response.
    #[error("peer {peer} sent a malformed response: {message}")]
    Malformed {
        /// The peer (short id).
        peer: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Here is an encoded announcement.
    Push { announcement: Vec<u8> },
    /// Send the announcements you hold for these repositories.
    Pull { repo_ids: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    Ack,
    Heads { announcements: Vec<Vec<u8>> },
}

/// What the protocol hands to the node.
#[derive(Debug)]
pub enum HeadsEvent {
    /// A peer pushed an announcement, verified for the repository it names.
    Pushed {
        /// The peer that pushed it.
        from: EndpointId,
        /// The repository.
        repo: RepoId,
        /// The verified announcement.
        announcement: Box<Announcement>,
    },
    /// A peer asks for the announcements of these repositories.
    Pull {
        /// The asking peer.
        from: EndpointId,
        /// Valid repository ids among those asked for.
        repo_ids: Vec<RepoId>,
        /// Where to send the statements held (the envelopes are signed
        /// on the connection's task, not by the receiver).
        reply: oneshot::Sender<Vec<SignedStatement>>,
    },
}

/// The accepting side, registered on the router.
#[derive(Debug, Clone)]
pub struct HeadsProtocol {
    events: mpsc::Sender<HeadsEvent>,
    endpoint: Endpoint,
    limiter: SharedLimiter,
    connections: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<EndpointId, usize>>>,
    drops: Arc<DropCounters>,
}

/// One of a peer's connection slots, given back when dropped.
struct PeerSlot {
    peer: EndpointId,
    per_peer: Arc<Mutex<HashMap<EndpointId, usize>>>,
}

impl PeerSlot {
    /// Take a slot of `peer`'s, unless it holds [`MAX_CONNECTIONS_PER_PEER`].
    fn take(per_peer: &Arc<Mutex<HashMap<EndpointId, usize>>>, peer: EndpointId) -> Option<Self> {
        let mut map = per_peer.lock().ok()?;
        let held = map.entry(peer).or_default();
        if *held >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *held += 1;
        Some(Self {
            peer,
            per_peer: per_peer.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.per_peer.lock()
            && let Some(held) = map.get_mut(&self.peer)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Decode and verify an announcement for the repository it names.
pub fn verify(bytes: &[u8]) -> Option<(RepoId, Announcement)> {
    let repo = Announcement::peek_repo_id(bytes)?;
    let announcement = Announcement::decode_verified(bytes, &repo).ok()?;
    Some((repo, announcement))
}

impl HeadsProtocol {
    /// Deliver requests to `events`; sign pull answers as `endpoint`; count
    /// what is dropped in `drops`.
    pub fn new(
        events: mpsc::Sender<HeadsEvent>,
        endpoint: Endpoint,
        drops: Arc<DropCounters>,
    ) -> Self {
        Self {
            events,
            endpoint,
            limiter: SharedLimiter::new(PEER_BURST, PEER_RATE),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            drops,
        }
    }

    /// The per-peer budget of requests; answers to this node's pulls are
    /// charged to the answering peer's budget too.
    pub fn limiter(&self) -> SharedLimiter {
        self.limiter.clone()
    }

    fn allow(&self, from: EndpointId) -> bool {
        let allowed = self.limiter.allow(from);
        if !allowed {
            self.drops.rate_limited();
        }
        allowed
    }

    async fn serve_stream(
        &self,
        from: EndpointId,
        mut send: iroh::endpoint::SendStream,
        mut recv: iroh::endpoint::RecvStream,
    ) -> Result<(), String> {
        if !self.allow(from) {
            return Err("rate limited".into());
        }
        let bytes = recv
            .read_to_end(MAX_REQUEST)
            .await
            .map_err(|e| e.to_string())?;
        let request: Request = postcard::from_bytes(&bytes).map_err(|e| {
            self.drops.invalid();
            e.to_string()
        })?;
        let response = match request {
            Request::Push { announcement } => {
                let Some((repo, announcement)) = verify(&announcement) else {
                    self.drops.invalid();
                    return Err("invalid announcement".into());
                };
                self.events
                    .send(HeadsEvent::Pushed {
                        from,
                        repo,
                        announcement: Box::new(announcement),
                    })
                    .await
                    .map_err(|_| "node is shutting down".to_string())?;
                Response::Ack
            }
            Request::Pull { repo_ids } => {
                let repo_ids = repo_ids
                    .iter()
                    .take(MAX_PULL_REPOS)
                    .filter_map(|id| RepoId::parse(id).ok())
                    .collect();
                let (reply, rx) = oneshot::channel();
                self.events
                    .send(HeadsEvent::Pull {
                        from,
                        repo_ids,
                        reply,
                    })
                    .await
                    .map_err(|_| "node is shutting down".to_string())?;
                let statements = rx.await.map_err(|_| "no answer".to_string())?;
                // Signed here, on the connection's task: the actor only
                // looked the statements up.
                let addrs: Vec<_> = self.endpoint.addr().ip_addrs().copied().collect();
                let key = self.endpoint.secret_key();
                let announcements = statements
                    .into_iter()
                    .map(|s| Announcement::new(s, key, addrs.clone()).encode())
                    .collect();
                Response::Heads { announcements }
            }
        };
        let bytes = postcard::to_stdvec(&response).map_err(|e| e.to_string())?;
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // Let the peer read the response before the stream goes away.
        let _ = tokio::time::timeout(TIMEOUT, send.stopped()).await;
        Ok(())
    }
}

impl iroh::protocol::ProtocolHandler for HeadsProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let from = connection.remote_id();
        let Some(_slot) = PeerSlot::take(&self.per_peer, from) else {
            self.drops.rate_limited();
            connection.close(2u32.into(), b"busy");
            return Ok(());
        };
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            self.drops.rate_limited();
            connection.close(2u32.into(), b"busy");
            return Ok(());
        };
        loop {
            let accepted = tokio::time::timeout(TIMEOUT, connection.accept_bi()).await;
            let Ok(Ok((send, recv))) = accepted else {
                return Ok(());
            };
            let served = tokio::time::timeout(TIMEOUT, self.serve_stream(from, send, recv)).await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    debug!(peer = %from.fmt_short(), %message, "head request failed");
                    connection.close(1u32.into(), b"bad request");
                    return Ok(());
                }
                Err(_) => {
                    debug!(peer = %from.fmt_short(), "head request timed out");
                    return Ok(());
                }
            }
        }
    }
}

async fn exchange(
    endpoint: &Endpoint,
    peer: EndpointId,
    request: Request,
) -> Result<Response, HeadsError> {
    let short = peer.fmt_short().to_string();
    let transport = |message: String| HeadsError::Transport {
        peer: short.clone(),
        message,
    };
    let work = async {
        let conn = endpoint
            .connect(peer, ALPN)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport(e.to_string()))?;
        let bytes = postcard::to_stdvec(&request).expect("request encodes");
        send.write_all(&bytes)
            .await
            .map_err(|e| transport(e.to_string()))?;
        send.finish().map_err(|e| transport(e.to_string()))?;
        let bytes = recv
            .read_to_end(MAX_RESPONSE)
            .await
            .map_err(|e| transport(e.to_string()))?;
        conn.close(0u32.into(), b"done");
        postcard::from_bytes::<Response>(&bytes).map_err(|e| HeadsError::Malformed {
            peer: short.clone(),
            message: e.to_string(),
        })
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| HeadsError::Timeout(peer.fmt_short().to_string()))?
}

/// Push an encoded announcement to `peer`.
pub async fn push(
    endpoint: &Endpoint,
    peer: EndpointId,
    announcement: Vec<u8>,
) -> Result<(), HeadsError> {
    match exchange(endpoint, peer, Request::Push { announcement }).await? {
        Response::Ack => Ok(()),
        Response::Heads { .. } => Err(HeadsError::Malformed {
            peer: peer.fmt_short().to_string(),
            message: "expected an acknowledgement".into(),
        }),
    }
}

/// Ask `peer` for its announcements of `repo_ids` (at most
/// [`MAX_PULL_REPOS`]); returns those that verify and name a repository
/// asked for, at most one per repository: an honest peer holds one state
/// of each, so only as many announcements as repositories asked for are
/// read and the rest is dropped unread. Verification happens here, off the
/// caller's task.
pub async fn pull(
    endpoint: &Endpoint,
    peer: EndpointId,
    repo_ids: &[RepoId],
) -> Result<Vec<(RepoId, Announcement)>, HeadsError> {
    let asked: Vec<String> = repo_ids
        .iter()
        .take(MAX_PULL_REPOS)
        .map(|r| r.to_string())
        .collect();
    match exchange(endpoint, peer, Request::Pull { repo_ids: asked }).await? {
        Response::Heads { announcements } => {
            // An honest answer has at most one announcement per repository
            // asked for: nothing beyond that many is even decoded.
            let asked = repo_ids.len().min(MAX_PULL_REPOS);
            let mut kept: Vec<(RepoId, Announcement)> = Vec::new();
            for bytes in announcements.iter().take(asked) {
                if let Some((repo, announcement)) = verify(bytes)
                    && repo_ids.contains(&repo)
                    && !kept.iter().any(|(r, _)| *r == repo)
                {
                    kept.push((repo, announcement));
                }
            }
            if announcements.len() > kept.len() {
                debug!(peer = %peer.fmt_short(), sent = announcements.len(), kept = kept.len(), "dropped announcements a pull did not ask for");
            }
            Ok(kept)
        }
        Response::Ack => Err(HeadsError::Malformed {
            peer: peer.fmt_short().to_string(),
            message: "expected announcements".into(),
        }),
    }
}
