//! The built `knotd` binary, as an operator runs it.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
};

use common::daemon::{Daemon, knotd};

fn admin(socket: &Path, args: &[&str]) -> Output {
    Command::new(knotd())
        .arg("admin")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("knotd admin runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn add_repo_restart_and_still_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let out = admin(&daemon.socket, &["add-repo", "did:plc:abc123/website"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("added did:plc:abc123/website"));

    let out = admin(&daemon.socket, &["add-repo", "did:plc:abc123/../../etc"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("<did>/<name>") || stderr(&out).contains("name"),
        "{}",
        stderr(&out)
    );

    let status = daemon.signal("TERM");
    assert!(status.success(), "SIGTERM must exit cleanly, got {status}");
    assert!(
        !daemon.socket.exists(),
        "SIGTERM must remove the admin socket"
    );

    let mut daemon = Daemon::start(dir.path());
    let out = admin(&daemon.socket, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let repos: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = repos
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repo_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["did:plc:abc123/website"]);
    let out = admin(&daemon.socket, &["list"]);
    assert!(stdout(&out).contains("did:plc:abc123/website"));

    let status = daemon.signal("INT");
    assert!(status.success(), "SIGINT must exit cleanly, got {status}");
    assert!(!daemon.socket.exists());
}

#[test]
fn ticket_and_status_print() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let out = Command::new(knotd())
        .args(["ticket", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).trim().starts_with("endpoint"),
        "{}",
        stdout(&out)
    );
    let out = admin(&daemon.socket, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["repo_count"], 0);
    assert_eq!(status["node_id"].as_str().unwrap().len(), 64);
    let out = admin(&daemon.socket, &["status"]);
    assert!(
        stdout(&out).contains("topics:    0 joined, 0 quiet"),
        "{}",
        stdout(&out)
    );
    daemon.signal("TERM");
}

#[test]
fn second_daemon_on_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let out = Command::new(knotd())
        .args([
            "run",
            "--bind",
            "127.0.0.1:0",
            "--relay",
            "disabled",
            "--no-discovery",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another knotd"), "{}", stderr(&out));
    assert!(
        daemon.socket.exists(),
        "the running daemon keeps its socket"
    );
    daemon.signal("TERM");
}

#[test]
fn no_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = admin(&dir.path().join("knotd.sock"), &["list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("knotd run"), "{}", stderr(&out));
}

#[test]
fn bad_config_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("knotd.toml");
    std::fs::write(&config, "relay = \"sometimes\"\n").unwrap();
    let out = Command::new(knotd())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("relay"), "{}", stderr(&out));
}

/// `knotd admin watch --json` as a child process; its lines so far.
struct Watcher {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Watcher {
    fn start(socket: &Path) -> Watcher {
        use std::io::BufRead;
        let mut child = Command::new(knotd())
            .args(["admin", "--socket"])
            .arg(socket)
            .args(["watch", "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("knotd admin watch runs");
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Watcher { child, lines }
    }

    /// The kinds of the events seen so far; every line must be JSON.
    fn kinds(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"));
                assert!(v["at_ms"].is_u64(), "{l}");
                v["kind"].as_str().unwrap().to_string()
            })
            .collect()
    }

    fn wait_for(&self, kind: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.kinds().iter().any(|k| k == kind) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {kind} event; saw {:?}",
                self.kinds()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_streams_json_events_of_a_publish_and_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let author = Daemon::start(&dir.path().join("author"));
    let follower = Daemon::start(&dir.path().join("follower"));
    let on_author = Watcher::start(&author.socket);
    let on_follower = Watcher::start(&follower.socket);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let src = dir.path().join("src");
    common::make_repo(&src);
    let repo = "did:plc:watched/site";
    let out = admin(&author.socket, &["publish", repo, src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = admin(
        &follower.socket,
        &["add-repo", repo, "--peer", &author.ticket()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    on_author.wait_for("published");
    on_follower.wait_for("fetch-started");
    on_follower.wait_for("fetch-finished");
    let kinds = on_follower.kinds();
    assert!(kinds.iter().any(|k| k == "adopted"), "{kinds:?}");
}

#[test]
fn sync_waits_for_replicas_and_names_who_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let author = Daemon::start(&dir.path().join("author"));
    let seeder = Daemon::start(&dir.path().join("seeder"));
    let src = dir.path().join("src");
    common::make_repo(&src);
    let repo = "did:plc:replicated/site";
    let out = admin(&author.socket, &["publish", repo, src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = admin(
        &seeder.socket,
        &["add-repo", repo, "--peer", &author.ticket()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = admin(
        &author.socket,
        &["sync", repo, "--replicas", "1", "--timeout", "30"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 peers hold"), "{}", stdout(&out));
    // It names the peer it counted and why: the seeder proved it holds the bytes.
    assert!(stdout(&out).contains(" (proved)"), "{}", stdout(&out));
    let out = admin(
        &author.socket,
        &["sync", repo, "--replicas", "2", "--timeout", "2"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only 1 of 2"), "{}", stderr(&out));
}

#[test]
fn verify_prints_one_line_per_repository() {
    let dir = tempfile::tempdir().unwrap();
    let node = Daemon::start(&dir.path().join("node"));
    let src = dir.path().join("src");
    common::make_repo(&src);
    let repo = "did:plc:checked/site";
    let out = admin(&node.socket, &["publish", repo, src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = admin(&node.socket, &["add-repo", "did:plc:checked/empty"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = admin(&node.socket, &["verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("did:plc:checked/site: ok"), "{text}");
    assert!(
        text.contains("did:plc:checked/empty: nothing held"),
        "{text}"
    );

    let out = admin(&node.socket, &["verify", repo, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["repos"][0]["repo_id"], repo);
    assert_eq!(report["repos"][0]["rebuilt"], 0);

    let out = admin(&node.socket, &["verify", "did:plc:checked/unknown"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not tracked"), "{}", stderr(&out));
}

#[test]
fn mirror_commands_print_their_rows_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = Daemon::start(&dir.path().join("node"));
    let out = admin(&node.socket, &["mirrors"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "no mirrors");

    let out = admin(&node.socket, &["mirror", "git://127.0.0.1:1/x.git"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--repo-id"), "{}", stderr(&out));

    // Port 1 on loopback refuses connections: the fetch fails, classified.
    let repo = "did:web:example.org/x";
    let out = admin(
        &node.socket,
        &["mirror", "git://127.0.0.1:1/x.git", "--repo-id", repo],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("did:web:example.org/x  <-  git://127.0.0.1:1/x.git"));
    let out = admin(&node.socket, &["mirror-sync", repo]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("failing") && text.contains("unreachable"),
        "{text}"
    );

    let out = admin(&node.socket, &["mirrors", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows["mirrors"][0]["error"]["class"], "unreachable");

    let out = admin(&node.socket, &["unmirror", repo]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = admin(&node.socket, &["unmirror", repo]);
    assert!(stderr(&out).contains("not mirrored"), "{}", stderr(&out));
}
