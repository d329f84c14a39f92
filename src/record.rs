//! The `app.knot.repo` record: the authoritative state of one repository.
//!
//! Owns the record type as it appears on the owner's PDS (ATProto JSON: `$type`,
//! camelCase, older snake_case names accepted on read), its validation, and the
//! merge rules that combine a remote record or peer hints with what the node
//! already knows. Everything here is pure: no I/O.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::repo_id::RepoId;

/// The lexicon of the record, as published.
pub const LEXICON: &str = include_str!("lexicons/app.knot.repo.json");
/// The record's collection NSID.
pub const COLLECTION: &str = "app.knot.repo";
/// Most peer hints kept per repository; more are dropped (oldest order kept).
pub const MAX_PEERS: usize = 64;
/// Most direct addresses kept per peer hint.
pub const MAX_ADDRS_PER_PEER: usize = 16;
/// Longest ticket string accepted.
pub const MAX_TICKET_LEN: usize = 2048;

/// Why a record or peer hint is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The record describes another repository than the one asked for.
    #[error(
        "record is for repo {found}, expected {expected}: check the --record locator given to add-repo"
    )]
    RepoIdMismatch {
        /// The repository the node tracks.
        expected: String,
        /// The repository the record names.
        found: String,
    },
    /// A field does not have the required syntax.
    #[error("record field {field} is invalid: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The JSON could not be decoded as a record.
    #[error("record JSON is malformed: {0}")]
    Malformed(String),
}

/// A hint where a peer serving the repository can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerHint {
    /// The peer's iroh node id (lowercase hex of its public key).
    #[serde(alias = "node_id")]
    pub node_id: String,
    /// Direct socket addresses, sorted and deduplicated.
    #[serde(default)]
    pub addrs: Vec<String>,
    /// An iroh endpoint ticket for the peer, if one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

impl PeerHint {
    /// Build a hint from an endpoint address, normalizing as [`PeerHint::validate`] does.
    pub fn new(node_id: String, addrs: Vec<String>, ticket: Option<String>) -> Self {
        let mut hint = Self {
            node_id,
            addrs,
            ticket,
        };
        hint.addrs.sort();
        hint.addrs.dedup();
        hint
    }

    /// Check syntax and normalize: node id parsed and re-encoded as hex, addresses
    /// parsed as socket addresses, sorted and deduplicated, ticket length bounded.
    pub fn validate(mut self) -> Result<Self, RecordError> {
        let key: iroh::PublicKey = self
            .node_id
            .parse()
            .map_err(|e| RecordError::InvalidField {
                field: "peers.nodeId",
                reason: format!("{e}"),
            })?;
        self.node_id = key.to_string();
        let mut addrs = Vec::with_capacity(self.addrs.len());
        for addr in &self.addrs {
            let parsed: SocketAddr = addr.parse().map_err(|_| RecordError::InvalidField {
                field: "peers.addrs",
                reason: format!("{addr:?} is not an ip:port socket address"),
            })?;
            addrs.push(parsed.to_string());
        }
        addrs.sort();
        addrs.dedup();
        addrs.truncate(MAX_ADDRS_PER_PEER);
        self.addrs = addrs;
        if let Some(t) = &self.ticket
            && t.len() > MAX_TICKET_LEN
        {
            return Err(RecordError::InvalidField {
                field: "peers.ticket",
                reason: "longer than 2048 characters".into(),
            });
        }
        Ok(self)
    }
}

/// The state of one repository as published in its `app.knot.repo` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoRecord {
    /// The record type, always `app.knot.repo` when written.
    #[serde(rename = "$type", default = "collection_name")]
    pub record_type: String,
    /// The repository this record describes.
    #[serde(alias = "repo_id")]
    pub repo_id: RepoId,
    /// Object id (hex) that HEAD points to in the published state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// BLAKE3 hash (hex) of the manifest blob of the published state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Peers known to serve the repository.
    #[serde(default)]
    pub peers: Vec<PeerHint>,
    /// Sequence number of the published state (the publisher's statement
    /// sequence, milliseconds since the Unix epoch), when the writer knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

