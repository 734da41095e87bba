//! [`EmailSink`]: alerts sent over SMTP.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::alert::{Alert, AlertSink, AlertState, SinkFuture};
use crate::ConfigError;

/// Sends each alert as a plain-text email over SMTP, to one or more
/// recipients.
///
/// Why email: a small team may have no pager and no chat bot, but everyone
/// reads mail. An alert that stays in the process's log is seen when someone
/// happens to look; an email reaches a person. For a chat channel or a pager,
/// see [`WebhookSink`](super::WebhookSink) (feature `webhook`).
///
/// # The message
///
/// - Subject: `[CRITICAL] selfheal alert: repeated_error — OperationalError@save_progress`
///   (`[RESOLVED CRITICAL] …` when the alert resolves; `selfheal alert (cozmic)`
///   with [`EmailSink::with_service`]; no `— fingerprint` for service-wide
///   rules such as error rates).
/// - Body: plain text, the alert's summary and its fields ([`EmailSink::body`]).
///   Nothing else: alerts carry counts and names, never an error's message,
///   which may hold user data.
///
/// # Configuration
///
/// [`EmailSink::new`] takes an SMTP URL, as lettre's
/// [`AsyncSmtpTransport::from_url`] reads it:
///
/// | URL | transport |
/// |---|---|
/// | `smtps://user:pass@smtp.example.com` | TLS from the first byte, port 465 (recommended) |
/// | `smtp://user:pass@smtp.example.com?tls=required` | STARTTLS required, port 587 |
/// | `smtp://localhost:2525` | no TLS at all: local relays and test servers only (with a password: loopback hosts only) |
///
/// Percent-encode special characters in the user and password. TLS is rustls
/// with the ring provider, certificates checked against the platform's roots.
/// The password never appears in `Debug` output, logs or errors: `Debug`
/// shows the scheme, host and port only.
///
/// A failed send is an error, so the monitor's retry engine
/// ([`MonitorBuilder::with_sink_policy`](super::MonitorBuilder::with_sink_policy))
/// retries it; each attempt is bounded by the timeout (default 30 s).
///
/// ```no_run
/// use std::sync::Arc;
/// use selfheal::health::{EmailSink, Monitor};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), selfheal::ConfigError> {
/// let email = EmailSink::new(
///     "smtps://alerts%40example.com:app-password@smtp.example.com",
///     "selfheal <alerts@example.com>",
///     ["ops@example.com", "Ada <ada@example.com>"],
/// )?
/// .with_service("cozmic");
/// let monitor = Monitor::builder().with_sink(Arc::new(email)).start()?;
/// # Ok(()) }
/// ```
///
/// Available with the `email` feature.
#[derive(Clone)]
pub struct EmailSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Where mail goes, without credentials, for `Debug`.
    endpoint: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    timeout: Duration,
    service: Option<String>,
    name: Cow<'static, str>,
}

impl EmailSink {
    /// The default bound on one send: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A sink sending through the SMTP server at `smtp_url` (see the table
    /// above), from `from` to every address in `to` (`ops@example.com` or
    /// `Ops <ops@example.com>`).
    ///
    /// Installs rustls's ring crypto provider first if none is installed
    /// ([`crate::tls::install_default_crypto_provider`]).
    ///
    /// Errors when the URL is not an `smtp`/`smtps` URL lettre accepts, when
    /// it carries a password over plain `smtp://` to a host other than
    /// loopback (the password would cross the network in clear text), when an
    /// address does not parse, or when `to` is empty. The error never repeats
    /// the URL.
    pub fn new<I, S>(smtp_url: &str, from: &str, to: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        crate::tls::install_default_crypto_provider();
        let parsed = url::Url::parse(smtp_url)
            .map_err(|e| ConfigError::new(format!("SMTP URL is not a valid URL: {e}")))?;
        if !matches!(parsed.scheme(), "smtp" | "smtps") {
            return Err(ConfigError::new(format!(
                "SMTP URL must be smtp:// or smtps://, got {}:",
                parsed.scheme()
            )));
        }
        if parsed.scheme() == "smtp"
            && parsed.password().is_some()
            && !parsed.query_pairs().any(|(k, _)| k == "tls")
            && !is_loopback(&parsed)
        {
            return Err(ConfigError::new(
                "SMTP URL would send the password unencrypted: use smtps:// or add ?tls=required",
            ));
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|e| ConfigError::new(format!("invalid SMTP URL: {e}")))?
            .timeout(Some(Self::DEFAULT_TIMEOUT))
            .build();
        let mut sink = Self::with_transport(transport, from, to)?;
        sink.endpoint = endpoint(&parsed);
        Ok(sink)
    }

