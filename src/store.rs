//! The node's database: tracked repositories, their merged records, locators,
//! peer hints and sync status.
//!
//! This is the only module that touches redb. Tables carry a version in their
//! name; values are JSON so that fields can be added without a migration. Every
//! call runs one short transaction and returns before any `.await` of the
//! caller. Everything here survives a restart; redb's commits are atomic, so a
//! crash leaves either the old or the new state.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{
    record::{PeerHint, RepoRecord},
    repo_id::RepoId,
};

const REPOS: TableDefinition<&str, &[u8]> = TableDefinition::new("repos_v1");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed; the message names the operation.
    #[error(
        "database error while {op}: {message}; if the disk is full free space and restart knotd"
    )]
    Db {
        /// What the store was doing.
        op: &'static str,
        /// redb's message.
        message: String,
    },
    /// The database is held by another process.
    #[error(
        "database {path} is in use by another process: is another knotd running with the same data dir?"
    )]
    Locked {
        /// The database file.
        path: String,
    },
    /// A stored value could not be decoded.
    #[error("stored entry for {key} is corrupt: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// The repository is not tracked.
    #[error("repository {0} is not tracked; add it with `knotd admin add-repo {0}`")]
    UnknownRepo(String),
}

fn db_err(op: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |e| StoreError::Db {
        op,
        message: e.to_string(),
    }
}

macro_rules! redb_try {
    ($op:expr, $e:expr) => {
        $e.map_err(|e| db_err($op)(e.into()))?
    };
}

/// Where a repository's ATProto record lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locator {
    /// The PDS base URL; resolved from the DID document when absent.
    pub pds: Option<String>,
    /// The DID whose repository holds the record.
    pub did: String,
    /// The record's collection.
    pub collection: String,
    /// The record key.
    pub rkey: String,
}

/// Everything the node keeps about one tracked repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoEntry {
    /// The merged record: current head, manifest and peer hints.
    pub record: RepoRecord,
    /// Where the authoritative record is fetched from, if anywhere.
    #[serde(default)]
    pub locator: Option<Locator>,
    /// Unix time the repository was added.
    pub added_at: u64,
    /// Unix time of the last successful sync of content.
    #[serde(default)]
    pub last_sync: Option<u64>,
    /// Unix time the record was last fetched from the PDS successfully.
    #[serde(default)]
    pub last_poll: Option<u64>,
    /// The last error seen for this repository (poll, fetch or write-back).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Manifest hash (hex) the materialized repository reflects.
    #[serde(default)]
    pub materialized: Option<String>,
    /// Number of packs in the current manifest.
    #[serde(default)]
    pub pack_count: usize,
    /// Bytes of blobs pinned for the current manifest.
    #[serde(default)]
    pub bytes_pinned: u64,
    /// Sequence number of the statement behind the current state (0 if none).
    #[serde(default)]
    pub seq: u64,
    /// The signed statement behind the current state, re-announced to peers.
    #[serde(default)]
    pub statement: Option<crate::announce::SignedStatement>,
    /// Node ids (hex) trusted to publish new states of this repository: peers
    /// the operator named at add-repo and peers listed in the ATProto record.
    #[serde(default)]
    pub trusted: Vec<String>,
    /// Whether the current state still has to be written back to the PDS.
    #[serde(default)]
    pub write_back_pending: bool,
    /// The record as last read from (or written to) the owner's PDS.
    #[serde(default)]
    pub remote: Option<RepoRecord>,
}

impl RepoEntry {
    /// A new entry with an empty record.
    pub fn new(repo_id: RepoId, locator: Option<Locator>, peers: Vec<PeerHint>) -> Self {
        let mut record = RepoRecord::empty(repo_id);
        record.peers = peers;
        Self {
            record,
            locator,
            added_at: unix_now(),
            last_sync: None,
            last_poll: None,
            last_error: None,
            materialized: None,
            pack_count: 0,
            bytes_pinned: 0,
            seq: 0,
            statement: None,
            trusted: Vec::new(),
            write_back_pending: false,
            remote: None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Handle to the node database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: std::sync::Arc<Database>,
}

impl Store {
    /// Open (or create) the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(e) => return Err(db_err("opening the database")(e.into())),
        };
        let tx = redb_try!("creating tables", db.begin_write());
        {
            redb_try!("creating tables", tx.open_table(REPOS));
            redb_try!("creating tables", tx.open_table(META));
        }
        redb_try!("creating tables", tx.commit());
        Ok(Self {
            db: std::sync::Arc::new(db),
        })
    }

    /// Insert a repository unless it is already tracked. Returns whether it was new.
    pub fn insert_repo(&self, entry: &RepoEntry) -> Result<bool, StoreError> {
        let key = entry.record.repo_id.to_string();
        let tx = redb_try!("adding a repository", self.db.begin_write());
        let inserted = {
            let mut table = redb_try!("adding a repository", tx.open_table(REPOS));
            if redb_try!("adding a repository", table.get(key.as_str())).is_some() {
                false
            } else {
                let bytes = serde_json::to_vec(entry).expect("entry serializes");
                redb_try!(
                    "adding a repository",
                    table.insert(key.as_str(), bytes.as_slice())
                );
                true
            }
        };
        redb_try!("adding a repository", tx.commit());
        Ok(inserted)
    }

