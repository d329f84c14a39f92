//! Packs as streams: `git pack-objects` read chunk by chunk, and
//! `git index-pack` fed from any reader, so no pack is ever held whole in
//! memory. Indexing happens in a quarantine directory below the
//! repository's `objects/` (as `git receive-pack` does) and the finished
//! pack moves into `objects/pack` only once git has accepted all of it, so
//! a pack that fails half-way leaves nothing behind but that directory,
//! which the next run removes.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Output, Stdio};
use std::thread::JoinHandle;

use super::{GitError, ObjectId, bounded, git_at, present_objects, stdout_line};

/// Prefix of the quarantine directories below `objects/`.
const QUARANTINE_PREFIX: &str = "knot-incoming-";

/// A pack produced by [`pack_objects`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pack {
    /// The raw pack bytes (`PACK` header, objects, trailer checksum).
    pub bytes: Vec<u8>,
    /// Number of objects in the pack, from its header. `0` means there was
    /// nothing new to send; callers should skip such a pack.
    pub object_count: u32,
}

impl Pack {
    /// Whether the pack carries no objects.
    pub fn is_empty(&self) -> bool {
        self.object_count == 0
    }
}

/// A running `git pack-objects --stdout`. Reading it yields the pack, header
/// first; the end of the stream is reported only once git exited
/// successfully, otherwise the last read fails with git's error.
pub struct PackStream {
    child: Option<Child>,
    deadline: super::Deadline,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<Vec<u8>>>,
    header: [u8; 12],
    header_pos: usize,
    object_count: u32,
    label: String,
}

impl PackStream {
    /// Objects in the pack, from its header. `0` means nothing new.
    pub fn object_count(&self) -> u32 {
        self.object_count
    }

    /// Wait for git and turn a failure into its error.
    fn finish(&mut self) -> Result<(), GitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait().map_err(|source| GitError::Io {
            context: format!("waiting for `git {}`", self.label),
            source,
        });
        let status = super::timed(status, &self.deadline, &self.label)?;
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(super::failed_status(&self.label, status, &stderr))
        }
    }
}

impl Read for PackStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.header_pos < self.header.len() {
            let n = buf.len().min(self.header.len() - self.header_pos);
            buf[..n].copy_from_slice(&self.header[self.header_pos..self.header_pos + n]);
            self.header_pos += n;
            return Ok(n);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 {
            self.finish().map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

impl Drop for PackStream {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start `git pack-objects --revs` for every object reachable from
/// `include` but not from `exclude`, and read its header.
///
/// Ids in `exclude` that the repository does not have are ignored (one
/// `cat-file --batch-check` finds them; the pack is then simply larger).
/// With `thin`, deltas may reference objects reachable from `exclude` that
/// are not in the pack; the receiver must index it with `--fix-thin` in a
/// repository that has them.
pub fn spawn_pack_objects(
    git_dir: &Path,
    include: &[ObjectId],
    exclude: &[ObjectId],
    thin: bool,
) -> Result<PackStream, GitError> {
    let present = present_objects(git_dir, exclude)?;
    let mut input = String::with_capacity((include.len() + exclude.len()) * 66);
    for id in include {
        input.push_str(id.as_str());
        input.push('\n');
    }
    for id in exclude.iter().filter(|id| present.contains(*id)) {
        input.push('^');
        input.push_str(id.as_str());
        input.push('\n');
    }
    let mut args = vec!["pack-objects", "--revs", "--stdout", "-q"];
    if thin {
        args.push("--thin");
    }
    args.push("--delta-base-offset");
    let label = args.join(" ");
    let mut cmd = git_at(git_dir, &args);
    cmd.stdin(Stdio::piped());
    let mut child = super::spawn(cmd, &label)?;
    let deadline = super::Deadline::arm(&child, &label);
    let mut stdin = child.stdin.take().expect("stdin was configured as piped");
    // The rev list can exceed a pipe's buffer: write it from a thread.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr was configured as piped");
    let stderr = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut buf);
        buf
    });
    let stdout = child.stdout.take().expect("stdout was configured as piped");
    let mut stream = PackStream {
        child: Some(child),
        deadline,
        stdout,
        stderr: Some(stderr),
        header: [0; 12],
        header_pos: 0,
        object_count: 0,
        label,
    };
    let mut header = [0u8; 12];
    let read = stream.stdout.read_exact(&mut header);
    let _ = writer.join();
    if let Err(e) = read {
        // git failed before writing a pack: its own error says why.
        stream.finish()?;
        return Err(GitError::BadPack {
            reason: format!("no pack header: {e}"),
        });
    }
    stream.object_count = parse_pack_header_prefix(&header)?;
    stream.header = header;
    Ok(stream)
}

