//! The owner's record across repositories: routing polls and write-backs
//! to the repository they concern (its rules are in
//! [`super::repo::Repo::on_polled`] and the write-back beside it), and the
//! node's account, resolved once, resuming the write-backs that waited.

use super::{
    io::{Now, RecordPoll},
    machine::Core,
};
use crate::repo_id::RepoId;

impl Core {
    /// Hand a record's outcome to its repository (a record a listing
    /// carried; polls come through [`Core::handle_polled`]).
    pub(super) fn take_polled(&mut self, repo_id: &RepoId, outcome: RecordPoll, now: Now) {
        self.with_repo(repo_id, now, |r, ctx| r.on_polled(ctx, outcome));
    }

    /// `repo_id`'s record is gone (see [`super::repo::Repo::record_gone`]).
    pub(super) fn record_gone(&mut self, repo_id: &RepoId, now: Now) {
        self.with_repo(repo_id, now, |r, ctx| r.record_gone(ctx));
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
}
