//! The load generator of the app overload: visitors' login forms, and
//! logins in a closed loop (the peak) or open-loop Poisson arrivals (the
//! overload), each answer counted by kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::overload::figures::{Got, Sample};

/// A visitor's login form: its CSRF cookie and token.
#[derive(Clone)]
pub(super) struct Form {
    cookie: String,
    csrf: String,
}

/// Everything a login needs.
pub(super) struct Logins {
    pub(super) http: reqwest::Client,
    base: String,
    forms: Vec<Form>,
    accounts: Vec<String>,
    /// What the logins got, by status code (`timeout`, `error`).
    pub(super) answers: std::sync::Mutex<BTreeMap<String, u64>>,
}

const PASSWORD: &str = "chaos-password-123";

/// How long a closed-loop user turned away (`503`) waits before its next
/// login.
const SHED_PAUSE: Duration = Duration::from_millis(20);

/// Students the logins take turns on: the login throttle slows an account
/// with more than 30 attempts in flight, which a rush spread over this many
/// never reaches.
pub(super) const ACCOUNTS: usize = 32;

impl Logins {
    /// A visitor's login form.
    async fn form(http: &reqwest::Client, base: &str) -> anyhow::Result<Form> {
        let page = http.get(format!("{base}/login")).send().await?;
        let cookie = page
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("cozmic_csrf="))
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| anyhow::anyhow!("no CSRF cookie on /login"))?
            .to_owned();
        let csrf = super::super::user::form_value(&page.text().await?, "csrf")
            .ok_or_else(|| anyhow::anyhow!("no CSRF token on /login"))?;
        Ok(Form { cookie, csrf })
    }

    /// Signs up `accounts` students and prepares 8 visitors' forms.
    pub(super) async fn prepare(base: String, accounts: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut forms = Vec::new();
        for _ in 0..8 {
            forms.push(Self::form(&http, &base).await?);
        }
        let mut emails = Vec::new();
        for i in 0..accounts {
            let email = format!("overload{i}@chaos.test");
            let form = &forms[i % forms.len()];
            let answer = http
                .post(format!("{base}/signup"))
                .header(reqwest::header::COOKIE, &form.cookie)
                .header("x-real-ip", client_ip(i))
                .form(&[
                    ("name", format!("Overload User {i}")),
                    ("email", email.clone()),
                    ("password", PASSWORD.to_owned()),
                    ("csrf", form.csrf.clone()),
                ])
                .send()
                .await?;
            anyhow::ensure!(
                answer.status() == reqwest::StatusCode::SEE_OTHER,
                "overload sign-up {i}: {}",
                answer.status()
            );
            emails.push(email);
        }
        Ok(Self {
            http,
            base,
            forms,
            accounts: emails,
            answers: Default::default(),
        })
    }

    /// Login number `n`: what it got.
    pub(super) async fn login(&self, n: usize) -> Got {
        let form = &self.forms[n % self.forms.len()];
        let answer = self
            .http
            .post(format!("{}/login", self.base))
            .header(reqwest::header::COOKIE, &form.cookie)
            .header("x-real-ip", client_ip(n))
            .form(&[
                ("email", self.accounts[n % self.accounts.len()].as_str()),
                ("password", PASSWORD),
                ("csrf", form.csrf.as_str()),
            ])
            .send()
            .await;
        let kind = match &answer {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".to_owned(),
            Err(_) => "error".to_owned(),
        };
        self.note(kind);
        match answer {
            Ok(r) if r.status() == reqwest::StatusCode::SEE_OTHER => Got::Success,
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => Got::Shed,
            _ => Got::Failed,
        }
    }

    /// Counts one answer of kind `kind`.
    pub(super) fn note(&self, kind: String) {
        *self
            .answers
            .lock()
            .expect("answers")
            .entry(kind)
            .or_default() += 1;
    }

    /// `users` users in a closed loop for `duration`: one sample per login.
    pub(super) async fn closed_loop(
        self: &Arc<Self>,
        users: usize,
        duration: Duration,
    ) -> Vec<Sample> {
        let began = Instant::now();
        let mut tasks = Vec::new();
        for user in 0..users {
            let logins = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut n = user;
                while began.elapsed() < duration {
                    let at = Instant::now();
                    let got = logins.login(n).await;
                    samples.push(Sample {
                        arrival: at - began,
                        latency: at.elapsed(),
                        got,
                    });
                    n += users;
                    if got == Got::Shed {
                        // A user turned away comes back a little later,
                        // not within the microsecond: a closed loop that
                        // spins on 503s measures its own spinning.
                        tokio::time::sleep(SHED_PAUSE).await;
                    }
                }
                samples
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap_or_default());
        }
        all
    }

    /// Poisson arrivals at `rate` for `duration`, each waiting at most
    /// `timeout`.
    pub(super) async fn open_loop(
        self: &Arc<Self>,
        rate: f64,
        duration: Duration,
        timeout: Duration,
        seed: u64,
    ) -> Vec<Sample> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let began = Instant::now();
        let mut at = Duration::ZERO;
        let mut tasks = Vec::new();
        for n in 0.. {
            at += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / rate);
            if at >= duration {
                break;
            }
            let scheduled = began + at;
            tokio::time::sleep_until(scheduled.into()).await;
            let logins = self.clone();
            tasks.push(tokio::spawn(async move {
                let got = tokio::time::timeout_at((scheduled + timeout).into(), logins.login(n))
                    .await
                    .unwrap_or_else(|_| {
                        logins.note("timeout".to_owned());
                        Got::Failed
                    });
                Sample {
                    arrival: at,
                    latency: scheduled.elapsed().min(timeout),
                    got,
                }
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            if let Ok(sample) = task.await {
                all.push(sample);
            }
        }
        all
    }
}

/// The address of the `n`th visitor, as the reverse proxy in front of the
/// app (`x-real-ip`) reports it: logins come from many clients, as in a
/// real rush, so the login throttle (which counts attempts in flight per
/// client and per account) sees no single client guessing.
fn client_ip(n: usize) -> String {
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}
