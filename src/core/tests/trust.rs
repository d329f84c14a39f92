//! One scenario per trust rule.

use std::time::Duration;

use super::*;

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
fn a_publish_is_newer_than_anything_known_and_saturates() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 2, T0_MS + crate::core::trust::MAX_SEQ_AHEAD_MS);
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
        T0_MS + crate::core::trust::MAX_SEQ_AHEAD_MS + 1
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
fn an_operator_peer_removed_by_the_operator_is_revoked() {
    let mut sim = Sim::new(4);
    let seeder = key(2);
    sim.add(vec![hint(&seeder)], None);
    sim.take(&seeder, 2, T0_MS);
    let (reply, fx) = sim.command(CoreCommand::RemovePeer {
        repo_id: repo(),
        node_id: seeder.public(),
    });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Ok(_))));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Config(c)) if c.operator_peers.is_empty()))
    );
    let fx = sim.announce(&seeder, &seeder, 3, T0_MS + 1);
    assert!(jobs(&fx).is_empty(), "revoked");
    let (reply, fx) = sim.command(CoreCommand::RemovePeer {
        repo_id: repo(),
        node_id: seeder.public(),
    });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(e)) if e.contains("--peer")));
}

#[test]
fn a_far_future_record_is_not_taken_and_cannot_pin_the_state_across_a_restart() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    let fx = sim.poll(record(Some(1), Some(T0_MS), &[]));
    let (job, _) = fetch_job(&fx).unwrap();
    sim.finish(job, 1);
    // The record names a second state at the highest seq: a broken clock,
    // not taken.
    sim.advance(Duration::from_secs(1));
    let fx = sim.poll(record(Some(2), Some(u64::MAX), &[]));
    assert!(fetch_job(&fx).is_none(), "{fx:?}");
    // A copy an older knotd left pending, with that seq, is judged the same
    // way at start-up: nothing is resumed, nothing pinned.
    let mut pending = sim.core.repos[&repo()].record.clone().unwrap();
    pending.pending = true;
    sim.writes.push(Write::Record(repo(), Some(pending)));
    let (mut restarted, fx) = sim.restart();
    assert!(
        jobs(&fx).iter().all(
            |(_, spec)| matches!(spec, JobSpec::Fetch { manifest: m, .. } if *m == manifest(1))
        ),
        "only the held state is checked: {fx:?}"
    );
    let (check, _) = fetch_job(&fx).expect("the held state is checked");
    restarted.finish(check, 1);
    let seq = restarted.held().unwrap().seq();
    assert!(
        seq <= restarted.now().unix_ms + crate::core::trust::MAX_SEQ_AHEAD_MS,
        "held at seq {seq}: the one-hour bound applies at start-up too"
    );
    // The owner's next record is taken.
    restarted.advance(Duration::from_secs(5));
    let later = restarted.now().unix_ms;
    let fx = restarted.poll(record(Some(3), Some(later), &[]));
    let (job, m) = fetch_job(&fx).expect("a later record is taken");
    assert_eq!(m, manifest(3));
    restarted.finish(job, 3);
    assert_eq!(restarted.held().unwrap().seq(), later);
}

fn polled(sim: &mut Sim, outcome: RecordPoll) -> Vec<Effect> {
    sim.polled(&repo(), outcome)
}

