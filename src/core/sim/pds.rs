//! Each owner's PDS: its `app.knot.repo` records, written back with
//! compare-and-swap semantics, read by polls and listings, and down for a
//! while now and then.

use std::{collections::BTreeMap, time::Duration};

use super::world::{Ev, World};
use crate::{
    atproto::ListedRecord,
    core::{Event, RecordPoll, WriteFailure, WrittenBack},
    record::{PeerHint, RepoRecord, merge_peers},
    repo_id::RepoId,
};

/// One owner's PDS.
#[derive(Debug, Default, Clone)]
pub struct OwnerPds {
    /// Records by record key.
    pub records: BTreeMap<String, RepoRecord>,
    pub down: bool,
}

/// The PDSes of all owners, by DID.
#[derive(Debug, Default)]
pub struct Pds {
    pub owners: BTreeMap<String, OwnerPds>,
}

impl Pds {
    pub fn add_owner(&mut self, did: &str) {
        self.owners.insert(did.to_string(), OwnerPds::default());
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

    /// A poll of `did`'s record `rkey`.
    pub fn get(&self, did: &str, rkey: &str) -> RecordPoll {
        let Some(pds) = self.owners.get(did) else {
            return RecordPoll::Unreachable(format!("cannot resolve {did}"));
        };
        if pds.down {
            return RecordPoll::Unreachable("the PDS did not answer within 10 s".into());
        }
        match pds.records.get(rkey) {
            Some(record) => RecordPoll::Found(record.clone()),
            None => RecordPoll::NotFound("RecordNotFound: the record does not exist".into()),
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
        let result = match self.pds.owners.get_mut(&did) {
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
                    record.seq = Some(seq);
                    record.peers = merge_peers(record.peers, vec![own]);
                    pds.records.insert(rkey, record.clone());
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
