//! Hostile providers between real nodes on loopback: a stranger that
//! forwards a trusted statement and then stalls the blob transfer, stalled
//! fetches competing with a local publish for job slots, and a trusted
//! publisher whose manifest lies about sizes.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{TestNode, add_commit, eventually, make_big_repo, make_repo, provider::BlobPeer, rid};
use iroh::SecretKey;
use iroh_blobs::Hash;
use knotd::{
    admin::{Command, Payload},
    config::Config,
};

const REPO: &str = "did:plc:hostilefetch/site";

/// A node's config on loopback with a fixed UDP port, so it can stop and
/// start again where its peers last saw it.
fn on_port(dir: &Path, port: u16) -> Config {
    let mut config = Config::local(dir);
    config.bind = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    config
}

/// Bytes under `dir`, recursively.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn status(node: &TestNode) -> knotd::admin::NodeStatus {
    match node.admin(Command::Status).await.unwrap() {
        Payload::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

/// A stranger picks up the author's statement while the follower is away,
/// forwards it to the follower first (so it is the first peer that says it
/// holds the state) and stalls every blob request. The author, trusted by
/// the follower, is tried first, and a stalled provider costs seconds, not
/// the fetch timeout: the follower has the state a few seconds after the
/// author serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_stranger_first_in_line_does_not_keep_the_follower_from_the_state() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author_dir = work.path().join("author");
    let author_port = common::daemon::free_udp_port();
    let follower_dir = work.path().join("follower");
    let follower_port = common::daemon::free_udp_port();

    let author = TestNode::spawn_with(on_port(&author_dir, author_port)).await;
    let first = author.publish(REPO, &src).await;
    let follower = TestNode::spawn_with(on_port(&follower_dir, follower_port)).await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the follower replicates", || async {
        follower.materialized(REPO).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;

    // While the follower is away the author publishes; a stranger picks up
    // the author's statement; then the author goes away too.
    follower.stop().await;
    add_commit(&src, "update");
    let second = author.publish(REPO, &src).await;
    let stranger = BlobPeer::stalling(SecretKey::generate()).await;
    let statement = stranger
        .pull(&author, REPO)
        .await
        .expect("the author serves its statement")
        .statement;
    assert_eq!(
        knotd::content::hex(&statement.statement.manifest_hash()),
        second.manifest
    );
    author.stop().await;

    // The follower comes back and hears of the new state from the stranger
    // first: the stranger says it holds it.
    let follower = TestNode::spawn_with(on_port(&follower_dir, follower_port)).await;
    stranger.forward(&follower, statement).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        follower.materialized(REPO).await.as_deref(),
        Some(first.manifest.as_str()),
        "nobody has served the new state yet"
    );

    // The author serves again, where the follower knows it.
    let serving = Instant::now();
    let author = TestNode::spawn_with(on_port(&author_dir, author_port)).await;
    eventually(30, "the follower takes the new state", || async {
        follower.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    let took = serving.elapsed();
    eprintln!("the follower had the state {took:?} after the author served again");
    assert!(
        took < Duration::from_secs(15),
        "the follower took {took:?} after the author served again"
    );
    stranger.stop().await;
    follower.stop().await;
    author.stop().await;
}

/// Four repositories whose only provider accepts blob requests and never
/// answers keep their fetches busy; a local publish still runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_fetches_do_not_hold_a_local_publish_hostage() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let node = TestNode::spawn().await;
    let staller = BlobPeer::stalling(SecretKey::generate()).await;
    let ticket = staller.ticket().await;
    for i in 0..4 {
        let repo = format!("did:plc:stalled/r{i}");
        node.follow(&repo, vec![ticket.clone()]).await;
        let manifest = Hash::new(format!("a state of {repo}"));
        staller
            .forward(&node, staller.statement(&repo, None, manifest))
            .await;
    }
    eventually(10, "the stalled fetches hold job slots", || async {
        status(&node).await.jobs_running >= 3
    })
    .await;

    let started = Instant::now();
    let published = tokio::time::timeout(
        Duration::from_secs(20),
        node.publish("did:plc:local/site", &src),
    )
    .await
    .expect("the publish is not held up by stalled fetches");
    eprintln!("the publish took {:?}", started.elapsed());
    assert_eq!(
        node.materialized("did:plc:local/site").await.as_deref(),
        Some(published.manifest.as_str())
    );
    staller.stop().await;
    node.stop().await;
}

