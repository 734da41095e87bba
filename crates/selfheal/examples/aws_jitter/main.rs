//! Reproduces the AWS Architecture Blog study "Exponential Backoff and
//! Jitter" (Marc Brooker, 2015) with selfheal's own [`Backoff`].
//!
//! ```text
//! cargo run -p selfheal --release --example aws_jitter
//! ```
//!
//! # The model
//!
//! A deterministic discrete-event simulation in virtual time (nothing sleeps).
//! One row with a version number sits on a server. `N` clients start at time
//! zero, and each wants to write the row exactly once, with optimistic
//! concurrency: read the version, then send a compare-and-set of that
//! version. The compare-and-set reaches the server one round trip after the
//! read (10 ms each way), and succeeds iff no other write landed in between;
//! a client learns the outcome one trip later. A client that failed waits
//! `Backoff::delay(retry, previous, &random)` from
//! `Backoff::exponential(10 ms, 2.0, 2 s)?.with_jitter(kind)`, with a
//! [`SeededRandom`] per run, then reads again; it retries until its write
//! lands. Arrivals at the same instant are served commits first, then first
//! come, first served.
//!
//! The backoff is the study's (`min(2 s, 5 ms * 2^attempt)`, attempts from 1,
//! is selfheal's `min(cap, base * 2^retry)`, retries from 0, with a 10 ms base),
//! except that decorrelated jitter's floor is the base, 10 ms, where the study's
//! was 5 ms. The first table uses a fixed 10 ms trip, so the backoff is the only
//! randomness; the second a noisy one (10 ms ± 3.46 ms uniform: a standard
//! deviation of 2 ms, as in the study).
//!
//! # Reading the table
//!
//! One row per client count, one column pair per jitter kind, each the mean
//! over 100 seeds:
//!
//! - `calls`: compare-and-set calls by all clients together, the work the
//!   server does (each call also costs a read); `N` is the least possible.
//! - `time ms`: virtual milliseconds until the last client learned its write
//!   landed. The row serves at most one write per 20 ms round trip, so
//!   `20 * N` ms is the least possible.
//!
//! The verdict under each table checks the study's orderings on every row.
//!
//! # What it shows
//!
//! No jitter is by far the worst on both counts: on the fixed network the
//! clients retry in lockstep, one write lands per round and the work is
//! `N (N + 1) / 2` calls; network noise breaks the lockstep a little, not
//! much. Completion time comes out as in the study at every client count:
//! decorrelated and full jitter similar, equal jitter slower, none far slower.
//!
//! The study's work ordering, full ≲ equal < decorrelated < none, holds from
//! about 80 clients up (the test checks it at 100). Below that decorrelated
//! jitter does the least work of all: its first wait is uniform in
//! `[base, 3 * base]`, longer than full or equal jitter's, so a small herd
//! spreads out at once. But it grows slowly: each wait is uniform up to three
//! times the previous one, a typical growth of only about 1.1 per retry (the
//! geometric mean, 3/e) where the other kinds double their window. So a large
//! herd keeps colliding: more calls, and yet the earliest finish, because the
//! row never sits idle.
//!
//! [`Backoff`]: selfheal::retry::Backoff
//! [`SeededRandom`]: selfheal::retry::SeededRandom

#[path = "sim.rs"]
mod sim;

use selfheal::ConfigError;
use selfheal::retry::Jitter;
use sim::{KINDS, Model, Summary};

/// The client counts of the table's rows.
const CLIENTS: [usize; 5] = [10, 25, 50, 100, 200];
/// Runs averaged per cell.
const SEEDS: u64 = 100;

fn main() -> Result<(), ConfigError> {
    let model = Model::STUDY;
    println!(
        "AWS \"Exponential Backoff and Jitter\" with selfheal's Backoff: exponential from {:?}, x2, capped at {:?}.",
        model.base, model.cap,
    );
    println!(
        "Means over {SEEDS} seeds; calls = compare-and-set calls, time = until the last write landed."
    );
    table("Fixed network: every trip takes 10 ms", &Model::STUDY)?;
    table(
        "Noisy network: every trip takes 10 ms ± 3.46 ms (sd 2 ms, as in the study)",
        &Model::STUDY_NOISY,
    )?;
    Ok(())
}

/// Prints one table (a row per client count) and its verdict.
fn table(title: &str, model: &Model) -> Result<(), ConfigError> {
    println!("\n{title}\n");
    let mut header = format!("{:>7}", "clients");
    let mut units = format!("{:>7}", "");
    for kind in KINDS {
        header += &format!(" | {:^18}", name(kind));
        units += &format!(" | {:>8} {:>9}", "calls", "time ms");
    }
    println!("{}\n{}", header.trim_end(), units.trim_end());

    // Per client count: whether the study's ordering of work, of time holds.
    let mut work = Vec::new();
    let mut time = Vec::new();
    let backoffs = KINDS
        .into_iter()
        .map(|kind| model.backoff(kind))
        .collect::<Result<Vec<_>, _>>()?;
    for clients in CLIENTS {
        let row: Vec<Summary> = backoffs
            .iter()
            .map(|backoff| sim::average(model, backoff, clients, SEEDS))
            .collect();
        let &[none, full, equal, decorrelated] = row.as_slice() else {
            unreachable!("one summary per jitter kind");
        };
        let mut line = format!("{clients:>7}");
        for s in [none, full, equal, decorrelated] {
            line += &format!(" | {:>8.1} {:>9.1}", s.calls, s.completion_ms);
        }
        println!("{line}");

        let (work_holds, time_holds) = study_orderings(none, full, equal, decorrelated);
        work.push((clients, work_holds));
        time.push((clients, time_holds));
    }
    println!(
        "\nverdict: work full ≲ equal < decorrelated < none {}; time full, decorrelated < equal < none {}",
        where_it_holds(&work),
        where_it_holds(&time),
    );
    Ok(())
}

/// Whether a row follows the study's orderings, of work (full within 10 % of
/// equal or below, equal below decorrelated, decorrelated below none) and of
/// completion time (full and decorrelated before equal, equal before none).
fn study_orderings(
    none: Summary,
    full: Summary,
    equal: Summary,
    decorrelated: Summary,
) -> (bool, bool) {
    let work = full.calls <= equal.calls * 1.1
        && equal.calls < decorrelated.calls
        && decorrelated.calls < none.calls;
    let time = full.completion_ms.max(decorrelated.completion_ms) < equal.completion_ms
        && equal.completion_ms < none.completion_ms;
    (work, time)
}

/// "holds at 100, 200 clients (not at 10, 25)", or "holds at every client
/// count", from `(clients, holds)` pairs.
fn where_it_holds(rows: &[(usize, bool)]) -> String {
    let counts = |holds: bool| {
        rows.iter()
            .filter(|&&(_, h)| h == holds)
            .map(|(clients, _)| clients.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (counts(true), counts(false)) {
        (_, fails) if fails.is_empty() => "holds at every client count".to_owned(),
        (holds, _) if holds.is_empty() => "holds at no client count".to_owned(),
        (holds, fails) => format!("holds at {holds} clients (not at {fails})"),
    }
}

/// The column title of a jitter kind.
fn name(kind: Jitter) -> &'static str {
    match kind {
        Jitter::None => "none",
        Jitter::Full => "full",
        Jitter::Equal => "equal",
        Jitter::Decorrelated => "decorrelated",
    }
}
