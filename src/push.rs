//! What a `git push` through `git-remote-knot` asks for, turned into the
//! complete ref state to publish.
//!
//! git has already applied its own rules (fast-forward, tags, fetch first)
//! to the refs `list for-push` reported before it sends `push` lines; a
//! `+` marks an update that needs force. This module parses those lines,
//! applies the accepted updates to the node's ref state, keeps `HEAD`
//! pointing at a branch that exists, and says which objects the pack must
//! carry. Pure: the caller resolves local names to object ids. Nothing
//! here survives a restart.

use std::collections::BTreeMap;

use crate::git::{GitError, Head, ObjectId, RefSet, validate_ref_name};

/// Errors of a push request.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A `push` line is not `[+]<src>:<dst>`.
    #[error("malformed push line {0:?}: expected [+]<src>:<dst>")]
    Malformed(String),
    /// A destination is not a valid ref name.
    #[error("cannot push to {name:?}: {source}")]
    BadDestination {
        /// The destination.
        name: String,
        /// Why.
        source: GitError,
    },
}

/// One `push` line from git: `[+]<src>:<dst>`, `:<dst>` deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSpec {
    /// Whether git marked the update as forced.
    pub force: bool,
    /// The local ref name or object (`None`: delete `dst`).
    pub src: Option<String>,
    /// The ref to update on the node.
    pub dst: String,
}

impl PushSpec {
    /// Parse the argument of a `push` line.
    pub fn parse(line: &str) -> Result<PushSpec, PushError> {
        let (force, spec) = match line.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (src, dst) = spec
            .split_once(':')
            .ok_or_else(|| PushError::Malformed(line.to_string()))?;
        if dst.is_empty() || dst.contains(char::is_whitespace) {
            return Err(PushError::Malformed(line.to_string()));
        }
        validate_ref_name(dst).map_err(|source| PushError::BadDestination {
            name: dst.to_string(),
            source,
        })?;
        Ok(PushSpec {
            force,
            src: (!src.is_empty()).then(|| src.to_string()),
            dst: dst.to_string(),
        })
    }
}

/// The outcome for one pushed ref, as git-remote-helpers reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefResult {
    /// Updated (or already there).
    Ok,
    /// Refused, with the reason git shows.
    Error(String),
}

/// The ref state a push publishes, and what the pack must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPlan {
    /// The complete ref state after the accepted updates.
    pub refs: RefSet,
    /// Objects the node must have after the push (new ref values).
    pub tips: Vec<ObjectId>,
    /// Whether any accepted update was forced.
    pub force: bool,
    /// Per destination, in the order git sent them.
    pub results: Vec<(String, RefResult)>,
    /// Whether anything changes.
    pub changed: bool,
}

impl PushPlan {
    /// The `ok <dst>` / `error <dst> <why>` lines for git, with every
    /// accepted ref failed with `why` when the publish itself failed.
    pub fn reply_lines(&self, publish_failed: Option<&str>) -> Vec<String> {
        self.results
            .iter()
            .map(|(dst, result)| match (result, publish_failed) {
                (RefResult::Error(why), _) => format!("error {dst} {}", one_line(why)),
                (RefResult::Ok, Some(why)) => format!("error {dst} {}", one_line(why)),
                (RefResult::Ok, None) => format!("ok {dst}"),
            })
            .collect()
    }
}

