//! Quiet topics: a repository without news for `topic_idle` leaves its
//! gossip topic, news joins it again, nothing a stranger says keeps it
//! awake, and a restart joins no quiet topic but asks its peers directly.

use super::*;

const IDLE: Duration = Duration::from_secs(600);

/// A core that leaves topics after [`IDLE`], loaded (which arms the sweep).
fn sleepy() -> (Sim, Vec<Effect>) {
    let mut sim = Sim::new(4);
    sim.core.settings.topic_idle = Some(IDLE);
    let now = sim.now();
    let fx = sim.core.load(vec![], vec![], now);
    (sim, fx)
}

/// A sleepy core holding the author's first state, its topic left.
fn quiet() -> (Sim, SecretKey) {
    let (mut sim, _) = sleepy();
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 1, 1);
    sim.advance(IDLE + Duration::from_secs(1));
    assert!(leaves(&sweep(&mut sim)));
    (sim, author)
}

fn joins(fx: &[Effect]) -> bool {
    fx.iter()
        .any(|e| matches!(e, Effect::JoinTopic { repo: r, .. } if *r == repo()))
}

fn leaves(fx: &[Effect]) -> bool {
    fx.iter()
        .any(|e| matches!(e, Effect::LeaveTopic { repo: r } if *r == repo()))
}

fn sweep(sim: &mut Sim) -> Vec<Effect> {
    let fx = sim.event(Event::Timer(TimerKey::TopicSleep));
    assert!(
        timer_at(&fx, &TimerKey::TopicSleep).is_some(),
        "the sweep re-arms itself: {fx:?}"
    );
    fx
}

#[test]
fn a_quiet_topic_is_left_and_news_joins_it_again() {
    let (mut sim, fx) = sleepy();
    assert!(timer_at(&fx, &TimerKey::TopicSleep).is_some());
    let author = key(1);
    assert!(joins(&sim.add(vec![hint(&author)], None)));
    sim.take(&author, 1, 1);

    sim.advance(IDLE / 2);
    assert!(!leaves(&sweep(&mut sim)), "news came {:?} ago", IDLE / 2);
    assert!(sim.core.repos[&repo()].topic.is_some());
    sim.advance(IDLE);
    assert!(leaves(&sweep(&mut sim)));
    assert!(sim.core.repos[&repo()].topic.is_none());
    // Left once: the next sweeps say nothing more.
    sim.advance(IDLE);
    assert!(!leaves(&sweep(&mut sim)));

    // A newer state, told directly, joins the topic again; while it is
    // fetched the topic stays, however long that takes.
    let fx = sim.announce(&author, &author, 2, 2);
    assert!(joins(&fx), "{fx:?}");
    let (job, _) = fetch_job(&fx).expect("a fetch starts");
    sim.advance(IDLE * 3);
    assert!(!leaves(&sweep(&mut sim)));
    sim.finish(job, 2);
    sim.advance(IDLE / 2);
    assert!(!leaves(&sweep(&mut sim)), "the fetch was news too");
    sim.advance(IDLE);
    assert!(leaves(&sweep(&mut sim)));
}

#[test]
fn nothing_a_stranger_says_keeps_a_topic_awake() {
    let (mut sim, _) = sleepy();
    let author = key(1);
    let stranger = key(66);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 1, 1);
    sim.advance(IDLE + Duration::from_secs(1));
    assert!(leaves(&sweep(&mut sim)));
    // A state the stranger signed, the author's old state replayed, a
    // neighbour that comes up: none of it is news.
    let mut fx = sim.announce(&stranger, &stranger, 9, 99);
    fx.extend(sim.announce(&author, &stranger, 1, 1));
    fx.extend(sim.event(Event::NeighborUp {
        repo: repo(),
        peer: stranger.public(),
        addrs: vec![],
    }));
    assert!(!joins(&fx), "{fx:?}");
    assert!(fetch_job(&fx).is_none());
}

