//! The helpers every handler of a repository uses to fill its outbox:
//! effects for the actor (events for watchers, timers, replies, writes,
//! what is served) and requests for the core.

use std::time::Instant;

use super::{outbox::Out, state::Repo};
use crate::{
    api::{NodeEvent, Reply},
    core::io::{Effect, ReplyId, ServedState, TimerKey, Write},
};

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

    /// What the node serves of this repository: the state it holds, if any.
    pub fn served_state(&self) -> Option<ServedState> {
        self.held.as_ref().map(|h| ServedState {
            manifest: h.manifest,
            head: h.head.clone(),
            path: self.config.repo_id.relative_path(),
        })
    }

    /// Tell the actor to serve the state held now (or nothing).
    pub fn publish_served(&mut self) {
        let repo = self.config.repo_id.clone();
        let state = self.served_state();
        self.emit(Effect::Served { repo, state });
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
