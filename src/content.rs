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
//! of 16 KiB leaves into `git index-pack`. Memory stays a few chunks per
//! pack, whatever its size.

use std::{
    io::{self, Read},
    path::Path,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use iroh::{Endpoint, EndpointId};
use iroh_blobs::{
    Hash, HashAndFormat,
    api::{Store, blobs::EncodedItem},
    protocol::ChunkRanges,
};
use n0_future::{Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    git::{self, GitError, PackStream, RefSet},
    manifest::{self, Manifest, ManifestError, PackEntry},
    materialize::{self, MaterializeError, Outcome, PackReader},
    repo_id::RepoId,
};

/// Bytes read from `git pack-objects` per chunk sent to the blob store.
const PACK_CHUNK: usize = 256 * 1024;
/// Chunks in flight between a reader and its consumer.
const CHUNKS_IN_FLIGHT: usize = 8;

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
    /// A blocking task failed.
    #[error("internal task failed: {0}")]
    Task(String),
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

/// What a publish produced. Its new blobs are protected from GC by
/// temporary tags until it is dropped: pin it ([`pin`]) before.
#[derive(Debug)]
pub struct Published {
    /// The new manifest.
    pub manifest: Manifest,
    /// Its hash.
    pub hash: Hash,
    /// Bytes of new pack data added.
    pub bytes_added: u64,
    /// Whether all packs were consolidated into one.
    pub consolidated: bool,
    /// Whether the repository had not changed.
    pub unchanged: bool,
    /// Temporary tags on the new blobs.
    pub protect: Vec<iroh_blobs::api::TempTag>,
}

struct Packed {
    refs: RefSet,
    new_pack: Option<PackStream>,
    consolidated: bool,
}

/// Read refs, check fast-forwards and start `git pack-objects` for what is
/// new: one `for-each-ref`, one `cat-file --batch` for every ancestry
/// question, one `cat-file --batch-check` for the previous tips and the
/// pack itself, however many refs the repository has.
fn pack_new(
    source: &Path,
    prev: Option<Manifest>,
    max_packs: usize,
    force: bool,
) -> Result<Packed, ContentError> {
    let git_dir = git::open_repo(source)?;
    let refs = git::read_refs(&git_dir)?;
    let nonempty = |pack: PackStream| (pack.object_count() > 0).then_some(pack);
    let Some(prev) = prev else {
        let pack = git::spawn_pack_objects(&git_dir, &refs.tips(), &[], false)?;
        return Ok(Packed {
            refs,
            new_pack: nonempty(pack),
            consolidated: false,
        });
    };
    if prev.refs == refs {
        return Ok(Packed {
            refs,
            new_pack: None,
            consolidated: false,
        });
    }
    if !force {
        let mut ancestry: Option<git::Ancestry> = None;
        let mut failure = None;
        let not_ff = manifest::refs_fast_forward_check(&prev.refs, &refs, |a, b| {
            if ancestry.is_none() {
                match git::Ancestry::open(&git_dir) {
                    Ok(walker) => ancestry = Some(walker),
                    Err(e) => {
                        failure.get_or_insert(e);
                        return false;
                    }
                }
            }
            let walker = ancestry.as_mut().expect("opened above");
            walker.is_ancestor(a, b).unwrap_or_else(|e| {
                failure.get_or_insert(e);
                false
            })
        });
        if let Some(e) = failure {
            return Err(e.into());
        }
        if !not_ff.is_empty() {
            return Err(ContentError::NotFastForward(not_ff));
        }
    }
    if manifest::needs_consolidation(prev.packs.len() + 1, max_packs) {
        let pack = git::spawn_pack_objects(&git_dir, &refs.tips(), &[], false)?;
        return Ok(Packed {
            refs,
            new_pack: Some(pack),
            consolidated: true,
        });
    }
    let pack = git::spawn_pack_objects(&git_dir, &refs.tips(), &prev.refs.tips(), true)?;
    Ok(Packed {
        refs,
        new_pack: nonempty(pack),
        consolidated: false,
    })
}

/// Publish the git repository at `source` as the new state of `repo_id`.
///
/// With a previous manifest, one thin pack holds only the objects not
/// reachable from the previous refs; when the pack count would exceed
/// `max_packs`, all objects are repacked into a single pack instead. Unless
/// `force` is set, every ref must fast-forward. The pack streams from git
/// into the blob store. The new blobs are held by temporary tags in the
/// result; nothing is pinned or unpinned here.
pub async fn publish(
    blobs: &Store,
    repo_id: &RepoId,
    source: &Path,
    previous: Option<&Manifest>,
    max_packs: usize,
    force: bool,
) -> Result<Published, ContentError> {
    let source = source.to_path_buf();
    let prev = previous.cloned();
    let packed = tokio::task::spawn_blocking(move || pack_new(&source, prev, max_packs, force))
        .await
        .map_err(|e| ContentError::Task(e.to_string()))??;

    if let Some(prev) = previous
        && prev.refs == packed.refs
    {
        let hash = Hash::from_bytes(prev.hash());
        return Ok(Published {
            manifest: prev.clone(),
            hash,
            bytes_added: 0,
            consolidated: false,
            unchanged: true,
            protect: Vec::new(),
        });
    }

    let mut packs = match (previous, packed.consolidated) {
        (Some(prev), false) => prev.packs.clone(),
        _ => Vec::new(),
    };
    let mut bytes_added = 0;
    let mut temp_tags = Vec::new();
    if let Some(pack) = packed.new_pack {
        let objects = pack.object_count();
        let (stream, size) = stream_reader(Box::new(pack));
        let tt = blobs
            .add_stream(stream)
            .await
            .temp_tag()
            .await
            .map_err(request_err("adding a pack"))?;
        let size = size
            .await
            .map_err(|e| ContentError::Task(e.to_string()))?
            .map_err(|e| ContentError::Git(git::unwrap_git_error(e, "packing")))?;
        let entry = PackEntry {
            hash: *tt.hash().as_bytes(),
            size,
            objects,
        };
        bytes_added = entry.size;
        temp_tags.push(tt);
        packs.push(entry);
    }
    let manifest = Manifest {
        repo_id: repo_id.to_string(),
        refs: packed.refs,
        packs,
    };
    manifest
        .validate()
        .map_err(|source| ContentError::Manifest {
            hash: "(new)".into(),
            source,
        })?;
    let tt = blobs
        .add_bytes(manifest.to_bytes())
        .temp_tag()
        .await
        .map_err(request_err("adding the manifest"))?;
    let hash = tt.hash();
    temp_tags.push(tt);
    debug!(repo = %repo_id, manifest = %hex(&hash), packs = manifest.packs.len(), bytes_added, consolidated = packed.consolidated, "packed");
    Ok(Published {
        manifest,
        hash,
        bytes_added,
        consolidated: packed.consolidated,
        unchanged: false,
        protect: temp_tags,
    })
}

/// A stream of chunks read from `reader` on a blocking thread, and the
/// total it read (or the reader's error) once the stream is done.
fn stream_reader(
    mut reader: Box<dyn Read + Send>,
) -> (ChunkStream, tokio::task::JoinHandle<io::Result<u64>>) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let total = tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; PACK_CHUNK];
            let mut filled = 0;
            // Fill whole chunks: fewer, larger messages to the store.
            let result = loop {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(true),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if filled > 0 {
                buf.truncate(filled);
                total += filled as u64;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Err(io::Error::other("the blob store stopped reading"));
                }
            }
            match result {
                Ok(true) => return Ok(total),
                Ok(false) => {}
                Err(e) => {
                    // The store aborts the import on an error item.
                    let message = e.to_string();
                    let _ = tx.blocking_send(Err(io::Error::other(message)));
                    return Err(e);
                }
            }
        }
    });
    (ChunkStream(rx), total)
}

