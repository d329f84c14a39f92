//! Peer hints learned from gossip: kept apart from the record's and the
//! operator's peers, bounded, most recent first, and expiring.
//!
//! A hint is where a node that announced a state of interest (or a trusted
//! gossip neighbour) said it can be reached. Hints help find providers and
//! re-find neighbours after a restart; they never make a peer trusted and
//! can never push a record or operator peer out: those live in other
//! lists, and a trusted peer's own learned hint (its latest addresses) is
//! never evicted to make room for an untrusted one. Pure data; persisted as
//! part of a repository's bookkeeping.

use crate::{record::PeerHint, state::LearnedHint};

/// Most hints kept per repository.
pub const MAX_HINTS: usize = 32;
/// How long a hint not seen again is kept (milliseconds): a week.
pub const HINT_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Record that `hint` was seen at `now_ms`: refresh it (addresses replaced
/// by the latest, a known ticket kept) and move it to the front, or insert
/// it and evict the least recently seen beyond [`MAX_HINTS`] that is not
/// `protected` (a trusted peer's); when all are protected, the new one is
/// not kept unless it is protected too. Returns whether anything a reader
/// would notice changed (new peer or addresses); a mere refresh of the
/// time does not count.
pub fn remember(
    hints: &mut Vec<LearnedHint>,
    hint: PeerHint,
    now_ms: u64,
    protected: impl Fn(&str) -> bool,
) -> bool {
    let node_id = hint.node_id.clone();
    let position = hints.iter().position(|h| h.hint.node_id == hint.node_id);
    let changed = match position {
        Some(i) => {
            let mut old = hints.remove(i);
            let changed = !hint.addrs.is_empty() && old.hint.addrs != hint.addrs;
            if !hint.addrs.is_empty() {
                old.hint.addrs = hint.addrs;
            }
            if old.hint.ticket.is_none() {
                old.hint.ticket = hint.ticket;
            }
            old.seen_ms = now_ms;
            hints.insert(0, old);
            changed
        }
        None => {
            hints.insert(
                0,
                LearnedHint {
                    hint,
                    seen_ms: now_ms,
                },
            );
            true
        }
    };
    evict(hints, MAX_HINTS, |h| protected(&h.hint.node_id));
    changed && hints.iter().any(|h| h.hint.node_id == node_id)
}

/// Shrink `entries` (most recent first) to `max`: the least recent entries
/// that are not `protected` go first; only when every entry is protected
/// do protected ones go, least recent first.
pub fn evict<T>(entries: &mut Vec<T>, max: usize, protected: impl Fn(&T) -> bool) {
    while entries.len() > max {
        match entries.iter().rposition(|e| !protected(e)) {
            Some(i) => entries.remove(i),
            None => entries.pop().expect("longer than max"),
        };
    }
}

/// Drop hints not seen for [`HINT_TTL_MS`]. Returns whether any went.
pub fn expire(hints: &mut Vec<LearnedHint>, now_ms: u64) -> bool {
    let before = hints.len();
    hints.retain(|h| now_ms.saturating_sub(h.seen_ms) < HINT_TTL_MS);
    hints.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(n: usize, addr: &str) -> PeerHint {
        let id = iroh::SecretKey::from_bytes(&[(n % 250) as u8 + 1; 32])
            .public()
            .to_string();
        let addrs = if addr.is_empty() {
            vec![]
        } else {
            vec![addr.to_string()]
        };
        PeerHint::new(id, addrs, None)
    }

    #[test]
    fn bounded_most_recent_first() {
        let mut hints = Vec::new();
        for n in 0..(MAX_HINTS + 10) {
            assert!(remember(
                &mut hints,
                hint(n, "127.0.0.1:1"),
                n as u64,
                |_| false
            ));
        }
        assert_eq!(hints.len(), MAX_HINTS);
        assert_eq!(hints[0].hint, hint(MAX_HINTS + 9, "127.0.0.1:1"));
        // The oldest were evicted.
        assert!(!hints.iter().any(|h| h.hint.node_id == hint(0, "").node_id));
        // Seeing an old one again moves it to the front without a change.
        let again = hint(20, "127.0.0.1:1");
        assert!(!remember(&mut hints, again.clone(), 1000, |_| false));
        assert_eq!(hints[0].hint, again);
        assert_eq!(hints[0].seen_ms, 1000);
        // New addresses are a change; an announcement without any keeps the old.
        assert!(remember(&mut hints, hint(20, "127.0.0.1:2"), 1001, |_| {
            false
        }));
        assert!(!remember(&mut hints, hint(20, ""), 1002, |_| false));
        assert_eq!(hints[0].hint.addrs, vec!["127.0.0.1:2".to_string()]);
    }

    #[test]
    fn unseen_hints_expire() {
        let mut hints = Vec::new();
        remember(&mut hints, hint(1, ""), 0, |_| false);
        remember(&mut hints, hint(2, ""), HINT_TTL_MS, |_| false);
        assert!(!expire(&mut hints, HINT_TTL_MS - 1));
        assert!(expire(&mut hints, HINT_TTL_MS + 1));
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].hint, hint(2, ""));
    }

    /// Strangers arriving one after another evict each other, never a
    /// protected (trusted) peer's hint, however long ago it was seen.
    #[test]
    fn strangers_never_evict_protected_hints() {
        let mut hints = Vec::new();
        let trusted = hint(1, "127.0.0.1:1");
        let is_trusted = |id: &str| id == trusted.node_id;
        assert!(remember(&mut hints, trusted.clone(), 0, is_trusted));
        for n in 2..200 {
            remember(&mut hints, hint(n, "127.0.0.1:1"), n as u64, is_trusted);
        }
        assert_eq!(hints.len(), MAX_HINTS);
        assert!(
            hints.iter().any(|h| h.hint == trusted),
            "the trusted hint stays"
        );
        // When every entry is protected, an unprotected newcomer is not kept.
        let mut full: Vec<LearnedHint> = (0..MAX_HINTS)
            .map(|n| LearnedHint {
                hint: hint(n + 1, ""),
                seen_ms: 0,
            })
            .collect();
        assert!(!remember(&mut full, hint(240, ""), 5, |id| id
            != hint(240, "").node_id));
        assert_eq!(full.len(), MAX_HINTS);
        assert!(!full.iter().any(|h| h.hint.node_id == hint(240, "").node_id));
    }
}
