//! The XRPC client, record writer and record reader against the real reference PDS
//! (`tests/pds`), with DIDs resolved through its local PLC directory.

#[path = "common/pds.rs"]
mod pds;

use std::time::Duration;

use knotd::{
    account::{Account, Credentials, WriteBackRequest, WriteOutcome},
    atproto::{AtprotoError, XrpcClient, fetch_repo_record},
    config::AtprotoConfig,
    core::RecordPoll,
    reader::Reader,
    record::{COLLECTION, PeerHint, RepoRecord},
    repo_id::RepoId,
    state::Locator,
};
use pds::TestPds;

async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_through_a_real_pds() {
    let Some(pds) = tokio::task::spawn_blocking(TestPds::start)
        .await
        .expect("start the test PDS")
    else {
        return;
    };
    let (did, password) = bounded("createAccount", pds.create_account("alice")).await;
    let app_password = bounded(
        "createAppPassword",
        pds.create_app_password(&did, &password),
    )
    .await;
    let repo_id = RepoId::parse(&format!("{did}/website")).unwrap();
    let client = XrpcClient::new(Duration::from_secs(10));

    let mut record = RepoRecord::empty(repo_id.clone());
    record.head = Some("a".repeat(40));
    record.manifest = Some("b".repeat(64));
    record.peers = vec![PeerHint::new(
        iroh::SecretKey::from_bytes(&[7; 32]).public().to_string(),
        vec!["127.0.0.1:4919".into()],
        None,
    )];

    let config = AtprotoConfig {
        plc_directory: pds.plc.clone(),
        allow_insecure_http: true,
        ..Default::default()
    };
    let mut writer = Account::new(
        client.clone(),
        Credentials::new(&did, app_password.clone()),
        &config,
    );
    let request = |record: &RepoRecord| WriteBackRequest {
        repo_id: record.repo_id.clone(),
        collection: COLLECTION.into(),
        rkey: "website".into(),
        head: record.head.clone(),
        manifest: record.manifest.clone().unwrap(),
        seq: record.seq.unwrap_or(1),
        own: record.peers[0].clone(),
    };
    record.seq = Some(1);
    let put = bounded("first write", writer.write_back(&request(&record)))
        .await
        .unwrap();
    assert_eq!(put, WriteOutcome::Written(record.clone()));

    let raw = bounded("getRecord", pds.get_record(&did, COLLECTION, "website"))
        .await
        .expect("record exists");
    assert_eq!(raw["$type"], COLLECTION);
    assert_eq!(raw["repoId"], repo_id.as_str());

    // Read it back with the PDS given.
    let mut locator = Locator {
        pds: Some(pds.pds.clone()),
        did: did.clone(),
        collection: COLLECTION.into(),
        rkey: "website".into(),
    };
    let fetched = bounded(
        "fetch",
        fetch_repo_record(&client, &pds.plc, &locator, &repo_id),
    )
    .await
    .unwrap();
    assert_eq!(fetched, record);

    // And with the PDS resolved through the PLC directory.
    let resolved = bounded("resolve", client.resolve_pds(&pds.plc, &did))
        .await
        .unwrap();
    assert_eq!(resolved, pds.pds);
    locator.pds = None;
    let fetched = bounded(
        "fetch via PLC",
        fetch_repo_record(&client, &pds.plc, &locator, &repo_id),
    )
    .await
    .unwrap();
    assert_eq!(fetched, record);

    // A second write changes what readers see.
    record.head = Some("c".repeat(40));
    record.seq = Some(2);
    bounded("second write", writer.write_back(&request(&record)))
        .await
        .unwrap();
    let fetched = bounded(
        "fetch after change",
        fetch_repo_record(&client, &pds.plc, &locator, &repo_id),
    )
    .await
    .unwrap();
    assert_eq!(fetched.head, Some("c".repeat(40)));

    // The reader the node's schedule uses sees the same record, the PDS
    // resolved through the directory.
    let reader = Reader::new(client.clone(), pds.plc.clone());
    let mut unresolved = locator.clone();
    unresolved.pds = None;
    let (first, _) = bounded("first read", reader.poll_record(&repo_id, &unresolved)).await;
    assert_eq!(first, RecordPoll::Found(fetched));
    record.head = Some("d".repeat(40));
    record.seq = Some(3);
    bounded("third write", writer.write_back(&request(&record)))
        .await
        .unwrap();
    // An older state does not overwrite a newer record.
    let mut older = record.clone();
    older.head = Some("0".repeat(40));
    older.seq = Some(2);
    let kept = bounded("stale write", writer.write_back(&request(&older)))
        .await
        .unwrap();
    assert!(matches!(kept, WriteOutcome::Superseded(r) if r.head == record.head));
    let (polled, _) = bounded("second read", reader.poll_record(&repo_id, &unresolved)).await;
    assert!(matches!(polled, RecordPoll::Found(r) if r.head == Some("d".repeat(40))));

    // Missing records and bad passwords are reported clearly.
    let mut missing = locator.clone();
    missing.rkey = "nothing".into();
    let other = RepoId::parse(&format!("{did}/nothing")).unwrap();
    let err = bounded(
        "missing fetch",
        fetch_repo_record(&client, &pds.plc, &missing, &other),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AtprotoError::NotFound { .. }), "{err:?}");

    let mut bad = Account::new(
        client.clone(),
        Credentials::new(&did, "not-the-password"),
        &config,
    );
    record.seq = Some(4);
    let err = bounded("bad login", bad.write_back(&request(&record)))
        .await
        .unwrap_err();
    assert!(matches!(err, AtprotoError::Auth { .. }), "{err:?}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    assert!(!err.to_string().contains(&app_password), "{err}");

    tokio::task::spawn_blocking(move || drop(pds))
        .await
        .unwrap();
}
