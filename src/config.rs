//! Node configuration: a TOML file with documented defaults.
//!
//! Owns the config schema and its defaults. Every field may be omitted; the
//! example at `deploy/knotd.example.toml` lists them all. Nothing here is
//! persisted by the node: the file is read once at start.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use crate::api::PolicyDefault;
use crate::git::PackIndexer;

/// The `pack_indexer` setting ([`Config::pack_indexer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PackIndexerChoice {
    /// gix-pack when the knotd executable is known, else git.
    #[default]
    Auto,
    /// gix-pack; the node refuses to start without the knotd executable.
    Gix,
    /// `git index-pack` only.
    Git,
}

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value has the right type but is not usable.
    #[error("config value {field} is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The longest schedule interval accepted, in seconds (a year).
const MAX_INTERVAL_SECS: u64 = 365 * 24 * 3600;

/// Which relay servers to use, resolved from [`Config::relay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayChoice {
    /// No relays: direct addresses only.
    Disabled,
    /// The public relays run by n0.
    Default,
    /// A custom relay server.
    Custom(String),
}

/// How nodes find each other's addresses from a node id alone, resolved from
/// [`Config::discovery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryChoice {
    /// No lookups: peers are dialed only at addresses learned from tickets,
    /// records and gossip.
    Off,
    /// n0's public DNS/pkarr services (publishes this node's relay URL only).
    Default,
    /// A self-hosted pkarr relay (for example `iroh-dns-server`) at this URL:
    /// this node publishes its relay URL and direct addresses there, and
    /// looks peers up there.
    Custom(String),
}

/// The `discovery` setting: `"default"`, `"off"` or the URL of a pkarr relay.
/// The booleans of older config files still load (`true` is `"default"`,
/// `false` is `"off"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery(pub String);

impl Discovery {
    /// Discovery turned off.
    pub fn off() -> Self {
        Self("off".into())
    }
}

impl Serialize for Discovery {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Discovery {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "discovery must be \"default\", \"off\" or a pkarr relay URL (http(s)://...)",
            )
        })? {
            Raw::Bool(true) => Ok(Self("default".into())),
            Raw::Bool(false) => Ok(Self::off()),
            Raw::Text(text) => Ok(Self(text)),
        }
    }
}

/// ATProto settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AtprotoConfig {
    /// Seconds between two polls of a repository's record (default 300).
    pub poll_interval_secs: u64,
    /// Longest wait between polls of a record that keeps reading unchanged,
    /// in seconds (default 3600): the wait doubles from
    /// `poll_interval_secs` after each unchanged read and starts over when
    /// the record changes. At or below `poll_interval_secs`, every record
    /// is polled every `poll_interval_secs`.
    pub max_poll_interval_secs: u64,
    /// Random jitter added to each poll interval, as a fraction (default 0.1).
    pub poll_jitter: f64,
    /// Timeout of one XRPC request in seconds (default 10).
    pub request_timeout_secs: u64,
    /// Longest wait between retries after failures, in seconds (default 3600).
    pub max_backoff_secs: u64,
    /// PLC directory used to resolve `did:plc` documents (default https://plc.directory).
    pub plc_directory: String,
    /// Handle or DID used to write records back to the owner's PDS (optional).
    pub identifier: Option<String>,
    /// File holding the app password for write-back (mode 0600; optional).
    /// The environment variable `KNOTD_APP_PASSWORD` is used when this is unset.
    pub app_password_file: Option<PathBuf>,
    /// Service resolving handles that have no `/.well-known/atproto-did`
    /// (default https://public.api.bsky.app).
    pub handle_resolver: String,
    /// Send credentials to a PDS over plain http (default false: https only).
    /// Only for a PDS on loopback, as in tests.
    pub allow_insecure_http: bool,
}

impl Default for AtprotoConfig {
    fn default() -> Self {
        Self {
            poll_interval_secs: 300,
            max_poll_interval_secs: 3600,
            poll_jitter: 0.1,
            request_timeout_secs: 10,
            max_backoff_secs: 3600,
            plc_directory: "https://plc.directory".into(),
            identifier: None,
            app_password_file: None,
            handle_resolver: "https://public.api.bsky.app".into(),
            allow_insecure_http: false,
        }
    }
}

