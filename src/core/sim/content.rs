//! Content: manifests and packs as hashes and sizes, and the content jobs
//! (publish, fetch, check, discard) a node's core starts.
//!
//! A publish makes a new manifest: the previous one's packs plus one new
//! pack. A fetch needs the manifest blob and every pack the node lacks; for
//! each blob it tries the providers in the order the core gave, as the
//! download does: a reachable provider holding the blob serves it at its
//! bandwidth; an unreachable one costs a dial timeout; one that lacks it
//! answers at once; a stalling stranger costs the download's stall
//! deadline; a lying one is caught by verification at once. A manifest
//! that declares smaller packs than it has is caught at the declared size.
//! Who holds what is evaluated when the job starts; a provider gone by the
//! time it ends fails the job.

use super::model::*;
use std::time::Duration;

use iroh_blobs::Hash;
use rand::Rng;

use iroh::EndpointId;

use crate::{
    core::{
        Event, HEDGE_AFTER, JobError, JobId, JobResult, JobSpec, ProviderFault, STALL_TIMEOUT,
        StateInfo,
    },
    repo_id::RepoId,
};

/// Bytes per second one provider serves.
const BANDWIDTH: u64 = 20 * 1024 * 1024;
/// Size of a manifest blob.
const MANIFEST_SIZE: u64 = 2048;

impl ManifestInfo {
    /// Bytes of packs, as declared.
    pub fn declared_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.declared).sum()
    }
}

impl Content {
    /// Register a manifest made by the owner (`legit`) or by a stranger;
    /// returns its hash.
    pub fn make(&mut self, repo: &RepoId, packs: Vec<Pack>, legit: bool) -> Hash {
        self.make_by(repo, packs, legit, legit)
    }

    /// Register a manifest made by a publisher the owner sanctioned
    /// (`legit`), and whether it is the owner's own (`honest`).
    pub fn make_by(&mut self, repo: &RepoId, packs: Vec<Pack>, legit: bool, honest: bool) -> Hash {
        self.made += 1;
        let hash = Hash::new(format!("manifest {repo} {}", self.made));
        let head = Hash::new(format!("head {}", self.made)).to_hex()[..40].to_string();
        self.manifests.insert(
            hash,
            ManifestInfo {
                repo: repo.clone(),
                packs,
                head,
                legit,
                held: false,
                durable: false,
                honest,
                order: self.made,
            },
        );
        hash
    }

    /// A new pack of `size` bytes.
    pub fn pack(&mut self, size: u64) -> Pack {
        self.made += 1;
        Pack {
            hash: Hash::new(format!("pack {}", self.made)),
            size,
            declared: size,
        }
    }

    /// The newest legitimate manifest of `repo` that some node's disk held
    /// (a state only ever held in memory may be gone with a crash).
    pub fn newest_legit(&self, repo: &RepoId) -> Option<Hash> {
        self.manifests
            .iter()
            .filter(|(_, m)| &m.repo == repo && m.honest && m.durable)
            .max_by_key(|(_, m)| m.order)
            .map(|(h, _)| *h)
    }

    fn info(&self, hash: Hash) -> StateInfo {
        let m = &self.manifests[&hash];
        StateInfo {
            manifest: hash,
            head: Some(m.head.clone()),
            pack_count: m.packs.len(),
            bytes: m.declared_bytes(),
            bytes_moved: 0,
            unchanged: false,
            consolidated: false,
            blobs_rebuilt: 0,
            blobs_fetched: 0,
            recheck_after_gc_pass: None,
        }
    }
}

