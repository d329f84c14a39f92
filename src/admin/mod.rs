//! The admin socket: how operators and tools steer a running node.
//!
//! Owns the wire protocol (newline-delimited JSON: one request line, then
//! event lines for commands that stream, then one reply line; the
//! [`Command`] type is shared by server and client), the Unix socket server
//! ([`server`]) and the client ([`client`]). Nothing here survives a
//! restart.

mod client;
mod server;
mod transfer;

pub use crate::api::*;
pub use client::{AdminClient, SOCKET_NAME, SYSTEM_SOCKET, locate_socket};
pub use server::{Executor, PackBody, PublishRequest, bind, serve};
pub use transfer::{LocalPublish, PackProgress, current_git_dir};

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{git::RefSet, repo_id::RepoId};

/// Longest request line the node accepts, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;
/// Longest reply line the client accepts, in bytes (a `list` of many
/// thousands of repositories is several megabytes).
pub const MAX_REPLY_LINE: usize = 256 * 1024 * 1024;
/// How long the client waits for quick commands.
pub const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client waits for commands that move repository content.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest wait `replicas` accepts (`timeout_secs`), in seconds: a day.
pub const MAX_REPLICAS_TIMEOUT_SECS: u64 = 24 * 3600;
/// Most peers `replicas` waits for (`count`): a node keeps what at most
/// this many peers of a repository hold, so no more can ever be counted.
pub const MAX_REPLICAS_COUNT: u32 = 64;

/// Errors of the admin socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another node is listening on the socket.
    #[error(
        "admin socket {0} is in use by a running knotd; stop it first or set another admin_socket"
    )]
    SocketInUse(PathBuf),
    /// The configured socket group does not exist.
    #[error(
        "admin_socket_group {0:?} does not exist; create it (groupadd {0}) or change the setting"
    )]
    NoSuchGroup(String),
    /// The client may not use the socket.
    #[error(
        "permission denied on {path}: ask the node's operator to add you to group {group} (then log in again)"
    )]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// The socket's group.
        group: String,
    },
    /// The socket could not be created.
    #[error("cannot create admin socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The client could not reach the node.
    #[error(
        "cannot reach knotd at {path}: {source}; is the node running? start it with `knotd run`, or point --socket / KNOT_SOCKET at its admin socket"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("admin socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The node did not answer in time.
    #[error("knotd did not answer within {0:?}")]
    Timeout(Duration),
    /// A line was not valid protocol JSON.
    #[error("malformed admin message: {0}")]
    Protocol(String),
    /// The node answered with an error.
    #[error("{0}")]
    Remote(String),
    /// Work on the client's side (its git repository) failed.
    #[error("{0}")]
    Local(String),
    /// A number in a request is beyond its limit.
    #[error("{command}: {field} {value} is over the limit of {limit} {unit}; ask for less")]
    OverLimit {
        /// The command.
        command: &'static str,
        /// The field.
        field: &'static str,
        /// The value sent.
        value: u64,
        /// The most accepted.
        limit: u64,
        /// What the numbers count.
        unit: &'static str,
    },
}