/// Apply `specs` to the node's `remote` state. `resolved` maps each spec's
/// `src` to the object it names locally (a missing entry refuses that
/// ref); `local_branch` is the ref the user's `HEAD` points at, preferred
/// as the new `HEAD` of a repository that has none yet.
pub fn plan(
    remote: &RefSet,
    specs: &[PushSpec],
    resolved: &BTreeMap<String, ObjectId>,
    local_branch: Option<&str>,
) -> PushPlan {
    let mut refs = remote.clone();
    let mut tips = Vec::new();
    let mut force = false;
    let mut results = Vec::with_capacity(specs.len());
    let mut accepted = Vec::new();
    for spec in specs {
        let result = match &spec.src {
            None => match refs.refs.remove(&spec.dst) {
                Some(_) => RefResult::Ok,
                None => RefResult::Error("remote ref does not exist".into()),
            },
            Some(src) => match resolved.get(src) {
                Some(id) => {
                    if refs.refs.get(&spec.dst) != Some(id) {
                        refs.refs.insert(spec.dst.clone(), id.clone());
                    }
                    tips.push(id.clone());
                    RefResult::Ok
                }
                None => RefResult::Error(format!("src refspec {src} does not match any object")),
            },
        };
        if result == RefResult::Ok {
            force |= spec.force;
            accepted.push(spec);
        }
        results.push((spec.dst.clone(), result));
    }
    fix_head(&mut refs, &accepted, local_branch);
    let changed = refs != *remote;
    tips.sort();
    tips.dedup();
    PushPlan {
        refs,
        tips,
        force,
        results,
        changed,
    }
}

/// Keep `HEAD` on a branch that exists: a new repository's `HEAD` (or one
/// whose branch was deleted) goes to the branch pushed from the user's
/// current branch, else the first branch pushed, else any branch.
fn fix_head(refs: &mut RefSet, accepted: &[&PushSpec], local_branch: Option<&str>) {
    let valid = match &refs.head {
        Some(Head::Symbolic(target)) => refs.refs.contains_key(target),
        Some(Head::Detached(_)) => true,
        None => false,
    };
    if valid {
        return;
    }
    let pushed_branch =
        |s: &&&PushSpec| s.dst.starts_with("refs/heads/") && refs.refs.contains_key(&s.dst);
    let choice = accepted
        .iter()
        .filter(pushed_branch)
        .find(|s| s.src.as_deref().is_some() && s.src.as_deref() == local_branch)
        .or_else(|| accepted.iter().find(pushed_branch))
        .map(|s| s.dst.clone())
        .or_else(|| {
            refs.refs
                .keys()
                .find(|name| name.starts_with("refs/heads/"))
                .cloned()
        });
    if let Some(target) = choice {
        refs.head = Some(Head::Symbolic(target));
    } else if refs.refs.is_empty() {
        refs.head = None;
    }
}

