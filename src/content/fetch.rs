//! Fetching a manifest and the packs it lists from peers, with a quota and
//! free-space check before any pack is downloaded, and no blob taken past
//! the size it is declared with.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use iroh::{Endpoint, EndpointId};
use iroh_blobs::{Hash, HashAndFormat, api::Store};
use tokio_util::sync::CancellationToken;

use super::{
    ContentError, hex, incoming_tag, load_manifest, pack_tag_prefix, repo_tags, request_err,
};
use crate::{
    core::ProviderFault,
    download::{DownloadError, Session},
    manifest::{MAX_MANIFEST_BYTES, Manifest},
    repo_id::RepoId,
};

/// What a fetch transferred.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The fetched manifest.
    pub manifest: Manifest,
    /// Bytes of blobs that were missing and were fetched.
    pub bytes_fetched: u64,
    /// Blobs that were missing and were fetched.
    pub blobs_fetched: usize,
    /// Some blob of the state was in the store already without a pin of
    /// this repository: a collector pass that started before the pins were
    /// set may still delete it, so the state is checked again after it.
    pub reused_unpinned: bool,
    /// Bytes of packs the store lacked when the manifest was read.
    pub missing_bytes: u64,
    /// From the start of the fetch until its last download ended.
    pub downloaded_in: Duration,
}

/// How a fetch goes about it.
pub struct FetchOptions<'a> {
    /// Longest wait for one blob, whatever its providers do (each provider
    /// has its own, much shorter, progress deadline).
    pub timeout: Duration,
    /// The data directory, whose disk must have room.
    pub data_dir: &'a Path,
    /// Most bytes of packs the state may have (a quota), if limited.
    pub limit: Option<u64>,
    /// Told `(bytes received, bytes to receive)` as packs arrive.
    pub progress: Option<&'a (dyn Fn(u64, u64) + Send + Sync)>,
    /// Told each provider that stalled or sent wrong bytes, once per kind,
    /// when the fetch ends (whether it succeeded or not).
    pub faults: Option<&'a (dyn Fn(EndpointId, ProviderFault) + Send + Sync)>,
}

impl<'a> FetchOptions<'a> {
    /// No quota and no reports.
    pub fn new(timeout: Duration, data_dir: &'a Path) -> Self {
        Self {
            timeout,
            data_dir,
            limit: None,
            progress: None,
            faults: None,
        }
    }
}

/// Fetch `hash` (a manifest of `repo_id`) and every pack it lists that the
/// store lacks from `providers`, best first, over `endpoint`
/// ([`crate::download`]: a provider that sends nothing for a few seconds is
/// left for the next, slow transfers are hedged with the next provider, and
/// every byte is verified against its BLAKE3 hash, a provider that sends
/// wrong bytes being dropped). Every blob is tagged before its download
/// starts, so GC cannot take it; [`pin`](super::pin) or
/// [`restore`](super::restore) settles the tags afterwards.
///
/// No blob is taken past its size: the manifest past
/// [`MAX_MANIFEST_BYTES`], a pack past the size its manifest declares.
/// Before any pack is downloaded, the state must fit in `opts.limit` (bytes
/// of packs, a quota) and the disk holding `opts.data_dir` must have room
/// for all missing packs (twice over: blob store and materialized copy);
/// both count the sizes declared, which the transfers cannot exceed. A
/// state whose packs are not exactly the sizes declared is refused
/// ([`ContentError::Misdeclared`]).
pub async fn fetch(
    blobs: &Store,
    endpoint: &Endpoint,
    repo_id: &RepoId,
    hash: Hash,
    providers: &[EndpointId],
    opts: &FetchOptions<'_>,
) -> Result<Fetched, ContentError> {
    let nothing = |_, _| async { Ok(()) };
    let (fetched, ()) =
        fetch_indexing(blobs, endpoint, repo_id, hash, providers, opts, nothing).await?;
    Ok(fetched)
}

