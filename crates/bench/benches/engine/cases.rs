//! The three cases: a success, one failure then a success, a breaker's admission.

use super::*;

pub(crate) fn case_a_success(bench: &mut Bench) {
    const CASE: &str = "a_success";

    bench.add(CASE, "direct call", Role::Baseline, is_42, || {
        block_on(op_ok(black_box(INPUT))).ok()
    });

    // Policy::default(): budget on; an observer attached.
    let policy = Policy::default().with_observer(noop_observer());
    let p = policy.clone();
    bench.add(
        CASE,
        "selfheal Policy::retry",
        Role::Selfheal,
        is_42,
        move || block_on(p.retry(|| op_ok(black_box(INPUT)))).ok(),
    );
    bench.add(
        CASE,
        "selfheal Policy::retry_named",
        Role::Selfheal,
        is_42,
        move || block_on(policy.retry_named("bench_op", || op_ok(black_box(INPUT)))).ok(),
    );

    let layer = selfheal::retry::RetryLayer::new(Policy::default().with_observer(noop_observer()));
    let mut layered_svc = tower::Layer::layer(&layer, tower::service_fn(op_ok));
    bench.add(
        CASE,
        "selfheal RetryLayer (tower middleware)",
        Role::Info,
        is_42,
        move || block_on(tower_call(&mut layered_svc, black_box(INPUT))).ok(),
    );

    let mut tower_svc =
        tower::retry::Retry::new(TowerAttempts { retries_left: 2 }, tower::service_fn(op_ok));
    bench.add(CASE, "tower retry", Role::Peer, is_42, move || {
        block_on(tower_call(&mut tower_svc, black_box(INPUT))).ok()
    });

    let (clock, driver) = seatbelt_clock();
    let seatbelt_svc = seatbelt_retry(&clock, op_ok);
    bench.add(CASE, "seatbelt retry", Role::Peer, is_42, move || {
        let _keep = &driver;
        block_on(layered::Service::execute(&seatbelt_svc, black_box(INPUT))).ok()
    });

    bench.add(CASE, "backon", Role::Peer, is_42, || {
        use backon::Retryable;
        let backoff = backon::ConstantBuilder::new()
            .with_delay(Duration::ZERO)
            .with_max_times(2);
        block_on((|| op_ok(black_box(INPUT))).retry(backoff)).ok()
    });

    let mut tr_svc = tower_resilience_retry(tower::service_fn(op_ok));
    bench.add(
        CASE,
        "tower-resilience retry",
        Role::Peer,
        is_42,
        move || block_on(tower_call(&mut tr_svc, black_box(INPUT))).ok(),
    );
}

