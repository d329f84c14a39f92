//! The running node: wiring of endpoint, router, stores and subsystems.
//!
//! Owns start-up and shutdown. [`Node::spawn`] creates the data dir, loads the
//! persistent key, opens the database and the blob store, binds one iroh
//! endpoint, and starts a [`Router`] serving iroh-blobs, iroh-gossip and the
//! direct head exchange ([`crate::heads`]), the repository actor
//! ([`crate::knot`]), the ATProto reader ([`crate::reader`]), the admin
//! socket, and, when enabled, read-only smart HTTP ([`crate::http`]).
//! All tasks hang off one cancellation token. On shutdown they stop, gossip
//! topics are left, the router flushes the blob store and closes the
//! endpoint (gossip held up by a peer gets a few seconds, then its
//! connections are closed under it), and the admin socket
//! file is removed. What survives a restart lives in the data dir: the key,
//! `knotd.redb` (repositories, records, peers), `blobs/` (pinned content) and
//! `repos/` (materialized bare repositories).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use iroh::{
    Endpoint, EndpointAddr, EndpointId, RelayMode,
    address_lookup::{AddrFilter, DnsAddressLookup, MemoryLookup, PkarrPublisher, PkarrResolver},
    endpoint::{QuicTransportConfig, presets},
    protocol::Router,
};
use iroh_blobs::{
    BlobsProtocol,
    store::fs::{FsStore, options::Options},
};
use iroh_gossip::{
    net::Gossip,
    proto::{HyparviewConfig, PlumtreeConfig},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    account::{Account, Credentials},
    admin,
    atproto::{AtprotoError, XrpcClient},
    config::{Config, ConfigError, DiscoveryChoice, RelayChoice},
    heads::{self, HeadsProtocol},
    keys::{self, KeyError},
    knot::{Knot, KnotError, KnotHandle, KnotParts, wait_for_addr},
    limits::DropCounters,
    store::{Store, StoreError},
    supervise::Supervised,
};

/// Streams a peer may open to this node at once over one connection.
/// iroh-gossip keeps one stream open per topic and peer, so this is how many
/// repositories this node can share with one peer over gossip; QUIC's
/// default of 100 stalls gossip to a peer at its 101st shared topic.
/// Streams cost memory only once opened.
pub const MAX_INCOMING_STREAMS: u32 = 1 << 14;
/// Longest wait for the router to stop: its protocols (blob store, gossip,
/// heads) and then its endpoint's close. Gossip quits its topics in
/// milliseconds (measured in the soak), but the close waits for every
/// connection's close to be acknowledged, which iroh documents as taking
/// about 3 s for failed connections (a peer killed, a path cut); a node
/// that met such peers needs that long every time it stops. After this,
/// the endpoint is closed beside the router (see [`ENDPOINT_CLOSE`]).
const PROTOCOLS_SHUTDOWN: Duration = Duration::from_secs(8);
/// After that, the longest wait for the endpoint to close its connections
/// (given up by QUIC after about three probe timeouts, about 3 s) and for
/// the protocols to finish.
const ENDPOINT_CLOSE: Duration = Duration::from_secs(5);
/// How often each joined gossip topic drops expired messages from its
/// caches. iroh-gossip arms this timer per topic (default every second), so a
/// node with 10,000 repositories woke 10,000 times a second with nothing to
/// do. Messages are still kept [`PlumtreeConfig::message_cache_retention`]
/// (30 s) at least; an announcement is a few hundred bytes, so holding them
/// up to this much longer costs little.
pub const GOSSIP_CACHE_EVICT_INTERVAL: Duration = Duration::from_secs(60);
/// How often each joined topic swaps part of its view of the swarm with a
/// neighbour (HyParView's shuffle; default every minute). Every shuffle is a
/// message to a peer per topic: at the default, 10,000 repositories sent
/// 166 a second to an otherwise idle peer. The cost: a topic in a swarm
/// larger than its active view refreshes its passive view, from which it
/// replaces a neighbour that fails, ten times less often. A repository's
/// swarm is mostly its few seeders, which the node also learns from
/// records and announcements, and a topic left without neighbours is
/// dialed again by the core's rejoin sweep.
pub const GOSSIP_SHUFFLE_INTERVAL: Duration = Duration::from_secs(600);