    /// A sink sending through a transport you configured yourself (a pool,
    /// custom TLS parameters, a relay). `Debug` shows it as
    /// `"custom transport"`.
    ///
    /// Errors when an address does not parse or when `to` is empty.
    pub fn with_transport<I, S>(
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: &str,
        to: I,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let from = mailbox(from, "sender")?;
        let to = to
            .into_iter()
            .map(|address| mailbox(address.as_ref(), "recipient"))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(ConfigError::new(
                "an email alert sink needs at least one recipient",
            ));
        }
        Ok(Self {
            transport,
            endpoint: "custom transport".to_owned(),
            from,
            to,
            timeout: Self::DEFAULT_TIMEOUT,
            service: None,
            name: Cow::Borrowed("email"),
        })
    }

    /// Bounds one send (connect, TLS, the whole SMTP dialogue). Default 30 s.
    /// Errors when zero.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::new("email timeout must be greater than zero"));
        }
        self.timeout = timeout;
        Ok(self)
    }

    /// Names the service in the subject (`selfheal alert (cozmic)`) and body.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The sink's name (default `"email"`): its deliveries are the operation
    /// `alert_sink:<name>`, and failures are recorded under it.
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The recipients.
    pub fn recipients(&self) -> &[Mailbox] {
        &self.to
    }

    /// The subject for `alert`:
    /// `[CRITICAL] selfheal alert: repeated_error — OperationalError@save_progress`.
    pub fn subject(&self, alert: &Alert) -> String {
        let state = match alert.state {
            AlertState::Firing => "",
            AlertState::Resolved => "RESOLVED ",
        };
        let service = self
            .service
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let fingerprint = alert
            .fingerprint
            .as_deref()
            .map(|fp| format!(" — {fp}"))
            .unwrap_or_default();
        format!(
            "[{state}{}] selfheal alert{service}: {}{fingerprint}",
            alert.severity.marker(),
            alert.rule
        )
    }

    /// The plain-text body for `alert`: its summary and fields, nothing else.
    pub fn body(&self, alert: &Alert) -> String {
        use std::fmt::Write as _;

        let state = match alert.state {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        };
        let at = alert
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut body = format!("{}\n\n", alert.summary);
        let mut line = |label: &str, value: &dyn fmt::Display| {
            let _ = writeln!(body, "{label:<12} {value}");
        };
        if let Some(service) = &self.service {
            line("Service:", service);
        }
        line("Rule:", &alert.rule);
        line("Severity:", &alert.severity.marker());
        line("State:", &state);
        if let Some(fp) = &alert.fingerprint {
            line("Fingerprint:", fp);
        }
        line("Value:", &alert.value);
        line("Threshold:", &alert.threshold);
        line("Window:", &format_args!("{} s", alert.window_secs));
        line("Raised at:", &format_args!("{at} (Unix time)"));
        body.push_str(
            "\nAlerts carry counts and names, never error messages. \
             The details are on the service's health dashboard.\n\
             -- \nsent by the selfheal health monitor\n",
        );
        body
    }

    /// The message for `alert`.
    pub fn message(&self, alert: &Alert) -> Result<Message, EmailError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(self.subject(alert))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder.body(self.body(alert)).map_err(EmailError::Message)
    }

    /// Sends `alert` once, without retrying (the monitor retries
    /// [`AlertSink::deliver`] with its sink policy).
    pub async fn send(&self, alert: &Alert) -> Result<(), EmailError> {
        let message = self.message(alert)?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Err(_) => Err(EmailError::Timeout(self.timeout)),
            Ok(Err(error)) => Err(EmailError::Smtp(error)),
            Ok(Ok(_response)) => {
                tracing::debug!(
                    target: "selfheal::alert",
                    sink = %self.name,
                    recipients = self.to.len(),
                    "alert sent by email"
                );
                Ok(())
            }
        }
    }
}

impl AlertSink for EmailSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> SinkFuture<'a> {
        Box::pin(async move { self.send(alert).await.map_err(Into::into) })
    }
}