pub(crate) fn case_b_fail_once(bench: &mut Bench) {
    const CASE: &str = "b_fail_once";

    bench.add(
        CASE,
        "hand-written loop",
        Role::Baseline,
        failed_once,
        || {
            block_on(async {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match op_flaky(black_box(INPUT)).await {
                        Err(_) if attempts < 3 => continue,
                        outcome => return outcome,
                    }
                }
            })
            .ok()
        },
    );

    // A budget that one failure per success does not drain (ratio 1: a success
    // earns back the token its failed attempt spent). The default budget
    // (ratio 0.5) rightly stops retrying an operation whose every call fails
    // once: after ~20 calls it gives up, which is not this case.
    let budget = Arc::new(Budget::new(20, 1.0).expect("valid budget"));
    let policy = Policy::default()
        .with_backoff(Backoff::immediate())
        .with_budget(budget)
        .with_observer(noop_observer());
    let p = policy.clone();
    bench.add(
        CASE,
        "selfheal Policy::retry",
        Role::Selfheal,
        failed_once,
        move || block_on(p.retry(|| op_flaky(black_box(INPUT)))).ok(),
    );
    let p = policy.clone();
    bench.add(
        CASE,
        "selfheal Policy::retry_named",
        Role::Selfheal,
        failed_once,
        move || block_on(p.retry_named("bench_op", || op_flaky(black_box(INPUT)))).ok(),
    );
    let unbudgeted = policy.clone().without_budget();
    bench.add(
        CASE,
        "selfheal Policy::retry, no budget",
        Role::Info,
        failed_once,
        move || block_on(unbudgeted.retry(|| op_flaky(black_box(INPUT)))).ok(),
    );

    // The same policy reporting to the global observer (what a policy without
    // `with_observer` does once the health monitor is installed).
    selfheal::observe::set_global(noop_observer());
    let global = Policy::default()
        .with_backoff(Backoff::immediate())
        .with_budget(Arc::new(Budget::new(20, 1.0).expect("valid budget")));
    bench.add(
        CASE,
        "selfheal Policy::retry, global observer",
        Role::Info,
        failed_once,
        move || block_on(global.retry(|| op_flaky(black_box(INPUT)))).ok(),
    );
    // The budget's own cost in this case: a transient failure withdraws a
    // token, the success deposits one (two atomic read-modify-writes).
    let budget = Arc::new(Budget::new(20, 1.0).expect("valid budget"));
    bench.add(
        CASE,
        "Budget::withdraw + Budget::deposit alone",
        Role::Info,
        |allowed| *allowed,
        move || {
            let allowed = budget.withdraw();
            budget.deposit();
            allowed
        },
    );
    let layer = selfheal::retry::RetryLayer::new(policy);
    let mut layered_svc = tower::Layer::layer(&layer, tower::service_fn(op_flaky));
    bench.add(
        CASE,
        "selfheal RetryLayer (tower middleware)",
        Role::Info,
        failed_once,
        move || block_on(tower_call(&mut layered_svc, black_box(INPUT))).ok(),
    );

    let mut tower_svc = tower::retry::Retry::new(
        TowerAttempts { retries_left: 2 },
        tower::service_fn(op_flaky),
    );
    bench.add(CASE, "tower retry", Role::Peer, failed_once, move || {
        block_on(tower_call(&mut tower_svc, black_box(INPUT))).ok()
    });

    let (clock, driver) = seatbelt_clock();
    let seatbelt_svc = seatbelt_retry(&clock, op_flaky);
    bench.add(CASE, "seatbelt retry", Role::Peer, failed_once, move || {
        let _keep = &driver;
        block_on(layered::Service::execute(&seatbelt_svc, black_box(INPUT))).ok()
    });

    // backon and tower-resilience sleep through tokio even for a zero delay,
    // which waits for the timer's next 1 ms tick: they need a runtime.
    let rt = Rc::new(current_thread_runtime());
    let backoff = backon::ConstantBuilder::new()
        .with_delay(Duration::ZERO)
        .with_max_times(2);
    let runtime = rt.clone();
    bench.add(
        CASE,
        "backon (tokio runtime)",
        Role::Peer,
        failed_once,
        move || {
            use backon::Retryable;
            runtime
                .block_on((|| op_flaky(black_box(INPUT))).retry(backoff))
                .ok()
        },
    );
    bench.add(
        CASE,
        "backon, no-op sleeper (not its default)",
        Role::Info,
        failed_once,
        move || {
            use backon::Retryable;
            block_on(
                (|| op_flaky(black_box(INPUT)))
                    .retry(backoff)
                    .sleep(|_| ready(())),
            )
            .ok()
        },
    );

    let mut tr_svc = tower_resilience_retry(tower::service_fn(op_flaky));
    bench.add(
        CASE,
        "tower-resilience retry (tokio runtime)",
        Role::Peer,
        failed_once,
        move || rt.block_on(tower_call(&mut tr_svc, black_box(INPUT))).ok(),
    );
}