/// Seeding policy settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// For repositories nobody added explicitly: `"allow"` (default) or
    /// `"deny"`. Allow and block lists are changed with `knotd admin policy`.
    pub default: PolicyDefault,
}

/// Following identities (`knotd admin follow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FollowingConfig {
    /// Most repositories one followed identity may bring, those whose
    /// records were deleted included until they are removed; more are
    /// refused with an event (default 1000).
    pub max_repos_per_identity: usize,
    /// How long a repository whose record a followed identity deleted is
    /// kept (not polled, out of its topic, still served) before it is
    /// removed, in seconds (default 604800: a week).
    pub retired_grace_secs: u64,
}

impl Default for FollowingConfig {
    fn default() -> Self {
        Self {
            max_repos_per_identity: 1000,
            retired_grace_secs: 7 * 24 * 3600,
        }
    }
}

impl FollowingConfig {
    /// The grace period of retired repositories.
    pub fn retired_grace(&self) -> Duration {
        Duration::from_secs(self.retired_grace_secs)
    }
}

/// Read-only smart HTTP git service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve `git clone http://…/<repo_id>` (default false).
    pub enabled: bool,
    /// Address to listen on (default 127.0.0.1:8419).
    pub bind: SocketAddr,
    /// Serve the node's read-only web pages beside git: the repositories
    /// it seeds at `/`, one repository at `/<did>/<name>`, the node at
    /// `/status` (default true; git over HTTP stays on when false).
    pub pages: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: "127.0.0.1:8419".parse().expect("valid default address"),
            pages: true,
        }
    }
}

