//! PostgreSQL only: real 40001 serialization failures, backends killed
//! mid-transaction, a proxy that loses the reply to COMMIT, and schema
//! healing where PostgreSQL can do more than SQLite (a missing default set in
//! place).
//!
//! Each test works in a schema of its own (see [`Postgres`]); without
//! `SELFHEAL_TEST_POSTGRES_URL` they are skipped locally and fail in CI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use selfheal::db::postgres::BEGIN_SERIALIZABLE;
use selfheal::db::schema::{self, Column, Drift, Index, Schema, Startup, Table};
use selfheal::db::{self, Guard, Runner, TxStep};
use selfheal::health::{HealKind, Monitor};
use selfheal::observe::Fanout;
use selfheal::observe::testing::{Recorded, Recorder};
use selfheal::retry::{Backoff, Budget, Policy};
use sqlx::postgres::{PgPool, PgPoolOptions, PgSslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    Backend, Postgres, in_tasks, reruns, reruns_by_kind, run, schema_check_message,
};

/// A read-modify-write increment: the read decides what is written, so
/// only a re-run of the whole transaction is correct after a conflict.
async fn increment(tx: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    read_modify_write(tx, "SELECT value FROM counter WHERE id = 1").await
}

/// The same under READ COMMITTED: the read locks the row (`FOR UPDATE`),
/// or concurrent increments would be lost.
async fn increment_locked(tx: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    read_modify_write(tx, "SELECT value FROM counter WHERE id = 1 FOR UPDATE").await
}

async fn read_modify_write(tx: &mut sqlx::PgConnection, read: &str) -> Result<i64, sqlx::Error> {
    let value: i64 = sqlx::query_scalar(read).fetch_one(&mut *tx).await?;
    sqlx::query("UPDATE counter SET value = $1 WHERE id = 1")
        .bind(value + 1)
        .execute(&mut *tx)
        .await?;
    Ok(value + 1)
}

const TASKS: usize = 8;
const INCREMENTS: usize = 200;

/// SERIALIZABLE read-modify-write increments, 8 tasks × 200: PostgreSQL
/// aborts conflicting transactions with 40001 and the runner re-runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_increments_survive_40001_and_stay_exact() {
    run("serializable", Duration::from_secs(120), async |pg: &Postgres| {
        pg.counter_table().await;
        let pool = pg.pool_of(TASKS as u32).await;
        let recorder = Recorder::new();
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let runner = Runner::new(pool.clone())
            .with_begin(BEGIN_SERIALIZABLE)
            // Eight writers on one row: the unluckiest transaction loses the
            // race to the other seven several times over (up to ~16 attempts
            // were seen); the default policy allows for that.
            .with_policy(Runner::<sqlx::Postgres>::default_policy())
            .with_observer(Arc::new(Fanout::new(vec![
                recorder.observer(),
                monitor.observer(),
            ])));
        let started = Instant::now();
        let failures = in_tasks(TASKS, INCREMENTS, move || {
            let runner = runner.clone();
            async move {
                runner
                    .run("increment", async |tx| increment(tx).await)
                    .await
            }
        })
        .await;
        let total = pg.counter().await;
        let by_kind = reruns_by_kind(&recorder);
        let serialization_failures = by_kind.get("pg:40001").copied().unwrap_or(0);
        println!(
            "postgres serializable: final {total} of {}, {serialization_failures} re-runs after \
             40001, {} re-runs in all {:?}, {} transaction_rerun heals, at most {} attempts, {:?}",
            TASKS * INCREMENTS,
            reruns(&recorder),
            by_kind,
            monitor
                .report(Duration::from_secs(900))
                .heals
                .get(&HealKind::TransactionRerun)
                .unwrap_or(&0),
            most_attempts(&recorder),
            started.elapsed()
        );
        assert!(
            failures.is_empty(),
            "{} gave up: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        assert_eq!(total, (TASKS * INCREMENTS) as i64);
        assert!(
            serialization_failures > 0,
            "no serialization failure happened"
        );
        pool.close().await;
    })
    .await;
}

