//! A running job's progress reaches watchers through the core, and only
//! while the job is still the repository's running fetch: progress of a
//! job that ended, of a removed repository's job, of a job never started
//! or of an untracked repository is dropped.

use super::*;
use crate::api::NodeEvent;

fn progress(sim: &mut Sim, repo: RepoId, job: JobId, bytes: u64) -> Vec<Effect> {
    sim.event(Event::JobProgress {
        repo,
        job,
        progress: JobProgress { bytes, total: 1000 },
    })
}

/// A fetch of state `m` of [`repo`] running, and its job.
fn fetching(sim: &mut Sim, m: u8) -> JobId {
    let author = key(1);
    sim.add(vec![hint(&author)], None);
    let fx = sim.announce(&author, &author, m, T0_MS + u64::from(m));
    fetch_job(&fx).expect("a fetch starts").0
}

#[test]
fn progress_of_the_running_fetch_is_told_to_watchers() {
    let mut sim = Sim::new(4);
    let job = fetching(&mut sim, 2);
    let fx = progress(&mut sim, repo(), job, 400);
    assert_eq!(
        fx,
        vec![Effect::Notify {
            repo: Some(repo()),
            event: NodeEvent::FetchProgress {
                manifest: manifest(2).to_hex(),
                bytes: 400,
                total: Some(1000),
            },
        }]
    );
}

#[test]
fn progress_of_a_job_that_ended_or_never_ran_is_dropped() {
    let mut sim = Sim::new(4);
    let job = fetching(&mut sim, 2);
    assert!(progress(&mut sim, repo(), job + 1, 10).is_empty());
    assert!(progress(&mut sim, rid("did:plc:owner/other"), job, 10).is_empty());
    sim.finish(job, 2);
    assert!(progress(&mut sim, repo(), job, 1000).is_empty());
    // A newer fetch runs: the old job's late reports are still dropped.
    let author = key(1);
    let fx = sim.announce(&author, &author, 3, T0_MS + 3);
    let (next, _) = fetch_job(&fx).unwrap();
    assert!(progress(&mut sim, repo(), job, 1000).is_empty());
    assert_eq!(progress(&mut sim, repo(), next, 10).len(), 1);
}

#[test]
fn progress_of_a_removed_repositorys_job_is_dropped() {
    let mut sim = Sim::new(4);
    let job = fetching(&mut sim, 2);
    sim.command(CoreCommand::RemoveRepo { repo_id: repo() });
    assert!(progress(&mut sim, repo(), job, 10).is_empty());
    // Tracked again under the same id: still not its job.
    sim.add(vec![], None);
    assert!(progress(&mut sim, repo(), job, 10).is_empty());
}

#[test]
fn a_publish_reports_no_fetch_progress() {
    let mut sim = Sim::new(4);
    let (_, job, _) = sim.start_publish();
    assert!(progress(&mut sim, repo(), job, 10).is_empty());
}
