//! The soak's `knotd` processes: each runs the built binary inside its
//! host's namespace (`ip netns exec`), with its own config, data directory
//! and log file (every incarnation appends to it), and is started again on
//! the same data directory and address after a `kill -9`. What the harness
//! reads of a node: its admin socket (typed client) and `/proc/<pid>`.

use std::{
    fs::OpenOptions,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use knotd::admin::{AdminClient, NodeStatus, RepoSummary};

use crate::net::Role;

/// How long one admin call of the harness may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a node may take from spawn to an answering socket.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything needed to start a node, again and again.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Host and node name, e.g. `seeder-1`.
    pub name: String,
    /// What the node is in the community.
    pub role: Role,
    /// Its network namespace.
    pub ns: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its log file (stderr of every incarnation).
    pub log: PathBuf,
}

/// Settings shared by every node's config.
pub struct Community {
    /// The relay's URL.
    pub relay_url: String,
    /// The pkarr relay's URL.
    pub pkarr_url: String,
    /// The PLC directory's URL.
    pub plc_url: String,
    /// Seconds between record polls.
    pub poll_interval_secs: u64,
    /// Seconds between garbage collections of the blob store.
    pub gc_interval_secs: u64,
    /// Seconds between checks of held states.
    pub verify_interval_secs: u64,
}

impl NodeSpec {
    /// Write the node's config: `bind` on its host, the lab's relay,
    /// pkarr and PLC, the seeding policy of its role, and write-back
    /// credentials for an author (`identity`: its DID and app password).
    pub fn write_config(&self, bind: SocketAddr, c: &Community, identity: Option<(&str, &str)>) {
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        let policy = if self.role == Role::Home {
            "deny"
        } else {
            "allow"
        };
        let mut text = format!(
            "bind = [\"{bind}\"]\nrelay = \"{}\"\ndiscovery = \"{}\"\n\
             gc_interval_secs = {}\nverify_interval_secs = {}\n\n\
             [policy]\ndefault = \"{policy}\"\n\n\
             [atproto]\nplc_directory = \"{}\"\npoll_interval_secs = {}\n\
             request_timeout_secs = 5\n",
            c.relay_url,
            c.pkarr_url,
            c.gc_interval_secs,
            c.verify_interval_secs,
            c.plc_url,
            c.poll_interval_secs,
        );
        if let Some((did, password)) = identity {
            let secret = self.data_dir.with_extension("app-password");
            std::fs::write(&secret, format!("{password}\n")).expect("app password written");
            std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("app password mode");
            text.push_str(&format!(
                "identifier = \"{did}\"\napp_password_file = \"{}\"\nallow_insecure_http = true\n",
                secret.display()
            ));
        }
        std::fs::write(&self.config, text).expect("config written");
    }
}

/// What `/proc` and `status` say of a running node.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProcSample {
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// OS threads.
    pub threads: u64,
    /// Tasks alive in the node's runtime (`status`), when it answered.
    pub tasks: Option<u64>,
    /// QUIC connections open in the node (`status`), when it answered.
    pub connections: Option<u64>,
}

/// One node and its current process, if any.
pub struct NodeProc {
    /// How to start it.
    pub spec: NodeSpec,
    /// The node id, known after the first start.
    pub node_id: String,
    child: Mutex<Option<Child>>,
    started: Mutex<Option<Instant>>,
    incarnations: Mutex<u32>,
    /// Exits nobody asked for: (time since the soak began, exit status).
    pub unexpected_exits: Mutex<Vec<String>>,
}

impl NodeProc {
    /// A node not started yet.
    pub fn new(spec: NodeSpec) -> NodeProc {
        NodeProc {
            spec,
            node_id: String::new(),
            child: Mutex::new(None),
            started: Mutex::new(None),
            incarnations: Mutex::new(0),
            unexpected_exits: Mutex::new(Vec::new()),
        }
    }

    /// The typed admin client of this node.
    pub fn client(&self) -> AdminClient {
        AdminClient::new(self.spec.data_dir.join("knotd.sock"))
    }

