//! Running content jobs: the I/O half of [`crate::core`]'s publish, fetch and
//! discard decisions.
//!
//! A new state, published or fetched, is finished in one order: its blobs
//! are in the store (tagged before any download), it is materialized, then
//! pinned (blob store flushed). Only then does the job report success, and
//! the core persists and announces. When any step fails the job puts the
//! previous state back (pins and materialized copy) before it reports, so
//! the previous state stays served and pinned. Jobs run as child tasks of
//! the actor; nothing here is kept between jobs.

use std::{path::PathBuf, time::Duration};

use iroh::Endpoint;
use iroh_blobs::{Hash, store::fs::FsStore};
use tracing::warn;

use crate::{
    content::{self, ContentError},
    core::{JobResult, JobSpec, StateInfo},
    manifest::Manifest,
    repo_id::RepoId,
};

/// What every job needs.
#[derive(Clone)]
pub(super) struct JobContext {
    pub blobs: FsStore,
    pub endpoint: Endpoint,
    pub repos_root: PathBuf,
    pub data_dir: PathBuf,
    pub fetch_timeout: Duration,
    pub max_packs: usize,
}

impl JobContext {
    fn dest(&self, repo: &RepoId) -> PathBuf {
        self.repos_root.join(repo.relative_path())
    }
}

/// Run one job to its end.
pub(super) async fn run(ctx: JobContext, repo: RepoId, spec: JobSpec) -> JobResult {
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
        } => {
            let result = fetch(&ctx, &repo, manifest, &providers).await;
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
            })
            .map_err(|e| e.to_string()),
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
    result.map_err(|e| e.to_string())
}

fn info(manifest: &Manifest, hash: Hash, bytes_moved: u64) -> StateInfo {
    StateInfo {
        manifest: hash,
        head: manifest.head_oid().map(|o| o.to_string()),
        pack_count: manifest.packs.len(),
        bytes: manifest.packs.iter().map(|p| p.size).sum(),
        bytes_moved,
        unchanged: false,
        consolidated: false,
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
    let published = content::publish(
        &ctx.blobs,
        repo,
        &source,
        previous.as_ref(),
        ctx.max_packs,
        force,
    )
    .await?;
    let mut out = info(&published.manifest, published.hash, published.bytes_added);
    out.unchanged = published.unchanged;
    out.consolidated = published.consolidated;
    if !published.unchanged {
        content::materialize(
            &ctx.blobs,
            &ctx.dest(repo),
            published.hash,
            &published.manifest,
        )
        .await?;
        content::pin(&ctx.blobs, repo, published.hash, &published.manifest).await?;
    }
    drop(published.protect);
    Ok(out)
}

async fn fetch(
    ctx: &JobContext,
    repo: &RepoId,
    manifest: Hash,
    providers: &[iroh::EndpointId],
) -> Result<StateInfo, ContentError> {
    let fetched = content::fetch(
        &ctx.blobs,
        &ctx.endpoint,
        repo,
        manifest,
        providers,
        ctx.fetch_timeout,
        &ctx.data_dir,
    )
    .await?;
    content::materialize(&ctx.blobs, &ctx.dest(repo), manifest, &fetched.manifest).await?;
    content::pin(&ctx.blobs, repo, manifest, &fetched.manifest).await?;
    Ok(info(&fetched.manifest, manifest, fetched.bytes_fetched))
}