/// [`fetch`], with `index(manifest, download_failed)` run beside the pack
/// downloads once the manifest is in and its checks passed, so packs are
/// indexed while they arrive ([`super::materialize_arriving`]).
/// `download_failed` is cancelled when a download fails (or this future is
/// dropped), so that readers of arriving packs stop waiting; the downloads
/// stop when `index` fails. The first failure is returned: a download's
/// before the indexing it stopped.
pub async fn fetch_indexing<T, F, Fut>(
    blobs: &Store,
    endpoint: &Endpoint,
    repo_id: &RepoId,
    hash: Hash,
    providers: &[EndpointId],
    opts: &FetchOptions<'_>,
    index: F,
) -> Result<(Fetched, T), ContentError>
where
    F: FnOnce(Manifest, CancellationToken) -> Fut,
    Fut: Future<Output = Result<T, ContentError>>,
{
    let started = Instant::now();
    let mut session = Session::new(blobs, endpoint, providers);
    let result = async {
        let (mut fetched, pinned_here) =
            fetch_manifest(blobs, &mut session, repo_id, hash, opts).await?;
        let download_failed = CancellationToken::new();
        // Dropped before the end (the job cancelled at shutdown), readers
        // of arriving packs must not wait on downloads that stopped.
        let _readers_end = download_failed.clone().drop_guard();
        let stop_downloads = CancellationToken::new();
        let downloads = async {
            let packs = fetch_packs(blobs, &mut session, repo_id, &fetched, &pinned_here, opts);
            let result = tokio::select! {
                result = packs => Some(result),
                _ = stop_downloads.cancelled() => None,
            };
            if matches!(result, Some(Err(_))) {
                download_failed.cancel();
            }
            (result, started.elapsed())
        };
        let indexing = async {
            let result = index(fetched.manifest.clone(), download_failed.clone()).await;
            if result.is_err() {
                stop_downloads.cancel();
            }
            result
        };
        let ((downloaded, downloaded_in), indexed) = tokio::join!(downloads, indexing);
        fetched.downloaded_in = downloaded_in;
        if let Some(packs) = downloaded {
            let packs = packs?;
            fetched.bytes_fetched = fetched.bytes_fetched.saturating_add(packs.bytes);
            fetched.blobs_fetched += packs.blobs;
            fetched.reused_unpinned |= packs.reused_unpinned;
        }
        Ok((fetched, indexed?))
    }
    .await;
    if let Some(report) = opts.faults {
        for (peer, fault) in session.faults() {
            report(*peer, *fault);
        }
    }
    result
}

/// Fetch and check the manifest: its packs must fit the quota and the disk.
/// Also returns the blobs `repo_id` had pinned before.
async fn fetch_manifest(
    blobs: &Store,
    session: &mut Session,
    repo_id: &RepoId,
    hash: Hash,
    opts: &FetchOptions<'_>,
) -> Result<(Fetched, HashSet<Hash>), ContentError> {
    let FetchOptions {
        timeout,
        data_dir,
        limit,
        ..
    } = *opts;
    let mut bytes_fetched = 0u64;
    let mut blobs_fetched = 0;
    let pinned_here: HashSet<Hash> = repo_tags(blobs, repo_id)
        .await?
        .into_values()
        .map(|tag| tag.hash)
        .collect();
    // Tag before downloading, so GC never takes what arrives (or a part of it).
    blobs
        .tags()
        .set(incoming_tag(repo_id), HashAndFormat::raw(hash))
        .await
        .map_err(request_err("pinning the incoming manifest"))?;
    let manifest_present = blobs
        .has(hash)
        .await
        .map_err(request_err("checking a blob"))?;
    let reused_unpinned = manifest_present && !pinned_here.contains(&hash);
    if !manifest_present {
        blobs_fetched += 1;
        let size = session
            .download(hash, MAX_MANIFEST_BYTES as u64, timeout, &|_| {})
            .await
            .map_err(|e| match e {
                DownloadError::TooLarge { .. } => ContentError::ManifestTooLarge {
                    hash: hex(&hash),
                    max: MAX_MANIFEST_BYTES as u64,
                },
                e => fetch_error(session, "manifest", hash, e),
            })?;
        bytes_fetched = size;
    }
    let manifest = load_manifest(blobs, hash, repo_id).await?;
    let needed = manifest.pack_bytes();
    if let Some(limit) = limit
        && needed > limit
    {
        return Err(ContentError::Quota { needed, limit });
    }
    let mut missing = 0u64;
    for pack in &manifest.packs {
        if !blobs
            .has(Hash::from_bytes(pack.hash))
            .await
            .map_err(request_err("checking a blob"))?
        {
            missing = missing.saturating_add(pack.size);
        }
    }
    check_space(data_dir, missing.saturating_mul(2))?;
    let fetched = Fetched {
        manifest,
        bytes_fetched,
        blobs_fetched,
        reused_unpinned,
        missing_bytes: missing,
        downloaded_in: Duration::ZERO, // set once the packs are in
    };
    Ok((fetched, pinned_here))
}

