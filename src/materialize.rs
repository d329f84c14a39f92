//! Materializing a manifest as a bare git repository that plain `git clone`
//! can use.
//!
//! The destination is a bare repository owned by knotd. Two marker files
//! inside it record what it reflects:
//!
//! * `knot-manifest`: lowercase hex BLAKE3 hash of the manifest,
//! * `knot-packs`: hex hashes of the pack blobs already indexed, one a line;
//! * `knot-manifest.bin`: the manifest blob's bytes, so that a manifest blob
//!   lost from the blob store can be rebuilt from here (checked against its
//!   hash before it is used; not synced, since a torn copy fails that check).
//!
//! A first materialization is built in a sibling temporary directory
//! (`.{name}.tmp-XXXX`) and renamed into place only once it is complete and
//! connected, so a crash never leaves a half-built repository at `dest`.
//! Later updates index only the packs not yet indexed, check connectivity of
//! the new tips, mark the manifest marker `pending`, apply all refs in one
//! transaction and finally rewrite the markers atomically, so a crash while
//! refs move is repaired by the next run rather than mistaken for done. An
//! update that fails before its refs move removes the packs it added (a
//! fetch indexes each pack while later ones still download, and any of
//! those may fail), so the repository keeps exactly its state's packs.
//! An update to a single self-contained pack (a consolidation) then removes
//! the older packs, so the repository holds what its manifest lists.
//!
//! A pack this node indexed itself from the bytes of the blob (a publish's
//! received pack, [`Staged`]) is linked in instead of indexed again.
//!
//! Packs stream from the loader into `git index-pack` and are never held
//! whole in memory. Every byte is checked against the manifest entry (size,
//! object count, BLAKE3) on the way; the last bytes of a pack are held back
//! until the whole pack has matched, so git cannot finish indexing a pack
//! that does not, and nothing of it enters the repository (it is indexed in
//! a quarantine directory, see [`git::index_pack_from`]). `git index-pack`
//! computes the id of every object from its content, so an object is only
//! ever stored under the id its content hashes to.
//!
//! Materializing the same `dest` concurrently is not supported; callers
//! serialize per repository.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::git::{self, GitError, ObjectFormat, PackIndexer};
use crate::manifest::{Manifest, PackEntry};
use tracing::{debug, warn};

mod new_packs;
mod verified;
use new_packs::{add_new_packs, indexer_for};
use verified::Verified;

/// Packs this process has indexed, by indexer, and what else a scrape of
/// the node's metrics shows of indexing ([`indexing_counts`]).
static INDEXED_BY_GIX: AtomicU64 = AtomicU64::new(0);
static INDEXED_BY_GIT: AtomicU64 = AtomicU64::new(0);
static GIX_REFUSED: AtomicU64 = AtomicU64::new(0);
static CONNECTIVITY_WALKS: AtomicU64 = AtomicU64::new(0);

/// What this process's materializations have done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexingCounts {
    /// Packs indexed by gix-pack (`knotd index-pack`).
    pub by_gix: u64,
    /// Packs indexed by `git index-pack` (including after gix-pack
    /// refused one).
    pub by_git: u64,
    /// Packs gix-pack refused and git then indexed: a steady rise means
    /// gix-pack is failing on this machine (its warnings say why).
    pub gix_refused: u64,
    /// New repositories whose connectivity git had to walk, because a
    /// pack was not found connected.
    pub connectivity_walks: u64,
}

/// The counts so far (the metrics endpoint adds them as counters).
pub fn indexing_counts() -> IndexingCounts {
    IndexingCounts {
        by_gix: INDEXED_BY_GIX.load(Ordering::Relaxed),
        by_git: INDEXED_BY_GIT.load(Ordering::Relaxed),
        gix_refused: GIX_REFUSED.load(Ordering::Relaxed),
        connectivity_walks: CONNECTIVITY_WALKS.load(Ordering::Relaxed),
    }
}

