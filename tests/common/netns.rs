//! A small network lab for tests: one namespace for the services (an iroh
//! relay and a pkarr/DNS server) and one namespace per host, each joined to
//! the services' bridge by a veth pair. The bridge ports are isolated, so a
//! host reaches the services' address and nothing else: no host can reach
//! another directly, as with home servers behind separate NATs. Needs root
//! (`ip netns`); everything is removed on drop, also when a test fails.
//! The soak test also opens single hosts to the others, cuts and restores
//! their links, and restarts the relay on its address.
#![allow(dead_code)]

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// The lab's subnet; the services' bridge holds `.1`, hosts `.2` upwards.
const SUBNET: [u8; 3] = [10, 77, 0];

/// Why a lab could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// `ip` failed (not root, no iproute2, no namespace support).
    #[error(
        "cannot build the test network ({command}: {reason}); these tests need root and iproute2 \
         (`ip netns`); set KNOTD_SKIP_NETNS=1 to skip them explicitly"
    )]
    Ip {
        /// The command that failed.
        command: String,
        /// What it said.
        reason: String,
    },
    /// The services could not start inside their namespace.
    #[error("cannot start the relay and discovery services in namespace {ns}: {reason}")]
    Services {
        /// The namespace.
        ns: String,
        /// What went wrong.
        reason: String,
    },
}

/// Build a lab, or decide that this run skips it: only `KNOTD_SKIP_NETNS=1`
/// skips; any other failure is an error the test reports.
pub fn lab_or_skip(hosts: &[&str]) -> Option<Lab> {
    if std::env::var("KNOTD_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("KNOTD_SKIP_NETNS=1: skipping a test that needs network namespaces");
        return None;
    }
    match Lab::new(hosts) {
        Ok(lab) => Some(lab),
        Err(e) => panic!("{e}"),
    }
}

/// One host of the lab.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its role, as given to [`Lab::new`].
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its only address.
    pub ip: Ipv4Addr,
    /// The bridge port that joins it to the services.
    port: String,
}

