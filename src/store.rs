//! The node's database: the tracked repositories and what it knows of each.
//!
//! This is the only module that touches redb. Each part of a repository's
//! row ([`crate::state`]) has its own table, named with a version, holding
//! JSON so fields can be added without a migration. The caller hands over a
//! batch of [`Write`]s, committed with fsync in one transaction: held
//! states, configuration and records before the caller acts on them
//! (announces a state, replies to the operator); bookkeeping (hints, last
//! poll, errors), which [`Write::needs_durability`] says may be lost, is
//! batched by the caller so it costs no commit of its own. Every call is one
//! short transaction that returns before any `.await` of the caller; redb's
//! commits are atomic, so a crash leaves either the old or the new batch.
//!
//! redb refuses every operation after an I/O error (a full disk during a
//! commit) until the file is opened again: a failed write drops the handle
//! and the next call reopens the file, which holds the last committed batch.
//!
//! Opening a database written by an older knotd (table `repos_v1`) converts
//! it in one transaction.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tracing::{info, warn};

pub use crate::core::Write;

use crate::{
    admin::PolicyRule,
    announce::SignedStatement,
    record::{PeerHint, RepoRecord},
    repo_id::RepoId,
    state::{
        Bookkeeping, FollowConfig, Held, LearnedHint, Locator, MirrorRow, Origin, RecordCopy,
        RepoConfig, RepoRow,
    },
};

const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_config_v2");
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_record_v2");
const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_held_v2");
const BOOKKEEPING: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_bookkeeping_v2");
const FOLLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("follows_v2");
const POLICY: TableDefinition<&str, &[u8]> = TableDefinition::new("policy_v2");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
const MIRRORS: TableDefinition<&str, &[u8]> = TableDefinition::new("mirrors_v1");
/// The single table of knotd 0.1's first format, converted on open.
const LEGACY_REPOS: TableDefinition<&str, &[u8]> = TableDefinition::new("repos_v1");

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
    #[error(
        "stored {table} entry for {key} is corrupt: {message}; remove the repository and add it again"
    )]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// The decoder's message.
        message: String,
    },
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

/// Handle to the node database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    path: Arc<PathBuf>,
    /// `None` after a failed write: the next call opens the file again.
    db: Arc<Mutex<Option<Arc<Database>>>>,
}

