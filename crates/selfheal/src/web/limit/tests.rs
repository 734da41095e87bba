//! Unit tests of the adaptive limit.

use super::*;

fn settings() -> Settings {
    AdaptiveLimit::new("t")
        .with_limits(20, 4, 200)
        .unwrap()
        .inner
        .settings
        .clone_for_test()
}

impl Settings {
    fn clone_for_test(&self) -> Self {
        Self {
            exempt: self.exempt.clone(),
            ..*self
        }
    }
}

#[test]
fn the_limit_grows_while_latency_holds_and_shrinks_when_it_rises() {
    let s = settings();
    let mut g = Gradient::new(20);
    let mut limit = 0;
    // Busy (in flight near the limit), latency steady at 10 ms.
    for _ in 0..50 {
        limit = g.update(&s, 10_000.0, limit.max(20));
    }
    // +smoothing × queue (0.8) a window.
    assert!(limit >= 55, "{limit}");
    // Latency triples: requests queue; the limit comes down.
    let high = limit;
    for _ in 0..10 {
        limit = g.update(&s, 30_000.0, limit);
    }
    assert!(limit < high * 2 / 3, "{high} -> {limit}");
    // Idle (in flight under half the limit): no signal, no change.
    let idle = g.update(&s, 10_000.0, 1);
    assert_eq!(idle, limit);
}

#[test]
fn bad_settings_are_rejected_and_paths_exempt() {
    assert!(AdaptiveLimit::new("t").with_limits(2, 4, 8).is_err());
    assert!(AdaptiveLimit::new("t").with_limits(4, 0, 8).is_err());
    assert!(
        AdaptiveLimit::new("t")
            .with_window(Duration::from_millis(1), 1)
            .is_err()
    );
    let limit = AdaptiveLimit::new("t").with_exempt_path("/internal/");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/health.json",
        "/internal/x",
    ] {
        assert!(limit.is_exempt(path), "{path}");
    }
    assert!(!limit.is_exempt("/dashboard"));
}

#[tokio::test(start_paused = true)]
async fn requests_beyond_the_limit_are_refused_and_slots_come_back() {
    crate::throttle::clear_shedding();
    // A route's own limit (a bulkhead): its sheds do not mark the
    // server as shedding.
    let limit = AdaptiveLimit::new("t").with_limits(2, 1, 4).unwrap();
    let a = limit.try_acquire().unwrap();
    let b = limit.try_acquire().unwrap();
    assert!(limit.try_acquire().is_none());
    assert!(!crate::throttle::server_is_shedding());
    assert_eq!((limit.in_flight(), limit.shed()), (2, 1));
    limit.release(a, true);
    limit.release(b, false);
    assert_eq!(limit.in_flight(), 0);
    assert!(limit.try_acquire().is_some());
    // The app-wide limit's do.
    let app_wide = AdaptiveLimit::new("app").with_limits(1, 1, 1).unwrap();
    app_wide.serve_app_wide(crate::observe::testing::Recorder::new().observer());
    let _held = app_wide.try_acquire().unwrap();
    assert!(app_wide.try_acquire().is_none());
    assert!(crate::throttle::server_is_shedding());
    crate::throttle::clear_shedding();
}

#[test]
fn settings_out_of_range_are_rejected() {
    assert!(AdaptiveLimit::new("t").with_queue(0.0).is_err());
    assert!(AdaptiveLimit::new("t").with_queue(f64::NAN).is_err());
    assert!(AdaptiveLimit::new("t").with_tolerance(0.9).is_err());
    assert!(AdaptiveLimit::new("t").with_tolerance(1.2).is_ok());
}

#[test]
fn a_small_queue_lets_the_limit_settle_low() {
    // Latency far above the baseline in every window: the limit falls
    // to about 2 × queue, not to `min`, so a route whose right limit is
    // a handful needs a small queue.
    let settle = |queue: f64| {
        let mut s = settings();
        s.min = 1;
        s.queue = queue;
        let mut g = Gradient::new(20);
        for _ in 0..10 {
            g.update(&s, 10_000.0, 20);
        }
        let mut limit = 20;
        for _ in 0..100 {
            limit = g.update(&s, 100_000.0, limit);
        }
        limit
    };
    assert!((7..=8).contains(&settle(4.0)), "{}", settle(4.0));
    assert!((1..=2).contains(&settle(1.0)), "{}", settle(1.0));
}

// ------------------------------------------------------------ waiting

