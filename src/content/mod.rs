//! Repositories as blobs: publishing a git repository into the blob store,
//! pinning, fetching from peers, and materializing a bare repository.
//!
//! Owns the named tags that pin a repository's blobs:
//! `knot/<repo_id>/manifest` for the current manifest and
//! `knot/<repo_id>/pack/<hash>` for every pack it lists. Tags are per
//! repository, so a pack shared by two repositories (a fork) is stored once and
//! stays pinned while either references it; the blob store's GC removes a blob
//! only when no tag names it. Tags survive restarts. Git work runs on blocking
//! threads; no blob store call blocks the async runtime.
//!
//! Packs stream: `git pack-objects` writes into the blob store through
//! `add_stream`, and materializing reads each pack back as a verified stream
//! of 16 KiB leaves into `git index-pack`. A fetch does not wait for its
//! downloads to end: each pack is fed to `git index-pack` as its verified
//! leaves arrive in the store ([`fetch_indexing`], [`materialize_arriving`]).
//! Memory stays a few chunks per pack, whatever its size.
//!
//! Publishing is in [`publish()`], fetching in [`fetch()`], the streams
//! between git and the store in `stream`, and the content jobs that string
//! them together for the core's decisions (publish, fetch, discard, restore
//! on failure) in [`jobs`], with the background optimizations of
//! materialized repositories they ask for ([`Optimizer`]).

use std::path::Path;

use iroh_blobs::{Hash, HashAndFormat, api::Store};
use n0_future::StreamExt;
use tracing::debug;

use crate::{
    git::{GitError, PackIndexer},
    manifest::{Manifest, ManifestError, PackEntry},
    materialize::{self, MaterializeError, Outcome},
    repo_id::RepoId,
};

mod fetch;
mod guard;
pub mod jobs;
mod optimize;
mod publish;
mod repair;
mod stream;

pub use fetch::{FetchOptions, Fetched, check_space, fetch, fetch_indexing};
pub use guard::GcGuard;
pub use optimize::Optimizer;
pub use publish::{Published, Received, publish, publish_received};
pub use repair::{Rebuilt, rebuild_missing};
use stream::{arriving_pack_reader, pack_reader};
use tokio_util::sync::CancellationToken;

/// Errors moving repository content.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A git operation failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A manifest is invalid.
    #[error("manifest {hash}: {source}")]
    Manifest {
        /// The manifest hash.
        hash: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// Materialization failed.
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    /// The blob store failed.
    #[error("blob store error while {op}: {message}")]
    Blobs {
        /// What the node was doing.
        op: &'static str,
        /// The store's message.
        message: String,
    },
    /// The update rewrites history and was not forced.
    #[error(
        "refusing a non-fast-forward update of {}; publish with --force to rewrite history",
        .0.join(", ")
    )]
    NotFastForward(Vec<String>),
    /// The manifest describes another repository.
    #[error("manifest is for {found}, expected {expected}")]
    WrongRepo {
        /// The repository asked for.
        expected: String,
        /// The repository the manifest names.
        found: String,
    },
    /// No peer could provide a blob.
    #[error(
        "could not fetch {what} {hash} from any of {tried} peer(s) ({peers}): {message}; check that a peer serving it is online"
    )]
    Fetch {
        /// Manifest or pack.
        what: &'static str,
        /// The blob hash.
        hash: String,
        /// How many peers were tried.
        tried: usize,
        /// Short ids of the peers tried.
        peers: String,
        /// The last error.
        message: String,
    },
    /// The data disk lacks room for the blobs to fetch.
    #[error(
        "the disk holding {path} has {available} bytes free but {needed} are needed; free space and the fetch resumes"
    )]
    NoSpace {
        /// The directory checked.
        path: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The state would exceed a storage quota.
    #[error(
        "the state needs {needed} bytes but this repository may hold {limit} (max_repo_bytes, max_total_bytes or its own quota); raise the quota with `knotd admin set-quota` to take it"
    )]
    Quota {
        /// Bytes of packs the state has.
        needed: u64,
        /// Bytes allowed.
        limit: u64,
    },
    /// A pack is not the size its manifest declares.
    #[error(
        "pack {hash} is {} but its manifest declares {declared}: the state is refused; its publisher must publish it again",
        .size.map_or_else(|| format!("larger than {declared} bytes"), |s| format!("{s} bytes"))
    )]
    Misdeclared {
        /// The pack's hash (hex).
        hash: String,
        /// The size the manifest declares.
        declared: u64,
        /// Its real size, when known (when not, it is larger than declared).
        size: Option<u64>,
    },
    /// A manifest is larger than any manifest may be.
    #[error(
        "manifest {hash} is larger than the {max} byte limit: the state is refused; it was not produced by a compatible knotd"
    )]
    ManifestTooLarge {
        /// The manifest's hash (hex).
        hash: String,
        /// The limit.
        max: u64,
    },
    /// A blocking task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl ContentError {
    /// Whether the state itself is refused, so that fetching it again
    /// cannot help until the quota changes: it exceeds a quota, or its
    /// manifest misstates sizes.
    pub fn refuses_state(&self) -> bool {
        matches!(
            self,
            ContentError::Quota { .. }
                | ContentError::Misdeclared { .. }
                | ContentError::ManifestTooLarge { .. }
        )
    }
}

