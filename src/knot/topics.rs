//! One task per joined gossip topic: joins the topic, sends what the actor
//! hands it (broadcasts, peers to dial), reads the topic, rate limits each
//! neighbour before decoding anything it sent, verifies announcements, and
//! forwards valid ones and neighbour changes to the actor. The actor never
//! awaits gossip: gossip can wait on the network for as long as a peer
//! makes it (a peer's QUIC stream limit, a peer that does not read), and
//! the actor's loop must not wait with it. Nothing here survives a
//! restart; topics are joined again from the core's decisions.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use iroh::{Endpoint, EndpointId};
use iroh_gossip::{
    api::{Event, GossipReceiver, GossipSender},
    net::Gossip,
    proto::TopicId,
};
use n0_future::StreamExt;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    announce::Announcement,
    limits::{DropCounters, RateLimiter},
    repo_id::RepoId,
};

/// Gossip messages a neighbour may deliver per topic in a burst...
const PEER_BURST: f64 = 64.0;
/// ...and per second after it.
const PEER_RATE: f64 = 16.0;
/// Commands waiting for a topic's task. The task only falls behind when
/// gossip itself waits; more commands are then dropped (announcements also
/// go directly to peers, and topics without neighbours are dialed again).
const COMMANDS: usize = 16;

/// What the actor asks of a topic's task.
pub(super) enum TopicCommand {
    /// Dial these peers into the topic.
    JoinPeers(Vec<EndpointId>),
    /// Broadcast to the whole swarm.
    Broadcast(Bytes),
    /// Broadcast to direct neighbours only.
    BroadcastNeighbors(Bytes),
}

/// A joined topic, as the actor holds it.
pub(super) struct JoinedTopic {
    /// Where the topic's task takes commands. Boxed: a channel allocates
    /// its first block of 32 slots when it is made, per joined topic, and a
    /// topic is mostly quiet.
    commands: mpsc::Sender<Box<TopicCommand>>,
    /// Stops the topic's task (and leaves the topic).
    pub cancel: CancellationToken,
    /// Which joining of the topic this is: the events a task of an earlier
    /// one still had under way when the topic was left and joined again
    /// carry another, and say nothing about this one.
    pub epoch: u64,
}

impl JoinedTopic {
    /// Hand `command` to the topic's task without waiting; dropped when the
    /// task is behind or gone.
    pub fn send(&self, repo: &RepoId, command: TopicCommand) {
        match self.commands.try_send(Box::new(command)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                debug!(repo = %repo, "gossip is behind on this topic; dropping a command");
            }
            Err(TrySendError::Closed(_)) => {
                debug!(repo = %repo, "the topic's task has stopped; dropping a command");
            }
        }
    }
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

/// What a topic's task needs.
#[derive(Clone)]
pub(super) struct TopicContext {
    pub gossip: Gossip,
    pub endpoint: Endpoint,
    pub tx: mpsc::Sender<(RepoId, u64, TopicEvent)>,
    pub drops: Arc<DropCounters>,
}

/// Start the task of `repo_id`'s topic in `tasks`, joining through `peers`;
/// its events carry `epoch`.
pub(super) fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    ctx: TopicContext,
    (repo_id, epoch): (RepoId, u64),
    peers: Vec<EndpointId>,
    cancel: CancellationToken,
) -> JoinedTopic {
    let (commands, rx) = mpsc::channel(COMMANDS);
    tasks.spawn(run(ctx, (repo_id, epoch), peers, rx, cancel.clone()));
    JoinedTopic {
        commands,
        cancel,
        epoch,
    }
}

/// Join the topic, then serve it until `cancel` fires or the topic closes.
async fn run(
    ctx: TopicContext,
    (repo_id, epoch): (RepoId, u64),
    peers: Vec<EndpointId>,
    mut commands: mpsc::Receiver<Box<TopicCommand>>,
    cancel: CancellationToken,
) {
    let topic_id = TopicId::from_bytes(repo_id.topic_bytes());
    let subscribed = tokio::select! {
        _ = cancel.cancelled() => return,
        subscribed = Box::pin(ctx.gossip.subscribe(topic_id, peers)) => subscribed,
    };
    let (sender, receiver) = match subscribed {
        Ok(topic) => topic.split(),
        Err(e) => {
            warn!(repo = %repo_id, error = %e, "cannot join gossip topic");
            return;
        }
    };
    debug!(repo = %repo_id, "joined gossip topic");
    // Sending runs beside reading, so a broadcast gossip holds up does not
    // hold up what the topic delivers. The task ends, and the topic is left,
    // when the actor lets go of it.
    let sending = async {
        while let Some(command) = commands.recv().await {
            // Boxed, as below: the task of every quiet topic would otherwise
            // reserve room for the largest state of every await it may reach.
            Box::pin(execute(&sender, &repo_id, *command)).await;
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = sending => {}
        _ = read(&repo_id, epoch, receiver, &ctx) => {}
    }
}

async fn execute(sender: &GossipSender, repo_id: &RepoId, command: TopicCommand) {
    let result = match command {
        TopicCommand::JoinPeers(peers) => sender.join_peers(peers).await,
        TopicCommand::Broadcast(message) => sender.broadcast(message).await,
        TopicCommand::BroadcastNeighbors(message) => sender.broadcast_neighbors(message).await,
    };
    if let Err(e) = result {
        warn!(repo = %repo_id, error = %e, "gossip command failed");
    }
}

/// Read `receiver` until the topic closes, forwarding to the actor.
async fn read(repo_id: &RepoId, epoch: u64, mut receiver: GossipReceiver, ctx: &TopicContext) {
    let mut limiter = RateLimiter::new(PEER_BURST, PEER_RATE);
    loop {
        let event = match receiver.next().await {
            Some(Ok(Event::Received(msg))) => {
                if !limiter.allow(msg.delivered_from, Instant::now()) {
                    ctx.drops.rate_limited();
                    continue;
                }
                match Announcement::decode_verified(&msg.content, repo_id) {
                    Ok(ann) => TopicEvent::Announcement(Box::new(ann)),
                    Err(error) => {
                        ctx.drops.invalid();
                        debug!(repo = %repo_id, from = %msg.delivered_from.fmt_short(), %error, "dropped gossip message");
                        continue;
                    }
                }
            }
            Some(Ok(Event::NeighborUp(id))) => {
                let addrs = Box::pin(neighbor_addrs(&ctx.endpoint, id)).await;
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
        if ctx.tx.send((repo_id.clone(), epoch, event)).await.is_err() || closed {
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
