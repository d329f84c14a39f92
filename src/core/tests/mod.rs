//! The core's rules as scenarios: events in, effects out, an injected clock,
//! no sockets and no sleeps. `trust` holds the trust rules, `flows` the
//! queue, sync, removal, restart, rejoin and write-back behaviour, `served`
//! what is served to git clients and `progress` whose progress watchers
//! hear.

mod extremes;
mod failures;
mod flows;
mod follows;
mod progress;
mod providers;
mod served;
mod sleep;
mod strangers;
mod trust;
mod verify;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use iroh::{EndpointId, SecretKey};
use iroh_blobs::Hash;

use super::*;
use crate::{
    announce::{Announcement, SignedStatement, Statement},
    api::{Payload, Reply},
    record::{PeerHint, RepoRecord},
    repo_id::RepoId,
    state::{Bookkeeping, Held, Locator, Origin, RepoConfig, RepoRow},
};

pub(super) const T0_MS: u64 = 1_800_000_000_000;

pub(super) fn key(n: u8) -> SecretKey {
    SecretKey::from_bytes(&[n; 32])
}

pub(super) fn rid(s: &str) -> RepoId {
    RepoId::parse(s).unwrap()
}

pub(super) fn repo() -> RepoId {
    rid("did:plc:owner/site")
}

pub(super) fn manifest(n: u8) -> Hash {
    Hash::from_bytes([n; 32])
}

pub(super) fn hint(k: &SecretKey) -> PeerHint {
    PeerHint::new(k.public().to_string(), vec!["127.0.0.1:9".into()], None)
}

/// A core with an injected clock.
pub(super) struct Sim {
    pub(super) core: Core,
    t0: Instant,
    elapsed: Duration,
    next_reply: ReplyId,
    /// Every write the core asked for, in order.
    writes: Vec<Write>,
    /// ATProto reads the core started and the test has not answered, by
    /// repository or DID.
    reads: BTreeMap<String, ReadId>,
}

impl Sim {
    pub(super) fn new(max_jobs: usize) -> Self {
        let mut settings = Settings::new("/data/repos".into());
        settings.max_jobs = max_jobs;
        settings.write_back = true;
        Self {
            core: Core::new(key(100), settings),
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            next_reply: 1,
            writes: Vec::new(),
            reads: BTreeMap::new(),
        }
    }