/// Produce a pack in memory (see [`spawn_pack_objects`]); for small packs
/// and tests. A result with `object_count == 0` means there is nothing new.
pub fn pack_objects(
    git_dir: &Path,
    include: &[ObjectId],
    exclude: &[ObjectId],
    thin: bool,
) -> Result<Pack, GitError> {
    let mut stream = spawn_pack_objects(git_dir, include, exclude, thin)?;
    let object_count = stream.object_count();
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|e| unwrap_git_error(e, "reading `git pack-objects` output"))?;
    Ok(Pack {
        bytes,
        object_count,
    })
}

/// Check the `PACK` magic and version of `bytes` and return the object count
/// from its header.
pub fn parse_pack_header(bytes: &[u8]) -> Result<u32, GitError> {
    // 12-byte header plus at least a 20-byte trailer checksum.
    if bytes.len() < 32 {
        return Err(GitError::BadPack {
            reason: format!("only {} bytes", bytes.len()),
        });
    }
    parse_pack_header_prefix(bytes)
}

/// The object count of a pack whose first 12 bytes are `bytes`.
pub fn parse_pack_header_prefix(bytes: &[u8]) -> Result<u32, GitError> {
    if bytes.len() < 12 {
        return Err(GitError::BadPack {
            reason: format!("only {} bytes", bytes.len()),
        });
    }
    if &bytes[0..4] != b"PACK" {
        return Err(GitError::BadPack {
            reason: "missing PACK signature".into(),
        });
    }
    let version = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != 2 && version != 3 {
        return Err(GitError::BadPack {
            reason: format!("unsupported pack version {version}"),
        });
    }
    Ok(u32::from_be_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11],
    ]))
}

/// What [`index_pack_from`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    /// The pack's name: its checksum in hex, as git prints it.
    pub name: String,
    /// Whether git found the pack self-contained and every object it
    /// refers to inside it (so no connectivity walk is needed for it).
    pub connected: bool,
}

/// Store a pack (possibly thin) in the repository with
/// `git index-pack --stdin --fix-thin`. Returns the pack name (its checksum
/// in hex) as printed by git.
pub fn index_pack(git_dir: &Path, bytes: &[u8]) -> Result<String, GitError> {
    index_pack_from(git_dir, &mut &bytes[..]).map(|i| i.name)
}

/// Which program indexes a pack that needs no object outside itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PackIndexer {
    /// `git index-pack`.
    #[default]
    Git,
    /// `<program> index-pack`: knotd's own program, indexing with gix-pack
    /// on every core ([`super::gix_index`]) in a process of its own.
    Gix {
        /// The knotd executable.
        program: std::path::PathBuf,
    },
}

/// Index the pack read from `pack` into the repository: `git index-pack
/// --stdin --fix-thin --check-self-contained-and-connected` runs in a
/// quarantine directory (with the repository's objects as its alternate,
/// for the bases of a thin pack) while the pack streams in, and the finished
/// `.pack`, `.rev` and `.idx` are then moved into `objects/pack`, the index
/// last. A reader error stops git before it finishes, and nothing enters
/// the repository.
pub fn index_pack_from(git_dir: &Path, pack: &mut (dyn Read + Send)) -> Result<Indexed, GitError> {
    index_pack_from_with(git_dir, pack, &PackIndexer::Git)
}

