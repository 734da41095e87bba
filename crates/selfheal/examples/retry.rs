//! A tour of the retry engine against a real (local) flaky server.
//!
//! Run it with `cargo run -p selfheal --example retry`. It starts a TCP server
//! on a loopback port that resets the first two connections of every request
//! and answers the third, then shows:
//!
//! 1. a call that recovers after two transient failures (connection resets);
//! 2. a permanent failure (the server says "bad request") tried exactly once;
//! 3. an outage: with the server gone, 200 calls with a shared retry budget make
//!    about 210 attempts instead of 600;
//! 4. a fallback answering a default when all else fails.
//!
//! The `tracing` lines are what selfheal logs by itself.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use selfheal::fallback::Fallback;
use selfheal::retry::{Backoff, Budget, Policy, Transient, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::instrument::WithSubscriber;

/// What our little client can fail with.
#[derive(Debug)]
enum FetchError {
    Io(io::Error),
    Rejected(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "i/o error: {e}"),
            Self::Rejected(why) => write!(f, "server rejected the request: {why}"),
        }
    }
}

impl std::error::Error for FetchError {}

impl Transient for FetchError {
    fn verdict(&self) -> Verdict {
        match self {
            Self::Io(e) => e.verdict(),
            Self::Rejected(_) => Verdict::Permanent,
        }
    }
}

/// One request: connect, send a line, read the answer.
async fn fetch(addr: std::net::SocketAddr, line: &str) -> Result<String, FetchError> {
    let mut stream = TcpStream::connect(addr).await.map_err(FetchError::Io)?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(FetchError::Io)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(FetchError::Io)?;
    if answer.is_empty() {
        // The server closed without answering: the connection was reset.
        return Err(FetchError::Io(io::ErrorKind::ConnectionReset.into()));
    }
    match answer.strip_prefix("ERR ") {
        Some(why) => Err(FetchError::Rejected(why.trim().to_owned())),
        None => Ok(answer.trim().to_owned()),
    }
}

/// A server that drops two connections out of three, and rejects "bad" lines.
async fn flaky_server() -> io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(AtomicU32::new(0));
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let Ok(len) = socket.read(&mut buf).await else {
                    return;
                };
                let line = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
                if n % 3 != 2 {
                    // Hang up without answering: the client sees the connection drop.
                    return;
                }
                let answer = if line == "bad" {
                    "ERR unknown command\n".to_owned()
                } else {
                    format!("OK {line}\n")
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok((addr, task))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_target(false)
        .init();

    let (addr, server) = flaky_server().await?;
    let budget = Arc::new(Budget::default());
    let policy = Policy::default()
        .with_max_attempts(3)?
        .with_backoff(Backoff::exponential(
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(200),
        )?)
        .with_budget(budget.clone())
        .with_classifier(selfheal::retry::ByTrait);

    println!("\n1. A flaky call: two resets, then an answer");
    let answer = policy
        .retry_named("fetch_profile", || fetch(addr, "profile"))
        .await?;
    println!("   -> {answer}");

    println!("\n2. A permanent failure is tried once");
    // Skip ahead so the next connection is the one that gets answered.
    let _ = fetch(addr, "warm-up").await;
    let _ = fetch(addr, "warm-up").await;
    match policy.retry_named("send_bad", || fetch(addr, "bad")).await {
        Ok(answer) => println!("   -> unexpected answer {answer}"),
        Err(e) => println!("   -> {e}"),
    }

    println!("\n3. An outage: the server is gone; 200 calls share one budget");
    server.abort();
    let _ = server.await;
    let attempts = Arc::new(AtomicU32::new(0));
    let quiet = policy
        .clone()
        .with_backoff(Backoff::immediate())
        .with_observer(Arc::new(|_: &selfheal::observe::Event<'_>| {}));
    // 200 calls' worth of log lines would drown the point: silence them.
    let outage = async {
        for _ in 0..200 {
            let attempts = attempts.clone();
            let _ = quiet
                .retry(|| {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    fetch(addr, "profile")
                })
                .await;
        }
    };
    outage
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
    println!(
        "   -> {} attempts for 200 calls (600 without a budget); budget now {:.1} of {} tokens",
        attempts.load(Ordering::Relaxed),
        budget.tokens(),
        budget.max_tokens()
    );

    println!("\n4. A fallback: the guide's safe_execute(default_return=[])");
    let courses: Vec<String> = Fallback::new("get_user_courses")
        .or_default(async {
            fetch(addr, "courses")
                .await
                .map(|line| line.split(',').map(str::to_owned).collect())
        })
        .await;
    println!(
        "   -> {} courses (empty, the page still renders)",
        courses.len()
    );
    Ok(())
}
