//! The seeding policy: which repositories this node agrees to hold.
//!
//! A blocked DID or repository is never tracked, whoever asks; blocking one
//! that is tracked removes it (and a follow of that DID). Repositories the
//! operator asks for (add-repo, publish, follow) are otherwise allowed;
//! those nobody asked for (a `git clone knot://` of an unknown repository)
//! follow `policy.default`, unless the allow list names the repository or
//! its DID. A home server runs `default = "deny"` and seeds only what its
//! owner follows; a public seeder runs `"allow"` and blocks what it must
//! not serve. The lists are persisted.

use std::collections::BTreeSet;

use tracing::info;

use super::{Core, Effect, Now, ReplyId};
use crate::{
    api::{Payload, PolicyDefault, PolicyRule, PolicyView, Reply},
    repo_id::{RepoId, validate_did},
    store::Write,
};

/// The policy in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// For repositories nobody asked for.
    pub default: PolicyDefault,
    /// DIDs and repository ids always allowed.
    pub allow: BTreeSet<String>,
    /// DIDs and repository ids never tracked.
    pub block: BTreeSet<String>,
}

impl Policy {
    /// Whether `repo_id` may be tracked: `explicit` when the operator asked.
    pub fn check(&self, repo_id: &RepoId, explicit: bool) -> Result<(), String> {
        let names = [repo_id.as_str(), repo_id.did()];
        if let Some(name) = names.iter().find(|n| self.block.contains(**n)) {
            return Err(format!(
                "{repo_id} is blocked by this node's policy ({name}); `knotd admin policy clear {name}` lifts it"
            ));
        }
        let allowed = explicit
            || self.default == PolicyDefault::Allow
            || names.iter().any(|n| self.allow.contains(*n));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "this knot does not seed {repo_id}: its policy seeds only repositories its operator adds, follows or allows (policy.default = \"deny\"); the operator can `knotd admin policy allow {}`",
                repo_id.did()
            ))
        }
    }
}

/// A policy target: a DID or a repository id.
fn parse_target(target: &str) -> Result<String, String> {
    let target = target.trim();
    if target.contains('/') {
        RepoId::parse(target)
            .map(|r| r.to_string())
            .map_err(|e| format!("{target:?} is not a repository id: {e}"))
    } else {
        validate_did(target)
            .map(|()| target.to_string())
            .map_err(|e| format!("{target:?} is neither a DID nor a repository id: {e}"))
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
        let target = match parse_target(&target) {
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
            self.out.push(Effect::UntrackIdentity {
                did: target.to_string(),
            });
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
