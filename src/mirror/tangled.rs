//! Tangled repositories as mirror sources: an `sh.tangled.repo` record
//! (named by its AT URI, or as `<handle-or-did>/<name>`) resolved through
//! the owner's DID document and PDS to the git URL of the knot that serves
//! it (`https://<knot>/<owner-did>/<name>`).
//!
//! Every field of the record is the owner's to choose: the knot must be a
//! bare host name (with an optional port), never an address on this
//! machine or its private network unless `atproto.allow_insecure_http` is
//! set (loopback tests), and the name must make a valid repository id.
//! Nothing here keeps state.

use std::net::IpAddr;

use serde_json::Value;

use crate::{atproto::XrpcClient, config::AtprotoConfig, repo_id::RepoId};

/// The collection of Tangled repository records.
pub const COLLECTION: &str = "sh.tangled.repo";
/// Most pages of an owner's records read to find a name (100 each).
const MAX_PAGES: usize = 20;

/// A source that names a Tangled record rather than a git URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSource {
    /// `at://<did-or-handle>/sh.tangled.repo/<rkey>`.
    AtUri {
        /// The DID or handle.
        authority: String,
        /// The record key.
        rkey: String,
    },
    /// `<did-or-handle>/<name>`.
    Named {
        /// The DID or handle.
        authority: String,
        /// The repository name.
        name: String,
    },
}

impl RecordSource {
    /// Recognise a record source; `None` for anything else (a URL).
    pub fn parse(source: &str) -> Option<Self> {
        let source = source.trim();
        if let Some(rest) = source.strip_prefix("at://") {
            let mut parts = rest.split('/');
            let (authority, collection, rkey) = (parts.next()?, parts.next()?, parts.next()?);
            if collection != COLLECTION || parts.next().is_some() || rkey.is_empty() {
                return None;
            }
            return Some(RecordSource::AtUri {
                authority: authority.to_owned(),
                rkey: rkey.to_owned(),
            });
        }
        if source.contains("://") {
            return None;
        }
        let (authority, name) = source.rsplit_once('/')?;
        let authority = authority.trim_start_matches('@');
        let plausible =
            authority.starts_with("did:") || crate::atproto::looks_like_handle(authority);
        (plausible && !name.is_empty() && !authority.contains('/')).then(|| RecordSource::Named {
            authority: authority.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// A Tangled repository as its record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TangledRepo {
    /// The repository id, `<owner-did>/<name>`.
    pub repo_id: RepoId,
    /// The knot's host (and port).
    pub knot: String,
    /// The record's AT URI.
    pub record: String,
}

impl TangledRepo {
    /// The git URL the knot serves it at.
    pub fn git_url(&self, insecure: bool) -> String {
        let scheme = if insecure { "http" } else { "https" };
        format!(
            "{scheme}://{}/{}/{}",
            self.knot,
            self.repo_id.did(),
            self.repo_id.name()
        )
    }
}

/// Why a record source does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum TangledError {
    /// The owner, its PDS or the record could not be read.
    #[error("cannot read the Tangled record of {source_text}: {message}")]
    Unreadable {
        /// The source as given.
        source_text: String,
        /// What failed.
        message: String,
    },
    /// No record of that name.
    #[error(
        "{authority} has no {COLLECTION} record named {name:?}; check the name, or give the record's AT URI"
    )]
    NoSuchName {
        /// The owner.
        authority: String,
        /// The name looked for.
        name: String,
    },
    /// The record is not one a mirror can use.
    #[error("the Tangled record {record} is unusable: {reason}")]
    Invalid {
        /// Its AT URI.
        record: String,
        /// What is wrong.
        reason: String,
    },
}

/// Resolve `source` to the repository its record names.
pub async fn resolve(
    xrpc: &XrpcClient,
    atproto: &AtprotoConfig,
    source: &RecordSource,
    text: &str,
) -> Result<TangledRepo, TangledError> {
    let unreadable = |e: String| TangledError::Unreadable {
        source_text: text.to_owned(),
        message: e,
    };
    let authority = match source {
        RecordSource::AtUri { authority, .. } | RecordSource::Named { authority, .. } => authority,
    };
    let did = if authority.starts_with("did:") {
        crate::repo_id::validate_did(authority).map_err(|e| unreadable(e.to_owned()))?;
        authority.clone()
    } else {
        xrpc.resolve_handle(authority, &atproto.handle_resolver)
            .await
            .map_err(|e| unreadable(e.to_string()))?
    };
    let pds = xrpc
        .resolve_pds(&atproto.plc_directory, &did)
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    let (rkey, value) = match source {
        RecordSource::AtUri { rkey, .. } => {
            let fetched = xrpc
                .get_record(&pds, &did, COLLECTION, rkey)
                .await
                .map_err(|e| unreadable(e.to_string()))?;
            (rkey.clone(), fetched.value)
        }
        RecordSource::Named { name, .. } => {
            let mut cursor = None;
            let mut found = None;
            for _ in 0..MAX_PAGES {
                let (records, next) = xrpc
                    .list_records(&pds, &did, COLLECTION, cursor.as_deref())
                    .await
                    .map_err(|e| unreadable(e.to_string()))?;
                found = records
                    .into_iter()
                    .find(|r| r.value.get("name").and_then(Value::as_str) == Some(name));
                if found.is_some() || next.is_none() {
                    break;
                }
                cursor = next;
            }
            let record = found.ok_or_else(|| TangledError::NoSuchName {
                authority: authority.clone(),
                name: name.clone(),
            })?;
            (record.rkey, record.value)
        }
    };
    let record = format!("at://{did}/{COLLECTION}/{rkey}");
    let repo = from_record(&did, &record, &value, atproto.allow_insecure_http)?;
    if !atproto.allow_insecure_http {
        check_knot_addresses(&repo.knot)
            .await
            .map_err(|reason| TangledError::Invalid {
                record: record.clone(),
                reason,
            })?;
    }
    Ok(repo)
}

