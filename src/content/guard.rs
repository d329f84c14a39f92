//! Keeping new blobs alive across the blob store's garbage collection.
//!
//! The collector of iroh-blobs runs every `gc_interval_secs`: it lists the
//! named tags, then the temporary tags, marks what they name as live, and
//! deletes every other blob not written since the run began. The two
//! listings are taken at different moments, and on a node with thousands of
//! repositories the first one takes long to walk. A blob whose protection
//! moves from a temporary tag to a named tag between them is in neither
//! listing and is deleted although it is pinned: a publish that set its
//! manifest's named tag and dropped the temporary tag at that moment kept a
//! pin to a blob that no longer existed, and no peer could fetch the state.
//!
//! [`GcGuard`] closes that window. Once a new state's named tags are set,
//! its temporary tags are handed to the guard, which drops them only when
//! the next collection starts: the collector runs one pass at a time, so
//! by then every pass that could have listed the named tags before they
//! were set has finished, and every later pass sees them. The store calls
//! the guard at the start of each pass through its protection hook
//! ([`GcGuard::config`]). Nothing here survives a restart, and nothing
//! needs to: the named tags are durable before a state is recorded, and a
//! restarted store has no pass in progress.

use std::{
    mem,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh_blobs::{
    api::TempTag,
    store::{GcConfig, ProtectOutcome},
};

#[derive(Debug, Default)]
struct Inner {
    /// Collector passes started since the store was opened.
    passes: u64,
    /// Temporary tags to drop when the next pass starts.
    held: Vec<TempTag>,
}

/// Holds temporary tags until the blob store's collector can no longer miss
/// the named tags that replaced them, and tells subscribers when a pass
/// starts. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct GcGuard {
    inner: Arc<Mutex<Inner>>,
    passes: tokio::sync::watch::Sender<u64>,
}

impl Default for GcGuard {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            passes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl GcGuard {
    /// A guard with nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of passes started, updated as each one starts: when it
    /// changes, every earlier pass is over.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.passes.subscribe()
    }

    /// The collector's configuration: a pass every `interval`, each one
    /// first releasing what the guard held before it started.
    pub fn config(&self, interval: Duration) -> GcConfig {
        let guard = self.clone();
        GcConfig {
            interval,
            add_protected: Some(Arc::new(move |_live| {
                guard.pass_starting();
                Box::pin(std::future::ready(ProtectOutcome::Continue))
            })),
        }
    }

    /// Keep `tags` until the next collector pass starts. Call only after the
    /// named tags that replace them are set.
    pub fn hold(&self, tags: Vec<TempTag>) {
        if tags.is_empty() {
            return;
        }
        self.lock().held.extend(tags);
    }

    /// Collector passes started since the store was opened.
    pub fn passes(&self) -> u64 {
        self.lock().passes
    }

    /// Temporary tags held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    fn pass_starting(&self) {
        let (passes, released) = {
            let mut inner = self.lock();
            inner.passes += 1;
            (inner.passes, mem::take(&mut inner.held))
        };
        // Dropping a temporary tag only updates the store's counters.
        drop(released);
        self.passes.send_replace(passes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use iroh_blobs::{HashAndFormat, store::mem::MemStore};

    use super::*;

    #[tokio::test]
    async fn held_tags_are_released_when_the_next_pass_starts() {
        let store = MemStore::new();
        let guard = GcGuard::new();
        let tag = store.add_slice(b"new manifest").temp_tag().await.unwrap();
        let hash = tag.hash();
        guard.hold(vec![tag]);
        let temp_roots = || async {
            use n0_future::StreamExt;
            let mut list = store.tags().list_temp_tags().await.unwrap();
            let mut out = Vec::new();
            while let Some(item) = list.next().await {
                out.push(item);
            }
            out
        };
        assert_eq!(temp_roots().await, vec![HashAndFormat::raw(hash)]);
        assert_eq!(guard.held(), 1);

        let config = guard.config(Duration::from_secs(1));
        let callback = config.add_protected.expect("a protection hook");
        let mut live = std::collections::HashSet::new();
        assert!(matches!(
            callback(&mut live).await,
            ProtectOutcome::Continue
        ));
        assert_eq!(guard.passes(), 1);
        assert_eq!(*guard.subscribe().borrow(), 1);
        assert_eq!(guard.held(), 0);
        assert!(temp_roots().await.is_empty());
    }
}
