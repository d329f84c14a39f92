//! The end checks, run once every fault has healed:
//!
//! 1. **Convergence**: within 60 s, every node holds every repository's
//!    newest state (the head and manifest its author's node holds), and the
//!    PDS's record of every repository names that manifest.
//! 2. **Every push reported done is present**: on every node, the head of
//!    each repository descends from the last commit whose `git push` was
//!    reported done (commits are numbered, and `git merge-base
//!    --is-ancestor` confirms it in each materialized repository).
//! 3. **`git fsck`** is clean in every materialized repository, and
//!    **`knotd admin verify`** finds every held state whole without repair.
//! 4. **Logs**: no panic, and no ERROR line unless it matches one of the
//!    explained patterns below.
//! 5. **Processes**: no node exited by itself or failed to start again.
//! 6. **No growth** (see `growth.rs`).

use std::{sync::Arc, time::Duration};

use knotd::admin::{Command, Payload};

use crate::{Soak, growth, nodes::error_lines, run};

/// How long after the faults stop every node must hold the newest states.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(60);

/// ERROR lines that are expected, and why. Each names the fault that
/// causes it; anything else is a bug.
pub const EXPLAINED: &[(&str, &str)] = &[];

/// One end check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What was found.
    pub detail: String,
}

/// Everything the end checks found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndReport {
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Seconds from the end of the faults until every node held every
    /// newest state (`None`: not within the limit).
    pub converged_after: Option<f64>,
    /// Seconds until every record named the newest manifest.
    pub records_after: Option<f64>,
    /// The growth verdicts.
    pub growth: Vec<growth::Verdict>,
    /// ERROR lines found, with the explanation when one applies.
    pub error_lines: Vec<(String, String, Option<&'static str>)>,
}

impl EndReport {
    /// The checks that failed, as sentences.
    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

/// Run every end check.
pub async fn end_checks(soak: &Arc<Soak>) -> EndReport {
    let mut checks = Vec::new();
    let healed = soak.now();
    let (converged_after, records_after, detail) = converge(soak, healed).await;
    checks.push(Check {
        name: "every node holds every newest state within 60 s",
        passed: converged_after.is_some(),
        detail: detail.clone(),
    });
    checks.push(Check {
        name: "every record names the newest state within 60 s",
        passed: records_after.is_some(),
        detail: match records_after {
            Some(t) => format!("after {t:.1} s"),
            None => detail,
        },
    });
    checks.push(pushes_present(soak).await);
    checks.push(fsck(soak));
    checks.push(verify(soak).await);
    let (log_check, error_lines) = logs(soak);
    checks.push(log_check);
    let problems = soak.observed.lock().unwrap().problems.clone();
    checks.push(Check {
        name: "no node exited by itself or failed to start",
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            "none".into()
        } else {
            problems.join("; ")
        },
    });
    let samples = soak.observed.lock().unwrap().samples.clone();
    let verdicts = growth::analyse(&samples, soak.settings.secs as f64);
    let bad: Vec<String> = verdicts
        .iter()
        .filter(|v| v.flat != Some(true))
        .map(|v| match v.flat {
            None => format!(
                "{} {}: only {} samples past warm-up",
                v.node, v.metric, v.samples
            ),
            _ => format!(
                "{} {}: +{:.1} over the soak (limit {:.1}, median {:.1})",
                v.node, v.metric, v.growth, v.limit, v.median
            ),
        })
        .collect();
    checks.push(Check {
        name: "RSS, open files, threads and tasks stay flat after warm-up",
        passed: bad.is_empty(),
        detail: if bad.is_empty() {
            format!("{} metrics flat", verdicts.len())
        } else {
            bad.join("; ")
        },
    });
    EndReport {
        checks,
        converged_after,
        records_after,
        growth: verdicts,
        error_lines,
    }
}