/// Kills this test's backends with `pg_terminate_backend` from a side
/// connection at random moments (every 1 to 15 ms) while `tasks` × `n`
/// increments run through `runner`. Returns (successes, the increments
/// whose value came from an earlier attempt resolved by the guard,
/// errors, kills).
async fn under_kills(
    pg: &Postgres,
    runner: Runner<sqlx::Postgres>,
    tasks: usize,
    n: usize,
) -> (u64, u64, Vec<db::TxError<sqlx::Error>>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let admin = pg.admin.clone();
        let app = pg.schema.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut kills = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=15))).await;
                let killed: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM \
                     (SELECT pid FROM pg_stat_activity \
                      WHERE application_name = $1 AND pid <> pg_backend_pid() \
                      ORDER BY random() LIMIT 1) AS victim",
                )
                .bind(&app)
                .fetch_one(&admin)
                .await
                .unwrap();
                kills += killed as u64;
            }
            kills
        })
    };
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let runner = runner.clone();
        handles.push(tokio::spawn(async move {
            let (mut ok, mut resolved, mut errors) = (0u64, 0u64, Vec::new());
            for _ in 0..n {
                // Which attempt's value came back: an earlier one than the
                // last means the guard found that attempt committed. (Owned
                // captures and `async move`: this runs in a spawned task.)
                let runs = Arc::new(AtomicU32::new(0));
                let counted = runs.clone();
                let outcome = runner
                    .run("increment", async move |tx| {
                        let attempt = counted.fetch_add(1, Ordering::Relaxed) + 1;
                        increment_locked(tx).await?;
                        Ok::<_, sqlx::Error>(attempt)
                    })
                    .await;
                match outcome {
                    Ok(attempt) => {
                        ok += 1;
                        if attempt < runs.load(Ordering::Relaxed) {
                            resolved += 1;
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
            (ok, resolved, errors)
        }));
    }
    let (mut ok, mut resolved, mut errors) = (0, 0, Vec::new());
    for handle in handles {
        let (o, r, e) = handle.await.unwrap();
        ok += o;
        resolved += r;
        errors.extend(e);
    }
    stop.store(true, Ordering::Relaxed);
    let kills = killer.await.unwrap();
    (ok, resolved, errors, kills)
}

/// The most attempts a transaction that committed needed.
fn most_attempts(recorder: &Recorder) -> u32 {
    recorder
        .events()
        .iter()
        .filter_map(|e| match e {
            Recorded::Recovered { attempts, .. } => Some(*attempts),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Re-runs after a failed COMMIT (the runner only re-runs after a commit
/// failure when its outcome is unknown or it is transient).
fn reruns_after_commit(recorder: &Recorder) -> usize {
    // The runner's failure messages start with the step.
    recorder.count(
        |e| matches!(e, Recorded::Retry { message, .. } if message.starts_with("commit failed")),
    )
}

fn kill_policy(recorder: &Recorder) -> Policy {
    // A killed connection costs a reconnect; give each run room for a few.
    Runner::<sqlx::Postgres>::default_policy()
        .with_max_attempts(20)
        .unwrap()
        .with_budget(Arc::new(Budget::new(1000, 1.0).unwrap()))
        .with_observer(recorder.observer())
}

/// Backends killed mid-transaction at random moments: with the guard every
/// increment is applied exactly once.
///
/// The same workload without the guard, re-running blindly, is measured
/// too, and applies nothing twice. Why the kills cannot show the duplicate:
/// `pg_terminate_backend` only raises a flag that the backend acts on at
/// its next interrupt check, and committing holds interrupts off. A kill
/// that arrives while the server processes COMMIT therefore takes effect
/// after the commit and its reply; a kill that arrives earlier aborts the
/// transaction, and the client learns it as `FATAL 57P01` in answer to its
/// COMMIT. The runner cannot tell that 57P01 from a lost acknowledgement, so
/// it treats the outcome as unknown (the printed "re-runs after a failed
/// COMMIT"): in every such case the guard found the transaction not
/// committed, and the blind run duplicated nothing. A committed transaction
/// whose acknowledgement is lost needs the loss on the way back to the
/// client, a network fault:
/// `a_commit_whose_reply_is_lost_is_applied_twice_without_the_guard`
/// produces it deterministically with a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_leave_totals_exact_with_the_guard() {
    run("kills", Duration::from_secs(180), async |pg: &Postgres| {
        pg.counter_table().await;
        db::guard::install(&pg.admin).await.unwrap();
        let pool = pg.pool_of(TASKS as u32).await;

        let recorder = Recorder::new();
        let guarded = Runner::new(pool.clone())
            .with_guard(Guard::default())
            .with_policy(kill_policy(&recorder));
        let started = Instant::now();
        let (ok, resolved, errors, kills) = under_kills(pg, guarded, TASKS, INCREMENTS).await;
        let total = pg.counter().await;
        println!(
            "postgres kills, guard: {kills} backends killed, final {total}, {ok} increments \
             succeeded, {} re-runs after a failed COMMIT, {resolved} resolved by the guard, {} \
             gave up, {} re-runs {:?}, {:?}",
            reruns_after_commit(&recorder),
            errors.len(),
            reruns(&recorder),
            reruns_by_kind(&recorder),
            started.elapsed()
        );
        for e in &errors {
            println!("  gave up: {e}");
        }
        assert!(kills > 0, "no backend was killed");
        assert!(reruns(&recorder) > 0);
        // Exact: every success applied once, every give-up not at all (or
        // flagged as unknown, which the guard resolves unless the database
        // stays unreachable).
        let unknown = errors.iter().filter(|e| e.commit_outcome_unknown()).count() as i64;
        assert_eq!(unknown, 0, "{errors:?}");
        assert_eq!(total, ok as i64);
        assert_eq!(ok as usize, TASKS * INCREMENTS, "{errors:?}");

        // Without the guard, re-running blindly after an ambiguous commit.
        sqlx::query("UPDATE counter SET value = 0")
            .execute(&pg.admin)
            .await
            .unwrap();
        let recorder = Recorder::new();
        let blind = Runner::new(pool.clone())
            .assume_idempotent()
            .with_policy(kill_policy(&recorder));
        let (ok, _, errors, kills) = under_kills(pg, blind, TASKS, INCREMENTS / 2).await;
        let total = pg.counter().await;
        println!(
            "postgres kills, no guard, blind re-run: {kills} backends killed, final {total}, \
             {ok} increments succeeded, {} re-runs after a failed COMMIT, {} gave up, {} \
             duplicated, {} re-runs {:?}",
            reruns_after_commit(&recorder),
            errors.len(),
            total - ok as i64,
            reruns(&recorder),
            reruns_by_kind(&recorder),
        );
        pool.close().await;
    })
    .await;
}

/// A TCP proxy on loopback in front of PostgreSQL that, when armed, loses
/// the reply to a simple-query `COMMIT`: a real `commit_unknown_result`.
///
/// - [`CommitDropProxy::arm`]: the COMMIT goes through to the server, the
///   proxy waits for the server's reply (so the commit has happened), then
///   closes both connections without passing the reply on.
/// - [`CommitDropProxy::arm_delayed`]: the proxy hangs up on the client
///   *first*, holds the COMMIT for `delay`, then passes it to the server
///   (which commits) and drops the reply: the commit lands while the client
///   is already re-running.
struct CommitDropProxy {
    addr: SocketAddr,
    armed: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU64>,
    dropped: Arc<AtomicU32>,
}

impl CommitDropProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicU32::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU32::new(0));
        let (a, m, d) = (armed.clone(), delay_ms.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(upstream).await.unwrap();
                tokio::spawn(Self::relay(client, server, a.clone(), m.clone(), d.clone()));
            }
        });
        Self {
            addr,
            armed,
            delay_ms,
            dropped,
        }
    }

    /// Loses the reply of the next COMMIT, after the server committed.
    fn arm(&self) {
        self.delay_ms.store(0, Ordering::SeqCst);
        self.armed.store(1, Ordering::SeqCst);
    }

    /// Hangs up on the client at the next COMMIT, and delivers that COMMIT
    /// to the server `delay` later.
    fn arm_delayed(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
        self.armed.store(1, Ordering::SeqCst);
    }

    async fn relay(
        client: TcpStream,
        server: TcpStream,
        armed: Arc<AtomicU32>,
        delay_ms: Arc<AtomicU64>,
        dropped: Arc<AtomicU32>,
    ) {
        let (mut client_read, client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let cut = Arc::new(AtomicBool::new(false));
        let (hang_up, mut hang_up_rx) = tokio::sync::oneshot::channel::<()>();
        // Server to client, until the reply to the armed COMMIT.
        let replies = {
            let cut = cut.clone();
            tokio::spawn(async move {
                let mut client_write = Some(client_write);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    tokio::select! {
                        _ = &mut hang_up_rx, if client_write.is_some() => {
                            client_write = None;
                        }
                        read = server_read.read(&mut buf) => {
                            let n = match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if cut.load(Ordering::SeqCst) {
                                // The reply to COMMIT: the server has
                                // committed. Swallow it, hang up.
                                return;
                            }
                            let Some(w) = client_write.as_mut() else { return };
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            })
        };
        // Client to server, message by message: the untyped startup
        // message, then typed messages (1 byte type, 4 bytes length).
        let mut len = [0u8; 4];
        if client_read.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        if client_read.read_exact(&mut startup).await.is_err() {
            return;
        }
        if server_write.write_all(&len).await.is_err()
            || server_write.write_all(&startup).await.is_err()
        {
            return;
        }
        loop {
            let mut header = [0u8; 5];
            if client_read.read_exact(&mut header).await.is_err() {
                return;
            }
            let size = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
            let mut body = vec![0u8; size.saturating_sub(4)];
            if client_read.read_exact(&mut body).await.is_err() {
                return;
            }
            let commit = header[0] == b'Q' && body.eq_ignore_ascii_case(b"COMMIT\0");
            let armed_here = commit
                && armed
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if armed_here {
                let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                if !delay.is_zero() {
                    // Hang up on the client now; the COMMIT is still ours.
                    drop(client_read);
                    let _ = hang_up.send(());
                    tokio::time::sleep(delay).await;
                }
                cut.store(true, Ordering::SeqCst);
                let _ = server_write.write_all(&header).await;
                let _ = server_write.write_all(&body).await;
                // Wait for the server's reply to reach us (and be dropped),
                // then close everything: the client never sees it.
                let _ = replies.await;
                dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if server_write.write_all(&header).await.is_err()
                || server_write.write_all(&body).await.is_err()
            {
                return;
            }
        }
    }
}

/// The counter and the guard table in `pg`, a [`CommitDropProxy`] in front
/// of its server, and a one-connection pool through the proxy.
async fn proxied(pg: &Postgres) -> (CommitDropProxy, PgPool) {
    pg.counter_table().await;
    db::guard::install(&pg.admin).await.unwrap();
    let upstream = tokio::net::lookup_host((pg.options.get_host(), pg.options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = CommitDropProxy::start(upstream).await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(
            pg.options
                .clone()
                .host("127.0.0.1")
                .port(proxy.addr.port())
                .ssl_mode(PgSslMode::Disable),
        )
        .await
        .unwrap();
    (proxy, pool)
}

/// The runner's default policy, with 1 ms between attempts.
fn fast_policy() -> Policy {
    Runner::<sqlx::Postgres>::default_policy()
        .with_backoff(Backoff::constant(Duration::from_millis(1)))
}

/// The deterministic duplicate-apply demonstration: the connection drops
/// right after COMMIT reached the server. A runner that re-runs blindly
/// applies the increment twice; the default runner (no guard) refuses to
/// re-run and says the outcome is unknown; the guarded runner finds its id,
/// returns the committed attempt's value, and applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_is_lost_is_applied_twice_without_the_guard() {
    run("lostreply", Duration::from_secs(60), async |pg: &Postgres| {
        let (proxy, pool) = proxied(pg).await;

        // 1. Blind re-run (what retrying a failed commit amounts to).
        let blind = Runner::new(pool.clone())
            .assume_idempotent()
            .with_policy(fast_policy());
        proxy.arm();
        let value = blind
            .run("increment", async |tx| increment(tx).await)
            .await
            .unwrap();
        let total = pg.counter().await;
        println!(
            "lost COMMIT reply, blind re-run: the caller saw success once (value {value}), \
             the counter is {total}: applied twice"
        );
        assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1);
        assert_eq!(total, 2, "the increment was not applied twice");

        // 2. The default runner without a guard: no re-run, an honest error.
        let default = Runner::new(pool.clone()).with_policy(fast_policy());
        proxy.arm();
        let error = default
            .run("increment", async |tx| increment(tx).await)
            .await
            .unwrap_err();
        let total = pg.counter().await;
        println!(
            "lost COMMIT reply, default runner: error after {} attempt ({}), commit outcome \
             unknown: {}, the counter is {total}",
            error.attempts(),
            error.kind(),
            error.commit_outcome_unknown()
        );
        assert_eq!(proxy.dropped.load(Ordering::SeqCst), 2);
        assert!(error.commit_outcome_unknown());
        assert_eq!(error.step(), TxStep::Commit);
        assert_eq!(error.attempts(), 1);
        assert_eq!(total, 3, "the commit did happen");

        // 3. The guard: the next attempt finds the id and returns the value
        //    of the attempt that committed.
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let guarded = Runner::new(pool.clone())
            .with_guard(Guard::default())
            .with_policy(fast_policy())
            .with_observer(monitor.observer());
        proxy.arm();
        let mut runs = 0;
        let value = guarded
            .run("increment", async |tx| {
                runs += 1;
                increment(tx).await
            })
            .await
            .unwrap();
        let total = pg.counter().await;
        println!(
            "lost COMMIT reply, guard: the body ran {runs} time(s), the runner returned {value} \
             (the committed attempt's value), the counter is {total}: applied once"
        );
        assert_eq!(proxy.dropped.load(Ordering::SeqCst), 3);
        assert_eq!(runs, 1, "the guard should have answered before re-running");
        assert_eq!(value, 4);
        assert_eq!(total, 4);
        let report = monitor.report(Duration::from_secs(900));
        assert_eq!(report.heals.get(&HealKind::TransactionRerun), Some(&1));
        pool.close().await;
    })
    .await;
}

/// Schema healing on PostgreSQL: a missing column is added with its
/// default (rows kept), a missing index created, a missing default set; a
/// wrong type is reported and left alone.
#[tokio::test]
async fn schema_drift_is_repaired_or_reported() {
    run("drift", Duration::from_secs(30), async |pg: &Postgres| {
        sqlx::query(
            "CREATE TABLE students (id SERIAL PRIMARY KEY, name TEXT NOT NULL, \
             level TEXT NOT NULL, plan VARCHAR(20))",
        )
        .execute(&pg.admin)
        .await
        .unwrap();
        sqlx::query("INSERT INTO students (name, level) VALUES ('Ada', 'expert'), ('Grace', '7')")
            .execute(&pg.admin)
            .await
            .unwrap();
        let declared = Schema::new().table(
            Table::new("students")
                .column(Column::new("id", "int4").not_null())
                .column(Column::new("name", "text").not_null())
                .column(Column::new("xp", "bigint").not_null().default("0"))
                .column(Column::new("level", "integer").not_null())
                .column(Column::new("plan", "character varying(40)").default("'free'"))
                .index(Index::new("students_xp", ["xp"])),
        );
        let monitor = Monitor::builder().with_global(false).build().unwrap();
        let report = Startup::new(&pg.admin)
            .with_declare(declared.clone())
            .with_monitor(monitor.clone())
            .run()
            .await
            .unwrap();
        println!("{report}");
        assert_eq!(report.repaired.len(), 3, "{report}");
        assert_eq!(report.problems.len(), 1, "{report}");
        assert!(matches!(
            &report.problems[0],
            Drift::WrongType { column, live, .. } if column == "level" && live == "text"
        ));
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, xp, level FROM students ORDER BY id")
                .fetch_all(&pg.admin)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                ("Ada".to_owned(), 0, "expert".to_owned()),
                ("Grace".to_owned(), 0, "7".to_owned())
            ]
        );
        let live = schema::inspect(&pg.admin, "students")
            .await
            .unwrap()
            .unwrap();
        assert!(live.indexes.iter().any(|i| i.name == "students_xp"));
        assert!(
            live.columns
                .iter()
                .find(|c| c.name == "plan")
                .unwrap()
                .default
                .is_some()
        );
        assert_eq!(
            monitor
                .report(Duration::from_secs(900))
                .heals
                .get(&HealKind::SchemaRepaired),
            Some(&3)
        );
        assert!(!monitor.run_checks().await);
        assert!(schema_check_message(&monitor).contains("students.level is text"));
        // Nothing left to repair the second time; the problem stays.
        let again = schema::heal(&pg.admin, &declared, None).await.unwrap();
        assert!(again.repaired.is_empty());
        assert_eq!(again.problems.len(), 1);
    })
    .await;
}

/// The race the guard's own row closes: the client loses its connection
/// during COMMIT, looks the id up (not there yet: the COMMIT is still on its
/// way), and re-runs; the late COMMIT then lands. The re-run's insert of
/// the same id finds it committed, the re-run is rolled back, and the
/// runner returns the value of the attempt that did commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_still_in_flight_when_the_guard_looks_is_caught_by_its_row() {
    run(
        "inflight",
        Duration::from_secs(60),
        async |pg: &Postgres| {
            let (proxy, pool) = proxied(pg).await;
            let monitor = Monitor::builder().with_global(false).build().unwrap();
            let guarded = Runner::new(pool.clone())
                .with_guard(Guard::default())
                .with_policy(fast_policy())
                .with_observer(monitor.observer());
            proxy.arm_delayed(Duration::from_millis(500));
            let runs = AtomicU32::new(0);
            let value = guarded
                .run("increment", async |tx| {
                    runs.fetch_add(1, Ordering::Relaxed);
                    // READ COMMITTED: the row lock makes the re-run wait for
                    // the first attempt, whose COMMIT is held by the proxy.
                    increment_locked(tx).await
                })
                .await
                .unwrap();
            let total = pg.counter().await;
            let runs = runs.load(Ordering::Relaxed);
            println!(
                "COMMIT in flight during the guard's lookup: the body ran {runs} times, the runner \
             returned {value}, the counter is {total}: applied once"
            );
            assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1);
            assert_eq!(
                runs, 2,
                "the re-run should have started before the late commit"
            );
            assert_eq!(value, 1);
            assert_eq!(total, 1);
            pool.close().await;
        },
    )
    .await;
}
