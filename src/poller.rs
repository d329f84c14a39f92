//! The poll scheduler: fetches the ATProto record of every tracked repository
//! on a timer and reports what it found ([`PollOutcome::into_poll`] sorts it
//! into found, not found, unreachable or invalid for the core).
//!
//! Owns the schedule only. It runs one `select!` loop over commands from its
//! handles, a timer for the next due repository, finished polls, and delivery
//! of outcomes to the owner. Polls run as child tasks: at most one per
//! repository and at most [`PollSettings::max_in_flight`] scheduled ones at a
//! time. After a success the next poll comes one interval later (with jitter);
//! after failures the wait doubles up to the maximum backoff. Failures are
//! reported and retried, never fatal. Nothing here is persisted: the owner
//! tracks its repositories again after a restart.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    task::{AbortHandle, Id as TaskId, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    atproto::{AtprotoError, XrpcClient, check_locator, fetch_repo_record_at},
    config::AtprotoConfig,
    core::RecordPoll,
    record::RepoRecord,
    repo_id::RepoId,
    state::Locator,
};

/// Most scheduled polls running at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// How long a PDS address resolved from a DID document is reused.
const PDS_CACHE_TTL: Duration = Duration::from_secs(3600);

/// How often and how patiently to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PollSettings {
    /// Time between two polls of a healthy repository.
    pub interval: Duration,
    /// Random jitter as a fraction of the wait, 0 to 1.
    pub jitter: f64,
    /// Longest wait between polls after failures.
    pub max_backoff: Duration,
    /// PLC directory used to resolve `did:plc` documents.
    pub plc_directory: String,
    /// Most scheduled polls running at once.
    pub max_in_flight: usize,
}

