//! Addressing without tickets: a follower that knows a seeder only by the
//! node id in a record's `peers[]` (no addresses, no ticket) finds it
//! through a self-hosted pkarr relay, a real `iroh-dns-server` on loopback
//! (`discovery = "http://…/pkarr"`). A node with discovery off, given the
//! same record, cannot reach the seeder. No relays: loopback only.

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{Json, Router, extract::State, routing::get};
use common::{TestNode, eventually, make_repo};
use knotd::{
    admin::{Command, Payload},
    config::{Config, Discovery},
};
use serde_json::{Value, json};

const REPO: &str = "did:plc:discovery1/by-node-id";

/// A real pkarr relay (`iroh-dns-server`) on loopback, in memory of this test.
async fn pkarr_server(dir: &std::path::Path) -> (iroh_dns_server::Server, String) {
    let mut config = iroh_dns_server::config::Config::default();
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    if let Some(http) = config.http.as_mut() {
        http.port = 0;
        http.bind_addr = Some(localhost);
    }
    config.https = None;
    config.dns.port = 0;
    config.dns.bind_addr = Some(localhost);
    config.metrics = Some(iroh_dns_server::config::MetricsConfig::disabled());
    config.pkarr_put_rate_limit = iroh_dns_server::config::RateLimitConfig::Disabled;
    config.data_dir = Some(dir.to_path_buf());
    let server = iroh_dns_server::Server::bind(config)
        .await
        .expect("pkarr server starts");
    let url = format!("http://{}/pkarr", server.http_addr().expect("http bound"));
    (server, url)
}

/// Serves one `app.knot.repo` record at `com.atproto.repo.getRecord`, as
/// the owner's PDS would.
async fn record_server(record: Value) -> (tokio::task::JoinHandle<()>, String) {
    async fn get_record(State(record): State<Value>) -> Json<Value> {
        Json(json!({
            "uri": format!("at://did:plc:discovery1/app.knot.repo/by-node-id"),
            "value": record,
        }))
    }
    let app = Router::new()
        .route("/xrpc/com.atproto.repo.getRecord", get(get_record))
        .with_state(record);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (task, format!("http://{addr}"))
}

fn config_with(dir: &std::path::Path, discovery: &str) -> Config {
    let mut config = Config::local(dir);
    config.discovery = Discovery(discovery.to_string());
    config.atproto.plc_directory = "http://127.0.0.1:1".into();
    config.atproto.request_timeout_secs = 2;
    config
}

async fn follow_record(node: &TestNode, pds: &str) {
    node.admin(Command::AddRepo {
        repo_id: common::rid(REPO),
        pds: Some(pds.to_string()),
        record: None,
        peers: vec![],
    })
    .await
    .expect("add-repo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_peer_known_only_by_node_id_is_found_through_discovery() {
    let tmp = tempfile::tempdir().unwrap();
    let (pkarr, pkarr_url) = pkarr_server(&tmp.path().join("pkarr")).await;

    let seeder = TestNode::spawn_with(config_with(&tmp.path().join("seeder"), &pkarr_url)).await;
    let src = tmp.path().join("src");
    make_repo(&src);
    let published = seeder.publish(REPO, &src).await;

    // The owner's record names the seeder by node id alone.
    let record = json!({
        "$type": "app.knot.repo",
        "repoId": REPO,
        "head": published.head,
        "manifest": published.manifest,
        "peers": [{"nodeId": seeder.node.id().to_string()}],
    });
    let (pds_task, pds) = record_server(record).await;

    // The seeder's addresses reach the pkarr server once it has them.
    let signed_packet = format!("{pkarr_url}/{}", seeder.node.id().to_z32());
    eventually(30, "the seeder's record on the pkarr server", || async {
        reqwest::get(&signed_packet)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let follower =
        TestNode::spawn_with(config_with(&tmp.path().join("follower"), &pkarr_url)).await;
    follow_record(&follower, &pds).await;
    eventually(60, "the follower to fetch from the seeder", || async {
        follower.materialized(REPO).await.as_deref() == Some(published.manifest.as_str())
    })
    .await;

    // Without discovery the same record leads nowhere.
    let blind = TestNode::spawn_with(config_with(&tmp.path().join("blind"), "off")).await;
    follow_record(&blind, &pds).await;
    eventually(
        60,
        "the node without discovery to report its failure",
        || async {
            blind
                .summary(REPO)
                .await
                .is_some_and(|s| s.last_error.is_some())
        },
    )
    .await;
    assert_eq!(blind.materialized(REPO).await, None);
    let error = blind.summary(REPO).await.unwrap().last_error.unwrap();
    eprintln!("without discovery: {error}");

    // Status names the discovery service and the path to the seeder.
    let Payload::Status(status) = follower.admin(Command::Status).await.unwrap() else {
        panic!("status");
    };
    assert_eq!(status.discovery, pkarr_url);
    assert_eq!(status.relay_mode, "disabled");
    assert!(status.relays.is_empty());
    let path = status
        .peer_paths
        .iter()
        .find(|p| p.node_id == seeder.node.id().to_string())
        .expect("the seeder has a path entry");
    assert_eq!(path.path, knotd::admin::PathKind::Direct, "{path:?}");

    for node in [follower, blind, seeder] {
        node.stop().await;
    }
    pds_task.abort();
    pkarr.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
}
