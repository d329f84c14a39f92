//! The admin socket: how operators and tools steer a running node.
//!
//! Owns the wire protocol (newline-delimited JSON, one request line, one reply
//! line; the [`Command`] type is shared by server and client), the Unix socket
//! server task and the client. The socket is created with mode 0600, a stale
//! socket left by a crash is replaced, a live one is refused, and the file is
//! removed when the server stops. Nothing here survives a restart.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{record::PeerHint, repo_id::RepoId};

/// Longest request line the node accepts, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;
/// Longest reply line the client accepts, in bytes (a `list` of many
/// thousands of repositories is several megabytes).
pub const MAX_REPLY_LINE: usize = 256 * 1024 * 1024;
/// How long the client waits for quick commands.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits for commands that move repository content.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(3600);

/// Errors of the admin socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another node is listening on the socket.
    #[error(
        "admin socket {0} is in use by a running knotd; stop it first or set another admin_socket"
    )]
    SocketInUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot create admin socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The client could not reach the node.
    #[error(
        "cannot reach knotd at {path}: {source}; is the node running? start it with `knotd run`, or point --socket / KNOT_SOCKET at its admin socket"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("admin socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The node did not answer in time.
    #[error("knotd did not answer within {0:?}")]
    Timeout(Duration),
    /// A line was not valid protocol JSON.
    #[error("malformed admin message: {0}")]
    Protocol(String),
    /// The node answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// One admin request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Start tracking a repository.
    AddRepo {
        /// The repository.
        repo_id: RepoId,
        /// The owner's PDS URL.
        #[serde(default)]
        pds: Option<String>,
        /// The record's AT URI, `at://<did>/<collection>/<rkey>`.
        #[serde(default)]
        record: Option<String>,
        /// Endpoint tickets of peers to bootstrap from.
        #[serde(default)]
        peers: Vec<String>,
    },
    /// Stop tracking a repository and unpin its blobs.
    RemoveRepo {
        /// The repository.
        repo_id: RepoId,
    },
    /// Stop trusting a peer the operator named for a repository.
    RemovePeer {
        /// The repository.
        repo_id: RepoId,
        /// The peer's node id.
        node_id: String,
    },
    /// List tracked repositories.
    List,
    /// Node status.
    Status,
    /// Known peers of a repository.
    Peers {
        /// The repository.
        repo_id: RepoId,
    },
    /// A ticket other nodes can dial.
    Ticket,
    /// Publish a local git repository's current state as the repository's new
    /// state. An untracked repository is added first.
    Publish {
        /// The repository.
        repo_id: RepoId,
        /// Path of the local git repository (bare or not).
        path: PathBuf,
        /// Accept updates that are not fast-forwards.
        #[serde(default)]
        force: bool,
        /// Refuse unless the current manifest is this one (hex), so that
        /// concurrent publishers cannot overwrite each other.
        #[serde(default)]
        expected_manifest: Option<String>,
    },
    /// Fetch the record and content now, and materialize the repository.
    Sync {
        /// The repository.
        repo_id: RepoId,
    },
}

impl Command {
    /// How long a client should wait for the reply.
    pub fn timeout(&self) -> Duration {
        match self {
            Command::Publish { .. } | Command::Sync { .. } => LONG_TIMEOUT,
            _ => QUICK_TIMEOUT,
        }
    }
}

/// One admin reply: `{"ok": {...}}` or `{"error": "..."}`.
// One reply per admin request, moved once: the size of the status variant
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The command succeeded.
    Ok(Payload),
    /// The command failed; the text says why and what to do.
    Error(String),
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Payload {
    /// A command with nothing to report but a message.
    Done {
        /// What happened.
        message: String,
    },
    /// Tracked repositories.
    Repos {
        /// One row per repository.
        repos: Vec<RepoSummary>,
    },
    /// Node status.
    Status(NodeStatus),
    /// Peers of one repository.
    Peers {
        /// The peers.
        peers: Vec<PeerView>,
    },
    /// A dialable ticket.
    Ticket {
        /// The endpoint ticket.
        ticket: String,
    },
    /// Result of a publish.
    Published(PublishReport),
    /// Result of a sync.
    Synced(SyncReport),
}

