//! `app.knot.repo` records: `RepoRecord::from_json`.
//!
//! Raw mode parses the input as JSON the way a PDS response is parsed, then
//! hands the value to `from_json`. Structured mode assembles a record-shaped
//! JSON value from the input (camelCase or snake_case keys, real node ids and
//! socket addresses mixed with arbitrary strings) so that validation and
//! peer normalization are reached often. An accepted record must survive a
//! serialize/parse round trip unchanged and be a fixed point of merging.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use iroh::SecretKey;
use knotd::record::{
    COLLECTION, MAX_ADDRS_PER_PEER, MAX_PEERS, MAX_TICKET_LEN, RepoRecord, merge_peers,
    merge_record,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

fn check_accepted(record: &RepoRecord) {
    assert_eq!(record.record_type, COLLECTION);
    if let Some(head) = &record.head {
        assert!(matches!(head.len(), 40 | 64));
    }
    if let Some(manifest) = &record.manifest {
        assert!(record.manifest_hash().is_some(), "manifest {manifest:?}");
    }
    assert!(record.peers.len() <= MAX_PEERS);
    assert!(
        record.peers.windows(2).all(|w| w[0].node_id < w[1].node_id),
        "peers not sorted and unique by node id"
    );
    for peer in &record.peers {
        assert!(peer.node_id.parse::<iroh::PublicKey>().is_ok());
        assert!(peer.addrs.len() <= MAX_ADDRS_PER_PEER);
        assert!(peer.addrs.windows(2).all(|w| w[0] < w[1]));
        for addr in &peer.addrs {
            let parsed: SocketAddr = addr.parse().expect("stored address parses");
            assert_eq!(&parsed.to_string(), addr, "address not normalized");
        }
        if let Some(ticket) = &peer.ticket {
            assert!(ticket.len() <= MAX_TICKET_LEN);
        }
    }

    let text = serde_json::to_string(record).expect("record serializes");
    let value: Value = serde_json::from_str(&text).expect("serialized record is JSON");
    let again = RepoRecord::from_json(value).expect("serialized record is rejected");
    assert_eq!(&again, record, "record changed in a JSON round trip");

    let merged = merge_record(record, record).expect("merging a record with itself");
    assert_eq!(&merged, record, "merging a record with itself changed it");
    let peers = merge_peers(record.peers.clone(), record.peers.clone());
    assert_eq!(peers, record.peers);
}

fn from_value(value: Value) {
    match RepoRecord::from_json(value) {
        Ok(record) => check_accepted(&record),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Text {
    Valid(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum NodeId {
    Hex([u8; 32]),
    Upper([u8; 32]),
    Base32([u8; 32]),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Addr {
    V4([u8; 4], u16),
    V6([u8; 16], u16, u32),
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct Peer {
    node_id: NodeId,
    addrs: Vec<Addr>,
    ticket: Option<String>,
    long_ticket: bool,
    snake_case: bool,
    extra: Option<(String, String)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    record_type: Option<Text>,
    repo_id: Text,
    snake_case: bool,
    head: Option<(bool, [u8; 32], Option<String>)>,
    manifest: Option<([u8; 32], bool, Option<String>)>,
    peers: Option<Vec<Peer>>,
    extra: Option<(String, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn node_id(choice: &NodeId) -> String {
    match choice {
        NodeId::Hex(seed) => SecretKey::from_bytes(seed).public().to_string(),
        NodeId::Upper(seed) => SecretKey::from_bytes(seed)
            .public()
            .to_string()
            .to_ascii_uppercase(),
        NodeId::Base32(seed) => data_encoding::BASE32_NOPAD
            .encode(SecretKey::from_bytes(seed).public().as_bytes())
            .to_ascii_lowercase(),
        NodeId::Any(s) => s.clone(),
    }
}

fn addr(choice: &Addr) -> String {
    match choice {
        Addr::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(*ip)), *port).to_string(),
        Addr::V6(ip, port, scope) => {
            let v6 = std::net::SocketAddrV6::new(Ipv6Addr::from(*ip), *port, 0, *scope);
            v6.to_string()
        }
        Addr::Any(s) => s.clone(),
    }
}

fn structured(bytes: &[u8]) {
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(bytes)) else {
        return;
    };
    let mut obj = Map::new();
    match &input.record_type {
        None => {}
        Some(Text::Valid(_)) => {
            obj.insert("$type".into(), json!(COLLECTION));
        }
        Some(Text::Any(s)) => {
            obj.insert("$type".into(), json!(s));
        }
    }
    let repo_id = match &input.repo_id {
        Text::Valid(n) => format!("did:plc:k{n}/repo-{n}"),
        Text::Any(s) => s.clone(),
    };
    let repo_key = if input.snake_case {
        "repo_id"
    } else {
        "repoId"
    };
    obj.insert(repo_key.into(), json!(repo_id));
    if let Some((sha256, bytes, other)) = &input.head {
        let head = match other {
            Some(s) => s.clone(),
            None if *sha256 => hex(bytes),
            None => hex(&bytes[..20]),
        };
        obj.insert("head".into(), json!(head));
    }
    if let Some((bytes, upper, other)) = &input.manifest {
        let manifest = match other {
            Some(s) => s.clone(),
            None if *upper => hex(bytes).to_ascii_uppercase(),
            None => hex(bytes),
        };
        obj.insert("manifest".into(), json!(manifest));
    }
    if let Some(peers) = &input.peers {
        let peers: Vec<Value> = peers
            .iter()
            .take(2 * MAX_PEERS)
            .map(|p| {
                let mut peer = Map::new();
                let key = if p.snake_case { "node_id" } else { "nodeId" };
                peer.insert(key.into(), json!(node_id(&p.node_id)));
                let addrs: Vec<String> = p.addrs.iter().take(64).map(addr).collect();
                peer.insert("addrs".into(), json!(addrs));
                if p.long_ticket {
                    peer.insert("ticket".into(), json!("e".repeat(MAX_TICKET_LEN + 1)));
                } else if let Some(t) = &p.ticket {
                    peer.insert("ticket".into(), json!(t));
                }
                if let Some((k, v)) = &p.extra {
                    peer.insert(k.clone(), json!(v));
                }
                Value::Object(peer)
            })
            .collect();
        obj.insert("peers".into(), Value::Array(peers));
    }
    if let Some((k, v)) = &input.extra {
        obj.insert(k.clone(), json!(v));
    }
    from_value(Value::Object(obj));
}

fn raw(bytes: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        from_value(value);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        raw(rest);
    } else {
        structured(rest);
    }
});