#[test]
fn a_publish_wakes_the_topic() {
    let (mut sim, _) = sleepy();
    sim.add(vec![hint(&key(1))], None);
    sim.advance(IDLE + Duration::from_secs(1));
    assert!(leaves(&sweep(&mut sim)));
    let (_, job, fx) = sim.start_publish();
    assert!(matches!(&jobs(&fx)[..], [(_, JobSpec::Publish { .. })]));
    // Joined while it publishes (gossip carries what follows), and after.
    assert!(joins(&fx), "{fx:?}");
    let fx = sim.finish(job, 3);
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::Announce {
                audience: Audience::Everyone { .. },
                ..
            }
        )),
        "{fx:?}"
    );
    assert!(sim.core.repos[&repo()].topic.is_some());
    sim.advance(IDLE / 2);
    assert!(!leaves(&sweep(&mut sim)));
}

#[test]
fn a_restart_joins_no_quiet_topic_and_asks_its_peers_directly() {
    let (mut sim, _) = sleepy();
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 1, 1);
    let (mut sim, fx) = sim.restart();
    assert!(!joins(&fx), "{fx:?}");
    assert!(
        fx.iter().any(|e| matches!(e, Effect::Pull { peer, repos } if *peer == author.public() && repos == &vec![repo()])),
        "{fx:?}"
    );
    assert!(timer_at(&fx, &TimerKey::TopicSleep).is_some());
    // The answer says what is held already: still quiet.
    let fx = sim.announce(&author, &author, 1, 1);
    assert!(!joins(&fx), "{fx:?}");
    // A newer one is news.
    let fx = sim.announce(&author, &author, 2, 2);
    assert!(joins(&fx), "{fx:?}");
}

#[test]
fn without_an_idle_time_topics_are_never_left() {
    let mut sim = Sim::new(4);
    let now = sim.now();
    let fx = sim.core.load(vec![], vec![], now);
    assert!(timer_at(&fx, &TimerKey::TopicSleep).is_none());
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 1, 1);
    sim.advance(Duration::from_secs(30 * 24 * 3600));
    let fx = sim.event(Event::Timer(TimerKey::TopicSleep));
    assert!(!leaves(&fx));
    let (_, fx) = sim.restart();
    assert!(joins(&fx), "{fx:?}");
}

