//! Login throttling: how many wrong passwords a client may try, and for
//! which account, before it has to wait.
//!
//! ## Why throttle, and why argon2 is not enough
//!
//! A login form that accepts unlimited guesses lets credential stuffing
//! (leaked email/password pairs tried one after the other) and password
//! spraying (one common password tried against many accounts) run at full
//! speed. A slow password hash is a brake, but it is paid by *us*: every
//! guess costs the server tens of milliseconds of CPU and tens of MiB of
//! memory. So failures are counted, and past a budget the answer is an
//! immediate `429` with `Retry-After`, decided *before* the password is
//! verified: a throttled guess costs a hash-map lookup.
//!
//! ## Three budgets, and why only two of them refuse
//!
//! A budget keyed by account alone is what most tutorials show, and it is a
//! denial-of-service tool: anyone who knows a victim's email can lock the
//! victim out by failing on purpose. A budget keyed by address alone lets a
//! botnet (or an IPv6 block) guess one account from many addresses. So
//! [`LoginThrottle`] keeps three:
//!
//! | budget | default | past it |
//! |---|---|---|
//! | per account **and** client | 5 failures, then 1 per minute | `429` |
//! | per client (all accounts) | 30 failures, then 1 every 2 s | `429` |
//! | per account (all clients) | 30 failures, then 1 every 20 s | each attempt is *slowed* (up to 2 s), never refused |
//!
//! The first stops guessing one account from one place; the second stops
//! spraying many accounts from one place; both are charged to the
//! attacker's own address, so they cannot lock anyone else out: the victim,
//! signing in from their own address, has budgets of their own. The third
//! sees guesses for one account from many places; refusing there would
//! hand the attacker the lockout again, so it only adds a delay, which
//! slows an attacker that waits for answers and shows on the monitor. (An
//! attacker with thousands of addresses is a distributed attack: rate
//! limiting at the edge is the answer to that, as for every other
//! distributed attack.)
//!
//! A "client" is an address as [`ClientKey`] tells it: the TCP peer, or a
//! header your trusted proxy sets; an IPv6 address counts as its /64, so
//! drawing a new address from one's own prefix buys nothing.
//!
//! ## Failures, not attempts
//!
//! Only failures spend a budget: a student who types the right password
//! never gets closer to a lockout. To keep parallel guesses from slipping
//! through while the first ones are still being verified, an attempt is
//! charged when it [begins](LoginThrottle::begin) and refunded when it
//! turns out right ([`Attempt::succeeded`]) or could not be decided (an
//! [`Attempt`] dropped without a verdict: the database was down, the
//! hashing gate was full). A refused attempt is charged nothing, so
//! hammering a closed door does not keep it closed longer.
//!
//! An unknown account is throttled exactly like a known one: the budgets
//! never say which emails have accounts.
//!
//! ## Bounded memory
//!
//! A hostile client can send unlimited distinct emails from many
//! addresses, so no table may grow with them. Keys are 64-bit hashes
//! (seeded per process: nobody can aim for collisions) of the account and
//! the client, never the email itself; each table holds at most
//! [`max_keys`](LoginThrottle::with_max_keys) of them (65 536 by default,
//! about 2 MiB per table). A key whose budget is full again is the same as
//! no key, so when a table is full those are dropped first; if that is not
//! enough, the half of the keys closest to a full budget goes (the clients
//! least throttled lose the least).
//!
//! ## Reported, never the server's health
//!
//! Every refusal is an [`Event::Throttled`] on the one channel: the monitor
//! counts it ([`Report::throttled`](crate::health::Report::throttled), the
//! dashboard, `selfheal_throttled_total`), and it never moves the status or
//! fires an alert: a client's input is not the server's health. The email
//! is never logged.
//!
//! One clock: tokio's, so tests run the minute-long budgets under
//! `tokio::time::pause()`.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::request::Parts;

use super::client::ClientKey;
use crate::health::ClientId;
use crate::observe::{self, Event, Observer};
use crate::sync::lock;

/// One budget: `burst` failures at once, then one more every `refill`
/// (a token bucket, computed as GCRA: one timestamp per key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    burst: u32,
    refill: Duration,
}

/// A [`Limit`] that could not work: no failure allowed at all, or a refill
/// period under a millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a throttle limit needs a burst of at least 1 and a refill period of at least 1 ms")]
pub struct LimitError;

