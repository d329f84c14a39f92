//! `git-remote-knot`, the git remote helper for `knot://<did>/<name>` URLs
//! (see `gitremote-helpers(7)`): the line protocol with git, and a
//! [`Session`] that answers it through the node's admin socket.
//!
//! * Fetch and clone use the `connect` capability: the session asks the
//!   node to sync the repository, then bridges git to `git upload-pack`
//!   run by the node. Any protocol version git asks for works.
//! * Push uses the `push` capability: git has applied its own rules
//!   (fast-forward, tags, fetch first) to the refs `list for-push` showed;
//!   the session applies the accepted updates to the node's ref state
//!   ([`crate::push`]), packs what the node lacks in the user's repository
//!   and streams it to the node, which publishes it.
//!
//! No path crosses the socket: the node may run as another user. Nothing
//! here survives the process.

mod session;

pub use session::{Session, locate};

use crate::{git::RefSet, repo_id::RepoId};

/// Errors of the helper protocol.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    /// The URL is not `knot://<did>/<name>`.
    #[error(
        "invalid knot URL {url:?}: {reason}; use knot://<did>/<name>, e.g. knot://did:plc:abc123/website"
    )]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// git sent a command this helper does not know.
    #[error("unsupported remote helper command {0:?}")]
    Unsupported(String),
    /// A line inside a `push` batch was not a `push` line.
    #[error("unexpected line in a push batch: {0:?}")]
    PushBatch(String),
}

/// Parse the URL git hands over: `knot://<did>/<name>` (or `<did>/<name>`
/// for the `knot::<address>` form). A trailing `/` or `.git` is ignored.
pub fn parse_url(url: &str) -> Result<RepoId, ProtocolError> {
    let rest = url.strip_prefix("knot://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    RepoId::parse(rest).map_err(|e| ProtocolError::Url {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// One command from git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperCommand {
    /// `capabilities`.
    Capabilities,
    /// `option <name> <value>`.
    Option {
        /// The option's name.
        name: String,
        /// Its value.
        value: String,
    },
    /// `list` or `list for-push`.
    List {
        /// Whether git is about to push.
        for_push: bool,
    },
    /// The first line of a `push` batch (`push <spec>`).
    Push(String),
    /// `connect <service>`.
    Connect(String),
    /// A blank line or the end of input: git is done.
    End,
}

impl HelperCommand {
    /// Parse one line (without its line end).
    pub fn parse(line: &str) -> Result<HelperCommand, ProtocolError> {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            return Ok(HelperCommand::End);
        }
        let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
        Ok(match command {
            "capabilities" => HelperCommand::Capabilities,
            "option" => {
                let (name, value) = arg.split_once(' ').unwrap_or((arg, ""));
                HelperCommand::Option {
                    name: name.to_string(),
                    value: value.to_string(),
                }
            }
            "list" => HelperCommand::List {
                for_push: arg == "for-push",
            },
            "push" => HelperCommand::Push(arg.to_string()),
            "connect" => HelperCommand::Connect(arg.to_string()),
            other => return Err(ProtocolError::Unsupported(other.to_string())),
        })
    }
}

/// What this helper can do, as the `capabilities` answer.
pub const CAPABILITIES: &str = "connect\npush\noption\n\n";

/// The options git may set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Show progress.
    pub progress: bool,
    /// 0 is quiet; 1 is the default.
    pub verbosity: u32,
    /// Report what a push would do without doing it.
    pub dry_run: bool,
}

impl Options {
    /// The defaults, with progress when stderr is a terminal.
    pub fn new(progress: bool) -> Self {
        Self {
            progress,
            verbosity: 1,
            dry_run: false,
        }
    }

    /// Whether progress lines are shown.
    pub fn show_progress(&self) -> bool {
        self.progress && self.verbosity > 0
    }

