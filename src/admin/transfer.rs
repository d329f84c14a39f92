//! The client side of moving repository content over the admin socket:
//! publishing packs on the client (the node never opens a client's path)
//! and fetching through `git upload-pack` run by the node.
//!
//! A publish asks the node which refs it holds, packs with
//! `git pack-objects --revs --thin` in the client's repository everything
//! reachable from the new refs but not from those, and streams the pack
//! after the request line; the node indexes it in a temporary repository of
//! its own and publishes from there.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::{
    io::{AsyncRead, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::{
    AdminClient, AdminError, Command, LONG_TIMEOUT, MAX_REPLY_LINE, Payload, PublishReport,
    QUICK_TIMEOUT, RefsReport, Reply,
    client::connect,
    server::{read_line, write_line},
};
use crate::{
    git::{self, ObjectId, RefSet},
    repo_id::RepoId,
};

/// How a publish shows git's packing progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PackProgress {
    /// Quiet; git's errors are collected for the error message.
    #[default]
    Quiet,
    /// git's progress on the client's stderr.
    Stderr,
}

/// A publish built on the client.
#[derive(Debug, Clone)]
pub struct LocalPublish<'a> {
    /// The client's git directory.
    pub git_dir: &'a Path,
    /// The complete ref state to publish.
    pub refs: &'a RefSet,
    /// Objects the node must hold afterwards (the new ref values).
    pub tips: &'a [ObjectId],
    /// What the node holds now (its objects are left out of the pack).
    pub remote: &'a RefSet,
    /// Accept updates that are not fast-forwards.
    pub force: bool,
    /// Refuse unless the node's manifest is still this one.
    pub expected_manifest: Option<String>,
    /// Whether to show git's packing progress.
    pub progress: PackProgress,
}

impl AdminClient {
    /// The ref state the node holds for `repo_id`.
    pub async fn refs(&self, repo_id: &RepoId) -> Result<RefsReport, AdminError> {
        let command = Command::Refs {
            repo_id: repo_id.clone(),
        };
        match self.call(&command).await? {
            Payload::Refs(report) => Ok(report),
            other => Err(AdminError::Protocol(format!(
                "knotd answered refs with an unexpected reply: {other:?}"
            ))),
        }
    }

    /// Publish the git repository at `path` (on the client's side) as
    /// `repo_id`'s new state: all its refs and `HEAD`, as `git push
    /// --mirror` would. A concurrent publish on the node makes this fail
    /// rather than overwrite it.
    pub async fn publish_repository(
        &self,
        repo_id: &RepoId,
        path: &Path,
        force: bool,
        progress: PackProgress,
    ) -> Result<PublishReport, AdminError> {
        let local = |e: git::GitError| AdminError::Local(e.to_string());
        let path_owned = path.to_path_buf();
        let (git_dir, refs) = tokio::task::spawn_blocking(move || {
            let git_dir = git::open_repo(&path_owned)?;
            let refs = git::read_refs(&git_dir)?;
            Ok::<_, git::GitError>((git_dir, refs))
        })
        .await
        .map_err(|e| AdminError::Local(e.to_string()))?
        .map_err(local)?;
        let remote = match self.refs(repo_id).await {
            Ok(report) => report,
            // A repository the node does not track yet starts empty.
            Err(AdminError::Remote(message)) if message.contains("is not tracked") => RefsReport {
                repo_id: repo_id.to_string(),
                manifest: None,
                refs: RefSet::default(),
            },
            Err(e) => return Err(e),
        };
        let tips = refs.tips();
        self.publish_local(
            repo_id,
            LocalPublish {
                git_dir: &git_dir,
                refs: &refs,
                tips: &tips,
                remote: &remote.refs,
                force,
                expected_manifest: remote.manifest.clone(),
                progress,
            },
        )
        .await
    }

