//! The XRPC client, record writer, record reader and a node's read
//! schedule against an in-process fake PDS
//! and PLC directory that misbehaves on purpose.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use knotd::{
    account::{Account, Credentials, WriteBackRequest, WriteOutcome},
    admin::Command,
    atproto::{AtprotoError, MAX_BODY, XrpcClient, fetch_repo_record, fetch_repo_record_at},
    core::RecordPoll,
    reader::Reader,
    record::{COLLECTION, RecordError, RepoRecord},
    repo_id::RepoId,
    state::Locator,
};
use serde_json::{Value, json};

mod common;

const ALICE: &str = "did:plc:alice";
const BOB: &str = "did:plc:bob";
const PASSWORD: &str = "right-pass-0123";
const BOB_PASSWORD: &str = "bob-pass-4567";
const TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Default)]
struct FakeState {
    base: String,
    requests: HashMap<String, usize>,
    heads: HashMap<String, String>,
    failing: HashSet<String>,
    next_token: usize,
    valid_access: HashSet<String>,
    valid_refresh: HashMap<String, String>,
    refresh_broken: bool,
    written: Vec<Value>,
    auth_seen: Vec<String>,
    /// Records written, by rkey: (value, cid).
    stored: HashMap<String, (Value, String)>,
    /// Applied to the stored record just before the next putRecord (the
    /// owner editing it meanwhile).
    race: Option<Value>,
    /// Answer the next request with 429 and `Retry-After: 7`.
    rate_limit_next: bool,
    /// The DID `resolveHandle` names for alice.test (default: Alice's).
    alice_test_owner: Option<String>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn count(&self, key: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .requests
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn set_head(&self, rkey: &str, head: &str) {
        self.0
            .lock()
            .unwrap()
            .heads
            .insert(rkey.into(), head.into());
    }

    fn set_failing(&self, rkey: &str, failing: bool) {
        let mut s = self.0.lock().unwrap();
        if failing {
            s.failing.insert(rkey.into());
        } else {
            s.failing.remove(rkey);
        }
    }

    fn expire_access_tokens(&self) {
        self.0.lock().unwrap().valid_access.clear();
    }

    fn issue(&self, did: &str) -> Value {
        let mut s = self.0.lock().unwrap();
        s.next_token += 1;
        let access = format!("access-{}", s.next_token);
        let refresh = format!("refresh-{}", s.next_token);
        s.valid_access.insert(access.clone());
        s.valid_refresh.insert(refresh.clone(), did.to_string());
        json!({"did": did, "handle": "alice.test", "accessJwt": access, "refreshJwt": refresh})
    }
}

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "message": message})),
    )
        .into_response()
}

fn record_json(repo: &str, rkey: &str, head: Option<&str>) -> Value {
    let mut value = json!({"$type": COLLECTION, "repoId": format!("{repo}/{rkey}")});
    if let Some(head) = head {
        value["head"] = json!(head);
    }
    value
}

async fn plc(State(fake): State<Fake>, Path(did): Path<String>) -> Response {
    let base = {
        let mut s = fake.0.lock().unwrap();
        *s.requests.entry(format!("plc:{did}")).or_default() += 1;
        s.base.clone()
    };
    if did != ALICE {
        return (StatusCode::NOT_FOUND, "DID not registered").into_response();
    }
    axum::Json(json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": ["at://alice.test"],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": base}]
    }))
    .into_response()
}

async fn resolve_handle(
    State(fake): State<Fake>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("handle").map(String::as_str) != Some("alice.test") {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Unable to resolve handle",
        );
    }
    let owner = fake.0.lock().unwrap().alice_test_owner.clone();
    axum::Json(json!({"did": owner.as_deref().unwrap_or(ALICE)})).into_response()
}

async fn get_record(
    State(fake): State<Fake>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let repo = q.get("repo").cloned().unwrap_or_default();
    let rkey = q.get("rkey").cloned().unwrap_or_default();
    let (head, failing, stored) = {
        let mut s = fake.0.lock().unwrap();
        *s.requests.entry(format!("get:{rkey}")).or_default() += 1;
        if std::mem::take(&mut s.rate_limit_next) {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "7")],
                axum::Json(json!({"error": "RateLimitExceeded", "message": "slow down"})),
            )
                .into_response();
        }
        (
            s.heads.get(&rkey).cloned(),
            s.failing.contains(&rkey),
            s.stored.get(&rkey).cloned(),
        )
    };
    if let Some((value, cid)) = stored {
        return axum::Json(json!({
            "uri": format!("at://{repo}/{COLLECTION}/{rkey}"),
            "cid": cid,
            "value": value,
        }))
        .into_response();
    }
    if failing {
        return xrpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "database unavailable",
        );
    }
    let ok = |value: Value| {
        axum::Json(json!({
            "uri": format!("at://{repo}/{COLLECTION}/{rkey}"),
            "cid": "bafyreifake",
            "value": value,
        }))
        .into_response()
    };
    match rkey.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok(record_json(&repo, &rkey, None))
        }
        "fail500" => xrpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "database unavailable",
        ),
        "fail400" => xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Error: collection must be a valid NSID",
        ),
        "html502" => (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").into_response(),
        "missing" => xrpc_error(
            StatusCode::BAD_REQUEST,
            "RecordNotFound",
            "Could not locate record",
        ),
        "malformed" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"uri\": \"at://",
        )
            .into_response(),
        "novalue" => axum::Json(json!({"uri": "at://x", "cid": "c"})).into_response(),
        "wrongrepo" => ok(record_json(&repo, "other", None)),
        "invalid" => ok(record_json(&repo, &rkey, Some("not-hex"))),
        "otheruri" => axum::Json(json!({
            "uri": format!("at://{BOB}/{COLLECTION}/{rkey}"),
            "cid": "bafyreifake",
            "value": record_json(&repo, &rkey, None),
        }))
        .into_response(),
        "oversize" => {
            let chunks =
                (0..40).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 * 1024])));
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(n0_future::stream::iter(chunks)))
                .unwrap()
        }
        "oversizelen" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            vec![b' '; MAX_BODY + 1],
        )
            .into_response(),
        _ => ok(record_json(&repo, &rkey, head.as_deref())),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

