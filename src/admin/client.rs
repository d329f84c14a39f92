//! The admin socket client: the wire-level [`request`] and the typed
//! [`AdminClient`] every tool uses, and where a client finds the socket.

use std::path::{Path, PathBuf};

use tokio::{io::BufReader, net::UnixStream};

use super::server::{read_line, write_line};
use super::{
    AdminError, Command, EventLine, MAX_REPLY_LINE, MirrorView, NodeStatus, Payload, PeerView,
    PolicyRule, PolicyView, QUICK_TIMEOUT, ReplicasReport, Reply, RepoSummary, SyncReport,
};
use crate::{config::Config, repo_id::RepoId};

/// The socket's file name in a data directory.
pub const SOCKET_NAME: &str = "knotd.sock";
/// Where the packaged system service (`deploy/knotd.service`) listens.
pub const SYSTEM_SOCKET: &str = "/run/knotd/knotd.sock";

/// A connection failure, saying what to do about it.
fn connect_error(socket: &Path, source: std::io::Error) -> AdminError {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        use std::os::unix::fs::MetadataExt;
        // The socket's group, or, when its directory cannot be entered,
        // the directory's (the unit's runtime directory has the same group).
        let group = std::iter::once(socket)
            .chain(socket.parent())
            .find_map(|path| {
                let gid = std::fs::metadata(path).ok()?.gid();
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok()?
            })
            .map(|g| g.name)
            .unwrap_or_else(|| "knotd".into());
        return AdminError::PermissionDenied {
            path: socket.to_path_buf(),
            group,
        };
    }
    AdminError::Connect {
        path: socket.to_path_buf(),
        source,
    }
}

/// Connect to the node's socket, saying what to do when that fails.
pub(super) async fn connect(socket: &Path) -> Result<UnixStream, AdminError> {
    tokio::time::timeout(QUICK_TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| AdminError::Timeout(QUICK_TIMEOUT))?
        .map_err(|source| connect_error(socket, source))
}

/// Send one command to the node at `socket` and wait for its reply.
async fn request(socket: &Path, command: &Command) -> Result<Payload, AdminError> {
    request_streaming(socket, command, |_| {}).await
}

/// Send one command and wait for its reply, handing every event line the
/// node streams before it to `on_event` (`watch` streams until the node
/// stops). The wait for each line is the command's timeout.
async fn request_streaming(
    socket: &Path,
    command: &Command,
    mut on_event: impl FnMut(EventLine),
) -> Result<Payload, AdminError> {
    let wait = command.timeout();
    let stream = connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write_line(&mut write, command).await?;
    let mut reader = BufReader::new(read);
    loop {
        let next = read_line(&mut reader, MAX_REPLY_LINE);
        let line = match wait {
            Some(wait) => tokio::time::timeout(wait, next)
                .await
                .map_err(|_| AdminError::Timeout(wait))??,
            None => next.await?,
        }
        .ok_or_else(|| {
            AdminError::Protocol("knotd closed the connection without a reply".into())
        })?;
        let value: serde_json::Value =
            serde_json::from_slice(&line).map_err(|e| AdminError::Protocol(e.to_string()))?;
        if let Some(event) = value.get("event") {
            let event: EventLine = serde_json::from_value(event.clone())
                .map_err(|e| AdminError::Protocol(format!("event line: {e}")))?;
            on_event(event);
            continue;
        }
        let reply: Reply =
            serde_json::from_value(value).map_err(|e| AdminError::Protocol(e.to_string()))?;
        return match reply {
            Reply::Ok(payload) => Ok(payload),
            Reply::Error(message) => Err(AdminError::Remote(message)),
        };
    }
}

/// Where a client finds the node's admin socket, and which setting named it
/// (for error messages). In order: `KNOT_SOCKET`; `KNOTD_CONFIG`'s
/// `admin_socket` (or its data directory); `KNOTD_DATA_DIR`; the user's own
/// node (default data directory) when its socket exists; the system
/// service's [`SYSTEM_SOCKET`] when that exists; else the user's default.
pub fn locate_socket() -> Result<(PathBuf, String), AdminError> {
    if let Some(s) = std::env::var_os("KNOT_SOCKET").filter(|s| !s.is_empty()) {
        return Ok((PathBuf::from(s), "KNOT_SOCKET".into()));
    }
    if let Some(path) = std::env::var_os("KNOTD_CONFIG").filter(|s| !s.is_empty()) {
        let path = PathBuf::from(path);
        let mut config =
            Config::load(&path).map_err(|e| AdminError::Protocol(format!("KNOTD_CONFIG: {e}")))?;
        if let Some(dir) = std::env::var_os("KNOTD_DATA_DIR").filter(|s| !s.is_empty()) {
            config.data_dir = PathBuf::from(dir);
        }
        return Ok((
            config.admin_socket_path(),
            format!("KNOTD_CONFIG={}", path.display()),
        ));
    }
    if let Some(dir) = std::env::var_os("KNOTD_DATA_DIR").filter(|s| !s.is_empty()) {
        return Ok((
            PathBuf::from(dir).join(SOCKET_NAME),
            "KNOTD_DATA_DIR".into(),
        ));
    }
    let own = crate::config::default_data_dir().join(SOCKET_NAME);
    if own.exists() {
        return Ok((own, "the default data directory".into()));
    }
    let system = PathBuf::from(SYSTEM_SOCKET);
    if system.exists() {
        return Ok((system, "the system service".into()));
    }
    Ok((own, "the default data directory".into()))
}

