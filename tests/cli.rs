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
