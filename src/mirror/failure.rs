//! Why a mirror's fetch failed, in terms an operator can act on: the
//! [`FailureClass`] read from git's error output, git's last words, and an
//! HTTP upstream's `Retry-After` (read by one more request of its own, as
//! git does not print it). Nothing here keeps state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a probe for an HTTP upstream's `Retry-After` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of failure a fetch met, so an operator knows where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The host name does not resolve.
    Dns,
    /// The TLS handshake or certificate failed.
    Tls,
    /// The HTTP server answered with an error status.
    HttpStatus(u16),
    /// The host could not be reached or hung up.
    Unreachable,
    /// The repository does not exist there (or is not exported).
    NotFound,
    /// The pack grew past the repository's byte limit.
    TooLarge,
    /// No progress for the idle limit, or longer than the total limit.
    TimedOut,
    /// The upstream sent objects or refs git refused.
    InvalidData,
    /// Something on this node: the disk, the git binary.
    Local,
    /// The node refused to publish what was fetched (a quota, a full disk).
    Publish,
    /// Another git failure; the message says which.
    Git,
}

impl FailureClass {
    /// Its name as operators see it (`mirrors`, metrics): `dns`,
    /// `http-status`, `not-found`...
    pub fn name(self) -> String {
        match self {
            FailureClass::HttpStatus(_) => "http-status".to_owned(),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{other:?}")),
        }
    }

    /// What the operator can do about it.
    pub fn hint(self) -> &'static str {
        match self {
            FailureClass::Dns => "check the host name and this machine's DNS",
            FailureClass::Tls => "check the upstream's certificate and this machine's clock",
            FailureClass::HttpStatus(429) | FailureClass::HttpStatus(503) => {
                "the upstream asks to slow down; the mirror waits as it asked"
            }
            FailureClass::HttpStatus(401) | FailureClass::HttpStatus(403) => {
                "the upstream refuses: only public repositories can be mirrored"
            }
            FailureClass::HttpStatus(_) => "the upstream's web server answered with an error",
            FailureClass::Unreachable => {
                "the upstream is down or unreachable; the mirror keeps serving what it holds and retries"
            }
            FailureClass::NotFound => "check the URL: the upstream has no such repository",
            FailureClass::TooLarge => {
                "the repository is larger than max_repo_bytes allows; raise the limit or unmirror it"
            }
            FailureClass::TimedOut => {
                "the upstream stalled; raise mirror.idle_timeout_secs for a slow link"
            }
            FailureClass::InvalidData => {
                "the upstream sent objects git refuses; it is broken or hostile"
            }
            FailureClass::Local => "see the message: this node's disk or git",
            FailureClass::Publish => {
                "the node could not publish what it fetched; see the message (quotas, disk)"
            }
            FailureClass::Git => "see the message",
        }
    }
}

/// A failed fetch: its class, git's words, and how long the upstream asked
/// to be left alone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({class:?}: {})", class.hint())]
pub struct FetchFailure {
    /// What kind of failure.
    pub class: FailureClass,
    /// What happened, git's last words included.
    pub message: String,
    /// The upstream's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl FetchFailure {
    pub(super) fn local(message: impl Into<String>) -> Self {
        FetchFailure {
            class: FailureClass::Local,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The lines of git's error output that say what went wrong (progress
/// lines left out), bounded.
pub(super) fn last_words(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| l.starts_with("fatal") || l.starts_with("error") || l.starts_with("warning"))
        .collect();
    let text = if lines.is_empty() {
        stderr.trim().to_owned()
    } else {
        lines.join("; ")
    };
    let mut text: String = text.chars().rev().take(600).collect();
    text = text.chars().rev().collect();
    if text.is_empty() {
        "no message".into()
    } else {
        text
    }
}

/// Sort git's error output into a class.
pub fn classify(stderr: &str) -> FailureClass {
    let text = stderr.to_ascii_lowercase();
    let has = |needle: &str| text.contains(needle);
    if let Some(pos) = text.find("the requested url returned error: ") {
        let code = &text[pos + "the requested url returned error: ".len()..];
        if let Ok(code) = code.chars().take(3).collect::<String>().parse::<u16>() {
            return if code == 404 {
                FailureClass::NotFound
            } else {
                FailureClass::HttpStatus(code)
            };
        }
    }
    if has("could not resolve host")
        || has("name or service not known")
        || has("temporary failure in name resolution")
        || has("unable to look up")
    {
        FailureClass::Dns
    } else if has("ssl") || has("tls") || has("certificate") {
        FailureClass::Tls
    } else if has("repository not found")
        || has("not exported")
        || has("does not appear to be a git repository")
        || has("not found")
    {
        FailureClass::NotFound
    } else if has("fsck")
        || has("bad object")
        || has("invalid")
        || has("did not send all necessary objects")
        || has("protocol error")
    {
        FailureClass::InvalidData
    } else if has("connection refused")
        || has("failed to connect")
        || has("couldn't connect")
        || has("unable to connect")
        || has("connection timed out")
        || has("network is unreachable")
        || has("no route to host")
        || has("connection reset")
        || has("hung up")
        || has("early eof")
    {
        FailureClass::Unreachable
    } else if has("no space left") || has("permission denied") || has("unable to create") {
        FailureClass::Local
    } else {
        FailureClass::Git
    }
}

/// Ask an HTTP upstream once more, only to read its `Retry-After`.
pub(super) async fn probe_retry_after(url: &str) -> Option<Duration> {
    let url = format!(
        "{}/info/refs?service=git-upload-pack",
        url.trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()?;
    let response = client.get(url).send().await.ok()?;
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    parse_retry_after(value.to_str().ok()?, std::time::SystemTime::now())
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_errors_are_sorted_into_classes() {
        let cases = [
            (
                "fatal: unable to access 'https://x/': Could not resolve host: x",
                FailureClass::Dns,
            ),
            (
                "fatal: unable to access 'https://x/': The requested URL returned error: 429",
                FailureClass::HttpStatus(429),
            ),
            (
                "fatal: unable to access 'https://x/': The requested URL returned error: 404",
                FailureClass::NotFound,
            ),
            (
                "fatal: remote error: access denied or repository not exported: /x.git",
                FailureClass::NotFound,
            ),
            (
                "fatal: unable to connect to 127.0.0.1:\n127.0.0.1[0: 127.0.0.1]: errno=Connection refused",
                FailureClass::Unreachable,
            ),
            (
                "fatal: unable to access 'https://x/': SSL certificate problem: self-signed certificate",
                FailureClass::Tls,
            ),
            (
                "error: object 1234: badTimezone: invalid author/committer line\nfatal: fsck error in packed object",
                FailureClass::InvalidData,
            ),
            ("fatal: something new", FailureClass::Git),
        ];
        for (text, class) in cases {
            assert_eq!(classify(text), class, "{text}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn classes_are_named_as_operators_see_them() {
        assert_eq!(FailureClass::HttpStatus(429).name(), "http-status");
        assert_eq!(FailureClass::NotFound.name(), "not-found");
        assert_eq!(FailureClass::TimedOut.name(), "timed-out");
        assert_eq!(FailureClass::Dns.name(), "dns");
    }
}
