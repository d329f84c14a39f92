//! The actor's half of the core's ATProto reads: each
//! [`crate::core::Effect::PollRecord`] and [`crate::core::Effect::ListIdentity`]
//! runs once on a child task through the shared [`crate::reader::Reader`],
//! and its result goes back to the core as an event with the same read id.
//! A read task that panics is reported as a failed read, so the core's
//! schedule never waits on it. Nothing here survives a restart.

use std::time::Duration;

use tracing::error;

use super::Knot;
use crate::{
    config::AtprotoConfig,
    core::{Event, ReadId, ReadSettings, RecordPoll},
    repo_id::RepoId,
    state::Locator,
};

/// Most reads of each kind running at once.
pub const MAX_READS_IN_FLIGHT: usize = 8;

/// The core's read schedule from `[atproto]`.
pub fn settings(config: &AtprotoConfig) -> ReadSettings {
    ReadSettings {
        interval: Duration::from_secs(config.poll_interval_secs.max(1)),
        jitter: config.poll_jitter,
        max_backoff: Duration::from_secs(config.max_backoff_secs.max(1)),
        max_quiet: Duration::from_secs(config.max_poll_interval_secs),
        max_in_flight: MAX_READS_IN_FLIGHT,
    }
}

impl Knot {
    /// Read `repo`'s record once.
    pub(super) fn start_record_read(&mut self, repo: RepoId, locator: Locator, read: ReadId) {
        let reader = self.reader.clone();
        let fallback = Event::Polled {
            repo: repo.clone(),
            read,
            outcome: RecordPoll::Unreachable("internal error: the record read stopped".into()),
            retry_after: None,
        };
        let handle = self.reads.spawn(async move {
            let (outcome, retry_after) = reader.poll_record(&repo, &locator).await;
            Event::Polled {
                repo,
                read,
                outcome,
                retry_after,
            }
        });
        self.read_fallbacks.insert(handle.id(), fallback);
    }

    /// List `did`'s records once.
    pub(super) fn start_listing(&mut self, did: String, read: ReadId) {
        let reader = self.reader.clone();
        let fallback = Event::Listed {
            did: did.clone(),
            read,
            result: Err("internal error: the listing stopped".into()),
            retry_after: None,
        };
        let handle = self.reads.spawn(async move {
            let (result, retry_after) = reader.list_identity(&did).await;
            Event::Listed {
                did,
                read,
                result,
                retry_after,
            }
        });
        self.read_fallbacks.insert(handle.id(), fallback);
    }

    /// A read task ended: its result (or, if it panicked, a failure) goes
    /// to the core.
    pub(super) async fn handle_read(
        &mut self,
        done: Result<(tokio::task::Id, Event), tokio::task::JoinError>,
    ) {
        let event = match done {
            Ok((id, event)) => {
                self.read_fallbacks.remove(&id);
                event
            }
            Err(e) => {
                if !e.is_panic() {
                    self.read_fallbacks.remove(&e.id());
                    return;
                }
                error!(error = %e, "an ATProto read panicked");
                match self.read_fallbacks.remove(&e.id()) {
                    Some(event) => event,
                    None => return,
                }
            }
        };
        self.feed(event).await;
    }
}
