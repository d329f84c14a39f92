//! The reader a pack is indexed through: it checks the bytes against the
//! manifest entry (size, header object count, BLAKE3) as they pass and
//! withholds the last bytes until the whole pack has matched, so no indexer
//! can finish a pack that does not. Nothing here outlives one pack.

use std::io::{self, Read};

use super::{MaterializeError, PackReader};
use crate::git;
use crate::manifest::PackEntry;

/// Bytes at the end of a pack withheld from the indexer until the pack is
/// verified (more than the longest pack trailer).
const HOLD_BACK: usize = 64;

/// A pack reader that checks size, header object count and BLAKE3 hash
/// against the manifest entry as bytes pass, and withholds the last
/// [`HOLD_BACK`] bytes until the whole pack has matched.
pub(super) struct Verified<'e> {
    inner: PackReader,
    entry: &'e PackEntry,
    hasher: blake3::Hasher,
    seen: u64,
    header: Vec<u8>,
    pending: Vec<u8>,
    start: usize,
    verified: bool,
}

impl<'e> Verified<'e> {
    pub(super) fn new(inner: PackReader, entry: &'e PackEntry) -> Self {
        Verified {
            inner,
            entry,
            hasher: blake3::Hasher::new(),
            seen: 0,
            header: Vec::with_capacity(12),
            pending: Vec::with_capacity(128 * 1024),
            start: 0,
            verified: false,
        }
    }

    fn corrupt(&self, reason: String) -> io::Error {
        io::Error::other(MaterializeError::CorruptPack {
            hash: self.entry.hash_hex(),
            reason,
        })
    }

    /// Account for `bytes` just read from the loader.
    fn take(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.seen += bytes.len() as u64;
        if self.seen > self.entry.size {
            return Err(self.corrupt(format!("more than {} bytes", self.entry.size)));
        }
        if self.header.len() < 12 {
            let n = (12 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            if self.header.len() == 12 {
                let objects = git::parse_pack_header_prefix(&self.header)
                    .map_err(|e| self.corrupt(e.to_string()))?;
                if objects != self.entry.objects {
                    return Err(self.corrupt(format!(
                        "{objects} objects instead of {}",
                        self.entry.objects
                    )));
                }
            }
        }
        self.hasher.update(bytes);
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// After the consumer stopped early: read the rest of the pack through
    /// the checks and return what they found wrong, if anything. Bounded by
    /// the entry's size, which [`Self::take`] enforces.
    pub(super) fn verdict(&mut self) -> Option<MaterializeError> {
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match self.read(&mut sink) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return e
                        .into_inner()
                        .and_then(|inner| inner.downcast::<MaterializeError>().ok())
                        .map(|boxed| *boxed);
                }
            }
        }
    }

    /// The loader is done: check everything.
    fn verify(&mut self) -> io::Result<()> {
        if self.seen != self.entry.size {
            return Err(self.corrupt(format!(
                "{} bytes instead of {}",
                self.seen, self.entry.size
            )));
        }
        if self.header.len() < 12 {
            return Err(self.corrupt(format!("only {} bytes", self.seen)));
        }
        if self.hasher.finalize().as_bytes() != &self.entry.hash {
            return Err(self.corrupt("BLAKE3 hash mismatch".into()));
        }
        self.verified = true;
        Ok(())
    }
}

impl Read for Verified<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let available = self.pending.len() - self.start;
            let releasable = if self.verified {
                available
            } else {
                available.saturating_sub(HOLD_BACK)
            };
            if releasable > 0 || (self.verified && available == 0) {
                let n = releasable.min(out.len());
                out[..n].copy_from_slice(&self.pending[self.start..self.start + n]);
                self.start += n;
                if self.start > 64 * 1024 && self.start * 2 > self.pending.len() {
                    self.pending.drain(..self.start);
                    self.start = 0;
                }
                return Ok(n);
            }
            match self.inner.read(&mut chunk) {
                Ok(0) => self.verify()?,
                Ok(n) => self.take(&chunk[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
