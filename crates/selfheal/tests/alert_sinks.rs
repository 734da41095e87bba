//! The alert sinks against real servers on loopback, wired into a started
//! [`Monitor`] the way a service wires them.
//!
//! These tests use real time (HTTP and SMTP need real I/O), kept short by a
//! fast sink policy and a 50 ms evaluation interval; every wait is bounded.
#![cfg(any(feature = "webhook", feature = "email"))]

use std::future::Future;
use std::time::Duration;

use selfheal::health::{AlertSink, Monitor, MonitorBuilder};
use selfheal::retry::{Backoff, Policy};

/// What a service would configure, with short delays.
fn builder(attempts: u32) -> MonitorBuilder {
    let policy = Policy::default()
        .with_name("alert_sink")
        .with_max_attempts(attempts)
        .unwrap()
        .with_backoff(Backoff::constant(Duration::from_millis(20)))
        .without_budget();
    Monitor::builder()
        .with_global(false)
        .with_evaluation_interval(Duration::from_millis(50))
        .with_sink_policy(policy)
}

/// The guide's scenario: the same error 11 times, over the threshold of 10.
/// A monitor delivering to `sink` (`attempts` tries), after the eleven
/// errors that fire its alert.
fn alerting(sink: std::sync::Arc<dyn AlertSink>, attempts: u32) -> Monitor {
    let monitor = builder(attempts).with_sink(sink).start().unwrap();
    eleven_identical_errors(&monitor);
    monitor
}

fn eleven_identical_errors(monitor: &Monitor) {
    for i in 0..11 {
        monitor.record_error(
            "OperationalError",
            "save_progress",
            &format!("database is locked (user ada@example.com) #{i}"),
        );
    }
}

/// Polls `condition` every 20 ms for at most 5 s.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `monitor` has recorded a failed alert delivery.
async fn a_delivery_failure(monitor: &Monitor) {
    eventually("the delivery failure", || async {
        monitor
            .report(Duration::from_secs(900))
            .alert_delivery_failures
            >= 1
    })
    .await;
}

/// Long enough for a stray extra delivery (20 ms backoff, 50 ms evaluation)
/// to show up.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[cfg(feature = "webhook")]
mod webhook {
    use std::sync::Arc;

    use selfheal::health::{Alert, AlertState, Severity, WebhookError, WebhookSink};
    use serde_json::Value;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    const TOKEN: &str = "tok-very-secret";
    const PATH: &str = "/services/T0/B0/path-secret";

    /// A monitor whose webhook sink (`attempts` tries) posts to `server`,
    /// after the eleven errors that fire its alert.
    fn alerting_to(server: &MockServer, attempts: u32) -> Monitor {
        alerting(Arc::new(sink(server)), attempts)
    }

    fn sink(server: &MockServer) -> WebhookSink {
        WebhookSink::new(&format!("{}{PATH}", server.uri()))
            .unwrap()
            .with_bearer_token(TOKEN)
            .unwrap()
            .with_service("cozmic")
    }

