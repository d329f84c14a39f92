//! The schedule of ATProto reads: when each repository's record is polled
//! and each followed identity listed. One [`Schedule`] per kind, owned by
//! the core; the actor only runs the one-shot reads the core asks for
//! ([`super::Effect::PollRecord`], [`super::Effect::ListIdentity`]) and
//! reports each as an event carrying the read's [`ReadId`].
//!
//! Rules: a newly tracked key is read at once; after a read that worked
//! the next comes one interval later, or `interval · 2^q` up to the
//! longest quiet wait after `q` answers in a row that changed nothing (a
//! record nobody touches is read hourly, not every five minutes; an answer
//! that changed something, or tracking the key again, starts over), after
//! `n` failures in a row
//! `interval · 2^n` up to the maximum backoff, never before a rate-limiting
//! server's `Retry-After` (itself capped at the maximum backoff), each wait
//! jittered by a fraction drawn deterministically from this node, the key
//! and the read's number (so a replay gives the same schedule and nodes do
//! not poll in step). At most `max_in_flight` reads run at once; the rest
//! wait their turn in due order. A read asked for while one runs starts
//! again as soon as it ends. A read the actor never reports (it always
//! does; this is a safety net) stops counting against the limit after
//! [`LOST_AFTER`]. Tracking a key again (a new locator) makes the read in
//! flight stale: its report is ignored. Nothing is persisted: after a
//! restart every tracked key is read at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{
    io::{ReadId, later},
    settings::ReadSettings,
};

/// A read in flight this long is taken as lost and no longer counts
/// against the limit.
pub const LOST_AFTER: Duration = Duration::from_secs(600);