/// Smallest first pack of a new repository that the gix-pack indexer
/// takes (smaller ones go to `git index-pack`, whose start costs less and
/// whose time on them is a few milliseconds).
pub const GIX_MIN_PACK_BYTES: u64 = 1 << 20;

/// Marker file holding the hex hash of the materialized manifest.
pub const MANIFEST_MARKER: &str = "knot-manifest";
/// Marker file listing the hex hashes of indexed packs.
pub const PACKS_MARKER: &str = "knot-packs";
/// File holding a copy of the materialized manifest's bytes.
pub const MANIFEST_COPY: &str = "knot-manifest.bin";
/// What the manifest marker says while refs are being moved.
const PENDING: &str = "pending\n";

/// A pack's bytes as the loader provides them.
pub type PackReader = Box<dyn Read + Send>;

/// Provides the bytes of a pack blob; they are verified as they are read.
pub type LoadPack<'a> = dyn FnMut(&PackEntry) -> Result<PackReader, MaterializeError> + 'a;

/// Errors from [`materialize`].
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// A git operation failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A filesystem operation failed.
    #[error("{context} {}: {source}; check permissions and free space", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Pack bytes do not match the manifest entry.
    #[error(
        "pack {hash} is corrupt ({reason}); the blob will be fetched again from another peer, nothing was changed"
    )]
    CorruptPack {
        /// Hex BLAKE3 hash the manifest expects.
        hash: String,
        /// What did not match.
        reason: String,
    },
    /// A pack blob could not be obtained (returned by the caller's loader).
    #[error("pack {hash} is not available: {reason}; retry once a peer provides it")]
    PackUnavailable {
        /// Hex BLAKE3 hash of the pack.
        hash: String,
        /// Why it could not be loaded.
        reason: String,
    },
    /// `dest` exists but is not a repository materialized by knotd.
    #[error(
        "{} exists but was not created by knotd (no {MANIFEST_MARKER} marker); move it away or choose another directory",
        path.display()
    )]
    NotKnotRepository {
        /// The destination.
        path: PathBuf,
    },
    /// The packs do not contain every object the refs reach.
    #[error(
        "the manifest's packs do not contain all objects its refs need: {0}; the publisher's manifest is incomplete"
    )]
    Incomplete(GitError),
    /// `dest` has no usable parent directory or file name.
    #[error("invalid destination {}: it needs a parent directory and a name", path.display())]
    BadDestination {
        /// The destination.
        path: PathBuf,
    },
}

/// What [`materialize`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `dest` already reflected this manifest; nothing was run.
    Unchanged,
    /// `dest` was created.
    Created,
    /// `dest` was updated, indexing this many new packs.
    Updated {
        /// Number of packs indexed in this run.
        packs_indexed: usize,
    },
}

/// A pack this node already indexed from bytes it received (a publish's
/// pack, indexed in a staging repository): where its manifest entry is
/// met, its files are linked into the repository instead of the blob being
/// indexed again. Its index was computed on this node from the same bytes
/// the blob holds, so every object id still comes from content.
#[derive(Clone, Debug)]
pub struct Staged {
    /// The pack blob's hash: the manifest entry these files are.
    pub hash: [u8; 32],
    /// The `.pack` file; its `.idx` (and `.rev`, if any) lie beside it.
    pub pack: PathBuf,
    /// Whether git found it self-contained and connected.
    pub connected: bool,
}

/// Whether the repository at `dest` holds exactly a state: with
/// `Some((manifest_hex, packs))`, its marker names that manifest and its
/// object store has exactly that many packs (so no object the manifest does
/// not carry); with `None`, there is no repository at `dest` yet.
pub fn holds_exactly(dest: &Path, state: Option<(&str, usize)>) -> bool {
    let Some((manifest_hex, packs)) = state else {
        return !dest.exists() || is_empty_dir(dest).unwrap_or(false);
    };
    let marker = fs::read_to_string(dest.join(MANIFEST_MARKER)).unwrap_or_default();
    if marker.trim() != manifest_hex {
        return false;
    }
    pack_files(dest).len() == packs
}

