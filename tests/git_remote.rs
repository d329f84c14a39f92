//! The `git-remote-knot` helper driven by the real `git` client against a
//! stand-in node: a real admin socket whose sync, refs, publish (a received
//! pack) and upload-pack act on plain bare repositories. Real `knotd`
//! processes and smart HTTP are in `tests/git_remote_nodes.rs`.

mod git_client;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
};

use knotd::{
    admin::{
        self, Command as AdminCommand, Executor, PackBody, Payload, PublishReport, PublishRequest,
        RefsReport, Reply, SyncReport,
    },
    git, gitserve,
    repo_id::RepoId,
};
use tokio_util::sync::CancellationToken;

use git_client::*;

// ---------------------------------------------------------------------------
// A stand-in node: real admin socket, plain bare repositories
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct StandIn {
    root: PathBuf,
    log: Arc<Mutex<Vec<AdminCommand>>>,
}

fn plain_git(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl StandIn {
    fn repo_dir(&self, id: &RepoId) -> PathBuf {
        self.root.join(id.relative_path())
    }

    /// The stand-in's "manifest": a hash of the refs and HEAD.
    fn manifest(dir: &Path) -> String {
        let refs = plain_git(dir, &["for-each-ref", "--format=%(objectname) %(refname)"]);
        let head = plain_git(dir, &["symbolic-ref", "-q", "HEAD"]);
        let mut h = blake3::Hasher::new();
        h.update(&refs.stdout);
        h.update(&head.stdout);
        h.finalize().to_hex().to_string()
    }

    fn sync(&self, id: &RepoId) -> Reply {
        let dir = self.repo_dir(id);
        if !dir.exists() {
            return Reply::Error(format!(
                "{id} is unknown here and no peers were reachable (tried: none)"
            ));
        }
        Reply::Ok(Payload::Synced(SyncReport {
            repo_id: id.to_string(),
            manifest: Some(Self::manifest(&dir)),
            head: None,
            bytes_fetched: 0,
            message: "up to date".into(),
        }))
    }

    fn refs(&self, id: &RepoId) -> Reply {
        let dir = self.repo_dir(id);
        if !dir.exists() {
            return Reply::Error(format!("repository {id} is not tracked"));
        }
        Reply::Ok(Payload::Refs(RefsReport {
            repo_id: id.to_string(),
            manifest: Some(Self::manifest(&dir)),
            refs: git::read_refs(&dir).unwrap(),
        }))
    }

    /// Index the pack as the node does, then make the bare repository's
    /// refs the published ones.
    async fn publish_pack(&self, request: PublishRequest, pack: PackBody<'_>) -> Reply {
        let id = &request.repo_id;
        let dir = self.repo_dir(id);
        if dir.exists() {
            let current = Self::manifest(&dir);
            if request.expected_manifest.as_deref() != Some(current.as_str()) {
                return Reply::Error(format!(
                    "{id} changed meanwhile (now {current}); fetch and push again"
                ));
            }
        }
        let base = dir.exists().then_some(dir.as_path());
        let staging = match gitserve::receive_pack(
            &self.root.join(".tmp"),
            base,
            git::ObjectFormat::Sha1,
            pack,
            gitserve::MAX_RECEIVE_BYTES,
        )
        .await
        {
            Ok(staging) => staging,
            Err(e) => return Reply::Error(e.to_string()),
        };
        if let Err(e) = git::apply_refs(staging.git_dir(), &request.refs) {
            return Reply::Error(e.to_string());
        }
        if !dir.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            plain_git(&dir, &["init", "-q", "--bare"]);
        }
        let source = staging.git_dir().to_str().unwrap();
        plain_git(&dir, &["fetch", "-q", "--prune", source, "+refs/*:refs/*"]);
        if let Some(git::Head::Symbolic(head)) = &request.refs.head {
            plain_git(&dir, &["symbolic-ref", "HEAD", head]);
        }
        Reply::Ok(Payload::Published(PublishReport {
            repo_id: id.to_string(),
            head: None,
            manifest: Self::manifest(&dir),
            pack_count: 1,
            bytes_added: 1,
            consolidated: false,
            unchanged: false,
        }))
    }
}

impl Executor for StandIn {
    async fn execute(&self, command: AdminCommand) -> Reply {
        self.log.lock().unwrap().push(command.clone());
        match command {
            AdminCommand::Sync { repo_id } => self.sync(&repo_id),
            AdminCommand::Refs { repo_id } => self.refs(&repo_id),
            AdminCommand::List => Reply::Ok(Payload::Repos { repos: vec![] }),
            other => Reply::Error(format!("stand-in does not do {other:?}")),
        }
    }

