//! When the database fails: a commit of durable writes that did not reach
//! the disk is reported ([`super::Event::PersistFailed`]); the core keeps
//! what it holds in memory, says so (each repository's error, an event, a
//! counter), and writes the rows of every subject again, from what it
//! holds then, after a backoff (doubling from `retry_base` up to
//! `retry_max` while commits keep failing). A repository's announcement
//! that the failure held back goes out once its rows are written. Nothing
//! here is persisted: after a crash the node resumes from what the disk
//! has, which is consistent (a commit is all or nothing).

use std::collections::BTreeSet;

use tracing::{debug, error, info};

use super::{
    io::{Effect, Event, Now, Subject, TimerKey, Write, later},
    machine::Core,
    queue,
    repo::PERSIST_ERROR,
};
use crate::{
    api::{NodeEvent, PolicyRule},
    repo_id::RepoId,
};

/// How long after its rows are written again a held-back write-back goes:
/// long enough for a commit that fails again to be reported first.
pub const WRITE_BACK_AFTER_REWRITE: std::time::Duration = std::time::Duration::from_secs(5);

impl Core {
    /// Write `repo_id`'s held state into the owner's record, unless its rows
    /// wait to be written again: the record names a state only once this
    /// node's database holds it (a crash before the retry would otherwise
    /// leave the record naming a state the author lost). Writing the rows
    /// again re-arms it ([`Core::repersist`]).
    pub(super) fn start_write_back(&mut self, repo_id: &RepoId, now: Now) {
        if !self.awaits_repersist(repo_id) {
            self.with_repo(repo_id, now, |r, ctx| r.start_write_back(ctx));
        }
    }

    /// A commit failed: remember its subjects and retry after a backoff.
    pub(super) fn handle_persist_failed(
        &mut self,
        subjects: Vec<Subject>,
        store_error: String,
        now: Now,
    ) {
        self.counters.store_failures += 1;
        self.unpersisted.failures = self.unpersisted.failures.saturating_add(1);
        let rewrites_announced = std::mem::take(&mut self.unpersisted.rewrites_announced);
        let wait = queue::backoff(
            self.settings.retry_base,
            self.settings.retry_max,
            self.unpersisted.failures,
        );
        error!(error = %store_error, subjects = subjects.len(), retry_secs = wait.as_secs(), "the database could not record a change; kept in memory and written again later");
        for subject in subjects {
            if let Subject::Repo(repo_id) = &subject {
                let message = format!(
                    "{PERSIST_ERROR} a change ({store_error}); knotd writes it again in {} s: check the disk holding the data directory",
                    wait.as_secs()
                );
                let rewrite_dropped = rewrites_announced.contains(repo_id);
                self.with_repo(repo_id, now, |r, _| {
                    // The announcement of a rewrite that failed did not go
                    // out: its rebroadcast is given back, so the next retry
                    // that holds announces. Any other rebroadcast stays
                    // counted: it went out, and giving it back let the
                    // announcement after the retry reach the topic a third
                    // time within a window (simulator seed 906,499).
                    if rewrite_dropped {
                        r.rebroadcasts = Default::default();
                    }
                    r.set_error(Some(message));
                    r.notify(NodeEvent::PersistFailed {
                        error: store_error.clone(),
                        retry_secs: wait.as_secs(),
                    });
                });
            }
            self.unpersisted.subjects.insert(subject);
        }
        self.set_timer(TimerKey::Repersist, later(now.at, wait));
    }

    /// Every event but a commit failure after a retry means the retry's
    /// commit held: failures in a row start again from zero.
    pub(super) fn note_commit_held(&mut self, event: &Event) {
        if matches!(event, Event::PersistFailed { .. }) {
            return;
        }
        self.unpersisted.rewrites_announced.clear();
        if self.unpersisted.subjects.is_empty() {
            self.unpersisted.failures = 0;
        }
    }

    /// Write the rows of every remembered subject again, from what the
    /// core holds now, and send the announcements that were held back.
    pub(super) fn repersist(&mut self, now: Now) {
        let subjects = std::mem::take(&mut self.unpersisted.subjects);
        if subjects.is_empty() {
            return;
        }
        info!(
            subjects = subjects.len(),
            "writing again what the database could not record"
        );
        self.rewrite_subjects(subjects, now);
    }

