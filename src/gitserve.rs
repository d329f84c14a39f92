//! git services the node runs for its clients, so that no client reads or
//! writes the node's files: `git upload-pack` on a materialized repository
//! bridged over a byte stream (the admin socket, for `git-remote-knot`),
//! and the command lines the smart HTTP server runs.
//!
//! Every git process here is killed when its future is dropped and is
//! bounded by an idle timeout. Nothing here survives a restart; the
//! temporary repositories live under the node's `tmp` directory, which the
//! node empties when it starts.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::git::{self, ObjectFormat};

/// How long a bridged git process may wait for its client before it is
/// stopped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of a git process's error output kept for the log.
const MAX_STDERR: usize = 8 * 1024;

/// Errors of the git services.
#[derive(Debug, thiserror::Error)]
pub enum GitServeError {
    /// git could not be started.
    #[error("cannot run git {what}: {source}; is git installed and on the node's PATH?")]
    Spawn {
        /// Which command.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A temporary repository could not be prepared.
    #[error("cannot prepare a temporary repository in {dir}: {reason}")]
    Temp {
        /// The node's temporary directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client sent nothing for too long.
    #[error("the client sent nothing for {0:?}; the transfer was stopped")]
    Idle(Duration),
    /// The stream broke.
    #[error("transfer failed: {0}")]
    Io(#[from] std::io::Error),
    /// git exited with an error.
    #[error("git {what} failed ({status}): {stderr}")]
    Failed {
        /// Which command.
        what: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of its error output.
        stderr: String,
    },
}

/// A validated `GIT_PROTOCOL` value (`version=2` and the like), or `None`.
pub fn git_protocol(value: &str) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b':' | b'.' | b'_' | b'-'));
    ok.then(|| value.to_string())
}

