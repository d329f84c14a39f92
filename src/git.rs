//! Thin, validated wrapper around the `git` binary.
//!
//! This module owns every interaction knotd has with git repositories on
//! disk: validating object ids and ref names that arrive from the network,
//! reading the refs of a repository, producing (thin) packs, indexing packs
//! into a bare repository, applying a complete ref set atomically and a few
//! integrity checks.
//!
//! The `git` executable found on `PATH` is the pack engine. Every invocation
//! is isolated from the caller's environment so that results never depend on
//! the operator's configuration:
//!
//! * `GIT_CONFIG_NOSYSTEM=1` and `GIT_CONFIG_GLOBAL=/dev/null` (system and
//!   global config are ignored, only the repository's own config applies),
//! * `GIT_TERMINAL_PROMPT=0` (never block on a credential prompt),
//! * `LC_ALL=C` (stable messages),
//! * variables that redirect git to another repository (`GIT_DIR`,
//!   `GIT_WORK_TREE`, `GIT_OBJECT_DIRECTORY`, ...) are removed.
//!
//! Anything that comes from outside (ref names, object ids) is validated in
//! Rust before it is handed to git.
//!
//! Nothing here runs a process per ref or per object: refs are read with one
//! `for-each-ref` and moved in one `update-ref --stdin` transaction (or
//! written as one `packed-refs` file in a new repository) ([`refs`]), object
//! presence is one `cat-file --batch-check`, ancestry questions share one
//! `cat-file --batch` ([`walk`]), and packs stream through `pack-objects` and
//! `index-pack` without being held in memory ([`pack`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod deadline;
pub mod gix_index;
mod pack;
mod refs;
mod walk;

pub(crate) use deadline::Deadline;
pub use deadline::{DEFAULT_TIMEOUT, set_timeout, timeout};

pub use pack::{
    GIX_CONNECTED, GIX_UNCONNECTED, Indexed, Pack, PackIndexer, PackStream, index_pack,
    index_pack_from, index_pack_from_with, pack_connected_in_repo, pack_objects, parse_pack_header,
    parse_pack_header_prefix, spawn_pack_objects, unwrap_git_error, write_midx_bitmap,
};
pub use refs::{
    apply_refs, apply_refs_over, apply_refs_to_new, current_refs, head_branch, peel_objects,
    present_objects, read_refs, resolve_names,
};
pub use walk::{Ancestry, has_object, is_ancestor};

/// Maximum length of a ref name accepted by [`validate_ref_name`].
pub const MAX_REF_NAME_LEN: usize = 1024;

/// Maximum number of bytes of a git command's stderr kept in an error.
const MAX_STDERR_IN_ERROR: usize = 2000;

/// Environment variables that could point git at a different repository
/// than the one named explicitly; removed from every git process knotd runs.
pub const REPO_LOCATING_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_QUARANTINE_PATH",
    "GIT_REPLACE_REF_BASE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_SHALLOW_FILE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
];