/// How long resolving a knot's host name may take.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A knot's name must not lead to this machine or a private network: every
/// address it resolves to now is checked (a record is its owner's to
/// change, and a mirror follows it to another knot).
async fn check_knot_addresses(knot: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(&format!("https://{knot}/"))
        .map_err(|_| format!("its knot {knot:?} is not a host name"))?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port().unwrap_or(443);
    let addrs = tokio::time::timeout(
        LOOKUP_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| {
        format!(
            "its knot {knot:?} did not resolve within {} s",
            LOOKUP_TIMEOUT.as_secs()
        )
    })?
    .map_err(|e| format!("its knot {knot:?} does not resolve: {e}"))?;
    for addr in addrs {
        if !is_public(addr.ip()) {
            return Err(format!(
                "its knot {knot:?} resolves to {}, on this machine or a private network",
                addr.ip()
            ));
        }
    }
    Ok(())
}

/// Whether `ip` is reachable on the public internet (not loopback, private,
/// link-local, shared, unspecified or unique-local, IPv4-mapped included).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local())
            }
        },
    }
}

/// Check the record's fields and build the repository they name.
pub fn from_record(
    did: &str,
    record: &str,
    value: &Value,
    allow_local: bool,
) -> Result<TangledRepo, TangledError> {
    let invalid = |reason: String| TangledError::Invalid {
        record: record.to_owned(),
        reason,
    };
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("it has no {name:?} string")))
    };
    let name = field("name")?;
    let knot = field("knot")?;
    check_knot(knot, allow_local).map_err(invalid)?;
    let repo_id = RepoId::parse(&format!("{did}/{name}"))
        .map_err(|e| invalid(format!("its name makes no repository id: {e}")))?;
    Ok(TangledRepo {
        repo_id,
        knot: knot.to_ascii_lowercase(),
        record: record.to_owned(),
    })
}

/// A knot must be `host` or `host:port`, and not this machine or its
/// private network unless `allow_local`.
fn check_knot(knot: &str, allow_local: bool) -> Result<(), String> {
    let bad = || format!("its knot {knot:?} is not a host name");
    if knot.is_empty()
        || knot.len() > 253
        || !knot
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(bad());
    }
    let url = reqwest::Url::parse(&format!("https://{knot}/")).map_err(|_| bad())?;
    let host = url.host_str().ok_or_else(bad)?;
    let local = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => !is_public(ip),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    };
    if local && !allow_local {
        return Err(format!(
            "its knot {knot:?} is on this machine or a private network"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_sources_are_told_from_urls() {
        assert_eq!(
            RecordSource::parse("at://did:plc:abc/sh.tangled.repo/3kabc"),
            Some(RecordSource::AtUri {
                authority: "did:plc:abc".into(),
                rkey: "3kabc".into()
            })
        );
        assert_eq!(
            RecordSource::parse("@alice.example.com/website"),
            Some(RecordSource::Named {
                authority: "alice.example.com".into(),
                name: "website".into()
            })
        );
        assert!(RecordSource::parse("did:plc:abc/website").is_some());
        assert_eq!(
            RecordSource::parse("at://did:plc:abc/app.bsky.feed.post/1"),
            None
        );
        assert_eq!(
            RecordSource::parse("https://knot.example.com/did:plc:abc/x"),
            None
        );
        assert_eq!(RecordSource::parse("/srv/git/x.git"), None);
        assert_eq!(RecordSource::parse("website"), None);
    }

    #[test]
    fn a_record_names_its_knot_url_and_hostile_fields_are_refused() {
        let did = "did:plc:abc123";
        let uri = "at://did:plc:abc123/sh.tangled.repo/3k";
        let ok = from_record(
            did,
            uri,
            &json!({"name": "website", "knot": "Knot.Example.com"}),
            false,
        )
        .unwrap();
        assert_eq!(ok.repo_id.as_str(), "did:plc:abc123/website");
        assert_eq!(
            ok.git_url(false),
            "https://knot.example.com/did:plc:abc123/website"
        );
        for (value, says) in [
            (json!({"knot": "k.example.com"}), "no \"name\""),
            (json!({"name": "x"}), "no \"knot\""),
            (
                json!({"name": "../x", "knot": "k.example.com"}),
                "repository id",
            ),
            (
                json!({"name": "x", "knot": "k.example.com/evil"}),
                "not a host name",
            ),
            (
                json!({"name": "x", "knot": "user@k.example.com"}),
                "not a host name",
            ),
            (
                json!({"name": "x", "knot": "127.0.0.1:22"}),
                "private network",
            ),
            (json!({"name": "x", "knot": "10.1.2.3"}), "private network"),
            (
                json!({"name": "x", "knot": "[::1]:8080"}),
                "private network",
            ),
            (json!({"name": "x", "knot": "localhost"}), "private network"),
        ] {
            let err = from_record(did, uri, &value, false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{value}: {err}");
        }
        assert!(
            from_record(
                did,
                uri,
                &json!({"name": "x", "knot": "127.0.0.1:8080"}),
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn only_public_addresses_count_as_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_knot_name_that_resolves_to_this_machine_is_refused() {
        let err = check_knot_addresses("localhost:443").await.unwrap_err();
        assert!(err.contains("private network"), "{err}");
    }
}
