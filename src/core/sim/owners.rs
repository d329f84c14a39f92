//! Adversaries on the owner's and the operator's side: a careless owner
//! naming a lying publisher in its record, a record deleted while a former
//! peer turns rogue, an owner's clock at the end of time, a followed
//! identity that churns its records, and admin commands with extreme
//! values. Each sets the world up when it is built and acts on a schedule.

use super::model::*;
use std::time::Duration;

use rand::{Rng, seq::IndexedRandom};

use crate::{
    announce::{Announcement, Statement},
    core::CoreCommand,
    record::RepoRecord,
    repo_id::RepoId,
};

impl World {
    /// Set up what `adversary` (played by `node`) needs before the run.
    pub fn setup_adversary(&mut self, node: usize, adversary: Adversary) {
        let Some(first) = self.repos.first().cloned() else {
            return;
        };
        match adversary {
            Adversary::LyingPublisher | Adversary::RogueExPeer => {
                // A careless owner names the node in the record.
                let mut record = RepoRecord::empty(first.id.clone());
                record.peers = vec![self.nodes[node].hint()];
                self.pds.put(first.id.did(), first.id.name(), record);
                if adversary == Adversary::RogueExPeer {
                    let active = self.scenario.active;
                    let at = self.between(active / 4, active / 2);
                    self.schedule(at, Ev::DeleteRecord { repo: first.id });
                }
            }
            Adversary::FarFutureRecord => {
                let active = self.scenario.active;
                let at = self.between(active / 5, active / 2);
                self.owner_faults.broken_clock = Some((first.id, at, false));
            }
            Adversary::ChurningIdentity => {
                self.pds.add_owner(CHURNER);
                self.pds.set_churning(CHURNER);
            }
            _ => {}
        }
    }

    /// The owner deletes `repo`'s record and stops publishing it.
    pub fn delete_record(&mut self, repo: RepoId) {
        self.note(|| format!("the owner deletes the record of {repo}"));
        self.pds.delete(repo.did(), repo.name());
        self.owner_faults.deleted = Some((repo, self.now));
    }

    /// Whether the owner still publishes `repo`.
    pub fn still_published(&self, repo: &RepoId) -> bool {
        self.owner_faults
            .deleted
            .as_ref()
            .is_none_or(|(deleted, _)| deleted != repo)
    }

    /// An owner-side adversary's turn.
    pub fn owner_step(&mut self, node: usize, adversary: Adversary) {
        match adversary {
            Adversary::LyingPublisher => self.lie(node),
            Adversary::RogueExPeer => self.rogue(node),
            Adversary::ExtremeOperator => self.extreme_command(),
            _ => {}
        }
    }

    /// Publish a state whose packs are far larger than declared.
    fn lie(&mut self, node: usize) {
        if !self.rng.random_bool(0.2) {
            return;
        }
        let repo = self.repos[0].id.clone();
        let mut pack = self.content.pack(2 << 30);
        pack.declared = 10_000;
        // Sanctioned by the owner's record, but not the owner's content.
        let hash = self.content.make_by(&repo, vec![pack.clone()], true, false);
        self.nodes[node].blobs.insert(hash);
        self.nodes[node].blobs.insert(pack.hash);
        self.note(|| format!("n{node} publishes a lying state of {repo}"));
        self.announce_own(node, &repo, hash);
    }

