//! Talking to a mirror's upstream with plain git: `git clone --mirror` the
//! first time, then `git fetch --prune '+refs/*:refs/*'` into the mirror's
//! own bare repository, and beside it
//! `git ls-remote --symref <url> HEAD` for where the upstream's `HEAD`
//! points.
//!
//! Every git process here is watched: it is killed when it runs longer than
//! the total limit, when it shows no progress (no output and no growth of
//! the pack being received) for the idle limit, and when the pack it
//! receives grows past the byte limit. Failures are sorted into
//! [`FailureClass`]es an operator can act on. Only the protocols the
//! operator allowed run (`GIT_ALLOW_PROTOCOL`): never `ext::` or ssh, and
//! local paths only when the configuration says so. With `[mirror]
//! check_objects`, git checks every object's format as it arrives
//! (`transfer.fsckObjects`). Nothing here keeps state.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::failure::{self, FailureClass, FetchFailure, classify, last_words};
use crate::repo_id::RepoId;

/// How much of git's error output is kept for the operator.
const STDERR_KEPT: usize = 4096;
/// How often a running git process is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Where a mirror fetches from: a git URL, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    url: String,
}

/// What is wrong with a mirror's source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    /// Not a URL git can fetch from here.
    #[error(
        "{0:?} is not a git URL a mirror can fetch from: give https://, http:// or git:// (ssh and ext:: are not supported)"
    )]
    Unsupported(String),
    /// A local path, and the configuration does not allow them.
    #[error(
        "{0:?} is a local path; set mirror.allow_local = true in the config to mirror repositories on this machine"
    )]
    LocalNotAllowed(String),
    /// The URL carries credentials, which would be stored and shown.
    #[error("{0:?} carries credentials; mirrors fetch public repositories only")]
    Credentials(String),
    /// An AT URI or `<handle>/<name>`: Tangled records are not resolved yet.
    #[error(
        "{0:?} names a record, not a git URL; give the git URL of the repository (for a Tangled repository https://<knot>/<owner-did>/<name>)"
    )]
    Record(String),
}

impl Upstream {
    /// Check `source`: `https://`, `http://` and `git://` URLs, and local
    /// paths (absolute, or `file://`) when `allow_local` is set.
    pub fn parse(source: &str, allow_local: bool) -> Result<Self, SourceError> {
        let source = source.trim();
        if source.starts_with("at://") {
            return Err(SourceError::Record(source.into()));
        }
        if source.starts_with('/') {
            if !allow_local {
                return Err(SourceError::LocalNotAllowed(source.into()));
            }
            let url = Url::from_file_path(source)
                .map_err(|()| SourceError::Unsupported(source.into()))?;
            return Ok(Upstream { url: url.into() });
        }
        let url = Url::parse(source).map_err(|_| {
            if source.starts_with("did:") || !source.contains(':') {
                SourceError::Record(source.into())
            } else {
                SourceError::Unsupported(source.into())
            }
        })?;
        match url.scheme() {
            "https" | "http" | "git" if url.host_str().is_some() => {}
            "file" if allow_local => {}
            "file" => return Err(SourceError::LocalNotAllowed(source.into())),
            _ => return Err(SourceError::Unsupported(source.into())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SourceError::Credentials(source.into()));
        }
        Ok(Upstream { url: url.into() })
    }

    /// The URL git fetches from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The host (with its port) whose limits this upstream counts against;
    /// every local path counts as one host.
    pub fn host(&self) -> String {
        match Url::parse(&self.url) {
            Ok(url) => match (url.host_str(), url.port()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => host.to_owned(),
                _ => "local".into(),
            },
            Err(_) => "local".into(),
        }
    }