/// A stalled provider first in the list of a fetch costs seconds: the
/// next provider is started when the first sends nothing, and the job
/// learns which provider stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_provider_costs_seconds_and_is_reported() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_big_repo(&src, 4, b"hedged fetch");
    let author = TestNode::spawn().await;
    let published = author.publish(REPO, &src).await;
    let manifest = knotd::record::parse_hash_hex(&published.manifest).unwrap();
    let staller = BlobPeer::stalling(SecretKey::generate()).await;
    let fresh = TestNode::spawn().await;
    fresh
        .node
        .lookup()
        .add_endpoint_info(author.node.addr().await);
    fresh.node.lookup().add_endpoint_info(staller.addr().await);

    let faults = std::sync::Mutex::new(Vec::new());
    let note = |peer, fault| faults.lock().unwrap().push((peer, fault));
    let opts = knotd::content::FetchOptions {
        faults: Some(&note),
        ..knotd::content::FetchOptions::new(Duration::from_secs(300), &fresh.data_dir)
    };
    let started = Instant::now();
    let fetched = knotd::content::fetch(
        fresh.node.blobs(),
        fresh.node.endpoint(),
        &rid(REPO),
        manifest,
        &[staller.endpoint.id(), author.node.id()],
        &opts,
    )
    .await
    .expect("the fetch succeeds from the second provider");
    let took = started.elapsed();
    eprintln!("fetched past a stalled provider in {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(fetched.manifest.packs.len(), 1);
    let faults = faults.into_inner().unwrap();
    assert!(
        faults.contains(&(staller.endpoint.id(), knotd::core::ProviderFault::Stalled)),
        "{faults:?}"
    );
    assert!(
        !faults.iter().any(|(peer, _)| *peer == author.node.id()),
        "{faults:?}"
    );
    staller.stop().await;
    fresh.stop().await;
    author.stop().await;
}

/// A trusted publisher whose manifest understates the size of its pack:
/// the state fits the quota on paper, but the transfer stops at the size
/// declared and the state is refused; the disk does not fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_understating_its_packs_is_refused_without_filling_the_disk() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_big_repo(&src, 8, b"understated pack");
    let publisher = BlobPeer::serving(SecretKey::generate()).await;
    let published = knotd::content::publish(publisher.store(), &rid(REPO), &src, None, 16, false)
        .await
        .unwrap();
    let real: u64 = published.manifest.packs.iter().map(|p| p.size).sum();
    assert!(real > 8 << 20, "the pack holds the incompressible bytes");
    let mut lying = published.manifest.clone();
    for pack in &mut lying.packs {
        pack.size = 64 * 1024;
    }
    let lie = publisher
        .store()
        .add_bytes(lying.to_bytes())
        .temp_tag()
        .await
        .unwrap();

    let mut config = Config::local(work.path().join("follower"));
    config.max_repo_bytes = Some(1 << 20);
    let follower = TestNode::spawn_with(config).await;
    follower.follow(REPO, vec![publisher.ticket().await]).await;
    let blobs_dir = follower.data_dir.join("blobs");
    let before = disk_bytes(&blobs_dir);
    offer_and_wait_for_the_error(&publisher, &follower, &lying, lie.hash()).await;
    // Not tried again: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let grown = disk_bytes(&blobs_dir).saturating_sub(before);
    eprintln!("the blob store grew by {grown} bytes for a {real} byte pack");
    assert!(grown < 1 << 20, "the blob store grew by {grown} bytes");
    let summary = follower.summary(REPO).await.unwrap();
    let error = summary.last_error.unwrap_or_default();
    assert!(error.contains("its manifest declares"), "{error}");
    assert_eq!(summary.materialized, None);
    publisher.stop().await;
    follower.stop().await;
}

