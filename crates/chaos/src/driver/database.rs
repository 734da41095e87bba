//! A fresh database for every run.
//!
//! Runs compare heal on with heal off: if they shared a database, the second
//! would count the first one's students, emails and charges as its own (a
//! heal-off run once reported 247 emails "lost", 80 in truth, and a rerun on
//! the same URL 284 false violations). So each run gets its own:
//!
//! - no URL: a SQLite file in the run's temporary directory (as before);
//! - a PostgreSQL URL: a new database on that server, created for the run
//!   (`chaos_<run>_<random>`) and dropped after it;
//! - a SQLite URL or path: a new file beside the one named, removed after
//!   the run.

use std::path::PathBuf;

use sqlx::Connection;

/// The database one run uses, and how to clean it up.
#[derive(Debug)]
pub(crate) enum RunDatabase {
    /// The app's default: a SQLite file in the run's temporary directory.
    Default,
    /// A database created on a PostgreSQL server for this run.
    Postgres {
        /// The URL the run's app uses.
        url: String,
        /// The URL it was created through (the one given).
        admin: String,
        /// The database's name.
        name: String,
    },
    /// A SQLite file created for this run.
    Sqlite {
        /// The URL the run's app uses.
        url: String,
        /// The file, removed after the run (with its `-wal` and `-shm`).
        path: PathBuf,
    },
}

impl RunDatabase {
    /// A fresh database for the run `run` on the server or beside the file
    /// that `given` names (`None`: the app's default).
    pub(crate) async fn create(given: Option<&str>, run: &str) -> anyhow::Result<Self> {
        let Some(given) = given else {
            return Ok(Self::Default);
        };
        let suffix = format!("{:016x}", fastrand::u64(..));
        let tag: String = run
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if given.starts_with("postgres://") || given.starts_with("postgresql://") {
            let name = format!("chaos_{tag}_{suffix}");
            let mut url = reqwest::Url::parse(given)
                .map_err(|e| anyhow::anyhow!("--database-url is not a valid URL: {e}"))?;
            url.set_path(&format!("/{name}"));
            let mut admin = sqlx::PgConnection::connect(given).await?;
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
            return Ok(Self::Postgres {
                url: url.into(),
                admin: given.to_owned(),
                name,
            });
        }
        let file = given
            .strip_prefix("sqlite://")
            .or_else(|| given.strip_prefix("sqlite:"))
            .unwrap_or(given);
        let file = file.split('?').next().unwrap_or(file);
        let original = PathBuf::from(file);
        let stem = original
            .file_stem()
            .map_or_else(|| "chaos".into(), |s| s.to_string_lossy().into_owned());
        let path = original.with_file_name(format!("{stem}-{tag}-{suffix}.db"));
        Ok(Self::Sqlite {
            url: format!("sqlite://{}", path.display()),
            path,
        })
    }

    /// The URL for the app (`None`: the app's default SQLite file).
    pub(crate) fn url(&self) -> Option<String> {
        match self {
            Self::Default => None,
            Self::Postgres { url, .. } | Self::Sqlite { url, .. } => Some(url.clone()),
        }
    }

    /// The name of the PostgreSQL database made for the run (`None` on SQLite).
    pub(crate) fn postgres_name(&self) -> Option<String> {
        match self {
            Self::Postgres { name, .. } => Some(name.clone()),
            _ => None,
        }
    }

    /// Drops the run's database (after the app has shut down).
    pub(crate) async fn remove(self) -> anyhow::Result<()> {
        match self {
            Self::Default => Ok(()),
            Self::Postgres { admin, name, .. } => {
                let mut admin = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await?;
                Ok(())
            }
            Self::Sqlite { path, .. } => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    match std::fs::remove_file(&file) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sqlite_url_gets_a_fresh_file_beside_it_per_run() {
        let a = RunDatabase::create(Some("sqlite:///tmp/x/shared.db?mode=rwc"), "heal on")
            .await
            .unwrap();
        let b = RunDatabase::create(Some("sqlite:///tmp/x/shared.db?mode=rwc"), "heal on")
            .await
            .unwrap();
        let (a, b) = (a.url().unwrap(), b.url().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("sqlite:///tmp/x/shared-heal_on-"), "{a}");
        assert!(
            RunDatabase::create(None, "x")
                .await
                .unwrap()
                .url()
                .is_none()
        );
    }
}
