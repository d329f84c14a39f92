//! Publishing into and materializing from an in-memory stand-in for the
//! blob store, with real git repositories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use knotd::git::{self, RefSet};
use knotd::manifest::{Manifest, PackEntry};
use knotd::materialize::{self, MaterializeError, Outcome};

use super::Env;

/// In-memory stand-in for the blob store.
#[derive(Default)]
pub struct Store {
    pub blobs: HashMap<[u8; 32], Vec<u8>>,
    pub loads: usize,
}

impl Store {
    pub fn load(&mut self, entry: &PackEntry) -> Result<materialize::PackReader, MaterializeError> {
        self.loads += 1;
        let bytes = self.blobs.get(&entry.hash).cloned().ok_or_else(|| {
            MaterializeError::PackUnavailable {
                hash: entry.hash_hex(),
                reason: "not in store".into(),
            }
        })?;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }

    pub fn materialize(&mut self, dest: &Path, m: &Manifest) -> Result<Outcome, MaterializeError> {
        materialize::materialize(dest, m.hash(), m, &mut |e| self.load(e))
    }
}

/// Publish the current state of `src` on top of `prev`: at most one new
/// (thin) pack with the objects not reachable from `prev`'s tips.
pub fn publish(
    src: &Path,
    prev: Option<&Manifest>,
    store: &mut Store,
) -> (Manifest, Option<git::Pack>) {
    let git_dir = git::open_repo(src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    let exclude = prev.map(|m| m.refs.tips()).unwrap_or_default();
    let pack = git::pack_objects(&git_dir, &refs.tips(), &exclude, prev.is_some()).unwrap();
    let mut packs = prev.map(|m| m.packs.clone()).unwrap_or_default();
    let new_pack = if pack.is_empty() {
        None
    } else {
        let entry = PackEntry::for_bytes(&pack.bytes, pack.object_count);
        store.blobs.insert(entry.hash, pack.bytes.clone());
        packs.push(entry);
        Some(pack)
    };
    let manifest = Manifest {
        repo_id: "did:plc:test/sample".into(),
        refs,
        packs,
    };
    // Everything goes through the wire encoding.
    let decoded = Manifest::from_bytes(&manifest.to_bytes()).unwrap();
    assert_eq!(decoded, manifest);
    (decoded, new_pack)
}

/// The sample repository, its refs and a pack of everything they reach.
pub fn sample_with_pack(env: &Env) -> (PathBuf, RefSet, git::Pack) {
    let src = env.sample_repo();
    let git_dir = git::open_repo(&src).unwrap();
    let refs = git::read_refs(&git_dir).unwrap();
    let pack = git::pack_objects(&git_dir, &refs.tips(), &[], false).unwrap();
    (src, refs, pack)
}

/// A new bare repository `name` holding `pack`, without refs.
pub fn bare_with(env: &Env, name: &str, pack: &git::Pack) -> PathBuf {
    let bare_dir = git::init_bare(&env.path(name)).unwrap();
    git::index_pack(&bare_dir, &pack.bytes).unwrap();
    bare_dir
}
