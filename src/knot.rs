//! The repository actor: the one owner of the set of tracked repositories.
//!
//! Owns adding and removing repositories, peer hints and status. It runs one
//! `select!` loop over admin commands and the results of its child tasks.
//! Everything it decides is persisted in the database before it replies, so a
//! restart resumes with the same repositories, records and peers.

use std::time::Instant;

use iroh::{Endpoint, EndpointAddr, address_lookup::MemoryLookup};
use iroh_blobs::store::fs::FsStore;
use iroh_gossip::net::Gossip;
use iroh_tickets::endpoint::EndpointTicket;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    admin::{Command, Executor, NodeStatus, Payload, PeerView, Reply, RepoSummary},
    config::Config,
    record::{self, PeerHint, RecordError},
    repo_id::{RepoId, validate_did},
    store::{Locator, RepoEntry, Store, StoreError},
};

/// Errors of repository commands; the text is shown to the operator.
#[derive(Debug, thiserror::Error)]
pub enum KnotError {
    /// The actor has stopped (the node is shutting down).
    #[error("knotd is shutting down")]
    Gone,
    /// Database failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record or hint is invalid.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A peer ticket does not parse.
    #[error(
        "peer ticket {ticket:?} is invalid: {reason}; get a ticket with `knotd ticket` on the peer"
    )]
    BadTicket {
        /// The ticket as given (shortened).
        ticket: String,
        /// The parser's message.
        reason: String,
    },
    /// The record locator is invalid.
    #[error("record locator {0}")]
    BadLocator(String),
    /// A command failed; the text says why.
    #[error("{0}")]
    Failed(String),
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the node was doing.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Everything the actor needs from the node.
pub struct KnotParts {
    /// Node configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// The blob store.
    pub blobs: FsStore,
    /// The iroh endpoint.
    pub endpoint: Endpoint,
    /// The gossip protocol.
    pub gossip: Gossip,
    /// The address book fed with learned peers.
    pub lookup: MemoryLookup,
}

enum Message {
    Admin {
        command: Command,
        reply: oneshot::Sender<Reply>,
    },
}

/// Handle to the repository actor.
#[derive(Clone, Debug)]
pub struct KnotHandle {
    tx: mpsc::Sender<Message>,
}

impl KnotHandle {
    /// Run an admin command.
    pub async fn command(&self, command: Command) -> Result<Payload, KnotError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Admin { command, reply })
            .await
            .map_err(|_| KnotError::Gone)?;
        match rx.await.map_err(|_| KnotError::Gone)? {
            Reply::Ok(payload) => Ok(payload),
            Reply::Error(message) => Err(KnotError::Failed(message)),
        }
    }
}

impl Executor for KnotHandle {
    async fn execute(&self, command: Command) -> Reply {
        self.command(command)
            .await
            .map_or_else(|e| Reply::Error(e.to_string()), Reply::Ok)
    }
}

/// The actor state.
pub struct Knot {
    parts: KnotParts,
    rx: mpsc::Receiver<Message>,
    cancel: CancellationToken,
    started: Instant,
}

