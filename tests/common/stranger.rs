//! A bare iroh peer that is not a knot: it joins topics, broadcasts, pushes
//! and pulls whatever a test tells it to, under keys of its choosing.

use std::time::Duration;

use iroh::{
    Endpoint, RelayMode, SecretKey, address_lookup::MemoryLookup, endpoint::presets,
    protocol::Router,
};
use iroh_gossip::{api::GossipTopic, net::Gossip, proto::TopicId};
use knotd::{announce::Announcement, repo_id::RepoId};

use super::TestNode;

/// A peer on loopback with gossip, and the direct head exchange as a client.
pub struct Stranger {
    pub key: SecretKey,
    pub endpoint: Endpoint,
    lookup: MemoryLookup,
    gossip: Gossip,
    router: Router,
}

impl Stranger {
    /// Bind a stranger with `key`.
    pub async fn spawn(key: SecretKey) -> Stranger {
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
        let gossip = Gossip::builder().spawn(endpoint.clone());
        let router = Router::builder(endpoint.clone())
            .accept(iroh_gossip::ALPN, gossip.clone())
            .spawn();
        Stranger {
            key,
            endpoint,
            lookup,
            gossip,
            router,
        }
    }

    /// Know where `node` is.
    pub async fn meet(&self, node: &TestNode) {
        self.lookup.add_endpoint_info(node.node.addr().await);
    }

    /// Join `repo`'s topic through `via` and wait until joined.
    pub async fn join(&self, repo: &str, via: &TestNode) -> GossipTopic {
        self.meet(via).await;
        let topic = TopicId::from_bytes(RepoId::parse(repo).unwrap().topic_bytes());
        let mut sub = self
            .gossip
            .subscribe(topic, vec![via.node.id()])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub.joined())
            .await
            .expect("joins the topic")
            .unwrap();
        sub
    }

    /// Push an encoded announcement to `node` over `/knot/heads/1`.
    pub async fn push(&self, node: &TestNode, bytes: Vec<u8>) -> Result<(), String> {
        self.meet(node).await;
        knotd::heads::push(&self.endpoint, node.node.id(), bytes)
            .await
            .map_err(|e| e.to_string())
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

    /// Stop.
    pub async fn stop(self) {
        self.router.shutdown().await.unwrap();
    }
}
