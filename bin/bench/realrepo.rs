//! Real-shaped git repositories for benchmarks: real source text with real
//! deltas, thousands of refs, merge commits, written with `git fast-import`.
//!
//! The text is the source of the crates this project builds with, read from
//! cargo's registry (`$CARGO_HOME/registry/src/*/<name>-<version>/`) in the
//! order of `Cargo.lock`, so the same lock file and seed give the same
//! repository on every machine that built knotd. History: crates are imported
//! one by one over the life of `main`; every other commit edits one to three
//! files by replacing a few lines with lines of another real file, so packing
//! finds the deltas a real project has. Pull requests (`refs/pull/N/head`)
//! fork from `main` with commits of their own and half of them are merged
//! back with a merge commit; branches and tags (half annotated) point along
//! `main`. Dates are fixed, so commit ids are too.

use std::{
    collections::BTreeMap,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, Result, bail};

use crate::repogen::{git, git_command};

/// Shape of a real-shaped repository.
#[derive(Clone, Copy, Debug)]
pub struct RealSpec {
    /// Name used in reports.
    pub label: &'static str,
    /// Commits on `main` (imports, edits and merges).
    pub commits: usize,
    /// Most crates imported (0: every crate found).
    pub crates: usize,
    /// Branches besides `main`.
    pub branches: usize,
    /// Tags, every other one annotated.
    pub tags: usize,
    /// Pull-request refs `refs/pull/N/head`.
    pub pulls: usize,
}

/// For the smoke test: a few crates, about a hundred refs.
pub const REAL_TINY: RealSpec = RealSpec {
    label: "real-tiny",
    commits: 240,
    crates: 6,
    branches: 20,
    tags: 30,
    pulls: 60,
};

/// About 10 MB packed, 1,500 refs: a small project.
pub const REAL_SMALL: RealSpec = RealSpec {
    label: "real-small",
    commits: 3_000,
    crates: 80,
    branches: 150,
    tags: 350,
    pulls: 1_000,
};

/// About 60 MB packed, 5,600 refs, 20,000 commits on `main`.
pub const REAL: RealSpec = RealSpec {
    label: "real",
    commits: 20_000,
    crates: 0,
    branches: 600,
    tags: 1_400,
    pulls: 3_600,
};

/// Files larger than this are left out of the corpus.
const MAX_FILE: usize = 512 * 1024;
/// 2024-01-01T00:00:00Z.
const EPOCH: u64 = 1_704_067_200;
const AUTHORS: &[&str] = &[
    "Ada Lovelace <ada@example.org>",
    "Grace Hopper <grace@example.org>",
    "Linus Torvalds <linus@example.org>",
    "Barbara Liskov <barbara@example.org>",
    "Ken Thompson <ken@example.org>",
    "Frances Allen <fran@example.org>",
    "Donald Knuth <don@example.org>",
];

/// One crate's text files: path inside the crate and content.
struct CrateSource {
    name: String,
    files: Vec<(String, Vec<u8>)>,
}

/// The text of the crates `Cargo.lock` names, in lock-file order, and a
/// digest of all of it.
pub struct Corpus {
    crates: Vec<CrateSource>,
    /// BLAKE3 of every path and content, in order.
    pub digest: String,
    /// Total bytes of text.
    pub bytes: u64,
}

