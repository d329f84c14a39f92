//! `git-remote-knot`: the git remote helper for `knot://<did>/<name>` URLs.
//!
//! git runs it as `git-remote-knot <remote> <url>` with the repository in
//! `GIT_DIR` and talks to it over stdin/stdout (see `gitremote-helpers(7)`).
//!
//! * Fetch and clone use the `connect` capability: the helper asks the local
//!   knotd to sync the repository, then bridges git to `git upload-pack`
//!   running on the node's materialized bare repository. Any protocol version
//!   git asks for (through `GIT_PROTOCOL`) works, as over ssh.
//! * Push uses the `push` capability: the helper builds a temporary staging
//!   bare repository whose refs are the repository's current state and whose
//!   objects borrow the materialized repository's (alternates), lets
//!   `git push` update it with git's own fast-forward rules, then asks the
//!   node to publish the staging repository as the new state.
//!
//! The node's admin socket is found through `KNOT_SOCKET`, else the git
//! config `knot.socket`, else the config file named by `KNOTD_CONFIG`, else
//! the default data directory.

use std::{
    io::{self, IsTerminal, Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};
use knotd::{
    admin::{self, AdminError, Command as AdminCommand, Payload, PublishReport, SyncReport},
    config::Config,
    git::{self, Head, ObjectFormat, RefSet},
    repo_id::RepoId,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: git-remote-knot <remote> <url>\n\
             git runs this helper for knot://<did>/<name> URLs, e.g.\n  \
             git clone knot://did:plc:abc123/website"
        );
        return ExitCode::from(129);
    }
    match Helper::new(&args[2]).and_then(|mut h| h.run()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fatal: knot: {}", error_text(&e));
            ExitCode::from(128)
        }
    }
}

/// An error and its causes on one line, without repeating a cause that its
/// parent already spells out.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// Parse the URL git hands over: `knot://<did>/<name>` (or `<did>/<name>`
/// for the `knot::<address>` form). A trailing `/` or `.git` is ignored.
fn parse_url(url: &str) -> Result<RepoId> {
    let rest = url.strip_prefix("knot://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    RepoId::parse(rest).map_err(|e| {
        anyhow!("invalid knot URL {url:?}: {e}; use knot://<did>/<name>, e.g. knot://did:plc:abc123/website")
    })
}

/// Where the admin socket is and which setting named it.
fn resolve_socket() -> Result<(PathBuf, String)> {
    if let Some(s) = std::env::var_os("KNOT_SOCKET").filter(|s| !s.is_empty()) {
        return Ok((PathBuf::from(s), "KNOT_SOCKET".into()));
    }
    if let Ok(out) = Command::new("git")
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
    let data_dir = std::env::var_os("KNOTD_DATA_DIR").filter(|s| !s.is_empty());
    let (mut config, source) = match std::env::var_os("KNOTD_CONFIG").filter(|s| !s.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            let config = Config::load(&path)?;
            (config, format!("KNOTD_CONFIG={}", path.display()))
        }
        None => (Config::default(), "the default data directory".into()),
    };
    if let Some(dir) = data_dir {
        config.data_dir = PathBuf::from(dir);
        config.admin_socket = None;
        return Ok((config.admin_socket_path(), "KNOTD_DATA_DIR".into()));
    }
    Ok((config.admin_socket_path(), source))
}

/// A human-readable byte count.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// Collapse a message to one line, as the helper protocol needs.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A `git` command that works on a repository named explicitly, not on the
/// user's repository from the environment.
fn git_for(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    for var in git::REPO_LOCATING_ENV {
        cmd.env_remove(var);
    }
    // The node's repositories may belong to another user (a system service).
    cmd.arg("-c")
        .arg(format!("safe.directory={}", dir.display()));
    cmd
}

/// The state of the repository on the node, as seen before a push.
struct RemoteState {
    /// The manifest the node holds, if any.
    manifest: Option<String>,
    /// The materialized bare repository, if the node has content.
    path: Option<PathBuf>,
    /// Its refs (empty for a new repository).
    refs: RefSet,
}

/// A staging repository prepared for a push.
struct Staging {
    dir: tempfile::TempDir,
    manifest: Option<String>,
}

/// One `push` line.
struct PushSpec {
    force: bool,
    src: String,
    dst: String,
}

struct Helper {
    repo_id: RepoId,
    socket: PathBuf,
    socket_source: String,
    runtime: tokio::runtime::Runtime,
    progress: bool,
    verbosity: u32,
    dry_run: bool,
    state: Option<RemoteState>,
}