fn collection_name() -> String {
    COLLECTION.to_string()
}

impl RepoRecord {
    /// An empty record for a repository: no head, no manifest, no peers.
    pub fn empty(repo_id: RepoId) -> Self {
        Self {
            record_type: collection_name(),
            repo_id,
            head: None,
            manifest: None,
            peers: Vec::new(),
            seq: None,
        }
    }

    /// Parse a record from ATProto JSON and validate every field.
    pub fn from_json(value: serde_json::Value) -> Result<Self, RecordError> {
        let record: RepoRecord =
            serde_json::from_value(value).map_err(|e| RecordError::Malformed(e.to_string()))?;
        record.validate()
    }

    /// Validate and normalize all fields.
    pub fn validate(mut self) -> Result<Self, RecordError> {
        if self.record_type != COLLECTION {
            return Err(RecordError::InvalidField {
                field: "$type",
                reason: format!("expected {COLLECTION}, found {:?}", self.record_type),
            });
        }
        if let Some(head) = &self.head {
            check_hex("head", head, &[40, 64])?;
        }
        if let Some(manifest) = &self.manifest {
            check_hex("manifest", manifest, &[64])?;
        }
        let peers = std::mem::take(&mut self.peers);
        self.peers = merge_peers(Vec::new(), validate_peers(peers)?);
        Ok(self)
    }

    /// The manifest hash as an iroh-blobs hash, if the record names one.
    pub fn manifest_hash(&self) -> Option<iroh_blobs::Hash> {
        self.manifest.as_deref().and_then(parse_hash_hex)
    }
}

/// Validate a list of peer hints.
pub fn validate_peers(peers: Vec<PeerHint>) -> Result<Vec<PeerHint>, RecordError> {
    peers.into_iter().map(PeerHint::validate).collect()
}

/// Parse a 64-character hex string as a BLAKE3 hash.
pub fn parse_hash_hex(hex: &str) -> Option<iroh_blobs::Hash> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.as_bytes())
        .ok()?;
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(iroh_blobs::Hash::from_bytes(arr))
}

fn check_hex(field: &'static str, value: &str, lens: &[usize]) -> Result<(), RecordError> {
    let ok = lens.contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RecordError::InvalidField {
            field,
            reason: format!("expected lowercase hex of length {lens:?}, found {value:?}"),
        })
    }
}

/// Merge a freshly fetched remote record into the local one.
///
/// The remote record's `head` and `manifest` win wherever it has them; peer hints
/// are unioned by node id (see [`merge_peers`]). A remote record naming another
/// repository is rejected.
pub fn merge_record(local: &RepoRecord, remote: &RepoRecord) -> Result<RepoRecord, RecordError> {
    if local.repo_id != remote.repo_id {
        return Err(RecordError::RepoIdMismatch {
            expected: local.repo_id.to_string(),
            found: remote.repo_id.to_string(),
        });
    }
    Ok(RepoRecord {
        record_type: collection_name(),
        repo_id: local.repo_id.clone(),
        head: remote.head.clone().or_else(|| local.head.clone()),
        manifest: remote.manifest.clone().or_else(|| local.manifest.clone()),
        peers: merge_peers(local.peers.clone(), remote.peers.clone()),
        seq: remote.seq.or(local.seq),
    })
}

