//! What strangers cannot do to a knot, between real nodes and bare iroh
//! peers on loopback: count as replicas by claiming a state, feed it more
//! than one announcement per repository in a pull answer, or hold every
//! `/knot/heads/1` connection.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{TestNode, eventually, make_repo, rid, stranger::Stranger};
use iroh::{
    Endpoint, RelayMode, SecretKey,
    address_lookup::MemoryLookup,
    endpoint::{Connection, presets},
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_gossip::{net::Gossip, proto::TopicId};
use knotd::{
    admin::{Command, Payload, ReplicaBasis},
    announce::Announcement,
    heads,
};
use serde::{Deserialize, Serialize};

const REPO: &str = "did:plc:strangers/site";

async fn status(node: &TestNode) -> knotd::admin::NodeStatus {
    match node.admin(Command::Status).await.unwrap() {
        Payload::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

async fn replicas(node: &TestNode, count: u32, timeout_secs: u64) -> Result<Payload, String> {
    node.admin(Command::Replicas {
        repo_id: rid(REPO),
        count,
        timeout_secs,
    })
    .await
    .map_err(|e| e.to_string())
}

/// Three fresh keys that push the author's own statement (naming the state
/// it holds) hold nothing: a wait for two replicas is not satisfied by them
/// and `list` does not count them; the follower that really holds the state
/// proves it and is the one replica counted, as "proved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_keys_claiming_the_state_are_not_replicas() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let published = author.publish(REPO, &src).await;
    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the follower replicates", || async {
        follower.materialized(REPO).await.as_deref() == Some(published.manifest.as_str())
    })
    .await;

    let mut strangers = Vec::new();
    for _ in 0..3 {
        strangers.push(Stranger::spawn(SecretKey::generate()).await);
    }
    let statement = strangers[0]
        .pull(&author, REPO)
        .await
        .expect("the author serves its statement")
        .statement;
    for s in &strangers {
        let addrs = s.endpoint.addr().ip_addrs().copied().collect();
        let claim = Announcement::new(statement.clone(), &s.key, addrs).encode();
        s.push(&author, claim).await.unwrap();
    }
    eventually(10, "the claims were handled", || async {
        status(&author).await.gossip.received >= 3
    })
    .await;

    let Payload::Replicas(report) = replicas(&author, 1, 30).await.unwrap() else {
        panic!()
    };
    assert_eq!(report.holding.len(), 1, "{report:?}");
    assert_eq!(report.holding[0].node_id, follower.node.id().to_string());
    assert_eq!(report.holding[0].basis, ReplicaBasis::Proved);
    let err = replicas(&author, 2, 5).await.unwrap_err();
    assert!(err.contains("only 1 of 2"), "{err}");
    let summary = author.summary(REPO).await.unwrap();
    assert_eq!(summary.peers_in_sync, 1, "{summary:?}");

    for s in strangers {
        s.stop().await;
    }
    follower.stop().await;
    author.stop().await;
}

/// The wire format of `/knot/heads/1` (postcard), as a peer that is not a
/// knot speaks it.
#[derive(Debug, Deserialize)]
enum WireRequest {
    Push {
        #[allow(dead_code)]
        announcement: Vec<u8>,
    },
    Pull {
        #[allow(dead_code)]
        repo_ids: Vec<String>,
    },
}

#[derive(Debug, Serialize)]
enum WireResponse {
    Ack,
    Heads { announcements: Vec<Vec<u8>> },
}

/// Answers every pull with the same (hostile) list of announcements.
#[derive(Debug, Clone, Default)]
struct Answerer {
    answer: Arc<Mutex<Vec<Vec<u8>>>>,
    pulls: Arc<AtomicUsize>,
}