impl Helper {
    fn new(url: &str) -> Result<Helper> {
        let repo_id = parse_url(url)?;
        let (socket, socket_source) = resolve_socket()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        Ok(Helper {
            repo_id,
            socket,
            socket_source,
            runtime,
            progress: io::stderr().is_terminal(),
            verbosity: 1,
            dry_run: false,
            state: None,
        })
    }

    /// Print a progress line when progress is wanted.
    fn note(&self, message: impl AsRef<str>) {
        if self.progress && self.verbosity > 0 {
            eprintln!("knot: {}", message.as_ref());
        }
    }

    /// While a sync runs, show the node's fetch progress on stderr (bytes,
    /// total, rate), when stderr is a terminal and git asked for progress.
    fn show_fetch_progress(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.progress || !io::stderr().is_terminal() {
            return None;
        }
        let socket = self.socket.clone();
        let watch = AdminCommand::Watch {
            repo_id: Some(self.repo_id.clone()),
        };
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = self.runtime.spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let started = Instant::now();
            let _ = admin::request_streaming(&socket, &watch, |event| match event.event {
                knotd::admin::NodeEvent::Watching => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                knotd::admin::NodeEvent::FetchProgress { bytes, total, .. } => {
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
                _ => {}
            })
            .await;
        });
        // Wait (briefly) until the watch is set up, so nothing is missed.
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), ready).await
        });
        Some(task)
    }

    /// Send one command to the node, with errors that say what to do.
    fn request(&self, command: AdminCommand) -> Result<Payload> {
        self.runtime
            .block_on(admin::request(&self.socket, &command))
            .map_err(|e| match e {
                AdminError::Connect { path, source } => anyhow!(
                    "cannot reach knotd at {} (from {}): {source}; is the node running? \
                     Start it with `knotd run`, or set KNOT_SOCKET (or `git config knot.socket`) \
                     to its admin socket",
                    path.display(),
                    self.socket_source
                ),
                AdminError::Remote(message) => anyhow!("{message}"),
                other => anyhow!(other),
            })
    }

    /// The main loop: read commands until git closes stdin or sends a blank
    /// line. Returns the exit code.
    fn run(&mut self) -> Result<u8> {
        let stdin = io::stdin();
        let mut out = io::stdout();
        loop {
            let mut line = String::new();
            if stdin.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                return Ok(0);
            }
            let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
            match command {
                "capabilities" => {
                    out.write_all(b"connect\npush\noption\n\n")?;
                }
                "option" => {
                    let reply = self.option(arg);
                    writeln!(out, "{reply}")?;
                }
                "connect" => {
                    if arg == "git-upload-pack" {
                        return self.connect_upload_pack();
                    }
                    // Push goes through the `push` capability.
                    out.write_all(b"fallback\n")?;
                }
                "list" => {
                    let for_push = arg == "for-push";
                    let listing = self.list(for_push)?;
                    out.write_all(listing.as_bytes())?;
                }
                "push" => {
                    let mut lines = vec![arg.to_string()];
                    loop {
                        let mut next = String::new();
                        if stdin.read_line(&mut next)? == 0 {
                            break;
                        }
                        let next = next.trim_end_matches(['\n', '\r']);
                        match next.strip_prefix("push ") {
                            Some(spec) => lines.push(spec.to_string()),
                            None if next.is_empty() => break,
                            None => bail!("unexpected line in a push batch: {next:?}"),
                        }
                    }
                    let replies = self.push(&lines)?;
                    for reply in replies {
                        writeln!(out, "{reply}")?;
                    }
                    writeln!(out)?;
                }
                other => bail!("unsupported remote helper command {other:?}"),
            }
            out.flush()?;
        }
    }

    fn option(&mut self, arg: &str) -> &'static str {
        let (name, value) = arg.split_once(' ').unwrap_or((arg, ""));
        match name {
            "progress" => match value {
                "true" => {
                    self.progress = true;
                    "ok"
                }
                "false" => {
                    self.progress = false;
                    "ok"
                }
                _ => "error progress takes true or false",
            },
            "verbosity" => match value.parse() {
                Ok(v) => {
                    self.verbosity = v;
                    "ok"
                }
                Err(_) => "error verbosity takes a number",
            },
            "dry-run" => match value {
                "true" => {
                    self.dry_run = true;
                    "ok"
                }
                "false" => {
                    self.dry_run = false;
                    "ok"
                }
                _ => "error dry-run takes true or false",
            },
            _ => "unsupported",
        }
    }

    /// Ask the node to sync the repository.
    fn sync(&self) -> Result<SyncReport> {
        self.note(format!("syncing {} ...", self.repo_id));
        let started = Instant::now();
        let watcher = self.show_fetch_progress();
        let payload = self.request(AdminCommand::Sync {
            repo_id: self.repo_id.clone(),
        });
        if let Some(watcher) = watcher {
            watcher.abort();
            eprint!("\r\x1b[K");
        }
        let payload = payload?;
        let Payload::Synced(report) = payload else {
            bail!("knotd answered sync with an unexpected reply: {payload:?}");
        };
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

    /// Whether the node tracks the repository, and its manifest if so.
    fn tracked(&self) -> Result<Option<Option<String>>> {
        match self.request(AdminCommand::List)? {
            Payload::Repos { repos } => Ok(repos
                .into_iter()
                .find(|r| r.repo_id == self.repo_id.as_str())
                .map(|r| r.manifest)),
            other => bail!("knotd answered list with an unexpected reply: {other:?}"),
        }
    }

    /// The repository's current state on the node. For a push, a repository
    /// the node has never held is new and starts empty.
    fn remote_state(&self, for_push: bool) -> Result<RemoteState> {
        let report = match self.sync() {
            Ok(report) => report,
            Err(e) if for_push => match self.tracked()? {
                None | Some(None) => {
                    self.note(format!(
                        "{} has no content on this node yet; the push creates it",
                        self.repo_id
                    ));
                    return Ok(RemoteState {
                        manifest: None,
                        path: None,
                        refs: RefSet::default(),
                    });
                }
                Some(Some(_)) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let refs = match &report.path {
            Some(path) => git::read_refs(path).with_context(|| {
                format!(
                    "cannot read the refs of the materialized repository {}",
                    path.display()
                )
            })?,
            None => RefSet::default(),
        };
        Ok(RemoteState {
            manifest: report.manifest,
            path: report.path,
            refs,
        })
    }

    /// Answer `list` / `list for-push`.
    fn list(&mut self, for_push: bool) -> Result<String> {
        let state = self.remote_state(for_push)?;
        let mut text = String::new();
        for (name, id) in &state.refs.refs {
            text.push_str(&format!("{id} {name}\n"));
        }
        match &state.refs.head {
            Some(Head::Symbolic(target)) if state.refs.refs.contains_key(target) => {
                text.push_str(&format!("@{target} HEAD\n"));
            }
            Some(Head::Detached(id)) => text.push_str(&format!("{id} HEAD\n")),
            _ => {}
        }
        text.push('\n');
        self.state = Some(state);
        Ok(text)
    }

    /// Fetch: sync, then bridge git to `git upload-pack` on the materialized
    /// repository. Returns upload-pack's exit code.
    fn connect_upload_pack(&mut self) -> Result<u8> {
        let report = self.sync()?;
        // A repository without content yet: serve an empty one, so that a
        // clone says it cloned an empty repository.
        let mut _empty = None;
        let path = match report.path {
            Some(path) => path,
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("knot-empty-")
                    .tempdir()
                    .context("cannot create a temporary directory")?;
                git::init_bare(dir.path())?;
                let path = dir.path().to_path_buf();
                _empty = Some(dir);
                path
            }
        };
        let mut child = git_for(&path)
            .arg("upload-pack")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run git upload-pack")?;
        let mut out = io::stdout().lock();
        out.write_all(b"\n")?;
        out.flush()?;

        let mut child_in = child.stdin.take().expect("piped stdin");
        // Ends when git closes our stdin; the process exits without waiting
        // for it once upload-pack is done.
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if child_in.write_all(&buf[..n]).is_err() || child_in.flush().is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut child_out = child.stdout.take().expect("piped stdout");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match child_out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).is_err() || out.flush().is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let status = child.wait()?;
        let code = status.code().unwrap_or(128);
        drop(_empty);
        // Do not wait for the stdin thread.
        std::process::exit(code);
    }

    /// Build the staging repository for a push from the node's state.
    fn prepare_staging(&self, state: &RemoteState) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix("knot-staging-")
            .tempdir()
            .context("cannot create the staging directory")?;
        let format = match state.refs.object_format()? {
            Some(format) => format,
            None => local_object_format(),
        };
        git::init_bare_with_format(dir.path(), format)?;
        if let Some(path) = &state.path {
            let objects = std::fs::canonicalize(path)
                .with_context(|| format!("cannot open {}", path.display()))?
                .join("objects");
            std::fs::write(
                dir.path().join("objects/info/alternates"),
                format!("{}\n", objects.display()),
            )
            .context("cannot write the staging repository's alternates")?;
            git::apply_refs(dir.path(), &state.refs)
                .context("cannot copy the current refs into the staging repository")?;
        }
        // Let a node running as another user read what is published.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        }
        let status = git_for(dir.path())
            .arg("-C")
            .arg(dir.path())
            .args(["config", "receive.denyDeleteCurrent", "ignore"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("cannot configure the staging repository");
        }
        Ok(Staging {
            dir,
            manifest: state.manifest.clone(),
        })
    }

    /// Handle one batch of `push` lines; returns the status lines.
    fn push(&mut self, lines: &[String]) -> Result<Vec<String>> {
        let specs: Vec<PushSpec> = lines
            .iter()
            .map(|line| {
                let (force, spec) = match line.strip_prefix('+') {
                    Some(rest) => (true, rest),
                    None => (false, line.as_str()),
                };
                let (src, dst) = spec
                    .split_once(':')
                    .ok_or_else(|| anyhow!("malformed push line {line:?}"))?;
                Ok(PushSpec {
                    force,
                    src: src.to_string(),
                    dst: dst.to_string(),
                })
            })
            .collect::<Result<_>>()?;
        if self.state.is_none() {
            self.state = Some(self.remote_state(true)?);
        }
        let state = self.state.take().expect("state is set");
        let staging = self.prepare_staging(&state)?;
        let result = self.push_to_staging(&specs, &staging);
        drop(staging);
        result
    }

    fn push_to_staging(&self, specs: &[PushSpec], staging: &Staging) -> Result<Vec<String>> {
        let mut cmd = Command::new("git");
        cmd.args(["push", "--porcelain", "--no-verify"]);
        let show_progress = self.progress && self.verbosity > 0;
        cmd.arg(if show_progress {
            "--progress"
        } else {
            "--no-progress"
        });
        cmd.arg(staging.dir.path());
        for spec in specs {
            cmd.arg(format!(
                "{}{}:{}",
                if spec.force { "+" } else { "" },
                spec.src,
                spec.dst
            ));
        }
        cmd.env_remove("GIT_PROTOCOL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if show_progress {
                Stdio::inherit()
            } else {
                Stdio::piped()
            });
        let out = cmd.output().context("cannot run git push")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);

        // Porcelain lines: <flag> TAB <src>:<dst> TAB <summary>
        let mut statuses: Vec<(String, Result<(), String>)> = Vec::new();
        for line in stdout.lines() {
            let mut parts = line.splitn(3, '\t');
            let (Some(flag), Some(refs), summary) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some((_, dst)) = refs.rsplit_once(':') else {
                continue;
            };
            let summary = summary.unwrap_or("");
            let status = if flag == "!" {
                let reason = summary
                    .rfind('(')
                    .and_then(|i| summary[i + 1..].strip_suffix(')'))
                    .unwrap_or(summary);
                Err(one_line(reason))
            } else {
                Ok(())
            };
            statuses.push((dst.to_string(), status));
        }
        let mut replies = Vec::new();
        let mut accepted = Vec::new();
        for spec in specs {
            match statuses.iter().find(|(dst, _)| *dst == spec.dst) {
                Some((_, Ok(()))) => accepted.push(spec),
                Some((_, Err(reason))) => replies.push(format!("error {} {reason}", spec.dst)),
                None => {
                    let why = stderr
                        .lines()
                        .rev()
                        .find(|l| l.starts_with("error:") || l.starts_with("fatal:"))
                        .map(one_line)
                        .unwrap_or_else(|| "git push to the staging repository failed".into());
                    replies.push(format!("error {} {why}", spec.dst));
                }
            }
        }
        if accepted.is_empty() {
            return Ok(replies);
        }
        if self.dry_run {
            replies.extend(accepted.iter().map(|s| format!("ok {}", s.dst)));
            return Ok(replies);
        }
        fix_staging_head(staging.dir.path(), &accepted)?;

        let started = Instant::now();
        self.note(format!("publishing {} ...", self.repo_id));
        let force = specs.iter().any(|s| s.force);
        let published = self.request(AdminCommand::Publish {
            repo_id: self.repo_id.clone(),
            path: staging.dir.path().to_path_buf(),
            force,
            expected_manifest: staging.manifest.clone(),
        });
        match published {
            Ok(Payload::Published(report)) => {
                self.note(published_line(&report, started));
                match self.await_replicas() {
                    Ok(()) => replies.extend(accepted.iter().map(|s| format!("ok {}", s.dst))),
                    Err(why) => {
                        eprintln!("knot: {why}");
                        replies.extend(
                            accepted
                                .iter()
                                .map(|s| format!("error {} {}", s.dst, one_line(&why))),
                        );
                    }
                }
            }
            Ok(other) => {
                let why = format!("knotd answered publish with an unexpected reply: {other:?}");
                replies.extend(
                    accepted
                        .iter()
                        .map(|s| format!("error {} {}", s.dst, one_line(&why))),
                );
            }
            Err(e) => {
                let why = one_line(&error_text(&e));
                if !self.progress || self.verbosity == 0 {
                    // git shows the per-ref reason; say once what failed.
                    eprintln!("knot: publishing {} failed: {why}", self.repo_id);
                }
                replies.extend(
                    accepted
                        .iter()
                        .map(|s| format!("error {} knot publish failed: {why}", s.dst)),
                );
            }
        }
        Ok(replies)
    }
}

