//! Publishing a git repository into the blob store: what is new since the
//! previous manifest is packed by one `git pack-objects` and streamed into
//! the store; the new manifest lists it after the previous packs.
//!
//! A pack a client sent over the admin socket was already indexed by this
//! node in a staging repository ([`Received`]): when it was indexed against
//! the state the node still holds, that pack itself becomes the new pack
//! blob and its index is later linked into the materialized repository
//! ([`publish_received`]), so nothing is packed or indexed twice.

use std::path::{Path, PathBuf};

use iroh_blobs::{Hash, api::Store};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{ContentError, hex, request_err, stream::stream_reader};
use crate::{
    git::{self, PackStream, RefSet},
    manifest::{self, Manifest, PackEntry},
    materialize::{self, Staged},
    repo_id::RepoId,
};

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
    /// The new pack, already indexed on this node, to link into the
    /// materialized repository instead of indexing its blob again.
    pub staged: Option<Staged>,
}

impl Published {
    /// The previous state, published again unchanged.
    fn unchanged(prev: &Manifest) -> Self {
        Published {
            manifest: prev.clone(),
            hash: Hash::from_bytes(prev.hash()),
            bytes_added: 0,
            consolidated: false,
            unchanged: true,
            protect: Vec::new(),
            staged: None,
        }
    }
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
        check_fast_forward(&git_dir, &prev.refs, &refs)?;
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

/// Refuse unless every ref of `prev` that `next` keeps fast-forwards: one
/// `git cat-file --batch` answers every ancestry question.
fn check_fast_forward(git_dir: &Path, prev: &RefSet, next: &RefSet) -> Result<(), ContentError> {
    let not_ff = manifest::refs_not_fast_forward_in(git_dir, prev, next)?;
    if !not_ff.is_empty() {
        return Err(ContentError::NotFastForward(not_ff));
    }
    Ok(())
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
        return Ok(Published::unchanged(prev));
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
    let (manifest, hash) =
        store_manifest(blobs, repo_id, packed.refs, packs, &mut temp_tags).await?;
    debug!(repo = %repo_id, manifest = %hex(&hash), packs = manifest.packs.len(), bytes_added, consolidated = packed.consolidated, "packed");
    Ok(Published {
        manifest,
        hash,
        bytes_added,
        consolidated: packed.consolidated,
        unchanged: false,
        protect: temp_tags,
        staged: None,
    })
}

/// Build the new manifest, check it and add it to the store, its temporary
/// tag joining `protect`.
async fn store_manifest(
    blobs: &Store,
    repo_id: &RepoId,
    refs: RefSet,
    packs: Vec<PackEntry>,
    protect: &mut Vec<iroh_blobs::api::TempTag>,
) -> Result<(Manifest, Hash), ContentError> {
    let manifest = Manifest {
        repo_id: repo_id.to_string(),
        refs,
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
    protect.push(tt);
    Ok((manifest, hash))
}

/// What a client sent for a publish and this node indexed, kept as a file
/// in the staging repository beside the pack ([`Received::FILE`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Received {
    /// The refs to publish (already written in the staging repository).
    pub refs: RefSet,
    /// The name of the pack indexed in `objects/pack` (its checksum), none
    /// when the client sent no objects.
    pub pack: Option<String>,
    /// Whether `git index-pack` found that pack self-contained and
    /// connected.
    pub connected: bool,
    /// Whether the pack was thin: git appended its bases to the indexed
    /// pack, and the bytes as received, the smaller pack to publish, are in
    /// [`crate::gitserve::RECEIVED_THIN_PACK`].
    pub thin: bool,
    /// Hex hash of the manifest the materialized repository reflected when
    /// the pack was indexed against it (its object store was the staging
    /// repository's alternate, for a thin pack's bases); none without one.
    pub base: Option<String>,
}

impl Received {
    /// The file's name in the staging repository.
    pub const FILE: &'static str = "knot-received.json";

    /// Write it into the staging repository at `git_dir`.
    pub fn write(&self, git_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(git_dir.join(Self::FILE), bytes)
    }