    pub(super) fn now(&self) -> Now {
        Now {
            at: self.t0 + self.elapsed,
            unix_ms: T0_MS + self.elapsed.as_millis() as u64,
        }
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    pub(super) fn me(&self) -> EndpointId {
        self.core.me()
    }

    pub(super) fn record(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        for e in &effects {
            if let Effect::Persist(w) = e {
                self.writes.push(w.clone());
            }
        }
        self.note_reads(&effects);
        effects
    }

    /// Keep the ids of the ATProto reads `effects` start.
    fn note_reads(&mut self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::PollRecord { repo, read, .. } => {
                    self.reads.insert(repo.to_string(), *read);
                }
                Effect::ListIdentity { did, read } => {
                    self.reads.insert(did.clone(), *read);
                }
                _ => {}
            }
        }
    }

    pub(super) fn event(&mut self, event: Event) -> Vec<Effect> {
        let now = self.now();
        let effects = self.core.handle(event, now);
        self.record(effects)
    }

    pub(super) fn command(&mut self, command: CoreCommand) -> (ReplyId, Vec<Effect>) {
        let reply = self.next_reply;
        self.next_reply += 1;
        (reply, self.event(Event::Command { reply, command }))
    }

    pub(super) fn add(&mut self, peers: Vec<PeerHint>, locator: Option<Locator>) -> Vec<Effect> {
        self.command(CoreCommand::AddRepo {
            repo_id: repo(),
            locator,
            peers,
        })
        .1
    }

    pub(super) fn announce(
        &mut self,
        publisher: &SecretKey,
        sender: &SecretKey,
        m: u8,
        seq: u64,
    ) -> Vec<Effect> {
        let statement = Statement {
            repo_id: repo().to_string(),
            head: None,
            manifest: [m; 32],
            seq,
            publisher: *publisher.public().as_bytes(),
        }
        .sign(publisher);
        let announcement =
            Announcement::new(statement, sender, vec!["127.0.0.1:7".parse().unwrap()]);
        self.event(Event::Announcement {
            repo: repo(),
            announcement: Box::new(announcement),
            via: Via::Gossip,
        })
    }

    pub(super) fn poll(&mut self, record: RepoRecord) -> Vec<Effect> {
        self.polled(&repo(), RecordPoll::Found(record))
    }

    /// Whether a read of `key` (a repository or a DID) was started and not
    /// answered yet.
    pub(super) fn reading(&self, key: &str) -> bool {
        self.reads.contains_key(key)
    }

    /// Answer `repo_id`'s record read with `outcome`: the read in flight,
    /// or one the test asks for now (as `sync` would).
    pub(super) fn polled(&mut self, repo_id: &RepoId, outcome: RecordPoll) -> Vec<Effect> {
        let read = match self.reads.remove(&repo_id.to_string()) {
            Some(read) => read,
            None => {
                let now = self.now();
                assert!(
                    self.core.reads.records.read_now(repo_id, now.at),
                    "{repo_id}'s record is not read"
                );
                self.event(Event::Timer(TimerKey::RecordReads));
                self.reads
                    .remove(&repo_id.to_string())
                    .expect("the read starts at once")
            }
        };
        self.event(Event::Polled {
            repo: repo_id.clone(),
            read,
            outcome,
            retry_after: None,
        })
    }

    /// Answer `did`'s listing with `result` (as [`Sim::polled`]).
    pub(super) fn listed(
        &mut self,
        did: &str,
        result: Result<(Vec<crate::record::ListedRecord>, bool), String>,
    ) -> Vec<Effect> {
        let read = match self.reads.remove(did) {
            Some(read) => read,
            None => {
                let now = self.now();
                assert!(
                    self.core.reads.listings.read_now(&did.to_string(), now.at),
                    "{did} is not listed"
                );
                self.event(Event::Timer(TimerKey::Listings));
                self.reads.remove(did).expect("the listing starts at once")
            }
        };
        self.event(Event::Listed {
            did: did.to_string(),
            read,
            result,
            retry_after: None,
        })
    }

    pub(super) fn finish(&mut self, job: JobId, m: u8) -> Vec<Effect> {
        self.event(Event::JobDone {
            repo: repo(),
            job,
            result: Ok(info(m)),
            faults: vec![],
        })
    }

    /// Publish `repo()` from a local source; returns the caller's reply
    /// id, the publish job started (none waits before it) and the effects.
    pub(super) fn start_publish(&mut self) -> (ReplyId, JobId, Vec<Effect>) {
        let (reply, fx) = self.command(CoreCommand::Publish {
            repo_id: repo(),
            source: "/src".into(),
            force: false,
            expected_manifest: None,
        });
        let job = fx
            .iter()
            .find_map(|e| match e {
                Effect::StartJob { job, .. } => Some(*job),
                _ => None,
            })
            .expect("the publish starts");
        (reply, job, fx)
    }

    /// Take a state from `publisher` through the whole flow.
    pub(super) fn take(&mut self, publisher: &SecretKey, m: u8, seq: u64) {
        let fx = self.announce(publisher, publisher, m, seq);
        let (job, _) = fetch_job(&fx).expect("a fetch starts");
        self.finish(job, m);
        assert_eq!(self.held().map(|h| h.seq()), Some(seq));
    }

    pub(super) fn held(&self) -> Option<&Held> {
        self.core.repos.get(&repo()).and_then(|r| r.held.as_ref())
    }

    /// Rows as the database would hold them after every write so far.
    pub(super) fn rows(&self) -> Vec<RepoRow> {
        let mut rows: BTreeMap<RepoId, RepoRow> = BTreeMap::new();
        for w in &self.writes {
            match w {
                Write::Config(c) => {
                    let row = rows.entry(c.repo_id.clone()).or_insert_with(|| RepoRow {
                        config: c.clone(),
                        record: None,
                        held: None,
                        bookkeeping: Bookkeeping::default(),
                    });
                    row.config = c.clone();
                }
                Write::Record(id, r) => rows.get_mut(id).unwrap().record = r.clone(),
                Write::Held(id, h) => rows.get_mut(id).unwrap().held = h.as_deref().cloned(),
                Write::Bookkeeping(id, b) => {
                    if let Some(row) = rows.get_mut(id) {
                        row.bookkeeping = b.clone();
                    }
                }
                Write::Remove(id) => {
                    rows.remove(id);
                }
                Write::Follow(_) | Write::Unfollow(_) | Write::Policy(..) => {}
            }
        }
        rows.into_values().collect()
    }

    /// Follows as the database would hold them after every write so far.
    pub(super) fn follows(&self) -> Vec<crate::state::FollowConfig> {
        let mut follows = BTreeMap::new();
        for w in &self.writes {
            match w {
                Write::Follow(f) => {
                    follows.insert(f.did.clone(), f.clone());
                }
                Write::Unfollow(did) => {
                    follows.remove(did);
                }
                _ => {}
            }
        }
        follows.into_values().collect()
    }

    /// A fresh core loaded from [`Sim::rows`], as after a restart.
    pub(super) fn restart(&self) -> (Sim, Vec<Effect>) {
        let mut sim = Sim::new(4);
        sim.core = Core::new(key(100), self.core.settings.clone());
        sim.writes = self.writes.clone();
        sim.elapsed = self.elapsed;
        let rows = self.rows();
        let now = sim.now();
        let fx = sim.core.load(rows, self.follows(), now);
        sim.note_reads(&fx);
        (sim, fx)
    }
}

