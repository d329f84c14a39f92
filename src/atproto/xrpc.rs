//! The XRPC client: one HTTP connection pool with timeouts and a body
//! limit; records read, listed and written; sessions created and refreshed.
//! Nothing here is kept between calls but the connection pool.

use std::{fmt, time::Duration};

use reqwest::{Method, RequestBuilder, Url, redirect};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::debug;

use super::{
    AtprotoError, MAX_BODY, MAX_REDIRECTS, USER_AGENT, did_document_url, parse_xrpc_error,
    pds_from_did_doc, shorten, xrpc_detail,
};
use crate::config::AtprotoConfig;

/// A record as returned by `com.atproto.repo.getRecord`.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedRecord {
    /// The record value.
    pub value: Value,
    /// The record's CID, when the PDS sent it.
    pub cid: Option<String>,
    /// The record's `at://` URI, when the PDS sent it.
    pub uri: Option<String>,
}

pub use crate::record::ListedRecord;

/// What a `putRecord` expects to replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The record at this CID.
    Cid(String),
    /// No record: create it, fail if one appeared meanwhile.
    Absent,
}

/// The result of `com.atproto.repo.putRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The record's `at://` URI.
    pub uri: String,
    /// The CID of the new record version.
    pub cid: String,
}

/// A logged-in session on a PDS. `Debug` never shows the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The account's DID.
    pub did: String,
    /// The account's handle.
    pub handle: String,
    /// The access token (short-lived).
    pub access_jwt: String,
    /// The refresh token.
    pub refresh_jwt: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("did", &self.did)
            .field("handle", &self.handle)
            .field("access_jwt", &"[redacted]")
            .field("refresh_jwt", &"[redacted]")
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionBody {
    did: String,
    #[serde(default)]
    handle: String,
    access_jwt: String,
    refresh_jwt: String,
}

impl From<SessionBody> for Session {
    fn from(b: SessionBody) -> Self {
        Session {
            did: b.did,
            handle: b.handle,
            access_jwt: b.access_jwt,
            refresh_jwt: b.refresh_jwt,
        }
    }
}

/// Login credentials for writing records: a handle or DID and an app password.
/// `Debug` never shows the password.
/// An XRPC client: one HTTP connection pool with timeouts and a body limit.
#[derive(Debug, Clone)]
pub struct XrpcClient {
    http: reqwest::Client,
    max_body: usize,
}

