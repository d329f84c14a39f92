//! Indexing a self-contained pack with gitoxide's `gix-pack`, which
//! resolves deltas on every core where `git index-pack` hashes every object
//! on one thread (BENCHMARKS.md: 0.27–0.77× its time on every shape
//! measured, the same index byte for byte).
//!
//! The node never runs this in its own process: a pack from the network
//! must not be able to crash the node or swell its memory (the pack is
//! mapped while its deltas are resolved). [`index_stream`] is what the
//! hidden `knotd index-pack` subcommand runs, reading the pack from its
//! standard input; [`super::index_pack_from_with`] spawns that program
//! under the same quarantine, deadline and verification as `git
//! index-pack`. Only a pack that needs no object outside itself can be
//! indexed this way (gix-pack completes thin packs only through an object
//! database): the caller falls back to git for anything else.
//!
//! Besides the index, [`index_stream`] tells whether the pack is
//! *connected*: every object its commits, trees and tags name is in the
//! pack (gitlinks excepted), as `git index-pack
//! --check-self-contained-and-connected` does, so a new repository made of
//! it needs no connectivity walk. [`connected_in_dir`] (the hidden `knotd
//! check-connected`) asks the same of a pack already in a repository
//! against every pack beside it: the thin packs after the first, once git
//! has completed them. Nothing here survives a process.

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gix_object::{CommitRefIter, Kind, TagRefIter, TreeRefIter};

/// Largest decoded object or delta buffer the indexer allocates for one
/// object by default (gix-pack's `alloc_limit_bytes`): a pack whose entry
/// declares a bigger object is refused instead of being allowed to claim
/// the memory. git itself has no such bound; 1 GiB is far above any
/// source file and below what a 2-core machine's indexer can hold.
pub const ALLOC_LIMIT_BYTES: usize = 1 << 30;

/// How [`index_stream`] works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexOptions {
    /// Threads that resolve deltas (all cores when `None`).
    pub threads: Option<usize>,
    /// Largest buffer for one object ([`ALLOC_LIMIT_BYTES`]).
    pub alloc_limit_bytes: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            threads: None,
            alloc_limit_bytes: ALLOC_LIMIT_BYTES,
        }
    }
}

/// What [`index_stream`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GixIndexed {
    /// The pack's checksum in hex (its file is `pack-<name>.pack`).
    pub name: String,
    /// Whether every object named by the pack's commits, trees and tags is
    /// in the pack.
    pub connected: bool,
}

/// Errors of the gix-pack indexer.
#[derive(Debug, thiserror::Error)]
pub enum GixIndexError {
    /// gix-pack refused the pack or could not write it.
    #[error("gix-pack could not index the pack: {0}")]
    Index(String),
    /// The written index could not be read back.
    #[error("gix-pack could not read back the index it wrote: {0}")]
    Reopen(String),
    /// A file could not be removed or found.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        source: io::Error,
    },
}

/// Index the SHA-1 pack read from `pack` into `pack_dir` (which must
/// exist): `pack-<name>.pack` and `pack-<name>.idx` (version 2), every
/// object id computed from content and the pack's checksum checked. The
/// pack must be self-contained. On error, nothing is left in `pack_dir`.
pub fn index_stream(
    pack: &mut dyn BufRead,
    pack_dir: &Path,
    options: IndexOptions,
) -> Result<GixIndexed, GixIndexError> {
    let interrupt = AtomicBool::new(false);
    let IndexOptions {
        threads,
        alloc_limit_bytes,
    } = options;
    let write_options = gix_pack::bundle::write::Options {
        thread_limit: threads,
        alloc_limit_bytes: Some(alloc_limit_bytes),
        ..Default::default()
    };
    let outcome = gix_pack::Bundle::write_to_directory(
        pack,
        Some(pack_dir),
        &mut gix_utils::progress::Discard,
        &interrupt,
        None::<gix_object::find::Never>,
        gix_hash::Kind::Sha1,
        write_options,
    )
    .map_err(|e| GixIndexError::Index(e.to_string()))?;
    // The keep file protects the pack from a concurrent `git gc`; the
    // pack moves into its repository only after this process, and the
    // node's repositories are not collected by git.
    if let Some(keep) = &outcome.keep_path {
        std::fs::remove_file(keep).map_err(|source| GixIndexError::Io {
            context: format!("removing {}", keep.display()),
            source,
        })?;
    }
    let name = outcome.index.data_hash.to_string();
    let bundle = outcome
        .to_bundle()
        .ok_or_else(|| GixIndexError::Reopen("no index was written".into()))?
        .map_err(|e| GixIndexError::Reopen(e.to_string()))?;
    let connected = connected(&bundle, &|_| None, options, &interrupt)?;
    Ok(GixIndexed { name, connected })
}

