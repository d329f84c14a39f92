//! Rebuilding a held state's missing blobs from its materialized copy.
//!
//! A check of a held state (at start-up, on the verify schedule, after a
//! collector pass that may have raced a fetch, or on `knotd admin verify`)
//! first looks for blobs the store lacks and rebuilds what it can from the
//! materialized repository: the manifest from its copy in
//! `knot-manifest.bin`, and each full pack from the pack file git kept when
//! it indexed it (a thin pack is completed while indexed, so its bytes
//! differ and it must be fetched again). Every rebuilt blob is checked
//! against its BLAKE3 hash before it is used. What cannot be rebuilt is
//! left to the fetch that follows, from peers.

use std::path::Path;

use iroh_blobs::{Hash, api::Store};
use tracing::{info, warn};

use super::{ContentError, hex, load_manifest, request_err};
use crate::{
    manifest::{MAX_MANIFEST_BYTES, PackEntry},
    materialize,
    repo_id::RepoId,
};

/// Blobs rebuilt from a materialized copy.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Their hashes.
    pub blobs: Vec<Hash>,
    /// Temporary tags holding them until the state's pins are set; hand
    /// them to the [`super::GcGuard`] after pinning.
    pub protect: Vec<iroh_blobs::api::TempTag>,
}

/// Rebuild the blobs of the state `hash` of `repo_id` that the store lacks,
/// from the materialized repository at `dest`, where its bytes are there.
/// Blobs that cannot be rebuilt stay missing; nothing else changes.
pub async fn rebuild_missing(
    blobs: &Store,
    repo_id: &RepoId,
    dest: &Path,
    hash: Hash,
) -> Result<Rebuilt, ContentError> {
    let mut rebuilt = Rebuilt::default();
    if !has(blobs, hash).await? {
        let Some(bytes) = materialize::manifest_copy(dest, MAX_MANIFEST_BYTES as u64) else {
            return Ok(rebuilt);
        };
        if Hash::new(&bytes) != hash {
            warn!(repo = %repo_id, manifest = %hex(&hash), "the materialized copy of the manifest is not the held state's");
            return Ok(rebuilt);
        }
        let tag = blobs
            .add_bytes(bytes)
            .temp_tag()
            .await
            .map_err(request_err("rebuilding a manifest"))?;
        info!(repo = %repo_id, manifest = %hex(&hash), "manifest rebuilt from the materialized copy");
        rebuilt.blobs.push(hash);
        rebuilt.protect.push(tag);
    }
    let manifest = load_manifest(blobs, hash, repo_id).await?;
    for pack in &manifest.packs {
        let pack_hash = Hash::from_bytes(pack.hash);
        if has(blobs, pack_hash).await? {
            continue;
        }
        if let Some(tag) = rebuild_pack(blobs, dest, pack).await? {
            info!(repo = %repo_id, pack = %pack.hash_hex(), "pack rebuilt from the materialized copy");
            rebuilt.blobs.push(pack_hash);
            rebuilt.protect.push(tag);
        }
    }
    Ok(rebuilt)
}

async fn has(blobs: &Store, hash: Hash) -> Result<bool, ContentError> {
    blobs
        .has(hash)
        .await
        .map_err(request_err("checking a blob"))
}

/// Import the pack file of `dest` whose bytes are `entry`'s, if one is.
async fn rebuild_pack(
    blobs: &Store,
    dest: &Path,
    entry: &PackEntry,
) -> Result<Option<iroh_blobs::api::TempTag>, ContentError> {
    let want = Hash::from_bytes(entry.hash);
    let candidates = materialize::pack_files_of_size(dest, entry.size);
    let found = tokio::task::spawn_blocking(move || {
        candidates.into_iter().find(|path| {
            let Ok(file) = std::fs::File::open(path) else {
                return false;
            };
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(file).is_ok()
                && Hash::from_bytes(*hasher.finalize().as_bytes()) == want
        })
    })
    .await
    .map_err(|e| ContentError::Task(e.to_string()))?;
    let Some(path) = found else {
        return Ok(None);
    };
    let path = std::path::absolute(&path).map_err(|e| ContentError::Task(e.to_string()))?;
    let tag = blobs
        .add_path(path)
        .temp_tag()
        .await
        .map_err(request_err("rebuilding a pack"))?;
    if tag.hash() != want {
        // The file changed after it was hashed: leave the pack to a fetch.
        return Ok(None);
    }
    Ok(Some(tag))
}
