//! Followed identities: every `app.knot.repo` record a followed DID lists is
//! a repository the node tracks, up to `max_repos_per_identity` per
//! identity. A listing tracks new records (their state judged like any
//! polled record), and notices records that are gone: such a repository is
//! retired (the trust its record granted is withdrawn, it is no longer
//! polled and leaves its topic) and removed after the grace period unless
//! the record comes back; retired repositories count towards the limit
//! until then. Unfollowing removes the repositories the identity brought.

use std::{collections::BTreeSet, time::Duration};

use tracing::{info, warn};

use super::{
    io::{Effect, Now, RecordPoll, ReplyId, TimerKey, Write},
    machine::Core,
    tables::Follow,
};
use crate::{
    api::{FollowSummary, NodeEvent, Payload, Reply},
    record::{COLLECTION, ListedRecord, RepoRecord},
    repo_id::RepoId,
    state::{FollowConfig, Locator, Origin},
};

impl Core {
    /// Follow persisted identities again after a restart.
    pub(super) fn load_follows(&mut self, follows: Vec<FollowConfig>, now: Now) {
        for config in follows {
            self.reads.listings.track(config.did.clone(), now.at);
            self.follows.insert(
                config.did.clone(),
                Follow {
                    config,
                    last_list: None,
                    last_error: None,
                    waiters: Vec::new(),
                },
            );
        }
    }

    /// `follow <did>`: answered after the first listing.
    pub(super) fn follow(&mut self, reply: ReplyId, did: String, now: Now) {
        if self.policy.block.contains(&did) {
            return self.reply_err(
                reply,
                format!("{did} is blocked by this node's policy; `knotd admin policy clear {did}` lifts it"),
            );
        }
        let follow = self.follows.entry(did.clone()).or_insert_with(|| Follow {
            config: FollowConfig {
                did: did.clone(),
                added_at: now.unix_secs(),
            },
            last_list: None,
            last_error: None,
            waiters: Vec::new(),
        });
        follow.waiters.push(reply);
        let config = follow.config.clone();
        self.out.push(Effect::Persist(Write::Follow(config)));
        if !self.reads.listings.read_now(&did, now.at) {
            self.reads.listings.track(did, now.at);
        }
    }

    /// `unfollow <did>`: stop listing and remove the repositories it brought.
    pub(super) fn unfollow(&mut self, reply: ReplyId, did: String, now: Now) {
        let Some(follow) = self.follows.remove(&did) else {
            return self.reply_err(reply, format!("{did} is not followed"));
        };
        for to in follow.waiters {
            self.reply_err(to, format!("{did} was unfollowed"));
        }
        self.out.push(Effect::Persist(Write::Unfollow(did.clone())));
        self.reads.listings.untrack(&did);
        let brought: Vec<RepoId> = self
            .repos
            .iter()
            .filter(|(_, r)| r.config.followed_via.as_deref() == Some(did.as_str()))
            .filter(|(_, r)| r.config.origin == Origin::Follow)
            .map(|(id, _)| id.clone())
            .collect();
        for repo in &brought {
            self.forget(repo, now);
        }
        info!(%did, removed = brought.len(), "identity unfollowed");
        self.reply(
            reply,
            Reply::Ok(Payload::Done {
                message: format!(
                    "unfollowed {did}; removed the {} repositories it had brought",
                    brought.len()
                ),
            }),
        );
    }

    /// What a current listing of `did` means: new records tracked, records
    /// gone noticed, `follow` callers answered.
    pub(super) fn take_listing(
        &mut self,
        did: &str,
        result: Result<(Vec<ListedRecord>, bool), String>,
        now: Now,
    ) {
        let Some(follow) = self.follows.get_mut(did) else {
            return;
        };
        let (records, complete) = match result {
            Ok(listing) => listing,
            Err(error) => {
                follow.last_error = Some(error.clone());
                let waiters = std::mem::take(&mut follow.waiters);
                for to in waiters {
                    self.reply_err(
                        to,
                        format!("following {did}, but listing its repositories failed: {error}; knotd keeps trying"),
                    );
                }
                return;
            }
        };
        follow.last_list = Some(now.unix_secs());
        follow.last_error = None;
        let waiters = std::mem::take(&mut follow.waiters);
        let limit = self.settings.max_repos_per_identity;
        let mut brought = self.brought_by(did).count();
        let mut refused = 0usize;
        let mut listed = BTreeSet::new();
        for item in records {
            let record = match RepoRecord::from_json(item.value) {
                Ok(r) if r.repo_id.did() == did => r,
                Ok(r) => {
                    warn!(%did, rkey = %item.rkey, repo = %r.repo_id, "a listed record names another account's repository; ignored");
                    continue;
                }
                Err(e) => {
                    warn!(%did, rkey = %item.rkey, error = %e, "a listed record is invalid; ignored");
                    continue;
                }
            };
            let repo_id = record.repo_id.clone();
            if !listed.insert(repo_id.clone()) {
                continue; // two records for one repository: the first counts
            }
            if !self.repos.contains_key(&repo_id) && brought >= limit {
                refused += 1;
                continue;
            }
            if self.take_listed(did, &item.rkey, record, now) {
                brought += 1;
            }
        }
        if complete {
            self.notice_deleted(did, &listed, now);
        }
        let refusal = (refused > 0).then(|| self.refuse_over_limit(did, refused));
        let tracked = listed.len() - refused;
        for to in waiters {
            let mut message = format!("following {did}: {tracked} repositories listed and tracked");
            if let Some(refusal) = &refusal {
                message = format!("{message}; {refusal}");
            }
            self.reply(to, Reply::Ok(Payload::Done { message }));
        }
        self.pump(now);
    }

