//! What the node serves to git clients: the state it holds of each
//! repository, as the core last said ([`crate::core::Effect::Served`]).
//!
//! The repository actor writes it; read-only smart HTTP ([`crate::http`])
//! and `git upload-pack` over the admin socket read it to decide whether a
//! repository is served and from which directory. Whether a directory
//! exists under the repositories' root decides nothing: a copy half built,
//! left by a removed repository, refused by a quota, or created by anyone
//! else is not served, and a state held stays served while its copy is
//! updated. One entry changes per effect (no copy of the whole map), and
//! readers hold the lock only to look one repository up. Nothing here
//! survives a restart: the core serves every held state again when it
//! loads.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
};

use crate::{core::ServedState, repo_id::RepoId};

/// The served states, shared between the actor and the services that
/// read them. Cloning shares the same map.
#[derive(Debug, Clone)]
pub struct ServedRepos {
    root: Arc<PathBuf>,
    states: Arc<RwLock<HashMap<RepoId, ServedState>>>,
}

/// A repository being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRepo {
    /// The state held.
    pub state: ServedState,
    /// Its materialized bare repository.
    pub dir: PathBuf,
}

impl ServedRepos {
    /// Nothing served yet; materialized repositories live in `repos_root`.
    pub fn new(repos_root: PathBuf) -> Self {
        Self {
            root: Arc::new(repos_root),
            states: Arc::default(),
        }
    }

    /// Where materialized repositories live.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Serve `state` for `repo` from now on, or (`None`) stop serving it.
    /// The actor calls this for each [`crate::core::Effect::Served`].
    pub fn set(&self, repo: RepoId, state: Option<ServedState>) {
        let mut states = self.states.write().unwrap_or_else(PoisonError::into_inner);
        match state {
            Some(state) => states.insert(repo, state),
            None => states.remove(&repo),
        };
    }

    /// The state served for `repo` and its directory, if it is served.
    pub fn get(&self, repo: &RepoId) -> Option<ServedRepo> {
        let state = self
            .states
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(repo)
            .cloned()?;
        let dir = self.root.join(&state.path);
        Some(ServedRepo { state, dir })
    }

    /// How many repositories are served.
    pub fn len(&self) -> usize {
        self.states
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_served_from_its_directory_until_it_is_withdrawn() {
        let served = ServedRepos::new("/data/repos".into());
        let repo = RepoId::parse("did:plc:abc/site").unwrap();
        assert!(served.get(&repo).is_none());
        let state = ServedState {
            manifest: iroh_blobs::Hash::new(b"m"),
            head: None,
            path: repo.relative_path(),
        };
        served.clone().set(repo.clone(), Some(state.clone()));
        let got = served.get(&repo).unwrap();
        assert_eq!(got.state, state);
        assert_eq!(got.dir, PathBuf::from("/data/repos/did:plc:abc/site.git"));
        assert_eq!(served.len(), 1);
        served.set(repo.clone(), None);
        assert!(served.get(&repo).is_none() && served.is_empty());
    }
}
