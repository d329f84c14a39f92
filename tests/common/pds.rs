//! A real ATProto PDS with a local PLC directory for integration tests, run
//! by `tests/pds/start.mjs` on loopback. See `tests/pds/README.md`.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// How long the PDS may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the PDS may take to exit after its stdin closes.
const STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// Timeout of one HTTP request to the PDS.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running PDS and PLC directory; stopped when dropped.
pub struct TestPds {
    /// The PDS base URL, `http://127.0.0.1:P`.
    pub pds: String,
    /// The PLC directory base URL, `http://127.0.0.1:Q`.
    pub plc: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
}

fn pds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pds")
}

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl TestPds {
    /// Start a fresh PDS. Without `node` this fails, unless
    /// `KNOTD_SKIP_PDS=1` says to skip (then it returns `None` after saying
    /// why); `KNOTD_REQUIRE_PDS=1` (set by CI) overrides a skip. Panics when
    /// the PDS cannot be installed or does not start.
    pub fn start() -> Option<TestPds> {
        Self::start_at(None)
    }

    /// Start a fresh PDS inside network namespace `ns`, bound to `host` (an
    /// address of that namespace): its URLs, and the PDS endpoint in every
    /// DID document, name that address. Its HTTP calls must then be made
    /// from inside the namespace too. Skips and fails as [`TestPds::start`].
    pub fn start_in_netns(ns: &str, host: std::net::Ipv4Addr) -> Option<TestPds> {
        Self::start_at(Some((ns, host)))
    }

    fn start_at(place: Option<(&str, std::net::Ipv4Addr)>) -> Option<TestPds> {
        if !node_available() {
            let why = "`node` (>= 20) is not installed, so the reference PDS cannot run; install Node.js 20+";
            assert!(
                std::env::var("KNOTD_REQUIRE_PDS").as_deref() != Ok("1"),
                "{why} (KNOTD_REQUIRE_PDS=1 says this test must run)"
            );
            assert!(
                std::env::var("KNOTD_SKIP_PDS").as_deref() == Ok("1"),
                "{why}; set KNOTD_SKIP_PDS=1 to skip the real-PDS tests on purpose"
            );
            eprintln!("skipping (KNOTD_SKIP_PDS=1): {why}");
            return None;
        }
        let dir = pds_dir();
        if !dir.join("node_modules/@atproto/pds").exists() {
            let status = Command::new("bash")
                .arg(dir.join("install.sh"))
                .status()
                .expect("run tests/pds/install.sh");
            assert!(
                status.success(),
                "tests/pds/install.sh failed ({status}); run it by hand to see why"
            );
        }
        let mut command = match place {
            Some((ns, host)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "node"])
                    .env("PDS_HOST", host.to_string());
                c
            }
            None => Command::new("node"),
        };
        let mut child = command
            .arg(dir.join("start.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node tests/pds/start.mjs");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr_pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut s = stderr.lock().unwrap();
                    if s.len() < 64 * 1024 {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let result = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
            // Keep draining so the PDS never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let mut pds = TestPds {
            pds: String::new(),
            plc: String::new(),
            child,
            stdin,
            stderr,
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("HTTP client"),
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            other => {
                let why = match other {
                    Err(_) => format!("no ready line within {READY_TIMEOUT:?}"),
                    Ok(Err(e)) => format!("reading its stdout failed: {e}"),
                    Ok(Ok(_)) => "it exited before it was ready".to_string(),
                };
                drop(pds.stdin.take());
                let _ = pds.child.kill();
                let _ = pds.child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the test PDS did not start: {why}; run tests/pds/install.sh, then tests/pds/verify.sh to diagnose. stderr:\n{}",
                    pds.stderr.lock().unwrap()
                );
            }
        };
        let ready: Value = serde_json::from_str(line.trim()).expect("the ready line is JSON");
        pds.pds = ready["pds"].as_str().expect("ready line has pds").into();
        pds.plc = ready["plc"].as_str().expect("ready line has plc").into();
        Some(pds)
    }

    /// The PDS's port.
    pub fn pds_port(&self) -> u16 {
        self.pds
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the PDS URL ends in a port")
    }

    /// What the PDS printed on stderr so far (the first 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn xrpc(&self, nsid: &str) -> String {
        format!("{}/xrpc/{nsid}", self.pds)
    }

    async fn post(&self, nsid: &str, token: Option<&str>, body: Value) -> Value {
        let mut req = self.http.post(self.xrpc(nsid)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{nsid}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{nsid} answered {status}: {body}");
        body
    }

    /// Create an account `<name>.test` (a bare name gets `.test` appended)
    /// with a random password; returns its DID and the password.
    pub async fn create_account(&self, handle: &str) -> (String, String) {
        let handle = if handle.contains('.') {
            handle.to_string()
        } else {
            format!("{handle}.test")
        };
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let body = self
            .post(
                "com.atproto.server.createAccount",
                None,
                json!({"handle": handle, "email": format!("{handle}@example.com"), "password": password}),
            )
            .await;
        let did = body["did"].as_str().expect("createAccount returns a did");
        (did.to_string(), password)
    }

    /// Log in and return the access token.
    pub async fn login(&self, identifier: &str, password: &str) -> String {
        let body = self
            .post(
                "com.atproto.server.createSession",
                None,
                json!({"identifier": identifier, "password": password}),
            )
            .await;
        body["accessJwt"].as_str().expect("accessJwt").to_string()
    }

    /// Create an app password for the account and return it.
    pub async fn create_app_password(&self, identifier: &str, password: &str) -> String {
        let token = self.login(identifier, password).await;
        let body = self
            .post(
                "com.atproto.server.createAppPassword",
                Some(&token),
                json!({"name": format!("knotd-{:08x}", rand::random::<u32>())}),
            )
            .await;
        body["password"].as_str().expect("app password").to_string()
    }

    /// Write a record directly; returns the putRecord response.
    pub async fn put_record(
        &self,
        did: &str,
        password: &str,
        collection: &str,
        rkey: &str,
        record: Value,
    ) -> Value {
        let token = self.login(did, password).await;
        self.post(
            "com.atproto.repo.putRecord",
            Some(&token),
            json!({"repo": did, "collection": collection, "rkey": rkey, "record": record}),
        )
        .await
    }

    /// Delete a record directly.
    pub async fn delete_record(&self, did: &str, password: &str, collection: &str, rkey: &str) {
        let token = self.login(did, password).await;
        self.post(
            "com.atproto.repo.deleteRecord",
            Some(&token),
            json!({"repo": did, "collection": collection, "rkey": rkey}),
        )
        .await;
    }

    /// Read a record directly; `None` when it does not exist.
    pub async fn get_record(&self, did: &str, collection: &str, rkey: &str) -> Option<Value> {
        let resp = self
            .http
            .get(self.xrpc("com.atproto.repo.getRecord"))
            .query(&[("repo", did), ("collection", collection), ("rkey", rkey)])
            .send()
            .await
            .expect("getRecord request");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() == 400 && body["error"] == "RecordNotFound" {
            return None;
        }
        assert!(status.is_success(), "getRecord answered {status}: {body}");
        Some(body["value"].clone())
    }
}

impl Drop for TestPds {
    fn drop(&mut self) {
        // Closing stdin makes the PDS shut down cleanly and remove its data.
        drop(self.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
