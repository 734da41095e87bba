//! cozmic: the selfheal reference app, a small learning platform.
//!
//! Students sign up, finish lessons for XP, ask an AI tutor, buy a premium
//! plan and get emails. Each of those is a place where a real app breaks,
//! and each uses the selfheal piece made for it:
//!
//! | where it hurts | what cozmic does | selfheal piece |
//! |---|---|---|
//! | saving progress while SQLite is locked | the whole transaction re-run, a lost commit looked up, not re-applied | [`db::Db`] on `selfheal::db::Runner` with the guard |
//! | the AI provider fails or rate-limits | retried (it has no side effects), `Retry-After` obeyed, a budget and a breaker; then a kind 503 | [`upstream::Tutor`] on `selfheal::http` |
//! | the payment API fails mid-purchase | retried with one `Idempotency-Key` per purchase: never charged twice; a purchase whose answer was lost is asked about again in the background until it is settled (Premium and receipt, or failed) | [`upstream::Payments`], a supervised purchase check |
//! | the mail server is down | emails in an outbox, in the same transaction as their cause; a supervised worker retries each email for up to ~15 hours | [`mail::Mailer`] on `selfheal::supervise` |
//! | the database is down | the outbox worker waits for it (never given up), pages answer a friendly 503 with `Retry-After`, `/readyz` stays up (the database is shared by every instance) | `selfheal::supervise::Supervisor::depends_on`, `selfheal::health` |
//! | a corrupt or tampered session | repaired field by field, or a fresh session, never a 500 | [`session::Visitor`] on `selfheal::session` |
//! | a panic or a bug | caught, recorded, a kind page with a request id | `selfheal::web::HealLayer` |
//! | "is it healthy?" | `/healthz`, `/readyz`, `/metrics`, the admin dashboard | `selfheal::health`, `selfheal::web` |
//!
//! [`app`] builds the router from an [`AppState`]; [`start`] opens
//! everything from a [`Config`] and serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use selfheal::health::ledger::Ledger;
use selfheal::health::{CheckOptions, Monitor};
use selfheal::supervise::{SupervisedHandle, Supervisor};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod config;
pub mod correlate;
pub mod db;
pub mod input;
pub mod lessons;
pub mod mail;
pub mod password;
mod payments_check;
pub mod session;
pub mod store;
pub mod upstream;
mod web;

pub use web::app;

use config::{Config, Healing};
use db::Db;
use mail::Mailer;
use store::Store;
use upstream::{Payments, Tutor};

/// The name of the monitor's database check (workers depend on it).
pub const DATABASE_CHECK: &str = "database";

/// Everything a request handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    store: Store,
    monitor: Monitor,
    tutor: Tutor,
    payments: Payments,
    mailer: Mailer,
    password_work: password::PasswordWork,
    /// Failed student sign-ins, per account and client (see `web::auth`).
    login_throttle: selfheal::web::LoginThrottle,
    /// Its revocation epoch is shared with the database (see `open`).
    admin_guard: selfheal::web::AdminGuard,
    config: Config,
    secret: selfheal::config::SecretKey,
    /// The monitor, shared as an observer for fallbacks (one allocation
    /// for the app's life, not one per fallback).
    observer: Arc<Monitor>,
    /// The monitor's closed buckets in the database every instance shares:
    /// the fleet, its history, alerts once per fleet.
    ledger: Ledger,
}