    /// Where the node materializes a repository.
    pub fn repo_path(&self, repo_id: &str) -> PathBuf {
        let id = knotd::repo_id::RepoId::parse(repo_id).expect("a valid repo id");
        self.spec.data_dir.join("repos").join(id.relative_path())
    }

    /// Spawn a new process (none must be running); `note` goes to the log first.
    pub fn spawn(&self, note: &str) {
        let mut child = self.child.lock().unwrap();
        assert!(child.is_none(), "{} is already running", self.spec.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .expect("log file");
        let n = {
            let mut n = self.incarnations.lock().unwrap();
            *n += 1;
            *n
        };
        writeln!(
            log,
            "=== soak: incarnation {n} of {}: {note}",
            self.spec.name
        )
        .unwrap();
        let spawned = Command::new("ip")
            .args(["netns", "exec", &self.spec.ns])
            .arg(crate::knotd_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.spec.config)
            .arg("--data-dir")
            .arg(&self.spec.data_dir)
            .env(
                "RUST_LOG",
                std::env::var("KNOTD_SOAK_LOG").unwrap_or_else(|_| "knotd=info,warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("knotd starts");
        *child = Some(spawned);
        *self.started.lock().unwrap() = Some(Instant::now());
    }

    /// Wait until the socket answers `status`; the node id is returned.
    pub async fn wait_ready(&self) -> Result<String, String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = self.client();
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited while starting: {status}",
                    self.spec.name
                ));
            }
            if let Ok(Ok(status)) = tokio::time::timeout(CALL_TIMEOUT, client.status()).await {
                return Ok(status.node_id);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer on its socket within {READY_TIMEOUT:?}",
                    self.spec.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kill -9` the process and reap it. Returns false when none ran.
    pub fn kill9(&self) -> bool {
        let mut child = self.child.lock().unwrap();
        let Some(mut c) = child.take() else {
            return false;
        };
        let _ = c.kill();
        let _ = c.wait();
        *self.started.lock().unwrap() = None;
        true
    }

    /// Stop the process gracefully (SIGTERM, then SIGKILL after 20 s).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let Some(mut c) = child.take() else { return };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Whether a process is running now (reaping one that exited).
    pub fn running(&self) -> bool {
        self.exited().is_none() && self.child.lock().unwrap().is_some()
    }

    /// The exit status, when the process exited by itself (recorded as unexpected).
    fn exited(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap();
        let c = child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                *child = None;
                let what = status.to_string();
                self.unexpected_exits.lock().unwrap().push(what.clone());
                Some(what)
            }
            _ => None,
        }
    }

    /// Check for an exit nobody asked for; returns its status once.
    pub fn check_exit(&self) -> Option<String> {
        self.exited()
    }

    /// Seconds since the current process started, if one runs.
    pub fn uptime(&self) -> Option<Duration> {
        self.started.lock().unwrap().map(|s| s.elapsed())
    }

    /// The current incarnation (1 for the first process).
    pub fn incarnation(&self) -> u32 {
        *self.incarnations.lock().unwrap()
    }

    fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// RSS, open files, threads and runtime tasks of the running process.
    pub async fn sample(&self) -> Option<ProcSample> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let rss_kib = field("VmRSS:")?;
        let threads = field("Threads:")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        let status = self.status().await;
        Some(ProcSample {
            rss_kib,
            fds,
            threads,
            tasks: status.as_ref().map(|s| s.tasks_alive as u64),
            connections: status.as_ref().map(|s| s.connections_open),
        })
    }

    /// `status`, if the node answers in time.
    pub async fn status(&self) -> Option<NodeStatus> {
        tokio::time::timeout(CALL_TIMEOUT, self.client().status())
            .await
            .ok()?
            .ok()
    }

    /// `list`, if the node answers in time.
    pub async fn list(&self) -> Option<Vec<RepoSummary>> {
        tokio::time::timeout(CALL_TIMEOUT, self.client().list())
            .await
            .ok()?
            .ok()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Lines of a node's log that are panics or at level ERROR.
pub fn error_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" ERROR ") || l.contains("panicked at"))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
