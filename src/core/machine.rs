//! The core itself: the tracked repositories, what spans them (the job
//! queue, follows, policy, pulls, `verify` callers, counters), and the
//! routing of every event to the rules that decide it. [`Core::handle`]
//! takes an event with its time and returns the effects, in order;
//! [`Core::load`] resumes from what was persisted.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use iroh::{EndpointId, SecretKey};

use super::{
    io::{Effect, Event, JobId, Now, ReplyId, TimerKey, Write, is_due, later},
    policy::Policy,
    queue::{self, JobQueue},
    repo::{self, Ctx, Out, Repo},
    settings::Settings,
    tables::{Counters, Follow, PullBackoff, Reads, Unpersisted, VerifyWait},
};
use crate::{
    announce::SignedStatement, api::Reply, record::PeerHint, repo_id::RepoId, state::RepoRow,
};

/// The repository core. See the module documentation.
pub struct Core {
    pub(super) me: EndpointId,
    pub(super) key: SecretKey,
    pub(super) settings: Settings,
    /// Boxed: a [`Repo`] is over a kilobyte, and a B-tree node holds
    /// eleven values inline whether used or not (measured at 1,000
    /// repositories: 2.8 KB per repository unboxed).
    pub(super) repos: BTreeMap<RepoId, Box<Repo>>,
    pub(super) follows: BTreeMap<String, Follow>,
    pub(super) policy: Policy,
    pub(super) discarding: BTreeMap<RepoId, repo::Discarding>,
    pub(super) queue: JobQueue,
    pub(super) next_job: JobId,
    pub(super) next_round: u64,
    pub(super) pulls: HashMap<EndpointId, PullBackoff>,
    pub(super) verifies: BTreeMap<u64, VerifyWait>,
    pub(super) next_verify: u64,
    pub(super) recheck_after_gc: BTreeMap<RepoId, u64>,
    pub(super) rejoin_timer: Option<Instant>,
    pub(super) counters: Counters,
    pub(super) reads: Reads,
    pub(super) unpersisted: Unpersisted,
    pub(super) pull_queues: BTreeMap<EndpointId, super::pulls::PullQueue>,
    pub(super) pull_timer: Option<Instant>,
    pub(super) out: Vec<Effect>,
}