/// `git config knot.replicas` (and `knot.replicasTimeout`, seconds): how
/// many other peers must hold a pushed state before the push counts.
fn replicas_config() -> Option<(u32, u64)> {
    let get = |key: &str| {
        Command::new("git")
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
        .unwrap_or(60);
    Some((count, timeout))
}

impl Helper {
    /// Wait for the replicas `git config knot.replicas` asks for, if any.
    fn await_replicas(&self) -> std::result::Result<(), String> {
        let Some((count, timeout_secs)) = replicas_config() else {
            return Ok(());
        };
        self.note(format!(
            "waiting until {count} peers hold {} ...",
            self.repo_id
        ));
        match self.request(AdminCommand::Replicas {
            repo_id: self.repo_id.clone(),
            count,
            timeout_secs,
        }) {
            Ok(Payload::Replicas(report)) => {
                self.note(format!("{} peers hold it", report.holding.len()));
                Ok(())
            }
            Ok(other) => Err(format!("unexpected reply to replicas: {other:?}")),
            Err(e) => Err(format!("published, but {}", error_text(&e))),
        }
    }
}

fn published_line(report: &PublishReport, started: Instant) -> String {
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

/// The object format of the user's repository (sha1 when unknown).
fn local_object_format() -> ObjectFormat {
    let out = Command::new("git")
        .args(["rev-parse", "--show-object-format"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() && out.stdout.starts_with(b"sha256") => {
            ObjectFormat::Sha256
        }
        _ => ObjectFormat::Sha1,
    }
}

/// The branch the user's `HEAD` is on, e.g. `refs/heads/main`.
fn local_head_branch() -> Option<String> {
    let out = Command::new("git")
        .args(["symbolic-ref", "-q", "HEAD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A new repository's `HEAD` points at git's default branch, which the push
/// may not have created. Point it at a pushed branch instead: the one pushed
/// from the user's current branch, else the first one pushed, else any branch.
fn fix_staging_head(staging: &Path, accepted: &[&PushSpec]) -> Result<()> {
    let refs = git::read_refs(staging)?;
    let target_exists = match &refs.head {
        Some(Head::Symbolic(target)) => refs.refs.contains_key(target),
        Some(Head::Detached(_)) => true,
        None => false,
    };
    if target_exists {
        return Ok(());
    }
    let pushed =
        |s: &&&PushSpec| s.dst.starts_with("refs/heads/") && refs.refs.contains_key(&s.dst);
    let current = local_head_branch();
    let choice = accepted
        .iter()
        .filter(pushed)
        .find(|s| Some(&s.src) == current.as_ref())
        .or_else(|| accepted.iter().find(pushed))
        .map(|s| s.dst.clone())
        .or_else(|| {
            refs.refs
                .keys()
                .find(|name| name.starts_with("refs/heads/"))
                .cloned()
        });
    if let Some(target) = choice {
        let status = git_for(staging)
            .arg("-C")
            .arg(staging)
            .args(["symbolic-ref", "HEAD", &target])
            .stdin(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("cannot set HEAD of the staging repository to {target}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("knot://did:plc:abc123/website").unwrap().as_str(),
            "did:plc:abc123/website"
        );
        assert_eq!(
            parse_url("knot://did:plc:abc123/website.git/")
                .unwrap()
                .as_str(),
            "did:plc:abc123/website"
        );
        assert_eq!(
            parse_url("did:web:example.com/x").unwrap().as_str(),
            "did:web:example.com/x"
        );
        let e = parse_url("knot://did:plc:abc/../etc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("knot://<did>/<name>"), "{e}");
        assert!(parse_url("knot://website").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(10), "10 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