pub(crate) fn case_c_breaker(bench: &mut Bench) {
    const CASE: &str = "c_breaker";

    bench.add(CASE, "direct call (reference)", Role::Info, is_42, || {
        block_on(op_ok(black_box(INPUT))).ok()
    });

    // selfheal, in both trip modes, observer attached. Failure-ratio mode
    // (the default) reads the clock once per recorded outcome: the clock rows
    // below give that read's cost on its own.
    let ratio = Breaker::builder("bench")
        .with_observer(noop_observer())
        .build()
        .expect("valid breaker");
    let consecutive = Breaker::builder("bench")
        .with_consecutive_failures(5)
        .with_observer(noop_observer())
        .build()
        .expect("valid breaker");
    for (mode, breaker) in [("failure ratio", ratio), ("consecutive", consecutive)] {
        let b = breaker.clone();
        bench.add(
            CASE,
            &format!("selfheal try_acquire + success ({mode})"),
            Role::Selfheal,
            |p| *p,
            move || match b.try_acquire() {
                Ok(permit) => {
                    permit.success();
                    true
                }
                Err(_) => false,
            },
        );
        bench.add(
            CASE,
            &format!("selfheal call(op) ({mode})"),
            Role::Selfheal,
            is_42,
            move || block_on(breaker.call(|| op_ok(black_box(INPUT)))).ok(),
        );
    }
    bench.add(
        CASE,
        "tokio::time::Instant::now()",
        Role::Info,
        |_| true,
        tokio::time::Instant::now,
    );
    // The clock read as the ratio mode does it: nanoseconds since creation.
    let created = tokio::time::Instant::now();
    bench.add(
        CASE,
        "tokio Instant::now() - created, as nanos",
        Role::Info,
        |_| true,
        move || {
            tokio::time::Instant::now()
                .saturating_duration_since(created)
                .as_nanos() as u64
        },
    );
    bench.add(
        CASE,
        "std::time::Instant::now()",
        Role::Info,
        |_| true,
        Instant::now,
    );

    // failsafe: permission, then the success, on its state machine.
    let failsafe_default = failsafe::Config::new().build();
    bench.add(
        CASE,
        "failsafe (default policy)",
        Role::Peer,
        |p| *p,
        move || {
            let permitted = failsafe_default.is_call_permitted();
            if permitted {
                failsafe_default.on_success();
            }
            permitted
        },
    );
    let failsafe_consecutive = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(30)),
        ))
        .build();
    bench.add(
        CASE,
        "failsafe (consecutive failures)",
        Role::Peer,
        |p| *p,
        move || {
            let permitted = failsafe_consecutive.is_call_permitted();
            if permitted {
                failsafe_consecutive.on_success();
            }
            permitted
        },
    );

    // seatbelt: its breaker only exists as a middleware around an operation.
    let (clock, driver) = seatbelt_clock();
    let context = seatbelt::ResilienceContext::<u64, Result<u64, Flake>>::new(&clock);
    let layer = seatbelt::breaker::Breaker::layer("bench", &context)
        .recovery_with(|out: &Result<u64, Flake>, _| seatbelt_recovery(out))
        .rejected_input_error(|_, _| Flake);
    let seatbelt_svc = layered::Layer::layer(&layer, layered::Execute::new(op_ok));
    bench.add(CASE, "seatbelt breaker", Role::Peer, is_42, move || {
        let _keep = &driver;
        block_on(layered::Service::execute(&seatbelt_svc, black_box(INPUT))).ok()
    });

    // tower-resilience: a tower middleware (poll_ready checks the circuit).
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .expect("valid breaker");
    let mut tr_svc = tower::Layer::layer(&layer, tower::service_fn(op_ok));
    bench.add(
        CASE,
        "tower-resilience breaker (sliding window)",
        Role::Peer,
        is_42,
        move || block_on(tower_call(&mut tr_svc, black_box(INPUT))).ok(),
    );
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .expect("valid breaker");
    let mut tr_consecutive = tower::Layer::layer(&layer, tower::service_fn(op_ok));
    bench.add(
        CASE,
        "tower-resilience breaker (consecutive)",
        Role::Peer,
        is_42,
        move || block_on(tower_call(&mut tr_consecutive, black_box(INPUT))).ok(),
    );
}
