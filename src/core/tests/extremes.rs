//! No value makes the core panic: every timer it sets saturates at
//! [`MAX_TIMER_WAIT`] from now, whatever wait an admin command or a setting
//! asks for.

use std::time::Duration;

use super::*;

/// Every timer in `fx` is due within [`MAX_TIMER_WAIT`] of `now`.
fn timers_bounded(sim: &Sim, fx: &[Effect]) -> usize {
    let latest = sim.now().at + MAX_TIMER_WAIT;
    let timers: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::SetTimer { key, at } => Some((key.clone(), *at)),
            _ => None,
        })
        .collect();
    for (key, at) in &timers {
        assert!(*at <= latest, "{key:?} is set beyond {MAX_TIMER_WAIT:?}");
    }
    timers.len()
}

#[test]
fn a_replicas_wait_of_any_length_saturates() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 2, T0_MS);
    for timeout in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::from_secs(100_000_000), // about three years
        Duration::ZERO,
    ] {
        let (_, fx) = sim.command(CoreCommand::Replicas {
            repo_id: repo(),
            count: usize::MAX,
            timeout,
        });
        assert!(
            fx.iter().any(|e| matches!(
                e,
                Effect::SetTimer {
                    key: TimerKey::ReplicasDeadline(..),
                    ..
                }
            )),
            "{fx:?}"
        );
        timers_bounded(&sim, &fx);
    }
}

#[test]
fn settings_of_any_length_saturate() {
    let mut sim = Sim::new(4);
    sim.core.settings.retry_base = Duration::MAX;
    sim.core.settings.retry_max = Duration::MAX;
    sim.core.settings.first_state_wait = Duration::MAX;
    sim.core.settings.rejoin_base = Duration::MAX;
    sim.core.settings.rejoin_max = Duration::MAX;
    sim.core.settings.retired_grace = Duration::MAX;
    let author = key(1);
    // A topic joined: the rejoin sweep is armed.
    let fx = sim.add(vec![hint(&author)], None);
    let mut set = timers_bounded(&sim, &fx);
    // A sync waiting for a first state.
    let (_, fx) = sim.command(CoreCommand::Sync { repo_id: repo() });
    set += timers_bounded(&sim, &fx);
    // A failed fetch, retried later.
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    let fx = sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err("no provider".into()),
        faults: vec![],
    });
    set += timers_bounded(&sim, &fx);
    // A followed identity's repository retired, removed after the grace.
    let did = "did:plc:owner";
    sim.command(CoreCommand::Follow { did: did.into() });
    let mut r = RepoRecord::empty(rid(&format!("{did}/other")));
    r.seq = Some(T0_MS);
    let listed = crate::record::ListedRecord {
        rkey: "other".into(),
        cid: None,
        value: serde_json::to_value(&r).unwrap(),
    };
    sim.listed(did, Ok((vec![listed], true)));
    let fx = sim.listed(did, Ok((vec![], true)));
    set += timers_bounded(&sim, &fx);
    assert!(set >= 4, "every kind of wait was exercised");
    // A restart with all of it.
    let (restarted, fx) = sim.restart();
    timers_bounded(&restarted, &fx);
}

#[test]
fn the_saturated_deadline_never_overflows() {
    let now = std::time::Instant::now();
    assert_eq!(later(now, Duration::MAX), now + MAX_TIMER_WAIT);
    assert_eq!(
        later(now, Duration::from_secs(5)),
        now + Duration::from_secs(5)
    );
}

/// States held before a restart whose sizes add up past `u64::MAX` (rows
/// from a damaged or hand-edited database): the total quota saturates, so
/// starting the start-up checks neither overflows nor leaves room.
#[test]
fn held_sizes_past_the_integer_range_saturate_the_total_quota() {
    let mut sim = Sim::new(4);
    sim.core.settings.max_total_bytes = Some(u64::MAX);
    let author = key(1);
    let rows = (0..3u8)
        .map(|n| {
            let id = rid(&format!("did:plc:owner/huge{n}"));
            let statement = Statement {
                repo_id: id.to_string(),
                head: None,
                manifest: [n + 1; 32],
                seq: 5,
                publisher: *author.public().as_bytes(),
            }
            .sign(&author);
            RepoRow {
                config: RepoConfig::new(id, Origin::Operator, 0),
                record: None,
                held: Some(Held {
                    manifest: Hash::from_bytes([n + 1; 32]),
                    head: None,
                    statement,
                    pack_count: 1,
                    bytes: 1 << 63,
                    since: 0,
                    write_back_pending: false,
                }),
                bookkeeping: Bookkeeping::default(),
            }
        })
        .collect();
    let now = sim.now();
    let fx = sim.core.load(rows, vec![], now);
    let limits: Vec<Option<u64>> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::StartJob {
                spec: JobSpec::Fetch { limit, .. },
                ..
            } => Some(*limit),
            _ => None,
        })
        .collect();
    assert!(!limits.is_empty(), "the start-up checks start: {fx:?}");
    assert!(limits.iter().all(|l| *l == Some(0)), "{limits:?}");
}