impl XrpcClient {
    /// A client whose requests each time out after `request_timeout`.
    pub fn new(request_timeout: Duration) -> Self {
        let policy = redirect::Policy::custom(|attempt| {
            let same_host = attempt
                .previous()
                .first()
                .is_some_and(|first| first.host_str() == attempt.url().host_str());
            if same_host && attempt.previous().len() <= MAX_REDIRECTS {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .redirect(policy)
            .build()
            .expect("the HTTP client configuration is valid");
        Self {
            http,
            max_body: MAX_BODY,
        }
    }

    /// A client configured from `[atproto]`.
    pub fn from_config(config: &AtprotoConfig) -> Self {
        Self::new(Duration::from_secs(config.request_timeout_secs.max(1)))
    }

    /// Change the response body limit (default [`MAX_BODY`]).
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Fetch a record with `com.atproto.repo.getRecord`.
    pub async fn get_record(
        &self,
        pds: &str,
        did: &str,
        collection: &str,
        rkey: &str,
    ) -> Result<FetchedRecord, AtprotoError> {
        let url = xrpc_url(pds, "com.atproto.repo.getRecord")?;
        let req = self.http.get(url.clone()).query(&[
            ("repo", did),
            ("collection", collection),
            ("rkey", rkey),
        ]);
        let body = match self.send(req, url.as_str()).await {
            Err(AtprotoError::Status {
                error: Some(error), ..
            }) if error == "RecordNotFound" => {
                return Err(AtprotoError::NotFound {
                    pds: pds.to_string(),
                    uri: format!("at://{did}/{collection}/{rkey}"),
                });
            }
            other => other?,
        };
        let url = url.as_str();
        let mut obj = into_object(body, url)?;
        let value = obj.remove("value").ok_or_else(|| AtprotoError::Malformed {
            url: url.to_string(),
            message: "getRecord response has no \"value\"".into(),
        })?;
        if !value.is_object() {
            return Err(AtprotoError::Malformed {
                url: url.to_string(),
                message: "getRecord \"value\" is not an object".into(),
            });
        }
        Ok(FetchedRecord {
            value,
            cid: take_string(&mut obj, "cid"),
            uri: take_string(&mut obj, "uri"),
        })
    }

    /// Find the PDS of a DID: `did:plc` through the PLC directory, `did:web`
    /// through `https://<host>/.well-known/did.json`. Returns the endpoint of
    /// the `#atproto_pds` service, without a trailing `/`.
    pub async fn resolve_pds(
        &self,
        plc_directory: &str,
        did: &str,
    ) -> Result<String, AtprotoError> {
        let no_pds = |reason: String| AtprotoError::NoPds {
            did: did.to_string(),
            reason,
        };
        let url = did_document_url(plc_directory, did).map_err(no_pds)?;
        let doc = match self.send(self.http.get(url.clone()), url.as_str()).await {
            Err(AtprotoError::Status { status, .. }) if status == 404 || status == 410 => {
                return Err(no_pds(format!(
                    "{url} has no DID document for it (HTTP {status}); check the DID"
                )));
            }
            other => other?,
        };
        pds_from_did_doc(&doc, did).map_err(no_pds)
    }

    /// Log in with `com.atproto.server.createSession`.
    pub async fn create_session(
        &self,
        pds: &str,
        identifier: &str,
        password: &str,
    ) -> Result<Session, AtprotoError> {
        let url = xrpc_url(pds, "com.atproto.server.createSession")?;
        let req = self
            .http
            .post(url.clone())
            .json(&json!({"identifier": identifier, "password": password}));
        let body = match self.send(req, url.as_str()).await {
            Ok(body) => body,
            Err(e) => {
                let e = redact_error(e, password);
                return Err(match e {
                    AtprotoError::Status {
                        status: 400 | 401 | 403,
                        error,
                        message,
                        ..
                    } => AtprotoError::Auth {
                        message: format!(
                            "{pds} refused the login of {identifier}:{}",
                            xrpc_detail(&error, &message)
                        ),
                    },
                    other => other,
                });
            }
        };
        let session: SessionBody =
            serde_json::from_value(body).map_err(|e| AtprotoError::Malformed {
                url: url.to_string(),
                message: format!("createSession response: {e}"),
            })?;
        debug!(pds, did = %session.did, "ATProto session created");
        Ok(session.into())
    }

    /// Renew a session with `com.atproto.server.refreshSession`.
    pub async fn refresh_session(
        &self,
        pds: &str,
        session: &Session,
    ) -> Result<Session, AtprotoError> {
        let url = xrpc_url(pds, "com.atproto.server.refreshSession")?;
        let req = self
            .http
            .request(Method::POST, url.clone())
            .bearer_auth(&session.refresh_jwt);
        let body = self.send(req, url.as_str()).await.map_err(|e| {
            redact_error(redact_error(e, &session.refresh_jwt), &session.access_jwt)
        })?;
        let fresh: SessionBody =
            serde_json::from_value(body).map_err(|e| AtprotoError::Malformed {
                url: url.to_string(),
                message: format!("refreshSession response: {e}"),
            })?;
        debug!(pds, did = %fresh.did, "ATProto session refreshed");
        Ok(fresh.into())
    }

    /// Write a record with `com.atproto.repo.putRecord` (lexicon validation off).
    /// Only if the record is still at `swap` (compare-and-swap): a record
    /// changed meanwhile fails with the XRPC error `InvalidSwap`.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_record(
        &self,
        pds: &str,
        session: &Session,
        did: &str,
        collection: &str,
        rkey: &str,
        record: &Value,
        swap: &Swap,
    ) -> Result<PutResult, AtprotoError> {
        let url = xrpc_url(pds, "com.atproto.repo.putRecord")?;
        let swap_record = match swap {
            Swap::Cid(cid) => Value::String(cid.clone()),
            Swap::Absent => Value::Null,
        };
        let req = self
            .http
            .post(url.clone())
            .bearer_auth(&session.access_jwt)
            .json(&json!({
                "repo": did,
                "collection": collection,
                "rkey": rkey,
                "validate": false,
                "record": record,
                "swapRecord": swap_record,
            }));
        let body = self
            .send(req, url.as_str())
            .await
            .map_err(|e| redact_error(e, &session.access_jwt))?;
        let url = url.as_str();
        let mut obj = into_object(body, url)?;
        match (take_string(&mut obj, "uri"), take_string(&mut obj, "cid")) {
            (Some(uri), Some(cid)) => Ok(PutResult { uri, cid }),
            _ => Err(AtprotoError::Malformed {
                url: url.to_string(),
                message: "putRecord response lacks \"uri\" or \"cid\"".into(),
            }),
        }
    }

    /// One page (up to 100) of the records of `collection` in `did`'s
    /// repository (`com.atproto.repo.listRecords`), and the cursor of the
    /// next page. Records whose URI is not in that repository and
    /// collection are dropped.
    pub async fn list_records(
        &self,
        pds: &str,
        did: &str,
        collection: &str,
        cursor: Option<&str>,
    ) -> Result<(Vec<ListedRecord>, Option<String>), AtprotoError> {
        let url = xrpc_url(pds, "com.atproto.repo.listRecords")?;
        let mut query = vec![("repo", did), ("collection", collection), ("limit", "100")];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor));
        }
        let body = self
            .send(self.http.get(url.clone()).query(&query), url.as_str())
            .await?;
        let url = url.as_str();
        let mut obj = into_object(body, url)?;
        let next = take_string(&mut obj, "cursor").filter(|c| !c.is_empty());
        let Some(Value::Array(items)) = obj.remove("records") else {
            return Err(AtprotoError::Malformed {
                url: url.to_string(),
                message: "listRecords response has no \"records\" array".into(),
            });
        };
        let prefix = format!("at://{did}/{collection}/");
        let records = items
            .into_iter()
            .filter_map(|item| {
                let Value::Object(mut item) = item else {
                    return None;
                };
                let uri = take_string(&mut item, "uri")?;
                let rkey = uri.strip_prefix(&prefix)?.to_string();
                let value = item.remove("value").filter(Value::is_object)?;
                Some(ListedRecord {
                    rkey,
                    cid: take_string(&mut item, "cid"),
                    value,
                })
            })
            .collect();
        Ok((records, next))
    }

    /// The handle of `did`, verified both ways: the handle its DID document
    /// claims, kept only when that handle resolves back to `did` (through
    /// [`XrpcClient::resolve_handle`]). `None`: no handle claimed, or the
    /// claim does not hold.
    pub async fn verified_handle(
        &self,
        plc_directory: &str,
        resolver: &str,
        did: &str,
    ) -> Result<Option<String>, AtprotoError> {
        let url = did_document_url(plc_directory, did).map_err(|reason| AtprotoError::NoPds {
            did: did.to_string(),
            reason,
        })?;
        let doc = self.send(self.http.get(url.clone()), url.as_str()).await?;
        let Some(handle) = super::identity::claimed_handle(&doc, did) else {
            return Ok(None);
        };
        let resolved = self.resolve_handle(&handle, resolver).await?;
        Ok((resolved == did).then_some(handle))
    }

    /// The DID a handle names: `https://<handle>/.well-known/atproto-did`,
    /// else `com.atproto.identity.resolveHandle` on `resolver`.
    pub async fn resolve_handle(
        &self,
        handle: &str,
        resolver: &str,
    ) -> Result<String, AtprotoError> {
        let handle = handle.trim().trim_start_matches('@').to_ascii_lowercase();
        if !super::identity::looks_like_handle(&handle) {
            return Err(AtprotoError::NoPds {
                did: handle.clone(),
                reason: "not a handle (like alice.example.com) or a DID (did:plc:…)".into(),
            });
        }
        let check = |did: String, url: &str| {
            crate::repo_id::validate_did(did.trim())
                .map(|_| did.trim().to_string())
                .map_err(|e| AtprotoError::Malformed {
                    url: url.to_string(),
                    message: format!("not a DID: {e}"),
                })
        };
        let well_known = format!("https://{handle}/.well-known/atproto-did");
        if let Ok(url) = Url::parse(&well_known) {
            match self.send_text(self.http.get(url), &well_known).await {
                Ok(text) => return check(text, &well_known),
                Err(e) => debug!(%handle, error = %e, "no DID at the handle's well-known address"),
            }
        }
        let url = xrpc_url(resolver, "com.atproto.identity.resolveHandle")?;
        let body = self
            .send(
                self.http
                    .get(url.clone())
                    .query(&[("handle", handle.as_str())]),
                url.as_str(),
            )
            .await?;
        let mut obj = into_object(body, url.as_str())?;
        let did = take_string(&mut obj, "did").ok_or_else(|| AtprotoError::Malformed {
            url: url.to_string(),
            message: "resolveHandle response has no \"did\"".into(),
        })?;
        check(did, url.as_str())
    }

    /// Send a request and return its (small) text body.
    async fn send_text(&self, req: RequestBuilder, url: &str) -> Result<String, AtprotoError> {
        let resp = req.send().await.map_err(|e| transport_error(url, &e))?;
        let status = resp.status();
        let body = read_limited(resp, 4096, url).await?;
        if !status.is_success() {
            let (error, message) = parse_xrpc_error(&body);
            return Err(AtprotoError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                error,
                message,
            });
        }
        String::from_utf8(body).map_err(|_| AtprotoError::Malformed {
            url: url.to_string(),
            message: "body is not UTF-8".into(),
        })
    }

    /// Send a request and decode a JSON response, mapping every failure.
    async fn send(&self, req: RequestBuilder, url: &str) -> Result<Value, AtprotoError> {
        let resp = req.send().await.map_err(|e| transport_error(url, &e))?;
        let status = resp.status();
        if status.as_u16() == 429 {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs.min(24 * 3600)));
            return Err(AtprotoError::RateLimited {
                url: url.to_string(),
                retry_after,
            });
        }
        let body = read_limited(resp, self.max_body, url).await?;
        if !status.is_success() {
            let (error, message) = parse_xrpc_error(&body);
            return Err(AtprotoError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                error,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| AtprotoError::Malformed {
            url: url.to_string(),
            message: format!("body is not JSON: {e}"),
        })
    }
}

