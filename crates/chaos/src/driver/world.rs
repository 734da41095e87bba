//! The world a run sets up: the OpenAI- and Stripe-compatible servers behind
//! their fault proxies, the SMTP server and its scheduled outages, and the
//! app itself, configured to use all of them; and, after the users are done,
//! the counters read from them, the outbox drain and the teardown.
//!
//! Gathered in one struct so that the run reads as a sequence of steps and
//! so that what lives as long as the run (and is shut down at its end) is
//! listed in one place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cozmic::config::{Config, FaultHooks, Healing, OpenAi, Secret, Stripe};
use tempfile::TempDir;

use super::RunOptions;
use super::app::{App, AppAccess, AppMode};
use super::database::RunDatabase;
use super::links::Links;
use crate::faults::{FaultKind, UpstreamFaults};
use crate::ledger::FaultLedger;
use crate::proxy::FaultProxy;
use crate::report::{Recorder, counters};
use crate::smtp::{Outage, SmtpServer};
use crate::upstream::{OpenAiServer, StripeServer};

/// Everything one run sets up. The fields are listed in the reverse order of
/// their creation, so that on an early return they are dropped as the locals
/// they were built from would be (the temporary directory last).
pub(super) struct World {
    /// The app under test (in this process, or child processes).
    pub(super) app: App,
    /// The app's SQLite file (`None` on PostgreSQL).
    pub(super) sqlite_path: Option<PathBuf>,
    /// The link proxies in front of PostgreSQL and Redis, and their faults.
    links: Links,
    /// The run's own database, removed after the app has shut down.
    database: RunDatabase,
    /// The SMTP outage schedule (`None` in a storm, and once drained).
    outages: Option<Outage>,
    /// The SMTP server the app sends through.
    pub(super) smtp: SmtpServer,
    /// The proxy in front of the Stripe-compatible server.
    pay_proxy: FaultProxy,
    /// The proxy in front of the OpenAI-compatible server (the storm takes
    /// it down and back).
    pub(super) ai_proxy: FaultProxy,
    /// The Stripe-compatible server.
    pub(super) stripe: StripeServer,
    /// The OpenAI-compatible server.
    openai: OpenAiServer,
    /// The fault decisions for the payment upstream.
    pay_faults: Arc<UpstreamFaults>,
    /// The fault decisions for the AI upstream.
    ai_faults: Arc<UpstreamFaults>,
    /// Every fault injected in this run, and what it struck.
    pub(super) ledger: Arc<FaultLedger>,
    /// Holds the app's data (the SQLite file).
    _dir: TempDir,
}

impl World {
    /// Starts the upstreams, the proxies, the SMTP server (with its outages
    /// unless in a storm) and the app pointed at them.
    pub(super) async fn start(options: &RunOptions) -> anyhow::Result<Self> {
        let ledger = Arc::new(FaultLedger::new());
        let dir = tempfile::tempdir()?;
        let seed = options.seed;
        let plan = &options.plan;
        let storm = options.is_storm();

        // Upstreams behind fault proxies: one decision-maker per upstream, so a
        // 503 drawn for one is served by that one.
        let faults = |seed| {
            Arc::new(if storm {
                UpstreamFaults::disabled()
            } else {
                UpstreamFaults::with_ledger(&plan.upstream, seed, ledger.clone())
            })
        };
        let ai_faults = faults(seed);
        let pay_faults = faults(seed.wrapping_add(1));
        let openai = OpenAiServer::start(ai_faults.clone()).await?;
        let stripe = StripeServer::start(pay_faults.clone()).await?;
        let ai_proxy = FaultProxy::start(openai.addr(), ai_faults.clone()).await?;
        let pay_proxy = FaultProxy::start(stripe.addr(), pay_faults.clone()).await?;
        let smtp = SmtpServer::start().await?;
        let outages = (!storm).then(|| smtp.start_outages(&plan.smtp, seed.wrapping_add(2)));

        let database = RunDatabase::create(options.database_url.as_deref(), options.name).await?;
        let mut config = app_config(options, dir.path(), smtp.addr(), &ai_proxy, &pay_proxy);
        let (mut links, urls) = Links::start(database.url(), options.redis_url.as_deref()).await?;
        config.database_url = urls.database.map(Secret::new);
        config.redis_url = urls.redis.map(Secret::new);
        if options.app != AppMode::InProcess {
            // Every instance (and every life of one) signs sessions alike.
            config.secret_key = Some(super::app::random_secret_key());
        }
        let app = App::start(&options.app, config, dir.path()).await?;
        links.start_faults(options, &ledger);
        let sqlite_path = app.db().sqlite().map(|_| match &database {
            RunDatabase::Sqlite { path, .. } => path.clone(),
            _ => dir.path().join("cozmic.db"),
        });
        Ok(Self {
            app,
            sqlite_path,
            links,
            database,
            outages,
            smtp,
            pay_proxy,
            ai_proxy,
            stripe,
            openai,
            pay_faults,
            ai_faults,
            ledger,
            _dir: dir,
        })
    }

    /// The name of the PostgreSQL database made for the run (`None` on SQLite).
    pub(super) fn postgres_database(&self) -> Option<String> {
        self.database.postgres_name()
    }

    /// Adds what reached the upstreams and which faults were injected to
    /// `run`'s counters.
    pub(super) fn record_counters(&self, options: &RunOptions, recorder: &Recorder) {
        let run = options.name;
        let ai = self.ai_proxy.stats();
        let pay = self.pay_proxy.stats();
        // In a storm nothing gets through the proxies: count the attempts.
        let upstream_calls = if options.is_storm() {
            ai.connections + pay.connections
        } else {
            ai.requests + pay.requests
        };
        recorder.add(run, counters::UPSTREAM_CALLS, upstream_calls);
        for kind in FaultKind::ALL {
            let count = self.ai_faults.injected().get(kind) + self.pay_faults.injected().get(kind);
            recorder.add(run, &counters::faults_injected(kind.name()), count);
        }
    }

