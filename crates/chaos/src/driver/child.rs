//! cozmic as a child process: the only way to kill it with `SIGKILL` in the
//! middle of a run and to measure its memory and CPU apart from the
//! harness.
//!
//! The fault hooks must stay impossible to arm from the environment or the
//! arguments of the real cozmic binary, so the child is not `cozmic`: it is
//! the chaos binary itself, started with the hidden argument
//! `--serve-app <spec.json>` ([`SERVE_APP`]). The parent writes the app's
//! [`Config`] (built by the driver exactly as for an in-process run, hooks
//! armed in code) to that file, mode 0600, in the run's private temporary
//! directory: the secrets it holds (the session key, API keys, URLs with
//! passwords) never appear in argv, the environment or a log. The child
//! rebuilds the `Config`, checks that it is the same one (its `Debug` form,
//! secrets redacted, must match: a field added to `Config` and not carried
//! over fails loudly instead of silently running another app), starts
//! `cozmic::start` on the address given, and talks to the parent over
//! its standard streams:
//!
//! * stdout, one line each: `listening <addr>` once it serves, then
//!   `status <json>` ([`ChildStatus`]: the monitor's heals by kind and the
//!   alerts fired) every 250 ms and once more at a graceful exit;
//! * stdin: the line `stop` (or end of file: the parent is gone) shuts it
//!   down gracefully, so no child outlives its harness.
//!
//! The parent side is [`Instance`]: one app instance, started, killed
//! (`SIGKILL`, via [`tokio::process::Child::start_kill`]) and restarted on
//! the same address and database, with its peak RSS (`VmHWM`) and CPU time
//! read from `/proc/<pid>` at the end of each life. What the monitor
//! counted in a life that was killed is known up to its last status line
//! (at most 250 ms old).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cozmic::config::{
    Config, FaultHooks, Healing, LogFormat, OpenAi, Secret, Stripe, UpstreamPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

/// The hidden argument that makes the chaos binary serve the app described
/// by the JSON file that follows it.
pub const SERVE_APP: &str = "--serve-app";

/// How often the child reports its monitor's counts.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// How long a child may take to listen before the start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The app's configuration as the child receives it. Every field of
/// [`Config`] is listed (the conversion destructures it without `..`), so a
/// field added to cozmic's `Config` does not compile here until it is
/// carried over.
#[derive(Debug, Serialize, Deserialize)]
struct ChildSpec {
    bind: SocketAddr,
    data_dir: PathBuf,
    database_url: Option<String>,
    redis_url: Option<String>,
    secret_key: Option<String>,
    admin_token: Option<String>,
    /// API key, base URL, model.
    openai: Option<(String, String, String)>,
    /// API key, base URL.
    stripe: Option<(String, String)>,
    smtp_url: Option<String>,
    mail_from: String,
    secure_cookies: bool,
    https: bool,
    public_origin: Option<String>,
    upstream_max_attempts: u32,
    upstream_attempt_timeout: Duration,
    upstream_deadline: Duration,
    upstream_budget: bool,
    upstream_breaker: bool,
    upstream_throttle: bool,
    healing_on: bool,
    concurrency_limit: bool,
    passwords_limit: bool,
    faults_armed: bool,
    mail_poll: Duration,
    mail_lease: Duration,
    log_json: bool,
    client_ip_header: Option<String>,
    mail_backoff: (Duration, Duration),
    mail_max_attempts: u32,
    payment_check: Duration,
    /// The parent's `format!("{config:?}")` (secrets redacted), checked by
    /// the child against the `Config` it rebuilt.
    debug: String,
}

