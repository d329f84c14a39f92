//! The built `knotd` binary as a child process, for tests that signal or kill it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Path of the built `knotd` binary.
pub fn knotd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_knotd"))
}

/// A `knotd run` child process, by default on loopback with relays and discovery off.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
}

impl Daemon {
    /// Start a daemon on `data_dir` and wait until its admin socket answers.
    pub fn start(data_dir: &Path) -> Daemon {
        Self::start_on(data_dir, 0)
    }

    /// Start a daemon bound to `127.0.0.1:port` (0: any port). A fixed port
    /// keeps the node's address across restarts, as an operator's would.
    pub fn start_on(data_dir: &Path, port: u16) -> Daemon {
        Self::start_with(
            data_dir,
            &Network {
                bind: format!("127.0.0.1:{port}"),
                ..Network::default()
            },
        )
    }

    /// Start a daemon with the given network settings.
    pub fn start_with(data_dir: &Path, net: &Network) -> Daemon {
        let config = offline_config(data_dir);
        if !net.extra_config.is_empty() {
            let text = std::fs::read_to_string(&config).expect("config");
            std::fs::write(&config, format!("{}\n{text}", net.extra_config))
                .expect("config written");
        }
        let mut command = match &net.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(knotd());
                c
            }
            None => Command::new(knotd()),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--bind", &net.bind, "--relay", &net.relay])
            .args(["--discovery", &net.discovery])
            .arg("--data-dir")
            .arg(data_dir)
            .env(
                "RUST_LOG",
                std::env::var("KNOTD_TEST_LOG").unwrap_or_else(|_| "knotd=info,warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("knotd starts");
        let mut daemon = Daemon {
            child,
            socket: data_dir.join("knotd.sock"),
            data_dir: data_dir.to_path_buf(),
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("knotd exited early: {status}");
            }
            if self.socket.exists() && self.admin(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("knotd did not become ready");
    }

    /// Run `knotd admin <args>` against this daemon.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(knotd())
            .arg("admin")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("knotd admin runs")
    }

    /// Run an admin command that must succeed; returns its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "knotd admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Send a signal and wait (bounded) for the process to exit.
    pub fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "knotd did not stop within 10 s of {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A ticket for this daemon, as `knotd ticket` prints it.
    pub fn ticket(&self) -> String {
        self.admin_ok(&["ticket"]).trim().to_string()
    }

    /// The repository rows as JSON.
    pub fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_ok(&["list", "--json"])).expect("list prints JSON")
    }

    /// The manifest this daemon has materialized for `repo_id`.
    pub fn materialized(&self, repo_id: &str) -> Option<String> {
        self.list()
            .as_array()?
            .iter()
            .find(|r| r["repo_id"] == repo_id)?
            .get("materialized")?
            .as_str()
            .map(str::to_string)
    }
}

/// Where and how a daemon reaches the network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// The UDP address to bind.
    pub bind: String,
    /// The `relay` setting.
    pub relay: String,
    /// The `discovery` setting.
    pub discovery: String,
    /// More config (TOML, top-level settings) on top of the offline test config.
    pub extra_config: String,
}

impl Default for Network {
    /// Loopback, any port, relays and discovery off.
    fn default() -> Self {
        Self {
            netns: None,
            bind: "127.0.0.1:0".into(),
            relay: "disabled".into(),
            discovery: "off".into(),
            extra_config: String::new(),
        }
    }
}

/// Write a config beside `data_dir` that keeps the node off the internet: DID
/// documents resolve against a closed local port instead of plc.directory.
pub fn offline_config(data_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let path = data_dir.join("knotd-test.toml");
    std::fs::write(
        &path,
        "[atproto]\nplc_directory = \"http://127.0.0.1:1\"\nrequest_timeout_secs = 2\n",
    )
    .expect("config written");
    path
}

/// A UDP port on loopback that is free right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