#[test]
fn a_deleted_record_revokes_its_peers_and_failed_polls_keep_them() {
    let mut sim = Sim::new(4);
    let laptop = key(2);
    sim.add(vec![], locator());
    sim.poll(record(None, None, &[&laptop]));
    sim.take(&laptop, 2, T0_MS);
    // Polls without an answer to go by keep the copy: still trusted.
    polled(&mut sim, RecordPoll::Unreachable("PDS down".into()));
    polled(&mut sim, RecordPoll::Invalid("not a record".into()));
    let fx = sim.announce(&laptop, &laptop, 3, T0_MS + 10);
    let (job, _) = fetch_job(&fx).expect("a failed poll revokes nothing");
    sim.finish(job, 3);

    // The owner deletes the record: the peers it named are revoked.
    let fx = polled(&mut sim, RecordPoll::NotFound("no such record".into()));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Record(_, None)))),
        "withdrawn durably: {fx:?}"
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Notify { event: crate::api::NodeEvent::RecordDeleted { revoked, .. }, .. }
            if revoked == &vec![laptop.public().to_string()]
    )));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::LeaveTopic { .. }))
            && sim.core.reads.records.contains(&repo()),
        "the operator's repository stays, polled and served: {fx:?}"
    );
    let fx = sim.announce(&laptop, &laptop, 4, T0_MS + 20);
    assert!(jobs(&fx).is_empty(), "revoked: {fx:?}");
    let summary = &sim.core.summaries()[0];
    assert!(summary.record_deleted);
    assert_eq!(summary.trusted_peers, 0);
    assert_eq!(
        sim.held().unwrap().manifest_hash(),
        manifest(3),
        "the state stays"
    );

    // Also after a restart.
    let (mut restarted, fx) = sim.restart();
    let (check, _) = fetch_job(&fx).expect("the held state is checked");
    restarted.finish(check, 3);
    let fx = restarted.announce(&laptop, &laptop, 4, T0_MS + 20);
    assert!(fetch_job(&fx).is_none(), "still revoked after a restart");

    // The owner writes the record again: its peers are trusted again.
    restarted.poll(record(Some(3), Some(T0_MS + 10), &[&laptop]));
    assert!(!restarted.core.summaries()[0].record_deleted);
    let fx = restarted.announce(&laptop, &laptop, 4, T0_MS + 20);
    assert!(fetch_job(&fx).is_some(), "trusted again");
}

#[test]
fn a_sync_of_a_deleted_record_says_so() {
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    let (reply, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    let _ = fx;
    assert!(sim.reading(&repo().to_string()), "a read answers the sync");
    let fx = polled(
        &mut sim,
        RecordPoll::NotFound("record at://x does not exist".into()),
    );
    assert!(
        matches!(reply_to(&fx, reply), Some(Reply::Error(e)) if e.contains("does not exist")),
        "{fx:?}"
    );
}

#[test]
fn a_lagging_read_of_a_seqless_record_cannot_roll_the_node_back() {
    // The owner's record carries no seq (an older client wrote it), naming
    // state 2; the node holds a newer state 3 from the author.
    let author = key(1);
    let mut sim = Sim::new(4);
    sim.add(vec![], locator());
    let fx = sim.poll(record(Some(2), None, &[&author]));
    let (job, _) = fetch_job(&fx).expect("the record's state is taken");
    sim.finish(job, 2);
    sim.take(&author, 3, T0_MS + 10);
    // A read served by a lagging replica names an older version...
    let fx = sim.poll(record(Some(1), Some(T0_MS - 10), &[&author]));
    assert!(fetch_job(&fx).is_none());
    // ...and the next read names state 2 again: named before, not taken.
    let fx = sim.poll(record(Some(2), None, &[&author]));
    assert!(
        fetch_job(&fx).is_none(),
        "a record naming a state it named before is not a new state"
    );
    assert_eq!(sim.held().map(|h| h.manifest_hash()), Some(manifest(3)));
}

#[test]
fn a_state_whose_publisher_lost_its_trust_during_the_fetch_is_not_taken() {
    let mut sim = Sim::new(4);
    let laptop = key(2);
    sim.add(vec![], locator());
    sim.poll(record(None, None, &[&laptop]));
    sim.take(&laptop, 2, T0_MS);
    let fx = sim.announce(&laptop, &laptop, 3, T0_MS + 10);
    let (job, _) = fetch_job(&fx).expect("a trusted peer's state is fetched");
    // While the fetch runs, a poll finds the record deleted: the laptop is
    // no longer trusted.
    polled(&mut sim, RecordPoll::NotFound("no such record".into()));
    let fx = sim.finish(job, 3);
    assert_eq!(
        sim.held().unwrap().manifest_hash(),
        manifest(2),
        "the state held stays: {fx:?}"
    );
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Announce { .. })),
        "nothing announced: {fx:?}"
    );
    assert!(
        fx.iter().any(|e| matches!(e, Effect::Served { .. })),
        "what is served is the state held: {fx:?}"
    );
}
