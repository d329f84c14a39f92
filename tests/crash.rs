//! kill -9 at random points during publish, fetch and materialize: after every
//! restart the stores open, materialized repositories pass `git fsck`, and the
//! sync resumes to the correct final state.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{add_commit, daemon::Daemon, git, make_repo};
use rand::{Rng, SeedableRng, rngs::StdRng};

const REPO: &str = "did:plc:author1/crashy";

fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fsck(git_dir: &std::path::Path) {
    git(git_dir, &["fsck", "--full", "--no-progress"]);
}

#[test]
fn kill_nine_loop_loses_nothing() {
    let seed: u64 = std::env::var("KNOTD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b6e6f74);
    let mut rng = StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_repo(&src);
    let author_dir = work.path().join("author");
    let follower_dir = work.path().join("follower");
    // Fixed ports: each node keeps its address across restarts.
    let author_port = common::daemon::free_udp_port();
    let follower_port = common::daemon::free_udp_port();
    let mut author = Daemon::start_on(&author_dir, author_port);
    let mut follower = Daemon::start_on(&follower_dir, follower_port);
    let src_str = src.to_str().unwrap().to_string();
    author.admin_ok(&["publish", REPO, &src_str]);
    let ticket = author.ticket();
    follower.admin_ok(&["add-repo", REPO, "--peer", &ticket]);

    let repo_path = |dir: &std::path::Path| dir.join("repos/did:plc:author1/crashy.git");
    let mut kills = 0;
    for round in 0..20 {
        add_commit(&src, &format!("round{round}"));
        if round % 2 == 0 {
            // Kill the author in the middle of a publish.
            let publish = Command::new(common::daemon::knotd())
                .args(["admin", "--socket"])
                .arg(&author.socket)
                .args(["publish", REPO, &src_str])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.random_range(0..120)));
            author.signal("KILL");
            kills += 1;
            let mut publish = publish;
            let _ = publish.wait();
            author = Daemon::start_on(&author_dir, author_port);
            if repo_path(&author_dir).exists() {
                fsck(&repo_path(&author_dir));
            }
            // Publishing again completes the interrupted update.
            author.admin_ok(&["publish", REPO, &src_str]);
        } else {
            // Kill the follower while it fetches and materializes.
            author.admin_ok(&["publish", REPO, &src_str]);
            std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
            follower.signal("KILL");
            kills += 1;
            follower = Daemon::start_on(&follower_dir, follower_port);
        }
        let manifest = author.materialized(REPO).expect("author holds a state");
        wait_for(&format!("round {round}: follower converges"), 150, || {
            follower.materialized(REPO).as_deref() == Some(manifest.as_str())
        });
        fsck(&repo_path(&follower_dir));
        fsck(&repo_path(&author_dir));
        assert_eq!(
            git(&repo_path(&follower_dir), &["rev-parse", "HEAD"]),
            git(&src, &["rev-parse", "HEAD"]),
            "round {round}"
        );
    }
    assert_eq!(kills, 20);
    // Both stores reopen cleanly once more after a final kill.
    author.signal("KILL");
    follower.signal("KILL");
    let author = Daemon::start_on(&author_dir, author_port);
    let follower = Daemon::start_on(&follower_dir, follower_port);
    let manifest = author.materialized(REPO).unwrap();
    wait_for("final state after restart", 150, || {
        follower.materialized(REPO).as_deref() == Some(manifest.as_str())
    });
    fsck(&repo_path(&follower_dir));
}
