//! ATProto XRPC client: reading and writing `app.knot.repo` records on a PDS.
//!
//! Owns the HTTP side of ATProto: fetching a record (`com.atproto.repo.getRecord`),
//! resolving a DID to its PDS through the PLC directory or `did:web`, logging in
//! with an app password (`createSession`, `refreshSession`) and writing records
//! back (`putRecord`). Every response body is read with a hard size limit and
//! every request has a timeout. Passwords and session tokens never appear in
//! errors or logs. Nothing here survives a restart: sessions live in memory and
//! are created again when needed.

use std::{collections::HashMap, fmt, path::Path, time::Duration};

use reqwest::{Method, RequestBuilder, Url, redirect};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::{
    config::AtprotoConfig,
    record::{RecordError, RepoRecord},
    repo_id::RepoId,
    state::Locator,
};

/// Largest response body accepted, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// The User-Agent sent with every request.
pub const USER_AGENT: &str = concat!("knotd/", env!("CARGO_PKG_VERSION"));
/// Environment variable holding the app password when no file is configured.
pub const PASSWORD_ENV: &str = "KNOTD_APP_PASSWORD";
/// Longest XRPC error text kept from a response.
const MAX_ERROR_TEXT: usize = 300;
/// Most redirects followed, and only within the same host.
const MAX_REDIRECTS: usize = 3;

/// Errors talking to a PDS or DID directory; the text is shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum AtprotoError {
    /// The request did not complete within the request timeout.
    #[error(
        "request to {url} timed out; check that the server is up and reachable, or raise atproto.request_timeout_secs"
    )]
    Timeout {
        /// The request URL.
        url: String,
    },
    /// The server could not be reached at all.
    #[error("cannot reach {url}: {message}; check the PDS address and the network")]
    Unreachable {
        /// The request URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an HTTP error.
    #[error("{url} answered HTTP {status}{detail}; {hint}", detail = xrpc_detail(.error, .message), hint = status_hint(*.status))]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The XRPC error name, when the body had one.
        error: Option<String>,
        /// The XRPC error message, when the body had one.
        message: Option<String>,
    },
    /// The response was not what the protocol promises.
    #[error("{url} sent an unusable response: {message}; is this really a PDS or DID directory?")]
    Malformed {
        /// The request URL.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The response body exceeded the size limit.
    #[error("response from {url} is larger than {limit} bytes and was refused")]
    Oversize {
        /// The request URL.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The PDS has no such record.
    #[error(
        "record {uri} does not exist on {pds}; check the record locator (DID, collection, rkey) or write the record first"
    )]
    NotFound {
        /// The PDS asked.
        pds: String,
        /// The record's `at://` URI.
        uri: String,
    },
    /// The record is invalid or describes another repository.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The PDS refused the credentials or the session.
    #[error(
        "ATProto authentication failed: {message}; check atproto.identifier and the app password (create one in your PDS account settings)"
    )]
    Auth {
        /// What the PDS said.
        message: String,
    },
    /// The DID has no usable PDS endpoint.
    #[error("cannot find the PDS of {did}: {reason}; give the PDS URL explicitly")]
    NoPds {
        /// The DID.
        did: String,
        /// Why resolution failed.
        reason: String,
    },
    /// The configured credentials are unusable.
    #[error("ATProto credentials: {message}")]
    Credentials {
        /// What is wrong.
        message: String,
    },
}

