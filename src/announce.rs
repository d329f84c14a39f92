//! Head announcements carried on each repository's gossip topic, and the rule
//! that decides which announced state a node adopts.
//!
//! Owns the wire format (`/knot/announce/1`, postcard, size-bounded) and its
//! two signatures: the *statement* (repo, head, manifest, sequence number) is
//! signed by the node that published that state, and the *envelope* around it
//! is signed by the node that sends it on the topic, so a seeder can forward an
//! author's statement as is and add its own peer hint. Decoding never panics;
//! every rejection has a reason. The adoption rule is a plain function.

use std::net::SocketAddr;

use iroh::{PublicKey, SecretKey, Signature};
use serde::{Deserialize, Serialize};

use crate::repo_id::RepoId;

/// Largest encoded message accepted or sent.
pub const MAX_MESSAGE_SIZE: usize = 4096;
/// Most direct addresses carried in one announcement.
pub const MAX_ADDRS: usize = 8;
const STATEMENT_DOMAIN: &[u8] = b"/knot/statement/1";
const ENVELOPE_DOMAIN: &[u8] = b"/knot/announce/1";

/// Why a gossip message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnounceError {
    /// Larger than [`MAX_MESSAGE_SIZE`].
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit")]
    Oversize(usize),
    /// Not a valid encoding.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A signature does not verify.
    #[error("bad {0} signature")]
    BadSignature(&'static str),
    /// The statement is for another repository than the topic's.
    #[error("statement for {found} arrived on the topic of {expected}")]
    WrongRepo {
        /// The topic's repository.
        expected: String,
        /// The repository the statement names.
        found: String,
    },
    /// A field has invalid syntax.
    #[error("invalid field {0}")]
    InvalidField(&'static str),
}

/// The state a publisher vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The repository.
    pub repo_id: String,
    /// Object id (hex) HEAD points to.
    pub head: Option<String>,
    /// BLAKE3 hash of the manifest blob.
    pub manifest: [u8; 32],
    /// The publisher's sequence number for this repository (milliseconds since
    /// the Unix epoch at publish time); higher is newer.
    pub seq: u64,
    /// The publishing node.
    pub publisher: [u8; 32],
}

/// A statement with the publisher's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    /// The statement.
    pub statement: Statement,
    /// Ed25519 signature by `statement.publisher`.
    pub signature: Signature,
}

/// What goes on the wire: a signed statement, forwarded by a sender who adds
/// where it can be reached, all signed by the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The publisher-signed state.
    pub statement: SignedStatement,
    /// The sending node (a provider of the content).
    pub sender: [u8; 32],
    /// The sender's direct addresses.
    pub sender_addrs: Vec<SocketAddr>,
    /// When the sender sent this (milliseconds since the Unix epoch); makes
    /// every send distinct so gossip does not drop a repeated announcement.
    pub sent_at: u64,
    /// Ed25519 signature by `sender` over everything above.
    pub signature: Signature,
}

#[derive(Serialize, Deserialize)]
enum Wire {
    V1(Announcement),
}

fn statement_bytes(statement: &Statement) -> Vec<u8> {
    let mut msg = STATEMENT_DOMAIN.to_vec();
    msg.extend(postcard::to_stdvec(statement).expect("statement encodes"));
    msg
}

fn envelope_bytes(
    statement: &SignedStatement,
    sender: &[u8; 32],
    addrs: &[SocketAddr],
    sent_at: u64,
) -> Vec<u8> {
    let mut msg = ENVELOPE_DOMAIN.to_vec();
    msg.extend(
        postcard::to_stdvec(&(statement, sender, addrs, sent_at)).expect("envelope encodes"),
    );
    msg
}

impl Statement {
    /// Sign this statement as its publisher.
    pub fn sign(self, key: &SecretKey) -> SignedStatement {
        debug_assert_eq!(self.publisher, *key.public().as_bytes());
        let signature = key.sign(&statement_bytes(&self));
        SignedStatement {
            statement: self,
            signature,
        }
    }

    /// The publisher's node id.
    pub fn publisher_id(&self) -> Option<PublicKey> {
        PublicKey::from_bytes(&self.publisher).ok()
    }

    /// The manifest hash.
    pub fn manifest_hash(&self) -> iroh_blobs::Hash {
        iroh_blobs::Hash::from_bytes(self.manifest)
    }
}

impl SignedStatement {
    /// Check the publisher's signature.
    pub fn verify(&self) -> Result<(), AnnounceError> {
        let key = self
            .statement
            .publisher_id()
            .ok_or(AnnounceError::InvalidField("publisher"))?;
        key.verify(&statement_bytes(&self.statement), &self.signature)
            .map_err(|_| AnnounceError::BadSignature("publisher"))
    }
}

