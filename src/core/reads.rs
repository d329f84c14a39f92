//! When the node reads ATProto: the record of every repository that has a
//! locator (and is not retired) and the listing of every followed identity,
//! each on its [`Schedule`]. The core starts the reads that are due as
//! one-shot effects ([`Effect::PollRecord`], [`Effect::ListIdentity`]),
//! arms one timer per schedule for the next, and hands each result that is
//! still current to the rules that judge it (a repository's
//! [`super::repo::Repo::on_polled`], [`Core::handle_listed`]). Nothing
//! here is persisted: at start-up every record and identity is read at
//! once.

use std::time::Duration;

use tracing::debug;

use super::{
    io::{Effect, Now, ReadId, RecordPoll, TimerKey},
    machine::Core,
    repo::RecordRead,
    schedule::ReadEnd,
};
use crate::{record::ListedRecord, repo_id::RepoId};

impl Core {
    /// A repository's rules changed when its record is read.
    pub(super) fn record_read(&mut self, repo_id: &RepoId, ask: RecordRead, now: Now) {
        match ask {
            RecordRead::Track => self.reads.records.track(repo_id.clone(), now.at),
            RecordRead::Untrack => self.reads.records.untrack(repo_id),
            RecordRead::Now => {
                if !self.reads.records.read_now(repo_id, now.at) {
                    debug!(repo = %repo_id, "a record read asked for a repository whose record is not read");
                }
            }
        }
    }

    /// Start the reads that are due and arm the timers for the next ones.
    /// Runs after every event.
    pub(super) fn start_reads(&mut self, now: Now) {
        for (repo, read) in self.reads.records.start_due(now.at) {
            let locator = self.repos.get(&repo).and_then(|r| r.config.locator.clone());
            match locator {
                Some(locator) => self.out.push(Effect::PollRecord {
                    repo,
                    locator,
                    read,
                }),
                None => {
                    // Cannot happen (tracked only with a locator); end the
                    // read so its slot is free.
                    self.reads.records.untrack(&repo);
                    let end = ReadEnd::Answered { changed: true };
                    self.reads
                        .records
                        .finished(read, end, now.at, self.me.as_bytes());
                }
            }
        }
        for (did, read) in self.reads.listings.start_due(now.at) {
            self.out.push(Effect::ListIdentity { did, read });
        }
        if let Some(next) = self.reads.records.next_wake()
            && self.reads.records_armed != Some(next)
        {
            self.reads.records_armed = Some(next);
            self.set_timer(TimerKey::RecordReads, next);
        }
        if let Some(next) = self.reads.listings.next_wake()
            && self.reads.listings_armed != Some(next)
        {
            self.reads.listings_armed = Some(next);
            self.set_timer(TimerKey::Listings, next);
        }
    }

    /// A read timer fired: it is armed again by [`Core::start_reads`].
    pub(super) fn reads_timer(&mut self, key: &TimerKey) {
        match key {
            TimerKey::RecordReads => self.reads.records_armed = None,
            TimerKey::Listings => self.reads.listings_armed = None,
            _ => {}
        }
    }

    /// A record read ended: the schedule learns how, and a current result
    /// goes to its repository (a stale one, from before the locator
    /// changed or after the repository stopped being read, is dropped).
    pub(super) fn handle_polled(
        &mut self,
        repo_id: &RepoId,
        read: ReadId,
        outcome: RecordPoll,
        retry_after: Option<Duration>,
        now: Now,
    ) {
        let end = match &outcome {
            // A record read again unchanged is read less and less often.
            RecordPoll::Found(found) => ReadEnd::Answered {
                changed: self
                    .repos
                    .get(repo_id)
                    .and_then(|r| r.record.as_ref())
                    .is_none_or(|held| held.record != *found),
            },
            // A deleted record is read again, but less and less often.
            RecordPoll::NotFound(_) | RecordPoll::Unreachable(_) | RecordPoll::Invalid(_) => {
                ReadEnd::Failed { retry_after }
            }
        };
        match self
            .reads
            .records
            .finished(read, end, now.at, self.me.as_bytes())
        {
            Some(current) if current == *repo_id => {
                self.with_repo(repo_id, now, |r, ctx| r.on_polled(ctx, outcome));
            }
            _ => debug!(repo = %repo_id, read, "a stale record read ended; ignored"),
        }
    }

    /// A listing ended: the schedule learns how, and a current result is
    /// judged ([`Core::take_listing`]).
    pub(super) fn handle_listed(
        &mut self,
        did: &str,
        read: ReadId,
        result: Result<(Vec<ListedRecord>, bool), String>,
        retry_after: Option<Duration>,
        now: Now,
    ) {
        let end = match result {
            // Listings are few; each is read every interval.
            Ok(_) => ReadEnd::Answered { changed: true },
            Err(_) => ReadEnd::Failed { retry_after },
        };
        match self
            .reads
            .listings
            .finished(read, end, now.at, self.me.as_bytes())
        {
            Some(current) if current == did => self.take_listing(did, result, now),
            _ => debug!(%did, read, "a stale listing ended; ignored"),
        }
    }
}