    /// Apply `option <name> <value>`; returns the answer line.
    pub fn set(&mut self, name: &str, value: &str) -> &'static str {
        let flag = |value: &str| match value {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        match name {
            "progress" => match flag(value) {
                Some(v) => {
                    self.progress = v;
                    "ok"
                }
                None => "error progress takes true or false",
            },
            "verbosity" => match value.parse() {
                Ok(v) => {
                    self.verbosity = v;
                    "ok"
                }
                Err(_) => "error verbosity takes a number",
            },
            "dry-run" => match flag(value) {
                Some(v) => {
                    self.dry_run = v;
                    "ok"
                }
                None => "error dry-run takes true or false",
            },
            _ => "unsupported",
        }
    }
}

/// The answer to `list`: one `<id> <ref>` line per ref, `HEAD` as a
/// symbolic ref (`@<target> HEAD`) when its target exists, then a blank
/// line.
pub fn listing(refs: &RefSet) -> String {
    let mut text = String::with_capacity(refs.refs.len() * 60 + 32);
    for (name, id) in &refs.refs {
        text.push_str(&format!("{id} {name}\n"));
    }
    match &refs.head {
        Some(crate::git::Head::Symbolic(target)) if refs.refs.contains_key(target) => {
            text.push_str(&format!("@{target} HEAD\n"));
        }
        Some(crate::git::Head::Detached(id)) => text.push_str(&format!("{id} HEAD\n")),
        _ => {}
    }
    text.push('\n');
    text
}

/// A human-readable byte count.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::Head;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("knot://did:plc:abc/site").unwrap().as_str(),
            "did:plc:abc/site"
        );
        assert_eq!(
            parse_url("knot://did:plc:abc/site.git/").unwrap().as_str(),
            "did:plc:abc/site"
        );
        assert_eq!(
            parse_url("did:web:example.com/x").unwrap().as_str(),
            "did:web:example.com/x"
        );
        for bad in [
            "knot://",
            "knot://did:plc:abc",
            "knot://did:plc:abc/../x",
            "https://x/y",
        ] {
            let err = parse_url(bad).unwrap_err().to_string();
            assert!(err.contains("knot://<did>/<name>"), "{bad}: {err}");
        }
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            HelperCommand::parse("capabilities\n").unwrap(),
            HelperCommand::Capabilities
        );
        assert_eq!(
            HelperCommand::parse("option verbosity 2").unwrap(),
            HelperCommand::Option {
                name: "verbosity".into(),
                value: "2".into()
            }
        );
        assert_eq!(
            HelperCommand::parse("list for-push").unwrap(),
            HelperCommand::List { for_push: true }
        );
        assert_eq!(
            HelperCommand::parse("list").unwrap(),
            HelperCommand::List { for_push: false }
        );
        assert_eq!(
            HelperCommand::parse("push +a:b").unwrap(),
            HelperCommand::Push("+a:b".into())
        );
        assert_eq!(
            HelperCommand::parse("connect git-upload-pack").unwrap(),
            HelperCommand::Connect("git-upload-pack".into())
        );
        assert_eq!(HelperCommand::parse("").unwrap(), HelperCommand::End);
        assert_eq!(
            HelperCommand::parse("fetch 1 2").unwrap_err(),
            ProtocolError::Unsupported("fetch".into())
        );
    }

    #[test]
    fn options_apply() {
        let mut o = Options::new(false);
        assert_eq!(o.set("progress", "true"), "ok");
        assert!(o.show_progress());
        assert_eq!(o.set("verbosity", "0"), "ok");
        assert!(!o.show_progress());
        assert_eq!(o.set("dry-run", "true"), "ok");
        assert!(o.dry_run);
        assert!(o.set("dry-run", "maybe").starts_with("error"));
        assert!(o.set("verbosity", "x").starts_with("error"));
        assert_eq!(o.set("depth", "1"), "unsupported");
    }

    #[test]
    fn listing_shows_head_only_when_its_target_exists() {
        let id = "ab".repeat(20);
        let mut refs = RefSet {
            head: Some(Head::Symbolic("refs/heads/main".into())),
            refs: [("refs/heads/main".to_string(), id.parse().unwrap())]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            listing(&refs),
            format!("{id} refs/heads/main\n@refs/heads/main HEAD\n\n")
        );
        refs.head = Some(Head::Symbolic("refs/heads/gone".into()));
        assert_eq!(listing(&refs), format!("{id} refs/heads/main\n\n"));
        assert_eq!(listing(&RefSet::default()), "\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
