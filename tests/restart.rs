//! A seeder that restarts with the same key and port is fetched from again
//! at once.
//!
//! iroh draws a new QUIC stateless-reset key at every start, so a restarted
//! peer cannot tell the other side that a connection to its previous run is
//! gone: that connection looks alive until the QUIC idle timeout (30 s), and
//! a blob download waiting on it stalls that long. knotd's downloads notice
//! that nothing arrives, check that the provider answers on a fresh
//! connection, and start over on it.

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{add_commit, daemon::Daemon, make_big_repo, make_repo};

/// Poll `check` every 20 ms until it holds or `secs` pass; returns the time taken.
fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Bytes under `dir`, recursively: the blob store's files grow as a
/// download proceeds.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn a_seeder_killed_mid_transfer_is_fetched_from_again_at_once() {
    const REPO: &str = "did:plc:restart1/big";
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_big_repo(&src, 32, b"restart test");
    let seeder_dir = work.path().join("seeder");
    let seeder_port = common::daemon::free_udp_port();
    let mut seeder = Daemon::start_on(&seeder_dir, seeder_port);
    let follower = Daemon::start_on(&work.path().join("follower"), 0);
    let follower_blobs = work.path().join("follower/blobs");

    seeder.admin_ok(&["publish", REPO, src.to_str().unwrap()]);
    let manifest = seeder.materialized(REPO).unwrap();
    let before = disk_bytes(&follower_blobs);
    follower.admin_ok(&["add-repo", REPO, "--peer", &seeder.ticket()]);
    wait_for("the transfer to start", 60, || {
        disk_bytes(&follower_blobs) > before + 2 * 1024 * 1024
    });

    // Freeze the seeder in the middle of the transfer, then kill it and
    // start it again on the same key and port.
    let stopped = Command::new("kill")
        .args(["-STOP", &seeder.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert_eq!(
        follower.materialized(REPO),
        None,
        "the transfer finished before the seeder stopped; make the repository bigger"
    );
    seeder.signal("KILL");
    let stalled_at = disk_bytes(&follower_blobs);
    seeder = Daemon::start_on(&seeder_dir, seeder_port);
    let resumed = wait_for("the follower's fetch to resume", 120, || {
        disk_bytes(&follower_blobs) > stalled_at
    });
    wait_for("the follower to finish", 120, || {
        follower.materialized(REPO).as_deref() == Some(manifest.as_str())
    });
    eprintln!("the fetch resumed {resumed:?} after the seeder restarted");
    // Without the stall check the download waits out the QUIC idle timeout
    // (30 s) before a retry dials the new process.
    assert!(
        resumed < Duration::from_secs(10),
        "the fetch resumed only {resumed:?} after the restart"
    );
    drop(seeder);
}

#[test]
fn a_restarted_seeder_is_fetched_from_at_once() {
    const REPO: &str = "did:plc:restart1/seeded";
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let src_str = src.to_str().unwrap().to_string();
    let seeder_dir = work.path().join("seeder");
    let seeder_port = common::daemon::free_udp_port();
    let mut seeder = Daemon::start_on(&seeder_dir, seeder_port);
    let follower = Daemon::start_on(&work.path().join("follower"), 0);

    seeder.admin_ok(&["publish", REPO, &src_str]);
    follower.admin_ok(&["add-repo", REPO, "--peer", &seeder.ticket()]);
    let manifest = seeder.materialized(REPO).unwrap();
    wait_for("the first replication", 60, || {
        follower.materialized(REPO).as_deref() == Some(manifest.as_str())
    });

    for (round, signal) in ["TERM", "KILL", "TERM", "KILL"].into_iter().enumerate() {
        seeder.signal(signal);
        seeder = Daemon::start_on(&seeder_dir, seeder_port);
        add_commit(&src, &format!("round{round}"));
        seeder.admin_ok(&["publish", REPO, &src_str]);
        let manifest = seeder.materialized(REPO).unwrap();
        let took = wait_for(&format!("round {round} after {signal}"), 60, || {
            follower.materialized(REPO).as_deref() == Some(manifest.as_str())
        });
        eprintln!("round {round} after {signal}: the follower has the new state after {took:?}");
        assert!(
            took < Duration::from_secs(10),
            "round {round}: the follower took {took:?}"
        );
    }
}
