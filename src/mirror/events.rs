//! A Tangled knot's push events: one WebSocket per knot host
//! (`wss://<knot>/events?cursor=<unix ns>`), whose text frames are JSON
//! `{"rkey", "nsid", "event", "created"}`; an `sh.tangled.git.refUpdate`
//! names the repository pushed to (`repoDid` + `repoName`, or the newer
//! `repo` with `ownerDid`). Each one makes the mirror service fetch that
//! repository at once instead of at its next poll; polling goes on
//! whether or not the stream is up.
//!
//! The listener resumes from the last `created` it saw, kept in the store
//! (`mirror-events:<host>` in the metadata table, written at most every
//! few seconds): events missed while the node was down are not lost, and
//! every mirror fetches once at start anyway. A first connection starts
//! from now (a knot replays its whole history from 0). A connection that
//! fails, closes, or stays silent longer than [`SILENCE`] (knots ping every
//! 30 s) is made again with doubling backoff up to [`MAX_BACKOFF`]. A frame
//! that does not parse is skipped; at most [`MAX_FRAME`] bytes are read.

use std::time::Duration;

use n0_future::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{repo_id::RepoId, store::Store};

/// Longest silence on a connection before it is made again.
pub const SILENCE: Duration = Duration::from_secs(90);
/// Longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Largest frame read.
pub const MAX_FRAME: usize = 256 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How far ahead of this node's clock a knot's event time may be.
const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(600);
/// Least time between two writes of the cursor.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What a push event says about which repository changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The knot host it came from.
    pub host: String,
    /// `<owner-did>/<name>`, when the event names both.
    pub repo_id: Option<RepoId>,
}

/// Read one frame: its `created` cursor, and the repository when it is a
/// ref update.
pub fn parse_frame(text: &str) -> Option<(i64, Option<RepoId>)> {
    let frame: Value = serde_json::from_str(text).ok()?;
    let created = frame.get("created")?.as_i64()?;
    if frame.get("nsid").and_then(Value::as_str) != Some("sh.tangled.git.refUpdate") {
        return Some((created, None));
    }
    let event = frame.get("event")?;
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    let owner = text("repoDid").or_else(|| text("ownerDid"));
    let repo_id = match (owner, text("repoName")) {
        (Some(owner), Some(name)) => RepoId::parse(&format!("{owner}/{name}")).ok(),
        _ => None,
    };
    Some((created, repo_id))
}

