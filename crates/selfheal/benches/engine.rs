//! Benchmarks (being written on the bench branch).
fn main() {}