    /// The repository id a Tangled knot's URL names
    /// (`https://<knot>/<did>/<name>`), if it is of that shape.
    pub fn implied_repo_id(&self) -> Option<RepoId> {
        let url = Url::parse(&self.url).ok()?;
        if url.scheme() == "file" {
            return None;
        }
        let mut segments = url.path_segments()?.filter(|s| !s.is_empty());
        let did = percent_encoding::percent_decode_str(segments.next()?)
            .decode_utf8()
            .ok()?;
        let name = segments.next()?;
        if segments.next().is_some() || !did.starts_with("did:") {
            return None;
        }
        RepoId::parse(&format!("{did}/{}", name.trim_end_matches(".git"))).ok()
    }

    fn allowed_protocols(&self) -> &'static str {
        if self.url.starts_with("file:") {
            "file"
        } else {
            "http:https:git"
        }
    }
}

/// How long and how much one git process may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time without output or pack growth.
    pub idle: Duration,
    /// Longest time in all.
    pub total: Duration,
    /// Most bytes of pack one fetch may receive.
    pub max_bytes: Option<u64>,
    /// Whether git checks every object's format (`transfer.fsckObjects`).
    pub check_objects: bool,
}

/// The upstream's refs as `git ls-remote --symref` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// What `HEAD` points to: a ref name, or an object id when detached.
    pub head: Option<String>,
    /// Every ref under `refs/`, peeled tag lines left out.
    pub refs: BTreeMap<String, String>,
}

/// Where the upstream's `HEAD` points (a ref name, or an object id when
/// detached; none when it has no `HEAD`). With protocol v2 only `HEAD` is
/// sent, so this is cheap beside the fetch it runs alongside.
pub async fn remote_head(
    upstream: &Upstream,
    limits: Limits,
) -> Result<Option<String>, FetchFailure> {
    let mut cmd = command(upstream, None, limits);
    cmd.args(["ls-remote", "--symref", upstream.url(), "HEAD"]);
    let out = watch(cmd, None, limits, upstream).await?;
    let head = parse_listing(&String::from_utf8_lossy(&out))?.head;
    match head {
        Some(head) if !valid_head(&head) => Err(FetchFailure {
            class: FailureClass::InvalidData,
            message: format!(
                "the upstream's HEAD names {:?}, neither a ref nor an object id",
                head.chars().take(200).collect::<String>()
            ),
            retry_after: None,
        }),
        head => Ok(head),
    }
}