/// The node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where keys, databases, blobs and materialized repositories live
    /// (default `$XDG_DATA_HOME/knotd`, else `~/.local/share/knotd`).
    pub data_dir: PathBuf,
    /// UDP addresses the iroh endpoint binds (default `0.0.0.0:4919` and `[::]:4919`).
    pub bind: Vec<SocketAddr>,
    /// Relay servers: `"disabled"`, `"default"` or a relay URL (default `"default"`).
    pub relay: String,
    /// Address discovery by node id: `"default"` (n0's DNS/pkarr services),
    /// `"off"`, or the URL of a self-hosted pkarr relay such as
    /// `"https://dns.example.org/pkarr"` (default `"default"`).
    pub discovery: Discovery,
    /// Admin socket path (default `<data_dir>/knotd.sock`).
    pub admin_socket: Option<PathBuf>,
    /// A group whose members may use the admin socket (mode 0660, owned by
    /// the group); without it the socket is 0600, for the daemon's user
    /// only. The socket must then live outside the 0700 data dir, e.g.
    /// `/run/knotd/knotd.sock`.
    pub admin_socket_group: Option<String>,
    /// Consolidate a repository's packs into one when a manifest would exceed
    /// this many packs (default 16).
    pub max_packs: usize,
    /// Longest time one blob transfer from peers may take, however they
    /// behave, in seconds (default 300). Each provider also has its own
    /// progress deadline ([`crate::download::STALL_TIMEOUT`]).
    pub fetch_timeout_secs: u64,
    /// Seconds between two runs of the blob store's garbage collector,
    /// which deletes blobs no repository pins any more (default 300;
    /// fractions allowed).
    pub gc_interval_secs: f64,
    /// Seconds between two checks that every blob of every held state is
    /// stored and pinned (missing ones are rebuilt or fetched again);
    /// states are also checked at start-up and by `knotd admin verify`
    /// (default 86400; 0 turns the schedule off).
    pub verify_interval_secs: u64,
    /// How long a repository's gossip topic stays joined after its last
    /// news (a state published, fetched or adopted from a trusted announcement, its record changed),
    /// in seconds (default 900; 0 keeps every topic joined). A joined topic
    /// costs memory and timers; an asleep repository is still told of new
    /// states directly by its peers and by the resync sweep, and its first
    /// news joins the topic again.
    pub topic_idle_secs: u64,
    /// Longest time one git process (pack, index, repack) may run before it
    /// is killed, in seconds (default 3600).
    pub git_timeout_secs: u64,
    /// Most content jobs (publish, fetch, removal) running at once across
    /// all repositories; the rest wait their turn, an operator's or a git
    /// client's first (default 8).
    pub max_concurrent_jobs: usize,
    /// Of those, most that index large packs at once (a fetch whose new
    /// packs hold [`crate::content::jobs::LARGE_JOB_BYTES`] or more): each runs a `git
    /// index-pack` whose memory grows with the pack; the others wait for
    /// one of them to finish indexing, while small fetches go on. One more
    /// may run for a job someone waits on (an operator, a `git` client),
    /// so it does not queue behind background work (default 2).
    pub max_large_jobs: usize,
    /// Most bytes (of packs) one repository's state may have; a larger state
    /// is refused before it is fetched (default: no limit).
    pub max_repo_bytes: Option<u64>,
    /// Most bytes all repositories' states may have together (default: no
    /// limit).
    pub max_total_bytes: Option<u64>,
    /// What indexes the first pack of a state (a repository new to this
    /// node, or a consolidation's one pack), the largest indexing work it
    /// does: `"auto"` (default) gix-pack, deltas resolved on every core, in
    /// a child process running `knotd index-pack` when the knotd
    /// executable is known (else git); `"gix"` the same, refusing to start
    /// without it; `"git"` always `git index-pack`. Every other pack, and
    /// any pack gix-pack refuses, is indexed by git (and, with gix-pack,
    /// checked by `knotd check-connected` against the packs before it).
    pub pack_indexer: PackIndexerChoice,
    /// The knotd executable that runs `knotd index-pack` (default: the
    /// running program, when it is `knotd`).
    pub indexer_program: Option<PathBuf>,
    /// Which repositories nobody asked for explicitly this node seeds.
    pub policy: PolicyConfig,
    /// ATProto polling and write-back.
    pub atproto: AtprotoConfig,
    /// Following identities.
    pub follow: FollowingConfig,
    /// Read-only smart HTTP.
    pub http: HttpConfig,
    /// Prometheus metrics and health over HTTP.
    pub metrics: MetricsConfig,
    /// Mirroring git repositories from upstreams.
    pub mirror: MirrorConfig,
}

/// Mirroring git repositories from upstreams ([`crate::mirror`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Seconds between two fetches of a mirror's upstream (default 300).
    pub poll_interval_secs: u64,
    /// Fraction of the interval added or taken away at random (default 0.1).
    pub poll_jitter: f64,
    /// Seconds before retrying after a first failure; it doubles with each
    /// further one (default 30).
    pub retry_secs: u64,
    /// Longest wait after failures, in seconds (default 3600).
    pub max_backoff_secs: u64,
    /// Most fetches running against one upstream host (default 2).
    pub max_per_host: usize,
    /// Most fetches running at once (default 4).
    pub max_concurrent: usize,
    /// Seconds a fetch may show no progress before it is stopped (default
    /// 120); a connection that never answers ends after this.
    pub idle_timeout_secs: u64,
    /// Longest time one fetch may take, in seconds (default 3600).
    pub fetch_timeout_secs: u64,
    /// Allow local paths (`/srv/git/x.git`, `file://`) as sources (default
    /// false): the daemon reads them with its own permissions.
    pub allow_local: bool,
    /// Have git check the format of every object as it arrives
    /// (`transfer.fsckObjects`: malformed commits, trees that name `.git`
    /// or `..`, hostile `.gitmodules`), refusing the fetch when one fails
    /// (default false, as `git clone` and the node's other ways of taking
    /// packs; object ids are checked against content either way). It costs
    /// about a quarter more time on a large first fetch.
    pub check_objects: bool,
    /// Mirrors to keep, added at start if missing.
    pub sources: Vec<MirrorSource>,
}

