//! Followed identities: every `app.knot.repo` record a followed DID lists is
//! a repository the node tracks. A listing tracks new records (their state
//! judged like any polled record), and notices records that are gone: such a
//! repository stops being polled and keeps its content until the operator
//! removes it. Unfollowing removes the repositories the identity brought.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::{Core, Effect, Now, ReplyId};
use crate::{
    admin::{FollowSummary, Payload, Reply},
    atproto::ListedRecord,
    record::{COLLECTION, RepoRecord},
    repo_id::RepoId,
    state::{FollowConfig, Locator, Origin},
    store::Write,
};

/// A followed identity in the core.
#[derive(Debug, Clone, PartialEq)]
pub struct Follow {
    /// What is persisted.
    pub config: FollowConfig,
    /// Unix time of the last successful listing.
    pub last_list: Option<u64>,
    /// The last listing error.
    pub last_error: Option<String>,
    /// Callers of `follow` waiting for the first listing.
    pub waiters: Vec<ReplyId>,
}

impl Core {
    /// Follow persisted identities again after a restart.
    pub(super) fn load_follows(&mut self, follows: Vec<FollowConfig>) {
        for config in follows {
            self.out.push(Effect::TrackIdentity {
                did: config.did.clone(),
            });
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
        self.out.push(Effect::TrackIdentity { did });
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
        self.out.push(Effect::UntrackIdentity { did: did.clone() });
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

    pub(super) fn handle_listed(
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
            self.take_listed(did, &item.rkey, record, now);
        }
        if complete {
            self.notice_deleted(did, &listed);
        }
        for to in waiters {
            self.reply(
                to,
                Reply::Ok(Payload::Done {
                    message: format!(
                        "following {did}: {} repositories listed and tracked",
                        listed.len()
                    ),
                }),
            );
        }
    }

    /// Track (or refresh) a repository a followed identity lists.
    fn take_listed(&mut self, did: &str, rkey: &str, record: RepoRecord, now: Now) {
        let repo_id = record.repo_id.clone();
        if let Err(e) = self.policy.check(&repo_id, true) {
            tracing::debug!(repo = %repo_id, reason = %e, "not tracking a blocked repository");
            return;
        }
        let locator = Locator {
            pds: None,
            did: did.to_string(),
            collection: COLLECTION.to_string(),
            rkey: rkey.to_string(),
        };
        if !self.repos.contains_key(&repo_id) {
            self.track_new(&repo_id, Origin::Follow, Some(locator.clone()), now);
            let repo = self.repos.get_mut(&repo_id).expect("tracked above");
            repo.config.followed_via = Some(did.to_string());
            let config = repo.config.clone();
            self.out.push(Effect::Persist(Write::Config(config)));
            info!(repo = %repo_id, %did, "tracking a repository of a followed identity");
        }
        let repo = self.repos.get_mut(&repo_id).expect("tracked");
        if repo.config.followed_via.as_deref() != Some(did) {
            return; // the operator's own; its record is polled on its own
        }
        if repo.config.record_deleted {
            repo.config.record_deleted = false;
            repo.config.locator = Some(locator.clone());
            let config = repo.config.clone();
            self.out.push(Effect::Persist(Write::Config(config)));
            self.out.push(Effect::TrackRecord {
                repo: repo_id.clone(),
                locator,
            });
        }
        self.handle_polled(&repo_id, Ok(record), now);
    }

    /// Repositories a followed identity brought whose record is gone: stop
    /// polling them, keep their content.
    fn notice_deleted(&mut self, did: &str, listed: &BTreeSet<RepoId>) {
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
        for repo_id in gone {
            let repo = self.repos.get_mut(&repo_id).expect("listed above");
            repo.config.record_deleted = true;
            let config = repo.config.clone();
            self.out.push(Effect::Persist(Write::Config(config)));
            self.out.push(Effect::UntrackRecord {
                repo: repo_id.clone(),
            });
            info!(repo = %repo_id, %did, "the record is gone from the followed identity; its content stays until removed");
        }
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
