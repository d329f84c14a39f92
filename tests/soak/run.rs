//! The soak's phases: the community is set up (first pushes, records
//! written back, everyone following), then for the soak's duration one push
//! a second, faults from the schedule, the heads of every node read every
//! second (convergence of each push) and every node's RSS, open files,
//! threads and runtime tasks every ten seconds; then pushes stop and every
//! fault heals.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    Soak,
    faults::{self, Fault},
    net::Role,
    nodes::ProcSample,
    workload::PushRecord,
};

/// How long one `git push` may take before it is killed and counted as failed.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds between two samples of each node's process.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// What one node holds of one repository.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// The commit number of its head, when it is one of the work tree's.
    pub number: Option<usize>,
    /// The head's object id.
    pub head: Option<String>,
    /// The manifest materialized.
    pub manifest: Option<String>,
}

/// One sample of one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleRow {
    /// Seconds since the soak began.
    pub t: f64,
    /// The node.
    pub node: String,
    /// Which process of the node (1 for the first, +1 per restart).
    pub incarnation: u32,
    /// Seconds since that process started.
    pub uptime: f64,
    /// The measurements.
    #[serde(flatten)]
    pub sample: ProcSample,
}

/// A fault as it was played.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultRecord {
    /// The scheduled fault.
    #[serde(flatten)]
    pub fault: Fault,
    /// When it started, seconds since the soak began.
    pub started: f64,
    /// When it healed.
    pub ended: f64,
    /// What went wrong while healing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What the harness saw while the soak ran.
#[derive(Debug, Default)]
pub struct Observed {
    /// The latest heads of each node (index as `Soak::nodes`), by repository.
    pub heads: Vec<Option<HashMap<String, Head>>>,
    /// Process samples.
    pub samples: Vec<SampleRow>,
    /// Faults played.
    pub faults: Vec<FaultRecord>,
    /// Things that went wrong outside the checks: nodes that exited by
    /// themselves, nodes that did not start again.
    pub problems: Vec<String>,
}

/// Read every node's heads now.
pub async fn snapshot(soak: &Soak) -> Vec<Option<HashMap<String, Head>>> {
    let mut lists = Vec::new();
    for node in &soak.nodes {
        lists.push(node.list().await);
    }
    lists
        .into_iter()
        .map(|list| {
            let list = list?;
            Some(
                list.into_iter()
                    .map(|r| {
                        let number = soak
                            .repos
                            .iter()
                            .find(|repo| repo.id == r.repo_id)
                            .and_then(|repo| repo.number(r.head.as_deref()?));
                        let head = Head {
                            number,
                            head: r.head,
                            manifest: r.materialized,
                        };
                        (r.repo_id, head)
                    })
                    .collect(),
            )
        })
        .collect()
}

/// Whether every node holds at least commit `n` of `repo`.
fn all_hold(heads: &[Option<HashMap<String, Head>>], repo: &str, n: usize) -> bool {
    heads.iter().all(|h| {
        h.as_ref()
            .and_then(|h| h.get(repo))
            .and_then(|h| h.number)
            .is_some_and(|m| m >= n)
    })
}

