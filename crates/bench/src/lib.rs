//! selfheal's benchmarks, in a crate of their own so that the library's
//! dev-dependencies are only what its tests need. No library code.
//!
//! | what | command |
//! |---|---|
//! | the retry engine and the breaker against seatbelt, failsafe, tower, tower-resilience, backon | `cargo bench -p selfheal-bench --bench engine` |
//! | the health monitor against the guide's design | `cargo bench -p selfheal-bench --bench health` |
//! | the HTTP middleware against reqwest and reqwest-retry | `cargo bench -p selfheal-bench --bench http` |
//! | the same, in instructions per request (valgrind) | `bash crates/bench/benches/http-instructions.sh` |
//! | the transaction runner against plain sqlx and the guide's commit retry | `cargo bench -p selfheal-bench --bench db` |
//! | the web layer under `wrk` against axum alone and tower-http | `cargo run --release -p selfheal-bench --example web_bench` |