/// Union peer hints by node id: addresses are unioned, sorted and deduplicated;
/// a ticket already known is kept, otherwise the incoming one is taken. The
/// result is ordered by node id and bounded to [`MAX_PEERS`] entries, keeping
/// the peers already known first.
pub fn merge_peers(known: Vec<PeerHint>, incoming: Vec<PeerHint>) -> Vec<PeerHint> {
    let mut by_id: BTreeMap<String, (usize, PeerHint)> = BTreeMap::new();
    for (order, hint) in known.into_iter().chain(incoming).enumerate() {
        match by_id.get_mut(&hint.node_id) {
            Some((_, existing)) => {
                existing.addrs.extend(hint.addrs);
                existing.addrs.sort();
                existing.addrs.dedup();
                existing.addrs.truncate(MAX_ADDRS_PER_PEER);
                if existing.ticket.is_none() {
                    existing.ticket = hint.ticket;
                }
            }
            None => {
                let mut hint = hint;
                hint.addrs.sort();
                hint.addrs.dedup();
                by_id.insert(hint.node_id.clone(), (order, hint));
            }
        }
    }
    let mut peers: Vec<(usize, PeerHint)> = by_id.into_values().collect();
    if peers.len() > MAX_PEERS {
        peers.sort_by_key(|(order, _)| *order);
        peers.truncate(MAX_PEERS);
    }
    let mut peers: Vec<PeerHint> = peers.into_iter().map(|(_, p)| p).collect();
    peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    peers
}

