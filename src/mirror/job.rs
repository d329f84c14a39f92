//! One fetch of one mirror, run as a child task of the mirror service:
//! clone the upstream the first time, later fetch from it (and ask where
//! its `HEAD` points), and have the node publish the mirror's repository
//! when its refs changed. When the transfer brought exactly one pack on top
//! of what the node already publishes from this repository, that pack,
//! indexed by git as it arrived, becomes the new pack blob as it is
//! ([`crate::content::Received`]): nothing is packed or indexed twice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::failure::{FailureClass, FetchFailure};
use super::upstream::{self, Limits, Listing, Upstream};
use crate::{api::Payload, content::Received, knot::KnotHandle, repo_id::RepoId};

/// What one fetch achieved.
pub(super) enum Fetched {
    /// The node holds the upstream's refs already.
    Unchanged,
    /// The node published them.
    Published {
        manifest: String,
        listing: Listing,
        unchanged: bool,
        /// Refs the upstream deleted or moved other than forward since the
        /// last publish (tags that moved count), sorted.
        rewritten: Vec<String>,
    },
}

pub(super) struct FetchEnd {
    pub(super) repo_id: RepoId,
    pub(super) number: u64,
    pub(super) result: Result<Fetched, FetchFailure>,
    /// How long the fetch and the publish took.
    pub(super) took: std::time::Duration,
}

/// One fetch of one mirror, run as a child task.
pub(super) struct FetchJob {
    pub(super) number: u64,
    pub(super) repo_id: RepoId,
    pub(super) upstream: Upstream,
    pub(super) dir: PathBuf,
    pub(super) published: Option<Listing>,
    pub(super) manifest: Option<String>,
    pub(super) limits: Limits,
    pub(super) knot: KnotHandle,
}

impl FetchJob {
    pub(super) async fn run(self) -> FetchEnd {
        let started = std::time::Instant::now();
        let result = self.fetch_and_publish().await;
        FetchEnd {
            repo_id: self.repo_id,
            number: self.number,
            result,
            took: started.elapsed(),
        }
    }

