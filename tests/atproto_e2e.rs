//! Two knots and the reference PDS: the author's knot writes the record back
//! after a publish, a second knot follows the record by polling, and when the
//! owner changes the record on the PDS the second knot follows it.

mod common;
#[path = "common/pds.rs"]
mod pds;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::{TestNode, add_commit, eventually, make_repo, rid};
use knotd::{
    admin::{Command, Payload},
    config::Config,
};
use pds::TestPds;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_poll_and_follow_the_record() {
    let Some(pds) = tokio::task::spawn_blocking(TestPds::start).await.unwrap() else {
        return;
    };
    let (did, password) = pds.create_account("author").await;
    let app_password = pds.create_app_password(&did, &password).await;
    let repo = format!("{did}/website");
    let work = tempfile::tempdir().unwrap();

    // The author's knot has write-back credentials (app password in a 0600 file).
    let secret = work.path().join("app-password");
    std::fs::write(&secret, format!("{app_password}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let author_dir = work.path().join("author");
    let mut config = Config::local(&author_dir);
    config.atproto.plc_directory = pds.plc.clone();
    config.atproto.identifier = Some(did.clone());
    config.atproto.app_password_file = Some(secret);
    config.atproto.allow_insecure_http = true;
    config.atproto.poll_interval_secs = 1;
    let author = TestNode::spawn_with(config).await;
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
    eventually(30, "the record is written back", || async {
        pds.get_record(&did, "app.knot.repo", "website")
            .await
            .is_some_and(|r| r["manifest"] == first.manifest.as_str())
    })
    .await;
    let record = pds
        .get_record(&did, "app.knot.repo", "website")
        .await
        .unwrap();
    assert_eq!(record["$type"], "app.knot.repo");
    assert_eq!(record["repoId"], repo.as_str());
    assert_eq!(record["head"], first.head.clone().unwrap().as_str());
    let peers = record["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["nodeId"], author.node.id().to_string().as_str());
    assert!(peers[0]["ticket"].as_str().unwrap().starts_with("endpoint"));
    let summary = author.summary(&repo).await.unwrap();
    assert!(!summary.write_back_pending, "{summary:?}");

    // A second knot knows only the record: it resolves the PDS through the
    // PLC directory, polls, and fetches from the peers the record names.
    let follower_dir = work.path().join("follower");
    let mut config = Config::local(&follower_dir);
    config.atproto.plc_directory = pds.plc.clone();
    config.atproto.poll_interval_secs = 1;
    let follower = TestNode::spawn_with(config).await;
    follower
        .admin(Command::AddRepo {
            repo_id: rid(&repo),
            pds: None,
            record: Some(format!("at://{did}/app.knot.repo/website")),
            peers: vec![],
        })
        .await
        .unwrap();
    eventually(
        30,
        "the follower materializes the record's state",
        || async { follower.materialized(&repo).await.as_deref() == Some(first.manifest.as_str()) },
    )
    .await;
    assert!(follower.summary(&repo).await.unwrap().last_poll.is_some());

    // An update is written back and followed.
    add_commit(&src, "update");
    let second = author.publish(&repo, &src).await;
    eventually(30, "the follower follows the update", || async {
        follower.materialized(&repo).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    eventually(30, "the update is written back", || async {
        pds.get_record(&did, "app.knot.repo", "website")
            .await
            .is_some_and(|r| r["manifest"] == second.manifest.as_str())
    })
    .await;

    // The owner changes the record on the PDS directly, back to the first
    // state: the record is authoritative, and the follower follows it.
    let mut rolled_back = pds
        .get_record(&did, "app.knot.repo", "website")
        .await
        .unwrap();
    rolled_back["manifest"] = first.manifest.clone().into();
    rolled_back["head"] = first.head.clone().unwrap().into();
    pds.put_record(&did, &password, "app.knot.repo", "website", rolled_back)
        .await;
    let Payload::Synced(report) = follower
        .admin(Command::Sync {
            repo_id: rid(&repo),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(report.manifest.as_deref(), Some(first.manifest.as_str()));
    eventually(30, "the follower follows the record", || async {
        follower.materialized(&repo).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;
    assert_eq!(
        common::git(&follower.repo_path(&repo), &["rev-parse", "HEAD"]).trim(),
        first.head.clone().unwrap()
    );

    // A third knot asked to sync a repository it never heard of follows the
    // record in the owner's repository; an id with no record leaves no trace.
    let mut config = Config::local(work.path().join("third"));
    config.atproto.plc_directory = pds.plc.clone();
    let third = TestNode::spawn_with(config).await;
    let Payload::Synced(report) = third
        .admin(Command::Sync {
            repo_id: rid(&repo),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(report.manifest.as_deref(), Some(first.manifest.as_str()));
    assert!(third.repo_path(&repo).join("objects").is_dir());
    let missing = format!("{did}/nothing-here");
    let err = third
        .admin(Command::Sync {
            repo_id: rid(&missing),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("record"), "{err}");
    assert_eq!(third.repo_ids().await, vec![repo.clone()]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    third.stop().await;
    follower.stop().await;
    author.stop().await;
}

/// A PDS that is down: the node keeps serving and reports the failure.
#[tokio::test]
async fn a_pds_that_is_down_is_reported_and_nothing_stops() {
    let work = tempfile::tempdir().unwrap();
    let mut config = Config::local(work.path().join("n"));
    config.atproto.poll_interval_secs = 1;
    config.atproto.request_timeout_secs = 1;
    let node = TestNode::spawn_with(config).await;
    let src = work.path().join("src");
    make_repo(&src);
    let repo = "did:plc:downpds/website";
    let published = node.publish(repo, &src).await;
    // Track the record on a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    node.admin(Command::AddRepo {
        repo_id: rid(repo),
        pds: Some(url),
        record: None,
        peers: vec![],
    })
    .await
    .unwrap();
    eventually(20, "the poll failure is reported", || async {
        node.summary(repo)
            .await
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("record poll failed"))
    })
    .await;
    // Sync still answers with the state held, and the node keeps serving.
    let Payload::Synced(report) = node
        .admin(Command::Sync { repo_id: rid(repo) })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(
        report.message.contains("record poll failed"),
        "{}",
        report.message
    );
    assert_eq!(
        report.manifest.as_deref(),
        Some(published.manifest.as_str())
    );
    assert!(node.admin(Command::Status).await.is_ok());
    node.stop().await;
}
