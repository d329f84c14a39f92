//! When each mirror fetches from its upstream: the sans-IO schedule.
//!
//! Events in (a mirror added or removed, a fetch asked for now, a fetch
//! finished with its outcome), decisions out ([`Planner::start_due`] names
//! the mirrors to fetch now; [`Planner::next_wakeup`] says when to ask
//! again). Time is a [`Duration`] since an origin the caller chooses, so
//! every rule is tested with an injected clock and a seeded random source.
//!
//! The rules:
//! 1. A mirror fetches when it is added, then every `interval`, jittered by
//!    up to `jitter` of it either way so that many mirrors added together
//!    do not fetch together for ever.
//! 2. A failure retries after `failure_base · 2^(failures-1)` (jittered),
//!    at most `max_backoff`; the first success ends the backoff.
//! 3. An upstream that answered "too many requests" or "unavailable" with a
//!    `Retry-After` holds back every mirror on that host until then (at most
//!    [`MAX_RETRY_AFTER`], whatever it asked for).
//! 4. At most `per_host` fetches run against one host and `max_running`
//!    against all; the mirrors due longest go first.
//! 5. A fetch asked for now (an operator's sync, a push event) runs as soon
//!    as the limits allow, even while the mirror backs off; an operator's
//!    also while its host is held by rule 3, a push event's no sooner than
//!    [`MIN_EVENT_GAP`] after the mirror's last fetch ended. Never two
//!    fetches of one mirror at once (a request during a fetch runs right
//!    after it).
//!
//! Nothing here survives a restart: every mirror is due once the node starts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::repo_id::RepoId;

/// The least time between the end of a mirror's fetch and one a push event
/// asks for: an upstream that floods events cannot keep a fetch running.
pub const MIN_EVENT_GAP: Duration = Duration::from_secs(2);

/// The longest an upstream's `Retry-After` holds its host back, whatever
/// it asked for: a stranger's server cannot stop a mirror for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 60 * 60);

/// The schedule's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSettings {
    /// Time between two fetches of a mirror that worked.
    pub interval: Duration,
    /// Fraction of a wait added or taken away at random (0 to 0.5).
    pub jitter: f64,
    /// The wait after a first failure; it doubles with each further one.
    pub failure_base: Duration,
    /// The longest wait after failures.
    pub max_backoff: Duration,
    /// Most fetches running against one host.
    pub per_host: usize,
    /// Most fetches running at all.
    pub max_running: usize,
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            interval: Duration::from_secs(300),
            jitter: 0.1,
            failure_base: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            per_host: 2,
            max_running: 4,
        }
    }
}

/// How a fetch ended, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The upstream answered (changed or not).
    Succeeded,
    /// It failed; `retry_after` is what the upstream asked for, if anything.
    Failed {
        /// The host's own `Retry-After`.
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    host: String,
    due: Duration,
    failures: u32,
    running: bool,
    /// Asked for now while it ran: due again as soon as it ends.
    again: bool,
    /// Asked for now by an operator: runs even while its host is held.
    forced: bool,
    /// When its last fetch ended.
    last_end: Option<Duration>,
}

/// The schedule of every mirror.
#[derive(Debug)]
pub struct Planner {
    settings: PlanSettings,
    mirrors: BTreeMap<RepoId, Entry>,
    running_per_host: HashMap<String, usize>,
    held_hosts: HashMap<String, Duration>,
    running: usize,
    rng: StdRng,
}