/// One mirror named in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSource {
    /// The git URL.
    pub source: String,
    /// The repository id (optional for a Tangled knot's URL).
    #[serde(default)]
    pub repo_id: Option<crate::repo_id::RepoId>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            poll_interval_secs: 300,
            poll_jitter: 0.1,
            retry_secs: 30,
            max_backoff_secs: 3600,
            max_per_host: 2,
            max_concurrent: 4,
            idle_timeout_secs: 120,
            fetch_timeout_secs: 3600,
            allow_local: false,
            check_objects: false,
            sources: Vec::new(),
        }
    }
}

/// Prometheus metrics settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/health` here (default: off), for example
    /// `127.0.0.1:9419`.
    pub bind: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            bind: vec![
                "0.0.0.0:4919".parse().expect("valid"),
                "[::]:4919".parse().expect("valid"),
            ],
            relay: "default".into(),
            discovery: Discovery("default".into()),
            admin_socket: None,
            admin_socket_group: None,
            max_packs: 16,
            fetch_timeout_secs: 300,
            gc_interval_secs: 300.0,
            verify_interval_secs: 86_400,
            topic_idle_secs: 900,
            git_timeout_secs: crate::git::DEFAULT_TIMEOUT.as_secs(),
            max_concurrent_jobs: 8,
            max_large_jobs: 2,
            max_repo_bytes: None,
            max_total_bytes: None,
            pack_indexer: PackIndexerChoice::Auto,
            indexer_program: None,
            policy: PolicyConfig::default(),
            atproto: AtprotoConfig::default(),
            follow: FollowingConfig::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            mirror: MirrorConfig::default(),
        }
    }
}

/// The default data directory.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("knotd");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/knotd");
    }
    PathBuf::from("knotd-data")
}

