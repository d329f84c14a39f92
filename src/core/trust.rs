//! The trust rules: which announced or recorded state a node takes.
//!
//! Pure functions over what the node knows; no state of their own. The
//! README's "Which state wins" section is the specification, one rule per
//! test below:
//!
//! 1. The owner's record is the authority. Its state is taken when it is not
//!    older than the state held (by `seq`), or, for a record without a
//!    `seq`, when it names a state no earlier read of it named (a read
//!    lagging a version behind cannot roll the node back). A record whose
//!    `seq` is beyond [`MAX_SEQ_AHEAD_MS`] comes from a broken clock and is
//!    not taken; its peers still are trusted publishers.
//! 2. A statement announced by gossip or the direct protocol is taken only
//!    when its publisher, or the node that forwards it (the envelope's
//!    sender), is trusted: a record peer, an operator peer, or this node. A
//!    node that trusts a seeder thereby takes what the seeder holds.
//! 3. A statement must be newer (`seq`) than the state held and than a state
//!    already being fetched; replays and rollbacks are refused.
//! 4. No `seq` more than [`MAX_SEQ_AHEAD_MS`] ahead of this node's clock is
//!    taken from anyone, so no value can pin a repository for longer than
//!    that; arithmetic on `seq` saturates.

use std::collections::BTreeSet;

use iroh::EndpointId;

use crate::{announce::Statement, record::RepoRecord};

/// How far ahead of the local clock (milliseconds since the epoch) a
/// sequence number may be. `seq` is its publisher's clock in milliseconds;
/// a value beyond this is a broken clock or an attempt to freeze the
/// repository, and is refused.
pub const MAX_SEQ_AHEAD_MS: u64 = 60 * 60 * 1000;

/// Why an announced state is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    /// Neither the publisher nor the sender is trusted.
    Untrusted,
    /// Not newer than the state held or already being fetched.
    NotNewer,
    /// The sequence number is beyond [`MAX_SEQ_AHEAD_MS`].
    TooFarAhead,
}

impl Rejection {
    /// The reason in words, as logged and counted.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Untrusted => "neither its publisher nor its sender is trusted",
            Rejection::NotNewer => "not newer than the state held or being fetched",
            Rejection::TooFarAhead => "its seq is more than an hour ahead of this node's clock",
        }
    }
}

/// The outcome of [`judge_statement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fetch and take the state.
    Adopt,
    /// The node holds this state already: the sender is one more provider.
    Held,
    /// The node is fetching this state already: the sender is one more provider.
    Wanted,
    /// Not taken.
    Reject(Rejection),
}

/// A state the node holds or wants: its manifest and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The manifest hash.
    pub manifest: [u8; 32],
    /// Its sequence number.
    pub seq: u64,
}

/// Whether `statement`, forwarded by `sender`, comes from a trusted peer:
/// its publisher, or a trusted sender vouching for it.
pub fn vouched(statement: &Statement, sender: EndpointId, trusted: &BTreeSet<EndpointId>) -> bool {
    // Compared as bytes: parsing a key costs a point decompression.
    trusted.iter().any(|t| *t.as_bytes() == statement.publisher) || trusted.contains(&sender)
}

/// Judge a verified statement that `sender` forwarded.
pub fn judge_statement(
    statement: &Statement,
    sender: EndpointId,
    trusted: &BTreeSet<EndpointId>,
    held: Option<Position>,
    wanted: Option<Position>,
    now_ms: u64,
) -> Verdict {
    if held.is_some_and(|h| h.manifest == statement.manifest) {
        return Verdict::Held;
    }
    if !vouched(statement, sender, trusted) {
        return Verdict::Reject(Rejection::Untrusted);
    }
    if statement.seq > now_ms.saturating_add(MAX_SEQ_AHEAD_MS) {
        return Verdict::Reject(Rejection::TooFarAhead);
    }
    if held.is_some_and(|h| statement.seq <= h.seq) {
        return Verdict::Reject(Rejection::NotNewer);
    }
    match wanted {
        Some(w) if w.manifest == statement.manifest => Verdict::Wanted,
        Some(w) if w.seq >= statement.seq => Verdict::Reject(Rejection::NotNewer),
        _ => Verdict::Adopt,
    }
}

/// The outcome of [`judge_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordVerdict {
    /// Take the record's state under this node's own statement with `seq`.
    Adopt {
        /// The sequence number of the node's statement for it.
        seq: u64,
    },
    /// The node holds the record's state already.
    Held,
    /// The record's state is not taken; the reason in words.
    Keep(&'static str),
}

