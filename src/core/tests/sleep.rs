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
    let (_, fx) = sim.command(CoreCommand::Publish {
        repo_id: repo(),
        source: "/src".into(),
        force: false,
        expected_manifest: None,
    });
    let job = match &jobs(&fx)[..] {
        [(_, JobSpec::Publish { .. })] => fx
            .iter()
            .find_map(|e| match e {
                Effect::StartJob { job, .. } => Some(*job),
                _ => None,
            })
            .unwrap(),
        other => panic!("{other:?}"),
    };
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
