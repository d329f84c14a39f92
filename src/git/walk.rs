//! Ancestry questions answered in-process over one `git cat-file --batch`:
//! however many refs a fast-forward check looks at, it reads commits
//! through a single git process, and each commit at most once.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use super::{GitError, ObjectId, bounded, failed, git_at, run};

/// Most tag-to-tag hops followed when peeling.
const MAX_PEEL: usize = 16;

/// A commit's parents and committer time.
struct CommitInfo {
    parents: Vec<ObjectId>,
    time: i64,
}

/// Reads commits from a repository through one `git cat-file --batch`
/// process and answers "is `a` an ancestor of `b`" by walking parents,
/// newest first, from `b`. The answer is exact whatever the dates say;
/// when `a` is an ancestor the walk stops on reaching it, so a
/// fast-forward costs about the commits it adds.
pub struct Ancestry {
    child: Child,
    _deadline: super::Deadline,
    input: BufWriter<ChildStdin>,
    output: BufReader<ChildStdout>,
    commits: HashMap<ObjectId, Option<CommitInfo>>,
}

impl Ancestry {
    /// Start `git cat-file --batch` on `git_dir`.
    pub fn open(git_dir: &Path) -> Result<Ancestry, GitError> {
        let mut cmd = git_at(git_dir, &["cat-file", "--batch"]);
        cmd.stdin(Stdio::piped()).stderr(Stdio::null());
        let mut child = super::spawn(cmd, "cat-file --batch")?;
        let deadline = super::Deadline::arm(&child, "cat-file --batch");
        let input = BufWriter::new(child.stdin.take().expect("stdin was configured as piped"));
        let output = BufReader::with_capacity(
            64 * 1024,
            child.stdout.take().expect("stdout was configured as piped"),
        );
        Ok(Ancestry {
            child,
            _deadline: deadline,
            input,
            output,
            commits: HashMap::new(),
        })
    }

    /// Whether `a` is an ancestor of (or equal to) `b`. Annotated tags are
    /// peeled; an id that is missing or does not peel to a commit is no
    /// ancestor of anything.
    pub fn is_ancestor(&mut self, a: &ObjectId, b: &ObjectId) -> Result<bool, GitError> {
        if a == b {
            return Ok(true);
        }
        let (Some(a), Some(b)) = (self.peel(a)?, self.peel(b)?) else {
            return Ok(false);
        };
        if a == b {
            return Ok(true);
        }
        if self.commit(&a)?.is_none() {
            return Ok(false);
        }
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let mut queue: BinaryHeap<(i64, ObjectId)> = BinaryHeap::new();
        if let Some(info) = self.commit(&b)? {
            queue.push((info.time, b.clone()));
            seen.insert(b);
        }
        while let Some((_, id)) = queue.pop() {
            if id == a {
                return Ok(true);
            }
            let parents = match self.commit(&id)? {
                Some(info) => info.parents.clone(),
                None => continue,
            };
            for parent in parents {
                if seen.insert(parent.clone()) {
                    // A parent that cannot be read ends this path.
                    if let Some(info) = self.commit(&parent)? {
                        queue.push((info.time, parent));
                    }
                }
            }
        }
        Ok(false)
    }

    /// The commit `id` peels to, `None` when it is missing or no commit.
    fn peel(&mut self, id: &ObjectId) -> Result<Option<ObjectId>, GitError> {
        let mut id = id.clone();
        for _ in 0..MAX_PEEL {
            if self.commits.contains_key(&id) {
                return Ok(self.commits[&id].as_ref().map(|_| id));
            }
            match self.read(&id)? {
                Some((kind, body)) if kind == "tag" => {
                    let target = body
                        .split(|&b| b == b'\n')
                        .next()
                        .and_then(|l| l.strip_prefix(b"object "))
                        .and_then(|t| std::str::from_utf8(t).ok())
                        .and_then(|t| t.parse().ok());
                    match target {
                        Some(t) => id = t,
                        None => return Ok(None),
                    }
                }
                Some((kind, body)) if kind == "commit" => {
                    let info = parse_commit(&body);
                    self.commits.insert(id.clone(), info);
                    return Ok(self.commits[&id].as_ref().map(|_| id));
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The commit `id`, read once and cached; `None` when it is missing or
    /// not a commit.
    fn commit(&mut self, id: &ObjectId) -> Result<Option<&CommitInfo>, GitError> {
        if !self.commits.contains_key(id) {
            let info = match self.read(id)? {
                Some((kind, body)) if kind == "commit" => parse_commit(&body),
                _ => None,
            };
            self.commits.insert(id.clone(), info);
        }
        Ok(self.commits[id].as_ref())
    }

    /// Read one object: its type and content, `None` when missing.
    fn read(&mut self, id: &ObjectId) -> Result<Option<(String, Vec<u8>)>, GitError> {
        let io = |source| GitError::Io {
            context: "talking to `git cat-file --batch`".into(),
            source,
        };
        writeln!(self.input, "{id}").map_err(io)?;
        self.input.flush().map_err(io)?;
        let mut header = String::new();
        if self.output.read_line(&mut header).map_err(io)? == 0 {
            return Err(GitError::UnexpectedOutput {
                command: "cat-file --batch".into(),
                detail: "it stopped answering".into(),
            });
        }
        let header = header.trim_end();
        let mut parts = header.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            return Err(unexpected(header));
        };
        if kind == "missing" || kind == "ambiguous" {
            return Ok(None);
        }
        let size: usize = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(header))?;
        if name != id.as_str() {
            return Err(unexpected(header));
        }
        let kind = kind.to_owned();
        let mut body = vec![0u8; size + 1];
        self.output.read_exact(&mut body).map_err(io)?;
        body.pop(); // the newline after the content
        Ok(Some((kind, body)))
    }
}

impl Drop for Ancestry {
    fn drop(&mut self) {
        // Closing stdin ends cat-file; kill it if it is stuck.
        let _ = self.input.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unexpected(header: &str) -> GitError {
    GitError::UnexpectedOutput {
        command: "cat-file --batch".into(),
        detail: bounded(header, 200),
    }
}

/// Parents and committer time of a commit object's content.
fn parse_commit(body: &[u8]) -> Option<CommitInfo> {
    let mut parents = Vec::new();
    let mut time = 0;
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() {
            break; // end of the header
        }
        if let Some(p) = line.strip_prefix(b"parent ") {
            parents.push(std::str::from_utf8(p).ok()?.parse().ok()?);
        } else if let Some(c) = line.strip_prefix(b"committer ") {
            // "Name <email> <seconds> <zone>"
            let text = String::from_utf8_lossy(c);
            let mut fields = text.rsplitn(3, ' ');
            let _zone = fields.next();
            time = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        }
    }
    Some(CommitInfo { parents, time })
}

/// Whether `a` is an ancestor of (or equal to) `b`
/// (`git merge-base --is-ancestor`, one process per question; see
/// [`Ancestry`] for many questions).
pub fn is_ancestor(git_dir: &Path, a: &ObjectId, b: &ObjectId) -> Result<bool, GitError> {
    let out = run(
        git_at(
            git_dir,
            &["merge-base", "--is-ancestor", a.as_str(), b.as_str()],
        ),
        "merge-base --is-ancestor",
        None,
    )?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed("merge-base --is-ancestor", &out)),
    }
}

/// Whether the object exists in the repository (one process; see
/// [`super::present_objects`] for many). Errors count as "no".
pub fn has_object(git_dir: &Path, id: &ObjectId) -> bool {
    run(
        git_at(git_dir, &["cat-file", "-e", id.as_str()]),
        "cat-file -e",
        None,
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}