/// Make the bare repository at `dest` reflect `manifest`.
///
/// `manifest_hash` is the BLAKE3 hash of the manifest blob the caller
/// fetched; it is recorded in the `knot-manifest` marker as given (normally
/// equal to [`Manifest::hash`]). `load_pack` returns a reader of a pack
/// blob; what it reads is verified against the entry's hash, size and
/// object count before git can finish indexing it. Returns
/// [`Outcome::Unchanged`] without running any process when the marker
/// already names `manifest_hash`.
pub fn materialize(
    dest: &Path,
    manifest_hash: [u8; 32],
    manifest: &Manifest,
    load_pack: &mut LoadPack<'_>,
) -> Result<Outcome, MaterializeError> {
    materialize_with(
        dest,
        manifest_hash,
        manifest,
        load_pack,
        None,
        &PackIndexer::Git,
    )
}

/// [`materialize`], linking the files of `staged` for its manifest entry
/// instead of indexing that pack's blob, and indexing the first pack of a
/// new repository with `indexer` (when it is [`GIX_MIN_PACK_BYTES`] or
/// larger; other packs, and any pack `indexer` refuses, with git).
pub fn materialize_with(
    dest: &Path,
    manifest_hash: [u8; 32],
    manifest: &Manifest,
    load_pack: &mut LoadPack<'_>,
    staged: Option<&Staged>,
    indexer: &PackIndexer,
) -> Result<Outcome, MaterializeError> {
    let hash_hex = data_encoding::HEXLOWER.encode(&manifest_hash);
    let marker = dest.join(MANIFEST_MARKER);
    match fs::read_to_string(&marker) {
        Ok(current) if current.trim() == hash_hex => {
            // Repositories materialized before the copy existed get one.
            if !dest.join(MANIFEST_COPY).exists() {
                write_file(dest, MANIFEST_COPY, &manifest.to_bytes(), false)?;
            }
            return Ok(Outcome::Unchanged);
        }
        Ok(_) => return update(dest, &hash_hex, manifest, load_pack, staged, indexer),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(MaterializeError::Io {
                context: "reading",
                path: marker,
                source,
            });
        }
    }
    if dest.exists() && !is_empty_dir(dest)? {
        return Err(MaterializeError::NotKnotRepository {
            path: dest.to_path_buf(),
        });
    }
    create(dest, &hash_hex, manifest, load_pack, staged, indexer)
}

/// Build a fresh repository next to `dest` and rename it into place.
fn create(
    dest: &Path,
    hash_hex: &str,
    manifest: &Manifest,
    load_pack: &mut LoadPack<'_>,
    staged: Option<&Staged>,
    indexer: &PackIndexer,
) -> Result<Outcome, MaterializeError> {
    manifest.refs.validate()?;
    let bad_dest = || MaterializeError::BadDestination {
        path: dest.to_path_buf(),
    };
    let name = dest.file_name().ok_or_else(bad_dest)?.to_string_lossy();
    let parent = match dest.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(bad_dest()),
    };
    fs::create_dir_all(parent).map_err(io("creating", parent))?;
    let prefix = format!(".{name}.tmp-");
    remove_stale_temp_dirs(parent, &prefix);
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .map_err(io("creating a temporary directory in", parent))?;

    let format = manifest.refs.object_format()?.unwrap_or(ObjectFormat::Sha1);
    let git_dir = git::init_bare_with_format(tmp.path(), format)?;
    let all_connected = add_new_packs(&git_dir, manifest, load_pack, staged, format, indexer)?;
    if !all_connected {
        CONNECTIVITY_WALKS.fetch_add(1, Ordering::Relaxed);
        git::check_connected(&git_dir, &manifest.refs.tips(), &[])
            .map_err(MaterializeError::Incomplete)?;
    }
    // When each pack holds everything its objects refer to, every tip that
    // is present is complete (as `git clone` concludes); writing the refs
    // checks that each tip is present.
    git::apply_refs_to_new(&git_dir, &manifest.refs).map_err(|e| match e {
        missing @ GitError::MissingObject { .. } => MaterializeError::Incomplete(missing),
        other => other.into(),
    })?;
    write_markers(tmp.path(), hash_hex, manifest)?;

    let built = tmp.keep();
    if let Err(source) = fs::rename(&built, dest) {
        let _ = fs::remove_dir_all(&built);
        return Err(MaterializeError::Io {
            context: "moving the new repository into place at",
            path: dest.to_path_buf(),
            source,
        });
    }
    sync_dir(parent);
    Ok(Outcome::Created)
}

