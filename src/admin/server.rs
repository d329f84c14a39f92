//! The admin socket server: one task accepting connections (at most
//! [`MAX_CONNECTIONS`] at once), one task per connection reading request
//! lines and writing replies (`watch` streams event lines instead). The
//! socket is created with mode 0600, or 0660 owned by `admin_socket_group`
//! so that the group's members can steer the node, never reachable with
//! looser permissions; a stale socket left by a crash is replaced, a live
//! one is refused, and the file is removed when the server stops.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tokio::sync::broadcast;

use super::{AdminError, Command, EventLine, MAX_LINE, NodeEvent, Payload, Reply, parse_command};
use crate::{
    git::RefSet,
    gitserve::{self, ServeTarget},
    repo_id::RepoId,
};

/// Most admin connections served at once (each `watch` holds one).
pub const MAX_CONNECTIONS: usize = 128;

/// A publish whose pack follows the request line.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    /// The repository.
    pub repo_id: RepoId,
    /// The complete ref state to publish.
    pub refs: RefSet,
    /// Accept updates that are not fast-forwards.
    pub force: bool,
    /// Refuse unless the current manifest is this one.
    pub expected_manifest: Option<String>,
}

/// The pack stream of a publish: what the client sends after the request
/// line, up to the end of its side of the connection.
pub type PackBody<'a> = &'a mut (dyn AsyncRead + Unpin + Send);

/// Executes admin commands; implemented by the node.
pub trait Executor: Clone + Send + Sync + 'static {
    /// Run one command and produce the reply.
    fn execute(&self, command: Command) -> impl Future<Output = Reply> + Send;

    /// Publish `request` with the pack read from `pack`.
    fn publish<'a>(
        &'a self,
        request: PublishRequest,
        pack: PackBody<'a>,
    ) -> impl Future<Output = Reply> + Send + 'a {
        let _ = (request, pack);
        async { Reply::Error("this node does not accept publishes".into()) }
    }

    /// The repository `git upload-pack` should serve for `repo_id`.
    fn serve_target(
        &self,
        repo_id: RepoId,
    ) -> impl Future<Output = Result<ServeTarget, String>> + Send {
        let _ = repo_id;
        async { Err("this node does not serve repositories".into()) }
    }

    /// Subscribe to the node's events, for commands that stream them.
    fn events(&self) -> Option<broadcast::Receiver<EventLine>> {
        None
    }
}

