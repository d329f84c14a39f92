//! Garbage collection never takes a blob of a state the node holds.
//!
//! Many repositories sharing one pack are published through the socket
//! while the blob store's garbage collector runs every few milliseconds on
//! a store holding as many tags as a node with 10,000 repositories (so one
//! run's marking takes long enough to overlap publishes). Every published
//! state must then be complete in the publisher's store and servable: a
//! fresh node given only the publisher's ticket fetches and materializes
//! each one, while its own collector runs as often.

mod common;

use std::time::Duration;

use common::{TestNode, eventually, make_repo};
use iroh_blobs::{Hash, HashAndFormat, api::blobs::BlobStatus};
use knotd::config::Config;

/// Repositories published, all with the same pack.
const REPOS: usize = 48;
/// Publishes in flight at once.
const PUBLISHERS: usize = 4;
/// Tags of other repositories the store holds (two per repository).
const FILLER_TAGS: usize = 20_000;

fn repo_name(i: usize) -> String {
    format!("did:plc:gc{i:05}/repo")
}

async fn gc_node(dir: &std::path::Path) -> TestNode {
    let mut config = Config::local(dir);
    config.gc_interval_secs = 0.005;
    TestNode::spawn_with(config).await
}

/// The node's tags of `repo`, as `name=hash`.
async fn pins(node: &TestNode, repo: &str) -> Vec<String> {
    use n0_future::StreamExt;
    let mut list = node
        .node
        .blobs()
        .tags()
        .list_prefix(format!("knot/{repo}/"))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(tag) = list.next().await {
        let tag = tag.unwrap();
        out.push(format!(
            "{}={}",
            String::from_utf8_lossy(tag.name.as_ref()),
            tag.hash
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_published_while_gc_runs_stay_complete_and_servable() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);

    let publisher_dir = tempfile::tempdir().unwrap();
    let publisher = gc_node(publisher_dir.path()).await;
    let tags = publisher.node.blobs().tags();
    for i in 0..FILLER_TAGS {
        tags.set(
            format!("filler/{i:06}"),
            HashAndFormat::raw(Hash::new(i.to_le_bytes())),
        )
        .await
        .unwrap();
    }

    let publisher = std::sync::Arc::new(publisher);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..PUBLISHERS {
        let publisher = publisher.clone();
        let src = src.clone();
        tasks.spawn(async move {
            let mut published = Vec::new();
            for i in (lane..REPOS).step_by(PUBLISHERS) {
                let repo = repo_name(i);
                let report = publisher.publish(&repo, &src).await;
                published.push((repo, report.manifest));
            }
            published
        });
    }
    let mut published = Vec::new();
    while let Some(done) = tasks.join_next().await {
        published.extend(done.unwrap());
    }
    published.sort();

    // Let a few collections run over the finished states.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let blobs = publisher.node.blobs().blobs();
    let mut lost = Vec::new();
    for (repo, manifest) in &published {
        let hash: Hash = manifest.parse().expect("manifest hash");
        let status = blobs.status(hash).await.unwrap();
        if !matches!(status, BlobStatus::Complete { .. }) {
            let pins = pins(&publisher, repo).await;
            lost.push(format!(
                "{repo}: manifest {manifest} is {status:?}, pinned by {pins:?}"
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "published states lost their manifest to garbage collection:\n{}",
        lost.join("\n")
    );

    // A fresh node, collecting as often, fetches every state from the
    // publisher alone.
    let follower_dir = tempfile::tempdir().unwrap();
    let follower = gc_node(follower_dir.path()).await;
    let ticket = publisher.ticket().await;
    for (repo, _) in &published {
        follower.follow(repo, vec![ticket.clone()]).await;
    }
    eventually(
        120,
        "the fresh node holds every published state",
        || async {
            let mut all = true;
            for (repo, manifest) in &published {
                all &= follower.materialized(repo).await.as_deref() == Some(manifest.as_str());
            }
            all
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let blobs = follower.node.blobs().blobs();
    for (repo, manifest) in &published {
        let hash: Hash = manifest.parse().expect("manifest hash");
        let status = blobs.status(hash).await.unwrap();
        assert!(
            matches!(status, BlobStatus::Complete { .. }),
            "{repo}: the follower's manifest {manifest} is {status:?}"
        );
    }
}

/// Make `node` lose the blob `hash` although its tag `tag` stays, as the
/// collector did before pins were guarded: drop the tag, let a pass delete
/// the blob, set the tag again.
async fn lose_blob(node: &TestNode, tag: &str, hash: Hash) {
    let store = node.node.blobs();
    store.tags().delete(tag).await.unwrap();
    eventually(30, "the collector deletes the blob", || async {
        !store.blobs().has(hash).await.unwrap()
    })
    .await;
    store
        .tags()
        .set(tag, HashAndFormat::raw(hash))
        .await
        .unwrap();
}

async fn complete(node: &TestNode, hash: Hash) -> bool {
    node.node.blobs().blobs().has(hash).await.unwrap()
}

async fn verify(node: &TestNode, repo: &str) -> Vec<knotd::admin::VerifyRow> {
    match node
        .admin(knotd::admin::Command::Verify {
            repo_id: Some(common::rid(repo)),
        })
        .await
        .expect("verify")
    {
        knotd::admin::Payload::Verified(report) => report.repos,
        other => panic!("unexpected payload {other:?}"),
    }
}

/// The pack blobs of `manifest` on `node`, in order.
async fn packs(node: &TestNode, manifest: Hash) -> Vec<Hash> {
    let bytes = node.node.blobs().get_bytes(manifest).await.unwrap();
    knotd::manifest::Manifest::from_bytes(&bytes)
        .unwrap()
        .packs
        .iter()
        .map(|p| Hash::from_bytes(p.hash))
        .collect()
}

const REPO: &str = "did:plc:verify1/site";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_manifest_and_pack_are_rebuilt_from_the_materialized_copy() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let dir = tempfile::tempdir().unwrap();
    let node = gc_node(dir.path()).await;
    let report = node.publish(REPO, &src).await;
    let manifest: Hash = report.manifest.parse().unwrap();
    let pack = packs(&node, manifest).await[0];

    lose_blob(&node, &format!("knot/{REPO}/manifest"), manifest).await;
    lose_blob(&node, &format!("knot/{REPO}/pack/{pack}"), pack).await;
    assert!(!complete(&node, manifest).await && !complete(&node, pack).await);

    let rows = verify(&node, REPO).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].ok(), "{rows:?}");
    assert_eq!((rows[0].rebuilt, rows[0].fetched), (2, 0), "{rows:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(complete(&node, manifest).await && complete(&node, pack).await);

    // A fresh node fetches the repaired state from this one alone.
    let fresh = TestNode::spawn().await;
    fresh.follow(REPO, vec![node.ticket().await]).await;
    eventually(30, "a fresh node fetches the repaired state", || async {
        fresh.materialized(REPO).await.as_deref() == Some(report.manifest.as_str())
    })
    .await;

    // A restart checks every held state: a blob lost while the node ran is
    // back without anyone asking.
    lose_blob(&node, &format!("knot/{REPO}/manifest"), manifest).await;
    let node = node.restart().await;
    eventually(30, "the start-up check rebuilds the manifest", || async {
        complete(&node, manifest).await
    })
    .await;
    let rows = verify(&node, REPO).await;
    assert_eq!((rows[0].rebuilt, rows[0].fetched), (0, 0), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_thin_pack_is_fetched_again_from_a_peer() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author_dir = tempfile::tempdir().unwrap();
    let author = gc_node(author_dir.path()).await;
    author.publish(REPO, &src).await;
    common::add_commit(&src, "third");
    let second = author.publish(REPO, &src).await;
    assert_eq!(second.pack_count, 2);
    let manifest: Hash = second.manifest.parse().unwrap();
    let thin = packs(&author, manifest).await[1];

    let seeder = TestNode::spawn().await;
    seeder.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the seeder holds the state", || async {
        seeder.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;

    lose_blob(&author, &format!("knot/{REPO}/pack/{thin}"), thin).await;
    let rows = verify(&author, REPO).await;
    assert!(rows[0].ok(), "{rows:?}");
    assert_eq!(
        (rows[0].rebuilt, rows[0].fetched),
        (0, 1),
        "a thin pack was completed when indexed, so it comes from a peer: {rows:?}"
    );
    assert!(complete(&author, thin).await);
}
