//! Reading and writing the refs of a repository: one `for-each-ref` to read
//! them, one `cat-file --batch-check` to check (and peel) every target, and
//! one `update-ref --stdin` transaction to move them, however many there are.
//! A repository without refs yet gets its refs as one `packed-refs` file,
//! written the way `git clone` writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use super::{
    GitError, Head, ObjectId, RefSet, bounded, failed, git_at, git_ok, run, stdout_line, utf8,
    validate_ref_name,
};

/// Read all refs under `refs/` plus `HEAD`.
///
/// Included: branches, tags, notes and any other namespace under `refs/`.
/// Excluded: `refs/remotes/*` (the publisher's view of other repositories,
/// not part of what it publishes) and `refs/stash` (local scratch state).
/// Annotated tags map to the tag object id (not peeled). Every ref name is
/// validated; a repository holding an invalid name is an error.
pub fn read_refs(git_dir: &Path) -> Result<RefSet, GitError> {
    let out = git_ok(
        git_dir,
        &["for-each-ref", "--format=%(objectname) %(refname)", "refs/"],
        None,
    )?;
    let text = utf8(&out.stdout, "for-each-ref")?;
    let mut refs = BTreeMap::new();
    for line in text.lines() {
        let (oid, name) = line
            .split_once(' ')
            .ok_or_else(|| GitError::UnexpectedOutput {
                command: "for-each-ref".into(),
                detail: format!("line without separator: {}", bounded(line, 200)),
            })?;
        if name.starts_with("refs/remotes/") || name == "refs/stash" {
            continue;
        }
        validate_ref_name(name)?;
        refs.insert(name.to_owned(), oid.parse()?);
    }

    let sym = run(
        git_at(git_dir, &["symbolic-ref", "-q", "HEAD"]),
        "symbolic-ref -q HEAD",
        None,
    )?;
    let head = match sym.status.code() {
        Some(0) => {
            let target = stdout_line(&sym.stdout, "symbolic-ref")?;
            validate_ref_name(&target)?;
            Some(Head::Symbolic(target))
        }
        Some(1) => {
            let out = git_ok(git_dir, &["rev-parse", "--verify", "-q", "HEAD"], None)?;
            Some(Head::Detached(
                stdout_line(&out.stdout, "rev-parse HEAD")?.parse()?,
            ))
        }
        _ => return Err(failed("symbolic-ref -q HEAD", &sym)),
    };
    let set = RefSet { head, refs };
    set.object_format()?;
    Ok(set)
}

/// Make the repository's refs exactly `set`: every ref is created, updated
/// or deleted in a single `git update-ref --stdin` transaction (refs under
/// `refs/` that are not in `set` are deleted), then `HEAD` is set. A
/// repository that has no refs at all gets them as one `packed-refs` file
/// (with the peeled target of every annotated tag, as `git clone` writes
/// it), which costs one file write instead of one file per ref.
///
/// All referenced objects must already be present; this is checked, for
/// the refs that change, before any ref is touched. When `set.head` is
/// `None`, `HEAD` is left as it is.
///
/// One exception to atomicity: git cannot delete `refs/x` and create
/// `refs/x/y` (or the reverse) in the same transaction, so refs that are
/// deleted *and* conflict with a new name are deleted in a first
/// transaction. If the main transaction then fails they are restored.
pub fn apply_refs(git_dir: &Path, set: &RefSet) -> Result<(), GitError> {
    let current = current_refs(git_dir)?;
    apply_refs_over(git_dir, set, &current)
}

/// [`apply_refs`] given the repository's refs as [`current_refs`] just
/// read them (the caller serializes every change to this repository).
pub fn apply_refs_over(
    git_dir: &Path,
    set: &RefSet,
    current: &BTreeMap<String, ObjectId>,
) -> Result<(), GitError> {
    set.validate()?;
    if current.is_empty() && !git_dir.join("packed-refs").exists() {
        let peeled = peel_wanted(git_dir, set, &BTreeMap::new())?;
        write_packed_refs(git_dir, &set.refs, &peeled)?;
    } else {
        // Targets of unchanged refs are present already.
        peel_wanted(git_dir, set, current)?;
        update_refs(git_dir, set, current)?;
    }
    match &set.head {
        None => {}
        Some(Head::Symbolic(target)) => {
            git_ok(git_dir, &["symbolic-ref", "HEAD", target], None)?;
        }
        Some(Head::Detached(id)) => {
            git_ok(
                git_dir,
                &["update-ref", "--no-deref", "HEAD", id.as_str()],
                None,
            )?;
        }
    }
    Ok(())
}