/// A fixed limit of 2 that lets requests wait up to `interval` (`target`
/// 5 ms).
fn waiting_limit(interval_ms: u64) -> AdaptiveLimit {
    AdaptiveLimit::new("t")
        .with_limits(2, 2, 2)
        .unwrap()
        .with_wait(Duration::from_millis(5), Duration::from_millis(interval_ms))
        .unwrap()
}

/// One request: waits for a slot (at the bulkhead's fast path first),
/// holds it for `service`, gives it back; how long it waited, or `None`
/// when it was shed.
async fn serve(limit: AdaptiveLimit, service: Duration) -> Option<Duration> {
    let asked = Instant::now();
    let start = match limit.try_admit() {
        Some(start) => start,
        None => limit.wait_for_slot().await?,
    };
    let waited = start - asked;
    tokio::time::sleep(service).await;
    limit.release(start, true);
    Some(waited)
}

/// A burst of ten requests on a limit of two, 20 ms each: every one is
/// served (none shed), in five rounds, the last having waited four
/// service times; with no wait, eight of the ten are shed.
#[tokio::test(start_paused = true)]
async fn a_burst_waits_for_slots_and_is_served_whole() {
    let limit = waiting_limit(500);
    let service = Duration::from_millis(20);
    let burst: Vec<_> = (0..10)
        .map(|_| tokio::spawn(serve(limit.clone(), service)))
        .collect();
    let mut waits = Vec::new();
    for request in burst {
        waits.push(
            request
                .await
                .unwrap()
                .expect("a request of the burst was shed"),
        );
    }
    waits.sort();
    assert_eq!(waits[0], Duration::ZERO);
    assert_eq!(waits[9], 4 * service, "{waits:?}");
    assert_eq!((limit.shed(), limit.in_flight()), (0, 0));

    let no_wait = AdaptiveLimit::new("t").with_limits(2, 2, 2).unwrap();
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let limit = no_wait.clone();
            tokio::spawn(async move { limit.try_acquire() })
        })
        .collect();
    let mut admitted = 0;
    for request in burst {
        admitted += usize::from(request.await.unwrap().is_some());
    }
    assert_eq!((admitted, no_wait.shed()), (2, 8));
}

/// A sustained overload (a request every 5 ms, each holding a slot for
/// 20 ms on a limit of 2: twice what it serves): once the first waiter has
/// given up, what is admitted waited at most the 5 ms target and the rest
/// is shed after it; the limit keeps serving at its capacity. Only the
/// overload's first interval waits longer.
#[tokio::test(start_paused = true)]
async fn under_a_standing_queue_requests_wait_only_the_target() {
    let interval = Duration::from_millis(100);
    let limit = waiting_limit(100);
    let begin = Instant::now();
    let mut requests = Vec::new();
    for _ in 0..400 {
        let arrived = Instant::now() - begin;
        let request = tokio::spawn(serve(limit.clone(), Duration::from_millis(20)));
        requests.push((arrived, request));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut served, mut shed, mut longest_late_wait) = (0, 0, Duration::ZERO);
    for (arrived, request) in requests {
        match request.await.unwrap() {
            Some(waited) if arrived > 2 * interval => {
                served += 1;
                longest_late_wait = longest_late_wait.max(waited);
            }
            Some(waited) => assert!(waited <= interval, "{waited:?}"),
            None => shed += 1,
        }
    }
    assert!(
        longest_late_wait <= Duration::from_millis(5),
        "{longest_late_wait:?}"
    );
    // 1.8 s at 100 a second: the slots stay busy.
    assert!(served >= 170, "{served}");
    assert!(shed >= 150, "{shed}");
    assert_eq!(limit.shed(), shed as u64);
}

