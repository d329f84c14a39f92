//! Content jobs: which one a repository runs next, and what a finished one
//! changes.
//!
//! One job per repository at a time, at most `max_jobs` in all. A removed
//! repository discards its content; then queued publishes run in order;
//! then the wanted state is fetched, unless a failure put it off. Whether a
//! wanted state is still wanted is decided again when its job starts, so a
//! newer state that arrived meanwhile is never lost and an older one never
//! replaces it. Both publish and fetch finish a state the same way, inside
//! the job: materialize, then pin (blob store flushed); the core then
//! persists the held state durably and only then announces it. A job that
//! fails restores the previous state's pins and copy before it reports.

use iroh::EndpointId;
use tracing::{info, warn};

use super::{
    Audience, Core, Effect, JobId, JobResult, JobSpec, Now, ProviderFault, StateInfo, TimerKey,
    queue::{self, Lane},
    repo::{DEMOTION, Repo, Running, Want, WantSource},
    trust,
};
use crate::{
    api::{NodeEvent, Payload, PublishReport, Reply},
    core::JobError,
    repo_id::RepoId,
    state::{Held, RecordCopy},
    store::Write,
};

impl Core {
    /// What to fetch after a restart: an interrupted fetch of the record's
    /// state, or a check of the held state. The record is judged again by
    /// [`trust::judge_record`], as when it was polled: its raw `seq` is
    /// never taken (one beyond the one-hour bound would pin the state).
    pub(super) fn resumed_want(&self, repo: &Repo, now: Now) -> Option<Want> {
        let held = repo.held_position();
        if let Some(copy) = repo.record.as_ref().filter(|c| c.pending)
            && let Some(manifest) = copy.record.manifest_hash()
            && let trust::RecordVerdict::Adopt { seq } = trust::judge_record(
                &copy.record,
                &|m| copy.named.iter().any(|n| n == m),
                repo.held.as_ref().map(|h| h.manifest.as_str()),
                held,
                now.unix_ms,
            )
        {
            return Some(Want {
                manifest,
                seq,
                source: WantSource::Record,
                providers: Vec::new(),
                attempts: 0,
                not_before: None,
            });
        }
        repo.held.as_ref().map(|h| Want {
            manifest: h.manifest_hash(),
            seq: h.seq(),
            source: WantSource::Check,
            providers: Vec::new(),
            attempts: 0,
            not_before: None,
        })
    }

    /// Queue `repo_id` for a job slot if it has work it can start.
    pub(super) fn schedule(&mut self, repo_id: &RepoId) {
        if self.discarding.contains_key(repo_id) {
            return self.queue.push(repo_id, Lane::Interactive);
        }
        let Some(repo) = self.repos.get(repo_id) else {
            return;
        };
        if repo.job.is_some() {
            return;
        }
        let lane = if repo.has_waiters() {
            Lane::Interactive
        } else {
            Lane::Background
        };
        if repo.clear_leftovers
            || !repo.publishes.is_empty()
            || repo.want.is_some()
            || repo.check_pending
        {
            self.queue.push(repo_id, lane);
        }
    }

    /// Start jobs while slots are free.
    pub(super) fn pump(&mut self, now: Now) {
        while let Some((repo_id, lane)) = self.queue.pop() {
            if let Some((job, spec)) = self.next_job(&repo_id, now) {
                self.queue.started(&repo_id, lane);
                if let Some(repo) = self.repos.get_mut(&repo_id) {
                    repo.job_started = Some(now.at);
                }
                let check = matches!(
                    self.repos.get(&repo_id).and_then(|r| r.job.as_ref()),
                    Some(Running::Fetch { want, .. }) if want.source == WantSource::Check
                );
                if let JobSpec::Fetch {
                    manifest,
                    providers,
                    ..
                } = &spec
                    && !check
                {
                    self.notify(
                        &repo_id,
                        NodeEvent::FetchStarted {
                            manifest: manifest.to_hex(),
                            providers: providers.len(),
                        },
                    );
                }
                self.out.push(Effect::StartJob {
                    repo: repo_id,
                    job,
                    spec,
                });
            }
        }
    }

