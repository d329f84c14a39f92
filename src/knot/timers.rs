//! The actor's timer queue: the core's timers ([`crate::core::TimerKey`]),
//! one deadline per key (setting a key again replaces its deadline), each
//! handed back once it expires. Deadlines are clamped to what the queue
//! holds. Kept in memory only: the core sets its timers again when it
//! loads.

use std::{collections::HashMap, time::Instant};

use n0_future::StreamExt;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::core::TimerKey;

/// Pending timers.
#[derive(Default)]
pub(super) struct Timers {
    queue: DelayQueue<TimerKey>,
    keys: HashMap<TimerKey, delay_queue::Key>,
}

impl Timers {
    /// Fire `key` at `at`, replacing its earlier deadline.
    pub(super) fn set(&mut self, key: TimerKey, at: Instant) {
        let at = timer_deadline(at);
        match self.keys.get(&key) {
            Some(k) => self.queue.reset_at(k, at),
            None => {
                let k = self.queue.insert_at(key.clone(), at);
                self.keys.insert(key, k);
            }
        }
    }

    /// Whether no timer is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The next timer to expire, once it has (cancel-safe).
    pub(super) async fn next(&mut self) -> Option<TimerKey> {
        let key = self.queue.next().await?.into_inner();
        self.keys.remove(&key);
        Some(key)
    }
}

/// A deadline the timer queue holds: at most [`crate::core::MAX_TIMER_WAIT`]
/// from now (the queue panics for deadlines about two years out).
fn timer_deadline(at: Instant) -> tokio::time::Instant {
    let latest = crate::core::later(Instant::now(), crate::core::MAX_TIMER_WAIT);
    tokio::time::Instant::from_std(at.min(latest))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_timer_queue_takes_any_deadline() {
        let mut timers = DelayQueue::new();
        let three_years = Instant::now() + Duration::from_secs(100_000_000);
        let key = timers.insert_at(1, timer_deadline(three_years));
        timers.reset_at(
            &key,
            timer_deadline(Instant::now() + crate::core::MAX_TIMER_WAIT),
        );
        timers.insert_at(2, timer_deadline(Instant::now()));
        assert_eq!(timers.next().await.map(|e| e.into_inner()), Some(2));
        // Unclamped, the same deadline panics the queue.
        let far = tokio::time::Instant::from_std(three_years);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            timers.insert_at(3, far);
        }));
        assert!(
            panicked.is_err(),
            "the queue took a deadline three years out"
        );
    }

    #[tokio::test]
    async fn a_timer_set_again_fires_once_at_its_new_deadline() {
        let mut timers = Timers::default();
        let now = Instant::now();
        timers.set(TimerKey::Rejoin, now + Duration::from_secs(3600));
        timers.set(TimerKey::Rejoin, now);
        timers.set(TimerKey::Resync, now + Duration::from_millis(20));
        assert_eq!(timers.next().await, Some(TimerKey::Rejoin));
        assert_eq!(timers.next().await, Some(TimerKey::Resync));
        assert!(timers.is_empty());
    }
}