impl Core {
    /// A core for the node with `key`, tracking nothing yet.
    pub fn new(key: SecretKey, settings: Settings) -> Self {
        Self {
            me: key.public(),
            key,
            queue: JobQueue::new(settings.max_jobs),
            reads: Reads::new(&settings),
            unpersisted: Default::default(),
            pull_queues: BTreeMap::new(),
            pull_timer: None,
            settings,
            repos: BTreeMap::new(),
            follows: BTreeMap::new(),
            policy: Policy::default(),
            discarding: BTreeMap::new(),
            next_job: 1,
            next_round: 1,
            pulls: HashMap::new(),
            verifies: BTreeMap::new(),
            next_verify: 1,
            recheck_after_gc: BTreeMap::new(),
            rejoin_timer: None,
            counters: Counters::default(),
            out: Vec::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> EndpointId {
        self.me
    }

    /// Resume from the database: serve every held state, learn every
    /// peer's address, join topics, follow records, check every held state
    /// (repairing what a crash left) and resume fetches a restart
    /// interrupted.
    pub fn load(
        &mut self,
        rows: Vec<RepoRow>,
        follows: Vec<crate::state::FollowConfig>,
        now: Now,
    ) -> Vec<Effect> {
        self.load_follows(follows, now);
        for row in rows {
            let repo_id = row.config.repo_id.clone();
            let mut repo = Repo::from_row(row);
            if let Some(state) = repo.served_state() {
                self.out.push(Effect::Served {
                    repo: repo_id.clone(),
                    state: Some(state),
                });
            }
            let addrs: Vec<PeerHint> = repo.all_hints().cloned().collect();
            if !addrs.is_empty() {
                self.out.push(Effect::LearnAddrs(addrs));
            }
            if repo.record_read() {
                self.reads.records.track(repo_id.clone(), now.at);
            }
            if repo.config.record_deleted && repo.config.record_deleted_at.is_none() {
                // Marked before the time was kept: the grace period starts now.
                repo.config.record_deleted_at = Some(now.unix_secs());
                self.out
                    .push(Effect::Persist(Write::Config(repo.config.clone())));
            }
            repo.want = repo.resumed_want(now);
            super::hints::expire(&mut repo.book.hints, now.unix_ms);
            if self.settings.write_back && repo.held.as_ref().is_some_and(|h| h.write_back_pending)
            {
                self.set_timer(TimerKey::WriteBack(repo_id.clone()), now.at);
            }
            repo.clear_leftovers = repo.held.is_none();
            let needs_job = repo.want.is_some() || repo.clear_leftovers;
            self.repos.insert(repo_id.clone(), Box::new(repo));
            self.ensure_topic(&repo_id, now);
            if needs_job {
                self.queue.push(&repo_id, queue::Lane::Background);
            }
        }
        if let Some(every) = self.settings.verify_interval {
            self.set_timer(TimerKey::VerifyAll, later(now.at, every));
        }
        if let Some(every) = self.settings.resync_interval {
            self.set_timer(TimerKey::Resync, later(now.at, every));
        }
        if let Some(idle) = self.settings.topic_idle {
            self.startup_pulls(now);
            self.set_timer(
                TimerKey::TopicSleep,
                later(now.at, super::gossip::sleep_check_every(idle)),
            );
        }
        // Retired repositories whose grace period ended go now: a removal
        // whose commit failed (a full disk) before a crash is done again
        // at once, so the cap on what an identity brings holds from the
        // first step.
        self.remove_retired(now);
        self.pump(now);
        self.start_reads(now);
        std::mem::take(&mut self.out)
    }

    /// Handle one event; returns the effects to execute, in order.
    pub fn handle(&mut self, event: Event, now: Now) -> Vec<Effect> {
        self.note_commit_held(&event);
        match event {
            Event::Command { reply, command } => self.handle_command(reply, command, now),
            Event::Announcement {
                repo,
                announcement,
                via,
            } => {
                self.counters.received += 1;
                self.with_repo(&repo, now, |r, ctx| {
                    r.on_announcement(ctx, *announcement, via)
                });
            }
            Event::NeighborUp { repo, peer, addrs } => {
                self.with_repo(&repo, now, |r, ctx| r.on_neighbor_up(ctx, peer, addrs));
            }
            Event::NeighborDown { repo, peer } => {
                self.with_repo(&repo, now, |r, ctx| r.on_neighbor_down(ctx, peer));
            }
            Event::TopicClosed { repo } => {
                self.with_repo(&repo, now, |r, ctx| r.on_topic_closed(ctx));
            }
            Event::Pulled { peer, ok } => self.handle_pulled(peer, ok, now),
            Event::Polled {
                repo,
                read,
                outcome,
                retry_after,
            } => self.handle_polled(&repo, read, outcome, retry_after, now),
            Event::JobDone {
                repo,
                job,
                result,
                faults,
            } => self.handle_job_done(&repo, job, result, &faults, now),
            Event::JobProgress {
                repo,
                job,
                progress,
            } => {
                self.with_repo(&repo, now, |r, _| r.on_job_progress(job, progress));
            }
            Event::WrittenBack { repo, result } => {
                self.with_repo(&repo, now, |r, ctx| r.on_written_back(ctx, result));
            }
            Event::ReplicaProbed {
                repo,
                peer,
                manifest,
                proved,
            } => {
                self.with_repo(&repo, now, |r, ctx| {
                    r.on_probed(ctx, peer, manifest, proved)
                });
            }
            Event::AccountResolved { did } => self.handle_account_resolved(did, now),
            Event::PersistFailed { subjects, error } => {
                self.handle_persist_failed(subjects, error, now)
            }
            Event::NetBusy(busy) => self.handle_net_busy(busy, now),
            Event::GcPass { passes } => self.handle_gc_pass(passes, now),
            Event::Listed {
                did,
                read,
                result,
                retry_after,
            } => self.handle_listed(&did, read, result, retry_after, now),
            Event::Timer(key) => self.handle_timer(key, now),
        }
        self.start_reads(now);
        self.rewrite_touched(now);
        self.withhold_unpersisted_announcements();
        std::mem::take(&mut self.out)
    }

    pub(super) fn handle_timer(&mut self, key: TimerKey, now: Now) {
        match key {
            TimerKey::Retry(repo) => {
                let runnable = self.repos.get(&repo).is_some_and(|r| {
                    r.job.is_none() && r.want.as_ref().is_some_and(|w| is_due(w.not_before, now))
                });
                if runnable {
                    self.schedule(&repo);
                    self.pump(now);
                }
            }
            TimerKey::WriteBack(repo) => self.start_write_back(&repo, now),
            TimerKey::FirstState(repo, round) => {
                self.with_repo(&repo, now, |r, ctx| r.first_state_expired(ctx, round));
            }
            TimerKey::Rejoin => self.rejoin_sweep(now),
            TimerKey::ReplicasDeadline(repo, id) => {
                self.with_repo(&repo, now, |r, ctx| r.replicas_deadline(ctx.me, id));
            }
            TimerKey::ReplicasAsk(repo) => {
                self.with_repo(&repo, now, |r, ctx| r.ask_for_replicas(ctx));
            }
            TimerKey::VerifyAll => self.verify_all(now),
            TimerKey::Resync => self.resync_sweep(now),
            TimerKey::TopicSleep => self.sleep_sweep(now),
            TimerKey::RemoveRetired => self.remove_retired(now),
            TimerKey::RecordReads | TimerKey::Listings => self.reads_timer(&key),
            TimerKey::Repersist => self.repersist(now),
            TimerKey::DeferredPulls => self.deferred_pulls(now),
        }
    }

    /// The held statements of `repo_ids` (unknown or empty ones skipped,
    /// and those whose rows wait to be written again), for a peer that
    /// pulls them.
    pub fn held_statements(&self, repo_ids: &[RepoId]) -> Vec<SignedStatement> {
        repo_ids
            .iter()
            .filter(|id| !self.awaits_repersist(id))
            .filter_map(|id| self.repos.get(id))
            .filter_map(|r| r.held.as_ref().map(|h| h.statement.clone()))
            .collect()
    }

    /// Announcements received and rejected since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Content jobs running and repositories waiting for a slot.
    pub fn job_load(&self) -> (usize, usize) {
        (self.queue.running(), self.queue.waiting())
    }

    pub(super) fn reply(&mut self, to: ReplyId, reply: Reply) {
        self.out.push(Effect::Reply { to, reply });
    }

    pub(super) fn reply_err(&mut self, to: ReplyId, message: impl Into<String>) {
        self.reply(to, Reply::Error(message.into()));
    }

    pub(super) fn set_timer(&mut self, key: TimerKey, at: Instant) {
        self.out.push(Effect::SetTimer { key, at });
    }

    /// Run `f` on `repo_id`'s state machine with the node's context, then
    /// take what it left in its outbox ([`Core::drain`]). `None` when the
    /// repository is not tracked.
    pub(super) fn with_repo<T>(
        &mut self,
        repo_id: &RepoId,
        now: Now,
        f: impl FnOnce(&mut Repo, &mut Ctx) -> T,
    ) -> Option<T> {
        let repo = self.repos.get_mut(repo_id)?;
        let mut ctx = Ctx {
            me: self.me,
            key: &self.key,
            settings: &self.settings,
            now,
            next_round: &mut self.next_round,
        };
        let result = f(repo, &mut ctx);
        self.drain(repo_id, now);
        Some(result)
    }

    /// Take what `repo_id`'s handlers left, in order: effects go to the
    /// actor, requests are acted on as they come.
    pub(super) fn drain(&mut self, repo_id: &RepoId, now: Now) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return;
        };
        for item in repo.take_out() {
            match item {
                Out::Effect(effect) => self.out.push(effect),
                Out::Schedule => self.schedule(repo_id),
                Out::Enqueue(lane) => self.queue.push(repo_id, lane),
                Out::Pump => self.pump(now),
                Out::ArmRejoin(at) => self.arm_rejoin(at),
                Out::ArmRetiredRemoval => self.arm_retired_removal(now),
                Out::Rejected(reason) => {
                    *self.counters.rejected.entry(reason).or_default() += 1;
                }
                Out::Checked(result) => {
                    self.checked(repo_id, result.as_deref().map_err(String::as_str))
                }
                Out::RecheckAfterGc(passes) => self.recheck_after_gc(repo_id, passes),
                Out::Forget => self.forget(repo_id, now),
                Out::RecordRead(ask) => self.record_read(repo_id, ask, now),
                Out::Pull(peer) => self.pull_one(peer, repo_id.clone(), now),
            }
        }
    }

    /// Stream an event about `repo_id` to watchers.
    pub(super) fn notify(&mut self, repo_id: &RepoId, event: crate::api::NodeEvent) {
        self.out.push(Effect::Notify {
            repo: Some(repo_id.clone()),
            event,
        });
    }
}
