//! Nodes that cannot reach each other replicate through a relay.
//!
//! A real iroh relay (plain HTTP, as `iroh-relay --dev` serves it) and a real
//! `iroh-dns-server` pkarr relay run in one network namespace; author, seeder
//! and follower `knotd` processes each run in their own namespace whose only
//! reachable address is the services' one (isolated bridge ports: no direct
//! path between nodes). The author publishes, the seeder replicates it from
//! the author's ticket, the author stops, and the follower, which knows only
//! the seeder's node id, finds it through the pkarr server and serves
//! `git clone knot://`. Every byte crosses the relay, which the relay's own
//! counters confirm. Then the relay stops and the hosts can reach each other:
//! a fresh node given the seeder's ticket connects directly, and `status`
//! shows the relay as down and the path as direct.
//!
//! Needs root for `ip netns`; fails with the reason otherwise, unless
//! `KNOTD_SKIP_NETNS=1` is set. `KNOTD_RELAY_TEST_MIB` sets the size of the
//! repository (default 4); transfer rates are printed, never asserted.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    daemon::{Daemon, Network},
    git, make_big_repo,
};
use netns::{Lab, lab_or_skip};
use serde_json::Value;

const REPO: &str = "did:plc:relaytest1/behind-nat";
const PORT: u16 = 4919;

/// Poll `check` every 100 ms until it yields a value or `secs` pass.
fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(node: &Daemon) -> Value {
    serde_json::from_str(&node.admin_ok(&["status", "--json"])).expect("status prints JSON")
}

/// How `node` reaches `peer` according to its status: direct, relayed or idle.
fn path_to(node: &Daemon, peer: &str) -> Option<String> {
    status(node)["peer_paths"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"] == peer)
        .and_then(|p| p["path"].as_str())
        .map(str::to_string)
}

fn relay_connected(node: &Daemon) -> Option<bool> {
    let status = status(node);
    let relays = status["relays"].as_array()?;
    relays.first()?["connected"].as_bool()
}

/// `git clone knot://<repo>` through `node`, with git's configuration isolated.
fn clone_through(node: &Daemon, dest: &Path) {
    let home = tempfile::tempdir().unwrap();
    let helper_dir = Path::new(env!("CARGO_BIN_EXE_git-remote-knot"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut paths = vec![helper_dir];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let out = Command::new("timeout")
        .arg("300")
        .args(["git", "clone", "-q", &format!("knot://{REPO}")])
        .arg(dest)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("KNOT_SOCKET", &node.socket)
        .env_remove("KNOTD_CONFIG")
        .env_remove("KNOTD_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git clone knot://{REPO} on the follower failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rate(bytes: u64, took: Duration) -> String {
    format!(
        "{:.1} MB in {:.2} s = {:.2} MB/s",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        bytes as f64 / 1e6 / took.as_secs_f64()
    )
}

fn start(lab: &Lab, dir: &Path, name: &str) -> Daemon {
    let host = lab.host(name);
    let services = lab.services();
    Daemon::start_with(
        &dir.join(name),
        &Network {
            netns: Some(host.ns.clone()),
            bind: format!("{}:{PORT}", host.ip),
            relay: services.relay_url.clone(),
            discovery: services.pkarr_url.clone(),
            ..Network::default()
        },
    )
}

#[test]
fn nodes_without_a_direct_route_replicate_and_clone_through_a_relay() {
    let Some(mut lab) = lab_or_skip(&["author", "seeder", "follower", "direct"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    lab.start_services(&tmp.path().join("pkarr"));

    // The network: every host reaches the services, no host reaches another.
    for host in ["author", "seeder", "follower"] {
        assert!(
            lab.reachable(host, lab.services_ip()),
            "{host} reaches the relay"
        );
    }
    assert!(!lab.reachable("author", lab.host("seeder").ip));
    assert!(!lab.reachable("follower", lab.host("seeder").ip));
    assert!(!lab.reachable("seeder", lab.host("follower").ip));

    let mut author = start(&lab, tmp.path(), "author");
    let seeder = start(&lab, tmp.path(), "seeder");
    let follower = start(&lab, tmp.path(), "follower");
    for (name, node) in [
        ("author", &author),
        ("seeder", &seeder),
        ("follower", &follower),
    ] {
        wait_for(&format!("{name} to connect to its home relay"), 30, || {
            relay_connected(node).filter(|c| *c)
        });
    }

    // Publish on the author; the seeder replicates from its ticket.
    let mib: usize = std::env::var("KNOTD_RELAY_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let src = tmp.path().join("src");
    make_big_repo(&src, mib, b"relay test");
    let head = git(&src, &["rev-parse", "HEAD"]);
    author.admin_ok(&["publish", REPO, src.to_str().unwrap()]);
    let manifest = author.materialized(REPO).expect("the author holds it");
    let bytes = author.list()[0]["bytes_pinned"].as_u64().unwrap();
    let author_id = status(&author)["node_id"].as_str().unwrap().to_string();
    let seeder_id = status(&seeder)["node_id"].as_str().unwrap().to_string();

    let relayed_before = lab.services().relayed_bytes();
    let t = Instant::now();
    seeder.admin_ok(&["add-repo", REPO, "--peer", &author.ticket()]);
    wait_for("the seeder to replicate through the relay", 180, || {
        (seeder.materialized(REPO).as_deref() == Some(manifest.as_str())).then_some(())
    });
    let relayed_took = t.elapsed();
    let relayed = lab.services().relayed_bytes() - relayed_before;
    assert!(
        relayed >= bytes,
        "the relay forwarded {relayed} bytes for a {bytes}-byte transfer: it did not go through it"
    );
    assert_eq!(path_to(&seeder, &author_id).as_deref(), Some("relayed"));
    assert!(author.signal("TERM").success());

    // The follower knows only the seeder's node id: the pkarr server tells
    // it the seeder's relay, and the clone goes through the relay too.
    let relayed_before = lab.services().relayed_bytes();
    follower.admin_ok(&["add-repo", REPO, "--peer", &seeder_id]);
    let clone = tmp.path().join("clone");
    clone_through(&follower, &clone);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        std::fs::read(clone.join("big.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );
    assert_eq!(
        follower.materialized(REPO).as_deref(),
        Some(manifest.as_str())
    );
    let relayed = lab.services().relayed_bytes() - relayed_before;
    assert!(relayed >= bytes, "the clone did not go through the relay");
    assert_eq!(path_to(&follower, &seeder_id).as_deref(), Some("relayed"));

    // The relay goes down and the hosts can reach each other: a node with
    // the seeder's direct address still connects, and says the relay is down.
    lab.stop_relay();
    lab.set_isolated(false);
    assert!(lab.reachable("direct", lab.host("seeder").ip));
    let direct = start(&lab, tmp.path(), "direct");
    let t = Instant::now();
    direct.admin_ok(&["add-repo", REPO, "--peer", &seeder.ticket()]);
    wait_for("a direct replication with the relay down", 120, || {
        (direct.materialized(REPO).as_deref() == Some(manifest.as_str())).then_some(())
    });
    let direct_took = t.elapsed();
    assert_eq!(path_to(&direct, &seeder_id).as_deref(), Some("direct"));
    wait_for("the seeder to notice that the relay is down", 60, || {
        (relay_connected(&seeder) == Some(false)).then_some(())
    });
    let text = seeder.admin_ok(&["status"]);
    assert!(text.contains("NOT connected"), "{text}");

    eprintln!(
        "replication through the relay: {}; direct over the same link: {}",
        rate(bytes, relayed_took),
        rate(bytes, direct_took)
    );
}