impl Limit {
    /// `burst` failures, then one more every `refill`. Fails for a burst of
    /// 0 or a refill under a millisecond.
    pub const fn new(burst: u32, refill: Duration) -> Result<Self, LimitError> {
        if burst == 0 || refill.as_millis() == 0 {
            return Err(LimitError);
        }
        Ok(Self { burst, refill })
    }

    /// Failures allowed at once.
    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// The time for one more.
    pub const fn refill(&self) -> Duration {
        self.refill
    }

    fn interval(&self) -> u64 {
        self.refill.as_nanos().min(u64::MAX as u128) as u64
    }

    fn capacity(&self) -> u64 {
        self.interval().saturating_mul(u64::from(self.burst))
    }
}

/// Which budget refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// Too many failures for this account from this client.
    AccountAndClient,
    /// Too many failures from this client, whatever the account.
    Client,
}

/// An attempt refused: the client must wait `retry_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// How long until one more attempt is allowed (at least one second).
    pub retry_after: Duration,
    /// Which budget is spent.
    pub scope: Scope,
}

impl Throttled {
    /// `retry_after` in whole seconds, rounded up: for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs.max(1)
        }
    }
}

/// Counts failed sign-ins per account and client and refuses guessing: per
/// account and client ([`PER_ACCOUNT_AND_CLIENT`](Self::PER_ACCOUNT_AND_CLIENT),
/// refuses), per client ([`PER_CLIENT`](Self::PER_CLIENT), refuses) and per
/// account ([`PER_ACCOUNT`](Self::PER_ACCOUNT), only slows: nobody can lock a
/// student out from elsewhere). Cheap to clone; clones share the counts.
///
/// ```
/// use selfheal::web::LoginThrottle;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let throttle = LoginThrottle::new("login");
/// let client = Some(selfheal::health::ClientId::of("203.0.113.9"));
/// for _ in 0..5 {
///     let attempt = throttle.begin("ada@example.com", client).await.unwrap();
///     // ... the password was wrong:
///     attempt.failed();
/// }
/// let refused = throttle.begin("ada@example.com", client).await.unwrap_err();
/// assert_eq!(refused.retry_after_secs(), 60);
/// // Another client, the right password: signs in.
/// let other = Some(selfheal::health::ClientId::of("198.51.100.7"));
/// throttle.begin("ada@example.com", other).await.unwrap().succeeded();
/// # }
/// ```
#[derive(Clone)]
pub struct LoginThrottle {
    operation: Arc<str>,
    per_account_and_client: Limit,
    per_client: Limit,
    per_account: Limit,
    max_delay: Duration,
    max_keys: usize,
    observer: Option<Arc<dyn Observer>>,
    client_key: ClientKey,
    state: Arc<State>,
}

impl fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("operation", &self.operation)
            .field("per_account_and_client", &self.per_account_and_client)
            .field("per_client", &self.per_client)
            .field("per_account", &self.per_account)
            .field("max_delay", &self.max_delay)
            .field("max_keys", &self.max_keys)
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

struct State {
    hasher: foldhash::quality::RandomState,
    origin: tokio::time::Instant,
    tables: Mutex<Tables>,
}

impl State {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            hasher: foldhash::quality::RandomState::default(),
            origin: tokio::time::Instant::now(),
            tables: Mutex::new(Tables::default()),
        })
    }
}

#[derive(Default)]
struct Tables {
    pair: Table,
    client: Table,
    account: Table,
}

/// The keys of one attempt, hashed.
#[derive(Clone, Copy, Debug)]
struct Keys {
    pair: u64,
    client: u64,
    account: u64,
}

impl LoginThrottle {
    /// The default per-account-and-client budget: 5 failures, then 1 per minute.
    pub const PER_ACCOUNT_AND_CLIENT: Limit = Limit {
        burst: 5,
        refill: Duration::from_secs(60),
    };
    /// The default per-client budget: 30 failures, then 1 every 2 s.
    pub const PER_CLIENT: Limit = Limit {
        burst: 30,
        refill: Duration::from_secs(2),
    };
    /// The default per-account budget (it slows, never refuses): 30
    /// failures, then 1 every 20 s.
    pub const PER_ACCOUNT: Limit = Limit {
        burst: 30,
        refill: Duration::from_secs(20),
    };

    /// A throttle for the sign-in called `operation` (the name its refusals
    /// are reported under), with the default budgets, a 2 s maximum delay,
    /// 65 536 keys per table, [`ClientKey::PeerAddress`], and refusals
    /// reported to the global observer.
    pub fn new(operation: impl Into<Arc<str>>) -> Self {
        Self {
            operation: operation.into(),
            per_account_and_client: Self::PER_ACCOUNT_AND_CLIENT,
            per_client: Self::PER_CLIENT,
            per_account: Self::PER_ACCOUNT,
            max_delay: Duration::from_secs(2),
            max_keys: 65_536,
            observer: None,
            client_key: ClientKey::PeerAddress,
            state: State::new(),
        }
    }