/// Whether the pack `pack-<name>` in `pack_dir`, already indexed there,
/// names only objects that some pack of `pack_dir` holds (the pack itself
/// or the repository's others), gitlinks excepted. A pack git completed
/// from a thin one refers to earlier packs; when each pack of a repository
/// passes this as it arrives and its refs point at objects it has,
/// everything they reach is there and no walk is needed.
pub fn connected_in_dir(
    pack_dir: &Path,
    name: &str,
    options: IndexOptions,
) -> Result<bool, GixIndexError> {
    if name.len() != 40 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GixIndexError::Reopen(format!(
            "{name:?} is not a pack name (40 hex digits)"
        )));
    }
    let interrupt = AtomicBool::new(false);
    let file = format!("pack-{name}.idx");
    let bundle = gix_pack::Bundle::at(pack_dir.join(&file), gix_hash::Kind::Sha1)
        .map_err(|e| GixIndexError::Reopen(format!("{file}: {e}")))?;
    let listing = std::fs::read_dir(pack_dir).map_err(|source| GixIndexError::Io {
        context: format!("listing {}", pack_dir.display()),
        source,
    })?;
    let mut others = Vec::new();
    for entry in listing.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "idx") && entry.file_name() != file.as_str() {
            others.push(
                gix_pack::Bundle::at(&path, gix_hash::Kind::Sha1)
                    .map_err(|e| GixIndexError::Reopen(format!("{}: {e}", path.display())))?,
            );
        }
    }
    let elsewhere = |id: &gix_hash::oid| others.iter().find_map(|other| kind_in(other, id));
    connected(&bundle, &elsewhere, options, &interrupt)
}

/// Whether every object the commits, trees and tags of `bundle` name is
/// `present` (in it, or beside it): one parallel pass over the delta chains whose base is a commit,
/// tree or tag (a delta has its base's kind, which the entry headers tell
/// without inflating anything), decoding each of their objects once and
/// looking each named id up in the index. Blob chains, most of a pack's
/// bytes, name nothing and are not decoded again: the index writer has
/// just hashed every object from its content.
fn connected(
    bundle: &gix_pack::Bundle,
    elsewhere: &(dyn Fn(&gix_hash::oid) -> Option<Kind> + Sync),
    options: IndexOptions,
    interrupt: &AtomicBool,
) -> Result<bool, GixIndexError> {
    let index = &bundle.index;
    let pack = &bundle.pack;
    let offsets = index.sorted_offsets();
    let Some(kinds) = chain_kinds(pack, index, &offsets) else {
        // Headers the writer accepted but this pass cannot follow: no
        // verdict, git's own walk decides.
        return Ok(false);
    };
    let own = kinds_by_id(index, &offsets, &kinds);
    // A named object must be there and of the kind its name calls for (a
    // commit's tree a tree, its parents commits, a tree's entries what
    // their modes say), as git's walk would require.
    let present = |id: &gix_hash::oid, wanted: Option<Kind>| {
        own.get(&id.to_owned())
            .copied()
            .or_else(|| elsewhere(id))
            .is_some_and(|kind| wanted.is_none_or(|wanted| wanted == kind))
    };
    let present = &present;
    let named = offsets
        .iter()
        .zip(&kinds)
        .filter(|(_, kind)| **kind != Kind::Blob)
        .map(|(offset, _)| *offset);
    let tree = gix_pack::cache::delta::Tree::from_offsets_in_pack(
        pack.path(),
        named,
        &|offset| *offset,
        &|id| Ok(index.lookup(id).map(|i| index.pack_offset_at_index(i))),
        &mut gix_utils::progress::Discard,
        interrupt,
        gix_hash::Kind::Sha1,
        Some(options.alloc_limit_bytes),
    )
    .map_err(|e| GixIndexError::Reopen(e.to_string()))?;
    let pack_end = pack.pack_end() as u64;
    // The tree holds only some entries, so the range it gives an entry
    // may run over the skipped ones after it: cut it at the next entry.
    let entry_end = |start: u64| {
        let next = offsets.partition_point(|offset| *offset <= start);
        offsets.get(next).copied().unwrap_or(pack_end)
    };
    let missing = AtomicBool::new(false);
    let missing = &missing;
    tree.traverse(
        |range, pack: &gix_pack::data::File| pack.entry_slice(range.start..entry_end(range.start)),
        pack,
        pack_end,
        move |_: &mut u64, _: &dyn gix_utils::progress::Progress, context| {
            let Some(kind) = context.entry.header.as_kind() else {
                missing.store(true, Ordering::Relaxed);
                return Ok(());
            };
            if !missing.load(Ordering::Relaxed)
                && !refers_within(kind, context.decompressed, present)
            {
                missing.store(true, Ordering::Relaxed);
            }
            Ok(())
        },
        gix_pack::cache::delta::traverse::Options {
            object_progress: Box::new(gix_utils::progress::Discard),
            size_progress: &mut gix_utils::progress::Discard,
            thread_limit: options.threads,
            should_interrupt: interrupt,
            object_hash: gix_hash::Kind::Sha1,
            alloc_limit_bytes: Some(options.alloc_limit_bytes),
        },
    )
    .map_err(|e| GixIndexError::Reopen(e.to_string()))?;
    Ok(!missing.load(Ordering::Relaxed))
}