impl fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSink")
            .field("name", &self.name)
            .field("smtp", &self.endpoint)
            .field("from", &self.from.to_string())
            .field(
                "to",
                &self.to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

fn mailbox(address: &str, role: &str) -> Result<Mailbox, ConfigError> {
    address
        .parse()
        .map_err(|e| ConfigError::new(format!("invalid email {role} {address:?}: {e}")))
}

fn is_loopback(url: &url::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port][?tls=…]`: no user, no password, no EHLO name.
fn endpoint(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| format!("?tls={v}"))
        .unwrap_or_default();
    format!("{}://{host}{port}{tls}", url.scheme())
}

/// Why an email delivery failed. Never contains the SMTP password.
#[derive(Debug)]
#[non_exhaustive]
pub enum EmailError {
    /// The message could not be built.
    Message(lettre::error::Error),
    /// The SMTP dialogue failed (connection, TLS, authentication, a rejected
    /// command).
    Smtp(lettre::transport::smtp::Error),
    /// The send did not finish within the timeout.
    Timeout(Duration),
}

impl fmt::Display for EmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message(error) => write!(f, "could not build the alert email: {error}"),
            Self::Smtp(error) => write!(f, "SMTP delivery failed: {error}"),
            Self::Timeout(timeout) => write!(f, "SMTP delivery did not finish within {timeout:?}"),
        }
    }
}

impl std::error::Error for EmailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Message(error) => Some(error),
            Self::Smtp(error) => Some(error),
            Self::Timeout(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::health::Severity;

    fn alert(state: AlertState, fingerprint: Option<&str>) -> Alert {
        Alert {
            rule: "repeated_error".into(),
            severity: Severity::Critical,
            state,
            fingerprint: fingerprint.map(Into::into),
            value: 11.0,
            threshold: 10.0,
            window_secs: 3600,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            summary:
                "OperationalError@save_progress occurred 11 times in the last hour (threshold 10)"
                    .into(),
        }
    }

    fn sink() -> EmailSink {
        EmailSink::new(
            "smtp://localhost:2525",
            "selfheal <alerts@example.com>",
            ["ops@example.com"],
        )
        .unwrap()
    }

    #[test]
    fn subjects_name_severity_rule_and_fingerprint() {
        let fp = Some("OperationalError@save_progress");
        let s = sink();
        assert_eq!(
            s.subject(&alert(AlertState::Firing, fp)),
            "[CRITICAL] selfheal alert: repeated_error — OperationalError@save_progress"
        );
        assert_eq!(
            s.subject(&alert(AlertState::Resolved, fp)),
            "[RESOLVED CRITICAL] selfheal alert: repeated_error — OperationalError@save_progress"
        );
        let s = s.with_service("cozmic");
        assert_eq!(
            s.subject(&alert(AlertState::Firing, None)),
            "[CRITICAL] selfheal alert (cozmic): repeated_error"
        );
    }

    #[test]
    fn the_body_is_the_summary_and_the_fields() {
        let body = sink().with_service("cozmic").body(&alert(
            AlertState::Firing,
            Some("OperationalError@save_progress"),
        ));
        assert!(
            body.starts_with(
                "OperationalError@save_progress occurred 11 times in the last hour (threshold 10)\n\n"
            ),
            "{body}"
        );
        for line in [
            "Service:     cozmic\n",
            "Rule:        repeated_error\n",
            "Severity:    CRITICAL\n",
            "State:       firing\n",
            "Fingerprint: OperationalError@save_progress\n",
            "Value:       11\n",
            "Threshold:   10\n",
            "Window:      3600 s\n",
            "Raised at:   1767225600 (Unix time)\n",
        ] {
            assert!(body.contains(line), "missing {line:?} in\n{body}");
        }
    }

    #[test]
    fn configuration_is_checked_and_the_password_never_shown() {
        let sink = EmailSink::new(
            "smtps://alerts%40example.com:pa55-secret@smtp.example.com/ehlo.example.com",
            "alerts@example.com",
            ["ops@example.com", "Ada <ada@example.com>"],
        )
        .unwrap()
        .with_service("cozmic");
        let debug = format!("{sink:?}");
        assert!(!debug.contains("pa55-secret"), "{debug}");
        assert!(!debug.contains("alerts%40example.com:"), "{debug}");
        assert!(debug.contains("smtps://smtp.example.com"), "{debug}");
        assert!(debug.contains("Ada <ada@example.com>"), "{debug}");
        assert_eq!(sink.recipients().len(), 2);

        let local =
            EmailSink::new("smtp://127.0.0.1:2525?tls=required", "a@b.c", ["d@e.f"]).unwrap();
        assert!(format!("{local:?}").contains("smtp://127.0.0.1:2525?tls=required"));
        // A password over plain SMTP is fine to a local relay, and with STARTTLS.
        for ok in [
            "smtp://u:p@localhost:2525",
            "smtp://u:p@127.0.0.1:2525",
            "smtp://u:p@[::1]:2525",
            "smtp://u:p@smtp.example.com?tls=required",
        ] {
            assert!(EmailSink::new(ok, "a@b.c", ["d@e.f"]).is_ok(), "{ok}");
        }

        let no_one: [&str; 0] = [];
        for (url, from, to, what) in [
            (
                "http://smtp.example.com",
                "a@b.c",
                &["d@e.f"][..],
                "smtp://",
            ),
            (
                "smtp://user:pa55-secret@",
                "a@b.c",
                &["d@e.f"][..],
                "SMTP URL",
            ),
            (
                "smtp://smtp.example.com?tls=maybe",
                "a@b.c",
                &["d@e.f"][..],
                "SMTP URL",
            ),
            (
                "smtp://u:pa55-secret@smtp.example.com",
                "a@b.c",
                &["d@e.f"][..],
                "unencrypted",
            ),
            (
                "smtp://smtp.example.com",
                "not an address",
                &["d@e.f"][..],
                "sender",
            ),
            (
                "smtp://smtp.example.com",
                "a@b.c",
                &["nope"][..],
                "recipient",
            ),
            ("smtp://smtp.example.com", "a@b.c", &no_one[..], "recipient"),
        ] {
            let err = EmailSink::new(url, from, to.iter()).expect_err(url);
            assert!(err.message().contains(what), "{url}: {err}");
            assert!(!err.message().contains("pa55-secret"), "{err}");
        }
        assert!(sink.with_timeout(Duration::ZERO).is_err());
    }
}
