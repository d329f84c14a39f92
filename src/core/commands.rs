//! Admin commands that change what the node tracks: add, remove, publish,
//! sync. Each either answers at once or leaves its caller waiting on the
//! repository (a queued publish, a `sync` waiting to settle).

use tracing::info;

use super::{
    Core, CoreCommand, Effect, Now, ReplyId,
    queue::Lane,
    repo::{PendingPublish, Repo},
};
use crate::{
    api::{Payload, Reply},
    record::{self, PeerHint},
    repo_id::RepoId,
    state::{Bookkeeping, Locator, Origin, RepoConfig, RepoRow},
    store::Write,
};

impl Core {
    pub(super) fn handle_command(&mut self, reply: ReplyId, command: CoreCommand, now: Now) {
        match command {
            CoreCommand::AddRepo { ref repo_id, .. } | CoreCommand::Publish { ref repo_id, .. }
                if !self.repos.contains_key(repo_id)
                    && let Err(e) = self.policy.check(repo_id, true) =>
            {
                self.reply_err(reply, e)
            }
            CoreCommand::AddRepo {
                repo_id,
                locator,
                peers,
            } => self.add_repo(reply, repo_id, locator, peers, now),
            CoreCommand::RemovePeer { repo_id, node_id } => {
                self.remove_peer(reply, &repo_id, node_id)
            }
            CoreCommand::RemoveRepo { repo_id } => self.remove_repo(reply, &repo_id, now),
            CoreCommand::Publish {
                repo_id,
                source,
                force,
                expected_manifest,
            } => {
                let created = self.track_new(&repo_id, Origin::Publish, None, now);
                if created {
                    info!(repo = %repo_id, "repository added by publish");
                }
                let repo = self.repos.get_mut(&repo_id).expect("tracked above");
                repo.publishes.push_back(PendingPublish {
                    reply,
                    source,
                    force,
                    expected_manifest,
                    created,
                });
                self.queue.push(&repo_id, Lane::Interactive);
                self.pump(now);
            }
            CoreCommand::Sync { repo_id } => self.sync(reply, &repo_id, now),
            CoreCommand::Follow { did } => self.follow(reply, did, now),
            CoreCommand::Unfollow { did } => self.unfollow(reply, did, now),
            CoreCommand::Policy { rule, target } => self.apply_policy(reply, rule, target, now),
            CoreCommand::SetQuota { repo_id, max_bytes } => {
                self.set_quota(reply, &repo_id, max_bytes, now)
            }
            CoreCommand::Replicas {
                repo_id,
                count,
                timeout,
            } => {
                let waiting = self.with_repo(&repo_id, now, |r, ctx| {
                    r.await_replicas(ctx, reply, count, timeout)
                });
                if waiting.is_none() {
                    self.reply_err(reply, format!("repository {repo_id} is not tracked"));
                }
            }
            CoreCommand::Verify { repo_id } => self.verify(reply, repo_id, now),
        }
    }

    /// Start tracking `repo_id` unless it is tracked; returns whether it was new.
    pub(super) fn track_new(
        &mut self,
        repo_id: &RepoId,
        origin: Origin,
        locator: Option<Locator>,
        now: Now,
    ) -> bool {
        if self.repos.contains_key(repo_id) {
            return false;
        }
        let mut config = RepoConfig::new(repo_id.clone(), origin, now.unix_secs());
        config.locator = locator.clone();
        self.out
            .push(Effect::Persist(Write::Config(config.clone())));
        self.repos.insert(
            repo_id.clone(),
            Repo::from_row(RepoRow {
                config,
                record: None,
                held: None,
                bookkeeping: Bookkeeping::default(),
            }),
        );
        if let Some(locator) = locator {
            self.out.push(Effect::TrackRecord {
                repo: repo_id.clone(),
                locator,
            });
        }
        true
    }

    fn add_repo(
        &mut self,
        reply: ReplyId,
        repo_id: RepoId,
        locator: Option<Locator>,
        peers: Vec<PeerHint>,
        now: Now,
    ) {
        let created = self.track_new(&repo_id, Origin::Operator, locator.clone(), now);
        let repo = self.repos.get_mut(&repo_id).expect("tracked above");
        let mut config = repo.config.clone();
        config.origin = Origin::Operator;
        config.operator_peers = record::merge_peers(config.operator_peers, peers.clone());
        let new_locator = locator.filter(|l| repo.config.locator.as_ref() != Some(l));
        if let Some(l) = &new_locator {
            config.locator = Some(l.clone());
        }
        let changed = config != repo.config;
        repo.config = config.clone();
        if changed {
            self.out.push(Effect::Persist(Write::Config(config)));
        }
        if let Some(locator) = new_locator.filter(|_| !created) {
            // Another record: what the old one said no longer counts.
            repo.record = None;
            self.out
                .push(Effect::Persist(Write::Record(repo_id.clone(), None)));
            self.out.push(Effect::TrackRecord {
                repo: repo_id.clone(),
                locator,
            });
        }
        if !peers.is_empty() {
            self.out.push(Effect::LearnAddrs(peers));
        }
        self.ensure_topic(&repo_id, now);
        let message = if created {
            info!(repo = %repo_id, "repository added");
            format!("added {repo_id}")
        } else {
            format!("{repo_id} was already tracked; peers and locator updated")
        };
        self.reply(reply, Reply::Ok(Payload::Done { message }));
    }

