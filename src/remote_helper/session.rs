//! One run of the remote helper: git's commands in, answers out, the node
//! asked through the typed admin client.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::{CAPABILITIES, HelperCommand, Options, ProtocolError, human_bytes, listing};
use crate::{
    admin::{
        self, AdminClient, AdminError, LocalPublish, NodeEvent, PackProgress, PublishReport,
        RefsReport, SyncReport,
    },
    git::{self, RefSet},
    push::{self, PushError, PushSpec},
    repo_id::RepoId,
};

/// How long a push waits for replicas when `knot.replicasTimeout` is unset.
const DEFAULT_REPLICAS_TIMEOUT: u64 = 60;

/// Errors that end the helper (git shows them as `fatal: knot: ...`).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// git spoke something this helper does not understand.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A push line was malformed.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The node could not be reached.
    #[error(
        "cannot reach knotd at {path} (from {source_setting}): {error}; is the node running? Start it with `knotd run`, or set KNOT_SOCKET (or `git config knot.socket`) to its admin socket"
    )]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Which setting named it.
        source_setting: String,
        /// The connection error.
        error: std::io::Error,
    },
    /// The node (or the local side) refused.
    #[error("{0}")]
    Admin(AdminError),
    /// Talking to git failed.
    #[error("talking to git failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the helper finds the admin socket, and which setting named it:
