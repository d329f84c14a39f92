//! Bounds on what peers may make this node do: a token bucket per peer, and
//! the counters of what was dropped.
//!
//! Shared by the gossip topic tasks and the direct head exchange, which
//! both check a peer's rate before decoding anything it sent. Nothing here
//! survives a restart.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
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

    /// Whether a message from `peer` at `now` is within its rate. When more
    /// than [`MAX_ENTRIES`] peers are tracked, idle ones are forgotten; if
    /// none is idle, new peers are refused until some are.
    pub fn allow(&mut self, peer: EndpointId, now: Instant) -> bool {
        if self.buckets.len() >= MAX_ENTRIES && !self.buckets.contains_key(&peer) {
            let burst = self.burst;
            self.buckets.retain(|_, (tokens, last)| {
                *tokens < burst && now.duration_since(*last) < Duration::from_secs(60)
            });
            if self.buckets.len() >= MAX_ENTRIES {
                return false;
            }
        }
        let (tokens, last) = self.buckets.entry(peer).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
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
}
