//! Hostile strangers: nodes with keys of their own and no core, that join
//! every topic and act on a schedule. Each [`Adversary`] is one behaviour,
//! named after what it tries to do to honest knots.

use super::model::*;
use std::{collections::VecDeque, time::Duration};

use rand::{Rng, seq::IndexedRandom};

use crate::{
    announce::{Announcement, SignedStatement, Statement},
    repo_id::RepoId,
};

impl Adversary {
    /// Every behaviour.
    pub const ALL: [Adversary; 12] = [
        Adversary::Replayer,
        Adversary::Forger,
        Adversary::Staller,
        Adversary::Liar,
        Adversary::FakeReplica,
        Adversary::Displacer,
        Adversary::LyingPublisher,
        Adversary::RogueExPeer,
        Adversary::FarFutureRecord,
        Adversary::ChurningIdentity,
        Adversary::ExtremeOperator,
        Adversary::Lurker,
    ];

    /// One drawn from `rng`.
    pub fn random(rng: &mut impl Rng) -> Self {
        *Self::ALL.choose(rng).expect("not empty")
    }
}

/// Most statements a stranger remembers.
const HEARD: usize = 64;

impl Stranger {
    pub fn new(behaviour: Adversary) -> Self {
        Self {
            behaviour,
            heard: VecDeque::new(),
            joined: false,
        }
    }

    /// How it serves blobs.
    pub fn serves(&self) -> Serving {
        match self.behaviour {
            Adversary::Staller => Serving::Stall,
            Adversary::Liar => Serving::WrongBytes,
            _ => Serving::Honest,
        }
    }
}

impl World {
    /// A message reaches a stranger.
    pub fn stranger_receives(&mut self, node: usize, msg: Msg) {
        let Some(stranger) = self.nodes[node].stranger.as_mut() else {
            return;
        };
        match msg {
            Msg::Announcement {
                repo, announcement, ..
            } => {
                if stranger.heard.len() == HEARD {
                    stranger.heard.pop_front();
                }
                stranger.heard.push_back((repo, *announcement));
            }
            Msg::PullAsk { from, repos } => {
                if matches!(
                    stranger.behaviour,
                    Adversary::FakeReplica | Adversary::Staller | Adversary::Liar
                ) {
                    // Claims the newest statement heard of each repository.
                    let statements: Vec<(RepoId, SignedStatement)> = repos
                        .iter()
                        .filter_map(|r| {
                            stranger
                                .heard
                                .iter()
                                .rev()
                                .find(|(h, _)| h == r)
                                .map(|(h, a)| (h.clone(), a.statement.clone()))
                        })
                        .collect();
                    let answers = self.envelopes(node, statements);
                    self.answer_with(node, from, answers);
                }
            }
            Msg::NeighborUp { .. } | Msg::NeighborDown { .. } => {}
        }
    }

    /// Wrap statements in `node`'s envelope.
    fn envelopes(
        &self,
        node: usize,
        statements: Vec<(RepoId, SignedStatement)>,
    ) -> Vec<(RepoId, Announcement)> {
        let key = &self.nodes[node].key;
        let at = self.unix_ms();
        statements
            .into_iter()
            .map(|(r, s)| (r, Announcement::new_at(s, key, vec![], at)))
            .collect()
    }

