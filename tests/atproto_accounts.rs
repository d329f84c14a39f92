//! ATProto done safely, against the real PDS with two accounts: credentials
//! go only to the node's own account, a write-back keeps the owner's edits,
//! and following an identity tracks the records it adds and deletes.

mod common;
#[path = "common/pds.rs"]
mod pds;
#[path = "common/proxy.rs"]
mod proxy;

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use common::{TestNode, eventually, make_repo, rid};
use knotd::{
    admin::{Command, Payload},
    config::Config,
};
use pds::TestPds;
use proxy::RecordingProxy;
use serde_json::json;

async fn start_pds() -> Option<TestPds> {
    tokio::task::spawn_blocking(TestPds::start).await.unwrap()
}

fn config(pds: &TestPds, dir: &Path) -> Config {
    let mut config = Config::local(dir);
    config.atproto.plc_directory = pds.plc.clone();
    config.atproto.poll_interval_secs = 300;
    config.atproto.allow_insecure_http = true;
    config
}

/// A knot holding `did`'s app password.
async fn account_config(pds: &TestPds, dir: &Path, did: &str, password: &str) -> Config {
    let app_password = pds.create_app_password(did, password).await;
    std::fs::create_dir_all(dir).unwrap();
    let secret = dir.join("app-password");
    std::fs::write(&secret, format!("{app_password}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = config(pds, &dir.join("data"));
    config.atproto.identifier = Some(did.to_string());
    config.atproto.app_password_file = Some(secret);
    config
}

async fn add_with_pds(node: &TestNode, repo: &str, pds: &str) {
    node.admin(Command::AddRepo {
        repo_id: rid(repo),
        pds: Some(pds.to_string()),
        record: None,
        peers: vec![],
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_go_to_another_accounts_pds() {
    let Some(pds) = start_pds().await else {
        return;
    };
    let (alice, alice_pw) = pds.create_account("alice").await;
    let (bob, _) = pds.create_account("bob").await;
    let work = tempfile::tempdir().unwrap();
    let node =
        TestNode::spawn_with(account_config(&pds, &work.path().join("n"), &alice, &alice_pw).await)
            .await;
    // Bob's repository is followed through a proxy that records every request.
    let proxy = RecordingProxy::start(&pds.pds).await;
    let bobs = format!("{bob}/site");
    add_with_pds(&node, &bobs, &proxy.url).await;
    let src = work.path().join("src");
    make_repo(&src);
    node.publish(&bobs, &src).await;
    // Alice's own repository, for comparison, is written back.
    let alices = format!("{alice}/site");
    add_with_pds(&node, &alices, &pds.pds).await;
    let own = node.publish(&alices, &src).await;
    eventually(30, "alice's record is written back", || async {
        pds.get_record(&alice, "app.knot.repo", "site")
            .await
            .is_some_and(|r| r["manifest"] == own.manifest.as_str())
    })
    .await;
    node.admin(Command::Sync {
        repo_id: rid(&bobs),
    })
    .await
    .ok();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let seen = proxy.seen();
    assert!(!seen.is_empty(), "bob's record was read through the proxy");
    for s in &seen {
        assert!(
            !s.credentials,
            "credentials sent for bob's repository: {s:?}"
        );
        assert_eq!(s.method, "GET", "only reads reach bob's PDS: {s:?}");
        assert!(
            !s.path.contains("createSession")
                && !s.path.contains("refreshSession")
                && !s.path.contains("putRecord"),
            "{s:?}"
        );
    }
    assert!(
        pds.get_record(&bob, "app.knot.repo", "site")
            .await
            .is_none(),
        "nothing was written into bob's repository"
    );
    let summary = node.summary(&bobs).await.unwrap();
    assert!(!summary.write_back_pending, "{summary:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_the_owner_removed_stays_removed() {
    let Some(pds) = start_pds().await else {
        return;
    };
    let (did, password) = pds.create_account("siteowner").await;
    let work = tempfile::tempdir().unwrap();
    let node =
        TestNode::spawn_with(account_config(&pds, &work.path().join("n"), &did, &password).await)
            .await;
    let repo = format!("{did}/site");
    add_with_pds(&node, &repo, &pds.pds).await;
    let src = work.path().join("src");
    make_repo(&src);
    let first = node.publish(&repo, &src).await;
    eventually(30, "the record is written back", || async {
        pds.get_record(&did, "app.knot.repo", "site")
            .await
            .is_some_and(|r| r["manifest"] == first.manifest.as_str())
    })
    .await;

    // The owner adds a peer, the node reads the record, the owner removes
    // the peer again: the node's copy still lists it.
    let extra = iroh::SecretKey::generate().public().to_string();
    let mut record = pds.get_record(&did, "app.knot.repo", "site").await.unwrap();
    let without = record["peers"].clone();
    record["peers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"nodeId": extra}));
    record["note"] = "the owner's".into();
    pds.put_record(&did, &password, "app.knot.repo", "site", record.clone())
        .await;
    node.admin(Command::Sync {
        repo_id: rid(&repo),
    })
    .await
    .unwrap();
    record["peers"] = without;
    pds.put_record(&did, &password, "app.knot.repo", "site", record)
        .await;

    // A publish now writes back: the removed peer stays removed.
    common::add_commit(&src, "update");
    let second = node.publish(&repo, &src).await;
    eventually(30, "the update is written back", || async {
        pds.get_record(&did, "app.knot.repo", "site")
            .await
            .is_some_and(|r| r["manifest"] == second.manifest.as_str())
    })
    .await;
    let written = pds.get_record(&did, "app.knot.repo", "site").await.unwrap();
    let peers = written["peers"].as_array().unwrap();
    assert!(
        !peers.iter().any(|p| p["nodeId"] == extra.as_str()),
        "the removed peer came back: {written}"
    );
    assert!(
        peers
            .iter()
            .any(|p| p["nodeId"] == node.node.id().to_string().as_str())
    );
    assert_eq!(written["note"], "the owner's", "the owner's field is kept");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_an_identity_tracks_new_records_and_retires_deleted_ones() {
    let Some(pds) = start_pds().await else {
        return;
    };
    let (did, password) = pds.create_account("knotorg").await;
    let work = tempfile::tempdir().unwrap();
    // The organisation's repositories are published on a knot of its own;
    // their records are written by the owner.
    let publisher = TestNode::spawn_with(config(&pds, &work.path().join("p"))).await;
    let hint =
        json!({"nodeId": publisher.node.id().to_string(), "ticket": publisher.ticket().await});
    let publish = |name: &'static str| {
        let src = work.path().join(name);
        make_repo(&src);
        let repo = format!("{did}/{name}");
        let publisher = &publisher;
        let pds = &pds;
        let password = password.clone();
        let hint = hint.clone();
        let did = did.clone();
        async move {
            let report = publisher.publish(&repo, &src).await;
            pds.put_record(
                &did,
                &password,
                "app.knot.repo",
                name,
                json!({
                    "$type": "app.knot.repo",
                    "repoId": repo,
                    "head": report.head,
                    "manifest": report.manifest,
                    "peers": [hint],
                }),
            )
            .await;
            report
        }
    };
    let one = publish("one").await;
    let two = publish("two").await;

    let mut seeder_config = config(&pds, &work.path().join("s"));
    seeder_config.atproto.poll_interval_secs = 1;
    let seeder = TestNode::spawn_with(seeder_config).await;
    let Payload::Done { message } = seeder
        .admin(Command::Follow {
            identity: did.clone(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(message.contains("2 repositories"), "{message}");
    for (name, report) in [("one", &one), ("two", &two)] {
        let repo = format!("{did}/{name}");
        eventually(
            30,
            "the seeder replicates what the identity lists",
            || async {
                seeder.materialized(&repo).await.as_deref() == Some(report.manifest.as_str())
            },
        )
        .await;
    }

    // A record created afterwards is picked up; a deleted one is retired.
    let three = publish("three").await;
    let repo_three = format!("{did}/three");
    eventually(30, "a new record is picked up", || async {
        seeder.materialized(&repo_three).await.as_deref() == Some(three.manifest.as_str())
    })
    .await;
    pds.delete_record(&did, &password, "app.knot.repo", "one")
        .await;
    let repo_one = format!("{did}/one");
    eventually(30, "a deleted record is noticed", || async {
        seeder
            .summary(&repo_one)
            .await
            .is_some_and(|s| s.record_deleted)
    })
    .await;
    let retired = seeder.summary(&repo_one).await.unwrap();
    assert_eq!(
        retired.materialized.as_deref(),
        Some(one.manifest.as_str()),
        "its content stays"
    );
    let Payload::Status(status) = seeder.admin(Command::Status).await.unwrap() else {
        panic!()
    };
    assert_eq!(status.follows.len(), 1);
    assert_eq!(status.follows[0].repos, 3);

    seeder
        .admin(Command::Unfollow {
            identity: did.clone(),
        })
        .await
        .unwrap();
    assert!(seeder.repo_ids().await.is_empty());
    seeder.stop().await;
    publisher.stop().await;
}