/// A trusted publisher whose manifest overstates the size of its pack: the
/// node indexes the pack while it downloads, and the state is refused once
/// the pack turns out shorter, instead of the indexing waiting for bytes
/// that do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_overstating_its_packs_is_refused_and_the_job_ends() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_big_repo(&src, 2, b"overstated pack");
    let publisher = BlobPeer::serving(SecretKey::generate()).await;
    let published = knotd::content::publish(publisher.store(), &rid(REPO), &src, None, 16, false)
        .await
        .unwrap();
    let mut lying = published.manifest.clone();
    for pack in &mut lying.packs {
        pack.size += 10_000;
    }
    let lie = publisher
        .store()
        .add_bytes(lying.to_bytes())
        .temp_tag()
        .await
        .unwrap();

    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![publisher.ticket().await]).await;
    offer_and_wait_for_the_error(&publisher, &follower, &lying, lie.hash()).await;
    let summary = follower.summary(REPO).await.unwrap();
    let error = summary.last_error.unwrap_or_default();
    assert!(error.contains("its manifest declares"), "{error}");
    assert_eq!(summary.materialized, None);
    // The node is not stuck: a good state from the same publisher follows.
    let good = published.hash;
    let head = published.manifest.head_oid().map(|o| o.to_string());
    publisher
        .forward(&follower, publisher.statement(REPO, head, good))
        .await;
    eventually(60, "the good state to be materialized", || async {
        follower.summary(REPO).await.and_then(|s| s.materialized)
            == Some(knotd::content::hex(&good))
    })
    .await;
    publisher.stop().await;
    follower.stop().await;
}

/// `publisher` offers the state `manifest` (blob `hash`) to `follower`;
/// wait until the follower's fetch of it has ended with an error.
async fn offer_and_wait_for_the_error(
    publisher: &BlobPeer,
    follower: &TestNode,
    manifest: &knotd::manifest::Manifest,
    hash: iroh_blobs::Hash,
) {
    let head = manifest.head_oid().map(|o| o.to_string());
    publisher
        .forward(follower, publisher.statement(REPO, head, hash))
        .await;
    eventually(60, "the fetch to end with an error", || async {
        follower
            .summary(REPO)
            .await
            .is_some_and(|s| s.last_error.is_some())
    })
    .await;
}

/// A trusted statement naming a "manifest" far over the 16 MiB limit: the
/// transfer stops at the limit instead of taking the whole blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_over_the_size_limit_is_not_downloaded_in_full() {
    let publisher = BlobPeer::serving(SecretKey::generate()).await;
    let mut huge = vec![0u8; 48 << 20];
    blake3::Hasher::new()
        .update(b"not a manifest")
        .finalize_xof()
        .fill(&mut huge);
    let tag = publisher.store().add_bytes(huge).temp_tag().await.unwrap();

    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![publisher.ticket().await]).await;
    let blobs_dir = follower.data_dir.join("blobs");
    let before = disk_bytes(&blobs_dir);
    publisher
        .forward(&follower, publisher.statement(REPO, None, tag.hash()))
        .await;
    eventually(60, "the state is refused", || async {
        follower
            .summary(REPO)
            .await
            .is_some_and(|s| s.last_error.is_some())
    })
    .await;
    let error = follower.summary(REPO).await.unwrap().last_error.unwrap();
    assert!(error.contains("limit"), "{error}");
    let grown = disk_bytes(&blobs_dir).saturating_sub(before);
    eprintln!("the blob store grew by {grown} bytes for a 48 MiB blob");
    assert!(
        grown <= (knotd::manifest::MAX_MANIFEST_BYTES as u64) + (1 << 20),
        "the blob store grew by {grown} bytes"
    );
    publisher.stop().await;
    follower.stop().await;
}