impl AppState {
    /// Opens the database (migrating and healing its schema), the session
    /// store and the upstream clients for `config`.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        selfheal::tls::install_default_crypto_provider();
        let monitor = Monitor::builder().with_global(false).start()?;
        let db = Db::open(&config, &monitor).await?;
        let ledger = Ledger::builder(db.ledger_pool(), &monitor)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()?;
        let store = Store::open(&db, config.redis_url.as_ref().map(|u| u.expose())).await?;
        if config.secret_key.is_none() {
            config::create_private_dir(&config.data_dir)?;
        }
        let secret = match &config.secret_key {
            Some(key) => selfheal::config::SecretKeyOptions::new()
                .load_from(|_| Some(key.expose().to_owned()))?,
            None => selfheal::config::SecretKeyOptions::new()
                .with_key_file(config.data_dir.join("secret_key"))
                .load_from(|_| None)?,
        };
        // One client: the middleware keeps a budget and a breaker per
        // dependency (`openai`, `stripe`), and the connection pool is shared.
        let http = upstream::client(config.healing, config.upstream, &monitor)?;
        let tutor = Tutor::new(http.clone(), config.openai.clone());
        let payments = Payments::new(http, config.stripe.clone());
        let mailer = Mailer::new(&config, db.clone(), monitor.clone())?;
        {
            // Not a readiness check: every instance shares the database, so
            // its outage would empty the load balancer; pages answer a
            // friendly 503 meanwhile. It moves the status (critical).
            let db = db.clone();
            let options = CheckOptions {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(3),
                ..CheckOptions::default()
            };
            monitor.register_check(DATABASE_CHECK, options, move || {
                let db = db.clone();
                async move { db.ping().await.map_err(|e| e.to_string()) }
            });
        }
        // Admin logouts outlive restarts and reach every instance: the
        // epoch is read at start, written on each logout, and synced by a
        // worker (see `serve`).
        let db_for_hook = db.clone();
        let admin_guard = web::admin_guard(&config, &db).on_revoke(move |epoch| {
            let db = db_for_hook.clone();
            tokio::spawn(async move {
                if let Err(error) = db.record_admin_revocation(epoch).await {
                    tracing::warn!(%error, "admin logout not persisted; other instances keep old cookies until the next logout or expiry");
                }
            });
        });
        admin_guard.revoke_before(db.admin_revoked_before().await?);
        // The hash an unknown email is checked against, made now: made on
        // the first such login, it would make that one cost two hashes.
        tokio::task::spawn_blocking(password::dummy_hash).await?;
        let observer = Arc::new(monitor.clone());
        let login_throttle = web::login_throttle("login", &config, observer.clone());
        let mut password_work = password::PasswordWork::for_this_machine();
        if config.healing == Healing::On && config.concurrency_limit && config.passwords_limit {
            let threads = password_work.max_running();
            password_work =
                password_work.with_controlled_delay(password::rule(threads, observer.clone()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                observer,
                ledger,
                login_throttle,
                db,
                store,
                monitor,
                tutor,
                payments,
                mailer,
                password_work,
                admin_guard,
                config,
                secret,
            }),
        })
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The health ledger: this instance's health in the shared database.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// The health monitor every heal and error is reported to.
    pub fn monitor(&self) -> &Monitor {
        &self.inner.monitor
    }

    /// Reports `event` to the monitor, through selfheal's one channel
    /// ([`selfheal::observe::emit`]): logged, recorded, and counted in
    /// `/metrics`.
    pub fn report(&self, event: &selfheal::observe::Event<'_>) {
        selfheal::observe::emit(Some(&self.inner.monitor), event);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The session store.
    pub fn sessions(&self) -> &Store {
        &self.inner.store
    }

    /// The email outbox worker.
    pub fn mailer(&self) -> &Mailer {
        &self.inner.mailer
    }

    /// The gate in front of password hashing.
    pub fn password_work(&self) -> &password::PasswordWork {
        &self.inner.password_work
    }

    /// A fallback named `operation`, reported to this app's monitor.
    fn fallback(&self, operation: &'static str) -> selfheal::fallback::Fallback {
        selfheal::fallback::Fallback::new(operation).with_observer(self.inner.observer.clone())
    }

    fn healing(&self) -> Healing {
        self.inner.config.healing
    }
}

/// A running cozmic: its address, its state, and a way to stop it.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    workers: Vec<SupervisedHandle>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The app's state (its database, its monitor).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting requests, lets the ones in flight finish (up to 10 s),
    /// stops the workers and closes the database.
    pub async fn shutdown(self) {
        // `/readyz` fails from now on: load balancers stop sending requests.
        self.state.monitor().set_draining();
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        // Last started, first stopped: the ledger (first) flushes last.
        for worker in self.workers.into_iter().rev() {
            worker.shutdown().await;
        }
        self.state.db().close().await;
    }

    /// Serves until the server stops (it stops on [`shutdown`](Self::shutdown)
    /// from elsewhere, or on Ctrl-C / SIGTERM when started by the binary).
    pub async fn wait_for_signal(self) {
        selfheal::supervise::ctrl_c_or_terminate().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Opens everything for `config`, binds `config.bind` (port 0 picks a free
/// one) and serves; the email worker and the expired-session cleaner run
/// supervised.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let bind = config.bind;
    let state = AppState::open(config).await?;
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    serve(state, listener).await
}

/// Serves `state` on `listener`.
pub async fn serve(state: AppState, listener: TcpListener) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let router: Router = app(state.clone());
    let (stop, mut stopped) = watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    // The ledger first: stopped last, it flushes what the others recorded.
    let mut workers = vec![state.ledger().start(), state.mailer().spawn()];
    let store = state.inner.store.clone();
    workers.push(
        Supervisor::new("session-cleanup")
            .with_monitor(state.monitor().clone())
            .depends_on(DATABASE_CHECK)
            .spawn(move |mut shutdown| {
                let store = store.clone();
                async move {
                    tokio::select! {
                        () = shutdown.recv() => Ok(()),
                        result = store.delete_expired_forever(Duration::from_secs(600)) => result,
                    }
                }
            }),
    );
    if state.healing() == Healing::On && state.inner.payments.is_configured() {
        let checker = state.clone();
        workers.push(
            Supervisor::new("payments-check")
                .with_monitor(state.monitor().clone())
                .depends_on(DATABASE_CHECK)
                .spawn(move |shutdown| payments_check::run(checker.clone(), shutdown)),
        );
    }
    let (db, guard) = (state.db().clone(), state.inner.admin_guard.clone());
    workers.push(
        Supervisor::new("admin-revocations")
            .with_monitor(state.monitor().clone())
            .depends_on(DATABASE_CHECK)
            .spawn(move |mut shutdown| {
                let (db, guard) = (db.clone(), guard.clone());
                async move {
                    // Another instance's admin logout reaches this one within
                    // a few seconds.
                    loop {
                        guard.revoke_before(db.admin_revoked_before().await?);
                        tokio::select! {
                            () = shutdown.recv() => return Ok::<(), sqlx::Error>(()),
                            () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                    }
                }
            }),
    );
    tracing::info!(%addr, "cozmic is listening");
    Ok(Running {
        addr,
        state,
        stop,
        server,
        workers,
    })
}
