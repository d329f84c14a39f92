//! The owner's record of one repository: what a poll changes, and writing
//! it back.
//!
//! A polled record replaces the record copy when it differs (durably: its
//! peers are trusted publishers, so removing one revokes it, across restarts
//! too). Whether its state is taken is
//! [`crate::core::trust::judge_record`]'s decision. A record that is gone
//! withdraws the trust it granted. After a publish, a node with credentials
//! writes the record back, retrying with backoff until the PDS has the
//! state held, and reads it from then on.

use std::time::Instant;

use tracing::{info, warn};

use super::{
    outbox::{Ctx, Out, RecordRead},
    state::{Repo, Want, WantSource},
};
use crate::{
    api::NodeEvent,
    core::{
        io::{Effect, RecordPoll, TimerKey, Write, WriteFailure, WrittenBack, later},
        queue,
        trust::{self, RecordVerdict},
    },
    state::{Locator, RecordCopy},
};

/// Text every record poll error starts with, so a later success clears it.
const POLL_ERROR: &str = "record poll failed";
/// Text every write-back error starts with.
const WRITE_BACK_ERROR: &str = "write-back failed";

impl Repo {
    /// A poll of the record ended.
    pub fn on_polled(&mut self, ctx: &Ctx, outcome: RecordPoll) {
        let repo_id = self.config.repo_id.clone();
        let now = ctx.now;
        let record = match outcome {
            RecordPoll::Found(r) if r.repo_id == repo_id => r,
            RecordPoll::Found(r) => {
                let error = format!(
                    "the record is for {}, not {repo_id}; check the --record locator given to add-repo",
                    r.repo_id
                );
                return self.poll_failed(ctx, error);
            }
            RecordPoll::NotFound(error) => return self.record_not_found(ctx, error),
            RecordPoll::Unreachable(error) | RecordPoll::Invalid(error) => {
                return self.poll_failed(ctx, error);
            }
        };
        self.record_back();
        self.sync.awaiting_poll = false;
        self.book.last_poll = Some(now.unix_secs());
        let previous = self.record.as_ref().map(|c| &c.record);
        let named_before = |m: &str| self.record.as_ref().is_some_and(|c| c.ever_named(m));
        let verdict = trust::judge_record(
            &record,
            &named_before,
            self.held.as_ref().map(|h| h.manifest),
            self.current_position(),
            now.unix_ms,
        );
        let changed = previous != Some(&record);
        let adopt = match verdict {
            RecordVerdict::Adopt { seq } => Some(seq),
            RecordVerdict::Held | RecordVerdict::Keep(_) => None,
        };
        if changed || adopt.is_some() {
            let copy = match &self.record {
                Some(old) => old.next(record.clone(), now.unix_secs(), adopt.is_some()),
                None => RecordCopy {
                    record: record.clone(),
                    read_at: now.unix_secs(),
                    pending: adopt.is_some(),
                    named: Vec::new(),
                },
            };
            self.record = Some(copy.clone());
            self.emit(Effect::Persist(Write::Record(repo_id.clone(), Some(copy))));
            if !record.peers.is_empty() {
                self.emit(Effect::LearnAddrs(record.peers.clone()));
            }
        }
        self.persist_book();
        self.clear_error_of(POLL_ERROR);
        if let RecordVerdict::Keep(reason) = verdict
            && changed
        {
            info!(repo = %repo_id, reason, "the record changed; its state is not taken");
        }
        let refused = self.quota_refused.is_some() && self.quota_refused == record.manifest_hash();
        if let (Some(seq), Some(manifest), false) = (adopt, record.manifest_hash(), refused) {
            info!(repo = %repo_id, manifest = ?record.manifest, seq, "the record names a new state");
            self.notify(NodeEvent::Adopted {
                manifest: manifest.to_hex(),
                seq,
                source: "record".into(),
            });
            self.want = Some(Want {
                manifest,
                seq,
                source: WantSource::Record,
                providers: Vec::new(),
                attempts: 0,
                not_before: None,
            });
            self.request(Out::Schedule);
        }
        if changed {
            self.wake(ctx);
        }
        self.request(Out::Pump);
        self.settle_sync(ctx);
    }

