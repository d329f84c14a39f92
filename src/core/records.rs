//! The owner's record: what a poll changes, and writing it back.
//!
//! A polled record replaces the record copy when it differs (durably: its
//! peers are trusted publishers, so removing one revokes it, across restarts
//! too). Whether its state is taken is [`super::trust::judge_record`]'s
//! decision. After a publish, a node with credentials writes the record
//! back, retrying with backoff until the PDS has the state held.

use tracing::{info, warn};

use super::{
    Core, Effect, Now, RecordPoll, TimerKey, WriteFailure, WrittenBack, queue,
    repo::{Want, WantSource},
    trust::{self, RecordVerdict},
};
use crate::{api::NodeEvent, repo_id::RepoId, state::RecordCopy, store::Write};

/// Text every record poll error starts with, so a later success clears it.
const POLL_ERROR: &str = "record poll failed";
/// Text every write-back error starts with.
const WRITE_BACK_ERROR: &str = "write-back failed";

impl Core {
    pub(super) fn handle_polled(&mut self, repo_id: &RepoId, outcome: RecordPoll, now: Now) {
        if !self.repos.contains_key(repo_id) {
            return;
        }
        let record = match outcome {
            RecordPoll::Found(r) if &r.repo_id == repo_id => r,
            RecordPoll::Found(r) => {
                let error = format!(
                    "the record is for {}, not {repo_id}; check the --record locator given to add-repo",
                    r.repo_id
                );
                return self.poll_failed(repo_id, error, now);
            }
            RecordPoll::NotFound(error) => return self.record_not_found(repo_id, error, now),
            RecordPoll::Unreachable(error) | RecordPoll::Invalid(error) => {
                return self.poll_failed(repo_id, error, now);
            }
        };
        self.record_back(repo_id);
        let repo = self.repos.get_mut(repo_id).expect("present above");
        repo.sync.awaiting_poll = false;
        repo.book.last_poll = Some(now.unix_secs());
        let previous = repo.record.as_ref().map(|c| &c.record);
        let named_before = |m: &str| repo.record.as_ref().is_some_and(|c| c.ever_named(m));
        let verdict = trust::judge_record(
            &record,
            &named_before,
            repo.held.as_ref().map(|h| h.manifest.as_str()),
            repo.current_position(),
            now.unix_ms,
        );
        let changed = previous != Some(&record);
        let adopt = match verdict {
            RecordVerdict::Adopt { seq } => Some(seq),
            RecordVerdict::Held | RecordVerdict::Keep(_) => None,
        };
        if changed || adopt.is_some() {
            let copy = match &repo.record {
                Some(old) => old.next(record.clone(), now.unix_secs(), adopt.is_some()),
                None => RecordCopy {
                    record: record.clone(),
                    read_at: now.unix_secs(),
                    pending: adopt.is_some(),
                    named: Vec::new(),
                },
            };
            repo.record = Some(copy.clone());
            self.out
                .push(Effect::Persist(Write::Record(repo_id.clone(), Some(copy))));
            if !record.peers.is_empty() {
                self.out.push(Effect::LearnAddrs(record.peers.clone()));
            }
        }
        self.persist_book(repo_id);
        self.clear_error_of(repo_id, POLL_ERROR);
        if let RecordVerdict::Keep(reason) = verdict
            && changed
        {
            info!(repo = %repo_id, reason, "the record changed; its state is not taken");
        }
        let refused = self.repos.get(repo_id).is_some_and(|r| {
            r.quota_refused.is_some() && r.quota_refused == record.manifest_hash()
        });
        if let (Some(seq), Some(manifest), false) = (adopt, record.manifest_hash(), refused) {
            info!(repo = %repo_id, manifest = ?record.manifest, seq, "the record names a new state");
            self.notify(
                repo_id,
                NodeEvent::Adopted {
                    manifest: manifest.to_hex(),
                    seq,
                    source: "record".into(),
                },
            );
            let repo = self.repos.get_mut(repo_id).expect("present above");
            repo.want = Some(Want {
                manifest,
                seq,
                source: WantSource::Record,
                providers: Vec::new(),
                attempts: 0,
                not_before: None,
            });
            self.schedule(repo_id);
        }
        if changed {
            self.ensure_topic(repo_id, now);
        }
        self.pump(now);
        self.settle_sync(repo_id, now);
    }

