//! What a repository's handlers are given and what they leave: the
//! node-wide context ([`Ctx`]) and the outbox ([`Out`]). Nothing here is
//! persisted.

use std::time::Instant;

use iroh::{EndpointId, SecretKey};

use crate::{
    announce::{SignedStatement, Statement},
    core::{
        io::{Effect, Now, StateInfo},
        queue::Lane,
        settings::Settings,
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

/// What a handler left for the core, in the order it decided it. Nearly
/// every item is an effect, so boxing effects would only add an allocation
/// to each.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
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
    /// A change to when the repository's record is read.
    RecordRead(RecordRead),
    /// Ask this peer what it holds of the repository, through the peer's
    /// pull queue: repositories asked of one peer at about the same time
    /// go in one pull.
    Pull(EndpointId),
}

/// What the schedule of record reads does for a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRead {
    /// Read the record (at its locator now) at once and on the schedule.
    Track,
    /// No longer read it.
    Untrack,
    /// Read it as soon as a slot is free.
    Now,
}