impl Store {
    /// Open (or create) the database file, converting an older format.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_file(path)?;
        Ok(Self {
            path: Arc::new(path.to_path_buf()),
            db: Arc::new(Mutex::new(Some(Arc::new(db)))),
        })
    }

    /// The open database, opened again if a failed write closed it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(open_file(&self.path)?);
        info!(path = %self.path.display(), "database opened again after a failed write");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Run a write; on failure drop the handle so the next call reopens the
    /// file (redb refuses all work after an I/O error until then).
    fn write<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let result = f(&db);
        if result.is_err() {
            drop(db);
            let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
            *slot = None;
        }
        result
    }

    /// Every tracked repository, ordered by id.
    pub fn load_all(&self) -> Result<Vec<RepoRow>, StoreError> {
        let tx = redb_try!("reading repositories", self.db()?.begin_read());
        let configs: BTreeMap<String, RepoConfig> = read_table(&tx, CONFIG, "repo_config_v2")?;
        let mut records: BTreeMap<String, RecordCopy> = read_table(&tx, RECORDS, "repo_record_v2")?;
        let mut held: BTreeMap<String, Held> = read_table(&tx, HELD, "repo_held_v2")?;
        let mut books: BTreeMap<String, Bookkeeping> =
            read_table(&tx, BOOKKEEPING, "repo_bookkeeping_v2")?;
        Ok(configs
            .into_iter()
            .map(|(key, config)| RepoRow {
                config,
                record: records.remove(&key),
                held: held.remove(&key),
                bookkeeping: books.remove(&key).unwrap_or_default(),
            })
            .collect())
    }

    /// Apply `writes` in one transaction, in order; on disk when this returns.
    pub fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write(|db| commit_writes(db, writes))
    }

    /// Every followed identity, ordered by DID.
    pub fn load_follows(&self) -> Result<Vec<FollowConfig>, StoreError> {
        let tx = redb_try!("reading follows", self.db()?.begin_read());
        let follows: BTreeMap<String, FollowConfig> = read_table(&tx, FOLLOWS, "follows_v2")?;
        Ok(follows.into_values().collect())
    }

    /// The persisted policy rules: (target, rule).
    pub fn load_policy(&self) -> Result<Vec<(String, PolicyRule)>, StoreError> {
        let tx = redb_try!("reading the policy", self.db()?.begin_read());
        let rules: BTreeMap<String, PolicyRule> = read_table(&tx, POLICY, "policy_v2")?;
        Ok(rules.into_iter().collect())
    }

    /// Every mirror, ordered by repository id.
    pub fn load_mirrors(&self) -> Result<Vec<MirrorRow>, StoreError> {
        let tx = redb_try!("reading mirrors", self.db()?.begin_read());
        let rows: BTreeMap<String, MirrorRow> = read_table(&tx, MIRRORS, "mirrors_v1")?;
        Ok(rows.into_values().collect())
    }

    /// Add or replace a mirror, durably.
    pub fn put_mirror(&self, row: &MirrorRow) -> Result<(), StoreError> {
        let value = serde_json::to_vec(row).map_err(|e| StoreError::Corrupt {
            table: "mirrors_v1",
            key: row.repo_id.to_string(),
            message: e.to_string(),
        })?;
        self.write(|db| {
            let tx = redb_try!("writing a mirror", db.begin_write());
            {
                let mut table = redb_try!("writing a mirror", tx.open_table(MIRRORS));
                redb_try!(
                    "writing a mirror",
                    table.insert(row.repo_id.as_str(), value.as_slice())
                );
            }
            redb_try!("writing a mirror", tx.commit());
            Ok(())
        })
    }

    /// Remove a mirror, durably.
    pub fn remove_mirror(&self, repo_id: &RepoId) -> Result<(), StoreError> {
        self.write(|db| {
            let tx = redb_try!("removing a mirror", db.begin_write());
            {
                let mut table = redb_try!("removing a mirror", tx.open_table(MIRRORS));
                redb_try!("removing a mirror", table.remove(repo_id.as_str()));
            }
            redb_try!("removing a mirror", tx.commit());
            Ok(())
        })
    }

    /// Read a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = redb_try!("reading metadata", self.db()?.begin_read());
        let table = redb_try!("reading metadata", tx.open_table(META));
        let value = redb_try!("reading metadata", table.get(key));
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Write a metadata value durably.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|db| {
            let tx = redb_try!("writing metadata", db.begin_write());
            {
                let mut table = redb_try!("writing metadata", tx.open_table(META));
                redb_try!("writing metadata", table.insert(key, value));
            }
            redb_try!("writing metadata", tx.commit());
            Ok(())
        })
    }

    /// Whether `repo_id` is tracked.
    pub fn has_repo(&self, repo_id: &RepoId) -> Result<bool, StoreError> {
        let tx = redb_try!("reading repositories", self.db()?.begin_read());
        let table = redb_try!("reading repositories", tx.open_table(CONFIG));
        let row = redb_try!("reading repositories", table.get(repo_id.as_str()));
        Ok(row.is_some())
    }

    /// Number of tracked repositories.
    pub fn repo_count(&self) -> Result<u64, StoreError> {
        let tx = redb_try!("counting repositories", self.db()?.begin_read());
        let table = redb_try!("counting repositories", tx.open_table(CONFIG));
        Ok(redb_try!("counting repositories", table.len()))
    }
}

