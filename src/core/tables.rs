//! What the core keeps across repositories besides the repositories
//! themselves: followed identities, the backoff of direct pulls per peer,
//! `verify` callers and the counters of announcements. Plain data, in
//! memory only (follows are persisted through [`super::io::Write`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::{
    io::{ReplyId, Subject},
    schedule::Schedule,
    settings::Settings,
};
use crate::{api::VerifyRow, repo_id::RepoId, state::FollowConfig};

/// Per-peer state of direct pulls.
#[derive(Debug, Clone, Copy, Default)]
pub struct PullBackoff {
    /// Failed pulls in a row.
    pub failures: u32,
    /// Not to be pulled before this time.
    pub not_before: Option<std::time::Instant>,
}

/// Most peers whose pull backoff is remembered.
pub const MAX_PULL_PEERS: usize = 4096;

/// Announcements received and rejected, and work the actor had no room or
/// disk for, since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Verified announcements handled.
    pub received: u64,
    /// Announcements not taken, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Direct pushes not sent: too many exchanges in flight.
    pub pushes_dropped: u64,
    /// Pulls put off: too many exchanges in flight.
    pub pulls_deferred: u64,
    /// Commits of durable writes that failed.
    pub store_failures: u64,
}

/// A followed identity in the core.
#[derive(Debug, Clone, PartialEq)]
pub struct Follow {
    /// What is persisted.
    pub config: FollowConfig,
    /// Unix time of the last successful listing.
    pub last_list: Option<u64>,
    /// The last listing error.
    pub last_error: Option<String>,
    /// Callers of `follow` waiting for the first listing.
    pub waiters: Vec<ReplyId>,
}

/// A `verify` caller waiting for its repositories' checks.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyWait {
    /// Who waits.
    pub reply: ReplyId,
    /// Repositories not checked yet.
    pub pending: BTreeSet<RepoId>,
    /// Of those, the ones whose check was already running when the caller
    /// asked: that check's result does not answer it, the next one does.
    pub behind: BTreeSet<RepoId>,
    /// What the checks found so far.
    pub rows: Vec<VerifyRow>,
}

/// Failed commits waiting to be written again.
#[derive(Debug, Default)]
pub struct Unpersisted {
    /// Subjects whose rows are written again at the next retry.
    pub subjects: BTreeSet<Subject>,
    /// Failed commits in a row (reset by an event after a retry that no
    /// failure followed).
    pub failures: u32,
    /// Repositories whose rows the last batch wrote again together with an
    /// announcement counted as a rebroadcast: the executor drops that
    /// announcement when the commit fails, so only then is the rebroadcast
    /// given back. Emptied by the next event (a failure is reported next).
    pub rewrites_announced: BTreeSet<RepoId>,
}

/// The two schedules and the timers armed for them.
#[derive(Debug)]
pub struct Reads {
    /// Records of repositories.
    pub records: Schedule<RepoId>,
    /// Listings of followed identities.
    pub listings: Schedule<String>,
    pub(super) records_armed: Option<Instant>,
    pub(super) listings_armed: Option<Instant>,
}

impl Reads {
    /// Empty schedules with the node's settings.
    pub fn new(settings: &Settings) -> Self {
        Self {
            records: Schedule::new(settings.record_reads.clone()),
            listings: Schedule::new(settings.listings.clone()),
            records_armed: None,
            listings_armed: None,
        }
    }
}
