//! Shared helpers for multi-node tests: in-process nodes on loopback with relays
//! and discovery off, driven through their real admin sockets.
#![allow(dead_code)]

pub mod daemon;
pub mod provider;
pub mod stranger;

use std::path::{Path, PathBuf};

use knotd::{
    admin::{AdminError, Command, Payload},
    config::{Config, PackIndexerChoice},
    node::Node,
};
use tokio_util::sync::CancellationToken;

/// A node running in this process, with its own data dir.
pub struct TestNode {
    pub node: Node,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// Start a node in a fresh temporary data dir.
    pub async fn spawn() -> TestNode {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut node = Self::spawn_in(&dir).await;
        node._tmp = Some(tmp);
        node
    }

    /// Delete `tmp` (the node's data dir) when the node is dropped.
    pub fn keep(&mut self, tmp: tempfile::TempDir) {
        self._tmp = Some(tmp);
    }

    /// Start a node in `data_dir` (kept after the node stops).
    pub async fn spawn_in(data_dir: &Path) -> TestNode {
        Self::spawn_with(Config::local(data_dir)).await
    }

    /// Start a node with a given config. A new repository's first pack is
    /// indexed by the built `knotd index-pack` (gix-pack), as the installed
    /// node does, unless the config names an indexer.
    pub async fn spawn_with(mut config: Config) -> TestNode {
        if config.pack_indexer == PackIndexerChoice::Auto && config.indexer_program.is_none() {
            config.pack_indexer = PackIndexerChoice::Gix;
            config.indexer_program = Some(env!("CARGO_BIN_EXE_knotd").into());
        }
        let data_dir = config.data_dir.clone();
        let node = Node::spawn(config, CancellationToken::new())
            .await
            .expect("node starts");
        TestNode {
            node,
            data_dir,
            _tmp: None,
        }
    }

    /// Send a command through the admin socket.
    pub async fn admin(&self, command: Command) -> Result<Payload, AdminError> {
        self.client().call(&command).await
    }

    /// Stop the node gracefully and start it again on the same data dir.
    pub async fn restart(self) -> TestNode {
        let TestNode {
            node,
            data_dir,
            _tmp,
        } = self;
        node.shutdown().await.expect("clean shutdown");
        let mut fresh = Self::spawn_in(&data_dir).await;
        fresh._tmp = _tmp;
        fresh
    }

    /// Stop the node gracefully and start it again with `config` (whose
    /// data dir must be this node's).
    pub async fn restart_with(self, config: Config) -> TestNode {
        let TestNode { node, _tmp, .. } = self;
        node.shutdown().await.expect("clean shutdown");
        let mut fresh = Self::spawn_with(config).await;
        fresh._tmp = _tmp;
        fresh
    }

    /// Stop the node gracefully, keeping the data dir alive for inspection.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.node.shutdown().await.expect("clean shutdown");
        self._tmp
    }

    /// The repositories listed by the admin socket.
    pub async fn repo_ids(&self) -> Vec<String> {
        match self.admin(Command::List).await.expect("list") {
            Payload::Repos { repos } => repos.into_iter().map(|r| r.repo_id).collect(),
            other => panic!("unexpected payload {other:?}"),
        }
    }
}

/// A test's precondition is missing: fail, unless `skip_var=1` is set, in
/// which case say why and return (the caller then returns, skipping).
/// CI never sets the skip variables, so nothing passes there by skipping.
pub fn missing_precondition(what: &str, skip_var: &str) {
    assert!(
        std::env::var(skip_var).as_deref() == Ok("1"),
        "{what}; set {skip_var}=1 to skip this test on purpose"
    );
    eprintln!("skipping ({skip_var}=1): {what}");
}

/// Parse a repo id in tests.
pub fn rid(s: &str) -> knotd::repo_id::RepoId {
    knotd::repo_id::RepoId::parse(s).expect("valid repo id")
}

/// Run git in `dir` with a clean, isolated configuration; panic on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A working repository with a few commits, a tag and a binary file large
/// enough to span several BLAKE3 chunk groups.
pub fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README.md"), "hello knot\n").unwrap();
    let mut blob = vec![0u8; 64 * 1024];
    blake3::Hasher::new()
        .update(b"knotd test data")
        .finalize_xof()
        .fill(&mut blob);
    std::fs::write(dir.join("data.bin"), blob).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "first"]);
    git(dir, &["tag", "-a", "v1", "-m", "version 1"]);
    add_commit(dir, "second");
}

