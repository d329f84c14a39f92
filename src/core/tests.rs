//! The core's rules as scenarios: events in, effects out, an injected clock,
//! no sockets and no sleeps.

use std::time::{Duration, Instant};

use iroh::SecretKey;
use iroh_blobs::Hash;

use super::*;
use crate::{
    admin::{Payload, Reply},
    announce::{Announcement, Statement},
    record::{PeerHint, RepoRecord},
    state::{Bookkeeping, Held, Origin, RecordCopy, RepoConfig, RepoRow},
    store::Write,
};

const T0_MS: u64 = 1_800_000_000_000;

fn key(n: u8) -> SecretKey {
    SecretKey::from_bytes(&[n; 32])
}

fn rid(s: &str) -> RepoId {
    RepoId::parse(s).unwrap()
}

fn repo() -> RepoId {
    rid("did:plc:owner/site")
}

fn manifest(n: u8) -> Hash {
    Hash::from_bytes([n; 32])
}

fn hint(k: &SecretKey) -> PeerHint {
    PeerHint::new(k.public().to_string(), vec!["127.0.0.1:9".into()], None)
}

/// A core with an injected clock.
struct Sim {
    core: Core,
    t0: Instant,
    elapsed: Duration,
    next_reply: ReplyId,
    /// Every write the core asked for, in order.
    writes: Vec<Write>,
}

impl Sim {
    fn new(max_jobs: usize) -> Self {
        let mut settings = Settings::new("/data/repos".into());
        settings.max_jobs = max_jobs;
        settings.write_back = true;
        Self {
            core: Core::new(key(100), settings),
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            next_reply: 1,
            writes: Vec::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.t0 + self.elapsed,
            unix_ms: T0_MS + self.elapsed.as_millis() as u64,
        }
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    fn me(&self) -> EndpointId {
        self.core.me()
    }

    fn record(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        for e in &effects {
            if let Effect::Persist(w) = e {
                self.writes.push(w.clone());
            }
        }
        effects
    }

    fn event(&mut self, event: Event) -> Vec<Effect> {
        let now = self.now();
        let effects = self.core.handle(event, now);
        self.record(effects)
    }

    fn command(&mut self, command: CoreCommand) -> (ReplyId, Vec<Effect>) {
        let reply = self.next_reply;
        self.next_reply += 1;
        (reply, self.event(Event::Command { reply, command }))
    }

    fn add(&mut self, peers: Vec<PeerHint>, locator: Option<Locator>) -> Vec<Effect> {
        self.command(CoreCommand::AddRepo {
            repo_id: repo(),
            locator,
            peers,
        })
        .1
    }

    fn announce(
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

    fn poll(&mut self, record: RepoRecord) -> Vec<Effect> {
        self.event(Event::Polled {
            repo: repo(),
            result: Ok(record),
        })
    }

    fn finish(&mut self, job: JobId, m: u8) -> Vec<Effect> {
        self.event(Event::JobDone {
            repo: repo(),
            job,
            result: Ok(info(m)),
        })
    }

    /// Take a state from `publisher` through the whole flow.
    fn take(&mut self, publisher: &SecretKey, m: u8, seq: u64) {
        let fx = self.announce(publisher, publisher, m, seq);
        let (job, _) = fetch_job(&fx).expect("a fetch starts");
        self.finish(job, m);
        assert_eq!(self.held().map(|h| h.seq()), Some(seq));
    }

    fn held(&self) -> Option<&Held> {
        self.core.repos.get(&repo()).and_then(|r| r.held.as_ref())
    }

    /// Rows as the database would hold them after every write so far.
    fn rows(&self) -> Vec<RepoRow> {
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
            }
        }
        rows.into_values().collect()
    }

    /// A fresh core loaded from [`Sim::rows`], as after a restart.
    fn restart(&self) -> (Sim, Vec<Effect>) {
        let mut sim = Sim::new(4);
        sim.core = Core::new(key(100), self.core.settings.clone());
        sim.writes = self.writes.clone();
        sim.elapsed = self.elapsed;
        let rows = self.rows();
        let now = sim.now();
        let fx = sim.core.load(rows, now);
        (sim, fx)
    }
}

