//! Materializing a manifest as a bare git repository that plain `git clone`
//! can use.
//!
//! The destination is a bare repository owned by knotd. Two marker files
//! inside it record what it reflects:
//!
//! * `knot-manifest`: lowercase hex BLAKE3 hash of the manifest,
//! * `knot-packs`: hex hashes of the pack blobs already indexed, one a line.
//!
//! A first materialization is built in a sibling temporary directory
//! (`.{name}.tmp-XXXX`) and renamed into place only once it is complete and
//! connected, so a crash never leaves a half-built repository at `dest`.
//! Later updates index only the packs not yet indexed, check connectivity of
//! the new tips, mark the manifest marker `pending`, apply all refs in one
//! transaction and finally rewrite the markers atomically, so a crash while
//! refs move is repaired by the next run rather than mistaken for done. Pack bytes are verified against the manifest
//! before anything is written.
//!
//! Materializing the same `dest` concurrently is not supported; callers
//! serialize per repository.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::git::{self, GitError, ObjectFormat};
use crate::manifest::{Manifest, PackEntry};

/// Marker file holding the hex hash of the materialized manifest.
pub const MANIFEST_MARKER: &str = "knot-manifest";
/// Marker file listing the hex hashes of indexed packs.
pub const PACKS_MARKER: &str = "knot-packs";
/// What the manifest marker says while refs are being moved.
const PENDING: &str = "pending\n";

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

/// Make the bare repository at `dest` reflect `manifest`.
///
/// `manifest_hash` is the BLAKE3 hash of the manifest blob the caller
/// fetched; it is recorded in the `knot-manifest` marker as given (normally
/// equal to [`Manifest::hash`]). `load_pack` returns the bytes of a pack
/// blob; they are verified against the entry's hash, size and object count
/// before anything is written. Returns [`Outcome::Unchanged`] without
/// running any process when the marker already names `manifest_hash`.
pub fn materialize(
    dest: &Path,
    manifest_hash: [u8; 32],
    manifest: &Manifest,
    load_pack: &mut dyn FnMut(&PackEntry) -> Result<Vec<u8>, MaterializeError>,
) -> Result<Outcome, MaterializeError> {
    let hash_hex = data_encoding::HEXLOWER.encode(&manifest_hash);
    let marker = dest.join(MANIFEST_MARKER);
    match fs::read_to_string(&marker) {
        Ok(current) if current.trim() == hash_hex => return Ok(Outcome::Unchanged),
        Ok(_) => return update(dest, &hash_hex, manifest, load_pack),
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
    create(dest, &hash_hex, manifest, load_pack)
}

/// Build a fresh repository next to `dest` and rename it into place.
fn create(
    dest: &Path,
    hash_hex: &str,
    manifest: &Manifest,
    load_pack: &mut dyn FnMut(&PackEntry) -> Result<Vec<u8>, MaterializeError>,
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
    for entry in &manifest.packs {
        let bytes = load_verified(entry, load_pack)?;
        git::index_pack(&git_dir, &bytes)?;
    }
    git::check_connected(&git_dir, &manifest.refs.tips(), &[])
        .map_err(MaterializeError::Incomplete)?;
    git::apply_refs(&git_dir, &manifest.refs)?;
    git::fsck_connectivity(&git_dir).map_err(MaterializeError::Incomplete)?;
    write_markers(tmp.path(), hash_hex, &manifest.packs)?;

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

/// Bring an existing materialized repository up to date.
fn update(
    dest: &Path,
    hash_hex: &str,
    manifest: &Manifest,
    load_pack: &mut dyn FnMut(&PackEntry) -> Result<Vec<u8>, MaterializeError>,
) -> Result<Outcome, MaterializeError> {
    manifest.refs.validate()?;
    let git_dir = git::open_repo(dest)?;
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

    // Load and verify every new pack before writing anything.
    let mut new_packs = Vec::new();
    for entry in &manifest.packs {
        if !indexed.contains(&entry.hash_hex()) {
            new_packs.push(load_verified(entry, load_pack)?);
        }
    }
    for bytes in &new_packs {
        git::index_pack(&git_dir, bytes)?;
    }

    let current = git::read_refs(&git_dir)?;
    git::check_connected(&git_dir, &manifest.refs.tips(), &current.tips())
        .map_err(MaterializeError::Incomplete)?;
    // From here until the markers name the new manifest, the refs may be
    // anywhere between the old and the new state: say so, so that a crash in
    // between is repaired by the next run instead of taken for done.
    write_atomic(dest, MANIFEST_MARKER, PENDING.as_bytes())?;
    git::apply_refs(&git_dir, &manifest.refs)?;
    write_markers(dest, hash_hex, &manifest.packs)?;
    Ok(Outcome::Updated {
        packs_indexed: new_packs.len(),
    })
}

/// Load a pack and check its hash, size and header object count.
fn load_verified(
    entry: &PackEntry,
    load_pack: &mut dyn FnMut(&PackEntry) -> Result<Vec<u8>, MaterializeError>,
) -> Result<Vec<u8>, MaterializeError> {
    let bytes = load_pack(entry)?;
    let corrupt = |reason: String| MaterializeError::CorruptPack {
        hash: entry.hash_hex(),
        reason,
    };
    if bytes.len() as u64 != entry.size {
        return Err(corrupt(format!(
            "{} bytes instead of {}",
            bytes.len(),
            entry.size
        )));
    }
    if blake3::hash(&bytes).as_bytes() != &entry.hash {
        return Err(corrupt("BLAKE3 hash mismatch".into()));
    }
    let objects = git::parse_pack_header(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if objects != entry.objects {
        return Err(corrupt(format!(
            "{objects} objects instead of {}",
            entry.objects
        )));
    }
    Ok(bytes)
}

/// Write both marker files atomically (temp file + rename each); the
/// manifest marker last, so it is only updated once the pack list is.
fn write_markers(dir: &Path, hash_hex: &str, packs: &[PackEntry]) -> Result<(), MaterializeError> {
    let mut list = String::new();
    for entry in packs {
        list.push_str(&entry.hash_hex());
        list.push('\n');
    }
    write_atomic(dir, PACKS_MARKER, list.as_bytes())?;
    write_atomic(dir, MANIFEST_MARKER, format!("{hash_hex}\n").as_bytes())
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), MaterializeError> {
    let path = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempfile_in(dir)
        .map_err(io("creating a temporary file in", dir))?;
    tmp.write_all(data).map_err(io("writing", &path))?;
    tmp.as_file().sync_all().map_err(io("syncing", &path))?;
    tmp.persist(&path)
        .map_err(|e| io("replacing", &path)(e.error))?;
    sync_dir(dir);
    Ok(())
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