impl Knot {
    /// Start the actor in `tasks`; it stops when `cancel` fires.
    pub fn spawn(
        parts: KnotParts,
        cancel: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> KnotHandle {
        let (tx, rx) = mpsc::channel(64);
        let actor = Knot {
            parts,
            rx,
            cancel,
            started: Instant::now(),
        };
        tasks.spawn(actor.run());
        KnotHandle { tx }
    }

    async fn run(mut self) {
        self.restore_peers();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(Message::Admin { command, reply }) => {
                        let result = self.handle_admin(command).await;
                        let _ = reply.send(match result {
                            Ok(payload) => Reply::Ok(payload),
                            Err(e) => Reply::Error(e.to_string()),
                        });
                    }
                    None => break,
                },
            }
        }
        debug!("repository actor stopped");
    }

    /// Feed every stored peer hint to the address book so dials by id work after a restart.
    fn restore_peers(&self) {
        match self.parts.store.repos() {
            Ok(repos) => {
                for entry in repos {
                    self.learn_peers(&entry.record.peers);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read repositories at start"),
        }
    }

    fn learn_peers(&self, peers: &[PeerHint]) {
        for hint in peers {
            if let Some(addr) = hint_to_addr(hint) {
                if addr.id == self.parts.endpoint.id() {
                    continue;
                }
                self.parts.lookup.add_endpoint_info(addr);
            }
        }
    }

    async fn handle_admin(&mut self, command: Command) -> Result<Payload, KnotError> {
        match command {
            Command::AddRepo {
                repo_id,
                pds,
                record,
                peers,
            } => self.handle_add_repo(repo_id, pds, record, peers),
            Command::RemoveRepo { repo_id } => self.handle_remove_repo(repo_id),
            Command::List => Ok(Payload::Repos {
                repos: self.summaries()?,
            }),
            Command::Status => self.handle_status().await,
            Command::Peers { repo_id } => {
                let entry = self.parts.store.require_repo(&repo_id)?;
                let peers = entry
                    .record
                    .peers
                    .into_iter()
                    .map(|hint| PeerView {
                        hint,
                        connected: false,
                    })
                    .collect();
                Ok(Payload::Peers { peers })
            }
            Command::Ticket => Ok(Payload::Ticket {
                ticket: self.ticket().await,
            }),
        }
    }

    fn handle_add_repo(
        &mut self,
        repo_id: RepoId,
        pds: Option<String>,
        record: Option<String>,
        tickets: Vec<String>,
    ) -> Result<Payload, KnotError> {
        let peers = tickets
            .iter()
            .map(|t| parse_ticket(t))
            .collect::<Result<Vec<_>, _>>()?;
        let locator = build_locator(&repo_id, pds, record)?;
        let entry = RepoEntry::new(repo_id.clone(), locator.clone(), peers.clone());
        let message = if self.parts.store.insert_repo(&entry)? {
            info!(repo = %repo_id, "repository added");
            format!("added {repo_id}")
        } else {
            self.parts.store.update_repo(&repo_id, |e| {
                e.record.peers = record::merge_peers(e.record.peers.clone(), peers.clone());
                if locator.is_some() {
                    e.locator = locator.clone();
                }
            })?;
            format!("{repo_id} was already tracked; peers and locator updated")
        };
        self.learn_peers(&peers);
        Ok(Payload::Done { message })
    }

    fn handle_remove_repo(&mut self, repo_id: RepoId) -> Result<Payload, KnotError> {
        let removed = self.parts.store.remove_repo(&repo_id)?;
        if removed.is_none() {
            return Err(StoreError::UnknownRepo(repo_id.to_string()).into());
        }
        let path = self.materialized_path(&repo_id);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| KnotError::Io {
                what: format!("removing {}", path.display()),
                source,
            })?;
        }
        info!(repo = %repo_id, "repository removed");
        Ok(Payload::Done {
            message: format!("removed {repo_id}"),
        })
    }

    /// Where the materialized bare repository of `repo_id` lives.
    fn materialized_path(&self, repo_id: &RepoId) -> std::path::PathBuf {
        self.parts
            .config
            .data_dir
            .join("repos")
            .join(repo_id.relative_path())
    }

    fn summaries(&self) -> Result<Vec<RepoSummary>, KnotError> {
        Ok(self
            .parts
            .store
            .repos()?
            .into_iter()
            .map(|e| summarize(&e, 0))
            .collect())
    }

    async fn handle_status(&self) -> Result<Payload, KnotError> {
        let addr = crate::node::wait_for_addr(&self.parts.endpoint).await;
        Ok(Payload::Status(NodeStatus {
            node_id: self.parts.endpoint.id().to_string(),
            ticket: EndpointTicket::new(addr.clone()).to_string(),
            addrs: addr.ip_addrs().map(|a| a.to_string()).collect(),
            repo_count: self.parts.store.repo_count()?,
            uptime_secs: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            repos: self.summaries()?,
        }))
    }

    async fn ticket(&self) -> String {
        let addr = crate::node::wait_for_addr(&self.parts.endpoint).await;
        EndpointTicket::new(addr).to_string()
    }
}

fn summarize(entry: &RepoEntry, peers_connected: usize) -> RepoSummary {
    RepoSummary {
        repo_id: entry.record.repo_id.to_string(),
        head: entry.record.head.clone(),
        manifest: entry.record.manifest.clone(),
        materialized: entry.materialized.clone(),
        pack_count: entry.pack_count,
        bytes_pinned: entry.bytes_pinned,
        last_sync: entry.last_sync,
        last_poll: entry.last_poll,
        last_error: entry.last_error.clone(),
        peers_known: entry.record.peers.len(),
        peers_connected,
        record: entry
            .locator
            .as_ref()
            .map(|l| format!("at://{}/{}/{}", l.did, l.collection, l.rkey)),
        write_back_pending: entry.write_back_pending,
    }
}

/// Parse an endpoint ticket into a peer hint that keeps the ticket.
pub fn parse_ticket(ticket: &str) -> Result<PeerHint, KnotError> {
    let parsed: EndpointTicket = ticket.trim().parse().map_err(|e| KnotError::BadTicket {
        ticket: ticket.chars().take(24).collect(),
        reason: format!("{e}"),
    })?;
    let addr: EndpointAddr = parsed.into();
    Ok(PeerHint::new(
        addr.id.to_string(),
        addr.ip_addrs().map(|a| a.to_string()).collect(),
        Some(ticket.trim().to_string()),
    ))
}