    /// Read it from `git_dir`, if that is a staging repository.
    pub fn read(git_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(git_dir.join(Self::FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The indexed pack's file.
    fn pack_path(&self, git_dir: &Path) -> Option<PathBuf> {
        let name = self.pack.as_ref()?;
        Some(
            git_dir
                .join("objects/pack")
                .join(format!("pack-{name}.pack")),
        )
    }

    /// The file whose bytes become the pack blob: the pack as received.
    fn blob_path(&self, git_dir: &Path) -> Option<PathBuf> {
        if self.thin {
            self.pack.as_ref()?;
            return Some(git_dir.join(crate::gitserve::RECEIVED_THIN_PACK));
        }
        self.pack_path(git_dir)
    }
}

/// Publish a received pack as it is: the new manifest lists the staged
/// pack after the previous packs, and [`Published::staged`] says where its
/// index lies. `None` when this does not apply and [`publish`] must pack
/// again: the pack was indexed against another state than `previous`, the
/// packs are due to be consolidated, or the materialized repository at
/// `dest` holds more than the previous state's packs (objects the previous
/// manifest does not carry, which a pack indexed against it may rely on).
#[allow(clippy::too_many_arguments)]
pub async fn publish_received(
    blobs: &Store,
    repo_id: &RepoId,
    source: &Path,
    received: &Received,
    previous: Option<&Manifest>,
    dest: &Path,
    max_packs: usize,
    force: bool,
) -> Result<Option<Published>, ContentError> {
    let prev_hex = previous.map(|p| data_encoding::HEXLOWER.encode(&p.hash()));
    if received.base != prev_hex {
        return Ok(None);
    }
    if let Some(prev) = previous {
        if prev.refs == received.refs {
            return Ok(Some(Published::unchanged(prev)));
        }
        if manifest::needs_consolidation(prev.packs.len() + 1, max_packs) {
            return Ok(None);
        }
    }
    let expect = prev_hex
        .clone()
        .map(|hex| (hex, previous.map_or(0, |p| p.packs.len())));
    let blob_path = received.blob_path(source);
    let checks = {
        let source = source.to_path_buf();
        let dest = dest.to_path_buf();
        let prev_refs = previous.map(|p| p.refs.clone());
        let refs = received.refs.clone();
        let pack = blob_path.clone();
        tokio::task::spawn_blocking(move || -> Result<_, ContentError> {
            if !materialize::holds_exactly(&dest, expect.as_ref().map(|(h, n)| (h.as_str(), *n))) {
                return Ok(None);
            }
            if let Some(prev_refs) = prev_refs
                && !force
            {
                check_fast_forward(&source, &prev_refs, &refs)?;
            }
            let header = match &pack {
                Some(path) => Some(read_pack_header(path)?),
                None => None,
            };
            Ok(Some(header))
        })
        .await
        .map_err(|e| ContentError::Task(e.to_string()))??
    };
    let Some(header) = checks else {
        return Ok(None);
    };
    let mut packs = previous.map(|p| p.packs.clone()).unwrap_or_default();
    let mut protect = Vec::new();
    let mut staged = None;
    let mut bytes_added = 0;
    if let (Some((objects, size)), Some(blob_path), Some(pack_path)) =
        (header, blob_path, received.pack_path(source))
        && objects > 0
    {
        let absolute =
            |p: PathBuf| std::path::absolute(p).map_err(|e| ContentError::Task(e.to_string()));
        let tt = blobs
            .add_path(absolute(blob_path)?)
            .temp_tag()
            .await
            .map_err(request_err("adding a received pack"))?;
        let entry = PackEntry {
            hash: *tt.hash().as_bytes(),
            size,
            objects,
        };
        staged = Some(Staged {
            hash: entry.hash,
            pack: absolute(pack_path)?,
            connected: received.connected,
        });
        bytes_added = size;
        protect.push(tt);
        packs.push(entry);
    }
    let (manifest, hash) =
        store_manifest(blobs, repo_id, received.refs.clone(), packs, &mut protect).await?;
    debug!(repo = %repo_id, manifest = %hex(&hash), packs = manifest.packs.len(), bytes_added, "published the received pack");
    Ok(Some(Published {
        manifest,
        hash,
        bytes_added,
        consolidated: false,
        unchanged: false,
        protect,
        staged,
    }))
}

/// The object count and size of the pack file at `path`.
fn read_pack_header(path: &Path) -> Result<(u32, u64), ContentError> {
    use std::io::Read;
    let io_err = |e: std::io::Error| {
        ContentError::Git(git::GitError::Io {
            context: format!("reading {}", path.display()),
            source: e,
        })
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let mut header = [0u8; 12];
    file.read_exact(&mut header).map_err(io_err)?;
    let objects = git::parse_pack_header_prefix(&header)?;
    Ok((objects, size))
}
