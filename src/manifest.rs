//! The repository manifest: the content-addressed description of a published
//! repository state.
//!
//! A manifest lists the refs (and `HEAD`) of a repository and the ordered
//! git packs that together contain every object they reach. Each publish
//! appends one incremental pack, so pack `n` may be a thin pack whose delta
//! bases live in packs `0..n`.
//!
//! Wire format: the 8-byte magic `knotman1` followed by the postcard
//! encoding of the versioned enum [`WireManifest`]. Refs are kept in a
//! `BTreeMap`, so the same state always encodes to the same bytes and thus
//! the same BLAKE3 hash ([`Manifest::hash`]).
//!
//! This module also holds pure decision functions used by the publisher
//! ([`needs_consolidation`], [`refs_fast_forward_check`]).

use serde::{Deserialize, Serialize};

use crate::git::{GitError, Head, ObjectId, RefSet};

/// Magic prefix of an encoded manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"knotman1";
/// Largest encoded manifest accepted by [`Manifest::from_bytes`].
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;
/// Most refs a manifest may carry.
pub const MAX_REFS: usize = 10_000;
/// Most packs a manifest may list.
pub const MAX_PACKS: usize = 4096;
/// Longest accepted `repo_id`, in bytes.
pub const MAX_REPO_ID_LEN: usize = 1024;

/// Errors decoding or validating a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The input exceeds [`MAX_MANIFEST_BYTES`].
    #[error(
        "manifest is {size} bytes, more than the {max} byte limit; it was not produced by a compatible knotd"
    )]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The input does not start with [`MANIFEST_MAGIC`].
    #[error("not a knot manifest (bad magic); the blob is something else or corrupted")]
    BadMagic,
    /// The manifest uses a version this build does not know.
    #[error("manifest version {0} is not supported; upgrade knotd")]
    UnknownVersion(u64),
    /// postcard decoding failed (truncated or garbage input).
    #[error("manifest is malformed: {0}; the blob is truncated or corrupted")]
    Malformed(String),
    /// Bytes remain after the manifest.
    #[error("manifest has {0} trailing bytes; the blob is corrupted")]
    TrailingBytes(usize),
    /// Too many refs.
    #[error("manifest lists {count} refs, more than the limit of {max}")]
    TooManyRefs {
        /// Number of refs.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Too many packs.
    #[error(
        "manifest lists {count} packs, more than the limit of {max}; the publisher must consolidate its packs"
    )]
    TooManyPacks {
        /// Number of packs.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The repo id is empty or too long.
    #[error("manifest repo_id is empty or longer than {MAX_REPO_ID_LEN} bytes")]
    BadRepoId,
    /// A ref name or object id is invalid.
    #[error("manifest has invalid refs: {0}")]
    InvalidRefs(#[from] GitError),
}

/// One git pack blob referenced by a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// BLAKE3 hash of the pack bytes.
    pub hash: [u8; 32],
    /// Length of the pack in bytes.
    pub size: u64,
    /// Number of objects in the pack (from its header).
    pub objects: u32,
}

impl PackEntry {
    /// Describe `bytes` as a pack entry (the object count is taken as given).
    pub fn for_bytes(bytes: &[u8], objects: u32) -> Self {
        PackEntry {
            hash: *blake3::hash(bytes).as_bytes(),
            size: bytes.len() as u64,
            objects,
        }
    }

    /// Lowercase hex of [`PackEntry::hash`].
    pub fn hash_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.hash)
    }
}

/// The published state of one repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Identifier of the repository this manifest belongs to.
    pub repo_id: String,
    /// Refs and `HEAD`.
    pub refs: RefSet,
    /// Packs, in the order they must be indexed.
    pub packs: Vec<PackEntry>,
}

/// Versioned wire envelope of a manifest.
#[derive(Debug, Deserialize)]
pub enum WireManifest {
    /// Version 1.
    V1(Manifest),
}

/// Borrowing twin of [`WireManifest`] used for encoding without a copy; it
/// must keep the same variants in the same order.
#[derive(Serialize)]
enum WireManifestRef<'a> {
    V1(&'a Manifest),
}

