//! HTML of the knot's pages, as pure functions of what the node reports:
//! no I/O, no clock (the caller passes `now`), so every page is unit-tested
//! with hostile strings in every field. maud escapes every value written
//! with `(...)`; nothing from a record, a peer or a request is ever
//! written unescaped.

use maud::{DOCTYPE, Markup, html};

use crate::admin::{EventLine, NodeStatus, PathKind, PeerView, RefsReport, RepoSummary};
use crate::git::Head;

/// Where the page is served from, for clone commands: `scheme://host`.
#[derive(Debug, Clone)]
pub struct Site {
    /// `http` or `https`.
    pub scheme: String,
    /// The host (and port) the browser asked for.
    pub host: String,
}

impl Site {
    /// The smart HTTP clone command: the path encoded as the git routes
    /// decode it (a DID may hold `%`, as in `did:web:host%3A8080`).
    fn http_clone(&self, repo_id: &str) -> String {
        format!(
            "git clone {}://{}{}",
            self.scheme,
            self.host,
            repo_href(repo_id)
        )
    }
}

/// `git clone knot://<repo_id>`.
fn knot_clone(repo_id: &str) -> String {
    format!("git clone knot://{repo_id}")
}

/// One page of the repository list.
#[derive(Debug)]
pub struct IndexPage<'a> {
    /// The rows of this page.
    pub repos: &'a [RepoSummary],
    /// Verified handles of the rows' owners, by repository id.
    pub handles: &'a std::collections::HashMap<String, String>,
    /// Repositories the node tracks.
    pub total: usize,
    /// Repositories matching the query.
    pub matched: usize,
    /// The search text.
    pub query: &'a str,
    /// This page (0-based).
    pub page: usize,
    /// Pages in all (at least 1).
    pub pages: usize,
}

/// A repository's state in words, and a class for its colour.
pub fn state_of(repo: &RepoSummary) -> (String, &'static str) {
    if let Some(error) = &repo.last_error {
        return (format!("error: {error}"), "error");
    }
    if repo.fetching.is_some() {
        return ("fetching".into(), "busy");
    }
    match (&repo.manifest, &repo.materialized) {
        (None, _) => ("waiting for a first state".into(), "busy"),
        (Some(held), Some(served)) if held == served => ("in sync".into(), "ok"),
        _ => ("materializing".into(), "busy"),
    }
}

/// `1.2 MiB`, `512 B`.
pub fn size(bytes: u64) -> String {
    crate::remote_helper::human_bytes(bytes)
}

/// `3 min ago` for a time `ago_secs` in the past.
pub fn ago(ago_secs: u64) -> String {
    match ago_secs {
        0..60 => format!("{ago_secs} s ago"),
        60..3600 => format!("{} min ago", ago_secs / 60),
        3600..86_400 => format!("{} h ago", ago_secs / 3600),
        _ => format!("{} days ago", ago_secs / 86_400),
    }
}

/// `1 pack`, `3 packs`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The first `n` characters (object ids, node ids).
fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `/<did>/<name>`, each part percent-encoded for a URL path.
pub fn repo_href(repo_id: &str) -> String {
    let mut href = String::with_capacity(repo_id.len() + 1);
    for part in repo_id.split('/') {
        href.push('/');
        href.extend(percent_encoding::utf8_percent_encode(part, PATH_PART));
    }
    href
}

/// Characters escaped in a path segment (`:` stays, as in a DID).
const PATH_PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b':')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_');

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/assets/knot.css";
                link rel="icon" href="/favicon.svg" type="image/svg+xml";
                script src="/assets/knot.js" defer {}
            }
            body {
                header {
                    a.home href="/" { "knot" }
                    nav { a href="/" { "repositories" } " " a href="/status" { "status" } }
                }
                main { (body) }
            }
        }
    }
}

fn clone_commands(site: &Site, repo_id: &str) -> Markup {
    html! {
        ul.clone {
            @for command in [site.http_clone(repo_id), knot_clone(repo_id)] {
                li {
                    code { (command) }
                    " "
                    button.copy type="button" data-copy=(command) hidden { "copy" }
                }
            }
        }
    }
}

