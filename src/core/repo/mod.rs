//! One repository as its own state machine: what was persisted about it
//! plus what is in flight ([`state`]), and the rules of what happens to it
//! when an event concerns it. Each handler takes the node-wide context
//! ([`Ctx`]) and leaves what it decided in the repository's outbox
//! ([`Out`]): effects for the actor, in order, and requests for the core
//! (a job slot, a counter, a node-wide timer). The core routes events to
//! repositories and keeps what spans them (the job queue, the total quota,
//! follows, policy, direct pulls); it drains the outbox after each call.

mod announce;
mod content;
mod emit;
mod operator;
mod outbox;
mod record;
mod replicas;
mod state;
mod sync;

pub use announce::{MAX_REBROADCAST_DIRECT, REBROADCAST_WINDOW};
pub use outbox::{Ctx, Out, RecordRead};
pub use replicas::*;
pub use state::*;

/// The start of a repository's error after a failed commit
/// ([`crate::core::Event::PersistFailed`]); cleared once its rows are
/// written again.
pub const PERSIST_ERROR: &str = "the database could not record";
