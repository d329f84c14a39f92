//! What is served to git clients follows what the core holds: a state is
//! served once it is held (loaded, published, fetched), after it is
//! written durably and before anyone is told; a job that fails or is
//! refused changes nothing; a removed repository is served no more.

use super::*;

/// The `Served` effects among `fx`, in order.
fn served(fx: &[Effect]) -> Vec<(RepoId, Option<ServedState>)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Served { repo, state } => Some((repo.clone(), state.clone())),
            _ => None,
        })
        .collect()
}

/// What the node serves of [`repo`] when it holds `m`.
fn serving(m: u8) -> Option<ServedState> {
    Some(ServedState {
        manifest: manifest(m),
        head: info(m).head,
        path: repo().relative_path(),
    })
}

fn failed(sim: &mut Sim, job: JobId, error: JobError) -> Vec<Effect> {
    sim.event(Event::JobDone {
        repo: repo(),
        job,
        result: Err(error),
        faults: vec![],
    })
}

#[test]
fn a_published_state_is_served_once_durable_and_before_the_caller_hears() {
    let mut sim = Sim::new(4);
    let (reply, job, _) = sim.start_publish();
    let fx = sim.finish(job, 2);
    assert_eq!(served(&fx), vec![(repo(), serving(2))]);
    let at = |pred: &dyn Fn(&Effect) -> bool| position(&fx, pred).unwrap();
    let held = at(&|e| matches!(e, Effect::Persist(Write::Held(..))));
    let serve = at(&|e| matches!(e, Effect::Served { .. }));
    let answered = at(&|e| matches!(e, Effect::Reply { to, .. } if *to == reply));
    let announced = at(&|e| matches!(e, Effect::Announce { .. }));
    assert!(
        held < serve && serve < answered && serve < announced,
        "{fx:?}"
    );

    // A new state replaces it; a failed publish leaves it.
    let (_, job, _) = sim.start_publish();
    assert_eq!(served(&sim.finish(job, 3)), vec![(repo(), serving(3))]);
    let (reply, job, _) = sim.start_publish();
    let fx = failed(&mut sim, job, "git failed".into());
    assert!(matches!(reply_to(&fx, reply), Some(Reply::Error(_))));
    assert!(served(&fx).is_empty(), "{fx:?}");
}

#[test]
fn a_fetched_state_is_served_and_a_failed_or_refused_fetch_changes_nothing() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, 2, T0_MS);
    let (job, _) = fetch_job(&fx).unwrap();
    assert!(
        served(&fx).is_empty(),
        "nothing is served while it is fetched"
    );
    assert_eq!(served(&sim.finish(job, 2)), vec![(repo(), serving(2))]);

    let fx = sim.announce(&author, &author, 3, T0_MS + 1);
    let (job, _) = fetch_job(&fx).unwrap();
    let fx = failed(&mut sim, job, JobError::Refused("over quota".into()));
    assert!(served(&fx).is_empty(), "{fx:?}");
    let fx = sim.announce(&author, &author, 4, T0_MS + 2);
    let (job, _) = fetch_job(&fx).unwrap();
    let fx = failed(&mut sim, job, JobError::Unavailable("no peer".into()));
    assert!(served(&fx).is_empty(), "{fx:?}");
    assert_eq!(sim.held().map(|h| h.manifest), Some(manifest(2)));
}

#[test]
fn a_first_publish_that_fails_is_never_served() {
    let mut sim = Sim::new(4);
    let (_, job, _) = sim.start_publish();
    let fx = failed(&mut sim, job, "not a git repository".into());
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Persist(Write::Remove(_))))
    );
    assert!(served(&fx).is_empty(), "{fx:?}");
}

#[test]
fn held_states_are_served_at_start_up_and_withdrawn_on_removal() {
    let mut sim = Sim::new(4);
    let (_, job, _) = sim.start_publish();
    sim.finish(job, 2);
    let empty = rid("did:plc:owner/empty");
    sim.command(CoreCommand::AddRepo {
        repo_id: empty.clone(),
        locator: None,
        peers: vec![],
    });

    // Only what is held is served after a restart.
    let (mut sim, fx) = sim.restart();
    assert_eq!(served(&fx), vec![(repo(), serving(2))]);

    // Removed: served no more at once, though its copy goes later.
    let (_, fx) = sim.command(CoreCommand::RemoveRepo { repo_id: repo() });
    assert_eq!(served(&fx), vec![(repo(), None)]);
    let (_, fx) = sim.command(CoreCommand::RemoveRepo { repo_id: empty });
    assert!(served(&fx).is_empty(), "it served nothing: {fx:?}");
    let (_, fx) = sim.restart();
    assert!(served(&fx).is_empty(), "{fx:?}");
}

#[test]
fn a_repository_removed_while_its_fetch_runs_is_not_served_when_it_ends() {
    let mut sim = Sim::new(4);
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    sim.take(&author, 2, T0_MS);
    let fx = sim.announce(&author, &author, 3, T0_MS + 1);
    let (job, _) = fetch_job(&fx).unwrap();
    let (_, fx) = sim.command(CoreCommand::RemoveRepo { repo_id: repo() });
    assert_eq!(served(&fx), vec![(repo(), None)]);
    let fx = sim.finish(job, 3);
    assert!(served(&fx).is_empty(), "{fx:?}");
}