    /// Revoke an operator peer: it is no longer trusted from the next
    /// decision on (it may stay known as a learned hint, untrusted).
    fn remove_peer(&mut self, reply: ReplyId, repo_id: &RepoId, node_id: iroh::EndpointId) {
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return self.reply_err(
                reply,
                format!("repository {repo_id} is not tracked; add it with `knotd admin add-repo {repo_id}`"),
            );
        };
        let id = node_id.to_string();
        let before = repo.config.operator_peers.len();
        repo.config.operator_peers.retain(|p| p.node_id != id);
        if repo.config.operator_peers.len() == before {
            let in_record = repo
                .record
                .as_ref()
                .is_some_and(|c| c.record.peers.iter().any(|p| p.node_id == id));
            let why = if in_record {
                "; it is listed in the owner's record, which only the owner can change"
            } else {
                ""
            };
            return self.reply_err(
                reply,
                format!(
                    "{} is not a peer named for {repo_id} with --peer{why}",
                    node_id.fmt_short()
                ),
            );
        }
        self.out
            .push(Effect::Persist(Write::Config(repo.config.clone())));
        info!(repo = %repo_id, peer = %node_id.fmt_short(), "operator peer revoked");
        self.reply(
            reply,
            Reply::Ok(Payload::Done {
                message: format!("{repo_id} no longer trusts {node_id}"),
            }),
        );
    }

    /// Set a repository's storage limit; a state refused before is tried again.
    fn set_quota(&mut self, reply: ReplyId, repo_id: &RepoId, max_bytes: Option<u64>, now: Now) {
        let me = self.me;
        let Some(repo) = self.repos.get_mut(repo_id) else {
            return self.reply_err(
                reply,
                format!("repository {repo_id} is not tracked; add it with `knotd admin add-repo {repo_id}`"),
            );
        };
        repo.config.max_bytes = max_bytes;
        repo.quota_refused = None;
        let config = repo.config.clone();
        let peers = repo.dial_targets(me);
        let polled = config.locator.is_some() && !config.record_deleted;
        self.out.push(Effect::Persist(Write::Config(config)));
        // Ask again for the state that may fit now.
        if polled {
            self.out.push(Effect::PollNow {
                repo: repo_id.clone(),
            });
        }
        for peer in peers {
            self.out.push(Effect::Pull {
                peer,
                repos: vec![repo_id.clone()],
            });
        }
        self.pump(now);
        let message = match max_bytes {
            Some(bytes) => format!("{repo_id} may hold up to {bytes} bytes"),
            None => format!("{repo_id} follows the node's quotas"),
        };
        self.reply(reply, Reply::Ok(Payload::Done { message }));
    }

    fn remove_repo(&mut self, reply: ReplyId, repo_id: &RepoId, now: Now) {
        if !self.repos.contains_key(repo_id) {
            return self.reply_err(
                reply,
                format!("repository {repo_id} is not tracked; add it with `knotd admin add-repo {repo_id}`"),
            );
        }
        info!(repo = %repo_id, "repository removed");
        let busy = self.repos.get(repo_id).is_some_and(|r| r.job.is_some());
        self.forget(repo_id, now);
        match self.discarding.get_mut(repo_id) {
            Some(d) if !busy => d.reply = Some(reply),
            // A job cannot be stopped half-way safely: answer now, and
            // delete the content when it ends.
            _ => self.reply(
                reply,
                Reply::Ok(Payload::Done {
                    message: format!(
                        "removed {repo_id}; its content is deleted when the transfer in progress ends"
                    ),
                }),
            ),
        }
    }

    /// Stop tracking a repository: persist the removal, leave its topic,
    /// stop its record, fail its callers, and delete its content once no
    /// job runs on it. The id may be tracked again at once.
    pub(super) fn forget(&mut self, repo_id: &RepoId, now: Now) {
        let Some(repo) = self.repos.remove(repo_id) else {
            return;
        };
        let finishing = repo.job.as_ref().map(|j| j.id());
        if let Some(super::repo::Running::Publish { publish, .. }) = &repo.job {
            self.reply_err(publish.reply, format!("{repo_id} was removed"));
        }
        self.out
            .push(Effect::Persist(Write::Remove(repo_id.clone())));
        if repo.topic.is_some() {
            self.out.push(Effect::LeaveTopic {
                repo: repo_id.clone(),
            });
        }
        if repo.config.locator.is_some() {
            self.out.push(Effect::UntrackRecord {
                repo: repo_id.clone(),
            });
        }
        let waiters = repo
            .publishes
            .iter()
            .map(|p| p.reply)
            .chain(repo.sync.waiters);
        for to in waiters.collect::<Vec<_>>() {
            self.reply_err(to, format!("{repo_id} was removed"));
        }
        self.verify_forgotten(repo_id);
        self.discarding.insert(
            repo_id.clone(),
            super::repo::Discarding {
                finishing,
                ..Default::default()
            },
        );
        self.queue.push(repo_id, Lane::Interactive);
        self.pump(now);
    }

    /// `sync`: follow a repository never seen (its record found through
    /// the owner's DID document, kept if a state arrives), then wait on it
    /// (see [`super::repo::Repo::sync`]).
    fn sync(&mut self, reply: ReplyId, repo_id: &RepoId, now: Now) {
        if !self.repos.contains_key(repo_id) {
            if let Err(e) = self.policy.check(repo_id, false) {
                return self.reply_err(reply, e);
            }
            let locator = Locator::default_for(repo_id, None);
            self.track_new(repo_id, Origin::Sync, Some(locator), now);
            info!(repo = %repo_id, "following a repository first asked for by sync");
            self.ensure_topic(repo_id, now);
        }
        self.with_repo(repo_id, now, |r, ctx| r.sync(ctx, reply));
    }
}
