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

use crate::{
    api::PolicyDefault,
    repo_id::{RepoId, validate_did},
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
pub(super) fn parse_target(target: &str) -> Result<String, String> {
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