impl Announcement {
    /// Wrap a signed statement for sending by `key`'s node, reachable at `addrs`.
    pub fn new(statement: SignedStatement, key: &SecretKey, addrs: Vec<SocketAddr>) -> Self {
        Self::new_at(statement, key, addrs, crate::clock::unix_millis())
    }

    /// [`Announcement::new`] sent at `sent_at` (milliseconds since the Unix
    /// epoch), for callers with a clock of their own.
    pub fn new_at(
        statement: SignedStatement,
        key: &SecretKey,
        mut addrs: Vec<SocketAddr>,
        sent_at: u64,
    ) -> Self {
        addrs.sort();
        addrs.dedup();
        addrs.truncate(MAX_ADDRS);
        let sender = *key.public().as_bytes();
        let signature = key.sign(&envelope_bytes(&statement, &sender, &addrs, sent_at));
        Self {
            statement,
            sender,
            sender_addrs: addrs,
            sent_at,
            signature,
        }
    }

    /// The sending node.
    pub fn sender_id(&self) -> Option<PublicKey> {
        PublicKey::from_bytes(&self.sender).ok()
    }

    /// Encode for the wire.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(&Wire::V1(self.clone())).expect("announcement encodes")
    }

    /// The repository an encoded announcement claims to be about, without
    /// verifying anything; use [`Announcement::decode_verified`] next.
    pub fn peek_repo_id(bytes: &[u8]) -> Option<RepoId> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return None;
        }
        let (Wire::V1(ann), _) = postcard::take_from_bytes::<Wire>(bytes).ok()?;
        RepoId::parse(&ann.statement.statement.repo_id).ok()
    }

    /// Decode and fully verify a message received on `repo_id`'s topic: size,
    /// encoding, both signatures and the repository.
    pub fn decode_verified(bytes: &[u8], repo_id: &RepoId) -> Result<Self, AnnounceError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(AnnounceError::Oversize(bytes.len()));
        }
        let (wire, rest): (Wire, &[u8]) = postcard::take_from_bytes(bytes)
            .map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(AnnounceError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        let Wire::V1(ann) = wire;
        if ann.sender_addrs.len() > MAX_ADDRS {
            return Err(AnnounceError::InvalidField("sender_addrs"));
        }
        let sender = ann
            .sender_id()
            .ok_or(AnnounceError::InvalidField("sender"))?;
        sender
            .verify(
                &envelope_bytes(&ann.statement, &ann.sender, &ann.sender_addrs, ann.sent_at),
                &ann.signature,
            )
            .map_err(|_| AnnounceError::BadSignature("sender"))?;
        ann.statement.verify()?;
        let st = &ann.statement.statement;
        if st.repo_id != repo_id.as_str() {
            return Err(AnnounceError::WrongRepo {
                expected: repo_id.to_string(),
                found: st.repo_id.chars().take(200).collect(),
            });
        }
        if let Some(head) = &st.head
            && !(matches!(head.len(), 40 | 64)
                && head
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(AnnounceError::InvalidField("head"));
        }
        Ok(ann)
    }
}

/// What the node knows when a statement arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptionContext<'a> {
    /// Manifest (hex) the authoritative ATProto record names, if any.
    pub record_manifest: Option<&'a str>,
    /// Manifest (hex) the node holds now.
    pub current_manifest: Option<&'a str>,
    /// Sequence number of the statement the node holds now (0 if none).
    pub current_seq: u64,
    /// Node ids (hex) allowed to publish this repository: the peers of its
    /// ATProto record, the peers the operator named, and the node itself.
    pub trusted_publishers: &'a [String],
}

/// The outcome of [`decide_adoption`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Fetch and adopt the statement's manifest.
    Adopt,
    /// Already holding this manifest.
    AlreadyCurrent,
    /// Not adopted, with the reason.
    Reject(&'static str),
}

