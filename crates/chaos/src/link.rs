//! A TCP link-fault proxy between the app and its PostgreSQL or Redis
//! server.
//!
//! Why a plain TCP proxy: the database driver's pool and the Redis client
//! must meet what a flaky network or a failing-over server really does to
//! them (a reset of a pooled connection in the middle of a query, a link
//! that goes silent, a server that cannot be reached for seconds), and
//! there is no protocol to fake for that: bytes are forwarded unchanged,
//! the faults act on the connections themselves. Unlike the upstream
//! [`proxy`](crate::proxy) there is no request to draw a fault for (a pooled
//! connection carries many users' queries), so faults strike the whole link
//! at once, on a schedule drawn from a seeded RNG ([`LinkProxy::start_faults`]):
//!
//! * **reset**: every open connection is closed with SO_LINGER 0 (a real
//!   RST), as a server crash or a middlebox timeout would;
//! * **stall**: no connection forwards a byte for a while (what the peer
//!   sends waits in the kernel's buffers), then everything resumes;
//! * **partition**: open connections are reset and new ones are accepted but
//!   never answered (a black hole: the client's connect or login times out,
//!   as when packets are dropped), then the link comes back and the
//!   black-holed connections are reset.
//!
//! Each fault is written to the run's [`FaultLedger`] as a window over every
//! journey step (every page touches the database, and the session store):
//! a reset as the short window [`RESET_WINDOW`] from when it struck, a stall
//! or partition from its start to its end.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ledger::FaultLedger;
use crate::plan::LinkPlan;

/// How long after a reset the tries in flight count as struck by it (the
/// window the ledger judges a reset by).
pub const RESET_WINDOW: Duration = Duration::from_millis(100);

/// The ledger kinds a link's faults are recorded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkKinds {
    /// Every open connection reset.
    pub reset: &'static str,
    /// Forwarding stopped for a while.
    pub stall: &'static str,
    /// The server unreachable for a while.
    pub partition: &'static str,
}

impl LinkKinds {
    /// The app's PostgreSQL connections.
    pub const DATABASE: Self = Self {
        reset: "db_reset",
        stall: "db_stall",
        partition: "db_partition",
    };
    /// The app's Redis connections.
    pub const REDIS: Self = Self {
        reset: "redis_reset",
        stall: "redis_stall",
        partition: "redis_partition",
    };

    /// The three kinds, in the order reset, stall, partition.
    pub fn all(&self) -> [&'static str; 3] {
        [self.reset, self.stall, self.partition]
    }
}

/// What the proxy tells its connections to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    /// Bumped by a reset: a connection born under an older generation
    /// resets itself.
    generation: u64,
    /// No connection forwards while set.
    stalled: bool,
    /// New connections are black-holed while set.
    partitioned: bool,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    control: watch::Sender<Control>,
    connections: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
    blackholed: AtomicU64,
}

impl Shared {
    /// Resets every open connection; returns how many were open.
    fn reset_all(&self) -> u64 {
        let open = self.open.load(Ordering::SeqCst);
        self.control.send_modify(|c| c.generation += 1);
        open
    }

    fn set_stalled(&self, stalled: bool) {
        self.control.send_modify(|c| c.stalled = stalled);
    }

    /// Starting a partition also resets every open connection; returns how
    /// many were open.
    fn set_partitioned(&self, partitioned: bool) -> u64 {
        let open = self.open.load(Ordering::SeqCst);
        self.control.send_modify(|c| {
            c.partitioned = partitioned;
            if partitioned {
                c.generation += 1;
            }
        });
        open
    }
}

/// A snapshot of a link proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Connections forwarding right now.
    pub open: u64,
    /// Connections reset by a reset or a partition.
    pub reset: u64,
    /// Connections accepted during a partition and never answered.
    pub blackholed: u64,
}

