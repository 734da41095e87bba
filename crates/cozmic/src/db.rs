//! The database: SQLite by default, PostgreSQL by URL, every write through
//! selfheal's transaction runner.
//!
//! Why a runner and not `pool.begin()`: the guide's `safe_db_commit` retries
//! the *commit* when SQLite says "database is locked". A commit is not the
//! unit to retry: the transaction is. The runner re-runs the whole closure
//! on a lock conflict or a PostgreSQL serialization failure, and its
//! idempotency guard looks up a commit whose outcome was lost instead of
//! applying it twice. Every write below is one `run` call, so "+10 XP and a
//! ledger row" and "a student and their welcome email" are all-or-nothing.
//!
//! The two backends share every query (`$1` placeholders work in both); the
//! `on_db!` macro compiles each body once per backend.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use selfheal::db::schema::{Column, Index, Schema, Startup, Table};
use selfheal::db::{Guard, Runner, TxError};
use selfheal::health::Monitor;
use selfheal::retry::Policy;
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use crate::config::{Config, Healing};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// XP for one completed lesson.
pub const LESSON_XP: i64 = 10;
/// XP per level.
pub const XP_PER_LEVEL: i64 = 100;

/// The level for an XP total (level 1 at 0 XP).
pub const fn level(xp: i64) -> i64 {
    xp / XP_PER_LEVEL + 1
}

/// The app's database: a runner on one of the two backends.
#[derive(Clone, Debug)]
pub enum Db {
    /// SQLite (WAL, `BEGIN IMMEDIATE`).
    Sqlite(Runner<Sqlite>),
    /// PostgreSQL.
    Postgres(Runner<Postgres>),
}

/// Runs `$body` with `$r` bound to the backend's runner; the body is
/// compiled once per backend.
macro_rules! on_db {
    ($db:expr, $r:ident => $body:expr) => {
        match $db {
            Db::Sqlite($r) => $body,
            Db::Postgres($r) => $body,
        }
    };
}

type Result<T> = std::result::Result<T, TxError<sqlx::Error>>;

/// Puts an email in the outbox, inside the caller's transaction `$tx`.
macro_rules! enqueue {
    ($tx:expr, $recipient:expr, $email:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO outbox (recipient, subject, body, kind, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind($recipient.to_owned())
        .bind($email.subject.clone())
        .bind($email.body.clone())
        .bind($email.kind.clone())
        .bind($now)
        .execute(&mut **$tx)
        .await
    };
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn today() -> i64 {
    now_ms() / 86_400_000
}

/// A student, as the dashboard shows them.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Student {
    /// Id.
    pub id: i64,
    /// Email address (lower case).
    pub email: String,
    /// Display name.
    pub name: String,
    /// XP total (always the ledger's sum).
    pub xp: i64,
    /// Days in a row with a completed lesson.
    pub streak: i64,
    /// 1 if admin.
    pub is_admin: i64,
    /// 1 if premium.
    pub premium: i64,
}

/// A ledger row, as recent activity.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Activity {
    /// The lesson completed.
    pub lesson_id: String,
    /// Points earned.
    pub points: i64,
    /// When (Unix ms).
    pub created_at: i64,
}

/// A question to the tutor and its answer.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Question {
    /// The question.
    pub question: String,
    /// The answer, if the tutor gave one.
    pub answer: Option<String>,
    /// `answered`, `unavailable` or `unconfigured`.
    pub status: String,
}

/// An email waiting in the outbox.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxEmail {
    /// The outbox id (the Message-ID is derived from it).
    pub id: i64,
    /// The recipient's address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// An email to enqueue with a change.
#[derive(Clone, Debug)]
pub struct NewEmail {
    /// `welcome`, `level_up`, `premium`.
    pub kind: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// What completing a lesson did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// False when this form (nonce) had already been applied, or the
    /// lesson had already been completed (it pays its XP once).
    pub applied: bool,
    /// True when this very form (nonce) had been applied before: a double
    /// click or a retry of an action that did succeed.
    pub same_form: bool,
    /// The XP total after it.
    pub xp: i64,
    /// The streak after it.
    pub streak: i64,
}

