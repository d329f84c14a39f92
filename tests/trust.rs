//! The trust rules between real nodes on loopback: a seeder vouches for
//! what it holds, a stranger forwarding the same state is refused, floods of
//! fresh keys fill only the bounded hint list, and the direct path is rate
//! limited.

mod common;

use std::time::Duration;

use common::{TestNode, add_commit, eventually, make_repo, stranger::Stranger};
use knotd::{
    admin::{Command, Payload, PeerSource},
    announce::Announcement,
};

const REPO: &str = "did:plc:trustowner/site";

async fn status(node: &TestNode) -> knotd::admin::NodeStatus {
    match node.admin(Command::Status).await.unwrap() {
        Payload::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

async fn peers(node: &TestNode) -> Vec<knotd::admin::PeerView> {
    match node
        .admin(Command::Peers {
            repo_id: common::rid(REPO),
        })
        .await
        .unwrap()
    {
        Payload::Peers { peers } => peers,
        other => panic!("{other:?}"),
    }
}

/// A home server that trusts only a seeder takes what the seeder holds (the
/// author's statement, forwarded), but not the same statement forwarded by a
/// stranger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_vouches_and_a_stranger_forwarding_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let first = author.publish(REPO, &src).await;
    let seeder = TestNode::spawn().await;
    seeder.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the seeder replicates", || async {
        seeder.materialized(REPO).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;
    let seeder_dir = seeder.data_dir.clone();
    let seeder_ticket = seeder.ticket().await;
    let home = TestNode::spawn().await;
    home.follow(REPO, vec![seeder_ticket]).await;
    eventually(
        30,
        "the home server replicates through the seeder",
        || async { home.materialized(REPO).await.as_deref() == Some(first.manifest.as_str()) },
    )
    .await;
    let held_by_home = peers(&home).await;
    assert_eq!(held_by_home[0].source, PeerSource::Operator);

    // The seeder goes away; the author publishes; a stranger who got the
    // author's new statement forwards it to the home server, directly and
    // on the topic.
    let seeder_tmp = seeder.stop().await;
    add_commit(&src, "update");
    let second = author.publish(REPO, &src).await;
    let stranger = Stranger::spawn(iroh::SecretKey::generate()).await;
    let statement = stranger
        .pull(&author, REPO)
        .await
        .expect("the author serves its statement")
        .statement;
    assert_eq!(
        knotd::content::hex(&statement.statement.manifest_hash()),
        second.manifest
    );
    let forwarded = Announcement::new(statement, &stranger.key, vec![]).encode();
    stranger.push(&home, forwarded.clone()).await.unwrap();
    let mut topic = stranger.join(REPO, &home).await;
    topic.broadcast(forwarded.into()).await.unwrap();
    eventually(10, "the home server refuses the stranger", || async {
        status(&home).await.gossip.rejected >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        home.materialized(REPO).await.as_deref(),
        Some(first.manifest.as_str()),
        "still the state the seeder vouched for"
    );

    // The seeder comes back, takes the author's state and vouches for it.
    let seeder = TestNode::spawn_in(&seeder_dir).await;
    eventually(60, "the seeder and then the home server follow", || async {
        home.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    drop(topic);
    stranger.stop().await;
    for node in [home, seeder, author] {
        node.stop().await;
    }
    drop(seeder_tmp);
}

/// Two hundred fresh keys announcing the state held fill the bounded hint
/// list; the operator's peer stays listed first, trusted, and is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_keys_flooding_hints_never_displace_trusted_peers() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let first = author.publish(REPO, &src).await;
    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the follower replicates", || async {
        follower.materialized(REPO).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;

    // Eight connections, 25 envelopes each, every envelope under a fresh key
    // and with its own address: a provider of the state held, as far as the
    // follower can tell.
    let mut flooders = Vec::new();
    for _ in 0..8 {
        flooders.push(Stranger::spawn(iroh::SecretKey::generate()).await);
    }
    let statement = flooders[0].pull(&author, REPO).await.unwrap().statement;
    for (i, flooder) in flooders.iter().enumerate() {
        for j in 0..25u16 {
            let fresh = iroh::SecretKey::generate();
            let addr = format!("127.0.0.{}:{}", 2 + i, 1000 + j).parse().unwrap();
            let bytes = Announcement::new(statement.clone(), &fresh, vec![addr]).encode();
            flooder.push(&follower, bytes).await.unwrap();
        }
    }
    eventually(10, "every envelope was handled", || async {
        status(&follower).await.gossip.received >= 200
    })
    .await;
    let listed = peers(&follower).await;
    assert_eq!(listed[0].hint.node_id, author.node.id().to_string());
    assert!(listed[0].trusted);
    assert_eq!(listed.iter().filter(|p| p.trusted).count(), 1, "{listed:?}");
    let learned = listed
        .iter()
        .filter(|p| p.source == PeerSource::Learned)
        .count();
    assert!(learned <= knotd::core::hints::MAX_HINTS, "{learned}");

    // The trusted peer is still the one that counts.
    add_commit(&src, "update");
    let second = author.publish(REPO, &src).await;
    eventually(30, "the follower follows the author", || async {
        follower.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    for f in flooders {
        f.stop().await;
    }
    follower.stop().await;
    author.stop().await;
}

/// A peer pushing as fast as it can over `/knot/heads/1` is rate limited;
/// the node keeps answering and following its trusted peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_direct_path_is_rate_limited() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let first = author.publish(REPO, &src).await;
    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the follower replicates", || async {
        follower.materialized(REPO).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;
    let flooder = Stranger::spawn(iroh::SecretKey::generate()).await;
    let key = flooder.key.clone();
    let mut refused = 0;
    for i in 0..300u64 {
        let statement = knotd::announce::Statement {
            repo_id: REPO.into(),
            head: None,
            manifest: *blake3::hash(&i.to_le_bytes()).as_bytes(),
            seq: u64::MAX - i,
            publisher: *key.public().as_bytes(),
        }
        .sign(&key);
        let bytes = if i % 3 == 0 {
            b"garbage".to_vec()
        } else {
            Announcement::new(statement, &key, vec![]).encode()
        };
        if flooder.push(&follower, bytes).await.is_err() {
            refused += 1;
        }
    }
    let status = status(&follower).await;
    assert!(refused > 200, "refused {refused}");
    assert!(status.gossip.rate_limited > 200, "{:?}", status.gossip);
    add_commit(&src, "update");
    let second = author.publish(REPO, &src).await;
    eventually(30, "the follower follows the author", || async {
        follower.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    flooder.stop().await;
    follower.stop().await;
    author.stop().await;
}
