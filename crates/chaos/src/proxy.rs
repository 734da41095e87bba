//! A TCP fault proxy between the app and an upstream server.
//!
//! Why TCP and not a mock client: the app's HTTP client (and selfheal's retry
//! middleware around it) must meet the faults real networks produce: a reset
//! is a real RST (SO_LINGER 0), a stall is a connection that stays open and
//! silent until the client's own timeout fires, latency is bytes held back.
//! HTTP-level faults (429/503) are answered by the upstream servers; the split
//! of one planned fault probability between the two is explained in
//! [`faults`](crate::faults).
//!
//! Request detection: HTTP/1.1 keep-alive is sequential, so a read from the
//! client that comes first on a connection, or after the server has sent
//! bytes since the previous client read, starts a new request; later reads
//! (a body arriving in pieces) belong to the same request. That is where the
//! proxy makes its one draw per request, with the request's tag (its
//! `X-Request-Id`, read from the request head) so that the fault is written
//! to the run's ledger against the user try it struck.
//!
//! Two faults strike *after* the upstream acted: `lost_response` forwards
//! the request and resets the connection when the answer comes back;
//! `late_response` forwards it and holds the answer past the client's
//! timeout. They are the ones that make a non-idempotent retry charge twice.
//!
//! [`Mode::Down`] is the storm: every new connection is reset at once, and a
//! new request on an existing keep-alive connection is reset too.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::faults::{Decision, FaultCounts, FaultKind, UpstreamFaults};

/// Whether the proxy forwards or refuses everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward, with the planned faults.
    Normal,
    /// Storm: every connection (and every new request) is reset at once.
    Down,
}

/// A snapshot of the proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted (including those reset in `Down` mode).
    pub connections: u64,
    /// Client→server request starts seen.
    pub requests: u64,
    /// Connections or requests reset because the mode was `Down`.
    pub refused: u64,
    /// TCP-level faults this proxy injected (`reset`, `stall`, `latency`;
    /// the HTTP kinds are always 0 here, see [`UpstreamFaults::injected`]).
    pub injected: FaultCounts,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    faults: Arc<UpstreamFaults>,
    down: AtomicBool,
    connections: AtomicU64,
    requests: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    stalls: AtomicU64,
    delays: AtomicU64,
    lost: AtomicU64,
    late: AtomicU64,
}

/// A running fault proxy on 127.0.0.1. Dropping it stops it too.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`, with
    /// `faults` deciding per request. Registers itself with
    /// [`UpstreamFaults::attach_proxy`].
    pub async fn start(upstream: SocketAddr, faults: Arc<UpstreamFaults>) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        faults.attach_proxy();
        let shared = Arc::new(Shared {
            upstream,
            faults,
            down: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            delays: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            late: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        Ok(Self {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, handy as an API base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches between normal forwarding and the storm.
    pub fn set_mode(&self, mode: Mode) {
        self.shared
            .down
            .store(mode == Mode::Down, Ordering::Relaxed);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        if self.shared.down.load(Ordering::Relaxed) {
            Mode::Down
        } else {
            Mode::Normal
        }
    }

    /// The shared fault decision-maker.
    pub fn faults(&self) -> &Arc<UpstreamFaults> {
        &self.shared.faults
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            injected: FaultCounts {
                reset: s.resets.load(Ordering::Relaxed),
                stall: s.stalls.load(Ordering::Relaxed),
                latency: s.delays.load(Ordering::Relaxed),
                lost_response: s.lost.load(Ordering::Relaxed),
                late_response: s.late.load(Ordering::Relaxed),
                ..FaultCounts::default()
            },
        }
    }

    /// Stops accepting and closes every open connection (stalled ones too).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                if shared.down.load(Ordering::Relaxed) {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    reset(client);
                    continue;
                }
                let shared = Arc::clone(&shared);
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = connection(client, &shared) => {}
                    }
                });
            }
        }
    }
}

/// Closes `stream` with SO_LINGER 0, so the peer gets a real RST.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(mut client: TcpStream, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let mut server = match TcpStream::connect(shared.upstream).await {
        Ok(server) => server,
        Err(_) => {
            reset(client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    let mut new_request = true;
    // A fault that strikes the answer of the request in flight.
    let mut on_answer: Option<(FaultKind, Duration)> = None;
    let mut client_open = true;
    let mut server_open = true;
    while client_open || server_open {
        tokio::select! {
            read = client.read(&mut cbuf), if client_open => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        client_open = false;
                        let _ = server.shutdown().await;
                        continue;
                    }
                    Ok(n) => n,
                };
                if new_request {
                    new_request = false;
                    shared.requests.fetch_add(1, Ordering::Relaxed);
                    if shared.down.load(Ordering::Relaxed) {
                        shared.refused.fetch_add(1, Ordering::Relaxed);
                        reset(client);
                        reset(server);
                        return;
                    }
                    let tag = request_tag(&cbuf[..n]);
                    match shared.faults.decide(tag.as_deref()) {
                        Decision::Pass => {}
                        Decision::Fault(kind @ (FaultKind::LostResponse | FaultKind::LateResponse), hold) => {
                            on_answer = Some((kind, hold));
                        }
                        Decision::Fault(FaultKind::Reset, _) => {
                            shared.resets.fetch_add(1, Ordering::Relaxed);
                            reset(client);
                            reset(server);
                            return;
                        }
                        Decision::Fault(FaultKind::Stall, hold) => {
                            shared.stalls.fetch_add(1, Ordering::Relaxed);
                            stall(&mut client, hold).await;
                            return;
                        }
                        Decision::Fault(_, delay) => {
                            shared.delays.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                if server.write_all(&cbuf[..n]).await.is_err() {
                    reset(client);
                    return;
                }
            }
            read = server.read(&mut sbuf), if server_open => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        server_open = false;
                        let _ = client.shutdown().await;
                        continue;
                    }
                    Ok(n) => n,
                };
                new_request = true;
                match on_answer.take() {
                    Some((FaultKind::LostResponse, _)) => {
                        shared.lost.fetch_add(1, Ordering::Relaxed);
                        reset(client);
                        reset(server);
                        return;
                    }
                    Some((_, hold)) => {
                        shared.late.fetch_add(1, Ordering::Relaxed);
                        stall(&mut client, hold).await;
                        return;
                    }
                    None => {}
                }
                if client.write_all(&sbuf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The `X-Request-Id` of the request whose head starts `bytes`, if it is
/// there (an HTTP/1.1 head arrives in one read on loopback; a tag split
/// across reads is missed and the fault counted as unlinked).
fn request_tag(bytes: &[u8]) -> Option<String> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(crate::ledger::REQUEST_ID)
            .then(|| value.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}

/// Holds the client connection open and silent for `hold`, discarding what
/// it sends; ends early if the client gives up (EOF or error).
async fn stall(client: &mut TcpStream, hold: Duration) {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::sleep(hold);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            read = client.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}
