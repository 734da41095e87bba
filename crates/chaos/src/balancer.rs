//! A round-robin TCP load balancer in front of several app instances.
//!
//! Why: the fleet run puts two or more cozmic processes on one PostgreSQL
//! database and kills one of them; users must reach the fleet through one
//! address, as they would through a real load balancer. Each accepted
//! connection goes to the next backend in turn; when that backend refuses
//! the connection (the killed instance, before it is back), the next one is
//! tried, as a load balancer with passive health checks does. Connections
//! already relayed to an instance that dies are cut (their bytes are lost,
//! the client sees the reset): that is what a user of a real fleet meets.
//!
//! No HTTP parsing: per TCP connection, so a keep-alive connection stays on
//! one backend (a pooled client sticks to an instance until its connection
//! closes).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the balancer did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalancerStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Connections relayed, per backend (in the order given).
    pub per_backend: Vec<u64>,
    /// Connections a backend refused, so that the next one was tried.
    pub failovers: u64,
    /// Connections no backend accepted (closed at once).
    pub unserved: u64,
}

#[derive(Debug)]
struct Counters {
    connections: AtomicU64,
    per_backend: Vec<AtomicU64>,
    failovers: AtomicU64,
    unserved: AtomicU64,
}

/// A running round-robin balancer on a loopback port.
#[derive(Debug)]
pub struct Balancer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port and relays each connection to the
    /// next of `backends` in turn.
    pub async fn start(backends: Vec<SocketAddr>) -> io::Result<Self> {
        if backends.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a balancer needs at least one backend",
            ));
        }
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters {
            connections: AtomicU64::new(0),
            per_backend: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            failovers: AtomicU64::new(0),
            unserved: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, Arc::new(backends), counters.clone()));
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BalancerStats {
        let c = &self.counters;
        BalancerStats {
            connections: c.connections.load(Ordering::Relaxed),
            per_backend: c
                .per_backend
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            failovers: c.failovers.load(Ordering::Relaxed),
            unserved: c.unserved.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and cuts every relayed connection (as dropping it
    /// does).
    pub async fn shutdown(self) {
        drop(self);
        tokio::task::yield_now().await;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts forever; each connection is relayed by its own task, and all of
/// them end when this task is aborted (the set is dropped with it).
async fn accept(listener: TcpListener, backends: Arc<Vec<SocketAddr>>, counters: Arc<Counters>) {
    let next = AtomicUsize::new(0);
    let mut relays = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Reap finished relays so the set does not grow with the run.
        while relays.try_join_next().is_some() {}
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let first = next.fetch_add(1, Ordering::Relaxed);
        let (backends, counters) = (backends.clone(), counters.clone());
        relays.spawn(async move {
            let n = backends.len();
            for k in 0..n {
                let index = (first + k) % n;
                match TcpStream::connect(backends[index]).await {
                    Ok(server) => {
                        counters.per_backend[index].fetch_add(1, Ordering::Relaxed);
                        relay(client, server).await;
                        return;
                    }
                    Err(_) => {
                        counters.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            counters.unserved.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Copies both ways until either side closes or fails.
async fn relay(mut client: TcpStream, mut server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its own name.
    async fn named(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        (addr, task)
    }

    async fn ask(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_skip_a_dead_backend() {
        let (a, ta) = named("a").await;
        let (b, tb) = named("b").await;
        let balancer = Balancer::start(vec![a, b]).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(ask(balancer.addr()).await);
        }
        assert_eq!(seen, ["a", "b", "a", "b"]);
        // b goes away: every connection reaches a.
        tb.abort();
        let _ = tb.await;
        for _ in 0..3 {
            assert_eq!(ask(balancer.addr()).await, "a");
        }
        let stats = balancer.stats();
        assert_eq!(stats.connections, 7);
        assert!(stats.failovers >= 1, "{stats:?}");
        assert_eq!(stats.unserved, 0);
        ta.abort();
        balancer.shutdown().await;
    }
}