fn commit_writes(db: &Database, writes: &[Write]) -> Result<(), StoreError> {
    let tx = redb_try!("writing repositories", db.begin_write());
    {
        let mut config = redb_try!("writing repositories", tx.open_table(CONFIG));
        let mut records = redb_try!("writing repositories", tx.open_table(RECORDS));
        let mut held = redb_try!("writing repositories", tx.open_table(HELD));
        let mut books = redb_try!("writing repositories", tx.open_table(BOOKKEEPING));
        let mut follows = redb_try!("writing follows", tx.open_table(FOLLOWS));
        let mut policy = redb_try!("writing the policy", tx.open_table(POLICY));
        for write in writes {
            let key = write.key();
            match write {
                Write::Config(c) => {
                    redb_try!(
                        "writing repositories",
                        config.insert(key, json(c).as_slice())
                    );
                }
                Write::Record(_, r) => put(&mut records, key, r.as_ref())?,
                Write::Held(_, h) => put(&mut held, key, h.as_deref())?,
                Write::Bookkeeping(_, b) => {
                    // Bookkeeping of a repository removed meanwhile is dropped.
                    if redb_try!("writing repositories", config.get(key)).is_some() {
                        redb_try!(
                            "writing repositories",
                            books.insert(key, json(b).as_slice())
                        );
                    }
                }
                Write::Remove(_) => {
                    redb_try!("removing a repository", config.remove(key));
                    redb_try!("removing a repository", records.remove(key));
                    redb_try!("removing a repository", held.remove(key));
                    redb_try!("removing a repository", books.remove(key));
                }
                Write::Follow(f) => {
                    redb_try!("writing follows", follows.insert(key, json(f).as_slice()));
                }
                Write::Unfollow(_) => {
                    redb_try!("writing follows", follows.remove(key));
                }
                Write::Policy(_, rule) => put(&mut policy, key, rule.as_ref())?,
            }
        }
    }
    redb_try!("writing repositories", tx.commit());
    Ok(())
}

fn open_file(path: &Path) -> Result<Database, StoreError> {
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
        for table in [
            CONFIG,
            RECORDS,
            HELD,
            BOOKKEEPING,
            FOLLOWS,
            POLICY,
            META,
            MIRRORS,
        ] {
            redb_try!("creating tables", tx.open_table(table));
        }
        let legacy =
            redb_try!("listing tables", tx.list_tables()).any(|t| t.name() == LEGACY_REPOS.name());
        if legacy {
            migrate_legacy(&tx)?;
            redb_try!("removing the old table", tx.delete_table(LEGACY_REPOS));
        }
    }
    redb_try!("creating tables", tx.commit());
    Ok(db)
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain data serializes")
}

fn put<T: Serialize>(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    value: Option<&T>,
) -> Result<(), StoreError> {
    match value {
        Some(v) => {
            redb_try!(
                "writing repositories",
                table.insert(key, json(v).as_slice())
            );
        }
        None => {
            redb_try!("writing repositories", table.remove(key));
        }
    }
    Ok(())
}

fn read_table<T: DeserializeOwned>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    name: &'static str,
) -> Result<BTreeMap<String, T>, StoreError> {
    let table = redb_try!("reading repositories", tx.open_table(def));
    let mut out = BTreeMap::new();
    for item in redb_try!("reading repositories", table.iter()) {
        let (k, v) = redb_try!("reading repositories", item);
        let value = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
            table: name,
            key: k.value().to_string(),
            message: e.to_string(),
        })?;
        out.insert(k.value().to_string(), value);
    }
    Ok(out)
}

/// A repository row as the first format stored it: one JSON value holding
/// the merged record, with every peer ever trusted in one list.
#[derive(Deserialize)]
struct LegacyEntry {
    record: RepoRecord,
    #[serde(default)]
    locator: Option<Locator>,
    added_at: u64,
    #[serde(default)]
    last_sync: Option<u64>,
    #[serde(default)]
    last_poll: Option<u64>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    materialized: Option<String>,
    #[serde(default)]
    pack_count: usize,
    #[serde(default)]
    bytes_pinned: u64,
    #[serde(default)]
    statement: Option<SignedStatement>,
    #[serde(default)]
    trusted: Vec<String>,
    #[serde(default)]
    write_back_pending: bool,
    #[serde(default)]
    remote: Option<RepoRecord>,
}

