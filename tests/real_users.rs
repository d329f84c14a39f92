//! The packaged service with real users, as `deploy/knotd.service` runs it:
//! `knotd` runs as its own service user with a private (0700) state
//! directory and an admin socket in a runtime directory, 0660 and owned by
//! the service's group. A login user in that group publishes a repository
//! from her own private home, clones it and pushes to it through
//! `git-remote-knot`; neither side can read the other's files, so this only
//! works because no path crosses the socket. A login user outside the group
//! is refused with a message that says what to ask for.
//!
//! Creates the users and the group with `useradd`/`groupadd` and switches to
//! them with `setpriv`: needs root. Without root the test fails unless
//! `KNOTD_SKIP_USERS=1` says to skip it. `.ci/run` runs it as root.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const REPO: &str = "did:plc:realusers1/proj";
const PUSHED: &str = "did:plc:realusers1/pushed";

/// The users and the group of one run, removed again on drop.
struct Users {
    service: String,
    member: String,
    outsider: String,
    group: String,
}

impl Users {
    fn create(root: &Path) -> Users {
        let tag = std::process::id();
        let users = Users {
            service: format!("kt{tag}svc"),
            member: format!("kt{tag}alice"),
            outsider: format!("kt{tag}bob"),
            group: format!("kt{tag}knotd"),
        };
        run_ok(Command::new("groupadd").arg(&users.group));
        // The service user's primary group is the socket's group, as with
        // `User=knotd` and `Group=knotd` in the unit.
        run_ok(
            Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .args(["--gid", &users.group])
                .args(["--home-dir", "/nonexistent"])
                .arg(&users.service),
        );
        for (user, groups) in [(&users.member, Some(&users.group)), (&users.outsider, None)] {
            let home = root.join("home").join(user);
            let mut cmd = Command::new("useradd");
            cmd.args(["--create-home", "--user-group", "--shell", "/bin/sh"])
                .arg("--home-dir")
                .arg(&home);
            if let Some(group) = groups {
                cmd.args(["--groups", group]);
            }
            run_ok(cmd.arg(user));
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        users
    }

    fn home(&self, root: &Path, user: &str) -> PathBuf {
        root.join("home").join(user)
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for user in [&self.member, &self.outsider, &self.service] {
            let _ = Command::new("userdel").arg(user).output();
        }
        for group in [&self.member, &self.outsider, &self.group] {
            let _ = Command::new("groupdel").arg(group).output();
        }
    }
}

/// The daemon process, killed on drop.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("KNOTD_SKIP_USERS").as_deref() == Ok("1") {
        eprintln!("KNOTD_SKIP_USERS=1: skipping the real-users test (needs root)");
        return false;
    }
    panic!(
        "the real-users test creates users and groups and needs root; \
         run it as root (sudo -E cargo test --test real_users) or set KNOTD_SKIP_USERS=1 to skip it"
    );
}