/// Bind the admin socket: refuse a live one, replace a stale one, mode 0600.
pub async fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, AdminError> {
    let bind_err = |source| AdminError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| AdminError::NoSuchGroup(name.to_string()))?
                .gid,
        ),
        None => None,
    };
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => return Err(AdminError::SocketInUse(path.to_path_buf())),
            Err(_) => {
                warn!(path = %path.display(), "replacing stale admin socket");
                std::fs::remove_file(path).map_err(bind_err)?;
            }
        }
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(bind_err)?;
    // Made in a private directory (mode 0700) beside its place, given its
    // mode and group there, then moved into place: it is never reachable
    // with looser permissions, whatever the umask.
    let private = tempfile::Builder::new()
        .prefix(".knotd-sock-")
        .tempdir_in(parent)
        .map_err(bind_err)?;
    let staged = private.path().join("knotd.sock");
    let listener = UnixListener::bind(&staged).map_err(bind_err)?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    // A socket made by a member of the group's primary group has it
    // already; chown only otherwise (the unit's system-call filter refuses
    // chown, and needs not allow it).
    if let Some(gid) = gid {
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::metadata(&staged).map_err(bind_err)?.gid();
        if current != gid.as_raw() {
            nix::unistd::chown(&staged, None, Some(gid))
                .map_err(|e| bind_err(std::io::Error::from(e)))?;
        }
    }
    std::fs::rename(&staged, path).map_err(bind_err)?;
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
                Ok((stream, _)) if connections.len() >= MAX_CONNECTIONS => {
                    warn!(limit = MAX_CONNECTIONS, "too many admin connections; refusing one");
                    let (_, mut write) = stream.into_split();
                    let reply = Reply::Error(format!(
                        "knotd has {MAX_CONNECTIONS} admin connections open; retry shortly"
                    ));
                    let _ = write_line(&mut write, &reply).await;
                }
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
        let command = match line {
            Ok(Some(line)) => match parse_command(&line) {
                Ok(command) => command,
                Err(e @ AdminError::OverLimit { .. }) => {
                    write_line(&mut write, &Reply::Error(e.to_string())).await?;
                    continue;
                }
                Err(e) => {
                    let reply = Reply::Error(format!(
                        "{e}; expected one JSON object per line such as {{\"cmd\":\"status\"}}"
                    ));
                    write_line(&mut write, &reply).await?;
                    continue;
                }
            },
            Ok(None) => return Ok(()),
            Err(AdminError::Protocol(msg)) => {
                write_line(&mut write, &Reply::Error(msg)).await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        debug!(?command, "admin command");
        match command {
            Command::Publish {
                repo_id,
                refs,
                force,
                expected_manifest,
            } => {
                // The pack runs to the end of the client's side; the
                // connection ends with the reply.
                let request = PublishRequest {
                    repo_id,
                    refs,
                    force,
                    expected_manifest,
                };
                let reply = tokio::select! {
                    _ = cancel.cancelled() => Reply::Error("knotd is shutting down".into()),
                    reply = executor.publish(request, &mut reader) => reply,
                };
                write_line(&mut write, &reply).await?;
                return Ok(());
            }
            Command::UploadPack { repo_id, protocol } => {
                let target = match executor.serve_target(repo_id.clone()).await {
                    Ok(target) => target,
                    Err(message) => {
                        write_line(&mut write, &Reply::Error(message)).await?;
                        return Ok(());
                    }
                };
                write_line(&mut write, &Reply::Ok(Payload::Bridge)).await?;
                let protocol = protocol.as_deref().and_then(gitserve::git_protocol);
                let bridged = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    bridged = gitserve::bridge_upload_pack(&target, protocol.as_deref(), reader, write) => bridged,
                };
                if let Err(e) = bridged {
                    warn!(repo = %repo_id, error = %e, "upload-pack over the admin socket failed");
                }
                return Ok(());
            }
            command => {
                if let Some(done) = serve_command(command, &executor, &mut write, &cancel).await? {
                    return Ok(done);
                }
            }
        }
    }
}

/// Serve one request/reply (or `watch`) command. `Some(())`: the
/// connection is done.
async fn serve_command<E: Executor>(
    command: Command,
    executor: &E,
    write: &mut OwnedWriteHalf,
    cancel: &CancellationToken,
) -> Result<Option<()>, AdminError> {
    let events = command
        .streamed_events()
        .and_then(|filter| executor.events().map(|rx| (filter, rx)));
    let Some((filter, mut events)) = events else {
        let reply = executor.execute(command).await;
        write_line(write, &reply).await?;
        return Ok(None);
    };
    // A watch: events until the client leaves or the node stops.
    write_line(
        write,
        &StreamLine {
            event: EventLine {
                at_ms: crate::clock::unix_millis(),
                repo: filter.clone(),
                event: NodeEvent::Watching,
            },
        },
    )
    .await?;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return Ok(Some(())),
            event = events.recv() => event,
        };
        match event {
            Ok(event)
                if filter
                    .as_ref()
                    .is_none_or(|f| event.repo.as_deref() == Some(f.as_str())) =>
            {
                write_line(write, &StreamLine { event }).await?;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(missed, "an admin client fell behind the event stream");
            }
            Err(broadcast::error::RecvError::Closed) => {
                let reply = Reply::Error("knotd is shutting down".into());
                write_line(write, &reply).await?;
                return Ok(Some(()));
            }
        }
    }
}

/// An event line on the wire: `{"event": {...}}`.
#[derive(Serialize)]
struct StreamLine {
    event: EventLine,
}

pub(super) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
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

pub(super) async fn write_line<W: AsyncWriteExt + Unpin, T: Serialize>(
    write: &mut W,
    value: &T,
) -> Result<(), AdminError> {
    let mut bytes = serde_json::to_vec(value).expect("reply serializes");
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.flush().await?;
    Ok(())
}
