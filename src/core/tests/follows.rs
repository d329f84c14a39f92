//! Following an identity: its listings track, refresh and retire repositories.

use super::*;
use std::time::Duration;

use crate::record::ListedRecord;

const DID: &str = "did:plc:owner";

fn listed(name: &str, m: u8) -> ListedRecord {
    let mut r = RepoRecord::empty(rid(&format!("{DID}/{name}")));
    r.manifest = Some(data_encoding::HEXLOWER.encode(&[m; 32]));
    r.seq = Some(T0_MS);
    ListedRecord {
        rkey: name.into(),
        cid: Some(format!("cid-{name}")),
        value: serde_json::to_value(&r).unwrap(),
    }
}

fn listing(sim: &mut Sim, records: Vec<ListedRecord>, complete: bool) -> Vec<Effect> {
    sim.listed(DID, Ok((records, complete)))
}

/// Whether `name`'s record is read on the schedule.
fn record_read(sim: &Sim, name: &str) -> bool {
    sim.core
        .reads
        .records
        .contains(&rid(&format!("{DID}/{name}")))
}

fn summary(sim: &Sim, name: &str) -> Option<crate::api::RepoSummary> {
    sim.core
        .summaries()
        .into_iter()
        .find(|s| s.repo_id == format!("{DID}/{name}"))
}

#[test]
fn a_followed_identity_brings_its_repositories_and_retires_deleted_ones() {
    let mut sim = Sim::new(4);
    let (reply, fx) = sim.command(CoreCommand::Follow { did: DID.into() });
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::ListIdentity { did, .. } if did == DID)),
        "the first listing starts at once"
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Follow(_))))
    );
    assert!(
        reply_to(&fx, reply).is_none(),
        "answered after the first listing"
    );

    let mut foreign = listed("x", 9);
    foreign.value["repoId"] = "did:plc:other/x".into();
    let fx = listing(
        &mut sim,
        vec![listed("a", 1), listed("b", 2), foreign],
        true,
    );
    assert!(
        matches!(reply_to(&fx, reply), Some(Reply::Ok(Payload::Done { message })) if message.contains("2 repositories"))
    );
    let tracked: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::PollRecord { repo, locator, .. } => {
                Some((repo.to_string(), locator.rkey.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(tracked.len(), 2, "{tracked:?}");
    assert_eq!(jobs(&fx).len(), 2, "each record's state is fetched");
    assert_eq!(
        summary(&sim, "a").unwrap().followed_via.as_deref(),
        Some(DID)
    );
    assert!(
        summary(&sim, "x").is_none(),
        "another account's repository is ignored"
    );

    // An incomplete listing retires nothing.
    listing(&mut sim, vec![listed("a", 1)], false);
    assert!(record_read(&sim, "a") && record_read(&sim, "b"));
    // A complete one without b: b is no longer polled, its content stays.
    let fx = listing(&mut sim, vec![listed("a", 1)], true);
    assert!(record_read(&sim, "a") && !record_read(&sim, "b"));
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(_))))
    );
    assert!(summary(&sim, "b").unwrap().record_deleted);
    // It comes back.
    let fx = listing(&mut sim, vec![listed("a", 1), listed("b", 2)], true);
    assert!(record_read(&sim, "b"));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::PollRecord { repo, .. } if repo.name() == "b")),
        "read again at once"
    );
    assert!(!summary(&sim, "b").unwrap().record_deleted);

    // After a restart the identity is listed again.
    let (_, fx) = sim.restart();
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::ListIdentity { did, .. } if did == DID))
    );
}