/// Read a response body, refusing it as soon as it exceeds `limit` bytes.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    url: &str,
) -> Result<Vec<u8>, AtprotoError> {
    let oversize = || AtprotoError::Oversize {
        url: url.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(oversize());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(url, &e))? {
        if body.len() + chunk.len() > limit {
            return Err(oversize());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_error(url: &str, e: &reqwest::Error) -> AtprotoError {
    if e.is_timeout() {
        return AtprotoError::Timeout {
            url: url.to_string(),
        };
    }
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = match std::error::Error::source(e) {
        Some(inner) => Some(inner),
        None => Some(e),
    };
    while let Some(err) = source {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = err.source();
    }
    let timed_out = parts.iter().any(|p| p.contains("timed out"));
    if timed_out {
        return AtprotoError::Timeout {
            url: url.to_string(),
        };
    }
    AtprotoError::Unreachable {
        url: url.to_string(),
        message: shorten(&parts.join(": ")),
    }
}

/// Remove a secret from the texts of an error.
fn redact_error(e: AtprotoError, secret: &str) -> AtprotoError {
    if secret.is_empty() {
        return e;
    }
    let r = |s: String| s.replace(secret, "[redacted]");
    match e {
        AtprotoError::Status {
            url,
            status,
            error,
            message,
        } => AtprotoError::Status {
            url: r(url),
            status,
            error: error.map(r),
            message: message.map(r),
        },
        AtprotoError::Unreachable { url, message } => AtprotoError::Unreachable {
            url: r(url),
            message: r(message),
        },
        AtprotoError::Malformed { url, message } => AtprotoError::Malformed {
            url: r(url),
            message: r(message),
        },
        AtprotoError::Auth { message } => AtprotoError::Auth {
            message: r(message),
        },
        other => other,
    }
}

fn into_object(body: Value, url: &str) -> Result<serde_json::Map<String, Value>, AtprotoError> {
    match body {
        Value::Object(obj) => Ok(obj),
        _ => Err(AtprotoError::Malformed {
            url: url.to_string(),
            message: "expected a JSON object".into(),
        }),
    }
}

fn take_string(obj: &mut serde_json::Map<String, Value>, key: &str) -> Option<String> {
    match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Check that a base URL is http(s) and build `{base}/xrpc/{nsid}`.
fn xrpc_url(pds: &str, nsid: &str) -> Result<Url, AtprotoError> {
    let base = validate_http_url(pds).map_err(|reason| AtprotoError::Unreachable {
        url: pds.to_string(),
        message: reason,
    })?;
    Url::parse(&format!("{base}/xrpc/{nsid}")).map_err(|e| AtprotoError::Unreachable {
        url: pds.to_string(),
        message: format!("not a valid URL: {e}"),
    })
}

/// Validate an http(s) base URL without query or fragment; returns it
/// without a trailing `/`.
pub fn validate_http_url(raw: &str) -> Result<String, String> {
    let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw:?} is not an http(s) URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "{raw:?} must not have credentials, a query or a fragment"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_errors() {
        let e = AtprotoError::Status {
            url: "http://pds".into(),
            status: 401,
            error: Some("AuthenticationRequired".into()),
            message: Some("bad password hunter2".into()),
        };
        let text = redact_error(e, "hunter2").to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            validate_http_url("https://pds.example.com/").unwrap(),
            "https://pds.example.com"
        );
        assert!(validate_http_url("pds.example.com").is_err());
        assert!(validate_http_url("https://user:pw@pds.example.com").is_err());
        assert_eq!(
            xrpc_url("http://127.0.0.1:9/", "a.b.c").unwrap().as_str(),
            "http://127.0.0.1:9/xrpc/a.b.c"
        );
    }
}
