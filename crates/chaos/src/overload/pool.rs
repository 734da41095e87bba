//! An upstream with real, finite capacity: a pool of workers in front of a
//! FIFO queue, on loopback.
//!
//! Why this shape: metastable failures (Bronson et al., HotOS 2021; Huang
//! et al., OSDI 2022) need a server that does not know its clients gave up.
//! Every request that arrives takes its place in the queue; when its turn
//! comes it occupies a worker for the service time whether or not its
//! client is still waiting (a timed-out or disconnected request is *still
//! served*: its work is done, its answer is thrown away). That is what
//! makes a retry storm self-sustaining: once the queue is longer than the
//! clients' timeout, every answer comes too late, every attempt is retried,
//! and the retries keep the queue long after the cause is gone.
//!
//! The queue is a fair (FIFO) [`tokio::sync::Semaphore`] with one permit
//! per worker: each request spawns a job that waits for a permit, sleeps
//! the service time, and sends its answer to the handler if the handler is
//! still there. The handler only awaits that answer, so a client that goes
//! away drops the handler, never the job.
//!
//! The trigger is a slowdown: [`PoolServer::set_slowdown`] multiplies the
//! service time of every request that starts service from then on (2×
//! halves the capacity, as a garbage-collection storm, a noisy neighbour or
//! a slow disk would).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// What the pool counted, per second since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Requests that arrived (every attempt of every client), per second.
    pub arrived: Vec<u64>,
    /// Requests served while their client still waited, per second.
    pub answered: Vec<u64>,
    /// Requests served after their client had gone (wasted work), per second.
    pub wasted: Vec<u64>,
    /// The longest the queue (requests waiting for a worker) was, per second.
    pub queue: Vec<u64>,
}

/// The pool's shared state.
#[derive(Debug)]
struct Pool {
    workers: Semaphore,
    service: Duration,
    /// The slowdown factor × 1000 (1000: none).
    slowdown_millis: AtomicU64,
    /// Requests waiting for a worker now.
    waiting: AtomicU64,
    started: Instant,
    counts: Mutex<PoolCounts>,
}

impl Pool {
    /// Adds one to `pick(counts)` at the current second.
    fn count(&self, pick: fn(&mut PoolCounts) -> &mut Vec<u64>) {
        self.at_this_second(pick, |slot| *slot += 1);
    }

    /// Applies `update` to `pick(counts)` at the current second.
    fn at_this_second(
        &self,
        pick: fn(&mut PoolCounts) -> &mut Vec<u64>,
        update: impl FnOnce(&mut u64),
    ) {
        let second = self.started.elapsed().as_secs() as usize;
        let mut counts = self.counts.lock().expect("pool counts");
        let series = pick(&mut counts);
        if series.len() <= second {
            series.resize(second + 1, 0);
        }
        update(&mut series[second]);
    }

    fn service_time(&self) -> Duration {
        self.service
            .mul_f64(self.slowdown_millis.load(Ordering::Relaxed) as f64 / 1000.0)
    }
}

/// The finite-capacity upstream; see the [module docs](self).
#[derive(Debug)]
pub struct PoolServer {
    addr: SocketAddr,
    pool: Arc<Pool>,
    task: JoinHandle<()>,
}

impl PoolServer {
    /// Starts `workers` workers, each taking `service` per request, on a
    /// loopback port: a capacity of `workers / service` requests per second.
    pub async fn start(workers: usize, service: Duration) -> std::io::Result<Self> {
        let pool = Arc::new(Pool {
            workers: Semaphore::new(workers.max(1)),
            service,
            slowdown_millis: AtomicU64::new(1000),
            waiting: AtomicU64::new(0),
            started: Instant::now(),
            counts: Mutex::new(PoolCounts::default()),
        });
        let router = Router::new()
            .route("/work", get(work))
            .with_state(pool.clone());
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { addr, pool, task })
    }

    /// `http://<addr>/work`.
    pub fn url(&self) -> String {
        format!("http://{}/work", self.addr)
    }

    /// When the pool started counting (second 0 of [`PoolServer::counts`]).
    pub fn started(&self) -> Instant {
        self.pool.started
    }

    /// Multiplies the service time of requests that start service from now
    /// on by `factor` (1.0: back to normal).
    pub fn set_slowdown(&self, factor: f64) {
        self.pool
            .slowdown_millis
            .store((factor * 1000.0).round().max(1.0) as u64, Ordering::Relaxed);
    }

    /// What it counted so far.
    pub fn counts(&self) -> PoolCounts {
        self.pool.counts.lock().expect("pool counts").clone()
    }
}

impl Drop for PoolServer {
    /// Stops serving; jobs still waiting for a worker end at once.
    fn drop(&mut self) {
        self.pool.workers.close();
        self.task.abort();
    }
}

/// `GET /work`: queue for a worker, be served, answer `200` if the client
/// is still there.
async fn work(State(pool): State<Arc<Pool>>) -> StatusCode {
    pool.count(|c| &mut c.arrived);
    let (answer, answered) = oneshot::channel::<()>();
    let job = pool.clone();
    // Detached: the job runs its turn even if this handler is dropped.
    tokio::spawn(async move {
        let queued = job.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        job.at_this_second(|c| &mut c.queue, |max| *max = (*max).max(queued));
        let worker = job.workers.acquire().await;
        job.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(_worker) = worker else {
            return;
        };
        tokio::time::sleep(job.service_time()).await;
        if answer.send(()).is_ok() {
            job.count(|c| &mut c.answered);
        } else {
            job.count(|c| &mut c.wasted);
        }
    });
    match answered.await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_serves_in_turn_and_serves_abandoned_requests_too() {
        let server = PoolServer::start(1, Duration::from_millis(50))
            .await
            .unwrap();
        selfheal::tls::install_default_crypto_provider();
        let http = reqwest::Client::new();
        // One worker: the second request waits ~50 ms, the third ~100 ms.
        let slow = http
            .get(server.url())
            .timeout(Duration::from_millis(20))
            .send();
        // Abandoned after 20 ms: still served (wasted), and it delays the next.
        assert!(slow.await.is_err());
        let began = Instant::now();
        let ok = http.get(server.url()).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert!(
            began.elapsed() >= Duration::from_millis(70),
            "{:?}",
            began.elapsed()
        );
        let counts = server.counts();
        assert_eq!(counts.arrived.iter().sum::<u64>(), 2);
        assert_eq!(counts.wasted.iter().sum::<u64>(), 1);
        assert_eq!(counts.answered.iter().sum::<u64>(), 1);
        assert_eq!(counts.queue.iter().max(), Some(&1));
    }
}
