//! Retry engine (in progress).
mod classify;
pub use classify::{AlwaysTransient, ByTrait, Classify, Transient, Verdict};
