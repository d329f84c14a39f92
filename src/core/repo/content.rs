//! Content jobs of one repository: which one it runs next, and what a
//! finished one changes.
//!
//! One job at a time: leftovers of a first fetch that never finished are
//! dropped first, then queued publishes run in order, then the wanted state
//! is fetched, unless a failure put it off, and last a pending check of the
//! held state. Whether a wanted state is still wanted is decided again when
//! its job starts, so a newer state that arrived meanwhile is never lost and
//! an older one never replaces it. Both publish and fetch finish a state the
//! same way, inside the job: materialize, then pin (blob store flushed); the
//! state held is then persisted durably and only then served to git clients
//! and announced. A job that fails restores the previous state's pins and
//! copy before it reports. While a fetch runs, its progress reaches
//! watchers only as long as it is the repository's running job.

use iroh::EndpointId;
use tracing::{info, warn};

use super::{
    outbox::{Ctx, Out},
    state::{DEMOTION, Repo, Running, Want, WantSource},
};
use crate::{
    announce::SignedStatement,
    api::{NodeEvent, Payload, PublishReport, Reply},
    core::{
        io::{
            Audience, Effect, JobError, JobId, JobProgress, JobResult, JobSpec, Now, ProviderFault,
            StateInfo, TimerKey, Write, is_due, later,
        },
        queue::{self, Lane},
        trust,
    },
    state::{Held, RecordCopy},
};

