//! git, isolated from the machine's configuration, with the built
//! `git-remote-knot` on its `PATH`: shared by `tests/git_remote.rs` and
//! `tests/git_remote_nodes.rs`.
#![allow(dead_code)]

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

// ---------------------------------------------------------------------------
// git, isolated from the machine's configuration
// ---------------------------------------------------------------------------

/// A sandbox for running git: its own HOME and a PATH that finds the helper.
pub struct GitEnv {
    pub home: tempfile::TempDir,
    pub path: OsString,
    pub socket: Option<PathBuf>,
}

impl GitEnv {
    pub fn new() -> GitEnv {
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

    pub fn with_socket(mut self, socket: &Path) -> GitEnv {
        self.socket = Some(socket.to_path_buf());
        self
    }

    pub fn cmd(&self, dir: &Path, args: &[&str]) -> Command {
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
    pub fn run(&self, dir: &Path, args: &[&str]) -> Output {
        self.cmd(dir, args).output().expect("git runs")
    }

    /// Run git and require success; returns stdout trimmed.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
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
    pub fn work_repo(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        self.ok(dir, &["init", "-q"]);
        std::fs::write(dir.join("README.md"), "hello knot\n").unwrap();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), "pub fn answer() -> u32 { 42 }\n").unwrap();
        self.ok(dir, &["add", "."]);
        self.ok(dir, &["commit", "-q", "-m", "first"]);
    }

    pub fn commit_file(&self, dir: &Path, file: &str, content: &str, message: &str) -> String {
        std::fs::write(dir.join(file), content).unwrap();
        self.ok(dir, &["add", file]);
        self.ok(dir, &["commit", "-q", "-m", message]);
        self.ok(dir, &["rev-parse", "HEAD"])
    }

    pub fn tree(&self, dir: &Path, rev: &str) -> String {
        self.ok(dir, &["rev-parse", &format!("{rev}^{{tree}}")])
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