/// Bring an existing materialized repository up to date. A new first
/// pack (a consolidation: one self-contained pack for the whole state) is
/// indexed with `indexer` as a new repository's is.
fn update(
    dest: &Path,
    hash_hex: &str,
    manifest: &Manifest,
    load_pack: &mut LoadPack<'_>,
    staged: Option<&Staged>,
    indexer: &PackIndexer,
) -> Result<Outcome, MaterializeError> {
    manifest.refs.validate()?;
    // A repository knotd materialized (its marker is there) is bare at
    // `dest`: no `git rev-parse` is needed to find it.
    let git_dir = fs::canonicalize(dest).map_err(io("opening", dest))?;
    let packs_file = dest.join(PACKS_MARKER);
    let indexed: BTreeSet<String> = match fs::read_to_string(&packs_file) {
        Ok(text) => text.lines().map(|l| l.trim().to_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(source) => {
            return Err(MaterializeError::Io {
                context: "reading",
                path: packs_file,
                source,
            });
        }
    };

    // Each new pack is verified while it is indexed; one that does not
    // match leaves nothing behind, and when any step before the refs move
    // fails, the packs this update added go again (a fetch indexes packs
    // while later ones still download, and one of those may fail), so the
    // repository holds exactly its state's packs.
    let before = pack_names(&git_dir);
    let mut packs_indexed = 0;
    let mut added = Vec::new();
    let prepared = (|| {
        let format = manifest.refs.object_format()?.unwrap_or(ObjectFormat::Sha1);
        for (i, entry) in manifest.packs.iter().enumerate() {
            if !indexed.contains(&entry.hash_hex()) {
                let indexer = indexer_for(i, entry, format, indexer);
                added.push(add_pack(&git_dir, entry, load_pack, staged, indexer)?);
                packs_indexed += 1;
            }
        }
        let current = git::current_refs(&git_dir)?;
        let current_tips: BTreeSet<git::ObjectId> = current.values().cloned().collect();
        let current_tips: Vec<git::ObjectId> = current_tips.into_iter().collect();
        git::check_connected(&git_dir, &manifest.refs.tips(), &current_tips)
            .map_err(MaterializeError::Incomplete)?;
        Ok(current)
    })();
    let current = match prepared {
        Ok(current) => current,
        Err(e) => {
            remove_packs_except(&git_dir, &before);
            return Err(e);
        }
    };
    // From here until the markers name the new manifest, the refs may be
    // anywhere between the old and the new state: say so, so that a crash in
    // between is repaired by the next run instead of taken for done.
    write_atomic(dest, MANIFEST_MARKER, PENDING.as_bytes())?;
    git::apply_refs_over(&git_dir, &manifest.refs, &current)?;
    write_markers(dest, hash_hex, manifest)?;
    // A state of one new pack that holds everything its refs reach (a
    // consolidation) makes every older pack redundant: they go, so the
    // repository does not grow with each consolidation and holds exactly
    // the manifest's packs again. "Connected" says only that the pack names
    // nothing outside itself: the tips must be in it too, or a pack of one
    // stray blob under unchanged refs would take the repository's objects
    // with the old packs.
    if let ([only], [entry]) = (&added[..], &manifest.packs[..])
        && only.connected
        && entry.objects > 0
        && pack_holds(&git_dir, &only.name, &manifest.refs.tips())
    {
        prune_packs_except(&git_dir, &only.name);
    }
    Ok(Outcome::Updated { packs_indexed })
}

/// Write a commit-graph and a multi-pack-index with a reachability bitmap in
/// the materialized repository at `dest`, so clones served from it start
/// sending at once; nothing for a small repository
/// ([`OPTIMIZE_MIN_PACK_BYTES`]).
/// An optional accelerator: git serves the repository without it, and a
/// kill while it is written leaves the previous one (or none). Does nothing
/// for a directory knotd did not materialize. Callers must not run it twice
/// at once on one repository.
pub fn optimize(dest: &Path) -> Result<(), MaterializeError> {
    match fs::read_to_string(dest.join(MANIFEST_MARKER)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(MaterializeError::Io {
                context: "reading",
                path: dest.join(MANIFEST_MARKER),
                source,
            });
        }
    }
    let indexed = dest.join("objects/pack/multi-pack-index").exists();
    if !indexed && pack_bytes(dest) < OPTIMIZE_MIN_PACK_BYTES {
        return Ok(());
    }
    git::write_midx_bitmap(dest)?;
    Ok(())
}