/// `KNOT_SOCKET`, else `git config knot.socket`, else as every client does
/// ([`admin::locate_socket`]).
pub fn locate() -> Result<(PathBuf, String), AdminError> {
    if let Some(s) = std::env::var_os("KNOT_SOCKET").filter(|s| !s.is_empty()) {
        return Ok((PathBuf::from(s), "KNOT_SOCKET".into()));
    }
    if let Ok(out) = std::process::Command::new("git")
        .args(["config", "--type=path", "--get", "knot.socket"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !value.is_empty() {
            return Ok((PathBuf::from(value), "git config knot.socket".into()));
        }
    }
    admin::locate_socket()
}

/// One helper run for one repository.
pub struct Session {
    repo_id: RepoId,
    client: AdminClient,
    socket_source: String,
    options: Options,
    /// The node's refs as last listed (what git's push rules saw).
    state: Option<RefsReport>,
}

impl Session {
    /// A session for `url` talking to the node at `socket`; progress is
    /// shown by default when `progress` (stderr is a terminal).
    pub fn new(
        url: &str,
        socket: PathBuf,
        socket_source: String,
        progress: bool,
    ) -> Result<Self, SessionError> {
        Ok(Self {
            repo_id: super::parse_url(url)?,
            client: AdminClient::new(socket),
            socket_source,
            options: Options::new(progress),
            state: None,
        })
    }

    /// Answer git until it is done. Returns the exit code.
    pub async fn run<R, W>(&mut self, mut input: R, mut output: W) -> Result<u8, SessionError>
    where
        R: AsyncBufRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        loop {
            let mut line = String::new();
            if input.read_line(&mut line).await? == 0 {
                return Ok(0);
            }
            match HelperCommand::parse(&line)? {
                HelperCommand::End => return Ok(0),
                HelperCommand::Capabilities => output.write_all(CAPABILITIES.as_bytes()).await?,
                HelperCommand::Option { name, value } => {
                    let reply = self.options.set(&name, &value);
                    output.write_all(format!("{reply}\n").as_bytes()).await?;
                }
                HelperCommand::Connect(service) if service == "git-upload-pack" => {
                    return self.connect_upload_pack(input, output).await;
                }
                HelperCommand::Connect(_) => {
                    // Push goes through the `push` capability.
                    output.write_all(b"fallback\n").await?;
                }
                HelperCommand::List { for_push } => {
                    let state = self.remote_state(for_push).await?;
                    output.write_all(listing(&state.refs).as_bytes()).await?;
                    self.state = Some(state);
                }
                HelperCommand::Push(first) => {
                    let lines = read_push_batch(first, &mut input).await?;
                    for reply in self.push(&lines).await? {
                        output.write_all(format!("{reply}\n").as_bytes()).await?;
                    }
                    output.write_all(b"\n").await?;
                }
            }
            output.flush().await?;
        }
    }

    /// A progress line, when progress is wanted.
    fn note(&self, message: impl AsRef<str>) {
        if self.options.show_progress() {
            eprintln!("knot: {}", message.as_ref());
        }
    }

    /// Tell the user an outcome they asked for (shown unless git is quiet).
    fn tell(&self, message: impl AsRef<str>) {
        if self.options.verbosity > 0 {
            eprintln!("knot: {}", message.as_ref());
        }
    }

    /// Turn a client error into one that says what to do.
    fn admin_error(&self, e: AdminError) -> SessionError {
        match e {
            AdminError::Connect { path, source } => SessionError::Unreachable {
                path,
                source_setting: self.socket_source.clone(),
                error: source,
            },
            other => SessionError::Admin(other),
        }
    }

    /// Ask the node to sync the repository, showing its fetch progress.
    async fn sync(&self) -> Result<SyncReport, SessionError> {
        self.note(format!("syncing {} ...", self.repo_id));
        let started = Instant::now();
        let watcher = if self.options.show_progress()
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
        {
            Some(
                self.client
                    .watch_in_background(&self.repo_id, move |event| {
                        if let NodeEvent::FetchProgress { bytes, total, .. } = event.event {
                            let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                            let total = total
                                .map(|t| format!("/{}", human_bytes(t)))
                                .unwrap_or_default();
                            eprint!(
                                "\rknot: fetching {}{total} ({}/s)\x1b[K",
                                human_bytes(bytes),
                                human_bytes(rate as u64)
                            );
                        }
                    })
                    .await,
            )
        } else {
            None
        };
        let result = self.client.sync(&self.repo_id).await;
        if let Some(watcher) = watcher {
            watcher.abort();
            eprint!("\r\x1b[K");
        }
        let report = result.map_err(|e| self.admin_error(e))?;
        let mut line = format!("{}: {}", self.repo_id, report.message);
        if report.bytes_fetched > 0 {
            line.push_str(&format!(
                " ({} fetched in {:.1}s)",
                human_bytes(report.bytes_fetched),
                started.elapsed().as_secs_f64()
            ));
        }
        self.note(line);
        Ok(report)
    }

    /// The node's refs after a sync. For a push, a repository the node has
    /// no content for is new and starts empty.
    async fn remote_state(&self, for_push: bool) -> Result<RefsReport, SessionError> {
        let synced = self.sync().await;
        let refs = self.client.refs(&self.repo_id).await;
        match (synced, refs) {
            (Ok(_), Ok(refs)) => Ok(refs),
            (Err(e), refs) if for_push => match refs {
                Ok(report) if report.manifest.is_some() => Err(e),
                Ok(_) | Err(AdminError::Remote(_)) => {
                    self.note(format!(
                        "{} has no content on this node yet; the push creates it",
                        self.repo_id
                    ));
                    Ok(RefsReport {
                        repo_id: self.repo_id.to_string(),
                        manifest: None,
                        refs: RefSet::default(),
                    })
                }
                Err(other) => Err(self.admin_error(other)),
            },
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(self.admin_error(e)),
        }
    }

    /// Fetch: sync, then bridge git to `git upload-pack` run by the node.
    async fn connect_upload_pack<R, W>(
        &mut self,
        input: R,
        mut output: W,
    ) -> Result<u8, SessionError>
    where
        R: AsyncBufRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        self.sync().await?;
        let protocol = std::env::var("GIT_PROTOCOL").ok();
        let (mut from_node, mut to_node) = self
            .client
            .upload_pack(&self.repo_id, protocol)
            .await
            .map_err(|e| self.admin_error(e))?;
        output.write_all(b"\n").await?;
        output.flush().await?;
        let mut input = input;
        let upstream = async {
            let _ = tokio::io::copy_buf(&mut input, &mut to_node).await;
            let _ = to_node.shutdown().await;
        };
        let downstream = async {
            let copied = tokio::io::copy_buf(&mut from_node, &mut output).await;
            let _ = output.flush().await;
            copied
        };
        // Done when the node's side ends (upload-pack exited); git's side
        // may stay open.
        let copied = tokio::select! {
            copied = downstream => copied,
            _ = async { upstream.await; std::future::pending::<()>().await } => unreachable!(),
        };
        copied?;
        Ok(0)
    }

    /// Handle one batch of `push` lines; returns the status lines.
    async fn push(&mut self, lines: &[String]) -> Result<Vec<String>, SessionError> {
        let specs = lines
            .iter()
            .map(|l| PushSpec::parse(l))
            .collect::<Result<Vec<_>, _>>()?;
        let remote = match self.state.take() {
            Some(state) => state,
            None => self.remote_state(true).await?,
        };
        let git_dir = admin::current_git_dir().map_err(SessionError::Admin)?;
        let sources: Vec<String> = specs.iter().filter_map(|s| s.src.clone()).collect();
        let (resolved, local_branch) = {
            let git_dir = git_dir.clone();
            tokio::task::spawn_blocking(move || {
                let resolved = git::resolve_names(&git_dir, &sources);
                (resolved, git::head_branch(&git_dir))
            })
            .await
            .map_err(|e| SessionError::Admin(AdminError::Local(e.to_string())))?
        };
        let resolved =
            resolved.map_err(|e| SessionError::Admin(AdminError::Local(e.to_string())))?;
        let plan = push::plan(&remote.refs, &specs, &resolved, local_branch.as_deref());
        if self.options.dry_run || !plan.changed {
            return Ok(plan.reply_lines(None));
        }
        let started = Instant::now();
        self.note(format!("publishing {} ...", self.repo_id));
        let published = self
            .client
            .publish_local(
                &self.repo_id,
                LocalPublish {
                    git_dir: &git_dir,
                    refs: &plan.refs,
                    tips: &plan.tips,
                    remote: &remote.refs,
                    force: plan.force,
                    expected_manifest: remote.manifest.clone(),
                    progress: if self.options.show_progress() {
                        PackProgress::Stderr
                    } else {
                        PackProgress::Quiet
                    },
                },
            )
            .await;
        match published {
            Ok(report) => {
                self.note(published_line(&report, started));
                match self.await_replicas().await {
                    Ok(()) => Ok(plan.reply_lines(None)),
                    Err(why) => {
                        eprintln!("knot: {why}");
                        Ok(plan.reply_lines(Some(&why)))
                    }
                }
            }
            Err(e) => {
                let why = self.admin_error(e).to_string();
                if !self.options.show_progress() {
                    // git shows the per-ref reason; say once what failed.
                    eprintln!("knot: publishing {} failed: {why}", self.repo_id);
                }
                Ok(plan.reply_lines(Some(&format!("knot publish failed: {why}"))))
            }
        }
    }

    /// Wait for the replicas `git config knot.replicas` asks for, if any.
    async fn await_replicas(&self) -> Result<(), String> {
        let Some((count, timeout)) = replicas_config() else {
            return Ok(());
        };
        self.note(format!(
            "waiting until {count} peers hold {} ...",
            self.repo_id
        ));
        match self.client.replicas(&self.repo_id, count, timeout).await {
            Ok(report) => {
                let counted: Vec<String> = report.holding.iter().map(|p| p.to_string()).collect();
                self.tell(format!(
                    "{} peers hold it: {}",
                    report.holding.len(),
                    counted.join(", ")
                ));
                Ok(())
            }
            Err(e) => Err(format!("published, but {e}")),
        }
    }
}

