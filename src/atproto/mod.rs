//! ATProto over XRPC: reading and writing `app.knot.repo` records on a PDS.
//!
//! Owns the HTTP side of ATProto, split by concern: [`xrpc`] is the client
//! (get, list and put records, sessions; every response body read with a
//! hard size limit, every request with a timeout), [`identity`] resolves DIDs
//! to their PDS (PLC directory or `did:web`) and handles to DIDs, and
//! [`records`] fetches and checks the record of a tracked repository.
//! Passwords and session tokens never appear in errors or logs. Nothing here
//! survives a restart.

mod identity;
mod records;
mod xrpc;

pub use identity::{did_document_url, looks_like_handle, pds_from_did_doc};
pub use records::{check_locator, fetch_repo_record, fetch_repo_record_at};
pub use xrpc::{
    FetchedRecord, ListedRecord, PutResult, Session, Swap, XrpcClient, validate_http_url,
};

use serde::Deserialize;
use serde_json::Value;

use crate::record::RecordError;

/// Largest response body accepted, in bytes.
pub const MAX_BODY: usize = 1024 * 1024;
/// The User-Agent sent with every request.
pub const USER_AGENT: &str = concat!("knotd/", env!("CARGO_PKG_VERSION"));
/// Environment variable holding the app password when no file is configured.
/// Longest XRPC error text kept from a response.
pub(crate) const MAX_ERROR_TEXT: usize = 300;
/// Most redirects followed, and only within the same host.
pub(crate) const MAX_REDIRECTS: usize = 3;

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
    /// The server is rate limiting (HTTP 429).
    #[error("{url} is rate limiting requests (HTTP 429){}; knotd waits and retries", .retry_after.map(|d| format!(", asking to wait {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The request URL.
        url: String,
        /// How long the server asked to wait (`Retry-After`), if it said.
        retry_after: Option<std::time::Duration>,
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

pub(crate) fn xrpc_detail(error: &Option<String>, message: &Option<String>) -> String {
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

    /// How long the server asked to wait before the next request, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            AtprotoError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
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
            Self::RateLimited { url, retry_after } => Self::RateLimited {
                url: url.clone(),
                retry_after: *retry_after,
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

pub(crate) fn shorten(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