fn info(m: u8) -> StateInfo {
    StateInfo {
        manifest: manifest(m),
        head: Some(format!("{:040x}", m)),
        pack_count: 1,
        bytes: 100,
        bytes_moved: 100,
        unchanged: false,
        consolidated: false,
    }
}

fn record(m: Option<u8>, seq: Option<u64>, peers: &[&SecretKey]) -> RepoRecord {
    let mut r = RepoRecord::empty(repo());
    r.manifest = m.map(|m| data_encoding::HEXLOWER.encode(&[m; 32]));
    r.seq = seq;
    r.peers = peers.iter().map(|k| hint(k)).collect();
    r
}

fn locator() -> Option<Locator> {
    Some(Locator::default_for(
        &repo(),
        Some("https://pds.example".into()),
    ))
}

fn fetch_job(fx: &[Effect]) -> Option<(JobId, Hash)> {
    fx.iter().find_map(|e| match e {
        Effect::StartJob {
            job,
            spec: JobSpec::Fetch { manifest, .. },
            ..
        } => Some((*job, *manifest)),
        _ => None,
    })
}

fn jobs(fx: &[Effect]) -> Vec<(RepoId, JobSpec)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::StartJob { repo, spec, .. } => Some((repo.clone(), spec.clone())),
            _ => None,
        })
        .collect()
}

fn reply_to(fx: &[Effect], id: ReplyId) -> Option<Reply> {
    fx.iter().find_map(|e| match e {
        Effect::Reply { to, reply } if *to == id => Some(reply.clone()),
        _ => None,
    })
}

fn position(fx: &[Effect], pred: impl Fn(&Effect) -> bool) -> Option<usize> {
    fx.iter().position(pred)
}

#[test]
fn a_trusted_state_is_fetched_then_persisted_then_announced() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, m) = fetch_job(&fx).expect("fetch starts");
    assert_eq!(m, manifest(2));
    let Some((_, JobSpec::Fetch { providers, .. })) = jobs(&fx).into_iter().next() else {
        panic!()
    };
    assert_eq!(providers[0], author.public(), "the announcer first");
    let fx = sim.finish(job, 2);
    let persisted = position(&fx, |e| matches!(e, Effect::Persist(Write::Held(..)))).unwrap();
    let announced = position(&fx, |e| matches!(e, Effect::Announce { .. })).unwrap();
    assert!(persisted < announced, "durable before announced: {fx:?}");
    let held = sim.held().unwrap();
    assert_eq!(
        held.statement.statement.publisher,
        *author.public().as_bytes()
    );
    assert_eq!(held.seq(), T0_MS);
}

/// The rollback-and-freeze attack: the follower's copy of the record lags
/// behind gossip; a stranger announces the previous state under its own key
/// with the highest seq.
#[test]
fn a_stranger_cannot_roll_back_or_freeze_a_lagging_follower() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let stranger = key(66);
    sim.add(vec![], locator());
    // The record names the first state.
    let fx = sim.poll(record(Some(1), Some(T0_MS), &[&author]));
    let (job, _) = fetch_job(&fx).unwrap();
    sim.finish(job, 1);
    // The author publishes a second state; gossip brings it before any poll.
    sim.advance(Duration::from_secs(1));
    sim.take(&author, 2, T0_MS + 1000);
    // The stranger announces the first state (which the record copy still
    // names), signed by itself, with seq u64::MAX.
    let fx = sim.announce(&stranger, &stranger, 1, u64::MAX);
    assert!(jobs(&fx).is_empty(), "{fx:?}");
    assert_eq!(sim.held().unwrap().manifest_hash(), manifest(2));
    // Nor does forwarding the author's first statement help it.
    let fx = sim.announce(&author, &stranger, 1, T0_MS);
    assert!(jobs(&fx).is_empty());
    // A poll of the lagging record does not roll back either.
    let fx = sim.poll(record(Some(1), Some(T0_MS), &[&author]));
    assert!(jobs(&fx).is_empty());
    // The author keeps publishing and the follower keeps following.
    sim.advance(Duration::from_secs(1));
    sim.take(&author, 3, T0_MS + 2000);
    assert!(sim.core.counters().rejected.values().sum::<u64>() >= 2);
}

