//! Accounts, write-backs, the record reader and a node's read schedule
//! against an in-process fake PDS and PLC directory that misbehaves on
//! purpose (`tests/xrpc_fake`).

mod common;
mod xrpc_fake;

use std::time::Duration;

use knotd::{
    account::{Account, Credentials, WriteOutcome},
    admin::Command,
    atproto::AtprotoError,
    core::RecordPoll,
    record::COLLECTION,
    repo_id::RepoId,
};
use serde_json::json;

use xrpc_fake::*;

#[tokio::test]
async fn the_account_reuses_and_refreshes_its_session() {
    let (fake, base) = start_fake().await;
    let mut account = account(&base, ALICE, PASSWORD);
    let written = bounded(account.write_back(&write_request("website", '1', 1)))
        .await
        .unwrap();
    assert!(matches!(written, WriteOutcome::Written(r) if r.head == Some("1".repeat(40))));
    assert_eq!(fake.count("com.atproto.server.createSession"), 1);

    // The cached session is reused.
    bounded(account.write_back(&write_request("website", '2', 2)))
        .await
        .unwrap();
    assert_eq!(fake.count("com.atproto.server.createSession"), 1);

    // An expired access token is refreshed and the write retried once.
    fake.expire_access_tokens();
    bounded(account.write_back(&write_request("website", '3', 3)))
        .await
        .unwrap();
    assert_eq!(fake.count("com.atproto.server.refreshSession"), 1);
    assert_eq!(fake.count("com.atproto.server.createSession"), 1);
    assert_eq!(fake.count("com.atproto.repo.putRecord"), 4);

    // When the refresh is refused too, the account logs in again.
    fake.expire_access_tokens();
    fake.0.lock().unwrap().refresh_broken = true;
    bounded(account.write_back(&write_request("website", '4', 4)))
        .await
        .unwrap();
    assert_eq!(fake.count("com.atproto.server.refreshSession"), 2);
    assert_eq!(fake.count("com.atproto.server.createSession"), 2);

    let s = fake.0.lock().unwrap();
    let last = s.written.last().unwrap();
    assert_eq!(last["record"]["$type"], COLLECTION);
    assert_eq!(last["record"]["repoId"], "did:plc:alice/website");
    assert_eq!(last["record"]["head"], "4".repeat(40));
    assert_eq!(last["record"]["seq"], 4);
    assert_eq!(last["validate"], false);
    assert_eq!(
        last["swapRecord"], "bafyrei3",
        "compare-and-swap on the CID read"
    );
    assert_eq!(s.written.len(), 4);
}