impl ChildSpec {
    fn from_config(config: &Config) -> Self {
        let debug = format!("{config:?}");
        let expose = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_owned());
        let Config {
            bind,
            data_dir,
            database_url,
            redis_url,
            secret_key,
            admin_token,
            openai,
            stripe,
            smtp_url,
            mail_from,
            secure_cookies,
            upstream,
            healing,
            concurrency_limit,
            passwords_limit,
            faults,
            mail_poll,
            mail_lease,
            log_format,
            client_ip_header,
            mail_backoff,
            mail_max_attempts,
            payment_check,
            https,
            public_origin,
            // Never changed by the harness: the child's defaults (the Debug
            // check below catches a difference).
            login_limits: _,
        } = config;
        let UpstreamPolicy {
            max_attempts,
            attempt_timeout,
            deadline,
            budget,
            breaker,
            throttle,
        } = *upstream;
        Self {
            bind: *bind,
            data_dir: data_dir.clone(),
            database_url: expose(database_url),
            redis_url: expose(redis_url),
            secret_key: expose(secret_key),
            admin_token: expose(admin_token),
            openai: openai.as_ref().map(|o| {
                (
                    o.api_key.expose().to_owned(),
                    o.base_url.clone(),
                    o.model.clone(),
                )
            }),
            stripe: stripe
                .as_ref()
                .map(|s| (s.api_key.expose().to_owned(), s.base_url.clone())),
            smtp_url: expose(smtp_url),
            mail_from: mail_from.clone(),
            secure_cookies: *secure_cookies,
            https: *https,
            public_origin: public_origin.clone(),
            upstream_max_attempts: max_attempts,
            upstream_attempt_timeout: attempt_timeout,
            upstream_deadline: deadline,
            upstream_budget: budget,
            upstream_breaker: breaker,
            upstream_throttle: throttle,
            healing_on: *healing == Healing::On,
            concurrency_limit: *concurrency_limit,
            passwords_limit: *passwords_limit,
            faults_armed: faults.is_armed(),
            mail_poll: *mail_poll,
            mail_lease: *mail_lease,
            log_json: *log_format == LogFormat::Json,
            client_ip_header: client_ip_header.clone(),
            mail_backoff: *mail_backoff,
            mail_max_attempts: *mail_max_attempts,
            payment_check: *payment_check,
            debug,
        }
    }

    /// The `Config` again; an error when it does not match the parent's.
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = Config::new(self.data_dir);
        config.bind = self.bind;
        config.database_url = self.database_url.map(Secret::new);
        config.redis_url = self.redis_url.map(Secret::new);
        config.secret_key = self.secret_key.map(Secret::new);
        config.admin_token = self.admin_token.map(Secret::new);
        config.openai = self.openai.map(|(api_key, base_url, model)| OpenAi {
            api_key: Secret::new(api_key),
            base_url,
            model,
        });
        config.stripe = self.stripe.map(|(api_key, base_url)| Stripe {
            api_key: Secret::new(api_key),
            base_url,
        });
        config.smtp_url = self.smtp_url.map(Secret::new);
        config.mail_from = self.mail_from;
        config.secure_cookies = self.secure_cookies;
        config.https = self.https;
        config.public_origin = self.public_origin;
        config.upstream = UpstreamPolicy {
            max_attempts: self.upstream_max_attempts,
            attempt_timeout: self.upstream_attempt_timeout,
            deadline: self.upstream_deadline,
            budget: self.upstream_budget,
            breaker: self.upstream_breaker,
            throttle: self.upstream_throttle,
        };
        config.healing = if self.healing_on {
            Healing::On
        } else {
            Healing::Off
        };
        config.concurrency_limit = self.concurrency_limit;
        config.passwords_limit = self.passwords_limit;
        // Armed in code, as the in-process driver does: no variable can.
        if self.faults_armed {
            config.faults = FaultHooks::armed();
        }
        config.mail_poll = self.mail_poll;
        config.mail_lease = self.mail_lease;
        config.log_format = if self.log_json {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        config.client_ip_header = self.client_ip_header;
        config.mail_backoff = self.mail_backoff;
        config.mail_max_attempts = self.mail_max_attempts;
        config.payment_check = self.payment_check;
        let rebuilt = format!("{config:?}");
        anyhow::ensure!(
            rebuilt == self.debug,
            "the child's app configuration differs from the parent's (a setting is not carried over by driver/child.rs):\n  parent: {}\n  child:  {rebuilt}",
            self.debug
        );
        Ok(config)
    }

    /// Writes the spec for `config` to `path`, readable by its owner only.
    fn write(config: &Config, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec(&Self::from_config(config))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        use std::io::Write;
        options.open(path)?.write_all(&json)?;
        Ok(())
    }
}

/// What a child's health monitor counted (one `status` line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ChildStatus {
    /// Heals by kind (`HealKind::as_str`).
    pub(super) heals: BTreeMap<String, u64>,
    /// Alerts firing among the recent ones.
    pub(super) alerts_fired: u64,
}

impl ChildStatus {
    pub(super) fn of(monitor: &selfheal::health::Monitor) -> Self {
        let report = monitor.report(Duration::from_secs(3600));
        Self {
            heals: report
                .heals
                .iter()
                .map(|(kind, n)| (kind.as_str().to_owned(), *n))
                .collect(),
            alerts_fired: report
                .recent_alerts
                .iter()
                .filter(|a| a.state == selfheal::health::AlertState::Firing)
                .count() as u64,
        }
    }