impl Config {
    /// Parse a config from TOML text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Load a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// A config for tests and local experiments: loopback only, no relays, no
    /// discovery, a random port.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            bind: vec!["127.0.0.1:0".parse().expect("valid")],
            relay: "disabled".into(),
            discovery: Discovery::off(),
            ..Self::default()
        }
    }

    /// Check values that parse but cannot work.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.relay_choice()?;
        self.discovery_choice()?;
        if self.bind.is_empty() {
            return Err(ConfigError::Invalid {
                field: "bind",
                reason: "at least one address is needed".into(),
            });
        }
        if self.max_packs < 2 {
            return Err(ConfigError::Invalid {
                field: "max_packs",
                reason: "must be at least 2".into(),
            });
        }
        if self.max_concurrent_jobs == 0 {
            return Err(ConfigError::Invalid {
                field: "max_concurrent_jobs",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_large_jobs == 0 {
            return Err(ConfigError::Invalid {
                field: "max_large_jobs",
                reason: "must be at least 1".into(),
            });
        }
        if !(self.gc_interval_secs.is_finite()
            && (0.001..=86_400.0).contains(&self.gc_interval_secs))
        {
            return Err(ConfigError::Invalid {
                field: "gc_interval_secs",
                reason: "must be between 0.001 and 86400 seconds".into(),
            });
        }
        if self.verify_interval_secs > MAX_INTERVAL_SECS {
            return Err(ConfigError::Invalid {
                field: "verify_interval_secs",
                reason: format!("must be at most {MAX_INTERVAL_SECS} seconds (a year)"),
            });
        }
        if self.topic_idle_secs > MAX_INTERVAL_SECS {
            return Err(ConfigError::Invalid {
                field: "topic_idle_secs",
                reason: format!("must be at most {MAX_INTERVAL_SECS} seconds (a year)"),
            });
        }
        if self.atproto.poll_interval_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "atproto.poll_interval_secs",
                reason: "must be at least 1".into(),
            });
        }
        if self.atproto.max_poll_interval_secs > MAX_INTERVAL_SECS {
            return Err(ConfigError::Invalid {
                field: "atproto.max_poll_interval_secs",
                reason: format!("must be at most {MAX_INTERVAL_SECS} seconds (a year)"),
            });
        }
        if self.follow.max_repos_per_identity == 0 {
            return Err(ConfigError::Invalid {
                field: "follow.max_repos_per_identity",
                reason: "must be at least 1".into(),
            });
        }
        let mirror = &self.mirror;
        for (field, value) in [
            ("mirror.poll_interval_secs", mirror.poll_interval_secs),
            ("mirror.retry_secs", mirror.retry_secs),
            ("mirror.idle_timeout_secs", mirror.idle_timeout_secs),
            ("mirror.fetch_timeout_secs", mirror.fetch_timeout_secs),
            ("mirror.max_backoff_secs", mirror.max_backoff_secs),
            ("mirror.max_per_host", mirror.max_per_host as u64),
            ("mirror.max_concurrent", mirror.max_concurrent as u64),
        ] {
            if value == 0 || value > MAX_INTERVAL_SECS {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("must be between 1 and {MAX_INTERVAL_SECS}"),
                });
            }
        }
        if !(0.0..=0.5).contains(&mirror.poll_jitter) {
            return Err(ConfigError::Invalid {
                field: "mirror.poll_jitter",
                reason: "must be between 0 and 0.5".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.atproto.poll_jitter) {
            return Err(ConfigError::Invalid {
                field: "atproto.poll_jitter",
                reason: "must be between 0 and 1".into(),
            });
        }
        self.pack_indexer()?;
        Ok(())
    }

    /// Resolve `pack_indexer` and `indexer_program`.
    pub fn pack_indexer(&self) -> Result<PackIndexer, ConfigError> {
        if self.pack_indexer == PackIndexerChoice::Git {
            return Ok(PackIndexer::Git);
        }
        let program = match &self.indexer_program {
            Some(program) => Some(program.clone()),
            None => std::env::current_exe()
                .ok()
                .filter(|exe| exe.file_name().is_some_and(|name| name == "knotd")),
        };
        match program {
            Some(program) if program.is_file() => Ok(PackIndexer::Gix { program }),
            Some(program) if self.indexer_program.is_some() => Err(ConfigError::Invalid {
                field: "indexer_program",
                reason: format!(
                    "{} is not a file: give the path of the knotd executable",
                    program.display()
                ),
            }),
            _ if self.pack_indexer == PackIndexerChoice::Gix => Err(ConfigError::Invalid {
                field: "pack_indexer",
                reason: "\"gix\" needs the knotd executable: set indexer_program to its path, \
                         or use \"auto\" or \"git\""
                    .into(),
            }),
            _ => Ok(PackIndexer::Git),
        }
    }

    /// Resolve the `relay` setting.
    pub fn relay_choice(&self) -> Result<RelayChoice, ConfigError> {
        match self.relay.as_str() {
            "disabled" => Ok(RelayChoice::Disabled),
            "default" => Ok(RelayChoice::Default),
            url if url.starts_with("https://") || url.starts_with("http://") => {
                Ok(RelayChoice::Custom(url.to_string()))
            }
            other => Err(ConfigError::Invalid {
                field: "relay",
                reason: format!(
                    "{other:?}: use \"disabled\", \"default\" or a relay URL (https://...)"
                ),
            }),
        }
    }

    /// Resolve the `discovery` setting.
    pub fn discovery_choice(&self) -> Result<DiscoveryChoice, ConfigError> {
        match self.discovery.0.as_str() {
            "off" | "disabled" => Ok(DiscoveryChoice::Off),
            "default" => Ok(DiscoveryChoice::Default),
            url if url.starts_with("https://") || url.starts_with("http://") => {
                match reqwest::Url::parse(url) {
                    Ok(parsed) if parsed.host_str().is_some() => {
                        Ok(DiscoveryChoice::Custom(url.to_string()))
                    }
                    Ok(_) => Err(ConfigError::Invalid {
                        field: "discovery",
                        reason: format!("{url:?} has no host"),
                    }),
                    Err(e) => Err(ConfigError::Invalid {
                        field: "discovery",
                        reason: format!("{url:?}: {e}"),
                    }),
                }
            }
            other => Err(ConfigError::Invalid {
                field: "discovery",
                reason: format!(
                    "{other:?}: use \"default\", \"off\" or the URL of a pkarr relay (https://dns.example.org/pkarr)"
                ),
            }),
        }
    }

    /// The admin socket path.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("knotd.sock"))
    }

    /// The blob transfer timeout.
    pub fn fetch_timeout(&self) -> Duration {
        Duration::from_secs(self.fetch_timeout_secs)
    }

    /// How often the blob store collects garbage.
    pub fn gc_interval(&self) -> Duration {
        Duration::from_secs_f64(self.gc_interval_secs)
    }

    /// How often every held state is checked, if on a schedule.
    pub fn verify_interval(&self) -> Option<Duration> {
        (self.verify_interval_secs > 0).then(|| Duration::from_secs(self.verify_interval_secs))
    }

    /// How long a quiet repository's topic stays joined, if topics are left.
    pub fn topic_idle(&self) -> Option<Duration> {
        (self.topic_idle_secs > 0).then(|| Duration::from_secs(self.topic_idle_secs))
    }

    /// The limit for one git process (at least a second).
    pub fn git_timeout(&self) -> Duration {
        Duration::from_secs(self.git_timeout_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.relay_choice().unwrap(), RelayChoice::Default);
        assert_eq!(c.admin_socket_path(), c.data_dir.join("knotd.sock"));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../deploy/knotd.example.toml");
        let c = Config::from_toml(text, Path::new("knotd.example.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/knotd"));
        assert!(!c.http.enabled);
        assert_eq!(c.follow, FollowingConfig::default(), "the defaults shown");
    }

    #[test]
    fn fields_override_defaults() {
        let c = Config::from_toml(
            r#"
            data_dir = "/tmp/k"
            bind = ["127.0.0.1:0"]
            relay = "https://relay.example.org"
            discovery = false
            max_packs = 4
            [atproto]
            poll_interval_secs = 5
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/k"));
        assert_eq!(
            c.relay_choice().unwrap(),
            RelayChoice::Custom("https://relay.example.org".into())
        );
        assert_eq!(c.atproto.poll_interval_secs, 5);
        assert_eq!(c.atproto.request_timeout_secs, 10);
        assert_eq!(c.max_packs, 4);
    }

    #[test]
    fn discovery_takes_default_off_a_url_and_old_booleans() {
        for (text, want) in [
            ("", DiscoveryChoice::Default),
            ("discovery = true", DiscoveryChoice::Default),
            ("discovery = false", DiscoveryChoice::Off),
            ("discovery = \"default\"", DiscoveryChoice::Default),
            ("discovery = \"off\"", DiscoveryChoice::Off),
            (
                "discovery = \"http://10.0.0.1:8080/pkarr\"",
                DiscoveryChoice::Custom("http://10.0.0.1:8080/pkarr".into()),
            ),
        ] {
            let c = Config::from_toml(text, Path::new("x.toml")).unwrap();
            assert_eq!(c.discovery_choice().unwrap(), want, "{text}");
        }
        // What is written back reads the same.
        let c = Config {
            discovery: Discovery("https://dns.example.org/pkarr".into()),
            ..Config::default()
        };
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::from_toml(&text, Path::new("x.toml")).unwrap(), c);
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("relay = \"sometimes\"", "relay"),
            ("discovery = \"dht\"", "discovery"),
            ("discovery = 3", "discovery"),
            ("discovery = \"http://\"", "discovery"),
            ("bogus = 1", "bogus"),
            ("max_packs = 1", "max_packs"),
            ("gc_interval_secs = 0", "gc_interval_secs"),
            ("gc_interval_secs = nan", "gc_interval_secs"),
            ("verify_interval_secs = 99999999999", "verify_interval_secs"),
            ("topic_idle_secs = 99999999999", "topic_idle_secs"),
            ("bind = []", "bind"),
            ("[atproto]\npoll_jitter = 3.0", "poll_jitter"),
            (
                "[follow]\nmax_repos_per_identity = 0",
                "max_repos_per_identity",
            ),
            ("data_dir = 5", "data_dir"),
        ] {
            let err = Config::from_toml(text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