impl World {
    /// Start a content job; its result arrives as [`Event::JobDone`].
    pub fn start_job(&mut self, node: usize, repo: RepoId, job: JobId, spec: JobSpec) {
        let life = self.nodes[node].life;
        let mut faults = Vec::new();
        let (delay, result) = match spec {
            JobSpec::Publish { previous, .. } => self.publish_job(node, &repo, previous),
            JobSpec::Fetch {
                manifest,
                providers,
                limit,
                ..
            } => self.fetch_job(node, manifest, &providers, limit, &mut faults),
            JobSpec::Discard => (
                Duration::from_millis(20),
                Ok(StateInfo {
                    manifest: Hash::EMPTY,
                    head: None,
                    pack_count: 0,
                    bytes: 0,
                    bytes_moved: 0,
                    unchanged: true,
                    consolidated: false,
                    blobs_rebuilt: 0,
                    blobs_fetched: 0,
                    recheck_after_gc_pass: None,
                }),
            ),
        };
        self.schedule(
            delay,
            Ev::Job {
                node,
                life,
                repo,
                job,
                result,
                faults,
            },
        );
    }

    fn publish_job(
        &mut self,
        node: usize,
        repo: &RepoId,
        previous: Option<Hash>,
    ) -> (Duration, JobResult) {
        let mut packs = previous
            .and_then(|p| self.content.manifests.get(&p))
            .map(|m| m.packs.clone())
            .unwrap_or_default();
        let size = self.rng.random_range(1_000..2_000_000);
        let pack = self.content.pack(size);
        packs.push(pack);
        let hash = self.content.make(repo, packs, true);
        let n = &mut self.nodes[node];
        n.blobs.insert(hash);
        for p in &self.content.manifests[&hash].packs {
            n.blobs.insert(p.hash);
        }
        let mut info = self.content.info(hash);
        info.bytes_moved = size;
        let delay = self.between(Duration::from_millis(50), Duration::from_millis(800));
        self.note(|| format!("n{node} packs {repo} as {}", short(&hash)));
        (delay, Ok(info))
    }

    fn fetch_job(
        &mut self,
        node: usize,
        manifest: Hash,
        providers: &[EndpointId],
        limit: Option<u64>,
        faults: &mut Vec<(EndpointId, ProviderFault)>,
    ) -> (Duration, JobResult) {
        let mut spent = Duration::ZERO;
        let mut fetched = 0;
        let mut bytes = 0;
        let known = self.content.manifests.get(&manifest).cloned();
        if !self.nodes[node].blobs.contains(&manifest) {
            let (cost, result) = self.download(
                node,
                manifest,
                MANIFEST_SIZE,
                MANIFEST_SIZE,
                providers,
                faults,
            );
            spent += cost;
            match result {
                Ok(()) => fetched += 1,
                Err(e) => return (spent, Err(e)),
            }
        }
        let Some(info) = known else {
            return (spent, Err("the manifest is not a manifest".into()));
        };
        if let Some(limit) = limit
            && info.declared_bytes() > limit
        {
            return (
                spent,
                Err(JobError::Refused(format!(
                    "the state needs {} bytes but this repository may hold {limit}",
                    info.declared_bytes()
                ))),
            );
        }
        for pack in &info.packs {
            if self.nodes[node].blobs.contains(&pack.hash) {
                continue;
            }
            let (cost, result) =
                self.download(node, pack.hash, pack.size, pack.declared, providers, faults);
            spent += cost;
            match result {
                Ok(()) => {
                    fetched += 1;
                    bytes += pack.size;
                }
                Err(e) => return (spent, Err(e)),
            }
        }
        let mut result = self.content.info(manifest);
        result.bytes_moved = bytes;
        result.blobs_fetched = fetched;
        (spent.max(Duration::from_millis(5)), Ok(result))
    }