/// Chunks from a channel, as the blob store's `add_stream` takes them.
struct ChunkStream(mpsc::Receiver<io::Result<Bytes>>);

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A blocking reader of chunks sent by a task on the runtime.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A reader of the pack blob `entry` from the store, its leaves verified
/// against the blob's hash by the store as they are read. Call from a
/// blocking thread.
fn pack_reader(
    blobs: &Store,
    handle: &tokio::runtime::Handle,
    entry: &PackEntry,
) -> Result<PackReader, MaterializeError> {
    let hash = Hash::from_bytes(entry.hash);
    let present =
        handle
            .block_on(blobs.has(hash))
            .map_err(|e| MaterializeError::PackUnavailable {
                hash: entry.hash_hex(),
                reason: e.to_string(),
            })?;
    if !present {
        return Err(MaterializeError::PackUnavailable {
            hash: entry.hash_hex(),
            reason: "not in the blob store".into(),
        });
    }
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT * 16);
    let blobs = blobs.clone();
    let hex = entry.hash_hex();
    handle.spawn(async move {
        let mut stream = blobs.export_bao(hash, ChunkRanges::all()).stream();
        while let Some(item) = stream.next().await {
            let chunk = match item {
                EncodedItem::Leaf(leaf) => Ok(leaf.data),
                EncodedItem::Error(e) => Err(io::Error::other(MaterializeError::CorruptPack {
                    hash: hex.clone(),
                    reason: format!("the blob store could not verify it: {e}"),
                })),
                _ => continue,
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Box::new(ChannelReader {
        rx,
        current: Bytes::new(),
    }))
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
    let mut existing = std::collections::BTreeMap::new();
    let mut list = blobs
        .tags()
        .list_prefix(format!("knot/{repo_id}/"))
        .await
        .map_err(request_err("listing tags"))?;
    while let Some(tag) = list.next().await {
        let tag = tag.map_err(request_err("listing tags"))?;
        let name = String::from_utf8_lossy(tag.name.as_ref()).into_owned();
        existing.insert(name, tag.hash_and_format());
    }
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

/// What a fetch transferred.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The fetched manifest.
    pub manifest: Manifest,
    /// Bytes of blobs that were missing and were fetched.
    pub bytes_fetched: u64,
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
    if !manifest_present {
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
        if !blobs
            .has(pack_hash)
            .await
            .map_err(request_err("checking a blob"))?
        {
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
        }
    }
    Ok(Fetched {
        manifest,
        bytes_fetched,
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

/// Materialize `manifest` into the bare repository at `dest`, streaming
/// and verifying every pack from the store. An existing repository is
/// updated in place; the same manifest twice is a no-op.
pub async fn materialize(
    blobs: &Store,
    dest: &Path,
    hash: Hash,
    manifest: &Manifest,
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
        let mut load = |entry: &PackEntry| pack_reader(&blobs, &handle, entry);
        materialize::materialize(&dest, *hash.as_bytes(), &manifest, &mut load)
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