    /// A poll that gave no answer to go by: the record copy held stays.
    fn poll_failed(&mut self, ctx: &Ctx, error: String) {
        warn!(repo = %self.config.repo_id, %error, "record poll failed");
        if self.sync.awaiting_poll {
            self.sync.awaiting_poll = false;
            self.sync.poll_error = Some(error.clone());
        }
        self.set_error(Some(format!("{POLL_ERROR}: {error}")));
        self.notify(NodeEvent::PollError { error });
        self.settle_sync(ctx)
    }

    /// The PDS says the record does not exist: the owner deleted it.
    fn record_not_found(&mut self, ctx: &Ctx, error: String) {
        self.book.last_poll = Some(ctx.now.unix_secs());
        if self.sync.awaiting_poll {
            self.sync.awaiting_poll = false;
            if self.held.is_some() {
                self.sync.message = Some(format!(
                    "the owner's record is gone ({error}); the peers it named are no longer trusted; serving the state held"
                ));
            } else {
                self.sync.poll_error = Some(error);
            }
        }
        self.persist_book();
        self.clear_error_of(POLL_ERROR);
        self.record_gone(ctx);
        self.request(Out::ArmRetiredRemoval);
        self.request(Out::Pump);
        self.settle_sync(ctx);
    }

    /// When the repository is removed (Unix seconds), if it is retired.
    pub fn removal_time(&self, ctx: &Ctx) -> Option<u64> {
        if !self.retired() {
            return None;
        }
        let grace = ctx.settings.retired_grace.as_secs();
        Some(self.config.record_deleted_at?.saturating_add(grace))
    }
    /// The owner's record is gone (a poll found none, or a followed
    /// identity's complete listing lacks it): the trust it granted is
    /// withdrawn. Its peers are no longer trusted publishers (the copy is
    /// dropped, durably) and a fetch it asked for is not started; the
    /// repository stays, marked `record_deleted`, with the state held. A
    /// repository a followed identity brought is retired as well: its
    /// record is no longer polled, it leaves its topic, and it is removed
    /// after the grace period unless the record comes back.
    pub fn record_gone(&mut self, ctx: &Ctx) {
        let repo_id = self.config.repo_id.clone();
        let now = ctx.now;
        let copy = self.record.take();
        let revoked: Vec<String> = copy
            .iter()
            .flat_map(|c| c.record.peers.iter().map(|p| p.node_id.clone()))
            .collect();
        if copy.is_some() {
            self.emit(Effect::Persist(Write::Record(repo_id.clone(), None)));
        }
        if self
            .want
            .as_ref()
            .is_some_and(|w| w.source == WantSource::Record)
        {
            self.want = None;
        }
        let newly = !self.config.record_deleted;
        self.config.record_deleted = true;
        self.config.record_deleted_at.get_or_insert(now.unix_secs());
        let retired = self.retired();
        if retired && newly {
            self.request(Out::RecordRead(RecordRead::Untrack));
        }
        if retired && self.topic.take().is_some() {
            self.emit(Effect::LeaveTopic {
                repo: repo_id.clone(),
            });
        }
        if !newly {
            return;
        }
        let config = self.config.clone();
        self.emit(Effect::Persist(Write::Config(config)));
        let remove_at = self.removal_time(ctx);
        info!(repo = %repo_id, revoked = revoked.len(), retired, "the owner's record is gone; the peers it named are no longer trusted");
        self.notify(NodeEvent::RecordDeleted { revoked, remove_at });
    }

    /// The record exists (again): a repository marked as having lost it is
    /// not any more.
    pub fn record_back(&mut self) {
        let repo_id = self.config.repo_id.clone();
        if !self.config.record_deleted {
            return;
        }
        let retired = self.retired();
        self.config.record_deleted = false;
        self.config.record_deleted_at = None;
        let config = self.config.clone();
        self.emit(Effect::Persist(Write::Config(config)));
        if retired && self.config.locator.is_some() {
            self.request(Out::RecordRead(RecordRead::Track));
        }
        info!(repo = %repo_id, "the owner's record is back");
    }