/// Errors from git operations.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A git process ran past its deadline and was killed.
    #[error(
        "`git {command}` ran longer than {after:?} and was killed; if the repository is that large, raise git_timeout_secs in the config"
    )]
    TimedOut {
        /// The git subcommand and its arguments.
        command: String,
        /// The limit it ran into.
        after: std::time::Duration,
    },
    /// The `git` executable could not be started.
    #[error(
        "could not run `git`: {source}; install git (2.30 or newer) and make sure it is on PATH"
    )]
    GitNotFound {
        /// Underlying spawn error.
        source: std::io::Error,
    },
    /// An I/O error while talking to a git process.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The path is not a git repository.
    #[error(
        "{} is not a git repository; pass the path of a git working tree or bare repository",
        path.display()
    )]
    NotARepository {
        /// The path that was given.
        path: PathBuf,
    },
    /// A ref name was rejected.
    #[error("invalid ref name {name:?}: {reason}; only well-formed names under refs/ are accepted")]
    InvalidRefName {
        /// The offending name (possibly truncated).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An object id was rejected.
    #[error(
        "invalid object id {value:?}: expected 40 (sha1) or 64 (sha256) lowercase hex characters"
    )]
    InvalidObjectId {
        /// The offending value (possibly truncated).
        value: String,
    },
    /// A git command exited unsuccessfully.
    #[error(
        "`git {command}` failed ({status}): {stderr}; check that the repository is intact (`git fsck`) and not in use by another process"
    )]
    CommandFailed {
        /// The git subcommand and arguments.
        command: String,
        /// Exit status description.
        status: String,
        /// Trimmed and bounded stderr.
        stderr: String,
    },
    /// The gix-pack indexer (`knotd index-pack`) exited unsuccessfully.
    #[error(
        "`{command}` failed ({status}): {stderr}; the pack is indexed with git instead; if this repeats, set pack_indexer = \"git\" in the config"
    )]
    IndexerFailed {
        /// The program and its subcommand.
        command: String,
        /// Exit status description.
        status: String,
        /// Trimmed and bounded stderr.
        stderr: String,
    },
    /// A git command produced output we could not understand.
    #[error(
        "unexpected output from `git {command}`: {detail}; this git version may be unsupported, use git 2.30 or newer"
    )]
    UnexpectedOutput {
        /// The git subcommand.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// `git pack-objects` produced something that is not a valid pack.
    #[error("invalid pack data: {reason}; the pack was not produced by a compatible git")]
    BadPack {
        /// What was wrong.
        reason: String,
    },
    /// A ref would point at an object the repository does not have.
    #[error(
        "object {id} is not in the repository; index the packs that contain it before setting refs"
    )]
    MissingObject {
        /// The missing object.
        id: ObjectId,
    },
    /// Object ids of different hash algorithms were mixed.
    #[error(
        "object ids mix sha1 and sha256; a repository uses a single object format, re-publish it from one repository"
    )]
    MixedObjectFormats,
}

/// Hash algorithm of a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectFormat {
    /// 20-byte SHA-1 object ids (40 hex characters).
    Sha1,
    /// 32-byte SHA-256 object ids (64 hex characters).
    Sha256,
}

impl ObjectFormat {
    /// The name git uses for `--object-format`.
    pub fn as_git_name(self) -> &'static str {
        match self {
            ObjectFormat::Sha1 => "sha1",
            ObjectFormat::Sha256 => "sha256",
        }
    }

    /// Length of the binary hash (also the pack trailer length).
    pub fn raw_len(self) -> usize {
        match self {
            ObjectFormat::Sha1 => 20,
            ObjectFormat::Sha256 => 32,
        }
    }

    /// Determine the single object format used by `ids`; `Ok(None)` if empty.
    pub fn of_all<'a>(
        ids: impl IntoIterator<Item = &'a ObjectId>,
    ) -> Result<Option<ObjectFormat>, GitError> {
        let mut format = None;
        for id in ids {
            match format {
                None => format = Some(id.format()),
                Some(f) if f != id.format() => return Err(GitError::MixedObjectFormats),
                Some(_) => {}
            }
        }
        Ok(format)
    }
}

/// A git object id: lowercase hex, 40 characters (sha1) or 64 (sha256).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectId(String);

impl ObjectId {
    /// The hex representation.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash algorithm this id belongs to.
    pub fn format(&self) -> ObjectFormat {
        if self.0.len() == 40 {
            ObjectFormat::Sha1
        } else {
            ObjectFormat::Sha256
        }
    }

    /// Whether this is the all-zero id git uses for "no object".
    pub fn is_null(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }
}

impl FromStr for ObjectId {
    type Err = GitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (s.len() == 40 || s.len() == 64)
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(ObjectId(s.to_owned()))
        } else {
            Err(GitError::InvalidObjectId {
                value: bounded(s, 80),
            })
        }
    }
}