    /// The budget of one account from one client (refuses).
    pub fn with_per_account_and_client(mut self, limit: Limit) -> Self {
        self.per_account_and_client = limit;
        self.reset()
    }

    /// The budget of one client over all accounts (refuses).
    pub fn with_per_client(mut self, limit: Limit) -> Self {
        self.per_client = limit;
        self.reset()
    }

    /// The budget of one account over all clients (slows, never refuses),
    /// and the longest delay it adds to one attempt.
    pub fn with_per_account(mut self, limit: Limit, max_delay: Duration) -> Self {
        self.per_account = limit;
        self.max_delay = max_delay;
        self.reset()
    }

    /// The most keys each table holds (at least 16). Default 65 536.
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(16);
        self.reset()
    }

    /// Reports refusals to `observer` (a [`Monitor`](crate::health::Monitor)
    /// in an `Arc`) instead of the global observer.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// How clients are told apart. Default [`ClientKey::PeerAddress`]
    /// (serve with `into_make_service_with_connect_info::<SocketAddr>()`);
    /// behind a reverse proxy, [`ClientKey::Header`] with the header it
    /// sets. Never a header a client can set itself.
    pub fn with_client_key(mut self, key: ClientKey) -> Self {
        self.client_key = key;
        self
    }

    /// The client of a request, as this throttle tells clients apart
    /// (`None` when the request says nothing: served without connect info).
    pub fn client_of(&self, parts: &Parts) -> Option<ClientId> {
        self.client_key
            .capture_parts(&parts.headers, &parts.extensions)
            .id()
    }

    /// Keys currently held, per table (account and client, client,
    /// account): at most [`with_max_keys`](Self::with_max_keys) each.
    pub fn keys_held(&self) -> (usize, usize, usize) {
        let tables = lock(&self.state.tables);
        (
            tables.pair.map.len(),
            tables.client.map.len(),
            tables.account.map.len(),
        )
    }

    fn reset(mut self) -> Self {
        self.state = State::new();
        self
    }

    fn now(&self) -> u64 {
        // + 1: a stored 0 would read as "never seen".
        self.state.origin.elapsed().as_nanos().min(u64::MAX as u128) as u64 + 1
    }

    fn keys(&self, account: &str, client: Option<ClientId>) -> Keys {
        let client = client.map(|c| c.0);
        let hasher = &self.state.hasher;
        Keys {
            pair: hasher.hash_one((account, client)),
            client: hasher.hash_one(client),
            account: hasher.hash_one(account),
        }
    }

    /// Begins a sign-in to `account` (as the login looks it up: a
    /// normalised email, say) from `client`: refused with [`Throttled`] when
    /// a budget is spent, before any password work. Otherwise the attempt
    /// is charged (and, when the account itself is over its budget, slowed
    /// by up to the maximum delay); tell it how it went with
    /// [`Attempt::failed`] or [`Attempt::succeeded`].
    pub async fn begin(
        &self,
        account: &str,
        client: Option<ClientId>,
    ) -> Result<Attempt, Throttled> {
        let keys = self.keys(account, client);
        let now = self.now();
        let (account_charged, delay) = {
            let mut tables = lock(&self.state.tables);
            let pair = tables
                .pair
                .wait(keys.pair, now, self.per_account_and_client);
            let by_client = tables.client.wait(keys.client, now, self.per_client);
            let refused = match (pair, by_client) {
                (0, 0) => None,
                (pair, by_client) if pair >= by_client => Some((pair, Scope::AccountAndClient)),
                (_, by_client) => Some((by_client, Scope::Client)),
            };
            if let Some((wait, scope)) = refused {
                drop(tables);
                let refused = Throttled {
                    retry_after: Duration::from_nanos(wait).max(Duration::from_secs(1)),
                    scope,
                };
                observe::emit(
                    self.observer.as_deref(),
                    &Event::Throttled {
                        operation: &self.operation,
                        client,
                        retry_after: refused.retry_after,
                    },
                );
                return Err(refused);
            }
            let max_keys = self.max_keys;
            tables
                .pair
                .charge(keys.pair, now, self.per_account_and_client, max_keys);
            tables
                .client
                .charge(keys.client, now, self.per_client, max_keys);
            let wait = tables.account.wait(keys.account, now, self.per_account);
            if wait == 0 {
                tables
                    .account
                    .charge(keys.account, now, self.per_account, max_keys);
                (true, Duration::ZERO)
            } else {
                (false, Duration::from_nanos(wait).min(self.max_delay))
            }
        };
        let attempt = Attempt {
            throttle: self.clone(),
            keys,
            account_charged,
            decided: false,
        };
        if !delay.is_zero() {
            tracing::debug!(
                target: "selfheal",
                operation = &*self.operation,
                delay_ms = delay.as_millis() as u64,
                "failed sign-ins for one account from many clients: attempt slowed"
            );
            tokio::time::sleep(delay).await;
        }
        Ok(attempt)
    }

    fn refund(&self, keys: Keys, account_charged: bool) {
        let now = self.now();
        let mut tables = lock(&self.state.tables);
        tables
            .pair
            .refund(keys.pair, now, self.per_account_and_client);
        tables.client.refund(keys.client, now, self.per_client);
        if account_charged {
            tables.account.refund(keys.account, now, self.per_account);
        }
    }
}