/// [`index_pack_from`] with the given indexer. With [`PackIndexer::Gix`]
/// the pack must be self-contained (gix-pack cannot complete a thin
/// pack): the caller indexes anything it refuses with git instead.
pub fn index_pack_from_with(
    git_dir: &Path,
    pack: &mut (dyn Read + Send),
    indexer: &PackIndexer,
) -> Result<Indexed, GitError> {
    let objects = fs::canonicalize(git_dir.join("objects")).map_err(|source| GitError::Io {
        context: format!("opening {}", git_dir.join("objects").display()),
        source,
    })?;
    remove_stale_quarantines(&objects);
    let quarantine = tempfile::Builder::new()
        .prefix(QUARANTINE_PREFIX)
        .tempdir_in(&objects)
        .map_err(|source| GitError::Io {
            context: format!("creating a quarantine directory in {}", objects.display()),
            source,
        })?;
    let qpack = quarantine.path().join("pack");
    let qinfo = quarantine.path().join("info");
    // The repository's objects, for the bases of a thin pack. An alternates
    // file, not GIT_ALTERNATE_OBJECT_DIRECTORIES: paths hold `:` (DIDs).
    let prepared = fs::create_dir(&qpack)
        .and_then(|()| fs::create_dir(&qinfo))
        .and_then(|()| fs::write(qinfo.join("alternates"), format!("{}\n", objects.display())));
    prepared.map_err(|source| GitError::Io {
        context: format!("preparing {}", quarantine.path().display()),
        source,
    })?;

    let (mut cmd, label) = match indexer {
        PackIndexer::Git => {
            let args = [
                "index-pack",
                "--stdin",
                "--fix-thin",
                "--check-self-contained-and-connected",
            ];
            let mut cmd = git_at(git_dir, &args);
            cmd.env("GIT_OBJECT_DIRECTORY", quarantine.path());
            (cmd, args.join(" "))
        }
        PackIndexer::Gix { program } => {
            let mut cmd = std::process::Command::new(program);
            cmd.arg("index-pack")
                .arg("--pack-dir")
                .arg(&qpack)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (cmd, format!("{} index-pack", program.display()))
        }
    };
    cmd.stdin(Stdio::piped());
    let mut child = match indexer {
        PackIndexer::Git => super::spawn(cmd, &label)?,
        PackIndexer::Gix { .. } => cmd.spawn().map_err(|source| GitError::Io {
            context: format!("starting `{label}`"),
            source,
        })?,
    };
    let deadline = super::Deadline::arm(&child, &label);
    let mut stdin = child.stdin.take().expect("stdin was configured as piped");
    let (feed, out) = std::thread::scope(|scope| {
        let feeder = scope.spawn(move || -> io::Result<u64> {
            let copied = copy(pack, &mut stdin);
            drop(stdin);
            copied
        });
        let out = child.wait_with_output();
        (feeder.join(), out)
    });
    let out = out.map_err(|source| GitError::Io {
        context: format!("running `{label}`"),
        source,
    });
    let out = super::timed(out, &deadline, &label)?;
    match feed {
        Ok(Ok(_)) => {}
        // The reader's own error says what was wrong with the pack.
        Ok(Err(e)) if e.kind() != io::ErrorKind::BrokenPipe || out.status.success() => {
            return Err(GitError::Io {
                context: "reading the pack to index".into(),
                source: e,
            });
        }
        Ok(Err(_)) => {} // the indexer stopped reading: its status says why
        Err(_) => {
            return Err(GitError::Io {
                context: format!("feeding `{label}`"),
                source: io::Error::other("the feeding thread panicked"),
            });
        }
    }
    let (name, connected) = match indexer {
        PackIndexer::Git => parse_git_indexed(&out, &label)?,
        PackIndexer::Gix { .. } => parse_gix_indexed(&out, &label)?,
    };
    let dest = objects.join("pack");
    for ext in ["pack", "rev", "idx"] {
        let file = format!("pack-{name}.{ext}");
        let from = qpack.join(&file);
        if ext == "rev" && !from.exists() {
            continue;
        }
        fs::rename(&from, dest.join(&file)).map_err(|source| GitError::Io {
            context: format!("moving {} into {}", from.display(), dest.display()),
            source,
        })?;
    }
    if let Ok(dir) = fs::File::open(&dest) {
        let _ = dir.sync_all();
    }
    Ok(Indexed { name, connected })
}

/// Whether the pack `pack-<name>`, already in the repository, names only
/// objects the repository's packs hold: `<program> check-connected` reads
/// the packs in a process of its own, under the same deadline as git
/// ([`super::gix_index::connected_in_dir`]). A pack git completed from a
/// thin one is connected in this sense when the packs before it are.
pub fn pack_connected_in_repo(
    git_dir: &Path,
    name: &str,
    program: &Path,
) -> Result<bool, GitError> {
    let pack_dir = git_dir.join("objects").join("pack");
    let mut cmd = std::process::Command::new(program);
    cmd.arg("check-connected")
        .arg("--pack-dir")
        .arg(&pack_dir)
        .arg("--pack")
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let label = format!("{} check-connected", program.display());
    let child = cmd.spawn().map_err(|source| GitError::Io {
        context: format!("starting `{label}`"),
        source,
    })?;
    let deadline = super::Deadline::arm(&child, &label);
    let out = child.wait_with_output().map_err(|source| GitError::Io {
        context: format!("running `{label}`"),
        source,
    });
    let out = super::timed(out, &deadline, &label)?;
    let (checked, connected) = parse_gix_indexed(&out, &label)?;
    if checked != name {
        return Err(GitError::UnexpectedOutput {
            command: label,
            detail: format!("checked pack {checked}, asked for {name}"),
        });
    }
    Ok(connected)
}

