//! Following an identity: its listings track, refresh and retire repositories.

use super::*;
use crate::atproto::ListedRecord;

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
    sim.event(Event::Listed {
        did: DID.into(),
        result: Ok((records, complete)),
    })
}

fn summary(sim: &Sim, name: &str) -> Option<crate::admin::RepoSummary> {
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
            .any(|e| matches!(e, Effect::TrackIdentity { did } if did == DID))
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
            Effect::TrackRecord { repo, locator } => Some((repo.to_string(), locator.rkey.clone())),
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
    let fx = listing(&mut sim, vec![listed("a", 1)], false);
    assert!(!fx.iter().any(|e| matches!(e, Effect::UntrackRecord { .. })));
    // A complete one without b: b is no longer polled, its content stays.
    let fx = listing(&mut sim, vec![listed("a", 1)], true);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::UntrackRecord { repo } if repo.name() == "b"))
    );
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(_))))
    );
    assert!(summary(&sim, "b").unwrap().record_deleted);
    // It comes back.
    let fx = listing(&mut sim, vec![listed("a", 1), listed("b", 2)], true);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::TrackRecord { repo, .. } if repo.name() == "b"))
    );
    assert!(!summary(&sim, "b").unwrap().record_deleted);

    // After a restart the identity is listed again.
    let (_, fx) = sim.restart();
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::TrackIdentity { did } if did == DID))
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
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::UntrackIdentity { .. }))
    );
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
    let fx = sim.event(Event::Listed {
        did: DID.into(),
        result: Err("PDS down".into()),
    });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(e)) if e.contains("keeps trying")));
    let follows = sim.core.follow_summaries();
    assert_eq!(follows[0].last_error.as_deref(), Some("PDS down"));
}
