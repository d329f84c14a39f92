//! One line per event for a run's trace.

use super::model::*;
use crate::core::{CoreCommand, Event, RecordPoll};

/// One line about an event, for the trace.
pub fn describe_event(event: &Event) -> String {
    match event {
        Event::Command { command, .. } => format!("command {}", describe_command(command)),
        Event::Announcement {
            repo,
            announcement,
            via,
        } => {
            let s = &announcement.statement.statement;
            format!(
                "announcement {repo} {} seq {} by {} from {} ({via:?})",
                short(&s.manifest_hash()),
                s.seq,
                // The short form of a node id, without parsing the key.
                data_encoding::HEXLOWER.encode(&s.publisher[..5]),
                data_encoding::HEXLOWER.encode(&announcement.sender[..5])
            )
        }
        Event::NeighborUp { repo, peer, .. } => format!("neighbour up {repo} {}", peer.fmt_short()),
        Event::NeighborDown { repo, peer } => format!("neighbour down {repo} {}", peer.fmt_short()),
        Event::TopicClosed { repo } => format!("topic closed {repo}"),
        Event::Pulled { peer, ok } => format!("pulled {} ok={ok}", peer.fmt_short()),
        Event::Polled {
            repo,
            outcome,
            read,
            ..
        } => match outcome {
            RecordPoll::Found(r) => format!(
                "polled {repo} (read {read}): manifest {:?} seq {:?} peers {}",
                r.manifest.as_deref().map(|m| &m[..8]),
                r.seq,
                r.peers.len()
            ),
            other => format!("polled {repo} (read {read}): {other:?}"),
        },
        Event::JobDone {
            repo, job, result, ..
        } => match result {
            Ok(info) => format!("job {job} {repo} done: {}", short(&info.manifest)),
            Err(e) => format!("job {job} {repo} failed: {e}"),
        },
        Event::JobProgress {
            repo,
            job,
            progress,
        } => format!(
            "job {job} {repo} progress {}/{}",
            progress.bytes, progress.total
        ),
        Event::WrittenBack { repo, result } => format!("written back {repo}: {}", result.is_ok()),
        Event::Listed {
            did, result, read, ..
        } => format!(
            "listed {did} (read {read}): {}",
            result
                .as_ref()
                .map_or_else(|e| e.clone(), |(r, _)| format!("{} records", r.len()))
        ),
        Event::AccountResolved { did } => format!("account {did}"),
        Event::PersistFailed { subjects, error } => {
            format!("commit of {} subjects failed: {error}", subjects.len())
        }
        Event::NetBusy(busy) => format!("net busy: {busy:?}"),
        Event::GcPass { passes } => format!("gc pass {passes}"),
        Event::ReplicaProbed {
            repo, peer, proved, ..
        } => format!("probed {} for {repo}: {proved}", peer.fmt_short()),
        Event::Timer(key) => format!("timer {key:?}"),
    }
}

fn describe_command(command: &CoreCommand) -> String {
    match command {
        CoreCommand::AddRepo { repo_id, peers, .. } => {
            format!("add-repo {repo_id} ({} peers)", peers.len())
        }
        CoreCommand::Publish { repo_id, .. } => format!("publish {repo_id}"),
        other => format!("{other:?}").chars().take(120).collect(),
    }
}
