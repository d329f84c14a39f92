//! What a repository's handlers are given and what they leave: the
//! node-wide context ([`Ctx`]) and the outbox ([`Out`]), with the helpers
//! every handler uses to fill it. Nothing here is persisted.

use std::time::Instant;

use iroh::{EndpointId, SecretKey};

use super::state::Repo;
use crate::{
    announce::{SignedStatement, Statement},
    api::{NodeEvent, Reply},
    core::{
        io::{Effect, Now, ReplyId, Settings, StateInfo, TimerKey, Write},
        queue::Lane,
    },
};

/// What a repository's handlers know of the node.
pub struct Ctx<'a> {
    /// This node's id.
    pub me: EndpointId,
    /// This node's key, to sign its own statements.
    pub key: &'a SecretKey,
    /// The core's tunables.
    pub settings: &'a Settings,
    /// The time of the event handled.
    pub now: Now,
    /// The next id of a waiter's round, node-wide so timer keys stay unique.
    pub next_round: &'a mut u64,
}

impl Ctx<'_> {
    /// A fresh round id.
    pub fn round(&mut self) -> u64 {
        let id = *self.next_round;
        *self.next_round += 1;
        id
    }

    /// A statement of a state of `repo_id`, signed by this node as its
    /// publisher.
    pub fn own_statement(
        &self,
        repo_id: &crate::repo_id::RepoId,
        head: Option<String>,
        manifest: iroh_blobs::Hash,
        seq: u64,
    ) -> SignedStatement {
        Statement {
            repo_id: repo_id.to_string(),
            head,
            manifest: *manifest.as_bytes(),
            seq,
            publisher: *self.me.as_bytes(),
        }
        .sign(self.key)
    }
}

/// What a handler left for the core, in the order it decided it.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// An effect for the actor.
    Effect(Effect),
    /// The repository has work for a job slot.
    Schedule,
    /// Queue the repository for a job slot in this lane, whatever it runs.
    Enqueue(Lane),
    /// Start jobs while slots are free.
    Pump,
    /// The rejoin sweep must run no later than this.
    ArmRejoin(Instant),
    /// The removal of retired repositories may be due sooner.
    ArmRetiredRemoval,
    /// An announcement was not taken, for this reason.
    Rejected(&'static str),
    /// A check of the held state ended: whole again, or not.
    Checked(Result<Box<StateInfo>, String>),
    /// A fetch reused blobs nothing pinned when the collector had started
    /// this many passes: check the state after the next one.
    RecheckAfterGc(u64),
    /// The repository goes (a first publish or first `sync` that failed).
    Forget,
}

impl Repo {
    /// Leave `effect` for the actor.
    pub fn emit(&mut self, effect: Effect) {
        self.out.push(Out::Effect(effect));
    }

    /// Leave a request for the core.
    pub fn request(&mut self, out: Out) {
        self.out.push(out);
    }

    /// What the handlers left, emptied.
    pub fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// Stream an event about this repository to watchers.
    pub fn notify(&mut self, event: NodeEvent) {
        let repo = Some(self.config.repo_id.clone());
        self.emit(Effect::Notify { repo, event });
    }

    /// Set (or replace) a timer.
    pub fn set_timer(&mut self, key: TimerKey, at: Instant) {
        self.emit(Effect::SetTimer { key, at });
    }

    /// Answer a waiting caller.
    pub fn reply(&mut self, to: ReplyId, reply: Reply) {
        self.emit(Effect::Reply { to, reply });
    }

    /// Answer a waiting caller with an error.
    pub fn reply_err(&mut self, to: ReplyId, message: impl Into<String>) {
        self.reply(to, Reply::Error(message.into()));
    }

    /// Queue the bookkeeping for a lazy write.
    pub fn persist_book(&mut self) {
        let write = Write::Bookkeeping(self.config.repo_id.clone(), self.book.clone());
        self.emit(Effect::Persist(write));
    }

    /// Set (or clear) the last error shown.
    pub fn set_error(&mut self, error: Option<String>) {
        if self.book.last_error != error {
            self.book.last_error = error;
            self.persist_book();
        }
    }

    /// Clear the last error if it came from `kind` (a prefix of its text).
    pub fn clear_error_of(&mut self, kind: &str) {
        let stale = self
            .book
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with(kind));
        if stale {
            self.set_error(None);
        }
    }
}