impl PollSettings {
    /// Settings from `[atproto]`.
    pub fn from_config(config: &AtprotoConfig) -> Self {
        Self {
            interval: Duration::from_secs(config.poll_interval_secs.max(1)),
            jitter: config.poll_jitter,
            max_backoff: Duration::from_secs(config.max_backoff_secs.max(1)),
            plc_directory: config.plc_directory.clone(),
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// The wait before the next poll of a repository.
///
/// With no failures: `interval` moved by up to `jitter · interval` either way.
/// After `n` consecutive failures: `interval · 2^n`, capped at `max_backoff`
/// (but never shorter than `interval`), jittered the same way. The result is
/// never below half the unjittered wait. `random_unit` is a random number in
/// `[0, 1)`; out-of-range values are clamped.
pub fn next_delay(
    interval: Duration,
    jitter: f64,
    consecutive_failures: u32,
    max_backoff: Duration,
    random_unit: f64,
) -> Duration {
    let base = if consecutive_failures == 0 {
        interval
    } else {
        let grown = 1u32
            .checked_shl(consecutive_failures)
            .and_then(|factor| interval.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        grown.min(max_backoff.max(interval))
    };
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let r = if random_unit.is_finite() {
        random_unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let offset = base.as_secs_f64() * jitter * (2.0 * r - 1.0);
    let delay = Duration::try_from_secs_f64(base.as_secs_f64() + offset).unwrap_or(base);
    delay.max(base / 2)
}

/// The result of one poll of a repository's record.
#[derive(Debug, Clone)]
pub struct PollOutcome {
    /// The repository polled.
    pub repo_id: RepoId,
    /// The validated record, or why there is none.
    pub result: Result<RepoRecord, AtprotoError>,
}

impl PollOutcome {
    /// What the poll found, as the repository core takes it.
    pub fn into_poll(self) -> RecordPoll {
        classify(self.result)
    }
}

/// Sort a poll's result into what it means for the record held: a record
/// found, a record the PDS says does not exist (the owner deleted it), a PDS
/// or directory that gave no usable answer, or an answer that is not a valid
/// record of the repository. Only the PDS's own `RecordNotFound` counts as
/// deleted; every other failure keeps the copy held.
pub fn classify(result: Result<RepoRecord, AtprotoError>) -> RecordPoll {
    match result {
        Ok(record) => RecordPoll::Found(record),
        Err(e @ AtprotoError::NotFound { .. }) => RecordPoll::NotFound(e.to_string()),
        Err(
            e @ (AtprotoError::Record(_)
            | AtprotoError::Malformed { .. }
            | AtprotoError::Oversize { .. }),
        ) => RecordPoll::Invalid(e.to_string()),
        Err(
            e @ (AtprotoError::Timeout { .. }
            | AtprotoError::Unreachable { .. }
            | AtprotoError::Status { .. }
            | AtprotoError::RateLimited { .. }
            | AtprotoError::Auth { .. }
            | AtprotoError::NoPds { .. }
            | AtprotoError::Credentials { .. }),
        ) => RecordPoll::Unreachable(e.to_string()),
    }
}

/// The poller has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ATProto poller has stopped (knotd is shutting down)")]
pub struct PollerGone;

/// Why a forced poll gave no record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    /// The poller has stopped.
    #[error(transparent)]
    Gone(#[from] PollerGone),
    /// The repository is not tracked by the poller.
    #[error("{0} has no ATProto record to poll; add it with a PDS or record locator first")]
    NotTracked(RepoId),
    /// The fetch failed.
    #[error(transparent)]
    Atproto(#[from] AtprotoError),
}

type Reply = oneshot::Sender<Result<RepoRecord, PollError>>;

enum Message {
    Track { repo_id: RepoId, locator: Locator },
    Untrack { repo_id: RepoId },
    PollNow { repo_id: RepoId, reply: Reply },
}

/// Handle to the poller.
#[derive(Clone, Debug)]
pub struct PollerHandle {
    tx: mpsc::Sender<Message>,
}

impl PollerHandle {
    /// Start polling a repository's record; the first poll starts right away.
    /// Tracking again with another locator restarts polling with it.
    pub async fn track(&self, repo_id: RepoId, locator: Locator) -> Result<(), PollerGone> {
        self.send(Message::Track { repo_id, locator }).await
    }

    /// Stop polling a repository; a poll in flight is abandoned and not reported.
    pub async fn untrack(&self, repo_id: &RepoId) -> Result<(), PollerGone> {
        self.send(Message::Untrack {
            repo_id: repo_id.clone(),
        })
        .await
    }

    /// Poll a tracked repository now and return the result. The outcome is
    /// also reported to the owner like a scheduled poll. When a poll is
    /// already running, a new one starts after it.
    pub async fn poll_now(&self, repo_id: RepoId) -> Result<RepoRecord, PollError> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::PollNow { repo_id, reply }).await?;
        rx.await.map_err(|_| PollerGone)?
    }

    async fn send(&self, msg: Message) -> Result<(), PollerGone> {
        self.tx.send(msg).await.map_err(|_| PollerGone)
    }
}

struct InFlight {
    generation: u64,
    abort: AbortHandle,
    waiters: Vec<Reply>,
}

struct Tracked {
    locator: Locator,
    failures: u32,
    due: Option<Instant>,
    in_flight: Option<InFlight>,
    queued: Vec<Reply>,
    resolved_pds: Option<(String, Instant)>,
}

struct Done {
    repo_id: RepoId,
    generation: u64,
    pds: Option<String>,
    resolved: bool,
    result: Result<RepoRecord, AtprotoError>,
}

/// The poller actor.
pub struct Poller {
    settings: PollSettings,
    client: XrpcClient,
    results: mpsc::Sender<PollOutcome>,
    cancel: CancellationToken,
    rx: mpsc::Receiver<Message>,
    repos: HashMap<RepoId, Tracked>,
    schedule: BTreeSet<(Instant, RepoId)>,
    polls: JoinSet<Done>,
    task_repos: HashMap<TaskId, (RepoId, u64)>,
    next_generation: u64,
    undelivered: VecDeque<PollOutcome>,
}

impl Poller {
    /// Start the poller in `tasks` with settings from `[atproto]`. Outcomes
    /// go to `results`. It stops when `cancel` fires, when every handle is
    /// dropped, or when `results` is closed.
    pub fn spawn(
        config: &AtprotoConfig,
        client: XrpcClient,
        results: mpsc::Sender<PollOutcome>,
        cancel: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> PollerHandle {
        Self::spawn_with(
            PollSettings::from_config(config),
            client,
            results,
            cancel,
            tasks,
        )
    }

    /// Like [`Poller::spawn`], with explicit settings.
    pub fn spawn_with(
        settings: PollSettings,
        client: XrpcClient,
        results: mpsc::Sender<PollOutcome>,
        cancel: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> PollerHandle {
        let (tx, rx) = mpsc::channel(256);
        let actor = Poller {
            settings,
            client,
            results,
            cancel,
            rx,
            repos: HashMap::new(),
            schedule: BTreeSet::new(),
            polls: JoinSet::new(),
            task_repos: HashMap::new(),
            next_generation: 0,
            undelivered: VecDeque::new(),
        };
        tasks.spawn(actor.run());
        PollerHandle { tx }
    }

    async fn run(mut self) {
        let results = self.results.clone();
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle_message(msg),
                    None => break,
                },
                Some(done) = self.polls.join_next_with_id(), if !self.polls.is_empty() => {
                    self.handle_joined(done);
                }
                permit = results.reserve(), if !self.undelivered.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(outcome) = self.undelivered.pop_front() {
                            permit.send(outcome);
                        }
                    }
                    Err(_) => break,
                },
                _ = sleep_until(wake) => self.start_due(),
            }
        }
        self.polls.shutdown().await;
        debug!(repos = self.repos.len(), "ATProto poller stopped");
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.polls.len() >= self.settings.max_in_flight.max(1) {
            return None;
        }
        self.schedule.first().map(|(at, _)| *at)
    }

    fn handle_message(&mut self, msg: Message) {
        match msg {
            Message::Track { repo_id, locator } => self.handle_track(repo_id, locator),
            Message::Untrack { repo_id } => self.handle_untrack(&repo_id),
            Message::PollNow { repo_id, reply } => self.handle_poll_now(repo_id, reply),
        }
    }

    fn handle_track(&mut self, repo_id: RepoId, locator: Locator) {
        match self.repos.get_mut(&repo_id) {
            Some(tracked) if tracked.locator == locator => {}
            Some(tracked) => {
                info!(repo = %repo_id, did = %locator.did, rkey = %locator.rkey, "record locator changed; polling the new one");
                tracked.locator = locator;
                tracked.failures = 0;
                tracked.resolved_pds = None;
                let mut waiters = match tracked.in_flight.take() {
                    Some(flight) => {
                        flight.abort.abort();
                        flight.waiters
                    }
                    None => Vec::new(),
                };
                waiters.append(&mut tracked.queued);
                self.start(&repo_id, waiters);
            }
            None => {
                debug!(repo = %repo_id, did = %locator.did, rkey = %locator.rkey, "polling record");
                self.repos.insert(
                    repo_id.clone(),
                    Tracked {
                        locator,
                        failures: 0,
                        due: None,
                        in_flight: None,
                        queued: Vec::new(),
                        resolved_pds: None,
                    },
                );
                self.schedule_at(&repo_id, Instant::now());
            }
        }
    }

    fn handle_untrack(&mut self, repo_id: &RepoId) {
        let Some(mut tracked) = self.repos.remove(repo_id) else {
            return;
        };
        debug!(repo = %repo_id, "no longer polling record");
        if let Some(due) = tracked.due {
            self.schedule.remove(&(due, repo_id.clone()));
        }
        let mut waiters = std::mem::take(&mut tracked.queued);
        if let Some(flight) = tracked.in_flight {
            flight.abort.abort();
            waiters.extend(flight.waiters);
        }
        for w in waiters {
            let _ = w.send(Err(PollError::NotTracked(repo_id.clone())));
        }
        self.undelivered.retain(|o| &o.repo_id != repo_id);
    }

    fn handle_poll_now(&mut self, repo_id: RepoId, reply: Reply) {
        let Some(tracked) = self.repos.get_mut(&repo_id) else {
            let _ = reply.send(Err(PollError::NotTracked(repo_id)));
            return;
        };
        if tracked.in_flight.is_some() {
            tracked.queued.push(reply);
        } else {
            self.start(&repo_id, vec![reply]);
        }
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        while self.polls.len() < self.settings.max_in_flight.max(1) {
            match self.schedule.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let Some((_, repo_id)) = self.schedule.pop_first() else {
                break;
            };
            if let Some(tracked) = self.repos.get_mut(&repo_id) {
                tracked.due = None;
                self.start(&repo_id, Vec::new());
            }
        }
    }

    fn schedule_at(&mut self, repo_id: &RepoId, at: Instant) {
        let Some(tracked) = self.repos.get_mut(repo_id) else {
            return;
        };
        if let Some(old) = tracked.due.replace(at) {
            self.schedule.remove(&(old, repo_id.clone()));
        }
        self.schedule.insert((at, repo_id.clone()));
    }

    /// Start a poll of a tracked repository that has none in flight.
    fn start(&mut self, repo_id: &RepoId, waiters: Vec<Reply>) {
        let Some(tracked) = self.repos.get_mut(repo_id) else {
            for w in waiters {
                let _ = w.send(Err(PollError::NotTracked(repo_id.clone())));
            }
            return;
        };
        if let Some(due) = tracked.due.take() {
            self.schedule.remove(&(due, repo_id.clone()));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let known_pds = tracked.locator.pds.clone().or_else(|| {
            tracked
                .resolved_pds
                .as_ref()
                .filter(|(_, at)| at.elapsed() < PDS_CACHE_TTL)
                .map(|(pds, _)| pds.clone())
        });
        let task = poll_once(
            self.client.clone(),
            self.settings.plc_directory.clone(),
            tracked.locator.clone(),
            repo_id.clone(),
            known_pds,
            generation,
        );
        let abort = self.polls.spawn(task);
        self.task_repos
            .insert(abort.id(), (repo_id.clone(), generation));
        tracked.in_flight = Some(InFlight {
            generation,
            abort,
            waiters,
        });
    }

    fn handle_joined(&mut self, joined: Result<(TaskId, Done), tokio::task::JoinError>) {
        match joined {
            Ok((id, done)) => {
                self.task_repos.remove(&id);
                self.handle_done(done);
            }
            Err(e) => {
                let lost = self.task_repos.remove(&e.id());
                if e.is_cancelled() {
                    return;
                }
                error!(error = %e, "a record poll crashed");
                let Some((repo_id, generation)) = lost else {
                    return;
                };
                let Some(tracked) = self.repos.get_mut(&repo_id) else {
                    return;
                };
                if tracked.in_flight.as_ref().map(|f| f.generation) != Some(generation) {
                    return;
                }
                tracked.in_flight = None;
                tracked.failures = tracked.failures.saturating_add(1);
                self.reschedule(&repo_id, None);
            }
        }
    }

    fn handle_done(&mut self, done: Done) {
        let Done {
            repo_id,
            generation,
            pds,
            resolved,
            result,
        } = done;
        let Some(tracked) = self.repos.get_mut(&repo_id) else {
            return;
        };
        if tracked.in_flight.as_ref().map(|f| f.generation) != Some(generation) {
            return;
        }
        let Some(flight) = tracked.in_flight.take() else {
            return;
        };
        let pds_text = pds.as_deref().unwrap_or("-");
        match &result {
            Ok(record) => {
                if tracked.failures > 0 {
                    info!(repo = %repo_id, pds = %pds_text, failures = tracked.failures, "record poll recovered");
                }
                tracked.failures = 0;
                if resolved && let Some(pds) = &pds {
                    tracked.resolved_pds = Some((pds.clone(), Instant::now()));
                }
                debug!(repo = %repo_id, pds = %pds_text, manifest = ?record.manifest, "record polled");
            }
            Err(e) => {
                tracked.failures = tracked.failures.saturating_add(1);
                tracked.resolved_pds = None;
                warn!(repo = %repo_id, pds = %pds_text, error = %e, failures = tracked.failures, "polling the record failed");
            }
        }
        for w in flight.waiters {
            let _ = w.send(result.clone().map_err(PollError::Atproto));
        }
        let queued = std::mem::take(&mut tracked.queued);
        let retry_after = result.as_ref().err().and_then(AtprotoError::retry_after);
        self.report(PollOutcome {
            repo_id: repo_id.clone(),
            result,
        });
        if queued.is_empty() {
            self.reschedule(&repo_id, retry_after);
        } else {
            self.start(&repo_id, queued);
        }
    }

    /// Schedule the next poll: one interval, backing off after failures,
    /// and never before a rate-limiting PDS said (`retry_after`).
    fn reschedule(&mut self, repo_id: &RepoId, retry_after: Option<Duration>) {
        let Some(tracked) = self.repos.get(repo_id) else {
            return;
        };
        let delay = next_delay(
            self.settings.interval,
            self.settings.jitter,
            tracked.failures,
            self.settings.max_backoff,
            rand::random::<f64>(),
        )
        .max(retry_after.unwrap_or_default());
        self.schedule_at(repo_id, Instant::now() + delay);
    }

    /// Queue an outcome for the owner; an older undelivered outcome of the
    /// same repository is replaced, so the queue stays bounded.
    fn report(&mut self, outcome: PollOutcome) {
        match self
            .undelivered
            .iter_mut()
            .find(|o| o.repo_id == outcome.repo_id)
        {
            Some(old) => *old = outcome,
            None => self.undelivered.push_back(outcome),
        }
    }
}

async fn poll_once(
    client: XrpcClient,
    plc_directory: String,
    locator: Locator,
    repo_id: RepoId,
    known_pds: Option<String>,
    generation: u64,
) -> Done {
    let done = |pds: Option<String>, resolved: bool, result| Done {
        repo_id: repo_id.clone(),
        generation,
        pds,
        resolved,
        result,
    };
    if let Err(e) = check_locator(&locator, &repo_id) {
        return done(None, false, Err(e));
    }
    let (pds, resolved) = match known_pds {
        Some(pds) => (pds, false),
        None => match client.resolve_pds(&plc_directory, &locator.did).await {
            Ok(pds) => (pds, true),
            Err(e) => return done(None, false, Err(e)),
        },
    };
    let result = fetch_repo_record_at(&client, &pds, &locator, &repo_id).await;
    done(Some(pds), resolved, result)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn success_waits_one_interval_with_jitter() {
        let max = S(3600);
        assert_eq!(next_delay(S(300), 0.0, 0, max, 0.9), S(300));
        assert_eq!(next_delay(S(300), 0.1, 0, max, 0.5), S(300));
        let low = next_delay(S(300), 0.1, 0, max, 0.0);
        let high = next_delay(S(300), 0.1, 0, max, 0.999_999);
        assert!((S(269)..=S(271)).contains(&low), "{low:?}");
        assert!((S(329)..=S(331)).contains(&high), "{high:?}");
        for i in 0..100 {
            let d = next_delay(S(300), 0.1, 0, max, f64::from(i) / 100.0);
            assert!(d >= S(270) && d <= S(330), "{d:?}");
        }
    }

    #[test]
    fn never_below_half_the_wait() {
        let d = next_delay(S(10), 1.0, 0, S(3600), 0.0);
        assert_eq!(d, S(5));
        let d = next_delay(Duration::from_millis(200), 1.0, 0, S(10), 0.0);
        assert_eq!(d, Duration::from_millis(100));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let max = S(3600);
        assert_eq!(next_delay(S(300), 0.0, 1, max, 0.5), S(600));
        assert_eq!(next_delay(S(300), 0.0, 2, max, 0.5), S(1200));
        assert_eq!(next_delay(S(300), 0.0, 3, max, 0.5), S(2400));
        assert_eq!(next_delay(S(300), 0.0, 4, max, 0.5), S(3600));
        assert_eq!(next_delay(S(300), 0.0, 40, max, 0.5), S(3600));
        assert_eq!(next_delay(S(300), 0.0, u32::MAX, max, 0.5), S(3600));
        let jittered = next_delay(S(300), 0.1, 10, max, 0.0);
        assert!((S(3239)..=S(3241)).contains(&jittered), "{jittered:?}");
    }

    #[test]
    fn only_record_not_found_counts_as_deleted() {
        let url = || "http://pds/xrpc/com.atproto.repo.getRecord".to_string();
        let kind = |e: AtprotoError| match classify(Err(e)) {
            RecordPoll::Found(_) => "found",
            RecordPoll::NotFound(_) => "not found",
            RecordPoll::Unreachable(_) => "unreachable",
            RecordPoll::Invalid(_) => "invalid",
        };
        assert_eq!(
            kind(AtprotoError::NotFound {
                pds: "http://pds".into(),
                uri: "at://did:plc:a/app.knot.repo/b".into(),
            }),
            "not found"
        );
        for status in [400, 404, 500, 502] {
            let e = AtprotoError::Status {
                url: url(),
                status,
                error: Some("RepoNotFound".into()),
                message: None,
            };
            assert_eq!(kind(e), "unreachable", "HTTP {status}");
        }
        assert_eq!(kind(AtprotoError::Timeout { url: url() }), "unreachable");
        assert_eq!(
            kind(AtprotoError::RateLimited {
                url: url(),
                retry_after: None
            }),
            "unreachable"
        );
        assert_eq!(
            kind(AtprotoError::Malformed {
                url: url(),
                message: "x".into()
            }),
            "invalid"
        );
        assert_eq!(
            kind(AtprotoError::Record(crate::record::RecordError::Malformed(
                "x".into()
            ))),
            "invalid"
        );
        let record = RepoRecord::empty(RepoId::parse("did:plc:a/b").unwrap());
        assert_eq!(classify(Ok(record.clone())), RecordPoll::Found(record));
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let huge = Duration::MAX;
        assert_eq!(next_delay(huge, 0.0, 0, huge, 0.5), huge);
        let _ = next_delay(huge, 1.0, 5, huge, 0.999);
        let _ = next_delay(huge, 1.0, u32::MAX, huge, 0.0);
        assert_eq!(next_delay(S(300), f64::NAN, 0, S(10), f64::NAN), S(300));
        assert_eq!(next_delay(S(300), 5.0, 0, S(10), 2.0), S(600));
        assert_eq!(next_delay(S(300), -1.0, 0, S(10), -1.0), S(300));
        // A cap below the interval never polls a failing repository more often.
        assert_eq!(next_delay(S(300), 0.0, 3, S(10), 0.5), S(300));
        assert_eq!(
            next_delay(Duration::ZERO, 0.5, 3, S(10), 0.0),
            Duration::ZERO
        );
    }
}