/// A command run as `user` with its supplementary groups, a clean
/// environment and the test's binaries first on `PATH`.
fn as_user(user: &str, home: &Path, bin: &Path, socket: &Path, program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .arg("--init-groups")
        .arg("--")
        .arg(program)
        .env_clear()
        .env("HOME", home)
        .env("USER", user)
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
        )
        .env("KNOT_SOCKET", socket)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .current_dir(home);
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies of the built binaries in a directory every user may read.
fn install_binaries(root: &Path) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, built) in [
        ("knotd", env!("CARGO_BIN_EXE_knotd")),
        ("git-remote-knot", env!("CARGO_BIN_EXE_git-remote-knot")),
    ] {
        let dest = bin.join(name);
        std::fs::copy(built, &dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn chown(path: &Path, user: Option<&str>, group: Option<&str>) {
    let uid = user.map(|u| {
        nix::unistd::User::from_name(u)
            .unwrap()
            .expect("user exists")
            .uid
    });
    let gid = group.map(|g| {
        nix::unistd::Group::from_name(g)
            .unwrap()
            .expect("group exists")
            .gid
    });
    nix::unistd::chown(path, uid, gid).unwrap();
}

/// Start the service as `users.service`: state 0700 in `root/state`, the
/// socket in `root/run` (0750, the service's group), as the unit sets up.
fn start_service(root: &Path, bin: &Path, users: &Users) -> (Service, PathBuf) {
    let state = root.join("state");
    let run = root.join("run");
    for (dir, mode) in [(&state, 0o700), (&run, 0o750)] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
        chown(dir, Some(&users.service), Some(&users.group));
    }
    let socket = run.join("knotd.sock");
    let config = root.join("knotd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {state:?}\n\
             bind = [\"127.0.0.1:0\"]\n\
             relay = \"disabled\"\n\
             discovery = \"off\"\n\
             admin_socket = {socket:?}\n\
             admin_socket_group = {group:?}\n\
             [atproto]\n\
             plc_directory = \"http://127.0.0.1:1\"\n\
             request_timeout_secs = 2\n",
            group = users.group,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let child = Command::new("setpriv")
        .arg(format!("--reuid={}", users.service))
        .arg(format!("--regid={}", users.group))
        .arg("--clear-groups")
        .arg("--")
        .arg(bin.join("knotd"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .env("RUST_LOG", "knotd=info,warn")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("knotd starts as the service user");
    let mut service = Service(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if let Some(status) = service.0.try_wait().unwrap() {
            panic!("knotd exited early: {status}");
        }
        assert!(Instant::now() < deadline, "knotd did not create its socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    (service, socket)
}

#[test]
fn a_group_member_publishes_pushes_and_clones_an_outsider_is_told_why_not() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::set_permissions(root.join("home"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let users = Users::create(root);
    let bin = install_binaries(root);
    let (_service, socket) = start_service(root, &bin, &users);

    // The socket is the group's, not the world's; the state is the service's.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let state_mode = std::fs::metadata(root.join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o700);

    let alice = users.home(root, &users.member);
    let member = |program: &str| as_user(&users.member, &alice, &bin, &socket, program);
    let git = |dir: &Path, args: &[&str]| -> String {
        let out = member("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&alice, &["config", "--global", "user.name", "Alice"]);
    git(
        &alice,
        &["config", "--global", "user.email", "alice@example.org"],
    );
    git(
        &alice,
        &["config", "--global", "init.defaultBranch", "main"],
    );

    // A repository in her private home.
    let proj = alice.join("proj");
    git(&alice, &["init", "-q", proj.to_str().unwrap()]);
    for i in 0..3 {
        let out = member("sh")
            .arg("-c")
            .arg(format!("echo 'line {i}' >> notes.txt"))
            .current_dir(&proj)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        git(&proj, &["add", "notes.txt"]);
        git(&proj, &["commit", "-q", "-m", &format!("commit {i}")]);
    }
    let head = git(&proj, &["rev-parse", "HEAD"]);

    // The daemon's user cannot read her home: what it gets, it got through the socket.
    let out = as_user(&users.service, Path::new("/"), &bin, &socket, "ls")
        .arg(&proj)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the service user must not read the member's home"
    );

    // Publish a path in her home (the CLI packs it on her side).
    let out = member("knotd")
        .args(["admin", "publish", REPO])
        .arg(&proj)
        .output()
        .unwrap();
    assert!(out.status.success(), "publish: {}", text(&out));

    // Clone through the helper: the daemon runs upload-pack.
    let clone = alice.join("clone");
    let out = member("git")
        .args(["clone", "-q", &format!("knot://{REPO}")])
        .arg(&clone)
        .output()
        .unwrap();
    assert!(out.status.success(), "clone: {}", text(&out));
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        std::fs::read_to_string(clone.join("notes.txt")).unwrap(),
        "line 0\nline 1\nline 2\n"
    );

    // Push a new commit to it, and the whole history to a new repository.
    std::fs::write(clone.join("more.txt"), "pushed by alice\n").unwrap();
    chown(&clone.join("more.txt"), Some(&users.member), None);
    git(&clone, &["add", "more.txt"]);
    git(&clone, &["commit", "-q", "-m", "pushed"]);
    let pushed = git(&clone, &["rev-parse", "HEAD"]);
    git(&clone, &["push", "-q", "origin", "main"]);
    git(&clone, &["push", "-q", &format!("knot://{PUSHED}"), "main"]);

    for (repo, dir) in [(REPO, "again"), (PUSHED, "pushed")] {
        let dest = alice.join(dir);
        let out = member("git")
            .args(["clone", "-q", &format!("knot://{repo}")])
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "clone {repo}: {}", text(&out));
        assert_eq!(git(&dest, &["rev-parse", "HEAD"]), pushed, "{repo}");
    }
    let out = member("knotd").args(["admin", "list"]).output().unwrap();
    assert!(out.status.success(), "list: {}", text(&out));
    assert!(text(&out).contains(PUSHED), "{}", text(&out));

    // Outside the group: refused, with what to ask for.
    let bob = users.home(root, &users.outsider);
    let outsider = |program: &str| as_user(&users.outsider, &bob, &bin, &socket, program);
    let out = outsider("knotd")
        .args(["admin", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("permission denied") && message.contains(&users.group),
        "the outsider must be told which group to ask for: {message}"
    );
    let out = outsider("git")
        .args(["clone", "-q", &format!("knot://{REPO}")])
        .arg(bob.join("clone"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("permission denied") && message.contains(&users.group),
        "git clone must say why: {message}"
    );
}
