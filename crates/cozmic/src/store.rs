//! Where sessions live: the app's database by default (SQLite or
//! PostgreSQL, tower-sessions-sqlx-store), Redis when `REDIS_URL` is set
//! (tower-sessions-redis-store). One enum so the app has one session layer
//! type whatever the deployment.

use std::time::Duration;

use async_trait::async_trait;
use tower_sessions::SessionStore;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, ExpiredDeletion};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{
    ClientLike, Config as RedisConfig, ConnectionConfig, PerformanceConfig, Pool as RedisPool,
    ReconnectPolicy,
};
use tower_sessions_sqlx_store::{PostgresStore, SqliteStore};

use crate::db::Db;

/// The session store in use.
#[derive(Clone, Debug)]
pub enum Store {
    /// In the SQLite database (table `tower_sessions`).
    Sqlite(SqliteStore),
    /// In the PostgreSQL database (table `tower_sessions` in the current schema).
    Postgres(PostgresStore),
    /// In Redis.
    Redis(RedisStore<RedisPool>),
}

impl Store {
    /// Opens the store: Redis at `redis_url` if given, else the database.
    pub async fn open(db: &Db, redis_url: Option<&str>) -> anyhow::Result<Self> {
        if let Some(url) = redis_url {
            let config = RedisConfig::from_url(url)
                .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid Redis URL"))?;
            // Reconnect forever (without a policy, a client whose Redis went
            // away once never reconnects), and bound every command: while
            // Redis is down a request waits at most 2 s, then answers 503.
            let performance = PerformanceConfig {
                default_command_timeout: Duration::from_secs(2),
                ..PerformanceConfig::default()
            };
            let connection = ConnectionConfig {
                connection_timeout: Duration::from_secs(2),
                internal_command_timeout: Duration::from_secs(2),
                ..ConnectionConfig::default()
            };
            let reconnect = ReconnectPolicy::new_exponential(0, 100, 2_000, 2);
            let pool = RedisPool::new(
                config,
                Some(performance),
                Some(connection),
                Some(reconnect),
                4,
            )?;
            pool.init()
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to Redis: {e}"))?;
            return Ok(Store::Redis(RedisStore::new(pool)));
        }
        match db {
            Db::Sqlite(runner) => {
                let store = SqliteStore::new(runner.pool().clone());
                store.migrate().await?;
                Ok(Store::Sqlite(store))
            }
            Db::Postgres(runner) => {
                // The current schema, so that databases (and test schemas)
                // sharing a server do not share sessions.
                let schema: String = sqlx::query_scalar("SELECT current_schema()")
                    .fetch_one(runner.pool())
                    .await?;
                let store = PostgresStore::new(runner.pool().clone())
                    .with_schema_name(schema)
                    .map_err(|e| anyhow::anyhow!(e))?;
                store.migrate().await?;
                Ok(Store::Postgres(store))
            }
        }
    }

    /// The SQL table holding the sessions (quoted), for operators and the
    /// chaos harness; `None` for Redis.
    pub fn table(&self) -> Option<&'static str> {
        match self {
            Store::Sqlite(_) => Some("tower_sessions"),
            // tower-sessions-sqlx-store's PostgreSQL table, in the schema
            // given to it (the connection's current schema).
            Store::Postgres(_) => Some("\"session\""),
            Store::Redis(_) => None,
        }
    }

    /// Deletes expired sessions every `period` (Redis expires its own).
    pub async fn delete_expired_forever(
        self,
        period: Duration,
    ) -> Result<(), session_store::Error> {
        match self {
            Store::Sqlite(store) => store.continuously_delete_expired(period).await,
            Store::Postgres(store) => store.continuously_delete_expired(period).await,
            Store::Redis(_) => Ok(()),
        }
    }
}

#[async_trait]
impl SessionStore for Store {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        match self {
            Store::Sqlite(s) => s.create(record).await,
            Store::Postgres(s) => s.create(record).await,
            Store::Redis(s) => s.create(record).await,
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        match self {
            Store::Sqlite(s) => s.save(record).await,
            Store::Postgres(s) => s.save(record).await,
            Store::Redis(s) => s.save(record).await,
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self {
            Store::Sqlite(s) => s.load(id).await,
            Store::Postgres(s) => s.load(id).await,
            Store::Redis(s) => s.load(id).await,
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        match self {
            Store::Sqlite(s) => s.delete(id).await,
            Store::Postgres(s) => s.delete(id).await,
            Store::Redis(s) => s.delete(id).await,
        }
    }
}
