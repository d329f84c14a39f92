//! The packs of a state in a new repository: which indexer takes each,
//! and whether together they name only objects they hold, so that the
//! repository needs no connectivity walk. Runs one scoped thread at a time
//! for the check of a thin pack (a child process of the indexer's program)
//! while the next pack is indexed. Nothing here survives a call.

use std::path::Path;

use tracing::{debug, warn};

use super::{GIX_MIN_PACK_BYTES, LoadPack, MaterializeError, Staged, add_pack};
use crate::git::{self, ObjectFormat, PackIndexer};
use crate::manifest::{Manifest, PackEntry};

/// The indexer for the manifest's pack at `position`: `indexer` for the
/// first pack (the only one that can be self-contained: later ones are
/// thin, and only git completes those) when it is SHA-1 and at least
/// [`GIX_MIN_PACK_BYTES`]; git for every other.
pub(super) fn indexer_for<'a>(
    position: usize,
    entry: &PackEntry,
    format: ObjectFormat,
    indexer: &'a PackIndexer,
) -> &'a PackIndexer {
    if position == 0 && format == ObjectFormat::Sha1 && entry.size >= GIX_MIN_PACK_BYTES {
        indexer
    } else {
        &PackIndexer::Git
    }
}

/// Add every pack of `manifest` to the new repository at `git_dir`, in
/// order; returns whether each was found to name only objects the
/// repository holds. A thin pack (git's verdict: not self-contained) is
/// checked against the packs before it ([`connected_beside`]) while the
/// next pack is indexed (the check may see that one too, which is sound:
/// what is asked is that the repository's objects name only objects it
/// holds); once one is not connected, no later one is checked.
pub(super) fn add_new_packs(
    git_dir: &Path,
    manifest: &Manifest,
    load_pack: &mut LoadPack<'_>,
    staged: Option<&Staged>,
    format: ObjectFormat,
    indexer: &PackIndexer,
) -> Result<bool, MaterializeError> {
    std::thread::scope(|scope| {
        let mut all_connected = true;
        let mut checking: Option<std::thread::ScopedJoinHandle<'_, bool>> = None;
        for (i, entry) in manifest.packs.iter().enumerate() {
            let chosen = indexer_for(i, entry, format, indexer);
            let indexed = add_pack(git_dir, entry, load_pack, staged, chosen)?;
            if let Some(check) = checking.take() {
                all_connected &= check.join().unwrap_or(false);
            }
            if indexed.connected || !all_connected {
                continue;
            }
            if i == 0 || !matches!(indexer, PackIndexer::Gix { .. }) {
                all_connected = false;
                continue;
            }
            let name = indexed.name;
            checking = Some(scope.spawn(move || connected_beside(git_dir, &name, format, indexer)));
        }
        if let Some(check) = checking.take() {
            all_connected &= check.join().unwrap_or(false);
        }
        Ok(all_connected)
    })
}

/// Whether the pack `name`, just added to the repository being built,
/// names only objects its packs hold, asked of the gix-pack indexer's
/// program (a SHA-1 repository only). When every pack is, the repository
/// needs no connectivity walk; any failure here only means the walk runs.
fn connected_beside(
    git_dir: &Path,
    name: &str,
    format: ObjectFormat,
    indexer: &PackIndexer,
) -> bool {
    let PackIndexer::Gix { program } = indexer else {
        return false;
    };
    if format != ObjectFormat::Sha1 {
        return false;
    }
    let started = std::time::Instant::now();
    match git::pack_connected_in_repo(git_dir, name, program) {
        Ok(connected) => {
            debug!(
                pack = name,
                connected,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "pack checked against the packs before it"
            );
            connected
        }
        Err(e) => {
            warn!(pack = name, error = %e, "cannot check the pack with gix-pack; git walks the repository instead");
            false
        }
    }
}
