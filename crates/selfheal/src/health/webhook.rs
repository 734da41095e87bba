//! [`WebhookSink`]: alerts POSTed as JSON to a URL.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Serialize;

use super::alert::{Alert, AlertSink, SinkFuture};
use crate::ConfigError;

/// Sends each alert as one JSON `POST` to a URL: a chat channel's incoming
/// webhook, a pager's events endpoint, your own relay.
///
/// Why a webhook: an alert that only reaches the process's own log is read
/// when someone happens to look. A `CRITICAL` at 3 a.m. has to leave the
/// process and reach a person, and nearly every chat and paging service
/// accepts an HTTP `POST`.
///
/// # Payload
///
/// `Content-Type: application/json`, the body is a [`WebhookPayload`]:
///
/// ```json
/// {
///   "text": "[cozmic] CRITICAL repeated_error: OperationalError@save_progress occurred 11 times in the last hour (threshold 10)",
///   "service": "cozmic",
///   "alert": {
///     "rule": "repeated_error", "severity": "critical", "state": "firing",
///     "fingerprint": "OperationalError@save_progress",
///     "value": 11.0, "threshold": 10.0, "window_secs": 3600,
///     "at": 1767225600,
///     "summary": "OperationalError@save_progress occurred 11 times in the last hour (threshold 10)"
///   }
/// }
/// ```
///
/// `text` is the one-line rendering, which Slack-compatible incoming webhooks
/// (Slack, Mattermost, Rocket.Chat) display as is; `service` is present only
/// when set with [`WebhookSink::with_service`]; `alert` is the [`Alert`],
/// which carries counts and names, never an error's message.
///
/// # Failures and retries
///
/// Any answer other than `2xx` is an error ([`WebhookError::Status`]), and so
/// is no complete answer within the timeout, so the monitor's retry engine
/// ([`MonitorBuilder::with_sink_policy`](super::MonitorBuilder::with_sink_policy))
/// retries it. Redirects are not followed when the sink builds its own client
/// (a `3xx` is an error too): a redirect would carry the alert and its
/// headers to another URL.
///
/// # Secrets
///
/// Extra headers ([`WebhookSink::with_header`],
/// [`WebhookSink::with_bearer_token`]) are marked sensitive and never shown:
/// `Debug` prints their names only. Many webhook URLs carry a secret in their
/// path (`https://hooks.slack.com/services/T…/B…/secret`), so `Debug` and
/// errors show the scheme, host and port only, never the path, query or
/// credentials.
///
/// # Defaults
///
/// | setting | default |
/// |---|---|
/// | timeout per request | 10 s ([`WebhookSink::with_timeout`]) |
/// | sink name (`alert_sink:<name>` in errors) | `"webhook"` ([`WebhookSink::with_name`]) |
/// | service | none ([`WebhookSink::with_service`]) |
/// | extra headers | none |
/// | client | built by [`WebhookSink::new`]: rustls with the ring provider, no redirects, `User-Agent: selfheal/<version>` |
///
/// ```no_run
/// use std::sync::Arc;
/// use selfheal::health::{Monitor, WebhookSink};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), selfheal::ConfigError> {
/// let webhook = WebhookSink::new("https://hooks.example.com/services/T000/B000/XXXX")?
///     .with_bearer_token("s3cr3t")?
///     .with_service("cozmic");
/// let monitor = Monitor::builder().with_sink(Arc::new(webhook)).start()?;
/// # Ok(()) }
/// ```
///
/// Available with the `webhook` feature.
#[derive(Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    timeout: Duration,
    service: Option<String>,
    name: Cow<'static, str>,
}