/// What downloading the packs of a state transferred.
struct PacksFetched {
    bytes: u64,
    blobs: usize,
    reused_unpinned: bool,
}

/// Download, in the manifest's order, every pack of `fetched` the store
/// lacks, each tagged first. `pinned_here`: the blobs `repo_id` had pinned
/// before the fetch.
async fn fetch_packs(
    blobs: &Store,
    session: &mut Session,
    repo_id: &RepoId,
    fetched: &Fetched,
    pinned_here: &HashSet<Hash>,
    opts: &FetchOptions<'_>,
) -> Result<PacksFetched, ContentError> {
    let FetchOptions {
        timeout, progress, ..
    } = *opts;
    let mut out = PacksFetched {
        bytes: 0,
        blobs: 0,
        reused_unpinned: false,
    };
    let total_missing = fetched.missing_bytes;
    let prefix = pack_tag_prefix(repo_id);
    for pack in &fetched.manifest.packs {
        let pack_hash = Hash::from_bytes(pack.hash);
        blobs
            .tags()
            .set(
                format!("{prefix}{}", pack.hash_hex()),
                HashAndFormat::raw(pack_hash),
            )
            .await
            .map_err(request_err("pinning a pack"))?;
        let present = blobs
            .has(pack_hash)
            .await
            .map_err(request_err("checking a blob"))?;
        let received = out.bytes;
        let report = |bytes: u64| {
            if let Some(progress) = progress {
                progress(received.saturating_add(bytes), total_missing);
            }
        };
        let misdeclared = |size: Option<u64>| ContentError::Misdeclared {
            hash: pack.hash_hex(),
            declared: pack.size,
            size,
        };
        // Present or not, a pack must be exactly the size declared: the
        // quota and the space check counted that.
        let size = session
            .download(pack_hash, pack.size, timeout, &report)
            .await
            .map_err(|e| match e {
                DownloadError::TooLarge { size, .. } => misdeclared(size),
                e => fetch_error(session, "pack", pack_hash, e),
            })?;
        if size != pack.size {
            return Err(misdeclared(Some(size)));
        }
        if present {
            out.reused_unpinned |= !pinned_here.contains(&pack_hash);
        } else {
            out.bytes = out.bytes.saturating_add(size);
            out.blobs += 1;
        }
    }
    Ok(out)
}

/// Fail with [`ContentError::NoSpace`] when `dir`'s filesystem has fewer than
/// `needed` bytes available to this user.
pub fn check_space(dir: &Path, needed: u64) -> Result<(), ContentError> {
    if needed == 0 {
        return Ok(());
    }
    let Ok(stat) = rustix::fs::statvfs(dir) else {
        return Ok(()); // cannot tell: let the write itself decide
    };
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if available < needed {
        return Err(ContentError::NoSpace {
            path: dir.display().to_string(),
            needed,
            available,
        });
    }
    Ok(())
}

fn fetch_error(
    session: &Session,
    what: &'static str,
    hash: Hash,
    e: DownloadError,
) -> ContentError {
    let providers = session.providers();
    ContentError::Fetch {
        what,
        hash: hex(&hash),
        tried: providers.len(),
        peers: providers
            .iter()
            .map(|p| p.fmt_short().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        message: e.to_string(),
    }
}