impl TryFrom<String> for ObjectId {
    type Error = GitError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<ObjectId> for String {
    fn from(value: ObjectId) -> Self {
        value.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where `HEAD` points.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Head {
    /// `HEAD` is a symbolic ref to this ref name (e.g. `refs/heads/main`),
    /// which may not exist yet (unborn branch).
    Symbolic(String),
    /// `HEAD` points directly at an object.
    Detached(ObjectId),
}

/// The complete ref state of a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefSet {
    /// Where `HEAD` points, if known.
    pub head: Option<Head>,
    /// Ref name (always under `refs/`) to the object it points at. Annotated
    /// tags point at the tag object, not the peeled commit.
    pub refs: BTreeMap<String, ObjectId>,
}

impl RefSet {
    /// Check every ref name (including a symbolic `HEAD` target) and that all
    /// object ids use the same object format.
    pub fn validate(&self) -> Result<(), GitError> {
        for name in self.refs.keys() {
            validate_ref_name(name)?;
        }
        if let Some(Head::Symbolic(target)) = &self.head {
            validate_ref_name(target)?;
        }
        self.object_format()?;
        Ok(())
    }

    /// The object format of the ids in this set (`None` when there are none).
    pub fn object_format(&self) -> Result<Option<ObjectFormat>, GitError> {
        let detached = match &self.head {
            Some(Head::Detached(id)) => Some(id),
            _ => None,
        };
        ObjectFormat::of_all(self.refs.values().chain(detached))
    }

    /// All distinct objects the refs (and a detached `HEAD`) point at.
    pub fn tips(&self) -> Vec<ObjectId> {
        let mut set: BTreeSet<&ObjectId> = self.refs.values().collect();
        if let Some(Head::Detached(id)) = &self.head {
            set.insert(id);
        }
        set.into_iter().cloned().collect()
    }
}

/// Validate a ref name received from outside.
///
/// Accepts only names under `refs/` that `git check-ref-format` accepts:
/// no `..`, no component starting with `.` or ending in `.lock`, no control
/// characters, space or any of `~^:?*[\`, no `@{`, no empty component, no
/// trailing `/` or `.`, not `@`, at most [`MAX_REF_NAME_LEN`] bytes.
pub fn validate_ref_name(name: &str) -> Result<(), GitError> {
    let fail = |reason: &'static str| {
        Err(GitError::InvalidRefName {
            name: bounded(name, 200),
            reason,
        })
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > MAX_REF_NAME_LEN {
        return fail("longer than 1024 bytes");
    }
    if name == "@" {
        return fail("is `@`");
    }
    if !name.starts_with("refs/") {
        return fail("not under refs/");
    }
    if name.ends_with('/') {
        return fail("ends with `/`");
    }
    if name.ends_with('.') {
        return fail("ends with `.`");
    }
    if name.contains("..") {
        return fail("contains `..`");
    }
    if name.contains("@{") {
        return fail("contains `@{`");
    }
    if name.chars().any(|c| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return fail("contains a control character, space or one of ~^:?*[\\");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return fail("contains an empty component (`//`)");
        }
        if component.starts_with('.') {
            return fail("has a component starting with `.`");
        }
        if component.ends_with(".lock") {
            return fail("has a component ending in `.lock`");
        }
    }
    Ok(())
}

/// Locate the git directory of the repository at `path` (a working tree or a
/// bare repository). Parent directories are not searched: a directory inside
/// a repository is not itself a repository.
pub fn open_repo(path: &Path) -> Result<PathBuf, GitError> {
    let not_repo = || GitError::NotARepository {
        path: path.to_path_buf(),
    };
    let abs = std::fs::canonicalize(path).map_err(|_| not_repo())?;
    if !abs.is_dir() {
        return Err(not_repo());
    }
    let mut cmd = git_command();
    cmd.arg("-C")
        .arg(&abs)
        .args(["rev-parse", "--absolute-git-dir"]);
    // Stop discovery at `path` itself.
    if let Some(parent) = abs.parent() {
        cmd.env("GIT_CEILING_DIRECTORIES", parent);
    }
    let out = run(cmd, "rev-parse --absolute-git-dir", None)?;
    if !out.status.success() {
        return Err(not_repo());
    }
    let dir = stdout_line(&out.stdout, "rev-parse --absolute-git-dir")?;
    Ok(PathBuf::from(dir))
}

/// Create an empty bare sha1 repository at `path` (which may exist and be
/// empty). Returns its git directory.
pub fn init_bare(path: &Path) -> Result<PathBuf, GitError> {
    init_bare_with_format(path, ObjectFormat::Sha1)
}

/// Create an empty bare repository with the given object format at `path`.
/// No templates (hooks, sample files) are installed and reflogs are
/// disabled (`core.logAllRefUpdates=false`).
pub fn init_bare_with_format(path: &Path, format: ObjectFormat) -> Result<PathBuf, GitError> {
    let mut cmd = git_command();
    cmd.args(["init", "--bare", "-q", "--template="])
        .arg(format!("--object-format={}", format.as_git_name()))
        .arg(path);
    let out = run(cmd, "init --bare", None)?;
    if !out.status.success() {
        return Err(failed("init --bare", &out));
    }
    // One process per repository created, not three: the setting is a
    // section of its own appended to the config `git init` just wrote (git
    // reads repeated sections as one), and the git directory of a bare
    // repository created at `path` is `path`.
    let config = path.join("config");
    let io_err = |source| GitError::Io {
        context: format!("disabling reflogs in {}", config.display()),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .map_err(io_err)?;
    std::io::Write::write_all(&mut file, b"[core]\n\tlogAllRefUpdates = false\n")
        .map_err(io_err)?;
    std::fs::canonicalize(path).map_err(|_| GitError::NotARepository {
        path: path.to_path_buf(),
    })
}

/// Full integrity check (`git fsck --full --no-progress`).
pub fn fsck(git_dir: &Path) -> Result<(), GitError> {
    git_ok(
        git_dir,
        &["fsck", "--full", "--no-progress", "--no-dangling"],
        None,
    )
    .map(|_| ())
}

/// Check that every object reachable from the refs exists
/// (`git fsck --connectivity-only`).
pub fn fsck_connectivity(git_dir: &Path) -> Result<(), GitError> {
    git_ok(
        git_dir,
        &[
            "fsck",
            "--connectivity-only",
            "--no-progress",
            "--no-dangling",
        ],
        None,
    )
    .map(|_| ())
}

/// Check that every object reachable from `tips` but not from `known_good`
/// is present (`git rev-list --objects --quiet`). `known_good` must be
/// objects already known to be fully connected (e.g. the current refs).
pub fn check_connected(
    git_dir: &Path,
    tips: &[ObjectId],
    known_good: &[ObjectId],
) -> Result<(), GitError> {
    if tips.is_empty() {
        return Ok(());
    }
    let mut input = String::new();
    for id in tips {
        input.push_str(id.as_str());
        input.push('\n');
    }
    for id in known_good {
        input.push('^');
        input.push_str(id.as_str());
        input.push('\n');
    }
    git_ok(
        git_dir,
        &["rev-list", "--objects", "--quiet", "--stdin"],
        Some(input.as_bytes()),
    )
    .map(|_| ())
}

/// A `git` command isolated from the caller's configuration and environment.
pub(crate) fn git_command() -> Command {
    let mut cmd = Command::new("git");
    for var in REPO_LOCATING_ENV {
        cmd.env_remove(var);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A git command operating on `git_dir`.
fn git_at(git_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = git_command();
    cmd.arg("--git-dir").arg(git_dir).args(args);
    cmd
}

/// Run `args` on `git_dir`, failing unless the exit status is 0.
fn git_ok(git_dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, GitError> {
    let label = args.join(" ");
    let out = run(git_at(git_dir, args), &label, stdin)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failed(&label, &out))
    }
}

/// Start a command, turning a missing `git` into [`GitError::GitNotFound`].
fn spawn(mut cmd: Command, label: &str) -> Result<Child, GitError> {
    cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            GitError::GitNotFound { source }
        } else {
            GitError::Io {
                context: format!("starting `git {label}`"),
                source,
            }
        }
    })
}

