//! Fetching a manifest and the packs it lists from peers, with a quota and
//! free-space check before any pack is downloaded.

use std::{path::Path, time::Duration};

use iroh::{Endpoint, EndpointId};
use iroh_blobs::{Hash, HashAndFormat, api::Store};

use super::{
    ContentError, hex, incoming_tag, load_manifest, pack_tag_prefix, repo_tags, request_err,
};
use crate::{manifest::Manifest, repo_id::RepoId};

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
}

/// How a fetch goes about it.
pub struct FetchOptions<'a> {
    /// Longest wait for one blob.
    pub timeout: Duration,
    /// The data directory, whose disk must have room.
    pub data_dir: &'a Path,
    /// Most bytes of packs the state may have (a quota), if limited.
    pub limit: Option<u64>,
    /// Told `(bytes received, bytes to receive)` as packs arrive.
    pub progress: Option<&'a (dyn Fn(u64, u64) + Send + Sync)>,
}

impl<'a> FetchOptions<'a> {
    /// No quota and no progress reports.
    pub fn new(timeout: Duration, data_dir: &'a Path) -> Self {
        Self {
            timeout,
            data_dir,
            limit: None,
            progress: None,
        }
    }
}

/// Fetch `hash` (a manifest of `repo_id`) and every pack it lists that the store
/// lacks, trying `providers` in order, over `endpoint` ([`crate::download`]
/// starts a blob over on fresh connections when its provider restarted
/// under it). The downloader verifies every byte
/// against its BLAKE3 hash; a provider that sends wrong bytes is dropped and
/// the next is tried. Every blob is tagged before its download starts, so GC
/// cannot take it; [`pin`] or [`restore`] settles the tags afterwards.
/// Before any pack is downloaded, the state must fit in `opts.limit` (bytes
/// of packs, a quota) and the disk holding `opts.data_dir` must have room
/// for all missing packs (twice over: blob store and materialized copy).
pub async fn fetch(
    blobs: &Store,
    endpoint: &Endpoint,
    repo_id: &RepoId,
    hash: Hash,
    providers: &[EndpointId],
    opts: &FetchOptions<'_>,
) -> Result<Fetched, ContentError> {
    let FetchOptions {
        timeout,
        data_dir,
        limit,
        progress,
    } = *opts;
    let mut bytes_fetched = 0;
    let mut blobs_fetched = 0;
    let pinned_here: std::collections::HashSet<Hash> = repo_tags(blobs, repo_id)
        .await?
        .into_values()
        .map(|tag| tag.hash)
        .collect();
    let mut reused_unpinned = false;
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
    reused_unpinned |= manifest_present && !pinned_here.contains(&hash);
    if !manifest_present {
        blobs_fetched += 1;
        download(
            blobs,
            endpoint,
            "manifest",
            hash,
            providers,
            timeout,
            &|_| {},
        )
        .await?;
        bytes_fetched += blobs
            .get_bytes(hash)
            .await
            .map_err(request_err("reading a manifest"))?
            .len() as u64;
    }
    let manifest = load_manifest(blobs, hash, repo_id).await?;
    let needed: u64 = manifest.packs.iter().map(|p| p.size).sum();
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
            missing += pack.size;
        }
    }
    check_space(data_dir, missing.saturating_mul(2))?;
    let total_missing = missing;
    let mut received = 0u64;
    let prefix = pack_tag_prefix(repo_id);
    for pack in &manifest.packs {
        let pack_hash = Hash::from_bytes(pack.hash);
        blobs
            .tags()
            .set(
                format!("{prefix}{}", pack.hash_hex()),
                HashAndFormat::raw(pack_hash),
            )
            .await
            .map_err(request_err("pinning a pack"))?;
        if blobs
            .has(pack_hash)
            .await
            .map_err(request_err("checking a blob"))?
        {
            reused_unpinned |= !pinned_here.contains(&pack_hash);
        } else {
            let report = |bytes: u64| {
                if let Some(progress) = progress {
                    progress(received + bytes, total_missing);
                }
            };
            download(
                blobs, endpoint, "pack", pack_hash, providers, timeout, &report,
            )
            .await?;
            received += pack.size;
            bytes_fetched += pack.size;
            blobs_fetched += 1;
        }
    }
    Ok(Fetched {
        manifest,
        bytes_fetched,
        blobs_fetched,
        reused_unpinned,
    })
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

async fn download(
    blobs: &Store,
    endpoint: &Endpoint,
    what: &'static str,
    hash: Hash,
    providers: &[EndpointId],
    timeout: Duration,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), ContentError> {
    let fail = |message: String| ContentError::Fetch {
        what,
        hash: hex(&hash),
        tried: providers.len(),
        peers: providers
            .iter()
            .map(|p| p.fmt_short().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        message,
    };
    crate::download::download(blobs, endpoint, hash, providers, timeout, progress)
        .await
        .map_err(|e| fail(e.to_string()))
}