impl Corpus {
    /// Read the crates named by `lock` (a `Cargo.lock`) from the registry
    /// source directory under `cargo_home`; at most `limit` (0: all).
    pub fn load(lock: &Path, cargo_home: &Path, limit: usize) -> Result<Corpus> {
        let text =
            std::fs::read_to_string(lock).with_context(|| format!("reading {}", lock.display()))?;
        let mut packages = Vec::new();
        let (mut name, mut version) = (None, None);
        for line in text.lines() {
            if line == "[[package]]" {
                name = None;
                version = None;
            } else if let Some(v) = line.strip_prefix("name = ") {
                name = Some(v.trim_matches('"').to_string());
            } else if let Some(v) = line.strip_prefix("version = ") {
                version = Some(v.trim_matches('"').to_string());
            } else if line.starts_with("source = \"registry+")
                && let (Some(n), Some(v)) = (&name, &version)
            {
                packages.push(format!("{n}-{v}"));
            }
        }
        let src = cargo_home.join("registry/src");
        let mut roots: Vec<PathBuf> = std::fs::read_dir(&src)
            .with_context(|| format!("reading {}: build knotd first", src.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        roots.sort();
        let mut hasher = blake3::Hasher::new();
        let mut crates = Vec::new();
        let mut bytes = 0u64;
        for package in packages {
            let Some(dir) = roots.iter().map(|r| r.join(&package)).find(|d| d.is_dir()) else {
                continue;
            };
            let mut files = Vec::new();
            collect_text(&dir, &dir, &mut files)?;
            if files.is_empty() {
                continue;
            }
            files.sort();
            for (path, content) in &files {
                hasher.update(package.as_bytes());
                hasher.update(path.as_bytes());
                hasher.update(content);
                bytes += content.len() as u64;
            }
            let name = package
                .rsplit_once('-')
                .map(|(n, _)| n.to_string())
                .unwrap_or(package);
            crates.push(CrateSource { name, files });
            if limit > 0 && crates.len() >= limit {
                break;
            }
        }
        if crates.len() < 2 {
            bail!(
                "found {} crates of {} in {}; build knotd first so cargo unpacks its dependencies",
                crates.len(),
                lock.display(),
                src.display()
            );
        }
        Ok(Corpus {
            crates,
            digest: hasher.finalize().to_hex().to_string(),
            bytes,
        })
    }

    /// Number of crates.
    pub fn len(&self) -> usize {
        self.crates.len()
    }
}

fn collect_text(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_text(root, &path, out)?;
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = [
            ".rs", ".toml", ".md", ".txt", ".c", ".h", ".json", ".yml", ".yaml", ".py", ".sh",
        ]
        .iter()
        .any(|ext| name.ends_with(ext))
            || name.starts_with("LICENSE");
        if !text || name == "Cargo.toml.orig" || name == ".cargo_vcs_info.json" {
            continue;
        }
        let content = std::fs::read(&path)?;
        if content.len() > MAX_FILE || content.contains(&0) {
            continue;
        }
        let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
        if rel.contains(['\n', '"', '\\']) {
            continue;
        }
        out.push((rel, content));
    }
    Ok(())
}

/// A real-shaped repository that can grow by more commits on `main`.
pub struct RealRepo {
    rng: blake3::OutputReader,
    corpus: Corpus,
    tree: BTreeMap<String, Vec<u8>>,
    paths: Vec<String>,
    git_dir: PathBuf,
    commits: u64,
    next_mark: u64,
    head_mark: u64,
    next_import: usize,
    /// BLAKE3 of the fast-import stream of the initial state.
    pub stream_digest: String,
}

/// An open pull request waiting to be merged.
struct OpenPull {
    mark: u64,
    files: Vec<(String, Vec<u8>)>,
    number: usize,
    merge_at: usize,
}

impl RealRepo {
    /// Create a bare repository at `git_dir` holding the initial state of
    /// `spec`, packed with `git repack -a -d -f`.
    pub fn create(git_dir: &Path, spec: RealSpec, seed: u64, corpus: Corpus) -> Result<Self> {
        std::fs::create_dir_all(git_dir)?;
        git(git_dir, &["init", "-q", "--bare", "-b", "main"])?;
        let mut hasher = blake3::Hasher::new_derive_key("knotd-bench real repository v1");
        hasher.update(&seed.to_le_bytes());
        hasher.update(corpus.digest.as_bytes());
        let mut repo = RealRepo {
            rng: hasher.finalize_xof(),
            corpus,
            tree: BTreeMap::new(),
            paths: Vec::new(),
            git_dir: git_dir.to_path_buf(),
            commits: 0,
            next_mark: 1,
            head_mark: 0,
            next_import: 0,
            stream_digest: String::new(),
        };
        let digest = repo.import(|repo, out| repo.initial(spec, out))?;
        repo.stream_digest = digest;
        // fast-import deltas a blob only against the blob written just
        // before it; a real repository is packed with a delta search.
        git(
            git_dir,
            &[
                "repack",
                "-a",
                "-d",
                "-f",
                "-q",
                "--window=10",
                "--depth=50",
            ],
        )?;
        git(git_dir, &["pack-refs", "--all"])?;
        // As `git gc` leaves a repository.
        git(
            git_dir,
            &["commit-graph", "write", "--reachable", "--no-progress"],
        )?;
        Ok(repo)
    }