#[tokio::test]
async fn account_errors_never_show_the_password() {
    let (fake, base) = start_fake().await;
    let secret = "wrong-secret-98765";
    let mut wrong = account(&base, ALICE, secret);
    let err = bounded(wrong.write_back(&write_request("website", '1', 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, AtprotoError::Auth { .. }), "{err:?}");
    let text = format!("{err} {err:?} {wrong:?}");
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains(ALICE), "{text}");
    assert_eq!(fake.count("com.atproto.repo.putRecord"), 0);

    // A login that turns out to be another account is refused.
    let mut other = account(&base, ALICE, BOB_PASSWORD);
    let err = bounded(other.write_back(&write_request("website", '1', 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, AtprotoError::Credentials { .. }), "{err:?}");
    assert!(!err.to_string().contains(BOB_PASSWORD));

    // A repository of another DID is never written, and nothing is sent.
    let sessions = fake.count("com.atproto.server.createSession");
    let mut alice = account(&base, ALICE, PASSWORD);
    let mut foreign = write_request("website", '1', 1);
    foreign.repo_id = RepoId::parse("did:plc:bob/website").unwrap();
    let err = bounded(alice.write_back(&foreign)).await.unwrap_err();
    assert!(matches!(err, AtprotoError::Credentials { .. }), "{err:?}");
    assert_eq!(fake.count("com.atproto.server.createSession"), sessions);
    assert_eq!(fake.count("com.atproto.repo.putRecord"), 0);
    for token in &fake.0.lock().unwrap().auth_seen {
        assert!(!text.contains(token.as_str()));
    }
}

#[tokio::test]
async fn credentials_go_only_over_https() {
    let (fake, base) = start_fake().await;
    let config = knotd::config::AtprotoConfig {
        plc_directory: base.clone(),
        ..Default::default()
    };
    let mut account = Account::new(client(), Credentials::new(ALICE, PASSWORD), &config);
    let err = bounded(account.write_back(&write_request("website", '1', 1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    assert_eq!(fake.count("com.atproto.server.createSession"), 0);
    assert_eq!(fake.count("com.atproto.repo.putRecord"), 0);
}

#[tokio::test]
async fn an_owner_edit_during_a_write_back_is_kept() {
    let (fake, base) = start_fake().await;
    let mut account = account(&base, ALICE, PASSWORD);
    bounded(account.write_back(&write_request("website", '1', 1)))
        .await
        .unwrap();
    // Between this write-back's read and its write, the owner replaces the
    // peers with another one and adds a field of its own.
    let owner_peer = iroh::SecretKey::from_bytes(&[9; 32]).public().to_string();
    fake.0.lock().unwrap().race = Some(json!({
        "$type": COLLECTION,
        "repoId": "did:plc:alice/website",
        "manifest": "e".repeat(64),
        "seq": 1,
        "description": "kept",
        "peers": [{"nodeId": owner_peer}],
    }));
    let outcome = bounded(account.write_back(&write_request("website", '2', 2)))
        .await
        .unwrap();
    let WriteOutcome::Written(record) = outcome else {
        panic!("{outcome:?}")
    };
    let ids: Vec<&str> = record.peers.iter().map(|p| p.node_id.as_str()).collect();
    assert!(ids.contains(&owner_peer.as_str()), "{ids:?}");
    assert_eq!(
        ids.len(),
        2,
        "only the owner's peers and this node: {ids:?}"
    );
    let s = fake.0.lock().unwrap();
    assert_eq!(s.written.last().unwrap()["record"]["description"], "kept");
    assert_eq!(s.written.last().unwrap()["record"]["head"], "2".repeat(40));
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    let (fake, base) = start_fake().await;
    fake.0.lock().unwrap().rate_limit_next = true;
    let err = fetch(&base, "website").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{err}");
    assert!(err.to_string().contains("429"), "{err}");
}

#[tokio::test]
async fn a_reader_sorts_what_it_reads() {
    let (fake, base) = start_fake().await;
    let r = reader(&base);
    let (found, retry) =
        bounded(r.poll_record(&rid("website"), &locator(Some(&base), ALICE, "website"))).await;
    assert!(
        matches!(&found, RecordPoll::Found(rec) if rec.head.is_none()),
        "{found:?}"
    );
    assert_eq!(retry, None);
    fake.set_head("website", &"c".repeat(40));
    let (found, _) =
        bounded(r.poll_record(&rid("website"), &locator(Some(&base), ALICE, "website"))).await;
    assert!(matches!(&found, RecordPoll::Found(rec) if rec.head == Some("c".repeat(40))));
    let (missing, _) =
        bounded(r.poll_record(&rid("missing"), &locator(Some(&base), ALICE, "missing"))).await;
    assert!(matches!(missing, RecordPoll::NotFound(_)), "{missing:?}");
    let (failing, _) =
        bounded(r.poll_record(&rid("fail500"), &locator(Some(&base), ALICE, "fail500"))).await;
    assert!(
        matches!(failing, RecordPoll::Unreachable(ref e) if e.contains("500")),
        "{failing:?}"
    );
    // A rate-limiting PDS's wait reaches the core's schedule.
    fake.0.lock().unwrap().rate_limit_next = true;
    let (limited, retry) =
        bounded(r.poll_record(&rid("website"), &locator(Some(&base), ALICE, "website"))).await;
    assert!(matches!(limited, RecordPoll::Unreachable(_)), "{limited:?}");
    assert_eq!(retry, Some(Duration::from_secs(7)));
    // A locator of another owner is refused without a request.
    let before = fake.count("get:website");
    let (foreign, _) =
        bounded(r.poll_record(&rid("website"), &locator(Some(&base), BOB, "website"))).await;
    assert!(!matches!(foreign, RecordPoll::Found(_)), "{foreign:?}");
    assert_eq!(fake.count("get:website"), before);
}

#[tokio::test]
async fn a_reader_reuses_the_resolved_pds_until_a_read_through_it_fails() {
    let (fake, base) = start_fake().await;
    let r = reader(&base);
    let resolutions = || fake.count(&format!("plc:{ALICE}"));
    for _ in 0..3 {
        let (found, _) =
            bounded(r.poll_record(&rid("flaky"), &locator(None, ALICE, "flaky"))).await;
        assert!(matches!(found, RecordPoll::Found(_)), "{found:?}");
    }
    assert_eq!(resolutions(), 1, "resolved once for three reads");
    // Clones share what was resolved.
    let (found, _) = bounded(
        r.clone()
            .poll_record(&rid("other"), &locator(None, ALICE, "other")),
    )
    .await;
    assert!(matches!(found, RecordPoll::Found(_)));
    assert_eq!(resolutions(), 1);
    fake.set_failing("flaky", true);
    let (failed, _) = bounded(r.poll_record(&rid("flaky"), &locator(None, ALICE, "flaky"))).await;
    assert!(matches!(failed, RecordPoll::Unreachable(_)), "{failed:?}");
    fake.set_failing("flaky", false);
    let (found, _) = bounded(r.poll_record(&rid("flaky"), &locator(None, ALICE, "flaky"))).await;
    assert!(matches!(found, RecordPoll::Found(_)));
    assert_eq!(resolutions(), 2, "a failed read resolves the PDS again");
}

/// A node reads its records on the core's schedule: a healthy record every
/// interval, a failing one less and less often, and says what failed.
#[tokio::test]
async fn a_node_reads_records_on_the_schedule_and_backs_off_failures() {
    let (fake, base) = start_fake().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = knotd::config::Config::local(tmp.path());
    config.atproto.poll_interval_secs = 1;
    // Not stretched while unchanged (see the next test).
    config.atproto.max_poll_interval_secs = 1;
    config.atproto.poll_jitter = 0.0;
    config.atproto.max_backoff_secs = 60;
    config.atproto.plc_directory = base.clone();
    let node = common::TestNode::spawn_with(config).await;
    for name in ["healthy", "fail500"] {
        node.admin(Command::AddRepo {
            repo_id: rid(name),
            pds: Some(base.clone()),
            record: Some(format!("at://{ALICE}/{COLLECTION}/{name}")),
            peers: vec![],
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let healthy = fake.count("get:healthy");
    let failing = fake.count("get:fail500");
    // Healthy: at 0, 1, 2, 3, 4, 5 s. Failing: at 0, 2, then 6 s.
    assert!(
        (4..=7).contains(&healthy),
        "healthy record read {healthy} times"
    );
    assert!(
        (2..=3).contains(&failing),
        "failing record read {failing} times"
    );
    let summary = node.summary(&rid("fail500").to_string()).await.unwrap();
    let error = summary.last_error.unwrap_or_default();
    assert!(error.contains("500"), "{error}");
    // Removing a repository stops its reads.
    node.admin(Command::RemoveRepo {
        repo_id: rid("healthy"),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped_at = fake.count("get:healthy");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fake.count("get:healthy"), stopped_at);
    node.stop().await;
}

/// A record that reads unchanged is read less and less often, and every
/// interval again once it changes.
#[tokio::test]
async fn an_unchanged_record_is_read_less_and_less_often() {
    let (fake, base) = start_fake().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = knotd::config::Config::local(tmp.path());
    config.atproto.poll_interval_secs = 1;
    config.atproto.max_poll_interval_secs = 60;
    config.atproto.poll_jitter = 0.0;
    config.atproto.plc_directory = base.clone();
    let node = common::TestNode::spawn_with(config).await;
    node.admin(Command::AddRepo {
        repo_id: rid("quiet"),
        pds: Some(base.clone()),
        record: Some(format!("at://{ALICE}/{COLLECTION}/quiet")),
        peers: vec![],
    })
    .await
    .unwrap();
    // At 0 (new), 1, 3 and 7 s: four reads in 7.5 s, not eight.
    tokio::time::sleep(Duration::from_millis(7500)).await;
    let reads = fake.count("get:quiet");
    assert!(
        (3..=5).contains(&reads),
        "unchanged record read {reads} times"
    );
    // The record changes: the read at 15 s sees it, so the next comes one
    // interval later (16 s), then two (18 s): two reads by 17.5 s.
    fake.set_head("quiet", &"c".repeat(40));
    let changed_at = fake.count("get:quiet");
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    let after_change = fake.count("get:quiet") - changed_at;
    assert!(
        (2..=3).contains(&after_change),
        "read {after_change} times after the change"
    );
    node.stop().await;
}