fn request_err<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> ContentError {
    move |e| ContentError::Blobs {
        op,
        message: e.to_string(),
    }
}

/// Tag naming the current manifest of `repo_id`.
pub fn manifest_tag(repo_id: &RepoId) -> String {
    format!("knot/{repo_id}/manifest")
}

/// Tag holding a manifest while its packs are being fetched.
fn incoming_tag(repo_id: &RepoId) -> String {
    format!("knot/{repo_id}/incoming")
}

fn pack_tag_prefix(repo_id: &RepoId) -> String {
    format!("knot/{repo_id}/pack/")
}

/// Hex of a BLAKE3 hash.
pub fn hex(hash: &Hash) -> String {
    data_encoding::HEXLOWER.encode(hash.as_bytes())
}

/// Pin `manifest` (stored under `hash`) and all its packs for `repo_id`, then
/// unpin this repository's packs that the manifest no longer lists and the
/// tags of an incoming fetch, and flush the blob store to disk. When the
/// tags are exactly that already, nothing is written.
pub async fn pin(
    blobs: &Store,
    repo_id: &RepoId,
    hash: Hash,
    manifest: &Manifest,
) -> Result<(), ContentError> {
    let prefix = pack_tag_prefix(repo_id);
    let mut wanted = std::collections::BTreeMap::new();
    for pack in &manifest.packs {
        wanted.insert(
            format!("{prefix}{}", pack.hash_hex()),
            HashAndFormat::raw(Hash::from_bytes(pack.hash)),
        );
    }
    wanted.insert(manifest_tag(repo_id), HashAndFormat::raw(hash));
    let existing = repo_tags(blobs, repo_id).await?;
    if existing == wanted {
        return Ok(());
    }
    for (name, value) in &wanted {
        if existing.get(name) != Some(value) {
            blobs
                .tags()
                .set(name, *value)
                .await
                .map_err(request_err("pinning"))?;
        }
    }
    let stale: Vec<String> = existing
        .into_keys()
        .filter(|name| !wanted.contains_key(name))
        .collect();
    for name in stale {
        debug!(repo = %repo_id, tag = %name, "unpinning pack no longer referenced");
        blobs
            .tags()
            .delete(&name)
            .await
            .map_err(request_err("unpinning a pack"))?;
    }
    // The caller records this state in its database next: make the blob store
    // durable first, so a crash never leaves a database naming lost blobs.
    blobs
        .sync_db()
        .await
        .map_err(request_err("syncing the blob store"))?;
    Ok(())
}

/// Every tag of `repo_id`, by name.
async fn repo_tags(
    blobs: &Store,
    repo_id: &RepoId,
) -> Result<std::collections::BTreeMap<String, HashAndFormat>, ContentError> {
    let mut tags = std::collections::BTreeMap::new();
    let mut list = blobs
        .tags()
        .list_prefix(format!("knot/{repo_id}/"))
        .await
        .map_err(request_err("listing tags"))?;
    while let Some(tag) = list.next().await {
        let tag = tag.map_err(request_err("listing tags"))?;
        let name = String::from_utf8_lossy(tag.name.as_ref()).into_owned();
        tags.insert(name, tag.hash_and_format());
    }
    Ok(tags)
}

/// Remove every tag of `repo_id`; blobs no other repository pins are then collected.
pub async fn unpin_all(blobs: &Store, repo_id: &RepoId) -> Result<(), ContentError> {
    blobs
        .tags()
        .delete_prefix(format!("knot/{repo_id}/"))
        .await
        .map_err(request_err("unpinning"))?;
    Ok(())
}

/// Read and decode a manifest from the store.
pub async fn load_manifest(
    blobs: &Store,
    hash: Hash,
    repo_id: &RepoId,
) -> Result<Manifest, ContentError> {
    let bytes = blobs
        .get_bytes(hash)
        .await
        .map_err(request_err("reading a manifest"))?;
    decode_manifest(&bytes, hash, repo_id)
}

fn decode_manifest(bytes: &[u8], hash: Hash, repo_id: &RepoId) -> Result<Manifest, ContentError> {
    if Hash::new(bytes) != hash {
        return Err(ContentError::Manifest {
            hash: hex(&hash),
            source: ManifestError::Malformed("stored bytes do not match the hash".into()),
        });
    }
    let manifest = Manifest::from_bytes(bytes).map_err(|source| ContentError::Manifest {
        hash: hex(&hash),
        source,
    })?;
    if manifest.repo_id != repo_id.as_str() {
        return Err(ContentError::WrongRepo {
            expected: repo_id.to_string(),
            found: manifest.repo_id,
        });
    }
    Ok(manifest)
}