    /// Adds `other`'s counts to these.
    pub(super) fn add(&mut self, other: &ChildStatus) {
        for (kind, n) in &other.heals {
            *self.heals.entry(kind.clone()).or_default() += n;
        }
        self.alerts_fired += other.alerts_fired;
    }
}

/// The child's side: serves the app described by the spec file at `path`
/// until told to stop (or until its parent is gone). Called by `main` for
/// [`SERVE_APP`].
pub async fn serve_app(path: &Path) -> anyhow::Result<()> {
    let spec: ChildSpec = serde_json::from_slice(&std::fs::read(path)?)?;
    let config = spec.into_config()?;
    let running = cozmic::start(config).await?;
    println!("listening {}", running.addr());
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(line)) if line.trim() != "stop" => {}
                // `stop`, end of file or a broken pipe: the parent is done.
                _ => break,
            },
            _ = tick.tick() => {
                println!("status {}", serde_json::to_string(&ChildStatus::of(running.state().monitor()))?);
            }
        }
    }
    let monitor = running.state().monitor().clone();
    running.shutdown().await;
    println!(
        "status {}",
        serde_json::to_string(&ChildStatus::of(&monitor))?
    );
    Ok(())
}

/// What `/proc/<pid>` says about a process (Linux only).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    /// User + system CPU time, seconds (at 100 clock ticks per second, the
    /// Linux value on every common architecture).
    pub cpu_secs: f64,
}

impl ProcStats {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; `None` when they
    /// cannot be read (not Linux, or the process is gone).
    pub fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) in parens:
        // utime and stime are the 14th and 15th fields overall.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (utime, stime) = (ticks(11)?, ticks(12)?);
        Some(Self {
            peak_rss_bytes: kib * 1024,
            cpu_secs: (utime + stime) as f64 / 100.0,
        })
    }
}

/// One life of a child: the process and what it reported.
#[derive(Debug)]
struct Life {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    status: Arc<Mutex<ChildStatus>>,
    reader: JoinHandle<()>,
}

/// What the ended lives of an instance add up to.
#[derive(Debug, Clone, Default)]
pub(super) struct Totals {
    /// The monitor's counts, summed over lives.
    pub(super) status: ChildStatus,
    /// The highest peak RSS of any life, bytes (0 when unknown).
    pub(super) peak_rss_bytes: u64,
    /// CPU seconds, summed over lives.
    pub(super) cpu_secs: f64,
    /// Lives started.
    pub(super) starts: u64,
    /// Lives ended by `SIGKILL`.
    pub(super) kills: u64,
}

/// One app instance run as a child process, on a fixed address so that it
/// comes back where clients (and the balancer) expect it.
#[derive(Debug)]
pub(super) struct Instance {
    exe: PathBuf,
    spec: PathBuf,
    addr: SocketAddr,
    life: Option<Life>,
    totals: Totals,
}

impl Instance {
    /// Writes `config` (its `bind` replaced by a free loopback port) to
    /// `spec` and starts the first life of the app from `exe`.
    pub(super) async fn start(
        exe: &Path,
        mut config: Config,
        spec: PathBuf,
    ) -> anyhow::Result<Self> {
        let addr = free_port()?;
        config.bind = addr;
        ChildSpec::write(&config, &spec)?;
        let mut instance = Self {
            exe: exe.to_owned(),
            spec,
            addr,
            life: None,
            totals: Totals::default(),
        };
        instance.restart().await?;
        Ok(instance)
    }

