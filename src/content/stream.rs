//! The streams between git and the blob store: a blocking reader (a git
//! process's output) as a stream of chunks for `add_stream`, and a pack blob
//! as a blocking reader of verified leaves for `git index-pack`. Memory stays
//! a few chunks per pack, whatever its size.

use std::{
    io::{self, Read},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use iroh_blobs::{
    Hash,
    api::{Store, blobs::EncodedItem},
    protocol::ChunkRanges,
};
use n0_future::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::{
    manifest::PackEntry,
    materialize::{MaterializeError, PackReader},
};

/// Bytes read from `git pack-objects` per chunk sent to the blob store.
const PACK_CHUNK: usize = 256 * 1024;
/// Chunks in flight between a reader and its consumer.
const CHUNKS_IN_FLIGHT: usize = 8;

/// A stream of chunks read from `reader` on a blocking thread, and the
/// total it read (or the reader's error) once the stream is done.
pub(super) fn stream_reader(
    mut reader: Box<dyn Read + Send>,
) -> (ChunkStream, tokio::task::JoinHandle<io::Result<u64>>) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let total = tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; PACK_CHUNK];
            let mut filled = 0;
            // Fill whole chunks: fewer, larger messages to the store.
            let result = loop {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(true),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if filled > 0 {
                buf.truncate(filled);
                total += filled as u64;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Err(io::Error::other("the blob store stopped reading"));
                }
            }
            match result {
                Ok(true) => return Ok(total),
                Ok(false) => {}
                Err(e) => {
                    // The store aborts the import on an error item.
                    let message = e.to_string();
                    let _ = tx.blocking_send(Err(io::Error::other(message)));
                    return Err(e);
                }
            }
        }
    });
    (ChunkStream(rx), total)
}

/// Chunks from a channel, as the blob store's `add_stream` takes them.
pub(super) struct ChunkStream(mpsc::Receiver<io::Result<Bytes>>);

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A blocking reader of chunks sent by a task on the runtime.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A reader of the pack blob `entry` from the store, its leaves verified
/// against the blob's hash by the store as they are read. Call from a
/// blocking thread.
pub(super) fn pack_reader(
    blobs: &Store,
    handle: &tokio::runtime::Handle,
    entry: &PackEntry,
) -> Result<PackReader, MaterializeError> {
    let hash = Hash::from_bytes(entry.hash);
    let present =
        handle
            .block_on(blobs.has(hash))
            .map_err(|e| MaterializeError::PackUnavailable {
                hash: entry.hash_hex(),
                reason: e.to_string(),
            })?;
    if !present {
        return Err(MaterializeError::PackUnavailable {
            hash: entry.hash_hex(),
            reason: "not in the blob store".into(),
        });
    }
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT * 16);
    let blobs = blobs.clone();
    let hex = entry.hash_hex();
    handle.spawn(async move {
        let mut stream = blobs.export_bao(hash, ChunkRanges::all()).stream();
        while let Some(item) = stream.next().await {
            let chunk = match item {
                EncodedItem::Leaf(leaf) => Ok(leaf.data),
                EncodedItem::Error(e) => Err(io::Error::other(MaterializeError::CorruptPack {
                    hash: hex.clone(),
                    reason: format!("the blob store could not verify it: {e}"),
                })),
                _ => continue,
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Box::new(ChannelReader {
        rx,
        current: Bytes::new(),
    }))
}
