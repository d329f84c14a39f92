//! A git environment for tests: an isolated `HOME` and configuration, a
//! sample repository with branches, a merge, tags, notes and a binary file,
//! and comparisons of two repositories' refs.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use knotd::git;

pub mod store;

/// Isolated git environment: its own HOME, no system or global config.
pub struct Env {
    pub root: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("home")).unwrap();
        Env { root }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    pub fn cmd(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("git");
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
        ] {
            cmd.env_remove(var);
        }
        cmd.current_dir(dir)
            .env("HOME", self.path("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .env("LC_ALL", "C")
            .args(["-c", "init.defaultBranch=main", "-c", "gc.auto=0"]);
        cmd
    }

    /// Run git in `dir`, assert success, return stdout.
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.cmd(dir).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run git in `dir` with `input` on its standard input, assert
    /// success, return stdout.
    pub fn git_stdin(&self, dir: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = self
            .cmd(dir)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?} failed");
        out.stdout
    }

    pub fn commit_file(&self, repo: &Path, file: &str, content: &[u8], msg: &str) {
        let path = repo.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        self.git(repo, &["add", file]);
        self.git(repo, &["commit", "-q", "-m", msg]);
    }

    /// A work-tree repository with branches, a merge, tags, notes, a binary
    /// file and a remote-tracking ref (which must not be published).
    pub fn sample_repo(&self) -> PathBuf {
        let repo = self.path("src");
        fs::create_dir(&repo).unwrap();
        self.git(&repo, &["init", "-q"]);
        self.commit_file(&repo, "README", b"hello\n", "initial");
        self.commit_file(&repo, "data/blob.bin", &binary(200_000, 1), "binary");
        self.git(&repo, &["checkout", "-q", "-b", "feature"]);
        self.commit_file(&repo, "feature.txt", &text(2000, 0), "feature work");
        self.git(&repo, &["tag", "light"]);
        self.git(&repo, &["checkout", "-q", "main"]);
        self.commit_file(&repo, "README", b"hello\nworld\n", "main work");
        self.git(
            &repo,
            &["merge", "-q", "--no-ff", "-m", "merge feature", "feature"],
        );
        self.git(&repo, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
        self.git(&repo, &["branch", "dev", "HEAD~1"]);
        self.git(&repo, &["notes", "add", "-m", "a note", "HEAD"]);
        self.git(&repo, &["update-ref", "refs/remotes/origin/main", "HEAD~1"]);
        repo
    }

    /// `for-each-ref` lines (object, type, name), without remote-tracking refs.
    pub fn ref_listing(&self, repo: &Path) -> Vec<String> {
        self.git(
            repo,
            &[
                "for-each-ref",
                "--format=%(objectname) %(objecttype) %(refname)",
            ],
        )
        .lines()
        .filter(|l| !l.contains(" refs/remotes/"))
        .map(str::to_owned)
        .collect()
    }

    pub fn head(&self, repo: &Path) -> String {
        self.git(repo, &["symbolic-ref", "HEAD"]).trim().to_owned()
    }

    pub fn assert_same_repo(&self, src: &Path, materialized: &Path) {
        assert_eq!(self.ref_listing(src), self.ref_listing(materialized));
        assert_eq!(self.head(src), self.head(materialized));
        git::fsck(materialized).unwrap();
    }
}

/// Deterministic pseudo-random bytes (includes NUL and high bytes).
pub fn binary(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn text(lines: usize, variant: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| {
            format!(
                "line {i} of the file, variant {}\n",
                if i % 97 == 0 { variant } else { 0 }
            )
        })
        .collect::<String>()
        .into_bytes()
}
