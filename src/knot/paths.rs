//! How this node reaches the network right now, for `status`: its home
//! relays (connected or not) and, per known peer, whether the path in use
//! is direct or through a relay. Read from the endpoint on demand; nothing
//! here is kept.

use iroh::{
    Endpoint, EndpointId, TransportAddr, Watcher,
    endpoint::{RemoteInfo, TransportAddrUsage},
};

use crate::admin::{PathKind, PeerPath, RelayView};

/// Most peers `status` reports a path for.
pub(super) const MAX_PEER_PATHS: usize = 256;

/// The home relays and whether the endpoint is connected to each.
pub(super) fn relays(endpoint: &Endpoint) -> Vec<RelayView> {
    endpoint
        .home_relay_status()
        .get()
        .into_iter()
        .map(|status| RelayView {
            url: status.url().to_string(),
            connected: status.is_connected(),
            last_error: status.last_error().map(|e| e.to_string()),
        })
        .collect()
}

/// The path to each of `peers` (at most [`MAX_PEER_PATHS`]), direct ones
/// first, then relayed, then idle.
pub(super) async fn peer_paths(
    endpoint: &Endpoint,
    peers: impl IntoIterator<Item = EndpointId>,
) -> Vec<PeerPath> {
    let mut out = Vec::new();
    let me = endpoint.id();
    for peer in peers.into_iter().filter(|p| *p != me).take(MAX_PEER_PATHS) {
        let info = endpoint.remote_info(peer).await;
        out.push(classify(peer, info.as_ref()));
    }
    out.sort_by_key(|p| (p.path as u8, p.node_id.clone()));
    out
}

/// Direct when a direct path is open (iroh then sends over it), relayed
/// when only a relay path is, idle otherwise.
fn classify(peer: EndpointId, info: Option<&RemoteInfo>) -> PeerPath {
    let active: Vec<&TransportAddr> = info
        .into_iter()
        .flat_map(|i| i.addrs())
        .filter(|a| matches!(a.usage(), TransportAddrUsage::Active))
        .map(|a| a.addr())
        .collect();
    let direct = active
        .iter()
        .find(|a| matches!(a, TransportAddr::Ip(_)))
        .map(|a| (PathKind::Direct, a));
    let relayed = active
        .iter()
        .find(|a| matches!(a, TransportAddr::Relay(_)))
        .map(|a| (PathKind::Relayed, a));
    let (path, addr) = match direct.or(relayed) {
        Some((kind, TransportAddr::Ip(sock))) => (kind, Some(sock.to_string())),
        Some((kind, TransportAddr::Relay(url))) => (kind, Some(url.to_string())),
        Some((kind, other)) => (kind, Some(format!("{other:?}"))),
        None => (PathKind::Idle, None),
    };
    PeerPath {
        node_id: peer.to_string(),
        path,
        addr,
    }
}