/// Run a command, feeding `stdin` from a separate thread so large outputs
/// cannot deadlock, and collect its output.
fn run(mut cmd: Command, label: &str, stdin: Option<&[u8]>) -> Result<Output, GitError> {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = spawn(cmd, label)?;
    let deadline = Deadline::arm(&child, label);
    let io_err = |source| GitError::Io {
        context: format!("running `git {label}`"),
        source,
    };
    let out = match stdin {
        None => child.wait_with_output().map_err(io_err),
        Some(data) => {
            let mut pipe = child.stdin.take().expect("stdin was configured as piped");
            std::thread::scope(|scope| {
                let writer = scope.spawn(move || {
                    // A process that exits early closes its stdin; its exit
                    // status and stderr are the meaningful error then.
                    let _ = pipe.write_all(data);
                    drop(pipe);
                });
                let out = child.wait_with_output().map_err(io_err);
                let _ = writer.join();
                out
            })
        }
    };
    timed(out, &deadline, label)
}

/// `result`, unless the deadline killed the process: then that.
fn timed<T>(result: Result<T, GitError>, deadline: &Deadline, label: &str) -> Result<T, GitError> {
    if deadline.fired() {
        return Err(GitError::TimedOut {
            command: label.to_owned(),
            after: deadline.limit(),
        });
    }
    result
}