/// A repository with one commit holding `mib` MiB of incompressible bytes
/// derived from `seed`, so its pack is about that size.
pub fn make_big_repo(dir: &Path, mib: usize, seed: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    let mut big = vec![0u8; mib * 1024 * 1024];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut big);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    drop(big);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "big"]);
}

/// Add one commit that changes a file.
pub fn add_commit(dir: &Path, name: &str) {
    std::fs::write(dir.join(format!("{name}.txt")), format!("{name}\n")).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", name]);
}

/// `git ls-tree -r HEAD` plus `for-each-ref` of a repository: what must match
/// between a source and its replicas.
pub fn fingerprint(git_dir: &Path) -> String {
    let refs = git(
        git_dir,
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    );
    let tree = git(git_dir, &["ls-tree", "-r", "HEAD"]);
    format!("{refs}\n{tree}")
}

/// Poll `check` every 50 ms until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

impl TestNode {
    /// A ticket for this node.
    pub async fn ticket(&self) -> String {
        match self.admin(Command::Ticket).await.expect("ticket") {
            Payload::Ticket { ticket } => ticket,
            other => panic!("unexpected payload {other:?}"),
        }
    }

    /// The summary row of one repository, if tracked.
    pub async fn summary(&self, repo_id: &str) -> Option<knotd::admin::RepoSummary> {
        match self.admin(Command::List).await.expect("list") {
            Payload::Repos { repos } => repos.into_iter().find(|r| r.repo_id == repo_id),
            other => panic!("unexpected payload {other:?}"),
        }
    }

    /// The manifest this node has materialized for a repository.
    pub async fn materialized(&self, repo_id: &str) -> Option<String> {
        self.summary(repo_id).await.and_then(|s| s.materialized)
    }

    /// Track a repository with bootstrap peers.
    pub async fn follow(&self, repo_id: &str, peers: Vec<String>) {
        self.admin(Command::AddRepo {
            repo_id: rid(repo_id),
            pds: None,
            record: None,
            peers,
        })
        .await
        .expect("add-repo");
    }

    /// The row of a mirrored repository.
    pub async fn mirror_row(&self, repo_id: &str) -> knotd::admin::MirrorView {
        self.client()
            .mirrors()
            .await
            .expect("mirrors")
            .into_iter()
            .find(|m| m.repo_id == repo_id)
            .expect("the mirror is listed")
    }

    /// The typed admin client of this node.
    pub fn client(&self) -> knotd::admin::AdminClient {
        knotd::admin::AdminClient::new(self.node.admin_socket())
    }

    /// Publish a local git repository.
    pub async fn publish(&self, repo_id: &str, path: &Path) -> knotd::admin::PublishReport {
        self.try_publish(repo_id, path, false)
            .await
            .expect("publish")
    }

    /// Publish a local git repository (packed on this side, as every
    /// client does), with or without force.
    pub async fn try_publish(
        &self,
        repo_id: &str,
        path: &Path,
        force: bool,
    ) -> Result<knotd::admin::PublishReport, AdminError> {
        self.client()
            .publish_repository(
                &rid(repo_id),
                path,
                force,
                knotd::admin::PackProgress::Quiet,
            )
            .await
    }

    /// Publish a local git repository as if the node held `expected`.
    pub async fn publish_expecting(
        &self,
        repo_id: &str,
        path: &Path,
        force: bool,
        expected: Option<String>,
    ) -> Result<knotd::admin::PublishReport, AdminError> {
        let git_dir = knotd::git::open_repo(path).expect("a git repository");
        let refs = knotd::git::read_refs(&git_dir).expect("refs");
        let remote = self.client().refs(&rid(repo_id)).await?;
        self.client()
            .publish_local(
                &rid(repo_id),
                knotd::admin::LocalPublish {
                    git_dir: &git_dir,
                    refs: &refs,
                    tips: &refs.tips(),
                    remote: &remote.refs,
                    force,
                    expected_manifest: expected,
                    progress: knotd::admin::PackProgress::Quiet,
                },
            )
            .await
    }

    /// Where this node materializes a repository.
    pub fn repo_path(&self, repo_id: &str) -> PathBuf {
        self.data_dir
            .join("repos")
            .join(rid(repo_id).relative_path())
    }
}
