//! How `knotd admin` prints the node's answers: a table or a few lines for
//! people, or the JSON payload with `--json`.

use knotd::admin::{Payload, RepoSummary};

pub fn print_payload(payload: Payload, json: bool) {
    if json {
        let value = match &payload {
            Payload::Repos { repos } => serde_json::to_value(repos),
            Payload::Peers { peers } => serde_json::to_value(peers),
            Payload::Status(status) => serde_json::to_value(status),
            Payload::Policy(policy) => serde_json::to_value(policy),
            Payload::Verified(report) => serde_json::to_value(report),
            other => serde_json::to_value(other),
        }
        .expect("payload serializes");
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("json prints")
        );
        return;
    }
    match payload {
        Payload::Done { message } => println!("{message}"),
        Payload::Ticket { ticket } => println!("{ticket}"),
        Payload::Repos { repos } => print_repos(&repos),
        Payload::Status(s) => {
            println!("node id:   {}", s.node_id);
            println!("version:   {}", s.version);
            println!("uptime:    {}s", s.uptime_secs);
            println!("addresses: {}", s.addrs.join(", "));
            println!("repos:     {}", s.repo_count);
            let joined = s.repos.iter().filter(|r| r.topic_joined).count();
            println!(
                "topics:    {joined} joined, {} quiet (left until their next news)",
                s.repos.len() - joined
            );
            println!("ticket:    {}", s.ticket);
            println!(
                "jobs:      {} running, {} waiting ({} tasks alive)",
                s.jobs_running, s.jobs_waiting, s.tasks_alive
            );
            for f in &s.follows {
                println!(
                    "following: {} ({} repositories; last listed {}{})",
                    f.did,
                    f.repos,
                    f.last_list
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "never".into()),
                    f.last_error
                        .as_deref()
                        .map(|e| format!("; error: {e}"))
                        .unwrap_or_default()
                );
            }
            print_network(&s);
            if !s.repos.is_empty() {
                println!();
                print_repos(&s.repos);
            }
        }
        Payload::Refs(r) => {
            match &r.refs.head {
                Some(knotd::git::Head::Symbolic(target)) => println!("ref: {target}\tHEAD"),
                Some(knotd::git::Head::Detached(id)) => println!("{id}\tHEAD"),
                None => {}
            }
            for (name, id) in &r.refs.refs {
                println!("{id}\t{name}");
            }
        }
        Payload::Bridge => {}
        Payload::Published(p) => {
            if p.unchanged {
                println!(
                    "{}: nothing new to publish (manifest {})",
                    p.repo_id, p.manifest
                );
            } else {
                println!(
                    "published {}: head {} manifest {} ({} packs, {} bytes added{})",
                    p.repo_id,
                    p.head.as_deref().unwrap_or("-"),
                    p.manifest,
                    p.pack_count,
                    p.bytes_added,
                    if p.consolidated {
                        ", packs consolidated"
                    } else {
                        ""
                    }
                );
            }
        }
        Payload::Synced(s) => println!("{}: {}", s.repo_id, s.message),
        Payload::Mirrors { mirrors } => super::mirrors::print(&mirrors),
        Payload::Verified(report) => {
            for row in &report.repos {
                let what = match (&row.manifest, &row.error) {
                    (None, None) => "nothing held".to_string(),
                    (_, Some(error)) => format!("NOT WHOLE: {error}"),
                    (Some(_), None) if row.rebuilt + row.fetched == 0 => "ok".to_string(),
                    (Some(_), None) => format!(
                        "repaired ({} rebuilt from the materialized copy, {} fetched again)",
                        row.rebuilt, row.fetched
                    ),
                };
                println!("{}: {what}", row.repo_id);
            }
        }
        Payload::Policy(p) => {
            println!("default: {:?}", p.default);
            println!(
                "allow:   {}",
                if p.allow.is_empty() {
                    "-".into()
                } else {
                    p.allow.join(", ")
                }
            );
            println!(
                "block:   {}",
                if p.block.is_empty() {
                    "-".into()
                } else {
                    p.block.join(", ")
                }
            );
        }
        Payload::Replicas(r) => println!(
            "{}: {} peers hold {}: {}",
            r.repo_id,
            r.holding.len(),
            r.manifest.chars().take(12).collect::<String>(),
            r.holding
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Payload::Peers { peers } => {
            if peers.is_empty() {
                println!("no peers known");
            }
            println!(
                "{:64}  {:18}  {:9}  {:8}  {:12}  ADDRESSES",
                "NODE", "SOURCE", "LINK", "STATE", "HOLDS"
            );
            for p in peers {
                let source = match p.source {
                    knotd::admin::PeerSource::Operator => "operator (trusted)",
                    knotd::admin::PeerSource::Record => "record (trusted)",
                    knotd::admin::PeerSource::Learned => "learned",
                };
                println!(
                    "{:64}  {:18}  {:9}  {:8}  {:12}  {}{}",
                    p.hint.node_id,
                    source,
                    if p.connected { "connected" } else { "-" },
                    p.status.as_str(),
                    p.replica
                        .as_ref()
                        .map(|r| r.manifest.chars().take(12).collect::<String>())
                        .unwrap_or_else(|| "-".into()),
                    if p.hint.addrs.is_empty() {
                        "(no direct addresses)".to_string()
                    } else {
                        p.hint.addrs.join(",")
                    },
                    if p.hint.ticket.is_some() {
                        "  (ticket)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

/// Relay, discovery and the path to each peer.
fn print_network(s: &knotd::admin::NodeStatus) {
    println!("relay:     {}", s.relay_mode);
    for relay in &s.relays {
        let state = if relay.connected {
            "connected".to_string()
        } else {
            match &relay.last_error {
                Some(e) => format!("NOT connected ({e})"),
                None => "not connected yet".to_string(),
            }
        };
        println!("  home relay {}  {}", relay.url, state);
    }
    if s.relays.is_empty() && s.relay_mode != "disabled" {
        println!("  no home relay chosen yet");
    }
    println!("discovery: {}", s.discovery);
    if !s.peer_paths.is_empty() {
        println!();
        println!("{:64}  {:8}  ADDRESS", "PEER", "PATH");
        for p in &s.peer_paths {
            let path = match p.path {
                knotd::admin::PathKind::Direct => "direct",
                knotd::admin::PathKind::Relayed => "relayed",
                knotd::admin::PathKind::Idle => "idle",
            };
            println!(
                "{:64}  {:8}  {}",
                p.node_id,
                path,
                p.addr.as_deref().unwrap_or("-")
            );
        }
    }
}

fn short(s: &Option<String>, n: usize) -> String {
    s.as_deref()
        .map(|s| s.chars().take(n).collect())
        .unwrap_or_else(|| "-".into())
}

fn print_repos(repos: &[RepoSummary]) {
    if repos.is_empty() {
        println!("no repositories tracked; add one with `knotd admin add-repo <did>/<name>`");
        return;
    }
    let width = repos
        .iter()
        .map(|r| r.repo_id.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!(
        "{:width$}  {:12}  {:12}  {:>5}  {:>10}  {:>7}  {:10}  NOTES",
        "REPO", "HEAD", "MANIFEST", "PACKS", "BYTES", "IN SYNC", "LAST SYNC"
    );
    for r in repos {
        println!(
            "{:width$}  {:12}  {:12}  {:>5}  {:>10}  {:>3}/{:<3}  {:10}  {}",
            r.repo_id,
            short(&r.head, 12),
            short(&r.manifest, 12),
            r.pack_count,
            r.bytes_pinned,
            r.peers_in_sync,
            r.peers_known,
            r.last_sync
                .map(|t| t.to_string())
                .unwrap_or_else(|| "never".into()),
            repo_note(r)
        );
    }
}

/// The last column of `list`: an error, or how the repository is followed.
fn repo_note(r: &RepoSummary) -> String {
    let mut notes = Vec::new();
    if let Some(e) = &r.last_error {
        notes.push(e.clone());
    }
    match (&r.followed_via, r.record_deleted) {
        (Some(did), true) => notes.push(format!(
            "record deleted by {did}; its peers are no longer trusted; removed {} unless the record comes back",
            r.remove_at
                .map_or("later".to_string(), |at| format!("at {at} (Unix time)"))
        )),
        (Some(did), false) => notes.push(format!("followed via {did}")),
        (None, true) => notes.push(
            "record deleted by its owner; its peers are no longer trusted; content kept until `knotd admin remove-repo`".into(),
        ),
        (None, false) => {}
    }
    if let Some(m) = &r.fetching {
        notes.push(format!("fetching {}", &m[..m.len().min(12)]));
    }
    notes.join("; ")
}