    #[tokio::test]
    async fn a_monitor_delivers_on_the_third_try_after_two_500s() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(PATH))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(2)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(PATH))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("content-type", "application/json"))
            .respond_with(ResponseTemplate::new(200))
            .with_priority(2)
            .mount(&server)
            .await;

        let monitor = alerting_to(&server, 5);

        eventually("three POSTs", || async {
            server.received_requests().await.unwrap().len() >= 3
        })
        .await;
        settle().await;

        let requests = server.received_requests().await.unwrap();
        assert_eq!(requests.len(), 3, "two failures, one success, no more");
        let first = &requests[0].body;
        assert!(
            requests.iter().all(|r| &r.body == first),
            "every retry sends the same body"
        );
        let raw = std::str::from_utf8(first).unwrap();
        assert!(raw.contains(r#""severity":"critical""#), "{raw}");
        assert!(raw.contains("OperationalError@save_progress"), "{raw}");
        assert!(
            !raw.contains("database is locked") && !raw.contains("ada@example.com"),
            "no error message leaves the process: {raw}"
        );
        let json: Value = serde_json::from_slice(first).unwrap();
        assert_eq!(json["service"], "cozmic");
        assert_eq!(json["alert"]["rule"], "repeated_error");
        assert_eq!(json["alert"]["state"], "firing");
        assert_eq!(
            json["alert"]["fingerprint"],
            "OperationalError@save_progress"
        );
        assert_eq!(json["alert"]["value"], 11.0);
        assert!(
            json["text"]
                .as_str()
                .unwrap()
                .starts_with("[cozmic] CRITICAL repeated_error: ")
        );

        let report = monitor.report(Duration::from_secs(900));
        assert_eq!(report.alert_delivery_failures, 0);
        assert!(
            report
                .fingerprints
                .iter()
                .all(|fp| !fp.operation.starts_with("alert_sink")),
            "{:?}",
            report.fingerprints
        );
    }

    #[tokio::test]
    async fn a_webhook_that_always_fails_is_recorded_on_the_monitor_without_secrets() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;

        let monitor = alerting_to(&server, 3);

        a_delivery_failure(&monitor).await;
        settle().await;

        assert_eq!(
            server.received_requests().await.unwrap().len(),
            3,
            "the sink policy's 3 attempts"
        );
        let report = monitor.report(Duration::from_secs(900));
        assert_eq!(report.alert_delivery_failures, 1);
        let failure = report
            .fingerprints
            .iter()
            .find(|fp| fp.operation == "alert_sink:webhook")
            .unwrap_or_else(|| panic!("no alert_sink:webhook error in {:?}", report.fingerprints));
        assert_eq!(failure.count, 1);
        assert!(
            failure.sample.contains("webhook answered 503"),
            "{}",
            failure.sample
        );
        for secret in [TOKEN, "path-secret", "services"] {
            assert!(!failure.sample.contains(secret), "{}", failure.sample);
        }
    }

    fn alert() -> Alert {
        Alert {
            rule: "repeated_error".into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            fingerprint: Some("OperationalError@save_progress".into()),
            value: 11.0,
            threshold: 10.0,
            window_secs: 3600,
            at: std::time::SystemTime::now(),
            summary: "OperationalError@save_progress occurred 11 times".into(),
        }
    }

    #[tokio::test]
    async fn a_slow_webhook_times_out_and_a_closed_port_fails_without_the_url() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
            .mount(&server)
            .await;
        let slow = sink(&server)
            .with_timeout(Duration::from_millis(100))
            .unwrap();
        let started = std::time::Instant::now();
        let error = slow.send(&alert()).await.unwrap_err();
        assert!(matches!(error, WebhookError::Timeout(_)), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(1));

        // A port nothing listens on (bound, then released).
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let closed = WebhookSink::new(&format!("http://127.0.0.1:{port}{PATH}?key=query-secret"))
            .unwrap()
            .with_bearer_token(TOKEN)
            .unwrap();
        let error = closed.send(&alert()).await.unwrap_err();
        assert!(matches!(error, WebhookError::Request(_)), "{error:?}");
        let shown = format!("{error} / {error:?}");
        for secret in [TOKEN, "path-secret", "query-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn debug_output_redacts_the_token_and_the_url_path() {
        let sink = WebhookSink::new(&format!("https://hooks.example.com{PATH}"))
            .unwrap()
            .with_bearer_token(TOKEN)
            .unwrap()
            .with_header("X-Api-Key", "key-very-secret")
            .unwrap();
        let debug = format!("{sink:?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(!debug.contains("key-very-secret"), "{debug}");
        assert!(!debug.contains("path-secret"), "{debug}");
        assert!(debug.contains("hooks.example.com"), "{debug}");
        assert!(debug.contains("authorization: <redacted>"), "{debug}");
        // The monitor's Debug lists sinks by name only.
        let builder = builder(3).with_sink(Arc::new(sink));
        let debug = format!("{builder:?}");
        assert!(
            !debug.contains(TOKEN) && debug.contains("webhook"),
            "{debug}"
        );
    }
}

#[cfg(feature = "email")]
mod email {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use selfheal::health::EmailSink;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// One message as the server received it.
    #[derive(Clone, Debug)]
    struct Mail {
        from: String,
        to: Vec<String>,
        data: String,
    }