/// A ref under `refs/` git accepts, or a full object id: what the
/// upstream's `HEAD` may name before it reaches a git command line.
fn valid_head(head: &str) -> bool {
    if head.starts_with("refs/") {
        return crate::git::validate_ref_name(head).is_ok();
    }
    matches!(head.len(), 40 | 64) && head.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetch every ref of the upstream into the bare repository at `git_dir`,
/// deleting the refs it no longer has. An upstream with nothing new costs
/// one ref advertisement.
pub async fn fetch(
    git_dir: &Path,
    upstream: &Upstream,
    limits: Limits,
) -> Result<(), FetchFailure> {
    let mut cmd = command(upstream, Some(git_dir), limits);
    cmd.args([
        "fetch",
        "--prune",
        "--progress",
        "--no-write-fetch-head",
        "--no-recurse-submodules",
        upstream.url(),
        "+refs/*:refs/*",
    ]);
    watch(cmd, Some(git_dir), limits, upstream).await?;
    check_objects_size(git_dir, limits)
}

/// The first fetch of a mirror: `git clone --mirror` into `git_dir`, which
/// must not exist. A clone writes every ref at once and skips the second
/// connectivity walk when the pack it received is whole; a fetch into an
/// empty repository does neither, which for thousands of refs costs
/// seconds. Whatever fails, nothing is left at `git_dir`.
pub async fn clone(
    git_dir: &Path,
    upstream: &Upstream,
    limits: Limits,
) -> Result<(), FetchFailure> {
    // Into a directory beside it, renamed when complete: git writes HEAD
    // before the transfer, so a clone killed midway must not look like a
    // repository (the next try starts afresh, see `clone_dir`).
    let partial = clone_dir(git_dir);
    let _ = tokio::fs::remove_dir_all(&partial).await;
    let mut cmd = command(upstream, None, limits);
    cmd.args(["clone", "--mirror", "--no-local", "--progress", "--"])
        .arg(upstream.url())
        .arg(&partial);
    let cloned = match watch(cmd, Some(&partial), limits, upstream).await {
        Ok(_) => check_objects_size(&partial, limits),
        Err(failure) => Err(failure),
    };
    let cloned = match cloned {
        Ok(()) => tokio::fs::rename(&partial, git_dir).await.map_err(|e| {
            FetchFailure::local(format!("moving the clone to {}: {e}", git_dir.display()))
        }),
        Err(failure) => Err(failure),
    };
    if cloned.is_err() {
        // git removes what it made when it fails, not when it is killed.
        let _ = tokio::fs::remove_dir_all(&partial).await;
    }
    cloned
}

/// Where the first clone of the repository at `git_dir` is made.
pub fn clone_dir(git_dir: &Path) -> std::path::PathBuf {
    let mut name = git_dir.as_os_str().to_owned();
    name.push(".clone");
    std::path::PathBuf::from(name)
}

/// A transfer faster than the watch's look at it is caught here.
fn check_objects_size(git_dir: &Path, limits: Limits) -> Result<(), FetchFailure> {
    if let Some(max) = limits.max_bytes {
        let size = objects_size(&git_dir.join("objects"));
        if size > max {
            return Err(FetchFailure {
                class: FailureClass::TooLarge,
                message: format!(
                    "the repository holds {size} bytes of objects, more than its limit of {max}"
                ),
                retry_after: None,
            });
        }
    }
    Ok(())
}

/// Point the mirror's `HEAD` where the upstream's points.
pub async fn set_head(
    git_dir: &Path,
    upstream: &Upstream,
    head: &str,
    limits: Limits,
) -> Result<(), FetchFailure> {
    let mut cmd = command(upstream, Some(git_dir), limits);
    if head.starts_with("refs/") {
        cmd.args(["symbolic-ref", "HEAD", head]);
    } else {
        cmd.args(["update-ref", "--no-deref", "HEAD", head]);
    }
    watch(cmd, None, limits, upstream).await?;
    Ok(())
}

/// The refs of the mirror's repository, in the form of a [`Listing`].
pub fn local_listing(git_dir: &Path) -> Result<Listing, FetchFailure> {
    Ok(Listing::of(&local_refs(git_dir)?))
}

/// The refs of the mirror's repository.
pub fn local_refs(git_dir: &Path) -> Result<crate::git::RefSet, FetchFailure> {
    crate::git::read_refs(git_dir)
        .map_err(|e| FetchFailure::local(format!("reading the mirror's refs: {e}")))
}

impl Listing {
    /// `refs` in the form of a listing.
    pub fn of(refs: &crate::git::RefSet) -> Listing {
        Listing {
            head: refs.head.as_ref().map(|h| match h {
                crate::git::Head::Symbolic(name) => name.clone(),
                crate::git::Head::Detached(id) => id.to_string(),
            }),
            refs: refs
                .refs
                .iter()
                .map(|(name, id)| (name.clone(), id.to_string()))
                .collect(),
        }
    }
}

fn parse_listing(text: &str) -> Result<Listing, FetchFailure> {
    let mut listing = Listing::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ref: ") {
            if let Some((target, "HEAD")) = rest.split_once('\t') {
                listing.head = Some(target.to_owned());
            }
            continue;
        }
        let Some((id, name)) = line.split_once('\t') else {
            return Err(FetchFailure {
                class: FailureClass::InvalidData,
                message: format!(
                    "the upstream's ref list has a line git does not write: {:?}",
                    line.chars().take(200).collect::<String>()
                ),
                retry_after: None,
            });
        };
        if name == "HEAD" {
            // A symbolic HEAD's `ref:` line comes first and wins.
            if listing.head.is_none() {
                listing.head = Some(id.to_owned());
            }
        } else if name.starts_with("refs/") && !name.ends_with("^{}") {
            listing.refs.insert(name.to_owned(), id.to_owned());
        }
    }
    Ok(listing)
}

