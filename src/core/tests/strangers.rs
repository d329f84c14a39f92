//! What strangers (keys nobody trusts, as many as they like) cannot do:
//! count as replicas by claiming a state, make the node flood its topic by
//! replaying its own older statement, or displace trusted peers from the
//! bounded lists (learned hints, peers seen, catch-up pushes).

use std::time::Duration;

use super::*;
use crate::{
    api::{ReplicaBasis, ReplicaStatus},
    core::repo::{
        MAX_CATCH_UP_PUSHES, MAX_PEERS_SEEN, MAX_REBROADCAST_DIRECT, PROBE_RETRY,
        REBROADCAST_WINDOW,
    },
};

/// A key no test uses elsewhere: `n` strangers never collide.
fn fresh(n: u32) -> SecretKey {
    let mut bytes = [0x5au8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    SecretKey::from_bytes(&bytes)
}

/// Publish state `m` here (this node's own statement) and return its seq.
fn publish(sim: &mut Sim, m: u8) -> u64 {
    let (_, job, _) = sim.start_publish();
    sim.finish(job, m);
    sim.held().unwrap().seq()
}

/// `sender` announces `statement` (any publisher's) over `via`.
fn forward(sim: &mut Sim, statement: SignedStatement, sender: &SecretKey, via: Via) -> Vec<Effect> {
    sim.event(Event::Announcement {
        repo: repo(),
        announcement: Box::new(Announcement::new(
            statement,
            sender,
            vec!["127.0.0.1:7".parse().unwrap()],
        )),
        via,
    })
}

fn held_statement(sim: &Sim) -> SignedStatement {
    sim.held().unwrap().statement.clone()
}

fn probes(fx: &[Effect]) -> Vec<(EndpointId, Hash)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::ProbeReplica { peer, manifest, .. } => Some((*peer, *manifest)),
            _ => None,
        })
        .collect()
}

fn replicas(sim: &mut Sim, count: usize, secs: u64) -> (ReplyId, Vec<Effect>) {
    sim.command(CoreCommand::Replicas {
        repo_id: repo(),
        count,
        timeout: Duration::from_secs(secs),
    })
}

fn probed(sim: &mut Sim, peer: &SecretKey, m: u8, proved: bool) -> Vec<Effect> {
    sim.event(Event::ReplicaProbed {
        repo: repo(),
        peer: peer.public(),
        manifest: manifest(m),
        proved,
    })
}