    /// The BLAKE3 of the fast-import stream [`RealRepo::create`] writes for
    /// these inputs, computed without git (to check determinism).
    pub fn stream_digest(spec: RealSpec, seed: u64, corpus: Corpus) -> Result<String> {
        let mut hasher = blake3::Hasher::new_derive_key("knotd-bench real repository v1");
        hasher.update(&seed.to_le_bytes());
        hasher.update(corpus.digest.as_bytes());
        let mut repo = RealRepo {
            rng: hasher.finalize_xof(),
            corpus,
            tree: BTreeMap::new(),
            paths: Vec::new(),
            git_dir: PathBuf::new(),
            commits: 0,
            next_mark: 1,
            head_mark: 0,
            next_import: 0,
            stream_digest: String::new(),
        };
        let mut sink = Sink {
            out: None,
            hasher: blake3::Hasher::new(),
        };
        repo.initial(spec, &mut sink)?;
        sink.write(b"done\n")?;
        Ok(sink.hasher.finalize().to_hex().to_string())
    }

    /// The commit `main` points to.
    pub fn head(&self) -> Result<String> {
        git(&self.git_dir, &["rev-parse", "refs/heads/main"])
    }

    /// Append `n` edit commits to `main`; returns the new head.
    pub fn add_commits(&mut self, n: usize) -> Result<String> {
        let head = self.head()?;
        self.import(|repo, out| {
            let mut from = Some(head.clone());
            for _ in 0..n {
                let n = 1 + repo.below(3);
                let files = repo.edit_files(n);
                let mark = repo.commit(out, "refs/heads/main", from.take(), &[], &files)?;
                repo.head_mark = mark;
            }
            Ok(())
        })?;
        self.head()
    }

