//! Packs: `git::gix_index::index_stream`, the gix-pack indexer the node runs
//! (in `knotd index-pack`) on a new repository's first pack.
//!
//! Raw mode feeds the input as the pack stream. Checksummed mode replaces
//! the input's last 20 bytes with the SHA-1 of the rest, as a real pack's
//! trailer is, so that mutations reach delta resolution and the
//! connectivity pass instead of stopping at the checksum. Whatever the
//! bytes, indexing must end with an index or an error, never a panic; an
//! accepted pack leaves exactly its `.pack` and `.idx`, a refused one
//! nothing.

#![no_main]

use knotd::git::gix_index::{IndexOptions, index_stream};
use libfuzzer_sys::fuzz_target;

fn index(pack: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = IndexOptions {
        threads: Some(1),
        // Inputs are small; a declared size beyond this is a lie.
        alloc_limit_bytes: 64 << 20,
    };
    let left = |dir: &std::path::Path| std::fs::read_dir(dir).expect("read dir").count();
    match index_stream(&mut &pack[..], dir.path(), options) {
        Ok(indexed) => {
            assert_eq!(indexed.name.len(), 40);
            assert!(indexed.name.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(left(dir.path()), 2, "an accepted pack leaves its .pack and .idx");
        }
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(left(dir.path()), 0, "a refused pack leaves nothing: {e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 || rest.len() < 20 {
        index(rest);
    } else {
        let mut pack = rest.to_vec();
        let body = pack.len() - 20;
        let mut hasher = gix_hash::hasher(gix_hash::Kind::Sha1);
        hasher.update(&pack[..body]);
        let sum = hasher.try_finalize().expect("sha1");
        pack[body..].copy_from_slice(sum.as_bytes());
        index(&pack);
    }
});
