//! The network: links that partitions cut, latency, loss and duplication,
//! gossip topics with neighbours that come and go, direct pushes and pulls.
//!
//! A topic is the set of nodes that joined it and the neighbour links
//! between them. A node joining dials the peers its core names; peers
//! reachable and joined become neighbours (both sides hear `NeighborUp`).
//! A broadcast to everyone reaches every member connected to the sender
//! through neighbour links, a hop's latency per link; to neighbours, only
//! those. A crashed node's neighbours hear `NeighborDown` after a detection
//! delay, or, with the scenario's `stale_neighbor` chance, never: they keep
//! a stale link that swallows what is sent over it and stops the restarted
//! node from meeting them again by gossip (as iroh-gossip does).

use super::model::*;
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::Duration,
};

use rand::Rng;

use crate::{
    announce::Announcement,
    core::{Event, Via},
    repo_id::RepoId,
};

/// Latency of one message over one link.
const LATENCY_MIN: Duration = Duration::from_millis(5);
const LATENCY_MAX: Duration = Duration::from_millis(120);
/// How long until a lost connection is noticed.
const DETECT_MIN: Duration = Duration::from_secs(5);
const DETECT_MAX: Duration = Duration::from_secs(40);

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl World {
    /// Whether `a` can reach `b` now.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        a != b && self.nodes[a].up && self.nodes[b].up && !self.net.cut.contains(&pair(a, b))
    }

    /// One message's latency.
    pub fn latency(&mut self) -> Duration {
        self.between(LATENCY_MIN, LATENCY_MAX)
    }

    /// Send `msg` to `to` after `delay`, unless lost; maybe twice.
    pub fn send(&mut self, to: usize, delay: Duration, msg: impl Fn() -> Msg) {
        let faults = &self.scenario.faults;
        let (loss, duplicate) = if self.active {
            (faults.loss, faults.duplicate)
        } else {
            (0.0, 0.0)
        };
        if self.rng.random_bool(loss) {
            return;
        }
        self.schedule(
            delay,
            Ev::Message {
                node: to,
                msg: msg(),
            },
        );
        if self.rng.random_bool(duplicate) {
            let again = delay + self.latency();
            self.schedule(
                again,
                Ev::Message {
                    node: to,
                    msg: msg(),
                },
            );
        }
    }

    pub fn join_topic(&mut self, node: usize, repo: &RepoId, peers: &[usize]) {
        self.net
            .topics
            .entry(repo.clone())
            .or_default()
            .members
            .insert(node);
        self.dial(node, repo, peers);
    }

    /// `node` dials `peers` on `repo`'s topic: the reachable members become
    /// neighbours, unless a stale link of theirs swallows the dial.
    pub fn dial(&mut self, node: usize, repo: &RepoId, peers: &[usize]) {
        for &peer in peers {
            if !self.reachable(node, peer) {
                continue;
            }
            let Some(topic) = self.net.topics.get(repo) else {
                return;
            };
            if !topic.members.contains(&node) || !topic.members.contains(&peer) {
                continue;
            }
            let link = pair(node, peer);
            if topic.links.contains(&link) {
                continue;
            }
            if topic.stale.contains(&link) {
                // The peer still counts the old incarnation as a neighbour
                // and never answers the new one's join.
                continue;
            }
            self.net
                .topics
                .get_mut(repo)
                .expect("present")
                .links
                .insert(link);
            let delay = self.latency();
            let r = repo.clone();
            self.send(node, delay, || Msg::NeighborUp {
                repo: r.clone(),
                peer,
            });
            let r = repo.clone();
            self.send(peer, delay, || Msg::NeighborUp {
                repo: r.clone(),
                peer: node,
            });
        }
    }

    pub fn leave_topic(&mut self, node: usize, repo: &RepoId) {
        let Some(topic) = self.net.topics.get_mut(repo) else {
            return;
        };
        topic.members.remove(&node);
        let gone: Vec<(usize, usize)> = topic
            .links
            .iter()
            .filter(|(a, b)| *a == node || *b == node)
            .copied()
            .collect();
        for link in &gone {
            topic.links.remove(link);
        }
        for link in gone {
            let other = if link.0 == node { link.1 } else { link.0 };
            let delay = LATENCY_MAX;
            let r = repo.clone();
            self.send(other, delay, || Msg::NeighborDown {
                repo: r.clone(),
                peer: node,
            });
        }
    }

    /// `node` is gone (crashed): its links go, noticed after a while, or
    /// stay stale on the other side.
    pub fn node_gone(&mut self, node: usize) {
        let stale_chance = self.scenario.faults.stale_neighbor;
        let repos: Vec<RepoId> = self.net.topics.keys().cloned().collect();
        for repo in repos {
            let topic = self.net.topics.get_mut(&repo).expect("listed");
            topic.members.remove(&node);
            topic.stale.retain(|(a, b)| *a != node && *b != node);
            let gone: Vec<(usize, usize)> = topic
                .links
                .iter()
                .filter(|(a, b)| *a == node || *b == node)
                .copied()
                .collect();
            for link in gone {
                let topic = self.net.topics.get_mut(&repo).expect("listed");
                topic.links.remove(&link);
                let other = if link.0 == node { link.1 } else { link.0 };
                if self.rng.random_bool(stale_chance) {
                    self.net
                        .topics
                        .get_mut(&repo)
                        .expect("listed")
                        .stale
                        .insert(link);
                    continue;
                }
                let delay = self.between(DETECT_MIN, DETECT_MAX);
                let r = repo.clone();
                self.schedule(
                    delay,
                    Ev::Message {
                        node: other,
                        msg: Msg::NeighborDown {
                            repo: r,
                            peer: node,
                        },
                    },
                );
            }
        }
    }

    /// Broadcast `announcement` on `repo`'s topic from `node`: to its
    /// neighbours, or to every member connected to it.
    pub fn gossip(
        &mut self,
        node: usize,
        repo: &RepoId,
        announcement: &Announcement,
        everyone: bool,
    ) {
        let Some(topic) = self.net.topics.get(repo) else {
            return;
        };
        if !topic.members.contains(&node) {
            return;
        }
        // Breadth first over live links, a latency per hop.
        let mut reached: BTreeMap<usize, Duration> = BTreeMap::new();
        let mut queue = VecDeque::from([(node, Duration::ZERO, 0usize)]);
        reached.insert(node, Duration::ZERO);
        let links: Vec<(usize, usize)> = topic.links.iter().copied().collect();
        while let Some((at, delay, hops)) = queue.pop_front() {
            if !everyone && hops == 1 {
                continue;
            }
            for &(a, b) in &links {
                let next = match (a == at, b == at) {
                    (true, _) => b,
                    (_, true) => a,
                    _ => continue,
                };
                if reached.contains_key(&next) || !self.reachable(at, next) {
                    continue;
                }
                let d = delay + self.latency();
                reached.insert(next, d);
                queue.push_back((next, d, hops + 1));
            }
        }
        reached.remove(&node);
        for (to, delay) in reached {
            let r = repo.clone();
            self.send(to, delay, || Msg::Announcement {
                repo: r.clone(),
                announcement: Box::new(announcement.clone()),
                via: Via::Gossip,
            });
        }
    }

    /// Push `announcement` to `peer` directly.
    pub fn send_direct(
        &mut self,
        node: usize,
        peer: usize,
        repo: &RepoId,
        announcement: &Announcement,
    ) {
        if !self.reachable(node, peer) {
            return;
        }
        let delay = self.latency() * 2;
        let r = repo.clone();
        self.send(peer, delay, || Msg::Announcement {
            repo: r.clone(),
            announcement: Box::new(announcement.clone()),
            via: Via::Direct,
        });
    }

    /// `node` pulls `peer`'s statements of `repos`.
    pub fn pull(&mut self, node: usize, peer: usize, repos: Vec<RepoId>) {
        let life = self.nodes[node].life;
        if !self.reachable(node, peer) {
            let id = self.nodes[peer].key.public();
            self.schedule(
                DIAL_TIMEOUT,
                Ev::Core {
                    node,
                    life,
                    event: Event::Pulled {
                        peer: id,
                        ok: false,
                    },
                },
            );
            return;
        }
        let delay = self.latency();
        self.send(peer, delay, || Msg::PullAsk {
            from: node,
            repos: repos.clone(),
        });
    }

    /// `node` answers a pull from `from` with its statements, each in its
    /// own envelope.
    pub fn answer_pull(&mut self, node: usize, from: usize, repos: Vec<RepoId>) {
        let Some(core) = self.nodes[node].core.as_ref() else {
            return;
        };
        let statements = core.held_statements(&repos);
        for statement in &statements {
            if let Ok(repo) = RepoId::parse(&statement.statement.repo_id) {
                self.check_told_durable(node, &repo, statement);
            }
        }
        let key = self.nodes[node].key.clone();
        let sent_at = self.unix_ms();
        let answers: Vec<(RepoId, Announcement)> = statements
            .into_iter()
            .filter_map(|s| {
                let repo = RepoId::parse(&s.statement.repo_id).ok()?;
                Some((repo, Announcement::new_at(s, &key, vec![], sent_at)))
            })
            .collect();
        self.answer_with(node, from, answers);
    }

    /// Deliver a pull's answer to `from`, if it can be reached.
    pub fn answer_with(&mut self, node: usize, from: usize, answers: Vec<(RepoId, Announcement)>) {
        if !self.reachable(node, from) {
            return;
        }
        let delay = self.latency();
        let life = self.nodes[from].life;
        let id = self.nodes[node].key.public();
        self.schedule(
            delay,
            Ev::Core {
                node: from,
                life,
                event: Event::Pulled { peer: id, ok: true },
            },
        );
        for (repo, announcement) in answers {
            self.schedule(
                delay,
                Ev::Message {
                    node: from,
                    msg: Msg::Announcement {
                        repo,
                        announcement: Box::new(announcement),
                        via: Via::Direct,
                    },
                },
            );
        }
    }

    /// A partition: a random group of nodes loses its links to the rest
    /// for a while.
    pub fn partition(&mut self) {
        if !self.active {
            return;
        }
        if let Some(mean) = self.scenario.faults.partition_every {
            let next = self.exponential(mean);
            self.schedule(next, Ev::Partition);
        }
        let count = self.nodes.len();
        let side: Vec<bool> = (0..count).map(|_| self.rng.random_bool(0.4)).collect();
        let mut pairs = Vec::new();
        for a in 0..count {
            for b in (a + 1)..count {
                if side[a] != side[b] && self.net.cut.insert((a, b)) {
                    pairs.push((a, b));
                }
            }
        }
        if pairs.is_empty() {
            return;
        }
        self.note(|| {
            let group: Vec<String> = (0..count)
                .filter(|n| side[*n])
                .map(|n| format!("n{n}"))
                .collect();
            format!("partition: {{{}}} cut off", group.join(","))
        });
        self.cut_links(&pairs);
        let lasts = self.between(Duration::from_secs(30), Duration::from_secs(600));
        self.schedule(lasts, Ev::Heal { pairs });
    }

    /// Neighbour links over cut pairs are noticed down after a while.
    fn cut_links(&mut self, pairs: &[(usize, usize)]) {
        let cut: BTreeSet<(usize, usize)> = pairs.iter().copied().collect();
        let repos: Vec<RepoId> = self.net.topics.keys().cloned().collect();
        for repo in repos {
            let topic = self.net.topics.get_mut(&repo).expect("listed");
            let gone: Vec<(usize, usize)> = topic.links.intersection(&cut).copied().collect();
            for link in gone {
                self.net
                    .topics
                    .get_mut(&repo)
                    .expect("listed")
                    .links
                    .remove(&link);
                for (to, peer) in [(link.0, link.1), (link.1, link.0)] {
                    let delay = self.between(DETECT_MIN, DETECT_MAX);
                    self.schedule(
                        delay,
                        Ev::Message {
                            node: to,
                            msg: Msg::NeighborDown {
                                repo: repo.clone(),
                                peer,
                            },
                        },
                    );
                }
            }
        }
    }

    pub fn heal(&mut self, pairs: Vec<(usize, usize)>) {
        self.note(|| format!("{} links heal", pairs.len()));
        for p in pairs {
            self.net.cut.remove(&p);
        }
    }

    /// Faults stop: every link heals, crashed nodes restart, PDSes are up.
    pub fn heal_everything(&mut self) {
        self.net.cut.clear();
        for n in 0..self.nodes.len() {
            if self.nodes[n].is_honest() && !self.nodes[n].up {
                self.schedule(Duration::from_secs(1), Ev::Restart { node: n });
            }
        }
        self.pds.all_up();
    }
}