/// The integrity of one student's progress (for tests and the chaos harness).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Integrity {
    /// The student's XP total.
    pub xp: i64,
    /// The sum of their ledger.
    pub ledger_sum: i64,
    /// Their ledger rows.
    pub ledger_rows: i64,
}

/// Why a sign-up failed.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// The address has an account already.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] TxError<sqlx::Error>),
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

impl Db {
    /// Opens the database `config` names, runs the migrations, installs the
    /// guard table and heals additive schema drift (reported on `monitor`).
    pub async fn open(config: &Config, monitor: &Monitor) -> anyhow::Result<Self> {
        let url = config.database_url();
        let heal = config.healing == Healing::On;
        let db = if url.starts_with("postgres") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                // A request waits at most 3 s for a connection while the
                // server is unreachable, then answers a friendly 503.
                .acquire_timeout(Duration::from_secs(3))
                // lock_timeout 3 s, statement_timeout 10 s: a table lock
                // held by a migration is a friendly 503, not a hang.
                .connect_with(selfheal::db::postgres::connect_options(&url)?)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
            Startup::new(&pool)
                .migrate(&POSTGRES_MIGRATIONS)
                .declare(schema())
                .monitor(monitor.clone())
                .run()
                .await?;
            Db::Postgres(runner(Runner::new(pool), heal, monitor)?)
        } else {
            crate::config::create_private_dir(&config.data_dir)?;
            let options = if heal {
                selfheal::db::sqlite::connect_options(&url)?
            } else {
                // The naive app: sqlx's defaults (rollback journal, a 5 s
                // busy timeout), deferred `BEGIN`, no re-runs.
                url.parse::<sqlx::sqlite::SqliteConnectOptions>()?
                    .create_if_missing(true)
            };
            // Password hashes and sessions: a new database file is 0600.
            let file = options.get_filename();
            let name = file.to_string_lossy();
            if !name.is_empty() && !name.starts_with(':') && !name.starts_with("file:") {
                crate::config::create_private_file(file)?;
            }
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the SQLite database: {e}"))?;
            Startup::new(&pool)
                .migrate(&SQLITE_MIGRATIONS)
                .declare(schema())
                .monitor(monitor.clone())
                .run()
                .await?;
            Db::Sqlite(runner(Runner::new(pool), heal, monitor)?)
        };
        db.ensure_instance_tag().await?;
        Ok(db)
    }

    /// The SQLite pool, if that is the backend.
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Db::Sqlite(r) => Some(r.pool()),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, if that is the backend.
    pub fn postgres(&self) -> Option<&PgPool> {
        match self {
            Db::Postgres(r) => Some(r.pool()),
            Db::Sqlite(_) => None,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_db!(self, r => r.pool().close().await)
    }

    /// Whether the database answers (the readiness check).
    pub async fn ping(&self) -> std::result::Result<(), sqlx::Error> {
        on_db!(self, r => sqlx::query("SELECT 1").execute(r.pool()).await.map(|_| ()))
    }

    fn ensure_instance_tag(
        &self,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        // Uniqueness, not secrecy: a random 64-bit tag per database.
        let tag = format!("{:016x}", fastrand::u64(..));
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("instance_tag", async move |tx| {
                sqlx::query("INSERT INTO meta (key, value) VALUES ('instance', $1) ON CONFLICT (key) DO NOTHING")
                    .bind(tag.clone())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }).await)
        }
    }

    /// This database's random tag (part of every Message-ID, so that two
    /// databases never mint the same one).
    pub async fn instance_tag(&self) -> std::result::Result<String, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'").fetch_one(r.pool()).await)
    }

    /// The admin cookies' revocation epoch (Unix ms) every instance shares:
    /// cookies issued at or before it are refused. 0 when no admin ever
    /// logged out.
    pub async fn admin_revoked_before(&self) -> std::result::Result<u64, sqlx::Error> {
        let value: Option<String> = on_db!(self, r => sqlx::query_scalar("SELECT value FROM meta WHERE key = 'admin_revoked_before'").fetch_optional(r.pool()).await)?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Moves the shared revocation epoch forward to `epoch_ms` (never back).
    pub fn record_admin_revocation(
        &self,
        epoch_ms: u64,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("admin_revocation", async move |tx| {
                let current: Option<String> = sqlx::query_scalar(
                    "SELECT value FROM meta WHERE key = 'admin_revoked_before'",
                )
                .fetch_optional(&mut **tx)
                .await?;
                let current = current.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ('admin_revoked_before', $1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(current.max(epoch_ms).to_string())
                .execute(&mut **tx)
                .await?;
                Ok(())
            }).await)
        }
    }

    /// Creates a student and their welcome email, in one transaction.
    pub fn create_student(
        &self,
        email: &str,
        name: &str,
        password_hash: &str,
        welcome: NewEmail,
    ) -> impl std::future::Future<Output = std::result::Result<i64, SignupError>> + Send + 'static
    {
        let (email, name, hash) = (email.to_owned(), name.to_owned(), password_hash.to_owned());
        let this = self.clone();
        async move {
            let result = on_db!(&this, r => r.run("signup", async move |tx| {
                let now = now_ms();
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO students (email, name, password_hash, created_at) \
                     VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(email.clone())
                .bind(name.clone())
                .bind(hash.clone())
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
                enqueue!(tx, email, welcome, now)?;
                Ok(id)
            }).await);
            result.map_err(|e| {
                if is_unique_violation(e.inner()) {
                    SignupError::EmailTaken
                } else {
                    SignupError::Db(e)
                }
            })
        }
    }

    /// The id, name and password hash for a login.
    pub async fn login_record(
        &self,
        email: &str,
    ) -> std::result::Result<Option<(i64, String, String)>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as("SELECT id, name, password_hash FROM students WHERE email = $1")
            .bind(email)
            .fetch_optional(r.pool())
            .await)
    }

    /// A student by id.
    pub async fn student(&self, id: i64) -> std::result::Result<Option<Student>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT id, email, name, xp, streak, is_admin, premium FROM students WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(r.pool())
        .await)
    }

    /// The guide's save-progress: +10 XP and a ledger row in one transaction
    /// (and a level-up email when a level is reached). A lesson pays once:
    /// a lesson already in `lesson_completions` (its primary key decides,
    /// also between concurrent requests) changes nothing, and neither does a
    /// nonce already in the ledger (the same form sent again).
    pub fn complete_lesson(
        &self,
        student_id: i64,
        lesson_id: &str,
        nonce: &str,
        level_up: impl Fn(i64) -> NewEmail + Send + Sync + Copy + 'static,
    ) -> impl std::future::Future<Output = Result<Completion>> + Send + 'static {
        let (lesson_id, nonce) = (lesson_id.to_owned(), nonce.to_owned());
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("save_progress", async move |tx| {
                let now = now_ms();
                let first: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO lesson_completions (student_id, lesson_id, completed_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING student_id",
                )
                .bind(student_id)
                .bind(lesson_id.clone())
                .bind(now)
                .fetch_optional(&mut **tx)
                .await?;
                let inserted: Option<i64> = if first.is_none() {
                    None
                } else {
                    sqlx::query_scalar(
                    "INSERT INTO xp_ledger (student_id, lesson_id, points, request_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING RETURNING id",
                )
                .bind(student_id)
                .bind(lesson_id.clone())
                .bind(LESSON_XP)
                .bind(nonce.clone())
                .bind(now)
                .fetch_optional(&mut **tx)
                .await?
                };
                if inserted.is_none() {
                    let (xp, streak): (i64, i64) =
                        sqlx::query_as("SELECT xp, streak FROM students WHERE id = $1")
                            .bind(student_id)
                            .fetch_one(&mut **tx)
                            .await?;
                    let same_form: Option<i64> =
                        sqlx::query_scalar("SELECT id FROM xp_ledger WHERE request_id = $1")
                            .bind(nonce.clone())
                            .fetch_optional(&mut **tx)
                            .await?;
                    return Ok(Completion { applied: false, same_form: same_form.is_some(), xp, streak });
                }
                let (xp, streak, email): (i64, i64, String) = sqlx::query_as(
                    "UPDATE students SET xp = xp + $1, \
                     streak = CASE WHEN last_active_day = $2 THEN streak \
                                   WHEN last_active_day = $2 - 1 THEN streak + 1 ELSE 1 END, \
                     last_active_day = $2 WHERE id = $3 RETURNING xp, streak, email",
                )
                .bind(LESSON_XP)
                .bind(today())
                .bind(student_id)
                .fetch_one(&mut **tx)
                .await?;
                if level(xp) > level(xp - LESSON_XP) {
                    enqueue!(tx, email, level_up(level(xp)), now)?;
                }
                Ok(Completion { applied: true, same_form: false, xp, streak })
            }).await)
        }
    }

    /// The last `limit` ledger rows of a student.
    pub async fn recent_activity(
        &self,
        student_id: i64,
        limit: i64,
    ) -> std::result::Result<Vec<Activity>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT lesson_id, points, created_at FROM xp_ledger WHERE student_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(student_id)
        .bind(limit)
        .fetch_all(r.pool())
        .await)
    }

    /// The lessons a student has completed.
    pub async fn completed_lessons(
        &self,
        student_id: i64,
    ) -> std::result::Result<Vec<String>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar("SELECT lesson_id FROM lesson_completions WHERE student_id = $1")
            .bind(student_id)
            .fetch_all(r.pool())
            .await)
    }

    /// XP against the ledger, for one student.
    pub async fn integrity(&self, student_id: i64) -> std::result::Result<Integrity, sqlx::Error> {
        let (xp, ledger_sum, ledger_rows): (i64, i64, i64) = on_db!(self, r => sqlx::query_as(
            "SELECT s.xp, CAST(COALESCE(SUM(l.points), 0) AS BIGINT), COUNT(l.id) \
             FROM students s LEFT JOIN xp_ledger l ON l.student_id = s.id WHERE s.id = $1 GROUP BY s.id, s.xp",
        )
        .bind(student_id)
        .fetch_one(r.pool())
        .await)?;
        Ok(Integrity {
            xp,
            ledger_sum,
            ledger_rows,
        })
    }

    /// Every student's id and email.
    pub async fn students(&self) -> std::result::Result<Vec<(i64, String)>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as("SELECT id, email FROM students ORDER BY id").fetch_all(r.pool()).await)
    }

    /// The ledger's request ids (form nonces) of a student.
    pub async fn ledger_nonces(
        &self,
        student_id: i64,
    ) -> std::result::Result<Vec<String>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar("SELECT request_id FROM xp_ledger WHERE student_id = $1")
            .bind(student_id)
            .fetch_all(r.pool())
            .await)
    }

    /// Stores a question and its answer (or why there is none).
    pub fn save_question(
        &self,
        student_id: i64,
        question: &str,
        answer: Option<&str>,
        status: &'static str,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (question, answer, status) = (
            question.to_owned(),
            answer.map(str::to_owned),
            status.to_owned(),
        );
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("save_question", async move |tx| {
                sqlx::query("INSERT INTO questions (student_id, question, answer, status, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(student_id)
                    .bind(question.clone())
                    .bind(answer.clone())
                    .bind(status.clone())
                    .bind(now_ms())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }).await)
        }
    }

    /// A student's last `limit` questions.
    pub async fn recent_questions(
        &self,
        student_id: i64,
        limit: i64,
    ) -> std::result::Result<Vec<Question>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT question, answer, status FROM questions WHERE student_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(student_id)
        .bind(limit)
        .fetch_all(r.pool())
        .await)
    }

    /// Records a purchase about to be attempted and returns the key to use:
    /// the student's pending purchase's key if there is one (two tabs, a
    /// double click: one purchase), else `key`. A unique partial index keeps
    /// one pending purchase per student even under concurrent requests.
    pub fn begin_payment(
        &self,
        student_id: i64,
        key: &str,
        amount: i64,
    ) -> impl std::future::Future<Output = Result<String>> + Send + 'static {
        let key = key.to_owned();
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("begin_payment", async move |tx| {
                let pending = "SELECT idempotency_key FROM payments WHERE student_id = $1 AND status = 'pending'";
                let existing: Option<String> = sqlx::query_scalar(pending).bind(student_id).fetch_optional(&mut **tx).await?;
                if let Some(existing) = existing {
                    return Ok(existing);
                }
                sqlx::query(
                    "INSERT INTO payments (student_id, idempotency_key, amount, status, created_at) \
                     VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT DO NOTHING",
                )
                .bind(student_id)
                .bind(key.clone())
                .bind(amount)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
                let current: Option<String> = sqlx::query_scalar(pending).bind(student_id).fetch_optional(&mut **tx).await?;
                Ok(current.unwrap_or_else(|| key.clone()))
            }).await)
        }
    }

    /// The idempotency key of the student's latest purchase still pending
    /// (tried, outcome unknown), so that trying again reuses it.
    pub async fn pending_payment_key(
        &self,
        student_id: i64,
    ) -> std::result::Result<Option<String>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar(
            "SELECT idempotency_key FROM payments WHERE student_id = $1 AND status = 'pending' ORDER BY id DESC LIMIT 1",
        )
        .bind(student_id)
        .fetch_optional(r.pool())
        .await)
    }

    /// Records a successful purchase: the payment, the premium flag and the
    /// confirmation email, in one transaction.
    pub fn complete_payment(
        &self,
        student_id: i64,
        key: &str,
        provider_id: &str,
        email: NewEmail,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (key, provider_id) = (key.to_owned(), provider_id.to_owned());
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("complete_payment", async move |tx| {
                let updated = sqlx::query(
                    "UPDATE payments SET status = 'succeeded', provider_id = $1 WHERE idempotency_key = $2 AND status <> 'succeeded'",
                )
                .bind(provider_id.clone())
                .bind(key.clone())
                .execute(&mut **tx)
                .await?;
                if updated.rows_affected() == 1 {
                    let address: String = sqlx::query_scalar("UPDATE students SET premium = 1 WHERE id = $1 RETURNING email")
                        .bind(student_id)
                        .fetch_one(&mut **tx)
                        .await?;
                    enqueue!(tx, address, email, now_ms())?;
                }
                Ok(())
            }).await)
        }
    }

    /// Records a purchase that could not be completed.
    pub fn fail_payment(
        &self,
        key: &str,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let key = key.to_owned();
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("fail_payment", async move |tx| {
                sqlx::query("UPDATE payments SET status = 'failed' WHERE idempotency_key = $1 AND status = 'pending'")
                    .bind(key.clone())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }).await)
        }
    }

    /// Emails due for an attempt.
    pub async fn due_emails(
        &self,
        limit: i64,
    ) -> std::result::Result<Vec<OutboxEmail>, sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT id, recipient, subject, body, attempts FROM outbox \
             WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 ORDER BY id LIMIT $2",
        )
        .bind(now_ms())
        .bind(limit)
        .fetch_all(r.pool())
        .await)
    }

    /// Marks an email sent.
    pub fn mark_sent(
        &self,
        id: i64,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("outbox_sent", async move |tx| {
                sqlx::query("UPDATE outbox SET sent_at = $1 WHERE id = $2")
                    .bind(now_ms())
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }).await)
        }
    }

    /// Records a failed attempt: another one after `retry_in`, or, with
    /// `None`, none (the email is given up).
    pub fn mark_failed_attempt(
        &self,
        id: i64,
        retry_in: Option<Duration>,
        error: &str,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let error = error.chars().take(300).collect::<String>();
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("outbox_failed_attempt", async move |tx| {
                let now = now_ms();
                let (next, failed_at) = match retry_in {
                    Some(delay) => (now + delay.as_millis() as i64, None),
                    None => (now, Some(now)),
                };
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1, failed_at = $2, last_error = $3 WHERE id = $4",
                )
                .bind(next)
                .bind(failed_at)
                .bind(error.clone())
                .bind(id)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }).await)
        }
    }

    /// Outbox counts: (waiting, sent, failed).
    pub async fn outbox_counts(&self) -> std::result::Result<(i64, i64, i64), sqlx::Error> {
        on_db!(self, r => sqlx::query_as(
            "SELECT \
               CAST(COALESCE(SUM(CASE WHEN sent_at IS NULL AND failed_at IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN sent_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN failed_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM outbox",
        )
        .fetch_one(r.pool())
        .await)
    }

    /// The ids of every outbox email (for delivery checks).
    pub async fn outbox_ids(&self) -> std::result::Result<Vec<i64>, sqlx::Error> {
        on_db!(self, r => sqlx::query_scalar("SELECT id FROM outbox ORDER BY id").fetch_all(r.pool()).await)
    }

    /// Flags (or unflags) the student with this email as an admin; false
    /// when there is no such student. An operator's action (`cozmic promote`),
    /// never a web request.
    pub fn set_admin(
        &self,
        email: &str,
        admin: bool,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'static {
        let email = crate::input::normalize_email(email);
        let this = self.clone();
        async move {
            on_db!(&this, r => r.run("set_admin", async move |tx| {
                let done = sqlx::query("UPDATE students SET is_admin = $1 WHERE email = $2")
                    .bind(i64::from(admin))
                    .bind(email.clone())
                    .execute(&mut **tx)
                    .await?;
                Ok(done.rows_affected() == 1)
            }).await)
        }
    }

    /// Whether the student is flagged admin.
    pub async fn is_admin(&self, student_id: i64) -> bool {
        matches!(self.student(student_id).await, Ok(Some(s)) if s.is_admin == 1)
    }
}

