//! One SMTP session: the line reader with its length limit, the command
//! state machine (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and the
//! DATA reader that dot-unstuffs and records the message.
//!
//! Apart from the server because this is the protocol, and nothing in it
//! knows about outages or ports: it reads from and writes to one connection
//! and hands every accepted message to the server's list.

use std::io;
use std::time::SystemTime;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{
    HOSTNAME, IDLE_TIMEOUT, Inner, MAX_LINE, MAX_MESSAGE, MAX_RECIPIENTS, ReceivedMessage,
};

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

/// The MAIL and RCPT of the message being built.
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

/// Where a session stands: greeted or not, and the transaction being built.
#[derive(Default)]
struct State {
    greeted: bool,
    tx: Transaction,
}

/// What a command asks of the connection.
enum Step {
    /// Send this reply and read the next command.
    Reply(String),
    /// DATA was accepted: read the message.
    Data,
    /// QUIT: say goodbye and close.
    Quit,
}

impl State {
    /// Handles one command line (its line ending removed).
    fn command(&mut self, line: &str) -> Step {
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        Step::Reply(match verb.as_str() {
            "EHLO" | "HELO" if arg.trim().is_empty() => "501 5.5.4 Domain name required\r\n".into(),
            "EHLO" => {
                self.greeted = true;
                self.tx = Transaction::default();
                format!(
                    "250-{HOSTNAME} greets {}\r\n250-SIZE {MAX_MESSAGE}\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
                    arg.trim()
                )
            }
            "HELO" => {
                self.greeted = true;
                self.tx = Transaction::default();
                format!("250 {HOSTNAME}\r\n")
            }
            "MAIL" => mail(arg, self.greeted, &mut self.tx),
            "RCPT" => rcpt(arg, &mut self.tx),
            "DATA" if self.tx.mail_from.is_none() => "503 5.5.1 Need MAIL before DATA\r\n".into(),
            "DATA" if self.tx.rcpt_to.is_empty() => "554 5.5.1 No valid recipients\r\n".into(),
            "DATA" => return Step::Data,
            "RSET" => {
                self.tx = Transaction::default();
                "250 2.0.0 OK\r\n".into()
            }
            "NOOP" => "250 2.0.0 OK\r\n".into(),
            "QUIT" => return Step::Quit,
            _ => "502 5.5.2 Command not recognized\r\n".into(),
        })
    }
}

/// Serves one client until it quits, hangs up or goes idle.
pub(super) async fn session(stream: TcpStream, inner: &Inner) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write
        .write_all(format!("220 {HOSTNAME} ESMTP chaos ready\r\n").as_bytes())
        .await?;
    let mut state = State::default();
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
        let reply = match state.command(line.trim_end_matches(['\r', '\n'])) {
            Step::Reply(reply) => reply,
            Step::Data => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let reply = data(&mut reader, &mut state.tx, inner).await?;
                state.tx = Transaction::default();
                reply
            }
            Step::Quit => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                let _ = write.shutdown().await;
                return Ok(());
            }
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

/// MAIL FROM: the reverse path, with a `SIZE=` check.
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

/// RCPT TO: one more forward path.
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

/// `arg` after a case-insensitive `keyword` prefix.
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
