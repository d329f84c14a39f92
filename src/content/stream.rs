//! The streams between git and the blob store: a blocking reader (a git
//! process's output) as a stream of chunks for `add_stream`, and a pack blob
//! as a blocking reader of verified leaves for `git index-pack`. Memory stays
//! a few chunks per pack, whatever its size.

use std::{
    io::{self, Read},
    pin::Pin,
    task::{Context, Poll},
};

use bao_tree::ChunkNum;
use bytes::Bytes;
use iroh_blobs::{
    Hash,
    api::{Store, blobs::EncodedItem},
    protocol::ChunkRanges,
};
use n0_future::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
                EncodedItem::Error(e) => Err(unverified(&hex, e)),
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

/// A pack whose bytes the blob store could not verify against its hash.
fn unverified(hex: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(MaterializeError::CorruptPack {
        hash: hex.to_owned(),
        reason: format!("the blob store could not verify it: {e}"),
    })
}

/// Chunks (1 KiB) per leaf the blob store verifies and writes at once.
const CHUNKS_PER_LEAF: u64 = 16;
/// How often a reader of an arriving pack looks at the store's bitfield
/// afresh, whatever its subscription reported.
const ARRIVING_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// A reader of the pack blob `entry` while it is still being downloaded:
/// bytes are read from the store, in order, as the download makes them
/// present (each leaf verified against the blob's hash by the store), so
/// `git index-pack` works on the pack while the rest of it arrives. Ends
/// with an error once `failed` is cancelled (its download failed) or when
/// the blob turns out to be of another size than `entry` declares. Call
/// from a blocking thread.
pub(super) fn arriving_pack_reader(
    blobs: &Store,
    handle: &tokio::runtime::Handle,
    entry: &PackEntry,
    failed: CancellationToken,
) -> PackReader {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT * 16);
    let arriving = Arriving {
        blobs: blobs.clone(),
        hash: Hash::from_bytes(entry.hash),
        size: entry.size,
        hex: entry.hash_hex(),
        failed,
    };
    handle.spawn(async move {
        if let Err(e) = arriving.feed(&tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::new(ChannelReader {
        rx,
        current: Bytes::new(),
    })
}

/// One pack being read as it arrives.
struct Arriving {
    blobs: Store,
    hash: Hash,
    size: u64,
    hex: String,
    failed: CancellationToken,
}

impl Arriving {
    fn unavailable(&self, reason: impl Into<String>) -> io::Error {
        io::Error::other(MaterializeError::PackUnavailable {
            hash: self.hex.clone(),
            reason: reason.into(),
        })
    }

    /// Send the pack's bytes to `tx` as they become present.
    async fn feed(&self, tx: &mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
        let total = ChunkNum::chunks(self.size);
        let mut present = ChunkRanges::empty();
        let mut sent = 0u64;
        while sent < self.size {
            if self.failed.is_cancelled() {
                return Err(self.unavailable("its download failed"));
            }
            if tx.is_closed() {
                return Ok(());
            }
            let from = ChunkNum(sent / 1024);
            let ready = ready_until(&present, from, total);
            if ready > from {
                let before = sent;
                sent = self.send_range(from, ready, sent, tx).await?;
                if sent == before {
                    // Present up to the declared end, yet nothing more to
                    // read: the blob is shorter than declared.
                    return Err(self.unavailable(format!(
                        "the blob ends at byte {sent}, before the {} bytes declared",
                        self.size
                    )));
                }
                continue;
            }
            // Wait for more: a subscription to the bitfield, renewed every
            // ARRIVING_RECHECK so no update can be missed for long (and a
            // subscription that ends at once is not renewed in a busy loop).
            let mut wrong_size = None;
            let watch = async {
                if let Ok(updates) = self.blobs.observe(self.hash).stream().await {
                    let mut updates = std::pin::pin!(updates);
                    while let Some(update) = updates.next().await {
                        if let Some(size) = update.validated_size()
                            && size != self.size
                        {
                            wrong_size = Some(size);
                            return;
                        }
                        present |= update.ranges;
                        if ready_until(&present, from, total) > from {
                            return;
                        }
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = watch => {}
                _ = tokio::time::sleep(ARRIVING_RECHECK) => {}
                _ = self.failed.cancelled() => {
                    return Err(self.unavailable("its download failed"));
                }
                _ = tx.closed() => return Ok(()),
            }
            if let Some(size) = wrong_size {
                return Err(self.unavailable(format!(
                    "the blob is {size} bytes, not the {} declared",
                    self.size
                )));
            }
        }
        Ok(())
    }

    /// Send the bytes of chunks `from..until` not sent yet (`sent` bytes
    /// were); return how many bytes are sent after it.
    async fn send_range(
        &self,
        from: ChunkNum,
        until: ChunkNum,
        mut sent: u64,
        tx: &mpsc::Sender<io::Result<Bytes>>,
    ) -> io::Result<u64> {
        let mut items = self
            .blobs
            .export_bao(self.hash, ChunkRanges::from(from..until))
            .stream();
        while let Some(item) = items.next().await {
            let leaf = match item {
                EncodedItem::Leaf(leaf) => leaf,
                EncodedItem::Error(e) => return Err(unverified(&self.hex, e)),
                _ => continue,
            };
            let end = leaf.offset + leaf.data.len() as u64;
            if end <= sent {
                continue;
            }
            if leaf.offset > sent {
                return Err(self.unavailable(format!(
                    "the blob store skipped from byte {sent} to {}",
                    leaf.offset
                )));
            }
            let data = leaf.data.slice((sent - leaf.offset) as usize..);
            sent = end;
            if tx.send(Ok(data)).await.is_err() {
                return Ok(self.size); // the reader is gone
            }
        }
        Ok(sent)
    }
}

/// The end of the run of present chunks that starts at `from`, in whole
/// leaves (a partial leaf is not verified yet) unless it reaches `total`.
fn ready_until(present: &ChunkRanges, from: ChunkNum, total: ChunkNum) -> ChunkNum {
    // Boundaries alternate: start, end, start, end, ... (a last start
    // without an end runs on for ever).
    let bounds = present.boundaries();
    let end = bounds
        .chunks(2)
        .find(|pair| pair[0] <= from && pair.get(1).is_none_or(|end| from < *end))
        .map(|pair| pair.get(1).copied().unwrap_or(total).min(total));
    let Some(mut end) = end else {
        return from;
    };
    if end < total {
        end = ChunkNum(end.0 - end.0 % CHUNKS_PER_LEAF);
    }
    end.max(from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh_blobs::store::mem::MemStore;

    use super::*;

    fn chunks(n: u64) -> ChunkNum {
        ChunkNum(n)
    }

    #[test]
    fn ready_until_is_the_present_run_from_here_in_whole_leaves() {
        let total = chunks(100);
        let none = ChunkRanges::empty();
        assert_eq!(ready_until(&none, chunks(0), total), chunks(0));
        // 0..40 present: whole leaves only, 0..32.
        let some = ChunkRanges::from(chunks(0)..chunks(40));
        assert_eq!(ready_until(&some, chunks(0), total), chunks(32));
        assert_eq!(ready_until(&some, chunks(16), total), chunks(32));
        assert_eq!(ready_until(&some, chunks(40), total), chunks(40));
        // A run reaching the end (or open-ended, as a validated blob's is)
        // goes to the last chunk, partial leaf and all.
        let tail = ChunkRanges::from(chunks(32)..chunks(100));
        assert_eq!(ready_until(&tail, chunks(32), total), total);
        assert_eq!(ready_until(&ChunkRanges::all(), chunks(0), total), total);
        let open = ChunkRanges::from(chunks(0)..chunks(20)) | ChunkRanges::from(chunks(48)..);
        assert_eq!(ready_until(&open, chunks(0), total), chunks(16));
        assert_eq!(ready_until(&open, chunks(48), total), total);
        assert_eq!(ready_until(&open, chunks(20), total), chunks(20));
    }

    /// `bytes` of which only the leading `leaves` leaves are in `to`.
    async fn import_leading(from: &Store, to: &Store, hash: Hash, range: ChunkRanges) {
        let bao = from
            .export_bao(hash, range.clone())
            .bao_to_vec()
            .await
            .unwrap();
        to.import_bao_bytes(hash, range, bao).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_arriving_pack_is_read_as_it_arrives_and_stops_when_its_download_fails() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
        let source = MemStore::new();
        let tag = source.add_slice(&data).await.unwrap();
        let hash = tag.hash;
        let entry = PackEntry::for_bytes(&data, 0);
        let first = ChunkRanges::from(chunks(0)..chunks(64)); // 64 KiB

        // Bytes come as they arrive, and all of them once the rest does.
        let store = MemStore::new();
        import_leading(&source, &store, hash, first.clone()).await;
        let handle = tokio::runtime::Handle::current();
        let failed = CancellationToken::new();
        let (got_first, first_read) = tokio::sync::oneshot::channel();
        let reader = {
            let (store, entry, failed) = ((*store).clone(), entry.clone(), failed.clone());
            tokio::task::spawn_blocking(move || {
                let mut reader = arriving_pack_reader(&store, &handle, &entry, failed);
                let mut head = vec![0u8; 64 * 1024];
                reader.read_exact(&mut head).unwrap();
                got_first.send(()).unwrap();
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).map(|_| [head, rest].concat())
            })
        };
        tokio::time::timeout(Duration::from_secs(10), first_read)
            .await
            .expect("the first 64 KiB are read before the rest arrives")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the reader waits for the rest");
        import_leading(&source, &store, hash, ChunkRanges::from(chunks(64)..)).await;
        let read = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader ends once the pack is complete")
            .unwrap()
            .unwrap();
        assert!(read == data, "the reader returned the pack's bytes");

        // A download that fails ends the reader with an error at once.
        let store = MemStore::new();
        import_leading(&source, &store, hash, first).await;
        let handle = tokio::runtime::Handle::current();
        let reader = {
            let (store, entry, failed) = ((*store).clone(), entry.clone(), failed.clone());
            tokio::task::spawn_blocking(move || {
                let mut reader = arriving_pack_reader(&store, &handle, &entry, failed);
                let mut all = Vec::new();
                reader.read_to_end(&mut all)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished(), "the reader waits for the rest");
        failed.cancel();
        let err = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader ends when the download fails")
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("download failed"), "{err}");
    }

    /// A pack declared larger than its blob: once the blob is complete the
    /// reader fails instead of waiting (or looping) for bytes that do not
    /// exist, whether it started before the blob was complete or after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_declared_larger_than_its_blob_ends_the_reader_with_an_error() {
        let data: Vec<u8> = (0..20_480u32).map(|i| (i % 251) as u8).collect();
        let source = MemStore::new();
        let hash = source.add_slice(&data).await.unwrap().hash;
        let mut entry = PackEntry::for_bytes(&data, 0);
        entry.size = 30_000;
        for complete_first in [true, false] {
            let store = MemStore::new();
            if complete_first {
                import_leading(&source, &store, hash, ChunkRanges::all()).await;
            } else {
                import_leading(&source, &store, hash, ChunkRanges::from(..chunks(16))).await;
            }
            let handle = tokio::runtime::Handle::current();
            let reader = {
                let (store, entry) = ((*store).clone(), entry.clone());
                tokio::task::spawn_blocking(move || {
                    let failed = CancellationToken::new();
                    let mut reader = arriving_pack_reader(&store, &handle, &entry, failed);
                    let mut all = Vec::new();
                    reader.read_to_end(&mut all)
                })
            };
            if !complete_first {
                tokio::time::sleep(Duration::from_millis(100)).await;
                import_leading(&source, &store, hash, ChunkRanges::from(chunks(16)..)).await;
            }
            let err = tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .expect("the reader ends")
                .unwrap()
                .unwrap_err();
            assert!(err.to_string().contains("20480 bytes"), "{err}");
        }
    }
}
