//! A delaying UDP forwarder, for added latency where the kernel has no
//! `netem`. It listens on one address in the services' namespace and
//! forwards every datagram to one target (a node's UDP port), each client
//! through its own upstream socket so that replies find their way back.
//! Hosts reach it through a DNAT rule on the target's address, set before
//! any node starts, so every direct path towards the target crosses it; the
//! added delay is 0 until a fault sets it. Runs as tasks on the services'
//! [`super::inns::NsRuntime`]; stops with its token.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{net::UdpSocket, sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

/// Datagrams waiting in one direction before the oldest are dropped, as a
/// router's queue would.
const QUEUE: usize = 4096;
/// A client silent this long is forgotten and its upstream socket closed.
const CLIENT_IDLE: Duration = Duration::from_secs(600);

/// One datagram on its way, due at `due`.
struct Delayed {
    due: Instant,
    bytes: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
}

/// A running forwarder towards one target.
pub struct Forwarder {
    /// Where hosts' datagrams for the target are sent (after DNAT).
    pub listen: SocketAddr,
    /// The node address it forwards to.
    pub target: SocketAddr,
    delay_us: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
}

impl Forwarder {
    /// Bind on `ip` (any port) and forward to `target`. Must run on a
    /// runtime inside the namespace that holds `ip`.
    pub async fn spawn(
        ip: Ipv4Addr,
        target: SocketAddr,
        cancel: CancellationToken,
    ) -> std::io::Result<Forwarder> {
        let listen = Arc::new(UdpSocket::bind((ip, 0)).await?);
        let delay_us = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (line, queue) = mpsc::channel::<Delayed>(QUEUE);
        tokio::spawn(delay_line(queue, cancel.clone()));
        let forwarder = Forwarder {
            listen: listen.local_addr()?,
            target,
            delay_us: delay_us.clone(),
            forwarded: forwarded.clone(),
        };
        tokio::spawn(accept_loop(
            listen, ip, target, delay_us, forwarded, line, cancel,
        ));
        Ok(forwarder)
    }

    /// Delay every datagram in both directions by `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Datagrams forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

fn due(delay_us: &AtomicU64) -> Instant {
    Instant::now() + Duration::from_micros(delay_us.load(Ordering::Relaxed))
}

/// Send each datagram when it is due, in the order it came.
async fn delay_line(mut queue: mpsc::Receiver<Delayed>, cancel: CancellationToken) {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = queue.recv() => next,
        };
        let Some(item) = next else { return };
        tokio::time::sleep_until(item.due).await;
        let _ = match item.to {
            Some(to) => item.socket.send_to(&item.bytes, to).await,
            None => item.socket.send(&item.bytes).await,
        };
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listen: Arc<UdpSocket>,
    ip: Ipv4Addr,
    target: SocketAddr,
    delay_us: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    line: mpsc::Sender<Delayed>,
    cancel: CancellationToken,
) {
    let clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listen.recv_from(&mut buf) => r,
        };
        let Ok((n, client)) = received else { continue };
        let upstream = clients.lock().unwrap().get(&client).cloned();
        let upstream = match upstream {
            Some(u) => u,
            None => {
                let Ok(socket) = UdpSocket::bind((ip, 0)).await else {
                    continue;
                };
                if socket.connect(target).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                clients.lock().unwrap().insert(client, socket.clone());
                tokio::spawn(return_loop(
                    socket.clone(),
                    client,
                    listen.clone(),
                    clients.clone(),
                    delay_us.clone(),
                    forwarded.clone(),
                    line.clone(),
                    cancel.clone(),
                ));
                socket
            }
        };
        forwarded.fetch_add(1, Ordering::Relaxed);
        let _ = line.try_send(Delayed {
            due: due(&delay_us),
            bytes: buf[..n].to_vec(),
            socket: upstream,
            to: None,
        });
    }
}

/// Replies from the target to one client, back through the listening socket.
#[allow(clippy::too_many_arguments)]
async fn return_loop(
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    listen: Arc<UdpSocket>,
    clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
    delay_us: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    line: mpsc::Sender<Delayed>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            r = tokio::time::timeout(CLIENT_IDLE, upstream.recv(&mut buf)) => r,
        };
        match received {
            Ok(Ok(n)) => {
                forwarded.fetch_add(1, Ordering::Relaxed);
                let _ = line.try_send(Delayed {
                    due: due(&delay_us),
                    bytes: buf[..n].to_vec(),
                    socket: listen.clone(),
                    to: Some(client),
                });
            }
            // ICMP errors (the target is down) surface as errors: keep going.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_idle) => break,
        }
    }
    clients.lock().unwrap().remove(&client);
}