/// `/`: the repositories this knot seeds.
pub fn index(site: &Site, page: &IndexPage<'_>, now_secs: u64) -> Markup {
    let body = html! {
        h1 { "Repositories on this knot" }
        form.search method="get" action="/" {
            label for="q" { "Search" }
            " "
            input id="q" type="search" name="q" value=(page.query) placeholder="did or name" autocomplete="off";
            " "
            button type="submit" { "search" }
        }
        div #rows { (index_rows(site, page, now_secs)) }
    };
    layout("Repositories on this knot", body)
}

/// The list part of `/` (what the search box replaces as you type).
pub fn index_rows(site: &Site, page: &IndexPage<'_>, now_secs: u64) -> Markup {
    html! {
        p.count {
            @if page.query.is_empty() {
                (page.total) " repositories"
            } @else {
                (page.matched) " of " (page.total) " repositories match “" (page.query) "”"
            }
        }
        ul.repos {
            @for repo in page.repos {
                (index_row(site, repo, page.handles.get(&repo.repo_id).map(String::as_str), now_secs))
            }
        }
        @if page.pages > 1 {
            nav.pager {
                @if page.page > 0 {
                    a rel="prev" href=(page_href(page.query, page.page - 1)) { "← previous" }
                    " "
                }
                "page " (page.page + 1) " of " (page.pages)
                @if page.page + 1 < page.pages {
                    " "
                    a rel="next" href=(page_href(page.query, page.page + 1)) { "next →" }
                }
            }
        }
    }
}

fn page_href(query: &str, page: usize) -> String {
    let q = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
    format!("/?q={q}&page={page}")
}

fn index_row(site: &Site, repo: &RepoSummary, handle: Option<&str>, now_secs: u64) -> Markup {
    let (state, class) = state_of(repo);
    let (owner, name) = repo.repo_id.split_once('/').unwrap_or(("", &repo.repo_id));
    html! {
        li.repo data-id=(repo.repo_id) {
            div.title {
                a.name href=(repo_href(&repo.repo_id)) { (name) }
                " "
                span.owner { (owner_words(owner, handle)) }
                " "
                span class={ "state " (class) } { (state) }
            }
            div.facts {
                @if let Some(head) = &repo.head {
                    span { "head " code { (short(head, 12)) } }
                }
                @if let Some(seq) = repo.seq {
                    span { "changed " (ago(now_secs.saturating_sub(seq / 1000))) }
                }
                span { (size(repo.bytes_pinned)) }
                span { (repo.peers_in_sync) " replicas seen" }
            }
            (clone_commands(site, &repo.repo_id))
        }
    }
}

/// `@handle (did)`, or the DID alone.
fn owner_words(did: &str, handle: Option<&str>) -> String {
    match handle {
        Some(handle) => format!("@{handle} ({did})"),
        None => did.to_string(),
    }
}

/// What the repository page shows besides its summary.
#[derive(Debug)]
pub struct RepoPage<'a> {
    /// The repository.
    pub repo: &'a RepoSummary,
    /// The owner's verified handle, if known.
    pub handle: Option<&'a str>,
    /// Its refs, from the manifest held.
    pub refs: Option<&'a RefsReport>,
    /// Its peers, with the path to each (`None`: no connection).
    pub peers: &'a [(PeerView, Option<PathKind>)],
    /// Its recent events, newest first.
    pub events: &'a [EventLine],
    /// Annotated tags' object ids to the commits they peel to.
    pub peeled: &'a std::collections::BTreeMap<crate::git::ObjectId, crate::git::ObjectId>,
}

