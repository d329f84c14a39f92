//! Whom a fetch asks, in which order, and what a provider that stalled or
//! sent wrong bytes costs it; job slots that stalled fetches cannot take
//! from a publish.

use std::time::Duration;

use super::*;
use crate::core::repo::DEMOTION;

/// The providers of the fetch job among `fx`.
fn providers(fx: &[Effect]) -> Vec<EndpointId> {
    fx.iter()
        .find_map(|e| match e {
            Effect::StartJob {
                spec: JobSpec::Fetch { providers, .. },
                ..
            } => Some(providers.clone()),
            _ => None,
        })
        .expect("a fetch starts")
}

fn place(list: &[EndpointId], key: &SecretKey) -> usize {
    list.iter()
        .position(|p| *p == key.public())
        .unwrap_or_else(|| panic!("{} not in {list:?}", key.public().fmt_short()))
}

/// A fetch job ends with `result` and `faults`.
fn done(sim: &mut Sim, job: JobId, faults: Vec<(EndpointId, ProviderFault)>) -> Vec<Effect> {
    sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err("every provider failed".into()),
        faults,
    })
}

/// Let the retry of a first failed fetch come due.
fn retry(sim: &mut Sim) -> Vec<Effect> {
    sim.advance(Duration::from_secs(5));
    sim.event(Event::Timer(TimerKey::Retry(repo())))
}

#[test]
fn trusted_providers_are_tried_before_strangers_that_forwarded_first() {
    let mut sim = Sim::new(4);
    let (author, seeder) = (key(1), key(2));
    let (stranger, latecomer) = (key(66), key(67));
    sim.add(vec![hint(&author), hint(&seeder)], None);
    // A stranger is the first to forward the author's statement.
    let fx = sim.announce(&author, &stranger, 2, T0_MS);
    let list = providers(&fx);
    assert_eq!(list[0], author.public(), "the trusted publisher first");
    assert!(place(&list, &seeder) < place(&list, &stranger), "{list:?}");
    let (job, _) = fetch_job(&fx).unwrap();
    done(&mut sim, job, vec![]);
    // Another stranger forwards it while the retry waits; then the seeder
    // vouches for it, which starts the retry at once.
    let fx = sim.announce(&author, &latecomer, 2, T0_MS);
    assert!(fetch_job(&fx).is_none());
    let list = providers(&sim.announce(&author, &seeder, 2, T0_MS));
    assert_eq!(list[..2], [author.public(), seeder.public()], "{list:?}");
    assert!(place(&list, &stranger) > 1 && place(&list, &latecomer) > 1);
}

#[test]
fn a_record_driven_fetch_starts_with_the_record_peers_not_gossip_neighbours() {
    let mut sim = Sim::new(4);
    let (author, neighbour) = (key(1), key(66));
    sim.add(vec![], locator());
    sim.event(Event::NeighborUp {
        repo: repo(),
        peer: neighbour.public(),
        addrs: vec!["127.0.0.1:7".parse().unwrap()],
    });
    let fx = sim.poll(record(Some(2), Some(T0_MS), &[&author]));
    let list = providers(&fx);
    assert_eq!(list[0], author.public(), "{list:?}");
    assert!(place(&list, &neighbour) > 0);
}

#[test]
fn a_provider_that_stalled_or_sent_wrong_bytes_is_tried_last_for_a_while() {
    let mut sim = Sim::new(4);
    let (a, b, c) = (key(1), key(2), key(3));
    sim.add(vec![hint(&a), hint(&b), hint(&c)], None);
    let fx = sim.announce(&a, &a, 2, T0_MS);
    assert_eq!(providers(&fx), vec![a.public(), b.public(), c.public()]);
    let (job, _) = fetch_job(&fx).unwrap();
    let faults = vec![
        (a.public(), ProviderFault::Stalled),
        (b.public(), ProviderFault::WrongBytes),
    ];
    done(&mut sim, job, faults);
    let fx = retry(&mut sim);
    assert_eq!(providers(&fx), vec![c.public(), a.public(), b.public()]);
    let (job, _) = fetch_job(&fx).unwrap();
    sim.finish(job, 2);
    // Still demoted for the next state, even from its own announcer...
    sim.advance(Duration::from_secs(1));
    let fx = sim.announce(&a, &a, 3, T0_MS + 1_000);
    assert_eq!(providers(&fx)[0], c.public());
    let (job, _) = fetch_job(&fx).unwrap();
    sim.finish(job, 3);
    // ... until the demotion ends. A success does not demote anyone.
    sim.advance(DEMOTION);
    let fx = sim.announce(&a, &a, 4, T0_MS + 2_000);
    assert_eq!(providers(&fx), vec![a.public(), b.public(), c.public()]);
}

#[test]
fn a_trusted_peer_announcing_the_wanted_state_ends_the_retry_wait() {
    let mut sim = Sim::new(4);
    let (author, stranger) = (key(1), key(66));
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &stranger, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    done(
        &mut sim,
        job,
        vec![(stranger.public(), ProviderFault::Stalled)],
    );
    sim.advance(Duration::from_secs(1));
    // The stranger saying so again changes nothing...
    let fx = sim.announce(&author, &stranger, 2, T0_MS);
    assert!(fetch_job(&fx).is_none(), "{fx:?}");
    // ... the author saying it holds the state means it is back: try now.
    let fx = sim.announce(&author, &author, 2, T0_MS);
    assert_eq!(providers(&fx)[0], author.public());
}

#[test]
fn stalled_background_fetches_leave_a_slot_for_a_publish() {
    let mut sim = Sim::new(4);
    let staller = key(9);
    let mut started = 0;
    for n in 0..4u8 {
        let id = rid(&format!("did:plc:owner/stalled{n}"));
        sim.command(CoreCommand::AddRepo {
            repo_id: id.clone(),
            locator: None,
            peers: vec![hint(&staller)],
        });
        let statement = Statement {
            repo_id: id.to_string(),
            head: None,
            manifest: [n + 1; 32],
            seq: T0_MS,
            publisher: *staller.public().as_bytes(),
        }
        .sign(&staller);
        let fx = sim.event(Event::Announcement {
            repo: id,
            announcement: Box::new(Announcement::new(statement, &staller, vec![])),
            via: Via::Gossip,
        });
        started += jobs(&fx).len();
    }
    assert_eq!(started, 3, "background work leaves one slot");
    let (_, fx) = sim.command(CoreCommand::Publish {
        repo_id: rid("did:plc:owner/local"),
        source: "/src/local".into(),
        force: false,
        expected_manifest: None,
    });
    assert!(
        jobs(&fx)
            .iter()
            .any(|(_, spec)| matches!(spec, JobSpec::Publish { .. })),
        "the publish starts at once: {fx:?}"
    );
}