/// A running link proxy on 127.0.0.1. Dropping it stops it too.
#[derive(Debug)]
pub struct LinkProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl LinkProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to
    /// `upstream`, unchanged until a fault is injected.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            control: watch::channel(Control::default()).0,
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            blackholed: AtomicU64::new(0),
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

    /// The server it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Resets every open connection now; returns how many were open.
    pub fn reset_all(&self) -> u64 {
        self.shared.reset_all()
    }

    /// Stops (`true`) or resumes (`false`) forwarding on every connection.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared.set_stalled(stalled);
    }

    /// Starts (`true`: open connections reset, new ones black-holed) or ends
    /// a partition; returns how many connections were open.
    pub fn set_partitioned(&self, partitioned: bool) -> u64 {
        self.shared.set_partitioned(partitioned)
    }

    /// The counters so far.
    pub fn stats(&self) -> LinkStats {
        let s = &self.shared;
        LinkStats {
            connections: s.connections.load(Ordering::Relaxed),
            open: s.open.load(Ordering::Relaxed),
            reset: s.reset.load(Ordering::Relaxed),
            blackholed: s.blackholed.load(Ordering::Relaxed),
        }
    }

    /// Starts injecting the faults of `plan` on a schedule drawn from
    /// `seed`, each recorded in `ledger` (when given) under `kinds`. Nothing
    /// happens when the plan is disabled.
    pub fn start_faults(
        &self,
        plan: &LinkPlan,
        seed: u64,
        kinds: LinkKinds,
        ledger: Option<Arc<FaultLedger>>,
    ) -> LinkFaults {
        let (stop, stop_rx) = watch::channel(false);
        let task = plan.enabled.then(|| {
            tokio::spawn(schedule(
                Arc::clone(&self.shared),
                plan.clone(),
                seed,
                kinds,
                ledger,
                stop_rx,
            ))
        });
        LinkFaults { stop, task }
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LinkProxy {
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
                let control = shared.control.subscribe();
                let shared = Arc::clone(&shared);
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = connection(client, &shared, control) => {}
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

/// Decrements the open-connection count when a forwarding connection ends.
struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(mut client: TcpStream, shared: &Shared, mut control: watch::Receiver<Control>) {
    let _ = client.set_nodelay(true);
    // Before connecting upstream: a partition black-holes the connection, a
    // stall holds it.
    let born = loop {
        let now = *control.borrow_and_update();
        if now.partitioned {
            shared.blackholed.fetch_add(1, Ordering::Relaxed);
            black_hole(&mut client, &mut control).await;
            reset(client);
            return;
        }
        if !now.stalled {
            break now.generation;
        }
        if control.changed().await.is_err() {
            return;
        }
    };
    let mut server = match TcpStream::connect(shared.upstream).await {
        Ok(server) => server,
        Err(_) => {
            reset(client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _open = OpenGuard(&shared.open);
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    let mut client_open = true;
    let mut server_open = true;
    while client_open || server_open {
        let now = *control.borrow_and_update();
        if now.generation != born {
            shared.reset.fetch_add(1, Ordering::Relaxed);
            reset(client);
            reset(server);
            return;
        }
        if now.stalled {
            if control.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = client.read(&mut cbuf), if client_open => match read {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = server.shutdown().await;
                }
                Ok(n) => {
                    if server.write_all(&cbuf[..n]).await.is_err() {
                        reset(client);
                        return;
                    }
                }
            },
            read = server.read(&mut sbuf), if server_open => match read {
                Ok(0) | Err(_) => {
                    server_open = false;
                    let _ = client.shutdown().await;
                }
                Ok(n) => {
                    if client.write_all(&sbuf[..n]).await.is_err() {
                        reset(server);
                        return;
                    }
                }
            },
        }
    }
}

/// Holds a connection accepted during a partition: reads and discards what
/// the client sends, answers nothing, until the partition ends (or the
/// client gives up).
async fn black_hole(client: &mut TcpStream, control: &mut watch::Receiver<Control>) {
    let mut sink = [0u8; 4096];
    loop {
        if !control.borrow_and_update().partitioned {
            return;
        }
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = client.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// What a fault schedule did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFaultStats {
    /// Resets that struck at least one open connection (each is in the
    /// ledger).
    pub resets: u64,
    /// Resets drawn while no connection was open: nothing to strike, not
    /// recorded as faults.
    pub idle_resets: u64,
    /// Stalls (in the ledger).
    pub stalls: u64,
    /// Partitions (in the ledger).
    pub partitions: u64,
    /// Connections reset by resets and partitions.
    pub connections_reset: u64,
    /// Total time stalled.
    pub stalled_for: Duration,
    /// Total time partitioned.
    pub partitioned_for: Duration,
}

/// A running fault schedule on a [`LinkProxy`]. Dropping it stops the
/// schedule at its next step; [`LinkFaults::stop`] ends a stall or
/// partition in progress at once and returns what was done.
#[derive(Debug)]
pub struct LinkFaults {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<LinkFaultStats>>,
}

impl LinkFaults {
    /// A schedule that does nothing (no link, or faults disabled).
    pub fn none() -> Self {
        Self {
            stop: watch::channel(false).0,
            task: None,
        }
    }

    /// Stops the schedule (a stall or partition in progress ends now and
    /// is recorded up to now) and returns what it did.
    pub async fn stop(self) -> LinkFaultStats {
        let _ = self.stop.send(true);
        match self.task {
            Some(task) => task.await.unwrap_or_default(),
            None => LinkFaultStats::default(),
        }
    }
}

/// Sleeps for `d`; `true` if stopped first.
async fn stopped_during(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow_and_update() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

enum Kind {
    Reset,
    Stall,
    Partition,
}

async fn schedule(
    shared: Arc<Shared>,
    plan: LinkPlan,
    seed: u64,
    kinds: LinkKinds,
    ledger: Option<Arc<FaultLedger>>,
    mut stop: watch::Receiver<bool>,
) -> LinkFaultStats {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut stats = LinkFaultStats::default();
    let w = &plan.weights;
    let record = |kind: &'static str, from: Instant, to: Instant| {
        if let Some(ledger) = &ledger {
            ledger.window(kind, from, to, &[]);
        }
    };
    loop {
        // Draw everything for this step first, so the schedule depends on
        // the seed only.
        let gap = plan.every.sample(&mut rng);
        let pick = rng.f64() * w.total();
        let kind = if pick < w.reset {
            Kind::Reset
        } else if pick < w.reset + w.stall {
            Kind::Stall
        } else {
            Kind::Partition
        };
        let length = match kind {
            Kind::Reset => Duration::ZERO,
            Kind::Stall => plan.stall.sample(&mut rng),
            Kind::Partition => plan.partition.sample(&mut rng),
        };
        if stopped_during(gap, &mut stop).await {
            break;
        }
        let from = Instant::now();
        match kind {
            Kind::Reset => {
                let open = shared.reset_all();
                if open == 0 {
                    stats.idle_resets += 1;
                } else {
                    stats.resets += 1;
                    stats.connections_reset += open;
                    record(kinds.reset, from, from + RESET_WINDOW);
                }
            }
            Kind::Stall => {
                shared.set_stalled(true);
                let stopped = stopped_during(length, &mut stop).await;
                shared.set_stalled(false);
                let to = Instant::now();
                stats.stalls += 1;
                stats.stalled_for += to - from;
                record(kinds.stall, from, to);
                if stopped {
                    break;
                }
            }
            Kind::Partition => {
                stats.connections_reset += shared.set_partitioned(true);
                let stopped = stopped_during(length, &mut stop).await;
                shared.set_partitioned(false);
                let to = Instant::now();
                stats.partitions += 1;
                stats.partitioned_for += to - from;
                record(kinds.partition, from, to);
                if stopped {
                    break;
                }
            }
        }
    }
    stats
}
