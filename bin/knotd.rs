//! `knotd`: run a knot, or steer a running one through its admin socket.

use std::path::PathBuf;

mod knotd_cli {
    pub mod events;
    pub mod mirrors;
    pub mod print;
}

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use knotd::{
    admin::{self, AdminClient, Command, Payload},
    config::Config,
    repo_id::RepoId,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use knotd_cli::print::print_payload;

#[derive(Parser)]
#[command(
    name = "knotd",
    version,
    about = "A peer-to-peer seeding node for git repositories"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// Config file (TOML); defaults apply to everything it leaves out.
    #[arg(long, env = "KNOTD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides the config file).
    #[arg(long, env = "KNOTD_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// UDP address to bind (repeatable; overrides the config file).
        #[arg(long)]
        bind: Vec<std::net::SocketAddr>,
        /// Relay mode: disabled, default or a relay URL (overrides the config file).
        #[arg(long)]
        relay: Option<String>,
        /// Address discovery: default, off or a pkarr relay URL (overrides the config file).
        #[arg(long, conflicts_with = "no_discovery")]
        discovery: Option<String>,
        /// Turn off address discovery (same as `--discovery off`).
        #[arg(long)]
        no_discovery: bool,
    },
    /// Print a ticket other nodes can dial (asks the running node).
    Ticket(AdminArgs),
    /// Steer a running node.
    Admin {
        #[command(flatten)]
        target: AdminArgs,
        #[command(subcommand)]
        command: AdminCmd,
    },
    /// Index a self-contained pack read from standard input into a
    /// directory with gix-pack; run by the node itself for new
    /// repositories, in a process of its own. Prints
    /// `pack<TAB><name><TAB>connected|unconnected`.
    #[command(hide = true)]
    IndexPack {
        /// The directory that receives `pack-<name>.pack` and `.idx`.
        #[arg(long)]
        pack_dir: PathBuf,
        /// Threads that resolve deltas (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Check that a pack already in a directory names only objects the
    /// directory's packs hold; run by the node itself for each pack of a
    /// new repository after the first, in a process of its own. Prints
    /// `pack<TAB><name><TAB>connected|unconnected`.
    #[command(hide = true)]
    CheckConnected {
        /// The directory of `pack-<name>.idx` and the packs beside it.
        #[arg(long)]
        pack_dir: PathBuf,
        /// The pack's name (40 hex digits).
        #[arg(long)]
        pack: String,
        /// Threads that resolve deltas (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Args, Clone)]
struct AdminArgs {
    /// The node's admin socket (default: from the config / data dir, else
    /// the user's own node, else the system service's /run/knotd/knotd.sock).
    #[arg(long, env = "KNOT_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

impl AdminArgs {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if self.config.config.is_some() || self.config.data_dir.is_some() {
            return Ok(self.config.load()?.admin_socket_path());
        }
        // The user's own node, else the system service's socket.
        Ok(admin::locate_socket()?.0)
    }
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Start tracking a repository.
    AddRepo {
        /// `<did>/<name>`, e.g. did:plc:abc123/website
        repo_id: String,
        /// The owner's PDS URL.
        #[arg(long)]
        pds: Option<String>,
        /// The record, at://<did>/app.knot.repo/<rkey> (default rkey: the name).
        #[arg(long)]
        record: Option<String>,
        /// A peer to bootstrap from: its ticket, or its node id when
        /// discovery can find it (repeatable).
        #[arg(long = "peer")]
        peers: Vec<String>,
    },
    /// Stop tracking a repository.
    RemoveRepo {
        /// `<did>/<name>`
        repo_id: String,
    },
    /// Track every repository an identity (DID or handle) publishes records
    /// for, now and as it adds or deletes them.
    Follow {
        /// A DID (did:plc:…) or a handle (alice.example.com).
        identity: String,
    },
    /// Stop following an identity and remove the repositories it brought.
    Unfollow {
        /// A DID or a handle.
        identity: String,
    },
    /// Stop trusting a peer named with `add-repo --peer` (revokes it now).
    RemovePeer {
        /// `<did>/<name>`
        repo_id: String,
        /// The peer's node id (as `knotd admin peers` shows it).
        node_id: String,
    },
    /// List tracked repositories.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show node status.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show known peers of a repository.
    Peers {
        /// `<did>/<name>`
        repo_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a ticket other nodes can dial.
    Ticket,
    /// Show the refs the node holds for a repository (as `git ls-remote`).
    Refs {
        /// `<did>/<name>`
        repo_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish a local git repository's current state (adds the repository
    /// if it is not tracked yet).
    Publish {
        /// `<did>/<name>`
        repo_id: String,
        /// Path of the git repository to publish.
        path: PathBuf,
        /// Accept updates that rewrite history.
        #[arg(long)]
        force: bool,
        /// Then wait until this many other peers hold the new state.
        #[arg(long)]
        replicas: Option<u32>,
        /// How long to wait for them, in seconds.
        #[arg(long, default_value_t = knotd_cli::events::DEFAULT_REPLICAS_TIMEOUT)]
        timeout: u64,
    },
    /// Fetch the record and content now and materialize the repository.
    Sync {
        /// `<did>/<name>`
        repo_id: String,
        /// Then wait until this many other peers hold the state.
        #[arg(long)]
        replicas: Option<u32>,
        /// How long to wait for them, in seconds.
        #[arg(long, default_value_t = knotd_cli::events::DEFAULT_REPLICAS_TIMEOUT)]
        timeout: u64,
    },
    /// Limit the bytes a repository's state may have (`none`: the node's
    /// quotas apply). A state above the limit is refused before it is fetched.
    SetQuota {
        /// `<did>/<name>`
        repo_id: String,
        /// A size such as `500 MiB` or `2GB`, or `none`.
        size: String,
    },
    /// Show or change the seeding policy: `show`, or `allow|block|clear <did-or-repo>`.
    Policy {
        /// `show`, `allow`, `block` or `clear`.
        action: String,
        /// A DID or `<did>/<name>` (not for `show`).
        target: Option<String>,
    },
    /// Check that every blob of the held state (of one repository, or of
    /// all) is stored and pinned; rebuild or fetch again what is missing.
    /// Exits non-zero when a state could not be made whole.
    Verify {
        /// Only this repository, `<did>/<name>`.
        repo_id: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mirror a git repository (any git URL; a Tangled knot's
    /// https://<knot>/<did>/<name>): fetch it on a schedule and publish it
    /// as a knot state signed by this node.
    Mirror(knotd_cli::mirrors::MirrorArgs),
    /// Stop mirroring a repository and remove it.
    Unmirror {
        /// `<did>/<name>`
        repo_id: String,
    },
    /// List mirrors: their sources, last fetches and errors.
    Mirrors {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a mirror's upstream now and wait for the outcome.
    MirrorSync {
        /// `<did>/<name>`
        repo_id: String,
    },
    /// Print events as they happen (of one repository, or all).
    Watch {
        /// Only this repository, `<did>/<name>`.
        repo_id: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Longest wait for leftover work once the node has stopped.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn parse_repo_id(s: &str) -> Result<RepoId> {
    Ok(RepoId::parse(s)?)
}

/// jemalloc rather than the system allocator: glibc keeps the memory a
/// node frees when it leaves quiet topics (421 against 227 MiB at 10,000
/// repositories, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's background thread returns freed pages on their decay
/// schedule (about 10 s) even when the node allocates nothing; without it,
/// what a burst freed stays resident until the node allocates again (after
/// 10,000 topics were left: 228 MiB with it, BENCHMARKS.md "Memory given
/// back while idle").
fn return_freed_memory_while_idle() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start the allocator's background thread; freed memory is returned only as the node allocates");
    }
}

/// `knotd index-pack`: the pack on standard input into `pack_dir`.
fn index_pack(pack_dir: &std::path::Path, threads: Option<usize>) -> Result<()> {
    use knotd::git::{GIX_CONNECTED, GIX_UNCONNECTED, gix_index};
    let mut stdin = std::io::BufReader::with_capacity(64 * 1024, std::io::stdin().lock());
    let options = gix_index::IndexOptions {
        threads,
        ..Default::default()
    };
    let indexed = gix_index::index_stream(&mut stdin, pack_dir, options)?;
    let verdict = if indexed.connected {
        GIX_CONNECTED
    } else {
        GIX_UNCONNECTED
    };
    println!("pack\t{}\t{verdict}", indexed.name);
    Ok(())
}

/// `knotd check-connected`: whether `pack` in `pack_dir` names only
/// objects that the packs there hold.
fn check_connected(pack_dir: &std::path::Path, pack: &str, threads: Option<usize>) -> Result<()> {
    use knotd::git::{GIX_CONNECTED, GIX_UNCONNECTED, gix_index};
    let options = gix_index::IndexOptions {
        threads,
        ..Default::default()
    };
    let verdict = if gix_index::connected_in_dir(pack_dir, pack, options)? {
        GIX_CONNECTED
    } else {
        GIX_UNCONNECTED
    };
    println!("pack\t{pack}\t{verdict}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Print the chain, skipping causes already spelled out by their parent.
            let mut text = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    text = format!("{text}: {cause}");
                }
            }
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    if let Cmd::IndexPack { pack_dir, threads } = &cli.command {
        return index_pack(pack_dir, *threads);
    }
    if let Cmd::CheckConnected {
        pack_dir,
        pack,
        threads,
    } = &cli.command
    {
        return check_connected(pack_dir, pack, *threads);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("knotd=info,warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Run {
                config,
                bind,
                relay,
                discovery,
                no_discovery,
            } => {
                let mut config = config.load()?;
                if !bind.is_empty() {
                    config.bind = bind;
                }
                if let Some(relay) = relay {
                    config.relay = relay;
                }
                if let Some(discovery) = discovery {
                    config.discovery = knotd::config::Discovery(discovery);
                }
                if no_discovery {
                    config.discovery = knotd::config::Discovery::off();
                }
                run(config).await
            }
            Cmd::Ticket(target) => {
                let payload = AdminClient::new(target.socket()?)
                    .call(&Command::Ticket)
                    .await?;
                print_payload(payload, false);
                Ok(())
            }
            Cmd::Admin { target, command } => admin_command(&target, command).await,
            Cmd::IndexPack { .. } | Cmd::CheckConnected { .. } => unreachable!("handled above"),
        }
    });
    // Work still running (a git process on a blocking thread) gets a bounded
    // time to end; the process exits regardless.
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    result
}

async fn run(config: Config) -> Result<()> {
    return_freed_memory_while_idle();
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        trigger.cancel();
        // A second signal means: stop now.
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(130);
    });
    knotd::node::run(config, shutdown).await?;
    Ok(())
}

async fn admin_command(target: &AdminArgs, command: AdminCmd) -> Result<()> {
    let client = AdminClient::new(target.socket()?);
    // Commands that move content show progress and may wait for replicas.
    let (repo, replicas, timeout) = match &command {
        AdminCmd::Publish {
            repo_id,
            replicas,
            timeout,
            ..
        }
        | AdminCmd::Sync {
            repo_id,
            replicas,
            timeout,
        } => (Some(parse_repo_id(repo_id)?), *replicas, *timeout),
        AdminCmd::Watch { repo_id, json } => {
            let repo = repo_id.as_deref().map(parse_repo_id).transpose()?;
            return knotd_cli::events::watch(&client, repo, *json).await;
        }
        _ => (None, None, 0),
    };
    if let AdminCmd::Publish {
        repo_id,
        path,
        force,
        ..
    } = &command
    {
        // Packed here, on the client's side: the node never opens `path`.
        let repo = parse_repo_id(repo_id)?;
        let report = knotd_cli::events::publish(&client, &repo, path, *force).await?;
        print_payload(Payload::Published(report), false);
        if let Some(count) = replicas {
            let payload = knotd_cli::events::replicas(&client, &repo, count, timeout).await?;
            print_payload(payload, false);
        }
        return Ok(());
    }
    let (command, json) = match command {
        AdminCmd::AddRepo {
            repo_id,
            pds,
            record,
            peers,
        } => (
            Command::AddRepo {
                repo_id: parse_repo_id(&repo_id)?,
                pds,
                record,
                peers,
            },
            false,
        ),
        AdminCmd::RemoveRepo { repo_id } => (
            Command::RemoveRepo {
                repo_id: parse_repo_id(&repo_id)?,
            },
            false,
        ),
        AdminCmd::RemovePeer { repo_id, node_id } => (
            Command::RemovePeer {
                repo_id: parse_repo_id(&repo_id)?,
                node_id,
            },
            false,
        ),
        AdminCmd::Follow { identity } => (Command::Follow { identity }, false),
        AdminCmd::Unfollow { identity } => (Command::Unfollow { identity }, false),
        AdminCmd::List { json } => (Command::List, json),
        AdminCmd::Status { json } => (Command::Status, json),
        AdminCmd::Peers { repo_id, json } => (
            Command::Peers {
                repo_id: parse_repo_id(&repo_id)?,
            },
            json,
        ),
        AdminCmd::Ticket => (Command::Ticket, false),
        AdminCmd::Refs { repo_id, json } => (
            Command::Refs {
                repo_id: parse_repo_id(&repo_id)?,
            },
            json,
        ),
        AdminCmd::Publish { .. } => unreachable!("handled above"),
        AdminCmd::Sync { repo_id, .. } => (
            Command::Sync {
                repo_id: parse_repo_id(&repo_id)?,
            },
            false,
        ),
        AdminCmd::Watch { .. } => unreachable!("handled above"),
        AdminCmd::Mirror(args) => (args.command()?, false),
        AdminCmd::Unmirror { repo_id } => (
            Command::Unmirror {
                repo_id: parse_repo_id(&repo_id)?,
            },
            false,
        ),
        AdminCmd::Mirrors { json } => (Command::Mirrors, json),
        AdminCmd::MirrorSync { repo_id } => (
            Command::MirrorSync {
                repo_id: parse_repo_id(&repo_id)?,
            },
            false,
        ),
        AdminCmd::Verify { repo_id, json } => (
            Command::Verify {
                repo_id: repo_id.as_deref().map(parse_repo_id).transpose()?,
            },
            json,
        ),
        AdminCmd::SetQuota { repo_id, size } => {
            let max_bytes = match size.trim() {
                "none" | "default" => None,
                size => Some(
                    size.parse::<bytesize::ByteSize>()
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "{size:?} is not a size such as `500 MiB` or `none`: {e}"
                            )
                        })?
                        .as_u64(),
                ),
            };
            (
                Command::SetQuota {
                    repo_id: parse_repo_id(&repo_id)?,
                    max_bytes,
                },
                false,
            )
        }
        AdminCmd::Policy { action, target } => {
            let rule = match action.as_str() {
                "show" => None,
                "allow" => Some(admin::PolicyRule::Allow),
                "block" => Some(admin::PolicyRule::Block),
                "clear" => Some(admin::PolicyRule::Clear),
                other => anyhow::bail!(
                    "unknown policy action {other:?}: use show, allow, block or clear"
                ),
            };
            match (rule, target) {
                (None, _) => (Command::PolicyShow, false),
                (Some(rule), Some(target)) => (Command::Policy { rule, target }, false),
                (Some(_), None) => anyhow::bail!("`policy {action}` needs a DID or <did>/<name>"),
            }
        }
    };
    let payload = match &repo {
        Some(repo) => knotd_cli::events::with_progress(&client, repo, &command, false).await?,
        None => client.call(&command).await?,
    };
    let failed_checks = match &payload {
        Payload::Verified(report) => report.repos.iter().filter(|r| !r.ok()).count(),
        _ => 0,
    };
    print_payload(payload, json);
    if failed_checks > 0 {
        anyhow::bail!(
            "{failed_checks} held state(s) could not be made whole; they are retried, see `knotd admin list`"
        );
    }
    if let (Some(repo), Some(count)) = (repo, replicas) {
        let payload = knotd_cli::events::replicas(&client, &repo, count, timeout).await?;
        print_payload(payload, json);
    }
    Ok(())
}