impl WebhookSink {
    /// The default timeout of one request: 10 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A sink posting to `url` (`http` or `https`) with its own client.
    ///
    /// Installs rustls's ring crypto provider first if none is installed
    /// ([`crate::tls::install_default_crypto_provider`]), since reqwest is
    /// built without one and panics otherwise.
    ///
    /// Errors when the URL does not parse, is not `http`/`https`, has no host,
    /// or when the HTTP client cannot be built.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        crate::tls::install_default_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("selfheal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ConfigError::new(format!(
                    "could not build the webhook HTTP client: {}",
                    e.without_url()
                ))
            })?;
        Self::with_client(client, url)
    }

    /// A sink posting to `url` with an existing client (its proxies, root
    /// certificates, connection pool). Build that client after installing a
    /// crypto provider ([`crate::tls::install_default_crypto_provider`]).
    ///
    /// Errors when the URL does not parse, is not `http`/`https` or has no
    /// host.
    pub fn with_client(client: reqwest::Client, url: &str) -> Result<Self, ConfigError> {
        let url = Url::parse(url)
            .map_err(|e| ConfigError::new(format!("webhook URL is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::new(format!(
                "webhook URL must be http or https, got {}:",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new("webhook URL has no host"));
        }
        Ok(Self {
            client,
            url,
            headers: HeaderMap::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            service: None,
            name: Cow::Borrowed("webhook"),
        })
    }

    /// Bounds each request (connect, send, answer). Default 10 s. Errors when
    /// zero.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::new(
                "webhook timeout must be greater than zero",
            ));
        }
        self.timeout = timeout;
        Ok(self)
    }

    /// Adds a header to every request (a repeated name adds another value).
    /// The value is marked sensitive and never shown in `Debug` output.
    ///
    /// Errors when the name or value is not a valid HTTP header name or value.
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self, ConfigError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConfigError::new(format!("invalid webhook header name {name:?}")))?;
        // The value is secret: the error must not repeat it.
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| ConfigError::new(format!("invalid value for webhook header {name}")))?;
        value.set_sensitive(true);
        self.headers.append(name, value);
        Ok(self)
    }

    /// Sends `Authorization: Bearer <token>` with every request, replacing any
    /// `Authorization` header set before. Never shown in `Debug` output.
    ///
    /// Errors when the token is not a valid header value.
    pub fn with_bearer_token(mut self, token: &str) -> Result<Self, ConfigError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ConfigError::new("invalid webhook bearer token"))?;
        value.set_sensitive(true);
        self.headers.insert(AUTHORIZATION, value);
        Ok(self)
    }

    /// Names the service in every payload (`"service"`, and a `[name]` prefix
    /// in `"text"`), for channels that several services post to.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The sink's name (default `"webhook"`): its deliveries are the operation
    /// `alert_sink:<name>`, and failures are recorded under it. Give two
    /// webhooks different names.
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The payload sent for `alert`.
    pub fn payload<'a>(&'a self, alert: &'a Alert) -> WebhookPayload<'a> {
        let text = match &self.service {
            Some(service) => format!("[{service}] {alert}"),
            None => alert.to_string(),
        };
        WebhookPayload {
            text,
            service: self.service.as_deref(),
            alert,
        }
    }

    /// Sends `alert` once, without retrying (the monitor retries
    /// [`AlertSink::deliver`] with its sink policy).
    pub async fn send(&self, alert: &Alert) -> Result<(), WebhookError> {
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .json(&self.payload(alert))
            .send()
            .await
            .map_err(|e| self.request_error(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WebhookError::Status(status));
        }
        tracing::debug!(
            target: "selfheal::alert",
            sink = %self.name,
            host = self.url.host_str().unwrap_or(""),
            status = status.as_u16(),
            "alert delivered to webhook"
        );
        Ok(())
    }

    fn request_error(&self, error: reqwest::Error) -> WebhookError {
        if error.is_timeout() {
            WebhookError::Timeout(self.timeout)
        } else {
            WebhookError::Request(error.without_url())
        }
    }
}

impl AlertSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a self, alert: &'a Alert) -> SinkFuture<'a> {
        Box::pin(async move { self.send(alert).await.map_err(Into::into) })
    }
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self
            .headers
            .keys()
            .map(|name| format!("{name}: <redacted>"))
            .collect();
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &redacted_url(&self.url))
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// `scheme://host[:port]`, plus `/<redacted>` when the URL has a path or a
/// query: webhook URLs often carry their secret there.
fn redacted_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = if url.path() != "/" || url.query().is_some() {
        "/<redacted>"
    } else {
        ""
    };
    format!("{}://{host}{port}{rest}", url.scheme())
}

/// The JSON body a [`WebhookSink`] posts (see its docs for an example).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WebhookPayload<'a> {
    /// The alert on one line (`[service] CRITICAL rule: summary`), for chat
    /// webhooks that display a `text` field.
    pub text: String,
    /// The service name, when set; absent from the JSON otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<&'a str>,
    /// The alert.
    pub alert: &'a Alert,
}

