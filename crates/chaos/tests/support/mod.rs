//! A minimal HTTP/1.1 client over a raw `TcpStream` for the tests (no TLS,
//! no extra dependency): enough to see status, headers and body as a real
//! client does, and to reuse one connection for several requests.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// One keep-alive connection.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            stream: BufReader::new(TcpStream::connect(addr).await?),
        })
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(req.as_bytes()).await?;
        stream.write_all(body).await?;
        self.read_response().await
    }

    /// The authorised chat completion [`CHAT`], on this connection.
    pub async fn chat(&mut self) -> io::Result<Response> {
        self.send("POST", COMPLETIONS, &[AUTH, JSON], CHAT.as_bytes())
            .await
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| io::Error::other("bad header"))?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other("no content-length"))?;
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection, bounded by a 5 s timeout.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    tokio::time::timeout(Duration::from_secs(5), async {
        Conn::open(addr)
            .await?
            .send(method, path, headers, body)
            .await
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

pub const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"system","content":"You are a tutor."},{"role":"user","content":"What is a derivative?"}]}"#;
pub const AUTH: (&str, &str) = ("Authorization", "Bearer sk_test_123");
pub const JSON: (&str, &str) = ("Content-Type", "application/json");
pub const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Where the OpenAI-compatible server answers chat completions.
pub const COMPLETIONS: &str = "/v1/chat/completions";

/// A chat completion `body` posted with `headers` on a fresh connection
/// (see [`request`]); it panics when no answer comes.
pub async fn completion(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(addr, "POST", COMPLETIONS, headers, body)
        .await
        .unwrap()
}

/// The authorised chat completion [`CHAT`] on a fresh connection.
pub async fn try_chat(addr: SocketAddr) -> io::Result<Response> {
    request(addr, "POST", COMPLETIONS, &[AUTH, JSON], CHAT.as_bytes()).await
}

/// [`try_chat`], which must be answered.
pub async fn chat(addr: SocketAddr) -> Response {
    try_chat(addr).await.unwrap()
}

/// Weights that draw only `kind`.
pub fn weights_only(kind: chaos::faults::FaultKind) -> chaos::plan::FaultWeights {
    use chaos::faults::FaultKind;
    let mut weights = chaos::plan::FaultWeights {
        rate_limit: 0.0,
        unavailable: 0.0,
        stall: 0.0,
        reset: 0.0,
        latency: 0.0,
        lost_response: 0.0,
        late_response: 0.0,
    };
    let weight = match kind {
        FaultKind::RateLimit => &mut weights.rate_limit,
        FaultKind::Unavailable => &mut weights.unavailable,
        FaultKind::Stall => &mut weights.stall,
        FaultKind::Reset => &mut weights.reset,
        FaultKind::Latency => &mut weights.latency,
        FaultKind::LostResponse => &mut weights.lost_response,
        FaultKind::LateResponse => &mut weights.late_response,
    };
    *weight = 1.0;
    weights
}

/// An echo server on loopback: writes back whatever it reads.
pub async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}
