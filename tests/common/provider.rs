//! Bare iroh peers that speak the blob protocol the way a hostile or
//! careless peer might: one accepts blob connections and never answers (a
//! staller), one serves a blob store of its own and signs statements with
//! its key (a publisher, honest or lying about sizes).

use std::time::Duration;

use iroh::{
    Endpoint, EndpointAddr, RelayMode, SecretKey,
    address_lookup::MemoryLookup,
    endpoint::{Connection, presets},
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_blobs::{BlobsProtocol, Hash, store::mem::MemStore};
use knotd::{
    announce::{Announcement, SignedStatement, Statement},
    repo_id::RepoId,
};

use super::TestNode;

/// Accepts blob connections and the requests on them, and never answers.
#[derive(Debug, Clone)]
struct Silent;

impl ProtocolHandler for Silent {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        // Hold every request stream open without a byte in reply, until the
        // other side gives up on the connection.
        let mut held = Vec::new();
        while let Ok(streams) = conn.accept_bi().await {
            held.push(streams);
        }
        Ok(())
    }
}

/// What a [`BlobPeer`] does with blob requests.
enum Blobs {
    /// Accept and never answer.
    Stall,
    /// Serve this store.
    Serve(MemStore),
}

/// A peer on loopback that answers blob requests (or stalls them) and can
/// push announcements to knots over `/knot/heads/1`.
pub struct BlobPeer {
    pub key: SecretKey,
    pub endpoint: Endpoint,
    lookup: MemoryLookup,
    router: Router,
    store: Option<MemStore>,
}

impl BlobPeer {
    /// A peer that accepts blob connections and requests and never answers.
    pub async fn stalling(key: SecretKey) -> BlobPeer {
        Self::spawn(key, Blobs::Stall).await
    }

    /// A peer serving blobs from an in-memory store of its own.
    pub async fn serving(key: SecretKey) -> BlobPeer {
        Self::spawn(key, Blobs::Serve(MemStore::new())).await
    }

    async fn spawn(key: SecretKey, blobs: Blobs) -> BlobPeer {
        let lookup = MemoryLookup::new();
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(key.clone())
            .relay_mode(RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0")
            .unwrap()
            .address_lookup(lookup.clone())
            .bind()
            .await
            .unwrap();
        let (router, store) = match blobs {
            Blobs::Stall => (
                Router::builder(endpoint.clone())
                    .accept(iroh_blobs::ALPN, Silent)
                    .spawn(),
                None,
            ),
            Blobs::Serve(store) => (
                Router::builder(endpoint.clone())
                    .accept(iroh_blobs::ALPN, BlobsProtocol::new(&store, None))
                    .spawn(),
                Some(store),
            ),
        };
        BlobPeer {
            key,
            endpoint,
            lookup,
            router,
            store,
        }
    }

    /// The store a serving peer serves.
    pub fn store(&self) -> &MemStore {
        self.store.as_ref().expect("a serving peer")
    }

    /// Where this peer is reached.
    pub async fn addr(&self) -> EndpointAddr {
        knotd::knot::wait_for_addr(&self.endpoint).await
    }

    /// A ticket naming this peer, for `add-repo --peer`.
    pub async fn ticket(&self) -> String {
        iroh_tickets::endpoint::EndpointTicket::new(self.addr().await).to_string()
    }

    /// Know where `node` is.
    pub async fn meet(&self, node: &TestNode) {
        self.lookup.add_endpoint_info(node.node.addr().await);
    }

    /// Pull `node`'s announcement of `repo`.
    pub async fn pull(&self, node: &TestNode, repo: &str) -> Option<Announcement> {
        self.meet(node).await;
        let repos = [RepoId::parse(repo).unwrap()];
        knotd::heads::pull(&self.endpoint, node.node.id(), &repos)
            .await
            .ok()?
            .pop()
            .map(|(_, a)| a)
    }

    /// Forward `statement` to `node` under this peer's envelope, with its
    /// addresses: this peer says it holds the state.
    pub async fn forward(&self, node: &TestNode, statement: SignedStatement) {
        self.meet(node).await;
        let addrs = self.addr().await.ip_addrs().copied().collect();
        let bytes = Announcement::new(statement, &self.key, addrs).encode();
        tokio::time::timeout(
            Duration::from_secs(10),
            knotd::heads::push(&self.endpoint, node.node.id(), bytes),
        )
        .await
        .expect("push in time")
        .expect("the node takes the push");
    }

    /// A statement of `manifest` for `repo`, signed by this peer as its
    /// publisher, with a sequence number of now.
    pub fn statement(&self, repo: &str, head: Option<String>, manifest: Hash) -> SignedStatement {
        Statement {
            repo_id: repo.into(),
            head,
            manifest: *manifest.as_bytes(),
            seq: knotd::clock::unix_millis(),
            publisher: *self.key.public().as_bytes(),
        }
        .sign(&self.key)
    }

    /// Stop.
    pub async fn stop(self) {
        self.router.shutdown().await.unwrap();
    }
}