fn command(upstream: &Upstream, git_dir: Option<&Path>, limits: Limits) -> tokio::process::Command {
    let mut std = crate::git::git_command();
    std.env("GIT_ALLOW_PROTOCOL", upstream.allowed_protocols())
        .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000");
    if let Some(dir) = git_dir {
        std.arg("--git-dir").arg(dir);
    }
    let fsck = match limits.check_objects {
        true => "transfer.fsckObjects=true",
        false => "transfer.fsckObjects=false",
    };
    std.args([
        "-c",
        fsck,
        "-c",
        "gc.autoDetach=false",
        "-c",
        "fetch.writeCommitGraph=false",
        // Keep every fetch as a pack (not loose objects), so that it can
        // become the state's next pack blob as it is.
        "-c",
        "fetch.unpackLimit=1",
        "-c",
        "credential.helper=",
        "-c",
        "core.askPass=true",
        "-c",
        "http.followRedirects=initial",
    ]);
    let mut cmd = tokio::process::Command::from(std);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Run `cmd` under the limits; its standard output when it succeeds.
async fn watch(
    mut cmd: tokio::process::Command,
    receiving_into: Option<&Path>,
    limits: Limits,
    upstream: &Upstream,
) -> Result<Vec<u8>, FetchFailure> {
    let mut child = cmd
        .spawn()
        .map_err(|e| FetchFailure::local(format!("cannot start git: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (activity_tx, mut activity) = tokio::sync::watch::channel(());
    let err_reader = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let _ = activity_tx.send(());
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * STDERR_KEPT {
                kept.drain(..kept.len() - STDERR_KEPT);
            }
        }
        kept
    });
    let out_reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        out
    });
    let started = Instant::now();
    let mut last_activity = Instant::now();
    let mut last_size = 0u64;
    let mut killed: Option<(FailureClass, String)> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        if activity.has_changed().unwrap_or(false) {
            activity.mark_unchanged();
            last_activity = Instant::now();
        }
        if let Some(dir) = receiving_into {
            let size = receiving_size(dir);
            if size > last_size {
                last_size = size;
                last_activity = Instant::now();
            }
            if let Some(max) = limits.max_bytes
                && size > max
            {
                killed = Some((
                    FailureClass::TooLarge,
                    format!("the pack received passed {max} bytes, the repository's limit"),
                ));
            }
        }
        if started.elapsed() > limits.total {
            killed = Some((
                FailureClass::TimedOut,
                format!("git ran longer than {} s", limits.total.as_secs()),
            ));
        } else if last_activity.elapsed() > limits.idle {
            killed = Some((
                FailureClass::TimedOut,
                format!(
                    "the upstream showed no progress for {} s",
                    limits.idle.as_secs()
                ),
            ));
        }
        if killed.is_some() {
            let _ = child.kill().await;
            break child.wait().await;
        }
    };
    let stderr = err_reader.await.unwrap_or_default();
    let stdout = out_reader.await.unwrap_or_default();
    if let Some((class, message)) = killed {
        if let Some(dir) = receiving_into {
            remove_partial_packs(dir);
        }
        return Err(FetchFailure {
            class,
            message: format!("{message}; git was stopped"),
            retry_after: None,
        });
    }
    let status = status.map_err(|e| FetchFailure::local(format!("waiting for git: {e}")))?;
    if status.success() {
        return Ok(stdout);
    }
    let text = String::from_utf8_lossy(&stderr);
    let words = last_words(&text);
    let class = classify(&text);
    let retry_after = match class {
        FailureClass::HttpStatus(429 | 503) => failure::probe_retry_after(upstream.url()).await,
        _ => None,
    };
    Err(FetchFailure {
        class,
        message: format!("git failed against {}: {words}", upstream.url()),
        retry_after,
    })
}