/// Convert `repos_v1` rows into the current tables. Peers the old format
/// trusted but the last-read record does not list become operator peers
/// (the old format did not tell them apart); other hints become learned
/// hints. A held state is kept when its statement names it.
fn migrate_legacy(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let rows: BTreeMap<String, serde_json::Value> = {
        let table = redb_try!("reading the old table", tx.open_table(LEGACY_REPOS));
        let mut rows = BTreeMap::new();
        for item in redb_try!("reading the old table", table.iter()) {
            let (k, v) = redb_try!("reading the old table", item);
            match serde_json::from_slice(v.value()) {
                Ok(value) => {
                    rows.insert(k.value().to_string(), value);
                }
                Err(e) => warn!(repo = k.value(), error = %e, "dropping an unreadable old entry"),
            }
        }
        rows
    };
    let now_ms = crate::clock::unix_millis();
    let mut writes = Vec::new();
    for (key, value) in rows {
        let entry: LegacyEntry = match serde_json::from_value(value) {
            Ok(e) => e,
            Err(e) => {
                warn!(repo = %key, error = %e, "dropping an unreadable old entry");
                continue;
            }
        };
        writes.extend(convert_legacy(entry, now_ms));
    }
    let count = writes
        .iter()
        .filter(|w| matches!(w, Write::Config(_)))
        .count();
    let mut config = redb_try!("converting the old table", tx.open_table(CONFIG));
    let mut records = redb_try!("converting the old table", tx.open_table(RECORDS));
    let mut held = redb_try!("converting the old table", tx.open_table(HELD));
    let mut books = redb_try!("converting the old table", tx.open_table(BOOKKEEPING));
    for write in &writes {
        let key = write.key();
        match write {
            Write::Config(c) => {
                redb_try!("converting", config.insert(key, json(c).as_slice()));
            }
            Write::Record(_, r) => put(&mut records, key, r.as_ref())?,
            Write::Held(_, h) => put(&mut held, key, h.as_deref())?,
            Write::Bookkeeping(_, b) => {
                redb_try!("converting", books.insert(key, json(b).as_slice()));
            }
            Write::Remove(_) | Write::Follow(_) | Write::Unfollow(_) | Write::Policy(..) => {}
        }
    }
    info!(
        repositories = count,
        "converted the database to the current format"
    );
    Ok(())
}