    /// A minimal SMTP server (RFC 5321's EHLO/MAIL/RCPT/DATA/RSET/NOOP/QUIT,
    /// no TLS, no AUTH) on 127.0.0.1:0. It answers the first `fail_data`
    /// DATA commands with `451` (a transient failure), then accepts.
    #[derive(Clone, Default)]
    struct SmtpServer {
        mails: Arc<Mutex<Vec<Mail>>>,
        data_commands: Arc<AtomicUsize>,
        fail_data: Arc<AtomicUsize>,
    }

    impl SmtpServer {
        async fn start(fail_data: usize) -> (Self, u16) {
            let server = Self::default();
            server.fail_data.store(fail_data, Ordering::SeqCst);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepting = server.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(accepting.clone().session(socket));
                }
            });
            (server, port)
        }

        fn mails(&self) -> Vec<Mail> {
            self.mails.lock().unwrap().clone()
        }

        async fn session(self, socket: TcpStream) -> std::io::Result<()> {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"220 localhost ESMTP test\r\n").await?;
            let (mut from, mut to) = (String::new(), Vec::new());
            while let Some(line) = lines.next_line().await? {
                let command = line.to_ascii_uppercase();
                let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
                    b"250 localhost\r\n"
                } else if command.starts_with("MAIL FROM:") {
                    from = line["MAIL FROM:".len()..].trim().to_owned();
                    to.clear();
                    b"250 OK\r\n"
                } else if command.starts_with("RCPT TO:") {
                    to.push(line["RCPT TO:".len()..].trim().to_owned());
                    b"250 OK\r\n"
                } else if command == "DATA" {
                    self.data_commands.fetch_add(1, Ordering::SeqCst);
                    let fail = self
                        .fail_data
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        b"451 4.3.0 try again later\r\n"
                    } else {
                        write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                        let mut data = String::new();
                        while let Some(line) = lines.next_line().await? {
                            if line == "." {
                                break;
                            }
                            // Dot-unstuffing (RFC 5321 4.5.2).
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                            data.push('\n');
                        }
                        self.mails.lock().unwrap().push(Mail {
                            from: from.clone(),
                            to: to.clone(),
                            data,
                        });
                        b"250 OK queued\r\n"
                    }
                } else if command == "RSET" || command == "NOOP" {
                    b"250 OK\r\n"
                } else if command == "QUIT" {
                    write.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                } else {
                    b"502 command not implemented\r\n"
                };
                write.write_all(reply).await?;
            }
            Ok(())
        }
    }

    /// The value of `name`, unfolded and with RFC 2047 encoded words decoded.
    fn header(data: &str, name: &str) -> String {
        let prefix = format!("{name}: ");
        let mut lines = data.lines().skip_while(|l| !l.starts_with(&prefix));
        let mut value = lines.next().expect(name)[prefix.len()..].to_owned();
        for continuation in lines.take_while(|l| l.starts_with([' ', '\t'])) {
            value.push_str(continuation);
        }
        decode_words(&value)
    }

    /// Decodes `=?utf-8?b?…?=` and `=?utf-8?q?…?=` words; whitespace between
    /// two encoded words is dropped (RFC 2047 6.2).
    fn decode_words(value: &str) -> String {
        let mut out = Vec::new();
        let mut rest = value;
        let mut after_word = false;
        while !rest.is_empty() {
            let Some(start) = rest.find("=?") else {
                out.extend_from_slice(rest.as_bytes());
                break;
            };
            let (plain, word) = rest.split_at(start);
            if !(after_word && plain.trim().is_empty()) {
                out.extend_from_slice(plain.as_bytes());
            }
            let mut parts = word[2..].splitn(3, '?');
            let (_charset, encoding, tail) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let end = tail.find("?=").unwrap();
            let text = &tail[..end];
            match encoding {
                "b" | "B" => out.extend(base64(text)),
                _ => {
                    let bytes = text.as_bytes();
                    let mut i = 0;
                    while i < bytes.len() {
                        match bytes[i] {
                            b'_' => out.push(b' '),
                            b'=' => {
                                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                                out.push(u8::from_str_radix(hex, 16).unwrap());
                                i += 2;
                            }
                            b => out.push(b),
                        }
                        i += 1;
                    }
                }
            }
            rest = &tail[end + 2..];
            after_word = true;
        }
        String::from_utf8(out).unwrap()
    }

    /// Decodes a quoted-printable body (RFC 2045 6.7): soft line breaks and
    /// `=XX` escapes.
    fn quoted_printable(body: &str) -> String {
        let joined = body.replace("=\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn base64(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut count = 0;
        let mut out = Vec::new();
        for c in text.bytes().filter(|&c| c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            count += 6;
            if count >= 8 {
                count -= 8;
                out.push((bits >> count) as u8);
                bits &= (1 << count) - 1;
            }
        }
        out
    }

    #[test]
    fn the_test_decoder_reads_encoded_words() {
        assert_eq!(decode_words("=?utf-8?b?4oCU?= x"), "— x");
        assert_eq!(
            decode_words("a =?utf-8?q?=E2=80=94_b?= =?utf-8?b?Yw==?="),
            "a — bc"
        );
    }

    #[tokio::test]
    async fn a_monitor_emails_the_alert_once_to_every_recipient() {
        let (server, port) = SmtpServer::start(1).await;
        let email = EmailSink::new(
            &format!("smtp://127.0.0.1:{port}"),
            "selfheal <alerts@example.com>",
            ["ops@example.com", "Ada <ada@example.com>"],
        )
        .unwrap();

        let monitor = alerting(Arc::new(email), 5);

        eventually("one email", || async { !server.mails().is_empty() }).await;
        settle().await;

        let mails = server.mails();
        assert_eq!(mails.len(), 1, "{mails:?}");
        assert_eq!(
            server.data_commands.load(Ordering::SeqCst),
            2,
            "the 451 was retried once"
        );
        let mail = &mails[0];
        assert_eq!(mail.from, "<alerts@example.com>");
        assert_eq!(mail.to, ["<ops@example.com>", "<ada@example.com>"]);
        assert_eq!(
            header(&mail.data, "Subject"),
            "[CRITICAL] selfheal alert: repeated_error — OperationalError@save_progress"
        );
        let to = header(&mail.data, "To");
        assert!(
            to.contains("ops@example.com") && to.contains("Ada <ada@example.com>"),
            "{to}"
        );
        assert!(header(&mail.data, "Content-Type").starts_with("text/plain"));
        assert_eq!(
            header(&mail.data, "Content-Transfer-Encoding"),
            "quoted-printable"
        );
        let body = quoted_printable(mail.data.split_once("\n\n").unwrap().1);
        assert!(
            body.starts_with(
                "OperationalError@save_progress occurred 11 times in the last hour (threshold 10)\n"
            ),
            "{body}"
        );
        assert!(body.contains("Severity:    CRITICAL\n"), "{body}");
        assert!(
            !body.contains("database is locked") && !body.contains("ada@example.com"),
            "no error message leaves the process: {body}"
        );
        let report = monitor.report(Duration::from_secs(900));
        assert_eq!(report.alert_delivery_failures, 0);
    }

    #[tokio::test]
    async fn an_unreachable_smtp_server_is_recorded_without_the_password() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let email = EmailSink::new(
            &format!("smtp://alerts:pa55-very-secret@127.0.0.1:{port}"),
            "alerts@example.com",
            ["ops@example.com"],
        )
        .unwrap();
        assert!(!format!("{email:?}").contains("pa55-very-secret"));

        let monitor = alerting(Arc::new(email), 2);
        a_delivery_failure(&monitor).await;

        let report = monitor.report(Duration::from_secs(900));
        let failure = report
            .fingerprints
            .iter()
            .find(|fp| fp.operation == "alert_sink:email")
            .unwrap_or_else(|| panic!("no alert_sink:email error in {:?}", report.fingerprints));
        assert!(
            failure.sample.contains("SMTP delivery failed"),
            "{}",
            failure.sample
        );
        assert!(!failure.sample.contains("pa55-very-secret"));
    }
}