/// Bytes of packs being received into `git_dir` now.
fn receiving_size(git_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(git_dir.join("objects/pack")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp_pack_"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes of every file under `dir`.
fn objects_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => objects_size(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn remove_partial_packs(git_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(git_dir.join("objects/pack")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("tmp_") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_checked() {
        let ok = |s: &str| Upstream::parse(s, false).unwrap();
        assert_eq!(ok("https://example.com/a/b.git").host(), "example.com");
        assert_eq!(ok("git://127.0.0.1:9418/x.git").host(), "127.0.0.1:9418");
        assert!(matches!(
            Upstream::parse("ssh://git@example.com/x", false),
            Err(SourceError::Unsupported(_))
        ));
        assert!(matches!(
            Upstream::parse("ext::sh -c touch% /tmp/pwned", false),
            Err(SourceError::Unsupported(_))
        ));
        assert!(matches!(
            Upstream::parse("/srv/git/x.git", false),
            Err(SourceError::LocalNotAllowed(_))
        ));
        assert!(matches!(
            Upstream::parse("file:///srv/git/x.git", false),
            Err(SourceError::LocalNotAllowed(_))
        ));
        assert_eq!(
            Upstream::parse("/srv/git/x.git", true).unwrap().url(),
            "file:///srv/git/x.git"
        );
        assert!(matches!(
            Upstream::parse("https://me:token@example.com/x", false),
            Err(SourceError::Credentials(_))
        ));
        assert!(matches!(
            Upstream::parse("at://did:plc:abc/sh.tangled.repo/3k", false),
            Err(SourceError::Record(_))
        ));
        assert!(matches!(
            Upstream::parse("alice.example.com/website", false),
            Err(SourceError::Record(_))
        ));
    }

    #[test]
    fn a_tangled_knot_url_implies_its_repo_id() {
        let up = Upstream::parse("https://knot.example.com/did:plc:abc123/website", false).unwrap();
        assert_eq!(
            up.implied_repo_id().unwrap().as_str(),
            "did:plc:abc123/website"
        );
        let plain = Upstream::parse("https://example.com/group/project.git", false).unwrap();
        assert_eq!(plain.implied_repo_id(), None);
        let deep = Upstream::parse("https://example.com/did:plc:abc/x/y", false).unwrap();
        assert_eq!(deep.implied_repo_id(), None);
        let traversal = Upstream::parse("https://example.com/did:plc:abc/..", false).unwrap();
        assert_eq!(traversal.implied_repo_id(), None);
    }

    #[test]
    fn listings_parse_symbolic_and_detached_heads_and_skip_peeled_tags() {
        let text = "ref: refs/heads/main\tHEAD\n\
                    1111111111111111111111111111111111111111\tHEAD\n\
                    1111111111111111111111111111111111111111\trefs/heads/main\n\
                    2222222222222222222222222222222222222222\trefs/tags/v1\n\
                    3333333333333333333333333333333333333333\trefs/tags/v1^{}\n";
        let listing = parse_listing(text).unwrap();
        assert_eq!(listing.head.as_deref(), Some("refs/heads/main"));
        assert_eq!(listing.refs.len(), 2);
        let detached = parse_listing("4444444444444444444444444444444444444444\tHEAD\n").unwrap();
        assert_eq!(
            detached.head.as_deref(),
            Some("4444444444444444444444444444444444444444")
        );
        let bad = parse_listing("garbage without a tab").unwrap_err();
        assert_eq!(bad.class, FailureClass::InvalidData);
    }

    #[test]
    fn only_refs_and_object_ids_are_taken_as_the_upstreams_head() {
        assert!(valid_head("refs/heads/main"));
        assert!(valid_head(&"a".repeat(40)));
        assert!(valid_head(&"0".repeat(64)));
        for bad in [
            "--stdin",
            "refs/heads/..",
            "HEAD",
            "main",
            &"g".repeat(40),
            "refs/heads/a b",
        ] {
            assert!(!valid_head(bad), "{bad}");
        }
    }
}
