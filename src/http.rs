//! Read-only smart HTTP: `git clone http://<host>/<did>/<name>` straight from
//! the node's materialized repositories.
//!
//! Owns the HTTP routes and nothing else: every request maps a validated
//! [`RepoId`] to the repository the node serves for it ([`ServedRepos`]:
//! the state its core holds, materialized; a directory that merely exists
//! under the repositories' root is not served) and runs
//! `git upload-pack --stateless-rpc` on it, the same program
//! `git http-backend` would run. Running upload-pack directly keeps the
//! service read-only by construction (there is no receive-pack path to
//! configure away), avoids CGI header parsing, and lets the response stream
//! straight from the process to the client.
//!
//! Routes:
//!
//! * `GET /<did>/<name>/info/refs?service=git-upload-pack`: ref advertisement;
//! * `POST /<did>/<name>/git-upload-pack`: negotiation and pack;
//! * a trailing `.git` on the name is accepted;
//! * receive-pack gets 403, dumb HTTP gets 403, anything else 404;
//! * with `[http] pages` on, the node's web pages ([`crate::web`]): `/`,
//!   `/<did>/<name>` (the page a browser opening a clone URL sees),
//!   `/status`.
//!
//! Every request goes through tower layers, outermost first: at most
//! [`MAX_CONCURRENT`] requests are handled at once (503 beyond that, before
//! any body is read), each must produce its response within
//! [`REQUEST_TIMEOUT`], request bodies are bounded ([`MAX_REQUEST_BODY`]) as
//! sent and again after gzip decoding. A git process serving a response
//! keeps a slot of its own until it exits, and is killed after
//! [`GIT_TIMEOUT`].

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    BoxError, Router,
    body::Body,
    error_handling::HandleErrorLayer,
    extract::{DefaultBodyLimit, Path as UrlPath, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Semaphore,
    task::JoinHandle,
};
use tokio_util::{io::ReaderStream, sync::CancellationToken};
use tower::ServiceBuilder;
use tower_http::{decompression::RequestDecompressionLayer, limit::RequestBodyLimitLayer};
use tracing::{debug, info, warn};

use crate::gitserve::upload_pack_command;
use crate::repo_id::RepoId;
use crate::served::ServedRepos;

/// Largest request body accepted, before and after gzip decoding (a
/// negotiation lists object ids: this is millions of them).
pub const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;
/// Longest a request may take to produce its response (the streamed body of
/// a clone is bounded by [`GIT_TIMEOUT`] instead).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a single git process may run.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// Most git processes running at once.
pub const MAX_CONCURRENT: usize = 32;
/// How long in-flight requests may finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bytes of a failing git process's stderr kept for the log.
const MAX_STDERR_LOGGED: usize = 4096;

#[derive(Clone)]
struct AppState {
    served: ServedRepos,
    slots: Arc<Semaphore>,
}

/// The routes, serving the repositories `served` names.
pub fn router(served: ServedRepos) -> Router {
    router_with(served, None)
}

/// The git routes plus `pages` (the node's web pages, [`crate::web`]),
/// all behind the same limits.
pub fn router_with(served: ServedRepos, pages: Option<Router>) -> Router {
    let state = AppState {
        served,
        slots: Arc::new(Semaphore::new(MAX_CONCURRENT)),
    };
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(refuse_overload))
        .load_shed()
        .concurrency_limit(MAX_CONCURRENT)
        .timeout(REQUEST_TIMEOUT)
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY))
        .layer(RequestDecompressionLayer::new().gzip(true))
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY));
    let git = Router::new()
        .route("/{did}/{name}/info/refs", get(info_refs))
        .route("/{did}/{name}/git-upload-pack", post(upload_pack))
        .route("/{did}/{name}/git-receive-pack", post(receive_pack))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    match pages {
        Some(pages) => git.merge(pages),
        None => git,
    }
    .layer(limits)
}

/// Whether reading a body failed because it exceeded the limit.
fn too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The answer when the limits refuse a request: busy, or too slow.
async fn refuse_overload(error: BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        busy()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        text(StatusCode::GATEWAY_TIMEOUT, "the request took too long")
    } else {
        warn!(%error, "smart HTTP request failed");
        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

/// Serve smart HTTP (and `pages`, when given) on `listener` until `cancel`
/// fires. Requests still running then get [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    served: ServedRepos,
    pages: Option<Router>,
    cancel: CancellationToken,
) {
    match listener.local_addr() {
        Ok(addr) => {
            info!(%addr, root = %served.root().display(), "smart HTTP listening (read-only)")
        }
        Err(e) => warn!(error = %e, "smart HTTP listener has no local address"),
    }
    let app = router_with(served, pages);
    let stop = cancel.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .into_future();
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                warn!(error = %e, "smart HTTP server stopped with an error");
            }
        }
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            debug!("smart HTTP: abandoning requests still running after shutdown");
        }
    }
    info!("smart HTTP stopped");
}