/// `/<did>/<name>`: one repository.
pub fn repo(site: &Site, page: &RepoPage<'_>, now_secs: u64) -> Markup {
    let repo = page.repo;
    let (state, class) = state_of(repo);
    let (branches, tags) = split_refs(page.refs);
    let body = html! {
        h1 { (repo.repo_id) }
        p {
            @if let Some(handle) = page.handle { "by @" (handle) " " }
            span class={ "state " (class) } { (state) }
        }
        (clone_commands(site, &repo.repo_id))
        dl.facts {
            @if let Some(head) = &repo.head { dt { "head" } dd { code { (head) } } }
            @if let Some(seq) = repo.seq { dt { "changed" } dd { (ago(now_secs.saturating_sub(seq / 1000))) } }
            @if let Some(manifest) = &repo.manifest { dt { "manifest" } dd { code { (manifest) } } }
            dt { "size" } dd { (size(repo.bytes_pinned)) " in " (plural(repo.pack_count, "pack")) }
            dt { "replicas seen" } dd { (repo.peers_in_sync) }
            @if let Some(record) = &repo.record { dt { "record" } dd { code { (record) } } }
        }
        @if let Some(Head::Symbolic(target)) = page.refs.and_then(|r| r.refs.head.as_ref()) {
            p { "HEAD → " code { (target) } }
        }
        @if page.refs.is_some() {
            h2 { "Branches" }
            (ref_table(&branches, "refs/heads/"))
            h2 { "Tags" }
            (ref_table(&peel(&tags, page.peeled), "refs/tags/"))
        } @else if repo.manifest.is_none() {
            h2 { "Branches and tags" }
            p { "No state held yet." }
        } @else {
            h2 { "Branches and tags" }
            p { "Not available: the node could not read the state it holds. Retry shortly." }
        }
        h2 { "Peers" }
        @if page.peers.is_empty() {
            p { "No peers known." }
        } @else {
            table.peers {
                thead { tr { th { "node" } th { "path" } th { "state" } th { "known from" } } }
                tbody {
                    @for (peer, path) in page.peers {
                        tr {
                            td { code title=(peer.hint.node_id) { (short(&peer.hint.node_id, 16)) } }
                            td { (path_words(*path, peer.connected)) }
                            td { (peer.status.as_str()) }
                            td { (source_words(peer)) }
                        }
                    }
                }
            }
        }
        h2 { "Recent events" }
        (event_list(page.events, None))
    };
    layout(&repo.repo_id, body)
}

/// Ref names (as stored) with their object ids.
type RefRows<'a> = Vec<(&'a str, String)>;

fn split_refs(refs: Option<&RefsReport>) -> (RefRows<'_>, RefRows<'_>) {
    let mut branches = Vec::new();
    let mut tags = Vec::new();
    for (name, id) in refs.map(|r| r.refs.refs.iter()).into_iter().flatten() {
        if name.starts_with("refs/heads/") {
            branches.push((name.as_str(), id.to_string()));
        } else if name.starts_with("refs/tags/") {
            tags.push((name.as_str(), id.to_string()));
        }
    }
    (branches, tags)
}

/// Most refs of one kind listed on a repository page.
const MAX_REFS_SHOWN: usize = 200;

/// Tags with the commit each points at: an annotated tag's object id is
/// replaced by the commit it peels to.
fn peel<'a>(
    tags: &[(&'a str, String)],
    peeled: &std::collections::BTreeMap<crate::git::ObjectId, crate::git::ObjectId>,
) -> RefRows<'a> {
    tags.iter()
        .map(|(name, id)| {
            let commit = id
                .parse::<crate::git::ObjectId>()
                .ok()
                .and_then(|id| peeled.get(&id))
                .map_or_else(|| id.clone(), |commit| commit.to_string());
            (*name, commit)
        })
        .collect()
}

fn ref_table(refs: &[(&str, String)], prefix: &str) -> Markup {
    html! {
        @if refs.is_empty() {
            p { "None." }
        } @else {
            table.refs {
                tbody {
                    @for (name, id) in refs.iter().take(MAX_REFS_SHOWN) {
                        tr { td { (name.strip_prefix(prefix).unwrap_or(name)) } td { code { (short(id, 12)) } } }
                    }
                }
            }
            @if refs.len() > MAX_REFS_SHOWN {
                p { "and " (refs.len() - MAX_REFS_SHOWN) " more" }
            }
        }
    }
}

/// The path to a peer in words. The node reports paths for a bounded set
/// of peers; a connected peer outside it has a path this page cannot name.
fn path_words(path: Option<PathKind>, connected: bool) -> &'static str {
    match path {
        Some(PathKind::Direct) => "direct",
        Some(PathKind::Relayed) => "relayed",
        _ if connected => "connected (path not reported)",
        Some(PathKind::Idle) | None => "not connected",
    }
}

