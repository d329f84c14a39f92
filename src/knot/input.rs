//! Admin input turned into the core's terms: peer tickets into hints, and
//! `--pds`/`--record` into a record locator. Every check here runs before the
//! core sees the command, so bad input changes nothing.

use iroh::EndpointAddr;
use iroh_tickets::endpoint::EndpointTicket;

use super::KnotError;
use crate::{
    record::{self, PeerHint},
    repo_id::{RepoId, validate_did},
    state::Locator,
};

/// Parse an endpoint ticket into a peer hint that keeps the ticket. A bare
/// node id is taken too: such a peer is found through address discovery.
pub fn parse_ticket(ticket: &str) -> Result<PeerHint, KnotError> {
    if let Ok(id) = ticket.trim().parse::<iroh::EndpointId>() {
        return Ok(PeerHint::new(id.to_string(), Vec::new(), None));
    }
    let parsed: EndpointTicket = ticket.trim().parse().map_err(|e| KnotError::BadTicket {
        ticket: ticket.chars().take(24).collect(),
        reason: format!("{e}"),
    })?;
    let addr: EndpointAddr = parsed.into();
    Ok(PeerHint::new(
        addr.id.to_string(),
        addr.ip_addrs().map(|a| a.to_string()).collect(),
        Some(ticket.trim().to_string()),
    ))
}

/// Build the record locator from `--pds` and `--record`.
///
/// `--record` is an AT URI `at://<did>/<collection>/<rkey>` whose DID must be the
/// repository owner's; without it, the record is `at://<did>/app.knot.repo/<name>`
/// when `--pds` is given, and the repository has no record otherwise.
pub fn build_locator(
    repo_id: &RepoId,
    pds: Option<String>,
    record: Option<String>,
) -> Result<Option<Locator>, KnotError> {
    if let Some(pds) = &pds
        && !(pds.starts_with("https://") || pds.starts_with("http://"))
    {
        return Err(KnotError::BadLocator(format!(
            "--pds {pds:?} must be an http(s) URL such as https://pds.example.com"
        )));
    }
    let (did, collection, rkey) = match record {
        Some(uri) => {
            let rest = uri
                .strip_prefix("at://")
                .ok_or_else(|| KnotError::BadLocator(format!("{uri:?} must start with at://")))?;
            let parts: Vec<&str> = rest.split('/').collect();
            let [did, collection, rkey] = parts[..] else {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?} must have the form at://<did>/<collection>/<rkey>"
                )));
            };
            validate_did(did).map_err(|r| KnotError::BadLocator(format!("{uri:?}: {r}")))?;
            if did != repo_id.did() {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?} belongs to {did}, but {repo_id} is owned by {}; a repository's record must live in its owner's repository",
                    repo_id.did()
                )));
            }
            if collection != record::COLLECTION {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?}: collection must be {}",
                    record::COLLECTION
                )));
            }
            if !valid_rkey(rkey) {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?}: record key must be 1-512 characters of [A-Za-z0-9._:~-] and not . or .."
                )));
            }
            (did.to_string(), collection.to_string(), rkey.to_string())
        }
        None if pds.is_some() => (
            repo_id.did().to_string(),
            record::COLLECTION.to_string(),
            repo_id.name().to_string(),
        ),
        None => return Ok(None),
    };
    Ok(Some(Locator {
        pds,
        did,
        collection,
        rkey,
    }))
}

/// ATProto record key syntax.
pub fn valid_rkey(rkey: &str) -> bool {
    !rkey.is_empty()
        && rkey.len() <= 512
        && rkey != "."
        && rkey != ".."
        && rkey
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'~' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid() -> RepoId {
        RepoId::parse("did:plc:abc123/website").unwrap()
    }

    #[test]
    fn locator_defaults_and_checks() {
        assert_eq!(build_locator(&rid(), None, None).unwrap(), None);
        let l = build_locator(&rid(), Some("https://pds.example".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.did.as_str(), l.collection.as_str(), l.rkey.as_str()),
            ("did:plc:abc123", "app.knot.repo", "website")
        );
        let l = build_locator(
            &rid(),
            None,
            Some("at://did:plc:abc123/app.knot.repo/other".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(l.rkey, "other");
        for bad in [
            "at://did:plc:evil/app.knot.repo/website",
            "at://did:plc:abc123/app.bsky.feed.post/x",
            "at://did:plc:abc123/app.knot.repo/..",
            "at://did:plc:abc123/app.knot.repo",
            "https://x/y/z",
            "at://did:plc:abc123/app.knot.repo/a/b",
        ] {
            assert!(
                build_locator(&rid(), None, Some(bad.into())).is_err(),
                "{bad}"
            );
        }
        assert!(build_locator(&rid(), Some("ftp://x".into()), None).is_err());
    }

    #[test]
    fn tickets_round_trip_into_hints() {
        let key = iroh::SecretKey::from_bytes(&[3; 32]);
        let addr = EndpointAddr::new(key.public()).with_ip_addr("127.0.0.1:4000".parse().unwrap());
        let ticket = EndpointTicket::new(addr.clone()).to_string();
        let hint = parse_ticket(&ticket).unwrap();
        assert_eq!(hint.node_id, key.public().to_string());
        assert_eq!(hint.addrs, vec!["127.0.0.1:4000"]);
        assert_eq!(super::super::net::hint_to_addr(&hint).unwrap(), addr);
        assert!(parse_ticket("endpointgarbage").is_err());
        // A bare node id, for peers found through discovery.
        let hint = parse_ticket(&format!(" {} ", key.public())).unwrap();
        assert_eq!(hint.node_id, key.public().to_string());
        assert!(hint.addrs.is_empty() && hint.ticket.is_none());
    }
}
