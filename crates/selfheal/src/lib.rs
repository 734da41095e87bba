//! selfheal: self-healing building blocks for Rust web services.
#![forbid(unsafe_code)]

pub mod fallback;
pub mod observe;
pub mod retry;

mod error;
pub use error::ConfigError;
