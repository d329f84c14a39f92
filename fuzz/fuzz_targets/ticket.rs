//! Peer tickets and record locators: `knot::parse_ticket`,
//! `knot::hint_to_addr` and `knot::build_locator`.
//!
//! Mode 0 feeds the input to `parse_ticket` as text (a ticket or a bare
//! node id). Mode 1 builds a real
//! endpoint ticket from the input (key, addresses, surrounding whitespace)
//! and checks the hint it parses into. Mode 2 fuzzes `build_locator` with an
//! arbitrary repository id, `--pds` and `--record`.

#![no_main]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use iroh::{EndpointAddr, SecretKey};
use iroh_tickets::endpoint::EndpointTicket;
use knotd::knot::{build_locator, hint_to_addr, parse_ticket, valid_rkey};
use knotd::record::{COLLECTION, PeerHint};
use knotd::repo_id::{RepoId, validate_did};
use libfuzzer_sys::fuzz_target;

fn check_hint(text: &str, hint: &PeerHint) {
    assert_eq!(hint.ticket.as_deref(), Some(text.trim()));
    let id: iroh::PublicKey = hint.node_id.parse().expect("hint node id parses");
    assert_eq!(id.to_string(), hint.node_id, "node id not canonical");
    assert!(hint.addrs.windows(2).all(|w| w[0] < w[1]));
    for addr in &hint.addrs {
        let parsed: SocketAddr = addr.parse().expect("hint address parses");
        assert_eq!(&parsed.to_string(), addr);
    }
    let addr = hint_to_addr(hint).expect("hint from a ticket has an address");
    assert_eq!(addr.id, id);
    let ips: BTreeSet<String> = addr.ip_addrs().map(|a| a.to_string()).collect();
    let listed: BTreeSet<String> = hint.addrs.iter().cloned().collect();
    assert_eq!(ips, listed, "address from the ticket lost or invented");
}

fn text_mode(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    match parse_ticket(&text) {
        // A bare node id is accepted too (addresses come from discovery).
        Ok(hint) if hint.ticket.is_none() => {
            let id: iroh::PublicKey = text.trim().parse().expect("only a node id has no ticket");
            assert_eq!(hint.node_id, id.to_string());
            assert!(hint.addrs.is_empty());
        }
        Ok(hint) => check_hint(&text, &hint),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[derive(Arbitrary, Debug)]
struct TicketInput {
    seed: [u8; 32],
    addrs: Vec<([u8; 16], u16, bool)>,
    before: String,
    after: String,
    flips: Vec<(u16, u8)>,
}

fn ticket_mode(bytes: &[u8]) {
    let Ok(input) = TicketInput::arbitrary(&mut Unstructured::new(bytes)) else {
        return;
    };
    let key = SecretKey::from_bytes(&input.seed).public();
    let mut addr = EndpointAddr::new(key);
    for (ip, port, v6) in input.addrs.iter().take(32) {
        let ip = if *v6 {
            IpAddr::V6(Ipv6Addr::from(*ip))
        } else {
            IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
        };
        addr = addr.with_ip_addr(SocketAddr::new(ip, *port));
    }
    let ticket = EndpointTicket::new(addr.clone()).to_string();
    let pad = |s: &str| -> String { s.chars().filter(|c| c.is_whitespace()).collect() };
    let text = format!("{}{ticket}{}", pad(&input.before), pad(&input.after));
    let hint = parse_ticket(&text).expect("a real ticket is rejected");
    check_hint(&text, &hint);
    assert_eq!(hint.node_id, key.to_string());
    assert_eq!(hint_to_addr(&hint).expect("address"), addr);

    if !input.flips.is_empty() {
        let mut mutated = text.into_bytes();
        for (at, xor) in &input.flips {
            let at = usize::from(*at) % mutated.len();
            mutated[at] ^= xor;
        }
        text_mode(&mutated);
    }
}

#[derive(Arbitrary, Debug)]
enum RepoChoice {
    Fixed,
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum RecordChoice {
    None,
    Owner(String),
    Parts(String, String, String),
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct LocatorInput {
    repo: RepoChoice,
    pds: Option<String>,
    record: RecordChoice,
}

fn locator_mode(bytes: &[u8]) {
    let Ok(input) = LocatorInput::arbitrary(&mut Unstructured::new(bytes)) else {
        return;
    };
    let repo = match &input.repo {
        RepoChoice::Fixed => "did:plc:abc123/website".to_string(),
        RepoChoice::Any(s) => s.clone(),
    };
    let Ok(repo_id) = RepoId::parse(&repo) else {
        return;
    };
    let record = match &input.record {
        RecordChoice::None => None,
        RecordChoice::Owner(rkey) => Some(format!("at://{}/{COLLECTION}/{rkey}", repo_id.did())),
        RecordChoice::Parts(did, collection, rkey) => {
            Some(format!("at://{did}/{collection}/{rkey}"))
        }
        RecordChoice::Any(s) => Some(s.clone()),
    };
    let pds_ok = input
        .pds
        .as_deref()
        .is_none_or(|p| p.starts_with("https://") || p.starts_with("http://"));
    match build_locator(&repo_id, input.pds.clone(), record.clone()) {
        Ok(None) => assert!(input.pds.is_none() && record.is_none()),
        Ok(Some(locator)) => {
            assert!(pds_ok);
            assert_eq!(locator.pds, input.pds);
            assert_eq!(locator.did, repo_id.did());
            assert!(validate_did(&locator.did).is_ok());
            assert_eq!(locator.collection, COLLECTION);
            assert!(valid_rkey(&locator.rkey), "invalid rkey {:?}", locator.rkey);
            assert!(!locator.rkey.contains('/'));
            match &record {
                Some(uri) => assert_eq!(
                    uri,
                    &format!(
                        "at://{}/{}/{}",
                        locator.did, locator.collection, locator.rkey
                    )
                ),
                None => assert_eq!(locator.rkey, repo_id.name()),
            }
        }
        Err(e) => {
            let _ = e.to_string();
            if pds_ok {
                assert!(record.is_some(), "no record and a valid pds must succeed");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => text_mode(rest),
        1 => ticket_mode(rest),
        _ => locator_mode(rest),
    }
});
