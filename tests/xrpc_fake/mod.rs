//! An in-process fake PDS and PLC directory that misbehaves on purpose,
//! shared by `tests/atproto_fake.rs` (reads) and
//! `tests/atproto_write_back.rs` (accounts, write-backs, the reader and a
//! node's read schedule).
#![allow(dead_code)]

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
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
    account::{Account, Credentials, WriteBackRequest},
    atproto::{AtprotoError, MAX_BODY, XrpcClient, fetch_repo_record},
    reader::Reader,
    record::{COLLECTION, RepoRecord},
    repo_id::RepoId,
    state::Locator,
};
use serde_json::{Value, json};

pub const ALICE: &str = "did:plc:alice";
pub const BOB: &str = "did:plc:bob";
pub const PASSWORD: &str = "right-pass-0123";
pub const BOB_PASSWORD: &str = "bob-pass-4567";
pub const TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Default)]
pub struct FakeState {
    pub base: String,
    pub requests: HashMap<String, usize>,
    pub heads: HashMap<String, String>,
    pub failing: HashSet<String>,
    pub next_token: usize,
    pub valid_access: HashSet<String>,
    pub valid_refresh: HashMap<String, String>,
    pub refresh_broken: bool,
    pub written: Vec<Value>,
    pub auth_seen: Vec<String>,
    /// Records written, by rkey: (value, cid).
    pub stored: HashMap<String, (Value, String)>,
    /// Applied to the stored record just before the next putRecord (the
    /// owner editing it meanwhile).
    pub race: Option<Value>,
    /// Answer the next request with 429 and `Retry-After: 7`.
    pub rate_limit_next: bool,
    /// The DID `resolveHandle` names for alice.test (default: Alice's).
    pub alice_test_owner: Option<String>,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<FakeState>>);

impl Fake {
    pub fn count(&self, key: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .requests
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn set_head(&self, rkey: &str, head: &str) {
        self.0
            .lock()
            .unwrap()
            .heads
            .insert(rkey.into(), head.into());
    }

    pub fn set_failing(&self, rkey: &str, failing: bool) {
        let mut s = self.0.lock().unwrap();
        if failing {
            s.failing.insert(rkey.into());
        } else {
            s.failing.remove(rkey);
        }
    }

    pub fn expire_access_tokens(&self) {
        self.0.lock().unwrap().valid_access.clear();
    }

    pub fn issue(&self, did: &str) -> Value {
        let mut s = self.0.lock().unwrap();
        s.next_token += 1;
        let access = format!("access-{}", s.next_token);
        let refresh = format!("refresh-{}", s.next_token);
        s.valid_access.insert(access.clone());
        s.valid_refresh.insert(refresh.clone(), did.to_string());
        json!({"did": did, "handle": "alice.test", "accessJwt": access, "refreshJwt": refresh})
    }
}

pub fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "message": message})),
    )
        .into_response()
}

pub fn record_json(repo: &str, rkey: &str, head: Option<&str>) -> Value {
    let mut value = json!({"$type": COLLECTION, "repoId": format!("{repo}/{rkey}")});
    if let Some(head) = head {
        value["head"] = json!(head);
    }
    value
}

pub async fn plc(State(fake): State<Fake>, Path(did): Path<String>) -> Response {
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

pub async fn resolve_handle(
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

pub async fn get_record(
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

pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

pub async fn xrpc_post(
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

pub async fn start_fake() -> (Fake, String) {
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

pub fn client() -> XrpcClient {
    XrpcClient::new(TIMEOUT)
}

pub fn rid(name: &str) -> RepoId {
    RepoId::parse(&format!("{ALICE}/{name}")).unwrap()
}

pub fn locator(pds: Option<&str>, did: &str, rkey: &str) -> Locator {
    Locator {
        pds: pds.map(str::to_string),
        did: did.to_string(),
        collection: COLLECTION.to_string(),
        rkey: rkey.to_string(),
    }
}

pub async fn fetch(base: &str, name: &str) -> Result<RepoRecord, AtprotoError> {
    fetch_repo_record(
        &client(),
        base,
        &locator(Some(base), ALICE, name),
        &rid(name),
    )
    .await
}

pub async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("test step did not finish within 30 s")
}

pub fn write_request(name: &str, head: char, seq: u64) -> WriteBackRequest {
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
pub fn account(base: &str, identifier: &str, password: &str) -> Account {
    let config = knotd::config::AtprotoConfig {
        plc_directory: base.to_string(),
        allow_insecure_http: true,
        ..Default::default()
    };
    Account::new(client(), Credentials::new(identifier, password), &config)
}

pub fn reader(base: &str) -> Reader {
    Reader::new(client(), base.to_string())
}
