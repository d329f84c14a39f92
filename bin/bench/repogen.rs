//! Deterministic git repositories for benchmarks, written with `git fast-import`.
//!
//! Content comes from a BLAKE3 extendable output seeded by `--seed`: every
//! commit appends generated text lines to one of a few source files and
//! rewrites one binary asset with incompressible bytes. Author and committer
//! dates are fixed, so the same seed and the same sequence of calls always give
//! the same commit ids.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Shape of a generated repository.
#[derive(Clone, Copy, Debug)]
pub struct RepoSpec {
    /// Name used in reports.
    pub label: &'static str,
    /// Commits in the initial state.
    pub commits: usize,
    /// Incompressible bytes written per commit.
    pub bin_bytes: usize,
    /// Text lines appended per commit.
    pub text_lines: usize,
}

/// A few dozen commits, about 100 KB packed.
pub const TINY: RepoSpec = RepoSpec {
    label: "tiny",
    commits: 20,
    bin_bytes: 4 * 1024,
    text_lines: 8,
};

/// About 1 MB packed.
pub const SMALL: RepoSpec = RepoSpec {
    label: "small",
    commits: 200,
    bin_bytes: 4 * 1024,
    text_lines: 10,
};

/// About 50 MB packed, 2,000 commits.
pub const MEDIUM: RepoSpec = RepoSpec {
    label: "medium",
    commits: 2000,
    bin_bytes: 24 * 1024,
    text_lines: 10,
};

const TEXT_FILES: usize = 16;
const BIN_FILES: usize = 32;
/// 2026-01-01T00:00:00Z.
const EPOCH: u64 = 1_767_225_600;
const WORDS: &[&str] = &[
    "seed", "knot", "peer", "pack", "blob", "tree", "commit", "gossip", "topic", "manifest",
    "record", "repo", "fetch", "clone", "merge", "branch", "tag", "hash", "node", "ticket",
    "relay", "socket", "state", "signed", "verify", "stream", "chunk", "delta", "index", "object",
    "let", "fn", "match", "return", "async", "await", "impl", "struct", "enum", "pub", "use",
    "mod", "self", "Some", "None", "Ok", "Err", "vec", "String", "u64", "len", "iter", "map",
    "into", "from", "new", "with", "for", "in", "if", "else", "while", "loop", "break",
];

/// Run git in `dir` with an isolated configuration; fail with its stderr.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = git_command(dir)
        .args(args)
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    if !out.status.success() {
        bail!(
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A git command in `dir` that ignores user and system configuration.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

/// Total size of the `.pack` files of a git directory.
pub fn pack_bytes(git_dir: &Path) -> Result<u64> {
    Ok(pack_files(git_dir)?.iter().map(|(_, size)| size).sum())
}

/// The `.pack` files of a git directory with their sizes.
pub fn pack_files(git_dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let dir = git_dir.join("objects/pack");
    let mut packs = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pack") {
            packs.push((path, entry.metadata()?.len()));
        }
    }
    packs.sort();
    Ok(packs)
}

/// A generated repository that can grow by more commits.
pub struct RepoGen {
    rng: blake3::OutputReader,
    texts: Vec<Vec<u8>>,
    commits: u64,
    spec: RepoSpec,
    git_dir: PathBuf,
}

impl RepoGen {
    /// Create a bare repository at `git_dir` holding the initial state of `spec`.
    pub fn create(git_dir: &Path, spec: RepoSpec, seed: u64) -> Result<Self> {
        std::fs::create_dir_all(git_dir)?;
        git(git_dir, &["init", "-q", "--bare", "-b", "main"])?;
        let mut hasher = blake3::Hasher::new_derive_key("knotd-bench repository content v1");
        hasher.update(&seed.to_le_bytes());
        let mut generator = RepoGen {
            rng: hasher.finalize_xof(),
            texts: vec![Vec::new(); TEXT_FILES],
            commits: 0,
            spec,
            git_dir: git_dir.to_path_buf(),
        };
        generator.add_commits(spec.commits)?;
        git(git_dir, &["repack", "-a", "-d", "-q"])?;
        Ok(generator)
    }

    /// The repository's git directory.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The commit `main` points to.
    pub fn head(&self) -> Result<String> {
        git(&self.git_dir, &["rev-parse", "refs/heads/main"])
    }

    /// Append `n` commits to `main`; returns the new head.
    pub fn add_commits(&mut self, n: usize) -> Result<String> {
        let parent = if self.commits == 0 {
            None
        } else {
            Some(self.head()?)
        };
        let stream = self.stream(n, parent);
        let mut child = git_command(&self.git_dir)
            .args(["fast-import", "--quiet", "--done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting git fast-import")?;
        child
            .stdin
            .take()
            .context("fast-import stdin")?
            .write_all(&stream)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "git fast-import failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.head()
    }

    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.rng.fill(&mut b);
        u32::from_le_bytes(b)
    }

    fn text_line(&mut self) -> Vec<u8> {
        let words = 4 + self.next_u32() as usize % 9;
        let indent = self.next_u32() as usize % 3;
        let mut line = vec![b' '; indent * 4];
        for i in 0..words {
            if i > 0 {
                line.push(b' ');
            }
            let w = WORDS[self.next_u32() as usize % WORDS.len()];
            line.extend_from_slice(w.as_bytes());
        }
        line.extend_from_slice(format!(" // {:08x}\n", self.next_u32()).as_bytes());
        line
    }

    fn stream(&mut self, n: usize, parent: Option<String>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut parent = parent;
        for _ in 0..n {
            let c = self.commits;
            self.commits += 1;
            let file = self.next_u32() as usize % TEXT_FILES;
            for _ in 0..self.spec.text_lines {
                let line = self.text_line();
                self.texts[file].extend_from_slice(&line);
            }
            let mut binary = vec![0u8; self.spec.bin_bytes];
            self.rng.fill(&mut binary);
            let when = EPOCH + c * 600;
            let message = format!("Update module {file:02} (change {c})\n");
            out.extend_from_slice(b"commit refs/heads/main\n");
            out.extend_from_slice(
                format!(
                    "author Bench Author <author@example.com> {when} +0000\n\
                     committer Bench Author <author@example.com> {when} +0000\n\
                     data {}\n{message}",
                    message.len()
                )
                .as_bytes(),
            );
            match parent.take() {
                Some(p) => out.extend_from_slice(format!("from {p}\n").as_bytes()),
                None if c > 0 => {}
                None => {
                    let readme = b"Benchmark repository generated by knotd-bench.\n";
                    out.extend_from_slice(
                        format!("M 100644 inline README.md\ndata {}\n", readme.len()).as_bytes(),
                    );
                    out.extend_from_slice(readme);
                    out.push(b'\n');
                }
            }
            let text = &self.texts[file];
            out.extend_from_slice(
                format!(
                    "M 100644 inline src/mod{file:02}.txt\ndata {}\n",
                    text.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(text);
            out.push(b'\n');
            out.extend_from_slice(
                format!(
                    "M 100644 inline assets/data{:02}.bin\ndata {}\n",
                    c as usize % BIN_FILES,
                    binary.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&binary);
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"done\n");
        out
    }
}