/// One sign-in attempt let through by [`LoginThrottle::begin`]. Dropped
/// without a verdict (the check could not be made: the database was down,
/// the request was cancelled), it is refunded like a success.
#[must_use = "tell the throttle whether the password was right"]
pub struct Attempt {
    throttle: LoginThrottle,
    keys: Keys,
    account_charged: bool,
    decided: bool,
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("operation", &self.throttle.operation)
            .finish_non_exhaustive()
    }
}

impl Attempt {
    /// The password was wrong (or the account unknown): the attempt stays
    /// charged.
    pub fn failed(mut self) {
        self.decided = true;
    }

    /// The password was right: the attempt is refunded.
    pub fn succeeded(self) {
        // Dropping refunds.
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.decided {
            self.throttle.refund(self.keys, self.account_charged);
        }
    }
}

/// One budget's keys: each holds its GCRA "theoretical arrival time", in
/// nanoseconds on the throttle's clock. A key whose time is not after now
/// has its full budget, the same as no key.
#[derive(Default)]
struct Table {
    map: HashMap<u64, u64, foldhash::fast::RandomState>,
}

impl Table {
    /// 0 when one more failure fits `limit` now, else the nanoseconds until
    /// it does.
    fn wait(&self, key: u64, now: u64, limit: Limit) -> u64 {
        let tat = self.map.get(&key).copied().unwrap_or(0).max(now);
        let next = tat.saturating_add(limit.interval());
        next.saturating_sub(now).saturating_sub(limit.capacity())
    }

    fn charge(&mut self, key: u64, now: u64, limit: Limit, max_keys: usize) {
        if !self.map.contains_key(&key) && self.map.len() >= max_keys {
            self.make_room(now, max_keys);
        }
        let tat = self.map.entry(key).or_insert(0);
        *tat = (*tat).max(now).saturating_add(limit.interval());
    }

    fn refund(&mut self, key: u64, now: u64, limit: Limit) {
        if let Some(tat) = self.map.get_mut(&key) {
            *tat = tat.saturating_sub(limit.interval());
            if *tat <= now {
                self.map.remove(&key);
            }
        }
    }

