//! Mirrors of git upstreams: a real `git daemon` (and small HTTP servers
//! that misbehave) as the upstream, real nodes on loopback, the real git
//! client.

mod common;

#[allow(dead_code)]
#[path = "../bin/bench/gitd.rs"]
mod gitd;

use std::path::Path;
use std::time::Duration;

use common::{TestNode, eventually, fingerprint, git, make_big_repo, make_repo, rid};
use gitd::GitDaemon;
use knotd::config::Config;

const REPO: &str = "did:web:upstream.example/project";

/// A node whose mirrors poll every `poll_secs` and give up on a silent
/// upstream after `idle_secs`.
async fn mirror_node(poll_secs: u64, idle_secs: u64) -> (TestNode, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::local(tmp.path());
    config.mirror.poll_interval_secs = poll_secs;
    config.mirror.poll_jitter = 0.0;
    config.mirror.retry_secs = 1;
    config.mirror.idle_timeout_secs = idle_secs;
    config.metrics.bind = Some("127.0.0.1:0".parse().unwrap());
    let node = TestNode::spawn_with(config).await;
    (node, tmp)
}

/// An upstream: a bare repository `<base>/project.git` made from a working
/// repository at `<base>/work` with a branch, an annotated tag and a
/// second branch to delete later.
fn upstream(base: &Path) -> std::path::PathBuf {
    let work = base.join("work");
    make_repo(&work);
    git(&work, &["branch", "topic"]);
    git(&work, &["branch", "doomed"]);
    let bare = base.join("daemon/project.git");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        base,
        &[
            "clone",
            "-q",
            "--mirror",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    work
}

/// Push everything of `work` to the bare upstream, pruning what it lost.
fn push_mirror(work: &Path, bare: &Path) {
    git(
        work,
        &["push", "-q", "--mirror", "--force", bare.to_str().unwrap()],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_daemon_upstream_is_mirrored_replicated_and_outlives_its_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let work = upstream(tmp.path());
    let bare = tmp.path().join("daemon/project.git");
    let daemon = GitDaemon::spawn(&tmp.path().join("daemon")).unwrap();
    let (mirror, _m) = mirror_node(1, 10).await;
    let client = mirror.client();

    // Plain git URLs need the operator's repo id.
    let err = client.mirror(&daemon.url("project.git"), None).await;
    assert!(
        err.unwrap_err().to_string().contains("--repo-id"),
        "a URL that names no repository id is refused"
    );
    client
        .mirror(&daemon.url("project.git"), Some(&rid(REPO)))
        .await
        .unwrap();
    let view = client.mirror_sync(&rid(REPO)).await.unwrap();
    assert!(view.error.is_none(), "{view:?}");
    let manifest = view.manifest.clone().expect("a state was published");
    assert_eq!(mirror.materialized(REPO).await.as_deref(), Some(&*manifest));
    assert_eq!(
        fingerprint(&mirror.repo_path(REPO)),
        fingerprint(&bare),
        "the mirror holds every ref of the upstream"
    );
    assert_eq!(
        git(&mirror.repo_path(REPO), &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );
    assert_eq!(
        linked_packs(&mirror),
        1,
        "the fetched pack is the state's pack, not packed again"
    );

    // A second knot told only the mirror's ticket replicates it.
    let follower = TestNode::spawn().await;
    follower.follow(REPO, vec![mirror.ticket().await]).await;
    eventually(30, "the follower to replicate the mirror", || async {
        follower.materialized(REPO).await.as_deref() == Some(&*manifest)
    })
    .await;
    assert_eq!(fingerprint(&follower.repo_path(REPO)), fingerprint(&bare));

    // The upstream force-pushes main, deletes a branch, adds a tag and
    // points its HEAD elsewhere: within the poll interval both knots hold
    // exactly that.
    git(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    common::add_commit(&work, "rewritten");
    git(&work, &["branch", "-D", "doomed"]);
    git(&work, &["tag", "v2"]);
    push_mirror(&work, &bare);
    git(&bare, &["symbolic-ref", "HEAD", "refs/heads/topic"]);
    let wanted = fingerprint(&bare);
    eventually(30, "the mirror to publish the rewrite", || async {
        mirror
            .mirror_row(REPO)
            .await
            .manifest
            .is_some_and(|m| m != manifest)
            && fingerprint(&mirror.repo_path(REPO)) == wanted
    })
    .await;
    let row = mirror.mirror_row(REPO).await;
    let rewritten = row.manifest.clone().unwrap();
    // The mirror's history says the upstream deleted one branch and
    // rewrote another (the new tag and the untouched branch are not named).
    let named: std::collections::BTreeSet<&str> = row
        .rewrites
        .iter()
        .flat_map(|r| r.refs.iter().map(String::as_str))
        .collect();
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["refs/heads/doomed", "refs/heads/main"],
        "{:?}",
        row.rewrites
    );
    eventually(30, "the follower to take the rewrite", || async {
        follower.materialized(REPO).await.as_deref() == Some(&*rewritten)
    })
    .await;
    assert_eq!(linked_packs(&mirror), 2, "the update's pack too");
    let url = format!("http://{}/metrics", mirror.node.metrics_addr().unwrap());
    let metrics = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("knotd_mirrors{state=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("knotd_mirror_fetches_total{result=\"published\"}"),
        "{metrics}"
    );
    git(&follower.repo_path(REPO), &["fsck", "--no-dangling"]);
    for node in [&mirror, &follower] {
        let refs = git(
            &node.repo_path(REPO),
            &["for-each-ref", "--format=%(refname)"],
        );
        assert!(!refs.contains("refs/heads/doomed"), "{refs}");
        assert!(refs.contains("refs/tags/v2"), "{refs}");
        assert_eq!(fingerprint(&node.repo_path(REPO)), fingerprint(&bare));
        assert_eq!(
            git(&node.repo_path(REPO), &["symbolic-ref", "HEAD"]).trim(),
            "refs/heads/topic"
        );
    }

    // The upstream goes away: the mirror says so, and both knots still
    // serve the repository to plain git.
    drop(daemon);
    let view = client.mirror_sync(&rid(REPO)).await.unwrap();
    let error = view.error.expect("the fetch failed");
    assert_eq!(error.class, "unreachable", "{error:?}");
    assert_eq!(view.manifest.as_deref(), Some(&*rewritten));
    for node in [&mirror, &follower] {
        let clone = tmp
            .path()
            .join(format!("clone-{}", node.node.id().fmt_short()));
        git(
            tmp.path(),
            &[
                "clone",
                "-q",
                node.repo_path(REPO).to_str().unwrap(),
                clone.to_str().unwrap(),
            ],
        );
        assert_eq!(
            git(&clone, &["rev-parse", "HEAD"]),
            git(&work, &["rev-parse", "topic"])
        );
    }

    // A mirror is not removed or pushed to as an ordinary repository.
    let refused = client.remove_repo(&rid(REPO)).await.unwrap_err();
    assert!(refused.to_string().contains("unmirror"), "{refused}");
    let pushed = mirror.try_publish(REPO, &work, true).await.unwrap_err();
    assert!(pushed.to_string().contains("is a mirror"), "{pushed}");

    // Unmirroring removes the mirror and the repository.
    client.unmirror(&rid(REPO)).await.unwrap();
    assert!(client.mirrors().await.unwrap().is_empty());
    eventually(30, "the repository to be removed", || async {
        mirror.summary(REPO).await.is_none()
    })
    .await;
    let mirrors_dir = mirror.data_dir.join("mirrors");
    assert_eq!(
        std::fs::read_dir(&mirrors_dir)
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "the mirror's own repository is deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unmirroring_during_a_fetch_stops_it_and_nothing_is_published_after() {
    let tmp = tempfile::tempdir().unwrap();
    upstream(tmp.path());
    let daemon = GitDaemon::spawn(&tmp.path().join("daemon")).unwrap();
    // In front of the daemon, a proxy that holds each connection 3 s before
    // passing it on: the fetch is running when the mirror is removed, and
    // would succeed soon after.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let daemon_port = daemon.port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = proxy.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", daemon_port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let (node, data) = mirror_node(1, 30).await;
    let client = node.client();
    let url = format!("git://127.0.0.1:{proxy_port}/project.git");
    client.mirror(&url, Some(&rid(REPO))).await.unwrap();
    eventually(10, "the first fetch to start", || async {
        node.mirror_row(REPO).await.fetching
    })
    .await;
    let started = std::time::Instant::now();
    client.unmirror(&rid(REPO)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "unmirror does not wait for the fetch"
    );
    assert!(client.mirrors().await.unwrap().is_empty());
    // Well past when the fetch would have ended: nothing was published,
    // tracked or left on disk.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(node.summary(REPO).await.is_none(), "nothing tracked");
    let left: Vec<_> = walk(&data.path().join("mirrors"));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_object_is_refused_only_when_the_operator_asks_for_checks() {
    let tmp = tempfile::tempdir().unwrap();
    upstream(tmp.path());
    let bare = tmp.path().join("daemon/project.git");
    // A commit whose time zone git's fsck refuses (badTimezone), on a branch.
    let tree = git(&bare, &["rev-parse", "main^{tree}"]);
    let commit = format!(
        "tree {}\nauthor A <a@example.org> 1 +99999\ncommitter A <a@example.org> 1 +0000\n\nodd\n",
        tree.trim()
    );
    let body = tmp.path().join("odd-commit");
    std::fs::write(&body, commit).unwrap();
    let id = git(
        &bare,
        &[
            "hash-object",
            "-t",
            "commit",
            "--literally",
            "-w",
            body.to_str().unwrap(),
        ],
    );
    git(&bare, &["update-ref", "refs/heads/odd", id.trim()]);
    let daemon = GitDaemon::spawn(&tmp.path().join("daemon")).unwrap();

    for check in [true, false] {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::local(data.path());
        config.mirror.check_objects = check;
        config.mirror.retry_secs = 3600;
        let node = TestNode::spawn_with(config).await;
        let client = node.client();
        client
            .mirror(&daemon.url("project.git"), Some(&rid(REPO)))
            .await
            .unwrap();
        let view = client.mirror_sync(&rid(REPO)).await.unwrap();
        if check {
            let error = view.error.expect("the checked fetch fails");
            assert_eq!(error.class, "invalid-data", "{error:?}");
            assert!(node.summary(REPO).await.is_none());
        } else {
            assert!(view.error.is_none(), "{view:?}");
            assert_eq!(
                fingerprint(&node.repo_path(REPO)),
                fingerprint(&bare),
                "git clone takes it, and so does an unchecked mirror"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_survive_a_restart_and_publish_nothing_new_for_an_unchanged_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    upstream(tmp.path());
    let daemon = GitDaemon::spawn(&tmp.path().join("daemon")).unwrap();
    let (mirror, data) = mirror_node(3600, 10).await;
    let first = mirror
        .client()
        .mirror(&daemon.url("project.git"), Some(&rid(REPO)))
        .await
        .unwrap();
    assert_eq!(first.repo_id, REPO);
    let view = mirror.client().mirror_sync(&rid(REPO)).await.unwrap();
    let manifest = view.manifest.unwrap();
    let seq = mirror.summary(REPO).await.unwrap().seq;

    // Mirroring the same source again changes nothing; another source for
    // the same id is refused.
    mirror
        .client()
        .mirror(&daemon.url("project.git"), Some(&rid(REPO)))
        .await
        .unwrap();
    let other = mirror
        .client()
        .mirror(&daemon.url("other.git"), Some(&rid(REPO)))
        .await
        .unwrap_err();
    assert!(other.to_string().contains("unmirror it first"), "{other}");

    let mut config = Config::local(data.path());
    config.mirror.poll_interval_secs = 3600;
    let mirror = mirror.restart_with(config).await;
    let after = mirror.mirror_row(REPO).await;
    assert_eq!(after.source, daemon.url("project.git"));
    let view = mirror.client().mirror_sync(&rid(REPO)).await.unwrap();
    assert_eq!(view.manifest.as_deref(), Some(&*manifest));
    assert_eq!(
        mirror.summary(REPO).await.unwrap().seq,
        seq,
        "an unchanged upstream publishes no new state"
    );
    drop(data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_repository_a_silent_upstream_and_an_oversized_pack_fail_in_their_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("daemon/big.git");
    make_big_repo(&tmp.path().join("bigwork"), 2, b"mirror limit");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            tmp.path().join("bigwork").to_str().unwrap(),
            big.to_str().unwrap(),
        ],
    );
    let daemon = GitDaemon::spawn(&tmp.path().join("daemon")).unwrap();

    // A port that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });

    let data = tempfile::tempdir().unwrap();
    let mut config = Config::local(data.path());
    config.mirror.idle_timeout_secs = 2;
    config.mirror.retry_secs = 3600;
    config.max_repo_bytes = Some(256 * 1024);
    config.metrics.bind = Some("127.0.0.1:0".parse().unwrap());
    let node = TestNode::spawn_with(config).await;
    let client = node.client();

    let cases = [
        (
            daemon.url("nothing-here.git"),
            "did:web:x.example/missing",
            "not-found",
        ),
        (
            format!("git://127.0.0.1:{silent_port}/x.git"),
            "did:web:x.example/silent",
            "timed-out",
        ),
        (daemon.url("big.git"), "did:web:x.example/big", "too-large"),
    ];
    for (url, repo, class) in &cases {
        client.mirror(url, Some(&rid(repo))).await.unwrap();
        let started = std::time::Instant::now();
        let view = client.mirror_sync(&rid(repo)).await.unwrap();
        let error = view
            .error
            .unwrap_or_else(|| panic!("{repo}: the fetch should fail"));
        assert_eq!(&error.class, class, "{repo}: {error:?}");
        assert!(view.manifest.is_none());
        assert!(view.failures >= 1);
        assert!(
            view.next_fetch_secs > 3000,
            "{repo}: backs off ({})",
            view.next_fetch_secs
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{repo}: ended within its limits"
        );
        assert!(
            node.summary(repo).await.is_none(),
            "{repo}: nothing tracked"
        );
    }
    // The metrics count each failure by its class.
    let url = format!("http://{}/metrics", node.node.metrics_addr().unwrap());
    let metrics = reqwest::get(url).await.unwrap().text().await.unwrap();
    for (_, _, class) in &cases {
        let series = format!("knotd_mirror_fetches_total{{result=\"{class}\"}} ");
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(count.is_some_and(|n| n >= 1), "{series} in:\n{metrics}");
    }
    assert!(
        metrics.contains("knotd_mirrors{state=\"failing\"} 3"),
        "{metrics}"
    );
    // A first fetch that fails leaves nothing behind: no partial clone,
    // nothing of the refused pack.
    let leftovers = walk(&data.path().join("mirrors"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_asks_to_slow_down_is_left_alone_as_long_as_it_asked() {
    use axum::{Router, http::StatusCode, routing::get};
    let app = Router::new().fallback(get(|| async {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1800")],
            "slow down",
        )
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (node, _data) = mirror_node(60, 10).await;
    let client = node.client();
    let url = format!("http://127.0.0.1:{port}/did:plc:abc123/website");
    // A Tangled knot's URL names the repository id itself.
    let added = client.mirror(&url, None).await.unwrap();
    assert_eq!(added.repo_id, "did:plc:abc123/website");
    let view = client
        .mirror_sync(&rid("did:plc:abc123/website"))
        .await
        .unwrap();
    let error = view.error.expect("429 is a failure");
    assert_eq!(
        (error.class.as_str(), error.status),
        ("http-status", Some(429))
    );
    assert!(
        (1700..=1800).contains(&view.next_fetch_secs),
        "waits as long as the upstream asked, not the 1 s retry: {}",
        view.next_fetch_secs
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sources_a_mirror_cannot_or_may_not_fetch_are_refused_with_what_to_do() {
    let node = TestNode::spawn().await;
    let client = node.client();
    let repo = rid("did:web:x.example/y");
    for (source, says) in [
        ("ext::sh -c id", "not a git URL"),
        ("ssh://git@example.com/x.git", "not a git URL"),
        ("/etc", "mirror.allow_local"),
        ("file:///etc", "mirror.allow_local"),
        ("https://user:secret@example.com/x.git", "credentials"),
        (
            "at://did:plc:abc/app.bsky.feed.post/3kabc",
            "git URL of the repository",
        ),
    ] {
        let err = client.mirror(source, Some(&repo)).await.unwrap_err();
        assert!(err.to_string().contains(says), "{source}: {err}");
    }
    assert!(client.mirrors().await.unwrap().is_empty());

    // A repository tracked already is not turned into a mirror.
    node.follow("did:web:x.example/tracked", vec![]).await;
    let err = client
        .mirror(
            "https://example.com/x.git",
            Some(&rid("did:web:x.example/tracked")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tracked already"), "{err}");
}

/// How many packs of the node's materialized repository are the very
/// files the mirror's fetch wrote (hard links, one inode).
fn linked_packs(node: &TestNode) -> usize {
    use std::os::unix::fs::MetadataExt;
    let inodes = |dir: &Path| -> Vec<u64> {
        walk(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect()
    };
    let fetched = inodes(&node.data_dir.join("mirrors"));
    inodes(&node.repo_path(REPO).join("objects/pack"))
        .iter()
        .filter(|ino| fetched.contains(ino))
        .count()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
