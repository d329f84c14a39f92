//! Live events for the CLI: `watch`, progress of long commands, and waiting
//! for replicas.

use std::{io::IsTerminal, path::Path, time::Duration};

use anyhow::Result;
use knotd::{
    admin::{self, Command, EventLine, NodeEvent, Payload},
    repo_id::RepoId,
};

/// How long a wait for replicas lasts when no timeout is given.
pub const DEFAULT_REPLICAS_TIMEOUT: u64 = 60;

/// One line describing an event, for people.
pub fn describe(e: &EventLine) -> String {
    let repo = e.repo.as_deref().unwrap_or("-");
    let short = |s: &str| s.chars().take(12).collect::<String>();
    let what = match &e.event {
        NodeEvent::Watching => "watching".to_string(),
        NodeEvent::Adopted {
            manifest,
            seq,
            source,
        } => format!(
            "adopted {} (seq {seq}) from {}",
            short(manifest),
            short(source)
        ),
        NodeEvent::FetchStarted {
            manifest,
            providers,
        } => format!(
            "fetch of {} started ({providers} providers)",
            short(manifest)
        ),
        NodeEvent::FetchProgress {
            manifest,
            bytes,
            total,
        } => match total {
            Some(total) => format!("fetching {}: {bytes}/{total} bytes", short(manifest)),
            None => format!("fetching {}: {bytes} bytes", short(manifest)),
        },
        NodeEvent::FetchFinished {
            manifest,
            bytes,
            ms,
        } => format!("fetched {}: {bytes} bytes in {ms} ms", short(manifest)),
        NodeEvent::FetchFailed { manifest, error } => {
            format!("fetch of {} failed: {error}", short(manifest))
        }
        NodeEvent::Published {
            manifest,
            seq,
            bytes,
            ms,
        } => format!(
            "published {} (seq {seq}, {bytes} bytes added, {ms} ms)",
            short(manifest)
        ),
        NodeEvent::Rejected { sender, reason } => {
            format!("rejected a state from {}: {reason}", short(sender))
        }
        NodeEvent::QuotaRefused { manifest, error } => {
            format!("refused {}: {error}", short(manifest))
        }
        NodeEvent::PeerUp { peer } => format!("peer {} up", short(peer)),
        NodeEvent::PeerDown { peer } => format!("peer {} down", short(peer)),
        NodeEvent::PeerState {
            peer,
            manifest,
            status,
        } => format!(
            "peer {} holds {} ({})",
            short(peer),
            short(manifest),
            status.as_str()
        ),
        NodeEvent::Replicas {
            manifest,
            holding,
            wanted,
        } => format!("{holding}/{wanted} peers hold {}", short(manifest)),
        NodeEvent::PollError { error } => format!("record poll failed: {error}"),
        NodeEvent::WriteBack { ok: true, .. } => "record written back".to_string(),
        NodeEvent::WriteBack { error, .. } => format!(
            "record write-back failed: {}",
            error.as_deref().unwrap_or("unknown error")
        ),
    };
    format!("{repo}: {what}")
}

/// `watch`: print events until the node stops.
pub async fn watch(socket: &Path, repo: Option<RepoId>, json: bool) -> Result<()> {
    let command = Command::Watch { repo_id: repo };
    admin::request_streaming(socket, &command, |event| {
        if matches!(event.event, NodeEvent::Watching) {
            return;
        }
        if json {
            println!(
                "{}",
                serde_json::to_string(&event).expect("events serialize")
            );
        } else {
            println!("{}", describe(&event));
        }
    })
    .await?;
    Ok(())
}

/// Run `command` while printing `repo`'s events on stderr (when it is a
/// terminal, or always with `always`).
pub async fn with_progress(
    socket: &Path,
    repo: &RepoId,
    command: &Command,
    always: bool,
) -> Result<Payload> {
    if !always && !std::io::stderr().is_terminal() {
        return Ok(admin::request(socket, command).await?);
    }
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let watch = Command::Watch {
        repo_id: Some(repo.clone()),
    };
    let socket_owned = socket.to_path_buf();
    let watcher = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let _ = admin::request_streaming(&socket_owned, &watch, |event| {
            if matches!(event.event, NodeEvent::Watching) {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
                return;
            }
            eprintln!("{}", describe(&event));
        })
        .await;
    });
    // Start once the watch is set up (or without it, shortly).
    let _ = tokio::time::timeout(Duration::from_secs(2), ready).await;
    let result = admin::request(socket, command).await;
    watcher.abort();
    Ok(result?)
}

/// Wait until `count` other peers hold `repo`'s state, printing progress.
pub async fn replicas(socket: &Path, repo: &RepoId, count: u32, timeout: u64) -> Result<Payload> {
    let command = Command::Replicas {
        repo_id: repo.clone(),
        count,
        timeout_secs: timeout,
    };
    with_progress(socket, repo, &command, true).await
}