    /// Once every follower of the record read it as deleted and recorded
    /// that durably, publish. A node cannot be expected to distrust a
    /// former peer whose revocation it lost: a read whose commit failed
    /// before a crash, or a node that was down, restarts from the record
    /// it last stored and learns of the deletion only at its next read.
    fn rogue(&mut self, node: usize) {
        let Some((repo, _)) = self.owner_faults.deleted.clone() else {
            return;
        };
        let reads_record = |n: &SimNode| {
            let in_core = n.core.as_ref().is_some_and(|c| {
                c.repos
                    .get(&repo)
                    .is_some_and(|r| r.config.locator.is_some())
            });
            let on_disk = n
                .disk
                .rows
                .get(&repo)
                .is_some_and(|row| row.config.locator.is_some());
            n.is_honest() && (in_core || on_disk)
        };
        let durably_saw = |index: usize, n: &SimNode| {
            self.owner_faults.saw_deleted.contains(&index)
                && n.disk
                    .rows
                    .get(&repo)
                    .is_none_or(|row| row.record.is_none())
        };
        let all_know = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| reads_record(n))
            .all(|(index, n)| durably_saw(index, n));
        if !all_know {
            return;
        }
        let pack = self.content.pack(5_000);
        let hash = self
            .content
            .make_by(&repo, vec![pack.clone()], false, false);
        self.nodes[node].blobs.insert(hash);
        self.nodes[node].blobs.insert(pack.hash);
        self.note(|| format!("n{node}, no longer trusted, publishes a state of {repo}"));
        self.announce_own(node, &repo, hash);
    }

    /// Announce `manifest` as the node's own statement to the topic and to
    /// every honest node directly.
    fn announce_own(&mut self, node: usize, repo: &RepoId, manifest: iroh_blobs::Hash) {
        let key = self.nodes[node].key.clone();
        let statement = Statement {
            repo_id: repo.to_string(),
            head: None,
            manifest: *manifest.as_bytes(),
            seq: self.unix_ms(),
            publisher: *key.public().as_bytes(),
        }
        .sign(&key);
        let announcement = Announcement::new_at(statement, &key, vec![], self.unix_ms());
        self.gossip(node, repo, &announcement, true);
        for peer in 0..self.nodes.len() {
            if self.nodes[peer].is_honest() {
                self.send_direct(node, peer, repo, &announcement);
            }
        }
    }

    /// An admin command with extreme values, to a random honest node.
    fn extreme_command(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].is_honest() && self.nodes[*n].up)
            .collect();
        let (Some(&node), Some(repo)) = (
            up.choose(&mut self.rng),
            self.repos.choose(&mut self.rng).map(|r| r.id.clone()),
        ) else {
            return;
        };
        let years = Duration::from_secs(3 * 365 * 24 * 3600);
        let commands = [
            CoreCommand::Replicas {
                repo_id: repo.clone(),
                count: usize::MAX,
                timeout: Duration::MAX,
            },
            CoreCommand::Replicas {
                repo_id: repo.clone(),
                count: 1,
                timeout: years,
            },
            CoreCommand::SetQuota {
                repo_id: repo.clone(),
                max_bytes: Some(u64::MAX),
            },
            CoreCommand::SetQuota {
                repo_id: repo.clone(),
                max_bytes: None,
            },
            CoreCommand::Sync {
                repo_id: repo.clone(),
            },
            CoreCommand::Verify { repo_id: None },
            CoreCommand::Sync {
                repo_id: RepoId::parse("did:plc:nobody/unknown").expect("valid"),
            },
        ];
        let command = commands.choose(&mut self.rng).expect("not empty").clone();
        self.command(node, command);
    }

    /// After `node` read `repo`'s record: note a deletion seen, and crash a
    /// node that just took the far-future record's state, mid-fetch.
    pub fn after_poll(&mut self, node: usize, repo: &RepoId, gone: bool) {
        if gone
            && self
                .owner_faults
                .deleted
                .as_ref()
                .is_some_and(|(r, _)| r == repo)
        {
            self.owner_faults.saw_deleted.insert(node);
        }
        let far = matches!(&self.owner_faults.broken_clock, Some((r, _, true)) if r == repo);
        if !far || self.owner_faults.crashed_on_far_record.contains(&node) {
            return;
        }
        let pending = self.nodes[node].core.as_ref().is_some_and(|c| {
            c.repos
                .get(repo)
                .and_then(|r| r.record.as_ref())
                .is_some_and(|copy| copy.pending && copy.record.seq == Some(FAR_FUTURE_SEQ))
        });
        if pending {
            self.owner_faults.crashed_on_far_record.insert(node);
            self.schedule(Duration::from_millis(1), Ev::Crash { node });
        }
    }

    /// The `seq` the owner's write-back stores: its own, or the end of time
    /// once its clock broke. Then the operators of the record's followers
    /// ask for a sync at once: their read of the far-future record races
    /// the fetch the new state's announcement started, so some follower
    /// holds the record pending when the adversary crashes it.
    pub fn written_seq(&mut self, repo: &RepoId, seq: u64) -> u64 {
        match &mut self.owner_faults.broken_clock {
            Some((r, at, used)) if r == repo && !*used && self.now >= *at => {
                *used = true;
                self.sync_followers(repo);
                FAR_FUTURE_SEQ
            }
            _ => seq,
        }
    }

    fn sync_followers(&mut self, repo: &RepoId) {
        let followers: Vec<usize> = (0..self.nodes.len())
            .filter(|n| {
                let node = &self.nodes[*n];
                node.is_honest()
                    && !matches!(node.role, Role::Author { .. })
                    && node
                        .core
                        .as_ref()
                        .is_some_and(|c| c.repos.contains_key(repo))
            })
            .collect();
        for node in followers {
            let after = self.between(Duration::from_millis(1), Duration::from_millis(1500));
            let command = CoreCommand::Sync {
                repo_id: repo.clone(),
            };
            self.schedule(after, Ev::Admin { node, command });
        }
    }

    /// The churning identity's records for one listing: all new names.
    pub fn churn(&mut self) -> Vec<RepoRecord> {
        self.owner_faults.churn_listings += 1;
        let round = self.owner_faults.churn_listings;
        (0..CHURN_PER_LISTING)
            .map(|i| {
                let id = RepoId::parse(&format!("{CHURNER}/r{round}x{i}")).expect("valid");
                RepoRecord::empty(id)
            })
            .collect()
    }
}
