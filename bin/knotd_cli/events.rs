//! Live events for the CLI: `watch`, progress of long commands, and waiting
//! for replicas.

use std::{io::IsTerminal, path::Path};

use anyhow::{Context, Result};
use knotd::{
    admin::{AdminClient, Command, EventLine, NodeEvent, PackProgress, Payload, PublishReport},
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
        NodeEvent::PersistFailed { error, retry_secs } => {
            format!(
                "the database could not record a change ({error}); written again in {retry_secs} s"
            )
        }
        NodeEvent::QuotaRefused { manifest, error } => {
            format!("refused {}: {error}", short(manifest))
        }
        NodeEvent::Repaired {
            manifest,
            rebuilt,
            fetched,
        } => format!(
            "repaired {}: {rebuilt} blob(s) rebuilt from the materialized copy, {fetched} fetched again",
            short(manifest)
        ),
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
        NodeEvent::RecordDeleted { revoked, remove_at } => {
            let removal = match remove_at {
                Some(at) => format!("; removed at {at} (Unix time) unless it comes back"),
                None => "; the content stays".to_string(),
            };
            format!(
                "the owner's record is gone: {} peers it named are no longer trusted{removal}",
                revoked.len()
            )
        }
        NodeEvent::FollowLimit {
            did,
            limit,
            refused,
        } => format!(
            "{did} lists {refused} repositories beyond [follow] max_repos_per_identity = {limit}; not tracked"
        ),
        NodeEvent::WriteBack { ok: true, .. } => "record written back".to_string(),
        NodeEvent::WriteBack { error, .. } => format!(
            "record write-back failed: {}",
            error.as_deref().unwrap_or("unknown error")
        ),
    };
    format!("{repo}: {what}")
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