    /// Run `write` into `git fast-import`; returns the BLAKE3 of the stream.
    fn import(&mut self, write: impl FnOnce(&mut Self, &mut Sink) -> Result<()>) -> Result<String> {
        let mut child = git_command(&self.git_dir)
            .args(["fast-import", "--quiet", "--done", "--depth=50"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting git fast-import")?;
        let stdin = child.stdin.take().context("fast-import stdin")?;
        let mut sink = Sink {
            out: Some(BufWriter::with_capacity(1 << 20, stdin)),
            hasher: blake3::Hasher::new(),
        };
        let written = write(self, &mut sink).and_then(|()| sink.write(b"done\n"));
        let digest = sink.hasher.finalize().to_hex().to_string();
        let flushed = match sink.out.take() {
            Some(out) => out.into_inner().map(drop).map_err(|e| e.into_error()),
            None => Ok(()),
        };
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "git fast-import failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        written?;
        flushed?;
        Ok(digest)
    }

    fn initial(&mut self, spec: RealSpec, out: &mut Sink) -> Result<()> {
        let crates = if spec.crates == 0 {
            self.corpus.len()
        } else {
            spec.crates.min(self.corpus.len())
        };
        let commits = spec.commits.max(crates + 2);
        // Where along `main` each ref goes, spread evenly.
        let at = |k: usize, of: usize| (k * commits) / of.max(1);
        let mut pulls_at: Vec<usize> = (0..spec.pulls).map(|k| at(k, spec.pulls)).collect();
        pulls_at.reverse();
        let mut branches_at: Vec<usize> = (0..spec.branches)
            .map(|k| at(k + 1, spec.branches + 1))
            .collect();
        branches_at.reverse();
        let mut tags_at: Vec<usize> = (0..spec.tags).map(|k| at(k + 1, spec.tags + 1)).collect();
        tags_at.reverse();
        let mut open: Vec<OpenPull> = Vec::new();
        let mut pull_number = 0;
        let (mut branch_number, mut tag_number) = (0, 0);
        for i in 0..commits {
            let parent = (self.head_mark > 0).then(|| format!(":{}", self.head_mark));
            // Imports are spread over the history; the first commit has one.
            let import_due = self.next_import < crates && i >= at(self.next_import, crates);
            if let Some(pos) = open.iter().position(|p| p.merge_at <= i) {
                let pull = open.swap_remove(pos);
                for (path, content) in &pull.files {
                    self.set_file(path, content.clone());
                }
                let message = format!("Merge pull request #{}", pull.number);
                let mark = self.commit_msg(
                    out,
                    "refs/heads/main",
                    parent,
                    &[pull.mark],
                    &pull.files,
                    &message,
                )?;
                self.head_mark = mark;
            } else if import_due {
                let k = self.next_import;
                self.next_import += 1;
                let source = &self.corpus.crates[k];
                let prefix = source.name.clone();
                let files: Vec<(String, Vec<u8>)> = source
                    .files
                    .iter()
                    .map(|(p, c)| (format!("{prefix}/{p}"), c.clone()))
                    .collect();
                for (path, content) in &files {
                    self.set_file(path, content.clone());
                }
                let message = format!("Add {prefix}");
                let mark =
                    self.commit_msg(out, "refs/heads/main", parent, &[], &files, &message)?;
                self.head_mark = mark;
            } else {
                let n = 1 + self.below(3);
                let files = self.edit_files(n);
                let mark = self.commit(out, "refs/heads/main", parent, &[], &files)?;
                self.head_mark = mark;
            }
            while pulls_at.last().is_some_and(|&p| p <= i) {
                pulls_at.pop();
                pull_number += 1;
                let base = self.head_mark;
                let mut mark = base;
                let mut changed = BTreeMap::new();
                for _ in 0..1 + self.below(2) {
                    let n = 1 + self.below(2);
                    let files = self.edit_files_detached(n, &changed);
                    mark = self.commit(
                        out,
                        &format!("refs/pull/{pull_number}/head"),
                        Some(format!(":{mark}")),
                        &[],
                        &files,
                    )?;
                    changed.extend(files);
                }
                if self.below(2) == 0 {
                    open.push(OpenPull {
                        mark,
                        files: changed.into_iter().collect(),
                        number: pull_number,
                        merge_at: i + 1 + self.below(40),
                    });
                }
            }
            while branches_at.last().is_some_and(|&p| p <= i) {
                branches_at.pop();
                branch_number += 1;
                let name = match branch_number % 3 {
                    0 => format!(
                        "refs/heads/release/{}.{}",
                        branch_number / 30,
                        branch_number % 30
                    ),
                    1 => format!("refs/heads/feature/topic-{branch_number}"),
                    _ => format!("refs/heads/fix/issue-{branch_number}"),
                };
                out.write(format!("reset {name}\nfrom :{}\n\n", self.head_mark).as_bytes())?;
            }
            while tags_at.last().is_some_and(|&p| p <= i) {
                tags_at.pop();
                tag_number += 1;
                let name = format!(
                    "v{}.{}.{}",
                    tag_number / 100,
                    (tag_number / 10) % 10,
                    tag_number % 10
                );
                if tag_number % 2 == 0 {
                    let when = EPOCH + self.commits * 900;
                    let message = format!("Release {name}\n");
                    out.write(
                        format!(
                            "tag {name}\nfrom :{}\ntagger {} {when} +0000\ndata {}\n{message}\n",
                            self.head_mark,
                            AUTHORS[tag_number % AUTHORS.len()],
                            message.len()
                        )
                        .as_bytes(),
                    )?;
                } else {
                    out.write(
                        format!("reset refs/tags/{name}\nfrom :{}\n\n", self.head_mark).as_bytes(),
                    )?;
                }
            }
        }
        // Pull requests still open at the end stay unmerged.
        Ok(())
    }

    fn set_file(&mut self, path: &str, content: Vec<u8>) {
        if self.tree.insert(path.to_string(), content).is_none() {
            self.paths.push(path.to_string());
        }
    }

    /// Edit `n` files of `main`'s tree; the tree keeps the edits.
    fn edit_files(&mut self, n: usize) -> Vec<(String, Vec<u8>)> {
        let files = self.edit_files_detached(n, &BTreeMap::new());
        for (path, content) in &files {
            self.set_file(path, content.clone());
        }
        files
    }

    /// Edit `n` files without changing `main`'s tree (a side branch);
    /// `over` holds the branch's earlier versions.
    fn edit_files_detached(
        &mut self,
        n: usize,
        over: &BTreeMap<String, Vec<u8>>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for _ in 0..n {
            if self.paths.is_empty() {
                break;
            }
            let at = self.below(self.paths.len());
            let path = self.paths[at].clone();
            if out.iter().any(|(p, _)| *p == path) {
                continue;
            }
            let base = over.get(&path).or_else(|| self.tree.get(&path)).cloned();
            let Some(base) = base else { continue };
            let edited = self.edit(&base);
            out.push((path, edited));
        }
        out
    }

    /// Replace a few lines of `text` by lines of another corpus file.
    fn edit(&mut self, text: &[u8]) -> Vec<u8> {
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        let start = if lines.is_empty() {
            0
        } else {
            self.below(lines.len())
        };
        let removed = self.below(6).min(lines.len() - start);
        let k = self.below(self.corpus.crates.len());
        let f = self.below(self.corpus.crates[k].files.len());
        let donor: Vec<Vec<u8>> = self.corpus.crates[k].files[f]
            .1
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        let take = 1 + self.below(12);
        let from = if donor.is_empty() {
            0
        } else {
            self.below(donor.len())
        };
        let mut out = Vec::with_capacity(text.len() + 1024);
        for line in &lines[..start] {
            out.extend_from_slice(line);
        }
        for line in donor.iter().skip(from).take(take) {
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
        for line in &lines[start + removed..] {
            out.extend_from_slice(line);
        }
        out
    }

    fn commit(
        &mut self,
        out: &mut Sink,
        refname: &str,
        from: Option<String>,
        merges: &[u64],
        files: &[(String, Vec<u8>)],
    ) -> Result<u64> {
        let message = match files.first() {
            Some((path, _)) => format!("Update {path}"),
            None => "Empty change".to_string(),
        };
        self.commit_msg(out, refname, from, merges, files, &message)
    }

    fn commit_msg(
        &mut self,
        out: &mut Sink,
        refname: &str,
        from: Option<String>,
        merges: &[u64],
        files: &[(String, Vec<u8>)],
        message: &str,
    ) -> Result<u64> {
        let mark = self.next_mark;
        self.next_mark += 1;
        let when = EPOCH + self.commits * 900;
        self.commits += 1;
        let author = AUTHORS[self.below(AUTHORS.len())];
        let message = format!("{message}\n");
        out.write(
            format!(
                "commit {refname}\nmark :{mark}\nauthor {author} {when} +0000\n\
                 committer {author} {when} +0000\ndata {}\n{message}",
                message.len()
            )
            .as_bytes(),
        )?;
        if let Some(from) = from {
            out.write(format!("from {from}\n").as_bytes())?;
        }
        for m in merges {
            out.write(format!("merge :{m}\n").as_bytes())?;
        }
        for (path, content) in files {
            out.write(format!("M 100644 inline \"{path}\"\ndata {}\n", content.len()).as_bytes())?;
            out.write(content)?;
            out.write(b"\n")?;
        }
        out.write(b"\n")?;
        Ok(mark)
    }

    fn below(&mut self, n: usize) -> usize {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b);
        (u64::from_le_bytes(b) % n.max(1) as u64) as usize
    }
}

/// fast-import's stdin (or nowhere), hashed as it is written.
struct Sink {
    out: Option<BufWriter<std::process::ChildStdin>>,
    hasher: blake3::Hasher,
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        match &mut self.out {
            Some(out) => out
                .write_all(bytes)
                .context("writing to git fast-import (see its error)"),
            None => Ok(()),
        }
    }
}