    /// Where it listens.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a new life (none must be running). The port may still be held
    /// for a moment by the killed process' sockets: a start that fails
    /// before listening is retried for a few seconds.
    pub(super) async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.life.is_none(), "the instance is running already");
        let began = Instant::now();
        loop {
            match self.spawn().await {
                Ok(life) => {
                    self.life = Some(life);
                    self.totals.starts += 1;
                    return Ok(());
                }
                Err(error) if began.elapsed() < Duration::from_secs(5) => {
                    tracing::debug!(%error, "the app did not start; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.context("the app child did not start")),
            }
        }
    }

    async fn spawn(&self) -> anyhow::Result<Life> {
        let mut child = Command::new(&self.exe)
            .arg(SERVE_APP)
            .arg(&self.spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.exe.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening ") {
                    return Ok(addr.trim().to_owned());
                }
            }
            anyhow::bail!("the app child exited before listening")
        })
        .await;
        match listening {
            Ok(Ok(addr)) if addr == self.addr.to_string() => {}
            Ok(Ok(addr)) => anyhow::bail!("the app child listens on {addr}, not {}", self.addr),
            Ok(Err(error)) => {
                let _ = child.wait().await;
                return Err(error);
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                anyhow::bail!("the app child did not listen within {START_TIMEOUT:?}");
            }
        }
        let status = Arc::new(Mutex::new(ChildStatus::default()));
        let seen = status.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(json) = line.strip_prefix("status ")
                    && let Ok(now) = serde_json::from_str::<ChildStatus>(json)
                {
                    *seen.lock().expect("status") = now;
                }
            }
        });
        Ok(Life {
            child,
            pid,
            stdin,
            status,
            reader,
        })
    }

    /// Kills the current life with `SIGKILL` and waits for it to be gone;
    /// returns the instant the signal was sent.
    pub(super) async fn kill(&mut self) -> anyhow::Result<Instant> {
        let mut life = self
            .life
            .take()
            .ok_or_else(|| anyhow::anyhow!("no running instance to kill"))?;
        let proc = ProcStats::read(life.pid);
        let killed_at = Instant::now();
        life.child.start_kill()?;
        let exit = life.child.wait().await?;
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            anyhow::ensure!(
                exit.signal() == Some(9),
                "the app child was not killed by SIGKILL: {exit}"
            );
        }
        let _ = (&mut life.reader).await;
        self.totals.kills += 1;
        self.end_life(&life, proc);
        Ok(killed_at)
    }

    /// Stops the current life gracefully (at most 15 s, then `SIGKILL`).
    pub(super) async fn stop(&mut self) {
        let Some(mut life) = self.life.take() else {
            return;
        };
        let proc = ProcStats::read(life.pid);
        let _ = life.stdin.write_all(b"stop\n").await;
        let _ = life.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(15), life.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("the app child did not stop within 15 s; killing it");
            let _ = life.child.start_kill();
            let _ = life.child.wait().await;
        }
        let _ = (&mut life.reader).await;
        self.end_life(&life, proc);
    }

    fn end_life(&mut self, life: &Life, proc: Option<ProcStats>) {
        let status = life.status.lock().expect("status").clone();
        self.totals.status.add(&status);
        if let Some(proc) = proc {
            self.totals.peak_rss_bytes = self.totals.peak_rss_bytes.max(proc.peak_rss_bytes);
            self.totals.cpu_secs += proc.cpu_secs;
        }
    }

    /// What every life so far adds up to, the current one included (its
    /// last status line and `/proc` now).
    pub(super) fn totals(&self) -> Totals {
        let mut totals = self.totals.clone();
        if let Some(life) = &self.life {
            totals.status.add(&life.status.lock().expect("status"));
            if let Some(proc) = ProcStats::read(life.pid) {
                totals.peak_rss_bytes = totals.peak_rss_bytes.max(proc.peak_rss_bytes);
                totals.cpu_secs += proc.cpu_secs;
            }
        }
        totals
    }
}

/// A loopback address with a port free right now.
fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    listener.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_survives_the_trip_through_the_spec() {
        let mut config = Config::new("/tmp/x");
        config.faults = FaultHooks::armed();
        config.healing = Healing::Off;
        config.secret_key = Some(Secret::new("k".repeat(64)));
        config.stripe = Some(Stripe {
            api_key: Secret::new("sk_x"),
            base_url: "http://127.0.0.1:1".into(),
        });
        config.mail_backoff = (Duration::from_millis(250), Duration::from_secs(3));
        config.mail_max_attempts = 1000;
        let spec = ChildSpec::from_config(&config);
        let json = serde_json::to_string(&spec).unwrap();
        let back: ChildSpec = serde_json::from_str(&json).unwrap();
        let rebuilt = back.into_config().unwrap();
        assert_eq!(format!("{rebuilt:?}"), format!("{config:?}"));
        assert!(rebuilt.faults.is_armed());
        assert_eq!(rebuilt.secret_key.unwrap().expose(), "k".repeat(64));
    }

    #[test]
    fn a_setting_not_carried_over_is_refused() {
        let config = Config::new("/tmp/x");
        let mut spec = ChildSpec::from_config(&config);
        spec.debug = spec.debug.replace("mail_poll: 500ms", "mail_poll: 1s");
        assert!(spec.into_config().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn the_spec_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        ChildSpec::write(&Config::new("/tmp/x"), &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_stats_of_this_process_are_read() {
        let stats = ProcStats::read(std::process::id()).unwrap();
        assert!(stats.peak_rss_bytes > 1024 * 1024, "{stats:?}");
    }
}