/// Read the rest of a `push` batch: `push` lines up to a blank line.
async fn read_push_batch<R: AsyncBufRead + Unpin>(
    first: String,
    input: &mut R,
) -> Result<Vec<String>, SessionError> {
    let mut lines = vec![first];
    loop {
        let mut next = String::new();
        if input.read_line(&mut next).await? == 0 {
            break;
        }
        let next = next.trim_end_matches(['\n', '\r']);
        match next.strip_prefix("push ") {
            Some(spec) => lines.push(spec.to_string()),
            None if next.is_empty() => break,
            None => return Err(ProtocolError::PushBatch(next.to_string()).into()),
        }
    }
    Ok(lines)
}

/// `git config knot.replicas` (and `knot.replicasTimeout`, seconds): how
/// many other peers must hold a pushed state before the push counts.
fn replicas_config() -> Option<(u32, Duration)> {
    let get = |key: &str| {
        std::process::Command::new("git")
            .args(["config", "--get", key])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let count = get("knot.replicas")?.parse().ok().filter(|n| *n > 0)?;
    let timeout = get("knot.replicasTimeout")
        .and_then(|t| t.parse().ok())
        .unwrap_or(DEFAULT_REPLICAS_TIMEOUT);
    Some((count, Duration::from_secs(timeout)))
}

/// The line a push prints once the node published.
pub fn published_line(report: &PublishReport, started: Instant) -> String {
    let short: String = report.manifest.chars().take(12).collect();
    if report.unchanged {
        return format!(
            "{}: nothing new to publish (manifest {short})",
            report.repo_id
        );
    }
    format!(
        "published manifest {short} ({} pack{}, {} added{}) in {:.1}s",
        report.pack_count,
        if report.pack_count == 1 { "" } else { "s" },
        human_bytes(report.bytes_added),
        if report.consolidated {
            ", packs consolidated"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn push_batches_end_at_a_blank_line() {
        let mut input = &b"push b:b\npush :c\n\nlist\n"[..];
        let lines = read_push_batch("a:a".into(), &mut input).await.unwrap();
        assert_eq!(lines, vec!["a:a", "b:b", ":c"]);
        let mut bad = &b"list\n"[..];
        assert!(matches!(
            read_push_batch("a:a".into(), &mut bad).await,
            Err(SessionError::Protocol(ProtocolError::PushBatch(_)))
        ));
    }

    #[test]
    fn published_lines_say_what_happened() {
        let report = PublishReport {
            repo_id: "did:plc:a/b".into(),
            head: None,
            manifest: "0123456789abcdef".into(),
            pack_count: 2,
            bytes_added: 2048,
            consolidated: true,
            unchanged: false,
        };
        let line = published_line(&report, Instant::now());
        assert!(
            line.starts_with(
                "published manifest 0123456789ab (2 packs, 2.0 KiB added, packs consolidated)"
            ),
            "{line}"
        );
        let same = PublishReport {
            unchanged: true,
            ..report
        };
        assert!(published_line(&same, Instant::now()).contains("nothing new"));
    }

    #[tokio::test]
    async fn a_node_that_is_not_running_is_named_with_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let mut session = Session::new(
            "knot://did:plc:a/b",
            dir.path().join("none.sock"),
            "KNOT_SOCKET".into(),
            false,
        )
        .unwrap();
        let mut out = Vec::new();
        let err = session
            .run(&b"list\n"[..], &mut out)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.sock (from KNOT_SOCKET)"), "{err}");
        assert!(err.contains("knotd run"), "{err}");
    }
}