fn source_words(peer: &PeerView) -> &'static str {
    match peer.source {
        crate::admin::PeerSource::Operator => "the operator",
        crate::admin::PeerSource::Record => "the owner's record",
        crate::admin::PeerSource::Learned => "gossip",
    }
}

/// Recent events, newest first; with `live`, the list the page's script
/// appends to from the event stream at that URL.
fn event_list(events: &[EventLine], live: Option<&str>) -> Markup {
    html! {
        ol.events data-live=[live] {
            @for event in events {
                li { time { (clock(event.at_ms)) } " " (event.describe()) }
            }
        }
        @if events.is_empty() && live.is_none() {
            p { "None since the node started." }
        }
    }
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the epoch.
pub fn clock(at_ms: u64) -> String {
    let secs = at_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Node-wide figures the status page shows beside [`NodeStatus`].
#[derive(Debug, Default)]
pub struct Totals {
    /// Bytes pinned by all repositories.
    pub bytes_pinned: u64,
    /// The node's storage limit, if any.
    pub max_total_bytes: Option<u64>,
    /// Repositories in sync, fetching, with an error.
    pub in_sync: usize,
    /// Repositories fetching or materializing.
    pub busy: usize,
    /// Repositories with an error.
    pub errors: usize,
}

impl Totals {
    /// Sum the rows of a status.
    pub fn of(repos: &[RepoSummary], max_total_bytes: Option<u64>) -> Self {
        let mut totals = Totals {
            max_total_bytes,
            ..Default::default()
        };
        for repo in repos {
            totals.bytes_pinned += repo.bytes_pinned;
            match state_of(repo).1 {
                "ok" => totals.in_sync += 1,
                "error" => totals.errors += 1,
                _ => totals.busy += 1,
            }
        }
        totals
    }
}

/// `/status`: the node; `metrics`, when the node keeps them, in
/// Prometheus' text format.
pub fn status(
    status: &NodeStatus,
    totals: &Totals,
    events: &[EventLine],
    metrics: Option<&str>,
) -> Markup {
    let connected_relays = status.relays.iter().filter(|r| r.connected).count();
    let direct = status
        .peer_paths
        .iter()
        .filter(|p| p.path == PathKind::Direct)
        .count();
    let relayed = status
        .peer_paths
        .iter()
        .filter(|p| p.path == PathKind::Relayed)
        .count();
    let body = html! {
        h1 { "Node status" }
        dl.facts {
            dt { "node id" } dd { code { (status.node_id) } }
            dt { "version" } dd { (status.version) }
            dt { "uptime" } dd { (uptime(status.uptime_secs)) }
            dt { "relay" } dd {
                (status.relay_mode)
                @if !status.relays.is_empty() {
                    ": " (connected_relays) " of " (status.relays.len()) " connected"
                }
            }
            dt { "discovery" } dd { (status.discovery) }
            dt { "peers" } dd { (direct) " direct, " (relayed) " relayed, " (status.connections_open) " connections open" }
            dt { "repositories" } dd {
                (status.repo_count) ": " (totals.in_sync) " in sync, " (totals.busy) " busy, " (totals.errors) " with an error"
            }
            dt { "storage" } dd {
                (size(totals.bytes_pinned))
                @if let Some(max) = totals.max_total_bytes { " of " (size(max)) }
            }
            dt { "jobs" } dd { (status.jobs_running) " running, " (status.jobs_waiting) " waiting" }
            dt { "gossip" } dd {
                (status.gossip.received) " announcements received, "
                (status.gossip.rejected) " not taken, "
                (status.gossip.dropped_invalid) " invalid, "
                (status.gossip.rate_limited) " over rate"
            }
            dt { "follows" } dd { (status.follows.len()) " identities" }
        }
        @if let Some(metrics) = metrics {
            details.metrics {
                summary { "Every series the Prometheus endpoint exports" }
                pre { (metrics) }
            }
        } @else {
            p { "With [metrics] on, every series the Prometheus endpoint exports is shown here too." }
        }
        h2 { "Live events" }
        p.live-note { "New events appear here as they happen (needs JavaScript)." }
        (event_list(events, Some("/status/events")))
    };
    layout("Node status", body)
}

fn uptime(secs: u64) -> String {
    format!(
        "{}d {:02}:{:02}:{:02}",
        secs / 86_400,
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// A page saying something is not here.
pub fn not_found(what: &str) -> Markup {
    layout("Not found", html! { h1 { "Not found" } p { (what) } })
}

/// A page saying the node could not answer.
pub fn unavailable(why: &str) -> Markup {
    layout(
        "Unavailable",
        html! { h1 { "The node could not answer" } p { (why) } },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::admin::{GossipStats, NodeEvent, PeerSource, ReplicaStatus};
    use crate::record::PeerHint;

    /// A string a stranger would put in a field to run script in a page.
    const HOSTILE: &str = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&";

    fn site() -> Site {
        Site {
            scheme: "http".into(),
            host: "knot.example:8419".into(),
        }
    }

    pub(crate) fn summary(repo_id: &str) -> RepoSummary {
        RepoSummary {
            repo_id: repo_id.into(),
            head: Some("a".repeat(40)),
            manifest: Some("b".repeat(64)),
            materialized: Some("b".repeat(64)),
            seq: Some(1_000_000),
            fetching: None,
            pack_count: 1,
            bytes_pinned: 2048,
            last_sync: None,
            last_poll: None,
            last_error: None,
            peers_known: 1,
            trusted_peers: 1,
            peers_connected: 0,
            topic_joined: false,
            peers_in_sync: 3,
            max_bytes: None,
            record: None,
            write_back_pending: false,
            followed_via: None,
            record_deleted: false,
            remove_at: None,
        }
    }

    fn hostile_summary() -> RepoSummary {
        RepoSummary {
            head: Some(HOSTILE.into()),
            manifest: Some(HOSTILE.into()),
            last_error: Some(HOSTILE.into()),
            record: Some(HOSTILE.into()),
            ..summary(&format!("did:plc:{HOSTILE}/{HOSTILE}"))
        }
    }

    fn hostile_event() -> EventLine {
        EventLine {
            at_ms: 0,
            repo: Some(HOSTILE.into()),
            event: NodeEvent::FetchFailed {
                manifest: HOSTILE.into(),
                error: HOSTILE.into(),
            },
        }
    }

    /// No markup from a field survives: every `<` of the hostile string is
    /// escaped, and no attribute can be broken out of.
    fn assert_escaped(page: &str) {
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("\"'>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)"), "{page}");
    }

    #[test]
    fn the_index_escapes_every_field_and_the_query() {
        let repos = vec![hostile_summary()];
        let hostile_site = Site {
            scheme: "http".into(),
            host: HOSTILE.into(),
        };
        let page = IndexPage {
            handles: &Default::default(),
            repos: &repos,
            total: 1,
            matched: 1,
            query: HOSTILE,
            page: 0,
            pages: 3,
        };
        let html = index(&hostile_site, &page, 2_000).into_string();
        assert_escaped(&html);
        // The pager's links carry the query percent-encoded.
        assert!(html.contains("/?q=%3Cscript%3E"), "{html}");
    }

    #[test]
    fn the_index_lists_repositories_with_both_clone_commands() {
        let repos = vec![summary("did:plc:abc123/website")];
        let handles = [(
            "did:plc:abc123/website".to_string(),
            "alice.test".to_string(),
        )]
        .into();
        let page = IndexPage {
            handles: &handles,
            repos: &repos,
            total: 1,
            matched: 1,
            query: "",
            page: 0,
            pages: 1,
        };
        let html = index(&site(), &page, 2_000).into_string();
        assert!(html.contains("git clone http://knot.example:8419/did:plc:abc123/website"));
        assert!(html.contains("git clone knot://did:plc:abc123/website"));
        assert!(html.contains("href=\"/did:plc:abc123/website\""));
        assert!(html.contains("in sync"));
        assert!(html.contains("@alice.test (did:plc:abc123)"), "{html}");
        assert!(html.contains("3 replicas seen"));
        assert!(html.contains("2.0 KiB"));
        assert!(!html.contains("pager"), "one page needs no pager");
    }

    #[test]
    fn the_repository_page_escapes_refs_peers_and_events() {
        let repo = hostile_summary();
        let mut refs = crate::git::RefSet {
            head: Some(Head::Symbolic(HOSTILE.into())),
            ..Default::default()
        };
        let id: crate::git::ObjectId = "c".repeat(40).parse().unwrap();
        refs.refs
            .insert(format!("refs/heads/{HOSTILE}"), id.clone());
        refs.refs.insert(format!("refs/tags/{HOSTILE}"), id);
        let report = RefsReport {
            repo_id: HOSTILE.into(),
            manifest: Some(HOSTILE.into()),
            refs,
        };
        let peer = PeerView {
            hint: PeerHint {
                node_id: HOSTILE.into(),
                addrs: vec!["192.0.2.7:4919".into()],
                ticket: Some("endpointticket".into()),
            },
            connected: true,
            trusted: false,
            source: PeerSource::Learned,
            replica: None,
            status: ReplicaStatus::Unproven,
        };
        let peers = vec![(peer, Some(PathKind::Relayed))];
        let events = vec![hostile_event()];
        let page = RepoPage {
            peeled: &Default::default(),
            handle: Some(HOSTILE),
            repo: &repo,
            refs: Some(&report),
            peers: &peers,
            events: &events,
        };
        let html = super::repo(&site(), &page, 2_000).into_string();
        assert_escaped(&html);
        assert!(html.contains("relayed"));
        // A peer's addresses and ticket are not shown.
        assert!(!html.contains("192.0.2.7"), "{html}");
        assert!(!html.contains("endpointticket"), "{html}");
    }

    #[test]
    fn the_status_page_escapes_node_fields_and_events() {
        let status = NodeStatus {
            node_id: HOSTILE.into(),
            ticket: HOSTILE.into(),
            addrs: vec![HOSTILE.into()],
            repo_count: 1,
            uptime_secs: 90_061,
            version: HOSTILE.into(),
            gossip: GossipStats::default(),
            jobs_running: 0,
            jobs_waiting: 0,
            tasks_alive: 0,
            connections_open: 0,
            follows: Vec::new(),
            repos: vec![hostile_summary()],
            relay_mode: HOSTILE.into(),
            discovery: HOSTILE.into(),
            relays: Vec::new(),
            peer_paths: Vec::new(),
        };
        let totals = Totals::of(&status.repos, Some(1 << 30));
        assert_eq!(totals.errors, 1);
        let html = super::status(&status, &totals, &[hostile_event()], Some(HOSTILE)).into_string();
        assert_escaped(&html);
        assert!(html.contains("1d 01:01:01"), "{html}");
        assert!(html.contains("of 1.0 GiB"), "{html}");
        assert!(html.contains("data-live=\"/status/events\""));
    }

    #[test]
    fn clone_commands_name_the_path_the_git_routes_decode() {
        // A did:web with a port holds `%3A`: sent as is, the server would
        // decode it to `:` and look up another repository.
        let repo_id = "did:web:localhost%3A8080/site";
        assert_eq!(
            site().http_clone(repo_id),
            "git clone http://knot.example:8419/did:web:localhost%253A8080/site"
        );
        assert_eq!(
            knot_clone(repo_id),
            "git clone knot://did:web:localhost%3A8080/site"
        );
    }

    #[test]
    fn repository_links_encode_what_a_path_cannot_hold() {
        assert_eq!(
            repo_href("did:plc:abc/web-site_1.x"),
            "/did:plc:abc/web-site_1.x"
        );
        assert_eq!(repo_href("did:web:a%2f/b?c"), "/did:web:a%252f/b%3Fc");
    }

    #[test]
    fn sizes_times_and_states_read_as_words() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(ago(59), "59 s ago");
        assert_eq!(ago(7200), "2 h ago");
        assert_eq!(clock(3_723_000), "01:02:03");
        let mut repo = summary("did:plc:a/b");
        assert_eq!(state_of(&repo).0, "in sync");
        repo.fetching = Some("d".repeat(64));
        assert_eq!(state_of(&repo).0, "fetching");
        repo.last_error = Some("disk full".into());
        assert_eq!(state_of(&repo), ("error: disk full".into(), "error"));
    }
}