/// The kind of every object of `index` (whose entries' offsets, ascending,
/// are `offsets`, with their chain kinds `kinds`), for the connectivity
/// pass's lookups: most of its time went to the index's binary search. A
/// map with the standard library's keyed hash, so that no pack can choose
/// ids that collide.
fn kinds_by_id(
    index: &gix_pack::index::File,
    offsets: &[u64],
    kinds: &[Kind],
) -> HashMap<gix_hash::ObjectId, Kind> {
    index
        .iter()
        .filter_map(|entry| {
            let at = offsets.binary_search(&entry.pack_offset).ok()?;
            Some((entry.oid, kinds[at]))
        })
        .collect()
}

/// The kind of the object `id` in `bundle`, by following its delta chain's
/// entry headers to the base (no inflating); `None` when it is not there
/// or the chain does not end within a bound no real pack reaches.
fn kind_in(bundle: &gix_pack::Bundle, id: &gix_hash::oid) -> Option<Kind> {
    use gix_pack::data::entry::Header;
    let index = &bundle.index;
    let mut offset = index.pack_offset_at_index(index.lookup(id)?);
    for _ in 0..MAX_CHAIN_STEPS {
        match bundle.pack.entry(offset).ok()?.header {
            Header::OfsDelta { base_distance } => {
                offset = Header::verified_base_pack_offset(offset, base_distance)?;
            }
            Header::RefDelta { base_id } => {
                offset = index.pack_offset_at_index(index.lookup(base_id)?);
            }
            header => return header.as_kind(),
        }
    }
    None
}

/// Longest delta chain [`kind_in`] follows (git's default `--depth` is
/// 50, its maximum 4,095).
const MAX_CHAIN_STEPS: usize = 10_000;

/// The kind of each entry's chain base (its own kind for a base), for the
/// entries at `offsets` (ascending), read from entry headers alone. `None`
/// when a base is not an entry of the pack or the bases form a cycle.
fn chain_kinds(
    pack: &gix_pack::data::File,
    index: &gix_pack::index::File,
    offsets: &[u64],
) -> Option<Vec<Kind>> {
    use gix_pack::data::entry::Header;
    let position = |offset: u64| offsets.binary_search(&offset).ok();
    let mut kinds: Vec<Option<Kind>> = vec![None; offsets.len()];
    let mut bases = vec![usize::MAX; offsets.len()];
    for (at, offset) in offsets.iter().enumerate() {
        match pack.entry(*offset).ok()?.header {
            Header::OfsDelta { base_distance } => {
                bases[at] = position(Header::verified_base_pack_offset(*offset, base_distance)?)?;
            }
            Header::RefDelta { base_id } => {
                bases[at] = position(index.pack_offset_at_index(index.lookup(base_id)?))?;
            }
            header => kinds[at] = Some(header.as_kind()?),
        }
    }
    let mut chain = Vec::new();
    for at in 0..offsets.len() {
        let mut next = at;
        while kinds[next].is_none() {
            if chain.len() == offsets.len() {
                return None;
            }
            chain.push(next);
            next = bases[next];
        }
        let kind = kinds[next];
        for member in chain.drain(..) {
            kinds[member] = kind;
        }
    }
    kinds.into_iter().collect()
}