fn runner<DB: selfheal::db::Backend>(
    runner: Runner<DB>,
    heal: bool,
    monitor: &Monitor,
) -> anyhow::Result<Runner<DB>> {
    let runner = runner.with_monitor(monitor.clone());
    Ok(if heal {
        runner.with_guard(Guard::new())
    } else {
        // One attempt, a plain deferred BEGIN: a lock conflict the busy
        // timeout does not absorb is the user's error page.
        runner
            .with_policy(Policy::default().with_max_attempts(1)?.without_budget())
            .with_begin("BEGIN")
    })
}

/// The schema the code expects, for start-up healing: a database restored
/// from before a column existed gets it back (with its default) instead of
/// failing every query that names it.
fn schema() -> Schema {
    let bigint = |name: &str| Column::new(name, "BIGINT").not_null().default("0");
    Schema::new()
        .table(
            Table::new("students")
                .column(bigint("xp"))
                .column(bigint("streak"))
                .column(Column::new("last_active_day", "BIGINT").nullable())
                .column(bigint("is_admin"))
                .column(bigint("premium")),
        )
        .table(Table::new("xp_ledger").index(Index::new("xp_ledger_student", ["student_id", "id"])))
        .table(Table::new("questions").index(Index::new("questions_student", ["student_id", "id"])))
        .table(
            Table::new("outbox")
                .column(bigint("attempts"))
                .column(Column::new("failed_at", "BIGINT").nullable())
                .column(Column::new("last_error", "TEXT").nullable())
                .index(Index::new("outbox_due", ["sent_at", "next_attempt_at"])),
        )
}