/// One admin request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Start tracking a repository.
    AddRepo {
        /// The repository.
        repo_id: RepoId,
        /// The owner's PDS URL.
        #[serde(default)]
        pds: Option<String>,
        /// The record's AT URI, `at://<did>/<collection>/<rkey>`.
        #[serde(default)]
        record: Option<String>,
        /// Endpoint tickets of peers to bootstrap from.
        #[serde(default)]
        peers: Vec<String>,
    },
    /// Stop tracking a repository and unpin its blobs.
    RemoveRepo {
        /// The repository.
        repo_id: RepoId,
    },
    /// Stop trusting a peer the operator named for a repository.
    RemovePeer {
        /// The repository.
        repo_id: RepoId,
        /// The peer's node id.
        node_id: String,
    },
    /// List tracked repositories.
    List,
    /// Node status.
    Status,
    /// Known peers of a repository.
    Peers {
        /// The repository.
        repo_id: RepoId,
    },
    /// A ticket other nodes can dial.
    Ticket,
    /// Publish a new state: the complete ref state (`refs`) and, after the
    /// request line, a git pack with the objects the node lacks, up to the
    /// end of the client's side of the connection (nothing: no new
    /// objects). An untracked repository is added first. No file path
    /// crosses the socket: the client packs, the node indexes the pack in a
    /// temporary repository of its own.
    Publish {
        /// The repository.
        repo_id: RepoId,
        /// The state to publish.
        refs: RefSet,
        /// Accept updates that are not fast-forwards.
        #[serde(default)]
        force: bool,
        /// Refuse unless the current manifest is this one (hex), so that
        /// concurrent publishers cannot overwrite each other.
        #[serde(default)]
        expected_manifest: Option<String>,
    },
    /// The ref state the node holds for a repository (from its manifest).
    Refs {
        /// The repository.
        repo_id: RepoId,
    },
    /// Serve `git upload-pack` for a repository: after a `bridge` reply the
    /// connection carries the git pack protocol both ways.
    UploadPack {
        /// The repository.
        repo_id: RepoId,
        /// The client's `GIT_PROTOCOL` (e.g. `version=2`).
        #[serde(default)]
        protocol: Option<String>,
    },
    /// Fetch the record and content now, and materialize the repository.
    Sync {
        /// The repository.
        repo_id: RepoId,
    },
    /// Change the seeding policy for a DID or repository id.
    Policy {
        /// Allow, block, or clear.
        rule: PolicyRule,
        /// A DID or a repository id.
        target: String,
    },
    /// Show the seeding policy.
    PolicyShow,
    /// Set a repository's storage limit (`None`: the node's quotas apply).
    SetQuota {
        /// The repository.
        repo_id: RepoId,
        /// Most bytes of packs its state may have.
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    /// Wait until `count` peers other than this node announce the state held.
    Replicas {
        /// The repository.
        repo_id: RepoId,
        /// How many.
        count: u32,
        /// How long to wait, in seconds.
        timeout_secs: u64,
    },
    /// Stream events (of one repository, or all) until the client leaves.
    /// The first line says the stream is set up, so a client can watch a
    /// command it sends next on another connection.
    Watch {
        /// Only this repository's events.
        #[serde(default)]
        repo_id: Option<RepoId>,
    },
    /// Track every repository an identity (DID or handle) lists in its
    /// `app.knot.repo` records, now and as they change.
    Follow {
        /// A DID or a handle.
        identity: String,
    },
    /// Stop following an identity and remove the repositories it brought.
    Unfollow {
        /// A DID or a handle.
        identity: String,
    },
    /// Mirror a git repository: fetch it on a schedule and publish what it
    /// holds as the states of `repo_id`, signed by this node.
    Mirror {
        /// A git URL (`https://`, `http://`, `git://`; a local path when the
        /// configuration allows).
        source: String,
        /// The repository id to publish under; optional for a Tangled knot's
        /// URL (`https://<knot>/<did>/<name>`), which names it.
        #[serde(default)]
        repo_id: Option<RepoId>,
    },
    /// Stop mirroring a repository and remove it.
    Unmirror {
        /// The repository.
        repo_id: RepoId,
    },
    /// List the mirrors and how their fetches go.
    Mirrors,
    /// Fetch a mirror's upstream now.
    MirrorSync {
        /// The repository.
        repo_id: RepoId,
    },
    /// Check that every blob of the held state of one repository (or of
    /// all) is stored complete and pinned; rebuild what is missing from the
    /// materialized copy, else fetch it again from peers.
    Verify {
        /// Only this repository.
        #[serde(default)]
        repo_id: Option<RepoId>,
    },
}

impl Command {
    /// How long a client waits for each line of the answer (`None`: forever).
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Command::Watch { .. } => None,
            Command::Replicas { timeout_secs, .. } => {
                Some(Duration::from_secs(*timeout_secs).saturating_add(QUICK_TIMEOUT))
            }
            Command::Publish { .. }
            | Command::Sync { .. }
            | Command::Follow { .. }
            | Command::Verify { .. }
            | Command::Unmirror { .. }
            | Command::MirrorSync { .. } => Some(LONG_TIMEOUT),
            _ => Some(QUICK_TIMEOUT),
        }
    }

    /// The repository the command is about, if one.
    pub fn repo_id(&self) -> Option<&RepoId> {
        match self {
            Command::AddRepo { repo_id, .. }
            | Command::RemoveRepo { repo_id }
            | Command::RemovePeer { repo_id, .. }
            | Command::Peers { repo_id }
            | Command::Publish { repo_id, .. }
            | Command::Refs { repo_id }
            | Command::UploadPack { repo_id, .. }
            | Command::Sync { repo_id }
            | Command::SetQuota { repo_id, .. }
            | Command::Replicas { repo_id, .. }
            | Command::Unmirror { repo_id }
            | Command::MirrorSync { repo_id } => Some(repo_id),
            Command::Mirror { repo_id, .. } => repo_id.as_ref(),
            Command::Watch { repo_id } | Command::Verify { repo_id } => repo_id.as_ref(),
            Command::List
            | Command::Status
            | Command::Ticket
            | Command::Policy { .. }
            | Command::PolicyShow
            | Command::Follow { .. }
            | Command::Unfollow { .. }
            | Command::Mirrors => None,
        }
    }

    /// Check every duration and count the command carries against its
    /// limit, so that no value reaches the node that it cannot wait for or
    /// count ([`MAX_REPLICAS_TIMEOUT_SECS`], [`MAX_REPLICAS_COUNT`]). The
    /// error names the field and its limit. Sizes (`set-quota`) are bytes
    /// compared with other sizes and take any value.
    pub fn check_limits(&self) -> Result<(), AdminError> {
        if let Command::Replicas {
            count,
            timeout_secs,
            ..
        } = self
        {
            let over = |field, value, limit, unit| AdminError::OverLimit {
                command: "replicas",
                field,
                value,
                limit,
                unit,
            };
            if *count > MAX_REPLICAS_COUNT {
                return Err(over(
                    "count",
                    u64::from(*count),
                    u64::from(MAX_REPLICAS_COUNT),
                    "peers (the peers whose state a node keeps per repository)",
                ));
            }
            if *timeout_secs > MAX_REPLICAS_TIMEOUT_SECS {
                return Err(over(
                    "timeout_secs",
                    *timeout_secs,
                    MAX_REPLICAS_TIMEOUT_SECS,
                    "seconds (a day)",
                ));
            }
        }
        Ok(())
    }

    /// Whether a byte stream follows the request line (until the client
    /// closes its side).
    pub fn has_body(&self) -> bool {
        matches!(self, Command::Publish { .. })
    }

    /// Whether the command streams events, and of which repository
    /// (`Some(None)`: all).
    pub fn streamed_events(&self) -> Option<Option<String>> {
        match self {
            Command::Watch { repo_id } => Some(repo_id.as_ref().map(|r| r.to_string())),
            _ => None,
        }
    }
}

