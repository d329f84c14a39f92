//! Gossip announcements: `Announcement::peek_repo_id` and
//! `Announcement::decode_verified`.
//!
//! The first input byte picks a mode. Raw mode feeds the remaining bytes to
//! the decoder as they arrive off the wire. Structured mode builds a correctly
//! signed announcement from the input, optionally flips bytes of its encoding,
//! and checks that the decoder accepts exactly what it should.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use iroh::SecretKey;
use knotd::announce::{Announcement, MAX_ADDRS, MAX_MESSAGE_SIZE, Statement};
use knotd::repo_id::RepoId;
use libfuzzer_sys::fuzz_target;

const FIXED_REPO: &str = "did:plc:abc123/website";

fn is_hex_head(head: &str) -> bool {
    matches!(head.len(), 40 | 64)
        && head
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Invariants of a message that `decode_verified` accepted for `repo`.
fn check_accepted(bytes: &[u8], repo: &RepoId, ann: &Announcement) {
    assert!(bytes.len() <= MAX_MESSAGE_SIZE);
    assert_eq!(ann.statement.statement.repo_id, repo.as_str());
    assert!(ann.sender_addrs.len() <= MAX_ADDRS);
    assert!(ann.sender_id().is_some());
    assert!(ann.statement.statement.publisher_id().is_some());
    assert!(ann.statement.verify().is_ok());
    if let Some(head) = &ann.statement.statement.head {
        assert!(is_hex_head(head), "accepted head {head:?}");
    }
    assert_eq!(
        Announcement::peek_repo_id(bytes).as_ref(),
        Some(repo),
        "peek disagrees with decode"
    );
    let encoded = ann.encode();
    let again = Announcement::decode_verified(&encoded, repo)
        .expect("re-encoding of an accepted announcement is rejected");
    assert_eq!(&again, ann);
}

fn raw(bytes: &[u8]) {
    let fixed = RepoId::parse(FIXED_REPO).unwrap();
    match Announcement::decode_verified(bytes, &fixed) {
        Ok(ann) => check_accepted(bytes, &fixed, &ann),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Some(peeked) = Announcement::peek_repo_id(bytes) {
        assert_eq!(RepoId::parse(peeked.as_str()).as_ref(), Ok(&peeked));
        match Announcement::decode_verified(bytes, &peeked) {
            Ok(ann) => check_accepted(bytes, &peeked, &ann),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum RepoChoice {
    Fixed,
    Parts(u8, String),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum HeadChoice {
    None,
    Sha1([u8; 20]),
    Sha256([u8; 32]),
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    repo: RepoChoice,
    head: HeadChoice,
    manifest: [u8; 32],
    seq: u64,
    publisher_seed: [u8; 32],
    forwarded: Option<[u8; 32]>,
    addrs: Vec<([u8; 16], u16, bool)>,
    flips: Vec<(u16, u8)>,
    truncate: Option<u16>,
    topic: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn repo_string(choice: &RepoChoice) -> String {
    match choice {
        RepoChoice::Fixed => FIXED_REPO.to_string(),
        RepoChoice::Parts(n, name) => format!("did:plc:k{n}/{name}"),
        RepoChoice::Any(s) => s.clone(),
    }
}

fn structured(bytes: &[u8]) {
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(bytes)) else {
        return;
    };
    let repo_id = repo_string(&input.repo);
    let head = match &input.head {
        HeadChoice::None => None,
        HeadChoice::Sha1(b) => Some(hex(b)),
        HeadChoice::Sha256(b) => Some(hex(b)),
        HeadChoice::Any(s) => Some(s.clone()),
    };
    let publisher = SecretKey::from_bytes(&input.publisher_seed);
    let sender = input
        .forwarded
        .map(|seed| SecretKey::from_bytes(&seed))
        .unwrap_or_else(|| publisher.clone());
    let addrs: Vec<SocketAddr> = input
        .addrs
        .iter()
        .take(64)
        .map(|(ip, port, v6)| {
            let ip = if *v6 {
                IpAddr::V6(Ipv6Addr::from(*ip))
            } else {
                IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
            };
            SocketAddr::new(ip, *port)
        })
        .collect();
    let statement = Statement {
        repo_id: repo_id.clone(),
        head: head.clone(),
        manifest: input.manifest,
        seq: input.seq,
        publisher: *publisher.public().as_bytes(),
    }
    .sign(&publisher);
    let ann = Announcement::new(statement, &sender, addrs);
    assert!(ann.sender_addrs.len() <= MAX_ADDRS);
    assert!(ann.sender_addrs.windows(2).all(|w| w[0] < w[1]));
    let mut encoded = ann.encode();
    let pristine = encoded.clone();
    for (at, xor) in &input.flips {
        if encoded.is_empty() {
            break;
        }
        let at = usize::from(*at) % encoded.len();
        encoded[at] ^= xor;
    }
    if let Some(len) = input.truncate {
        encoded.truncate(usize::from(len));
    }
    let untouched = encoded == pristine;

    let topic = match &input.topic {
        Some(t) => RepoId::parse(t).ok(),
        None => RepoId::parse(&repo_id).ok(),
    };
    let Some(topic) = topic else {
        raw(&encoded);
        return;
    };
    let result = Announcement::decode_verified(&encoded, &topic);
    match &result {
        Ok(decoded) => check_accepted(&encoded, &topic, decoded),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if untouched {
        let should_accept = encoded.len() <= MAX_MESSAGE_SIZE
            && topic.as_str() == repo_id
            && head.as_deref().is_none_or(is_hex_head);
        if should_accept {
            assert_eq!(result.as_ref(), Ok(&ann), "valid announcement rejected");
        } else {
            assert!(result.is_err(), "invalid announcement accepted");
        }
    }
    raw(&encoded);
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