/// Judge a freshly read record against the reads before (`named_before`:
/// whether an earlier read named a manifest) and the state held or being
/// fetched (`current`: the newer of the two).
pub fn judge_record(
    record: &RepoRecord,
    named_before: &dyn Fn(&str) -> bool,
    held_manifest: Option<iroh_blobs::Hash>,
    current: Option<Position>,
    now_ms: u64,
) -> RecordVerdict {
    let Some(manifest) = record.manifest.as_deref() else {
        return RecordVerdict::Keep("the record names no state yet");
    };
    if held_manifest.is_some() && held_manifest == record.manifest_hash() {
        return RecordVerdict::Held;
    }
    let current_seq = current.map_or(0, |c| c.seq);
    let next = current_seq.saturating_add(1);
    match record.seq {
        Some(seq) if seq > now_ms.saturating_add(MAX_SEQ_AHEAD_MS) => RecordVerdict::Keep(
            "the record's seq is more than an hour ahead of this node's clock (the owner's clock is wrong); its state comes from its peers' announcements",
        ),
        Some(seq) if seq >= current_seq => RecordVerdict::Adopt { seq: seq.max(next) },
        Some(_) => RecordVerdict::Keep("the record names an older state than the one held"),
        None if !named_before(manifest) => RecordVerdict::Adopt { seq: next },
        None => RecordVerdict::Keep(
            "the record has no usable seq and names a state it named before (a lagging read, or not changed)",
        ),
    }
}