impl Repo {
    /// What to fetch after a restart: an interrupted fetch of the record's
    /// state, or a check of the held state. The record is judged again by
    /// [`trust::judge_record`], as when it was polled: its raw `seq` is
    /// never taken (one beyond the one-hour bound would pin the state).
    pub fn resumed_want(&self, now: Now) -> Option<Want> {
        let held = self.held_position();
        if let Some(copy) = self.record.as_ref().filter(|c| c.pending)
            && let Some(manifest) = copy.record.manifest_hash()
            && let trust::RecordVerdict::Adopt { seq } = trust::judge_record(
                &copy.record,
                &|m| copy.named.iter().any(|n| n == m),
                self.held.as_ref().map(|h| h.manifest),
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
        self.held.as_ref().map(|h| Want {
            manifest: h.manifest_hash(),
            seq: h.seq(),
            source: WantSource::Check,
            providers: Vec::new(),
            attempts: 0,
            not_before: None,
        })
    }

    /// The lane to queue the repository in, when it has work it can start.
    pub fn work_lane(&self) -> Option<Lane> {
        if self.job.is_some() {
            return None;
        }
        let work = self.clear_leftovers
            || !self.publishes.is_empty()
            || self.want.is_some()
            || self.check_pending;
        work.then(|| {
            if self.has_waiters() {
                Lane::Interactive
            } else {
                Lane::Background
            }
        })
    }

    /// Ask for a check of the held state once nothing else is to do.
    /// Returns whether there is a state to check.
    pub fn request_check(&mut self) -> bool {
        if self.held.is_none() {
            return false;
        }
        self.check_pending = true;
        true
    }

    /// Whether the running job is a check of the held state.
    pub fn checking(&self) -> bool {
        matches!(&self.job, Some(Running::Fetch { want, .. }) if want.source == WantSource::Check)
    }

    /// The want of a pending check, when the repository has no other.
    fn take_pending_check(&mut self) {
        if !self.check_pending || self.want.is_some() {
            return;
        }
        self.check_pending = false;
        if let Some(held) = &self.held {
            self.want = Some(Want {
                manifest: held.manifest_hash(),
                seq: held.seq(),
                source: WantSource::Check,
                providers: Vec::new(),
                attempts: 0,
                not_before: None,
            });
        }
    }

    /// Start the job the repository runs next, if any, under `id`: marked
    /// as running, its spec returned. `total_left` is what
    /// `max_total_bytes` leaves after the other repositories' states.
    pub fn start_next_job(
        &mut self,
        ctx: &Ctx,
        id: JobId,
        total_left: Option<u64>,
    ) -> Option<JobSpec> {
        let spec = self.next_job(ctx, id, total_left)?;
        self.job_started = Some(ctx.now.at);
        let check = self.checking();
        if let JobSpec::Fetch {
            manifest,
            providers,
            ..
        } = &spec
            && !check
        {
            self.notify(NodeEvent::FetchStarted {
                manifest: manifest.to_hex(),
                providers: providers.len(),
            });
        }
        Some(spec)
    }

    fn next_job(&mut self, ctx: &Ctx, id: JobId, total_left: Option<u64>) -> Option<JobSpec> {
        if self.job.is_some() {
            return None;
        }
        if self.clear_leftovers {
            self.clear_leftovers = false;
            self.job = Some(Running::Discard { id });
            return Some(JobSpec::Discard);
        }
        let repo_id = self.config.repo_id.clone();
        let previous = self.held.as_ref().map(Held::manifest_hash);
        while let Some(publish) = self.publishes.pop_front() {
            let held = self.held.as_ref().map(|h| h.manifest.to_hex());
            if let Some(expected) = &publish.expected_manifest
                && held.as_ref() != Some(expected)
                && !(expected.is_empty() && held.is_none())
            {
                let message = format!(
                    "{repo_id} has moved on (manifest {}, expected {expected}); fetch and retry",
                    held.as_deref().unwrap_or("none")
                );
                self.reply_err(publish.reply, message);
                continue;
            }
            let spec = JobSpec::Publish {
                source: publish.source.clone(),
                force: publish.force,
                previous,
            };
            self.job = Some(Running::Publish { id, publish });
            return Some(spec);
        }
        let want = loop {
            self.take_pending_check();
            let want = self.want.take()?;
            if !is_due(want.not_before, ctx.now) {
                self.want = Some(want);
                return None;
            }
            if self.still_wanted(ctx, &want) {
                break want;
            }
        };
        let providers = self.providers(&want, ctx.me, ctx.now.at);
        let own = self.config.max_bytes.or(ctx.settings.max_repo_bytes);
        let limit = match (own, total_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let spec = JobSpec::Fetch {
            manifest: want.manifest,
            previous,
            providers,
            limit,
            repair: want.source == WantSource::Check,
        };
        self.job = Some(Running::Fetch { id, want });
        Some(spec)
    }

    /// Whether `want` still describes a state to take, judged with what the
    /// node knows now (trust may have been revoked, a newer state held).
    fn still_wanted(&self, ctx: &Ctx, want: &Want) -> bool {
        match &want.source {
            WantSource::Check => self
                .held_position()
                .is_some_and(|h| h.manifest == *want.manifest.as_bytes()),
            WantSource::Record => {
                self.record
                    .as_ref()
                    .is_some_and(|c| c.pending && c.record.manifest_hash() == Some(want.manifest))
                    && self.held_position().is_none_or(|h| h.seq < want.seq)
            }
            WantSource::Statement { statement, sender } => {
                let verdict = trust::judge_statement(
                    &statement.statement,
                    *sender,
                    &self.trusted(ctx.me),
                    self.held_position(),
                    None,
                    ctx.now.unix_ms,
                );
                verdict == trust::Verdict::Adopt
            }
        }
    }

    /// Demote the providers a job reports as failing it.
    pub fn demote_faults(&mut self, ctx: &Ctx, faults: &[(EndpointId, ProviderFault)]) {
        for (peer, fault) in faults {
            info!(repo = %self.config.repo_id, peer = %peer.fmt_short(), reason = fault.reason(), "provider demoted for this repository");
            self.demote(*peer, ctx.now.at, later(ctx.now.at, DEMOTION));
        }
    }

    /// Whether `job` is the job running.
    pub fn runs(&self, job: JobId) -> bool {
        self.job.as_ref().is_some_and(|j| j.id() == job)
    }

    /// The running job reported `progress`: watchers hear how far the
    /// fetch of its state has got. Progress of any other job (one that
    /// ended, one of a removed repository, one never started) is dropped.
    pub fn on_job_progress(&mut self, job: JobId, progress: JobProgress) {
        let Some(Running::Fetch { id, want }) = &self.job else {
            return;
        };
        if *id != job {
            return;
        }
        let manifest = want.manifest.to_hex();
        self.notify(NodeEvent::FetchProgress {
            manifest,
            bytes: progress.bytes,
            total: Some(progress.total),
        });
    }

    /// The running job ended with `result`.
    pub fn on_job_done(&mut self, ctx: &mut Ctx, result: JobResult) {
        let Some(running) = self.job.take() else {
            return;
        };
        match running {
            Running::Discard { .. } => {
                if let Err(error) = &result {
                    warn!(repo = %self.config.repo_id, %error, "dropping leftovers failed");
                }
            }
            Running::Publish { publish, .. } => match result {
                Ok(info) => self.published(ctx, publish.reply, info),
                Err(error) => {
                    self.reply_err(publish.reply, error.to_string());
                    if publish.created && self.held.is_none() {
                        // Leave no trace of a repository whose first publish failed.
                        self.request(Out::Forget);
                        self.request(Out::Schedule);
                        self.request(Out::Pump);
                        return;
                    }
                }
            },
            Running::Fetch { want, .. } => match result {
                Ok(info) => self.fetched(ctx, want, info),
                Err(error) => self.fetch_failed(ctx, want, error),
            },
        }
        self.settle_sync(ctx);
        self.request(Out::Schedule);
        self.request(Out::Pump);
    }

    fn published(&mut self, ctx: &Ctx, reply: u64, info: StateInfo) {
        let repo_id = self.config.repo_id.clone();
        let now = ctx.now;
        let unchanged = info.unchanged && self.held.is_some();
        if !unchanged {
            let seq = trust::publish_seq(self.current_position(), now.unix_ms);
            let statement = ctx.own_statement(&repo_id, info.head.clone(), info.manifest, seq);
            let write_back = ctx.settings.write_back
                && ctx
                    .settings
                    .account_did
                    .as_ref()
                    .is_none_or(|did| did == repo_id.did());
            // A state wanted before this publish is older than it now.
            if self.want.as_ref().is_some_and(|w| w.seq < seq) {
                self.want = None;
            }
            self.hold(ctx, &info, statement.clone(), write_back);
            let neighbors = self
                .topic
                .as_ref()
                .map(|t| t.neighbors.clone())
                .unwrap_or_default();
            // The peers known for the repository, and those that last said
            // they hold an older state of it (they may know this node only
            // from a direct push, their topic left while quiet).
            let mut direct: Vec<_> = self
                .dial_targets(ctx.me)
                .into_iter()
                .filter(|p| !neighbors.contains(p))
                .collect();
            for peer in self.peers_behind(ctx.me, seq, None) {
                if !neighbors.contains(&peer) && !direct.contains(&peer) {
                    direct.push(peer);
                }
            }
            self.wake(ctx);
            self.emit(Effect::Announce {
                repo: repo_id.clone(),
                statement,
                audience: Audience::Everyone { direct },
            });
            if write_back {
                self.schedule_write_back(now.at);
            }
            info!(repo = %repo_id, manifest = %info.manifest.to_hex(), seq, "published");
            let ms = self.job_ms(ctx);
            self.notify(NodeEvent::Published {
                manifest: info.manifest.to_hex(),
                seq,
                bytes: info.bytes_moved,
                ms,
            });
            self.check_replicas(ctx.me);
        }
        if !self.sync.waiters.is_empty() {
            self.sync.message = Some("published here".into());
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

    fn fetched(&mut self, ctx: &Ctx, want: Want, info: StateInfo) {
        if let Some(passes) = info.recheck_after_gc_pass {
            self.request(Out::RecheckAfterGc(passes));
        }
        let repo_id = self.config.repo_id.clone();
        self.sync.bytes_fetched = self.sync.bytes_fetched.saturating_add(info.bytes_moved);
        let forwarded_by = match &want.source {
            WantSource::Statement { sender, .. } => Some(*sender),
            _ => None,
        };
        if let WantSource::Statement {
            statement, sender, ..
        } = &want.source
            && !trust::vouched(&statement.statement, *sender, &self.trusted(ctx.me))
        {
            // Neither its publisher nor the peer that vouched for it is
            // trusted any more (the owner's record was deleted or no longer
            // names them while the fetch ran): the state is not taken, and
            // what is served stays the state held.
            warn!(repo = %repo_id, manifest = %info.manifest.to_hex(), sender = %sender.fmt_short(), "fetched a state whose publisher and sender are no longer trusted; not taking it");
            self.publish_served();
            self.request_check();
            return;
        }
        let statement = match want.source {
            WantSource::Check => {
                // The held state was found intact, or repaired.
                self.clear_error_of("");
                self.request(Out::Checked(Ok(Box::new(info))));
                return;
            }
            WantSource::Statement { statement, .. } => *statement,
            WantSource::Record => {
                // Vouch for the record's state ourselves: peers that trust
                // this node, or follow the same record, take it from us.
                ctx.own_statement(&repo_id, info.head.clone(), info.manifest, want.seq)
            }
        };
        self.hold(ctx, &info, statement.clone(), false);
        info!(repo = %repo_id, manifest = %info.manifest.to_hex(), bytes = info.bytes_moved, "synced");
        let ms = self.job_ms(ctx);
        self.notify(NodeEvent::FetchFinished {
            manifest: info.manifest.to_hex(),
            bytes: info.bytes_moved,
            ms,
        });
        self.check_replicas(ctx.me);
        self.wake(ctx);
        // Tell the neighbours this node provides the state now; the topic
        // heard about it from its publisher already. Peers last seen behind
        // are told directly too: gossip may still count a restarted peer as
        // a neighbour while nothing reaches it, and a peer that trusts only
        // this node hears of the state from nobody else.
        let mut direct = self.peers_behind(ctx.me, statement.statement.seq, forwarded_by);
        // And the peer it came from, unless the announcement reaches it
        // as a neighbour: it then counts this node among those holding the
        // state and tells it of the next one directly, which is how a
        // state reaches a node whose topic was left while quiet (gossip
        // may never have shown it this node).
        let neighbor = |peer: &EndpointId| {
            self.topic
                .as_ref()
                .is_some_and(|t| t.neighbors.contains(peer))
        };
        if let Some(sender) = forwarded_by
            && sender != ctx.me
            && !neighbor(&sender)
        {
            direct.push(sender);
        }
        self.emit(Effect::Announce {
            repo: repo_id,
            statement,
            audience: Audience::Neighbors { direct },
        });
    }

    /// Hold the state `info` under `statement`, durably.
    fn hold(
        &mut self,
        ctx: &Ctx,
        info: &StateInfo,
        statement: SignedStatement,
        write_back_pending: bool,
    ) {
        let repo_id = self.config.repo_id.clone();
        let held = Held {
            manifest: info.manifest,
            head: info.head.clone(),
            statement,
            pack_count: info.pack_count,
            bytes: info.bytes,
            since: ctx.now.unix_secs(),
            write_back_pending,
        };
        self.held = Some(held.clone());
        self.emit(Effect::Persist(Write::Held(
            repo_id.clone(),
            Some(Box::new(held)),
        )));
        self.publish_served();
        let record_wanted = self
            .want
            .as_ref()
            .is_some_and(|w| w.source == WantSource::Record);
        let taken = |c: &RecordCopy| c.record.manifest_hash() == Some(info.manifest);
        if let Some(copy) = self
            .record
            .as_mut()
            .filter(|c| c.pending && (taken(c) || !record_wanted))
        {
            // Taken, or overtaken by a newer state: either way not pending.
            copy.pending = false;
            let copy = copy.clone();
            self.emit(Effect::Persist(Write::Record(repo_id, Some(copy))));
        }
        self.set_error(None);
    }

    /// Milliseconds since the job started.
    fn job_ms(&self, ctx: &Ctx) -> u64 {
        self.job_started.map_or(0, |t| {
            u64::try_from(ctx.now.at.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        })
    }

    fn fetch_failed(&mut self, ctx: &Ctx, mut want: Want, error: JobError) {
        let repo_id = self.config.repo_id.clone();
        if error.refuses_state() {
            // Not retried: the state does not fit. What is held stays.
            warn!(repo = %repo_id, manifest = %want.manifest.to_hex(), error = %error, "state refused by quota");
            self.set_error(Some(error.to_string()));
            self.notify(NodeEvent::QuotaRefused {
                manifest: want.manifest.to_hex(),
                error: error.to_string(),
            });
            self.quota_refused = Some(want.manifest);
            if !self.sync.waiters.is_empty() {
                self.answer_sync(Err(error.to_string()));
            }
            return;
        }
        let error = error.to_string();
        if want.source == WantSource::Check {
            self.request(Out::Checked(Err(error.clone())));
        } else {
            self.notify(NodeEvent::FetchFailed {
                manifest: want.manifest.to_hex(),
                error: error.clone(),
            });
        }
        warn!(repo = %repo_id, manifest = %want.manifest.to_hex(), %error, "fetch failed");
        self.set_error(Some(error));
        // A newer want that arrived meanwhile replaces this one; otherwise
        // try again later.
        if self.want.is_some() {
            return;
        }
        want.attempts = want.attempts.saturating_add(1);
        let wait = queue::backoff(
            ctx.settings.retry_base,
            ctx.settings.retry_max,
            want.attempts,
        );
        let at = later(ctx.now.at, wait);
        want.not_before = Some(at);
        self.want = Some(want);
        self.set_timer(TimerKey::Retry(repo_id), at);
    }
}
