//! The repository core: every decision about what the node holds, as a
//! state machine without I/O.
//!
//! Events go in ([`Event`]: admin commands, verified announcements, gossip
//! neighbour changes, record polls, jobs' progress, finished jobs and
//! write-backs, timers), each with the time ([`Now`]); effects come out
//! ([`Effect`]: persist, start a job, join or leave a topic, announce,
//! pull, poll, write back, serve a state, tell watchers, reply, set a
//! timer). The actor in [`crate::knot`] executes the effects in
//! order and feeds results back as events; nothing here touches a socket, a
//! file, the database or the clock, so every rule is tested with an
//! injected clock (see `tests.rs`). The trust rules themselves are the pure
//! functions of [`trust`].
//!
//! The core owns the set of tracked repositories ([`repo::Repo`]): what
//! was persisted (configuration, the owner's record, the held state,
//! bookkeeping) plus what is in flight. At most one content job runs per
//! repository and at most `max_jobs` in all ([`queue`]). A held state is
//! written durably (the actor commits before executing the effects after
//! it) before it is announced. What survives a restart is what was
//! persisted; [`Core::load`] resumes from it.

mod commands;
mod follows;
mod gossip;
pub mod hints;
mod io;
mod jobs;
mod machine;
pub(crate) mod persist;
mod policy;
mod pulls;
pub mod queue;
mod reads;
mod records;
pub mod repo;
pub mod schedule;
pub mod settings;
mod tables;
pub mod trust;
mod verify;
mod view;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use io::*;
pub use machine::Core;
pub use policy::Policy;
pub use settings::{ReadSettings, Settings};
pub use tables::Counters;
