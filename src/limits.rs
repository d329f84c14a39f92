//! Bounds on what peers may make this node do: a token bucket per peer, and
//! the counters of what was dropped.
//!
//! Shared by the gossip topic tasks and the direct head exchange, which
//! both check a peer's rate before decoding anything it sent. Nothing here
//! survives a restart.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use iroh::EndpointId;

/// Most peers whose rate is tracked by one limiter.
const MAX_ENTRIES: usize = 1024;

/// A token bucket per peer: `burst` messages at once, then `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    rate: f64,
    buckets: HashMap<EndpointId, (f64, Instant)>,
}

impl RateLimiter {
    /// A limiter allowing `burst` messages, then `rate` per second, per peer.
    pub fn new(burst: f64, rate: f64) -> Self {
        Self {
            burst,
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Whether a message from `peer` at `now` is within its rate. When
    /// [`MAX_ENTRIES`] peers are tracked and a new one arrives, buckets that
    /// have refilled (as good as new) are forgotten, and if none has, the
    /// one used longest ago is: a newcomer always gets its burst, so fresh
    /// keys filling the table cannot lock real peers out.
    pub fn allow(&mut self, peer: EndpointId, now: Instant) -> bool {
        if self.buckets.len() >= MAX_ENTRIES && !self.buckets.contains_key(&peer) {
            self.make_room(now);
        }
        let (tokens, last) = self.buckets.entry(peer).or_insert((self.burst, now));
        *tokens = (*tokens + elapsed(*last, now) * self.rate).min(self.burst);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forget refilled buckets; if every bucket is still in use, forget the
    /// one used longest ago.
    fn make_room(&mut self, now: Instant) {
        let (burst, rate) = (self.burst, self.rate);
        self.buckets
            .retain(|_, (tokens, last)| *tokens + elapsed(*last, now) * rate < burst);
        if self.buckets.len() >= MAX_ENTRIES
            && let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(peer, _)| *peer)
        {
            self.buckets.remove(&oldest);
        }
    }
}

/// Seconds from `last` to `now`, never negative.
fn elapsed(last: Instant, now: Instant) -> f64 {
    now.saturating_duration_since(last).as_secs_f64()
}

/// A [`RateLimiter`] shared by tasks: the direct head exchange charges a
/// peer's pushes and its answers to this node's pulls to the same budget.
#[derive(Debug, Clone)]
pub struct SharedLimiter(Arc<Mutex<RateLimiter>>);

impl SharedLimiter {
    /// A shared limiter allowing `burst` messages, then `rate` per second, per peer.
    pub fn new(burst: f64, rate: f64) -> Self {
        Self(Arc::new(Mutex::new(RateLimiter::new(burst, rate))))
    }

    /// Whether a message from `peer` now is within its rate.
    pub fn allow(&self, peer: EndpointId) -> bool {
        self.0
            .lock()
            .map(|mut l| l.allow(peer, Instant::now()))
            .unwrap_or(false)
    }
}

/// Counters of messages dropped before they reached the core.
#[derive(Debug, Default)]
pub struct DropCounters {
    /// Malformed, oversize, badly signed or off-topic messages.
    pub invalid: AtomicU64,
    /// Messages dropped unread because their sender exceeded its rate.
    pub rate_limited: AtomicU64,
}

impl DropCounters {
    /// Count one invalid message.
    pub fn invalid(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one rate-limited message.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// (invalid, rate limited) so far.
    pub fn read(&self) -> (u64, u64) {
        (
            self.invalid.load(Ordering::Relaxed),
            self.rate_limited.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut limiter = RateLimiter::new(64.0, 16.0);
        let peer = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let other = iroh::SecretKey::from_bytes(&[2; 32]).public();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| limiter.allow(peer, t0)).count();
        assert_eq!(allowed, 64);
        assert!(limiter.allow(other, t0), "peers have separate budgets");
        let later = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| limiter.allow(peer, later)).count();
        assert_eq!(allowed, 16);
    }

    #[test]
    fn many_busy_peers_do_not_grow_it_without_bound() {
        let mut limiter = RateLimiter::new(2.0, 1.0);
        let t0 = Instant::now();
        for n in 0..(MAX_ENTRIES + 50) {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
            let peer = iroh::SecretKey::from_bytes(&bytes).public();
            limiter.allow(peer, t0);
            limiter.allow(peer, t0);
        }
        assert!(limiter.buckets.len() <= MAX_ENTRIES);
    }

    fn peer(n: u64) -> EndpointId {
        let mut bytes = [9u8; 32];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        iroh::SecretKey::from_bytes(&bytes).public()
    }

    /// 1,024 fresh keys that keep sending fill the table; a newcomer a
    /// moment later still gets its burst (the key used longest ago goes),
    /// and a real peer that was in the table before them keeps working.
    #[test]
    fn fresh_keys_filling_the_table_do_not_lock_newcomers_out() {
        let mut limiter = RateLimiter::new(32.0, 4.0);
        let t0 = Instant::now();
        let real = peer(u64::MAX);
        assert!(limiter.allow(real, t0));
        for n in 0..(MAX_ENTRIES as u64) {
            let at = t0 + Duration::from_millis(1 + n);
            // Each spends its whole burst: none is idle.
            for _ in 0..32 {
                limiter.allow(peer(n), at);
            }
        }
        assert!(limiter.buckets.len() <= MAX_ENTRIES);
        let later = t0 + Duration::from_millis(MAX_ENTRIES as u64 + 10);
        let newcomer = peer(1 << 40);
        let allowed = (0..40).filter(|_| limiter.allow(newcomer, later)).count();
        assert_eq!(allowed, 32, "a newcomer gets its burst at once");
        assert!(limiter.allow(real, later), "a real peer is not locked out");
        assert!(limiter.buckets.len() <= MAX_ENTRIES);
    }
}
