//! `sync` callers of one repository: what they wait for, and the answer
//! they get once nothing they wait for is left.
//!
//! With a record, `sync` polls it and settles on what it names; without
//! one, it settles on the state held, a state being fetched, or a first
//! state a peer announces within the wait. A repository first asked for by
//! `sync` is kept once it holds a state and forgotten otherwise.

use tracing::debug;

use super::{
    outbox::{Ctx, Out, RecordRead},
    state::Repo,
};
use crate::{
    api::{Payload, Reply, SyncReport},
    core::{
        io::{ReplyId, TimerKey, later},
        queue::Lane,
    },
    state::Origin,
};

impl Repo {
    /// A `sync` caller waits on this repository.
    pub fn sync(&mut self, ctx: &mut Ctx, reply: ReplyId) {
        let repo_id = self.config.repo_id.clone();
        // A caller is news: the topic is joined. A repository without a
        // record to read whose topic was left while quiet asks its peers
        // directly what they hold: a newer state they name is fetched (the
        // caller is answered from the state held meanwhile).
        if self.topic.is_none() && self.held.is_some() && !self.record_read() {
            for peer in self.dial_targets(ctx.me) {
                self.request(Out::Pull(peer));
            }
        }
        self.wake(ctx);
        self.sync.waiters.push(reply);
        if self.sync.waiters.len() == 1 {
            self.sync.bytes_fetched = 0;
            self.sync.message = None;
            self.sync.poll_error = None;
        }
        if self.record_read() {
            if !self.sync.awaiting_poll {
                self.sync.awaiting_poll = true;
                self.request(Out::RecordRead(RecordRead::Now));
            }
            return;
        }
        if let Some(want) = &mut self.want {
            // Someone waits now: the fetch goes ahead of background work,
            // and a failed one is tried again at once.
            want.not_before = None;
            self.request(Out::Enqueue(Lane::Interactive));
            self.request(Out::Pump);
        } else if self.held.is_none() && self.job.is_none() && self.sync.first_state_round.is_none()
        {
            let round = ctx.round();
            self.sync.first_state_round = Some(round);
            for peer in self.dial_targets(ctx.me) {
                self.request(Out::Pull(peer));
            }
            let at = later(ctx.now.at, ctx.settings.first_state_wait);
            self.set_timer(TimerKey::FirstState(repo_id, round), at);
        }
        self.settle_sync(ctx);
    }

    fn first_state_expired_message(&self, ctx: &Ctx) -> String {
        let repo_id = &self.config.repo_id;
        let peers = self
            .dial_targets(ctx.me)
            .iter()
            .map(|p| p.fmt_short().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let peers = if peers.is_empty() {
            "none".into()
        } else {
            peers
        };
        format!(
            "no state of {repo_id} arrived within {:?}: no record names a manifest and no trusted peer announced one (peers known: {peers}); add a peer with `knotd admin add-repo {repo_id} --peer <ticket>` or a record with --pds",
            ctx.settings.first_state_wait
        )
    }

    /// The wait of `round` for a first state is over.
    pub fn first_state_expired(&mut self, ctx: &Ctx, round: u64) {
        if self.sync.first_state_round != Some(round) {
            return; // a timer of an earlier round
        }
        self.sync.first_state_round = None;
        if self.held.is_none() && self.job.is_none() && self.want.is_none() {
            let message = self.first_state_expired_message(ctx);
            self.answer_sync(Err(message));
        } else {
            self.settle_sync(ctx);
        }
    }

    /// Answer `sync` callers once nothing they wait for is left: no poll
    /// pending, no job running or queued for them, no first state awaited.
    /// A fetch that failed answers with its error (it is retried anyway).
    pub fn settle_sync(&mut self, ctx: &Ctx) {
        let sync = &self.sync;
        if sync.waiters.is_empty() || sync.awaiting_poll || self.job.is_some() {
            return;
        }
        if !self.publishes.is_empty() {
            return;
        }
        let outcome = match &self.want {
            Some(want) if want.attempts == 0 => return, // queued, not tried yet
            Some(_) => Err(self
                .book
                .last_error
                .clone()
                .unwrap_or_else(|| "the fetch failed; it is retried".into())),
            None if self.held.is_some() => Ok(()),
            None if sync.first_state_round.is_some() => return,
            None => Err(self.no_state_message(ctx)),
        };
        self.answer_sync(outcome);
    }

    fn no_state_message(&self, ctx: &Ctx) -> String {
        let repo_id = &self.config.repo_id;
        match (&self.record, self.sync.poll_error.as_deref()) {
            (_, Some(poll_error)) => {
                format!("cannot read the record of {repo_id}: {poll_error}; no copy is held yet")
            }
            (Some(_), None) => {
                format!("the record of {repo_id} names no manifest yet; publish first")
            }
            (None, None) if self.config.locator.is_some() => {
                format!("the record of {repo_id} names no manifest yet; publish first")
            }
            (None, None) => self.first_state_expired_message(ctx),
        }
    }

    /// Answer every `sync` caller. A repository first asked for by `sync`
    /// is kept once it holds a state and forgotten otherwise.
    pub fn answer_sync(&mut self, outcome: Result<(), String>) {
        let waiters = std::mem::take(&mut self.sync.waiters);
        let sync = std::mem::take(&mut self.sync);
        let reply = match outcome {
            Ok(()) => {
                let message = sync.message.clone().unwrap_or_else(|| {
                    if let Some(error) = &sync.poll_error {
                        format!("record poll failed ({error}); serving the state held")
                    } else if sync.bytes_fetched > 0 {
                        "fetched from peers".into()
                    } else {
                        "up to date".into()
                    }
                });
                Reply::Ok(self.sync_report(sync.bytes_fetched, message))
            }
            Err(message) => Reply::Error(message),
        };
        let unheld_guess = self.config.origin == Origin::Sync && self.held.is_none();
        if matches!(reply, Reply::Error(_)) && unheld_guess && self.job.is_none() {
            debug!(repo = %self.config.repo_id, "forgetting a repository whose first sync failed");
            self.request(Out::Forget);
        }
        for to in waiters {
            self.reply(to, reply.clone());
        }
    }

    /// The report a `sync` caller gets.
    pub fn sync_report(&self, bytes_fetched: u64, message: String) -> Payload {
        let held = self.held.as_ref();
        Payload::Synced(SyncReport {
            repo_id: self.config.repo_id.to_string(),
            manifest: held.map(|h| h.manifest.to_hex()),
            head: held.and_then(|h| h.head.clone()),
            bytes_fetched,
            message,
        })
    }
}