/// The sequence number of a state published here now: newer than the state
/// held and any state being fetched, and normally the current time.
pub fn publish_seq(current: Option<Position>, now_ms: u64) -> u64 {
    now_ms.max(current.map_or(0, |c| c.seq).saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{record::PeerHint, repo_id::RepoId};
    use iroh::SecretKey;

    const NOW: u64 = 1_800_000_000_000;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    fn statement(publisher: &SecretKey, manifest: u8, seq: u64) -> Statement {
        Statement {
            repo_id: "did:plc:a/r".into(),
            head: None,
            manifest: [manifest; 32],
            seq,
            publisher: *publisher.public().as_bytes(),
        }
    }

    fn at(manifest: u8, seq: u64) -> Option<Position> {
        Some(Position {
            manifest: [manifest; 32],
            seq,
        })
    }

    fn trusting(keys: &[&SecretKey]) -> BTreeSet<EndpointId> {
        keys.iter().map(|k| k.public()).collect()
    }

    #[test]
    fn a_trusted_publisher_with_a_newer_seq_is_taken() {
        let author = key(1);
        let t = trusting(&[&author]);
        let s = statement(&author, 2, 11);
        assert_eq!(
            judge_statement(&s, author.public(), &t, at(1, 10), None, NOW),
            Verdict::Adopt
        );
        assert_eq!(
            judge_statement(&s, author.public(), &t, None, None, NOW),
            Verdict::Adopt
        );
    }

    #[test]
    fn a_stranger_is_refused_whatever_it_claims() {
        let author = key(1);
        let stranger = key(3);
        let t = trusting(&[&author]);
        // Its own statement, at the highest seq, for a state the record once named.
        let s = statement(&stranger, 1, u64::MAX);
        assert_eq!(
            judge_statement(&s, stranger.public(), &t, at(2, 10), None, NOW),
            Verdict::Reject(Rejection::Untrusted)
        );
        // Forwarding a trusted author's statement does not make it trusted either.
        let s = statement(&key(9), 3, 12);
        assert_eq!(
            judge_statement(&s, stranger.public(), &t, at(2, 10), None, NOW),
            Verdict::Reject(Rejection::Untrusted)
        );
    }

    #[test]
    fn a_trusted_seeder_vouches_for_what_it_forwards() {
        let author = key(1);
        let seeder = key(2);
        let stranger = key(3);
        let t = trusting(&[&seeder]);
        let s = statement(&author, 2, 11);
        assert_eq!(
            judge_statement(&s, seeder.public(), &t, None, None, NOW),
            Verdict::Adopt
        );
        // The same statement from a stranger is refused.
        assert_eq!(
            judge_statement(&s, stranger.public(), &t, None, None, NOW),
            Verdict::Reject(Rejection::Untrusted)
        );
        // Vouching does not lift the rollback rule.
        let old = statement(&author, 1, 9);
        assert_eq!(
            judge_statement(&old, seeder.public(), &t, at(2, 11), None, NOW),
            Verdict::Reject(Rejection::NotNewer)
        );
    }

    #[test]
    fn replays_and_rollbacks_are_refused() {
        let author = key(1);
        let t = trusting(&[&author]);
        for seq in [0, 9, 10] {
            let s = statement(&author, 5, seq);
            assert_eq!(
                judge_statement(&s, author.public(), &t, at(1, 10), None, NOW),
                Verdict::Reject(Rejection::NotNewer),
                "seq {seq}"
            );
        }
    }

    #[test]
    fn a_state_being_fetched_is_only_replaced_by_a_newer_one() {
        let author = key(1);
        let t = trusting(&[&author]);
        let wanted = at(2, 20);
        let same = statement(&author, 2, 20);
        assert_eq!(
            judge_statement(&same, author.public(), &t, at(1, 10), wanted, NOW),
            Verdict::Wanted
        );
        let between = statement(&author, 3, 15);
        assert_eq!(
            judge_statement(&between, author.public(), &t, at(1, 10), wanted, NOW),
            Verdict::Reject(Rejection::NotNewer)
        );
        let newer = statement(&author, 4, 21);
        assert_eq!(
            judge_statement(&newer, author.public(), &t, at(1, 10), wanted, NOW),
            Verdict::Adopt
        );
    }

    #[test]
    fn the_state_held_is_known_from_anyone() {
        let stranger = key(3);
        let s = statement(&stranger, 1, 0);
        assert_eq!(
            judge_statement(
                &s,
                stranger.public(),
                &BTreeSet::new(),
                at(1, 10),
                None,
                NOW
            ),
            Verdict::Held
        );
    }

    #[test]
    fn no_seq_far_ahead_of_the_clock_is_taken() {
        let author = key(1);
        let t = trusting(&[&author]);
        let limit = NOW + MAX_SEQ_AHEAD_MS;
        let s = statement(&author, 2, limit + 1);
        assert_eq!(
            judge_statement(&s, author.public(), &t, at(1, 10), None, NOW),
            Verdict::Reject(Rejection::TooFarAhead)
        );
        let s = statement(&author, 2, u64::MAX);
        assert_eq!(
            judge_statement(&s, author.public(), &t, None, None, u64::MAX),
            Verdict::Adopt,
            "saturating: a clock at the end of time accepts everything up to it"
        );
        let s = statement(&author, 2, limit);
        assert_eq!(
            judge_statement(&s, author.public(), &t, at(1, 10), None, NOW),
            Verdict::Adopt
        );
    }

    fn record(manifest: Option<u8>, seq: Option<u64>) -> RepoRecord {
        let mut r = RepoRecord::empty(RepoId::parse("did:plc:a/r").unwrap());
        r.manifest = manifest.map(|m| data_encoding::HEXLOWER.encode(&[m; 32]));
        r.seq = seq;
        r.peers = vec![PeerHint::new(key(1).public().to_string(), vec![], None)];
        r
    }

    fn hex(m: u8) -> String {
        data_encoding::HEXLOWER.encode(&[m; 32])
    }

    fn held(m: u8) -> Option<iroh_blobs::Hash> {
        Some(iroh_blobs::Hash::from_bytes([m; 32]))
    }

    #[test]
    fn a_record_not_older_than_the_state_held_wins() {
        let h = held(1);
        let r = record(Some(2), Some(10));
        assert_eq!(
            judge_record(&r, &|_| false, h, at(1, 10), NOW),
            RecordVerdict::Adopt { seq: 11 },
            "a tie goes to the record, under a seq newer than the state held"
        );
        assert_eq!(
            judge_record(&r, &|_| false, h, at(1, 5), NOW),
            RecordVerdict::Adopt { seq: 10 }
        );
        assert_eq!(
            judge_record(&r, &|_| false, None, None, NOW),
            RecordVerdict::Adopt { seq: 10 }
        );
    }

    #[test]
    fn a_record_lagging_behind_gossip_does_not_roll_back() {
        let h = held(2);
        let r = record(Some(1), Some(10));
        assert!(matches!(
            judge_record(&r, &|_| false, h, at(2, 11), NOW),
            RecordVerdict::Keep(_)
        ));
        // Nor does it replace a newer state being fetched.
        assert!(matches!(
            judge_record(&r, &|_| false, held(0), at(2, 11), NOW),
            RecordVerdict::Keep(_)
        ));
    }

    #[test]
    fn a_record_without_seq_wins_when_it_changed() {
        let h = held(2);
        let r = record(Some(1), None);
        assert_eq!(
            judge_record(&r, &|m| m == hex(2), h, at(2, 50), NOW),
            RecordVerdict::Adopt { seq: 51 }
        );
        assert!(matches!(
            judge_record(&r, &|m| m == hex(1), h, at(2, 50), NOW),
            RecordVerdict::Keep(_)
        ));
        assert_eq!(
            judge_record(&r, &|m| m == hex(2), h, at(2, u64::MAX), NOW),
            RecordVerdict::Adopt { seq: u64::MAX },
            "saturates"
        );
        // A seq beyond the bound is a broken clock: never taken, changed or not.
        let far = record(Some(1), Some(u64::MAX));
        for named in [false, true] {
            assert!(matches!(
                judge_record(&far, &|_| named, h, at(2, 50), NOW),
                RecordVerdict::Keep(_)
            ));
        }
    }

    #[test]
    fn a_record_naming_the_held_state_or_none_changes_nothing() {
        let h = held(1);
        assert_eq!(
            judge_record(&record(Some(1), Some(99)), &|_| false, h, at(1, 5), NOW),
            RecordVerdict::Held
        );
        assert!(matches!(
            judge_record(&record(None, Some(99)), &|_| false, h, at(1, 5), NOW),
            RecordVerdict::Keep(_)
        ));
    }

    #[test]
    fn a_publish_is_newer_than_everything_known() {
        assert_eq!(publish_seq(None, NOW), NOW);
        assert_eq!(publish_seq(at(1, NOW + 5), NOW), NOW + 6);
        assert_eq!(publish_seq(at(1, u64::MAX), NOW), u64::MAX);
    }
}