    /// The job `repo_id` runs next, if any, marked as running.
    fn next_job(&mut self, repo_id: &RepoId, now: Now) -> Option<(JobId, JobSpec)> {
        let id = self.next_job;
        let me = self.me;
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
        let repo = self.repos.get_mut(repo_id)?;
        if repo.job.is_some() {
            return None;
        }
        if repo.clear_leftovers {
            repo.clear_leftovers = false;
            self.next_job += 1;
            repo.job = Some(Running::Discard { id });
            return Some((id, JobSpec::Discard));
        }
        let previous = repo.held.as_ref().map(Held::manifest_hash);
        while let Some(publish) = repo.publishes.pop_front() {
            let held = repo.held.as_ref().map(|h| h.manifest.as_str());
            if let Some(expected) = &publish.expected_manifest
                && held != Some(expected.as_str())
                && !(expected.is_empty() && held.is_none())
            {
                let message = format!(
                    "{repo_id} has moved on (manifest {}, expected {expected}); fetch and retry",
                    held.unwrap_or("none")
                );
                self.out.push(Effect::Reply {
                    to: publish.reply,
                    reply: Reply::Error(message),
                });
                continue;
            }
            self.next_job += 1;
            let spec = JobSpec::Publish {
                source: publish.source.clone(),
                force: publish.force,
                previous,
            };
            repo.job = Some(Running::Publish { id, publish });
            return Some((id, spec));
        }
        self.take_pending_check(repo_id);
        let repo = self.repos.get_mut(repo_id)?;
        let want = repo.want.take()?;
        if !super::is_due(want.not_before, now) {
            repo.want = Some(want);
            return None;
        }
        if !self.still_wanted(repo_id, &want, now) {
            return self.next_job(repo_id, now);
        }
        let repo = self.repos.get_mut(repo_id)?;
        self.next_job += 1;
        let providers = repo.providers(&want, me, now.at);
        let limit = self.quota_for(repo_id);
        let repo = self.repos.get_mut(repo_id)?;
        let spec = JobSpec::Fetch {
            manifest: want.manifest,
            previous,
            providers,
            limit,
            repair: want.source == WantSource::Check,
        };
        repo.job = Some(Running::Fetch { id, want });
        Some((id, spec))
    }