#[test]
fn unfollowing_removes_what_the_identity_brought_and_nothing_else() {
    let mut sim = Sim::new(4);
    sim.command(CoreCommand::AddRepo {
        repo_id: rid(&format!("{DID}/mine")),
        locator: None,
        peers: vec![],
    });
    sim.command(CoreCommand::Follow { did: DID.into() });
    listing(&mut sim, vec![listed("a", 1), listed("mine", 2)], true);
    assert!(
        summary(&sim, "mine").unwrap().followed_via.is_none(),
        "the operator's own"
    );
    let (reply, fx) = sim.command(CoreCommand::Unfollow { did: DID.into() });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Ok(_))));
    assert!(!sim.core.reads.listings.contains(&DID.to_string()));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(r)) if r.name() == "a"))
    );
    assert!(summary(&sim, "a").is_none());
    assert!(summary(&sim, "mine").is_some());
    let (reply, fx) = sim.command(CoreCommand::Unfollow { did: DID.into() });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(_))));
}

#[test]
fn a_failed_first_listing_answers_and_keeps_following() {
    let mut sim = Sim::new(4);
    let (reply, _) = sim.command(CoreCommand::Follow { did: DID.into() });
    let fx = sim.listed(DID, Err("PDS down".into()));
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(e)) if e.contains("keeps trying")));
    let follows = sim.core.follow_summaries();
    assert_eq!(follows[0].last_error.as_deref(), Some("PDS down"));
}

fn tracked_by_did(sim: &Sim) -> usize {
    sim.core
        .summaries()
        .iter()
        .filter(|s| s.followed_via.as_deref() == Some(DID))
        .count()
}

fn notified_limit(fx: &[Effect]) -> Option<usize> {
    fx.iter().find_map(|e| match e {
        Effect::Notify {
            event: crate::api::NodeEvent::FollowLimit { refused, .. },
            ..
        } => Some(*refused),
        _ => None,
    })
}

#[test]
fn a_retired_repository_leaves_its_topic_and_is_removed_after_the_grace_period() {
    let mut sim = Sim::new(4);
    let grace = sim.core.settings.retired_grace;
    let seeder = key(5);
    sim.command(CoreCommand::Follow { did: DID.into() });
    let mut b = listed("b", 2);
    b.value["peers"] = serde_json::json!([{"nodeId": seeder.public().to_string()}]);
    listing(&mut sim, vec![listed("a", 1), b.clone()], true);
    let b_id = rid(&format!("{DID}/b"));
    assert!(sim.core.repos[&b_id].topic.is_some());
    assert!(
        sim.core.repos[&b_id]
            .trusted(sim.me())
            .contains(&seeder.public())
    );

    let fx = listing(&mut sim, vec![listed("a", 1)], true);
    for (what, found) in [
        (
            "leaves its topic",
            fx.iter()
                .any(|e| matches!(e, Effect::LeaveTopic { repo } if *repo == b_id)),
        ),
        (
            "is no longer polled",
            !sim.core.reads.records.contains(&b_id),
        ),
        (
            "withdraws its record's trust",
            fx.iter()
                .any(|e| matches!(e, Effect::Persist(Write::Record(r, None)) if *r == b_id)),
        ),
        (
            "arms the removal",
            fx.iter().any(|e| matches!(e, Effect::SetTimer { key: TimerKey::RemoveRetired, at } if *at == sim.now().at + grace)),
        ),
    ] {
        assert!(found, "a retired repository {what}: {fx:?}");
    }
    assert!(
        !sim.core.repos[&b_id]
            .trusted(sim.me())
            .contains(&seeder.public())
    );
    let removal = summary(&sim, "b").unwrap().remove_at.unwrap();
    assert_eq!(removal, sim.now().unix_secs() + grace.as_secs());
    // Nothing brings its topic back while it is retired.
    sim.core.ensure_topic(&b_id, sim.now());
    assert!(sim.core.repos[&b_id].topic.is_none());

    // After a restart it stays retired: not polled, no topic, removal armed.
    let (mut restarted, fx) = sim.restart();
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::PollRecord { repo, .. } | Effect::JoinTopic { repo, .. } if *repo == b_id)),
        "{fx:?}"
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::SetTimer {
            key: TimerKey::RemoveRetired,
            ..
        }
    )));

    // Kept through the grace period, removed after it.
    restarted.advance(grace - Duration::from_secs(1));
    let fx = restarted.event(Event::Timer(TimerKey::RemoveRetired));
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(_))))
    );
    assert!(summary(&restarted, "b").is_some());
    restarted.advance(Duration::from_secs(1));
    let fx = restarted.event(Event::Timer(TimerKey::RemoveRetired));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(r)) if *r == b_id)),
        "{fx:?}"
    );
    assert!(summary(&restarted, "b").is_none());
    assert!(summary(&restarted, "a").is_some(), "a listed one stays");

    // A removal whose commit was lost (a full disk, then a crash): the
    // next start removes it at once, so the cap on what one identity
    // brings holds from the first step (simulator seed 450445).
    sim.advance(grace + Duration::from_secs(1));
    let (restarted, fx) = sim.restart();
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(r)) if *r == b_id)),
        "{fx:?}"
    );
    assert!(summary(&restarted, "b").is_none());
}

