//! The soak's writes: one work tree per repository on the harness side,
//! each push a new commit on `main` sent with the real `git push` through
//! `git-remote-knot` to its author's node. Commits are numbered per
//! repository (0 is the first), so any node's head says how many pushes it
//! holds; every tenth commit also rewrites a 128 KiB binary file, so some
//! transfers are more than a few hundred bytes.

use std::{
    collections::HashMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// git's environment: its own HOME and config, and a PATH that finds the helper.
pub struct GitEnv {
    home: PathBuf,
    path: OsString,
}

impl GitEnv {
    /// A sandbox under `dir`.
    pub fn new(dir: &Path) -> GitEnv {
        let home = dir.join("git-home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("gitconfig"), "").unwrap();
        let helper = crate::helper_bin();
        let mut paths = vec![helper.parent().unwrap().to_path_buf()];
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        GitEnv {
            home,
            path: std::env::join_paths(paths).unwrap(),
        }
    }

    fn apply<C: CommandLike>(&self, cmd: &mut C) {
        cmd.env("PATH", &self.path)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", self.home.join("gitconfig"))
            .env("GIT_AUTHOR_NAME", "Soak Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.org")
            .env("GIT_COMMITTER_NAME", "Soak Author")
            .env("GIT_COMMITTER_EMAIL", "author@example.org")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env_remove("KNOTD_CONFIG")
            .env_remove("KNOTD_DATA_DIR")
            .env_remove("GIT_DIR");
    }

    /// Run git in `dir`; stdout trimmed, or stderr as the error.
    pub fn run(&self, dir: &Path, args: &[&str]) -> Result<String, String> {
        let mut cmd = std::process::Command::new("git");
        cmd.current_dir(dir).args(args).stdin(Stdio::null());
        self.apply(&mut cmd);
        let out = cmd.output().map_err(|e| format!("git: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `git push -q knot main` in `dir` through the node at `socket`; the
    /// whole process group is killed after `timeout`.
    pub async fn push(&self, dir: &Path, socket: &Path, timeout: Duration) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.current_dir(dir)
            .args(["push", "-q", "knot", "main"])
            .env("KNOT_SOCKET", socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        self.apply(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("git push: {e}"))?;
        let group = child.id();
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!(
                "git push exited {}: {}",
                out.status,
                last_line(&String::from_utf8_lossy(&out.stderr))
            )),
            Ok(Err(e)) => Err(format!("git push: {e}")),
            Err(_) => {
                if let Some(pid) = group {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Err(format!("git push did not finish within {timeout:?}"))
            }
        }
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Both std's and tokio's Command, for the shared environment.
trait CommandLike {
    fn env<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &mut self,
        k: K,
        v: V,
    ) -> &mut Self;
    fn env_remove<K: AsRef<std::ffi::OsStr>>(&mut self, k: K) -> &mut Self;
}

impl CommandLike for std::process::Command {
    fn env<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &mut self,
        k: K,
        v: V,
    ) -> &mut Self {
        std::process::Command::env(self, k, v)
    }
    fn env_remove<K: AsRef<std::ffi::OsStr>>(&mut self, k: K) -> &mut Self {
        std::process::Command::env_remove(self, k)
    }
}

impl CommandLike for tokio::process::Command {
    fn env<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &mut self,
        k: K,
        v: V,
    ) -> &mut Self {
        tokio::process::Command::env(self, k, v)
    }
    fn env_remove<K: AsRef<std::ffi::OsStr>>(&mut self, k: K) -> &mut Self {
        tokio::process::Command::env_remove(self, k)
    }
}

/// One repository: its work tree and the commits made in it.
pub struct Repo {
    /// `<did>/<name>`.
    pub id: String,
    /// Index of the author node that owns it.
    pub author: usize,
    /// The work tree.
    pub work: PathBuf,
    commits: Mutex<Vec<String>>,
    index: Mutex<HashMap<String, usize>>,
    busy: AtomicBool,
}

impl Repo {
    /// Create the work tree with commit 0 and a `knot` remote.
    pub fn init(git: &GitEnv, work: PathBuf, id: String, author: usize) -> Repo {
        std::fs::create_dir_all(&work).unwrap();
        git.run(&work, &["init", "-q", "-b", "main"]).unwrap();
        git.run(&work, &["remote", "add", "knot", &format!("knot://{id}")])
            .unwrap();
        std::fs::write(work.join("README.md"), format!("# {id}\n")).unwrap();
        let repo = Repo {
            id,
            author,
            work,
            commits: Mutex::default(),
            index: Mutex::default(),
            busy: AtomicBool::new(false),
        };
        repo.commit(git).expect("the first commit");
        repo
    }

    /// Make the next commit; returns its number and id.
    pub fn commit(&self, git: &GitEnv) -> Result<(usize, String), String> {
        let n = self.commits.lock().unwrap().len();
        let log = self.work.join("log.txt");
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        text.push_str(&format!("push {n}\n"));
        std::fs::write(&log, text).map_err(|e| e.to_string())?;
        if n % 10 == 9 {
            let mut bytes = vec![0u8; 128 * 1024];
            blake3::Hasher::new()
                .update(self.id.as_bytes())
                .update(&(n as u64).to_le_bytes())
                .finalize_xof()
                .fill(&mut bytes);
            std::fs::write(self.work.join(format!("asset-{}.bin", n % 4)), bytes)
                .map_err(|e| e.to_string())?;
        }
        git.run(&self.work, &["add", "-A"])?;
        git.run(&self.work, &["commit", "-q", "-m", &format!("push {n}")])?;
        let sha = git.run(&self.work, &["rev-parse", "HEAD"])?;
        self.commits.lock().unwrap().push(sha.clone());
        self.index.lock().unwrap().insert(sha.clone(), n);
        Ok((n, sha))
    }

    /// The number of commit `sha`, if it is one of this repository's.
    pub fn number(&self, sha: &str) -> Option<usize> {
        self.index.lock().unwrap().get(sha).copied()
    }

    /// The id of commit `n`.
    pub fn sha(&self, n: usize) -> Option<String> {
        self.commits.lock().unwrap().get(n).cloned()
    }

    /// Take the repository for one push; false when a push is running.
    pub fn try_take(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    /// Give the repository back after a push.
    pub fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// One `git push` and what it reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushRecord {
    /// The repository.
    pub repo: String,
    /// The commit pushed (its number in the repository).
    pub commit: usize,
    /// The author node's name.
    pub author: String,
    /// Seconds since the soak began, when git was started.
    pub started: f64,
    /// Seconds since the soak began, when git exited.
    pub finished: f64,
    /// Whether git reported the push as done.
    pub done: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds from `finished` until every node held it (done pushes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converged_after: Option<f64>,
}