/// The pack name and connectivity verdict of a finished `git index-pack`.
fn parse_git_indexed(out: &Output, label: &str) -> Result<(String, bool), GitError> {
    let connected = match out.status.code() {
        Some(0) => true,
        // 1: stored, but not self-contained and connected.
        Some(1) if !out.stdout.is_empty() => false,
        _ => return Err(super::failed(label, out)),
    };
    let line = stdout_line(&out.stdout, label)?;
    // Output is "pack\t<hash>" or "keep\t<hash>".
    let name = line
        .split_once('\t')
        .map(|(_, h)| h)
        .unwrap_or(line.as_str());
    Ok((checked_name(name, &line)?, connected))
}

/// The pack name and connectivity verdict of a finished `knotd
/// index-pack`: one line `pack\t<hash>\t(connected|unconnected)`.
fn parse_gix_indexed(out: &Output, label: &str) -> Result<(String, bool), GitError> {
    if !out.status.success() {
        let (status, stderr) = super::status_and_stderr(out.status, &out.stderr);
        return Err(GitError::IndexerFailed {
            command: label.to_owned(),
            status,
            stderr,
        });
    }
    let line = stdout_line(&out.stdout, label)?;
    let unexpected = || GitError::UnexpectedOutput {
        command: label.to_owned(),
        detail: bounded(&line, 200),
    };
    let mut fields = line.split('\t');
    let (Some("pack"), Some(name), Some(verdict), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(unexpected());
    };
    let connected = match verdict {
        GIX_CONNECTED => true,
        GIX_UNCONNECTED => false,
        _ => return Err(unexpected()),
    };
    Ok((checked_name(name, &line)?, connected))
}

/// What `knotd index-pack` prints after the pack name for a connected pack.
pub const GIX_CONNECTED: &str = "connected";
/// What `knotd index-pack` prints after the pack name otherwise.
pub const GIX_UNCONNECTED: &str = "unconnected";

/// `name` if it is a plausible pack checksum in hex.
fn checked_name(name: &str, line: &str) -> Result<String, GitError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GitError::UnexpectedOutput {
            command: "index-pack".into(),
            detail: bounded(line, 200),
        });
    }
    Ok(name.to_owned())
}

/// Copy `from` into `to` in 64 KiB steps.
fn copy(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Remove quarantine directories an interrupted run left in `objects`.
/// Callers serialize work on one repository, so none is in use.
fn remove_stale_quarantines(objects: &Path) {
    let Ok(entries) = fs::read_dir(objects) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(QUARANTINE_PREFIX)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The [`GitError`] inside an I/O error from a [`PackStream`], or the I/O
/// error itself with `context`.
pub fn unwrap_git_error(e: io::Error, context: &str) -> GitError {
    if e.get_ref().is_some_and(|inner| inner.is::<GitError>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<GitError>().expect("checked above");
    }
    GitError::Io {
        context: context.to_owned(),
        source: e,
    }
}

/// Write a commit-graph (`git commit-graph write --reachable`) and a
/// multi-pack-index over every pack of the repository with a reachability
/// bitmap (`git multi-pack-index write --bitmap`), so that `git
/// upload-pack` can count what a clone needs without walking every object
/// and start sending at once. Each file replaces the previous one
/// atomically; locks left by a killed run are removed first, so callers
/// must not run two of these on one repository at once.
pub fn write_midx_bitmap(git_dir: &Path) -> Result<(), GitError> {
    for lock in [
        "objects/info/commit-graph.lock",
        "objects/info/commit-graphs/commit-graph-chain.lock",
        "objects/pack/multi-pack-index.lock",
    ] {
        let lock = git_dir.join(lock);
        match fs::remove_file(&lock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(GitError::Io {
                    context: format!("removing the stale {}", lock.display()),
                    source,
                });
            }
        }
    }
    super::git_ok(
        git_dir,
        &["commit-graph", "write", "--reachable", "--no-progress"],
        None,
    )?;
    super::git_ok(
        git_dir,
        &["multi-pack-index", "write", "--bitmap", "--no-progress"],
        None,
    )
    .map(|_| ())
}