fn convert_legacy(entry: LegacyEntry, now_ms: u64) -> Vec<Write> {
    let repo_id = entry.record.repo_id.clone();
    let record_peers: Vec<&str> = entry
        .remote
        .iter()
        .flat_map(|r| r.peers.iter().map(|p| p.node_id.as_str()))
        .collect();
    let in_record = |p: &PeerHint| record_peers.contains(&p.node_id.as_str());
    let (operator_peers, learned): (Vec<PeerHint>, Vec<PeerHint>) = entry
        .record
        .peers
        .iter()
        .filter(|p| !in_record(p))
        .cloned()
        .partition(|p| entry.trusted.contains(&p.node_id));
    let config = RepoConfig {
        repo_id: repo_id.clone(),
        added_at: entry.added_at,
        origin: Origin::Operator,
        locator: entry.locator,
        operator_peers,
        followed_via: None,
        record_deleted: false,
        record_deleted_at: None,
        max_bytes: None,
    };
    let record = entry.remote.map(|record| RecordCopy {
        record,
        read_at: entry.last_poll.unwrap_or(0),
        pending: false,
        named: Vec::new(),
    });
    let held = match (&entry.materialized, entry.statement) {
        (Some(manifest), Some(statement))
            if data_encoding::HEXLOWER.encode(&statement.statement.manifest) == *manifest
                && entry.record.manifest.as_ref() == Some(manifest) =>
        {
            Some(Box::new(Held {
                manifest: statement.statement.manifest_hash(),
                head: entry.record.head.clone(),
                statement,
                pack_count: entry.pack_count,
                bytes: entry.bytes_pinned,
                since: entry.last_sync.unwrap_or(entry.added_at),
                write_back_pending: entry.write_back_pending,
            }))
        }
        _ => None,
    };
    let bookkeeping = Bookkeeping {
        hints: learned
            .into_iter()
            .map(|hint| LearnedHint {
                hint,
                seen_ms: now_ms,
            })
            .collect(),
        last_poll: entry.last_poll,
        last_error: entry.last_error,
        peers_seen: Vec::new(),
    };
    vec![
        Write::Config(config),
        Write::Record(repo_id.clone(), record),
        Write::Held(repo_id.clone(), held),
        Write::Bookkeeping(repo_id, bookkeeping),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::Statement;

    fn rid(s: &str) -> RepoId {
        RepoId::parse(s).unwrap()
    }

    fn config(id: &str) -> RepoConfig {
        RepoConfig::new(rid(id), Origin::Operator, 7)
    }

    #[test]
    fn rows_survive_reopen_and_removal_clears_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knotd.redb");
        let one = rid("did:plc:a/one");
        {
            let store = Store::open(&path).unwrap();
            store
                .commit(&[
                    Write::Config(config("did:plc:a/one")),
                    Write::Config(config("did:plc:a/two")),
                ])
                .unwrap();
            let book = Bookkeeping {
                last_poll: Some(9),
                ..Default::default()
            };
            store
                .commit(&[Write::Bookkeeping(one.clone(), book)])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rows = store.load_all().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].bookkeeping.last_poll, Some(9));
        assert_eq!(store.repo_count().unwrap(), 2);
        store.commit(&[Write::Remove(one.clone())]).unwrap();
        // Bookkeeping arriving after a removal does not resurrect the row.
        store
            .commit(&[Write::Bookkeeping(one, Bookkeeping::default())])
            .unwrap();
        let rows = store.load_all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].config.repo_id.as_str(), "did:plc:a/two");
    }

    #[test]
    fn second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knotd.redb");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(err.to_string().contains("another knotd"), "{err}");
    }

    #[test]
    fn the_first_format_is_converted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knotd.redb");
        let key = iroh::SecretKey::from_bytes(&[1; 32]);
        let operator = iroh::SecretKey::from_bytes(&[2; 32]).public().to_string();
        let from_record = iroh::SecretKey::from_bytes(&[3; 32]).public().to_string();
        let stranger = iroh::SecretKey::from_bytes(&[4; 32]).public().to_string();
        let manifest = [9u8; 32];
        let hex = data_encoding::HEXLOWER.encode(&manifest);
        let statement = Statement {
            repo_id: "did:plc:a/one".into(),
            head: None,
            manifest,
            seq: 5,
            publisher: *key.public().as_bytes(),
        }
        .sign(&key);
        let hint = |id: &str| PeerHint::new(id.to_string(), vec![], None);
        let mut record = RepoRecord::empty(rid("did:plc:a/one"));
        record.manifest = Some(hex.clone());
        record.peers = vec![hint(&operator), hint(&from_record), hint(&stranger)];
        let mut remote = RepoRecord::empty(rid("did:plc:a/one"));
        remote.peers = vec![hint(&from_record)];
        let old = serde_json::json!({
            "record": record,
            "locator": null,
            "added_at": 3,
            "materialized": hex,
            "pack_count": 1,
            "bytes_pinned": 100,
            "seq": 5,
            "statement": statement,
            "trusted": [operator, from_record],
            "remote": remote,
        });
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LEGACY_REPOS).unwrap();
                t.insert(
                    "did:plc:a/one",
                    serde_json::to_vec(&old).unwrap().as_slice(),
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rows = store.load_all().unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        let ops: Vec<&str> = row
            .config
            .operator_peers
            .iter()
            .map(|p| p.node_id.as_str())
            .collect();
        assert_eq!(ops, vec![operator.as_str()]);
        assert_eq!(row.record.as_ref().unwrap().record.peers.len(), 1);
        let held = row.held.as_ref().unwrap();
        assert_eq!((held.manifest.to_hex(), held.seq()), (hex.clone(), 5));
        let learned: Vec<&str> = row
            .bookkeeping
            .hints
            .iter()
            .map(|h| h.hint.node_id.as_str())
            .collect();
        assert_eq!(learned, vec![stranger.as_str()]);
        drop(store);
        // Converted once: reopening finds the new tables only.
        assert_eq!(Store::open(&path).unwrap().load_all().unwrap(), rows);
    }
}
