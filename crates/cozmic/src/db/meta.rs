//! The `meta` table: the instance tag and the admin revocation epoch.

use std::future::Future;

use super::{Db, Result};

impl Db {
    pub(super) fn ensure_instance_tag(&self) -> impl Future<Output = Result<()>> + Send + 'static {
        // Uniqueness, not secrecy: a random 64-bit tag per database.
        let tag = format!("{:016x}", fastrand::u64(..));
        transaction!(self, "instance_tag", |tx| {
            sqlx::query("INSERT INTO meta (key, value) VALUES ('instance', $1) ON CONFLICT (key) DO NOTHING")
                .bind(tag.clone())
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
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
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        transaction!(self, "admin_revocation", |tx| {
            let current: Option<String> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'admin_revoked_before'")
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
        })
    }
}