#[test]
fn a_peer_removed_from_the_record_is_revoked_also_after_restart() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let gone = key(2);
    sim.add(vec![], locator());
    sim.poll(record(None, None, &[&author, &gone]));
    sim.take(&gone, 2, T0_MS);
    // The owner removes `gone` from the record.
    sim.poll(record(Some(2), Some(T0_MS), &[&author]));
    let fx = sim.announce(&gone, &gone, 3, T0_MS + 10);
    assert!(jobs(&fx).is_empty(), "revoked: {fx:?}");
    let (mut restarted, fx) = sim.restart();
    // The start-up check of the held state finishes first.
    let (check, _) = fetch_job(&fx).expect("the held state is checked");
    restarted.finish(check, 2);
    restarted.advance(Duration::from_secs(1));
    let fx = restarted.announce(&gone, &gone, 3, T0_MS + 10);
    assert!(fetch_job(&fx).is_none(), "still revoked after a restart");
    let fx = restarted.announce(&author, &author, 3, T0_MS + 10);
    assert!(fetch_job(&fx).is_some(), "the remaining peer is trusted");
}

#[test]
fn a_seeder_vouches_for_what_it_forwards_and_a_stranger_does_not() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let seeder = key(2);
    let stranger = key(66);
    sim.add(vec![hint(&seeder)], None);
    let fx = sim.announce(&author, &stranger, 2, T0_MS);
    assert!(jobs(&fx).is_empty(), "a stranger forwarding is refused");
    let fx = sim.announce(&author, &seeder, 2, T0_MS);
    let (job, _) = fetch_job(&fx).expect("the seeder vouches");
    sim.finish(job, 2);
    // The author's signed statement is kept, to be forwarded as is.
    assert_eq!(
        sim.held().unwrap().statement.statement.publisher,
        *author.public().as_bytes()
    );
    // An older statement through the same seeder is a rollback.
    let fx = sim.announce(&author, &seeder, 1, T0_MS - 1);
    assert!(jobs(&fx).is_empty());
}

#[test]
fn the_records_state_is_held_under_this_nodes_own_statement() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    let fx = sim.poll(record(Some(4), Some(T0_MS + 5), &[]));
    let (job, m) = fetch_job(&fx).unwrap();
    assert_eq!(m, manifest(4));
    sim.finish(job, 4);
    let held = sim.held().unwrap();
    assert_eq!(held.statement.statement.publisher, *sim.me().as_bytes());
    assert_eq!(held.seq(), T0_MS + 5);
    assert!(held.statement.verify().is_ok());
}

#[test]
fn hint_floods_are_bounded_and_never_displace_trusted_peers() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    sim.add(vec![], locator());
    sim.poll(record(None, None, &[&seeder]));
    sim.take(&seeder, 2, T0_MS);
    for n in 0..200u32 {
        let mut bytes = [7u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        let fresh = SecretKey::from_bytes(&bytes);
        // Each announces the state held: a provider, remembered as a hint.
        sim.announce(&seeder, &fresh, 2, T0_MS);
        // And something nobody trusts: not remembered.
        sim.announce(&fresh, &fresh, 9, T0_MS + 1);
    }
    let r = &sim.core.repos[&repo()];
    assert_eq!(r.book.hints.len(), hints::MAX_HINTS);
    assert_eq!(r.dial_targets(sim.me())[0], seeder.public());
    let peers = sim.core.peers(&repo()).unwrap();
    assert!(peers[0].trusted && peers[0].hint.node_id == seeder.public().to_string());
    assert_eq!(peers.iter().filter(|p| p.trusted).count(), 1);
}

#[test]
fn strangers_announcing_other_states_leave_no_hint() {
    let mut sim = Sim::new(4);
    sim.add(vec![hint(&key(1))], None);
    for n in 10..20 {
        sim.announce(&key(n), &key(n), 5, T0_MS);
    }
    assert!(sim.core.repos[&repo()].book.hints.is_empty());
}