/// [`apply_refs`] for a repository the caller has just created and nobody
/// else sees yet (a fresh `init`): its refs are not read back, and `HEAD`
/// is written as a file, so the whole step is one `cat-file` process
/// (instead of three) however many refs there are.
pub fn apply_refs_to_new(git_dir: &Path, set: &RefSet) -> Result<(), GitError> {
    set.validate()?;
    let peeled = peel_wanted(git_dir, set, &BTreeMap::new())?;
    write_packed_refs(git_dir, &set.refs, &peeled)?;
    let head = match &set.head {
        None => return Ok(()),
        Some(Head::Symbolic(target)) => format!("ref: {target}\n"),
        Some(Head::Detached(id)) => format!("{id}\n"),
    };
    write_replacing(git_dir, "HEAD", head.as_bytes())
}

/// Check that every target `set` needs that `current` does not already
/// hold is present, and return what each peels to. A repository without
/// refs also refuses `refs/x` beside `refs/x/y`, as git does.
fn peel_wanted(
    git_dir: &Path,
    set: &RefSet,
    current: &BTreeMap<String, ObjectId>,
) -> Result<BTreeMap<ObjectId, ObjectId>, GitError> {
    let mut wanted: Vec<ObjectId> = set
        .refs
        .iter()
        .filter(|(name, id)| current.get(*name) != Some(*id))
        .map(|(_, id)| id.clone())
        .collect();
    if let Some(Head::Detached(id)) = &set.head {
        wanted.push(id.clone());
    }
    wanted.sort();
    wanted.dedup();
    let peeled = peel_objects(git_dir, &wanted)?;
    if let Some(missing) = wanted.iter().find(|id| !peeled.contains_key(*id)) {
        return Err(GitError::MissingObject {
            id: missing.clone(),
        });
    }
    if current.is_empty() {
        // git itself refuses `refs/x` beside `refs/x/y`; so does the file.
        for name in set.refs.keys() {
            let clash = name
                .match_indices('/')
                .any(|(at, _)| set.refs.contains_key(&name[..at]));
            if clash {
                return Err(GitError::InvalidRefName {
                    name: bounded(name, 200),
                    reason: "sits below another ref (`refs/x` and `refs/x/y`)",
                });
            }
        }
    }
    Ok(peeled)
}

/// Move the refs of a repository that has some from `current` to `set` in
/// one transaction (two when names conflict, see [`apply_refs`]).
fn update_refs(
    git_dir: &Path,
    set: &RefSet,
    current: &BTreeMap<String, ObjectId>,
) -> Result<(), GitError> {
    let conflicts = |a: &str, b: &str| {
        a.strip_prefix(b).is_some_and(|r| r.starts_with('/'))
            || b.strip_prefix(a).is_some_and(|r| r.starts_with('/'))
    };
    let created: Vec<&String> = set
        .refs
        .keys()
        .filter(|name| !current.contains_key(*name))
        .collect();
    let mut early_deletes = String::new();
    let mut early = Vec::new();
    let mut tx = String::new();
    for (name, old) in current {
        if set.refs.contains_key(name) {
            continue;
        }
        let line = format!("delete {name} {old}\n");
        if created.iter().any(|new| conflicts(new, name)) {
            early_deletes.push_str(&line);
            early.push((name, old));
        } else {
            tx.push_str(&line);
        }
    }
    for (name, new) in &set.refs {
        match current.get(name) {
            Some(old) if old == new => {}
            Some(old) => tx.push_str(&format!("update {name} {new} {old}\n")),
            None => tx.push_str(&format!("create {name} {new}\n")),
        }
    }

    let transaction = |body: &str| {
        let input = format!("start\n{body}commit\n");
        git_ok(git_dir, &["update-ref", "--stdin"], Some(input.as_bytes())).map(|_| ())
    };
    if !early_deletes.is_empty() {
        transaction(&early_deletes)?;
    }
    if !tx.is_empty()
        && let Err(e) = transaction(&tx)
    {
        if !early.is_empty() {
            let restore: String = early
                .iter()
                .map(|(name, old)| format!("create {name} {old}\n"))
                .collect();
            // Best effort: the original error is what matters.
            let _ = transaction(&restore);
        }
        return Err(e);
    }
    Ok(())
}

/// Write `refs` as the `packed-refs` file of a repository that has no refs:
/// sorted, with the fully peeled target of each annotated tag (`peeled`
/// maps every target to what it peels to), into a temporary file renamed
/// into place, so git never sees half a file.
fn write_packed_refs(
    git_dir: &Path,
    refs: &BTreeMap<String, ObjectId>,
    peeled: &BTreeMap<ObjectId, ObjectId>,
) -> Result<(), GitError> {
    let mut text = String::with_capacity(refs.len() * 100 + 64);
    text.push_str("# pack-refs with: peeled fully-peeled sorted \n");
    // A BTreeMap of UTF-8 strings iterates in byte order, git's order.
    for (name, id) in refs {
        text.push_str(&format!("{id} {name}\n"));
        if let Some(target) = peeled.get(id).filter(|t| *t != id) {
            text.push_str(&format!("^{target}\n"));
        }
    }
    write_replacing(git_dir, "packed-refs", text.as_bytes())
}

