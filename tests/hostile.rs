//! Hostile peers on a repository's gossip topic change nothing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestNode, eventually, make_repo, rid};
use iroh::{
    Endpoint, RelayMode, address_lookup::MemoryLookup, endpoint::presets, protocol::Router,
};
use iroh_gossip::{net::Gossip, proto::TopicId};
use knotd::announce::{Announcement, Statement};

const REPO: &str = "did:plc:author1/website";

/// A bare gossip peer with `key` joined to the repository's topic through `via`.
async fn join_as(key: &iroh::SecretKey, via: &TestNode) -> (Router, iroh_gossip::api::GossipTopic) {
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
    lookup.add_endpoint_info(via.node.addr().await);
    let gossip = Gossip::builder().spawn(endpoint.clone());
    let router = Router::builder(endpoint.clone())
        .accept(iroh_gossip::ALPN, gossip.clone())
        .spawn();
    let topic = TopicId::from_bytes(rid(REPO).topic_bytes());
    let mut sub = gossip.subscribe(topic, vec![via.node.id()]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), sub.joined())
        .await
        .expect("joins the topic")
        .unwrap();
    (router, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_stray_announcements_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let follower = TestNode::spawn().await;
    let first = author.publish(REPO, &src).await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "follower converges", || async {
        follower.materialized(REPO).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;
    // A second, newer state so that the first one is a rollback target.
    common::add_commit(&src, "third");
    let second = author.publish(REPO, &src).await;
    eventually(30, "follower gets the update", || async {
        follower.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;

    // Mallory: a bare gossip peer on the repository's topic.
    let mallory_key = iroh::SecretKey::generate();
    let (router, mut sub) = join_as(&mallory_key, &follower).await;

    let author_id = *author.node.id().as_bytes();
    let author_key =
        knotd::keys::load_or_create(&author.data_dir.join("secret.key")).expect("author key");
    let bogus_manifest = [0x42u8; 32];
    let mut messages: Vec<Vec<u8>> = Vec::new();
    // 1. garbage and oversize
    messages.push(b"not postcard at all".to_vec());
    messages.push(vec![0u8; 3000]);
    // 2. a statement claiming the author, signed by mallory
    let forged = Statement {
        repo_id: REPO.into(),
        head: None,
        manifest: bogus_manifest,
        seq: u64::MAX,
        publisher: author_id,
    };
    let mut forged_signed = forged.clone().sign(&author_key);
    forged_signed.signature = mallory_key.sign(b"anything");
    messages.push(Announcement::new(forged_signed, &mallory_key, vec![]).encode());
    // 3. mallory's own statement for an unrelated manifest
    let stray = Statement {
        repo_id: REPO.into(),
        head: None,
        manifest: bogus_manifest,
        seq: u64::MAX,
        publisher: *mallory_key.public().as_bytes(),
    }
    .sign(&mallory_key);
    messages.push(Announcement::new(stray, &mallory_key, vec![]).encode());
    // 4. a replay of the author's first state: validly signed, but older
    let first_hash = knotd::record::parse_hash_hex(&first.manifest).unwrap();
    let replay = Statement {
        repo_id: REPO.into(),
        head: None,
        manifest: *first_hash.as_bytes(),
        seq: 1,
        publisher: author_id,
    }
    .sign(&author_key);
    messages.push(Announcement::new(replay, &mallory_key, vec![]).encode());
    // 5. a valid statement for another repository, sent on this topic
    let elsewhere = Statement {
        repo_id: "did:plc:author1/other".into(),
        head: None,
        manifest: bogus_manifest,
        seq: u64::MAX,
        publisher: author_id,
    }
    .sign(&author_key);
    messages.push(Announcement::new(elsewhere, &mallory_key, vec![]).encode());

    for m in messages {
        sub.broadcast(Bytes::from(m)).await.unwrap();
    }
    // A stray knot publishing a real but unrelated repository under the same id.
    let evil_src = work.path().join("evil");
    make_repo(&evil_src);
    common::add_commit(&evil_src, "evil");
    let evil = TestNode::spawn().await;
    evil.follow(REPO, vec![follower.ticket().await]).await;
    // It trusts the follower, so it may have taken the true state already:
    // its unrelated history is published with force.
    let knotd::admin::Payload::Published(evil_report) = evil
        .admin(knotd::admin::Command::Publish {
            repo_id: rid(REPO),
            path: evil_src.clone(),
            force: true,
            expected_manifest: None,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_ne!(evil_report.manifest, second.manifest);

    eventually(
        30,
        "the follower has seen and refused every forgery",
        || async {
            let knotd::admin::Payload::Status(status) =
                follower.admin(knotd::admin::Command::Status).await.unwrap()
            else {
                panic!()
            };
            // garbage, oversize, bad signature, wrong repo: dropped; stray,
            // replay and the evil knot's state: refused.
            status.gossip.dropped_invalid >= 4 && status.gossip.rejected >= 3
        },
    )
    .await;
    let summary = follower.summary(REPO).await.unwrap();
    assert_eq!(summary.manifest.as_deref(), Some(second.manifest.as_str()));
    assert_eq!(
        summary.materialized.as_deref(),
        Some(second.manifest.as_str())
    );
    assert_eq!(
        common::git(&follower.repo_path(REPO), &["rev-parse", "HEAD"]),
        common::git(&src, &["rev-parse", "HEAD"])
    );

    // The follower still serves the true state to a fresh node.
    let fresh = TestNode::spawn().await;
    fresh
        .follow(REPO, vec![author.ticket().await, follower.ticket().await])
        .await;
    eventually(30, "fresh node converges on the true state", || async {
        fresh.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;

    drop(sub);
    router.shutdown().await.unwrap();
    for n in [author, follower, evil, fresh] {
        n.stop().await;
    }
}

/// A flood of distinct, valid-looking announcements from one neighbour is
/// rate limited; the node keeps its state and keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_flood_is_rate_limited() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let follower = TestNode::spawn().await;
    let published = follower.publish(REPO, &src).await;

    let key = iroh::SecretKey::generate();
    let (router, mut sub) = join_as(&key, &follower).await;

    let started = std::time::Instant::now();
    for i in 0..2000u64 {
        let statement = Statement {
            repo_id: REPO.into(),
            head: None,
            manifest: *blake3::hash(&i.to_le_bytes()).as_bytes(),
            seq: i + 1,
            publisher: *key.public().as_bytes(),
        }
        .sign(&key);
        sub.broadcast(Bytes::from(
            Announcement::new(statement, &key, vec![]).encode(),
        ))
        .await
        .unwrap();
    }
    println!("sent 2000 announcements in {:?}", started.elapsed());

    eventually(30, "the flood is rate limited", || async {
        let knotd::admin::Payload::Status(status) =
            follower.admin(knotd::admin::Command::Status).await.unwrap()
        else {
            panic!()
        };
        status.gossip.rate_limited > 1000
    })
    .await;
    let summary = follower.summary(REPO).await.unwrap();
    assert_eq!(
        summary.manifest.as_deref(),
        Some(published.manifest.as_str())
    );
    assert_eq!(
        summary.materialized.as_deref(),
        Some(published.manifest.as_str())
    );
    drop(sub);
    router.shutdown().await.unwrap();
    follower.stop().await;
}
