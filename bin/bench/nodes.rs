//! Nodes under test: in-process nodes on loopback, and `knotd run` child
//! processes driven through their admin socket.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use knotd::{
    admin::{AdminClient, Command, PackProgress, Payload, PublishReport},
    config::Config,
    node::Node,
    repo_id::RepoId,
};
use tokio_util::sync::CancellationToken;

/// Parse a repository id.
pub fn rid(s: &str) -> Result<RepoId> {
    RepoId::parse(s).map_err(|e| anyhow!("{e}"))
}

/// A node running in this process with its own data dir.
pub struct InNode {
    pub node: Node,
    _dir: tempfile::TempDir,
}

impl InNode {
    /// Start a node in a fresh data dir below `parent`.
    pub async fn spawn(parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("n").tempdir_in(parent)?;
        let node = Node::spawn(Config::local(dir.path()), CancellationToken::new())
            .await
            .map_err(|e| anyhow!("node start: {e}"))?;
        Ok(InNode { node, _dir: dir })
    }

    /// Run one command on the node's repository actor.
    pub async fn cmd(&self, command: Command) -> Result<Payload> {
        self.node
            .knot()
            .command(command)
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    /// A ticket other nodes can dial.
    pub async fn ticket(&self) -> Result<String> {
        match self.cmd(Command::Ticket).await? {
            Payload::Ticket { ticket } => Ok(ticket),
            other => bail!("unexpected payload {other:?}"),
        }
    }

    /// The typed admin client of this node.
    pub fn client(&self) -> AdminClient {
        AdminClient::new(self.node.admin_socket())
    }

    /// Publish a local repository (packed on this side, as the CLI does).
    pub async fn publish(&self, repo_id: &str, path: &Path) -> Result<PublishReport> {
        Ok(self
            .client()
            .publish_repository(&rid(repo_id)?, path, false, PackProgress::Quiet)
            .await?)
    }

    /// Track a repository with bootstrap peers.
    pub async fn follow(&self, repo_id: &str, peers: Vec<String>) -> Result<()> {
        self.cmd(Command::AddRepo {
            repo_id: rid(repo_id)?,
            pds: None,
            record: None,
            peers,
        })
        .await?;
        Ok(())
    }

    /// Poll every `every` until the node has materialized `manifest`;
    /// returns when it first knew of it (fetching or materialized) and when
    /// it had it materialized, both since `start` (`None` after `timeout`).
    pub async fn wait_received(
        &self,
        repo_id: &str,
        manifest: &str,
        start: Instant,
        every: Duration,
        timeout: Duration,
    ) -> Result<(Option<Duration>, Option<Duration>)> {
        let mut received = None;
        loop {
            let repo = match self.cmd(Command::List).await? {
                Payload::Repos { repos } => repos.into_iter().find(|r| r.repo_id == repo_id),
                other => bail!("unexpected payload {other:?}"),
            };
            let now = start.elapsed();
            let (fetching, materialized) = repo
                .map(|r| (r.fetching, r.materialized))
                .unwrap_or_default();
            let done = materialized.as_deref() == Some(manifest);
            if received.is_none() && (done || fetching.as_deref() == Some(manifest)) {
                received = Some(now);
            }
            if done {
                return Ok((received, Some(now)));
            }
            if now > timeout {
                return Ok((received, None));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Size in bytes of the manifest blob `manifest` (hex) of a repository.
    pub async fn manifest_bytes(&self, repo_id: &str, manifest: &str) -> Result<u64> {
        let hash = knotd::record::parse_hash_hex(manifest).context("manifest hash")?;
        let parsed = knotd::content::load_manifest(self.node.blobs(), hash, &rid(repo_id)?)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok(parsed.to_bytes().len() as u64)
    }

    /// Stop the node.
    pub async fn shutdown(self) -> Result<()> {
        self.node
            .shutdown()
            .await
            .map_err(|e| anyhow!("node shutdown: {e}"))
    }
}

/// The `knotd` binary to run as a child process.
pub fn find_knotd(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable directory")?;
    for candidate in [dir.join("knotd"), dir.join("../knotd")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no knotd binary next to {}; build it (cargo build --bin knotd) or pass --knotd PATH",
        exe.display()
    )
}

/// Longest wait for a child node's admin socket to answer.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// `knotd run` as a child process on loopback.
pub struct ChildNode {
    child: Child,
    knotd: PathBuf,
    data_dir: PathBuf,
    socket: PathBuf,
}

impl ChildNode {
    /// Start `knotd run` on `data_dir` and wait until the admin socket answers
    /// `ticket` (a reply that stays small however many repositories are
    /// tracked); returns the node and the time that took.
    pub async fn spawn(knotd: &Path, data_dir: &Path) -> Result<(Self, Duration)> {
        Self::spawn_with(knotd, data_dir, None).await
    }

    /// [`ChildNode::spawn`] with smart HTTP served on `http_port`.
    pub async fn spawn_with(
        knotd: &Path,
        data_dir: &Path,
        http_port: Option<u16>,
    ) -> Result<(Self, Duration)> {
        std::fs::create_dir_all(data_dir)?;
        if let Some(port) = http_port {
            std::fs::write(
                data_dir.join(BENCH_CONFIG),
                format!("[http]\nenabled = true\nbind = \"127.0.0.1:{port}\"\n"),
            )?;
        }
        Self::start(knotd, data_dir).await
    }

    /// A knotd process for `data_dir` with `config` (TOML) as its
    /// configuration file, kept for restarts.
    pub async fn spawn_configured(
        knotd: &Path,
        data_dir: &Path,
        config: &str,
    ) -> Result<(Self, Duration)> {
        std::fs::create_dir_all(data_dir)?;
        std::fs::write(data_dir.join(BENCH_CONFIG), config)?;
        Self::start(knotd, data_dir).await
    }

    /// Start knotd on `data_dir`, with its bench configuration if written.
    async fn start(knotd: &Path, data_dir: &Path) -> Result<(Self, Duration)> {
        let mut extra = Vec::new();
        let config = data_dir.join(BENCH_CONFIG);
        if config.is_file() {
            extra.push("--config".to_string());
            extra.push(config.display().to_string());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("bench-node.log"))?;
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        let start = Instant::now();
        let child = std::process::Command::new(knotd)
            .arg("run")
            .args(&extra)
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--bind",
                "127.0.0.1:0",
                "--relay",
                "disabled",
                "--no-discovery",
            ])
            .env("RUST_LOG", filter)
            .env_remove("KNOTD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", knotd.display()))?;
        let mut node = ChildNode {
            child,
            knotd: knotd.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            socket: data_dir.join("knotd.sock"),
        };
        let elapsed = node.wait_ready(start).await?;
        Ok((node, elapsed))
    }

    async fn wait_ready(&mut self, start: Instant) -> Result<Duration> {
        loop {
            if self.socket.exists() && self.client().call(&Command::Ticket).await.is_ok() {
                return Ok(start.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "knotd exited during start ({status}); see {}",
                    self.data_dir.join("bench-node.log").display()
                );
            }
            if start.elapsed() > START_TIMEOUT {
                bail!("knotd did not answer on its admin socket within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The typed admin client of this node.
    pub fn client(&self) -> AdminClient {
        AdminClient::new(self.socket.clone())
    }

    /// Send one admin request.
    pub async fn request(&self, command: &Command) -> Result<Payload> {
        self.client()
            .call(command)
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    /// Publish a local repository (packed on this side, as the CLI does).
    pub async fn publish(&self, repo_id: &str, path: &Path) -> Result<PublishReport> {
        Ok(self
            .client()
            .publish_repository(&rid(repo_id)?, path, false, PackProgress::Quiet)
            .await?)
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        self.status_bytes("VmRSS:")
    }

    /// Peak resident memory in bytes.
    pub fn hwm_bytes(&self) -> Result<u64> {
        self.status_bytes("VmHWM:")
    }

    /// The admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where a repository is materialized.
    pub fn repo_path(&self, repo_id: &str) -> Result<PathBuf> {
        Ok(self
            .data_dir
            .join("repos")
            .join(rid(repo_id)?.relative_path()))
    }

    fn status_bytes(&self, key: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("{key} missing"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("status value")?
            .parse()?;
        Ok(kib * 1024)
    }

    /// User plus system CPU time consumed so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command name: state is field 3, utime 14 and stime 15.
        let utime: u64 = fields.get(11).context("utime")?.parse()?;
        let stime: u64 = fields.get(12).context("stime")?.parse()?;
        Ok(utime + stime)
    }

    /// [`Self::cpu_ticks`] plus the CPU of its child processes that ended
    /// (the git processes it ran and waited for).
    pub fn cpu_ticks_with_children(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime, cutime, cstime: fields 14 to 17.
        let mut ticks = 0u64;
        for i in 11..15 {
            ticks += fields.get(i).context("stat times")?.parse::<u64>()?;
        }
        Ok(ticks)
    }

    /// Stop gracefully with SIGTERM (killing after 30 s); returns the time it took.
    pub async fn stop(mut self) -> Result<Duration> {
        let start = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("cannot signal knotd {}", self.pid());
        }
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("knotd did not stop within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop and start again on the same data dir; returns the new node and
    /// its start-up time.
    pub async fn restart(self) -> Result<(Self, Duration)> {
        let knotd = self.knotd.clone();
        let dir = self.data_dir.clone();
        self.stop().await?;
        Self::start(&knotd, &dir).await
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child node's configuration file in its data dir, when it has one.
const BENCH_CONFIG: &str = "bench.toml";

/// Clock ticks per second for `/proc/<pid>/stat`.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// What the scenarios ask of any node, in process or a child process.
pub trait BenchNode {
    /// Run one admin command.
    async fn admin(&self, command: Command) -> Result<Payload>;

    /// The manifest this node has materialized for a repository.
    async fn materialized(&self, repo_id: &str) -> Result<Option<String>> {
        match self.admin(Command::List).await? {
            Payload::Repos { repos } => Ok(repos
                .into_iter()
                .find(|r| r.repo_id == repo_id)
                .and_then(|r| r.materialized)),
            other => bail!("unexpected payload {other:?}"),
        }
    }

    /// Poll every `every` until the node has materialized `manifest`;
    /// returns the time since `start`, or `None` after `timeout`.
    async fn wait_materialized(
        &self,
        repo_id: &str,
        manifest: &str,
        start: Instant,
        every: Duration,
        timeout: Duration,
    ) -> Result<Option<Duration>> {
        loop {
            if self.materialized(repo_id).await?.as_deref() == Some(manifest) {
                return Ok(Some(start.elapsed()));
            }
            if start.elapsed() > timeout {
                return Ok(None);
            }
            tokio::time::sleep(every).await;
        }
    }
}

impl BenchNode for InNode {
    async fn admin(&self, command: Command) -> Result<Payload> {
        self.cmd(command).await
    }
}

impl BenchNode for ChildNode {
    async fn admin(&self, command: Command) -> Result<Payload> {
        self.request(&command).await
    }
}