/// Materialize `manifest` into the bare repository at `dest`, streaming
/// and verifying every pack from the store. An existing repository is
/// updated in place; the same manifest twice is a no-op.
pub async fn materialize(
    blobs: &Store,
    dest: &Path,
    hash: Hash,
    manifest: &Manifest,
) -> Result<Outcome, ContentError> {
    materialize_with(blobs, dest, hash, manifest, None, &PackIndexer::Git).await
}

/// [`materialize`], linking an already indexed pack instead of indexing
/// its blob ([`materialize::Staged`]), and indexing a new first pack with
/// `indexer` ([`materialize::materialize_with`]).
pub async fn materialize_with(
    blobs: &Store,
    dest: &Path,
    hash: Hash,
    manifest: &Manifest,
    staged: Option<materialize::Staged>,
    indexer: &PackIndexer,
) -> Result<Outcome, ContentError> {
    let indexer = indexer.clone();
    materialize_reading(blobs, dest, hash, manifest, staged, None, indexer).await
}

/// [`materialize`] while the packs are still being downloaded
/// ([`fetch_indexing`]): each pack is indexed as its bytes arrive, in
/// order, and reading stops with an error once `download_failed` is
/// cancelled. A new repository's first pack is indexed by `indexer`
/// ([`materialize::materialize_with`]).
pub async fn materialize_arriving(
    blobs: &Store,
    dest: &Path,
    hash: Hash,
    manifest: &Manifest,
    download_failed: CancellationToken,
    indexer: &PackIndexer,
) -> Result<Outcome, ContentError> {
    let indexer = indexer.clone();
    materialize_reading(
        blobs,
        dest,
        hash,
        manifest,
        None,
        Some(download_failed),
        indexer,
    )
    .await
}

/// Materialize with packs read as they are ([`pack_reader`]) or, given a
/// download's failure signal, as they arrive ([`arriving_pack_reader`]).
async fn materialize_reading(
    blobs: &Store,
    dest: &Path,
    hash: Hash,
    manifest: &Manifest,
    staged: Option<materialize::Staged>,
    arriving: Option<CancellationToken>,
    indexer: PackIndexer,
) -> Result<Outcome, ContentError> {
    let blobs = blobs.clone();
    let dest = dest.to_path_buf();
    let manifest = manifest.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|source| MaterializeError::Io {
                context: "creating",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut load = |entry: &PackEntry| match &arriving {
            Some(failed) => Ok(arriving_pack_reader(&blobs, &handle, entry, failed.clone())),
            None => pack_reader(&blobs, &handle, entry),
        };
        materialize::materialize_with(
            &dest,
            *hash.as_bytes(),
            &manifest,
            &mut load,
            staged.as_ref(),
            &indexer,
        )
    })
    .await
    .map_err(|e| ContentError::Task(e.to_string()))?
    .map_err(ContentError::from)
}

/// Put `repo_id` back to the state `previous` (or to nothing): its pins
/// and its materialized copy at `dest`. Used when finishing a new state
/// failed, so the previous one stays served and pinned.
pub async fn restore(
    blobs: &Store,
    repo_id: &RepoId,
    dest: &Path,
    previous: Option<Hash>,
) -> Result<(), ContentError> {
    match previous {
        Some(hash) => {
            let manifest = load_manifest(blobs, hash, repo_id).await?;
            pin(blobs, repo_id, hash, &manifest).await?;
            materialize(blobs, dest, hash, &manifest).await?;
            Ok(())
        }
        None => discard(blobs, repo_id, dest).await,
    }
}

/// Unpin everything of `repo_id` and delete its materialized copy at `dest`.
pub async fn discard(blobs: &Store, repo_id: &RepoId, dest: &Path) -> Result<(), ContentError> {
    unpin_all(blobs, repo_id).await?;
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ContentError::Materialize(MaterializeError::Io {
            context: "removing",
            path: dest,
            source,
        })),
    })
    .await
    .map_err(|e| ContentError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::RefSet;

    #[test]
    fn tag_names_do_not_collide_between_repos() {
        let a = RepoId::parse("did:plc:a/b").unwrap();
        let b = RepoId::parse("did:plc:a/b.x").unwrap();
        assert!(!pack_tag_prefix(&b).starts_with(&pack_tag_prefix(&a)));
        assert!(!manifest_tag(&b).starts_with(&format!("knot/{a}/")));
    }

    #[test]
    fn manifest_for_another_repo_is_rejected() {
        let m = Manifest {
            repo_id: "did:plc:a/other".into(),
            refs: RefSet {
                head: None,
                refs: Default::default(),
            },
            packs: vec![],
        };
        let bytes = m.to_bytes();
        let hash = Hash::new(&bytes);
        let err = decode_manifest(&bytes, hash, &RepoId::parse("did:plc:a/b").unwrap());
        assert!(matches!(err, Err(ContentError::WrongRepo { .. })));
        let err = decode_manifest(
            &bytes,
            Hash::new(b"x"),
            &RepoId::parse("did:plc:a/other").unwrap(),
        );
        assert!(matches!(err, Err(ContentError::Manifest { .. })));
    }
}