/// `git upload-pack` on `dir` with a clean environment: no repository
/// locating variables from the node's environment, no system or global
/// config, `GIT_PROTOCOL` only as given. `stateless` runs it for smart
/// HTTP (`--stateless-rpc`, and `advertise` only the refs).
pub fn upload_pack_command(
    dir: &Path,
    protocol: Option<&str>,
    stateless: bool,
    advertise: bool,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    for var in git::REPO_LOCATING_ENV {
        cmd.env_remove(var);
    }
    cmd.env_remove("GIT_PROTOCOL");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    if let Some(protocol) = protocol {
        cmd.env("GIT_PROTOCOL", protocol);
    }
    cmd.arg("upload-pack");
    if stateless {
        cmd.arg("--stateless-rpc");
        if advertise {
            cmd.arg("--advertise-refs");
        }
    } else {
        cmd.arg("--strict")
            .arg(format!("--timeout={}", IDLE_TIMEOUT.as_secs()));
    }
    cmd.arg(dir)
        .stdin(if advertise {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A repository to serve, with the temporary directory that holds it when
/// it is an empty stand-in.
#[derive(Debug)]
pub struct ServeTarget {
    dir: PathBuf,
    _empty: Option<tempfile::TempDir>,
}

impl ServeTarget {
    /// The materialized repository at `dir`.
    pub fn existing(dir: PathBuf) -> Self {
        Self { dir, _empty: None }
    }

    /// An empty repository in `tmp`, for a repository without content yet:
    /// a clone then says it cloned an empty repository.
    pub async fn empty(tmp: &Path, format: ObjectFormat) -> Result<Self, GitServeError> {
        let tmp = tmp.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let temp = |reason: String| GitServeError::Temp {
                dir: tmp.clone(),
                reason,
            };
            std::fs::create_dir_all(&tmp).map_err(|e| temp(e.to_string()))?;
            let dir = tempfile::Builder::new()
                .prefix("empty-")
                .tempdir_in(&tmp)
                .map_err(|e| temp(e.to_string()))?;
            let path =
                git::init_bare_with_format(dir.path(), format).map_err(|e| temp(e.to_string()))?;
            Ok(Self {
                dir: path,
                _empty: Some(dir),
            })
        })
        .await
        .map_err(|e| GitServeError::Temp {
            dir: PathBuf::new(),
            reason: e.to_string(),
        })?
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Run `git upload-pack` on `target` with its input from `input` and its
/// output to `output` (the git pack protocol, as over `git://`), until git
/// is done. The client's end of input ends git's input; git stops itself
/// after [`IDLE_TIMEOUT`] without input.
pub async fn bridge_upload_pack<R, W>(
    target: &ServeTarget,
    protocol: Option<&str>,
    mut input: R,
    mut output: W,
) -> Result<(), GitServeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut child = upload_pack_command(target.dir(), protocol, false, false)
        .spawn()
        .map_err(|source| GitServeError::Spawn {
            what: "upload-pack",
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let feed = async {
        // The client closing its side (or going away) ends git's input.
        let _ = tokio::io::copy(&mut input, &mut stdin).await;
        drop(stdin);
    };
    let drain = async {
        let copied = tokio::io::copy(&mut stdout, &mut output).await;
        let _ = output.shutdown().await;
        copied
    };
    let errors = read_capped(&mut stderr);
    let drained = tokio::select! {
        (copied, stderr_text) = async { tokio::join!(drain, errors) } => (copied, stderr_text),
        _ = async { feed.await; std::future::pending::<()>().await } => unreachable!(),
    };
    let (copied, stderr_text) = drained;
    let status = child.wait().await?;
    let bytes = copied?;
    debug!(dir = %target.dir().display(), bytes, %status, "upload-pack bridged");
    if !status.success() {
        return Err(GitServeError::Failed {
            what: "upload-pack",
            status,
            stderr: String::from_utf8_lossy(&stderr_text).trim().to_string(),
        });
    }
    Ok(())
}

/// A temporary repository holding a received pack, deleted when dropped.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
    git_dir: PathBuf,
    received: Option<git::Indexed>,
    thin: bool,
}

/// The file in a staging repository holding a thin pack's bytes as they
/// were received (the indexed pack has its bases appended).
pub const RECEIVED_THIN_PACK: &str = "knot-received-thin.pack";

impl Staging {
    /// Its git directory.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The pack received and indexed here (`objects/pack/pack-<name>.*`),
    /// none when the client sent none.
    pub fn received(&self) -> Option<&git::Indexed> {
        self.received.as_ref()
    }

    /// Whether the received pack was thin: then its bytes as received are
    /// kept in [`RECEIVED_THIN_PACK`], and the indexed pack differs from
    /// them; otherwise the indexed pack holds exactly the bytes received.
    pub fn thin(&self) -> bool {
        self.thin
    }

    /// Keep it on disk (for tests that inspect it).
    pub fn into_path(self) -> PathBuf {
        self.dir.keep()
    }
}

/// Most bytes a received pack may have when no quota says otherwise.
pub const MAX_RECEIVE_BYTES: u64 = 1 << 40;

/// Index the pack read from `pack` (possibly thin, possibly empty) into a
/// new temporary repository under `tmp` whose alternate is `base`'s object
/// store (the materialized repository, for the bases of a thin pack).
/// Reading stops with an error after [`IDLE_TIMEOUT`] without data, or
/// when the pack exceeds `max_bytes`; nothing then remains.
pub async fn receive_pack(
    tmp: &Path,
    base: Option<&Path>,
    format: ObjectFormat,
    pack: &mut (dyn AsyncRead + Unpin + Send),
    max_bytes: u64,
) -> Result<Staging, GitServeError> {
    let mut staging = {
        let tmp = tmp.to_path_buf();
        let base = base.map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || prepare_staging(&tmp, base.as_deref(), format))
            .await
            .map_err(|e| GitServeError::Temp {
                dir: PathBuf::new(),
                reason: e.to_string(),
            })??
    };
    let mut first = vec![0u8; 64 * 1024];
    let n = read_idle(pack, &mut first).await?;
    if n == 0 {
        return Ok(staging);
    }
    first.truncate(n);
    let mut cmd = git_in(staging.git_dir());
    cmd.args([
        "index-pack",
        "--stdin",
        "--fix-thin",
        "--check-self-contained-and-connected",
    ])
    .arg(format!("--max-input-size={max_bytes}"))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| GitServeError::Spawn {
        what: "index-pack",
        source,
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // The bytes as received are kept beside the pack git writes: when git
    // completes a thin pack, they are the smaller pack to publish.
    let raw_path = staging.git_dir().join(RECEIVED_THIN_PACK);
    let mut raw = tokio::fs::File::create(&raw_path).await?;
    let feed = async {
        stdin.write_all(&first).await?;
        raw.write_all(&first).await?;
        let mut received = first.len() as u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = read_idle(pack, &mut buf).await?;
            if n == 0 {
                break;
            }
            stdin.write_all(&buf[..n]).await?;
            raw.write_all(&buf[..n]).await?;
            received += n as u64;
        }
        drop(stdin);
        raw.flush().await?;
        Ok::<u64, GitServeError>(received)
    };
    let outputs = async {
        let (out, err) = tokio::join!(read_capped(&mut stdout), read_capped(&mut stderr));
        (out, err)
    };
    let (fed, (stdout_text, stderr_text)) = tokio::join!(feed, outputs);
    let status = child.wait().await?;
    let failed = || GitServeError::Failed {
        what: "index-pack",
        status,
        stderr: String::from_utf8_lossy(&stderr_text).trim().to_string(),
    };
    // 0: stored, self-contained and connected; 1 with its output: stored,
    // but it refers to objects outside it (a thin pack's bases or the
    // previous state's history).
    let connected = match status.code() {
        Some(0) => true,
        Some(1) if !stdout_text.is_empty() => false,
        _ => return Err(failed()),
    };
    let received = fed?;
    // The output is "pack\t<name>" (or "keep\t<name>").
    let text = String::from_utf8_lossy(&stdout_text);
    let line = text.lines().next().unwrap_or_default();
    let name = line.split_once('\t').map_or(line, |(_, name)| name).trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(failed());
    }
    let indexed = staging
        .git_dir()
        .join("objects/pack")
        .join(format!("pack-{name}.pack"));
    let indexed_len = tokio::fs::metadata(&indexed).await?.len();
    // git writes a pack it need not complete exactly as received.
    staging.thin = indexed_len != received;
    if !staging.thin {
        tokio::fs::remove_file(&raw_path).await?;
    }
    staging.received = Some(git::Indexed {
        name: name.to_owned(),
        connected,
    });
    Ok(staging)
}

/// The start of a process's error output, draining the rest so that the
/// process never blocks on a full pipe.
async fn read_capped(reader: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = (&mut *reader)
        .take(MAX_STDERR as u64)
        .read_to_end(&mut buf)
        .await;
    let _ = tokio::io::copy(reader, &mut tokio::io::sink()).await;
    buf
}

/// Read with the idle timeout.
async fn read_idle(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    buf: &mut [u8],
) -> Result<usize, GitServeError> {
    match tokio::time::timeout(IDLE_TIMEOUT, reader.read(buf)).await {
        Ok(read) => Ok(read?),
        Err(_) => Err(GitServeError::Idle(IDLE_TIMEOUT)),
    }
}

fn prepare_staging(
    tmp: &Path,
    base: Option<&Path>,
    format: ObjectFormat,
) -> Result<Staging, GitServeError> {
    let temp = |reason: String| GitServeError::Temp {
        dir: tmp.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(tmp).map_err(|e| temp(e.to_string()))?;
    let dir = tempfile::Builder::new()
        .prefix("receive-")
        .tempdir_in(tmp)
        .map_err(|e| temp(e.to_string()))?;
    let git_dir =
        git::init_bare_with_format(dir.path(), format).map_err(|e| temp(e.to_string()))?;
    if let Some(base) = base {
        // An alternates file, not GIT_ALTERNATE_OBJECT_DIRECTORIES: the
        // path holds `:` (DIDs).
        let objects =
            std::fs::canonicalize(base.join("objects")).map_err(|e| temp(e.to_string()))?;
        std::fs::write(
            git_dir.join("objects/info/alternates"),
            format!("{}\n", objects.display()),
        )
        .map_err(|e| temp(e.to_string()))?;
    }
    Ok(Staging {
        dir,
        git_dir,
        received: None,
        thin: false,
    })
}

/// `git` working on `git_dir`, with a clean environment.
fn git_in(git_dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    for var in git::REPO_LOCATING_ENV {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_DIR", git_dir);
    cmd
}

/// Remove temporary repositories left by a previous run (crash, kill).
pub fn clear_tmp(tmp: &Path) {
    if let Ok(entries) = std::fs::read_dir(tmp) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}
