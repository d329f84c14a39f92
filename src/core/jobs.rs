//! Content jobs across repositories: the job queue (at most `max_jobs` at
//! once, an operator's or a `git` client's first), job ids, the total quota,
//! the content of removed repositories (deleted before a new entry for the
//! same id runs anything), and routing a finished job to its repository.
//! What a repository runs next and what a finished job changes are
//! [`super::repo::Repo::start_next_job`] and
//! [`super::repo::Repo::on_job_done`].

use iroh::EndpointId;
use tracing::warn;

use super::{
    io::{Effect, JobId, JobResult, JobSpec, Now, ProviderFault},
    machine::Core,
    queue::Lane,
};
use crate::{
    api::{Payload, Reply},
    repo_id::RepoId,
};

impl Core {
    /// Queue `repo_id` for a job slot if it has work it can start.
    pub(super) fn schedule(&mut self, repo_id: &RepoId) {
        if self.discarding.contains_key(repo_id) {
            return self.queue.push(repo_id, Lane::Interactive);
        }
        if let Some(lane) = self.repos.get(repo_id).and_then(|r| r.work_lane()) {
            self.queue.push(repo_id, lane);
        }
    }

    /// Start jobs while slots are free.
    pub(super) fn pump(&mut self, now: Now) {
        while let Some((repo_id, lane)) = self.queue.pop() {
            if let Some((job, spec)) = self.next_job(&repo_id, now) {
                self.queue.started(&repo_id, lane);
                self.out.push(Effect::StartJob {
                    repo: repo_id,
                    job,
                    spec,
                    interactive: lane == Lane::Interactive,
                });
            }
        }
    }

    /// The job `repo_id` runs next, if any, marked as running.
    fn next_job(&mut self, repo_id: &RepoId, now: Now) -> Option<(JobId, JobSpec)> {
        let id = self.next_job;
        if let Some(d) = self.discarding.get_mut(repo_id) {
            // The content of a removed repository goes first; a new entry
            // for the same id waits.
            if d.finishing.is_some() || d.discard.is_some() {
                return None;
            }
            self.next_job += 1;
            d.discard = Some(id);
            return Some((id, JobSpec::Discard));
        }
        let total_left = self.total_left(repo_id);
        let spec =
            self.with_repo(repo_id, now, |r, ctx| r.start_next_job(ctx, id, total_left))??;
        self.next_job += 1;
        Some((id, spec))
    }

    /// What `max_total_bytes` leaves `repo_id` after the other
    /// repositories' states, if it is set.
    fn total_left(&self, repo_id: &RepoId) -> Option<u64> {
        self.settings.max_total_bytes.map(|max| {
            let others: u64 = self
                .repos
                .iter()
                .filter(|(id, _)| *id != repo_id)
                .filter_map(|(_, r)| r.held.as_ref().map(|h| h.bytes))
                .fold(0u64, u64::saturating_add);
            max.saturating_sub(others)
        })
    }

    pub(super) fn handle_job_done(
        &mut self,
        repo_id: &RepoId,
        job: JobId,
        result: JobResult,
        faults: &[(EndpointId, ProviderFault)],
        now: Now,
    ) {
        if self.discarded(repo_id, job, &result, now) {
            return;
        }
        self.with_repo(repo_id, now, |r, ctx| r.demote_faults(ctx, faults));
        if !self.repos.get(repo_id).is_some_and(|r| r.runs(job)) {
            warn!(repo = %repo_id, job, "result of a job the core does not know");
            return;
        }
        self.queue.finished(repo_id);
        self.with_repo(repo_id, now, |r, ctx| r.on_job_done(ctx, result));
    }

    /// Handle the end of a job of a removed repository: the job it was
    /// running (then its content is deleted), or the deletion itself. Returns
    /// whether `job` was one of those.
    fn discarded(&mut self, repo_id: &RepoId, job: JobId, result: &JobResult, now: Now) -> bool {
        let Some(d) = self.discarding.get_mut(repo_id) else {
            return false;
        };
        if d.finishing == Some(job) {
            d.finishing = None;
        } else if d.discard == Some(job) {
            let reply = self.discarding.remove(repo_id).and_then(|d| d.reply);
            if let Err(error) = result {
                warn!(repo = %repo_id, %error, "deleting a removed repository's content failed");
            }
            if let Some(to) = reply {
                let reply = match result {
                    Ok(_) => Reply::Ok(Payload::Done {
                        message: format!("removed {repo_id}"),
                    }),
                    Err(error) => Reply::Error(format!(
                        "removed {repo_id}, but its content could not all be deleted: {error}"
                    )),
                };
                self.reply(to, reply);
            }
        } else {
            return false;
        }
        self.queue.finished(repo_id);
        self.schedule(repo_id);
        self.pump(now);
        true
    }
}