/// One tracked repository as shown by `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoSummary {
    /// The repository.
    pub repo_id: String,
    /// Object id HEAD points to.
    pub head: Option<String>,
    /// Current manifest hash.
    pub manifest: Option<String>,
    /// Manifest hash the materialized repository reflects.
    pub materialized: Option<String>,
    /// Sequence number of the state held.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Manifest hash of a newer state being fetched (or waiting to be).
    #[serde(default)]
    pub fetching: Option<String>,
    /// Packs in the current manifest.
    pub pack_count: usize,
    /// Bytes pinned for the current manifest.
    pub bytes_pinned: u64,
    /// Unix time of the last content sync.
    pub last_sync: Option<u64>,
    /// Unix time of the last successful record poll.
    pub last_poll: Option<u64>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Peers known: trusted ones and hints learned from gossip.
    pub peers_known: usize,
    /// Peers trusted to publish: the record's and the operator's.
    #[serde(default)]
    pub trusted_peers: usize,
    /// Gossip neighbours currently connected.
    pub peers_connected: usize,
    /// Where the record lives.
    pub record: Option<String>,
    /// A record write-back is waiting to be retried.
    pub write_back_pending: bool,
}

/// Node-wide status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node id (hex public key).
    pub node_id: String,
    /// A ticket other nodes can dial.
    pub ticket: String,
    /// Direct addresses.
    pub addrs: Vec<String>,
    /// Tracked repositories.
    pub repo_count: u64,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// knotd version.
    pub version: String,
    /// Gossip traffic since start.
    pub gossip: GossipStats,
    /// Content jobs running now.
    #[serde(default)]
    pub jobs_running: usize,
    /// Repositories waiting for a content job slot.
    #[serde(default)]
    pub jobs_waiting: usize,
    /// Per-repository status.
    pub repos: Vec<RepoSummary>,
    /// The relay setting: `disabled`, `default` or the relay URL.
    #[serde(default)]
    pub relay_mode: String,
    /// The discovery setting: `off`, `default` or the pkarr relay URL.
    #[serde(default)]
    pub discovery: String,
    /// The home relay(s) and whether this node is connected to them; empty
    /// when relays are disabled or none has been chosen yet.
    #[serde(default)]
    pub relays: Vec<RelayView>,
    /// How this node reaches each peer it knows: direct, relayed or idle.
    #[serde(default)]
    pub peer_paths: Vec<PeerPath>,
}

/// A home relay of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    /// The relay's URL.
    pub url: String,
    /// Whether this node holds a connection to it now.
    pub connected: bool,
    /// The last connection error, when not connected.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// How a peer is reached right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Over a direct UDP path (possibly hole-punched).
    Direct,
    /// Through a relay server.
    Relayed,
    /// No open path: no connection right now.
    Idle,
}

/// The path to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPath {
    /// The peer's node id.
    pub node_id: String,
    /// Direct, relayed or idle.
    pub path: PathKind,
    /// The address in use: a socket address or a relay URL.
    #[serde(default)]
    pub addr: Option<String>,
}

/// Gossip traffic counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStats {
    /// Valid announcements received.
    pub received: u64,
    /// Messages dropped as malformed, oversize, badly signed or off-topic.
    pub dropped_invalid: u64,
    /// Valid announcements whose state was not adopted (untrusted, older).
    pub rejected: u64,
    /// Messages dropped unread because their sender exceeded its rate.
    #[serde(default)]
    pub rate_limited: u64,
    /// Rejected announcements by reason.
    #[serde(default)]
    pub rejected_by_reason: std::collections::BTreeMap<String, u64>,
}

/// Where a peer of a repository is known from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerSource {
    /// Named by the operator with `--peer`.
    Operator,
    /// Listed in the owner's record.
    Record,
    /// Learned from gossip (an announcer or a neighbour).
    Learned,
}