#[test]
fn a_sync_of_a_quiet_repository_joins_its_topic_and_asks_its_peers() {
    let (mut sim, author) = quiet();
    let (_, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    assert!(joins(&fx), "{fx:?}");
    assert_eq!(pulls(&fx), vec![(author.public(), vec![repo()])]);
}

#[test]
fn a_replicas_wait_joins_the_topic_of_a_quiet_repository() {
    let (mut sim, _) = quiet();
    let (_, fx) = sim.command(CoreCommand::Replicas {
        repo_id: repo(),
        count: 2,
        timeout: Duration::from_secs(60),
    });
    assert!(joins(&fx), "{fx:?}");
    // Joined while it waits, however long.
    sim.advance(IDLE * 2);
    assert!(!leaves(&sweep(&mut sim)));
}

#[test]
fn a_publish_tells_peers_last_seen_behind_directly() {
    let (mut sim, _) = sleepy();
    sim.add(vec![], None);
    let (_, job, _) = sim.start_publish();
    sim.finish(job, 1);
    let me = key(100);
    // A follower nobody named says it holds the first state (a direct
    // push after its fetch, its topic since left).
    let follower = key(20);
    let held = sim.held().unwrap().statement.clone();
    sim.event(Event::Announcement {
        repo: repo(),
        announcement: Box::new(Announcement::new(held, &follower, vec![])),
        via: Via::Direct,
    });
    let (_, job, _) = sim.start_publish();
    let fx = sim.finish(job, 2);
    let direct = fx
        .iter()
        .find_map(|e| match e {
            Effect::Announce {
                audience: Audience::Everyone { direct },
                ..
            } => Some(direct.clone()),
            _ => None,
        })
        .expect("announced");
    assert_eq!(direct, vec![follower.public()], "{fx:?}");
    assert!(!direct.contains(&me.public()));
}

/// Many repositories shared with one peer: every one is asked about, in
/// pulls of at most `MAX_PULL_REPOS`, one at a time and spaced; a pull the
/// actor had no room for is sent again; a failed one drops the queue.
#[test]
fn a_sweep_asks_one_peer_about_every_repository_in_paced_pulls() {
    let (mut sim, _) = sleepy();
    let author = key(1);
    let count = 3 * MAX_PULL_REPOS + 5;
    for n in 0..count {
        sim.command(CoreCommand::AddRepo {
            repo_id: rid(&format!("did:plc:owner/r{n}")),
            locator: None,
            peers: vec![hint(&author)],
        });
    }
    let mut fx = sim.event(Event::Timer(TimerKey::Resync));
    let mut asked: Vec<RepoId> = Vec::new();
    let mut sent = 0;
    let mut busy_once = true;
    for _ in 0..100 {
        let batch = pulls(&fx);
        assert!(batch.len() <= 1, "one pull at a time: {batch:?}");
        if let Some((peer, repos)) = batch.into_iter().next() {
            assert_eq!(peer, author.public());
            assert!(repos.len() <= MAX_PULL_REPOS);
            sent += 1;
            if busy_once {
                // The actor had no room: it comes back later.
                busy_once = false;
                sim.event(Event::NetBusy(Busy::Pull { peer, repos }));
                assert!(pulls(&sim.event(Event::Timer(TimerKey::DeferredPulls))).is_empty());
            } else {
                asked.extend(repos);
                fx = sim.event(Event::Pulled { peer, ok: true });
                // Spaced: not at once.
                assert!(pulls(&fx).is_empty(), "{fx:?}");
            }
        }
        sim.advance(Duration::from_secs(3));
        fx = sim.event(Event::Timer(TimerKey::DeferredPulls));
        if asked.len() == count {
            break;
        }
    }
    asked.sort();
    asked.dedup();
    assert_eq!(asked.len(), count, "every repository asked about once");
    assert_eq!(sent, 5, "four pulls and one sent again");

    // A failed pull: the peer backs off and its queue is dropped.
    let fx = sim.event(Event::Timer(TimerKey::Resync));
    let (peer, _) = pulls(&fx).into_iter().next().expect("a pull");
    sim.event(Event::Pulled { peer, ok: false });
    sim.advance(Duration::from_secs(1));
    assert!(pulls(&sim.event(Event::Timer(TimerKey::DeferredPulls))).is_empty());
    assert!(sim.core.pull_queues.is_empty());
}

#[test]
fn a_pull_nobody_reports_on_stops_holding_the_queue_after_a_minute() {
    let (mut sim, _) = sleepy();
    let author = key(1);
    let count = 2 * MAX_PULL_REPOS;
    for n in 0..count {
        sim.command(CoreCommand::AddRepo {
            repo_id: rid(&format!("did:plc:owner/r{n}")),
            locator: None,
            peers: vec![hint(&author)],
        });
    }
    let fx = sim.event(Event::Timer(TimerKey::Resync));
    let first = pulls(&fx);
    assert_eq!(first.len(), 1, "{fx:?}");
    // No report ever comes (a peer that accepts and stays silent past every
    // timeout of the actor, or a lost report): the queue waits, then moves on.
    sim.advance(crate::core::pulls::PULL_STALE - Duration::from_secs(1));
    assert!(pulls(&sim.event(Event::Timer(TimerKey::DeferredPulls))).is_empty());
    sim.advance(Duration::from_secs(1));
    let next = pulls(&sim.event(Event::Timer(TimerKey::DeferredPulls)));
    assert_eq!(
        next.len(),
        1,
        "the second pull goes once the first is stale"
    );
    assert!(next[0].1.iter().all(|r| !first[0].1.contains(r)));
}
