//! Tests of the pages' handlers with an in-process node.
use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::ServiceExt;

/// A node that lists `repos` repositories and counts how often it is
/// asked.
#[derive(Clone)]
struct CountingNode {
    repos: usize,
    lists: Arc<AtomicUsize>,
    events: broadcast::Sender<EventLine>,
}

impl CountingNode {
    fn new(repos: usize) -> Self {
        Self {
            repos,
            lists: Arc::default(),
            events: broadcast::channel(16).0,
        }
    }
}

impl Executor for CountingNode {
    fn events(&self) -> Option<broadcast::Receiver<EventLine>> {
        Some(self.events.subscribe())
    }

    async fn execute(&self, command: Command) -> Reply {
        match command {
            Command::List => {
                self.lists.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                let repos = (0..self.repos)
                    .map(|i| render::tests::summary(&format!("did:plc:owner{i:05}/repo")))
                    .collect();
                Reply::Ok(Payload::Repos { repos })
            }
            _ => Reply::Error("not in this test".into()),
        }
    }
}

async fn get(router: &Router, uri: &str) -> (StatusCode, String) {
    let request = axum::http::Request::get(uri)
        .header("host", "knot.example")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_flood_of_requests_asks_the_node_once_a_second() {
    let node = CountingNode::new(120);
    let router = Pages::new(node.clone(), None, CancellationToken::new()).router();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let router = router.clone();
        requests.spawn(async move { get(&router, "/").await.0 });
    }
    let mut rendered = 0;
    while let Some(status) = requests.join_next().await {
        match status.unwrap() {
            StatusCode::OK => rendered += 1,
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(rendered >= 1);
    assert_eq!(
        node.lists.load(Ordering::SeqCst),
        1,
        "{rendered} pages rendered"
    );
    tokio::time::sleep(SNAPSHOT_TTL).await;
    get(&router, "/").await;
    assert_eq!(
        node.lists.load(Ordering::SeqCst),
        2,
        "a stale list is asked again"
    );
}

#[tokio::test]
async fn the_list_is_paged_and_filtered_and_bad_pages_are_clamped() {
    let node = CountingNode::new(120);
    let router = Pages::new(node, None, CancellationToken::new()).router();
    let (_, first) = get(&router, "/").await;
    assert_eq!(first.matches("<li class=\"repo\"").count(), PAGE_SIZE);
    assert!(first.contains("page 1 of 3"), "{first}");
    let (_, last) = get(&router, "/?page=18446744073709551615").await;
    assert_eq!(last.matches("<li class=\"repo\"").count(), 20);
    assert!(last.contains("page 3 of 3"), "{last}");
    let (_, found) = get(&router, "/?rows=1&q=OWNER0011").await;
    assert_eq!(found.matches("<li class=\"repo\"").count(), 10, "{found}");
    assert!(!found.contains("<html"), "{found}");
    let (status, _) = get(&router, "/?page=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, page) = get(&router, "/did:plc:owner00001/..").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{page}");
}

#[tokio::test]
async fn live_views_stream_events_and_end_when_the_node_stops() {
    let node = CountingNode::new(1);
    let cancel = CancellationToken::new();
    let router = Pages::new(node.clone(), None, cancel.clone()).router();
    let request = axum::http::Request::get("/status/events")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let event = EventLine {
        at_ms: 3_723_000,
        repo: Some("did:plc:a/b".into()),
        event: NodeEvent::PeerUp {
            peer: "<b>peer</b>".into(),
        },
    };
    node.events.send(event).unwrap();
    use n0_future::StreamExt;
    let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("an event within 5 s")
        .unwrap()
        .unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(text.starts_with("event: node\ndata: {"), "{text}");
    assert!(text.contains("\"time\":\"01:02:03\""), "{text}");
    assert!(
        text.contains("did:plc:a/b: peer <b>peer</"),
        "text, escaped by the script's textContent: {text}"
    );
    cancel.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(end.is_ok(), "the stream must end when the node stops");
}

#[test]
fn clone_commands_echo_only_a_well_formed_host() {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("knot.example:8419"));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
    let seen = site(&headers);
    assert_eq!(
        (seen.scheme.as_str(), seen.host.as_str()),
        ("https", "knot.example:8419")
    );
    headers.insert(header::HOST, HeaderValue::from_static("evil.example/\"><x"));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("javascript"));
    let seen = site(&headers);
    assert_eq!(
        (seen.scheme.as_str(), seen.host.as_str()),
        ("http", "localhost")
    );
}

#[tokio::test]
async fn pages_past_the_rendering_limit_are_refused_not_queued() {
    let pages = Pages::new(CountingNode::new(1), None, CancellationToken::new());
    let held: Vec<_> = (0..MAX_PAGES_AT_ONCE)
        .map(|_| pages.slot().unwrap())
        .collect();
    let (status, page) = get(&pages.clone().router(), "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    drop(held);
    assert_eq!(get(&pages.router(), "/").await.0, StatusCode::OK);
}