/// The first line of `text`, for one-line protocol replies.
pub fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        format!("{n:02x}").repeat(20).parse().unwrap()
    }

    fn set(head: Option<&str>, refs: &[(&str, u8)]) -> RefSet {
        RefSet {
            head: head.map(|h| Head::Symbolic(h.into())),
            refs: refs.iter().map(|(n, i)| (n.to_string(), id(*i))).collect(),
        }
    }

    fn resolved(pairs: &[(&str, u8)]) -> BTreeMap<String, ObjectId> {
        pairs.iter().map(|(n, i)| (n.to_string(), id(*i))).collect()
    }

    #[test]
    fn push_lines_parse() {
        assert_eq!(
            PushSpec::parse("+refs/heads/a:refs/heads/b").unwrap(),
            PushSpec {
                force: true,
                src: Some("refs/heads/a".into()),
                dst: "refs/heads/b".into()
            }
        );
        assert_eq!(
            PushSpec::parse(":refs/tags/v1").unwrap(),
            PushSpec {
                force: false,
                src: None,
                dst: "refs/tags/v1".into()
            }
        );
        for bad in [
            "refs/heads/a",
            "a:",
            "a:refs/heads/x y",
            "a:refs/heads/../x",
            "a:HEAD",
        ] {
            assert!(PushSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn updates_and_deletes_apply_to_the_remote_state() {
        let remote = set(
            Some("refs/heads/main"),
            &[
                ("refs/heads/main", 1),
                ("refs/heads/old", 2),
                ("refs/tags/v1", 3),
            ],
        );
        let specs = vec![
            PushSpec::parse("refs/heads/main:refs/heads/main").unwrap(),
            PushSpec::parse(":refs/heads/old").unwrap(),
            PushSpec::parse("+refs/heads/topic:refs/heads/topic").unwrap(),
        ];
        let plan = plan(
            &remote,
            &specs,
            &resolved(&[("refs/heads/main", 4), ("refs/heads/topic", 5)]),
            Some("refs/heads/main"),
        );
        assert_eq!(
            plan.refs,
            set(
                Some("refs/heads/main"),
                &[
                    ("refs/heads/main", 4),
                    ("refs/heads/topic", 5),
                    ("refs/tags/v1", 3)
                ]
            )
        );
        assert!(plan.force);
        assert!(plan.changed);
        assert_eq!(plan.tips, vec![id(4), id(5)]);
        assert_eq!(
            plan.reply_lines(None),
            vec![
                "ok refs/heads/main",
                "ok refs/heads/old",
                "ok refs/heads/topic"
            ]
        );
    }

    #[test]
    fn failures_are_per_ref_and_a_failed_publish_fails_the_accepted() {
        let remote = set(Some("refs/heads/main"), &[("refs/heads/main", 1)]);
        let specs = vec![
            PushSpec::parse(":refs/heads/gone").unwrap(),
            PushSpec::parse("refs/heads/nope:refs/heads/x").unwrap(),
            PushSpec::parse("refs/heads/main:refs/heads/main").unwrap(),
        ];
        let plan = plan(&remote, &specs, &resolved(&[("refs/heads/main", 2)]), None);
        assert!(!plan.force);
        let lines = plan.reply_lines(None);
        assert!(lines[0].starts_with("error refs/heads/gone remote ref does not exist"));
        assert!(lines[1].starts_with("error refs/heads/x src refspec"));
        assert_eq!(lines[2], "ok refs/heads/main");
        let failed = plan.reply_lines(Some("knot publish failed: busy\nsecond line"));
        assert_eq!(failed[2], "error refs/heads/main knot publish failed: busy");
    }

    #[test]
    fn a_new_repository_gets_head_on_the_users_branch() {
        let empty = RefSet::default();
        let specs = vec![
            PushSpec::parse("refs/heads/a:refs/heads/a").unwrap(),
            PushSpec::parse("refs/heads/dev:refs/heads/dev").unwrap(),
            PushSpec::parse("refs/tags/v1:refs/tags/v1").unwrap(),
        ];
        let r = resolved(&[
            ("refs/heads/a", 1),
            ("refs/heads/dev", 2),
            ("refs/tags/v1", 3),
        ]);
        let with_branch = plan(&empty, &specs, &r, Some("refs/heads/dev"));
        assert_eq!(
            with_branch.refs.head,
            Some(Head::Symbolic("refs/heads/dev".into()))
        );
        let detached = plan(&empty, &specs, &r, None);
        assert_eq!(
            detached.refs.head,
            Some(Head::Symbolic("refs/heads/a".into()))
        );
        let tags_only = plan(&empty, &specs[2..], &r, None);
        assert_eq!(tags_only.refs.head, None);
    }

    #[test]
    fn deleting_heads_branch_moves_head_to_another() {
        let remote = set(
            Some("refs/heads/main"),
            &[("refs/heads/main", 1), ("refs/heads/next", 2)],
        );
        let plan = plan(
            &remote,
            &[PushSpec::parse(":refs/heads/main").unwrap()],
            &BTreeMap::new(),
            None,
        );
        assert_eq!(
            plan.refs.head,
            Some(Head::Symbolic("refs/heads/next".into()))
        );
    }

    #[test]
    fn pushing_what_is_there_changes_nothing() {
        let remote = set(Some("refs/heads/main"), &[("refs/heads/main", 1)]);
        let plan = plan(
            &remote,
            &[PushSpec::parse("refs/heads/main:refs/heads/main").unwrap()],
            &resolved(&[("refs/heads/main", 1)]),
            None,
        );
        assert!(!plan.changed);
        assert_eq!(plan.reply_lines(None), vec!["ok refs/heads/main"]);
    }
}
