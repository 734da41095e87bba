//! What every db test shares: a fresh database per test on each backend
//! ([`Sqlite`]: a file in a temporary directory; [`Postgres`]: a schema of
//! its own), the [`Backend`] trait the shared cases are written against,
//! and tallies of what a [`Recorder`] saw.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use selfheal::db::Runner;
use selfheal::db::postgres::BEGIN_SERIALIZABLE;
use selfheal::health::Monitor;
use selfheal::observe::testing::{Recorded, Recorder};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;
use sqlx::{Database, Pool};

/// A database backend as the shared cases see it: a fresh database per
/// test, its pool, the few statements they run, and what differs in the
/// backend's answers.
#[allow(async_fn_in_trait)] // the cases run on the test's own runtime, unspawned
pub(crate) trait Backend: Sized {
    /// The sqlx database.
    type DB: selfheal::db::Backend;

    /// The failure kind of a unique violation.
    const UNIQUE_VIOLATION: &'static str;
    /// The failure kind of a foreign-key violation.
    const FOREIGN_KEY_VIOLATION: &'static str;
    /// How the database names a `TEXT` column's type.
    const TEXT: &'static str;

    /// A fresh, empty database for `test`; `None` when the backend is not
    /// available here (see [`Postgres::new`]).
    async fn new(test: &str) -> Option<Self>;

    /// A pool on this test's database, for setup, checks and runners.
    fn pool(&self) -> &Pool<Self::DB>;

    /// Closes the pool and removes the database.
    async fn finish(self);

    /// `runner` at the backend's strictest isolation.
    fn serializable(runner: Runner<Self::DB>) -> Runner<Self::DB>;

    /// Runs `sql`; the rows it affected.
    async fn execute(
        conn: &mut <Self::DB as Database>::Connection,
        sql: &str,
    ) -> Result<u64, sqlx::Error>;

    /// The one `BIGINT` value `sql` selects.
    async fn scalar(
        conn: &mut <Self::DB as Database>::Connection,
        sql: &str,
    ) -> Result<i64, sqlx::Error>;

    /// The one `TEXT` column `sql` selects, a string per row.
    async fn strings(
        conn: &mut <Self::DB as Database>::Connection,
        sql: &str,
    ) -> Result<Vec<String>, sqlx::Error>;