/// Below this many bytes of packs in all, a materialized repository gets
/// no multi-pack-index and bitmap: `git upload-pack` counts the objects of
/// so small a repository in milliseconds, and two processes per new state
/// are saved where they matter most, on a node following thousands of
/// small repositories. A repository that has an index keeps it up to date.
pub const OPTIMIZE_MIN_PACK_BYTES: u64 = 1 << 20;

/// Total size of the `.pack` files of the repository at `dest`.
fn pack_bytes(dest: &Path) -> u64 {
    pack_files(dest)
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The `.pack` files in the object store of the repository at `dest`.
fn pack_files(dest: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dest.join("objects").join("pack")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect()
}

/// Add one pack of the manifest to the repository: link the staged files
/// when they are this entry's, else index the blob. Returns the pack's name
/// and whether git found it self-contained and connected.
fn add_pack(
    git_dir: &Path,
    entry: &PackEntry,
    load_pack: &mut LoadPack<'_>,
    staged: Option<&Staged>,
    indexer: &PackIndexer,
) -> Result<git::Indexed, MaterializeError> {
    match staged {
        Some(staged) if staged.hash == entry.hash => link_staged(git_dir, staged),
        _ if *indexer != PackIndexer::Git => {
            match index_verified(git_dir, entry, load_pack, indexer) {
                Ok(indexed) => Ok(indexed),
                // The bytes were wrong: git would find the same. Or the
                // deadline passed: git, slower on every shape measured,
                // would take longer still (the job is retried later).
                Err(
                    e @ (MaterializeError::CorruptPack { .. }
                    | MaterializeError::PackUnavailable { .. }
                    | MaterializeError::Git(GitError::TimedOut { .. })),
                ) => Err(e),
                Err(e) => {
                    GIX_REFUSED.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        pack = %entry.hash_hex(),
                        error = %e,
                        "gix-pack did not index this pack; indexing it with git"
                    );
                    index_verified(git_dir, entry, load_pack, &PackIndexer::Git)
                }
            }
        }
        _ => index_verified(git_dir, entry, load_pack, &PackIndexer::Git),
    }
}