    /// Pack what the node lacks in the client's repository and publish.
    pub async fn publish_local(
        &self,
        repo_id: &RepoId,
        publish: LocalPublish<'_>,
    ) -> Result<PublishReport, AdminError> {
        let git_dir = publish.git_dir.to_path_buf();
        let remote_tips = publish.remote.tips();
        let exclude = {
            let git_dir = git_dir.clone();
            tokio::task::spawn_blocking(move || git::present_objects(&git_dir, &remote_tips))
                .await
                .map_err(|e| AdminError::Local(e.to_string()))?
                .map_err(|e| AdminError::Local(e.to_string()))?
        };
        let wanted: Vec<&ObjectId> = publish
            .tips
            .iter()
            .filter(|id| !exclude.contains(*id))
            .collect();
        let command = Command::Publish {
            repo_id: repo_id.clone(),
            refs: publish.refs.clone(),
            force: publish.force,
            expected_manifest: publish.expected_manifest.clone(),
        };
        if wanted.is_empty() {
            return self.publish_pack(&command, None).await;
        }
        let mut input = String::new();
        for id in &wanted {
            input.push_str(id.as_str());
            input.push('\n');
        }
        for id in &exclude {
            input.push('^');
            input.push_str(id.as_str());
            input.push('\n');
        }
        let mut cmd = tokio::process::Command::new("git");
        for var in git::REPO_LOCATING_ENV {
            cmd.env_remove(var);
        }
        cmd.env("GIT_DIR", &git_dir)
            .args([
                "pack-objects",
                "--revs",
                "--thin",
                "--stdout",
                "--delta-base-offset",
            ])
            .arg(match publish.progress {
                PackProgress::Quiet => "-q",
                PackProgress::Stderr => "--progress",
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match publish.progress {
                PackProgress::Quiet => Stdio::piped(),
                PackProgress::Stderr => Stdio::inherit(),
            })
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| AdminError::Local(format!("cannot run git pack-objects: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feeder = tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let stderr = child.stderr.take().map(|mut err| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut err, &mut buf).await;
                buf
            })
        });
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let sent = self.publish_pack(&command, Some(&mut stdout)).await;
        // Nobody reads the pack any more: close it, so that git cannot block
        // on a full pipe. When the node refused (it stops reading early),
        // its reply is the error, and git is stopped.
        drop(stdout);
        if sent.is_err() {
            let _ = child.kill().await;
            feeder.abort();
            return sent;
        }
        let _ = feeder.await;
        let status = child
            .wait()
            .await
            .map_err(|e| AdminError::Local(format!("waiting for git pack-objects: {e}")))?;
        if !status.success() {
            let text = match stderr {
                Some(task) => String::from_utf8_lossy(&task.await.unwrap_or_default())
                    .trim()
                    .to_string(),
                None => String::new(),
            };
            return Err(AdminError::Local(format!(
                "git pack-objects failed in {} ({status}): {text}",
                git_dir.display()
            )));
        }
        sent
    }

    /// Send a `publish` request followed by `pack` (if any), end the
    /// client's side, and wait for the reply.
    pub async fn publish_pack(
        &self,
        command: &Command,
        pack: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    ) -> Result<PublishReport, AdminError> {
        let stream = connect(self.socket()).await?;
        let (read, mut write) = stream.into_split();
        write_line(&mut write, command).await?;
        // The node may refuse before reading everything; its reply then
        // says why, so a broken pipe here is not the error to report.
        let sent = match pack {
            Some(pack) => tokio::io::copy(pack, &mut write).await.map(|_| ()),
            None => Ok(()),
        };
        let _ = write.shutdown().await;
        let mut reader = BufReader::new(read);
        let line = tokio::time::timeout(LONG_TIMEOUT, read_line(&mut reader, MAX_REPLY_LINE))
            .await
            .map_err(|_| AdminError::Timeout(LONG_TIMEOUT))?;
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => {
                return Err(match sent {
                    Err(e) => AdminError::Io(e),
                    Ok(()) => {
                        AdminError::Protocol("knotd closed the connection without a reply".into())
                    }
                });
            }
        };
        let reply: Reply =
            serde_json::from_slice(&line).map_err(|e| AdminError::Protocol(e.to_string()))?;
        match reply {
            Reply::Ok(Payload::Published(report)) => Ok(report),
            Reply::Ok(other) => Err(AdminError::Protocol(format!(
                "knotd answered publish with an unexpected reply: {other:?}"
            ))),
            Reply::Error(message) => Err(AdminError::Remote(message)),
        }
    }

    /// Ask the node to run `git upload-pack` for `repo_id`; returns the
    /// connection, which from here on carries the git pack protocol.
    pub async fn upload_pack(
        &self,
        repo_id: &RepoId,
        protocol: Option<String>,
    ) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), AdminError> {
        let stream: UnixStream = connect(self.socket()).await?;
        let (read, mut write) = stream.into_split();
        let command = Command::UploadPack {
            repo_id: repo_id.clone(),
            protocol,
        };
        write_line(&mut write, &command).await?;
        let mut reader = BufReader::new(read);
        let line = tokio::time::timeout(QUICK_TIMEOUT, read_line(&mut reader, MAX_REPLY_LINE))
            .await
            .map_err(|_| AdminError::Timeout(QUICK_TIMEOUT))??
            .ok_or_else(|| {
                AdminError::Protocol("knotd closed the connection without a reply".into())
            })?;
        let reply: Reply =
            serde_json::from_slice(&line).map_err(|e| AdminError::Protocol(e.to_string()))?;
        match reply {
            Reply::Ok(Payload::Bridge) => Ok((reader, write)),
            Reply::Ok(other) => Err(AdminError::Protocol(format!(
                "knotd answered upload-pack with an unexpected reply: {other:?}"
            ))),
            Reply::Error(message) => Err(AdminError::Remote(message)),
        }
    }
}

/// The git directory of the repository the user works in (for
/// `git-remote-knot`, which git runs inside it with `GIT_DIR` set).
pub fn current_git_dir() -> Result<PathBuf, AdminError> {
    if let Some(dir) = std::env::var_os("GIT_DIR").filter(|d| !d.is_empty()) {
        return std::fs::canonicalize(&dir)
            .map_err(|e| AdminError::Local(format!("GIT_DIR {dir:?}: {e}")));
    }
    let dir = std::env::current_dir().map_err(|e| AdminError::Local(e.to_string()))?;
    git::open_repo(&dir).map_err(|e| AdminError::Local(e.to_string()))
}
