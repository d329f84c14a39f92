//! An hour of faults, with real processes: the soak test.
//!
//! Six `knotd` processes in network namespaces (two authors, two seeders
//! with public addresses, two home servers behind firewalls that only the
//! local iroh relay reaches), the reference PDS holding the records, and
//! twenty repositories: every second a `git push` through
//! `git-remote-knot`, alternating between the authors, whose nodes write
//! the records back. Meanwhile faults from a seeded schedule: `kill -9`
//! and restart of any node, links cut and restored, packet loss, added
//! latency, the relay restarted, the PDS unreachable for a minute.
//!
//! When the time is up, faults stop and heal, and the end checks run (see
//! `soak/checks.rs`): every node holds every repository's newest state
//! within 60 s, `git fsck` and `knotd admin verify` are clean everywhere,
//! every push `git push` reported as done is present, no panic or
//! unexplained error line is logged, and RSS, open files, threads and
//! runtime tasks of each node stay flat after warm-up. A JSON report and a
//! PNG picture go to the results folder.
//!
//! `./scripts/test.sh` runs five minutes of it; SOAK.md says how to run an
//! hour. Settings: `KNOTD_SOAK_SECS` (default 300), `KNOTD_SOAK_SEED`
//! (default 22), `KNOTD_SOAK_RESULTS` (default a folder under the target
//! directory), `KNOTD_SOAK_BIN` (a folder with the binaries to run instead
//! of the ones cargo built). Needs root, iproute2, iptables and Node.js; without root it
//! fails and says why, unless `KNOTD_SKIP_NETNS=1`.

#[path = "common/netns.rs"]
mod netns;
#[path = "common/pds.rs"]
mod pds;

#[path = "soak/checks.rs"]
mod checks;
#[path = "soak/faults.rs"]
mod faults;
#[path = "soak/forwarder.rs"]
mod forwarder;
#[path = "soak/growth.rs"]
mod growth;
#[path = "soak/inns.rs"]
mod inns;
#[path = "soak/net.rs"]
mod net;
#[path = "soak/nodes.rs"]
mod nodes;
#[path = "soak/report.rs"]
mod report;
#[path = "soak/run.rs"]
mod run;
#[path = "soak/workload.rs"]
mod workload;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use net::{Role, SoakNet};
use nodes::{Community, NodeProc, NodeSpec};
use pds::TestPds;
use workload::{GitEnv, PushRecord, Repo};

/// Repositories per author.
const REPOS_PER_AUTHOR: usize = 10;

/// Path of the `knotd` binary: the one cargo built, or the one in
/// `KNOTD_SOAK_BIN` (a folder holding copies of `knotd` and
/// `git-remote-knot`, so that a long soak keeps running the binaries it
/// started with while the tree is rebuilt).
pub fn knotd_bin() -> PathBuf {
    bin("knotd", env!("CARGO_BIN_EXE_knotd"))
}

/// Path of the `git-remote-knot` helper, as [`knotd_bin`].
pub fn helper_bin() -> PathBuf {
    bin("git-remote-knot", env!("CARGO_BIN_EXE_git-remote-knot"))
}

fn bin(name: &str, built: &str) -> PathBuf {
    match std::env::var_os("KNOTD_SOAK_BIN") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(built),
    }
}

/// The soak's settings, from the environment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// Seconds of pushes and faults.
    pub secs: u64,
    /// Seed of the fault schedule and of the push order.
    pub seed: u64,
    /// Where the report, picture and node logs go.
    pub results: PathBuf,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
                })
                .unwrap_or(default)
        };
        let results = std::env::var_os("KNOTD_SOAK_RESULTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{stamp}"))
            });
        Settings {
            secs: number("KNOTD_SOAK_SECS", 300),
            seed: number("KNOTD_SOAK_SEED", 22),
            results,
        }
    }
}

/// What every part of the soak shares.
pub struct Soak {
    /// The settings.
    pub settings: Settings,
    /// The network and its services.
    pub net: SoakNet,
    /// The reference PDS (called from the services' namespace).
    pub pds: Arc<TestPds>,
    /// The nodes, authors first.
    pub nodes: Vec<Arc<NodeProc>>,
    /// The repositories.
    pub repos: Vec<Arc<Repo>>,
    /// git's sandbox.
    pub git: GitEnv,
    /// When the soak phase began (set when setup is done).
    pub t0: Mutex<Instant>,
    /// Every push of the soak phase.
    pub pushes: Mutex<Vec<PushRecord>>,
    /// Samples and convergence state.
    pub observed: Mutex<run::Observed>,
}

impl Soak {
    /// Seconds since the soak phase began.
    pub fn now(&self) -> f64 {
        self.t0.lock().unwrap().elapsed().as_secs_f64()
    }