#[test]
fn no_more_jobs_run_than_allowed_and_the_rest_wait_their_turn() {
    let mut sim = Sim::new(2);
    let author = key(1);
    let mut started = Vec::new();
    for n in 0..5 {
        let id = rid(&format!("did:plc:owner/r{n}"));
        sim.command(CoreCommand::AddRepo {
            repo_id: id.clone(),
            locator: None,
            peers: vec![hint(&author)],
        });
        let statement = Statement {
            repo_id: id.to_string(),
            head: None,
            manifest: [n + 1; 32],
            seq: T0_MS,
            publisher: *author.public().as_bytes(),
        }
        .sign(&author);
        let fx = sim.event(Event::Announcement {
            repo: id.clone(),
            announcement: Box::new(Announcement::new(statement, &author, vec![])),
            via: Via::Gossip,
        });
        started.extend(fx.iter().filter_map(|e| match e {
            Effect::StartJob { repo, job, .. } => Some((repo.clone(), *job)),
            _ => None,
        }));
    }
    assert_eq!(started.len(), 2);
    assert_eq!(sim.core.job_load(), (2, 3));
    let (first, job) = started[0].clone();
    let fx = sim.event(Event::JobDone {
        repo: first,
        job,
        result: Err("boom".into()),
    });
    assert_eq!(jobs(&fx).len(), 1, "a finished job frees a slot");
}

#[test]
fn a_newer_target_arriving_during_a_job_runs_right_after_it() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], locator());
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    // While it runs, the record names a newer state.
    let fx = sim.poll(record(Some(3), Some(T0_MS + 50), &[&author]));
    assert!(jobs(&fx).is_empty(), "one job per repository");
    let fx = sim.finish(job, 2);
    let (_, m) = fetch_job(&fx).expect("the newer target starts at once");
    assert_eq!(m, manifest(3));
}

#[test]
fn a_sync_poll_is_handled_once_and_answers_once() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    sim.poll(record(Some(2), Some(T0_MS), &[]));
    let job = sim.core.repos[&repo()].job.as_ref().unwrap().id();
    sim.finish(job, 2);
    let (reply, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    assert_eq!(
        fx.iter()
            .filter(|e| matches!(e, Effect::PollNow { .. }))
            .count(),
        1
    );
    assert!(reply_to(&fx, reply).is_none(), "waits for the poll");
    let fx = sim.poll(record(Some(2), Some(T0_MS), &[]));
    let Some(Reply::Ok(Payload::Synced(report))) = reply_to(&fx, reply) else {
        panic!("{fx:?}")
    };
    assert_eq!(report.message, "up to date");
    // The next scheduled poll finds no caller to answer.
    let fx = sim.poll(record(Some(2), Some(T0_MS), &[]));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Reply { .. })));
}

#[test]
fn a_sync_waiting_for_a_first_state_gives_up_only_for_its_round() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    sim.add(vec![hint(&seeder)], None);
    let (first, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Pull { peer, .. } if *peer == seeder.public()))
    );
    let round = sim.core.repos[&repo()].sync.first_state_round.unwrap();
    sim.advance(Duration::from_secs(31));
    let fx = sim.event(Event::Timer(TimerKey::FirstState(repo(), round)));
    assert!(matches!(reply_to(&fx, first), Some(Reply::Error(e)) if e.contains("no state")));
    // A second round; the first round's timer firing again changes nothing.
    let (second, _) = sim.command(CoreCommand::Sync { repo_id: repo() });
    let fx = sim.event(Event::Timer(TimerKey::FirstState(repo(), round)));
    assert!(reply_to(&fx, second).is_none());
    // A state arrives: the caller gets it.
    let fx = sim.announce(&key(1), &seeder, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    let fx = sim.finish(job, 2);
    assert!(matches!(
        reply_to(&fx, second),
        Some(Reply::Ok(Payload::Synced(_)))
    ));
}

#[test]
fn a_failed_fetch_is_retried_with_backoff_while_still_wanted() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err("no provider".into()),
    });
    let at = fx
        .iter()
        .find_map(|e| match e {
            Effect::SetTimer {
                key: TimerKey::Retry(_),
                at,
            } => Some(*at),
            _ => None,
        })
        .unwrap();
    assert_eq!(at, sim.now().at + Duration::from_secs(5));
    assert!(sim.core.summaries()[0].last_error.as_deref() == Some("no provider"));
    sim.advance(Duration::from_secs(5));
    let fx = sim.event(Event::Timer(TimerKey::Retry(repo())));
    assert!(fetch_job(&fx).is_some());
}