    /// Whether `want` still describes a state to take, judged with what the
    /// node knows now (trust may have been revoked, a newer state held).
    fn still_wanted(&self, repo_id: &RepoId, want: &Want, now: Now) -> bool {
        let Some(repo) = self.repos.get(repo_id) else {
            return false;
        };
        match &want.source {
            WantSource::Check => repo
                .held_position()
                .is_some_and(|h| h.manifest == *want.manifest.as_bytes()),
            WantSource::Record => {
                repo.record
                    .as_ref()
                    .is_some_and(|c| c.pending && c.record.manifest_hash() == Some(want.manifest))
                    && repo.held_position().is_none_or(|h| h.seq < want.seq)
            }
            WantSource::Statement { statement, sender } => {
                let verdict = trust::judge_statement(
                    &statement.statement,
                    *sender,
                    &repo.trusted(self.me),
                    repo.held_position(),
                    None,
                    now.unix_ms,
                );
                verdict == trust::Verdict::Adopt
            }
        }
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
        if let Some(repo) = self.repos.get_mut(repo_id) {
            for (peer, fault) in faults {
                info!(repo = %repo_id, peer = %peer.fmt_short(), reason = fault.reason(), "provider demoted for this repository");
                repo.demote(*peer, now.at, now.at + DEMOTION);
            }
        }
        let running = match self.repos.get_mut(repo_id) {
            Some(repo) if repo.job.as_ref().is_some_and(|j| j.id() == job) => repo.job.take(),
            _ => {
                warn!(repo = %repo_id, job, "result of a job the core does not know");
                return;
            }
        };
        self.queue.finished(repo_id);
        match running.expect("matched above") {
            Running::Discard { .. } => {
                if let Err(error) = &result {
                    warn!(repo = %repo_id, %error, "dropping leftovers failed");
                }
            }
            Running::Publish { publish, .. } => match result {
                Ok(info) => self.published(repo_id, publish.reply, info, now),
                Err(error) => {
                    self.reply_err(publish.reply, error.message);
                    let repo = self.repos.get(repo_id).expect("job was running");
                    if publish.created && repo.held.is_none() {
                        // Leave no trace of a repository whose first publish failed.
                        self.forget(repo_id, now);
                    }
                }
            },
            Running::Fetch { want, .. } => match result {
                Ok(info) => self.fetched(repo_id, want, info, now),
                Err(error) => self.fetch_failed(repo_id, want, error, now),
            },
        }
        self.settle_sync(repo_id, now);
        self.schedule(repo_id);
        self.pump(now);
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

    fn published(&mut self, repo_id: &RepoId, reply: u64, info: StateInfo, now: Now) {
        let repo = self.repos.get(repo_id).expect("job was running");
        let unchanged = info.unchanged && repo.held.is_some();
        if !unchanged {
            let seq = trust::publish_seq(repo.current_position(), now.unix_ms);
            let statement = self.own_statement(repo_id, info.head.clone(), info.manifest, seq);
            let write_back = self.settings.write_back
                && self
                    .settings
                    .account_did
                    .as_ref()
                    .is_none_or(|did| did == repo_id.did());
            let repo = self.repos.get_mut(repo_id).expect("job was running");
            // A state wanted before this publish is older than it now.
            if repo.want.as_ref().is_some_and(|w| w.seq < seq) {
                repo.want = None;
            }
            self.hold(repo_id, &info, statement.clone(), write_back, now);
            let repo = self.repos.get_mut(repo_id).expect("job was running");
            let neighbors = repo
                .topic
                .as_ref()
                .map(|t| t.neighbors.clone())
                .unwrap_or_default();
            let direct: Vec<_> = repo
                .dial_targets(self.me)
                .into_iter()
                .filter(|p| !neighbors.contains(p))
                .collect();
            self.ensure_topic(repo_id, now);
            self.out.push(Effect::Announce {
                repo: repo_id.clone(),
                statement,
                audience: Audience::Everyone { direct },
            });
            if write_back {
                self.with_repo(repo_id, now, |r, ctx| r.schedule_write_back(ctx.now.at));
            }
            info!(repo = %repo_id, manifest = %info.manifest.to_hex(), seq, "published");
            let ms = self.job_ms(repo_id, now);
            self.notify(
                repo_id,
                NodeEvent::Published {
                    manifest: info.manifest.to_hex(),
                    seq,
                    bytes: info.bytes_moved,
                    ms,
                },
            );
            self.with_repo(repo_id, now, |r, ctx| r.check_replicas(ctx.me));
        }
        let repo = self.repos.get_mut(repo_id).expect("job was running");
        if !repo.sync.waiters.is_empty() {
            repo.sync.message = Some("published here".into());
        }
        let report = PublishReport {
            repo_id: repo_id.to_string(),
            head: info.head.clone(),
            manifest: info.manifest.to_hex(),
            pack_count: info.pack_count,
            bytes_added: info.bytes_moved,
            consolidated: info.consolidated,
            unchanged: info.unchanged,
        };
        self.reply(reply, Reply::Ok(Payload::Published(report)));
    }

    fn fetched(&mut self, repo_id: &RepoId, want: Want, info: StateInfo, now: Now) {
        if let Some(passes) = info.recheck_after_gc_pass {
            self.recheck_after_gc(repo_id, passes);
        }
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        repo.sync.bytes_fetched = repo.sync.bytes_fetched.saturating_add(info.bytes_moved);
        let forwarded_by = match &want.source {
            WantSource::Statement { sender, .. } => Some(*sender),
            _ => None,
        };
        let statement = match want.source {
            WantSource::Check => {
                // The held state was found intact, or repaired.
                self.clear_error_of(repo_id, "");
                self.checked(repo_id, Ok(&info));
                return;
            }
            WantSource::Statement { statement, .. } => *statement,
            WantSource::Record => {
                // Vouch for the record's state ourselves: peers that trust
                // this node, or follow the same record, take it from us.
                self.own_statement(repo_id, info.head.clone(), info.manifest, want.seq)
            }
        };
        self.hold(repo_id, &info, statement.clone(), false, now);
        info!(repo = %repo_id, manifest = %info.manifest.to_hex(), bytes = info.bytes_moved, "synced");
        let ms = self.job_ms(repo_id, now);
        self.notify(
            repo_id,
            NodeEvent::FetchFinished {
                manifest: info.manifest.to_hex(),
                bytes: info.bytes_moved,
                ms,
            },
        );
        self.with_repo(repo_id, now, |r, ctx| r.check_replicas(ctx.me));
        self.ensure_topic(repo_id, now);
        // Tell the neighbours this node provides the state now; the topic
        // heard about it from its publisher already. Peers last seen behind
        // are told directly too: gossip may still count a restarted peer as
        // a neighbour while nothing reaches it, and a peer that trusts only
        // this node hears of the state from nobody else.
        let direct = self.repos.get(repo_id).map_or_else(Vec::new, |r| {
            r.peers_behind(self.me, statement.statement.seq, forwarded_by)
        });
        self.out.push(Effect::Announce {
            repo: repo_id.clone(),
            statement,
            audience: Audience::Neighbors { direct },
        });
    }

    /// Record that `repo_id` holds the state `info` under `statement`, durably.
    fn hold(
        &mut self,
        repo_id: &RepoId,
        info: &StateInfo,
        statement: crate::announce::SignedStatement,
        write_back_pending: bool,
        now: Now,
    ) {
        let repo = self.repos.get_mut(repo_id).expect("tracked");
        let held = Held {
            manifest: info.manifest.to_hex(),
            head: info.head.clone(),
            statement,
            pack_count: info.pack_count,
            bytes: info.bytes,
            since: now.unix_secs(),
            write_back_pending,
        };
        repo.held = Some(held.clone());
        self.out.push(Effect::Persist(Write::Held(
            repo_id.clone(),
            Some(Box::new(held)),
        )));
        let record_wanted = repo
            .want
            .as_ref()
            .is_some_and(|w| w.source == WantSource::Record);
        let taken = |c: &RecordCopy| c.record.manifest_hash() == Some(info.manifest);
        if let Some(copy) = repo
            .record
            .as_mut()
            .filter(|c| c.pending && (taken(c) || !record_wanted))
        {
            // Taken, or overtaken by a newer state: either way not pending.
            copy.pending = false;
            let copy = copy.clone();
            self.out
                .push(Effect::Persist(Write::Record(repo_id.clone(), Some(copy))));
        }
        self.set_error(repo_id, None);
    }

    /// Milliseconds since the repository's job started.
    fn job_ms(&self, repo_id: &RepoId, now: Now) -> u64 {
        self.repos
            .get(repo_id)
            .and_then(|r| r.job_started)
            .map_or(0, |t| {
                u64::try_from(now.at.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
            })
    }

    /// Most bytes `repo_id`'s next state may have: its own limit (or
    /// `max_repo_bytes`) and what `max_total_bytes` leaves after the others.
    fn quota_for(&self, repo_id: &RepoId) -> Option<u64> {
        let own = self
            .repos
            .get(repo_id)
            .and_then(|r| r.config.max_bytes)
            .or(self.settings.max_repo_bytes);
        let total = self.settings.max_total_bytes.map(|max| {
            let others: u64 = self
                .repos
                .iter()
                .filter(|(id, _)| *id != repo_id)
                .filter_map(|(_, r)| r.held.as_ref().map(|h| h.bytes))
                .fold(0u64, u64::saturating_add);
            max.saturating_sub(others)
        });
        match (own, total) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fetch_failed(&mut self, repo_id: &RepoId, mut want: Want, error: JobError, now: Now) {
        if error.quota {
            // Not retried: the state does not fit. What is held stays.
            warn!(repo = %repo_id, manifest = %want.manifest.to_hex(), error = %error, "state refused by quota");
            self.set_error(repo_id, Some(error.message.clone()));
            self.notify(
                repo_id,
                NodeEvent::QuotaRefused {
                    manifest: want.manifest.to_hex(),
                    error: error.message.clone(),
                },
            );
            if let Some(repo) = self.repos.get_mut(repo_id) {
                repo.quota_refused = Some(want.manifest);
            }
            if self
                .repos
                .get(repo_id)
                .is_some_and(|r| !r.sync.waiters.is_empty())
            {
                self.answer_sync(repo_id, Err(error.message), now);
            }
            return;
        }
        let error = error.message;
        if want.source == WantSource::Check {
            self.checked(repo_id, Err(&error));
        } else {
            self.notify(
                repo_id,
                NodeEvent::FetchFailed {
                    manifest: want.manifest.to_hex(),
                    error: error.clone(),
                },
            );
        }
        warn!(repo = %repo_id, manifest = %want.manifest.to_hex(), %error, "fetch failed");
        self.set_error(repo_id, Some(error));
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        // A newer want that arrived meanwhile replaces this one; otherwise
        // try again later.
        if repo.want.is_some() {
            return;
        }
        want.attempts = want.attempts.saturating_add(1);
        let wait = queue::backoff(
            self.settings.retry_base,
            self.settings.retry_max,
            want.attempts,
        );
        let at = super::later(now.at, wait);
        want.not_before = Some(at);
        repo.want = Some(want);
        self.set_timer(TimerKey::Retry(repo_id.clone()), at);
    }
}