    /// A repository whose rows wait to be written again and that this
    /// event writes a row of (a new state, say) has all its rows written in
    /// the same commit, at once: the one row alone would reach the disk
    /// without the others (its configuration), and after a crash before the
    /// retry the node would have lost the repository while the new state
    /// was acknowledged.
    pub(super) fn rewrite_touched(&mut self, now: Now) {
        if self.unpersisted.subjects.is_empty() {
            return;
        }
        let mut touched = BTreeSet::new();
        let mut first = None;
        for (index, effect) in self.out.iter().enumerate() {
            if let Effect::Persist(write) = effect
                && write.needs_durability()
                && let subject @ Subject::Repo(_) = write.subject()
                && self.unpersisted.subjects.remove(&subject)
            {
                touched.insert(subject);
                first.get_or_insert(index);
            }
        }
        let Some(first) = first else {
            return;
        };
        // The rows go in the commit of the first touched write, ahead of
        // any announcement the event made: a later, separate commit could
        // fail after the new state was announced.
        let announced: BTreeSet<RepoId> = self
            .out
            .iter()
            .filter_map(|e| match e {
                Effect::Announce { repo, .. } => Some(repo.clone()),
                _ => None,
            })
            .collect();
        let end = self.out.len();
        self.rewrite_subjects(touched, now);
        let (rows, rest): (Vec<Effect>, Vec<Effect>) = self
            .out
            .drain(end..)
            .partition(|e| matches!(e, Effect::Persist(_)));
        // The rows join the commit of the first touched write; the rest
        // (timers, the held state's announcement) follows the event's own
        // effects, and the announcement is dropped when the event announces
        // the repository itself.
        self.out.splice(first..first, rows);
        self.out.extend(
            rest.into_iter().filter(
                |e| !matches!(e, Effect::Announce { repo, .. } if announced.contains(repo)),
            ),
        );
    }

    /// A repository whose rows wait to be written again tells nobody of
    /// its state: neither an announcement this event made nor, through
    /// [`Core::held_statements`], the answer to a pull. A publisher that
    /// crashed before the retry would otherwise restart on an older state
    /// than the one it signed and spread, which its followers hold and it
    /// never takes back. The announcement goes out once the rows are
    /// written ([`Core::repersist`]).
    pub(super) fn withhold_unpersisted_announcements(&mut self) {
        if self.unpersisted.subjects.is_empty() {
            return;
        }
        let unpersisted = &self.unpersisted.subjects;
        let mut withheld = BTreeSet::new();
        self.out.retain(|effect| match effect {
            Effect::Announce { repo, .. } => {
                let waits = unpersisted.contains(&Subject::Repo(repo.clone()));
                if waits {
                    debug!(repo = %repo, "not announcing a state the database does not hold yet");
                    withheld.insert(repo.clone());
                }
                !waits
            }
            _ => true,
        });
        // A withheld announcement used no rebroadcast: the one made once
        // the rows are written is not held to it.
        for repo_id in withheld {
            if let Some(repo) = self.repos.get_mut(&repo_id) {
                repo.rebroadcasts = Default::default();
            }
        }
    }

    /// Whether `repo_id`'s rows wait to be written again.
    pub(super) fn awaits_repersist(&self, repo_id: &RepoId) -> bool {
        self.unpersisted
            .subjects
            .contains(&Subject::Repo(repo_id.clone()))
    }

    fn rewrite_subjects(&mut self, subjects: impl IntoIterator<Item = Subject>, now: Now) {
        for subject in subjects {
            match subject {
                Subject::Repo(repo_id) => {
                    let rewritten = self.with_repo(&repo_id, now, |r, ctx| r.rewrite(ctx));
                    if rewritten == Some(true) {
                        self.unpersisted.rewrites_announced.insert(repo_id.clone());
                    }
                    if rewritten.is_none() {
                        self.out.push(Effect::Persist(Write::Remove(repo_id)));
                    } else if self.settings.write_back
                        && self.repos[&repo_id]
                            .held
                            .as_ref()
                            .is_some_and(|h| h.write_back_pending)
                    {
                        // A write-back held back by the failed commit goes
                        // once this one held (a new failure holds it again).
                        self.set_timer(
                            TimerKey::WriteBack(repo_id),
                            later(now.at, WRITE_BACK_AFTER_REWRITE),
                        );
                    }
                }
                Subject::Follow(did) => {
                    let write = match self.follows.get(&did) {
                        Some(follow) => Write::Follow(follow.config.clone()),
                        None => Write::Unfollow(did),
                    };
                    self.out.push(Effect::Persist(write));
                }
                Subject::Policy(target) => {
                    let rule = if self.policy.allow.contains(&target) {
                        Some(PolicyRule::Allow)
                    } else if self.policy.block.contains(&target) {
                        Some(PolicyRule::Block)
                    } else {
                        None
                    };
                    self.out.push(Effect::Persist(Write::Policy(target, rule)));
                }
            }
        }
    }
}
