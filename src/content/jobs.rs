//! Content jobs: the sequences that carry out the core's publish, fetch
//! and discard decisions ([`JobSpec`]), next to the content they handle.
//! The repository actor spawns them ([`run`]) and reports what they
//! produce to the core; nothing here decides what runs.
//!
//! A new state, published or fetched, is finished in one order: its blobs
//! are in the store (tagged before any download), it is materialized, then
//! pinned (blob store flushed). Only then does the job report success, and
//! the core persists, serves and announces. When any step fails the job
//! puts the previous state back (pins and materialized copy) before it
//! reports, so the previous state stays served and pinned. A fetch also
//! reports the providers that stalled it or sent wrong bytes, for the core
//! to demote, and its progress, at most every [`PROGRESS_EVERY`]. Nothing
//! here is kept between jobs.
//!
//! After a new state is materialized, its repository gets a fresh
//! multi-pack-index and bitmap in the background, through the node's
//! [`Optimizer`]: it speeds up serving clones but is no part of the state,
//! so the job does not wait for it.

use std::{path::PathBuf, sync::Mutex, time::Duration};

use iroh::{Endpoint, EndpointId};
use iroh_blobs::{Hash, store::fs::FsStore};
use tracing::{debug, warn};

use super::{ContentError, GcGuard, Optimizer};
use crate::{
    content,
    core::{JobError, JobProgress, JobResult, JobSpec, ProviderFault, StateInfo},
    manifest::Manifest,
    materialize,
    repo_id::RepoId,
};

/// What every job needs; the actor creates it.
#[derive(Clone)]
pub struct JobContext {
    /// The blob store.
    pub blobs: FsStore,
    /// Holds new blobs' temporary tags across garbage collection.
    pub gc_guard: GcGuard,
    /// The endpoint fetches dial providers with.
    pub endpoint: Endpoint,
    /// Where materialized repositories live.
    pub repos_root: PathBuf,
    /// The data directory, whose disk must have room for fetched blobs.
    pub data_dir: PathBuf,
    /// Longest wait for one blob (`fetch_timeout_secs`).
    pub fetch_timeout: Duration,
    /// Packs a publish keeps before it consolidates them (`max_packs`).
    pub max_packs: usize,
    /// Background optimizations of materialized repositories.
    pub optimizer: Optimizer,
}

/// How often a fetch reports its progress (and once more when its packs
/// are all in).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Told how far a job has got; it must not block.
pub type ReportProgress = Box<dyn Fn(JobProgress) + Send + Sync>;

impl JobContext {
    fn dest(&self, repo: &RepoId) -> PathBuf {
        self.repos_root.join(repo.relative_path())
    }
}

/// What a job produced, and the providers that failed it (stalled or sent
/// wrong bytes), for the core to demote.
pub type JobOutcome = (JobResult, Vec<(EndpointId, ProviderFault)>);

/// What a running job tells besides its result.
struct Reports<'a> {
    /// How far it has got.
    progress: &'a ReportProgress,
    /// Providers that failed it, and how.
    faults: &'a Mutex<Vec<(EndpointId, ProviderFault)>>,
}

/// Run one job to its end, telling `progress` how far it has got.
pub async fn run(
    ctx: JobContext,
    repo: RepoId,
    spec: JobSpec,
    progress: ReportProgress,
) -> JobOutcome {
    let faults = Mutex::new(Vec::new());
    let reports = Reports {
        progress: &progress,
        faults: &faults,
    };
    let result = run_job(ctx, repo, spec, reports).await;
    (
        result,
        faults.into_inner().unwrap_or_else(|e| e.into_inner()),
    )
}

async fn run_job(ctx: JobContext, repo: RepoId, spec: JobSpec, reports: Reports<'_>) -> JobResult {
    match spec {
        JobSpec::Publish {
            source,
            force,
            previous,
        } => {
            let result = publish(&ctx, &repo, source, force, previous).await;
            finish(&ctx, &repo, previous, result).await
        }
        JobSpec::Fetch {
            manifest,
            previous,
            providers,
            limit,
            repair,
        } => {
            let result = fetch(&ctx, &repo, manifest, &providers, limit, repair, reports).await;
            finish(&ctx, &repo, previous, result).await
        }
        JobSpec::Discard => content::discard(&ctx.blobs, &repo, &ctx.dest(&repo))
            .await
            .map(|()| StateInfo {
                manifest: Hash::EMPTY,
                head: None,
                pack_count: 0,
                bytes: 0,
                bytes_moved: 0,
                unchanged: true,
                consolidated: false,
                blobs_rebuilt: 0,
                blobs_fetched: 0,
                recheck_after_gc_pass: None,
            })
            .map_err(|e| e.to_string().into()),
    }
}