    /// Adds what the app's health monitor saw (faults healed, alerts fired)
    /// to `run`'s counters.
    pub(super) async fn record_health(&self, run: &str, recorder: &Recorder) {
        let health = self.app.health().await;
        let heals: u64 = health.heals.values().sum();
        recorder.add(run, counters::FAULTS_RECOVERED, heals);
        for (kind, count) in &health.heals {
            recorder.add(run, &format!("heals.{kind}"), *count);
        }
        recorder.add(run, counters::ALERTS_FIRED, health.alerts_fired);
    }

    /// What the users need from the app (its URL, the session table, the
    /// database pools).
    pub(super) fn access(&self) -> AppAccess {
        self.app.access()
    }

    /// The app's peak RSS so far, bytes (`None` when it runs in this process).
    pub(super) async fn peak_rss_bytes(&self) -> Option<u64> {
        self.app.peak_rss_bytes().await
    }

    /// Stops the database and Redis link faults, brings the SMTP server up
    /// for good and gives the outbox time to empty.
    pub(super) async fn drain(
        &mut self,
        options: &RunOptions,
        recorder: &Recorder,
    ) -> anyhow::Result<()> {
        self.links
            .stop_faults(options.name, &self.ledger, recorder)
            .await?;
        if let Some(outages) = self.outages.take() {
            let stats = outages.stop().await?;
            for (from, to) in &stats.windows {
                self.ledger.mail_window("smtp_outage", *from, *to);
            }
            recorder.add(
                options.name,
                &counters::faults_injected("smtp_outage"),
                stats.outages,
            );
        }
        self.smtp.set_up(true).await?;
        let db = self.app.db();
        self.app.wake_mailer();
        // The same rule in both modes: wait until the outbox is empty, or until
        // it has made no progress for longer than a claim's lease (a worker
        // that gave up, emails marked failed; an email claimed by a killed
        // instance is taken over once its lease runs out), at most 45 s. What
        // is still waiting then counts as lost.
        let patience = cozmic::mail::MIN_LEASE + Duration::from_secs(3);
        let drain_deadline =
            Instant::now() + Duration::from_secs(if options.is_storm() { 3 } else { 45 });
        // With healing on, purchases still pending (their answer lost) are
        // settled by the app's purchase check: wait for those too.
        let settles = options.healing == Healing::On;
        let unsettled = async || -> anyhow::Result<((i64, i64, i64), i64)> {
            let pending = if settles {
                db.pending_payments().await?
            } else {
                0
            };
            Ok((db.outbox_counts().await?, pending))
        };
        let mut last = unsettled().await?;
        let mut last_change = Instant::now();
        while Instant::now() < drain_deadline
            && (last.0.0 > 0 || last.1 > 0)
            && last_change.elapsed() < patience
        {
            self.app.wake_mailer();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = unsettled().await?;
            if now != last {
                last = now;
                last_change = Instant::now();
            }
        }
        Ok(())
    }

    /// Stops the app, then the proxies, the upstreams and the SMTP server.
    pub(super) async fn shutdown(self) {
        self.app.shutdown().await;
        self.links.shutdown().await;
        self.ai_proxy.shutdown().await;
        self.pay_proxy.shutdown().await;
        self.openai.shutdown().await;
        self.stripe.shutdown().await;
        self.smtp.shutdown().await;
        if let Err(error) = self.database.remove().await {
            tracing::warn!(%error, "could not remove the run's database");
        }
    }
}

/// The app's configuration: fault hooks armed, compressed mail timings, the
/// upstreams through their proxies, and in a storm the variant's policy.
fn app_config(
    options: &RunOptions,
    dir: &Path,
    smtp: SocketAddr,
    ai_proxy: &FaultProxy,
    pay_proxy: &FaultProxy,
) -> Config {
    let mut config = Config::new(dir);
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.healing = options.healing;
    config.faults = FaultHooks::armed();
    config.mail_poll = Duration::from_millis(200);
    // An email claimed by an instance killed mid-delivery is taken over
    // after this (the shortest lease the app allows).
    config.mail_lease = cozmic::mail::MIN_LEASE;
    // Compressed time: the outbox retries within seconds instead of up to an
    // hour, so that a run drains in seconds after the SMTP server is back.
    config.mail_backoff = (Duration::from_millis(250), Duration::from_secs(3));
    // ... and keeps trying as long, in attempts: 25 attempts of up to an
    // hour are ~15 hours, 25 of up to 3 s (1.5 s on average with full
    // jitter) are under a minute, less than a harsh run's SMTP outages add
    // up to (down 80 % of 40 s): an email the real app would keep trying
    // for hours was given up and counted lost with healing on. 1,000
    // attempts are more than 20 minutes.
    config.mail_max_attempts = 1000;
    // Compressed too: a purchase whose answer was lost is asked about again
    // after 5 s (a user's subscribe takes up to a few seconds; asking while
    // it is still in flight would only double its upstream calls).
    config.payment_check = Duration::from_secs(5);
    config.smtp_url = Some(Secret::new(format!("smtp://{smtp}")));
    config.openai = Some(OpenAi {
        api_key: Secret::new("sk-chaos"),
        base_url: format!("{}/v1", ai_proxy.url()),
        model: "chaos-tutor".into(),
    });
    config.stripe = Some(Stripe {
        api_key: Secret::new("sk_chaos"),
        base_url: pay_proxy.url(),
    });
    if let Some(variant) = options.storm {
        config.upstream = super::storm::policy(variant);
    }
    config
}