    /// A stranger's turn.
    pub fn adversary_step(&mut self, node: usize) {
        let next = self.between(Duration::from_secs(2), Duration::from_secs(40));
        self.schedule(next, Ev::Adversary { node });
        let Some(stranger) = self.nodes[node].stranger.clone() else {
            return;
        };
        if !stranger.joined {
            self.nodes[node].up = true;
            let honest: Vec<usize> = (0..self.nodes.len())
                .filter(|n| self.nodes[*n].is_honest())
                .collect();
            for repo in self.repos.clone() {
                self.join_topic(node, &repo.id, &honest);
            }
            if let Some(s) = self.nodes[node].stranger.as_mut() {
                s.joined = true;
            }
            return;
        }
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].is_honest() && self.nodes[*n].up)
            .collect();
        let Some(&target) = honest.choose(&mut self.rng) else {
            return;
        };
        match stranger.behaviour {
            Adversary::Replayer => {
                let heard: Vec<&(RepoId, Announcement)> = stranger.heard.iter().collect();
                let Some((repo, announcement)) = heard.choose(&mut self.rng).map(|p| (*p).clone())
                else {
                    return;
                };
                // The original envelope, unchanged, and the statement in its own.
                self.send_direct(node, target, &repo, &announcement);
                let own = self.envelopes(node, vec![(repo.clone(), announcement.statement)]);
                for (repo, a) in own {
                    self.gossip(node, &repo, &a, true);
                    self.send_direct(node, target, &repo, &a);
                }
                // A burst of old statements back to their own publishers,
                // each of which may answer with its current state.
                for (repo, old) in heard.iter().take(10) {
                    let publisher = old
                        .statement
                        .statement
                        .publisher_id()
                        .and_then(|p| self.index_of(&p));
                    if let Some(p) = publisher {
                        for (repo, a) in
                            self.envelopes(node, vec![((*repo).clone(), old.statement.clone())])
                        {
                            self.send_direct(node, p, &repo, &a);
                        }
                    }
                }
            }
            Adversary::Forger => self.forge(node, target),
            Adversary::Staller | Adversary::Liar | Adversary::FakeReplica => {
                // Forward the newest trusted statement of a repository.
                let Some((repo, announcement)) = stranger.heard.back().cloned() else {
                    return;
                };
                let own = self.envelopes(node, vec![(repo, announcement.statement)]);
                for (repo, a) in own {
                    self.gossip(node, &repo, &a, true);
                    for &peer in &honest {
                        self.send_direct(node, peer, &repo, &a);
                    }
                }
            }
            Adversary::LyingPublisher
            | Adversary::RogueExPeer
            | Adversary::FarFutureRecord
            | Adversary::ChurningIdentity
            | Adversary::ExtremeOperator => self.owner_step(node, stranger.behaviour),
            // Its neighbourship is all it does.
            Adversary::Lurker => {}
            Adversary::Displacer => {
                let Some((repo, announcement)) = stranger.heard.back().cloned() else {
                    return;
                };
                for _ in 0..8 {
                    let key = self.fresh_key();
                    let a = Announcement::new_at(
                        announcement.statement.clone(),
                        &key,
                        vec![],
                        self.unix_ms(),
                    );
                    self.send_direct(node, target, &repo, &a);
                }
            }
        }
    }

    /// Announce a statement of the forger's own.
    fn forge(&mut self, node: usize, target: usize) {
        let Some(repo) = self.repos.choose(&mut self.rng).map(|r| r.id.clone()) else {
            return;
        };
        let now = self.unix_ms();
        let seqs = [0, now, now + 2 * 3_600_000, u64::MAX, now + 1];
        let seq = *seqs.choose(&mut self.rng).expect("not empty");
        let manifest = if self.rng.random_bool(0.5) {
            // A manifest of its own making, which it serves.
            let pack = self.content.pack(1000);
            let hash = self.content.make(&repo, vec![pack.clone()], false);
            self.nodes[node].blobs.insert(hash);
            self.nodes[node].blobs.insert(pack.hash);
            hash
        } else {
            // A real manifest of any repository.
            match self
                .content
                .manifests
                .keys()
                .copied()
                .collect::<Vec<_>>()
                .choose(&mut self.rng)
            {
                Some(h) => *h,
                None => return,
            }
        };
        let key = self.nodes[node].key.clone();
        let statement = Statement {
            repo_id: repo.to_string(),
            head: None,
            manifest: *manifest.as_bytes(),
            seq,
            publisher: *key.public().as_bytes(),
        }
        .sign(&key);
        let announcement = Announcement::new_at(statement, &key, vec![], now);
        self.gossip(node, &repo, &announcement, true);
        self.send_direct(node, target, &repo, &announcement);
    }
}