/// Three fresh keys that merely name the state held do not satisfy a wait
/// for three replicas, nor show as in sync in `list`; they are probed, and
/// only the one that proves it holds the bytes counts, as "proved". A
/// trusted peer's signed announcement counts as "trusted" without a probe.
#[test]
fn a_claim_is_not_a_replica_until_the_peer_proves_it() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    sim.add(vec![hint(&seeder)], None);
    publish(&mut sim, 2);
    let statement = held_statement(&sim);
    let strangers: Vec<SecretKey> = (0..3).map(fresh).collect();
    for s in &strangers {
        forward(&mut sim, statement.clone(), s, Via::Direct);
    }
    assert_eq!(
        sim.core.summaries()[0].peers_in_sync,
        0,
        "claims are not in sync"
    );
    let peers = sim.core.peers(&repo()).unwrap();
    let claimed = peers
        .iter()
        .filter(|p| {
            strangers
                .iter()
                .any(|s| s.public().to_string() == p.hint.node_id)
        })
        .collect::<Vec<_>>();
    assert_eq!(claimed.len(), 3);
    assert!(
        claimed.iter().all(|p| p.status == ReplicaStatus::Unproven),
        "{claimed:?}"
    );

    let (reply, fx) = replicas(&mut sim, 3, 60);
    assert!(
        reply_to(&fx, reply).is_none(),
        "three claims are not three replicas: {fx:?}"
    );
    let asked: Vec<EndpointId> = probes(&fx).into_iter().map(|(p, _)| p).collect();
    assert_eq!(asked.len(), 3, "each claim is probed: {fx:?}");
    assert!(probes(&fx).iter().all(|(_, m)| *m == manifest(2)));
    // Two cannot serve the bytes; one can.
    probed(&mut sim, &strangers[0], 2, false);
    probed(&mut sim, &strangers[1], 2, false);
    let fx = probed(&mut sim, &strangers[2], 2, true);
    assert!(reply_to(&fx, reply).is_none());
    assert_eq!(sim.core.summaries()[0].peers_in_sync, 1);
    // A failed probe is not repeated at once, however often asked.
    sim.advance(Duration::from_secs(2));
    let fx = sim.event(Event::Timer(TimerKey::ReplicasAsk(repo())));
    assert!(probes(&fx).is_empty(), "{fx:?}");
    // The trusted seeder announces it: counted without a probe.
    let fx = forward(&mut sim, statement.clone(), &seeder, Via::Gossip);
    assert!(probes(&fx).is_empty());
    assert!(reply_to(&fx, reply).is_none(), "two of three");
    // The wait runs out naming the unproven.
    let id = sim.core.repos[&repo()].replica_waits[0].id;
    let fx = sim.event(Event::Timer(TimerKey::ReplicasDeadline(repo(), id)));
    match reply_to(&fx, reply) {
        Some(Reply::Error(e)) => {
            assert!(e.contains("only 2 of 3"), "{e}");
            assert!(e.contains("unproven"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    // A wait for two is answered at once, naming who counted and why.
    let (reply, fx) = replicas(&mut sim, 2, 60);
    let Some(Reply::Ok(Payload::Replicas(report))) = reply_to(&fx, reply) else {
        panic!("{fx:?}")
    };
    let basis_of = |peer: &SecretKey| {
        report
            .holding
            .iter()
            .find(|c| c.node_id == peer.public().to_string())
            .map(|c| c.basis)
    };
    assert_eq!(report.holding.len(), 2, "{report:?}");
    assert_eq!(basis_of(&seeder), Some(ReplicaBasis::Trusted));
    assert_eq!(basis_of(&strangers[2]), Some(ReplicaBasis::Proved));
}

/// A proof holds for the state it was made for: a peer that announces a
/// new claim is probed again, and a failed probe is retried after a while.
#[test]
fn a_proof_is_for_one_state_and_failures_are_retried_later() {
    let mut sim = Sim::new(4);
    sim.add(vec![], None);
    publish(&mut sim, 2);
    let peer = fresh(1);
    let statement = held_statement(&sim);
    forward(&mut sim, statement, &peer, Via::Gossip);
    let (reply, fx) = replicas(&mut sim, 1, 600);
    assert_eq!(probes(&fx), vec![(peer.public(), manifest(2))]);
    let fx = probed(&mut sim, &peer, 2, false);
    assert!(reply_to(&fx, reply).is_none());
    sim.advance(PROBE_RETRY);
    let fx = sim.event(Event::Timer(TimerKey::ReplicasAsk(repo())));
    assert_eq!(probes(&fx), vec![(peer.public(), manifest(2))], "retried");
    let fx = probed(&mut sim, &peer, 2, true);
    assert!(matches!(
        reply_to(&fx, reply),
        Some(Reply::Ok(Payload::Replicas(_)))
    ));
    // The next state: the old proof does not carry over.
    sim.advance(Duration::from_secs(1));
    publish(&mut sim, 3);
    assert_eq!(sim.core.summaries()[0].peers_in_sync, 0);
    let statement = held_statement(&sim);
    forward(&mut sim, statement, &peer, Via::Gossip);
    assert_eq!(
        sim.core.summaries()[0].peers_in_sync,
        0,
        "a new claim needs a new proof"
    );
    let (_, fx) = replicas(&mut sim, 1, 600);
    assert_eq!(probes(&fx), vec![(peer.public(), manifest(3))]);
}

/// Any number of keys replaying this node's own older statement over the
/// direct path make it tell the whole topic once per window, and at most
/// a bounded number of them directly, whoever they are.
#[test]
fn replays_of_an_older_own_statement_rebroadcast_once_per_window() {
    let mut sim = Sim::new(4);
    sim.add(vec![], None);
    publish(&mut sim, 1);
    let old = held_statement(&sim);
    sim.advance(Duration::from_secs(1));
    publish(&mut sim, 2);
    let count = |fx: &[Effect]| {
        let topic = fx
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Announce {
                        audience: Audience::Everyone { .. },
                        ..
                    }
                )
            })
            .count();
        let direct: usize = fx
            .iter()
            .map(|e| match e {
                Effect::Announce {
                    audience:
                        Audience::Everyone { direct }
                        | Audience::Neighbors { direct }
                        | Audience::Direct { direct },
                    ..
                } => direct.len(),
                _ => 0,
            })
            .sum();
        (topic, direct)
    };
    let (mut topic, mut direct) = (0, 0);
    for n in 0..200 {
        let fx = forward(&mut sim, old.clone(), &fresh(n), Via::Direct);
        let (t, d) = count(&fx);
        topic += t;
        direct += d;
    }
    assert_eq!(topic, 1, "the topic hears it once per window");
    assert_eq!(direct, MAX_REBROADCAST_DIRECT);
    // The same replayer again and again changes nothing either.
    for _ in 0..50 {
        let fx = forward(&mut sim, old.clone(), &fresh(0), Via::Direct);
        assert_eq!(count(&fx), (0, 0));
    }
    // A new window allows one more.
    sim.advance(REBROADCAST_WINDOW);
    let fx = forward(&mut sim, old.clone(), &fresh(500), Via::Direct);
    assert_eq!(count(&fx), (1, 1));
    let fx = forward(&mut sim, old, &fresh(501), Via::Direct);
    assert_eq!(count(&fx), (0, 1));
}