    /// Download one blob as the download does: providers in order, the
    /// next one started alongside whenever no attempt made progress for
    /// [`HEDGE_AFTER`], a provider that sent wrong bytes or nothing while
    /// another served reported, every provider tried on two passes; a blob
    /// larger than declared refused. The blob is in the node's store from
    /// then on.
    fn download(
        &mut self,
        node: usize,
        blob: Hash,
        size: u64,
        declared: u64,
        providers: &[EndpointId],
        faults: &mut Vec<(EndpointId, ProviderFault)>,
    ) -> (Duration, Result<(), JobError>) {
        let mut spent = Duration::ZERO;
        let mut stalled = Vec::new();
        for _pass in 0..2 {
            for &id in providers {
                // A peer the world does not know has no address to dial.
                let Some(p) = self.index_of(&id).filter(|p| self.reachable(node, *p)) else {
                    spent += HEDGE_AFTER;
                    continue;
                };
                let serving = match &self.nodes[p].stranger {
                    Some(s) => s.serves(),
                    None => Serving::Honest,
                };
                let rtt = self.latency() * 2;
                match serving {
                    Serving::Stall => {
                        spent += HEDGE_AFTER;
                        if !stalled.contains(&id) {
                            stalled.push(id);
                        }
                    }
                    Serving::WrongBytes => {
                        spent += rtt;
                        if !faults.contains(&(id, ProviderFault::WrongBytes)) {
                            faults.push((id, ProviderFault::WrongBytes));
                        }
                    }
                    Serving::Honest if !self.nodes[p].blobs.contains(&blob) => spent += rtt,
                    Serving::Honest if size != declared => {
                        return (
                            spent + rtt,
                            Err(JobError::Refused(format!(
                                "pack {} is not the size its manifest declares",
                                short(&blob)
                            ))),
                        );
                    }
                    Serving::Honest => {
                        spent += rtt + Duration::from_micros(size * 1_000_000 / BANDWIDTH);
                        self.nodes[node].blobs.insert(blob);
                        // Whoever sent nothing while this one served stalled.
                        for id in stalled {
                            faults.push((id, ProviderFault::Stalled));
                        }
                        return (spent, Ok(()));
                    }
                }
            }
        }
        spent = spent.max(STALL_TIMEOUT);
        for id in stalled {
            faults.push((id, ProviderFault::Stalled));
        }
        (
            spent,
            Err(JobError::Unavailable(format!(
                "could not fetch {} from any of {} peer(s)",
                short(&blob),
                providers.len()
            ))),
        )
    }

    /// A probe of `peer`'s claim to hold `manifest`: it must serve a chunk
    /// of the manifest and of every pack.
    pub fn probe(&mut self, node: usize, repo: RepoId, peer: iroh::EndpointId, manifest: Hash) {
        let life = self.nodes[node].life;
        let index = self.index_of(&peer).filter(|p| self.reachable(node, *p));
        let (delay, proved) = match index {
            None => (DIAL_TIMEOUT, false),
            Some(p) => {
                let serving = match &self.nodes[p].stranger {
                    Some(s) => s.serves(),
                    None => Serving::Honest,
                };
                let blobs = &self.nodes[p].blobs;
                let holds = blobs.contains(&manifest)
                    && self
                        .content
                        .manifests
                        .get(&manifest)
                        .is_some_and(|m| m.packs.iter().all(|pk| blobs.contains(&pk.hash)));
                match serving {
                    Serving::Stall => (DIAL_TIMEOUT, false),
                    Serving::WrongBytes => (self.latency() * 2, false),
                    Serving::Honest => (self.latency() * 4, holds),
                }
            }
        };
        self.schedule(
            delay,
            Ev::Core {
                node,
                life,
                event: Event::ReplicaProbed {
                    repo,
                    peer,
                    manifest,
                    proved,
                },
            },
        );
    }

    /// A content job ended: hand the result to the core it belongs to.
    pub fn job_done(
        &mut self,
        node: usize,
        life: u32,
        repo: RepoId,
        job: JobId,
        result: JobResult,
        faults: Vec<(EndpointId, ProviderFault)>,
    ) {
        if !self.nodes[node].is_live(life) {
            return;
        }
        self.note_faults(node, &repo, &faults);
        self.deliver(
            node,
            Event::JobDone {
                repo,
                job,
                result,
                faults,
            },
        );
    }
}