/// The wait before the next read.
///
/// With no failures: `interval` moved by up to `jitter · interval` either way.
/// After `n` consecutive failures: `interval · 2^n`, capped at `max_backoff`
/// (but never shorter than `interval`), jittered the same way. The result is
/// never below half the unjittered wait. `random_unit` is a number in
/// `[0, 1)`; out-of-range values are clamped.
pub fn next_delay(
    interval: Duration,
    jitter: f64,
    consecutive_failures: u32,
    max_backoff: Duration,
    random_unit: f64,
) -> Duration {
    let base = if consecutive_failures == 0 {
        interval
    } else {
        let grown = 1u32
            .checked_shl(consecutive_failures)
            .and_then(|factor| interval.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        grown.min(max_backoff.max(interval))
    };
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let r = if random_unit.is_finite() {
        random_unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let offset = base.as_secs_f64() * jitter * (2.0 * r - 1.0);
    let delay = Duration::try_from_secs_f64(base.as_secs_f64() + offset).unwrap_or(base);
    delay.max(base / 2)
}

/// A number in `[0, 1)` drawn from `seed` and `parts`: the same inputs give
/// the same number.
pub fn unit(seed: &[u8], parts: &[&[u8]]) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(seed);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    // 53 bits: every value is exact in an f64 and below 1.
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait after `quiet` answers in a row that changed nothing:
/// `interval · 2^quiet`, capped at `max_quiet` (never below `interval`).
pub fn quiet_interval(interval: Duration, quiet: u32, max_quiet: Duration) -> Duration {
    1u32.checked_shl(quiet)
        .and_then(|factor| interval.checked_mul(factor))
        .unwrap_or(Duration::MAX)
        .min(max_quiet)
        .max(interval)
}

/// How a read ended, for the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The server answered; `changed` says whether the answer differs from
    /// the one before (a first answer counts as a change).
    Answered {
        /// Whether the answer changed anything.
        changed: bool,
    },
    /// No usable answer; wait at least `retry_after` if the server said so.
    Failed {
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    due: Option<Instant>,
    failures: u32,
    /// Answers in a row that changed nothing.
    quiet: u32,
    reading: Option<ReadId>,
    again: bool,
    reads: u64,
}

/// The schedule of one kind of read, keyed by `K`. See the module
/// documentation.
#[derive(Debug, Clone)]
pub struct Schedule<K: Ord + Clone> {
    settings: ReadSettings,
    entries: BTreeMap<K, Entry>,
    due: BTreeSet<(Instant, K)>,
    in_flight: BTreeMap<ReadId, (K, Instant)>,
    next_read: ReadId,
}

impl<K: Ord + Clone + std::fmt::Display> Schedule<K> {
    /// An empty schedule.
    pub fn new(settings: ReadSettings) -> Self {
        Self {
            settings,
            entries: BTreeMap::new(),
            due: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            next_read: 1,
        }
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is tracked.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Reads in flight (lost ones included until [`LOST_AFTER`]).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Read `key` now and on the schedule from then on. Tracking it again
    /// starts afresh: failures forgotten, a read in flight stale.
    pub fn track(&mut self, key: K, now: Instant) {
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            due: None,
            failures: 0,
            quiet: 0,
            reading: None,
            again: false,
            reads: 0,
        });
        entry.failures = 0;
        entry.quiet = 0;
        entry.again = false;
        entry.reading = None;
        set_due(&mut self.due, &key, entry, Some(now));
    }

    /// Stop reading `key`; a read in flight is ignored when it ends.
    pub fn untrack(&mut self, key: &K) {
        if let Some(mut entry) = self.entries.remove(key) {
            set_due(&mut self.due, key, &mut entry, None);
        }
    }

    /// Read `key` as soon as a slot is free (after the read in flight, if
    /// one runs). Returns false when `key` is not tracked.
    pub fn read_now(&mut self, key: &K, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.reading.is_some() {
            entry.again = true;
        } else {
            set_due(&mut self.due, key, entry, Some(now));
        }
        true
    }

    /// The reads to start now, in due order, as many as slots are free.
    pub fn start_due(&mut self, now: Instant) -> Vec<(K, ReadId)> {
        self.forget_lost(now);
        let mut started = Vec::new();
        while self.in_flight.len() < self.settings.max_in_flight.max(1) {
            match self.due.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let Some((_, key)) = self.due.pop_first() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            let read = self.next_read;
            self.next_read += 1;
            entry.due = None;
            entry.reading = Some(read);
            entry.reads = entry.reads.wrapping_add(1);
            self.in_flight.insert(read, (key.clone(), now));
            started.push((key, read));
        }
        started
    }

    /// A read ended. Returns its key when the read is the current one of a
    /// tracked key (its result counts); `None` for a stale or unknown read.
    /// `seed` makes this node's jitter its own.
    pub fn finished(&mut self, read: ReadId, end: ReadEnd, now: Instant, seed: &[u8]) -> Option<K> {
        let (key, _) = self.in_flight.remove(&read)?;
        let settings = self.settings.clone();
        let entry = self.entries.get_mut(&key)?;
        if entry.reading != Some(read) {
            return None;
        }
        entry.reading = None;
        let retry_after = match end {
            ReadEnd::Answered { changed } => {
                entry.failures = 0;
                entry.quiet = if changed {
                    0
                } else {
                    entry.quiet.saturating_add(1)
                };
                None
            }
            ReadEnd::Failed { retry_after } => {
                entry.failures = entry.failures.saturating_add(1);
                retry_after
            }
        };
        let due = if std::mem::take(&mut entry.again) {
            now
        } else {
            let draw = unit(
                seed,
                &[key.to_string().as_bytes(), &entry.reads.to_le_bytes()],
            );
            let interval = if entry.failures == 0 {
                quiet_interval(settings.interval, entry.quiet, settings.max_quiet)
            } else {
                settings.interval
            };
            let wait = next_delay(
                interval,
                settings.jitter,
                entry.failures,
                settings.max_backoff,
                draw,
            )
            .max(retry_after.unwrap_or_default().min(settings.max_backoff));
            later(now, wait)
        };
        set_due(&mut self.due, &key, entry, Some(due));
        Some(key)
    }

    /// When the next read may start: the earliest due time while a slot is
    /// free, or when the oldest read in flight counts as lost.
    pub fn next_wake(&self) -> Option<Instant> {
        let lost = self
            .in_flight
            .values()
            .map(|(_, at)| later(*at, LOST_AFTER))
            .min();
        if self.in_flight.len() >= self.settings.max_in_flight.max(1) {
            return lost;
        }
        let due = self.due.first().map(|(at, _)| *at);
        match (due, lost) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When `key` is next read, if it waits for its turn.
    pub fn due_at(&self, key: &K) -> Option<Instant> {
        self.entries.get(key)?.due
    }

    /// Answers in a row of `key`'s reads that changed nothing.
    pub fn quiet(&self, key: &K) -> u32 {
        self.entries.get(key).map_or(0, |e| e.quiet)
    }

    /// Failures in a row of `key`'s reads.
    pub fn failures(&self, key: &K) -> u32 {
        self.entries.get(key).map_or(0, |e| e.failures)
    }

    fn forget_lost(&mut self, now: Instant) {
        let lost: Vec<ReadId> = self
            .in_flight
            .iter()
            .filter(|(_, (_, at))| later(*at, LOST_AFTER) <= now)
            .map(|(read, _)| *read)
            .collect();
        for read in lost {
            if let Some((key, _)) = self.in_flight.remove(&read)
                && let Some(entry) = self.entries.get_mut(&key)
                && entry.reading == Some(read)
            {
                tracing::warn!(read, "a record read was never reported; reading again");
                entry.reading = None;
                entry.failures = entry.failures.saturating_add(1);
                set_due(&mut self.due, &key, entry, Some(now));
            }
        }
    }
}

fn set_due<K: Ord + Clone>(
    due: &mut BTreeSet<(Instant, K)>,
    key: &K,
    entry: &mut Entry,
    at: Option<Instant>,
) {
    if let Some(old) = entry.due.take() {
        due.remove(&(old, key.clone()));
    }
    if let Some(at) = at {
        due.insert((at, key.clone()));
        entry.due = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn success_waits_one_interval_with_jitter() {
        let max = S(3600);
        assert_eq!(next_delay(S(300), 0.0, 0, max, 0.9), S(300));
        assert_eq!(next_delay(S(300), 0.1, 0, max, 0.5), S(300));
        let low = next_delay(S(300), 0.1, 0, max, 0.0);
        let high = next_delay(S(300), 0.1, 0, max, 0.999_999);
        assert!((S(269)..=S(271)).contains(&low), "{low:?}");
        assert!((S(329)..=S(331)).contains(&high), "{high:?}");
        for i in 0..100 {
            let d = next_delay(S(300), 0.1, 0, max, f64::from(i) / 100.0);
            assert!(d >= S(270) && d <= S(330), "{d:?}");
        }
    }

    #[test]
    fn never_below_half_the_wait() {
        let d = next_delay(S(10), 1.0, 0, S(3600), 0.0);
        assert_eq!(d, S(5));
        let d = next_delay(Duration::from_millis(200), 1.0, 0, S(10), 0.0);
        assert_eq!(d, Duration::from_millis(100));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let max = S(3600);
        assert_eq!(next_delay(S(300), 0.0, 1, max, 0.5), S(600));
        assert_eq!(next_delay(S(300), 0.0, 2, max, 0.5), S(1200));
        assert_eq!(next_delay(S(300), 0.0, 3, max, 0.5), S(2400));
        assert_eq!(next_delay(S(300), 0.0, 4, max, 0.5), S(3600));
        assert_eq!(next_delay(S(300), 0.0, 40, max, 0.5), S(3600));
        assert_eq!(next_delay(S(300), 0.0, u32::MAX, max, 0.5), S(3600));
        let jittered = next_delay(S(300), 0.1, 10, max, 0.0);
        assert!((S(3239)..=S(3241)).contains(&jittered), "{jittered:?}");
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let huge = Duration::MAX;
        assert_eq!(next_delay(huge, 0.0, 0, huge, 0.5), huge);
        let _ = next_delay(huge, 1.0, 5, huge, 0.999);
        let _ = next_delay(huge, 1.0, u32::MAX, huge, 0.0);
        assert_eq!(next_delay(S(300), f64::NAN, 0, S(10), f64::NAN), S(300));
        assert_eq!(next_delay(S(300), 5.0, 0, S(10), 2.0), S(600));
        assert_eq!(next_delay(S(300), -1.0, 0, S(10), -1.0), S(300));
        // A cap below the interval never reads a failing key more often.
        assert_eq!(next_delay(S(300), 0.0, 3, S(10), 0.5), S(300));
        assert_eq!(
            next_delay(Duration::ZERO, 0.5, 3, S(10), 0.0),
            Duration::ZERO
        );
    }

    #[test]
    fn draws_are_deterministic_spread_and_below_one() {
        let a = unit(b"node", &[b"did:plc:a/x", &1u64.to_le_bytes()]);
        assert_eq!(a, unit(b"node", &[b"did:plc:a/x", &1u64.to_le_bytes()]));
        assert_ne!(a, unit(b"other", &[b"did:plc:a/x", &1u64.to_le_bytes()]));
        assert_ne!(a, unit(b"node", &[b"did:plc:a/x", &2u64.to_le_bytes()]));
        // Parts are length-prefixed: moving a byte across a boundary differs.
        assert_ne!(unit(b"", &[b"ab", b"c"]), unit(b"", &[b"a", b"bc"]));
        let draws: Vec<f64> = (0u64..1000)
            .map(|i| unit(b"n", &[&i.to_le_bytes()]))
            .collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below one half");
    }

    fn settings(max_in_flight: usize) -> ReadSettings {
        ReadSettings {
            interval: S(300),
            jitter: 0.0,
            max_backoff: S(3600),
            max_quiet: S(300),
            max_in_flight,
        }
    }

    fn key(name: &str) -> String {
        name.to_string()
    }

    #[test]
    fn a_new_key_is_read_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(8));
        s.track(key("a"), t0);
        assert_eq!(s.next_wake(), Some(t0));
        let started = s.start_due(t0);
        assert_eq!(started.len(), 1);
        assert!(s.start_due(t0).is_empty(), "one read at a time per key");
        let (k, read) = started[0].clone();
        assert_eq!(
            s.finished(read, ReadEnd::Answered { changed: true }, t0, b"n"),
            Some(k)
        );
        assert_eq!(s.due_at(&key("a")), Some(t0 + S(300)));
        assert!(s.start_due(t0 + S(299)).is_empty());
        assert_eq!(s.start_due(t0 + S(300)).len(), 1);
    }

    #[test]
    fn failures_back_off_and_an_answer_resets() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(8));
        s.track(key("a"), t0);
        let mut now = t0;
        for expected in [600, 1200, 2400, 3600, 3600] {
            let (_, read) = s.start_due(now)[0].clone();
            s.finished(read, ReadEnd::Failed { retry_after: None }, now, b"n");
            assert_eq!(s.due_at(&key("a")), Some(now + S(expected)));
            now += S(expected);
        }
        assert_eq!(s.failures(&key("a")), 5);
        let (_, read) = s.start_due(now)[0].clone();
        s.finished(read, ReadEnd::Answered { changed: true }, now, b"n");
        assert_eq!(s.failures(&key("a")), 0);
        assert_eq!(s.due_at(&key("a")), Some(now + S(300)));
    }

    #[test]
    fn unchanged_answers_stretch_the_wait_and_a_change_resets_it() {
        let t0 = Instant::now();
        let mut quiet = settings(8);
        quiet.max_quiet = S(3600);
        let mut s = Schedule::new(quiet);
        s.track(key("a"), t0);
        let mut now = t0;
        let answer = |s: &mut Schedule<String>, now: Instant, changed: bool| {
            let (_, read) = s.start_due(now)[0].clone();
            s.finished(read, ReadEnd::Answered { changed }, now, b"n");
            s.due_at(&key("a")).unwrap() - now
        };
        // The first answer is a change; each unchanged one doubles the wait.
        assert_eq!(answer(&mut s, now, true), S(300));
        for expected in [600, 1200, 2400, 3600, 3600] {
            now += s.due_at(&key("a")).unwrap() - now;
            assert_eq!(answer(&mut s, now, false), S(expected));
        }
        assert_eq!(s.quiet(&key("a")), 5);
        // A failure waits from the plain interval, and keeps the streak.
        now += S(3600);
        let (_, read) = s.start_due(now)[0].clone();
        s.finished(read, ReadEnd::Failed { retry_after: None }, now, b"n");
        assert_eq!(s.due_at(&key("a")), Some(now + S(600)));
        assert_eq!(s.quiet(&key("a")), 5);
        // A change starts over; so does tracking the key again.
        now += S(600);
        assert_eq!(answer(&mut s, now, true), S(300));
        now += S(300);
        assert_eq!(answer(&mut s, now, false), S(600));
        s.track(key("a"), now);
        assert_eq!(s.quiet(&key("a")), 0);
        // Without a longer quiet wait, nothing stretches.
        let mut plain = Schedule::new(settings(8));
        plain.track(key("a"), t0);
        for _ in 0..4 {
            let (_, read) = plain.start_due(now)[0].clone();
            plain.finished(read, ReadEnd::Answered { changed: false }, now, b"n");
            assert_eq!(plain.due_at(&key("a")), Some(now + S(300)));
            now += S(300);
        }
        assert_eq!(quiet_interval(S(300), u32::MAX, S(3600)), S(3600));
        assert_eq!(quiet_interval(S(300), 3, S(60)), S(300));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(8));
        s.track(key("a"), t0);
        let (_, read) = s.start_due(t0)[0].clone();
        let end = ReadEnd::Failed {
            retry_after: Some(S(2000)),
        };
        s.finished(read, end, t0, b"n");
        assert_eq!(s.due_at(&key("a")), Some(t0 + S(2000)));
        // A server asking for years is read again after the maximum backoff.
        let (_, read) = s.start_due(t0 + S(2000))[0].clone();
        let end = ReadEnd::Failed {
            retry_after: Some(Duration::MAX),
        };
        s.finished(read, end, t0 + S(2000), b"n");
        assert_eq!(s.due_at(&key("a")), Some(t0 + S(2000) + S(3600)));
    }

    #[test]
    fn at_most_the_limit_runs_and_the_rest_wait_in_due_order() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(2));
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            s.track(key(name), t0 + Duration::from_millis(i as u64));
        }
        let now = t0 + S(1);
        let first = s.start_due(now);
        assert_eq!(
            first.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.in_flight(), 2);
        assert!(s.start_due(now).is_empty());
        assert_eq!(
            s.next_wake(),
            Some(now + LOST_AFTER),
            "full: only loss wakes"
        );
        s.finished(first[0].1, ReadEnd::Answered { changed: true }, now, b"n");
        assert_eq!(s.next_wake(), Some(t0 + Duration::from_millis(2)));
        let next = s.start_due(now);
        assert_eq!(
            next.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
    }

    #[test]
    fn a_read_asked_for_while_one_runs_follows_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(8));
        s.track(key("a"), t0);
        let (_, read) = s.start_due(t0)[0].clone();
        assert!(s.read_now(&key("a"), t0));
        assert!(s.start_due(t0).is_empty());
        s.finished(read, ReadEnd::Answered { changed: true }, t0 + S(1), b"n");
        assert_eq!(s.due_at(&key("a")), Some(t0 + S(1)));
        assert!(!s.read_now(&key("unknown"), t0));
    }

    #[test]
    fn tracking_again_makes_the_read_in_flight_stale_and_untracking_ignores_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(8));
        s.track(key("a"), t0);
        let (_, old) = s.start_due(t0)[0].clone();
        s.track(key("a"), t0);
        let (_, new) = s.start_due(t0)[0].clone();
        assert_ne!(old, new);
        assert_eq!(
            s.finished(old, ReadEnd::Answered { changed: true }, t0, b"n"),
            None
        );
        assert_eq!(s.in_flight(), 1);
        s.untrack(&key("a"));
        assert_eq!(
            s.finished(new, ReadEnd::Answered { changed: true }, t0, b"n"),
            None
        );
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.next_wake(), None);
        assert_eq!(
            s.finished(12345, ReadEnd::Answered { changed: true }, t0, b"n"),
            None
        );
    }

    #[test]
    fn a_read_never_reported_frees_its_slot() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(1));
        s.track(key("a"), t0);
        s.track(key("b"), t0);
        let (_, lost) = s.start_due(t0)[0].clone();
        assert!(s.start_due(t0 + S(1)).is_empty());
        let later = t0 + LOST_AFTER;
        let started = s.start_due(later);
        assert_eq!(started.len(), 1);
        assert_eq!(
            s.finished(lost, ReadEnd::Answered { changed: true }, later, b"n"),
            None
        );
        assert_eq!(s.failures(&key("a")), 1);
    }

    #[test]
    fn jitter_spreads_keys_deterministically() {
        let t0 = Instant::now();
        let mut jittered = settings(100);
        jittered.jitter = 0.1;
        let run = || {
            let mut s = Schedule::new(jittered.clone());
            for i in 0..50 {
                s.track(format!("k{i}"), t0);
            }
            for (_, read) in s.start_due(t0) {
                s.finished(read, ReadEnd::Answered { changed: true }, t0, b"node");
            }
            (0..50)
                .map(|i| s.due_at(&format!("k{i}")).unwrap())
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let distinct: BTreeSet<_> = first.iter().collect();
        assert!(distinct.len() > 40, "{} distinct due times", distinct.len());
        assert!(
            first
                .iter()
                .all(|d| (t0 + S(270)..=t0 + S(330)).contains(d))
        );
    }
}