/// A gossip neighbour is learned as a hint only when it is trusted or has
/// announced the state held or being fetched: joining the topic is not enough.
#[test]
fn a_gossip_neighbour_is_learned_only_when_trusted_or_providing() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    sim.add(vec![hint(&seeder)], None);
    sim.take(&seeder, 2, T0_MS);
    sim.core.repos.get_mut(&repo()).unwrap().book.hints.clear();
    let up = |sim: &mut Sim, k: &SecretKey| {
        sim.event(Event::NeighborUp {
            repo: repo(),
            peer: k.public(),
            addrs: vec!["127.0.0.1:4444".parse().unwrap()],
        })
    };
    let learned = |sim: &Sim, k: &SecretKey| {
        sim.core.repos[&repo()]
            .book
            .hints
            .iter()
            .any(|h| h.hint.node_id == k.public().to_string())
    };
    for n in 0..40 {
        up(&mut sim, &fresh(n));
    }
    assert!(
        (0..40).all(|n| !learned(&sim, &fresh(n))),
        "strangers joining the topic leave no hint"
    );
    up(&mut sim, &seeder);
    assert!(learned(&sim, &seeder), "a trusted neighbour is learned");
    // A stranger that announced the state held is a provider: learned.
    let provider = fresh(100);
    let statement = held_statement(&sim);
    forward(&mut sim, statement, &provider, Via::Gossip);
    sim.core.repos.get_mut(&repo()).unwrap().book.hints.clear();
    up(&mut sim, &provider);
    assert!(learned(&sim, &provider));
}

/// However many strangers announce the state held, the trusted seeder's
/// learned hint and its entry in the peers seen stay.
#[test]
fn strangers_never_evict_trusted_hints_or_peers_seen() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    sim.add(vec![], locator());
    sim.poll(record(None, None, &[&seeder]));
    sim.take(&seeder, 2, T0_MS);
    let statement = held_statement(&sim);
    for n in 0..300 {
        forward(&mut sim, statement.clone(), &fresh(n), Via::Gossip);
    }
    let r = &sim.core.repos[&repo()];
    let id = seeder.public().to_string();
    assert_eq!(r.book.hints.len(), hints::MAX_HINTS);
    assert!(
        r.book.hints.iter().any(|h| h.hint.node_id == id),
        "its hint stays"
    );
    assert_eq!(r.book.peers_seen.len(), MAX_PEERS_SEEN);
    assert!(
        r.book
            .peers_seen
            .iter()
            .any(|s| s.node_id == seeder.public()),
        "what it holds stays"
    );
    assert_eq!(sim.core.summaries()[0].peers_in_sync, 1);
}

/// After a fetch, the few peers told directly are trusted peers first:
/// four strangers announcing the state with seq 0 do not take every slot.
#[test]
fn catch_up_pushes_prefer_trusted_peers() {
    let mut sim = Sim::new(4);
    let author = key(1);
    let seeders = [key(2), key(3)];
    sim.add(
        vec![hint(&author), hint(&seeders[0]), hint(&seeders[1])],
        None,
    );
    sim.take(&author, 1, T0_MS);
    let statement = held_statement(&sim);
    for s in &seeders {
        forward(&mut sim, statement.clone(), s, Via::Gossip);
    }
    // Four strangers name the state held, under a statement of their own with seq 0.
    for n in 0..4 {
        let stranger = fresh(n);
        let own = crate::announce::Statement {
            repo_id: repo().to_string(),
            head: None,
            manifest: [1; 32],
            seq: 0,
            publisher: *stranger.public().as_bytes(),
        }
        .sign(&stranger);
        forward(&mut sim, own, &stranger, Via::Gossip);
    }
    let fx = sim.announce(&author, &author, 2, T0_MS + 1);
    let (job, _) = fetch_job(&fx).expect("a fetch starts");
    let fx = sim.finish(job, 2);
    let direct = fx
        .iter()
        .find_map(|e| match e {
            Effect::Announce {
                audience: Audience::Neighbors { direct },
                ..
            } => Some(direct.clone()),
            _ => None,
        })
        .expect("the new state is announced");
    // The catch-up pushes, then the peer it came from (see
    // `peers_seen_behind_are_told_of_a_fetched_state_directly`).
    assert_eq!(direct.len(), MAX_CATCH_UP_PUSHES + 1);
    for s in &seeders {
        assert!(direct.contains(&s.public()), "{direct:?}");
    }
    assert_eq!(direct.last(), Some(&author.public()), "{direct:?}");
}

/// Fresh keys churning through the peers seen during one long wait for
/// replicas, each failing its probe, cannot grow the probes kept: failed
/// probes are remembered only for peers still seen.
#[test]
fn fresh_keys_failing_probes_cannot_grow_the_probes_kept() {
    let mut sim = Sim::new(4);
    sim.add(vec![], None);
    publish(&mut sim, 2);
    let statement = held_statement(&sim);
    replicas(&mut sim, 3, 3600);
    for n in 0..400u32 {
        let stranger = fresh(1000 + n);
        let fx = forward(&mut sim, statement.clone(), &stranger, Via::Direct);
        for (peer, _) in probes(&fx) {
            sim.event(Event::ReplicaProbed {
                repo: repo(),
                peer,
                manifest: manifest(2),
                proved: false,
            });
        }
        sim.advance(Duration::from_millis(100));
    }
    let kept = sim.core.repos[&repo()].probes.len();
    assert!(
        kept <= MAX_PEERS_SEEN + crate::core::repo::MAX_PROBES,
        "{kept} probes kept"
    );
}