/// A peer of a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// The hint as stored.
    #[serde(flatten)]
    pub hint: PeerHint,
    /// Whether the peer is a gossip neighbour right now.
    pub connected: bool,
    /// Whether the peer is trusted to publish.
    #[serde(default)]
    pub trusted: bool,
    /// Where the peer is known from.
    #[serde(default = "learned")]
    pub source: PeerSource,
}

fn learned() -> PeerSource {
    PeerSource::Learned
}

/// Result of a publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishReport {
    /// The repository.
    pub repo_id: String,
    /// The new head object id.
    pub head: Option<String>,
    /// The new manifest hash.
    pub manifest: String,
    /// Packs in the new manifest.
    pub pack_count: usize,
    /// Bytes added to the store by this publish (new pack).
    pub bytes_added: u64,
    /// Whether the packs were consolidated into one.
    pub consolidated: bool,
    /// Whether nothing changed since the last publish.
    pub unchanged: bool,
    /// The materialized bare repository.
    pub path: PathBuf,
}

/// Result of a sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The repository.
    pub repo_id: String,
    /// The manifest now held.
    pub manifest: Option<String>,
    /// The object id HEAD points to.
    pub head: Option<String>,
    /// The materialized bare repository, once content is held.
    pub path: Option<PathBuf>,
    /// Bytes fetched from peers.
    pub bytes_fetched: u64,
    /// What happened, in words.
    pub message: String,
}

/// Parse one request line.
pub fn parse_command(line: &[u8]) -> Result<Command, AdminError> {
    serde_json::from_slice(line).map_err(|e| AdminError::Protocol(e.to_string()))
}

/// Executes admin commands; implemented by the node.
pub trait Executor: Clone + Send + Sync + 'static {
    /// Run one command and produce the reply.
    fn execute(&self, command: Command) -> impl Future<Output = Reply> + Send;
}

