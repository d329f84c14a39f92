//! The `git-remote-knot` helper and the read-only smart HTTP service, driven by
//! the real `git` client.
//!
//! * The helper protocol is checked against a stand-in node: a real admin
//!   socket whose sync, refs, publish (a received pack) and upload-pack act
//!   on plain bare repositories.
//! * The full path runs two real `knotd` processes on loopback.
//! * Smart HTTP runs `knotd::http::serve` in process over a plain bare repo,
//!   served as a node holding it serves it.

#[allow(dead_code)]
#[path = "common/daemon.rs"]
mod common_daemon;

use common_daemon::{Daemon, Network};

use std::{
    ffi::OsString,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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

// ---------------------------------------------------------------------------
// git, isolated from the machine's configuration
// ---------------------------------------------------------------------------

/// A sandbox for running git: its own HOME and a PATH that finds the helper.
struct GitEnv {
    home: tempfile::TempDir,
    path: OsString,
    socket: Option<PathBuf>,
}

impl GitEnv {
    fn new() -> GitEnv {
        let home = tempfile::tempdir().unwrap();
        let helper = PathBuf::from(env!("CARGO_BIN_EXE_git-remote-knot"));
        let mut paths = vec![helper.parent().unwrap().to_path_buf()];
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        GitEnv {
            home,
            path: std::env::join_paths(paths).unwrap(),
            socket: None,
        }
    }

    fn with_socket(mut self, socket: &Path) -> GitEnv {
        self.socket = Some(socket.to_path_buf());
        self
    }

    fn cmd(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir)
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .env("PATH", &self.path)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.path().join("gitconfig"))
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.org")
            .env("GIT_COMMITTER_NAME", "Test Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.org")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_PROTOCOL")
            .env_remove("KNOTD_CONFIG")
            .env_remove("KNOTD_DATA_DIR")
            .stdin(Stdio::null());
        match &self.socket {
            Some(socket) => cmd.env("KNOT_SOCKET", socket),
            None => cmd.env_remove("KNOT_SOCKET"),
        };
        cmd
    }

    /// Run git; return its output whatever the exit status.
    fn run(&self, dir: &Path, args: &[&str]) -> Output {
        self.cmd(dir, args).output().expect("git runs")
    }

    /// Run git and require success; returns stdout trimmed.
    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(
            out.status.success(),
            "git {args:?} failed in {}:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new work tree with one commit on `main`.
    fn work_repo(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        self.ok(dir, &["init", "-q"]);
        std::fs::write(dir.join("README.md"), "hello knot\n").unwrap();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), "pub fn answer() -> u32 { 42 }\n").unwrap();
        self.ok(dir, &["add", "."]);
        self.ok(dir, &["commit", "-q", "-m", "first"]);
    }

    fn commit_file(&self, dir: &Path, file: &str, content: &str, message: &str) -> String {
        std::fs::write(dir.join(file), content).unwrap();
        self.ok(dir, &["add", file]);
        self.ok(dir, &["commit", "-q", "-m", message]);
        self.ok(dir, &["rev-parse", "HEAD"])
    }

    fn tree(&self, dir: &Path, rev: &str) -> String {
        self.ok(dir, &["rev-parse", &format!("{rev}^{{tree}}")])
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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