/// First pushes, records, follows; returns once every node holds every
/// repository's first commit.
pub async fn setup_community(soak: &Arc<Soak>, accounts: &[(String, String)]) {
    for repo in &soak.repos {
        let author = &soak.nodes[repo.author];
        let socket = author.client().socket().to_path_buf();
        let mut tries = 0;
        while let Err(e) = soak.git.push(&repo.work, &socket, PUSH_TIMEOUT).await {
            tries += 1;
            assert!(tries < 3, "the first push of {} failed: {e}", repo.id);
        }
    }
    eprintln!("soak setup: first pushes done");
    let by_name = |name: &str| soak.node(name).clone();
    let seeder_ids: Vec<String> = ["seeder-1", "seeder-2"]
        .iter()
        .map(|n| by_name(n).node_id.clone())
        .collect();
    for node in &soak.nodes {
        let client = node.client();
        match (node.spec.role, node.spec.name.as_str()) {
            (Role::Author, _) => {
                for (did, _) in accounts {
                    let own = soak.repos.iter().any(|r| {
                        r.id.starts_with(did.as_str())
                            && soak.nodes[r.author].spec.name == node.spec.name
                    });
                    if !own {
                        client.follow(did).await.expect("follow");
                    }
                }
            }
            (Role::Home, "home-2") => {
                for repo in &soak.repos {
                    client
                        .add_repo(
                            &knotd::repo_id::RepoId::parse(&repo.id).unwrap(),
                            None,
                            None,
                            seeder_ids.clone(),
                        )
                        .await
                        .expect("add-repo");
                }
            }
            _ => {
                for (did, _) in accounts {
                    client.follow(did).await.expect("follow");
                }
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let heads = snapshot(soak).await;
        let missing: Vec<String> = soak
            .nodes
            .iter()
            .zip(&heads)
            .flat_map(|(node, h)| {
                soak.repos
                    .iter()
                    .filter(|r| {
                        h.as_ref()
                            .and_then(|h| h.get(&r.id))
                            .is_none_or(|h| h.number.is_none())
                    })
                    .map(move |r| format!("{}: {}", node.spec.name, r.id))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "setup: after 300 s, still missing: {missing:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("soak setup: every node holds every repository");
}

/// Push, fault, observe and sample for the soak's duration, then stop the
/// pushes and heal every fault. Returns when everything is healed.
pub async fn soak_phase(soak: &Arc<Soak>) {
    let secs = soak.settings.secs as f64;
    let schedule = faults::schedule(
        soak.settings.seed,
        secs,
        &soak
            .nodes
            .iter()
            .map(|n| n.spec.name.clone())
            .collect::<Vec<_>>(),
    );
    eprintln!("soak: {} faults scheduled", schedule.len());
    let stop_faults = CancellationToken::new();
    let mut fault_tasks = JoinSet::new();
    for fault in schedule {
        let (soak, stop) = (soak.clone(), stop_faults.clone());
        fault_tasks.spawn(async move {
            let played = faults::play(soak.clone(), fault.clone(), stop).await;
            if let Some((started, ended, problem)) = played {
                if let Some(p) = &problem {
                    soak.observed.lock().unwrap().problems.push(p.clone());
                }
                soak.observed.lock().unwrap().faults.push(FaultRecord {
                    fault,
                    started,
                    ended,
                    problem,
                });
            }
        });
    }
    let stop_watch = CancellationToken::new();
    let watchers = [
        tokio::spawn(observe(soak.clone(), stop_watch.clone())),
        tokio::spawn(sample(soak.clone(), stop_watch.clone())),
    ];
    push_loop(soak, Duration::from_secs_f64(secs)).await;
    stop_faults.cancel();
    while fault_tasks.join_next().await.is_some() {}
    heal_all(soak).await;
    stop_watch.cancel();
    for w in watchers {
        let _ = w.await;
    }
}

/// One push a second, alternating authors, for `duration`; waits for the
/// pushes still running.
async fn push_loop(soak: &Arc<Soak>, duration: Duration) {
    let mut rng = StdRng::seed_from_u64(soak.settings.seed.wrapping_add(1));
    let mut pushes = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let end = soak.started() + duration;
    let mut k = 0usize;
    while std::time::Instant::now() < end {
        tick.tick().await;
        let author = k % 2;
        k += 1;
        let candidates: Vec<usize> = (0..soak.repos.len())
            .filter(|i| soak.repos[*i].author == author)
            .collect();
        let pick = candidates[rng.random_range(0..candidates.len())];
        let repo = soak.repos[pick].clone();
        if !repo.try_take() {
            continue;
        }
        let soak = soak.clone();
        pushes.spawn(async move {
            let node = soak.nodes[repo.author].clone();
            let started = soak.now();
            let git = &soak.git;
            let outcome = match repo.commit(git) {
                Ok((commit, _)) => {
                    let socket = node.client().socket().to_path_buf();
                    let result = git.push(&repo.work, &socket, PUSH_TIMEOUT).await;
                    Some((commit, result))
                }
                Err(e) => {
                    soak.observed
                        .lock()
                        .unwrap()
                        .problems
                        .push(format!("commit in {}: {e}", repo.id));
                    None
                }
            };
            if let Some((commit, result)) = outcome {
                soak.pushes.lock().unwrap().push(PushRecord {
                    repo: repo.id.clone(),
                    commit,
                    author: node.spec.name.clone(),
                    started,
                    finished: soak.now(),
                    done: result.is_ok(),
                    error: result.err(),
                    converged_after: None,
                });
            }
            repo.release();
        });
        while pushes.try_join_next().is_some() {}
    }
    while pushes.join_next().await.is_some() {}
}

/// Read every node's heads every second; note when each done push is held
/// everywhere. Also restarts a node that exited by itself (as systemd
/// would), recording it as a problem.
async fn observe(soak: Arc<Soak>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for node in &soak.nodes {
            if let Some(status) = node.check_exit() {
                let what = format!(
                    "{} exited by itself at {:.0} s ({status}); started again",
                    node.spec.name,
                    soak.now()
                );
                eprintln!("soak: {what}");
                soak.observed.lock().unwrap().problems.push(what);
                node.spawn("started again after it exited by itself");
            }
        }
        let heads = snapshot(&soak).await;
        let now = soak.now();
        {
            let mut pushes = soak.pushes.lock().unwrap();
            for push in pushes
                .iter_mut()
                .filter(|p| p.done && p.converged_after.is_none())
            {
                if all_hold(&heads, &push.repo, push.commit) {
                    push.converged_after = Some(now - push.finished);
                }
            }
        }
        soak.observed.lock().unwrap().heads = heads;
    }
}

/// Sample every running node every ten seconds.
async fn sample(soak: Arc<Soak>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let t = soak.now();
        for node in &soak.nodes {
            let Some(uptime) = node.uptime() else {
                continue;
            };
            if let Some(sample) = node.sample().await {
                soak.observed.lock().unwrap().samples.push(SampleRow {
                    t,
                    node: node.spec.name.clone(),
                    incarnation: node.incarnation(),
                    uptime: uptime.as_secs_f64(),
                    sample,
                });
            }
        }
    }
}

/// Undo every fault, whatever state it was left in: links up, no loss, no
/// delay, the relay and the PDS reachable, every node running.
pub async fn heal_all(soak: &Arc<Soak>) {
    for node in &soak.nodes {
        soak.net.set_link(&node.spec.name, true);
        soak.net.set_loss(&node.spec.name, 0.0);
        soak.net.set_delay(&node.spec.name, Duration::ZERO);
    }
    let s = soak.clone();
    tokio::task::spawn_blocking(move || s.net.lab.start_relay())
        .await
        .expect("the relay starts");
    soak.net.unblock_pds(soak.pds.pds_port());
    for node in &soak.nodes {
        if !node.running() {
            node.spawn("started again when the faults stopped");
            if let Err(e) = node.wait_ready().await {
                soak.observed.lock().unwrap().problems.push(e);
            }
        }
    }
}
