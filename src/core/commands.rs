//! Admin commands that change what the node tracks: add, remove, publish,
//! sync. Each either answers at once or leaves its caller waiting on the
//! repository (a queued publish, a `sync` waiting to settle).

use tracing::info;

use super::{
    io::{CoreCommand, Effect, Now, ReplyId, Write},
    machine::Core,
    policy::Policy,
    queue::Lane,
    repo::{PendingPublish, Repo},
};
use crate::{
    api::{Payload, PolicyRule, PolicyView, Reply},
    record::PeerHint,
    repo_id::RepoId,
    state::{Bookkeeping, Locator, Origin, RepoConfig, RepoRow},
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
                if self
                    .with_repo(&repo_id, now, |r, _| r.remove_peer(reply, node_id))
                    .is_none()
                {
                    self.reply_err(reply, not_tracked(&repo_id));
                }
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
                // Joined while it publishes, so the topic has neighbours
                // by the time the new state is announced.
                self.wake(&repo_id, now);
                self.queue.push(&repo_id, Lane::Interactive);
                self.pump(now);
            }
            CoreCommand::Sync { repo_id } => self.sync(reply, &repo_id, now),
            CoreCommand::Follow { did } => self.follow(reply, did, now),
            CoreCommand::Unfollow { did } => self.unfollow(reply, did, now),
            CoreCommand::Policy { rule, target } => self.apply_policy(reply, rule, target, now),
            CoreCommand::SetQuota { repo_id, max_bytes } => {
                if self
                    .with_repo(&repo_id, now, |r, ctx| r.set_quota(ctx, reply, max_bytes))
                    .is_none()
                {
                    self.reply_err(reply, not_tracked(&repo_id));
                }
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
            Box::new(Repo::from_row(RepoRow {
                config,
                record: None,
                held: None,
                bookkeeping: Bookkeeping::default(),
            })),
        );
        if locator.is_some() {
            self.reads.records.track(repo_id.clone(), now.at);
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
        self.with_repo(&repo_id, now, |r, ctx| {
            r.configure(ctx, locator, peers, created)
        });
        let message = if created {
            info!(repo = %repo_id, "repository added");
            format!("added {repo_id}")
        } else {
            format!("{repo_id} was already tracked; peers and locator updated")
        };
        self.reply(reply, Reply::Ok(Payload::Done { message }));
    }

    fn remove_repo(&mut self, reply: ReplyId, repo_id: &RepoId, now: Now) {
        if !self.repos.contains_key(repo_id) {
            return self.reply_err(reply, not_tracked(repo_id));
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

    /// Stop tracking a repository: persist the removal, stop serving it,
    /// leave its topic, stop its record, fail its callers, and delete its
    /// content once no job runs on it. The id may be tracked again at once.
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
        if repo.held.is_some() {
            // Not served from now on, though its copy is deleted later.
            self.out.push(Effect::Served {
                repo: repo_id.clone(),
                state: None,
            });
        }
        if repo.topic.is_some() {
            self.out.push(Effect::LeaveTopic {
                repo: repo_id.clone(),
            });
        }
        self.reads.records.untrack(repo_id);
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
            self.wake(repo_id, now);
        }
        self.with_repo(repo_id, now, |r, ctx| r.sync(ctx, reply));
    }
}

impl Core {
    /// Load the persisted lists over the configured default.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// `policy allow|block|clear <target>`.
    pub(super) fn apply_policy(
        &mut self,
        reply: ReplyId,
        rule: PolicyRule,
        target: String,
        now: Now,
    ) {
        let target = match super::policy::parse_target(&target) {
            Ok(t) => t,
            Err(e) => return self.reply_err(reply, e),
        };
        self.policy.allow.remove(&target);
        self.policy.block.remove(&target);
        let message = match rule {
            PolicyRule::Allow => {
                self.policy.allow.insert(target.clone());
                format!("{target} is allowed")
            }
            PolicyRule::Clear => format!("{target} follows the default policy"),
            PolicyRule::Block => {
                self.policy.block.insert(target.clone());
                let removed = self.remove_blocked(&target, now);
                format!("{target} is blocked; {removed} tracked repositories removed")
            }
        };
        self.out.push(Effect::Persist(Write::Policy(
            target.clone(),
            (rule != PolicyRule::Clear).then_some(rule),
        )));
        info!(%target, ?rule, "policy changed");
        self.reply(reply, Reply::Ok(Payload::Done { message }));
    }

    /// Stop tracking (and following) what `target` blocks.
    fn remove_blocked(&mut self, target: &str, now: Now) -> usize {
        let blocked: Vec<RepoId> = self
            .repos
            .keys()
            .filter(|id| id.as_str() == target || id.did() == target)
            .cloned()
            .collect();
        for repo in &blocked {
            self.forget(repo, now);
        }
        if self.follows.remove(target).is_some() {
            self.out
                .push(Effect::Persist(Write::Unfollow(target.to_string())));
            self.reads.listings.untrack(&target.to_string());
        }
        blocked.len()
    }

    /// The policy, for `policy show`.
    pub fn policy_view(&self) -> PolicyView {
        PolicyView {
            default: self.policy.default,
            allow: self.policy.allow.iter().cloned().collect(),
            block: self.policy.block.iter().cloned().collect(),
        }
    }
}

/// What a command about a repository the node does not track is told.
pub(super) fn not_tracked(repo_id: &RepoId) -> String {
    format!("repository {repo_id} is not tracked; add it with `knotd admin add-repo {repo_id}`")
}