impl Manifest {
    /// Encode: magic followed by postcard of the versioned envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MANIFEST_MAGIC.to_vec();
        // Serializing strings, maps, vectors and integers into a growable
        // buffer cannot fail.
        postcard::to_io(&WireManifestRef::V1(self), &mut out)
            .expect("postcard encoding into a Vec cannot fail");
        out
    }

    /// Decode and validate an encoded manifest.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let body = bytes
            .strip_prefix(MANIFEST_MAGIC.as_slice())
            .ok_or(ManifestError::BadMagic)?;
        let version = read_varint(body)?;
        if version != 0 {
            // Variant index 0 is V1.
            return Err(ManifestError::UnknownVersion(version.saturating_add(1)));
        }
        let (wire, rest): (WireManifest, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ManifestError::TrailingBytes(rest.len()));
        }
        let WireManifest::V1(manifest) = wire;
        manifest.validate()?;
        // One state, one encoding, one hash: refuse overlong varints and any
        // other encoding that would not re-encode to the same bytes.
        if manifest.to_bytes() != bytes {
            return Err(ManifestError::Malformed(
                "not in canonical encoding".to_string(),
            ));
        }
        Ok(manifest)
    }

    /// Check the limits, ref names and object ids.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.repo_id.is_empty() || self.repo_id.len() > MAX_REPO_ID_LEN {
            return Err(ManifestError::BadRepoId);
        }
        if self.refs.refs.len() > MAX_REFS {
            return Err(ManifestError::TooManyRefs {
                count: self.refs.refs.len(),
                max: MAX_REFS,
            });
        }
        if self.packs.len() > MAX_PACKS {
            return Err(ManifestError::TooManyPacks {
                count: self.packs.len(),
                max: MAX_PACKS,
            });
        }
        self.refs.validate()?;
        Ok(())
    }

    /// Bytes of all its packs as declared (saturating: sizes near
    /// `u64::MAX` cannot wrap to a small total).
    pub fn pack_bytes(&self) -> u64 {
        self.packs
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.size))
    }

    /// BLAKE3 hash of [`Manifest::to_bytes`].
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }

    /// The object `HEAD` resolves to: a detached `HEAD` directly, a symbolic
    /// `HEAD` through `refs` (`None` if the branch is unborn or there is no
    /// `HEAD`).
    pub fn head_oid(&self) -> Option<ObjectId> {
        match self.refs.head.as_ref()? {
            Head::Detached(id) => Some(id.clone()),
            Head::Symbolic(target) => self.refs.refs.get(target).cloned(),
        }
    }
}

/// Read the leading postcard varint (the envelope's variant index).
fn read_varint(bytes: &[u8]) -> Result<u64, ManifestError> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ManifestError::Malformed("truncated version".into()))
}

/// Whether the publisher should replace its packs by a single full pack:
/// true when there are more than `max_packs` packs (a `max_packs` of 0 is
/// treated as 1).
pub fn needs_consolidation(pack_count: usize, max_packs: usize) -> bool {
    pack_count > max_packs.max(1)
}

/// The refs whose change from `old` to `new` is not a fast-forward, sorted.
///
/// Counted as non-fast-forward: a deleted ref, a tag (`refs/tags/*`) that
/// points somewhere else, and any other ref whose old target is not an
/// ancestor of its new one according to `is_ancestor(old, new)`. New refs
/// and unchanged refs are fine. `HEAD` is not considered.
pub fn refs_fast_forward_check(
    old: &RefSet,
    new: &RefSet,
    mut is_ancestor: impl FnMut(&ObjectId, &ObjectId) -> bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, old_id) in &old.refs {
        let ok = match new.refs.get(name) {
            None => false,
            Some(new_id) if new_id == old_id => true,
            Some(_) if name.starts_with("refs/tags/") => false,
            Some(new_id) => is_ancestor(old_id, new_id),
        };
        if !ok {
            bad.push(name.clone());
        }
    }
    bad
}