/// Replace the file `name` of `git_dir` with `data`: written and synced
/// under a temporary name, then renamed, so git never sees half a file.
fn write_replacing(git_dir: &Path, name: &str, data: &[u8]) -> Result<(), GitError> {
    let io_err = |source| GitError::Io {
        context: format!("writing {}", git_dir.join(name).display()),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{name}.tmp-"))
        .tempfile_in(git_dir)
        .map_err(io_err)?;
    tmp.write_all(data).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(git_dir.join(name))
        .map_err(|e| io_err(e.error))?;
    Ok(())
}

/// All refs under `refs/` currently in the repository, without the
/// filtering of [`read_refs`], in one `for-each-ref`.
pub fn current_refs(git_dir: &Path) -> Result<BTreeMap<String, ObjectId>, GitError> {
    let out = git_ok(
        git_dir,
        &["for-each-ref", "--format=%(objectname) %(refname)"],
        None,
    )?;
    let text = utf8(&out.stdout, "for-each-ref")?;
    let mut refs = BTreeMap::new();
    for line in text.lines() {
        if let Some((oid, name)) = line.split_once(' ') {
            refs.insert(name.to_owned(), oid.parse()?);
        }
    }
    Ok(refs)
}

/// The subset of `ids` present in the repository (one `cat-file` process,
/// however many ids).
pub fn present_objects(git_dir: &Path, ids: &[ObjectId]) -> Result<BTreeSet<ObjectId>, GitError> {
    let names: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
    Ok(resolve_names(git_dir, &names)?.into_values().collect())
}

/// What each of `ids` present in the repository peels to (itself for
/// anything but an annotated tag), in one `cat-file --batch-check`
/// process. Ids missing from the map are not in the repository (or are
/// tags whose target is missing).
pub fn peel_objects(
    git_dir: &Path,
    ids: &[ObjectId],
) -> Result<BTreeMap<ObjectId, ObjectId>, GitError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut input = String::with_capacity(ids.len() * 44);
    for id in ids {
        input.push_str(id.as_str());
        input.push_str("^{}\n");
    }
    let out = git_ok(
        git_dir,
        &["cat-file", "--batch-check=%(objectname)"],
        Some(input.as_bytes()),
    )?;
    let text = utf8(&out.stdout, "cat-file --batch-check")?;
    let mut peeled = BTreeMap::new();
    let mut lines = text.lines();
    for id in ids {
        let line = lines.next().ok_or_else(|| GitError::UnexpectedOutput {
            command: "cat-file --batch-check".into(),
            detail: "fewer lines than objects asked for".into(),
        })?;
        // Present objects print their (peeled) name, others "<input> missing".
        if !line.contains(' ')
            && let Ok(target) = line.parse::<ObjectId>()
        {
            peeled.insert(id.clone(), target);
        }
    }
    Ok(peeled)
}

/// Resolve each of `names` (ref names or object ids, as a `push` line's
/// source) to the object it names, with one `cat-file` process; names
/// that do not resolve are left out.
pub fn resolve_names(
    git_dir: &Path,
    names: &[String],
) -> Result<BTreeMap<String, ObjectId>, GitError> {
    let names: Vec<&String> = names
        .iter()
        .filter(|n| !n.is_empty() && !n.contains(['\n', '\r']))
        .collect();
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut input = String::new();
    for name in &names {
        input.push_str(name);
        input.push('\n');
    }
    let out = git_ok(
        git_dir,
        &["cat-file", "--batch-check=%(objectname)"],
        Some(input.as_bytes()),
    )?;
    let text = utf8(&out.stdout, "cat-file --batch-check")?;
    // One line per input line, in order: the id, or "<name> missing".
    Ok(names
        .into_iter()
        .zip(text.lines())
        .filter_map(|(name, line)| Some((name.clone(), line.trim().parse().ok()?)))
        .collect())
}

/// The branch `HEAD` points at (e.g. `refs/heads/main`), if any.
pub fn head_branch(git_dir: &Path) -> Option<String> {
    let out = git_ok(git_dir, &["symbolic-ref", "-q", "HEAD"], None).ok()?;
    stdout_line(&out.stdout, "symbolic-ref").ok()
}
