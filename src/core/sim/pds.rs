//! Each owner's PDS: its `app.knot.repo` records, written back with
//! compare-and-swap semantics, read by polls and listings, and down for a
//! while now and then.

use super::model::*;
use std::time::Duration;

use crate::{
    core::{Event, RecordPoll, WriteFailure, WrittenBack},
    record::ListedRecord,
    record::{PeerHint, RepoRecord, merge_peers},
    repo_id::RepoId,
};

/// Versions of a record kept for lagging reads.
const HISTORY: usize = 2;

impl Pds {
    pub fn add_owner(&mut self, did: &str) {
        self.owners.insert(did.to_string(), OwnerPds::default());
    }

    /// Write a record (the owner's own doing).
    pub fn put(&mut self, did: &str, rkey: &str, record: RepoRecord) {
        let Some(pds) = self.owners.get_mut(did) else {
            return;
        };
        if let Some(old) = pds.records.insert(rkey.to_string(), record) {
            let history = pds.history.entry(rkey.to_string()).or_default();
            history.push(old);
            if history.len() > HISTORY {
                history.remove(0);
            }
        }
    }

    /// Delete a record (the owner's own doing).
    pub fn delete(&mut self, did: &str, rkey: &str) {
        if let Some(pds) = self.owners.get_mut(did) {
            pds.records.remove(rkey);
            pds.history.remove(rkey);
        }
    }

    pub fn set_churning(&mut self, did: &str) {
        if let Some(pds) = self.owners.get_mut(did) {
            pds.churning = true;
        }
    }

    /// Whether `did` renames its records on every listing.
    pub fn is_churning(&self, did: &str) -> bool {
        self.owners.get(did).is_some_and(|p| p.churning)
    }

    pub fn set_down(&mut self, did: &str, down: bool) {
        if let Some(pds) = self.owners.get_mut(did) {
            pds.down = down;
        }
    }

    pub fn all_up(&mut self) {
        for pds in self.owners.values_mut() {
            pds.down = false;
        }
    }

    /// A poll of `did`'s record `rkey`; `lag` older versions back, when
    /// it has them (a read served by a lagging replica).
    pub fn get(&self, did: &str, rkey: &str, lag: usize) -> RecordPoll {
        let Some(pds) = self.owners.get(did) else {
            return RecordPoll::Unreachable(format!("cannot resolve {did}"));
        };
        if pds.down {
            return RecordPoll::Unreachable("the PDS did not answer within 10 s".into());
        }
        let lagging = pds
            .history
            .get(rkey)
            .and_then(|h| h.len().checked_sub(lag).and_then(|i| h.get(i)));
        match (pds.records.get(rkey), lagging) {
            (Some(_), Some(old)) if lag > 0 => RecordPoll::Found(old.clone()),
            (Some(record), _) => RecordPoll::Found(record.clone()),
            (None, _) => RecordPoll::NotFound("RecordNotFound: the record does not exist".into()),
        }
    }

    /// A listing of `did`'s records.
    pub fn list(&self, did: &str) -> Result<(Vec<ListedRecord>, bool), String> {
        let Some(pds) = self.owners.get(did) else {
            return Err(format!("cannot resolve {did}"));
        };
        if pds.down {
            return Err("the PDS did not answer within 10 s".into());
        }
        let records = pds
            .records
            .iter()
            .map(|(rkey, record)| ListedRecord {
                rkey: rkey.clone(),
                cid: None,
                value: serde_json::to_value(record).expect("a record serializes"),
            })
            .collect();
        Ok((records, true))
    }
}

impl World {
    /// A PDS outage: `owner`'s, or a random owner's for `usize::MAX`.
    pub fn pds_down(&mut self, owner: usize) {
        if owner == usize::MAX {
            if !self.active {
                return;
            }
            if let Some(mean) = self.scenario.faults.pds_outage_every {
                let next = self.exponential(mean);
                self.schedule(next, Ev::PdsDown { owner: usize::MAX });
            }
            let owners = self.scenario.owners;
            let pick = rand::Rng::random_range(&mut self.rng, 0..owners);
            return self.pds_down(pick);
        }
        let did = format!("did:plc:owner{owner}");
        self.note(|| format!("pds of {did} goes down"));
        self.pds.set_down(&did, true);
        let lasts = self.between(Duration::from_secs(30), Duration::from_secs(900));
        self.schedule(lasts, Ev::PdsUp { owner });
    }

    /// A write-back: read, merge and compare-and-swap, as the account does.
    pub fn write_back(
        &mut self,
        node: usize,
        repo: RepoId,
        rkey: String,
        head: Option<String>,
        manifest: String,
        seq: u64,
    ) {
        let life = self.nodes[node].life;
        let own: PeerHint = self.nodes[node].hint();
        let did = repo.did().to_string();
        let delay = self.between(Duration::from_millis(50), Duration::from_millis(500));
        let stored_seq = self.written_seq(&repo, seq);
        let result = match self.pds.owners.get(&did) {
            Some(pds) if !pds.down => {
                let current = pds
                    .records
                    .get(&rkey)
                    .cloned()
                    .unwrap_or_else(|| RepoRecord::empty(repo.clone()));
                if current.seq.is_some_and(|s| s > seq) {
                    Ok(WrittenBack {
                        record: current,
                        superseded: true,
                    })
                } else {
                    let mut record = current;
                    record.manifest = Some(manifest);
                    record.head = head;
                    record.seq = Some(stored_seq);
                    record.peers = merge_peers(record.peers, vec![own]);
                    self.pds.put(&did, &rkey, record.clone());
                    Ok(WrittenBack {
                        record,
                        superseded: false,
                    })
                }
            }
            _ => Err(WriteFailure {
                message: "the PDS did not answer within 10 s".into(),
                retry_after: None,
            }),
        };
        self.schedule(
            delay,
            Ev::Core {
                node,
                life,
                event: Event::WrittenBack { repo, result },
            },
        );
    }
}