    /// A poll that gave no answer to go by: the record copy held stays.
    fn poll_failed(&mut self, repo_id: &RepoId, error: String, now: Now) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        warn!(repo = %repo_id, %error, "record poll failed");
        if repo.sync.awaiting_poll {
            repo.sync.awaiting_poll = false;
            repo.sync.poll_error = Some(error.clone());
        }
        self.set_error(repo_id, Some(format!("{POLL_ERROR}: {error}")));
        self.notify(repo_id, NodeEvent::PollError { error });
        self.settle_sync(repo_id, now)
    }

    /// The PDS says the record does not exist: the owner deleted it.
    fn record_not_found(&mut self, repo_id: &RepoId, error: String, now: Now) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        repo.book.last_poll = Some(now.unix_secs());
        if repo.sync.awaiting_poll {
            repo.sync.awaiting_poll = false;
            if repo.held.is_some() {
                repo.sync.message = Some(format!(
                    "the owner's record is gone ({error}); the peers it named are no longer trusted; serving the state held"
                ));
            } else {
                repo.sync.poll_error = Some(error);
            }
        }
        self.persist_book(repo_id);
        self.clear_error_of(repo_id, POLL_ERROR);
        self.record_gone(repo_id, now);
        self.arm_retired_removal(now);
        self.pump(now);
        self.settle_sync(repo_id, now);
    }

    /// The owner's record is gone (a poll found none, or a followed
    /// identity's complete listing lacks it): the trust it granted is
    /// withdrawn. Its peers are no longer trusted publishers (the copy is
    /// dropped, durably) and a fetch it asked for is not started; the
    /// repository stays, marked `record_deleted`, with the state held. A
    /// repository a followed identity brought is retired as well: its
    /// record is no longer polled, it leaves its topic, and it is removed
    /// after the grace period unless the record comes back.
    pub(super) fn record_gone(&mut self, repo_id: &RepoId, now: Now) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        let copy = repo.record.take();
        let revoked: Vec<String> = copy
            .iter()
            .flat_map(|c| c.record.peers.iter().map(|p| p.node_id.clone()))
            .collect();
        if copy.is_some() {
            self.out
                .push(Effect::Persist(Write::Record(repo_id.clone(), None)));
        }
        if repo
            .want
            .as_ref()
            .is_some_and(|w| w.source == WantSource::Record)
        {
            repo.want = None;
        }
        let newly = !repo.config.record_deleted;
        repo.config.record_deleted = true;
        repo.config.record_deleted_at.get_or_insert(now.unix_secs());
        let retired = repo.retired();
        if retired && newly {
            self.out.push(Effect::UntrackRecord {
                repo: repo_id.clone(),
            });
        }
        if retired && repo.topic.take().is_some() {
            self.out.push(Effect::LeaveTopic {
                repo: repo_id.clone(),
            });
        }
        if !newly {
            return;
        }
        let config = repo.config.clone();
        self.out.push(Effect::Persist(Write::Config(config)));
        let remove_at = self.removal_time(repo_id);
        info!(repo = %repo_id, revoked = revoked.len(), retired, "the owner's record is gone; the peers it named are no longer trusted");
        self.notify(repo_id, NodeEvent::RecordDeleted { revoked, remove_at });
    }

    /// The record exists (again): a repository marked as having lost it is
    /// not any more.
    pub(super) fn record_back(&mut self, repo_id: &RepoId) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        if !repo.config.record_deleted {
            return;
        }
        let retired = repo.retired();
        repo.config.record_deleted = false;
        repo.config.record_deleted_at = None;
        let config = repo.config.clone();
        self.out.push(Effect::Persist(Write::Config(config)));
        if let (true, Some(locator)) = (retired, repo.config.locator.clone()) {
            self.out.push(Effect::TrackRecord {
                repo: repo_id.clone(),
                locator,
            });
        }
        info!(repo = %repo_id, "the owner's record is back");
    }

    /// Write the record back at `at` (replacing a later schedule).
    pub(super) fn schedule_write_back(&mut self, repo_id: &RepoId, at: std::time::Instant) {
        self.set_timer(TimerKey::WriteBack(repo_id.clone()), at);
    }

    pub(super) fn start_write_back(&mut self, repo_id: &RepoId, _now: Now) {
        let Some(account) = self.settings.account_did.clone() else {
            return; // resolving the account: [`Event::AccountResolved`] resumes
        };
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        let Some(held) = repo.held.as_mut().filter(|h| h.write_back_pending) else {
            return;
        };
        if repo_id.did() != account {
            // Credentials only ever go with the account's own records.
            info!(repo = %repo_id, account = %account, "not writing the record back: it belongs to another account");
            held.write_back_pending = false;
            let held = held.clone();
            self.out.push(Effect::Persist(Write::Held(
                repo_id.clone(),
                Some(Box::new(held)),
            )));
            return;
        }
        if repo.write_back.in_flight {
            return;
        }
        repo.write_back.in_flight = true;
        let (collection, rkey) = match &repo.config.locator {
            Some(l) if l.did == account => (l.collection.clone(), l.rkey.clone()),
            _ => (
                crate::record::COLLECTION.to_string(),
                repo_id.name().to_string(),
            ),
        };
        self.out.push(Effect::WriteBack {
            repo: repo_id.clone(),
            collection,
            rkey,
            head: held.head.clone(),
            manifest: held.manifest.clone(),
            seq: held.seq(),
        });
    }

    /// The node's account is known: write back what waited for it.
    pub(super) fn handle_account_resolved(&mut self, did: String, now: Now) {
        self.settings.account_did = Some(did);
        let waiting: Vec<RepoId> = self
            .repos
            .iter()
            .filter(|(_, r)| r.held.as_ref().is_some_and(|h| h.write_back_pending))
            .map(|(id, _)| id.clone())
            .collect();
        for repo_id in waiting {
            self.start_write_back(&repo_id, now);
        }
    }

    pub(super) fn handle_written_back(
        &mut self,
        repo_id: &RepoId,
        result: Result<WrittenBack, WriteFailure>,
        now: Now,
    ) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        repo.write_back.in_flight = false;
        match result {
            Ok(WrittenBack { record, superseded }) => {
                repo.write_back.attempts = 0;
                if repo.config.locator.is_none() {
                    // A node that writes the owner's record reads it from now
                    // on: the owner may change it elsewhere (remove a peer,
                    // delete it), and what it says must not go stale here.
                    let locator = crate::state::Locator::default_for(repo_id, None);
                    repo.config.locator = Some(locator.clone());
                    self.out
                        .push(Effect::Persist(Write::Config(repo.config.clone())));
                    self.out.push(Effect::TrackRecord {
                        repo: repo_id.clone(),
                        locator,
                    });
                }
                let repo = self.repos.get_mut(repo_id).expect("present above");
                let done = superseded
                    || repo
                        .held
                        .as_ref()
                        .is_some_and(|h| Some(&h.manifest) == record.manifest.as_ref());
                if let Some(held) = repo.held.as_mut().filter(|_| done) {
                    held.write_back_pending = false;
                    let held = held.clone();
                    self.out.push(Effect::Persist(Write::Held(
                        repo_id.clone(),
                        Some(Box::new(held)),
                    )));
                } else {
                    // A newer state was published meanwhile: write again.
                    self.schedule_write_back(repo_id, now.at);
                }
                self.clear_error_of(repo_id, WRITE_BACK_ERROR);
                self.notify(
                    repo_id,
                    NodeEvent::WriteBack {
                        ok: true,
                        error: None,
                    },
                );
                if superseded {
                    info!(repo = %repo_id, manifest = ?record.manifest, "the record names a newer state; not overwritten");
                } else {
                    info!(repo = %repo_id, manifest = ?record.manifest, "record written back");
                }
                // What the PDS holds now is the record as last read.
                self.handle_polled(repo_id, RecordPoll::Found(record), now);
            }
            Err(WriteFailure {
                message,
                retry_after,
            }) => {
                warn!(repo = %repo_id, error = %message, "record write-back failed; will retry");
                repo.write_back.attempts = repo.write_back.attempts.saturating_add(1);
                let wait = queue::backoff(
                    self.settings.retry_base,
                    self.settings.retry_max,
                    repo.write_back.attempts,
                )
                .max(retry_after.unwrap_or_default());
                self.set_error(repo_id, Some(format!("{WRITE_BACK_ERROR}: {message}")));
                self.notify(
                    repo_id,
                    NodeEvent::WriteBack {
                        ok: false,
                        error: Some(message),
                    },
                );
                self.schedule_write_back(repo_id, super::later(now.at, wait));
            }
        }
    }
}