/// Namespaces, links and the services running in them.
pub struct Lab {
    services_ns: String,
    hosts: Vec<Host>,
    services: Option<Services>,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Run `ip <args>`; an error says which command failed and why.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Ip {
            command: format!("ip {}", args.join(" ")),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Ip {
            command: format!("ip {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Remove namespaces left by labs of test processes that no longer run
/// (killed before their Drop could run).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("kn")
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Lab {
    /// Create the services' namespace and bridge, and one isolated host per name.
    pub fn new(names: &[&str]) -> Result<Lab, LabError> {
        remove_stale_namespaces();
        let tag = format!(
            "kn{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let services_ns = format!("{tag}-svc");
        let mut lab = Lab {
            services_ns: services_ns.clone(),
            hosts: Vec::new(),
            services: None,
        };
        // From here on, Drop removes whatever was created.
        ip(&["netns", "add", &services_ns])?;
        let svc = |args: &[&str]| {
            let mut all = vec!["-n", services_ns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        svc(&["link", "set", "lo", "up"])?;
        svc(&["link", "add", "br0", "type", "bridge"])?;
        let bridge_ip = format!("{}/24", lab.services_ip());
        svc(&["addr", "add", &bridge_ip, "dev", "br0"])?;
        svc(&["link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            ip(&["netns", "add", &ns])?;
            let host = Host {
                name: name.to_string(),
                ns: ns.clone(),
                ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 2 + i as u8),
                port: format!("p{i}"),
            };
            lab.hosts.push(host.clone());
            ip(&[
                "link",
                "add",
                &host.port,
                "netns",
                &services_ns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            svc(&["link", "set", &host.port, "master", "br0"])?;
            svc(&[
                "link",
                "set",
                &host.port,
                "type",
                "bridge_slave",
                "isolated",
                "on",
            ])?;
            svc(&["link", "set", &host.port, "up"])?;
            let addr = format!("{}/24", host.ip);
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// The services' address, the only one every host reaches.
    pub fn services_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
    }

    /// The services' namespace (relay, pkarr server, and what a test adds).
    pub fn services_ns(&self) -> &str {
        &self.services_ns
    }

    /// Every host, in the order given to [`Lab::new`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Let one host reach every host (`false`, a machine with a public
    /// address) or only non-isolated ones (`true`, the default).
    pub fn set_host_isolated(&self, name: &str, isolated: bool) -> Result<(), LabError> {
        let port = self.host(name).port.clone();
        ip(&[
            "-n",
            &self.services_ns,
            "link",
            "set",
            &port,
            "type",
            "bridge_slave",
            "isolated",
            if isolated { "on" } else { "off" },
        ])
    }

    /// Cut (`false`) or restore (`true`) a host's only link, as a pulled
    /// cable: its interface stays configured, no packet passes.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), LabError> {
        let port = self.host(name).port.clone();
        ip(&[
            "-n",
            &self.services_ns,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in this lab"))
    }

    /// Allow (`false`) or forbid (`true`) hosts to reach each other directly.
    pub fn set_isolated(&self, isolated: bool) {
        for host in &self.hosts {
            ip(&[
                "-n",
                &self.services_ns,
                "link",
                "set",
                &host.port,
                "type",
                "bridge_slave",
                "isolated",
                if isolated { "on" } else { "off" },
            ])
            .expect("bridge port isolation changes");
        }
    }

    /// Whether `from` can open a TCP connection towards `to`'s address: a
    /// refused connection counts as reachable, "no route" as unreachable.
    pub fn reachable(&self, from: &str, to: Ipv4Addr) -> bool {
        let script = format!("exec 3<>/dev/tcp/{to}/9");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host(from).ns])
            .args(["timeout", "10", "bash", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec runs");
        let err = String::from_utf8_lossy(&out.stderr);
        out.status.success() || err.contains("refused")
    }

    /// Start the relay and the pkarr server inside the services' namespace.
    pub fn start_services(&mut self, data_dir: &Path) {
        let services = Services::spawn(&self.services_ns, self.services_ip(), data_dir)
            .unwrap_or_else(|e| panic!("{e}"));
        self.services = Some(services);
    }

    /// The running services.
    pub fn services(&self) -> &Services {
        self.services.as_ref().expect("services started")
    }

    /// Start the relay again on the address it had (after [`Lab::stop_relay`]).
    pub fn start_relay(&self) {
        if let Some(services) = &self.services {
            services.start_relay();
        }
    }

    /// Stop the relay (the pkarr server keeps running).
    pub fn stop_relay(&self) {
        if let Some(services) = &self.services {
            services.stop_relay();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(services) = self.services.take() {
            services.stop();
        }
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.ns]);
        }
        let _ = ip(&["netns", "del", &self.services_ns]);
    }
}

/// What the services' thread is asked to do.
enum Order {
    StopRelay(std::sync::mpsc::Sender<()>),
    StartRelay(std::sync::mpsc::Sender<Result<(), String>>),
    Stop,
}

/// An iroh relay (plain HTTP, as `iroh-relay --dev` runs it) and an
/// `iroh-dns-server` pkarr relay, on a thread that lives in the services'
/// namespace.
pub struct Services {
    /// The relay URL nodes are configured with.
    pub relay_url: String,
    /// The pkarr relay URL nodes publish to and resolve from.
    pub pkarr_url: String,
    metrics: std::sync::Arc<iroh_relay::server::Metrics>,
    orders: tokio::sync::mpsc::UnboundedSender<Order>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Services {
    fn spawn(ns: &str, ip: Ipv4Addr, data_dir: &Path) -> Result<Services, LabError> {
        let err = |reason: String| LabError::Services {
            ns: ns.to_string(),
            reason,
        };
        let ns_path = PathBuf::from("/run/netns").join(ns);
        let data_dir = data_dir.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (orders, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let thread = std::thread::spawn(move || {
            // setns(2) moves only this thread; every socket it opens
            // from now on lives in the services' namespace.
            let started = runtime_in_namespace(&ns_path);
            let runtime = match started {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut relay_config = iroh_relay::server::ServerConfig::default();
                relay_config.relay = Some(iroh_relay::server::RelayConfig::new(SocketAddr::from(
                    (ip, 0),
                )));
                let relay = match iroh_relay::server::Server::spawn(relay_config).await {
                    Ok(relay) => relay,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("relay: {e}")));
                        return;
                    }
                };
                let mut dns_config = iroh_dns_server::config::Config::default();
                if let Some(http) = dns_config.http.as_mut() {
                    http.port = 0;
                    http.bind_addr = Some(ip.into());
                }
                dns_config.https = None;
                dns_config.dns.port = 0;
                dns_config.dns.bind_addr = Some(ip.into());
                dns_config.metrics = Some(iroh_dns_server::config::MetricsConfig::disabled());
                dns_config.pkarr_put_rate_limit =
                    iroh_dns_server::config::RateLimitConfig::Disabled;
                dns_config.data_dir = Some(data_dir);
                let dns = match iroh_dns_server::Server::bind(dns_config).await {
                    Ok(dns) => dns,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("pkarr server: {e}")));
                        return;
                    }
                };
                let metrics = relay.metrics().server.clone();
                let relay_addr = relay.http_addr();
                let _ = ready_tx.send(Ok((relay_addr, dns.http_addr(), metrics)));
                let mut relay = Some(relay);
                while let Some(order) = order_rx.recv().await {
                    match order {
                        Order::StopRelay(done) => {
                            if let Some(relay) = relay.take() {
                                let _ = relay.shutdown().await;
                            }
                            let _ = done.send(());
                        }
                        Order::StartRelay(done) => {
                            let started = match (&relay, relay_addr) {
                                (Some(_), _) => Ok(()),
                                (None, None) => Err("the relay had no address".to_string()),
                                (None, Some(addr)) => {
                                    let mut config = iroh_relay::server::ServerConfig::default();
                                    config.relay = Some(iroh_relay::server::RelayConfig::new(addr));
                                    match iroh_relay::server::Server::spawn(config).await {
                                        Ok(server) => {
                                            relay = Some(server);
                                            Ok(())
                                        }
                                        Err(e) => Err(format!("relay on {addr}: {e}")),
                                    }
                                }
                            };
                            let _ = done.send(started);
                        }
                        Order::Stop => break,
                    }
                }
                if let Some(relay) = relay.take() {
                    let _ = relay.shutdown().await;
                }
                let _ = dns.shutdown().await;
            });
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| err(format!("no answer from the services' thread: {e}")))?
            .map_err(err)?;
        let (Some(relay_addr), Some(pkarr_addr), metrics) = ready else {
            return Err(err("a server bound no HTTP address".into()));
        };
        Ok(Services {
            relay_url: format!("http://{relay_addr}"),
            pkarr_url: format!("http://{pkarr_addr}/pkarr"),
            metrics,
            orders,
            thread: Some(thread),
        })
    }

    /// Bytes the relay has forwarded to its clients so far.
    pub fn relayed_bytes(&self) -> u64 {
        self.metrics.bytes_sent.get()
    }

    fn stop_relay(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.orders.send(Order::StopRelay(tx)).is_ok() {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the relay stops");
        }
    }

    fn start_relay(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.orders.send(Order::StartRelay(tx)).is_ok() {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the relay answers")
                .unwrap_or_else(|e| panic!("the relay starts again: {e}"));
        }
    }

    fn stop(mut self) {
        let _ = self.orders.send(Order::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Move the calling thread into the network namespace at `path` and build
/// a current-thread runtime there: setns(2) moves only this thread, so
/// every socket the runtime opens lives in that namespace.
pub fn runtime_in_namespace(path: &std::path::Path) -> Result<tokio::runtime::Runtime, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| format!("setns: {e}"))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}