/// The cursor after an event `created` at `now` (both Unix nanoseconds),
/// when it moves. A knot's clock may run a little ahead of this one, but a
/// time beyond [`MAX_CLOCK_AHEAD`] would make the knot skip every event
/// until then after a reconnect: it is not taken.
fn advance(cursor: i64, created: i64, now: i64) -> Option<i64> {
    let latest = now.saturating_add(MAX_CLOCK_AHEAD.as_nanos() as i64);
    (created > cursor && created <= latest).then_some(created)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

fn cursor_key(host: &str) -> String {
    format!("mirror-events:{host}")
}

/// Listen to `host`'s events until `cancel`, sending each push to `tx`.
pub async fn listen(
    host: String,
    secure: bool,
    store: Store,
    tx: mpsc::Sender<Pushed>,
    cancel: CancellationToken,
) {
    let saved = store
        .meta(&cursor_key(&host))
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse::<i64>().ok());
    let mut cursor = saved.map_or_else(now_ns, |saved| saved.min(now_ns()));
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        let ended = tokio::select! {
            _ = cancel.cancelled() => return,
            ended = connection(&host, secure, &mut cursor, &store, &tx) => ended,
        };
        if tx.is_closed() {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        match ended {
            Ok(()) => debug!(%host, "knot event stream closed; connecting again"),
            Err(e) => {
                warn!(%host, error = %e, retry_in = ?backoff, "knot event stream failed; mirrors poll meanwhile")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: read frames until it ends.
async fn connection(
    host: &str,
    secure: bool,
    cursor: &mut i64,
    store: &Store,
    tx: &mpsc::Sender<Pushed>,
) -> Result<(), String> {
    let scheme = if secure { "wss" } else { "ws" };
    let url = format!("{scheme}://{host}/events?cursor={cursor}");
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let builder = tokio_websockets::ClientBuilder::from_uri(uri)
        .config(tokio_websockets::Config::default().frame_size(MAX_FRAME))
        .limits(tokio_websockets::Limits::default().max_payload_len(Some(MAX_FRAME)));
    let (mut stream, _) = tokio::time::timeout(CONNECT_TIMEOUT, builder.connect())
        .await
        .map_err(|_| format!("{url}: no answer within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {e}"))?;
    info!(%host, "listening to the knot's push events");
    let mut saved_at = tokio::time::Instant::now();
    let mut unsaved = false;
    loop {
        let next = tokio::time::timeout(SILENCE, stream.next()).await;
        let message = match next {
            Err(_) => return Err(format!("silent for {} s", SILENCE.as_secs())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(message))) => message,
        };
        let Some(text) = message.as_text() else {
            continue;
        };
        let Some((created, repo_id)) = parse_frame(text) else {
            debug!(%host, "skipped a knot event that does not parse");
            continue;
        };
        if let Some(next) = advance(*cursor, created, now_ns()) {
            *cursor = next;
            unsaved = true;
        }
        if let Some(repo_id) = repo_id
            && tx
                .send(Pushed {
                    host: host.to_owned(),
                    repo_id: Some(repo_id),
                })
                .await
                .is_err()
        {
            break;
        }
        if unsaved && saved_at.elapsed() >= SAVE_EVERY {
            save(store, host, *cursor);
            saved_at = tokio::time::Instant::now();
            unsaved = false;
        }
    }
    if unsaved {
        save(store, host, *cursor);
    }
    Ok(())
}

fn save(store: &Store, host: &str, cursor: i64) {
    if let Err(e) = store.set_meta(&cursor_key(host), cursor.to_string().as_bytes()) {
        warn!(%host, error = %e, "cannot keep the knot event cursor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_updates_name_their_repository_in_either_format() {
        let old = r#"{"rkey":"3k","nsid":"sh.tangled.git.refUpdate","created":17,
            "event":{"ref":"refs/heads/main","oldSha":"a","newSha":"b",
            "committerDid":"did:plc:c","repoDid":"did:plc:abc","repoName":"website"}}"#;
        let (created, repo) = parse_frame(old).unwrap();
        assert_eq!(created, 17);
        assert_eq!(repo.unwrap().as_str(), "did:plc:abc/website");
        let newer = r#"{"rkey":"3k","nsid":"sh.tangled.git.refUpdate","created":18,
            "event":{"ref":"refs/heads/main","ownerDid":"did:plc:abc","repoName":"site",
            "repo":"did:plc:repo"}}"#;
        assert_eq!(
            parse_frame(newer).unwrap().1.unwrap().as_str(),
            "did:plc:abc/site"
        );
        let other = r#"{"rkey":"3k","nsid":"sh.tangled.knot.member","created":19,"event":{}}"#;
        assert_eq!(parse_frame(other), Some((19, None)));
        let hostile = r#"{"nsid":"sh.tangled.git.refUpdate","created":20,
            "event":{"repoDid":"did:plc:abc","repoName":"../../etc"}}"#;
        assert_eq!(parse_frame(hostile), Some((20, None)));
        assert_eq!(parse_frame("not json"), None);
        assert_eq!(parse_frame(r#"{"created":"soon"}"#), None);
    }

    #[test]
    fn the_cursor_moves_forward_and_not_into_the_far_future() {
        let now = 1_800_000_000_000_000_000;
        assert_eq!(advance(10, 11, now), Some(11));
        assert_eq!(advance(11, 10, now), None, "never back");
        assert_eq!(advance(11, 11, now), None);
        let ahead = now + MAX_CLOCK_AHEAD.as_nanos() as i64;
        assert_eq!(
            advance(now, ahead, now),
            Some(ahead),
            "a clock a little ahead"
        );
        assert_eq!(advance(now, ahead + 1, now), None);
        assert_eq!(advance(now, i64::MAX, now), None, "a hostile time");
        assert_eq!(advance(i64::MAX - 1, i64::MAX, i64::MAX), Some(i64::MAX));
    }
}
