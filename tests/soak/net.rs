//! The soak's network: the test lab of `tests/common/netns.rs` (one
//! namespace per host on an isolated bridge, a real iroh relay and pkarr
//! server in the services' namespace), shaped as a small community:
//!
//! * seeders have public addresses: every host reaches them directly;
//! * authors are isolated from each other and from home servers, which they
//!   reach only through the relay;
//! * home servers sit behind a stateful firewall (only replies to what they
//!   sent come in): nobody dials them directly, as behind a NAT.
//!
//! Every direct UDP path towards a node crosses a delaying forwarder in the
//! services' namespace (a DNAT rule set before any node starts), so faults
//! can add latency without `netem`. Faults act here: links cut and restored,
//! random packet loss with iptables' `statistic` match, forwarder delays,
//! the relay stopped and started on its address, the PDS's port dropped.
//! Everything is undone when the lab drops.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{forwarder::Forwarder, inns::NsRuntime, netns::Lab};

/// The UDP port every node binds on its host's address.
pub const NODE_PORT: u16 = 4919;

/// What a host is in the community.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Pushes its owner's repositories, writes records back.
    Author,
    /// A VPS with a public address that seeds everything.
    Seeder,
    /// Behind a firewall; reachable only through the relay.
    Home,
}

/// Why the network could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {reason}")]
pub struct NetError {
    command: String,
    reason: String,
}

/// Run `iptables` inside namespace `ns`.
pub fn iptables(ns: &str, args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables", "-w"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError {
            command: format!("iptables {}", args.join(" ")),
            reason: format!("{e}; install iptables (the soak needs it)"),
        })?;
    if !out.status.success() {
        return Err(NetError {
            command: format!("ip netns exec {ns} iptables {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The shaped lab and its forwarders.
pub struct SoakNet {
    /// The namespaces, bridge, relay and pkarr server.
    pub lab: Lab,
    /// A runtime inside the services' namespace (forwarders, PDS calls).
    pub svc: NsRuntime,
    /// One forwarder per host, towards its node's port.
    pub forwarders: Vec<(String, Forwarder)>,
    roles: Vec<(String, Role)>,
    cancel: CancellationToken,
}

impl SoakNet {
    /// Build the lab for `hosts`, start the relay and pkarr server, and set
    /// the firewalls, forwarders and DNAT rules.
    pub async fn build(hosts: &[(String, Role)], pkarr_dir: &std::path::Path) -> SoakNet {
        let names: Vec<&str> = hosts.iter().map(|(n, _)| n.as_str()).collect();
        let mut lab = Lab::new(&names).unwrap_or_else(|e| panic!("{e}"));
        lab.start_services(pkarr_dir);
        let svc = NsRuntime::spawn(lab.services_ns());
        let cancel = CancellationToken::new();
        let services_ip = lab.services_ip();
        let mut forwarders = Vec::new();
        for (name, _) in hosts {
            let target = SocketAddr::from((lab.host(name).ip, NODE_PORT));
            let token = cancel.clone();
            let forwarder = svc
                .run(async move { Forwarder::spawn(services_ip, target, token).await })
                .await
                .expect("a forwarder binds in the services' namespace");
            forwarders.push((name.clone(), forwarder));
        }
        let net = SoakNet {
            lab,
            svc,
            forwarders,
            roles: hosts.to_vec(),
            cancel,
        };
        for (name, role) in hosts {
            net.shape_host(name, *role)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        net
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        self.lab.host(name).ns.clone()
    }

    /// The address host `name`'s node binds.
    pub fn node_addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from((self.lab.host(name).ip, NODE_PORT))
    }

    fn shape_host(&self, name: &str, role: Role) -> Result<(), NetError> {
        let ns = self.ns(name);
        if role == Role::Seeder {
            self.lab
                .set_host_isolated(name, false)
                .map_err(|e| NetError {
                    command: "bridge isolation".into(),
                    reason: e.to_string(),
                })?;
        }
        // Loss rules live in their own chain, first in both directions.
        iptables(&ns, &["-N", "SOAKLOSS"])?;
        iptables(&ns, &["-A", "INPUT", "!", "-i", "lo", "-j", "SOAKLOSS"])?;
        iptables(&ns, &["-A", "OUTPUT", "!", "-o", "lo", "-j", "SOAKLOSS"])?;
        if role == Role::Home {
            iptables(&ns, &["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])?;
            iptables(
                &ns,
                &[
                    "-A",
                    "INPUT",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            iptables(&ns, &["-A", "INPUT", "-j", "DROP"])?;
        }
        // Direct paths exist where one end is a seeder; each goes through
        // the forwarder of the host it is addressed to.
        for (other, other_role) in &self.roles {
            if other == name || (role != Role::Seeder && *other_role != Role::Seeder) {
                continue;
            }
            let ip = self.lab.host(other).ip.to_string();
            let to = self.forwarder(other).listen.to_string();
            let port = NODE_PORT.to_string();
            iptables(
                &ns,
                &[
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "udp",
                    "-d",
                    &ip,
                    "--dport",
                    &port,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to,
                ],
            )?;
        }
        Ok(())
    }

    /// The forwarder towards host `name`'s node.
    pub fn forwarder(&self, name: &str) -> &Forwarder {
        &self
            .forwarders
            .iter()
            .find(|(n, _)| n == name)
            .expect("a forwarder per host")
            .1
    }

    /// Cut or restore host `name`'s link.
    pub fn set_link(&self, name: &str, up: bool) {
        self.lab
            .set_link(name, up)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Drop each packet in or out of host `name` with probability `p` (0: none).
    pub fn set_loss(&self, name: &str, p: f64) {
        let ns = self.ns(name);
        iptables(&ns, &["-F", "SOAKLOSS"]).unwrap_or_else(|e| panic!("{e}"));
        if p > 0.0 {
            let p = format!("{p:.3}");
            iptables(
                &ns,
                &[
                    "-A",
                    "SOAKLOSS",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Delay every datagram on direct paths towards host `name` by `delay`.
    pub fn set_delay(&self, name: &str, delay: Duration) {
        self.forwarder(name).set_delay(delay);
    }

    /// Make the PDS unreachable (`true`) or reachable again: its port's
    /// packets from the bridge are dropped, so requests time out.
    pub fn set_pds_blocked(&self, port: u16, blocked: bool) {
        let port = port.to_string();
        let op = if blocked { "-I" } else { "-D" };
        iptables(
            self.lab.services_ns(),
            &[
                op, "INPUT", "-i", "br0", "-p", "tcp", "--dport", &port, "-j", "DROP",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Remove every PDS block, whatever faults left behind.
    pub fn unblock_pds(&self, port: u16) {
        let port = port.to_string();
        let rule = [
            "INPUT", "-i", "br0", "-p", "tcp", "--dport", &port, "-j", "DROP",
        ];
        while iptables(self.lab.services_ns(), &[&["-C"][..], &rule[..]].concat()).is_ok() {
            iptables(self.lab.services_ns(), &[&["-D"][..], &rule[..]].concat())
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// The relay's address is the services' one: what the PDS binds too.
    pub fn services_ip(&self) -> Ipv4Addr {
        self.lab.services_ip()
    }
}

impl Drop for SoakNet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
