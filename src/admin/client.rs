//! The admin socket client.

use std::path::Path;

use tokio::{io::BufReader, net::UnixStream};

use super::server::{read_line, write_line};
use super::{AdminError, Command, EventLine, MAX_REPLY_LINE, Payload, QUICK_TIMEOUT, Reply};

/// A connection failure, saying what to do about it.
fn connect_error(socket: &Path, source: std::io::Error) -> AdminError {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        use std::os::unix::fs::MetadataExt;
        let group = std::fs::metadata(socket)
            .ok()
            .and_then(|m| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(m.gid()))
                    .ok()
                    .flatten()
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

/// Send one command to the node at `socket` and wait for its reply.
pub async fn request(socket: &Path, command: &Command) -> Result<Payload, AdminError> {
    request_streaming(socket, command, |_| {}).await
}

/// Send one command and wait for its reply, handing every event line the
/// node streams before it to `on_event` (`watch` streams until the node
/// stops). The wait for each line is the command's timeout.
pub async fn request_streaming(
    socket: &Path,
    command: &Command,
    mut on_event: impl FnMut(EventLine),
) -> Result<Payload, AdminError> {
    let wait = command.timeout();
    let stream = tokio::time::timeout(QUICK_TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| AdminError::Timeout(QUICK_TIMEOUT))?
        .map_err(|source| connect_error(socket, source))?;
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
