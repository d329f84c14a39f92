//! Admin commands on the actor: queries answered from the core's state,
//! commands that change what the node holds handed to the core (with their
//! input checked first: tickets, locators, DIDs and handles), and the
//! answers that need the endpoint (`status`, `ticket`) built off the loop.

use iroh_tickets::endpoint::EndpointTicket;
use tokio::sync::oneshot;

use super::{Knot, Request, Side, build_locator, parse_ticket, paths, wait_for_addr};
use crate::repo_id::RepoId;
use crate::{
    admin::{Command, GossipStats, NodeStatus, Payload, RefsReport, Reply},
    core::{CoreCommand, Event},
};

impl Knot {
    /// One request from the handle.
    pub(super) async fn handle_request(&mut self, request: Request, reply: oneshot::Sender<Reply>) {
        match request {
            Request::Admin(command) => self.handle_admin(command, reply).await,
            Request::PublishFrom {
                repo_id,
                source,
                force,
                expected_manifest,
            } => {
                let command = CoreCommand::Publish {
                    repo_id,
                    source,
                    force,
                    expected_manifest,
                };
                self.command(reply, command).await;
            }
        }
    }

    pub(super) async fn handle_admin(&mut self, command: Command, reply: oneshot::Sender<Reply>) {
        let core_command = match command {
            Command::AddRepo {
                repo_id,
                pds,
                record,
                peers,
            } => {
                let parsed = peers
                    .iter()
                    .map(|t| parse_ticket(t))
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|peers| Ok((peers, build_locator(&repo_id, pds, record)?)));
                match parsed {
                    Ok((peers, locator)) => CoreCommand::AddRepo {
                        repo_id,
                        locator,
                        peers,
                    },
                    Err(e) => {
                        let _ = reply.send(Reply::Error(e.to_string()));
                        return;
                    }
                }
            }
            Command::RemoveRepo { repo_id } => CoreCommand::RemoveRepo { repo_id },
            Command::RemovePeer { repo_id, node_id } => match node_id.trim().parse() {
                Ok(node_id) => CoreCommand::RemovePeer { repo_id, node_id },
                Err(e) => {
                    let _ = reply.send(Reply::Error(format!(
                        "{node_id:?} is not a node id ({e}); copy it from `knotd admin peers {repo_id}`"
                    )));
                    return;
                }
            },
            Command::Publish { .. } | Command::UploadPack { .. } => {
                // The socket server handles these with their byte streams.
                let _ = reply.send(Reply::Error(
                    "this command carries a git stream; send it over the admin socket".into(),
                ));
                return;
            }
            Command::Mirror { .. }
            | Command::Unmirror { .. }
            | Command::Mirrors
            | Command::MirrorSync { .. } => {
                // The mirror actor answers these ([`crate::mirror`]).
                let _ = reply.send(Reply::Error(
                    "mirrors are handled by the node's mirror service, which is not running here"
                        .into(),
                ));
                return;
            }
            Command::Refs { repo_id } => return self.reply_refs(repo_id, reply),
            Command::Sync { repo_id } => CoreCommand::Sync { repo_id },
            Command::Verify { repo_id } => CoreCommand::Verify { repo_id },
            Command::Policy { rule, target } => CoreCommand::Policy { rule, target },
            Command::PolicyShow => {
                let _ = reply.send(Reply::Ok(Payload::Policy(self.core.policy_view())));
                return;
            }
            Command::SetQuota { repo_id, max_bytes } => {
                CoreCommand::SetQuota { repo_id, max_bytes }
            }
            Command::Replicas {
                repo_id,
                count,
                timeout_secs,
            } => CoreCommand::Replicas {
                repo_id,
                count: count as usize,
                timeout: std::time::Duration::from_secs(timeout_secs),
            },
            Command::Watch { .. } => {
                let _ = reply.send(Reply::Error(
                    "watch streams events over the admin socket; use `knotd admin watch`".into(),
                ));
                return;
            }
            Command::Follow { identity } => {
                return self.identity_command(identity, true, reply).await;
            }
            Command::Unfollow { identity } => {
                return self.identity_command(identity, false, reply).await;
            }
            Command::List => {
                let repos = self.core.summaries();
                let _ = reply.send(Reply::Ok(Payload::Repos { repos }));
                return;
            }
            Command::Peers { repo_id } => {
                let _ = reply.send(match self.core.peers(&repo_id) {
                    Ok(peers) => Reply::Ok(Payload::Peers { peers }),
                    Err(e) => Reply::Error(e),
                });
                return;
            }
            Command::Status => return self.reply_status(reply),
            Command::Ticket => {
                let endpoint = self.parts.endpoint.clone();
                self.side.spawn(async move {
                    let addr = wait_for_addr(&endpoint).await;
                    let ticket = EndpointTicket::new(addr).to_string();
                    let _ = reply.send(Reply::Ok(Payload::Ticket { ticket }));
                    Side::Done
                });
                return;
            }
        };
        self.command(reply, core_command).await;
    }

    /// The ref state held for a repository, read from its manifest off the
    /// loop.
    fn reply_refs(&mut self, repo_id: crate::repo_id::RepoId, reply: oneshot::Sender<Reply>) {
        let manifest = match self.core.held_manifest(&repo_id) {
            Ok(manifest) => manifest,
            Err(e) => {
                let _ = reply.send(Reply::Error(e));
                return;
            }
        };
        let blobs = self.parts.blobs.clone();
        self.side.spawn(async move {
            let refs = match &manifest {
                None => Ok(Default::default()),
                Some(hex) => match hex.parse::<iroh_blobs::Hash>() {
                    Ok(hash) => crate::content::load_manifest(&blobs, hash, &repo_id)
                        .await
                        .map(|m| m.refs)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("held manifest {hex} is not a hash: {e}")),
                },
            };
            let _ = reply.send(match refs {
                Ok(refs) => Reply::Ok(Payload::Refs(RefsReport {
                    repo_id: repo_id.to_string(),
                    manifest,
                    refs,
                })),
                Err(e) => Reply::Error(format!("cannot read the refs of {repo_id}: {e}")),
            });
            Side::Done
        });
    }

    /// Hand a command to the core; the answer goes to `reply`.
    pub(super) async fn command(&mut self, reply: oneshot::Sender<Reply>, command: CoreCommand) {
        let id = self.next_reply;
        self.next_reply += 1;
        self.replies.insert(id, reply);
        self.feed(Event::Command { reply: id, command }).await;
    }

    /// `follow`/`unfollow`: a DID goes to the core as it is; a handle is
    /// resolved to its DID first, off the loop.
    async fn identity_command(
        &mut self,
        identity: String,
        follow: bool,
        reply: oneshot::Sender<Reply>,
    ) {
        let make = move |did: String| {
            if follow {
                CoreCommand::Follow { did }
            } else {
                CoreCommand::Unfollow { did }
            }
        };
        let identity = identity.trim().to_string();
        if identity.starts_with("did:") {
            return match crate::repo_id::validate_did(&identity) {
                Ok(()) => self.command(reply, make(identity)).await,
                Err(e) => {
                    let _ = reply.send(Reply::Error(format!("{identity:?} is not a DID: {e}")));
                }
            };
        }
        let xrpc = self.parts.xrpc.clone();
        let resolver = self.parts.config.atproto.handle_resolver.clone();
        self.side.spawn(async move {
            match xrpc.resolve_handle(&identity, &resolver).await {
                Ok(did) => Side::Command(reply, make(did)),
                Err(e) => {
                    let _ = reply.send(Reply::Error(format!(
                        "cannot resolve the handle {identity:?}: {e}; give the DID instead"
                    )));
                    Side::Done
                }
            }
        });
    }

    /// Answer `status` from a snapshot, off the loop (the address may take a moment).
    fn reply_status(&mut self, reply: oneshot::Sender<Reply>) {
        let counters = self.core.counters().clone();
        let (dropped_invalid, rate_limited) = self.parts.drops.read();
        let (jobs_running, jobs_waiting) = self.core.job_load();
        let repos = self.core.summaries();
        let repo_count = self.core.repo_count() as u64;
        let follows = self.core.follow_summaries();
        let uptime_secs = self.started.elapsed().as_secs();
        let endpoint = self.parts.endpoint.clone();
        let relay_mode = self.parts.config.relay.clone();
        let discovery = self.parts.config.discovery.0.clone();
        let mut peers = std::collections::BTreeSet::new();
        for repo in &repos {
            if peers.len() >= paths::MAX_PEER_PATHS {
                break;
            }
            let Ok(id) = repo.repo_id.parse::<RepoId>() else {
                continue;
            };
            let views = self.core.peers(&id).unwrap_or_default();
            peers.extend(
                views
                    .iter()
                    .filter_map(|p| p.hint.node_id.parse::<iroh::EndpointId>().ok()),
            );
        }
        self.side.spawn(async move {
            let addr = wait_for_addr(&endpoint).await;
            let relays = paths::relays(&endpoint);
            let peer_paths = paths::peer_paths(&endpoint, peers).await;
            let status = NodeStatus {
                node_id: endpoint.id().to_string(),
                ticket: EndpointTicket::new(addr.clone()).to_string(),
                addrs: addr.ip_addrs().map(|a| a.to_string()).collect(),
                repo_count,
                uptime_secs,
                version: env!("CARGO_PKG_VERSION").to_string(),
                gossip: GossipStats {
                    received: counters.received,
                    dropped_invalid,
                    rejected: counters.rejected.values().sum(),
                    rate_limited,
                    rejected_by_reason: counters
                        .rejected
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                    pushes_dropped: counters.pushes_dropped,
                    pulls_deferred: counters.pulls_deferred,
                    store_failures: counters.store_failures,
                },
                jobs_running,
                jobs_waiting,
                tasks_alive: tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks(),
                connections_open: {
                    let socket = &endpoint.metrics().socket;
                    socket
                        .num_conns_opened
                        .get()
                        .saturating_sub(socket.num_conns_closed.get())
                },
                follows,
                repos,
                relay_mode,
                discovery,
                relays,
                peer_paths,
            };
            let _ = reply.send(Reply::Ok(Payload::Status(Box::new(status))));
            Side::Done
        });
    }
}