impl Planner {
    /// An empty schedule; `seed` drives the jitter.
    pub fn new(settings: PlanSettings, seed: u64) -> Self {
        Planner {
            settings,
            mirrors: BTreeMap::new(),
            running_per_host: HashMap::new(),
            held_hosts: HashMap::new(),
            running: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Schedule a mirror of an upstream on `host`, due at once. Adding one
    /// already scheduled keeps its place (and its running fetch).
    pub fn add(&mut self, repo_id: RepoId, host: String, now: Duration) {
        self.mirrors.entry(repo_id).or_insert(Entry {
            host,
            due: now,
            failures: 0,
            running: false,
            again: false,
            forced: false,
            last_end: None,
        });
    }

    /// Forget a mirror. A fetch of it still running is no longer counted
    /// once it ends ([`Planner::finish`] ignores it).
    pub fn remove(&mut self, repo_id: &RepoId) {
        if let Some(entry) = self.mirrors.remove(repo_id)
            && entry.running
        {
            self.release(&entry.host);
        }
    }

    /// Move a mirror to another host (its upstream moved there), keeping
    /// its schedule and failures. False when it is not scheduled or a fetch
    /// of it is running (counted against the old host until it ends).
    pub fn rehost(&mut self, repo_id: &RepoId, host: String) -> bool {
        match self.mirrors.get_mut(repo_id) {
            Some(entry) if !entry.running => {
                entry.host = host;
                true
            }
            _ => false,
        }
    }

    /// Whether a mirror is scheduled.
    pub fn contains(&self, repo_id: &RepoId) -> bool {
        self.mirrors.contains_key(repo_id)
    }

    /// Fetch a mirror as soon as the limits allow (rule 5); `forced` (an
    /// operator asked) also overrides a host's `Retry-After`. False when it
    /// is not scheduled.
    pub fn fetch_now(&mut self, repo_id: &RepoId, forced: bool, now: Duration) -> bool {
        let Some(entry) = self.mirrors.get_mut(repo_id) else {
            return false;
        };
        entry.forced |= forced;
        if entry.running {
            entry.again = true;
        } else {
            let earliest = match (forced, entry.last_end) {
                (false, Some(end)) => now.max(end.saturating_add(MIN_EVENT_GAP)),
                _ => now,
            };
            entry.due = entry.due.min(earliest);
        }
        true
    }

    /// The mirrors to fetch now, marked running; the longest due first.
    pub fn start_due(&mut self, now: Duration) -> Vec<RepoId> {
        self.held_hosts.retain(|_, until| *until > now);
        let mut due: Vec<(Duration, RepoId)> = self
            .mirrors
            .iter()
            .filter(|(_, e)| {
                !e.running && e.due <= now && (e.forced || !self.held_hosts.contains_key(&e.host))
            })
            .map(|(id, e)| (e.due, id.clone()))
            .collect();
        due.sort();
        let mut started = Vec::new();
        for (_, repo_id) in due {
            if self.running >= self.settings.max_running {
                break;
            }
            let entry = self.mirrors.get_mut(&repo_id).expect("listed above");
            let on_host = self.running_per_host.entry(entry.host.clone()).or_default();
            if *on_host >= self.settings.per_host {
                continue;
            }
            *on_host += 1;
            self.running += 1;
            entry.running = true;
            entry.forced = false;
            started.push(repo_id);
        }
        started
    }

    /// A fetch ended: schedule the mirror's next one (rules 1 to 3).
    pub fn finish(&mut self, repo_id: &RepoId, finished: Finished, now: Duration) {
        let Some(entry) = self.mirrors.get_mut(repo_id) else {
            return;
        };
        if !entry.running {
            return;
        }
        entry.running = false;
        let host = entry.host.clone();
        let wait = match finished {
            Finished::Succeeded => {
                entry.failures = 0;
                self.settings.interval
            }
            Finished::Failed { retry_after } => {
                entry.failures = entry.failures.saturating_add(1);
                let doublings = entry.failures.saturating_sub(1).min(30);
                let backoff = self
                    .settings
                    .failure_base
                    .saturating_mul(1u32 << doublings)
                    .min(self.settings.max_backoff);
                if let Some(asked) = retry_after {
                    let until = now.saturating_add(asked.min(MAX_RETRY_AFTER));
                    let held = self.held_hosts.entry(host.clone()).or_insert(until);
                    *held = (*held).max(until);
                }
                backoff.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
            }
        };
        let jittered = jitter(&mut self.rng, wait, self.settings.jitter);
        let entry = self.mirrors.get_mut(repo_id).expect("checked above");
        entry.last_end = Some(now);
        entry.due = match (std::mem::take(&mut entry.again), entry.forced) {
            (true, true) => now,
            (true, false) => now.saturating_add(MIN_EVENT_GAP.min(jittered)),
            (false, _) => now.saturating_add(jittered),
        };
        self.release(&host);
    }

    /// When [`Planner::start_due`] may next start something (none: nothing
    /// scheduled, or everything running).
    pub fn next_wakeup(&self) -> Option<Duration> {
        self.mirrors
            .values()
            .filter(|e| !e.running)
            .map(|e| {
                let held = match e.forced {
                    true => Duration::ZERO,
                    false => self.held_hosts.get(&e.host).copied().unwrap_or_default(),
                };
                e.due.max(held)
            })
            .min()
    }

    /// When a mirror is next due and how many failures in a row it has.
    pub fn describe(&self, repo_id: &RepoId) -> Option<(Duration, u32, bool)> {
        self.mirrors.get(repo_id).map(|e| {
            let held = self.held_hosts.get(&e.host).copied().unwrap_or_default();
            (e.due.max(held), e.failures, e.running)
        })
    }

    fn release(&mut self, host: &str) {
        self.running = self.running.saturating_sub(1);
        if let Some(n) = self.running_per_host.get_mut(host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running_per_host.remove(host);
            }
        }
    }
}

/// `wait` changed at random by up to `fraction` of it either way.
fn jitter(rng: &mut StdRng, wait: Duration, fraction: f64) -> Duration {
    let fraction = fraction.clamp(0.0, 0.5);
    if fraction == 0.0 || wait.is_zero() {
        return wait;
    }
    let factor = rng.random_range(1.0 - fraction..=1.0 + fraction);
    wait.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> RepoId {
        RepoId::parse(&format!("did:web:example.com/{name}")).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn exact() -> PlanSettings {
        PlanSettings {
            jitter: 0.0,
            ..PlanSettings::default()
        }
    }

    #[test]
    fn a_new_mirror_fetches_at_once_then_every_interval() {
        let mut plan = Planner::new(exact(), 1);
        plan.add(id("a"), "h".into(), secs(10));
        assert_eq!(plan.next_wakeup(), Some(secs(10)));
        assert_eq!(plan.start_due(secs(10)), vec![id("a")]);
        assert_eq!(plan.next_wakeup(), None, "running: nothing to wake for");
        assert!(plan.start_due(secs(11)).is_empty(), "never two at once");
        plan.finish(&id("a"), Finished::Succeeded, secs(12));
        assert_eq!(plan.next_wakeup(), Some(secs(312)));
        assert!(plan.start_due(secs(311)).is_empty());
        assert_eq!(plan.start_due(secs(312)), vec![id("a")]);
    }

    #[test]
    fn a_mirror_moved_to_another_host_leaves_the_old_hosts_limits_and_retry_after() {
        let settings = PlanSettings {
            per_host: 1,
            ..exact()
        };
        let mut plan = Planner::new(settings, 1);
        plan.add(id("a"), "old".into(), secs(0));
        plan.add(id("b"), "old".into(), secs(0));
        assert_eq!(plan.start_due(secs(0)).len(), 1, "one per host");
        let started = plan.start_due(secs(0));
        assert!(started.is_empty());
        let running = if plan.describe(&id("a")).unwrap().2 {
            id("a")
        } else {
            id("b")
        };
        let waiting = if running == id("a") { id("b") } else { id("a") };
        assert!(!plan.rehost(&running, "new".into()), "not while it runs");
        plan.finish(
            &running,
            Finished::Failed {
                retry_after: Some(secs(3600)),
            },
            secs(1),
        );
        assert!(
            plan.start_due(secs(2)).is_empty(),
            "the old host asked to wait"
        );
        assert!(plan.rehost(&waiting, "new".into()));
        assert!(plan.fetch_now(&waiting, false, secs(2)));
        assert_eq!(plan.start_due(secs(3)), vec![waiting]);
        assert!(!plan.rehost(&id("gone"), "new".into()));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_spreads_mirrors() {
        let mut plan = Planner::new(PlanSettings::default(), 7);
        for i in 0..50 {
            plan.add(id(&format!("r{i}")), format!("h{i}"), secs(0));
        }
        let mut dues = Vec::new();
        for _ in 0..13 {
            for started in plan.start_due(secs(0)) {
                plan.finish(&started, Finished::Succeeded, secs(0));
                dues.push(plan.describe(&started).unwrap().0);
            }
        }
        assert_eq!(dues.len(), 50);
        assert!(dues.iter().all(|d| *d >= secs(270) && *d <= secs(330)));
        dues.sort();
        dues.dedup();
        assert!(dues.len() > 40, "mirrors added together spread out");
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_cap_and_a_success_resets() {
        let mut plan = Planner::new(exact(), 1);
        plan.add(id("a"), "h".into(), secs(0));
        let mut now = secs(0);
        let mut waits = Vec::new();
        for _ in 0..10 {
            assert_eq!(plan.start_due(now), vec![id("a")]);
            plan.finish(&id("a"), Finished::Failed { retry_after: None }, now);
            let due = plan.next_wakeup().unwrap();
            waits.push((due - now).as_secs());
            now = due;
        }
        assert_eq!(
            waits,
            vec![30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
        );
        plan.start_due(now);
        plan.finish(&id("a"), Finished::Succeeded, now);
        assert_eq!(plan.next_wakeup(), Some(now + secs(300)));
        assert_eq!(plan.describe(&id("a")).unwrap().1, 0);
    }

    #[test]
    fn retry_after_holds_back_the_whole_host_but_only_up_to_the_cap() {
        let mut plan = Planner::new(exact(), 1);
        plan.add(id("a"), "busy".into(), secs(0));
        plan.add(id("b"), "busy".into(), secs(0));
        plan.add(id("c"), "other".into(), secs(0));
        assert_eq!(plan.start_due(secs(0)).len(), 3);
        plan.finish(
            &id("a"),
            Finished::Failed {
                retry_after: Some(secs(900)),
            },
            secs(1),
        );
        plan.finish(&id("b"), Finished::Succeeded, secs(1));
        plan.finish(&id("c"), Finished::Succeeded, secs(1));
        // b is due at 301, but its host is held until 901; c is not.
        assert_eq!(plan.start_due(secs(301)), vec![id("c")]);
        assert!(plan.start_due(secs(900)).is_empty());
        assert_eq!(
            plan.start_due(secs(901)),
            vec![id("b"), id("a")],
            "b was due first"
        );

        // A hostile Retry-After of a year holds the host six hours at most.
        plan.finish(
            &id("a"),
            Finished::Failed {
                retry_after: Some(secs(365 * 86400)),
            },
            secs(1000),
        );
        plan.finish(&id("b"), Finished::Succeeded, secs(1000));
        assert_eq!(
            plan.describe(&id("a")).unwrap().0,
            secs(1000) + MAX_RETRY_AFTER
        );
        assert_eq!(
            plan.describe(&id("b")).unwrap().0,
            secs(1000) + MAX_RETRY_AFTER
        );
    }

    #[test]
    fn per_host_and_total_limits_hold_and_the_longest_due_goes_first() {
        let settings = PlanSettings {
            per_host: 2,
            max_running: 3,
            ..exact()
        };
        let mut plan = Planner::new(settings, 1);
        plan.add(id("h1-late"), "h1".into(), secs(5));
        plan.add(id("h1-a"), "h1".into(), secs(1));
        plan.add(id("h1-b"), "h1".into(), secs(2));
        plan.add(id("h2-a"), "h2".into(), secs(3));
        plan.add(id("h3-a"), "h3".into(), secs(4));
        assert_eq!(
            plan.start_due(secs(10)),
            vec![id("h1-a"), id("h1-b"), id("h2-a")]
        );
        plan.finish(&id("h1-a"), Finished::Succeeded, secs(11));
        assert_eq!(
            plan.start_due(secs(11)),
            vec![id("h3-a")],
            "h3-a was due before h1-late, and then the total is reached"
        );
        plan.finish(&id("h2-a"), Finished::Succeeded, secs(12));
        assert_eq!(plan.start_due(secs(12)), vec![id("h1-late")]);
    }

    #[test]
    fn fetch_now_runs_a_backing_off_mirror_and_queues_behind_a_running_one() {
        let mut plan = Planner::new(exact(), 1);
        plan.add(id("a"), "h".into(), secs(0));
        plan.start_due(secs(0));
        plan.finish(&id("a"), Finished::Failed { retry_after: None }, secs(0));
        assert!(plan.fetch_now(&id("a"), false, secs(5)));
        assert_eq!(plan.start_due(secs(5)), vec![id("a")]);
        assert!(plan.fetch_now(&id("a"), false, secs(6)));
        assert!(plan.start_due(secs(6)).is_empty());
        plan.finish(&id("a"), Finished::Succeeded, secs(7));
        assert!(
            plan.start_due(secs(8)).is_empty(),
            "an event's fetch keeps a gap"
        );
        assert_eq!(plan.start_due(secs(9)), vec![id("a")], "then runs next");
        plan.fetch_now(&id("a"), true, secs(10));
        plan.finish(&id("a"), Finished::Succeeded, secs(11));
        assert_eq!(
            plan.start_due(secs(11)),
            vec![id("a")],
            "an operator's runs at once"
        );
        assert!(!plan.fetch_now(&id("zz"), false, secs(7)));
    }

    #[test]
    fn only_an_operators_fetch_overrides_a_hosts_retry_after() {
        let mut plan = Planner::new(exact(), 1);
        plan.add(id("a"), "h".into(), secs(0));
        plan.start_due(secs(0));
        let asked = Finished::Failed {
            retry_after: Some(secs(600)),
        };
        plan.finish(&id("a"), asked, secs(0));
        plan.fetch_now(&id("a"), false, secs(1));
        assert!(plan.start_due(secs(1)).is_empty(), "a push event waits");
        assert_eq!(plan.next_wakeup(), Some(secs(600)));
        plan.fetch_now(&id("a"), true, secs(2));
        assert_eq!(plan.next_wakeup(), Some(secs(2)));
        assert_eq!(
            plan.start_due(secs(2)),
            vec![id("a")],
            "an operator does not"
        );
        plan.finish(&id("a"), asked, secs(3));
        assert!(plan.start_due(secs(4)).is_empty(), "and only once");
    }

    #[test]
    fn a_flood_of_push_events_fetches_at_most_once_per_gap() {
        let mut plan = Planner::new(exact(), 1);
        plan.add(id("a"), "h".into(), secs(0));
        let mut now = Duration::ZERO;
        let mut fetches = 0;
        while now < secs(60) {
            plan.fetch_now(&id("a"), false, now);
            for started in plan.start_due(now) {
                fetches += 1;
                plan.finish(
                    &started,
                    Finished::Succeeded,
                    now + Duration::from_millis(100),
                );
            }
            now += Duration::from_millis(50);
        }
        assert!(fetches <= 60 / 2 + 1, "{fetches} fetches in 60 s");
        assert!(fetches >= 60 / 3, "events still bring fetches: {fetches}");
    }

    #[test]
    fn removing_a_running_mirror_frees_its_slot_once() {
        let settings = PlanSettings {
            per_host: 1,
            ..exact()
        };
        let mut plan = Planner::new(settings, 1);
        plan.add(id("a"), "h".into(), secs(0));
        plan.add(id("b"), "h".into(), secs(1));
        assert_eq!(plan.start_due(secs(1)), vec![id("a")]);
        plan.remove(&id("a"));
        plan.finish(&id("a"), Finished::Succeeded, secs(2));
        assert_eq!(plan.start_due(secs(2)), vec![id("b")]);
        assert!(plan.start_due(secs(2)).is_empty());
        assert_eq!(plan.running, 1);
    }
}
