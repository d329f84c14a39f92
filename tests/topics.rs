//! Many repositories shared with one peer: gossip opens one QUIC stream per
//! topic and peer, so past a hundred topics (QUIC's default stream limit)
//! gossip to that peer waits for a stream that never comes. The node must
//! raise that limit for its own peers, and must keep answering and stop
//! promptly even when a peer with the default limit stalls its gossip.

mod common;

use std::{future::Future, time::Duration};

use common::{TestNode, eventually, rid};
use iroh_tickets::endpoint::EndpointTicket;
use knotd::admin::{Command, Payload};

/// Topics shared with one peer: well past QUIC's default of 100 streams.
const REPOS: usize = 200;
/// Enough repositories for a node that awaits gossip on its loop to stall:
/// 100 streams, then gossip's queues of 64 fill.
const STALLING_REPOS: usize = 300;
/// Longest an admin command or a shutdown may take here.
const PROMPT: Duration = Duration::from_secs(10);

fn repo(i: usize) -> String {
    format!("did:plc:topics{i:04}/repo")
}

async fn prompt<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPT, work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PROMPT:?}"))
}

/// Add every repository with `peer`, each answered promptly.
async fn add_all(node: &TestNode, peer: &str, count: usize) {
    for i in 0..count {
        prompt(
            &format!("add-repo of repository {i}"),
            node.follow(&repo(i), vec![peer.into()]),
        )
        .await;
    }
}

async fn connected(node: &TestNode, repo_id: &str) -> bool {
    match node
        .admin(Command::Peers {
            repo_id: rid(repo_id),
        })
        .await
    {
        Ok(Payload::Peers { peers }) => peers.iter().any(|p| p.connected),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_hundreds_of_topics_stay_connected_and_responsive() {
    let a = TestNode::spawn().await;
    let b = TestNode::spawn().await;
    let (ticket_a, ticket_b) = (a.ticket().await, b.ticket().await);
    add_all(&b, &ticket_a, REPOS).await;
    add_all(&a, &ticket_b, REPOS).await;
    // Every topic gets its neighbour, the last ones as well as the first.
    eventually(60, "a neighbour on every topic", || async {
        for i in (0..REPOS).rev() {
            if !connected(&a, &repo(i)).await {
                return false;
            }
        }
        true
    })
    .await;
    prompt("status", a.admin(Command::Status))
        .await
        .expect("status");
    prompt("stopping a", a.stop()).await;
    prompt("stopping b", b.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_gossip_does_not_stall_the_node() {
    // A plain iroh peer with QUIC's default limit of 100 incoming streams:
    // the node's gossip to it stalls at the 101st topic.
    let stranger = common::stranger::Stranger::spawn(iroh::SecretKey::from_bytes(&[7; 32])).await;
    let addr = knotd::knot::wait_for_addr(&stranger.endpoint).await;
    let ticket = EndpointTicket::new(addr).to_string();
    let node = TestNode::spawn().await;
    add_all(&node, &ticket, STALLING_REPOS).await;
    // Still answering, with every repository tracked.
    let listed = prompt("list", node.repo_ids()).await;
    assert_eq!(listed.len(), STALLING_REPOS);
    prompt("status", node.admin(Command::Status))
        .await
        .expect("status");
    // Gossip held up by the stranger does not keep the endpoint from
    // closing: its connections are closed, not aborted when the node is
    // dropped (iroh then logs "Endpoint dropped without calling
    // Endpoint::close" and peers see a timeout instead of a close).
    let endpoint = node.node.endpoint().clone();
    prompt("stopping the node", node.stop()).await;
    assert!(
        endpoint.is_closed(),
        "the node stopped without closing its endpoint"
    );
}

/// A node whose quiet topics are left after `secs` seconds.
async fn sleepy_node(secs: u64) -> TestNode {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = knotd::config::Config::local(tmp.path());
    config.topic_idle_secs = secs;
    let mut node = TestNode::spawn_with(config).await;
    node.keep(tmp);
    node
}

async fn topic_joined(node: &TestNode, repo_id: &str) -> bool {
    node.summary(repo_id).await.is_some_and(|s| s.topic_joined)
}

/// Topics left while quiet: an author, a seeder trusting the author, and a
/// home follower trusting only the seeder. Once every topic is left, a new
/// state still reaches the follower within seconds (directly, from peer to
/// peer, not by the resync sweep ten minutes later), and wakes the topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_state_reaches_a_follower_whose_topic_was_left() {
    const REPO: &str = "did:plc:sleepy/repo";
    let author = sleepy_node(2).await;
    let seeder = sleepy_node(2).await;
    let home = sleepy_node(2).await;
    let src = tempfile::tempdir().unwrap();
    common::make_repo(src.path());
    let first = author.publish(REPO, src.path()).await.manifest;
    seeder.follow(REPO, vec![author.ticket().await]).await;
    home.follow(REPO, vec![seeder.ticket().await]).await;
    eventually(30, "the first state at the home follower", || async {
        home.materialized(REPO).await.as_deref() == Some(first.as_str())
    })
    .await;
    eventually(30, "every topic left", || async {
        !topic_joined(&author, REPO).await
            && !topic_joined(&seeder, REPO).await
            && !topic_joined(&home, REPO).await
    })
    .await;

    common::add_commit(src.path(), "after-the-topics-slept");
    let second = author.publish(REPO, src.path()).await.manifest;
    assert_ne!(first, second);
    eventually(15, "the second state at the home follower", || async {
        home.materialized(REPO).await.as_deref() == Some(second.as_str())
    })
    .await;
    assert!(
        topic_joined(&home, REPO).await,
        "news joins the topic again"
    );
    for node in [author, seeder, home] {
        prompt("stop", node.stop()).await;
    }
}