    async fn fetch_and_publish(&self) -> Result<Fetched, FetchFailure> {
        let dir = self.dir.clone();
        let (fresh, before, packs_before) = blocking(move || {
            let fresh = !dir.join("HEAD").exists();
            if fresh {
                // A first fetch (a clone killed midway never got here).
                let _ = std::fs::remove_dir_all(&dir);
                if let Some(parent) = dir.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| local(format!("creating {}: {e}", parent.display())))?;
                }
                return Ok((true, Listing::default(), BTreeSet::new()));
            }
            Ok((false, upstream::local_listing(&dir)?, pack_names(&dir)))
        })
        .await?;
        let started = std::time::Instant::now();
        let transfer = async {
            if fresh {
                upstream::clone(&self.dir, &self.upstream, self.limits).await
            } else {
                upstream::fetch(&self.dir, &self.upstream, self.limits).await
            }
        };
        // A clone points HEAD where the upstream's points; a fetch does not.
        let head = async {
            if fresh {
                Ok(None)
            } else {
                upstream::remote_head(&self.upstream, self.limits).await
            }
        };
        let (head, fetched) = tokio::join!(head, transfer);
        if let Err(failure) = fetched {
            if failure.class == FailureClass::TooLarge {
                // Give the disk back; the next try starts from nothing.
                let _ = tokio::fs::remove_dir_all(&self.dir).await;
            }
            return Err(failure);
        }
        if let Some(head) = head? {
            upstream::set_head(&self.dir, &self.upstream, &head, self.limits).await?;
        }
        let dir = self.dir.clone();
        let packs_before_fetch = packs_before.clone();
        let previous = self.published.clone();
        let (refs, fetched_refs, new_packs, rewritten) = blocking(move || {
            let new: BTreeSet<String> = pack_names(&dir)
                .difference(&packs_before_fetch)
                .cloned()
                .collect();
            let refs = upstream::local_refs(&dir)?;
            let listing = Listing::of(&refs);
            let rewritten = match &previous {
                Some(previous) if *previous != listing => rewritten(&dir, previous, &refs)?,
                _ => Vec::new(),
            };
            Ok((refs, listing, new, rewritten))
        })
        .await?;
        let fetched = started.elapsed();
        if fetched_refs.refs.is_empty() {
            return Err(FetchFailure {
                class: FailureClass::NotFound,
                message: format!("{} has no refs to mirror yet", self.upstream.url()),
                retry_after: None,
            });
        }
        if self.published.as_ref() == Some(&fetched_refs) {
            return Ok(Fetched::Unchanged);
        }
        // The fetched pack is the new blob only when the node's state holds
        // every object the mirror's repository held before the fetch: what
        // this service last published from it (or nothing, both sides).
        let builds_on_held = match (&self.published, &self.manifest) {
            (Some(published), Some(_)) => *published == before,
            (None, None) => before.refs.is_empty() && packs_before.is_empty(),
            _ => false,
        };
        let received = match (builds_on_held, new_packs.len()) {
            (true, 1) => {
                let base = self.manifest.clone();
                Some(Received {
                    refs,
                    pack: new_packs.into_iter().next(),
                    // A first fetch into an empty repository brought
                    // everything, checked connected by git.
                    connected: base.is_none(),
                    thin: false,
                    base,
                })
            }
            _ => None,
        };
        let marker = self.dir.join(Received::FILE);
        let _ = std::fs::remove_file(&marker);
        if let Some(received) = &received {
            received
                .write(&self.dir)
                .map_err(|e| local(format!("writing {}: {e}", marker.display())))?;
        }
        let published = self
            .knot
            .publish_prepared(self.repo_id.clone(), self.dir.clone())
            .await;
        let _ = std::fs::remove_file(&marker);
        debug!(
            repo = %self.repo_id,
            fetched_ms = fetched.as_millis() as u64,
            published_ms = (started.elapsed() - fetched).as_millis() as u64,
            pack_kept = received.is_some(),
            "mirror fetch phases"
        );
        match published {
            Ok(Payload::Published(report)) => Ok(Fetched::Published {
                manifest: report.manifest,
                listing: fetched_refs,
                unchanged: report.unchanged,
                rewritten,
            }),
            Ok(other) => Err(FetchFailure {
                class: FailureClass::Publish,
                message: format!("the node answered the publish with {other:?}"),
                retry_after: None,
            }),
            Err(e) => Err(FetchFailure {
                class: FailureClass::Publish,
                message: format!("publishing what was fetched failed: {e}"),
                retry_after: None,
            }),
        }
    }
}

/// The refs of `before` that `after` deleted or moved other than forward
/// (a tag that moved counts), in one ancestry walk over the mirror's
/// repository, which still holds the old commits.
fn rewritten(
    git_dir: &Path,
    before: &Listing,
    after: &crate::git::RefSet,
) -> Result<Vec<String>, FetchFailure> {
    let mut before = crate::git::RefSet {
        head: None,
        refs: before
            .refs
            .iter()
            .filter_map(|(name, id)| Some((name.clone(), id.parse().ok()?)))
            .collect(),
    };
    // Each moved branch costs a walk of history: an upstream that moves
    // thousands at once has the first MAX_WALKED looked at, not all.
    let mut moved = 0;
    before.refs.retain(|name, old| match after.refs.get(name) {
        Some(new) if new != old && !name.starts_with("refs/tags/") => {
            moved += 1;
            moved <= MAX_WALKED
        }
        _ => true,
    });
    if moved > MAX_WALKED {
        debug!(
            moved,
            walked = MAX_WALKED,
            "the upstream moved more branches than are checked for rewrites"
        );
    }
    crate::manifest::refs_not_fast_forward_in(git_dir, &before, after)
        .map_err(|e| local(format!("walking the mirror's history: {e}")))
}

/// Most moved branches one fetch checks for rewrites.
const MAX_WALKED: usize = 64;

/// The names (checksums) of the packs in the repository at `git_dir`.
fn pack_names(git_dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(git_dir.join("objects/pack")) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let checksum = name.strip_prefix("pack-")?.strip_suffix(".pack")?;
            Some(checksum.to_owned())
        })
        .collect()
}

fn local(message: String) -> FetchFailure {
    FetchFailure {
        class: FailureClass::Local,
        message,
        retry_after: None,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchFailure> + Send + 'static,
) -> Result<T, FetchFailure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| local(format!("a blocking task failed: {e}")))?
}