    /// Read one repository.
    pub fn repo(&self, repo_id: &RepoId) -> Result<Option<RepoEntry>, StoreError> {
        let tx = redb_try!("reading a repository", self.db.begin_read());
        let table = redb_try!("reading a repository", tx.open_table(REPOS));
        let value = redb_try!("reading a repository", table.get(repo_id.as_str()));
        value
            .map(|v| decode(repo_id.as_str(), v.value()))
            .transpose()
    }

    /// Read one repository, failing when it is not tracked.
    pub fn require_repo(&self, repo_id: &RepoId) -> Result<RepoEntry, StoreError> {
        self.repo(repo_id)?
            .ok_or_else(|| StoreError::UnknownRepo(repo_id.to_string()))
    }

    /// All tracked repositories, ordered by id.
    pub fn repos(&self) -> Result<Vec<RepoEntry>, StoreError> {
        let tx = redb_try!("listing repositories", self.db.begin_read());
        let table = redb_try!("listing repositories", tx.open_table(REPOS));
        let mut out = Vec::new();
        for item in redb_try!("listing repositories", table.iter()) {
            let (k, v) = redb_try!("listing repositories", item);
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Number of tracked repositories.
    pub fn repo_count(&self) -> Result<u64, StoreError> {
        let tx = redb_try!("counting repositories", self.db.begin_read());
        let table = redb_try!("counting repositories", tx.open_table(REPOS));
        Ok(redb_try!("counting repositories", table.len()))
    }

    /// Apply `change` to a tracked repository in one transaction and return the
    /// new entry. Fails with [`StoreError::UnknownRepo`] if it is not tracked.
    pub fn update_repo<T>(
        &self,
        repo_id: &RepoId,
        change: impl FnOnce(&mut RepoEntry) -> T,
    ) -> Result<(RepoEntry, T), StoreError> {
        let tx = redb_try!("updating a repository", self.db.begin_write());
        let result = {
            let mut table = redb_try!("updating a repository", tx.open_table(REPOS));
            let mut entry = match redb_try!("updating a repository", table.get(repo_id.as_str())) {
                Some(v) => decode(repo_id.as_str(), v.value())?,
                None => return Err(StoreError::UnknownRepo(repo_id.to_string())),
            };
            let out = change(&mut entry);
            let bytes = serde_json::to_vec(&entry).expect("entry serializes");
            redb_try!(
                "updating a repository",
                table.insert(repo_id.as_str(), bytes.as_slice())
            );
            (entry, out)
        };
        redb_try!("updating a repository", tx.commit());
        Ok(result)
    }

    /// Stop tracking a repository. Returns the removed entry, if it was tracked.
    pub fn remove_repo(&self, repo_id: &RepoId) -> Result<Option<RepoEntry>, StoreError> {
        let tx = redb_try!("removing a repository", self.db.begin_write());
        let removed = {
            let mut table = redb_try!("removing a repository", tx.open_table(REPOS));
            let old = redb_try!("removing a repository", table.remove(repo_id.as_str()));
            old.map(|v| decode(repo_id.as_str(), v.value()))
                .transpose()?
        };
        redb_try!("removing a repository", tx.commit());
        Ok(removed)
    }

    /// Read a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = redb_try!("reading metadata", self.db.begin_read());
        let table = redb_try!("reading metadata", tx.open_table(META));
        let value = redb_try!("reading metadata", table.get(key));
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Write a metadata value.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = redb_try!("writing metadata", self.db.begin_write());
        {
            let mut table = redb_try!("writing metadata", tx.open_table(META));
            redb_try!("writing metadata", table.insert(key, value));
        }
        redb_try!("writing metadata", tx.commit());
        Ok(())
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<RepoEntry, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> RepoId {
        RepoId::parse(s).unwrap()
    }

    #[test]
    fn repos_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knotd.redb");
        {
            let store = Store::open(&path).unwrap();
            assert!(
                store
                    .insert_repo(&RepoEntry::new(rid("did:plc:a/one"), None, vec![]))
                    .unwrap()
            );
            assert!(
                !store
                    .insert_repo(&RepoEntry::new(rid("did:plc:a/one"), None, vec![]))
                    .unwrap()
            );
            store
                .insert_repo(&RepoEntry::new(rid("did:plc:a/two"), None, vec![]))
                .unwrap();
            store
                .update_repo(&rid("did:plc:a/two"), |e| e.pack_count = 3)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let repos = store.repos().unwrap();
        assert_eq!(repos.len(), 2);
        assert_eq!(repos[1].pack_count, 3);
        assert_eq!(store.repo_count().unwrap(), 2);
        assert!(store.remove_repo(&rid("did:plc:a/one")).unwrap().is_some());
        assert!(store.remove_repo(&rid("did:plc:a/one")).unwrap().is_none());
        assert!(matches!(
            store.update_repo(&rid("did:plc:a/one"), |_| ()),
            Err(StoreError::UnknownRepo(_))
        ));
    }

    #[test]
    fn second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knotd.redb");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(err.to_string().contains("another knotd"), "{err}");
    }
}
