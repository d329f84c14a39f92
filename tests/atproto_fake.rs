//! The XRPC client and record fetches against an in-process fake PDS and
//! PLC directory that misbehaves on purpose (`tests/xrpc_fake`).

mod xrpc_fake;

use std::time::{Duration, Instant};

use knotd::{
    atproto::{AtprotoError, MAX_BODY, fetch_repo_record, fetch_repo_record_at},
    record::{COLLECTION, RecordError},
};

use xrpc_fake::*;

#[tokio::test]
async fn valid_record_is_parsed() {
    let (fake, base) = start_fake().await;
    let head = "a".repeat(40);
    fake.set_head("website", &head);
    let record = bounded(fetch(&base, "website")).await.unwrap();
    assert_eq!(record.repo_id, rid("website"));
    assert_eq!(record.head.as_deref(), Some(head.as_str()));
    let raw = bounded(client().get_record(&base, ALICE, COLLECTION, "website"))
        .await
        .unwrap();
    assert_eq!(raw.cid.as_deref(), Some("bafyreifake"));
    assert_eq!(
        raw.uri.as_deref(),
        Some("at://did:plc:alice/app.knot.repo/website")
    );
}

#[tokio::test]
async fn pds_down_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = bounded(fetch(&base, "website")).await.unwrap_err();
    assert!(matches!(err, AtprotoError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&base), "{err}");
}

#[tokio::test]
async fn slow_pds_times_out() {
    let (_fake, base) = start_fake().await;
    let started = Instant::now();
    let err = bounded(fetch(&base, "slow")).await.unwrap_err();
    assert!(matches!(err, AtprotoError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains("request_timeout_secs"), "{err}");
}

#[tokio::test]
async fn http_errors_carry_the_xrpc_error() {
    let (_fake, base) = start_fake().await;
    match bounded(fetch(&base, "fail500")).await.unwrap_err() {
        AtprotoError::Status {
            status,
            error,
            message,
            ..
        } => {
            assert_eq!(status, 500);
            assert_eq!(error.as_deref(), Some("InternalServerError"));
            assert_eq!(message.as_deref(), Some("database unavailable"));
        }
        other => panic!("{other:?}"),
    }
    let err = bounded(fetch(&base, "fail400")).await.unwrap_err();
    assert_eq!(err.xrpc_error(), Some("InvalidRequest"));
    assert!(err.to_string().contains("HTTP 400 InvalidRequest"), "{err}");
    match bounded(fetch(&base, "html502")).await.unwrap_err() {
        AtprotoError::Status {
            status: 502,
            error: None,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let err = bounded(fetch(&base, "missing")).await.unwrap_err();
    assert!(matches!(err, AtprotoError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("at://did:plc:alice/app.knot.repo/missing"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_and_oversize_responses_are_refused() {
    let (_fake, base) = start_fake().await;
    for name in ["malformed", "novalue"] {
        let err = bounded(fetch(&base, name)).await.unwrap_err();
        assert!(matches!(err, AtprotoError::Malformed { .. }), "{err:?}");
    }
    for name in ["oversize", "oversizelen"] {
        let err = bounded(fetch(&base, name)).await.unwrap_err();
        assert!(
            matches!(err, AtprotoError::Oversize { limit, .. } if limit == MAX_BODY),
            "{name}: {err:?}"
        );
    }
    let err = bounded(fetch(&base, "invalid")).await.unwrap_err();
    assert!(
        matches!(
            err,
            AtprotoError::Record(RecordError::InvalidField { field: "head", .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn records_of_other_repositories_are_rejected() {
    let (fake, base) = start_fake().await;
    let err = bounded(fetch(&base, "wrongrepo")).await.unwrap_err();
    assert!(
        matches!(
            err,
            AtprotoError::Record(RecordError::RepoIdMismatch { .. })
        ),
        "{err:?}"
    );
    let err = bounded(fetch(&base, "otheruri")).await.unwrap_err();
    assert!(
        matches!(
            err,
            AtprotoError::Record(RecordError::RepoIdMismatch { .. })
        ),
        "{err:?}"
    );
    // A locator in another account's repository is refused before any request.
    let err = bounded(fetch_repo_record(
        &client(),
        &base,
        &locator(Some(&base), BOB, "website"),
        &rid("website"),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            AtprotoError::Record(RecordError::RepoIdMismatch { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(BOB), "{err}");
    let err = bounded(fetch_repo_record_at(
        &client(),
        &base,
        &locator(None, BOB, "website"),
        &rid("website"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, AtprotoError::Record(_)), "{err:?}");
    assert_eq!(fake.count("get:website"), 0);
}

#[tokio::test]
async fn pds_is_resolved_through_the_plc_directory() {
    let (fake, base) = start_fake().await;
    let c = client();
    assert_eq!(bounded(c.resolve_pds(&base, ALICE)).await.unwrap(), base);
    let err = bounded(c.resolve_pds(&base, "did:plc:nobody"))
        .await
        .unwrap_err();
    assert!(matches!(err, AtprotoError::NoPds { .. }), "{err:?}");
    let err = bounded(c.resolve_pds(&base, "did:key:z6Mkabc"))
        .await
        .unwrap_err();
    assert!(matches!(err, AtprotoError::NoPds { .. }), "{err:?}");
    fake.set_head("website", &"b".repeat(40));
    let record = bounded(fetch_repo_record(
        &c,
        &base,
        &locator(None, ALICE, "website"),
        &rid("website"),
    ))
    .await
    .unwrap();
    assert_eq!(record.head, Some("b".repeat(40)));
    assert_eq!(fake.count(&format!("plc:{ALICE}")), 2);
}

#[tokio::test]
async fn a_handle_is_shown_only_when_it_resolves_back_to_the_did() {
    let (fake, base) = start_fake().await;
    let c = client();
    let handle = bounded(c.verified_handle(&base, &base, ALICE))
        .await
        .unwrap();
    assert_eq!(handle.as_deref(), Some("alice.test"));
    // Alice's DID document claims alice.test, but the handle names another
    // DID: the claim does not hold.
    fake.0.lock().unwrap().alice_test_owner = Some(BOB.into());
    let handle = bounded(c.verified_handle(&base, &base, ALICE))
        .await
        .unwrap();
    assert_eq!(handle, None);
    // A DID with no document: an error, not a handle.
    assert!(
        bounded(c.verified_handle(&base, &base, "did:plc:nobody"))
            .await
            .is_err()
    );
}
