//! The run's links to PostgreSQL and Redis, each through a
//! [`LinkProxy`](crate::link::LinkProxy), their fault schedules, and the
//! optional real restart of the PostgreSQL server.
//!
//! Why here and not in the app: the app must not know it is being tested,
//! so the harness rewrites the URLs it hands the app (host and port of the
//! proxy instead of the server's) and faults the links from outside. The
//! proxies exist before the app starts (it connects at start-up), the
//! faults start once it has started and stop before the outbox is drained
//! and integrity is checked, so that the drain and the checks are not
//! themselves faulted. The run's database is created and dropped through
//! the direct URL, never through the proxy.
//!
//! The restart (`[postgres_restart]`, off by default) is the real thing:
//! `pg_ctlcluster <version> <cluster> restart` of the local cluster whose
//! port is the URL's, as root. It disconnects every client of that server,
//! so it is never on in tests that share the server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::RunOptions;
use crate::ledger::FaultLedger;
use crate::link::{LinkFaults, LinkKinds, LinkProxy};
use crate::report::{Recorder, counters};

/// The ledger kind of a PostgreSQL restart (a window from the restart
/// command to the server accepting connections again).
pub(crate) const DB_RESTART: &str = "db_restart";

/// How long a restarted server may take to accept connections again.
const RESTART_READY_WITHIN: Duration = Duration::from_secs(60);

/// The link proxies of one run, and what they inject.
#[derive(Debug, Default)]
pub(super) struct Links {
    /// In front of PostgreSQL (`None` on SQLite).
    database: Option<LinkProxy>,
    /// In front of Redis (`None` when sessions are in the database).
    redis: Option<LinkProxy>,
    /// The direct URL of the run's PostgreSQL database (for the restart).
    direct_database_url: Option<String>,
    /// The fault schedules and the restart, while they run.
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    database: LinkFaults,
    redis: LinkFaults,
    restart: Option<(watch::Sender<bool>, JoinHandle<RestartOutcome>)>,
}

/// What the restart task did.
#[derive(Debug, Default)]
enum RestartOutcome {
    /// The run ended before the restart was due.
    #[default]
    NotDue,
    /// Restarted; the server accepted connections again after this long.
    Done(Duration),
    /// The restart could not be done (no local cluster, not root…): why.
    Failed(String),
}

/// The URLs the app must use: the database's and Redis's, pointing at the
/// link proxies when there are any.
#[derive(Debug)]
pub(super) struct AppUrls {
    /// The database URL (through the proxy on PostgreSQL).
    pub(super) database: Option<String>,
    /// The Redis URL (through the proxy).
    pub(super) redis: Option<String>,
}

impl Links {
    /// Puts a link proxy in front of the run's PostgreSQL database (when
    /// `database_url` is one) and in front of Redis (when `redis_url` is
    /// given), and returns the URLs the app is to use. A SQLite URL is
    /// passed on unchanged.
    pub(super) async fn start(
        database_url: Option<String>,
        redis_url: Option<&str>,
    ) -> anyhow::Result<(Self, AppUrls)> {
        let mut links = Links::default();
        let mut urls = AppUrls {
            database: database_url.clone(),
            redis: None,
        };
        if let Some(url) = database_url.filter(|u| is_postgres(u)) {
            let (proxy, proxied) = proxy_for(&url)
                .await
                .context("cannot put a link proxy in front of PostgreSQL")?;
            links.database = Some(proxy);
            links.direct_database_url = Some(url);
            urls.database = Some(proxied);
        }
        if let Some(url) = redis_url {
            let (proxy, proxied) = proxy_for(url)
                .await
                .context("cannot put a link proxy in front of Redis")?;
            links.redis = Some(proxy);
            urls.redis = Some(proxied);
        }
        Ok((links, urls))
    }

    /// Starts the plan's link faults and (if the plan asks and the run is on
    /// PostgreSQL) the restart; never in a storm.
    pub(super) fn start_faults(&mut self, options: &RunOptions, ledger: &Arc<FaultLedger>) {
        if options.is_storm() {
            return;
        }
        let plan = &options.plan;
        let faults = |proxy: &Option<LinkProxy>, plan, seed, kinds| match proxy {
            Some(proxy) => proxy.start_faults(plan, seed, kinds, Some(Arc::clone(ledger))),
            None => LinkFaults::none(),
        };
        let database = faults(
            &self.database,
            &plan.database,
            options.seed.wrapping_add(5),
            LinkKinds::DATABASE,
        );
        let redis = faults(
            &self.redis,
            &plan.redis,
            options.seed.wrapping_add(6),
            LinkKinds::REDIS,
        );
        let restart = match &self.direct_database_url {
            Some(url) if plan.postgres_restart.enabled => {
                let (stop, stop_rx) = watch::channel(false);
                let due = options.duration.mul_f64(plan.postgres_restart.at);
                let task = tokio::spawn(restart_when_due(
                    url.clone(),
                    due,
                    Arc::clone(ledger),
                    stop_rx,
                ));
                Some((stop, task))
            }
            _ => None,
        };
        self.running = Some(Running {
            database,
            redis,
            restart,
        });
    }

