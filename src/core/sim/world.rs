//! The world: the virtual clock, the event queue, the nodes and the
//! scenario's schedule (publishes, faults, the end of the active phase and
//! the liveness check).

use super::model::*;
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    time::{Duration, Instant},
};

use iroh::{EndpointId, SecretKey};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    core::{Event, TimerKey},
    repo_id::RepoId,
};

impl World {
    /// A world for `scenario`, every choice drawn from `seed`.
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        let mut world = Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            t0: Instant::now(),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            nodes: Vec::new(),
            ids: BTreeMap::new(),
            repos: Vec::new(),
            net: Net::default(),
            content: Content::default(),
            pds: Pds::default(),
            trace: Trace::default(),
            checks: Checks::default(),
            owner_faults: Default::default(),
            outcome: Outcome::default(),
            active: true,
            failure: None,
            scenario,
        };
        world.populate();
        world
    }

    /// Wall-clock milliseconds now.
    pub fn unix_ms(&self) -> u64 {
        T0_MS + self.now.as_millis() as u64
    }

    /// The core's idea of now.
    pub fn core_now(&self) -> crate::core::Now {
        crate::core::Now {
            at: self.t0 + self.now,
            unix_ms: self.unix_ms(),
        }
    }

    /// Virtual time of an instant a core asked for.
    pub fn virtual_at(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }

    /// Schedule `ev` after `delay`.
    pub fn schedule(&mut self, delay: Duration, ev: Ev) {
        let id = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((self.now + delay, id)));
        self.events.insert(id, ev);
    }

    /// Schedule `ev` at virtual time `at` (now, if that has passed).
    pub fn schedule_at(&mut self, at: Duration, ev: Ev) {
        let delay = at.saturating_sub(self.now);
        self.schedule(delay, ev);
    }

    /// A random duration in `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        Duration::from_micros(
            self.rng
                .random_range(lo.as_micros() as u64..hi.as_micros() as u64),
        )
    }

    /// An exponentially distributed wait with mean `mean`.
    pub fn exponential(&mut self, mean: Duration) -> Duration {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        mean.mul_f64(-u.ln()).min(mean * 20)
    }

    /// A fresh key from the RNG.
    pub fn fresh_key(&mut self) -> SecretKey {
        SecretKey::from_bytes(&self.rng.random())
    }

    /// Note a step in the trace.
    pub fn note(&mut self, line: impl FnOnce() -> String) {
        let now = self.now;
        self.trace.push(now, line());
    }

    /// Stop the run with an invariant broken.
    pub fn fail(&mut self, message: String) {
        if self.failure.is_none() {
            self.failure = Some(Box::new(Failure {
                seed: self.seed,
                message,
                trace: self.trace.tail(),
                at: self.now,
            }));
        }
    }

    /// Build the nodes, repositories, records and the schedule.
    fn populate(&mut self) {
        let s = self.scenario.clone();
        for owner in 0..s.owners {
            let did = format!("did:plc:owner{owner}");
            self.pds.add_owner(&did);
            let key = self.fresh_key();
            self.add_node(key, Role::Author { did: did.clone() });
            for r in 0..s.repos_per_owner {
                let id = RepoId::parse(&format!("{did}/repo{r}")).expect("valid repo id");
                self.repos.push(SimRepo {
                    id: id.clone(),
                    owner,
                });
            }
        }
        for _ in 0..s.seeders {
            let key = self.fresh_key();
            self.add_node(key, Role::Seeder);
        }
        for h in 0..s.homes {
            let key = self.fresh_key();
            let role = if s.seeders > 0 && h % 2 == 0 {
                Role::HomeTrustingSeeder {
                    seeder: s.owners + h % s.seeders,
                }
            } else {
                Role::HomeTrustingRecord
            };
            self.add_node(key, role);
        }
        for adversary in s.adversaries.clone() {
            let key = self.fresh_key();
            let index = self.add_node(key, Role::Stranger);
            self.nodes[index].stranger = Some(Stranger::new(adversary));
            self.setup_adversary(index, adversary);
        }
        // Every honest node starts, then is told what to track.
        for n in 0..self.nodes.len() {
            if self.nodes[n].is_honest() {
                self.start_node(n);
            }
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].is_honest() {
                self.configure(n);
            } else {
                let first = self.between(Duration::from_secs(1), Duration::from_secs(30));
                self.schedule(first, Ev::Adversary { node: n });
            }
        }
        for r in 0..self.repos.len() {
            let author = self.repos[r].owner;
            let repo = self.repos[r].id.clone();
            let first = self.between(Duration::from_secs(1), Duration::from_secs(20));
            self.schedule(first, Ev::Publish { node: author, repo });
        }
        let f = s.faults.clone();
        if let Some(mean) = f.crash_every {
            let at = self.exponential(mean);
            self.schedule(at, Ev::Crash { node: usize::MAX });
        }
        if let Some(mean) = f.partition_every {
            let at = self.exponential(mean);
            self.schedule(at, Ev::Partition);
        }
        if let Some(mean) = f.pds_outage_every {
            let at = self.exponential(mean);
            self.schedule(at, Ev::PdsDown { owner: usize::MAX });
        }
        if let Some(mean) = f.disk_full_every {
            let at = self.exponential(mean);
            self.schedule(at, Ev::DiskFull { node: usize::MAX });
        }
        self.schedule(s.active, Ev::EndActive);
        self.schedule(s.active + s.settle, Ev::Settled);
    }

    fn add_node(&mut self, key: SecretKey, role: Role) -> usize {
        let index = self.nodes.len();
        self.ids.insert(key.public(), index);
        self.nodes.push(SimNode::new(key, role));
        index
    }

    /// Run to the end of the scenario, or to the first broken invariant.
    pub fn run(mut self) -> Result<Outcome, Box<Failure>> {
        while let Some(Reverse((at, id))) = self.queue.pop() {
            let ev = self.events.remove(&id).expect("scheduled event");
            self.now = at;
            let stop = matches!(ev, Ev::Settled);
            self.step(ev);
            if self.failure.is_none() && self.trace.steps() > MAX_STEPS {
                self.fail(format!(
                    "runaway: more than {MAX_STEPS} steps (a run takes about 7,000), so some work never ends"
                ));
            }
            if let Some(failure) = self.failure.take() {
                return Err(failure);
            }
            if stop {
                break;
            }
        }
        self.check_liveness();
        self.check_retired_removed();
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        self.outcome.steps = self.trace.steps();
        self.outcome.digest = self.trace.digest();
        self.outcome.simulated = self.now;
        self.outcome.node_hours = self.nodes.iter().filter(|n| n.is_honest()).count() as f64
            * self.now.as_secs_f64()
            / 3600.0;
        Ok(self.outcome)
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Core { node, life, event } => {
                if self.nodes[node].is_live(life) {
                    self.deliver(node, event);
                }
            }
            Ev::Message { node, msg } => self.receive(node, msg),
            Ev::Timer { node, life, key } => self.fire_timer(node, life, key),
            Ev::Job {
                node,
                life,
                repo,
                job,
                result,
                faults,
            } => self.job_done(node, life, repo, job, result, faults),
            Ev::Flush { node, life } => {
                if self.nodes[node].is_live(life) {
                    self.nodes[node].flush();
                }
            }
            Ev::Poll {
                node,
                life,
                repo,
                locator,
                read,
            } => self.poll(node, life, repo, locator, read),
            Ev::List {
                node,
                life,
                did,
                read,
            } => self.list(node, life, did, read),
            Ev::Publish { node, repo } => self.publish(node, repo),
            Ev::Crash { node } => self.crash_fault(node),
            Ev::Restart { node } => self.restart(node),
            Ev::Partition => self.partition(),
            Ev::Heal { pairs } => self.heal(pairs),
            Ev::PdsDown { owner } => self.pds_down(owner),
            Ev::PdsUp { owner } => {
                let did = format!("did:plc:owner{owner}");
                self.note(|| format!("pds of {did} is back"));
                self.pds.set_down(&did, false);
            }
            Ev::DiskFull { node } => self.disk_full(node),
            Ev::DiskOk { node } => {
                self.note(|| format!("n{node}'s disk has room again"));
                self.nodes[node].disk_full = false;
            }
            Ev::Adversary { node } => self.adversary_step(node),
            Ev::DeleteRecord { repo } => self.delete_record(repo),
            Ev::Admin { node, command } => {
                if self.nodes[node].up {
                    self.command(node, command);
                }
            }
            Ev::EndActive => {
                self.note(|| "faults stop".into());
                self.active = false;
                for n in &mut self.nodes {
                    n.disk_full = false;
                }
                self.heal_everything();
            }
            Ev::Settled => {}
        }
    }

    /// Hand `event` to `node`'s core, execute the effects and check.
    pub fn deliver(&mut self, node: usize, event: Event) {
        let now = self.core_now();
        let summary = super::trace::describe_event(&event);
        self.note(|| format!("n{node} <- {summary}"));
        let Some(core) = self.nodes[node].core.as_mut() else {
            return;
        };
        let effects = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            core.handle(event, now)
        })) {
            Ok(effects) => effects,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return self.fail(format!("n{node}'s core panicked: {what}"));
            }
        };
        self.execute(node, effects);
        self.check_node(node);
    }

    fn fire_timer(&mut self, node: usize, life: u32, key: TimerKey) {
        if !self.nodes[node].is_live(life) {
            return;
        }
        let due = self.nodes[node].timers.get(&key).copied();
        if due != Some(self.now) {
            return; // replaced by a later setting
        }
        self.nodes[node].timers.remove(&key);
        self.deliver(node, Event::Timer(key));
    }

    /// Every honest node holds the newest legitimate state of every
    /// repository it follows.
    fn check_liveness(&mut self) {
        let mut missing = Vec::new();
        for repo in self.repos.clone() {
            let Some(newest) = self.content.newest_legit(&repo.id) else {
                continue;
            };
            for n in 0..self.nodes.len() {
                if !self.nodes[n].is_honest() || !self.nodes[n].follows(&repo.id) {
                    continue;
                }
                // A follower whose only trust was the record has none once
                // the owner deleted it: a home that trusts the record, and
                // any node the extreme operator made track the repository
                // with a bare `sync` (an author, say).
                let record_only = self.nodes[n].trusts_only_the_record(&repo.id);
                let deleted = !self.still_published(&repo.id);
                if deleted && record_only {
                    continue;
                }
                // Nor one whose owner's record never named a state: the
                // author writes it back only once its own database holds
                // the state, and an author whose disk stayed full until it
                // crashed never did.
                let named = self
                    .pds
                    .owners
                    .get(repo.id.did())
                    .and_then(|p| p.records.get(repo.id.name()))
                    .is_some_and(|r| r.manifest_hash().is_some());
                if !named && record_only {
                    continue;
                }
                // A repository first tracked after the faults stopped (the
                // extreme operator syncs any repository, up to the end) has
                // not had the settle bound to catch up.
                let settle_start =
                    (self.unix_ms() / 1000).saturating_sub(self.scenario.settle.as_secs());
                let tracked_late = self.nodes[n]
                    .core
                    .as_ref()
                    .and_then(|c| c.repos.get(&repo.id))
                    .is_some_and(|r| r.config.added_at > settle_start);
                if tracked_late {
                    continue;
                }
                let held = self.nodes[n].held_manifest(&repo.id);
                if held != Some(newest) {
                    missing.push(format!(
                        "n{n} ({}) holds {} of {}, newest is {}",
                        self.nodes[n].role.name(),
                        held.map_or("nothing".into(), |h| short(&h)),
                        repo.id,
                        short(&newest)
                    ));
                }
            }
        }
        if !missing.is_empty() {
            let bound = self.scenario.settle;
            self.fail(format!(
                "liveness: {:.0} s after the faults stopped, not every follower holds its owner's newest state: {}",
                bound.as_secs_f64(),
                missing.join("; ")
            ));
        }
    }

    /// Every honest node has removed the retired repositories whose grace
    /// period ended (with a minute's margin) before the end of the run.
    fn check_retired_removed(&mut self) {
        let now = self.unix_ms() / 1000;
        let mut kept = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let Some(core) = node.core.as_ref().filter(|_| node.is_honest() && node.up) else {
                continue;
            };
            for (repo_id, repo) in &core.repos {
                let Some(deleted) = repo.config.record_deleted_at.filter(|_| repo.retired()) else {
                    continue;
                };
                if deleted + RETIRED_GRACE.as_secs() + 60 < now {
                    kept.push(format!(
                        "n{n} keeps {repo_id}, retired {} s ago",
                        now.saturating_sub(deleted)
                    ));
                }
            }
        }
        if !kept.is_empty() {
            self.fail(format!(
                "retired repositories past their grace period of {} s are still kept: {}",
                RETIRED_GRACE.as_secs(),
                kept.join("; ")
            ));
        }
    }

    /// A node index from an endpoint id, if it is one of the world's.
    pub fn index_of(&self, id: &EndpointId) -> Option<usize> {
        self.ids.get(id).copied()
    }
}
