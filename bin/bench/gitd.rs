//! The baseline: `git daemon` on 127.0.0.1, and a TCP proxy that counts the
//! bytes the daemon sends.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A running `git daemon` exporting every repository under a base path.
pub struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    /// Start the daemon and wait until it accepts connections.
    pub fn spawn(base: &Path) -> Result<Self> {
        let port = free_port()?;
        // Run git-daemon itself rather than the `git daemon` wrapper, so that
        // killing the child stops the server.
        let exec_path = Command::new("git").arg("--exec-path").output()?;
        let exec_path = String::from_utf8_lossy(&exec_path.stdout)
            .trim()
            .to_string();
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("PATH", path_with(&exec_path))
            .arg("--reuseaddr")
            .arg(format!("--base-path={}", base.display()))
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting git daemon")?;
        let mut daemon = GitDaemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("git daemon exited early: {status}");
            }
            if Instant::now() > deadline {
                bail!("git daemon did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of a repository below the base path.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

/// `PATH` with git's exec path in front, as the `git` wrapper would set it.
fn path_with(exec_path: &str) -> String {
    match std::env::var("PATH") {
        Ok(path) if !path.is_empty() => format!("{exec_path}:{path}"),
        _ => exec_path.to_string(),
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP proxy to one upstream port that counts bytes sent downstream.
pub struct CountingProxy {
    port: u16,
    down: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Listen on a free port and forward every connection to `upstream`.
    pub async fn spawn(upstream: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let down = Arc::new(AtomicU64::new(0));
        let counter = down.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                        let _ = server_write.shutdown().await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match server_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    counter.fetch_add(n as u64, Ordering::SeqCst);
                                    if client_write.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(CountingProxy { port, down, task })
    }

    /// The URL of a repository through the proxy.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// Bytes sent from upstream to clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