#[test]
fn a_record_back_within_the_grace_period_is_not_removed() {
    let mut sim = Sim::new(4);
    let grace = sim.core.settings.retired_grace;
    sim.command(CoreCommand::Follow { did: DID.into() });
    listing(&mut sim, vec![listed("a", 1)], true);
    listing(&mut sim, vec![], true);
    assert!(summary(&sim, "a").unwrap().record_deleted);
    sim.advance(grace / 2);
    let fx = listing(&mut sim, vec![listed("a", 1)], true);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::JoinTopic { repo, .. } if repo.name() == "a")),
        "it rejoins its topic: {fx:?}"
    );
    sim.advance(grace);
    let fx = sim.event(Event::Timer(TimerKey::RemoveRetired));
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(_))))
    );
    let a = summary(&sim, "a").unwrap();
    assert!(!a.record_deleted && a.remove_at.is_none());
}

#[test]
fn an_identity_renaming_its_records_cannot_grow_the_node_past_its_limit() {
    let mut sim = Sim::new(4);
    sim.core.settings.max_repos_per_identity = 10;
    let (reply, _) = sim.command(CoreCommand::Follow { did: DID.into() });
    let names = |round: usize, n: usize| -> Vec<ListedRecord> {
        (0..n)
            .map(|i| listed(&format!("r{round}-{i}"), 1))
            .collect()
    };
    // Too many at once: the first ten are taken, the rest refused, and the
    // caller, `status` and watchers are told.
    let fx = listing(&mut sim, names(0, 15), true);
    assert_eq!(tracked_by_did(&sim), 10);
    assert_eq!(notified_limit(&fx), Some(5));
    assert!(
        matches!(reply_to(&fx, reply), Some(Reply::Ok(Payload::Done { message })) if message.contains("max_repos_per_identity")),
        "{fx:?}"
    );
    let error = sim.core.follow_summaries()[0].last_error.clone().unwrap();
    assert!(error.contains("max_repos_per_identity"), "{error}");
    // Every listing renames every record: the retired ones count until
    // they are removed, so the node does not grow.
    for round in 1..=5 {
        let fx = listing(&mut sim, names(round, 10), true);
        assert_eq!(tracked_by_did(&sim), 10, "round {round}");
        assert_eq!(notified_limit(&fx), Some(10));
        sim.advance(Duration::from_secs(60));
    }
    let joined = sim
        .core
        .repos
        .values()
        .filter(|r| r.topic.is_some())
        .count();
    assert_eq!(joined, 0, "retired repositories hold no topic");
    // After the grace period the retired ones go and current names fit.
    sim.advance(sim.core.settings.retired_grace);
    sim.event(Event::Timer(TimerKey::RemoveRetired));
    assert_eq!(tracked_by_did(&sim), 0);
    let fx = listing(&mut sim, names(6, 10), true);
    assert_eq!(tracked_by_did(&sim), 10);
    assert_eq!(notified_limit(&fx), None);
    assert!(sim.core.follow_summaries()[0].last_error.is_none());
}