/// Why a webhook delivery failed. Never contains the URL or header values.
#[derive(Debug)]
#[non_exhaustive]
pub enum WebhookError {
    /// The endpoint answered with a status other than `2xx`.
    Status(StatusCode),
    /// No complete answer within the timeout.
    Timeout(Duration),
    /// The request could not be sent or its answer not read (DNS, connection
    /// refused, TLS…). The URL is removed from the inner error.
    Request(reqwest::Error),
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "webhook answered {status}"),
            Self::Timeout(timeout) => write!(f, "webhook did not answer within {timeout:?}"),
            Self::Request(error) => {
                // The chain says what went wrong ("tcp connect error:
                // Connection refused"); the URL was removed from it.
                write!(f, "webhook request failed: {error}")?;
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for WebhookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Request(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::health::{AlertState, Severity};

    fn alert() -> Alert {
        Alert {
            rule: "repeated_error".into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            fingerprint: Some("OperationalError@save_progress".into()),
            value: 11.0,
            threshold: 10.0,
            window_secs: 3600,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            summary:
                "OperationalError@save_progress occurred 11 times in the last hour (threshold 10)"
                    .into(),
        }
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_accepted() {
        assert!(WebhookSink::new("https://hooks.example.com/x").is_ok());
        assert!(WebhookSink::new("http://127.0.0.1:8080/alerts").is_ok());
        for bad in [
            "",
            "hooks.example.com/x",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "mailto:ops@example.com",
            "http://",
        ] {
            let err = WebhookSink::new(bad).expect_err(bad);
            assert!(err.message().contains("webhook URL"), "{bad}: {err}");
        }
        let sink = WebhookSink::new("https://hooks.example.com/x").unwrap();
        assert_eq!(sink.timeout(), Duration::from_secs(10));
        assert!(sink.clone().with_timeout(Duration::ZERO).is_err());
        assert!(sink.clone().with_header("bad name", "v").is_err());
        let err = sink.with_header("x-key", "line\nbreak-secret").unwrap_err();
        assert!(!err.message().contains("secret"), "{err}");
    }

    #[test]
    fn debug_shows_neither_header_values_nor_the_url_path() {
        let sink = WebhookSink::new(
            "https://user:hunter2@hooks.example.com:8443/services/T0/B0/url-secret?token=query-secret",
        )
        .unwrap()
        .with_bearer_token("bearer-secret")
        .unwrap()
        .with_header("X-Api-Key", "key-secret")
        .unwrap()
        .with_service("cozmic");
        let debug = format!("{sink:?}");
        for secret in [
            "bearer-secret",
            "key-secret",
            "url-secret",
            "query-secret",
            "hunter2",
            "user",
            "Bearer",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(
            debug.contains("https://hooks.example.com:8443/<redacted>"),
            "{debug}"
        );
        assert!(debug.contains("authorization: <redacted>"), "{debug}");
        assert!(debug.contains("x-api-key: <redacted>"), "{debug}");
        assert!(debug.contains("cozmic"), "{debug}");
        // The headers really are marked sensitive (hidden from reqwest's and
        // http's own Debug output too).
        assert!(sink.headers.values().all(HeaderValue::is_sensitive));
        assert_eq!(
            redacted_url(&Url::parse("http://localhost:9000/").unwrap()),
            "http://localhost:9000"
        );
    }

    #[test]
    fn the_payload_is_text_service_and_the_alert() {
        let alert = alert();
        let plain = WebhookSink::new("https://hooks.example.com/x").unwrap();
        let json = serde_json::to_value(plain.payload(&alert)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "text": "CRITICAL repeated_error: OperationalError@save_progress occurred 11 times in the last hour (threshold 10)",
                "alert": {
                    "rule": "repeated_error",
                    "severity": "critical",
                    "state": "firing",
                    "fingerprint": "OperationalError@save_progress",
                    "value": 11.0,
                    "threshold": 10.0,
                    "window_secs": 3600,
                    "at": 1_767_225_600u64,
                    "summary": "OperationalError@save_progress occurred 11 times in the last hour (threshold 10)",
                }
            })
        );
        let named = plain.with_service("cozmic");
        let json = serde_json::to_value(named.payload(&alert)).unwrap();
        assert_eq!(json["service"], "cozmic");
        assert!(
            json["text"]
                .as_str()
                .unwrap()
                .starts_with("[cozmic] CRITICAL repeated_error: ")
        );
    }

    #[test]
    fn errors_say_what_failed_without_the_url() {
        assert_eq!(
            WebhookError::Status(StatusCode::INTERNAL_SERVER_ERROR).to_string(),
            "webhook answered 500 Internal Server Error"
        );
        assert_eq!(
            WebhookError::Timeout(Duration::from_secs(10)).to_string(),
            "webhook did not answer within 10s"
        );
    }
}