/// A typed client of one node's admin socket: one method per command,
/// returning the command's report. Used by the CLI, `git-remote-knot`, the
/// tests and the benchmarks.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

/// Expect one payload kind, or say what came instead.
macro_rules! expect_payload {
    ($command:literal, $value:expr, $pattern:pat => $out:expr) => {
        match $value {
            $pattern => Ok($out),
            other => Err(AdminError::Protocol(format!(
                "knotd answered {} with an unexpected reply: {other:?}",
                $command
            ))),
        }
    };
}

impl AdminClient {
    /// A client of the node listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send any command and return its payload.
    pub async fn call(&self, command: &Command) -> Result<Payload, AdminError> {
        request(&self.socket, command).await
    }

    /// Send any command, handing streamed event lines to `on_event`.
    pub async fn call_streaming(
        &self,
        command: &Command,
        on_event: impl FnMut(EventLine),
    ) -> Result<Payload, AdminError> {
        request_streaming(&self.socket, command, on_event).await
    }

    /// Run `command` while `repo`'s events go to `on_event` (through a
    /// second connection set up first, so no early event is missed).
    pub async fn call_watching(
        &self,
        repo: &RepoId,
        command: &Command,
        on_event: impl FnMut(EventLine) + Send + 'static,
    ) -> Result<Payload, AdminError> {
        let watcher = self.watch_in_background(repo, on_event).await;
        let result = self.call(command).await;
        watcher.abort();
        result
    }

