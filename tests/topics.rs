//! Many repositories shared with one peer: gossip opens one QUIC stream per
//! topic and peer, so past a hundred topics (QUIC's default stream limit)
//! gossip to that peer waits for a stream that never comes. The node must
//! keep answering and stop promptly even when a peer stalls its gossip.

mod common;

use std::{future::Future, time::Duration};

use common::TestNode;
use iroh_tickets::endpoint::EndpointTicket;
use knotd::admin::Command;

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
    prompt("stopping the node", node.stop()).await;
}
