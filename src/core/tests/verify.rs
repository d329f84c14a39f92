//! Checks of held states: `verify`, the verify schedule, and the check
//! after a collector pass that may have raced a fetch.

use super::*;
use crate::api::{NodeEvent, VerifyRow};

fn check_job(fx: &[Effect]) -> Option<(JobId, Hash)> {
    fx.iter().find_map(|e| match e {
        Effect::StartJob {
            job,
            spec:
                JobSpec::Fetch {
                    manifest,
                    repair: true,
                    ..
                },
            ..
        } => Some((*job, *manifest)),
        _ => None,
    })
}

fn verified(fx: &[Effect], id: ReplyId) -> Vec<VerifyRow> {
    match reply_to(fx, id) {
        Some(Reply::Ok(Payload::Verified(report))) => report.repos,
        other => panic!("expected a verify report, got {other:?}"),
    }
}

fn repaired(fx: &[Effect]) -> Option<(usize, usize)> {
    fx.iter().find_map(|e| match e {
        Effect::Notify {
            event: NodeEvent::Repaired {
                rebuilt, fetched, ..
            },
            ..
        } => Some((*rebuilt, *fetched)),
        _ => None,
    })
}

fn holding(m: u8) -> (Sim, SecretKey) {
    let author = key(1);
    let mut sim = Sim::new(4);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, m, 10);
    (sim, author)
}

#[test]
fn verify_checks_the_held_state_and_reports_what_was_put_back() {
    let (mut sim, _) = holding(1);
    let (reply, fx) = sim.command(CoreCommand::Verify {
        repo_id: Some(repo()),
    });
    let (job, m) = check_job(&fx).expect("a check of the held state starts");
    assert_eq!(m, manifest(1));
    assert!(
        reply_to(&fx, reply).is_none(),
        "the caller waits for the check"
    );
    let mut found = info(1);
    found.blobs_rebuilt = 1;
    found.blobs_fetched = 2;
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Ok(found),
        faults: vec![],
    });
    let rows = verified(&fx, reply);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].rebuilt, rows[0].fetched), (1, 2));
    assert!(rows[0].ok());
    assert_eq!(
        repaired(&fx),
        Some((1, 2)),
        "an event says what was put back"
    );
    assert_eq!(
        sim.held().map(|h| h.seq()),
        Some(10),
        "the state is unchanged"
    );
}

#[test]
fn a_check_that_finds_everything_is_quiet() {
    let (mut sim, _) = holding(1);
    let (reply, fx) = sim.command(CoreCommand::Verify { repo_id: None });
    let (job, _) = check_job(&fx).expect("a check starts");
    let fx = sim.finish(job, 1);
    let rows = verified(&fx, reply);
    assert_eq!(
        (rows[0].rebuilt, rows[0].fetched, rows[0].ok()),
        (0, 0, true)
    );
    assert_eq!(repaired(&fx), None);
}

#[test]
fn a_failed_check_answers_with_its_error_and_is_retried() {
    let (mut sim, _) = holding(1);
    let (reply, fx) = sim.command(CoreCommand::Verify {
        repo_id: Some(repo()),
    });
    let (job, _) = check_job(&fx).expect("a check starts");
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err("could not fetch pack from any peer".into()),
        faults: vec![],
    });
    let rows = verified(&fx, reply);
    assert_eq!(
        rows[0].error.as_deref(),
        Some("could not fetch pack from any peer")
    );
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::SetTimer {
                key: TimerKey::Retry(_),
                ..
            }
        )),
        "the check is retried"
    );
}

#[test]
fn verify_waits_for_a_running_fetch_and_checks_the_newer_state() {
    let (mut sim, author) = holding(1);
    let fx = sim.announce(&author, &author, 2, 20);
    let (fetch, _) = fetch_job(&fx).expect("the newer state is fetched");
    let (reply, fx) = sim.command(CoreCommand::Verify {
        repo_id: Some(repo()),
    });
    assert!(jobs(&fx).is_empty(), "one job per repository");
    let fx = sim.finish(fetch, 2);
    let (check, m) = check_job(&fx).expect("the check runs next");
    assert_eq!(m, manifest(2), "of the state held now");
    let fx = sim.finish(check, 2);
    let rows = verified(&fx, reply);
    assert_eq!(rows[0].manifest, Some(manifest(2).to_hex()));
}

