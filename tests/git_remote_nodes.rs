//! The `git-remote-knot` helper and the read-only smart HTTP service with
//! real nodes, driven by the real `git` client:
//!
//! * the full path runs two real `knotd` processes on loopback;
//! * smart HTTP runs `knotd::http::serve` in process over a plain bare
//!   repo, served as a node holding it serves it.

#[allow(dead_code)]
#[path = "common/daemon.rs"]
mod common_daemon;
mod git_client;

use common_daemon::{Daemon, Network};

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use knotd::repo_id::RepoId;
use tokio_util::sync::CancellationToken;

use git_client::*;

/// Run `f` until it returns `Some`, for at most `secs` seconds.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn two_nodes_push_clone_fetch_reject_force() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"));
    let b = Daemon::start(&tmp.path().join("b"));
    let id = "did:plc:knottest123/website";
    let url = format!("knot://{id}");
    let git_a = GitEnv::new().with_socket(&a.socket);
    let git_b = GitEnv::new().with_socket(&b.socket);

    let work = tmp.path().join("work");
    git_a.work_repo(&work);
    let out = git_a.run(&work, &["push", &url, "main"]);
    assert!(out.status.success(), "push to A: {}", stderr(&out));
    let first = git_a.ok(&work, &["rev-parse", "HEAD"]);

    let out = b.admin(&["add-repo", id, "--peer", &a.ticket()]);
    assert!(out.status.success(), "add-repo on B: {}", stderr(&out));

    let clone = tmp.path().join("clone");
    let out = git_b.run(tmp.path(), &["clone", &url, clone.to_str().unwrap()]);
    assert!(out.status.success(), "clone from B: {}", stderr(&out));
    assert_eq!(git_b.ok(&clone, &["rev-parse", "HEAD"]), first);
    assert_eq!(git_b.tree(&clone, "HEAD"), git_a.tree(&work, "HEAD"));

    // An update pushed to A reaches B's clone.
    let second = git_a.commit_file(&work, "README.md", "second\n", "second");
    let out = git_a.run(&work, &["push", &url, "main"]);
    assert!(out.status.success(), "second push to A: {}", stderr(&out));
    eventually(60, "the update to reach B", || {
        let out = git_b.run(&clone, &["fetch", "-q", "origin"]);
        if !out.status.success() {
            return None;
        }
        (git_b.ok(&clone, &["rev-parse", "origin/main"]) == second).then_some(())
    });
    git_b.ok(&clone, &["merge", "-q", "--ff-only", "origin/main"]);
    assert_eq!(
        std::fs::read_to_string(clone.join("README.md")).unwrap(),
        "second\n"
    );

    // A divergent push to A is refused, a forced one goes through.
    git_a.ok(&work, &["reset", "-q", "--hard", "HEAD~1"]);
    let diverged = git_a.commit_file(&work, "other.txt", "other\n", "diverged");
    let out = git_a.run(&work, &["push", &url, "main"]);
    assert!(!out.status.success(), "non-fast-forward push must fail");
    let err = stderr(&out);
    assert!(err.contains("[rejected]"), "{err}");
    assert!(err.contains("non-fast-forward"), "{err}");
    let out = git_a.run(&work, &["push", "--force", &url, "main"]);
    assert!(out.status.success(), "force push: {}", stderr(&out));
    let remote = git_a.ok(&work, &["ls-remote", &url, "refs/heads/main"]);
    assert!(remote.starts_with(&diverged), "{remote}");
}