fn xrpc_detail(error: &Option<String>, message: &Option<String>) -> String {
    match (error, message) {
        (Some(e), Some(m)) => format!(" {e}: {m}"),
        (Some(e), None) => format!(" {e}"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        429 => "the server is rate limiting; knotd retries later",
        500.. => "the server is failing; knotd retries later",
        401 | 403 => "check the credentials",
        _ => "check the PDS URL and the record locator",
    }
}

impl AtprotoError {
    /// True when the PDS rejected the session token (expired or invalid), so a
    /// refreshed or new session may succeed.
    pub fn is_token_rejected(&self) -> bool {
        match self {
            AtprotoError::Status { status, error, .. } => {
                *status == 401 || matches!(error.as_deref(), Some("ExpiredToken" | "InvalidToken"))
            }
            AtprotoError::Auth { .. } => true,
            _ => false,
        }
    }

    /// The XRPC error name, if the server sent one.
    pub fn xrpc_error(&self) -> Option<&str> {
        match self {
            AtprotoError::Status { error, .. } => error.as_deref(),
            _ => None,
        }
    }
}

impl Clone for AtprotoError {
    fn clone(&self) -> Self {
        match self {
            Self::Timeout { url } => Self::Timeout { url: url.clone() },
            Self::Unreachable { url, message } => Self::Unreachable {
                url: url.clone(),
                message: message.clone(),
            },
            Self::Status {
                url,
                status,
                error,
                message,
            } => Self::Status {
                url: url.clone(),
                status: *status,
                error: error.clone(),
                message: message.clone(),
            },
            Self::Malformed { url, message } => Self::Malformed {
                url: url.clone(),
                message: message.clone(),
            },
            Self::Oversize { url, limit } => Self::Oversize {
                url: url.clone(),
                limit: *limit,
            },
            Self::NotFound { pds, uri } => Self::NotFound {
                pds: pds.clone(),
                uri: uri.clone(),
            },
            Self::Record(e) => Self::Record(clone_record_error(e)),
            Self::Auth { message } => Self::Auth {
                message: message.clone(),
            },
            Self::NoPds { did, reason } => Self::NoPds {
                did: did.clone(),
                reason: reason.clone(),
            },
            Self::Credentials { message } => Self::Credentials {
                message: message.clone(),
            },
        }
    }
}

fn clone_record_error(e: &RecordError) -> RecordError {
    match e {
        RecordError::RepoIdMismatch { expected, found } => RecordError::RepoIdMismatch {
            expected: expected.clone(),
            found: found.clone(),
        },
        RecordError::InvalidField { field, reason } => RecordError::InvalidField {
            field,
            reason: reason.clone(),
        },
        RecordError::Malformed(m) => RecordError::Malformed(m.clone()),
    }
}

/// The body of an XRPC error response: `{"error": .., "message": ..}`.
///
/// Returns the error name and message when the body is such an object; texts
/// are shortened to a few hundred characters.
pub fn parse_xrpc_error(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Body {
        error: Option<Value>,
        message: Option<Value>,
    }
    let Ok(parsed) = serde_json::from_slice::<Body>(body) else {
        return (None, None);
    };
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(shorten(&s)),
        _ => None,
    };
    (text(parsed.error), text(parsed.message))
}

fn shorten(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= MAX_ERROR_TEXT {
        clean
    } else {
        let mut out: String = clean.chars().take(MAX_ERROR_TEXT).collect();
        out.push('…');
        out
    }
}

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
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Handle or DID to log in as.
    pub identifier: String,
    /// The app password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identifier", &self.identifier)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl Credentials {
    /// Credentials from an identifier and a password.
    pub fn new(identifier: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            identifier: identifier.into(),
            password: password.into(),
        }
    }

    /// Load the write-back credentials from the config: `None` when
    /// `atproto.identifier` is unset. The password comes from
    /// `atproto.app_password_file`, else from `KNOTD_APP_PASSWORD`.
    pub fn load(config: &AtprotoConfig) -> Result<Option<Credentials>, AtprotoError> {
        Self::load_with_env(config, std::env::var(PASSWORD_ENV).ok())
    }

    /// Like [`Credentials::load`], with the environment value given.
    pub fn load_with_env(
        config: &AtprotoConfig,
        env_password: Option<String>,
    ) -> Result<Option<Credentials>, AtprotoError> {
        let Some(identifier) = config
            .identifier
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let password = match &config.app_password_file {
            Some(path) => read_password_file(path)?,
            None => env_password
                .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                .filter(|p| !p.is_empty())
                .ok_or_else(|| AtprotoError::Credentials {
                    message: format!(
                        "atproto.identifier is set to {identifier:?} but no app password is configured; set atproto.app_password_file or the {PASSWORD_ENV} environment variable"
                    ),
                })?,
        };
        Ok(Some(Credentials::new(identifier, password)))
    }
}