/// Whether every one of `ids` is an object of the pack `pack-<name>` in
/// `git_dir`, read from the index the node's indexer just wrote. False for
/// anything but SHA-1 (the index reader here knows only that) and on any
/// error: the old packs are then kept, which costs only disk.
fn pack_holds(git_dir: &Path, name: &str, ids: &[git::ObjectId]) -> bool {
    let path = git_dir
        .join("objects")
        .join("pack")
        .join(format!("pack-{name}.idx"));
    let Ok(index) = gix_pack::index::File::at(&path, gix_hash::Kind::Sha1) else {
        return false;
    };
    ids.iter().all(|id| {
        gix_hash::ObjectId::from_hex(id.as_str().as_bytes())
            .is_ok_and(|id| index.lookup(id).is_some())
    })
}

/// Remove every pack of the repository but `pack-<keep>`, with the
/// multi-pack-index and bitmaps that name them (the next optimization
/// writes new ones), as `git repack -a -d` does: a `git upload-pack`
/// already reading a removed pack keeps its open file, and one that looks
/// for an object afresh finds it in the pack kept. Best effort: a pack
/// left behind only costs disk and the next publish's shortcut.
fn prune_packs_except(git_dir: &Path, keep: &str) {
    let dir = git_dir.join("objects").join("pack");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    // First, so no index names a pack that is gone.
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("multi-pack-index")
        {
            let _ = fs::remove_file(entry.path());
        }
    }
    remove_packs_except(git_dir, &BTreeSet::from([format!("pack-{keep}")]));
}

/// The names (`pack-<hash>`) of the repository's packs.
fn pack_names(git_dir: &Path) -> BTreeSet<String> {
    pack_files(git_dir)
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect()
}

/// Remove the files of every pack of the repository whose name
/// (`pack-<hash>`) is not in `keep`, every index before any pack data, so
/// git never finds an index without its pack. Best effort.
fn remove_packs_except(git_dir: &Path, keep: &BTreeSet<String>) {
    let dir = git_dir.join("objects").join("pack");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let mut indexes = Vec::new();
    let mut rest = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pack = name.split('.').next().unwrap_or_default();
        if !pack.starts_with("pack-") || keep.contains(pack) {
            continue;
        }
        if name.ends_with(".idx") {
            indexes.push(entry.path());
        } else {
            rest.push(entry.path());
        }
    }
    for path in indexes.into_iter().chain(rest) {
        let _ = fs::remove_file(path);
    }
    sync_dir(&dir);
}

/// Link (or, across file systems, copy) a staged pack's files into
/// `objects/pack`, the index last, so git never sees a pack without it.
fn link_staged(git_dir: &Path, staged: &Staged) -> Result<git::Indexed, MaterializeError> {
    let name = staged
        .pack
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.strip_prefix("pack-"))
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| MaterializeError::BadDestination {
            path: staged.pack.clone(),
        })?
        .to_owned();
    let dir = git_dir.join("objects").join("pack");
    let mut files = Vec::new();
    for ext in ["pack", "rev", "idx"] {
        let from = staged.pack.with_extension(ext);
        if ext == "rev" && !from.exists() {
            continue;
        }
        let name = from
            .file_name()
            .ok_or_else(|| MaterializeError::BadDestination { path: from.clone() })?;
        files.push((dir.join(name), from));
    }
    for (to, from) in &files {
        let _ = fs::remove_file(to);
        if fs::hard_link(from, to).is_err() {
            fs::copy(from, to).map_err(io("copying a staged pack to", to))?;
        }
    }
    sync_dir(&dir);
    Ok(git::Indexed {
        name,
        connected: staged.connected,
    })
}