/// Errors starting or stopping a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The config cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data dir could not be prepared.
    #[error("cannot prepare data dir {path}: {source}; check that it is writable by this user")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The mirror service could not start (a configured source is refused).
    #[error("cannot start mirroring: {0}")]
    Mirror(crate::mirror::MirrorError),
    /// The blob store could not be opened.
    #[error("cannot open blob store in {path}: {message}")]
    Blobs {
        /// The blob directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The endpoint could not bind.
    #[error("cannot bind the iroh endpoint on {addrs}: {message}; is the port in use?")]
    Bind {
        /// The configured addresses.
        addrs: String,
        /// What went wrong.
        message: String,
    },
    /// The admin socket could not be created.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// The smart HTTP listener could not bind.
    #[error("cannot listen for smart HTTP on {addr}: {source}; change [http] bind or disable it")]
    Http {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The metrics listener could not bind.
    #[error("cannot listen for metrics on {addr}: {source}; change [metrics] bind or remove it")]
    Metrics {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// ATProto credentials are configured but unusable.
    #[error(transparent)]
    Atproto(#[from] AtprotoError),
    /// The repository actor could not start.
    #[error(transparent)]
    Knot(#[from] KnotError),
    /// Shutdown did not complete cleanly.
    #[error("shutdown failed: {0}")]
    Shutdown(String),
    /// A core task stopped on its own: the node cannot go on.
    #[error("{0}; knotd stopped so that its supervisor (systemd) restarts it")]
    TaskDied(String),
}

/// A running node. Dropping it without [`Node::shutdown`] aborts its tasks.
pub struct Node {
    knot: KnotHandle,
    endpoint: Endpoint,
    router: Router,
    lookup: MemoryLookup,
    blobs: FsStore,
    cancel: CancellationToken,
    tasks: Supervised,
    admin_socket: PathBuf,
    data_dir: PathBuf,
    http_addr: Option<std::net::SocketAddr>,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Node {
    /// Start a node with `config`; it stops when `cancel` fires and
    /// [`Node::shutdown`] is awaited.
    pub async fn spawn(config: Config, cancel: CancellationToken) -> Result<Self, NodeError> {
        config.check()?;
        // One limit for the process's git work (nodes in one process share it).
        crate::git::set_timeout(config.git_timeout());
        let data_dir = config.data_dir.clone();
        prepare_dir(&data_dir)?;
        let secret_key = keys::load_or_create(&data_dir.join("secret.key"))?;
        let store = Store::open(&data_dir.join("knotd.redb"))?;

        let lookup = MemoryLookup::new();
        let endpoint = bind_endpoint(&config, secret_key, &lookup).await?;
        info!(node_id = %endpoint.id(), "endpoint bound");

        let blob_dir = data_dir.join("blobs");
        let mut options = Options::new(&blob_dir);
        let gc_guard = crate::content::GcGuard::new();
        options.gc = Some(gc_guard.config(config.gc_interval()));
        let blobs = FsStore::load_with_opts(blob_dir.join("blobs.db"), options)
            .await
            .map_err(|e| NodeError::Blobs {
                path: blob_dir.clone(),
                message: e.to_string(),
            })?;

        let gossip = gossip_builder().spawn(endpoint.clone());
        let (heads_tx, heads_rx) = tokio::sync::mpsc::channel(256);
        let drops = std::sync::Arc::new(DropCounters::default());
        let metrics = config
            .metrics
            .bind
            .map(|_| std::sync::Arc::new(crate::metrics::Metrics::new()));
        let provider_events = metrics.clone().map(crate::metrics::provider_events);
        let heads_protocol = HeadsProtocol::new(heads_tx, endpoint.clone(), drops.clone());
        let heads_limiter = heads_protocol.limiter();
        let router = Router::builder(endpoint.clone())
            .accept(
                iroh_blobs::ALPN,
                BlobsProtocol::new(&blobs, provider_events),
            )
            .accept(iroh_gossip::ALPN, gossip.clone())
            .accept(heads::ALPN, heads_protocol)
            .spawn();

        let http_listener = if config.http.enabled {
            match tokio::net::TcpListener::bind(config.http.bind).await {
                Ok(listener) => Some(listener),
                Err(source) => {
                    let _ = router.shutdown().await;
                    return Err(NodeError::Http {
                        addr: config.http.bind,
                        source,
                    });
                }
            }
        } else {
            None
        };

        let metrics_listener = match config.metrics.bind {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(source) => {
                    let _ = router.shutdown().await;
                    return Err(NodeError::Metrics { addr, source });
                }
            },
            None => None,
        };

        let admin_socket = config.admin_socket_path();
        if config.admin_socket_group.is_some() && admin_socket.starts_with(&data_dir) {
            warn!(
                socket = %admin_socket.display(),
                "the admin socket is inside the data dir, which only the daemon's user may enter: group members cannot reach it; set admin_socket to a path such as /run/knotd/knotd.sock"
            );
        }
        let listener = match admin::bind(&admin_socket, config.admin_socket_group.as_deref()).await
        {
            Ok(listener) => listener,
            Err(e) => {
                let _ = router.shutdown().await;
                return Err(e.into());
            }
        };

        let mut tasks = Supervised::default();
        let xrpc = XrpcClient::from_config(&config.atproto);
        let account = match Credentials::load(&config.atproto) {
            Ok(Some(credentials)) => {
                info!(identifier = %credentials.identifier, "records of this account will be written back to its PDS");
                Some(Account::new(xrpc.clone(), credentials, &config.atproto))
            }
            Ok(None) => None,
            Err(e) => {
                let _ = router.shutdown().await;
                return Err(NodeError::Atproto(e));
            }
        };
        let store_for_mirrors = store.clone();
        let knot = Knot::spawn(
            KnotParts {
                config: config.clone(),
                store,
                blobs: blobs.clone(),
                gc_guard,
                endpoint: endpoint.clone(),
                gossip,
                lookup: lookup.clone(),
                heads: heads_rx,
                heads_limiter,
                account,
                xrpc,
                drops,
            },
            cancel.child_token(),
            &mut tasks,
        );
        let knot = match knot {
            Ok(knot) => knot,
            Err(e) => {
                cancel.cancel();
                let _ = router.shutdown().await;
                return Err(e.into());
            }
        };
        let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = http_listener {
            let pages = config.http.pages.then(|| {
                let pages = crate::web::Pages::new(
                    knot.clone(),
                    config.max_total_bytes,
                    cancel.child_token(),
                )
                .with_metrics(metrics.clone())
                .with_served(knot.served());
                tasks.spawn("web pages' event ring", pages.clone().record_events());
                let resolver = crate::web::handles::AtprotoHandles {
                    xrpc: XrpcClient::from_config(&config.atproto),
                    plc_directory: config.atproto.plc_directory.clone(),
                    handle_resolver: config.atproto.handle_resolver.clone(),
                };
                tasks.spawn(
                    "web pages' handle resolver",
                    pages.clone().resolve_handles(resolver),
                );
                pages.router()
            });
            let http = crate::http::serve(listener, knot.served(), pages, cancel.child_token());
            tasks.spawn("smart HTTP server", http);
        }
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let (Some(listener), Some(metrics)) = (metrics_listener, metrics.clone()) {
            let served =
                crate::metrics::serve(listener, knot.clone(), metrics, cancel.child_token());
            tasks.spawn("metrics server", served);
        }
        let mirrors = match crate::mirror::spawn(
            &config,
            store_for_mirrors,
            knot.clone(),
            metrics,
            cancel.child_token(),
            &mut tasks,
        ) {
            Ok(mirrors) => mirrors,
            Err(e) => {
                cancel.cancel();
                let _ = router.shutdown().await;
                return Err(NodeError::Mirror(e));
            }
        };
        let admin = admin::serve(
            listener,
            admin_socket.clone(),
            crate::mirror::WithMirrors::new(knot.clone(), mirrors),
            cancel.child_token(),
        );
        tasks.spawn("admin socket server", admin);
        info!(
            data_dir = %data_dir.display(),
            admin_socket = %admin_socket.display(),
            "knotd running"
        );
        Ok(Self {
            knot,
            endpoint,
            router,
            lookup,
            blobs,
            cancel,
            tasks,
            admin_socket,
            data_dir,
            http_addr,
            metrics_addr,
        })
    }

    /// Wait until `shutdown` fires (`None`) or a task of the node ends on
    /// its own, by panic or otherwise (`Some` with what happened): then the
    /// node cannot go on and should be shut down and the process exit with
    /// an error, so that its supervisor restarts it.
    pub async fn supervise(&mut self, shutdown: &CancellationToken) -> Option<String> {
        if self.cancel.is_cancelled() {
            return None;
        }
        let died = self.tasks.watch(&self.cancel).await;
        if shutdown.is_cancelled() {
            return None;
        }
        if let Some(reason) = &died {
            tracing::error!(%reason, "a core task stopped; shutting down");
        }
        died
    }

    /// Handle to the repository actor.
    pub fn knot(&self) -> &KnotHandle {
        &self.knot
    }

    /// This node's id.
    pub fn id(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The in-memory address book fed with peers learned from tickets, records and gossip.
    pub fn lookup(&self) -> &MemoryLookup {
        &self.lookup
    }

    /// The blob store.
    pub fn blobs(&self) -> &FsStore {
        &self.blobs
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// Where smart HTTP listens, when enabled.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr
    }

    /// Where metrics are served, when enabled.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's address once it has at least one direct address.
    pub async fn addr(&self) -> EndpointAddr {
        wait_for_addr(&self.endpoint).await
    }

    /// Stop all tasks, leave gossip topics, flush stores and remove the admin socket.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.cancel.cancel();
        for panic in self.tasks.join_all().await {
            warn!(%panic, "a node task panicked");
        }
        // The protocols stop concurrently: the blob store's flush is not
        // held up by gossip. The router's own task stops them and then
        // closes the endpoint; dropping its shutdown would abort that task
        // and leave the endpoint unclosed, so when it takes too long the
        // endpoint is closed beside it (which ends any connection a
        // protocol waits on) and the router gets a last, bounded while.
        let endpoint = self.router.endpoint().clone();
        let stopping = self.router.shutdown();
        tokio::pin!(stopping);
        let stopped = match tokio::time::timeout(PROTOCOLS_SHUTDOWN, &mut stopping).await {
            Ok(stopped) => Some(stopped),
            Err(_) => {
                warn!(
                    "the protocols and the endpoint did not stop within {PROTOCOLS_SHUTDOWN:?}; closing the connections"
                );
                let (stopped, _) = tokio::join!(
                    tokio::time::timeout(ENDPOINT_CLOSE, &mut stopping),
                    tokio::time::timeout(ENDPOINT_CLOSE, endpoint.close()),
                );
                stopped.ok()
            }
        };
        match stopped {
            Some(stopped) => stopped.map_err(|e| NodeError::Shutdown(e.to_string()))?,
            None => warn!(
                "the protocols did not stop after the connections were closed; stopping without them"
            ),
        }
        info!("knotd stopped");
        Ok(())
    }
}

/// Run a node until `shutdown` fires, then stop it gracefully. When a core
/// task stops on its own first, the node is shut down and the error says why.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let mut node = Node::spawn(config, shutdown.child_token()).await?;
    let died = node.supervise(&shutdown).await;
    info!("shutting down");
    let stopped = node.shutdown().await;
    match died {
        Some(reason) => Err(NodeError::TaskDied(reason)),
        None => stopped,
    }
}

fn prepare_dir(dir: &Path) -> Result<(), NodeError> {
    let err = |source| NodeError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    std::fs::create_dir_all(dir.join("repos")).map_err(err)?;
    Ok(())
}

async fn bind_endpoint(
    config: &Config,
    secret_key: iroh::SecretKey,
    lookup: &MemoryLookup,
) -> Result<Endpoint, NodeError> {
    let addrs = config
        .bind
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let bind_err = |message: String| NodeError::Bind {
        addrs: addrs.clone(),
        message,
    };
    let relay_mode = match config.relay_choice()? {
        RelayChoice::Disabled => RelayMode::Disabled,
        RelayChoice::Default => RelayMode::Default,
        RelayChoice::Custom(url) => {
            let url = url.parse().map_err(|e| invalid("relay", &url, e))?;
            RelayMode::custom([url])
        }
    };
    let transport = QuicTransportConfig::builder()
        .max_concurrent_uni_streams(MAX_INCOMING_STREAMS.into())
        .build();
    let mut builder = Endpoint::builder(presets::Minimal)
        .transport_config(transport)
        .secret_key(secret_key)
        .relay_mode(relay_mode)
        .clear_ip_transports()
        .address_lookup(lookup.clone());
    for addr in &config.bind {
        builder = builder
            .bind_addr(*addr)
            .map_err(|e| bind_err(e.to_string()))?;
    }
    match config.discovery_choice()? {
        DiscoveryChoice::Off => {}
        DiscoveryChoice::Default => {
            builder = builder
                .address_lookup(PkarrPublisher::n0_dns())
                .address_lookup(PkarrResolver::n0_dns())
                .address_lookup(DnsAddressLookup::n0_dns());
        }
        DiscoveryChoice::Custom(url) => {
            // A pkarr relay the operator runs: publish direct addresses as
            // well as the relay URL, so peers on the same network (or with
            // open ports) connect directly even when the relay is down.
            let url: reqwest::Url = url.parse().map_err(|e| invalid("discovery", &url, e))?;
            builder = builder
                .address_lookup(
                    PkarrPublisher::builder(url.clone()).addr_filter(AddrFilter::unfiltered()),
                )
                .address_lookup(PkarrResolver::builder(url));
        }
    }
    builder.bind().await.map_err(|e| bind_err(e.to_string()))
}

fn invalid(field: &'static str, value: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Config(ConfigError::Invalid {
        field,
        reason: format!("{value}: {e}"),
    })
}

/// iroh-gossip configured for many quiet topics (one per repository): its
/// defaults otherwise, with the per-topic timers above slowed down.
fn gossip_builder() -> iroh_gossip::net::Builder {
    let membership = HyparviewConfig {
        shuffle_interval: GOSSIP_SHUFFLE_INTERVAL,
        ..HyparviewConfig::default()
    };
    let broadcast = PlumtreeConfig {
        cache_evict_interval: GOSSIP_CACHE_EVICT_INTERVAL,
        ..PlumtreeConfig::default()
    };
    Gossip::builder()
        .membership_config(membership)
        .broadcast_config(broadcast)
}
