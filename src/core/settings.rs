//! The core's tunables ([`Settings`]), with the defaults the node runs
//! with; the node sets them from its configuration. Plain data.

use std::{path::PathBuf, time::Duration};

/// How often and how patiently to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadSettings {
    /// Time between two reads of a healthy key.
    pub interval: Duration,
    /// Jitter as a fraction of the wait, 0 to 1.
    pub jitter: f64,
    /// Longest wait between reads after failures.
    pub max_backoff: Duration,
    /// Longest wait between reads of a key whose answers keep bringing no
    /// change: the wait doubles from `interval` after each unchanged
    /// answer up to this (`interval` or less: never stretched).
    pub max_quiet: Duration,
    /// Most reads running at once.
    pub max_in_flight: usize,
}

impl Default for ReadSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            jitter: 0.1,
            max_backoff: Duration::from_secs(3600),
            max_quiet: Duration::from_secs(3600),
            max_in_flight: 8,
        }
    }
}

/// Tunables of the core, with the defaults the node runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where materialized repositories live (for reports).
    pub repos_root: PathBuf,
    /// Most content jobs running at once.
    pub max_jobs: usize,
    /// First wait before a failed fetch or write-back is retried.
    pub retry_base: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// How long `sync` waits for a first state when nothing names one.
    pub first_state_wait: Duration,
    /// First wait before a topic without neighbours re-dials its peers.
    pub rejoin_base: Duration,
    /// Longest wait between re-dials.
    pub rejoin_max: Duration,
    /// Whether the node has credentials to write records back with.
    pub write_back: bool,
    /// Most bytes one repository's state may have (`max_repo_bytes`).
    pub max_repo_bytes: Option<u64>,
    /// Most bytes all repositories' states may have together (`max_total_bytes`).
    pub max_total_bytes: Option<u64>,
    /// The DID of the node's account, once resolved: only its own
    /// repositories' records are written back.
    pub account_did: Option<String>,
    /// How often every held state is checked (`None`: only at start-up
    /// and on `verify`).
    pub verify_interval: Option<Duration>,
    /// How often trusted peers are asked directly what they hold (`None`:
    /// never; only gossip and lonely topics' pulls).
    pub resync_interval: Option<Duration>,
    /// How long a repository's gossip topic stays joined after its last
    /// news (a state published, adopted or fetched, the record changed, the
    /// operator's peers changed) while nothing runs for it (`None`: topics
    /// are never left). An asleep repository still answers pulls and is
    /// told of new states directly and by the resync sweep; its first news
    /// joins the topic again.
    pub topic_idle: Option<Duration>,
    /// Most repositories one followed identity may bring, retired ones
    /// included (`[follow] max_repos_per_identity`).
    pub max_repos_per_identity: usize,
    /// How long a repository a followed identity no longer lists is kept
    /// before it is removed (`[follow] retired_grace_secs`).
    pub retired_grace: Duration,
    /// When records are read (`[atproto] poll_interval_secs`, `poll_jitter`,
    /// `max_backoff_secs`).
    pub record_reads: ReadSettings,
    /// When followed identities are listed (the same settings).
    pub listings: ReadSettings,
}

impl Settings {
    /// Defaults for a node whose materialized repositories live in `repos_root`.
    pub fn new(repos_root: PathBuf) -> Self {
        Self {
            repos_root,
            max_jobs: 4,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            first_state_wait: Duration::from_secs(30),
            rejoin_base: Duration::from_secs(5),
            rejoin_max: Duration::from_secs(300),
            write_back: false,
            max_repo_bytes: None,
            max_total_bytes: None,
            account_did: None,
            verify_interval: Some(Duration::from_secs(24 * 3600)),
            resync_interval: Some(Duration::from_secs(10 * 60)),
            topic_idle: None,
            max_repos_per_identity: 1000,
            retired_grace: Duration::from_secs(7 * 24 * 3600),
            record_reads: ReadSettings::default(),
            listings: ReadSettings::default(),
        }
    }
}