/// Bind the admin socket: refuse a live one, replace a stale one, mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => return Err(AdminError::SocketInUse(path.to_path_buf())),
            Err(_) => {
                warn!(path = %path.display(), "replacing stale admin socket");
                std::fs::remove_file(path).map_err(|source| AdminError::Bind {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| AdminError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // The socket is created under a restrictive umask-free path: set the mode
    // right after bind, before accepting anything.
    let listener = UnixListener::bind(path).map_err(|source| AdminError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        AdminError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serve the admin socket until `cancel` fires, then remove the socket file.
pub async fn serve<E: Executor>(
    listener: UnixListener,
    path: PathBuf,
    executor: E,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    info!(path = %path.display(), "admin socket listening");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let executor = executor.clone();
                    let cancel = cancel.clone();
                    connections.spawn(async move {
                        if let Err(e) = handle_connection(stream, executor, cancel).await {
                            debug!(error = %e, "admin connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not remove admin socket");
    }
}

async fn handle_connection<E: Executor>(
    stream: UnixStream,
    executor: E,
    cancel: CancellationToken,
) -> Result<(), AdminError> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            line = read_line(&mut reader, MAX_LINE) => line,
        };
        let reply = match line {
            Ok(Some(line)) => match parse_command(&line) {
                Ok(command) => {
                    debug!(?command, "admin command");
                    executor.execute(command).await
                }
                Err(e) => Reply::Error(format!(
                    "{e}; expected one JSON object per line such as {{\"cmd\":\"status\"}}"
                )),
            },
            Ok(None) => return Ok(()),
            Err(AdminError::Protocol(msg)) => {
                let reply = Reply::Error(msg);
                write_line(&mut write, &reply).await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        write_line(&mut write, &reply).await?;
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, AdminError> {
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(reader, max as u64 + 1);
    let n = limited.read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > max {
        return Err(AdminError::Protocol(format!(
            "line longer than {max} bytes"
        )));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

async fn write_line<W: AsyncWriteExt + Unpin, T: Serialize>(
    write: &mut W,
    value: &T,
) -> Result<(), AdminError> {
    let mut bytes = serde_json::to_vec(value).expect("reply serializes");
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.flush().await?;
    Ok(())
}

/// Send one command to the node at `socket` and wait for its reply.
pub async fn request(socket: &Path, command: &Command) -> Result<Payload, AdminError> {
    let wait = command.timeout();
    let stream = tokio::time::timeout(QUICK_TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| AdminError::Timeout(QUICK_TIMEOUT))?
        .map_err(|source| AdminError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    write_line(&mut write, command).await?;
    let mut reader = BufReader::new(read);
    let line = tokio::time::timeout(wait, read_line(&mut reader, MAX_REPLY_LINE))
        .await
        .map_err(|_| AdminError::Timeout(wait))??
        .ok_or_else(|| {
            AdminError::Protocol("knotd closed the connection without a reply".into())
        })?;
    let reply: Reply =
        serde_json::from_slice(&line).map_err(|e| AdminError::Protocol(e.to_string()))?;
    match reply {
        Reply::Ok(payload) => Ok(payload),
        Reply::Error(message) => Err(AdminError::Remote(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_wire_format() {
        let c =
            parse_command(br#"{"cmd":"add-repo","repo_id":"did:plc:a/b","peers":["t1"]}"#).unwrap();
        assert_eq!(
            c,
            Command::AddRepo {
                repo_id: RepoId::parse("did:plc:a/b").unwrap(),
                pds: None,
                record: None,
                peers: vec!["t1".into()],
            }
        );
        assert_eq!(
            parse_command(br#"{"cmd":"status"}"#).unwrap(),
            Command::Status
        );
        let json = serde_json::to_string(&Command::List).unwrap();
        assert_eq!(json, r#"{"cmd":"list"}"#);
    }

    #[test]
    fn bad_commands_are_rejected_with_reason() {
        for (line, needle) in [
            (
                &br#"{"cmd":"add-repo","repo_id":"did:plc:a/../x"}"#[..],
                "name",
            ),
            (br#"{"cmd":"explode"}"#, "explode"),
            (
                br#"{"cmd":"remove-repo","repo_id":"did:plc:a/b","extra":1}"#,
                "extra",
            ),
            (br#"not json"#, "expected"),
            (br#"{"cmd":"remove-repo"}"#, "repo_id"),
        ] {
            let err = parse_command(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn reply_wire_format() {
        let r = Reply::Error("nope".into());
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"error":"nope"}"#);
        let r = Reply::Ok(Payload::Ticket { ticket: "t".into() });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"kind":"ticket","ticket":"t"}}"#
        );
    }

    #[derive(Clone)]
    struct Echo;
    impl Executor for Echo {
        async fn execute(&self, command: Command) -> Reply {
            Reply::Ok(Payload::Done {
                message: format!("{command:?}"),
            })
        }
    }

    #[tokio::test]
    async fn socket_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        // a stale file from a crash is replaced
        std::fs::write(&path, b"").unwrap();
        let listener = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, path.clone(), Echo, cancel.clone()));
        // a live socket is refused
        assert!(matches!(bind(&path).await, Err(AdminError::SocketInUse(_))));
        let reply = request(&path, &Command::Status).await.unwrap();
        assert_eq!(
            reply,
            Payload::Done {
                message: "Status".into()
            }
        );
        // garbage gets an error reply and the server keeps serving
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{oops\n").await.unwrap();
        let mut r = BufReader::new(s);
        let line = read_line(&mut r, MAX_REPLY_LINE).await.unwrap().unwrap();
        let reply: Reply = serde_json::from_slice(&line).unwrap();
        assert!(matches!(reply, Reply::Error(_)));
        assert!(request(&path, &Command::List).await.is_ok());
        cancel.cancel();
        server.await.unwrap();
        assert!(!path.exists());
        let err = request(&path, &Command::Status).await.unwrap_err();
        assert!(err.to_string().contains("knotd run"), "{err}");
    }
}
