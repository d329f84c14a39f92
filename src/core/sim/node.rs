//! One simulated node: its role, its disk, its core, and what the world does
//! to it (start, crash, restart, a full disk, a publish, a record read).
//! Its effects are executed in [`super::execute`].

use super::model::*;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use iroh::SecretKey;
use iroh_blobs::Hash;

use crate::{
    api::PolicyRule,
    core::{Core, CoreCommand, Event, Policy, ReadId, RecordPoll, Settings, Write},
    record::PeerHint,
    repo_id::RepoId,
    state::{Bookkeeping, Locator, RepoRow},
};

impl Role {
    /// A short name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Author { .. } => "author",
            Role::Seeder => "seeder",
            Role::HomeTrustingSeeder { .. } => "home/seeder",
            Role::HomeTrustingRecord => "home/record",
            Role::Stranger => "stranger",
        }
    }
}

impl Disk {
    /// Apply one committed write.
    pub fn apply(&mut self, write: Write) {
        match write {
            Write::Config(c) => {
                let id = c.repo_id.clone();
                self.rows
                    .entry(id)
                    .and_modify(|row| row.config = c.clone())
                    .or_insert_with(|| RepoRow {
                        config: c,
                        record: None,
                        held: None,
                        bookkeeping: Bookkeeping::default(),
                    });
            }
            Write::Record(id, r) => {
                if let Some(row) = self.rows.get_mut(&id) {
                    row.record = r;
                }
            }
            Write::Held(id, h) => {
                if let Some(row) = self.rows.get_mut(&id) {
                    row.held = h.map(|h| *h);
                }
            }
            Write::Bookkeeping(id, b) => {
                if let Some(row) = self.rows.get_mut(&id) {
                    row.bookkeeping = b;
                }
            }
            Write::Remove(id) => {
                self.rows.remove(&id);
            }
            Write::Follow(f) => {
                self.follows.insert(f.did.clone(), f);
            }
            Write::Unfollow(did) => {
                self.follows.remove(&did);
            }
            Write::Policy(target, rule) => match rule {
                Some(rule) => {
                    self.policy.insert(target, rule);
                }
                None => {
                    self.policy.remove(&target);
                }
            },
        }
    }
}

impl SimNode {
    /// A node that has not started.
    pub fn new(key: SecretKey, role: Role) -> Self {
        Self {
            key,
            role,
            core: None,
            life: 0,
            up: false,
            disk: Disk::default(),
            pending: BTreeMap::new(),
            disk_full: false,
            flush_scheduled: false,
            timers: HashMap::new(),
            blobs: BTreeSet::new(),
            waiting: BTreeMap::new(),
            served: BTreeMap::new(),
            next_reply: 1,
            stranger: None,
        }
    }

    /// Whether the node runs a core.
    pub fn is_honest(&self) -> bool {
        self.role != Role::Stranger
    }

    /// Whether `life` is the incarnation running now.
    pub fn is_live(&self, life: u32) -> bool {
        self.up && self.life == life && self.core.is_some()
    }

    /// Commit lazy writes.
    pub fn flush(&mut self) {
        self.flush_scheduled = false;
        for (_, write) in std::mem::take(&mut self.pending) {
            self.disk.apply(write);
        }
    }

    /// Whether the node tracks `repo` (by its rows: what it follows).
    pub fn follows(&self, repo: &RepoId) -> bool {
        match &self.core {
            Some(core) => core.repos.contains_key(repo),
            None => self.disk.rows.contains_key(repo),
        }
    }

    /// Whether the node trusts no peer of `repo` but those its record
    /// names (no operator peers), by its core or its disk.
    pub fn trusts_only_the_record(&self, repo: &RepoId) -> bool {
        let config = match &self.core {
            Some(core) => core.repos.get(repo).map(|r| &r.config),
            None => self.disk.rows.get(repo).map(|row| &row.config),
        };
        config.is_some_and(|c| c.operator_peers.is_empty())
    }