impl ProtocolHandler for Answerer {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let Ok(bytes) = recv.read_to_end(heads::MAX_REQUEST).await else {
                break;
            };
            let response = match postcard::from_bytes::<WireRequest>(&bytes) {
                Ok(WireRequest::Pull { .. }) => WireResponse::Heads {
                    announcements: self.answer.lock().unwrap().clone(),
                },
                _ => WireResponse::Ack,
            };
            let _ = send
                .write_all(&postcard::to_stdvec(&response).unwrap())
                .await;
            let _ = send.finish();
            let _ = send.stopped().await;
            if matches!(response, WireResponse::Heads { .. }) {
                self.pulls.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// A peer that pulls a knot asks for one repository; a peer answering
/// with hundreds of announcements for it (the knot's own statement under
/// fresh keys) gets at most one of them handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_answer_carries_at_most_one_announcement_per_repository() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let node = TestNode::spawn().await;
    node.publish(REPO, &src).await;

    let key = SecretKey::generate();
    let lookup = MemoryLookup::new();
    let endpoint = Endpoint::builder(presets::Minimal)
        .secret_key(key.clone())
        .relay_mode(RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .address_lookup(lookup.clone())
        .bind()
        .await
        .unwrap();
    lookup.add_endpoint_info(node.node.addr().await);
    let gossip = Gossip::builder().spawn(endpoint.clone());
    let answerer = Answerer::default();
    let router = Router::builder(endpoint.clone())
        .accept(iroh_gossip::ALPN, gossip.clone())
        .accept(heads::ALPN, answerer.clone())
        .spawn();
    let statement = heads::pull(&endpoint, node.node.id(), &[rid(REPO)])
        .await
        .unwrap()
        .pop()
        .expect("the node serves its statement")
        .1
        .statement;
    let flood: Vec<Vec<u8>> = (0..300)
        .map(|_| Announcement::new(statement.clone(), &SecretKey::generate(), vec![]).encode())
        .collect();
    *answerer.answer.lock().unwrap() = flood;

    let before = status(&node).await.gossip.received;
    // Joining the topic makes the node pull the newcomer.
    let topic = TopicId::from_bytes(rid(REPO).topic_bytes());
    let mut sub = gossip.subscribe(topic, vec![node.node.id()]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), sub.joined())
        .await
        .expect("joins the topic")
        .unwrap();
    eventually(20, "the node pulls the newcomer", || async {
        answerer.pulls.load(Ordering::SeqCst) >= 1
    })
    .await;
    // An answer is handled in one go: once any of it arrived, all of it has.
    eventually(20, "the answer is handled", || async {
        status(&node).await.gossip.received > before
    })
    .await;
    let handled = status(&node).await.gossip.received - before;
    let pulls = answerer.pulls.load(Ordering::SeqCst) as u64;
    assert!(
        handled <= pulls,
        "{handled} announcements handled from {pulls} answers of 300"
    );

    drop(sub);
    router.shutdown().await.unwrap();
    node.stop().await;
}

/// One peer opening connection after connection to `/knot/heads/1`, and
/// leaving them idle, holds at most a few of them: another peer's pull is
/// still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_every_heads_connection() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let node = TestNode::spawn().await;
    node.publish(REPO, &src).await;

    let hog = Stranger::spawn(SecretKey::generate()).await;
    hog.meet(&node).await;
    let open = Arc::new(AtomicUsize::new(0));
    let mut holders = tokio::task::JoinSet::new();
    for _ in 0..heads::MAX_CONNECTIONS {
        let (endpoint, id, open) = (hog.endpoint.clone(), node.node.id(), open.clone());
        holders.spawn(async move {
            // Keep a connection open, never asking anything; open another
            // when the node closes it.
            loop {
                if let Ok(conn) = endpoint.connect(id, heads::ALPN).await {
                    open.fetch_add(1, Ordering::SeqCst);
                    conn.closed().await;
                    open.fetch_sub(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    eventually(20, "the hog has connected", || async {
        open.load(Ordering::SeqCst) >= heads::MAX_CONNECTIONS_PER_PEER
    })
    .await;
    // Give every connection time to reach the node's handler.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let peer = Stranger::spawn(SecretKey::generate()).await;
    let answered = peer.pull(&node, REPO).await;
    assert!(
        answered.is_some(),
        "another peer's pull is answered while one peer floods connections"
    );
    holders.shutdown().await;
    peer.stop().await;
    hog.stop().await;
    node.stop().await;
}
