//! Checking held states: every blob of the state a repository holds is
//! stored complete and pinned, and what is missing is put back.
//!
//! A check is a fetch of the held manifest that first rebuilds missing
//! blobs from the materialized copy (`JobSpec::Fetch` with `repair`), then
//! fetches what is still missing from the held state's providers. Checks
//! run at start-up, on the verify schedule (`verify_interval`), after a
//! fetch that reused blobs nothing pinned once the collector pass that
//! might have deleted them is over, and on `knotd admin verify`, whose
//! caller waits for every repository it named. A repository runs a check
//! only when it has nothing else to do, so a check never displaces a
//! newer state. Nothing here is persisted: a restart checks everything.

use std::collections::{BTreeMap, BTreeSet};

use tracing::warn;

use super::{
    io::{Now, ReplyId, StateInfo, TimerKey},
    machine::Core,
    queue::Lane,
    tables::VerifyWait,
};
use crate::{
    api::{NodeEvent, Payload, Reply, VerifyReport, VerifyRow},
    repo_id::RepoId,
};

impl Core {
    /// `verify`: check `repo_id`'s held state, or every repository's; the
    /// caller gets one row per repository once all are checked.
    pub(super) fn verify(&mut self, reply: ReplyId, repo_id: Option<RepoId>, now: Now) {
        let targets: Vec<RepoId> = match repo_id {
            Some(id) if !self.repos.contains_key(&id) => {
                return self.reply_err(reply, super::commands::not_tracked(&id));
            }
            Some(id) => vec![id],
            None => self.repos.keys().cloned().collect(),
        };
        let mut wait = VerifyWait {
            reply,
            pending: BTreeSet::new(),
            behind: BTreeSet::new(),
            rows: Vec::new(),
        };
        for id in targets {
            let checking = self.repos.get(&id).is_some_and(|r| r.checking());
            if self.request_check(&id, Lane::Interactive) {
                if checking {
                    wait.behind.insert(id.clone());
                }
                wait.pending.insert(id);
            } else {
                wait.rows.push(VerifyRow {
                    repo_id: id.to_string(),
                    manifest: None,
                    rebuilt: 0,
                    fetched: 0,
                    error: None,
                });
            }
        }
        if wait.pending.is_empty() {
            return self.answer_verify(wait);
        }
        let id = self.next_verify;
        self.next_verify += 1;
        self.verifies.insert(id, wait);
        self.pump(now);
    }

    /// Ask for a check of `repo_id`'s held state once it has nothing else to
    /// do. Returns whether there is a state to check.
    pub(super) fn request_check(&mut self, repo_id: &RepoId, lane: Lane) -> bool {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return false;
        };
        if !repo.request_check() {
            return false;
        }
        if repo.job.is_none() {
            self.queue.push(repo_id, lane);
        }
        true
    }

    /// A check of `repo_id`'s held state ended: with the state whole again
    /// (`Ok`, saying what was put back) or not (`Err`).
    pub(super) fn checked(&mut self, repo_id: &RepoId, result: Result<&StateInfo, &str>) {
        let manifest = self
            .repos
            .get(repo_id)
            .and_then(|r| r.held.as_ref())
            .map(|h| h.manifest.to_hex());
        let row = match result {
            Ok(info) => {
                if info.blobs_rebuilt + info.blobs_fetched > 0 {
                    warn!(
                        repo = %repo_id,
                        manifest = %info.manifest.to_hex(),
                        rebuilt = info.blobs_rebuilt,
                        fetched = info.blobs_fetched,
                        "blobs of the held state were missing and were put back"
                    );
                    self.notify(
                        repo_id,
                        NodeEvent::Repaired {
                            manifest: info.manifest.to_hex(),
                            rebuilt: info.blobs_rebuilt,
                            fetched: info.blobs_fetched,
                        },
                    );
                }
                VerifyRow {
                    repo_id: repo_id.to_string(),
                    manifest,
                    rebuilt: info.blobs_rebuilt,
                    fetched: info.blobs_fetched,
                    error: None,
                }
            }
            Err(error) => VerifyRow {
                repo_id: repo_id.to_string(),
                manifest,
                rebuilt: 0,
                fetched: 0,
                error: Some(error.to_string()),
            },
        };
        self.settle_verifies(repo_id, true, || row.clone());
    }

    /// `repo_id` was removed: its `verify` callers stop waiting for it.
    pub(super) fn verify_forgotten(&mut self, repo_id: &RepoId) {
        self.settle_verifies(repo_id, false, || VerifyRow {
            repo_id: repo_id.to_string(),
            manifest: None,
            rebuilt: 0,
            fetched: 0,
            error: Some(format!("{repo_id} was removed")),
        });
    }

    /// Answer the callers waiting for `repo_id` with `row`; with
    /// `by_check`, not those that asked while the check that ended ran.
    fn settle_verifies(&mut self, repo_id: &RepoId, by_check: bool, row: impl Fn() -> VerifyRow) {
        let mut done = Vec::new();
        for (id, wait) in &mut self.verifies {
            if wait.behind.remove(repo_id) && by_check {
                continue;
            }
            if wait.pending.remove(repo_id) {
                wait.rows.push(row());
                if wait.pending.is_empty() {
                    done.push(*id);
                }
            }
        }
        for id in done {
            if let Some(wait) = self.verifies.remove(&id) {
                self.answer_verify(wait);
            }
        }
    }

    fn answer_verify(&mut self, mut wait: VerifyWait) {
        wait.rows.sort_by(|a, b| a.repo_id.cmp(&b.repo_id));
        self.reply(
            wait.reply,
            Reply::Ok(Payload::Verified(VerifyReport { repos: wait.rows })),
        );
    }

    /// A fetch reused blobs nothing pinned, when the collector had started
    /// `passes` passes: check the state again once the pass that may have
    /// missed its pins is over.
    pub(super) fn recheck_after_gc(&mut self, repo_id: &RepoId, passes: u64) {
        let at = self.recheck_after_gc.entry(repo_id.clone()).or_default();
        *at = (*at).max(passes);
    }

    /// The blob store's collector started its `passes`-th pass, so every
    /// earlier pass is over.
    pub(super) fn handle_gc_pass(&mut self, passes: u64, now: Now) {
        let (due, later): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.recheck_after_gc)
                .into_iter()
                .partition(|(_, at)| *at < passes);
        self.recheck_after_gc = later;
        for repo_id in due.into_keys() {
            self.request_check(&repo_id, Lane::Background);
        }
        self.pump(now);
    }

    /// The verify schedule is due: check every held state, in the background.
    pub(super) fn verify_all(&mut self, now: Now) {
        let ids: Vec<RepoId> = self.repos.keys().cloned().collect();
        for repo_id in ids {
            self.request_check(&repo_id, Lane::Background);
        }
        if let Some(every) = self.settings.verify_interval {
            self.set_timer(TimerKey::VerifyAll, super::later(now.at, every));
        }
        self.pump(now);
    }
}