    /// Stream `repo`'s events to `on_event` until the returned task is
    /// aborted; returns once the stream is set up (or after two seconds).
    pub async fn watch_in_background(
        &self,
        repo: &RepoId,
        mut on_event: impl FnMut(EventLine) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let command = Command::Watch {
            repo_id: Some(repo.clone()),
        };
        let client = self.clone();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let _ = client
                .call_streaming(&command, |event| {
                    if matches!(event.event, super::NodeEvent::Watching) {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                        return;
                    }
                    on_event(event);
                })
                .await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ready).await;
        task
    }

    /// Stream events (of `repo`, or all) to `on_event` until the node stops.
    pub async fn watch(
        &self,
        repo: Option<RepoId>,
        mut on_event: impl FnMut(EventLine),
    ) -> Result<(), AdminError> {
        let command = Command::Watch { repo_id: repo };
        self.call_streaming(&command, |event| {
            if !matches!(event.event, super::NodeEvent::Watching) {
                on_event(event);
            }
        })
        .await?;
        Ok(())
    }

    /// Start tracking a repository; returns the node's message.
    pub async fn add_repo(
        &self,
        repo_id: &RepoId,
        pds: Option<String>,
        record: Option<String>,
        peers: Vec<String>,
    ) -> Result<String, AdminError> {
        let command = Command::AddRepo {
            repo_id: repo_id.clone(),
            pds,
            record,
            peers,
        };
        expect_payload!("add-repo", self.call(&command).await?, Payload::Done { message } => message)
    }

    /// Stop tracking a repository.
    pub async fn remove_repo(&self, repo_id: &RepoId) -> Result<String, AdminError> {
        let command = Command::RemoveRepo {
            repo_id: repo_id.clone(),
        };
        expect_payload!("remove-repo", self.call(&command).await?, Payload::Done { message } => message)
    }

    /// Stop trusting a peer named for a repository.
    pub async fn remove_peer(&self, repo_id: &RepoId, node_id: &str) -> Result<String, AdminError> {
        let command = Command::RemovePeer {
            repo_id: repo_id.clone(),
            node_id: node_id.to_string(),
        };
        expect_payload!("remove-peer", self.call(&command).await?, Payload::Done { message } => message)
    }

    /// Tracked repositories.
    pub async fn list(&self) -> Result<Vec<RepoSummary>, AdminError> {
        expect_payload!("list", self.call(&Command::List).await?, Payload::Repos { repos } => repos)
    }

    /// One tracked repository, if it is tracked.
    pub async fn repo(&self, repo_id: &RepoId) -> Result<Option<RepoSummary>, AdminError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|r| r.repo_id == repo_id.as_str()))
    }

    /// Node status.
    pub async fn status(&self) -> Result<NodeStatus, AdminError> {
        expect_payload!("status", self.call(&Command::Status).await?, Payload::Status(status) => *status)
    }

    /// Known peers of a repository.
    pub async fn peers(&self, repo_id: &RepoId) -> Result<Vec<PeerView>, AdminError> {
        let command = Command::Peers {
            repo_id: repo_id.clone(),
        };
        expect_payload!("peers", self.call(&command).await?, Payload::Peers { peers } => peers)
    }

    /// A ticket other nodes can dial.
    pub async fn ticket(&self) -> Result<String, AdminError> {
        expect_payload!("ticket", self.call(&Command::Ticket).await?, Payload::Ticket { ticket } => ticket)
    }

    /// Fetch the record and content now and materialize the repository.
    pub async fn sync(&self, repo_id: &RepoId) -> Result<SyncReport, AdminError> {
        let command = Command::Sync {
            repo_id: repo_id.clone(),
        };
        expect_payload!("sync", self.call(&command).await?, Payload::Synced(report) => report)
    }

    /// [`AdminClient::sync`], handing the repository's events to `on_event`.
    pub async fn sync_watching(
        &self,
        repo_id: &RepoId,
        on_event: impl FnMut(EventLine) + Send + 'static,
    ) -> Result<SyncReport, AdminError> {
        let command = Command::Sync {
            repo_id: repo_id.clone(),
        };
        expect_payload!("sync", self.call_watching(repo_id, &command, on_event).await?, Payload::Synced(report) => report)
    }

    /// Wait until `count` other peers hold the repository's state.
    pub async fn replicas(
        &self,
        repo_id: &RepoId,
        count: u32,
        timeout: std::time::Duration,
    ) -> Result<ReplicasReport, AdminError> {
        let command = Command::Replicas {
            repo_id: repo_id.clone(),
            count,
            timeout_secs: timeout.as_secs().max(1),
        };
        expect_payload!("replicas", self.call(&command).await?, Payload::Replicas(report) => report)
    }

    /// Track every repository an identity lists.
    pub async fn follow(&self, identity: &str) -> Result<String, AdminError> {
        let command = Command::Follow {
            identity: identity.to_string(),
        };
        expect_payload!("follow", self.call(&command).await?, Payload::Done { message } => message)
    }

    /// Stop following an identity.
    pub async fn unfollow(&self, identity: &str) -> Result<String, AdminError> {
        let command = Command::Unfollow {
            identity: identity.to_string(),
        };
        expect_payload!("unfollow", self.call(&command).await?, Payload::Done { message } => message)
    }

    /// Mirror the git repository at `source` (as `repo_id`, or the id a
    /// Tangled knot's URL names); the first fetch starts at once.
    pub async fn mirror(
        &self,
        source: &str,
        repo_id: Option<&RepoId>,
    ) -> Result<MirrorView, AdminError> {
        let command = Command::Mirror {
            source: source.to_string(),
            repo_id: repo_id.cloned(),
        };
        one_mirror("mirror", self.call(&command).await?)
    }

    /// Stop mirroring a repository and remove it.
    pub async fn unmirror(&self, repo_id: &RepoId) -> Result<String, AdminError> {
        let command = Command::Unmirror {
            repo_id: repo_id.clone(),
        };
        expect_payload!("unmirror", self.call(&command).await?, Payload::Done { message } => message)
    }

    /// Every mirror.
    pub async fn mirrors(&self) -> Result<Vec<MirrorView>, AdminError> {
        expect_payload!("mirrors", self.call(&Command::Mirrors).await?, Payload::Mirrors { mirrors } => mirrors)
    }

    /// Fetch a mirror's upstream now; the mirror once that fetch ended.
    pub async fn mirror_sync(&self, repo_id: &RepoId) -> Result<MirrorView, AdminError> {
        let command = Command::MirrorSync {
            repo_id: repo_id.clone(),
        };
        one_mirror("mirror-sync", self.call(&command).await?)
    }

    /// Change the seeding policy for a DID or repository id.
    pub async fn policy(&self, rule: PolicyRule, target: &str) -> Result<String, AdminError> {
        let command = Command::Policy {
            rule,
            target: target.to_string(),
        };
        expect_payload!("policy", self.call(&command).await?, Payload::Done { message } => message)
    }

    /// The seeding policy.
    pub async fn policy_show(&self) -> Result<PolicyView, AdminError> {
        expect_payload!("policy show", self.call(&Command::PolicyShow).await?, Payload::Policy(view) => view)
    }

    /// Set (or with `None` clear) a repository's storage limit.
    pub async fn set_quota(
        &self,
        repo_id: &RepoId,
        max_bytes: Option<u64>,
    ) -> Result<String, AdminError> {
        let command = Command::SetQuota {
            repo_id: repo_id.clone(),
            max_bytes,
        };
        expect_payload!("set-quota", self.call(&command).await?, Payload::Done { message } => message)
    }
}

/// The single mirror row a mirror command answers with.
fn one_mirror(command: &str, payload: Payload) -> Result<MirrorView, AdminError> {
    match payload {
        Payload::Mirrors { mirrors } if mirrors.len() == 1 => {
            Ok(mirrors.into_iter().next().expect("one row"))
        }
        other => Err(AdminError::Protocol(format!(
            "knotd answered {command} with an unexpected reply: {other:?}"
        ))),
    }
}