    /// Runs `sql` on the pool (setup: panics on failure).
    async fn exec(&self, sql: &str) {
        let mut conn = self.pool().acquire().await.unwrap();
        Self::execute(&mut conn, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The one `BIGINT` value `sql` selects, on the pool.
    async fn select(&self, sql: &str) -> i64 {
        let mut conn = self.pool().acquire().await.unwrap();
        Self::scalar(&mut conn, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The `TEXT` column `sql` selects, on the pool.
    async fn select_strings(&self, sql: &str) -> Vec<String> {
        let mut conn = self.pool().acquire().await.unwrap();
        Self::strings(&mut conn, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `counter (id, value)` with the one row `(1, 0)`.
    async fn counter_table(&self) {
        self.exec("CREATE TABLE counter (id INTEGER PRIMARY KEY, value BIGINT NOT NULL)")
            .await;
        self.exec("INSERT INTO counter (id, value) VALUES (1, 0)")
            .await;
    }

    /// The counter's value.
    async fn counter(&self) -> i64 {
        self.select("SELECT value FROM counter WHERE id = 1").await
    }
}

/// Runs `case` on a fresh database of backend `B` named after `test`,
/// within `limit`, then removes the database; skipped when `B` is not
/// available here.
pub(crate) async fn run<B: Backend>(test: &str, limit: Duration, case: impl AsyncFnOnce(&B)) {
    let Some(db) = B::new(test).await else {
        return;
    };
    bounded(limit, case(&db)).await;
    db.finish().await;
}

/// Calls `call` `each` times in each of `tasks` spawned tasks, all at once;
/// the errors.
pub(crate) async fn in_tasks<F, Fut, T, E>(tasks: usize, each: usize, call: F) -> Vec<E>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send,
    E: Send + 'static,
{
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..each {
                if let Err(e) = call().await {
                    errors.push(e);
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for handle in handles {
        errors.extend(handle.await.unwrap());
    }
    errors
}

/// The message of the monitor's `db.schema` check.
pub(crate) fn schema_check_message(monitor: &Monitor) -> String {
    let check = monitor
        .checks()
        .into_iter()
        .find(|c| c.name == "db.schema")
        .unwrap();
    let message = check.message.unwrap();
    println!("check db.schema: {message}");
    message
}

/// Bounds a test in time.
pub(crate) async fn bounded<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test)
        .await
        .expect("test took too long")
}

/// A temporary directory of its own, removed on drop.
pub(crate) struct TempDir {
    dir: PathBuf,
}

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("selfheal-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The SQLite database file's path in this directory.
    pub(crate) fn db_file(&self) -> String {
        self.dir.join("test.db").to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A SQLite database file in a temporary directory (WAL mode), opened with
/// selfheal's settings.
pub(crate) struct Sqlite {
    dir: TempDir,
    pool: SqlitePool,
}

impl Sqlite {
    /// The database's directory (its file is [`TempDir::db_file`]).
    pub(crate) fn dir(&self) -> &TempDir {
        &self.dir
    }
}

impl Backend for Sqlite {
    type DB = sqlx::Sqlite;
    const UNIQUE_VIOLATION: &'static str = "sqlite:CONSTRAINT_PRIMARYKEY";
    const FOREIGN_KEY_VIOLATION: &'static str = "sqlite:CONSTRAINT_FOREIGNKEY";
    const TEXT: &'static str = "TEXT";

    async fn new(test: &str) -> Option<Self> {
        let dir = TempDir::new(test);
        let pool = selfheal::db::sqlite::open_pool(&dir.db_file())
            .await
            .unwrap();
        Some(Self { dir, pool })
    }

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn finish(self) {
        self.pool.close().await;
    }

    fn serializable(runner: Runner<sqlx::Sqlite>) -> Runner<sqlx::Sqlite> {
        // SQLite's transactions are serializable; the default `BEGIN
        // IMMEDIATE` takes the write lock up front.
        runner
    }

    async fn execute(conn: &mut sqlx::SqliteConnection, sql: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(sql).execute(conn).await?.rows_affected())
    }

    async fn scalar(conn: &mut sqlx::SqliteConnection, sql: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(sql).fetch_one(conn).await
    }

    async fn strings(
        conn: &mut sqlx::SqliteConnection,
        sql: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(sql).fetch_all(conn).await
    }
}

/// One test's PostgreSQL schema (named after the test, with a random
/// suffix, set as the `search_path` of its connections and as their
/// `application_name`), so tests run in parallel and can find their own
/// backends.
pub(crate) struct Postgres {
    pub(crate) schema: String,
    /// Connections of this test (search_path and application_name set).
    pub(crate) options: PgConnectOptions,
    /// A pool for setup and checks.
    pub(crate) admin: PgPool,
}

impl Postgres {
    /// A pool of `max` connections on this test's schema.
    pub(crate) async fn pool_of(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.options.clone())
            .await
            .unwrap()
    }
}

impl Backend for Postgres {
    type DB = sqlx::Postgres;
    const UNIQUE_VIOLATION: &'static str = "pg:23505";
    const FOREIGN_KEY_VIOLATION: &'static str = "pg:23503";
    const TEXT: &'static str = "text";

    /// `None` (with a note) when `SELFHEAL_TEST_POSTGRES_URL` is not set
    /// outside CI; panics when it is not set in CI (`CI` set), or is set and
    /// the server cannot be reached.
    async fn new(test: &str) -> Option<Self> {
        let url = match std::env::var("SELFHEAL_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                // In CI the variable is always set (.ci/run sets it): a missing
                // one there is a broken pipeline, not a reason to skip.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but SELFHEAL_TEST_POSTGRES_URL is not: PostgreSQL tests must run in CI"
                );
                // Straight to stderr: the test harness captures `eprintln!`.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "note: SELFHEAL_TEST_POSTGRES_URL is not set, skipping PostgreSQL test {test}"
                );
                return None;
            }
        };
        let base = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("SELFHEAL_TEST_POSTGRES_URL={url} is not a valid URL: {e}"));
        let bootstrap = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("SELFHEAL_TEST_POSTGRES_URL={url} is set but PostgreSQL is unreachable: {e}")
            });
        // Short enough for PostgreSQL's 63-byte names (schema, application).
        let short: String = test.chars().take(30).collect();
        let schema = format!("selfheal_{short}_{:08x}", fastrand::u32(..));
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&bootstrap)
            .await
            .unwrap();
        bootstrap.close().await;
        let options = base
            .options([("search_path", schema.as_str())])
            .application_name(&schema);
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone())
            .await
            .unwrap();
        Some(Self {
            schema,
            options,
            admin,
        })
    }

    fn pool(&self) -> &PgPool {
        &self.admin
    }

    async fn finish(self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await
            .unwrap();
        self.admin.close().await;
    }

    fn serializable(runner: Runner<sqlx::Postgres>) -> Runner<sqlx::Postgres> {
        runner.with_begin(BEGIN_SERIALIZABLE)
    }

    async fn execute(conn: &mut sqlx::PgConnection, sql: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(sql).execute(conn).await?.rows_affected())
    }

    async fn scalar(conn: &mut sqlx::PgConnection, sql: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(sql).fetch_one(conn).await
    }

    async fn strings(conn: &mut sqlx::PgConnection, sql: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(sql).fetch_all(conn).await
    }
}

/// The re-runs `recorder` saw.
pub(crate) fn reruns(recorder: &Recorder) -> usize {
    recorder.count(|e| matches!(e, Recorded::Retry { .. }))
}

/// The re-runs `recorder` saw, by failure kind.
pub(crate) fn reruns_by_kind(recorder: &Recorder) -> BTreeMap<String, usize> {
    let mut by_kind = BTreeMap::new();
    for event in recorder.events() {
        if let Recorded::Retry { kind, .. } = event {
            *by_kind.entry(kind).or_default() += 1;
        }
    }
    by_kind
}