    /// The repositories `did` brought (retired ones included).
    fn brought_by<'a>(&'a self, did: &'a str) -> impl Iterator<Item = &'a RepoId> + 'a {
        self.repos
            .iter()
            .filter(move |(_, r)| {
                r.config.origin == Origin::Follow && r.config.followed_via.as_deref() == Some(did)
            })
            .map(|(id, _)| id)
    }

    /// `did` lists more repositories than `max_repos_per_identity`: say so
    /// (log, event, the identity's last error in `status`); returns the text.
    fn refuse_over_limit(&mut self, did: &str, refused: usize) -> String {
        let limit = self.settings.max_repos_per_identity;
        let message = format!(
            "{refused} listed repositories not tracked: {did} already brought {limit}, the most [follow] max_repos_per_identity allows (repositories whose records were deleted count until they are removed); raise the limit to take them"
        );
        warn!(%did, refused, limit, "a followed identity lists more repositories than the limit");
        if let Some(follow) = self.follows.get_mut(did) {
            follow.last_error = Some(message.clone());
        }
        self.out.push(Effect::Notify {
            repo: None,
            event: NodeEvent::FollowLimit {
                did: did.to_string(),
                limit,
                refused,
            },
        });
        message
    }

    /// Track (or refresh) a repository a followed identity lists; returns
    /// whether it was new.
    fn take_listed(&mut self, did: &str, rkey: &str, record: RepoRecord, now: Now) -> bool {
        let repo_id = record.repo_id.clone();
        if let Err(e) = self.policy.check(&repo_id, true) {
            tracing::debug!(repo = %repo_id, reason = %e, "not tracking a blocked repository");
            return false;
        }
        let locator = Locator {
            pds: None,
            did: did.to_string(),
            collection: COLLECTION.to_string(),
            rkey: rkey.to_string(),
        };
        let new = !self.repos.contains_key(&repo_id);
        if new {
            self.track_new(&repo_id, Origin::Follow, Some(locator.clone()), now);
            let repo = self.repos.get_mut(&repo_id).expect("tracked above");
            repo.config.followed_via = Some(did.to_string());
            let config = repo.config.clone();
            self.out.push(Effect::Persist(Write::Config(config)));
            info!(repo = %repo_id, %did, "tracking a repository of a followed identity");
        }
        let repo = self.repos.get_mut(&repo_id).expect("tracked");
        if repo.config.followed_via.as_deref() != Some(did) {
            return new; // the operator's own; its record is polled on its own
        }
        if repo.retired() {
            repo.config.locator = Some(locator);
            self.with_repo(&repo_id, now, |r, _| r.record_back());
        }
        self.take_polled(&repo_id, RecordPoll::Found(record), now);
        new
    }

    /// Repositories a followed identity brought whose record is gone from a
    /// complete listing: the trust their records granted is withdrawn and
    /// they are retired (see [`Core::record_gone`]).
    fn notice_deleted(&mut self, did: &str, listed: &BTreeSet<RepoId>, now: Now) {
        let gone: Vec<RepoId> = self
            .repos
            .iter()
            .filter(|(id, r)| {
                r.config.followed_via.as_deref() == Some(did)
                    && !r.config.record_deleted
                    && !listed.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for repo_id in &gone {
            self.record_gone(repo_id, now);
            info!(repo = %repo_id, %did, "the record is gone from the followed identity");
        }
        if !gone.is_empty() {
            self.arm_retired_removal(now);
        }
    }

    /// When a retired repository is removed (Unix seconds), if it is retired.
    pub(super) fn removal_time(&self, repo_id: &RepoId) -> Option<u64> {
        let repo = self.repos.get(repo_id).filter(|r| r.retired())?;
        let grace = self.settings.retired_grace.as_secs();
        Some(repo.config.record_deleted_at?.saturating_add(grace))
    }

    /// Set the removal timer to the earliest retired repository's time.
    pub(super) fn arm_retired_removal(&mut self, now: Now) {
        let next = self
            .repos
            .keys()
            .filter_map(|id| self.removal_time(id))
            .min();
        if let Some(due) = next {
            let wait = Duration::from_secs(due.saturating_sub(now.unix_secs()));
            self.set_timer(TimerKey::RemoveRetired, super::later(now.at, wait));
        }
    }

    /// Remove the retired repositories whose grace period is over.
    pub(super) fn remove_retired(&mut self, now: Now) {
        let due: Vec<RepoId> = self
            .repos
            .keys()
            .filter(|id| self.removal_time(id).is_some_and(|t| t <= now.unix_secs()))
            .cloned()
            .collect();
        for repo_id in &due {
            info!(repo = %repo_id, "removing a repository whose record a followed identity deleted; its grace period is over");
            self.forget(repo_id, now);
        }
        self.arm_retired_removal(now);
    }

    /// The followed identities, for `status`.
    pub fn follow_summaries(&self) -> Vec<FollowSummary> {
        self.follows
            .values()
            .map(|f| FollowSummary {
                did: f.config.did.clone(),
                repos: self
                    .repos
                    .values()
                    .filter(|r| r.config.followed_via.as_deref() == Some(f.config.did.as_str()))
                    .count(),
                last_list: f.last_list,
                last_error: f.last_error.clone(),
            })
            .collect()
    }
}
