//! Email, done durably: the guide's `send_email_notification` with
//! `@auto_retry`, without its failure modes.
//!
//! Retrying an SMTP call inside the request has two problems: the student
//! waits for the mail server, and when the process restarts mid-retry the
//! email is gone. So an email is a row in the `outbox` table, written in the
//! same transaction as the change that causes it (a sign-up, a level-up, a
//! purchase): if the change commits, the email exists; if not, neither does.
//! A [supervised](selfheal::supervise) worker delivers due rows, marks them
//! sent, and on failure schedules the next attempt with exponential backoff
//! and jitter in the row itself, so retries survive restarts.
//!
//! Delivered exactly once: the Message-ID is derived from the outbox id and
//! the database's instance tag, so a receiver can recognise a repeat; into
//! the mail directory (no `SMTP_URL`), a message whose file already exists
//! is not written again, so even a crash between delivery and "mark sent"
//! does not duplicate it. A row the database fails to mark right after a
//! delivery is remembered in memory and marked later, not sent again (the
//! worker may be restarted meanwhile). Over SMTP one window remains (the
//! server said 250, then the process died before the row was updated), as
//! with every SMTP client; the stable Message-ID is what lets the receiving
//! side collapse it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, Message, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use selfheal::health::Monitor;
use selfheal::observe::{self, Event, Failure, HealKind};
use selfheal::retry::{Backoff, Jitter, ThreadRandom};
use selfheal::supervise::{ShutdownSignal, SupervisedHandle, Supervisor};
use tokio::sync::Notify;

use crate::config::{Config, Healing};
use crate::db::{Db, OutboxEmail};

/// Attempts before an email is given up on, by default
/// (`Config::mail_max_attempts`): with the default backoff, at most about
/// 15 hours of waiting; see the test below.
pub const MAX_ATTEMPTS: i64 = 25;

/// Where emails go.
#[derive(Clone)]
pub enum Transport {
    /// An SMTP server (`SMTP_URL`).
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// One `.eml` file per message in this directory.
    Directory(PathBuf),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL may hold a password: never shown.
            Transport::Smtp(_) => f.write_str("Transport::Smtp"),
            Transport::Directory(dir) => f.debug_tuple("Transport::Directory").field(dir).finish(),
        }
    }
}

/// The longest one SMTP attempt takes before it is given up.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest lease on a claimed email: one SMTP attempt and a margin,
/// so that a lease never runs out while its worker is still sending.
pub const MIN_LEASE: Duration = Duration::from_secs(12);

impl Transport {
    /// The transport `config` asks for.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        match &config.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
                    .map_err(|_| anyhow::anyhow!("SMTP_URL is not a valid SMTP URL"))?
                    .timeout(Some(SMTP_TIMEOUT))
                    .build();
                Ok(Transport::Smtp(transport))
            }
            None => {
                let dir = config.mail_dir();
                crate::config::create_private_dir(&dir)?;
                Ok(Transport::Directory(dir))
            }
        }
    }
}

/// The outbox worker's settings and wake-up bell.
#[derive(Clone, Debug)]
pub struct Mailer {
    db: Db,
    transport: Transport,
    from: Mailbox,
    healing: Healing,
    poll: Duration,
    /// How long a claimed email is this worker's alone.
    lease: Duration,
    backoff: Backoff,
    /// Attempts before an email is given up on.
    max_attempts: i64,
    wake: Arc<Notify>,
    /// Delivered, but the row could not be marked sent yet (the database
    /// failed right after the server said 250): marked, never sent again,
    /// even when the worker is restarted. Lost only if the process dies.
    unmarked: Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>,
    monitor: Monitor,
}

impl Mailer {
    /// A mailer for `config` on `db`.
    pub fn new(config: &Config, db: Db, monitor: Monitor) -> anyhow::Result<Self> {
        Ok(Self {
            db,
            transport: Transport::from_config(config)?,
            from: config
                .mail_from
                .parse()
                .map_err(|_| anyhow::anyhow!("COZMIC_MAIL_FROM is not a mailbox"))?,
            healing: config.healing,
            poll: config.mail_poll,
            lease: config.mail_lease.max(MIN_LEASE),
            backoff: Backoff::exponential(config.mail_backoff.0, 2.0, config.mail_backoff.1)
                .map_err(|e| anyhow::anyhow!("mail backoff: {e}"))?
                .with_jitter(Jitter::Full),
            max_attempts: i64::from(config.mail_max_attempts.max(1)),
            wake: Arc::new(Notify::new()),
            unmarked: Arc::default(),
            monitor,
        })
    }