/// One record of a `com.atproto.repo.listRecords` page.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRecord {
    /// The record key.
    pub rkey: String,
    /// The record's CID, when the PDS sent it.
    pub cid: Option<String>,
    /// The record value.
    pub value: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE_A: &str = "ae58ff8833241ac82d6ff7611046ed67b5072d142c588d0063e942d9a75502b6";

    fn node_b() -> String {
        iroh::SecretKey::from_bytes(&[7; 32]).public().to_string()
    }

    fn rid() -> RepoId {
        RepoId::parse("did:plc:abc123/website").unwrap()
    }

    fn hint(id: &str, addrs: &[&str], ticket: Option<&str>) -> PeerHint {
        PeerHint {
            node_id: id.into(),
            addrs: addrs.iter().map(|s| s.to_string()).collect(),
            ticket: ticket.map(Into::into),
        }
    }

    #[test]
    fn parses_atproto_and_snake_case() {
        let camel = json!({
            "$type": "app.knot.repo",
            "repoId": "did:plc:abc123/website",
            "head": "a".repeat(40),
            "manifest": "b".repeat(64),
            "peers": [{"nodeId": NODE_A, "addrs": ["127.0.0.1:9", "127.0.0.1:9", "10.0.0.1:1"]}]
        });
        let r = RepoRecord::from_json(camel).unwrap();
        assert_eq!(r.peers[0].addrs, vec!["10.0.0.1:1", "127.0.0.1:9"]);
        let snake = json!({
            "$type": "app.knot.repo",
            "repo_id": "did:plc:abc123/website",
            "head": "a".repeat(40),
            "manifest": "b".repeat(64),
            "peers": [{"node_id": NODE_A, "addrs": ["127.0.0.1:9", "10.0.0.1:1"]}]
        });
        assert_eq!(RepoRecord::from_json(snake).unwrap(), r);
        let out = serde_json::to_value(&r).unwrap();
        assert_eq!(out["$type"], "app.knot.repo");
        assert_eq!(out["repoId"], "did:plc:abc123/website");
        assert_eq!(out["peers"][0]["nodeId"], NODE_A);
    }

    #[test]
    fn rejects_malformed_records() {
        for bad in [
            json!({"repoId": "did:plc:abc123/../x"}),
            json!({"repoId": "did:plc:abc123/w", "head": "xyz"}),
            json!({"repoId": "did:plc:abc123/w", "manifest": "A".repeat(64)}),
            json!({"repoId": "did:plc:abc123/w", "peers": [{"nodeId": "nope"}]}),
            json!({"repoId": "did:plc:abc123/w", "peers": [{"nodeId": NODE_A, "addrs": ["localhost"]}]}),
            json!({"$type": "app.other", "repoId": "did:plc:abc123/w"}),
            json!({"head": "a".repeat(40)}),
            json!([1, 2, 3]),
        ] {
            assert!(
                RepoRecord::from_json(bad.clone()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn remote_head_and_manifest_win_and_peers_union() {
        let mut local = RepoRecord::empty(rid());
        local.head = Some("1".repeat(40));
        local.manifest = Some("2".repeat(64));
        local.peers = vec![hint(NODE_A, &["127.0.0.1:2"], Some("local-ticket"))];
        let mut remote = RepoRecord::empty(rid());
        remote.head = Some("3".repeat(40));
        remote.manifest = Some("4".repeat(64));
        remote.peers = vec![
            hint(
                NODE_A,
                &["127.0.0.1:1", "127.0.0.1:2"],
                Some("remote-ticket"),
            ),
            hint(&node_b(), &["127.0.0.1:5"], None),
        ];
        let merged = merge_record(&local, &remote).unwrap();
        assert_eq!(merged.head, remote.head);
        assert_eq!(merged.manifest, remote.manifest);
        assert_eq!(merged.peers.len(), 2);
        let a = merged.peers.iter().find(|p| p.node_id == NODE_A).unwrap();
        assert_eq!(a.addrs, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(a.ticket.as_deref(), Some("local-ticket"));
        // merge is idempotent
        assert_eq!(merge_record(&merged, &remote).unwrap(), merged);
    }

    #[test]
    fn missing_remote_fields_keep_local() {
        let mut local = RepoRecord::empty(rid());
        local.manifest = Some("2".repeat(64));
        let remote = RepoRecord::empty(rid());
        assert_eq!(
            merge_record(&local, &remote).unwrap().manifest,
            local.manifest
        );
    }

    #[test]
    fn lexicon_names_every_serialized_field() {
        let lexicon: serde_json::Value = serde_json::from_str(LEXICON).unwrap();
        assert_eq!(lexicon["id"], COLLECTION);
        let props = &lexicon["defs"]["main"]["record"]["properties"];
        let peer_props = &lexicon["defs"]["peer"]["properties"];
        let mut record = RepoRecord::empty(rid());
        record.head = Some("a".repeat(40));
        record.manifest = Some("b".repeat(64));
        record.seq = Some(7);
        record.peers = vec![hint(NODE_A, &["127.0.0.1:1"], Some("t"))];
        let value = serde_json::to_value(&record).unwrap();
        for key in value.as_object().unwrap().keys() {
            assert!(
                key == "$type" || props.get(key).is_some(),
                "{key} missing from the lexicon"
            );
        }
        for key in value["peers"][0].as_object().unwrap().keys() {
            assert!(
                peer_props.get(key).is_some(),
                "peer {key} missing from the lexicon"
            );
        }
    }

    #[test]
    fn unknown_ticket_is_learned() {
        let merged = merge_peers(
            vec![hint(NODE_A, &[], None)],
            vec![hint(NODE_A, &[], Some("t"))],
        );
        assert_eq!(merged[0].ticket.as_deref(), Some("t"));
    }

    #[test]
    fn mismatched_repo_id_rejected() {
        let local = RepoRecord::empty(rid());
        let remote = RepoRecord::empty(RepoId::parse("did:plc:evil/website").unwrap());
        let err = merge_record(&local, &remote).unwrap_err();
        assert!(matches!(err, RecordError::RepoIdMismatch { .. }));
        assert!(err.to_string().contains("did:plc:evil/website"));
    }

    #[test]
    fn peer_list_is_bounded() {
        let incoming: Vec<PeerHint> = (0..200u8)
            .map(|i| {
                let id = iroh::SecretKey::from_bytes(&[i; 32]).public().to_string();
                hint(&id, &[], None)
            })
            .collect();
        let first = incoming[0].node_id.clone();
        let merged = merge_peers(incoming[..1].to_vec(), incoming);
        assert_eq!(merged.len(), MAX_PEERS);
        assert!(merged.iter().any(|p| p.node_id == first));
    }
}
