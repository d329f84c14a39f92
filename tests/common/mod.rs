//! Shared helpers for multi-node tests: in-process nodes on loopback with relays
//! and discovery off, driven through their real admin sockets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use knotd::{
    admin::{self, AdminError, Command, Payload},
    config::Config,
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

    /// Start a node in `data_dir` (kept after the node stops).
    pub async fn spawn_in(data_dir: &Path) -> TestNode {
        Self::spawn_with(Config::local(data_dir)).await
    }

    /// Start a node with a given config.
    pub async fn spawn_with(config: Config) -> TestNode {
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
        admin::request(self.node.admin_socket(), &command).await
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

/// Parse a repo id in tests.
pub fn rid(s: &str) -> knotd::repo_id::RepoId {
    knotd::repo_id::RepoId::parse(s).expect("valid repo id")
}