/// Home-server replication: an author publishes, a seeder follows it, the
/// author goes away, and a home server given only the seeder's ticket
/// replicates (the seeder vouches for the author's state) and serves
/// `git clone knot://`. Three separate `knotd` processes.
#[test]
fn a_home_server_replicates_through_a_seeder_with_the_author_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut author = Daemon::start(&tmp.path().join("author"));
    let seeder = Daemon::start(&tmp.path().join("seeder"));
    let home = Daemon::start(&tmp.path().join("home"));
    let id = "did:plc:knottest123/homeserver";
    let url = format!("knot://{id}");
    let git_author = GitEnv::new().with_socket(&author.socket);
    let git_home = GitEnv::new().with_socket(&home.socket);

    let work = tmp.path().join("work");
    git_author.work_repo(&work);
    let out = git_author.run(&work, &["push", &url, "main"]);
    assert!(out.status.success(), "push to the author: {}", stderr(&out));
    let head = git_author.ok(&work, &["rev-parse", "HEAD"]);
    let published = author.materialized(id).expect("the author holds it");

    let out = seeder.admin(&["add-repo", id, "--peer", &author.ticket()]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(60, "the seeder to replicate", || {
        (seeder.materialized(id).as_deref() == Some(published.as_str())).then_some(())
    });
    assert!(author.signal("TERM").success());

    let out = home.admin(&["add-repo", id, "--peer", &seeder.ticket()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let clone = tmp.path().join("clone");
    let out = git_home.run(tmp.path(), &["clone", &url, clone.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "clone from the home server: {}",
        stderr(&out)
    );
    assert_eq!(git_home.ok(&clone, &["rev-parse", "HEAD"]), head);
    assert_eq!(home.materialized(id).as_deref(), Some(published.as_str()));
}

/// `git config knot.replicas N` makes a push wait until N other peers hold
/// the state, and fail (saying who is missing) when they do not in time.
#[test]
fn a_push_waits_for_the_replicas_git_config_asks_for() {
    let tmp = tempfile::tempdir().unwrap();
    let author = Daemon::start(&tmp.path().join("author"));
    let seeder = Daemon::start(&tmp.path().join("seeder"));
    let id = "did:plc:knottest123/replicated";
    let url = format!("knot://{id}");
    let git = GitEnv::new().with_socket(&author.socket);
    let work = tmp.path().join("work");
    git.work_repo(&work);
    let out = git.run(&work, &["push", &url, "main"]);
    assert!(out.status.success(), "first push: {}", stderr(&out));
    let out = seeder.admin(&["add-repo", id, "--peer", &author.ticket()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = author.materialized(id).unwrap();
    eventually(60, "the seeder to replicate", || {
        (seeder.materialized(id).as_deref() == Some(first.as_str())).then_some(())
    });

    git.ok(&work, &["config", "knot.replicas", "1"]);
    git.commit_file(&work, "a.txt", "a\n", "second");
    let out = git.run(&work, &["push", &url, "main"]);
    assert!(
        out.status.success(),
        "push waiting for 1 replica: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("1 peers hold it: ") && stderr(&out).contains(" (proved)"),
        "names the peer counted: {}",
        stderr(&out)
    );
    assert_eq!(seeder.materialized(id), author.materialized(id));

    git.ok(&work, &["config", "knot.replicas", "2"]);
    git.ok(&work, &["config", "knot.replicasTimeout", "2"]);
    git.commit_file(&work, "b.txt", "b\n", "third");
    let out = git.run(&work, &["push", &url, "main"]);
    assert!(!out.status.success(), "two replicas cannot be had");
    let err = stderr(&out);
    assert!(err.contains("only 1 of 2"), "{err}");
}

/// A home server that seeds only what its owner asked for refuses a clone
/// of anything else, and git shows why.
#[test]
fn a_clone_the_policy_refuses_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Daemon::start_with(
        &tmp.path().join("home"),
        &Network {
            extra_config: "[policy]\ndefault = \"deny\"\n".into(),
            ..Network::default()
        },
    );
    let git = GitEnv::new().with_socket(&home.socket);
    let clone = tmp.path().join("clone");
    let out = git.run(
        tmp.path(),
        &[
            "clone",
            "knot://did:plc:nobodyasked/thing",
            clone.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("does not seed"), "{err}");
    assert!(err.contains("policy allow"), "{err}");
    assert!(!clone.join(".git").exists());
}

// ---------------------------------------------------------------------------
// Smart HTTP
// ---------------------------------------------------------------------------

struct HttpServer {
    addr: std::net::SocketAddr,
    runtime: tokio::runtime::Runtime,
    cancel: CancellationToken,
}

impl HttpServer {
    /// Serve `repos`, materialized under `root`, as a node holding them does.
    fn start(root: &Path, repos: &[&str]) -> HttpServer {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cancel = CancellationToken::new();
        let served = knotd::served::ServedRepos::new(root.to_path_buf());
        for repo in repos {
            let id = RepoId::parse(repo).unwrap();
            let state = knotd::core::ServedState {
                manifest: iroh_blobs::Hash::new(repo),
                head: None,
                path: id.relative_path(),
            };
            served.set(id, Some(state));
        }
        let (addr, _task) = runtime
            .block_on(knotd::http::start(
                "127.0.0.1:0".parse().unwrap(),
                served,
                cancel.clone(),
            ))
            .unwrap();
        HttpServer {
            addr,
            runtime,
            cancel,
        }
    }

    /// Send a raw request line (no normalization) and return the status code.
    fn raw_status(&self, target: &str) -> u16 {
        let mut s = TcpStream::connect(self.addr).unwrap();
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[test]
fn smart_http_clone_and_refusals() {
    let git = GitEnv::new();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    git.work_repo(&work);
    git.commit_file(&work, "more.txt", "more\n", "second");
    git.ok(&work, &["tag", "-a", "v1", "-m", "one"]);
    let tagged = git.ok(&work, &["rev-parse", "HEAD"]);
    let root = tmp.path().join("repos");
    let bare = root.join("did:plc:abc123/website.git");
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git.ok(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let server = HttpServer::start(&root, &["did:plc:abc123/website"]);
    let base = format!("http://{}", server.addr);

    for (i, (proto, suffix)) in [("2", ""), ("0", ".git"), ("1", "")].iter().enumerate() {
        let dest = tmp.path().join(format!("http-clone-{i}"));
        let out = git.run(
            tmp.path(),
            &[
                "-c",
                &format!("protocol.version={proto}"),
                "clone",
                &format!("{base}/did:plc:abc123/website{suffix}"),
                dest.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "http clone v{proto}: {}",
            stderr(&out)
        );
        assert_eq!(git.tree(&dest, "HEAD"), git.tree(&work, "HEAD"));
        assert_eq!(git.ok(&dest, &["rev-parse", "v1^{commit}"]), tagged);
        // Fetch after an update.
        if i == 0 {
            let new = git.commit_file(&work, "third.txt", "3\n", "third");
            git.ok(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
            git.ok(&dest, &["fetch", "-q", "origin"]);
            assert_eq!(git.ok(&dest, &["rev-parse", "origin/main"]), new);
        }
    }

    // Pushing over HTTP is refused.
    let dest = tmp.path().join("http-clone-0");
    git.commit_file(&dest, "nope.txt", "nope\n", "nope");
    let out = git.run(&dest, &["push", "origin", "HEAD:main"]);
    assert!(!out.status.success(), "push over HTTP must fail");

    // Bad paths and unknown repositories.
    let service = "info/refs?service=git-upload-pack";
    for (target, low, high) in [
        ("/../etc/passwd".to_string(), 400, 404),
        (format!("/did:plc:abc123/..%2F..%2Fetc/{service}"), 400, 404),
        (format!("/did:plc:abc123/../{service}"), 400, 404),
        (format!("/..%2Fdid:plc:abc123/website/{service}"), 400, 404),
        (format!("/did:plc:abc123/missing/{service}"), 404, 404),
        (format!("/did:plc:other/website/{service}"), 404, 404),
        ("/did:plc:abc123/website/info/refs".to_string(), 403, 403),
        (
            "/did:plc:abc123/website/info/refs?service=git-receive-pack".to_string(),
            403,
            403,
        ),
        ("/did:plc:abc123/website/HEAD".to_string(), 404, 404),
    ] {
        let status = server.raw_status(&target);
        assert!(
            (low..=high).contains(&status),
            "{target}: got {status}, want {low}..={high}"
        );
    }
    assert_eq!(
        server.raw_status(&format!("/did:plc:abc123/website/{service}")),
        200
    );

    // Plain and gzip request bodies give the same pack.
    let want = git.ok(&work, &["rev-parse", "HEAD"]);
    let request = format!("0032want {want}\n00000009done\n");
    assert_eq!(request.len(), 50 + 4 + 9);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(request.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let url = format!("{base}/did:plc:abc123/website/git-upload-pack");
    let (plain, gzipped, bomb) = server.runtime.block_on(async {
        let client = reqwest::Client::new();
        let post = |body: Vec<u8>, gzip: bool| {
            let mut r = client
                .post(&url)
                .header("Content-Type", "application/x-git-upload-pack-request")
                .body(body);
            if gzip {
                r = r.header("Content-Encoding", "gzip");
            }
            r.send()
        };
        let plain = post(request.clone().into_bytes(), false).await.unwrap();
        assert_eq!(plain.status(), 200);
        assert_eq!(
            plain.headers()["content-type"],
            "application/x-git-upload-pack-result"
        );
        assert!(
            plain.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("no-cache")
        );
        let plain = plain.bytes().await.unwrap();
        let gzipped = post(gz.clone(), true).await.unwrap();
        assert_eq!(gzipped.status(), 200);
        let gzipped = gzipped.bytes().await.unwrap();
        let bomb = post(b"definitely not gzip".to_vec(), true).await.unwrap();
        (plain, gzipped, bomb.status())
    });
    assert!(plain.starts_with(b"0008NAK\n"), "{:?}", &plain[..16]);
    assert!(plain.windows(4).any(|w| w == b"PACK"));
    assert_eq!(plain, gzipped);
    assert_eq!(bomb, 400);
}