/// Wait until every node holds what the authors hold, and every record
/// names it. Returns the seconds each took (None: not within the limit).
async fn converge(soak: &Arc<Soak>, healed: f64) -> (Option<f64>, Option<f64>, String) {
    let deadline = tokio::time::Instant::now() + CONVERGE_WITHIN;
    let (mut nodes_at, mut records_at) = (None, None);
    let mut lagging = Vec::new();
    loop {
        let heads = run::snapshot(soak).await;
        lagging.clear();
        let mut records_behind = Vec::new();
        for repo in &soak.repos {
            let newest = heads[repo.author]
                .as_ref()
                .and_then(|h| h.get(&repo.id))
                .cloned();
            let Some(newest) = newest else {
                lagging.push(format!("{}: its author answers nothing", repo.id));
                continue;
            };
            for (node, h) in soak.nodes.iter().zip(&heads) {
                let held = h.as_ref().and_then(|h| h.get(&repo.id));
                if held != Some(&newest) {
                    lagging.push(format!(
                        "{} holds commit {:?} of {}, its author {:?}",
                        node.spec.name,
                        held.and_then(|h| h.number),
                        repo.id,
                        newest.number
                    ));
                }
            }
            if records_at.is_none() {
                let (p, did, rkey) = record_key(soak, &repo.id);
                let record = soak
                    .net
                    .svc
                    .run(async move {
                        tokio::time::timeout(
                            Duration::from_secs(10),
                            p.get_record(&did, "app.knot.repo", &rkey),
                        )
                        .await
                        .ok()
                        .flatten()
                    })
                    .await;
                let named = record
                    .as_ref()
                    .and_then(|r| r["manifest"].as_str().map(str::to_string));
                if named != newest.manifest {
                    records_behind.push(repo.id.clone());
                }
            }
        }
        let now = soak.now() - healed;
        if lagging.is_empty() && nodes_at.is_none() {
            nodes_at = Some(now);
        }
        if records_behind.is_empty() && records_at.is_none() {
            records_at = Some(now);
        }
        if (nodes_at.is_some() && records_at.is_some()) || tokio::time::Instant::now() > deadline {
            let detail = match nodes_at {
                Some(t) => format!("after {t:.1} s"),
                None => format!(
                    "{} (node, repository) pairs behind after 60 s, e.g. {}",
                    lagging.len(),
                    lagging
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            };
            let detail = if records_at.is_none() {
                format!("{detail}; records behind: {records_behind:?}")
            } else {
                detail
            };
            return (nodes_at, records_at, detail);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn record_key(soak: &Arc<Soak>, repo: &str) -> (Arc<crate::pds::TestPds>, String, String) {
    let (did, name) = repo.rsplit_once('/').expect("did/name");
    (soak.pds.clone(), did.to_string(), name.to_string())
}

async fn pushes_present(soak: &Arc<Soak>) -> Check {
    let heads = run::snapshot(soak).await;
    let pushes = soak.pushes.lock().unwrap().clone();
    let mut missing = Vec::new();
    let mut checked = 0;
    for repo in &soak.repos {
        let Some(last_done) = pushes
            .iter()
            .filter(|p| p.done && p.repo == repo.id)
            .map(|p| p.commit)
            .max()
        else {
            continue;
        };
        let sha = repo.sha(last_done).expect("a commit made");
        for (node, h) in soak.nodes.iter().zip(&heads) {
            checked += 1;
            let held = h.as_ref().and_then(|h| h.get(&repo.id));
            let Some(held) = held.filter(|h| h.number.is_some_and(|n| n >= last_done)) else {
                missing.push(format!(
                    "{} lacks commit {last_done} of {} (holds {:?})",
                    node.spec.name,
                    repo.id,
                    held.and_then(|h| h.number)
                ));
                continue;
            };
            let git_dir = node.repo_path(&repo.id);
            let head = held.head.clone().unwrap_or_default();
            let ancestor = soak
                .git
                .run(&git_dir, &["merge-base", "--is-ancestor", &sha, &head]);
            if let Err(e) = ancestor {
                missing.push(format!(
                    "{}: commit {last_done} of {} is not an ancestor of its head: {e}",
                    node.spec.name, repo.id
                ));
            }
        }
    }
    let done = pushes.iter().filter(|p| p.done).count();
    Check {
        name: "every push reported done is present on every node",
        passed: missing.is_empty() && done > 0,
        detail: if missing.is_empty() {
            format!(
                "{done} pushes done, last of each repository checked on {checked} (node, repository) pairs"
            )
        } else {
            missing.join("; ")
        },
    }
}

fn fsck(soak: &Arc<Soak>) -> Check {
    let mut bad = Vec::new();
    let mut count = 0;
    for node in &soak.nodes {
        for repo in &soak.repos {
            let git_dir = node.repo_path(&repo.id);
            count += 1;
            if let Err(e) = soak.git.run(&git_dir, &["fsck", "--no-progress"]) {
                bad.push(format!("{} {}: {e}", node.spec.name, repo.id));
            }
        }
    }
    Check {
        name: "git fsck is clean everywhere",
        passed: bad.is_empty(),
        detail: if bad.is_empty() {
            format!("{count} repositories clean")
        } else {
            bad.join("; ")
        },
    }
}

async fn verify(soak: &Arc<Soak>) -> Check {
    let mut bad = Vec::new();
    for node in &soak.nodes {
        match node.client().call(&Command::Verify { repo_id: None }).await {
            Ok(Payload::Verified(report)) => {
                for row in report.repos {
                    if !row.ok() || row.rebuilt > 0 || row.fetched > 0 {
                        bad.push(format!(
                            "{} {}: rebuilt {}, fetched {}, error {:?}",
                            node.spec.name, row.repo_id, row.rebuilt, row.fetched, row.error
                        ));
                    }
                }
            }
            other => bad.push(format!("{}: verify answered {other:?}", node.spec.name)),
        }
    }
    Check {
        name: "knotd admin verify finds every held state whole",
        passed: bad.is_empty(),
        detail: if bad.is_empty() {
            "every state whole, nothing repaired".into()
        } else {
            bad.join("; ")
        },
    }
}

type ErrorLine = (String, String, Option<&'static str>);

fn logs(soak: &Arc<Soak>) -> (Check, Vec<ErrorLine>) {
    let mut lines = Vec::new();
    for node in &soak.nodes {
        for line in error_lines(&node.spec.log) {
            let why = EXPLAINED
                .iter()
                .find(|(pattern, _)| line.contains(pattern))
                .map(|(_, why)| *why);
            lines.push((node.spec.name.clone(), line, why));
        }
    }
    let unexplained: Vec<String> = lines
        .iter()
        .filter(|l| l.2.is_none())
        .map(|(node, line, _)| format!("{node}: {line}"))
        .collect();
    let check = Check {
        name: "no panic and no unexplained ERROR line in any log",
        passed: unexplained.is_empty(),
        detail: if unexplained.is_empty() {
            format!("{} ERROR lines, all explained", lines.len())
        } else {
            format!(
                "{} unexplained, e.g. {}",
                unexplained.len(),
                unexplained
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        },
    };
    (check, lines)
}