#[test]
fn a_publish_is_newer_than_anything_known_and_saturates() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 2, T0_MS + trust::MAX_SEQ_AHEAD_MS);
    let (reply, fx) = sim.command(CoreCommand::Publish {
        repo_id: repo(),
        source: "/src".into(),
        force: false,
        expected_manifest: None,
    });
    let job = match &jobs(&fx)[0] {
        (_, JobSpec::Publish { previous, .. }) => {
            assert_eq!(*previous, Some(manifest(2)));
            sim.core.repos[&repo()].job.as_ref().unwrap().id()
        }
        other => panic!("{other:?}"),
    };
    let fx = sim.finish(job, 3);
    assert!(matches!(
        reply_to(&fx, reply),
        Some(Reply::Ok(Payload::Published(_)))
    ));
    assert_eq!(
        sim.held().unwrap().seq(),
        T0_MS + trust::MAX_SEQ_AHEAD_MS + 1
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Announce {
            audience: Audience::Everyone { .. },
            ..
        }
    )));
    // Even at the end of time, publishing does not overflow.
    sim.core
        .repos
        .get_mut(&repo())
        .unwrap()
        .held
        .as_mut()
        .unwrap()
        .statement
        .statement
        .seq = u64::MAX;
    let (_, fx) = sim.command(CoreCommand::Publish {
        repo_id: repo(),
        source: "/src".into(),
        force: false,
        expected_manifest: None,
    });
    let job = fx.iter().find_map(|e| match e {
        Effect::StartJob { job, .. } => Some(*job),
        _ => None,
    });
    sim.finish(job.unwrap(), 4);
    assert_eq!(sim.held().unwrap().seq(), u64::MAX);
}

#[test]
fn a_failed_first_publish_leaves_no_trace() {
    let mut sim = Sim::new(4);
    let (reply, fx) = sim.command(CoreCommand::Publish {
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
        .unwrap();
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err("not a git repository".into()),
    });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(_))));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(_))))
    );
    assert!(matches!(jobs(&fx)[..], [(_, JobSpec::Discard)]));
    assert!(sim.core.summaries().is_empty());
}

#[test]
fn removal_waits_for_the_running_job_and_refuses_commands_meanwhile() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    let (reply, fx) = sim.command(CoreCommand::RemoveRepo { repo_id: repo() });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Ok(_))));
    assert!(jobs(&fx).is_empty(), "the fetch still runs");
    let (again, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    assert!(matches!(reply_to(&fx, again), Some(Reply::Error(e)) if e.contains("being removed")));
    let fx = sim.finish(job, 2);
    let discard = fx
        .iter()
        .find_map(|e| match e {
            Effect::StartJob {
                job,
                spec: JobSpec::Discard,
                ..
            } => Some(*job),
            _ => None,
        })
        .expect("then its content is discarded");
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Held(..))))
    );
    sim.event(Event::JobDone {
        repo: repo(),
        job: discard,
        result: Ok(info(0)),
    });
    assert!(sim.core.repos.is_empty());
}

#[test]
fn a_restart_checks_held_states_and_resumes_an_interrupted_record_fetch() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    sim.poll(record(Some(2), Some(T0_MS), &[]));
    let job = sim.core.repos[&repo()].job.as_ref().unwrap().id();
    sim.finish(job, 2);
    // The record names a new state; the node restarts before it arrives.
    sim.poll(record(Some(3), Some(T0_MS + 9), &[]));
    let (_, fx) = sim.restart();
    let specs = jobs(&fx);
    assert!(
        matches!(&specs[..], [(_, JobSpec::Fetch { manifest: m, previous: Some(p), .. })] if *m == manifest(3) && *p == manifest(2)),
        "{specs:?}"
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::TrackRecord { .. })));
    assert!(fx.iter().any(|e| matches!(e, Effect::JoinTopic { .. })));
}