async fn xrpc_post(
    State(fake): State<Fake>,
    Path(nsid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut s = fake.0.lock().unwrap();
        *s.requests.entry(nsid.clone()).or_default() += 1;
        if let Some(token) = bearer(&headers) {
            s.auth_seen.push(token);
        }
    }
    match nsid.as_str() {
        "com.atproto.server.createSession" => {
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            match body["password"].as_str() {
                Some(PASSWORD) => axum::Json(fake.issue(ALICE)).into_response(),
                Some(BOB_PASSWORD) => axum::Json(fake.issue(BOB)).into_response(),
                other => xrpc_error(
                    StatusCode::UNAUTHORIZED,
                    "AuthenticationRequired",
                    &format!("Invalid identifier or password {}", other.unwrap_or("")),
                ),
            }
        }
        "com.atproto.server.refreshSession" => {
            let did = {
                let s = fake.0.lock().unwrap();
                if s.refresh_broken {
                    None
                } else {
                    bearer(&headers).and_then(|t| s.valid_refresh.get(&t).cloned())
                }
            };
            match did {
                Some(did) => axum::Json(fake.issue(&did)).into_response(),
                None => xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired"),
            }
        }
        "com.atproto.repo.putRecord" => {
            let token = bearer(&headers).unwrap_or_default();
            let mut s = fake.0.lock().unwrap();
            if !s.valid_access.contains(&token) {
                return xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired");
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            let rkey = body["rkey"].as_str().unwrap_or("").to_string();
            if let Some(edit) = s.race.take() {
                let n = s.stored.len() + 100;
                s.stored
                    .insert(rkey.clone(), (edit, format!("bafyreiowner{n}")));
            }
            // Compare-and-swap: the default record of an unwritten key has
            // the CID getRecord reports for it.
            let current = s
                .stored
                .get(&rkey)
                .map(|(_, cid)| cid.clone())
                .unwrap_or_else(|| "bafyreifake".into());
            let swap_ok = match &body["swapRecord"] {
                Value::String(cid) => *cid == current,
                Value::Null => !s.stored.contains_key(&rkey),
                _ => true,
            };
            if !swap_ok {
                return xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidSwap",
                    "Record was at another cid",
                );
            }
            let uri = format!(
                "at://{}/{}/{}",
                body["repo"].as_str().unwrap_or(""),
                body["collection"].as_str().unwrap_or(""),
                rkey
            );
            let cid = format!("bafyrei{}", s.written.len() + 1);
            s.stored.insert(rkey, (body["record"].clone(), cid.clone()));
            s.written.push(body);
            axum::Json(json!({"uri": uri, "cid": cid})).into_response()
        }
        _ => xrpc_error(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", &nsid),
    }
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    let app = Router::new()
        .route("/xrpc/com.atproto.repo.getRecord", get(get_record))
        .route(
            "/xrpc/com.atproto.identity.resolveHandle",
            get(resolve_handle),
        )
        .route("/xrpc/{nsid}", axum::routing::post(xrpc_post))
        .route("/{did}", get(plc))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    fake.0.lock().unwrap().base = base.clone();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (fake, base)
}

fn client() -> XrpcClient {
    XrpcClient::new(TIMEOUT)
}

fn rid(name: &str) -> RepoId {
    RepoId::parse(&format!("{ALICE}/{name}")).unwrap()
}

fn locator(pds: Option<&str>, did: &str, rkey: &str) -> Locator {
    Locator {
        pds: pds.map(str::to_string),
        did: did.to_string(),
        collection: COLLECTION.to_string(),
        rkey: rkey.to_string(),
    }
}

async fn fetch(base: &str, name: &str) -> Result<RepoRecord, AtprotoError> {
    fetch_repo_record(
        &client(),
        base,
        &locator(Some(base), ALICE, name),
        &rid(name),
    )
    .await
}

async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("test step did not finish within 30 s")
}

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

fn write_request(name: &str, head: char, seq: u64) -> WriteBackRequest {
    WriteBackRequest {
        repo_id: rid(name),
        collection: COLLECTION.into(),
        rkey: name.into(),
        head: Some(head.to_string().repeat(40)),
        manifest: "e".repeat(64),
        seq,
        own: knotd::record::PeerHint::new(
            iroh::SecretKey::from_bytes(&[5; 32]).public().to_string(),
            vec!["127.0.0.1:4919".into()],
            None,
        ),
    }
}

/// The account `identifier` with `password`, whose DID resolves through the
/// fake PLC directory to the fake (plain http, loopback) PDS.
fn account(base: &str, identifier: &str, password: &str) -> Account {
    let config = knotd::config::AtprotoConfig {
        plc_directory: base.to_string(),
        allow_insecure_http: true,
        ..Default::default()
    };
    Account::new(client(), Credentials::new(identifier, password), &config)
}

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

fn reader(base: &str) -> Reader {
    Reader::new(client(), base.to_string())
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
