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

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::plan::SmtpPlan;

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

    /// Starts flipping the server down and up following `plan`: periods of a
    /// random length within `plan.period`, each one down with probability
    /// `plan.down_fraction`. Stop it with [`Outage::stop`] (which leaves the
    /// server up).
    pub fn start_outages(&self, plan: &SmtpPlan, seed: u64) -> Outage {
        let server = self.clone();
        let plan = plan.clone();
        let stats = Arc::new(Mutex::new(OutageStats::default()));
        let task_stats = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            loop {
                let down = rng.f64() < plan.down_fraction;
                let period = plan.period.sample(&mut rng);
                if server.set_up(!down).await.is_err() {
                    // The port could not be re-bound: retry shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                {
                    let mut s = task_stats.lock().expect("outage stats");
                    if down {
                        s.outages += 1;
                        s.down_time += period;
                    } else {
                        s.up_time += period;
                    }
                }
                tokio::time::sleep(period).await;
            }
        });
        Outage {
            server: self.clone(),
            stats,
            task: Some(task),
        }
    }

    /// Stops the server for good.
    pub async fn shutdown(self) {
        let _ = self.set_up(false).await;
    }
}

/// What an [`Outage`] did (scheduled times; the last period may be cut short).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutageStats {
    /// Down periods started.
    pub outages: u64,
    /// Scheduled time down.
    pub down_time: Duration,
    /// Scheduled time up.
    pub up_time: Duration,
}

/// A task flipping an [`SmtpServer`] up and down. Dropping it stops the
/// flipping (the server keeps its current state).
#[derive(Debug)]
pub struct Outage {
    server: SmtpServer,
    stats: Arc<Mutex<OutageStats>>,
    task: Option<JoinHandle<()>>,
}

impl Outage {
    /// What it did so far.
    pub fn stats(&self) -> OutageStats {
        *self.stats.lock().expect("outage stats")
    }

    /// Stops flipping and brings the server back up.
    pub async fn stop(mut self) -> io::Result<OutageStats> {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.server.set_up(true).await?;
        Ok(self.stats())
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().take() {
            task.abort();
        }
    }
}

fn reusable_socket() -> io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

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
                    let _ = session(stream, &inner).await;
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// A line read with a length limit.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// Reads one line (up to LF, included) of at most `MAX_LINE` bytes; a longer
/// line is consumed to its end and reported as `TooLong`.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = match tokio::time::timeout(IDLE_TIMEOUT, reader.fill_buf()).await {
            Ok(buf) => buf?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
        };
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if line.len() + chunk.len() > MAX_LINE {
            too_long = true;
        } else {
            line.extend_from_slice(chunk);
        }
        let used = chunk.len();
        reader.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            });
        }
    }
}

#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

/// `<addr> PARAMS` → (`addr`, `PARAMS`).
fn parse_path(arg: &str) -> Option<(String, &str)> {
    let arg = arg.trim_start();
    let rest = arg.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((rest[..end].to_owned(), rest[end + 1..].trim()))
}

async fn session(stream: TcpStream, inner: &Inner) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write
        .write_all(format!("220 {HOSTNAME} ESMTP chaos ready\r\n").as_bytes())
        .await?;
    let mut greeted = false;
    let mut tx = Transaction::default();
    loop {
        let line = match read_line(&mut reader).await? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                write.write_all(b"500 5.5.2 Line too long\r\n").await?;
                continue;
            }
            Line::Text(line) => line,
        };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" if arg.trim().is_empty() => "501 5.5.4 Domain name required\r\n".into(),
            "EHLO" => {
                greeted = true;
                tx = Transaction::default();
                format!(
                    "250-{HOSTNAME} greets {}\r\n250-SIZE {MAX_MESSAGE}\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
                    arg.trim()
                )
            }
            "HELO" => {
                greeted = true;
                tx = Transaction::default();
                format!("250 {HOSTNAME}\r\n")
            }
            "MAIL" => mail(arg, greeted, &mut tx),
            "RCPT" => rcpt(arg, &mut tx),
            "DATA" => {
                if tx.mail_from.is_none() {
                    "503 5.5.1 Need MAIL before DATA\r\n".into()
                } else if tx.rcpt_to.is_empty() {
                    "554 5.5.1 No valid recipients\r\n".into()
                } else {
                    write
                        .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let reply = data(&mut reader, &mut tx, inner).await?;
                    tx = Transaction::default();
                    reply
                }
            }
            "RSET" => {
                tx = Transaction::default();
                "250 2.0.0 OK\r\n".into()
            }
            "NOOP" => "250 2.0.0 OK\r\n".into(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                let _ = write.shutdown().await;
                return Ok(());
            }
            _ => "502 5.5.2 Command not recognized\r\n".into(),
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