/// Decide whether to adopt an announced state.
///
/// An announcement is a hint, never an authority. A manifest is adopted when
/// the repository's ATProto record names it, or when a trusted publisher
/// signed it with a sequence number higher than the state held. A stray peer
/// (not trusted) cannot replace the repository, and replaying an older signed
/// statement cannot roll it back.
pub fn decide_adoption(statement: &Statement, ctx: &AdoptionContext<'_>) -> Adoption {
    let manifest = data_encoding::HEXLOWER.encode(&statement.manifest);
    if ctx.current_manifest == Some(manifest.as_str()) {
        return Adoption::AlreadyCurrent;
    }
    if ctx.record_manifest == Some(manifest.as_str()) {
        return Adoption::Adopt;
    }
    let publisher = data_encoding::HEXLOWER.encode(&statement.publisher);
    if !ctx.trusted_publishers.contains(&publisher) {
        return Adoption::Reject("publisher is not trusted for this repository");
    }
    if statement.seq <= ctx.current_seq {
        return Adoption::Reject("statement is not newer than the state held");
    }
    Adoption::Adopt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    fn rid() -> RepoId {
        RepoId::parse("did:plc:abc/repo").unwrap()
    }

    fn statement(publisher: &SecretKey, manifest: u8, seq: u64) -> SignedStatement {
        Statement {
            repo_id: rid().to_string(),
            head: Some("a".repeat(40)),
            manifest: [manifest; 32],
            seq,
            publisher: *publisher.public().as_bytes(),
        }
        .sign(publisher)
    }

    #[test]
    fn round_trip_and_forwarding() {
        let author = key(1);
        let seeder = key(2);
        let st = statement(&author, 9, 5);
        let ann = Announcement::new(st.clone(), &author, vec!["127.0.0.1:1".parse().unwrap()]);
        let back = Announcement::decode_verified(&ann.encode(), &rid()).unwrap();
        assert_eq!(back, ann);
        // A seeder forwards the author's statement under its own envelope.
        let fwd = Announcement::new(st, &seeder, vec![]);
        let back = Announcement::decode_verified(&fwd.encode(), &rid()).unwrap();
        assert_eq!(back.sender_id().unwrap(), seeder.public());
        assert_eq!(
            back.statement.statement.publisher_id().unwrap(),
            author.public()
        );
    }

    #[test]
    fn forgeries_are_rejected() {
        let author = key(1);
        let mallory = key(3);
        // Statement claims the author but is signed by mallory.
        let mut forged = statement(&author, 9, 5);
        forged.statement.manifest = [7; 32];
        let ann = Announcement::new(forged, &mallory, vec![]);
        assert_eq!(
            Announcement::decode_verified(&ann.encode(), &rid()),
            Err(AnnounceError::BadSignature("publisher"))
        );
        // Envelope tampered after signing.
        let mut ann = Announcement::new(statement(&author, 9, 5), &mallory, vec![]);
        ann.sender_addrs.push("10.0.0.1:1".parse().unwrap());
        assert_eq!(
            Announcement::decode_verified(&ann.encode(), &rid()),
            Err(AnnounceError::BadSignature("sender"))
        );
        // Right signatures, wrong topic.
        let ann = Announcement::new(statement(&author, 9, 5), &author, vec![]);
        let other = RepoId::parse("did:plc:abc/other").unwrap();
        assert!(matches!(
            Announcement::decode_verified(&ann.encode(), &other),
            Err(AnnounceError::WrongRepo { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let ann = Announcement::new(statement(&key(1), 9, 5), &key(1), vec![]).encode();
        for len in 0..ann.len() {
            assert!(Announcement::decode_verified(&ann[..len], &rid()).is_err());
        }
        let mut trailing = ann.clone();
        trailing.push(0);
        assert!(Announcement::decode_verified(&trailing, &rid()).is_err());
        assert!(matches!(
            Announcement::decode_verified(&vec![0u8; MAX_MESSAGE_SIZE + 1], &rid()),
            Err(AnnounceError::Oversize(_))
        ));
        for seed in 0..200u32 {
            let mut bytes = ann.clone();
            let i = (seed as usize * 7919) % bytes.len();
            bytes[i] ^= 1 << (seed % 8);
            assert!(Announcement::decode_verified(&bytes, &rid()).is_err());
        }
    }

    #[test]
    fn adoption_rule() {
        let author = key(1);
        let mallory = key(3);
        let trusted = vec![author.public().to_string()];
        let held = data_encoding::HEXLOWER.encode(&[5; 32]);
        let ctx = AdoptionContext {
            record_manifest: None,
            current_manifest: Some(&held),
            current_seq: 10,
            trusted_publishers: &trusted,
        };
        let newer = statement(&author, 6, 11).statement;
        assert_eq!(decide_adoption(&newer, &ctx), Adoption::Adopt);
        let replay = statement(&author, 4, 9).statement;
        assert!(matches!(
            decide_adoption(&replay, &ctx),
            Adoption::Reject(_)
        ));
        let stray = statement(&mallory, 6, 99).statement;
        assert!(matches!(decide_adoption(&stray, &ctx), Adoption::Reject(_)));
        let same = statement(&author, 5, 12).statement;
        assert_eq!(decide_adoption(&same, &ctx), Adoption::AlreadyCurrent);
        // The record names mallory's manifest: the record is authoritative.
        let named = data_encoding::HEXLOWER.encode(&[6; 32]);
        let ctx = AdoptionContext {
            record_manifest: Some(&named),
            ..ctx
        };
        assert_eq!(decide_adoption(&stray, &ctx), Adoption::Adopt);
    }
}
