//! Mirroring a git upstream: a fresh node mirrors the real-shaped
//! repository from `git daemon` until its first state is published and
//! materialized, against `git clone --mirror` of the same URL, alternating
//! which goes first.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use knotd::admin::{Command as Admin, Payload};

use crate::{
    nodes::{ChildNode, rid},
    real::mirror_clone,
    report::{ScenarioReport, median, round3},
    scenarios::{Plan, REPO},
};

/// Measure `iterations` mirrors of `url` into fresh nodes under `dir`.
pub async fn measure(
    plan: &Plan,
    report: &mut ScenarioReport,
    dir: &Path,
    url: &str,
) -> Result<()> {
    let (mut knot_s, mut git_s) = (Vec::new(), Vec::new());
    for i in 0..plan.iterations {
        eprintln!("knotd-bench: real: mirror {}/{}", i + 1, plan.iterations);
        let git_first = i % 2 == 1;
        if git_first {
            git_s.push(mirror_clone(url, &dir.join("baseline.git"), &[])?.as_secs_f64());
        }
        let (node, _) = ChildNode::spawn(&plan.knotd, &dir.join(format!("mirror-{i}"))).await?;
        let started = Instant::now();
        node.request(&Admin::Mirror {
            source: url.to_owned(),
            repo_id: Some(rid(REPO)?),
        })
        .await?;
        let deadline = started + Duration::from_secs(900);
        loop {
            let mirrors = match node.request(&Admin::Mirrors).await? {
                Payload::Mirrors { mirrors } => mirrors,
                other => bail!("unexpected payload {other:?}"),
            };
            let row = mirrors.first().context("the mirror is not listed")?;
            if let Some(error) = &row.error {
                bail!("the mirror failed: {} ({})", error.message, error.class);
            }
            if row.manifest.is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("the mirror published nothing within 900 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        knot_s.push(started.elapsed().as_secs_f64());
        node.stop().await?;
        std::fs::remove_dir_all(dir.join(format!("mirror-{i}")))?;
        if !git_first {
            git_s.push(mirror_clone(url, &dir.join("baseline.git"), &[])?.as_secs_f64());
        }
    }
    let (k, g) = (median(&knot_s), median(&git_s));
    report.fig("mirror_knotd_ms", round3(k * 1000.0), "ms");
    report.fig("mirror_git_clone_mirror_ms", round3(g * 1000.0), "ms");
    report.fig_target("mirror_ratio", round3(k / g), "x", "<= 1.2");
    Ok(())
}
