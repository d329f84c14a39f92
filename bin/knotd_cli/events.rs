//! Live events for the CLI: `watch`, progress of long commands, and waiting
//! for replicas.

use std::{io::IsTerminal, path::Path};

use anyhow::{Context, Result};
use knotd::{
    admin::{AdminClient, Command, EventLine, PackProgress, Payload, PublishReport},
    repo_id::RepoId,
};

/// How long a wait for replicas lasts when no timeout is given.
pub const DEFAULT_REPLICAS_TIMEOUT: u64 = 60;

/// One line describing an event, for people.
pub fn describe(e: &EventLine) -> String {
    e.describe()
}

/// `watch`: print events until the node stops.
pub async fn watch(client: &AdminClient, repo: Option<RepoId>, json: bool) -> Result<()> {
    client
        .watch(repo, |event| {
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

/// Whether progress is shown (stderr is a terminal, or `always`).
fn show_progress(always: bool) -> bool {
    always || std::io::stderr().is_terminal()
}

/// Run `command` while printing `repo`'s events on stderr (when it is a
/// terminal, or always with `always`).
pub async fn with_progress(
    client: &AdminClient,
    repo: &RepoId,
    command: &Command,
    always: bool,
) -> Result<Payload> {
    if !show_progress(always) {
        return Ok(client.call(command).await?);
    }
    Ok(client
        .call_watching(repo, command, |event| eprintln!("{}", describe(&event)))
        .await?)
}

/// Publish the repository at `path` (packed here), showing progress on a
/// terminal.
pub async fn publish(
    client: &AdminClient,
    repo: &RepoId,
    path: &Path,
    force: bool,
) -> Result<PublishReport> {
    let path =
        std::fs::canonicalize(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !show_progress(false) {
        return Ok(client
            .publish_repository(repo, &path, force, PackProgress::Quiet)
            .await?);
    }
    let watcher = client
        .watch_in_background(repo, |event| eprintln!("{}", describe(&event)))
        .await;
    let result = client
        .publish_repository(repo, &path, force, PackProgress::Stderr)
        .await;
    watcher.abort();
    Ok(result?)
}

/// Wait until `count` other peers hold `repo`'s state, printing progress.
pub async fn replicas(
    client: &AdminClient,
    repo: &RepoId,
    count: u32,
    timeout: u64,
) -> Result<Payload> {
    let command = Command::Replicas {
        repo_id: repo.clone(),
        count,
        timeout_secs: timeout,
    };
    with_progress(client, repo, &command, true).await
}
