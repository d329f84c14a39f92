//! A stand-in for a Tangled knot on loopback: the repositories under
//! `<root>/<owner-did>/<name>` served over smart HTTP by the real
//! `git http-backend` (as CGI behind a small HTTP server), and the knot's
//! push events on `/events` (a WebSocket of JSON text frames
//! `{"rkey","nsid","event","created"}`, resumed with `?cursor=<created>`).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use n0_future::{SinkExt, StreamExt};
use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::broadcast, task::JoinSet};

struct Shared {
    root: PathBuf,
    events: Mutex<Vec<(i64, String)>>,
    live: broadcast::Sender<(i64, String)>,
    events_on: AtomicBool,
    cursors: Mutex<Vec<i64>>,
}

/// A running stand-in knot; stopped (every connection closed) when dropped.
pub struct StandInKnot {
    /// `127.0.0.1:<port>`, the `knot` of the records.
    pub host: String,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl StandInKnot {
    /// Serve the repositories under `root`.
    pub async fn start(root: &Path) -> StandInKnot {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            events: Mutex::new(Vec::new()),
            live: broadcast::channel(64).0,
            events_on: AtomicBool::new(true),
            cursors: Mutex::new(Vec::new()),
        });
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let app = Router::new().fallback(cgi).with_state(shared.clone());
        let (accept_shared, accept_tasks) = (shared.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (shared, app) = (accept_shared.clone(), app.clone());
                accept_tasks
                    .lock()
                    .unwrap()
                    .spawn(connection(stream, shared, app));
            }
        });
        StandInKnot {
            host,
            shared,
            tasks,
        }
    }

    /// Where `<did>/<name>` lives.
    pub fn repo_dir(&self, did: &str, name: &str) -> PathBuf {
        self.shared.root.join(did).join(name)
    }

    /// Announce a push to `<did>/<name>` as a knot does
    /// (`sh.tangled.git.refUpdate`, in the format with `repoDid` and
    /// `repoName`).
    pub fn push_event(&self, did: &str, name: &str, new_sha: &str) {
        let created = {
            let events = self.shared.events.lock().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64;
            now.max(events.last().map_or(0, |e| e.0 + 1))
        };
        let frame = json!({
            "rkey": format!("3k{created}"),
            "nsid": "sh.tangled.git.refUpdate",
            "created": created,
            "event": {
                "ref": "refs/heads/main",
                "committerDid": did,
                "repoDid": did,
                "repoName": name,
                "oldSha": "0".repeat(40),
                "newSha": new_sha,
                "meta": {"isDefaultRef": true, "commitCount": {"byEmail": []}},
            },
        })
        .to_string();
        self.shared
            .events
            .lock()
            .unwrap()
            .push((created, frame.clone()));
        let _ = self.shared.live.send((created, frame));
    }

    /// Turn the event stream off (connections refused and closed) or on.
    pub fn set_events(&self, on: bool) {
        self.shared.events_on.store(on, Ordering::SeqCst);
        if !on {
            // Wake every open stream so that it sees the switch and closes.
            let _ = self.shared.live.send((i64::MIN, String::new()));
        }
    }

    /// The cursor of every event stream connection so far, in order.
    pub fn cursors(&self) -> Vec<i64> {
        self.shared.cursors.lock().unwrap().clone()
    }

    /// The `created` of the newest event.
    pub fn last_created(&self) -> Option<i64> {
        self.shared.events.lock().unwrap().last().map(|e| e.0)
    }
}

impl Drop for StandInKnot {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// One connection: the event stream or HTTP for git.
async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>, app: Router) {
    let mut head = [0u8; 16];
    let Ok(n) = stream.peek(&mut head).await else {
        return;
    };
    if head[..n].starts_with(b"GET /events") {
        events(stream, shared).await;
        return;
    }
    let service = hyper_util::service::TowerToHyperService::new(app);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

async fn events(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    if !shared.events_on.load(Ordering::SeqCst) {
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let Ok((request, mut ws)) = tokio_websockets::ServerBuilder::new().accept(stream).await else {
        return;
    };
    let cursor = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("cursor=")))
        .and_then(|c| c.parse::<i64>().ok())
        .unwrap_or(0);
    shared.cursors.lock().unwrap().push(cursor);
    let mut live = shared.live.subscribe();
    let backlog: Vec<_> = shared
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 > cursor)
        .cloned()
        .collect();
    for (_, frame) in backlog {
        if ws
            .send(tokio_websockets::Message::text(frame))
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        tokio::select! {
            event = live.recv() => {
                let Ok((created, frame)) = event else { return };
                if !shared.events_on.load(Ordering::SeqCst) {
                    let _ = ws.close().await;
                    return;
                }
                if created > cursor
                    && ws.send(tokio_websockets::Message::text(frame)).await.is_err()
                {
                    return;
                }
            }
            incoming = ws.next() => {
                if !matches!(incoming, Some(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// `git http-backend` as CGI.
async fn cgi(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git http-backend starts");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child
        .wait_with_output()
        .await
        .expect("git http-backend runs");
    let _ = writer.await;
    let text = out.stdout;
    let Some(split) = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| text.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
    else {
        return (StatusCode::BAD_GATEWAY, "no CGI headers").into_response();
    };
    let (head, rest) = (&text[..split.0], &text[split.0 + split.1..]);
    let mut status = StatusCode::OK;
    let mut builder = Response::builder();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    builder
        .status(status)
        .body(axum::body::Body::from(rest.to_vec()))
        .unwrap()
}
