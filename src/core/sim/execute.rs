//! The executor of a simulated node's effects: what the actor does for a
//! real node (writes in commits, timers, jobs, topics, pushes, pulls,
//! reads, write-backs, what is served), done against the world.

use super::model::*;
use std::time::Duration;

use crate::{
    announce::Announcement,
    api::Reply,
    core::{Audience, Effect, Event, JobSpec, ReplyId, Subject, Write},
};

impl World {
    /// Execute `effects` of `node`'s core in order, as the actor does:
    /// consecutive writes are one commit; after a failed durable commit no
    /// announcement of a repository it wrote goes out, successful replies
    /// become errors, and the core hears of it right after the batch.
    pub fn execute(&mut self, node: usize, effects: Vec<Effect>) {
        let mut writes = Vec::new();
        let mut failed: Vec<Subject> = Vec::new();
        for mut effect in effects {
            if !self.nodes[node].up {
                return;
            }
            if let Effect::Persist(write) = effect {
                writes.push(write);
                continue;
            }
            if !writes.is_empty() {
                self.commit(node, std::mem::take(&mut writes), &mut failed);
            }
            if !failed.is_empty() {
                match &mut effect {
                    Effect::Announce { repo, .. }
                        if failed.contains(&Subject::Repo(repo.clone())) =>
                    {
                        continue;
                    }
                    Effect::Reply { reply, .. } if matches!(reply, Reply::Ok(_)) => {
                        *reply = Reply::Error("the database could not record this change".into());
                    }
                    _ => {}
                }
            }
            self.execute_one(node, effect);
        }
        if !writes.is_empty() && self.nodes[node].up {
            self.commit(node, writes, &mut failed);
        }
        if !failed.is_empty() && self.nodes[node].up {
            failed.sort();
            failed.dedup();
            self.deliver(
                node,
                Event::PersistFailed {
                    subjects: failed,
                    error: "No space left on device (os error 28)".into(),
                },
            );
        }
    }

    /// One commit of consecutive writes: lazy ones wait for a flush, a
    /// durable one takes them along, all or nothing.
    fn commit(&mut self, node: usize, writes: Vec<Write>, failed: &mut Vec<Subject>) {
        let durable: Vec<Subject> = writes
            .iter()
            .filter(|w| w.needs_durability())
            .map(Write::subject)
            .collect();
        if !durable.is_empty() && self.nodes[node].disk_full {
            // Nothing reaches the disk; the lazy writes stay waiting.
            for write in writes.into_iter().filter(|w| !w.needs_durability()) {
                self.persist(node, write);
            }
            failed.extend(durable);
            return;
        }
        for write in writes {
            self.persist(node, write);
        }
    }

    fn execute_one(&mut self, node: usize, effect: Effect) {
        let life = self.nodes[node].life;
        match effect {
            Effect::Persist(_) => unreachable!("grouped by execute"),
            Effect::Reply { to, reply } => self.replied(node, to, reply),
            Effect::StartJob {
                repo, job, spec, ..
            } => {
                if let JobSpec::Fetch { providers, .. } = &spec {
                    self.check_providers(node, &repo, providers);
                }
                self.start_job(node, repo, job, spec);
            }
            Effect::JoinTopic { repo, peers } => {
                let peers = self.known(&peers);
                self.join_topic(node, &repo, &peers);
            }
            Effect::DialPeers { repo, peers } => {
                let peers = self.known(&peers);
                self.dial(node, &repo, &peers);
            }
            Effect::LeaveTopic { repo } => self.leave_topic(node, &repo),
            Effect::Announce {
                repo,
                statement,
                audience,
            } => {
                self.check_told_durable(node, &repo, &statement);
                let announcement =
                    Announcement::new_at(statement, &self.nodes[node].key, vec![], self.unix_ms());
                let (topic, direct) = match audience {
                    Audience::Everyone { direct } => (Some(true), direct),
                    Audience::Neighbors { direct } => (Some(false), direct),
                    Audience::Direct { direct } => (None, direct),
                };
                let seq = announcement.statement.statement.seq;
                self.note(|| {
                    let to = match topic {
                        Some(true) => "the topic",
                        Some(false) => "neighbours",
                        None => "no topic",
                    };
                    format!(
                        "n{node} -> announces {repo} seq {seq} to {to} and {} peers",
                        direct.len()
                    )
                });
                self.check_announce(node, &repo, seq, topic == Some(true), direct.len());
                if topic == Some(false) {
                    self.check_catch_up(node, &repo, seq, &direct);
                }
                if let Some(everyone) = topic {
                    self.gossip(node, &repo, &announcement, everyone);
                }
                for peer in self.known(&direct) {
                    self.send_direct(node, peer, &repo, &announcement);
                }
            }
            Effect::Pull { peer, repos } => match self.index_of(&peer) {
                Some(peer) => self.pull(node, peer, repos),
                None => {
                    let delay = Duration::from_secs(5);
                    self.schedule(
                        delay,
                        Ev::Core {
                            node,
                            life,
                            event: Event::Pulled { peer, ok: false },
                        },
                    );
                }
            },
            Effect::LearnAddrs(_) => {}
            Effect::ProbeReplica {
                repo,
                peer,
                manifest,
            } => self.probe(node, repo, peer, manifest),
            Effect::PollRecord {
                repo,
                locator,
                read,
            } => {
                let delay = self.between(Duration::from_millis(20), Duration::from_millis(150));
                self.schedule(
                    delay,
                    Ev::Poll {
                        node,
                        life,
                        repo,
                        locator,
                        read,
                    },
                );
            }
            Effect::ListIdentity { did, read } => {
                let delay = self.between(Duration::from_millis(20), Duration::from_millis(150));
                self.schedule(
                    delay,
                    Ev::List {
                        node,
                        life,
                        did,
                        read,
                    },
                );
            }
            Effect::WriteBack {
                repo,
                collection: _,
                rkey,
                head,
                manifest,
                seq,
            } => self.write_back(node, repo, rkey, head, manifest, seq),
            Effect::Notify { .. } => {}
            Effect::Served { repo, state } => {
                let served = &mut self.nodes[node].served;
                match state {
                    Some(state) => served.insert(repo, state),
                    None => served.remove(&repo),
                };
            }
            Effect::SetTimer { key, at } => {
                let at = self.virtual_at(at).max(self.now);
                self.nodes[node].timers.insert(key.clone(), at);
                self.schedule_at(at, Ev::Timer { node, life, key });
            }
        }
    }

    fn persist(&mut self, node: usize, write: Write) {
        let life = self.nodes[node].life;
        let n = &mut self.nodes[node];
        if write.needs_durability() {
            if let Write::Held(_, Some(held)) = &write
                && let Some(m) = self.content.manifests.get_mut(&held.manifest_hash())
            {
                m.durable = true;
            }
            let n = &mut self.nodes[node];
            // A durable commit takes the waiting lazy writes along.
            n.flush();
            n.disk.apply(write);
            return;
        }
        n.pending.insert(write.key().to_string(), write);
        if !n.flush_scheduled {
            n.flush_scheduled = true;
            self.schedule(FLUSH_AFTER, Ev::Flush { node, life });
        }
    }

    fn replied(&mut self, node: usize, to: ReplyId, reply: Reply) {
        let Some(command) = self.nodes[node].waiting.remove(&to) else {
            return;
        };
        self.check_reply(node, &command, &reply);
    }
}
