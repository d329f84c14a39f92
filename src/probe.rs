//! Proof that a peer holds a state: a replica counts only when the peer
//! serves the bytes, not when it says it has them.
//!
//! A probe asks the peer, over iroh-blobs, for one randomly chosen chunk
//! (1 KiB) of the manifest and of every pack the manifest lists, and the
//! answer is verified against each blob's BLAKE3 hash tree as it arrives,
//! so a peer that lacks a blob, or sends anything else, fails. The chunks
//! are chosen afresh for every probe, so a peer cannot keep a few chunks
//! and pass. What is sent is small (about a chunk and its proof per blob)
//! and nothing is stored. The blobs' sizes come from this node's own store:
//! only a state this node holds is probed. One connection per probe, every
//! wait under [`PROBE_TIMEOUT`]. Nothing here persists.

use std::time::Duration;

use iroh::{Endpoint, EndpointId, endpoint::Connection};
use iroh_blobs::{
    Hash,
    api::{Store, proto::BlobStatus},
    get::fsm,
    protocol::{ChunkRanges, ChunkRangesExt, ChunkRangesSeq, GetRequest},
};

use crate::repo_id::RepoId;

/// Longest a whole probe (connection included) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of a BLAKE3 chunk.
const CHUNK: u64 = 1024;

/// Why a peer did not prove it holds a state.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// This node does not hold the state (complete) itself, so it cannot
    /// tell what to ask for.
    #[error("this node does not hold manifest {manifest} of {repo} complete: {message}")]
    NotHeldHere {
        /// The repository.
        repo: String,
        /// The manifest (hex).
        manifest: String,
        /// What is missing.
        message: String,
    },
    /// The peer could not be reached.
    #[error("cannot reach {peer}: {message}")]
    Unreachable {
        /// The peer (short id).
        peer: String,
        /// Why.
        message: String,
    },
    /// The peer did not serve a verified chunk of a blob.
    #[error("{peer} did not serve blob {blob}: {message}")]
    NotServed {
        /// The peer (short id).
        peer: String,
        /// The blob (hex).
        blob: String,
        /// What went wrong.
        message: String,
    },
    /// The probe took longer than [`PROBE_TIMEOUT`].
    #[error("probing {0} timed out")]
    Timeout(String),
}

/// The blobs of the state `manifest` of `repo` as this node stores them:
/// the manifest, then every pack it lists, each with its size.
pub async fn held_blobs(
    blobs: &Store,
    repo: &RepoId,
    manifest: Hash,
) -> Result<Vec<(Hash, u64)>, ProbeError> {
    let not_held = |message: String| ProbeError::NotHeldHere {
        repo: repo.to_string(),
        manifest: crate::content::hex(&manifest),
        message,
    };
    let size = match blobs.status(manifest).await {
        Ok(BlobStatus::Complete { size }) => size,
        Ok(other) => return Err(not_held(format!("the manifest is {other:?}"))),
        Err(e) => return Err(not_held(e.to_string())),
    };
    let decoded = crate::content::load_manifest(blobs, manifest, repo)
        .await
        .map_err(|e| not_held(e.to_string()))?;
    Ok(std::iter::once((manifest, size))
        .chain(
            decoded
                .packs
                .iter()
                .map(|p| (Hash::from_bytes(p.hash), p.size)),
        )
        .collect())
}

/// Ask `peer` for a random chunk of each of `blobs` (hash and size) and
/// verify every answer; `Ok` means it served them all.
pub async fn prove_holds(
    endpoint: &Endpoint,
    peer: EndpointId,
    blobs: &[(Hash, u64)],
) -> Result<(), ProbeError> {
    let short = peer.fmt_short().to_string();
    let work = async {
        let conn = endpoint
            .connect(peer, iroh_blobs::ALPN)
            .await
            .map_err(|e| ProbeError::Unreachable {
                peer: short.clone(),
                message: e.to_string(),
            })?;
        for (hash, size) in blobs {
            let chunks = size.div_ceil(CHUNK).max(1);
            let chunk = rand::random_range(0..chunks);
            probe_chunk(&conn, *hash, *size, chunk)
                .await
                .map_err(|message| ProbeError::NotServed {
                    peer: short.clone(),
                    blob: crate::content::hex(hash),
                    message,
                })?;
        }
        conn.close(0u32.into(), b"done");
        Ok(())
    };
    tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .map_err(|_| ProbeError::Timeout(short.clone()))?
}

/// Get chunk `chunk` of `hash` from the peer on `conn`, verified against
/// the hash as it arrives, and check the size the peer states.
async fn probe_chunk(conn: &Connection, hash: Hash, size: u64, chunk: u64) -> Result<(), String> {
    let ranges = ChunkRangesSeq::from_ranges([ChunkRanges::chunk(chunk)]);
    let request = GetRequest::new(hash, ranges);
    let connected = fsm::start(conn.clone(), request, Default::default())
        .next()
        .await
        .map_err(|e| e.to_string())?;
    let fsm::ConnectedNext::StartRoot(start) = connected.next().await.map_err(|e| e.to_string())?
    else {
        return Err("the answer has no blob".into());
    };
    let (mut content, served_size) = start.next().next().await.map_err(|e| e.to_string())?;
    if served_size != size {
        return Err(format!("it states {served_size} bytes, not {size}"));
    }
    let end = loop {
        match content.next().await {
            fsm::BlobContentNext::More((next, item)) => {
                item.map_err(|e| e.to_string())?;
                content = next;
            }
            fsm::BlobContentNext::Done(end) => break end,
        }
    };
    let fsm::EndBlobNext::Closing(closing) = end.next() else {
        return Err("the answer has more than one blob".into());
    };
    closing.next().await.map_err(|e| e.to_string())?;
    Ok(())
}