/// A request that stops waiting (its client went away) after the slot
/// given back woke it leaves the queue: the slot goes to the next one,
/// nothing stays counted.
#[tokio::test(start_paused = true)]
async fn a_request_that_stops_waiting_leaves_the_queue() {
    let limit = waiting_limit(1000);
    let held = limit.try_admit().unwrap();
    let other = limit.try_admit().unwrap();
    let gone = tokio::spawn({
        let limit = limit.clone();
        async move { limit.wait_for_slot().await }
    });
    let next = tokio::spawn({
        let limit = limit.clone();
        async move { limit.wait_for_slot().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The slot comes back and wakes the first waiter, which goes away
    // before it runs: the wake-up passes to the next one.
    limit.release(held, true);
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    let start = tokio::time::timeout(Duration::from_millis(10), next)
        .await
        .expect("the freed slot went to the waiting request")
        .unwrap();
    assert!(start.is_some());
    limit.release(other, true);
    limit.release(start.unwrap(), true);
    assert_eq!((limit.in_flight(), limit.shed()), (0, 0));
    assert_eq!(limit.inner.waiters_now(), 0);
}

/// After an overload ends, a load the slots can serve (80 % of their
/// capacity, arriving in clumps of three) is served again, not shed: the limit leaves its short waits
/// within an interval or two. (A give-up after the 5 ms target is no sign
/// of overload when a service takes 20 ms; an earlier rule treated it as
/// one and kept shedding about a quarter of such a load.)
#[tokio::test(start_paused = true)]
async fn once_the_overload_ends_a_load_the_slots_can_serve_is_served() {
    let limit = waiting_limit(100);
    let begin = Instant::now();
    let mut requests = Vec::new();
    // 1 s at twice the capacity, then 2 s at 80 % of it, in clumps of
    // three (one of which has to wait for a slot).
    let mut at = Duration::ZERO;
    while at < Duration::from_secs(3) {
        let (clump, gap) = if at < Duration::from_secs(1) {
            (1, 5.0)
        } else {
            (3, 37.5)
        };
        tokio::time::sleep_until(begin + at).await;
        for _ in 0..clump {
            let request = tokio::spawn(serve(limit.clone(), Duration::from_millis(20)));
            requests.push((at, request));
        }
        at += Duration::from_secs_f64(gap / 1000.0);
    }
    let (mut late, mut late_shed, mut overload_shed) = (0, 0, 0);
    for (arrived, request) in requests {
        let served = request.await.unwrap().is_some();
        if arrived < Duration::from_secs(1) {
            overload_shed += usize::from(!served);
        } else if arrived >= Duration::from_millis(1300) {
            late += 1;
            late_shed += usize::from(!served);
        }
    }
    assert!(
        overload_shed >= 50,
        "the overload was not shed: {overload_shed}"
    );
    assert_eq!(late_shed, 0, "{late_shed} of {late} shed at 80 % load");
}

#[test]
fn wait_settings_out_of_range_are_rejected() {
    let ms = Duration::from_millis;
    assert!(AdaptiveLimit::new("t").with_wait(ms(0), ms(100)).is_err());
    assert!(AdaptiveLimit::new("t").with_wait(ms(200), ms(100)).is_err());
    assert!(
        AdaptiveLimit::new("t")
            .with_wait(ms(5), ms(20_000))
            .is_err()
    );
    assert!(AdaptiveLimit::new("t").with_wait(ms(5), ms(100)).is_ok());
}

/// The controlled-delay rule for a queue drained by workers, on a
/// simulated clock: a job may wait up to the interval while the workers
/// have time for what is asked of them; once more is asked (averaged over
/// intervals), only up to the target, unless fewer jobs than workers wait
/// behind it (shedding it would only idle a worker); never past the
/// interval. A shed or refused job counts as asked work (the mean job
/// time), so shedding does not hide the overload that causes it.
#[test]
fn an_overload_gets_the_target_but_the_last_job_runs() {
    let ms = Duration::from_millis;
    // A target above half a job (jobs of 10-60 ms): the target is the bound.
    let rule = ControlledDelay::new(ms(30), ms(100), 1).unwrap();
    let at = |t: u64| rule.epoch() + ms(t);
    let run = |now: u64, queued: u64, behind: usize, took: u64| {
        rule.admit_at(at(now), at(queued), behind)
            .map(|turn| turn.end_at(at(now + took)))
            .is_some()
    };
    assert!(run(0, 0, 3, 40), "fresh");
    assert!(run(40, 0, 3, 60), "a burst: 40 ms is within the interval");
    // The first window asked all of the worker's 100 ms.
    assert!(!run(100, 50, 3, 0), "overload: 50 ms > 30 ms, jobs behind");
    rule.refused();
    rule.refused();
    assert!(run(131, 95, 0, 10), "the last job runs: 36 ms, none behind");
    // The second window ran 10 ms of work, shed one job and turned two
    // away at the door (about 42 ms each): still more than the worker had.
    assert!(
        !run(200, 160, 3, 0),
        "sheds and refusals count as asked work"
    );
    assert!(!run(400, 250, 0, 0), "never past the interval");
    assert_eq!(rule.shed(), 3);
    assert!(ControlledDelay::new(ms(0), ms(100), 1).is_err());
    assert!(ControlledDelay::new(ms(5), ms(100), 0).is_err());
}

/// Half a job is the bound only up to the interval: with jobs of 300 ms
/// and an interval of 100 ms, a job that waited 120 ms is shed under
/// overload although it waited less than half a job; and a job that did
/// no work (its requester had gone) leaves the mean job time alone.
#[test]
fn half_a_job_never_reaches_past_the_interval() {
    let ms = Duration::from_millis;
    let rule = ControlledDelay::new(ms(5), ms(100), 1).unwrap();
    let at = |t: u64| rule.epoch() + ms(t);
    rule.admit_at(at(0), at(0), 0).unwrap().end_at(at(300));
    // Forgotten turns: the mean stays at 300 ms.
    for t in 301..320 {
        rule.admit_at(at(t), at(t), 0).unwrap().forget();
    }
    assert!(
        rule.admit_at(at(320), at(230), 1)
            .map(Turn::forget)
            .is_some(),
        "90 ms: within the interval (had the forgotten turns counted, the mean would be 24 ms and this one shed)"
    );
    assert!(
        rule.admit_at(at(330), at(210), 1).is_none(),
        "120 ms: past the interval, under half a job"
    );
}

/// The busy window judges a whole window: `percent` of the slots' time.
#[test]
fn the_busy_window_judges_whole_windows() {
    use super::busy::{BusyWindow, Judge};
    let window = BusyWindow::default();
    let ms = Duration::from_millis;
    let ninety = Judge {
        percent: 90,
        smooth: false,
    };
    window.add(ms(190));
    assert!(
        !window.saturated(50, 2, ms(100), ninety),
        "the window is not over"
    );
    assert!(window.saturated(100, 2, ms(100), ninety), "190 of 200 ms");
    window.add(ms(170));
    assert!(!window.saturated(200, 2, ms(100), ninety), "170 of 200 ms");
    // A window that ends after a quiet spell is long and mostly idle.
    window.add(ms(200));
    assert!(!window.saturated(5_000, 2, ms(100), ninety));
    // Smoothed: one window over the threshold after one under is not
    // enough, two are.
    let smooth = Judge {
        percent: 100,
        smooth: true,
    };
    let window = BusyWindow::default();
    window.add(ms(160));
    assert!(!window.saturated(100, 2, ms(100), smooth), "80 %");
    window.add(ms(230));
    assert!(
        !window.saturated(200, 2, ms(100), smooth),
        "115 %, average 97 %"
    );
    window.add(ms(230));
    assert!(
        window.saturated(300, 2, ms(100), smooth),
        "115 %, average 106 %"
    );
}

/// Two workers, 17 ms jobs, Poisson arrivals, a queue of 64, on a simulated
/// clock: (served per second, shed share, p99 wait of the jobs served after
/// the first 6 s: a rush first looks like a burst and may wait the interval
/// until the bounded queue fills and the averaged demand says overload).
fn simulate(load: f64, seed: u64) -> (f64, f64, Duration) {
    let ms = Duration::from_millis;
    simulate_with(load, seed, ms(17), ms(10))
}

/// [`simulate`] with jobs of `service` and the rule's `target`.
fn simulate_with(
    load: f64,
    seed: u64,
    service: Duration,
    target: Duration,
) -> (f64, f64, Duration) {
    let ms = Duration::from_millis;
    let workers = 2;
    let rule = ControlledDelay::new(target, ms(1000), workers).unwrap();
    let t0 = rule.epoch();
    let rate = load * f64::from(workers) / service.as_secs_f64();
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = Duration::from_secs(20);
    let mut next_arrival = Duration::ZERO;
    let mut queue = std::collections::VecDeque::new();
    let mut free_at = vec![Duration::ZERO; workers as usize];
    let (mut served, mut shed, mut arrived) = (0u32, 0u32, 0u32);
    let mut waits = Vec::new();
    loop {
        // The next worker to look at the queue.
        let (w, free) = free_at
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(_, t)| t)
            .unwrap();
        if next_arrival <= free || queue.is_empty() {
            if next_arrival >= end {
                break;
            }
            if queue.is_empty() && next_arrival > free {
                // Every worker that is free now finds the queue empty.
                for t in free_at.iter_mut().filter(|t| **t < next_arrival) {
                    rule.idle_at(t0 + *t);
                    *t = next_arrival;
                }
            }
            arrived += 1;
            if queue.len() < 64 {
                queue.push_back(next_arrival);
            } else {
                rule.refused();
            }
            let gap = -(1.0 - rng.f64()).ln() / rate;
            next_arrival += Duration::from_secs_f64(gap);
            continue;
        }
        let queued = queue.pop_front().unwrap();
        match rule.admit_at(t0 + free, t0 + queued, queue.len()) {
            Some(turn) => {
                turn.end_at(t0 + free + service);
                free_at[w] = free + service;
                served += 1;
                if queued >= Duration::from_secs(6) {
                    waits.push(free - queued);
                }
            }
            None => shed += 1,
        }
    }
    waits.sort();
    let p99 = waits[waits.len() * 99 / 100];
    (
        f64::from(served) / end.as_secs_f64(),
        f64::from(shed) / f64::from(arrived),
        p99,
    )
}

/// Sixteen clients in a closed loop on two workers of 17 ms (what a
/// concurrency limit of 16 in front of the pool makes of any overload):
/// the work asked stays under the workers' time (each takes its next job
/// half a millisecond after the last), but the queue never empties and
/// every job waits about eight job times. (p99 wait of the
/// jobs served after the first 3 s.)
fn simulate_closed_loop(clients: usize) -> Duration {
    let ms = Duration::from_millis;
    let service = ms(17);
    let rule = ControlledDelay::new(ms(10), ms(1000), 2).unwrap();
    let t0 = rule.epoch();
    let end = Duration::from_secs(20);
    let mut queue: std::collections::VecDeque<Duration> =
        std::iter::repeat_n(Duration::ZERO, clients).collect();
    let mut free_at = [Duration::ZERO; 2];
    let mut waits = Vec::new();
    loop {
        let w = if free_at[0] <= free_at[1] { 0 } else { 1 };
        let now = free_at[w];
        if now >= end {
            break;
        }
        let queued = queue.pop_front().expect("a closed loop never empties");
        match rule.admit_at(t0 + now, t0 + queued, queue.len()) {
            Some(turn) => {
                turn.end_at(t0 + now + service);
                // A worker takes its next job a little after the last one
                // ends (its own overhead): busy is a little under 100 %.
                free_at[w] = now + service + Duration::from_micros(500);
                if queued >= Duration::from_secs(3) {
                    waits.push(now - queued);
                }
                // The client sends its next job as this one is answered.
                queue.push_back(now + service);
            }
            // A shed client tries again at once.
            None => queue.push_back(now),
        }
    }
    waits.sort();
    waits[waits.len() * 99 / 100]
}

/// A standing queue is an overload too: in a closed loop of 16 on two
/// workers the work asked equals the workers' time (never more), and only
/// the standing-queue signal (no job taken within one job's time for a
/// whole interval) cuts the waits: without it the p99 wait is 8 job times.
#[test]
fn a_closed_loop_standing_queue_is_cut_short() {
    let p99 = simulate_closed_loop(16);
    assert!(p99 <= Duration::from_millis(40), "p99 wait {p99:?}");
}

/// A rush judged heavy is forgotten after a quiet spell: the first window
/// that closes after two intervals of silence is judged on its own, not
/// averaged with the rush (a review found a small burst after a quiet spell
/// shed to an empty queue on the rush's share).
#[test]
fn a_quiet_spell_clears_the_judgement_of_a_rush() {
    use super::busy::{BusyWindow, Judge};
    let ms = Duration::from_millis;
    let window = BusyWindow::default();
    let smooth = Judge {
        percent: 100,
        smooth: true,
    };
    // Two workers asked eight times their time for a whole interval.
    window.add(ms(1_600));
    assert!(window.saturated(100, 2, ms(100), smooth));
    assert!(window.reached(200));
    // Ten intervals of silence, then a burst of one job.
    window.add(ms(10));
    assert!(!window.saturated(1_100, 2, ms(100), smooth));
    assert!(
        !window.reached(200),
        "the rush's share outlived the silence"
    );
    // Back to back, windows are still averaged: a second rush counts.
    window.add(ms(800));
    assert!(window.saturated(1_200, 2, ms(100), smooth));
}

/// The rule sheds nothing where the pool can serve the load (0.9×), and
/// under overload it keeps the workers busy and the waits short (a
/// review's model found the first version shedding 6 % of a 0.9× load with
/// a worse p99, and idling the workers at 1.1–1.5×: it judged overload on
/// work done, which its own shedding lowered, and it shed the last job in
/// the queue). Mutations: judging one interval instead of an average sheds
/// 1.6 % at 0.9×; not counting sheds as asked work fails at 1.2× (p99 wait
/// 281 ms), and so does shedding down to an empty queue (100.3 of 117.6
/// jobs/s) or keeping one more job in reserve (p99 wait 26 ms), and at 3×
/// keeping the reserve under a heavy overload (p99 wait 16 ms against the
/// target's 10).
#[test]
fn the_rule_sheds_only_under_overload_and_keeps_the_workers_busy() {
    let capacity = 2.0 / 0.017;
    for seed in 1..=3 {
        let (goodput, shed, p99) = simulate(0.9, seed);
        assert!(shed < 0.01, "0.9x, seed {seed}: shed {shed:.3}");
        assert!(goodput > 0.85 * capacity, "0.9x: {goodput:.1}/s");
        for (load, kept, wait) in [(1.2, 0.91, 22), (3.0, 0.99, 11)] {
            let (goodput, shed, p99) = simulate(load, seed);
            assert!(
                goodput >= kept * capacity,
                "{load}x, seed {seed}: {goodput:.1}/s of {capacity:.1}"
            );
            assert!(shed > 0.1, "{load}x: shed {shed:.3}");
            assert!(
                p99 <= Duration::from_millis(wait),
                "{load}x, seed {seed}: p99 wait {p99:?}"
            );
        }
        let _ = p99;
    }
}

/// The rule reports like an adaptive limit: the workers as the limit, the
/// jobs running, the jobs shed; and when the queue empties after sheds.
#[test]
fn the_rule_reports_as_a_limiter() {
    let ms = Duration::from_millis;
    let events = crate::observe::testing::Recorder::new();
    let rule = ControlledDelay::new(ms(5), ms(1000), 3)
        .unwrap()
        .with_observer("pool", events.observer());
    let at = |t: u64| rule.epoch() + ms(t);
    let turn = rule.admit_at(at(1_500), at(1_500), 0).unwrap();
    assert!(
        rule.admit_at(at(1_500), at(100), 0).is_none(),
        "past the interval"
    );
    assert_eq!(events.lines(), ["limit pool 3"]);
    let recorded = events.events();
    assert!(
        matches!(
            &recorded[0],
            crate::observe::testing::Recorded::LimitChanged {
                in_flight: 1,
                shed: 0,
                ..
            }
        ),
        "{recorded:?}"
    );
    turn.end_at(at(1_510));
    rule.idle_at(at(1_520));
    let recorded = events.events();
    assert!(
        matches!(
            &recorded[..],
            [
                _,
                crate::observe::testing::Recorded::LimitChanged {
                    in_flight: 0,
                    shed: 1,
                    ..
                }
            ]
        ),
        "{recorded:?}"
    );
}

/// Under a heavy overload a job is late past the target *or half a job*,
/// whichever is longer, so the workers stay busy whatever a job takes. A
/// worker that comes free and finds no job younger than "late" sheds the
/// queue and idles until the next arrival; with a fixed 5 ms target that
/// happens more often the longer a job takes (arrivals at 3× come every
/// sixth of a job). Mutation, the fixed target (mean of three seeds at 3×,
/// 5 ms target): 0.983 of capacity with 12 ms jobs, 0.952 with 22 ms, 0.932
/// with 30 ms; with the half-job floor 0.989 for each, the admitted jobs'
/// p99 wait half a job (6, 11, 15 ms).
#[test]
fn under_a_heavy_overload_the_workers_stay_busy_whatever_a_job_takes() {
    let ms = Duration::from_millis;
    for service in [12, 22, 30] {
        let capacity = 2000.0 / service as f64;
        for seed in 1..=3 {
            let (goodput, shed, p99) = simulate_with(3.0, seed, ms(service), ms(5));
            assert!(
                goodput >= 0.975 * capacity,
                "{service} ms jobs, seed {seed}: {goodput:.1}/s of {capacity:.1}"
            );
            assert!(shed > 0.5, "{service} ms jobs at 3x: shed {shed:.3}");
            assert!(
                p99 <= ms(service / 2 + 1),
                "{service} ms jobs, seed {seed}: p99 wait {p99:?}"
            );
        }
    }
}
