//! Content jobs: the sequences that carry out the core's publish, fetch
//! and discard decisions ([`JobSpec`]), next to the content they handle.
//! The repository actor spawns them ([`run`]) and reports what they
//! produce to the core; nothing here decides what runs.
//!
//! A new state, published or fetched, is finished in one order: its blobs
//! are in the store (tagged before any download), it is materialized (a
//! fetch indexes each pack while it downloads, and the repository is
//! complete only once every download is), then pinned (blob store
//! flushed). Only then does the job report success, and the core
//! persists, serves and announces. When any step fails the job
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

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{Endpoint, EndpointId};
use iroh_blobs::{Hash, store::fs::FsStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ContentError, GcGuard, Optimizer};
use crate::{
    content,
    core::{JobError, JobProgress, JobResult, JobSpec, ProviderFault, StateInfo},
    git::PackIndexer,
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
    /// Permits to index large packs (`max_large_jobs`).
    pub large_jobs: LargeJobs,
    /// What indexes the first pack of a new repository (`pack_indexer`).
    pub indexer: PackIndexer,
}

/// Permits to index large packs: a fetch whose new packs hold
/// [`LARGE_JOB_BYTES`] or more materializes holding one, so at most
/// `max_large_jobs` such `git index-pack`s run at once, plus one that
/// someone waits on (an operator, a `git` client), which does not queue
/// behind background work; smaller fetches need none.
#[derive(Debug, Clone)]
pub struct LargeJobs {
    shared: Arc<Semaphore>,
    interactive: Arc<Semaphore>,
}

impl LargeJobs {
    /// At most `permits` large jobs index at once, and one more that
    /// someone waits on.
    pub fn new(permits: usize) -> Self {
        Self {
            shared: Arc::new(Semaphore::new(permits)),
            interactive: Arc::new(Semaphore::new(1)),
        }
    }

    /// What indexing `bytes` of new packs must hold while it runs: a
    /// permit once one is free for a large job, nothing for a small one.
    /// An `interactive` job takes whichever comes free first, a shared
    /// permit or the one kept for it.
    pub async fn permit(&self, bytes: u64, interactive: bool) -> Option<OwnedSemaphorePermit> {
        if bytes < LARGE_JOB_BYTES {
            return None;
        }
        // The semaphores are never closed.
        let shared = self.shared.clone().acquire_owned();
        if !interactive {
            return shared.await.ok();
        }
        tokio::select! {
            permit = shared => permit.ok(),
            permit = self.interactive.clone().acquire_owned() => permit.ok(),
        }
    }
}

/// New packs of a fetch from this many bytes up make it a large job: its
/// `git index-pack` takes memory in proportion, so only `max_large_jobs`
/// of them index at once while small fetches go on beside them.
pub const LARGE_JOB_BYTES: u64 = 16 * 1024 * 1024;

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
    interactive: bool,
    progress: ReportProgress,
) -> JobOutcome {
    let faults = Mutex::new(Vec::new());
    let reports = Reports {
        progress: &progress,
        faults: &faults,
    };
    let result = run_job(ctx, repo, spec, interactive, reports).await;
    (
        result,
        faults.into_inner().unwrap_or_else(|e| e.into_inner()),
    )
}

async fn run_job(
    ctx: JobContext,
    repo: RepoId,
    spec: JobSpec,
    interactive: bool,
    reports: Reports<'_>,
) -> JobResult {
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
            let target = Target {
                manifest,
                previous,
                providers: &providers,
                limit,
                repair,
                interactive,
            };
            let result = fetch(&ctx, &repo, target, reports).await;
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
        bytes: manifest.pack_bytes(),
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
            &ctx.indexer,
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

/// What a fetch job is to bring in.
struct Target<'a> {
    /// The state's manifest.
    manifest: Hash,
    /// The state held before it, if any.
    previous: Option<Hash>,
    /// Who may provide its blobs.
    providers: &'a [EndpointId],
    /// Most bytes it may hold.
    limit: Option<u64>,
    /// Whether missing blobs of the state held are rebuilt first.
    repair: bool,
    /// Whether someone waits on it.
    interactive: bool,
}

/// Bytes of the packs of `manifest` that `previous` did not have: what
/// materializing it indexes.
fn new_pack_bytes(manifest: &Manifest, previous: &Manifest) -> u64 {
    manifest
        .packs
        .iter()
        .filter(|p| !previous.packs.iter().any(|h| h.hash == p.hash))
        .fold(0u64, |sum, p| sum.saturating_add(p.size))
}