#[test]
fn verify_during_a_running_check_is_answered_by_the_next_check() {
    // A check already running (the start-up check, say) found a blob
    // missing; a caller who asks while it runs gets a check of its own,
    // which finds the state whole.
    let (mut sim, _) = holding(1);
    let (first, fx) = sim.command(CoreCommand::Verify {
        repo_id: Some(repo()),
    });
    let (running, _) = check_job(&fx).expect("a check starts");
    let (second, fx) = sim.command(CoreCommand::Verify {
        repo_id: Some(repo()),
    });
    assert!(jobs(&fx).is_empty(), "one job per repository");
    let mut found = info(1);
    found.blobs_rebuilt = 1;
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job: running,
        result: Ok(found),
        faults: vec![],
    });
    assert_eq!(
        verified(&fx, first)[0].rebuilt,
        1,
        "the first caller's check"
    );
    assert!(
        reply_to(&fx, second).is_none(),
        "the second caller waits for a check that started after it asked"
    );
    let (next, _) = check_job(&fx).expect("the second check runs next");
    let fx = sim.finish(next, 1);
    let rows = verified(&fx, second);
    assert_eq!(
        (rows[0].rebuilt, rows[0].fetched, rows[0].ok()),
        (0, 0, true)
    );
}

#[test]
fn verify_of_nothing_held_answers_at_once() {
    let mut sim = Sim::new(4);
    sim.add(vec![], None);
    let (reply, fx) = sim.command(CoreCommand::Verify { repo_id: None });
    let rows = verified(&fx, reply);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].manifest, None);
    assert!(jobs(&fx).is_empty());
    let (reply, fx) = sim.command(CoreCommand::Verify {
        repo_id: Some(rid("did:plc:nobody/x")),
    });
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(e)) if e.contains("not tracked")));
}

#[test]
fn a_repository_removed_during_verify_is_reported_removed() {
    let (mut sim, _) = holding(1);
    let (reply, fx) = sim.command(CoreCommand::Verify {
        repo_id: Some(repo()),
    });
    assert!(check_job(&fx).is_some());
    let (_, fx) = sim.command(CoreCommand::RemoveRepo { repo_id: repo() });
    let rows = verified(&fx, reply);
    assert!(
        rows[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("removed"))
    );
}

#[test]
fn a_fetch_that_reused_unpinned_blobs_is_checked_after_the_next_gc_pass() {
    let author = key(1);
    let mut sim = Sim::new(4);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, 1, 10);
    let (job, _) = fetch_job(&fx).expect("a fetch starts");
    let mut fetched = info(1);
    fetched.recheck_after_gc_pass = Some(3);
    sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Ok(fetched),
        faults: vec![],
    });
    // The pass that was running when the pins were set may still delete.
    let fx = sim.event(Event::GcPass { passes: 3 });
    assert!(check_job(&fx).is_none());
    // Once the next pass starts, that one is over: check what it left.
    let fx = sim.event(Event::GcPass { passes: 4 });
    let (check, m) = check_job(&fx).expect("the state is checked");
    assert_eq!(m, manifest(1));
    let fx = sim.finish(check, 1);
    assert!(jobs(&fx).is_empty());
    let fx = sim.event(Event::GcPass { passes: 5 });
    assert!(check_job(&fx).is_none(), "checked once");
}

#[test]
fn the_verify_schedule_checks_every_held_state_and_rearms() {
    let (mut sim, _) = holding(1);
    let fx = sim.event(Event::Timer(TimerKey::VerifyAll));
    let (job, _) = check_job(&fx).expect("a check starts");
    let every = sim.core.settings.verify_interval.expect("a schedule");
    let now = sim.now();
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::SetTimer { key: TimerKey::VerifyAll, at } if *at == now.at + every
    )));
    let fx = sim.finish(job, 1);
    assert_eq!(repaired(&fx), None);
}

#[test]
fn a_restart_arms_the_verify_schedule() {
    let (sim, _) = holding(1);
    let (_, fx) = sim.restart();
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::SetTimer {
            key: TimerKey::VerifyAll,
            ..
        }
    )));
    assert!(check_job(&fx).is_some(), "held states are checked at start");
}