/// On failure, put the previous state back before reporting.
async fn finish(
    ctx: &JobContext,
    repo: &RepoId,
    previous: Option<Hash>,
    result: Result<StateInfo, ContentError>,
) -> JobResult {
    if result.is_err()
        && let Err(e) = content::restore(&ctx.blobs, repo, &ctx.dest(repo), previous).await
    {
        warn!(repo = %repo, error = %e, "cannot restore the previous state after a failure");
    }
    result.map_err(|e| {
        let message = e.to_string();
        if e.refuses_state() {
            JobError::Refused(message)
        } else if matches!(e, ContentError::Fetch { .. }) {
            JobError::Unavailable(message)
        } else {
            JobError::Failed(message)
        }
    })
}

fn info(manifest: &Manifest, hash: Hash, bytes_moved: u64) -> StateInfo {
    StateInfo {
        manifest: hash,
        head: manifest.head_oid().map(|o| o.to_string()),
        pack_count: manifest.packs.len(),
        bytes: manifest
            .packs
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.size)),
        bytes_moved,
        unchanged: false,
        consolidated: false,
        blobs_rebuilt: 0,
        blobs_fetched: 0,
        recheck_after_gc_pass: None,
    }
}

async fn publish(
    ctx: &JobContext,
    repo: &RepoId,
    source: PathBuf,
    force: bool,
    previous: Option<Hash>,
) -> Result<StateInfo, ContentError> {
    let previous = match previous {
        Some(h) => Some(content::load_manifest(&ctx.blobs, h, repo).await?),
        None => None,
    };
    let dest = ctx.dest(repo);
    let received = match content::Received::read(&source) {
        Some(received) => {
            content::publish_received(
                &ctx.blobs,
                repo,
                &source,
                &received,
                previous.as_ref(),
                &dest,
                ctx.max_packs,
                force,
            )
            .await?
        }
        None => None,
    };
    let published = match received {
        Some(published) => published,
        None => {
            content::publish(
                &ctx.blobs,
                repo,
                &source,
                previous.as_ref(),
                ctx.max_packs,
                force,
            )
            .await?
        }
    };
    let mut out = info(&published.manifest, published.hash, published.bytes_added);
    out.unchanged = published.unchanged;
    out.consolidated = published.consolidated;
    if !published.unchanged {
        let outcome = content::materialize_with(
            &ctx.blobs,
            &dest,
            published.hash,
            &published.manifest,
            published.staged.clone(),
        )
        .await?;
        content::pin(&ctx.blobs, repo, published.hash, &published.manifest).await?;
        if outcome != materialize::Outcome::Unchanged {
            ctx.optimizer.optimize_later(ctx.dest(repo));
        }
    }
    // The pins are set: the temporary tags may go once no collector pass
    // that started before the pins can still be running.
    ctx.gc_guard.hold(published.protect);
    Ok(out)
}

async fn fetch(
    ctx: &JobContext,
    repo: &RepoId,
    manifest: Hash,
    providers: &[EndpointId],
    limit: Option<u64>,
    repair: bool,
    reports: Reports<'_>,
) -> Result<StateInfo, ContentError> {
    let rebuilt = if repair {
        content::rebuild_missing(&ctx.blobs, repo, &ctx.dest(repo), manifest).await?
    } else {
        content::Rebuilt::default()
    };
    // Progress for watchers, at most a few times a second.
    let last = Mutex::new(std::time::Instant::now());
    let report = move |bytes: u64, total: u64| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < PROGRESS_EVERY && bytes < total {
            return;
        }
        *last = std::time::Instant::now();
        (reports.progress)(JobProgress { bytes, total });
    };
    let note = |peer, fault| {
        reports
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((peer, fault));
    };
    let opts = content::FetchOptions {
        limit,
        progress: Some(&report),
        faults: Some(&note),
        ..content::FetchOptions::new(ctx.fetch_timeout, &ctx.data_dir)
    };
    let started = std::time::Instant::now();
    let fetched =
        content::fetch(&ctx.blobs, &ctx.endpoint, repo, manifest, providers, &opts).await?;
    let downloaded = started.elapsed();
    let outcome =
        content::materialize(&ctx.blobs, &ctx.dest(repo), manifest, &fetched.manifest).await?;
    let materialized = started.elapsed();
    content::pin(&ctx.blobs, repo, manifest, &fetched.manifest).await?;
    debug!(
        repo = %repo,
        download_ms = downloaded.as_millis() as u64,
        materialize_ms = (materialized - downloaded).as_millis() as u64,
        pin_ms = (started.elapsed() - materialized).as_millis() as u64,
        "fetch job phases"
    );
    let gc_passes = ctx.gc_guard.passes();
    ctx.gc_guard.hold(rebuilt.protect);
    if outcome != materialize::Outcome::Unchanged {
        ctx.optimizer.optimize_later(ctx.dest(repo));
    }
    let mut out = info(&fetched.manifest, manifest, fetched.bytes_fetched);
    out.blobs_rebuilt = rebuilt.blobs.len();
    out.blobs_fetched = fetched.blobs_fetched;
    out.recheck_after_gc_pass = fetched.reused_unpinned.then_some(gc_passes);
    Ok(out)
}