/// Bind `bind` and serve in a background task; returns the bound address.
pub async fn start(
    bind: SocketAddr,
    served: ServedRepos,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, served, None, cancel));
    Ok((addr, task))
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut message = message.into();
    message.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// A request refused with a status and a one-line reason.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        text(self.status, self.message)
    }
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "not found; clone with http://<host>/<did>/<name>",
    )
}

async fn receive_pack() -> Response {
    text(
        StatusCode::FORBIDDEN,
        "this knot serves repositories read-only over HTTP; push with a knot:// remote (git-remote-knot)",
    )
}

/// Map the URL's repository to the directory it is served from, or the
/// response refusing it.
fn locate(served: &ServedRepos, did: &str, name: &str) -> Result<(RepoId, PathBuf), Refusal> {
    let name = name.strip_suffix(".git").unwrap_or(name);
    let id = RepoId::parse(&format!("{did}/{name}"))
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    match served.get(&id) {
        Some(repo) => Ok((id, repo.dir)),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("repository {id} is not held by this knot"),
        )),
    }
}

/// The `Git-Protocol` header, when it is plausible (`version=2` and the like).
fn git_protocol(headers: &HeaderMap) -> Option<String> {
    crate::gitserve::git_protocol(headers.get("git-protocol")?.to_str().ok()?)
}

fn no_cache(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Fri, 01 Jan 1980 00:00:00 GMT"),
    );
}

fn busy() -> Response {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many git requests at once; retry shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

#[derive(Deserialize)]
struct InfoRefsQuery {
    service: Option<String>,
}

async fn info_refs(
    State(state): State<AppState>,
    UrlPath((did, name)): UrlPath<(String, String)>,
    Query(query): Query<InfoRefsQuery>,
    headers: HeaderMap,
) -> Response {
    let (id, dir) = match locate(&state.served, &did, &name) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    match query.service.as_deref() {
        Some("git-upload-pack") => {}
        Some("git-receive-pack") => return receive_pack().await,
        Some(other) => {
            return text(
                StatusCode::FORBIDDEN,
                format!("service {other:?} is not served; only git-upload-pack is"),
            );
        }
        None => {
            return text(
                StatusCode::FORBIDDEN,
                "only the smart HTTP protocol is served; use git 1.6.6 or newer",
            );
        }
    }
    let Ok(_permit) = state.slots.clone().try_acquire_owned() else {
        return busy();
    };
    let protocol = git_protocol(&headers);
    let v2 = protocol.as_deref().is_some_and(|p| p.contains("version=2"));
    let mut cmd = upload_pack_command(&dir, protocol.as_deref(), true, true);
    let output = match tokio::time::timeout(GIT_TIMEOUT, cmd.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            warn!(repo = %id, error = %e, "cannot run git upload-pack");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot run git");
        }
        Err(_) => {
            warn!(repo = %id, "git upload-pack --advertise-refs timed out");
            return text(StatusCode::GATEWAY_TIMEOUT, "git timed out");
        }
    };
    if !output.status.success() {
        warn!(
            repo = %id,
            status = %output.status,
            stderr = %String::from_utf8_lossy(&output.stderr[..output.stderr.len().min(MAX_STDERR_LOGGED)]),
            "git upload-pack --advertise-refs failed"
        );
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git upload-pack failed; see the knot's log",
        );
    }
    let mut body = Vec::with_capacity(output.stdout.len() + 40);
    if !v2 {
        // Protocol v0/v1 advertisements start with the service announcement.
        body.extend_from_slice(b"001e# service=git-upload-pack\n0000");
    }
    body.extend_from_slice(&output.stdout);
    debug!(repo = %id, v2, bytes = body.len(), "ref advertisement");
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-git-upload-pack-advertisement"),
    );
    no_cache(response.headers_mut());
    response
}