    /// Drops the keys whose budget is full again; if the table is still
    /// full, the half closest to a full budget.
    #[cold]
    fn make_room(&mut self, now: u64, max_keys: usize) {
        self.map.retain(|_, tat| *tat > now);
        if self.map.len() < max_keys {
            return;
        }
        let mut by_time: Vec<(u64, u64)> = self.map.iter().map(|(k, t)| (*t, *k)).collect();
        by_time.sort_unstable();
        for (_, key) in &by_time[..by_time.len() / 2] {
            self.map.remove(key);
        }
        tracing::warn!(
            target: "selfheal",
            kept = self.map.len(),
            "login throttle table full: the keys closest to a full budget were dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(n: u8) -> Option<ClientId> {
        Some(ClientId::of(std::net::IpAddr::from([203, 0, 113, n])))
    }

    #[test]
    fn limits_refuse_what_cannot_work() {
        assert_eq!(Limit::new(0, Duration::from_secs(1)), Err(LimitError));
        assert_eq!(Limit::new(3, Duration::from_micros(10)), Err(LimitError));
        assert!(Limit::new(1, Duration::from_millis(1)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn one_account_from_one_client_is_refused_after_five_and_refills_once_a_minute() {
        let throttle = LoginThrottle::new("login");
        for _ in 0..5 {
            throttle.begin("ada", client(1)).await.unwrap().failed();
        }
        let refused = throttle.begin("ada", client(1)).await.unwrap_err();
        assert_eq!(refused.scope, Scope::AccountAndClient);
        assert_eq!(refused.retry_after_secs(), 60);
        // Refusals are free: hammering does not push the time back.
        for _ in 0..100 {
            throttle.begin("ada", client(1)).await.unwrap_err();
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            throttle
                .begin("ada", client(1))
                .await
                .unwrap_err()
                .retry_after_secs(),
            30
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        throttle.begin("ada", client(1)).await.unwrap().failed();
        throttle.begin("ada", client(1)).await.unwrap_err();
        // The victim, from elsewhere, and the attacker's other accounts: open.
        throttle.begin("ada", client(2)).await.unwrap().succeeded();
        throttle.begin("bob", client(1)).await.unwrap().failed();
    }

    #[tokio::test(start_paused = true)]
    async fn successes_and_undecided_attempts_cost_nothing() {
        let throttle = LoginThrottle::new("login");
        for _ in 0..50 {
            throttle.begin("ada", client(1)).await.unwrap().succeeded();
            drop(throttle.begin("ada", client(1)).await.unwrap());
        }
        assert_eq!(throttle.keys_held(), (0, 0, 0), "all refunded");
        // Parallel attempts are charged as they begin: the sixth waits.
        let held: Vec<Attempt> = begin_many(&throttle, 5).await;
        throttle.begin("ada", client(1)).await.unwrap_err();
        drop(held);
        throttle.begin("ada", client(1)).await.unwrap().failed();
    }

    async fn begin_many(throttle: &LoginThrottle, n: usize) -> Vec<Attempt> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(throttle.begin("ada", client(1)).await.unwrap());
        }
        held
    }

    #[tokio::test(start_paused = true)]
    async fn spraying_many_accounts_from_one_client_is_refused() {
        let throttle = LoginThrottle::new("login");
        for n in 0..30 {
            throttle
                .begin(&format!("user{n}"), client(1))
                .await
                .unwrap()
                .failed();
        }
        let refused = throttle.begin("user99", client(1)).await.unwrap_err();
        assert_eq!(refused.scope, Scope::Client);
        assert_eq!(refused.retry_after_secs(), 2);
        throttle.begin("user99", client(2)).await.unwrap().failed();
    }

    #[tokio::test(start_paused = true)]
    async fn one_account_from_many_clients_is_slowed_never_refused() {
        let throttle = LoginThrottle::new("login");
        for n in 0..30u8 {
            throttle.begin("ada", client(n)).await.unwrap().failed();
        }
        // Over the account's budget: let through after a delay.
        let start = tokio::time::Instant::now();
        let attempt = throttle.begin("ada", client(200)).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "capped at max_delay"
        );
        attempt.succeeded();
        let start = tokio::time::Instant::now();
        throttle.begin("ada", client(201)).await.unwrap().failed();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Another account is not slowed.
        let start = tokio::time::Instant::now();
        throttle.begin("bob", client(200)).await.unwrap().failed();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_reported_and_move_no_status() {
        let monitor = crate::health::Monitor::builder()
            .with_global(false)
            .build()
            .unwrap();
        let throttle = LoginThrottle::new("login").with_observer(Arc::new(monitor.clone()));
        for n in 0..10u8 {
            for _ in 0..20 {
                if let Ok(attempt) = throttle.begin("ada", client(n)).await {
                    attempt.failed();
                }
            }
        }
        monitor.evaluate();
        let report = monitor.report(Duration::from_secs(900));
        assert_eq!(report.throttled, 10 * 15);
        assert_eq!(report.total_errors, 0);
        assert_eq!(monitor.status(), crate::health::Status::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn tables_stay_bounded_whatever_the_keys() {
        let throttle = LoginThrottle::new("login").with_max_keys(1000);
        for n in 0..20_000u32 {
            let who = Some(ClientId::of(n));
            if let Ok(attempt) = throttle.begin(&format!("user{n}@example.com"), who).await {
                attempt.failed();
            }
        }
        let (pair, by_client, account) = throttle.keys_held();
        assert!(pair <= 1000 && by_client <= 1000 && account <= 1000);
        assert!(pair >= 500, "{pair}: a full table keeps half");
        // Keys whose budget is full again are dropped first, and a recent
        // guesser is still held.
        for _ in 0..5 {
            throttle.begin("ada", client(1)).await.unwrap().failed();
        }
        throttle.begin("ada", client(1)).await.unwrap_err();
    }
}