    /// The manifest the node holds for `repo`, by its core or its disk.
    pub fn held_manifest(&self, repo: &RepoId) -> Option<Hash> {
        match &self.core {
            Some(core) => core
                .repos
                .get(repo)?
                .held
                .as_ref()
                .map(|h| h.manifest_hash()),
            None => self
                .disk
                .rows
                .get(repo)?
                .held
                .as_ref()
                .map(|h| h.manifest_hash()),
        }
    }

    /// The settings the node's core runs with.
    fn settings(&self, topic_idle: Option<std::time::Duration>) -> Settings {
        let mut settings = Settings::new("/sim/repos".into());
        settings.topic_idle = topic_idle;
        settings.write_back = matches!(self.role, Role::Author { .. });
        settings.max_total_bytes = Some(MAX_TOTAL_BYTES);
        settings.max_repos_per_identity = MAX_REPOS_PER_IDENTITY;
        // A week by default; short here so that runs see removals.
        settings.retired_grace = RETIRED_GRACE;
        settings
    }

    /// A hint for this node, as records and tickets carry it.
    pub fn hint(&self) -> PeerHint {
        PeerHint::new(self.key.public().to_string(), vec![], None)
    }
}

impl World {
    /// Start `node`'s core from its disk.
    pub fn start_node(&mut self, node: usize) {
        let now = self.core_now();
        let n = &mut self.nodes[node];
        n.life += 1;
        n.up = true;
        let mut core = Core::new(n.key.clone(), n.settings(self.scenario.topic_idle));
        let mut policy = Policy::default();
        for (target, rule) in &n.disk.policy {
            match rule {
                PolicyRule::Allow => policy.allow.insert(target.clone()),
                PolicyRule::Block => policy.block.insert(target.clone()),
                PolicyRule::Clear => false,
            };
        }
        core.set_policy(policy);
        let rows: Vec<RepoRow> = n.disk.rows.values().cloned().collect();
        let follows = n.disk.follows.values().cloned().collect();
        // What a failed commit kept from the disk is gone with the crash:
        // the node resumes from the disk, and its states are judged from
        // there on.
        let on_disk: Vec<(RepoId, u64, u64)> = rows
            .iter()
            .filter_map(|row| {
                let held = row.held.as_ref()?;
                let order = self.content.manifests.get(&held.manifest_hash())?.order;
                Some((row.config.repo_id.clone(), held.seq(), order))
            })
            .collect();
        self.checks.resume(node, on_disk);
        let n = &mut self.nodes[node];
        let effects = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let effects = core.load(rows, follows, now);
            (core, effects)
        })) {
            Ok((core, effects)) => {
                n.core = Some(core);
                effects
            }
            Err(_) => return self.fail(format!("n{node}'s core panicked while loading")),
        };
        self.note(|| format!("n{node} starts"));
        self.execute(node, effects);
        if let Role::Author { did } = self.nodes[node].role.clone() {
            let life = self.nodes[node].life;
            self.schedule(
                Duration::from_millis(50),
                Ev::Core {
                    node,
                    life,
                    event: Event::AccountResolved { did },
                },
            );
        }
    }

    /// Tell a freshly started honest node what to track.
    pub fn configure(&mut self, node: usize) {
        let role = self.nodes[node].role.clone();
        for repo in self.repos.clone() {
            let author = self.nodes[repo.owner].hint();
            let locator = Some(Locator::default_for(
                &repo.id,
                Some(format!("https://pds.owner{}", repo.owner)),
            ));
            let (locator, peers) = match &role {
                Role::Author { .. } | Role::Stranger => continue,
                Role::Seeder => (locator, vec![author]),
                Role::HomeTrustingSeeder { seeder } => (None, vec![self.nodes[*seeder].hint()]),
                Role::HomeTrustingRecord => (locator, vec![]),
            };
            self.command(
                node,
                CoreCommand::AddRepo {
                    repo_id: repo.id.clone(),
                    locator,
                    peers,
                },
            );
        }
        let follower = !matches!(role, Role::Author { .. } | Role::Stranger);
        if follower && self.pds.is_churning(CHURNER) {
            self.command(
                node,
                CoreCommand::Follow {
                    did: CHURNER.to_string(),
                },
            );
        }
    }

    /// Send an admin command to `node`'s core now.
    pub fn command(&mut self, node: usize, command: CoreCommand) {
        let n = &mut self.nodes[node];
        if n.core.is_none() {
            return;
        }
        let reply = n.next_reply;
        n.next_reply += 1;
        n.waiting.insert(reply, command.clone());
        self.deliver(node, Event::Command { reply, command });
    }

    /// Node indexes of the endpoint ids the world knows.
    pub fn known(&self, ids: &[iroh::EndpointId]) -> Vec<usize> {
        ids.iter().filter_map(|id| self.index_of(id)).collect()
    }

    /// An announcement or a gossip change reaches `node`.
    pub fn receive(&mut self, node: usize, msg: Msg) {
        if !self.nodes[node].up {
            return;
        }
        if !self.nodes[node].is_honest() {
            return self.stranger_receives(node, msg);
        }
        let event = match msg {
            Msg::Announcement {
                repo,
                announcement,
                via,
            } => Event::Announcement {
                repo,
                announcement,
                via,
            },
            Msg::NeighborUp { repo, peer } => Event::NeighborUp {
                repo,
                peer: self.nodes[peer].key.public(),
                addrs: vec!["127.0.0.1:1".parse().expect("valid address")],
            },
            Msg::NeighborDown { repo, peer } => Event::NeighborDown {
                repo,
                peer: self.nodes[peer].key.public(),
            },
            Msg::PullAsk { from, repos } => return self.answer_pull(node, from, repos),
        };
        self.deliver(node, event);
    }

    /// A full disk: `node`'s, or a random honest node's for `usize::MAX`,
    /// for a while.
    pub fn disk_full(&mut self, node: usize) {
        if node == usize::MAX {
            if !self.active {
                return;
            }
            if let Some(mean) = self.scenario.faults.disk_full_every {
                let next = self.exponential(mean);
                self.schedule(next, Ev::DiskFull { node: usize::MAX });
            }
            let honest: Vec<usize> = (0..self.nodes.len())
                .filter(|n| self.nodes[*n].is_honest())
                .collect();
            let victim = honest[rand::Rng::random_range(&mut self.rng, 0..honest.len())];
            return self.disk_full(victim);
        }
        self.note(|| format!("n{node}'s disk is full"));
        self.nodes[node].disk_full = true;
        let lasts = self.between(Duration::from_secs(5), Duration::from_secs(300));
        self.schedule(lasts, Ev::DiskOk { node });
    }

    /// A crash fault: `node`, or a random honest node for `usize::MAX`.
    pub fn crash_fault(&mut self, node: usize) {
        if node == usize::MAX {
            if let Some(mean) = self.scenario.faults.crash_every
                && self.active
            {
                let next = self.exponential(mean);
                self.schedule(next, Ev::Crash { node: usize::MAX });
            }
            if !self.active {
                return;
            }
            let up: Vec<usize> = (0..self.nodes.len())
                .filter(|n| self.nodes[*n].is_honest() && self.nodes[*n].up)
                .collect();
            if up.is_empty() {
                return;
            }
            let victim = up[rand::Rng::random_range(&mut self.rng, 0..up.len())];
            return self.crash_fault(victim);
        }
        self.note(|| format!("n{node} crashes"));
        self.outcome.crashes += 1;
        self.crash(node);
        let down = self.between(Duration::from_secs(1), Duration::from_secs(120));
        self.schedule(down, Ev::Restart { node });
    }

    /// `node` stops at once: what was not committed is lost.
    pub fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.up = false;
        n.core = None;
        n.pending.clear();
        n.flush_scheduled = false;
        n.timers.clear();
        n.waiting.clear();
        n.served.clear();
        self.node_gone(node);
    }

    pub fn restart(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        self.start_node(node);
        self.check_node(node);
    }

    /// A new state of `repo` published by its author.
    pub fn publish(&mut self, node: usize, repo: RepoId) {
        if self.active && self.still_published(&repo) {
            let mean = self.scenario.publish_every;
            let next = self.exponential(mean);
            self.schedule(
                next,
                Ev::Publish {
                    node,
                    repo: repo.clone(),
                },
            );
        } else {
            return;
        }
        if self.nodes[node].core.is_none() {
            return;
        }
        self.outcome.publishes += 1;
        self.command(
            node,
            CoreCommand::Publish {
                repo_id: repo.clone(),
                source: format!("/sim/src/{repo}").into(),
                force: false,
                expected_manifest: None,
            },
        );
        // Now and then the author waits for replicas, as `--replicas` does.
        if rand::Rng::random_bool(&mut self.rng, 0.3) {
            let wait = self.between(Duration::from_secs(1), Duration::from_secs(5));
            let count = rand::Rng::random_range(&mut self.rng, 1..=3);
            self.schedule(
                wait,
                Ev::Admin {
                    node,
                    command: CoreCommand::Replicas {
                        repo_id: repo,
                        count,
                        timeout: Duration::from_secs(60),
                    },
                },
            );
        }
    }

    /// A record read reaches the PDS; the answer reaches the node after
    /// the same latency, or after the read's timeout while the PDS is down.
    pub fn poll(&mut self, node: usize, life: u32, repo: RepoId, locator: Locator, read: ReadId) {
        if !self.nodes[node].is_live(life) {
            return;
        }
        // Now and then a read is served by a replica lagging a version or two.
        let lag = if self.active && rand::Rng::random_bool(&mut self.rng, 0.1) {
            rand::Rng::random_range(&mut self.rng, 1..=2)
        } else {
            0
        };
        let outcome = self.pds.get(&locator.did, &locator.rkey, lag);
        let gone = matches!(outcome, RecordPoll::NotFound(_));
        let (delay, retry_after) = self.pds_answer(matches!(outcome, RecordPoll::Unreachable(_)));
        self.schedule(
            delay,
            Ev::Core {
                node,
                life,
                event: Event::Polled {
                    repo: repo.clone(),
                    read,
                    outcome,
                    retry_after,
                },
            },
        );
        self.after_poll(node, &repo, gone);
    }

    /// A listing reaches the PDS; the answer comes back as a poll's does.
    pub fn list(&mut self, node: usize, life: u32, did: String, read: ReadId) {
        if !self.nodes[node].is_live(life) {
            return;
        }
        let result = if self.pds.is_churning(&did) {
            Ok((
                self.churn()
                    .into_iter()
                    .map(|record| crate::record::ListedRecord {
                        rkey: record.repo_id.name().to_string(),
                        cid: None,
                        value: serde_json::to_value(&record).expect("a record serializes"),
                    })
                    .collect(),
                true,
            ))
        } else {
            self.pds.list(&did)
        };
        let (delay, retry_after) = self.pds_answer(result.is_err());
        self.schedule(
            delay,
            Ev::Core {
                node,
                life,
                event: Event::Listed {
                    did,
                    read,
                    result,
                    retry_after,
                },
            },
        );
    }

    /// How long an answer takes, and the `Retry-After` it carries: a PDS
    /// that is down times out (10 s) or, now and then, answers 429 with a
    /// wait of up to an hour.
    fn pds_answer(&mut self, failed: bool) -> (Duration, Option<Duration>) {
        if !failed {
            return (
                self.between(Duration::from_millis(20), Duration::from_millis(150)),
                None,
            );
        }
        if rand::Rng::random_bool(&mut self.rng, 0.2) {
            let wait = self.between(Duration::from_secs(1), Duration::from_secs(3600));
            return (Duration::from_millis(50), Some(wait));
        }
        (Duration::from_secs(10), None)
    }
}
