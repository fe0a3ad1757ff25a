//! Network faults for the process tests, as small TCP proxies on loopback:
//!
//! - [`FaultProxy`] forwards to one address and can *cut* the link (every open connection
//!   is closed at once and new ones are closed as soon as they are accepted, as when a
//!   database host goes away), *restore* it, or *delay* every chunk it forwards (a slow
//!   downstream).
//! - [`RoundRobin`] spreads connections over several instances like a Kubernetes Service
//!   with readiness: it polls each instance's `/readyz` and sends new connections only to
//!   ready ones, and skips an instance whose connection is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a [`FaultProxy`] does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards as is.
    Up,
    /// Closes every connection, open or new.
    Cut,
    /// Forwards each chunk after this long, both ways.
    Slow(Duration),
}

/// A proxy to one address whose link can be cut, restored or slowed down.
pub struct FaultProxy {
    pub addr: SocketAddr,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    link: watch::Sender<Link>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port (on the current tokio runtime) and forwards to
    /// `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the fault proxy")?;
        let addr = listener.local_addr().context("the proxy's address")?;
        let (link, watch_link) = watch::channel(Link::Up);
        let target = Arc::new(std::sync::Mutex::new(target));
        let accept = {
            let target = target.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let link = watch_link.clone();
                    if *link.borrow() == Link::Cut {
                        drop(client);
                        continue;
                    }
                    let to = *target.lock().unwrap_or_else(|p| p.into_inner());
                    tokio::spawn(forward(client, to, link));
                }
            })
        };
        Ok(FaultProxy {
            addr,
            target,
            link,
            accept,
        })
    }

    /// Sends new connections to `target` (for a proxy started before its target).
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// `host:port` of the proxy.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.link.send_replace(Link::Cut);
        self.accept.abort();
    }
}

/// Pipes `client` ↔ `target` until either side closes or the link is cut.
async fn forward(client: TcpStream, target: SocketAddr, mut link: watch::Receiver<Link>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, link.clone());
    let down = pump(server_read, client_write, link.clone());
    let cut = async move {
        let _ = link.wait_for(|l| *l == Link::Cut).await;
    };
    // Whichever ends first ends the connection: both halves are dropped (closed) here.
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = cut => {}
    }
}

/// Copies one direction, delaying each chunk while the link is slow.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = match *link.borrow() {
            Link::Slow(d) => Some(d),
            Link::Up | Link::Cut => None,
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Connections spread over instances, only to ready ones, as a Service does.
pub struct RoundRobin {
    pub addr: SocketAddr,
    /// Connections each instance was given.
    pub connections: Arc<Vec<AtomicUsize>>,
    ready: Arc<Vec<AtomicBool>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How often readiness is polled (kube's default period is 10 s; tests are shorter).
const READINESS_PERIOD: Duration = Duration::from_millis(100);

impl RoundRobin {
    /// Listens on a free loopback port and forwards to `backends` (HTTP servers with
    /// `/readyz`).
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<RoundRobin> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the round-robin proxy")?;
        let addr = listener.local_addr().context("the proxy's address")?;
        let ready: Arc<Vec<AtomicBool>> =
            Arc::new(backends.iter().map(|_| AtomicBool::new(false)).collect());
        let connections: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let backends = Arc::new(backends);
        let mut tasks = Vec::new();
        {
            let (backends, ready) = (backends.clone(), ready.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    for (i, backend) in backends.iter().enumerate() {
                        ready[i].store(is_ready(*backend).await, Ordering::SeqCst);
                    }
                    tokio::time::sleep(READINESS_PERIOD).await;
                }
            }));
        }
        {
            let (ready, connections) = (ready.clone(), connections.clone());
            tasks.push(tokio::spawn(async move {
                let next = AtomicUsize::new(0);
                while let Ok((client, _)) = listener.accept().await {
                    let start = next.fetch_add(1, Ordering::SeqCst);
                    let mut server = None;
                    for k in 0..backends.len() {
                        let i = (start + k) % backends.len();
                        if !ready[i].load(Ordering::SeqCst) {
                            continue;
                        }
                        match TcpStream::connect(backends[i]).await {
                            Ok(stream) => {
                                connections[i].fetch_add(1, Ordering::SeqCst);
                                server = Some(stream);
                                break;
                            }
                            // Refused (or any failure): not an endpoint any more.
                            Err(_) => ready[i].store(false, Ordering::SeqCst),
                        }
                    }
                    if let Some(mut server) = server {
                        tokio::spawn(async move {
                            let mut client = client;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        });
                    }
                }
            }));
        }
        Ok(RoundRobin {
            addr,
            connections,
            ready,
            tasks,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Whether instance `i` is an endpoint now.
    pub fn is_endpoint(&self, i: usize) -> bool {
        self.ready.get(i).is_some_and(|r| r.load(Ordering::SeqCst))
    }

    /// Waits until instance `i` is (or is not) an endpoint.
    pub async fn wait_endpoint(&self, i: usize, wanted: bool, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.is_endpoint(i) == wanted {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `GET /readyz` answered 200 within a second.
async fn is_ready(backend: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(backend).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head[9..12] == b"200")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}
