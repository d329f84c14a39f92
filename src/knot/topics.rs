//! One task per joined gossip topic: reads the topic, rate limits each
//! neighbour before decoding anything it sent, verifies announcements, and
//! forwards valid ones and neighbour changes to the actor. Nothing here
//! survives a restart; topics are joined again from the core's decisions.

use std::{sync::Arc, time::Instant};

use iroh::{Endpoint, EndpointId};
use iroh_gossip::api::{Event, GossipReceiver, GossipSender};
use n0_future::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    announce::Announcement,
    limits::{DropCounters, RateLimiter},
    repo_id::RepoId,
};

/// Gossip messages a neighbour may deliver per topic in a burst...
const PEER_BURST: f64 = 64.0;
/// ...and per second after it.
const PEER_RATE: f64 = 16.0;

/// A joined topic, as the actor holds it.
pub(super) struct JoinedTopic {
    /// Where broadcasts go.
    pub sender: GossipSender,
    /// Stops the topic's task.
    pub cancel: CancellationToken,
}

/// What a topic task reports.
pub(super) enum TopicEvent {
    /// A verified announcement.
    Announcement(Box<Announcement>),
    /// A neighbour joined, reachable at these addresses.
    NeighborUp(EndpointId, Vec<std::net::SocketAddr>),
    /// A neighbour left.
    NeighborDown(EndpointId),
    /// The subscription ended.
    Closed,
}

/// Read `receiver` until `cancel` fires or the topic closes.
pub(super) async fn run(
    repo_id: RepoId,
    mut receiver: GossipReceiver,
    endpoint: Endpoint,
    tx: mpsc::Sender<(RepoId, TopicEvent)>,
    cancel: CancellationToken,
    drops: Arc<DropCounters>,
) {
    let mut limiter = RateLimiter::new(PEER_BURST, PEER_RATE);
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = receiver.next() => event,
        };
        let event = match event {
            Some(Ok(Event::Received(msg))) => {
                if !limiter.allow(msg.delivered_from, Instant::now()) {
                    drops.rate_limited();
                    continue;
                }
                match Announcement::decode_verified(&msg.content, &repo_id) {
                    Ok(ann) => TopicEvent::Announcement(Box::new(ann)),
                    Err(error) => {
                        drops.invalid();
                        tracing::debug!(repo = %repo_id, from = %msg.delivered_from.fmt_short(), %error, "dropped gossip message");
                        continue;
                    }
                }
            }
            Some(Ok(Event::NeighborUp(id))) => {
                let addrs = neighbor_addrs(&endpoint, id).await;
                TopicEvent::NeighborUp(id, addrs)
            }
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
        if tx.send((repo_id.clone(), event)).await.is_err() || closed {
            return;
        }
    }
}

/// The direct addresses a neighbour is reached at, as the endpoint knows them.
async fn neighbor_addrs(endpoint: &Endpoint, id: EndpointId) -> Vec<std::net::SocketAddr> {
    let Some(info) = endpoint.remote_info(id).await else {
        return Vec::new();
    };
    info.addrs()
        .filter_map(|a| match a.addr() {
            iroh::TransportAddr::Ip(sock) => Some(*sock),
            _ => None,
        })
        .take(crate::announce::MAX_ADDRS)
        .collect()
}