    async fn publish<'a>(&'a self, request: PublishRequest, pack: PackBody<'a>) -> Reply {
        self.log.lock().unwrap().push(AdminCommand::Publish {
            repo_id: request.repo_id.clone(),
            refs: request.refs.clone(),
            force: request.force,
            expected_manifest: request.expected_manifest.clone(),
        });
        self.publish_pack(request, pack).await
    }

    async fn serve_target(&self, repo_id: RepoId) -> Result<gitserve::ServeTarget, String> {
        self.log.lock().unwrap().push(AdminCommand::UploadPack {
            repo_id: repo_id.clone(),
            protocol: None,
        });
        let dir = self.repo_dir(&repo_id);
        if dir.exists() {
            Ok(gitserve::ServeTarget::existing(dir))
        } else {
            gitserve::ServeTarget::empty(&self.root.join(".tmp"), git::ObjectFormat::Sha1)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// A stand-in node serving its admin socket on a background runtime.
struct StandInNode {
    node: StandIn,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
    cancel: CancellationToken,
}

impl StandInNode {
    fn start() -> StandInNode {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("knotd.sock");
        let node = StandIn {
            root: dir.path().join("repos"),
            log: Arc::default(),
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cancel = CancellationToken::new();
        let listener = runtime.block_on(admin::bind(&socket, None)).unwrap();
        runtime.spawn(admin::serve(
            listener,
            socket.clone(),
            node.clone(),
            cancel.clone(),
        ));
        StandInNode {
            node,
            socket,
            _dir: dir,
            _runtime: runtime,
            cancel,
        }
    }

    fn publishes(&self) -> Vec<(bool, Option<String>)> {
        self.node
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| match c {
                AdminCommand::Publish {
                    force,
                    expected_manifest,
                    ..
                } => Some((*force, expected_manifest.clone())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for StandInNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[test]
fn helper_push_clone_fetch_reject_force() {
    let node = StandInNode::start();
    let git = GitEnv::new().with_socket(&node.socket);
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    git.work_repo(&work);
    let url = "knot://did:plc:abc123/website";
    let id = RepoId::parse("did:plc:abc123/website").unwrap();

    // First push creates the repository; without a terminal the helper is quiet.
    let out = git.run(&work, &["push", url, "main"]);
    assert!(out.status.success(), "first push: {}", stderr(&out));
    assert!(!stderr(&out).contains("knot: "), "{}", stderr(&out));
    let served = node.node.repo_dir(&id);
    let head = git.ok(&work, &["rev-parse", "HEAD"]);
    assert_eq!(
        String::from_utf8_lossy(&plain_git(&served, &["rev-parse", "refs/heads/main"]).stdout)
            .trim(),
        head
    );
    assert_eq!(
        String::from_utf8_lossy(&plain_git(&served, &["symbolic-ref", "HEAD"]).stdout).trim(),
        "refs/heads/main",
        "a new repository's HEAD follows the pushed branch"
    );
    assert_eq!(node.publishes(), vec![(false, None)]);

    // Clone through the helper (protocol v2 and v0).
    let clone = tmp.path().join("clone");
    let out = git.run(tmp.path(), &["clone", url, clone.to_str().unwrap()]);
    assert!(out.status.success(), "clone: {}", stderr(&out));
    assert_eq!(git.tree(&clone, "HEAD"), git.tree(&work, "HEAD"));
    assert_eq!(
        std::fs::read_to_string(clone.join("src/lib.rs")).unwrap(),
        "pub fn answer() -> u32 { 42 }\n"
    );
    let clone0 = tmp.path().join("clone-v0");
    let out = git.run(
        tmp.path(),
        &[
            "-c",
            "protocol.version=0",
            "clone",
            url,
            clone0.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "clone v0: {}", stderr(&out));
    assert_eq!(git.tree(&clone0, "HEAD"), git.tree(&work, "HEAD"));

    // An update pushed from the work tree reaches the clone with pull.
    let manifest_before = StandIn::manifest(&served);
    let second = git.commit_file(&work, "README.md", "hello again\n", "second");
    let out = git.run(&work, &["push", "--progress", url, "main"]);
    assert!(out.status.success(), "second push: {}", stderr(&out));
    assert!(
        stderr(&out).contains("knot: published manifest"),
        "--progress shows what was published: {}",
        stderr(&out)
    );
    assert_eq!(
        node.publishes().last().unwrap(),
        &(false, Some(manifest_before)),
        "a push names the manifest it was based on"
    );
    git.ok(&clone, &["pull", "-q", "--ff-only"]);
    assert_eq!(git.ok(&clone, &["rev-parse", "HEAD"]), second);
    assert_eq!(
        std::fs::read_to_string(clone.join("README.md")).unwrap(),
        "hello again\n"
    );

    // A divergent push is refused with git's own message.
    git.ok(&clone, &["reset", "-q", "--hard", "HEAD~1"]);
    let diverged = git.commit_file(&clone, "other.txt", "diverged\n", "diverged");
    let publishes = node.publishes().len();
    let out = git.run(&clone, &["push", "origin", "main"]);
    assert!(!out.status.success(), "non-fast-forward push must fail");
    let err = stderr(&out);
    assert!(err.contains("[rejected]"), "{err}");
    assert!(err.contains("non-fast-forward"), "{err}");
    assert!(err.contains("Updates were rejected"), "{err}");
    assert_eq!(node.publishes().len(), publishes, "nothing published");
    assert_eq!(
        String::from_utf8_lossy(&plain_git(&served, &["rev-parse", "refs/heads/main"]).stdout)
            .trim(),
        second
    );

    // Forced, it goes through.
    let out = git.run(&clone, &["push", "--force", "origin", "main"]);
    assert!(out.status.success(), "force push: {}", stderr(&out));
    assert!(
        node.publishes().last().unwrap().0,
        "a forced push publishes with force"
    );
    assert_eq!(
        String::from_utf8_lossy(&plain_git(&served, &["rev-parse", "refs/heads/main"]).stdout)
            .trim(),
        diverged
    );

    // Tags and other branches travel too, and a branch can be deleted.
    git.ok(&work, &["tag", "-a", "v1", "-m", "release one"]);
    git.ok(&work, &["branch", "feature"]);
    git.ok(&work, &["push", url, "v1", "feature"]);
    let tags = plain_git(&served, &["for-each-ref", "--format=%(refname)"]);
    let tags = String::from_utf8_lossy(&tags.stdout).to_string();
    assert!(tags.contains("refs/tags/v1"), "{tags}");
    assert!(tags.contains("refs/heads/feature"), "{tags}");
    git.ok(&work, &["push", url, ":feature"]);
    let refs = plain_git(&served, &["for-each-ref", "--format=%(refname)"]);
    let refs = String::from_utf8_lossy(&refs.stdout).to_string();
    assert!(!refs.contains("refs/heads/feature"), "{refs}");
    assert!(refs.contains("refs/heads/main"), "{refs}");

    // A dry run publishes nothing.
    let publishes = node.publishes().len();
    git.commit_file(&work, "dry.txt", "dry\n", "dry");
    let out = git.run(&work, &["push", "--dry-run", "--force", url, "main"]);
    assert!(out.status.success(), "dry run: {}", stderr(&out));
    assert_eq!(node.publishes().len(), publishes);
}

#[test]
fn helper_passes_node_errors_through() {
    let node = StandInNode::start();
    let git = GitEnv::new().with_socket(&node.socket);
    let tmp = tempfile::tempdir().unwrap();
    let out = git.run(
        tmp.path(),
        &["clone", "knot://did:plc:abc123/nowhere", "nowhere"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no peers were reachable"), "{err}");
    assert!(!tmp.path().join("nowhere").exists());
}

#[test]
fn helper_rejects_bad_repo_ids() {
    let node = StandInNode::start();
    let git = GitEnv::new().with_socket(&node.socket);
    let tmp = tempfile::tempdir().unwrap();
    for url in [
        "knot://website",
        "knot://did:plc:abc/a b",
        "knot://did:plc:abc/x/y",
    ] {
        let out = git.run(tmp.path(), &["ls-remote", url]);
        assert!(!out.status.success(), "{url} must fail");
        let err = stderr(&out);
        assert!(err.contains("invalid knot URL"), "{url}: {err}");
        assert!(err.contains("<did>/<name>"), "{url}: {err}");
    }
    assert!(
        node.node.log.lock().unwrap().is_empty(),
        "a bad id never reaches the node"
    );
}

#[test]
fn helper_without_a_node_says_how_to_start_one() {
    let tmp = tempfile::tempdir().unwrap();
    let git = GitEnv::new().with_socket(&tmp.path().join("missing/knotd.sock"));
    let out = git.run(tmp.path(), &["ls-remote", "knot://did:plc:abc123/website"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("knotd run"), "{err}");
    assert!(err.contains("KNOT_SOCKET"), "{err}");

    // The socket can also come from git config.
    let git = GitEnv::new();
    let socket = tmp.path().join("from-config.sock");
    let out = git.run(
        tmp.path(),
        &[
            "-c",
            &format!("knot.socket={}", socket.display()),
            "ls-remote",
            "knot://did:plc:abc123/website",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("from-config.sock"), "{err}");
    assert!(err.contains("git config knot.socket"), "{err}");
}

// ---------------------------------------------------------------------------
// Two real knotd processes
// ---------------------------------------------------------------------------