/// Build a [`GitError::CommandFailed`] from a finished process.
fn failed(label: &str, out: &Output) -> GitError {
    failed_status(label, out.status, &out.stderr)
}

/// Build a [`GitError::CommandFailed`] from an exit status and stderr.
fn failed_status(label: &str, status: ExitStatus, stderr: &[u8]) -> GitError {
    let (status, stderr) = status_and_stderr(status, stderr);
    GitError::CommandFailed {
        command: label.to_owned(),
        status,
        stderr,
    }
}

/// An exit status and stderr as an error shows them: the code or the
/// signal, stderr trimmed and bounded.
fn status_and_stderr(status: ExitStatus, stderr: &[u8]) -> (String, String) {
    let status = match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    };
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    let stderr = if stderr.is_empty() {
        "(no error output)".to_owned()
    } else {
        bounded(stderr, MAX_STDERR_IN_ERROR)
    };
    (status, stderr)
}

fn utf8<'a>(bytes: &'a [u8], label: &str) -> Result<&'a str, GitError> {
    std::str::from_utf8(bytes).map_err(|_| GitError::UnexpectedOutput {
        command: label.to_owned(),
        detail: "output is not UTF-8".into(),
    })
}

/// The first line of stdout, trimmed; an error if there is none.
fn stdout_line(bytes: &[u8], label: &str) -> Result<String, GitError> {
    let text = utf8(bytes, label)?;
    match text.lines().next().map(str::trim) {
        Some(line) if !line.is_empty() => Ok(line.to_owned()),
        _ => Err(GitError::UnexpectedOutput {
            command: label.to_owned(),
            detail: "empty output".into(),
        }),
    }
}

/// At most `max` bytes of `s` (cut at a character boundary), marking a cut
/// with `…`. Control characters are escaped.
fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = s[..end].to_owned();
    if end < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ref_names() {
        for name in [
            "refs/heads/main",
            "refs/heads/feature/x-1",
            "refs/tags/v1.0.0",
            "refs/notes/commits",
            "refs/heads/ünïcode",
            "refs/heads/a.b",
            "refs/heads/a@b",
        ] {
            validate_ref_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn rejects_unsafe_ref_names() {
        let long = format!("refs/heads/{}", "a".repeat(1100));
        for name in [
            "",
            "@",
            "HEAD",
            "main",
            "../../etc/passwd",
            "refs/../x",
            "refs/heads/a..b",
            "refs/heads/x.lock",
            "refs/heads/x.lock/y",
            "refs/heads/.hidden",
            "refs/heads/a/",
            "refs/heads/a.",
            "refs/heads//a",
            "refs/",
            "refs/heads/a b",
            "refs/heads/a\tb",
            "refs/heads/a\nb",
            "refs/heads/a\0b",
            "refs/heads/a\x7fb",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[b",
            "refs/heads/a\\b",
            "refs/heads/a@{1}",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    validate_ref_name(name),
                    Err(GitError::InvalidRefName { .. })
                ),
                "accepted {name:?}"
            );
        }
    }

    #[test]
    fn object_id_parsing() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        let id: ObjectId = sha1.parse().unwrap();
        assert_eq!(id.to_string(), sha1);
        assert_eq!(id.format(), ObjectFormat::Sha1);
        let sha256 = "a".repeat(64);
        assert_eq!(
            sha256.parse::<ObjectId>().unwrap().format(),
            ObjectFormat::Sha256
        );
        for bad in [
            "",
            "0123",
            &sha1.to_uppercase(),
            "g123456789abcdef0123456789abcdef01234567",
            &"a".repeat(41),
        ] {
            assert!(bad.parse::<ObjectId>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn object_id_serde_validates() {
        let ok = serde_json::from_str::<ObjectId>(&format!("\"{}\"", "b".repeat(40)));
        assert!(ok.is_ok());
        assert!(serde_json::from_str::<ObjectId>("\"../../x\"").is_err());
    }

    #[test]
    fn pack_header_checks() {
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x05".to_vec();
        pack.extend([0u8; 20]);
        assert_eq!(parse_pack_header(&pack).unwrap(), 5);
        pack[0] = b'X';
        assert!(parse_pack_header(&pack).is_err());
        assert!(parse_pack_header(b"PACK").is_err());
    }
}