fn read_password_file(path: &Path) -> Result<String, AtprotoError> {
    let text = std::fs::read_to_string(path).map_err(|e| AtprotoError::Credentials {
        message: format!(
            "cannot read atproto.app_password_file {}: {e}",
            path.display()
        ),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:o}"),
                    "the app password file is readable by group or others; restrict it with chmod 600"
                );
            }
        }
    }
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(AtprotoError::Credentials {
            message: format!(
                "atproto.app_password_file {} is empty; put the app password in it",
                path.display()
            ),
        });
    }
    Ok(password)
}

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
    pub async fn put_record(
        &self,
        pds: &str,
        session: &Session,
        did: &str,
        collection: &str,
        rkey: &str,
        record: &Value,
    ) -> Result<PutResult, AtprotoError> {
        let url = xrpc_url(pds, "com.atproto.repo.putRecord")?;
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

    /// Send a request and decode a JSON response, mapping every failure.
    async fn send(&self, req: RequestBuilder, url: &str) -> Result<Value, AtprotoError> {
        let resp = req.send().await.map_err(|e| transport_error(url, &e))?;
        let status = resp.status();
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

/// Where the DID document of `did` is published.
fn did_document_url(plc_directory: &str, did: &str) -> Result<Url, String> {
    crate::repo_id::validate_did(did).map_err(|e| format!("{did:?} is not a DID: {e}"))?;
    if did.starts_with("did:plc:") {
        let base =
            validate_http_url(plc_directory).map_err(|e| format!("atproto.plc_directory: {e}"))?;
        return Url::parse(&format!("{base}/{did}")).map_err(|e| e.to_string());
    }
    if let Some(rest) = did.strip_prefix("did:web:") {
        let mut parts = rest.split(':');
        let host = parts
            .next()
            .unwrap_or_default()
            .replace("%3A", ":")
            .replace("%3a", ":");
        if host.is_empty() || host.contains('%') || host.contains('/') {
            return Err(format!("{did:?} does not name a valid host"));
        }
        let path: Vec<&str> = parts.collect();
        let url = if path.is_empty() {
            format!("https://{host}/.well-known/did.json")
        } else {
            if path.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
                return Err(format!("{did:?} has an invalid path"));
            }
            format!("https://{host}/{}/did.json", path.join("/"))
        };
        return Url::parse(&url).map_err(|e| format!("{did:?}: {e}"));
    }
    Err(format!(
        "the DID method of {did:?} is not supported (only did:plc and did:web)"
    ))
}

/// Extract the PDS endpoint from a DID document: the service with id
/// `#atproto_pds` (or `<did>#atproto_pds`) and type `AtprotoPersonalDataServer`.
pub fn pds_from_did_doc(doc: &Value, did: &str) -> Result<String, String> {
    if let Some(id) = doc.get("id") {
        if id.as_str() != Some(did) {
            return Err(format!("the DID document is for {id}, not {did}"));
        }
    } else {
        return Err("the DID document has no \"id\"".into());
    }
    let services = doc
        .get("service")
        .and_then(Value::as_array)
        .ok_or("the DID document lists no services")?;
    let full_id = format!("{did}#atproto_pds");
    let service = services
        .iter()
        .find(|s| {
            let id = s.get("id").and_then(Value::as_str);
            let ty = s.get("type").and_then(Value::as_str);
            matches!(id, Some(id) if id == "#atproto_pds" || id == full_id)
                && ty == Some("AtprotoPersonalDataServer")
        })
        .ok_or("the DID document has no #atproto_pds service of type AtprotoPersonalDataServer")?;
    let endpoint = service
        .get("serviceEndpoint")
        .and_then(Value::as_str)
        .ok_or("the #atproto_pds service has no string serviceEndpoint")?;
    validate_http_url(endpoint).map_err(|e| format!("the #atproto_pds endpoint: {e}"))
}

/// Fetch and check the record of a tracked repository.
///
/// Resolves the PDS from the DID document when the locator names none. The
/// record is rejected when the locator's DID is not the repository owner's,
/// when the PDS answers with a record of another repository (URI), or when the
/// record's `repoId` differs from `expected`.
pub async fn fetch_repo_record(
    client: &XrpcClient,
    plc_directory: &str,
    locator: &Locator,
    expected: &RepoId,
) -> Result<RepoRecord, AtprotoError> {
    check_locator(locator, expected)?;
    let pds = match &locator.pds {
        Some(pds) => pds.clone(),
        None => client.resolve_pds(plc_directory, &locator.did).await?,
    };
    fetch_repo_record_at(client, &pds, locator, expected).await
}

/// Like [`fetch_repo_record`], with the PDS already known.
pub async fn fetch_repo_record_at(
    client: &XrpcClient,
    pds: &str,
    locator: &Locator,
    expected: &RepoId,
) -> Result<RepoRecord, AtprotoError> {
    check_locator(locator, expected)?;
    let fetched = client
        .get_record(pds, &locator.did, &locator.collection, &locator.rkey)
        .await?;
    if let Some(uri) = &fetched.uri
        && let Some(authority) = uri
            .strip_prefix("at://")
            .and_then(|rest| rest.split('/').next())
        && authority.starts_with("did:")
        && authority != locator.did
    {
        return Err(AtprotoError::Record(RecordError::RepoIdMismatch {
            expected: expected.to_string(),
            found: format!("{uri} (a record of {authority})"),
        }));
    }
    let record = RepoRecord::from_json(fetched.value)?;
    if &record.repo_id != expected {
        return Err(AtprotoError::Record(RecordError::RepoIdMismatch {
            expected: expected.to_string(),
            found: record.repo_id.to_string(),
        }));
    }
    Ok(record)
}

/// Refuse a locator whose DID is not the owner of `expected`: a record in
/// another account's repository cannot speak for this repository.
pub fn check_locator(locator: &Locator, expected: &RepoId) -> Result<(), AtprotoError> {
    if locator.did != expected.did() {
        return Err(AtprotoError::Record(RecordError::RepoIdMismatch {
            expected: expected.to_string(),
            found: format!("a record of {}", locator.did),
        }));
    }
    Ok(())
}

/// Writes records back to their owners' PDS with one set of credentials.
///
/// Keeps one session per PDS in memory; a session is created on first use and
/// refreshed (or created again) when the PDS rejects its token.
#[derive(Debug)]
pub struct RecordWriter {
    client: XrpcClient,
    credentials: Credentials,
    sessions: HashMap<String, Session>,
}

impl RecordWriter {
    /// A writer that logs in with `credentials`.
    pub fn new(client: XrpcClient, credentials: Credentials) -> Self {
        Self {
            client,
            credentials,
            sessions: HashMap::new(),
        }
    }

    /// The identifier the writer logs in as.
    pub fn identifier(&self) -> &str {
        &self.credentials.identifier
    }

    /// Write `record` as `at://{did}/{collection}/{rkey}` on `pds`.
    ///
    /// Refuses a record whose repository is not owned by `did`, and a login
    /// whose account is not `did`. When the PDS rejects the session token the
    /// session is refreshed (or created again) and the write retried once.
    pub async fn write(
        &mut self,
        pds: &str,
        did: &str,
        collection: &str,
        rkey: &str,
        record: &RepoRecord,
    ) -> Result<PutResult, AtprotoError> {
        if record.repo_id.did() != did {
            return Err(AtprotoError::Record(RecordError::RepoIdMismatch {
                expected: format!("a repository of {did}"),
                found: record.repo_id.to_string(),
            }));
        }
        let value = serde_json::to_value(record).map_err(|e| AtprotoError::Malformed {
            url: pds.to_string(),
            message: format!("cannot encode the record: {e}"),
        })?;
        let key = pds.trim_end_matches('/').to_string();
        let session = self.session(&key, did).await?;
        match self
            .client
            .put_record(&key, &session, did, collection, rkey, &value)
            .await
        {
            Err(e) if e.is_token_rejected() => {
                debug!(pds = %key, error = %e, "session token rejected; renewing the session");
                let session = self.renew(&key, &session, did).await?;
                match self
                    .client
                    .put_record(&key, &session, did, collection, rkey, &value)
                    .await
                {
                    Err(e) if e.is_token_rejected() => {
                        self.sessions.remove(&key);
                        Err(AtprotoError::Auth {
                            message: format!("{key} rejected a fresh session for {did}: {e}"),
                        })
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn session(&mut self, pds: &str, did: &str) -> Result<Session, AtprotoError> {
        if let Some(session) = self.sessions.get(pds) {
            return Ok(session.clone());
        }
        let session = self.login(pds, did).await?;
        Ok(session)
    }

    async fn login(&mut self, pds: &str, did: &str) -> Result<Session, AtprotoError> {
        let session = self
            .client
            .create_session(
                pds,
                &self.credentials.identifier,
                &self.credentials.password,
            )
            .await?;
        self.accept(pds, session, did)
    }

    async fn renew(
        &mut self,
        pds: &str,
        old: &Session,
        did: &str,
    ) -> Result<Session, AtprotoError> {
        self.sessions.remove(pds);
        match self.client.refresh_session(pds, old).await {
            Ok(fresh) => self.accept(pds, fresh, did),
            Err(e) => {
                debug!(pds, error = %e, "session refresh failed; logging in again");
                self.login(pds, did).await
            }
        }
    }

    fn accept(&mut self, pds: &str, session: Session, did: &str) -> Result<Session, AtprotoError> {
        if session.did != did {
            return Err(AtprotoError::Credentials {
                message: format!(
                    "atproto.identifier {:?} logs in as {}, but the record belongs to {did}; use the owner's account",
                    self.credentials.identifier, session.did
                ),
            });
        }
        self.sessions.insert(pds.to_string(), session.clone());
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let creds = Credentials::new("alice.test", "hunter2-secret");
        let text = format!("{creds:?} {creds:#?}");
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(text.contains("alice.test"));
        let session = Session {
            did: "did:plc:abc".into(),
            handle: "alice.test".into(),
            access_jwt: "eyJaccess.token".into(),
            refresh_jwt: "eyJrefresh.token".into(),
        };
        let text = format!("{session:?} {session:#?}");
        assert!(!text.contains("eyJ"), "{text}");
        let writer = RecordWriter::new(XrpcClient::new(Duration::from_secs(1)), creds);
        assert!(!format!("{writer:?}").contains("hunter2-secret"));
    }

    #[test]
    fn xrpc_error_bodies() {
        assert_eq!(
            parse_xrpc_error(br#"{"error":"RecordNotFound","message":"Could not locate record"}"#),
            (
                Some("RecordNotFound".into()),
                Some("Could not locate record".into())
            )
        );
        assert_eq!(
            parse_xrpc_error(br#"{"error":"InternalServerError"}"#),
            (Some("InternalServerError".into()), None)
        );
        assert_eq!(parse_xrpc_error(b"<html>bad gateway</html>"), (None, None));
        assert_eq!(parse_xrpc_error(br#"{"error":5}"#), (None, None));
        assert_eq!(parse_xrpc_error(b"[]"), (None, None));
        let long = format!(r#"{{"error":"X","message":"{}"}}"#, "m".repeat(5000));
        let (_, m) = parse_xrpc_error(long.as_bytes());
        assert!(m.unwrap().chars().count() <= MAX_ERROR_TEXT + 1);
        let e = AtprotoError::Status {
            url: "http://pds/xrpc/x".into(),
            status: 502,
            error: Some("UpstreamFailure".into()),
            message: Some("down".into()),
        };
        let text = e.to_string();
        assert!(text.contains("502 UpstreamFailure: down"), "{text}");
        assert!(text.contains("retries later"), "{text}");
    }

    #[test]
    fn token_rejections() {
        let status = |status, error: Option<&str>| AtprotoError::Status {
            url: String::new(),
            status,
            error: error.map(Into::into),
            message: None,
        };
        assert!(status(400, Some("ExpiredToken")).is_token_rejected());
        assert!(status(400, Some("InvalidToken")).is_token_rejected());
        assert!(status(401, None).is_token_rejected());
        assert!(!status(400, Some("InvalidRequest")).is_token_rejected());
        assert!(!status(500, None).is_token_rejected());
    }

    #[test]
    fn did_documents() {
        let did = "did:plc:abc123";
        let doc = json!({
            "id": did,
            "service": [
                {"id": "#other", "type": "Other", "serviceEndpoint": "https://x.example"},
                {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "http://127.0.0.1:2583/"}
            ]
        });
        assert_eq!(
            pds_from_did_doc(&doc, did).unwrap(),
            "http://127.0.0.1:2583"
        );
        let full = json!({
            "id": did,
            "service": [{"id": format!("{did}#atproto_pds"), "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example.com"}]
        });
        assert_eq!(
            pds_from_did_doc(&full, did).unwrap(),
            "https://pds.example.com"
        );
        for bad in [
            json!({"id": "did:plc:other", "service": doc["service"].clone()}),
            json!({"service": doc["service"].clone()}),
            json!({"id": did}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "Wrong", "serviceEndpoint": "https://a.b"}]}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "ftp://a.b"}]}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": {"x": 1}}]}),
            json!({"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://a.b/?q=1"}]}),
        ] {
            assert!(pds_from_did_doc(&bad, did).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn did_document_urls() {
        let plc = "https://plc.directory/";
        assert_eq!(
            did_document_url(plc, "did:plc:abc123").unwrap().as_str(),
            "https://plc.directory/did:plc:abc123"
        );
        assert_eq!(
            did_document_url(plc, "did:web:example.com")
                .unwrap()
                .as_str(),
            "https://example.com/.well-known/did.json"
        );
        assert_eq!(
            did_document_url(plc, "did:web:localhost%3A8080:u:alice")
                .unwrap()
                .as_str(),
            "https://localhost:8080/u/alice/did.json"
        );
        assert!(did_document_url(plc, "did:key:z6Mk").is_err());
        assert!(did_document_url(plc, "did:web:a.b:..").is_err());
        assert!(did_document_url("ftp://x", "did:plc:abc").is_err());
    }

    #[test]
    fn credentials_from_config() {
        let mut config = AtprotoConfig::default();
        assert_eq!(
            Credentials::load_with_env(&config, Some("x".into())).unwrap(),
            None
        );
        config.identifier = Some("alice.test".into());
        let err = Credentials::load_with_env(&config, None).unwrap_err();
        assert!(err.to_string().contains(PASSWORD_ENV), "{err}");
        let c = Credentials::load_with_env(&config, Some("env-pass\n".into()))
            .unwrap()
            .unwrap();
        assert_eq!(c.password, "env-pass");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "file-pass\n").unwrap();
        config.app_password_file = Some(path.clone());
        let c = Credentials::load_with_env(&config, Some("env-pass".into()))
            .unwrap()
            .unwrap();
        assert_eq!(c.password, "file-pass");
        std::fs::write(&path, "\n").unwrap();
        assert!(Credentials::load_with_env(&config, None).is_err());
        config.app_password_file = Some(dir.path().join("missing"));
        let err = Credentials::load_with_env(&config, None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

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