    /// When the soak phase began.
    pub fn started(&self) -> Instant {
        *self.t0.lock().unwrap()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &Arc<NodeProc> {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

fn hosts() -> Vec<(String, Role)> {
    [
        ("author-a", Role::Author),
        ("author-b", Role::Author),
        ("seeder-1", Role::Seeder),
        ("seeder-2", Role::Seeder),
        ("home-1", Role::Home),
        ("home-2", Role::Home),
    ]
    .into_iter()
    .map(|(n, r)| (n.to_string(), r))
    .collect()
}

#[test]
#[ignore = "five minutes or more; run by scripts/test.sh (see SOAK.md)"]
fn an_hour_of_faults_with_real_processes() {
    if std::env::var("KNOTD_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("KNOTD_SKIP_NETNS=1: skipping the soak, which needs network namespaces");
        return;
    }
    let settings = Settings::from_env();
    std::fs::create_dir_all(&settings.results).expect("results folder");
    eprintln!(
        "soak: {} s, seed {}, results in {}",
        settings.secs,
        settings.seed,
        settings.results.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(soak(settings));
    if let Some(failures) = outcome {
        panic!("the soak found problems:\n- {}", failures.join("\n- "));
    }
}

/// Set up, soak, check and report; `Some(failures)` when a check failed.
async fn soak(settings: Settings) -> Option<Vec<String>> {
    let work = tempfile::tempdir().unwrap();
    let net = SoakNet::build(&hosts(), &work.path().join("pkarr")).await;
    let (ns, ip) = (net.lab.services_ns().to_string(), net.services_ip());
    let pds = tokio::task::spawn_blocking(move || TestPds::start_in_netns(&ns, ip))
        .await
        .unwrap();
    let pds = Arc::new(pds?);
    let mut accounts = Vec::new();
    for handle in ["alice", "bob"] {
        let p = pds.clone();
        let account = net
            .svc
            .run(async move {
                let (did, password) = p.create_account(handle).await;
                let app = p.create_app_password(&did, &password).await;
                (did, app)
            })
            .await;
        accounts.push(account);
    }
    let services = net.lab.services();
    let community = Community {
        relay_url: services.relay_url.clone(),
        pkarr_url: services.pkarr_url.clone(),
        plc_url: pds.plc.clone(),
        poll_interval_secs: 30,
        gc_interval_secs: 60,
        verify_interval_secs: 600,
    };
    // Each incarnation of a node appends to its log: the logs of an earlier
    // run into the same folder would be read as this run's.
    let logs = settings.results.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs).unwrap();
    }
    std::fs::create_dir_all(&logs).unwrap();
    let mut nodes = Vec::new();
    for (i, (name, role)) in hosts().into_iter().enumerate() {
        let spec = NodeSpec {
            ns: net.ns(&name),
            data_dir: work.path().join("nodes").join(&name),
            config: work.path().join(format!("{name}.toml")),
            log: logs.join(format!("{name}.log")),
            name: name.clone(),
            role,
        };
        let identity =
            (role == Role::Author).then(|| (accounts[i].0.as_str(), accounts[i].1.as_str()));
        spec.write_config(net.node_addr(&name), &community, identity);
        nodes.push(NodeProc::new(spec));
    }
    for node in &nodes {
        node.spawn("first start");
    }
    for node in &mut nodes {
        node.node_id = node.wait_ready().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let git = GitEnv::new(work.path());
    let mut repos = Vec::new();
    for (author, (did, _)) in accounts.iter().enumerate() {
        for r in 0..REPOS_PER_AUTHOR {
            let id = format!("{did}/repo-{r:02}");
            let dir = work.path().join("work").join(format!("{author}-{r:02}"));
            repos.push(Arc::new(Repo::init(&git, dir, id, author)));
        }
    }
    let soak = Arc::new(Soak {
        settings,
        net,
        pds,
        nodes: nodes.into_iter().map(Arc::new).collect(),
        repos,
        git,
        t0: Mutex::new(Instant::now()),
        pushes: Mutex::default(),
        observed: Mutex::default(),
    });
    run::setup_community(&soak, &accounts).await;
    *soak.t0.lock().unwrap() = Instant::now();
    run::soak_phase(&soak).await;
    let end = checks::end_checks(&soak).await;
    let report = report::write(&soak, &end);
    let failures = end.failures();
    eprintln!("soak report: {}", report.display());
    for node in &soak.nodes {
        node.stop();
    }
    // Keep the work folder when something failed, for a closer look.
    if !failures.is_empty() {
        let kept = work.keep();
        eprintln!("soak work folder kept: {}", kept.display());
        return Some(failures);
    }
    None
}
