//! Operating a seeder: per-peer replication status, waiting for replicas,
//! metrics over HTTP, quotas and the seeding policy, with real nodes on
//! loopback.

mod common;

use std::time::Duration;

use common::{TestNode, add_commit, eventually, make_big_repo, make_repo, rid};
use knotd::{
    admin::{Command, Payload, PeerView, ReplicaStatus},
    config::{Config, PolicyDefault},
};

const REPO: &str = "did:plc:operator/site";

async fn peers(node: &TestNode, repo: &str) -> Vec<PeerView> {
    match node
        .admin(Command::Peers { repo_id: rid(repo) })
        .await
        .unwrap()
    {
        Payload::Peers { peers } => peers,
        other => panic!("{other:?}"),
    }
}

async fn status_of(node: &TestNode, peer: &TestNode) -> ReplicaStatus {
    let id = peer.node.id().to_string();
    peers(node, REPO)
        .await
        .into_iter()
        .find(|p| p.hint.node_id == id)
        .map_or(ReplicaStatus::Unknown, |p| p.status)
}

async fn replicas(node: &TestNode, count: u32, timeout_secs: u64) -> Result<Payload, String> {
    node.admin(Command::Replicas {
        repo_id: rid(REPO),
        count,
        timeout_secs,
    })
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_in_sync_behind_and_replicas() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let first = author.publish(REPO, &src).await;
    let ticket = author.ticket().await;
    let one = TestNode::spawn().await;
    let two = TestNode::spawn().await;
    for seeder in [&one, &two] {
        seeder.follow(REPO, vec![ticket.clone()]).await;
    }
    for seeder in [&one, &two] {
        eventually(30, "the seeders replicate", || async {
            seeder.materialized(REPO).await.as_deref() == Some(first.manifest.as_str())
        })
        .await;
    }
    // Both seeders hold the state: a wait for two replicas succeeds.
    let Payload::Replicas(report) = replicas(&author, 2, 20).await.unwrap() else {
        panic!()
    };
    assert_eq!(report.holding.len(), 2, "{report:?}");
    assert_eq!(status_of(&author, &one).await, ReplicaStatus::InSync);
    let summary = author.summary(REPO).await.unwrap();
    assert_eq!(summary.peers_in_sync, 2, "{summary:?}");

    // One seeder goes away; the next state reaches only the other.
    let two_id = two.node.id();
    let two_dir = two.data_dir.clone();
    let kept = two.stop().await;
    add_commit(&src, "update");
    let second = author.publish(REPO, &src).await;
    eventually(30, "the remaining seeder follows", || async {
        one.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    let Payload::Replicas(report) = replicas(&author, 1, 20).await.unwrap() else {
        panic!()
    };
    let counted: Vec<&str> = report.holding.iter().map(|c| c.node_id.as_str()).collect();
    assert_eq!(counted, vec![one.node.id().to_string()]);
    // The seeder is a stranger to the author: it counted by proving it.
    assert_eq!(report.holding[0].basis, knotd::admin::ReplicaBasis::Proved);
    // Two replicas cannot be had: the wait times out naming who is missing.
    let err = replicas(&author, 2, 3).await.unwrap_err();
    assert!(err.contains("only 1 of 2"), "{err}");
    assert!(err.contains(&two_id.fmt_short().to_string()), "{err}");
    assert!(err.contains("behind"), "{err}");
    let behind = peers(&author, REPO)
        .await
        .into_iter()
        .find(|p| p.hint.node_id == two_id.to_string())
        .unwrap();
    assert_eq!(behind.status, ReplicaStatus::Behind);
    assert_eq!(
        behind.replica.unwrap().manifest,
        first.manifest,
        "what it last announced"
    );

    // It comes back and catches up.
    let two = TestNode::spawn_in(&two_dir).await;
    eventually(60, "the returning seeder catches up", || async {
        two.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    assert!(matches!(
        replicas(&author, 2, 30).await,
        Ok(Payload::Replicas(_))
    ));
    drop(kept);
    for node in [two, one, author] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_over_http() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let mut config = Config::local(work.path().join("author"));
    config.metrics.bind = Some("127.0.0.1:0".parse().unwrap());
    let author = TestNode::spawn_with(config).await;
    let mut config = Config::local(work.path().join("follower"));
    config.metrics.bind = Some("127.0.0.1:0".parse().unwrap());
    let follower = TestNode::spawn_with(config).await;
    let published = author.publish(REPO, &src).await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the follower replicates", || async {
        follower.materialized(REPO).await.as_deref() == Some(published.manifest.as_str())
    })
    .await;

    let http = reqwest::Client::new();
    let scrape = |node: &TestNode| {
        let url = format!("http://{}/metrics", node.node.metrics_addr().unwrap());
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            assert!(resp.status().is_success());
            resp.text().await.unwrap()
        }
    };
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    let text = scrape(&author).await;
    assert_eq!(value(&text, "knotd_publishes_total"), 1.0);
    assert_eq!(value(&text, "knotd_repositories{state=\"held\"}"), 1.0);
    assert!(value(&text, "knotd_pinned_bytes") > 0.0);
    assert!(text.contains("knotd_publish_duration_seconds_bucket"));
    eventually(10, "the author counts the bytes it served", || async {
        value(&scrape(&author).await, "knotd_served_bytes_total") > 0.0
    })
    .await;
    let text = scrape(&follower).await;
    assert_eq!(value(&text, "knotd_fetches_total{result=\"ok\"}"), 1.0);
    assert!(value(&text, "knotd_fetched_bytes_total") >= published.bytes_added as f64);
    assert!(value(&text, "knotd_announcements_received_total") >= 1.0);
    // Packs indexed, by indexer (counted per process: ≥ this follower's).
    let indexed: f64 = ["gix", "git"]
        .iter()
        .filter_map(|i| {
            let series = format!("knotd_packs_indexed_total{{indexer=\"{i}\"}} ");
            text.lines()
                .find(|l| l.starts_with(&series))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
        .sum();
    assert!(indexed >= 1.0, "no packs_indexed series in\n{text}");
    assert!(text.contains("# TYPE knotd_pack_indexer_fallbacks counter"));
    assert!(text.contains("# TYPE knotd_connectivity_walks counter"));

    let health = format!("http://{}/health", follower.node.metrics_addr().unwrap());
    let resp = http.get(&health).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    follower.stop().await;
    author.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_quota_is_refused_and_the_old_one_kept() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author = TestNode::spawn().await;
    let first = author.publish(REPO, &src).await;
    let mut config = Config::local(work.path().join("follower"));
    config.max_repo_bytes = Some(first.bytes_added + 64 * 1024);
    let follower = TestNode::spawn_with(config).await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(30, "the first state fits", || async {
        follower.materialized(REPO).await.as_deref() == Some(first.manifest.as_str())
    })
    .await;

    // A second state with a megabyte of new data does not.
    let old_head = common::git(&src, &["rev-parse", "HEAD"]);
    let big = work.path().join("big");
    make_big_repo(&big, 1, b"quota");
    common::git(
        &src,
        &[
            "pull",
            "-q",
            "--no-rebase",
            "--allow-unrelated-histories",
            big.to_str().unwrap(),
            "main",
        ],
    );
    let second = author.publish(REPO, &src).await;
    eventually(30, "the state is refused", || async {
        follower
            .summary(REPO)
            .await
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("quota"))
    })
    .await;
    let summary = follower.summary(REPO).await.unwrap();
    assert_eq!(
        summary.materialized.as_deref(),
        Some(first.manifest.as_str())
    );
    assert_eq!(
        common::git(&follower.repo_path(REPO), &["rev-parse", "HEAD"]),
        old_head,
        "the old state is still served"
    );

    // Raised for this repository, the state comes.
    follower
        .admin(Command::SetQuota {
            repo_id: rid(REPO),
            max_bytes: Some(16 * 1024 * 1024),
        })
        .await
        .unwrap();
    eventually(30, "the state is taken once it fits", || async {
        follower.materialized(REPO).await.as_deref() == Some(second.manifest.as_str())
    })
    .await;
    follower.stop().await;
    author.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeding_policy_is_enforced_and_persisted() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("home");
    let mut config = Config::local(&dir);
    config.policy.default = PolicyDefault::Deny;
    config.atproto.plc_directory = "http://127.0.0.1:1".into();
    config.atproto.request_timeout_secs = 1;
    let home = TestNode::spawn_with(config.clone()).await;
    // Nobody asked for it: refused with a clear reason, nothing tracked.
    let err = home
        .admin(Command::Sync {
            repo_id: rid("did:plc:stranger/thing"),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not seed"), "{err}");
    assert!(home.repo_ids().await.is_empty());
    // Allowed by DID: a sync is attempted (and fails here, the record
    // being unreachable), not refused by policy.
    home.admin(Command::Policy {
        rule: knotd::admin::PolicyRule::Allow,
        target: "did:plc:stranger".into(),
    })
    .await
    .unwrap();
    let err = home
        .admin(Command::Sync {
            repo_id: rid("did:plc:stranger/thing"),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("does not seed"), "{err}");

    // The operator's own repository is tracked; blocking it removes it.
    home.follow(REPO, vec![]).await;
    let Payload::Done { message } = home
        .admin(Command::Policy {
            rule: knotd::admin::PolicyRule::Block,
            target: "did:plc:operator".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(message.contains("1 tracked"), "{message}");
    assert!(home.repo_ids().await.is_empty());
    let err = home
        .admin(Command::AddRepo {
            repo_id: rid(REPO),
            pds: None,
            record: None,
            peers: vec![],
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("blocked"), "{err}");

    // The lists survive a restart.
    let home = home.restart_with(config).await;
    let Payload::Policy(policy) = home.admin(Command::PolicyShow).await.unwrap() else {
        panic!()
    };
    assert_eq!(policy.allow, vec!["did:plc:stranger".to_string()]);
    assert_eq!(policy.block, vec!["did:plc:operator".to_string()]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    home.stop().await;
}