/// Stream a pack from the loader into `git index-pack`, verifying it on
/// the way.
fn index_verified(
    git_dir: &Path,
    entry: &PackEntry,
    load_pack: &mut LoadPack<'_>,
    indexer: &PackIndexer,
) -> Result<git::Indexed, MaterializeError> {
    let mut reader = Verified::new(load_pack(entry)?, entry);
    let started = std::time::Instant::now();
    let indexed = git::index_pack_from_with(git_dir, &mut reader, indexer);
    if indexed.is_ok() {
        match indexer {
            PackIndexer::Git => &INDEXED_BY_GIT,
            PackIndexer::Gix { .. } => &INDEXED_BY_GIX,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    debug!(
        pack = %entry.hash_hex(),
        bytes = entry.size,
        indexer = if *indexer == PackIndexer::Git { "git" } else { "gix" },
        ok = indexed.is_ok(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pack indexed"
    );
    indexed.map_err(|e| match e {
        // The reader's verdict (a corrupt or vanished pack) comes first.
        GitError::Io { source, .. }
            if source
                .get_ref()
                .is_some_and(|inner| inner.is::<MaterializeError>()) =>
        {
            *source
                .into_inner()
                .expect("checked above")
                .downcast::<MaterializeError>()
                .expect("checked above")
        }
        // Git can stop on a damaged object before the reader has seen the
        // whole pack: finish the checks, so a corrupt pack is reported as
        // one whichever of the two noticed first.
        other => reader.verdict().unwrap_or(MaterializeError::Git(other)),
    })
}

/// Write the marker files atomically (temp file + rename each): the
/// manifest's copy and the pack list first, the manifest marker last, so it
/// is only updated once the others are.
fn write_markers(dir: &Path, hash_hex: &str, manifest: &Manifest) -> Result<(), MaterializeError> {
    let mut list = String::new();
    for entry in &manifest.packs {
        list.push_str(&entry.hash_hex());
        list.push('\n');
    }
    write_file(dir, MANIFEST_COPY, &manifest.to_bytes(), false)?;
    write_atomic(dir, PACKS_MARKER, list.as_bytes())?;
    write_atomic(dir, MANIFEST_MARKER, format!("{hash_hex}\n").as_bytes())
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), MaterializeError> {
    write_file(dir, name, data, true)
}

/// Replace `dir/name` with `data` by a rename, synced to disk when `sync`.
fn write_file(dir: &Path, name: &str, data: &[u8], sync: bool) -> Result<(), MaterializeError> {
    let path = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempfile_in(dir)
        .map_err(io("creating a temporary file in", dir))?;
    tmp.write_all(data).map_err(io("writing", &path))?;
    if sync {
        tmp.as_file().sync_all().map_err(io("syncing", &path))?;
    }
    tmp.persist(&path)
        .map_err(|e| io("replacing", &path)(e.error))?;
    if sync {
        sync_dir(dir);
    }
    Ok(())
}

/// The manifest bytes kept in the materialized repository at `dest`, if
/// there is a copy of at most `max_len` bytes. Unverified: check its hash.
pub fn manifest_copy(dest: &Path, max_len: u64) -> Option<Vec<u8>> {
    let file = fs::File::open(dest.join(MANIFEST_COPY)).ok()?;
    let mut bytes = Vec::new();
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() as u64 <= max_len).then_some(bytes)
}

/// Pack files of exactly `size` bytes in the object store of the
/// materialized repository at `dest`: the packs it indexed as received
/// (a thin pack is completed when indexed, so only full packs match).
pub fn pack_files_of_size(dest: &Path, size: u64) -> Vec<PathBuf> {
    pack_files(dest)
        .into_iter()
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == size))
        .collect()
}

/// Best-effort fsync of a directory so renames inside it are durable.
fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Remove temporary build directories left behind by an interrupted run.
fn remove_stale_temp_dirs(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn is_empty_dir(path: &Path) -> Result<bool, MaterializeError> {
    if !path.is_dir() {
        return Ok(false);
    }
    let mut entries = fs::read_dir(path).map_err(io("reading", path))?;
    Ok(entries.next().is_none())
}

fn io(
    context: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> MaterializeError + use<> {
    let path = path.to_path_buf();
    move |source| MaterializeError::Io {
        context,
        path,
        source,
    }
}