fn mail(arg: &str, greeted: bool, tx: &mut Transaction) -> String {
    if !greeted {
        return "503 5.5.1 Send EHLO/HELO first\r\n".into();
    }
    if tx.mail_from.is_some() {
        return "503 5.5.1 Sender already specified\r\n".into();
    }
    let Some(arg) = strip_keyword(arg, "FROM:") else {
        return "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into();
    };
    let Some((path, params)) = parse_path(arg) else {
        return "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into();
    };
    for param in params.split_whitespace() {
        if let Some(size) = param
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("SIZE="))
            .and(param.get(5..))
            && size.parse::<usize>().is_ok_and(|s| s > MAX_MESSAGE)
        {
            return "552 5.3.4 Message size exceeds fixed limit\r\n".into();
        }
    }
    tx.mail_from = Some(path);
    "250 2.1.0 OK\r\n".into()
}

fn rcpt(arg: &str, tx: &mut Transaction) -> String {
    if tx.mail_from.is_none() {
        return "503 5.5.1 Need MAIL before RCPT\r\n".into();
    }
    let Some((path, _)) = strip_keyword(arg, "TO:").and_then(parse_path) else {
        return "501 5.5.4 Syntax: RCPT TO:<address>\r\n".into();
    };
    if path.is_empty() {
        return "501 5.1.3 Empty recipient\r\n".into();
    }
    if tx.rcpt_to.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 Too many recipients\r\n".into();
    }
    tx.rcpt_to.push(path);
    "250 2.1.5 OK\r\n".into()
}

fn strip_keyword<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| &arg[keyword.len()..])
}

/// Reads the message up to the lone dot, unstuffs, checks the limits and
/// records it; returns the reply.
async fn data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    tx: &mut Transaction,
    inner: &Inner,
) -> io::Result<String> {
    let mut message = Vec::new();
    let mut too_big = false;
    let mut too_long = false;
    loop {
        let line = match read_line(reader).await? {
            Line::Eof => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during DATA",
                ));
            }
            Line::TooLong => {
                too_long = true;
                continue;
            }
            Line::Text(line) => line,
        };
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        let mut content = line.as_slice();
        if content.first() == Some(&b'.') {
            content = &content[1..];
        }
        let content = content
            .strip_suffix(b"\r\n")
            .or_else(|| content.strip_suffix(b"\n"))
            .unwrap_or(content);
        if message.len() + content.len() + 2 > MAX_MESSAGE {
            too_big = true;
            continue;
        }
        message.extend_from_slice(content);
        message.extend_from_slice(b"\r\n");
    }
    if too_long {
        return Ok("500 5.5.6 Line too long in message\r\n".into());
    }
    if too_big {
        return Ok("552 5.3.4 Message size exceeds fixed limit\r\n".into());
    }
    let received = ReceivedMessage {
        mail_from: tx.mail_from.take().unwrap_or_default(),
        rcpt_to: std::mem::take(&mut tx.rcpt_to),
        message_id: message_id(&message),
        data: message,
        received_at: SystemTime::now(),
    };
    inner.messages.lock().expect("messages lock").push(received);
    Ok("250 2.0.0 OK: queued\r\n".into())
}

/// The `Message-ID` header value (unfolded, trimmed) from the header block.
pub fn message_id(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let mut value: Option<String> = None;
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        let folded = line.starts_with([' ', '\t']);
        match (&mut value, folded) {
            (Some(v), true) => {
                v.push_str(line.trim());
                continue;
            }
            (Some(_), false) => break,
            (None, _) => {}
        }
        if let Some((name, rest)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("message-id")
        {
            value = Some(rest.trim().to_owned());
        }
    }
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_found_case_insensitively_and_unfolded() {
        let data =
            b"From: a@b\r\nmessage-id:\r\n <abc@x>\r\nSubject: s\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(data).as_deref(), Some("<abc@x>"));
        assert_eq!(message_id(b"Subject: s\r\n\r\nbody\r\n"), None);
    }

    #[test]
    fn paths_and_keywords_parse() {
        assert_eq!(
            parse_path("<a@b> SIZE=10"),
            Some(("a@b".to_owned(), "SIZE=10"))
        );
        assert_eq!(strip_keyword("from:<a@b>", "FROM:"), Some("<a@b>"));
        assert_eq!(parse_path("a@b"), None);
    }
}