#[test]
fn a_restart_with_many_repositories_starts_few_jobs() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let mut rows = Vec::new();
    for n in 0..1000u32 {
        let id = rid(&format!("did:plc:owner/r{n}"));
        let statement = Statement {
            repo_id: id.to_string(),
            head: None,
            manifest: [1; 32],
            seq: 5,
            publisher: *author.public().as_bytes(),
        }
        .sign(&author);
        rows.push(RepoRow {
            config: RepoConfig::new(id, Origin::Operator, 0),
            record: None,
            held: Some(Held {
                manifest: data_encoding::HEXLOWER.encode(&[1; 32]),
                head: None,
                statement,
                pack_count: 1,
                bytes: 1,
                since: 0,
                write_back_pending: false,
            }),
            bookkeeping: Bookkeeping::default(),
        });
    }
    let now = sim.now();
    let fx = sim.core.load(rows, now);
    assert_eq!(jobs(&fx).len(), 4);
    assert_eq!(sim.core.job_load(), (4, 996));
}

#[test]
fn a_lonely_topic_redials_with_backoff_and_pulls_once_per_peer() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    for n in 0..3 {
        sim.command(CoreCommand::AddRepo {
            repo_id: rid(&format!("did:plc:owner/r{n}")),
            locator: None,
            peers: vec![hint(&seeder)],
        });
    }
    sim.advance(Duration::from_secs(5));
    let fx = sim.event(Event::Timer(TimerKey::Rejoin));
    let pulls: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Pull { peer, repos } => Some((*peer, repos.len())),
            _ => None,
        })
        .collect();
    assert_eq!(pulls, vec![(seeder.public(), 3)], "one pull for all three");
    // The seeder does not answer: it is asked again only after a backoff.
    sim.event(Event::Pulled {
        peer: seeder.public(),
        ok: false,
    });
    sim.advance(Duration::from_secs(5));
    let fx = sim.event(Event::Timer(TimerKey::Rejoin));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Pull { .. })),
        "{fx:?}"
    );
    sim.advance(Duration::from_secs(10));
    let fx = sim.event(Event::Timer(TimerKey::Rejoin));
    assert!(fx.iter().any(|e| matches!(e, Effect::Pull { .. })));
}

#[test]
fn a_record_copy_is_written_only_when_it_changes() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    let r = record(None, None, &[&key(1)]);
    let fx = sim.poll(r.clone());
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Record(..))))
    );
    let fx = sim.poll(r);
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Persist(w) if w.needs_durability())),
        "{fx:?}"
    );
}

#[test]
fn a_record_for_another_repository_is_rejected_clearly() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    let mut r = record(Some(2), Some(T0_MS), &[]);
    r.repo_id = rid("did:plc:owner/other");
    let fx = sim.poll(r);
    assert!(jobs(&fx).is_empty());
    let error = sim.core.summaries()[0].last_error.clone().unwrap();
    assert!(error.contains("did:plc:owner/other"), "{error}");
}

#[test]
fn write_back_follows_a_publish_and_retries() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    let (_, fx) = sim.command(CoreCommand::Publish {
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
        .unwrap();
    let fx = sim.finish(job, 2);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::SetTimer {
            key: TimerKey::WriteBack(_),
            ..
        }
    )));
    let fx = sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    let Some(Effect::WriteBack { record, .. }) =
        fx.iter().find(|e| matches!(e, Effect::WriteBack { .. }))
    else {
        panic!("{fx:?}")
    };
    assert_eq!(record.seq, Some(sim.held().unwrap().seq()));
    let fx = sim.event(Event::WrittenBack {
        repo: repo(),
        result: Err("503".into()),
    });
    assert!(fx.iter().any(
        |e| matches!(e, Effect::SetTimer { key: TimerKey::WriteBack(_), at } if *at > sim.now().at)
    ));
    let written = record.clone();
    sim.event(Event::Timer(TimerKey::WriteBack(repo())));
    sim.event(Event::WrittenBack {
        repo: repo(),
        result: Ok(written),
    });
    assert!(!sim.held().unwrap().write_back_pending);
    let _ = RecordCopy {
        record: RepoRecord::empty(repo()),
        read_at: 0,
        pending: false,
    };
}