/// [`refs_fast_forward_check`] with ancestry from the repository at
/// `git_dir`, which must hold the commits of both sides: one walk
/// (`git::Ancestry`), started only when some ref moved.
pub fn refs_not_fast_forward_in(
    git_dir: &std::path::Path,
    old: &RefSet,
    new: &RefSet,
) -> Result<Vec<String>, GitError> {
    let mut ancestry: Option<crate::git::Ancestry> = None;
    let mut failure = None;
    let not_ff = refs_fast_forward_check(old, new, |a, b| {
        if ancestry.is_none() {
            match crate::git::Ancestry::open(git_dir) {
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
    match failure {
        Some(e) => Err(e),
        None => Ok(not_ff),
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    #[test]
    fn huge_version_varint_is_an_error_not_an_overflow() {
        let mut bytes = MANIFEST_MAGIC.to_vec();
        bytes.extend([0xff; 9]);
        bytes.push(0x6b);
        assert!(Manifest::from_bytes(&bytes).is_err());
    }

    #[test]
    fn non_canonical_encoding_is_refused() {
        let m = Manifest {
            repo_id: "did:plc:a/b".into(),
            refs: crate::git::RefSet {
                head: None,
                refs: Default::default(),
            },
            packs: vec![PackEntry {
                hash: [1; 32],
                size: 5,
                objects: 1,
            }],
        };
        let mut bytes = m.to_bytes();
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        // The last field (objects = 1) as an overlong varint: 0x81 0x00.
        assert_eq!(bytes.pop(), Some(1));
        bytes.extend([0x81, 0x00]);
        assert!(Manifest::from_bytes(&bytes).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn oid(c: char) -> ObjectId {
        c.to_string().repeat(40).parse().unwrap()
    }

    fn sample() -> Manifest {
        let mut refs = BTreeMap::new();
        refs.insert("refs/heads/main".to_owned(), oid('a'));
        refs.insert("refs/heads/dev".to_owned(), oid('b'));
        refs.insert("refs/tags/v1".to_owned(), oid('c'));
        Manifest {
            repo_id: "did:plc:abc/repo".to_owned(),
            refs: RefSet {
                head: Some(Head::Symbolic("refs/heads/main".to_owned())),
                refs,
            },
            packs: vec![
                PackEntry::for_bytes(b"one", 3),
                PackEntry::for_bytes(b"two", 1),
            ],
        }
    }

    #[test]
    fn round_trip_and_deterministic_hash() {
        let m = sample();
        let bytes = m.to_bytes();
        assert!(bytes.starts_with(MANIFEST_MAGIC));
        let back = Manifest::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.hash(), m.hash());

        // Same state built in a different insertion order hashes the same.
        let mut other = m.clone();
        let mut refs = BTreeMap::new();
        for (k, v) in m.refs.refs.iter().rev() {
            refs.insert(k.clone(), v.clone());
        }
        other.refs.refs = refs;
        assert_eq!(other.hash(), m.hash());

        let mut changed = m.clone();
        changed.refs.refs.insert("refs/heads/x".into(), oid('d'));
        assert_ne!(changed.hash(), m.hash());
    }

    #[test]
    fn head_oid_resolves() {
        let mut m = sample();
        assert_eq!(m.head_oid(), Some(oid('a')));
        m.refs.head = Some(Head::Detached(oid('e')));
        assert_eq!(m.head_oid(), Some(oid('e')));
        m.refs.head = Some(Head::Symbolic("refs/heads/unborn".into()));
        assert_eq!(m.head_oid(), None);
        m.refs.head = None;
        assert_eq!(m.head_oid(), None);
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        let good = sample().to_bytes();
        assert!(matches!(
            Manifest::from_bytes(b""),
            Err(ManifestError::BadMagic)
        ));
        assert!(matches!(
            Manifest::from_bytes(b"garbage garbage garbage"),
            Err(ManifestError::BadMagic)
        ));
        // Every truncation fails cleanly.
        for len in 0..good.len() {
            assert!(Manifest::from_bytes(&good[..len]).is_err(), "len {len}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            Manifest::from_bytes(&trailing),
            Err(ManifestError::TrailingBytes(1))
        ));
        let mut future = good.clone();
        future[8] = 1;
        assert!(matches!(
            Manifest::from_bytes(&future),
            Err(ManifestError::UnknownVersion(2))
        ));
        let mut big = MANIFEST_MAGIC.to_vec();
        big.resize(MAX_MANIFEST_BYTES + 1, 0);
        assert!(matches!(
            Manifest::from_bytes(&big),
            Err(ManifestError::TooLarge { .. })
        ));
        // Flipping bytes never panics.
        for i in 8..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = Manifest::from_bytes(&b);
        }
        // A huge claimed length does not allocate or panic.
        let mut huge = MANIFEST_MAGIC.to_vec();
        huge.extend([0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Manifest::from_bytes(&huge).is_err());
    }

    #[test]
    fn rejects_invalid_refs_on_decode() {
        for bad in [
            "refs/../x",
            "../../etc",
            "refs/heads/x.lock",
            "refs/heads/a\x01",
        ] {
            let mut m = sample();
            m.refs.refs.insert(bad.to_owned(), oid('a'));
            let err = Manifest::from_bytes(&m.to_bytes()).unwrap_err();
            assert!(matches!(err, ManifestError::InvalidRefs(_)), "{bad}: {err}");
        }
        let mut m = sample();
        m.refs.head = Some(Head::Symbolic("../HEAD".into()));
        assert!(Manifest::from_bytes(&m.to_bytes()).is_err());

        // An invalid object id smuggled into the encoding is rejected.
        let m = sample();
        let mut bytes = m.to_bytes();
        let pos = bytes
            .windows(40)
            .position(|w| w == "a".repeat(40).as_bytes())
            .unwrap();
        bytes[pos] = b'/';
        assert!(matches!(
            Manifest::from_bytes(&bytes),
            Err(ManifestError::Malformed(_))
        ));

        let mut mixed = sample();
        mixed
            .refs
            .refs
            .insert("refs/heads/s".into(), "f".repeat(64).parse().unwrap());
        assert!(Manifest::from_bytes(&mixed.to_bytes()).is_err());
    }

    #[test]
    fn rejects_too_many_refs_and_packs() {
        let mut m = sample();
        for i in 0..=MAX_REFS {
            m.refs.refs.insert(format!("refs/heads/b{i}"), oid('a'));
        }
        assert!(matches!(
            Manifest::from_bytes(&m.to_bytes()),
            Err(ManifestError::TooManyRefs { .. })
        ));
        let mut m = sample();
        m.packs = vec![PackEntry::for_bytes(b"x", 1); MAX_PACKS + 1];
        assert!(matches!(
            Manifest::from_bytes(&m.to_bytes()),
            Err(ManifestError::TooManyPacks { .. })
        ));
        let mut m = sample();
        m.repo_id.clear();
        assert!(matches!(
            Manifest::from_bytes(&m.to_bytes()),
            Err(ManifestError::BadRepoId)
        ));
    }

    #[test]
    fn consolidation_threshold() {
        assert!(!needs_consolidation(0, 8));
        assert!(!needs_consolidation(8, 8));
        assert!(needs_consolidation(9, 8));
        assert!(!needs_consolidation(1, 0));
        assert!(needs_consolidation(2, 0));
    }

    #[test]
    fn fast_forward_check() {
        // History: a -> b -> c ; d unrelated.
        let ancestors = |x: &ObjectId, y: &ObjectId| {
            let order = ['a', 'b', 'c'];
            let pos = |o: &ObjectId| order.iter().position(|c| o == &oid(*c));
            match (pos(x), pos(y)) {
                (Some(i), Some(j)) => i <= j,
                _ => x == y,
            }
        };
        let set = |pairs: &[(&str, char)]| RefSet {
            head: None,
            refs: pairs
                .iter()
                .map(|(n, c)| (n.to_string(), oid(*c)))
                .collect(),
        };
        let old = set(&[
            ("refs/heads/main", 'a'),
            ("refs/heads/same", 'b'),
            ("refs/heads/rewound", 'c'),
            ("refs/heads/gone", 'a'),
            ("refs/heads/jump", 'a'),
            ("refs/tags/v1", 'a'),
            ("refs/tags/v2", 'b'),
        ]);
        let new = set(&[
            ("refs/heads/main", 'c'),
            ("refs/heads/same", 'b'),
            ("refs/heads/rewound", 'a'),
            ("refs/heads/jump", 'd'),
            ("refs/heads/new", 'd'),
            ("refs/tags/v1", 'b'),
            ("refs/tags/v2", 'b'),
        ]);
        assert_eq!(
            refs_fast_forward_check(&old, &new, ancestors),
            vec![
                "refs/heads/gone".to_owned(),
                "refs/heads/jump".to_owned(),
                "refs/heads/rewound".to_owned(),
                "refs/tags/v1".to_owned(),
            ]
        );
        assert!(refs_fast_forward_check(&old, &old, |_, _| false).is_empty());
    }
}