    /// Stops the faults (a stall or partition in progress ends now) and
    /// adds `faults_injected.<kind>` for every link kind, counted from the
    /// ledger, plus the links' own counters, to `run`'s counters.
    pub(super) async fn stop_faults(
        &mut self,
        run: &str,
        ledger: &FaultLedger,
        recorder: &Recorder,
    ) -> anyhow::Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        for (proxy, faults, kinds, prefix) in [
            (&self.database, running.database, LinkKinds::DATABASE, "db"),
            (&self.redis, running.redis, LinkKinds::REDIS, "redis"),
        ] {
            let stats = faults.stop().await;
            let Some(proxy) = proxy else { continue };
            for kind in kinds.all() {
                recorder.add(run, &counters::faults_injected(kind), ledger.count(kind));
            }
            let link = proxy.stats();
            recorder.add(run, &format!("{prefix}_link.connections"), link.connections);
            recorder.add(run, &format!("{prefix}_link.connections_reset"), link.reset);
            recorder.add(run, &format!("{prefix}_link.blackholed"), link.blackholed);
            recorder.add(
                run,
                &format!("{prefix}_link.idle_resets"),
                stats.idle_resets,
            );
            recorder.add(
                run,
                &format!("{prefix}_link.faulted_ms"),
                (stats.stalled_for + stats.partitioned_for).as_millis() as u64,
            );
        }
        if let Some((stop, task)) = running.restart {
            let _ = stop.send(true);
            match task.await? {
                RestartOutcome::NotDue => {}
                RestartOutcome::Done(down) => {
                    recorder.add(run, "db_restart.down_ms", down.as_millis() as u64);
                }
                RestartOutcome::Failed(why) => {
                    // The machine does not allow it: said, counted, not fatal.
                    tracing::warn!(%why, "[postgres_restart] is enabled but the restart failed");
                    recorder.add(run, "db_restart.failed", 1);
                }
            }
            recorder.add(
                run,
                &counters::faults_injected(DB_RESTART),
                ledger.count(DB_RESTART),
            );
        }
        Ok(())
    }

    /// Stops the proxies (after the app has shut down).
    pub(super) async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.database.stop().await;
            let _ = running.redis.stop().await;
        }
        for proxy in [self.database.take(), self.redis.take()]
            .into_iter()
            .flatten()
        {
            proxy.shutdown().await;
        }
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A link proxy in front of the server `url` names (host and port), and
/// `url` pointing at the proxy instead.
async fn proxy_for(url: &str) -> anyhow::Result<(LinkProxy, String)> {
    let mut parsed = reqwest::Url::parse(url).context("not a valid URL")?;
    let host = parsed.host_str().context("the URL has no host")?.to_owned();
    let port = parsed.port().unwrap_or(match parsed.scheme() {
        "redis" | "rediss" => 6379,
        _ => 5432,
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("{host} does not resolve"))?;
    let proxy = LinkProxy::start(server).await?;
    parsed
        .set_host(Some("127.0.0.1"))
        .map_err(|e| anyhow::anyhow!("cannot rewrite the URL's host: {e}"))?;
    parsed
        .set_port(Some(proxy.addr().port()))
        .map_err(|()| anyhow::anyhow!("cannot rewrite the URL's port"))?;
    Ok((proxy, parsed.into()))
}

/// Waits until `due` (unless stopped first), restarts the PostgreSQL
/// server `url` is on, and records the restart in `ledger` as a
/// [`DB_RESTART`] window from the restart command until the server accepts
/// connections again.
async fn restart_when_due(
    url: String,
    due: Duration,
    ledger: Arc<FaultLedger>,
    mut stop: watch::Receiver<bool>,
) -> RestartOutcome {
    tokio::select! {
        _ = tokio::time::sleep(due) => {}
        _ = stop.changed() => return RestartOutcome::NotDue,
    }
    let from = Instant::now();
    match restart_postgres(&url).await {
        Ok(()) => {
            let to = Instant::now();
            ledger.window(DB_RESTART, from, to, &[]);
            RestartOutcome::Done(to - from)
        }
        Err(e) => RestartOutcome::Failed(format!("{e:#}")),
    }
}

/// Restarts the local PostgreSQL cluster that listens on `url`'s port
/// (`pg_ctlcluster <version> <cluster> restart -m fast`, found under
/// `/etc/postgresql`) and waits until it accepts connections again.
pub(crate) async fn restart_postgres(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).context("not a valid URL")?;
    let host = parsed.host_str().unwrap_or("localhost");
    anyhow::ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1"),
        "the server {host} is not on this machine"
    );
    let port = parsed.port().unwrap_or(5432);
    let (version, cluster) = local_cluster(Path::new("/etc/postgresql"), port)?;
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pg_ctlcluster")
            .args(["-m", "fast", &version, &cluster, "restart"])
            .output()
    })
    .await?
    .context("cannot run pg_ctlcluster")?;
    anyhow::ensure!(
        output.status.success(),
        "pg_ctlcluster failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let deadline = Instant::now() + RESTART_READY_WITHIN;
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("the server did not come back within 60 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The `(version, cluster)` under `etc` (`/etc/postgresql/<version>/<cluster>/`)
/// whose port is `port`: the last `port = N` of its `postgresql.conf` and
/// then of its `conf.d/*.conf` in name order (Debian's include order), 5432
/// when none sets one.
fn local_cluster(etc: &Path, port: u16) -> anyhow::Result<(String, String)> {
    let versions = std::fs::read_dir(etc)
        .with_context(|| format!("no PostgreSQL clusters under {}", etc.display()))?;
    for version in versions.flatten() {
        let Ok(clusters) = std::fs::read_dir(version.path()) else {
            continue;
        };
        for cluster in clusters.flatten() {
            let Ok(mut conf) = std::fs::read_to_string(cluster.path().join("postgresql.conf"))
            else {
                continue;
            };
            let mut included: Vec<_> = std::fs::read_dir(cluster.path().join("conf.d"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect();
            included.sort();
            for file in included {
                conf.push('\n');
                conf.push_str(&std::fs::read_to_string(file).unwrap_or_default());
            }
            if configured_port(&conf) == port {
                return Ok((
                    version.file_name().to_string_lossy().into_owned(),
                    cluster.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
    }
    anyhow::bail!("no cluster under {} listens on port {port}", etc.display())
}

/// The `port = N` of a `postgresql.conf` (the last one set; 5432 if none).
fn configured_port(conf: &str) -> u16 {
    conf.lines()
        .rev()
        .find_map(|line| {
            let line = line.split('#').next()?.trim();
            let (key, value) = line.split_once('=')?;
            (key.trim() == "port").then(|| value.trim().trim_matches('\'').parse().ok())?
        })
        .unwrap_or(5432)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_of_a_cluster_is_read_from_its_conf() {
        assert_eq!(configured_port("#port = 5433\n"), 5432);
        assert_eq!(
            configured_port("port = 5433\t\t# (change requires restart)\n"),
            5433
        );
        assert_eq!(configured_port("port = '5434'\nport = 5435\n"), 5435);
        let etc = tempfile::tempdir().unwrap();
        let dir = etc.path().join("15").join("other");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("postgresql.conf"), "port = 5999\n").unwrap();
        assert_eq!(
            local_cluster(etc.path(), 5999).unwrap(),
            ("15".to_owned(), "other".to_owned())
        );
        assert!(local_cluster(etc.path(), 5432).is_err());
        // conf.d is read after postgresql.conf.
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d").join("90-port.conf"), "port = 5432\n").unwrap();
        std::fs::write(dir.join("conf.d").join("10-x.conf"), "port = 5111\n").unwrap();
        assert!(local_cluster(etc.path(), 5999).is_err());
        assert_eq!(local_cluster(etc.path(), 5432).unwrap().1, "other");
    }

    #[tokio::test]
    async fn a_sqlite_url_gets_no_proxy_and_a_postgres_one_does() {
        let (links, urls) = Links::start(Some("sqlite:///tmp/x.db".into()), None)
            .await
            .unwrap();
        assert!(links.database.is_none() && links.redis.is_none());
        assert_eq!(urls.database.as_deref(), Some("sqlite:///tmp/x.db"));
        let (links, urls) = Links::start(
            Some("postgres://u:p@localhost:5999/chaos_x?sslmode=disable".into()),
            Some("redis://127.0.0.1:6999/2"),
        )
        .await
        .unwrap();
        let db = links.database.as_ref().unwrap();
        assert_eq!(db.upstream().port(), 5999);
        assert_eq!(
            urls.database.unwrap(),
            format!(
                "postgres://u:p@127.0.0.1:{}/chaos_x?sslmode=disable",
                db.addr().port()
            )
        );
        let redis = links.redis.as_ref().unwrap();
        assert_eq!(redis.upstream().port(), 6999);
        assert_eq!(
            urls.redis.unwrap(),
            format!("redis://127.0.0.1:{}/2", redis.addr().port())
        );
        links.shutdown().await;
    }
}