/// The endpoint address a hint describes (ticket first, then node id and addresses).
pub fn hint_to_addr(hint: &PeerHint) -> Option<EndpointAddr> {
    let id: iroh::EndpointId = hint.node_id.parse().ok()?;
    let mut addr = hint
        .ticket
        .as_deref()
        .and_then(|t| t.parse::<EndpointTicket>().ok())
        .map(EndpointAddr::from)
        .filter(|a| a.id == id)
        .unwrap_or_else(|| EndpointAddr::new(id));
    for a in &hint.addrs {
        if let Ok(sock) = a.parse() {
            addr = addr.with_ip_addr(sock);
        }
    }
    Some(addr)
}

/// Build the record locator from `--pds` and `--record`.
///
/// `--record` is an AT URI `at://<did>/<collection>/<rkey>` whose DID must be the
/// repository owner's; without it, the record is `at://<did>/app.knot.repo/<name>`
/// when `--pds` is given, and the repository has no record otherwise.
pub fn build_locator(
    repo_id: &RepoId,
    pds: Option<String>,
    record: Option<String>,
) -> Result<Option<Locator>, KnotError> {
    if let Some(pds) = &pds
        && !(pds.starts_with("https://") || pds.starts_with("http://"))
    {
        return Err(KnotError::BadLocator(format!(
            "--pds {pds:?} must be an http(s) URL such as https://pds.example.com"
        )));
    }
    let (did, collection, rkey) = match record {
        Some(uri) => {
            let rest = uri
                .strip_prefix("at://")
                .ok_or_else(|| KnotError::BadLocator(format!("{uri:?} must start with at://")))?;
            let parts: Vec<&str> = rest.split('/').collect();
            let [did, collection, rkey] = parts[..] else {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?} must have the form at://<did>/<collection>/<rkey>"
                )));
            };
            validate_did(did).map_err(|r| KnotError::BadLocator(format!("{uri:?}: {r}")))?;
            if did != repo_id.did() {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?} belongs to {did}, but {repo_id} is owned by {}; a repository's record must live in its owner's repository",
                    repo_id.did()
                )));
            }
            if collection != record::COLLECTION {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?}: collection must be {}",
                    record::COLLECTION
                )));
            }
            if !valid_rkey(rkey) {
                return Err(KnotError::BadLocator(format!(
                    "{uri:?}: record key must be 1-512 characters of [A-Za-z0-9._:~-] and not . or .."
                )));
            }
            (did.to_string(), collection.to_string(), rkey.to_string())
        }
        None if pds.is_some() => (
            repo_id.did().to_string(),
            record::COLLECTION.to_string(),
            repo_id.name().to_string(),
        ),
        None => return Ok(None),
    };
    Ok(Some(Locator {
        pds,
        did,
        collection,
        rkey,
    }))
}

/// ATProto record key syntax.
pub fn valid_rkey(rkey: &str) -> bool {
    !rkey.is_empty()
        && rkey.len() <= 512
        && rkey != "."
        && rkey != ".."
        && rkey
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'~' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid() -> RepoId {
        RepoId::parse("did:plc:abc123/website").unwrap()
    }

    #[test]
    fn locator_defaults_and_checks() {
        assert_eq!(build_locator(&rid(), None, None).unwrap(), None);
        let l = build_locator(&rid(), Some("https://pds.example".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.did.as_str(), l.collection.as_str(), l.rkey.as_str()),
            ("did:plc:abc123", "app.knot.repo", "website")
        );
        let l = build_locator(
            &rid(),
            None,
            Some("at://did:plc:abc123/app.knot.repo/other".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(l.rkey, "other");
        for bad in [
            "at://did:plc:evil/app.knot.repo/website",
            "at://did:plc:abc123/app.bsky.feed.post/x",
            "at://did:plc:abc123/app.knot.repo/..",
            "at://did:plc:abc123/app.knot.repo",
            "https://x/y/z",
            "at://did:plc:abc123/app.knot.repo/a/b",
        ] {
            assert!(
                build_locator(&rid(), None, Some(bad.into())).is_err(),
                "{bad}"
            );
        }
        assert!(build_locator(&rid(), Some("ftp://x".into()), None).is_err());
    }

    #[test]
    fn tickets_round_trip_into_hints() {
        let key = iroh::SecretKey::from_bytes(&[3; 32]);
        let addr = EndpointAddr::new(key.public()).with_ip_addr("127.0.0.1:4000".parse().unwrap());
        let ticket = EndpointTicket::new(addr.clone()).to_string();
        let hint = parse_ticket(&ticket).unwrap();
        assert_eq!(hint.node_id, key.public().to_string());
        assert_eq!(hint.addrs, vec!["127.0.0.1:4000"]);
        assert_eq!(hint_to_addr(&hint).unwrap(), addr);
        assert!(parse_ticket("endpointgarbage").is_err());
    }
}