pub(super) fn info(m: u8) -> StateInfo {
    StateInfo {
        manifest: manifest(m),
        head: Some(format!("{:040x}", m)),
        pack_count: 1,
        bytes: 100,
        bytes_moved: 100,
        unchanged: false,
        consolidated: false,
        blobs_rebuilt: 0,
        blobs_fetched: 0,
        recheck_after_gc_pass: None,
    }
}

pub(super) fn record(m: Option<u8>, seq: Option<u64>, peers: &[&SecretKey]) -> RepoRecord {
    let mut r = RepoRecord::empty(repo());
    r.manifest = m.map(|m| data_encoding::HEXLOWER.encode(&[m; 32]));
    r.seq = seq;
    r.peers = peers.iter().map(|k| hint(k)).collect();
    r
}

pub(super) fn locator() -> Option<Locator> {
    Some(Locator::default_for(
        &repo(),
        Some("https://pds.example".into()),
    ))
}

pub(super) fn fetch_job(fx: &[Effect]) -> Option<(JobId, Hash)> {
    fx.iter().find_map(|e| match e {
        Effect::StartJob {
            job,
            spec: JobSpec::Fetch { manifest, .. },
            ..
        } => Some((*job, *manifest)),
        _ => None,
    })
}

/// The pulls among `fx`: to whom, about what.
pub(super) fn pulls(fx: &[Effect]) -> Vec<(EndpointId, Vec<RepoId>)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Pull { peer, repos } => Some((*peer, repos.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn jobs(fx: &[Effect]) -> Vec<(RepoId, JobSpec)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::StartJob { repo, spec, .. } => Some((repo.clone(), spec.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn reply_to(fx: &[Effect], id: ReplyId) -> Option<Reply> {
    fx.iter().find_map(|e| match e {
        Effect::Reply { to, reply } if *to == id => Some(reply.clone()),
        _ => None,
    })
}

pub(super) fn position(fx: &[Effect], pred: impl Fn(&Effect) -> bool) -> Option<usize> {
    fx.iter().position(pred)
}

/// When `fx` sets the timer `wanted`, if it does.
pub(super) fn timer_at(fx: &[Effect], wanted: &TimerKey) -> Option<Instant> {
    fx.iter().find_map(|e| match e {
        Effect::SetTimer { key, at } if key == wanted => Some(*at),
        _ => None,
    })
}