    /// Write the record back at `at` (replacing a later schedule).
    pub fn schedule_write_back(&mut self, at: Instant) {
        let key = TimerKey::WriteBack(self.config.repo_id.clone());
        self.set_timer(key, at);
    }

    /// Write the held state into the owner's record, when it is due and
    /// the record is the account's own.
    pub fn start_write_back(&mut self, ctx: &Ctx) {
        let Some(account) = ctx.settings.account_did.clone() else {
            return; // resolving the account: [`Event::AccountResolved`] resumes
        };
        let repo_id = self.config.repo_id.clone();
        let Some(held) = self.held.as_mut().filter(|h| h.write_back_pending) else {
            return;
        };
        if repo_id.did() != account {
            // Credentials only ever go with the account's own records.
            info!(repo = %repo_id, account = %account, "not writing the record back: it belongs to another account");
            held.write_back_pending = false;
            let held = Box::new(held.clone());
            self.emit(Effect::Persist(Write::Held(repo_id.clone(), Some(held))));
            return;
        }
        let (head, manifest, seq) = (held.head.clone(), held.manifest, held.seq());
        if self.write_back.in_flight {
            return;
        }
        self.write_back.in_flight = true;
        let (collection, rkey) = match &self.config.locator {
            Some(l) if l.did == account => (l.collection.clone(), l.rkey.clone()),
            _ => (
                crate::record::COLLECTION.to_string(),
                repo_id.name().to_string(),
            ),
        };
        self.emit(Effect::WriteBack {
            repo: repo_id.clone(),
            collection,
            rkey,
            head,
            manifest: manifest.to_hex(),
            seq,
        });
    }

    /// A write-back ended.
    pub fn on_written_back(&mut self, ctx: &Ctx, result: Result<WrittenBack, WriteFailure>) {
        let repo_id = self.config.repo_id.clone();
        let now = ctx.now;
        self.write_back.in_flight = false;
        match result {
            Ok(WrittenBack { record, superseded }) => {
                self.write_back.attempts = 0;
                if self.config.locator.is_none() {
                    // A node that writes the owner's record reads it from now
                    // on: the owner may change it elsewhere (remove a peer,
                    // delete it), and what it says must not go stale here.
                    let locator = Locator::default_for(&repo_id, None);
                    self.config.locator = Some(locator);
                    self.emit(Effect::Persist(Write::Config(self.config.clone())));
                    self.request(Out::RecordRead(RecordRead::Track));
                }
                let done = superseded
                    || self
                        .held
                        .as_ref()
                        .is_some_and(|h| Some(h.manifest) == record.manifest_hash());
                if let Some(held) = self.held.as_mut().filter(|_| done) {
                    held.write_back_pending = false;
                    let held = Box::new(held.clone());
                    self.emit(Effect::Persist(Write::Held(repo_id.clone(), Some(held))));
                } else {
                    // A newer state was published meanwhile: write again.
                    self.schedule_write_back(now.at);
                }
                self.clear_error_of(WRITE_BACK_ERROR);
                self.notify(NodeEvent::WriteBack {
                    ok: true,
                    error: None,
                });
                if superseded {
                    info!(repo = %repo_id, manifest = ?record.manifest, "the record names a newer state; not overwritten");
                } else {
                    info!(repo = %repo_id, manifest = ?record.manifest, "record written back");
                }
                // What the PDS holds now is the record as last read.
                self.on_polled(ctx, RecordPoll::Found(record));
            }
            Err(WriteFailure {
                message,
                retry_after,
            }) => {
                warn!(repo = %repo_id, error = %message, "record write-back failed; will retry");
                self.write_back.attempts = self.write_back.attempts.saturating_add(1);
                let wait = queue::backoff(
                    ctx.settings.retry_base,
                    ctx.settings.retry_max,
                    self.write_back.attempts,
                )
                .max(retry_after.unwrap_or_default());
                self.set_error(Some(format!("{WRITE_BACK_ERROR}: {message}")));
                self.notify(NodeEvent::WriteBack {
                    ok: false,
                    error: Some(message),
                });
                self.schedule_write_back(later(now.at, wait));
            }
        }
    }
}