/// Whether every id that the object of `kind` with content `data` names is
/// `present` with the kind it is named as (a commit's tree and parents, a
/// tree's entries but gitlinks, a tag's target of any kind). An object that
/// does not parse names nothing known: false, so the caller runs git's own
/// walk, which reports it.
fn refers_within(
    kind: Kind,
    data: &[u8],
    present: impl Fn(&gix_hash::oid, Option<Kind>) -> bool,
) -> bool {
    let hash = gix_hash::Kind::Sha1;
    match kind {
        Kind::Blob => true,
        Kind::Commit => {
            let mut iter = CommitRefIter::from_bytes(data, hash);
            let Ok(tree) = iter.tree_id() else {
                return false;
            };
            present(&tree, Some(Kind::Tree))
                && iter.parent_ids().all(|id| present(&id, Some(Kind::Commit)))
        }
        Kind::Tree => TreeRefIter::from_bytes(data, hash).all(|entry| match entry {
            Ok(entry) if entry.mode.is_commit() => true,
            Ok(entry) if entry.mode.is_tree() => present(entry.oid, Some(Kind::Tree)),
            Ok(entry) => present(entry.oid, Some(Kind::Blob)),
            Err(_) => false,
        }),
        Kind::Tag => TagRefIter::from_bytes(data, hash)
            .target_id()
            .is_ok_and(|id| present(&id, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hex: &str) -> gix_hash::ObjectId {
        gix_hash::ObjectId::from_hex(hex.as_bytes()).expect("valid")
    }

    const TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
    const PARENT: &str = "1111111111111111111111111111111111111111";

    fn commit(parent: Option<&str>) -> Vec<u8> {
        let mut text = format!("tree {TREE}\n");
        if let Some(p) = parent {
            text.push_str(&format!("parent {p}\n"));
        }
        text.push_str("author a <a@b> 1 +0000\ncommitter a <a@b> 1 +0000\n\nm\n");
        text.into_bytes()
    }

    /// A store of `objects` (id, kind) for `refers_within`.
    fn holding(objects: &[(&str, Kind)]) -> impl Fn(&gix_hash::oid, Option<Kind>) -> bool + use<> {
        let objects: Vec<(gix_hash::ObjectId, Kind)> =
            objects.iter().map(|(hex, kind)| (id(hex), *kind)).collect();
        move |o, wanted| {
            objects
                .iter()
                .any(|(id, kind)| id.as_ref() == o && wanted.is_none_or(|w| w == *kind))
        }
    }

    #[test]
    fn a_commit_refers_to_its_tree_and_parents() {
        let tree = holding(&[(TREE, Kind::Tree)]);
        assert!(refers_within(Kind::Commit, &commit(None), &tree));
        assert!(!refers_within(Kind::Commit, &commit(Some(PARENT)), &tree));
        let both = holding(&[(TREE, Kind::Tree), (PARENT, Kind::Commit)]);
        assert!(refers_within(Kind::Commit, &commit(Some(PARENT)), &both));
    }

    #[test]
    fn a_name_of_the_wrong_kind_is_not_connected() {
        // The commit's tree is a blob; its parent a tree.
        let tree_is_a_blob = holding(&[(TREE, Kind::Blob)]);
        assert!(!refers_within(Kind::Commit, &commit(None), &tree_is_a_blob));
        let parent_is_a_tree = holding(&[(TREE, Kind::Tree), (PARENT, Kind::Tree)]);
        assert!(!refers_within(
            Kind::Commit,
            &commit(Some(PARENT)),
            &parent_is_a_tree
        ));
        // A subdirectory entry that names a blob, a file that names a tree.
        let mut tree = Vec::new();
        tree.extend_from_slice(b"40000 dir\0");
        tree.extend_from_slice(id(PARENT).as_bytes());
        assert!(!refers_within(
            Kind::Tree,
            &tree,
            holding(&[(PARENT, Kind::Blob)])
        ));
        assert!(refers_within(
            Kind::Tree,
            &tree,
            holding(&[(PARENT, Kind::Tree)])
        ));
        let mut file = Vec::new();
        file.extend_from_slice(b"100644 f\0");
        file.extend_from_slice(id(TREE).as_bytes());
        assert!(!refers_within(
            Kind::Tree,
            &file,
            holding(&[(TREE, Kind::Tree)])
        ));
    }

    #[test]
    fn a_tree_refers_to_its_entries_but_gitlinks() {
        let mut tree = Vec::new();
        tree.extend_from_slice(b"100644 a\0");
        tree.extend_from_slice(id(PARENT).as_bytes());
        tree.extend_from_slice(b"160000 sub\0");
        tree.extend_from_slice(id(TREE).as_bytes());
        assert!(refers_within(
            Kind::Tree,
            &tree,
            holding(&[(PARENT, Kind::Blob)])
        ));
        assert!(!refers_within(Kind::Tree, &tree, |_, _| false));
    }

    #[test]
    fn what_does_not_parse_is_not_connected() {
        assert!(!refers_within(Kind::Commit, b"garbage", |_, _| true));
        assert!(!refers_within(Kind::Tree, b"100644 a\0short", |_, _| true));
        assert!(!refers_within(Kind::Tag, b"", |_, _| true));
        assert!(refers_within(Kind::Blob, b"anything", |_, _| false));
    }
}