/// [`new_pack_bytes`] of a fetch, reading the previous manifest only when
/// the whole state is large enough for it to matter (a previous manifest
/// that cannot be read counts as nothing held).
async fn fetch_indexes(
    ctx: &JobContext,
    repo: &RepoId,
    manifest: &Manifest,
    previous: Option<Hash>,
) -> u64 {
    let total = manifest.pack_bytes();
    let Some(previous) = previous.filter(|_| total >= LARGE_JOB_BYTES) else {
        return total;
    };
    match content::load_manifest(&ctx.blobs, previous, repo).await {
        Ok(previous) => new_pack_bytes(manifest, &previous),
        Err(_) => total,
    }
}

async fn fetch(
    ctx: &JobContext,
    repo: &RepoId,
    target: Target<'_>,
    reports: Reports<'_>,
) -> Result<StateInfo, ContentError> {
    let Target {
        manifest,
        previous,
        providers,
        limit,
        repair,
        interactive,
    } = target;
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
    // Packs are indexed while they download; the indexing of large ones
    // waits for a large-job permit (the downloads go on meanwhile).
    let index = |fetched: Manifest, download_failed: CancellationToken| async move {
        let indexed = fetch_indexes(ctx, repo, &fetched, previous).await;
        if indexed >= LARGE_JOB_BYTES {
            debug!(repo = %repo, bytes = indexed, "large packs to index: waiting for a large-job permit");
        }
        // A permit is held from here to the last byte indexed, downloads
        // included: a download that fails meanwhile ends the wait.
        let large = tokio::select! {
            large = ctx.large_jobs.permit(indexed, interactive) => large,
            _ = download_failed.cancelled() => return Err(ContentError::Task(
                "a download failed while indexing waited for a large-job permit".into(),
            )),
        };
        let dest = ctx.dest(repo);
        let outcome = content::materialize_arriving(
            &ctx.blobs,
            &dest,
            manifest,
            &fetched,
            download_failed,
            &ctx.indexer,
        )
        .await?;
        drop(large);
        Ok(outcome)
    };
    let (fetched, outcome) = content::fetch_indexing(
        &ctx.blobs,
        &ctx.endpoint,
        repo,
        manifest,
        providers,
        &opts,
        index,
    )
    .await?;
    let materialized = started.elapsed();
    content::pin(&ctx.blobs, repo, manifest, &fetched.manifest).await?;
    debug!(
        repo = %repo,
        download_ms = fetched.downloaded_in.as_millis() as u64,
        materialize_ms = materialized.as_millis() as u64,
        pin_ms = (started.elapsed() - materialized).as_millis() as u64,
        "fetch job phases (downloads overlap indexing; both from the start)"
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

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin, task::Poll};

    use super::*;
    use crate::manifest::PackEntry;

    fn ready<F: Future>(f: F) -> Option<F::Output> {
        let mut f = pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        }
    }

    #[test]
    fn small_jobs_need_no_permit_and_large_ones_wait_for_one() {
        let gate = LargeJobs::new(1);
        let first = ready(gate.permit(LARGE_JOB_BYTES, false)).expect("a free permit");
        assert!(first.is_some());
        // The only permit is held: another large job waits...
        assert!(ready(gate.permit(LARGE_JOB_BYTES + 1, false)).is_none());
        // ...while a small one goes ahead.
        assert!(matches!(
            ready(gate.permit(LARGE_JOB_BYTES - 1, false)),
            Some(None)
        ));
        // One that someone waits on does not queue behind background work,
        // but there is one such permit.
        let waited_on = ready(gate.permit(LARGE_JOB_BYTES, true)).expect("the kept permit");
        assert!(waited_on.is_some());
        assert!(ready(gate.permit(LARGE_JOB_BYTES, true)).is_none());
        drop(first);
        assert!(matches!(ready(gate.permit(u64::MAX, true)), Some(Some(_))));
    }

    #[test]
    fn only_packs_the_previous_state_lacked_are_counted() {
        let pack = |n: u8, size: u64| PackEntry {
            hash: [n; 32],
            size,
            objects: 1,
        };
        let previous = Manifest {
            repo_id: "did:plc:a/b".into(),
            refs: crate::git::RefSet {
                head: None,
                refs: Default::default(),
            },
            packs: vec![pack(1, 100 << 20)],
        };
        let mut next = previous.clone();
        next.packs.push(pack(2, 3));
        assert_eq!(new_pack_bytes(&next, &previous), 3);
        assert_eq!(next.pack_bytes(), (100 << 20) + 3);
        // Sizes that overflow saturate rather than wrap to a small job.
        next.packs.push(pack(3, u64::MAX));
        assert_eq!(next.pack_bytes(), u64::MAX);
        assert_eq!(new_pack_bytes(&next, &previous), u64::MAX);
    }
}