    /// Wakes the worker (a new email was enqueued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the worker, supervised: restarted with backoff (at most 5 s
    /// apart) whenever it fails, for as long as the process runs. Failures
    /// while the `database` check fails are an outage, reported as "waiting
    /// for 'database'" on the dashboard; the worker is running again within
    /// 5 s of the database's return, and the emails queued meanwhile go out.
    pub fn spawn(&self) -> SupervisedHandle {
        let mailer = self.clone();
        Supervisor::new("outbox")
            .with_backoff(
                Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))
                    .expect("valid backoff")
                    .with_jitter(Jitter::Full),
            )
            .with_monitor(self.monitor.clone())
            .depends_on(crate::DATABASE_CHECK)
            .spawn(move |shutdown| mailer.clone().run(shutdown))
    }

    async fn run(self, mut shutdown: ShutdownSignal) -> anyhow::Result<()> {
        let tag = self.db.instance_tag().await?;
        loop {
            // One email at a time, claimed first: another instance on the
            // same database never sends it too.
            loop {
                if shutdown.is_shutdown() {
                    return Ok(());
                }
                let Some(email) = self.db.claim_due_email(self.lease).await? else {
                    break;
                };
                self.deliver(&tag, email).await?;
            }
            tokio::select! {
                () = shutdown.recv() => return Ok(()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// One attempt at one email; the outcome is written to its row.
    async fn deliver(&self, tag: &str, email: OutboxEmail) -> anyhow::Result<()> {
        let heal = self.healing == Healing::On;
        let delivered = heal && self.unmarked.lock().expect("unmarked").contains(&email.id);
        let outcome = if delivered {
            Ok(())
        } else {
            self.send(tag, &email).await
        };
        match outcome {
            Ok(()) => {
                if heal {
                    self.unmarked.lock().expect("unmarked").insert(email.id);
                }
                self.db.mark_sent(email.id).await?;
                self.unmarked.lock().expect("unmarked").remove(&email.id);
                if email.attempts > 0 {
                    observe::emit(
                        Some(&self.monitor),
                        &Event::Heal {
                            kind: HealKind::RetryRecovered,
                            operation: "email:outbox",
                        },
                    );
                }
            }
            Err(error) => {
                let message = error.to_string();
                observe::emit(
                    Some(&self.monitor),
                    &Event::Error {
                        operation: "email:outbox",
                        failure: Failure {
                            kind: "EmailDeliveryError",
                            message: &message,
                        },
                        client: None,
                    },
                );
                let attempts = email.attempts + 1;
                if self.healing == Healing::Off || attempts >= self.max_attempts {
                    tracing::error!(outbox_id = email.id, attempts, error = %message, "email given up");
                    self.db
                        .mark_failed_attempt(email.id, None, &message)
                        .await?;
                } else {
                    let delay = self
                        .backoff
                        .delay(attempts as u32, Duration::ZERO, &ThreadRandom)
                        .max(Duration::from_millis(100));
                    tracing::warn!(outbox_id = email.id, attempts, ?delay, error = %message, "email delivery failed; will retry");
                    self.db
                        .mark_failed_attempt(email.id, Some(delay), &message)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn send(&self, tag: &str, email: &OutboxEmail) -> anyhow::Result<()> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(email.recipient.parse()?)
            .subject(email.subject.clone())
            .message_id(Some(message_id(email.id, tag)))
            .header(ContentType::TEXT_PLAIN)
            .body(email.body.clone())?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                smtp.send(message).await?;
            }
            Transport::Directory(dir) => {
                let path = dir.join(format!("{:08}.eml", email.id));
                if tokio::fs::try_exists(&path).await? {
                    // Delivered before, not marked: do not deliver twice.
                    return Ok(());
                }
                let partial = dir.join(format!(".{:08}.eml.partial", email.id));
                tokio::fs::write(&partial, message.formatted()).await?;
                tokio::fs::rename(&partial, &path).await?;
            }
        }
        Ok(())
    }
}

/// The Message-ID of outbox email `id` in the database tagged `tag`.
pub fn message_id(id: i64, tag: &str) -> String {
    format!("<outbox-{id}.{tag}@cozmic.local>")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented span: the waits before attempts 2..=25 with the
    /// default backoff and no jitter (the most full jitter can draw).
    #[test]
    fn the_default_backoff_spans_about_15_hours_at_most() {
        let (base, cap) = Config::new(".").mail_backoff;
        let backoff = Backoff::exponential(base, 2.0, cap)
            .unwrap()
            .with_jitter(Jitter::None);
        let total: Duration = (1..MAX_ATTEMPTS as u32)
            .map(|attempts| backoff.delay(attempts, Duration::ZERO, &ThreadRandom))
            .sum();
        let hours = total.as_secs_f64() / 3600.0;
        assert!((14.5..15.5).contains(&hours), "{hours:.2} h");
    }
}
