//! The SMTP server, seen by lettre and by a raw client.

use std::time::Duration;

use chaos::plan::{DurationRange, SmtpPlan};
use chaos::smtp::SmtpServer;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(5);

fn mailer(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(2)))
        .build()
}

fn email(id: &str, body: &str) -> Message {
    let from: Mailbox = "Cozmic <noreply@cozmic.test>".parse().unwrap();
    Message::builder()
        .from(from)
        .to("student@example.test".parse().unwrap())
        .subject("Your receipt")
        .message_id(Some(id.to_owned()))
        .body(body.to_owned())
        .unwrap()
}

#[tokio::test]
async fn lettre_delivers_and_the_message_id_is_recorded() {
    let server = SmtpServer::start().await.unwrap();
    let mailer = mailer(server.port());
    timeout(
        BOUND,
        mailer.send(email(
            "<r-1@cozmic.test>",
            "Thanks.\r\n.a line starting with a dot\r\n",
        )),
    )
    .await
    .unwrap()
    .unwrap();
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.message_id.as_deref(), Some("<r-1@cozmic.test>"));
    assert_eq!(m.mail_from, "noreply@cozmic.test");
    assert_eq!(m.rcpt_to, vec!["student@example.test".to_owned()]);
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("Subject: Your receipt"), "{text}");
    // dot-unstuffed: the line starts with a single dot again
    assert!(text.contains("\r\n.a line starting with a dot"), "{text}");
    assert!(!text.contains("..a line"), "{text}");
    assert_eq!(server.message_ids(), vec!["<r-1@cozmic.test>".to_owned()]);
}

#[tokio::test]
async fn down_refuses_and_up_again_delivers_on_the_same_port() {
    let server = SmtpServer::start().await.unwrap();
    let port = server.port();
    let mailer = mailer(port);
    server.set_up(false).await.unwrap();
    assert!(!server.is_up().await);
    let refused = TcpStream::connect(server.addr()).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let err = timeout(BOUND, mailer.send(email("<down@x>", "lost")))
        .await
        .unwrap();
    assert!(err.is_err(), "delivery while down should fail");
    assert!(server.messages().is_empty());

    server.set_up(true).await.unwrap();
    assert_eq!(server.port(), port);
    timeout(BOUND, mailer.send(email("<up@x>", "arrives")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.message_ids(), vec!["<up@x>".to_owned()]);
}

#[tokio::test]
async fn duplicates_and_missing_emails_are_reported() {
    let server = SmtpServer::start().await.unwrap();
    let mailer = mailer(server.port());
    for id in ["<a@x>", "<b@x>", "<a@x>", "<a@x>"] {
        timeout(BOUND, mailer.send(email(id, "hi")))
            .await
            .unwrap()
            .unwrap();
    }
    let report = server.delivery_report();
    assert_eq!(report.messages, 4);
    assert_eq!(report.distinct_ids, 2);
    assert_eq!(report.duplicates.get("<a@x>"), Some(&3));
    assert!(!report.duplicates.contains_key("<b@x>"));
    assert_eq!(report.duplicated(), 2);
    assert_eq!(report.missing(["<a@x>", "<c@x>"]), vec!["<c@x>".to_owned()]);
}

/// A raw SMTP client: send a line, read one (possibly multi-line) reply.
struct Raw {
    stream: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(server: &SmtpServer) -> (Self, String) {
        let mut raw = Raw {
            stream: BufReader::new(TcpStream::connect(server.addr()).await.unwrap()),
        };
        let greeting = raw.reply().await;
        (raw, greeting)
    }

    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            timeout(BOUND, self.stream.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            assert!(!line.is_empty(), "connection closed");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

#[tokio::test]
async fn protocol_sequence_errors_limits_and_unknown_commands() {
    let server = SmtpServer::start().await.unwrap();
    let (mut c, greeting) = Raw::connect(&server).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("503"));
    let ehlo = c.cmd("EHLO client.test\r\n").await;
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    assert!(!ehlo.to_ascii_uppercase().contains("STARTTLS"), "{ehlo}");
    assert!(c.cmd("STARTTLS\r\n").await.starts_with("502"));
    assert!(c.cmd("XYZZY\r\n").await.starts_with("502"));
    assert!(c.cmd("NOOP\r\n").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@x>\r\n").await.starts_with("503"));
    assert!(c.cmd("DATA\r\n").await.starts_with("503"));
    assert!(
        c.cmd("MAIL FROM:<a@x> SIZE=999999999999\r\n")
            .await
            .starts_with("552")
    );
    assert!(c.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));
    assert!(c.cmd("DATA\r\n").await.starts_with("554"));
    assert!(c.cmd("RCPT TO:<b@x>\r\n").await.starts_with("250"));
    assert!(c.cmd("RSET\r\n").await.starts_with("250"));
    assert!(
        c.cmd("DATA\r\n").await.starts_with("503"),
        "RSET cleared the transaction"
    );
    let long = format!("NOOP {}\r\n", "x".repeat(2000));
    assert!(c.cmd(&long).await.starts_with("500"));
    assert!(c.cmd("MAIL FROM:<a@x>\r\n").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@x>\r\n").await.starts_with("250"));
    assert!(c.cmd("DATA\r\n").await.starts_with("354"));
    let reply = c
        .cmd("Message-ID: <raw@x>\r\nSubject: t\r\n\r\n..stuffed\r\nplain\r\n.\r\n")
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.cmd("QUIT\r\n").await.starts_with("221"));
    let m = &server.messages()[0];
    assert_eq!(m.message_id.as_deref(), Some("<raw@x>"));
    assert_eq!(
        m.data,
        b"Message-ID: <raw@x>\r\nSubject: t\r\n\r\n.stuffed\r\nplain\r\n"
    );
}

#[tokio::test]
async fn outages_flip_the_server_down_and_up() {
    let server = SmtpServer::start().await.unwrap();
    let plan = SmtpPlan {
        down_fraction: 0.5,
        period: DurationRange::new(Duration::from_millis(30), Duration::from_millis(60)),
    };
    let outage = server.start_outages(&plan, 3);
    let (mut up, mut down) = (0, 0);
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        match TcpStream::connect(server.addr()).await {
            Ok(_) => up += 1,
            // Refused while closed; a connection caught in the backlog at
            // the moment the listener closes is reset instead.
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ),
                    "{e:?}"
                );
                down += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(up > 10 && down > 10, "up {up}, down {down}");
    let stats = outage.stop().await.unwrap();
    assert!(stats.outages > 2, "{stats:?}");
    assert!(server.is_up().await);
    TcpStream::connect(server.addr()).await.unwrap();
}