/// Parse one request line; a command whose numbers are over their limits
/// is refused ([`Command::check_limits`]).
pub fn parse_command(line: &[u8]) -> Result<Command, AdminError> {
    let command: Command =
        serde_json::from_slice(line).map_err(|e| AdminError::Protocol(e.to_string()))?;
    command.check_limits()?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_wire_format() {
        let c =
            parse_command(br#"{"cmd":"add-repo","repo_id":"did:plc:a/b","peers":["t1"]}"#).unwrap();
        assert_eq!(
            c,
            Command::AddRepo {
                repo_id: RepoId::parse("did:plc:a/b").unwrap(),
                pds: None,
                record: None,
                peers: vec!["t1".into()],
            }
        );
        assert_eq!(
            parse_command(br#"{"cmd":"status"}"#).unwrap(),
            Command::Status
        );
        let json = serde_json::to_string(&Command::List).unwrap();
        assert_eq!(json, r#"{"cmd":"list"}"#);
    }

    #[test]
    fn bad_commands_are_rejected_with_reason() {
        for (line, needle) in [
            (
                &br#"{"cmd":"add-repo","repo_id":"did:plc:a/../x"}"#[..],
                "name",
            ),
            (br#"{"cmd":"explode"}"#, "explode"),
            (
                br#"{"cmd":"remove-repo","repo_id":"did:plc:a/b","extra":1}"#,
                "extra",
            ),
            (br#"not json"#, "expected"),
            (br#"{"cmd":"remove-repo"}"#, "repo_id"),
        ] {
            let err = parse_command(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn numbers_over_their_limits_are_refused_naming_field_and_limit() {
        let replicas = |count: &str, timeout: &str| {
            let line = format!(
                r#"{{"cmd":"replicas","repo_id":"did:plc:a/b","count":{count},"timeout_secs":{timeout}}}"#
            );
            parse_command(line.as_bytes()).map_err(|e| e.to_string())
        };
        for (count, timeout) in [("0", "0"), ("1", "1"), ("64", "86400")] {
            assert!(replicas(count, timeout).is_ok(), "{count} {timeout}");
        }
        for (count, timeout, needles) in [
            ("65", "1", &["count 65", "limit of 64"][..]),
            ("4294967295", "1", &["count 4294967295", "limit of 64"]),
            ("1", "86401", &["timeout_secs 86401", "limit of 86400"]),
            ("1", "100000000", &["timeout_secs 100000000", "86400"]),
            (
                "1",
                "18446744073709551615",
                &["timeout_secs 18446744073709551615", "86400"],
            ),
            // Not a number of the field's type at all.
            ("4294967296", "1", &["malformed", "4294967296"]),
            ("1", "18446744073709551616", &["malformed"]),
            ("-1", "1", &["malformed", "-1"]),
            ("1", "-1", &["malformed", "-1"]),
            ("1", "1e300", &["malformed"]),
        ] {
            let err = replicas(count, timeout).unwrap_err();
            for needle in needles {
                assert!(err.contains(needle), "{count} {timeout}: {err}");
            }
        }
        for max_bytes in ["0", "18446744073709551615", "null"] {
            let line =
                format!(r#"{{"cmd":"set-quota","repo_id":"did:plc:a/b","max_bytes":{max_bytes}}}"#);
            assert!(parse_command(line.as_bytes()).is_ok(), "{max_bytes}");
        }
        let line =
            r#"{"cmd":"set-quota","repo_id":"did:plc:a/b","max_bytes":18446744073709551616}"#;
        assert!(parse_command(line.as_bytes()).is_err());
    }

    #[test]
    fn the_fuzz_seeds_parse_or_are_refused_with_a_reason() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/admin_command");
        let mut extremes = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            if let Err(e) = parse_command(&bytes) {
                assert!(!e.to_string().is_empty());
            }
            extremes +=
                usize::from(String::from_utf8_lossy(&bytes).contains("18446744073709551615"));
        }
        assert!(extremes >= 2, "the seeds hold the extreme values");
    }

    #[test]
    fn reply_wire_format() {
        let r = Reply::Error("nope".into());
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"error":"nope"}"#);
        let r = Reply::Ok(Payload::Ticket { ticket: "t".into() });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"kind":"ticket","ticket":"t"}}"#
        );
    }
}
