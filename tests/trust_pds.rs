//! The trust rules with a real ATProto PDS: a follower whose copy of the
//! record lags behind gossip cannot be rolled back or frozen by a stranger,
//! and a peer the owner removes from the record is no longer trusted, also
//! after a restart, and a deleted record revokes the peers it named.

mod common;
#[path = "common/pds.rs"]
mod pds;

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use common::{TestNode, add_commit, eventually, git, make_repo, rid, stranger::Stranger};
use knotd::{
    admin::{Command, Payload},
    announce::{Announcement, Statement},
    config::Config,
};
use pds::TestPds;

async fn start_pds() -> Option<TestPds> {
    tokio::task::spawn_blocking(TestPds::start).await.unwrap()
}

/// A knot configured for the test PDS; the record is read once when
/// tracked and then not for five minutes, so its copy lags behind gossip.
fn config(pds: &TestPds, dir: &Path) -> Config {
    let mut config = Config::local(dir);
    config.atproto.plc_directory = pds.plc.clone();
    config.atproto.poll_interval_secs = 300;
    config
}

/// The author's knot, writing records back with an app password.
async fn author_config(pds: &TestPds, dir: &Path, did: &str, password: &str) -> Config {
    let app_password = pds.create_app_password(did, password).await;
    std::fs::create_dir_all(dir).unwrap();
    let secret = dir.join("app-password");
    std::fs::write(&secret, format!("{app_password}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = config(pds, &dir.join("data"));
    config.atproto.identifier = Some(did.to_string());
    config.atproto.app_password_file = Some(secret);
    config.atproto.allow_insecure_http = true;
    config
}

async fn follow_record(node: &TestNode, did: &str, repo: &str, name: &str) {
    node.admin(Command::AddRepo {
        repo_id: rid(repo),
        pds: None,
        record: Some(format!("at://{did}/app.knot.repo/{name}")),
        peers: vec![],
    })
    .await
    .unwrap();
}

/// Announcements refused because neither publisher nor sender is trusted.
async fn untrusted(node: &TestNode) -> u64 {
    let reason = knotd::core::trust::Rejection::Untrusted.reason();
    match node.admin(Command::Status).await.unwrap() {
        Payload::Status(s) => s
            .gossip
            .rejected_by_reason
            .get(reason)
            .copied()
            .unwrap_or(0),
        other => panic!("{other:?}"),
    }
}

async fn written_back(pds: &TestPds, did: &str, manifest: &str) {
    eventually(30, "the record is written back", || async {
        pds.get_record(did, "app.knot.repo", "site")
            .await
            .is_some_and(|r| r["manifest"] == manifest)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_roll_back_or_freeze_a_follower_whose_record_lags() {
    let Some(pds) = start_pds().await else {
        return;
    };
    let (did, password) = pds.create_account("rollback").await;
    let repo = format!("{did}/site");
    let work = tempfile::tempdir().unwrap();
    let author = TestNode::spawn_with(
        author_config(&pds, &work.path().join("author"), &did, &password).await,
    )
    .await;
    author
        .admin(Command::AddRepo {
            repo_id: rid(&repo),
            pds: Some(pds.pds.clone()),
            record: None,
            peers: vec![],
        })
        .await
        .unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let first = author.publish(&repo, &src).await;
    written_back(&pds, &did, &first.manifest).await;
    let follower = TestNode::spawn_with(config(&pds, &work.path().join("follower"))).await;
    follow_record(&follower, &did, &repo, "site").await;
    eventually(30, "the follower takes the record's state", || async {
        follower.materialized(&repo).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;

    // A second state arrives by gossip; the follower's copy of the record
    // still names the first.
    add_commit(&src, "update");
    let second = author.publish(&repo, &src).await;
    eventually(30, "the follower takes the second state", || async {
        follower.materialized(&repo).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;

    // A stranger announces the first state, signed by itself, at the highest
    // seq: directly to both knots and on the topic.
    let stranger = Stranger::spawn(iroh::SecretKey::generate()).await;
    let statement = Statement {
        repo_id: repo.clone(),
        head: first.head.clone(),
        manifest: *knotd::record::parse_hash_hex(&first.manifest)
            .unwrap()
            .as_bytes(),
        seq: u64::MAX,
        publisher: *stranger.key.public().as_bytes(),
    }
    .sign(&stranger.key);
    let bytes = Announcement::new(statement, &stranger.key, vec![]).encode();
    stranger.push(&follower, bytes.clone()).await.unwrap();
    stranger.push(&author, bytes.clone()).await.unwrap();
    let mut topic = stranger.join(&repo, &follower).await;
    topic.broadcast(bytes.into()).await.unwrap();
    eventually(10, "both knots refuse it", || async {
        untrusted(&follower).await >= 1 && untrusted(&author).await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for node in [&follower, &author] {
        assert_eq!(
            node.materialized(&repo).await.as_deref(),
            Some(second.manifest.as_str())
        );
    }

    // Later publishes still go through and are followed.
    add_commit(&src, "later");
    let third = author.publish(&repo, &src).await;
    eventually(30, "the follower keeps following", || async {
        follower.materialized(&repo).await.as_deref() == Some(third.manifest.as_str())
    })
    .await;
    written_back(&pds, &did, &third.manifest).await;
    drop(topic);
    stranger.stop().await;
    follower.stop().await;
    author.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_from_the_record_is_revoked_also_after_a_restart() {
    let Some(pds) = start_pds().await else {
        return;
    };
    let (did, password) = pds.create_account("revoke").await;
    let repo = format!("{did}/site");
    let work = tempfile::tempdir().unwrap();
    let author = TestNode::spawn_with(
        author_config(&pds, &work.path().join("author"), &did, &password).await,
    )
    .await;
    author
        .admin(Command::AddRepo {
            repo_id: rid(&repo),
            pds: Some(pds.pds.clone()),
            record: None,
            peers: vec![],
        })
        .await
        .unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let first = author.publish(&repo, &src).await;
    written_back(&pds, &did, &first.manifest).await;

    // The owner's second machine, listed in the record by the owner.
    let laptop = TestNode::spawn_with(config(&pds, &work.path().join("laptop"))).await;
    follow_record(&laptop, &did, &repo, "site").await;
    eventually(30, "the laptop replicates", || async {
        laptop.materialized(&repo).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;
    let mut record = pds.get_record(&did, "app.knot.repo", "site").await.unwrap();
    let with_laptop = record["peers"].as_array().unwrap().clone();
    let mut peers = with_laptop.clone();
    peers.push(serde_json::json!({"nodeId": laptop.node.id().to_string()}));
    record["peers"] = peers.into();
    pds.put_record(&did, &password, "app.knot.repo", "site", record.clone())
        .await;

    let follower_config = config(&pds, &work.path().join("follower"));
    let follower = TestNode::spawn_with(follower_config.clone()).await;
    follow_record(&follower, &did, &repo, "site").await;
    eventually(30, "the follower replicates", || async {
        follower.materialized(&repo).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;

    // The laptop publishes: trusted through the record.
    let laptop_work = work.path().join("laptop-work");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            laptop.repo_path(&repo).to_str().unwrap(),
            laptop_work.to_str().unwrap(),
        ],
    );
    add_commit(&laptop_work, "from-laptop");
    let second = laptop.publish(&repo, &laptop_work).await;
    eventually(30, "the follower takes the laptop's state", || async {
        follower.materialized(&repo).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;

    // The owner removes the laptop from the record; the follower reads it.
    record["peers"] = with_laptop.into();
    pds.put_record(&did, &password, "app.knot.repo", "site", record)
        .await;
    follower
        .admin(Command::Sync {
            repo_id: rid(&repo),
        })
        .await
        .unwrap();
    let refused = untrusted(&follower).await;
    add_commit(&laptop_work, "revoked-1");
    laptop.publish(&repo, &laptop_work).await;
    eventually(15, "the follower refuses the revoked laptop", || async {
        untrusted(&follower).await > refused
    })
    .await;
    assert_eq!(
        follower.materialized(&repo).await.as_deref(),
        Some(second.manifest.as_str())
    );

    // Also after a restart.
    let follower = follower.restart_with(follower_config).await;
    add_commit(&laptop_work, "revoked-2");
    laptop.publish(&repo, &laptop_work).await;
    eventually(30, "the restarted follower refuses it too", || async {
        untrusted(&follower).await >= 1
    })
    .await;
    assert_eq!(
        follower.materialized(&repo).await.as_deref(),
        Some(second.manifest.as_str())
    );

    // The peer that remains in the record is still trusted.
    add_commit(&src, "from-author");
    let next = author.try_publish(&repo, &src, true).await.unwrap();
    eventually(30, "the follower follows the author", || async {
        follower.materialized(&repo).await.as_deref() == Some(next.manifest.as_str())
    })
    .await;
    for node in [follower, laptop, author] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_revokes_its_peers() {
    let Some(pds) = start_pds().await else {
        return;
    };
    let (did, password) = pds.create_account("deleted").await;
    let repo = format!("{did}/site");
    let work = tempfile::tempdir().unwrap();
    let author = TestNode::spawn_with(
        author_config(&pds, &work.path().join("author"), &did, &password).await,
    )
    .await;
    author
        .admin(Command::AddRepo {
            repo_id: rid(&repo),
            pds: Some(pds.pds.clone()),
            record: None,
            peers: vec![],
        })
        .await
        .unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let first = author.publish(&repo, &src).await;
    written_back(&pds, &did, &first.manifest).await;

    // The owner's second machine, listed in the record by the owner.
    let laptop = TestNode::spawn_with(config(&pds, &work.path().join("laptop"))).await;
    follow_record(&laptop, &did, &repo, "site").await;
    eventually(30, "the laptop replicates", || async {
        laptop.materialized(&repo).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;
    let mut record = pds.get_record(&did, "app.knot.repo", "site").await.unwrap();
    let mut peers = record["peers"].as_array().unwrap().clone();
    peers.push(serde_json::json!({"nodeId": laptop.node.id().to_string()}));
    record["peers"] = peers.into();
    pds.put_record(&did, &password, "app.knot.repo", "site", record)
        .await;
    let follower = TestNode::spawn_with(config(&pds, &work.path().join("follower"))).await;
    follow_record(&follower, &did, &repo, "site").await;
    eventually(30, "the follower replicates", || async {
        follower.materialized(&repo).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;
    let laptop_work = work.path().join("laptop-work");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            laptop.repo_path(&repo).to_str().unwrap(),
            laptop_work.to_str().unwrap(),
        ],
    );
    add_commit(&laptop_work, "from-laptop");
    let second = laptop.publish(&repo, &laptop_work).await;
    eventually(30, "the follower takes the laptop's state", || async {
        follower.materialized(&repo).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;

    // The owner deletes the record; the follower reads that it is gone.
    pds.delete_record(&did, &password, "app.knot.repo", "site")
        .await;
    let synced = follower
        .admin(Command::Sync {
            repo_id: rid(&repo),
        })
        .await
        .unwrap();
    let Payload::Synced(report) = synced else {
        panic!("{synced:?}")
    };
    assert!(
        report.message.contains("no longer trusted"),
        "{}",
        report.message
    );
    let summary = follower.summary(&repo).await.unwrap();
    assert!(summary.record_deleted, "{summary:?}");
    assert_eq!(summary.trusted_peers, 0, "{summary:?}");

    // The laptop keeps publishing: refused, the state held stays served.
    let refused = untrusted(&follower).await;
    add_commit(&laptop_work, "after-deletion");
    laptop.publish(&repo, &laptop_work).await;
    eventually(15, "the follower refuses the revoked laptop", || async {
        untrusted(&follower).await > refused
    })
    .await;
    assert_eq!(
        follower.materialized(&repo).await.as_deref(),
        Some(second.manifest.as_str())
    );
    for node in [follower, laptop, author] {
        node.stop().await;
    }
}
