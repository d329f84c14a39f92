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
