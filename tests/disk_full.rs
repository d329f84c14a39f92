//! A follower whose disk fills up during a fetch reports a clear error, treats
//! nothing half-written as complete, and finishes the sync once space is freed.
//! Needs permission to mount a tmpfs (root); fails without it unless
//! `KNOTD_SKIP_ROOT_TESTS=1` says to skip.

mod common;

use std::{path::PathBuf, process::Command};

use common::{TestNode, eventually, git};
use knotd::config::Config;

const REPO: &str = "did:plc:author1/big";

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_fetch_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(work.path().join("small-disk"), "6m") else {
        common::missing_precondition(
            "cannot mount a tmpfs here (needs root)",
            "KNOTD_SKIP_ROOT_TESTS",
        );
        return;
    };

    // An 8 MiB incompressible file: its pack cannot fit on the 6 MiB disk.
    let src = work.path().join("src");
    common::make_big_repo(&src, 8, b"disk full");

    let author = TestNode::spawn().await;
    let published = author.publish(REPO, &src).await;
    assert!(published.bytes_added > 8_000_000);

    let follower = TestNode::spawn_with(Config::local(disk.0.join("data"))).await;
    follower.follow(REPO, vec![author.ticket().await]).await;
    eventually(60, "the fetch fails with a clear error", || async {
        follower
            .summary(REPO)
            .await
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("free space"))
    })
    .await;
    let summary = follower.summary(REPO).await.unwrap();
    println!("error reported: {:?}", summary.last_error);
    assert_eq!(summary.materialized, None, "nothing half-written is used");
    assert!(!follower.repo_path(REPO).exists());
    // The node still answers.
    assert!(follower.admin(knotd::admin::Command::Status).await.is_ok());

    // Space comes back: the retry completes the sync.
    disk.resize("64m");
    eventually(90, "the sync completes after space is freed", || async {
        follower.materialized(REPO).await.as_deref() == Some(published.manifest.as_str())
    })
    .await;
    git(
        &follower.repo_path(REPO),
        &["fsck", "--full", "--no-progress"],
    );
    follower.stop().await;
    author.stop().await;
}

/// A node whose database cannot commit (its disk is full) says so to the
/// caller and in `status`, keeps the change in memory, and writes it once
/// space is freed: after a restart the change is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_database_commit_is_reported_and_written_again() {
    let work = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(work.path().join("small-disk"), "64m") else {
        common::missing_precondition(
            "cannot mount a tmpfs here (needs root)",
            "KNOTD_SKIP_ROOT_TESTS",
        );
        return;
    };
    let data = disk.0.join("data");
    let node = TestNode::spawn_with(Config::local(data.clone())).await;
    let first = "did:plc:owner1/first";
    node.admin(knotd::admin::Command::AddRepo {
        repo_id: common::rid(first),
        pds: None,
        record: None,
        peers: vec![],
    })
    .await
    .unwrap();
    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", filler.display()))
        .status();
    let second = "did:plc:owner1/second";
    let mut refused = None;
    for i in 0..50 {
        let id = format!("{second}{i}");
        match node
            .admin(knotd::admin::Command::AddRepo {
                repo_id: common::rid(&id),
                pds: None,
                record: None,
                peers: vec![],
            })
            .await
        {
            Ok(_) => continue,
            Err(e) => {
                refused = Some((id, e.to_string()));
                break;
            }
        }
    }
    let Some((refused_id, error)) = refused else {
        panic!("no commit failed with the disk full");
    };
    assert!(error.contains("could not record"), "{error}");
    let status = node.admin(knotd::admin::Command::Status).await.unwrap();
    let knotd::admin::Payload::Status(status) = status else {
        panic!("{status:?}")
    };
    assert!(status.gossip.store_failures >= 1);
    let summary = node.summary(&refused_id).await.expect("kept in memory");
    assert!(
        summary
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("could not record")),
        "{summary:?}"
    );
    // Space comes back: the change is written again.
    std::fs::remove_file(&filler).unwrap();
    eventually(60, "the change is written again", || async {
        node.summary(&refused_id)
            .await
            .is_some_and(|s| s.last_error.is_none())
    })
    .await;
    let node = node.restart().await;
    assert!(
        node.summary(&refused_id).await.is_some(),
        "on disk after a restart"
    );
    assert!(node.summary(first).await.is_some());
    node.stop().await;
}
