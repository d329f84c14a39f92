//! Owners' handles for the pages: `did:plc:…` is what a repository id
//! holds, `@alice.example.com` is what people know. A handle is shown only
//! when it is verified both ways (the DID document claims it and it
//! resolves back to the DID), since a DID document may claim any handle.
//!
//! Owns a cache of DID → handle and one task ([`Handles::run`]) that
//! resolves the DIDs pages asked for, one at a time (pages never wait for
//! the network: a DID not yet resolved is shown bare). Answers are kept for
//! [`KNOWN_FOR`] (a DID with no verified handle, or whose lookup failed,
//! for [`UNKNOWN_FOR`]). Nothing survives a restart.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::atproto::XrpcClient;

/// How long a verified handle is kept.
pub const KNOWN_FOR: Duration = Duration::from_secs(3600);
/// How long "no verified handle" (or a failed lookup) is kept.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(600);
/// DIDs waiting to be resolved; more are asked for again on a later page.
const QUEUE: usize = 256;
/// Most DIDs remembered; past it, expired entries are dropped.
const MAX_ENTRIES: usize = 50_000;

/// Finds the verified handle of a DID.
pub trait ResolveHandle: Send + Sync + 'static {
    /// The handle, `None` when there is no verified one, `Err` when the
    /// lookup failed.
    fn verified_handle(
        &self,
        did: &str,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
}

/// Resolution through the PLC directory (or `did:web`) and the handle
/// resolver of the node's `[atproto]` configuration.
pub struct AtprotoHandles {
    /// The client, with the node's timeouts.
    pub xrpc: XrpcClient,
    /// `[atproto] plc_directory`.
    pub plc_directory: String,
    /// `[atproto] handle_resolver`.
    pub handle_resolver: String,
}

impl ResolveHandle for AtprotoHandles {
    async fn verified_handle(&self, did: &str) -> Result<Option<String>, String> {
        self.xrpc
            .verified_handle(&self.plc_directory, &self.handle_resolver, did)
            .await
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
struct Entry {
    handle: Option<String>,
    /// Until when the answer holds; `None` while it is being resolved.
    until: Option<Instant>,
}

/// The cache and the queue of DIDs to resolve.
pub struct Handles {
    known: Mutex<HashMap<String, Entry>>,
    queue: mpsc::Sender<String>,
    asked: Mutex<Option<mpsc::Receiver<String>>>,
}

impl Default for Handles {
    fn default() -> Self {
        let (queue, asked) = mpsc::channel(QUEUE);
        Self {
            known: Mutex::default(),
            queue,
            asked: Mutex::new(Some(asked)),
        }
    }
}

impl Handles {
    /// The verified handle of `did` if known; a DID not known (or known
    /// too long ago) is queued to be resolved.
    pub fn lookup(&self, did: &str) -> Option<String> {
        let mut known = self.known.lock().expect("handle cache poisoned");
        let now = Instant::now();
        match known.get(did) {
            Some(Entry {
                handle,
                until: Some(until),
            }) if *until > now => return handle.clone(),
            // Being resolved: show what was known before, if anything.
            Some(Entry {
                handle,
                until: None,
            }) => return handle.clone(),
            _ => {}
        }
        if self.queue.try_send(did.to_string()).is_ok() {
            if known.len() >= MAX_ENTRIES {
                known.retain(|_, e| e.until.is_none_or(|u| u > now));
            }
            let previous = known.get(did).and_then(|e| e.handle.clone());
            known.insert(
                did.to_string(),
                Entry {
                    handle: previous.clone(),
                    until: None,
                },
            );
            return previous;
        }
        known.get(did).and_then(|e| e.handle.clone())
    }

    /// Resolve queued DIDs with `resolver` until `cancel` fires. Runs once;
    /// a second call returns at once.
    pub async fn run<R: ResolveHandle>(self: Arc<Self>, resolver: R, cancel: CancellationToken) {
        let Some(mut asked) = self.asked.lock().expect("handle queue poisoned").take() else {
            return;
        };
        loop {
            let did = tokio::select! {
                _ = cancel.cancelled() => return,
                did = asked.recv() => match did {
                    Some(did) => did,
                    None => return,
                },
            };
            let answer = tokio::select! {
                _ = cancel.cancelled() => return,
                answer = resolver.verified_handle(&did) => answer,
            };
            let entry = match answer {
                Ok(Some(handle)) => Entry {
                    handle: Some(handle),
                    until: Some(Instant::now() + KNOWN_FOR),
                },
                Ok(None) => Entry {
                    handle: None,
                    until: Some(Instant::now() + UNKNOWN_FOR),
                },
                Err(error) => {
                    debug!(%did, %error, "could not resolve the owner's handle for the pages");
                    let previous = self
                        .known
                        .lock()
                        .expect("handle cache poisoned")
                        .get(&did)
                        .and_then(|e| e.handle.clone());
                    Entry {
                        handle: previous,
                        until: Some(Instant::now() + UNKNOWN_FOR),
                    }
                }
            };
            self.known
                .lock()
                .expect("handle cache poisoned")
                .insert(did, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Knows `did:plc:alice` as alice.test, fails for `did:plc:down`.
    #[derive(Clone, Default)]
    struct Directory {
        asked: Arc<AtomicUsize>,
    }

    impl ResolveHandle for Directory {
        async fn verified_handle(&self, did: &str) -> Result<Option<String>, String> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            match did {
                "did:plc:alice" => Ok(Some("alice.test".into())),
                "did:plc:down" => Err("timed out".into()),
                _ => Ok(None),
            }
        }
    }

    async fn settle(handles: &Handles, did: &str) {
        for _ in 0..200 {
            let resolved = {
                let known = handles.known.lock().unwrap();
                known.get(did).is_some_and(|e| e.until.is_some())
            };
            if resolved {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{did} never resolved");
    }

    #[tokio::test]
    async fn handles_are_resolved_in_the_background_once_and_then_shown() {
        let handles = Arc::new(Handles::default());
        let directory = Directory::default();
        let cancel = CancellationToken::new();
        tokio::spawn(handles.clone().run(directory.clone(), cancel.clone()));
        // The first page shows the DID bare and asks once, however often.
        assert_eq!(handles.lookup("did:plc:alice"), None);
        assert_eq!(handles.lookup("did:plc:alice"), None);
        settle(&handles, "did:plc:alice").await;
        assert_eq!(
            handles.lookup("did:plc:alice").as_deref(),
            Some("alice.test")
        );
        assert_eq!(directory.asked.load(Ordering::SeqCst), 1);
        // No verified handle, and a failed lookup: shown bare, not asked
        // again before UNKNOWN_FOR.
        for did in ["did:plc:nobody", "did:plc:down"] {
            assert_eq!(handles.lookup(did), None);
            settle(&handles, did).await;
            assert_eq!(handles.lookup(did), None);
        }
        assert_eq!(directory.asked.load(Ordering::SeqCst), 3);
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_full_queue_does_not_block_a_page() {
        let handles = Handles::default();
        for i in 0..QUEUE + 10 {
            assert_eq!(handles.lookup(&format!("did:plc:owner{i}")), None);
        }
        // The ones not queued are asked for again on a later page.
        let known = handles.known.lock().unwrap();
        assert_eq!(known.len(), QUEUE);
    }
}
