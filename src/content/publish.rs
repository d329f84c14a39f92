//! Publishing a git repository into the blob store: what is new since the
//! previous manifest is packed by one `git pack-objects` and streamed into
//! the store; the new manifest lists it after the previous packs.

use std::path::Path;

use iroh_blobs::{Hash, api::Store};
use tracing::debug;

use super::{ContentError, hex, request_err, stream::stream_reader};
use crate::{
    git::{self, PackStream, RefSet},
    manifest::{self, Manifest, PackEntry},
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
