//! A real SMTP server (RFC 5321 subset, plain TCP on loopback) that records
//! every accepted message and can really go down.
//!
//! Why its own server: the app's mail path must meet a real outage, a refused
//! connection, not a mock returning an error, and the harness must then check
//! from the receiving side that every email arrived exactly once (by
//! `Message-ID`): a lost email and a duplicated one are both integrity
//! failures. When down, the listener is closed (connections are refused) and
//! every session in progress is cut; when up again it is re-bound on the same
//! port (SO_REUSEADDR), so the app's configuration never changes. A client
//! whose connection sat in the listen backlog at the moment of closing gets a
//! reset instead of a refusal, as with a real crash.
//!
//! Supported: EHLO/HELO, MAIL FROM (with a `SIZE=` check), RCPT TO, DATA with
//! dot-unstuffing, RSET, NOOP, QUIT; anything else gets 502. No TLS, and
//! STARTTLS is not advertised. Command and text lines are limited to
//! [`MAX_LINE`] bytes, messages to [`MAX_MESSAGE`] bytes.
//!
//! The server's parts: this file holds the server itself (binding, the
//! up/down switch, what it received); `outage` flips it down and up on a
//! schedule; `session` speaks the protocol to one client.

mod outage;
mod session;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpSocket;
use tokio::task::{JoinHandle, JoinSet};

pub use outage::{Outage, OutageStats};
pub use session::message_id;

/// Longest accepted line, CRLF included (RFC 5321 §4.5.3.1.6: 1000).
pub const MAX_LINE: usize = 1000;
/// Largest accepted message (advertised with `SIZE`).
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// Most recipients per message.
pub const MAX_RECIPIENTS: usize = 100;
/// A session idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const HOSTNAME: &str = "chaos-smtp.localhost";

/// One message accepted with `250` after DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The `MAIL FROM` reverse path (without angle brackets).
    pub mail_from: String,
    /// The `RCPT TO` forward paths.
    pub rcpt_to: Vec<String>,
    /// The `Message-ID` header value (angle brackets kept), if any.
    pub message_id: Option<String>,
    /// The message as received, dot-unstuffed, CRLF line endings.
    pub data: Vec<u8>,
    /// When it was accepted.
    pub received_at: SystemTime,
}

/// Which emails arrived, and which more than once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Messages accepted in total.
    pub messages: usize,
    /// Distinct `Message-ID`s received.
    pub distinct_ids: usize,
    /// Messages without a `Message-ID`.
    pub without_id: usize,
    /// `Message-ID`s received more than once, with their count.
    pub duplicates: BTreeMap<String, usize>,
    /// How many times each `Message-ID` was received.
    pub received: BTreeMap<String, usize>,
}

impl DeliveryReport {
    /// Extra copies delivered (sum of count - 1 over duplicated IDs).
    pub fn duplicated(&self) -> usize {
        self.duplicates.values().map(|n| n - 1).sum()
    }

    /// The expected `Message-ID`s that never arrived.
    pub fn missing<'a>(&self, expected: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        expected
            .into_iter()
            .filter(|id| !self.received.contains_key(*id))
            .map(str::to_owned)
            .collect()
    }
}

/// What the server and its sessions share.
#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    messages: Mutex<Vec<ReceivedMessage>>,
    /// The accept task while up (dropping it closes the listener and every session).
    listener: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

/// A running SMTP server on 127.0.0.1. Dropping it stops it.
#[derive(Debug, Clone)]
pub struct SmtpServer {
    inner: Arc<Inner>,
}

impl SmtpServer {
    /// Binds a free loopback port and starts accepting.
    pub async fn start() -> io::Result<Self> {
        let socket = reusable_socket()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = socket.local_addr()?;
        let inner = Arc::new(Inner {
            addr,
            messages: Mutex::new(Vec::new()),
            listener: tokio::sync::Mutex::new(None),
        });
        let listener = socket.listen(128)?;
        *inner.listener.lock().await =
            Some(tokio::spawn(accept_loop(listener, Arc::downgrade(&inner))));
        Ok(Self { inner })
    }

    /// The address (the same across outages).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The port (the same across outages).
    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// Whether the listener is open.
    pub async fn is_up(&self) -> bool {
        self.inner.listener.lock().await.is_some()
    }

    /// Down: closes the listener (new connections are refused) and cuts every
    /// session in progress; returns once the port is closed. Up: re-binds the
    /// same port. Idempotent.
    pub async fn set_up(&self, up: bool) -> io::Result<()> {
        let mut slot = self.inner.listener.lock().await;
        match (up, slot.is_some()) {
            (true, false) => {
                let socket = reusable_socket()?;
                socket.bind(self.inner.addr)?;
                let listener = socket.listen(128)?;
                *slot = Some(tokio::spawn(accept_loop(
                    listener,
                    Arc::downgrade(&self.inner),
                )));
            }
            (false, true) => {
                if let Some(task) = slot.take() {
                    task.abort();
                    let _ = task.await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Every message accepted so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.inner.messages.lock().expect("messages lock").clone()
    }

    /// The `Message-ID` of every accepted message (in order, duplicates kept).
    pub fn message_ids(&self) -> Vec<String> {
        self.inner
            .messages
            .lock()
            .expect("messages lock")
            .iter()
            .filter_map(|m| m.message_id.clone())
            .collect()
    }

    /// Counts by `Message-ID`: distinct, duplicated, without an ID.
    pub fn delivery_report(&self) -> DeliveryReport {
        let messages = self.inner.messages.lock().expect("messages lock");
        let mut report = DeliveryReport {
            messages: messages.len(),
            ..DeliveryReport::default()
        };
        for m in messages.iter() {
            match &m.message_id {
                Some(id) => *report.received.entry(id.clone()).or_default() += 1,
                None => report.without_id += 1,
            }
        }
        report.distinct_ids = report.received.len();
        report.duplicates = report
            .received
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        report
    }

    /// Stops the server for good.
    pub async fn shutdown(self) {
        let _ = self.set_up(false).await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().take() {
            task.abort();
        }
    }
}

/// A socket that can re-bind the port right after it was closed.
fn reusable_socket() -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

/// Accepts connections until aborted (down) or the server is dropped.
async fn accept_loop(listener: tokio::net::TcpListener, inner: std::sync::Weak<Inner>) {
    // Sessions live in this JoinSet: when this task is aborted (down), they
    // are all aborted with it.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Some(inner) = inner.upgrade() else { return };
                sessions.spawn(async move {
                    let _ = session::session(stream, &inner).await;
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}