async fn upload_pack(
    State(state): State<AppState>,
    UrlPath((did, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (id, dir) = match locate(&state.served, &did, &name) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(content_type) = headers.get(header::CONTENT_TYPE)
        && content_type.as_bytes() != b"application/x-git-upload-pack-request"
    {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/x-git-upload-pack-request",
        );
    }
    // A slot for the git process first, before the body is read.
    let Ok(permit) = state.slots.clone().try_acquire_owned() else {
        return busy();
    };
    // Gzip was decoded, and both sizes bounded, by the layers.
    let input: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(raw) => raw,
        Err(e) => {
            debug!(repo = %id, error = %e, "request body refused");
            return if too_large(&e) {
                text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {MAX_REQUEST_BODY} bytes"),
                )
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("the request body cannot be read (is it valid gzip?): {e}"),
                )
            };
        }
    };

    let protocol = git_protocol(&headers);
    let mut child = match upload_pack_command(&dir, protocol.as_deref(), true, false).spawn() {
        Ok(child) => child,
        Err(e) => {
            warn!(repo = %id, error = %e, "cannot run git upload-pack");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot run git");
        }
    };
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        warn!(repo = %id, "git upload-pack has no pipes");
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot run git");
    };
    let request_bytes = input.len();
    tokio::spawn(async move {
        // upload-pack may stop reading early; that is its call.
        let _ = stdin.write_all(&input).await;
        let _ = stdin.shutdown().await;
    });
    let repo = id.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let collect = async {
            let mut kept = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if kept.len() < MAX_STDERR_LOGGED {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            kept
        };
        let waited = tokio::time::timeout(GIT_TIMEOUT, async {
            let (kept, status) = tokio::join!(collect, child.wait());
            (kept, status)
        })
        .await;
        match waited {
            Ok((_, Ok(status))) if status.success() => {
                debug!(repo = %repo, request_bytes, "upload-pack done");
            }
            Ok((kept, Ok(status))) => warn!(
                repo = %repo,
                %status,
                stderr = %String::from_utf8_lossy(&kept),
                "git upload-pack failed"
            ),
            Ok((_, Err(e))) => {
                warn!(repo = %repo, error = %e, "waiting for git upload-pack failed")
            }
            Err(_) => {
                warn!(repo = %repo, timeout = ?GIT_TIMEOUT, "git upload-pack timed out; killing it");
                let _ = child.kill().await;
            }
        }
    });
    let mut response = Response::new(Body::from_stream(ReaderStream::new(stdout)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-git-upload-pack-result"),
    );
    no_cache(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn protocol_header_is_filtered() {
        let mut h = HeaderMap::new();
        assert_eq!(git_protocol(&h), None);
        h.insert("git-protocol", HeaderValue::from_static("version=2"));
        assert_eq!(git_protocol(&h).as_deref(), Some("version=2"));
        h.insert("git-protocol", HeaderValue::from_static("version=2 x;y"));
        assert_eq!(git_protocol(&h), None);
    }

    /// `repo` served from its directory under `root`.
    fn serving(root: &Path, repo: &str) -> ServedRepos {
        let served = ServedRepos::new(root.to_path_buf());
        let id = RepoId::parse(repo).unwrap();
        let state = crate::core::ServedState {
            manifest: iroh_blobs::Hash::new(repo),
            head: None,
            path: id.relative_path(),
        };
        served.set(id, Some(state));
        served
    }

    #[test]
    fn locate_refuses_bad_ids_and_repositories_not_served() {
        let root = tempfile::tempdir().unwrap();
        let served = serving(root.path(), "did:plc:abc/x");
        let bad = locate(&served, "did:plc:abc", "..").unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let bad = locate(&served, "..", "etc").unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let missing = locate(&served, "did:plc:abc", "y.git").unwrap_err();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        // A directory that exists is not served unless the node holds it.
        std::fs::create_dir_all(root.path().join("did:plc:abc/y.git/objects")).unwrap();
        let stray = locate(&served, "did:plc:abc", "y.git").unwrap_err();
        assert_eq!(stray.status, StatusCode::NOT_FOUND);
        let (id, dir) = locate(&served, "did:plc:abc", "x.git").unwrap();
        assert_eq!(id.as_str(), "did:plc:abc/x");
        assert_eq!(dir, root.path().join("did:plc:abc/x.git"));
    }

    async fn post(body: Vec<u8>, gzip: bool) -> StatusCode {
        use tower::ServiceExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("did:plc:abc/x.git/objects")).unwrap();
        let served = serving(root.path(), "did:plc:abc/x");
        let mut request = axum::http::Request::post("/did:plc:abc/x/git-upload-pack").header(
            header::CONTENT_TYPE,
            "application/x-git-upload-pack-request",
        );
        if gzip {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        let request = request.body(Body::from(body)).unwrap();
        router(served).oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn bodies_are_bounded_as_sent_and_once_decompressed() {
        assert_eq!(
            post(vec![b'0'; MAX_REQUEST_BODY + 1], false).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // A small gzip body that inflates beyond the limit.
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; MAX_REQUEST_BODY + 1]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 100_000);
        assert_eq!(post(bomb, true).await, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            post(b"not gzip".to_vec(), true).await,
            StatusCode::BAD_REQUEST
        );
    }
}
