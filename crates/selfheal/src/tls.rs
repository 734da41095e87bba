//! One rustls crypto provider per process.
//!
//! selfheal speaks TLS through rustls with the *ring* crypto provider only: no
//! OpenSSL to link, no aws-lc to compile. reqwest is built with its
//! `rustls-no-provider` feature, which means reqwest does not pick a provider
//! by itself: building a `reqwest::Client` before a process-level
//! [`CryptoProvider`] is installed panics
//! ("No rustls crypto provider is configured…"). rustls allows exactly one
//! process-level provider, installed once, and every TLS user in the process
//! (reqwest, lettre, sqlx, your own clients) shares it.
//!
//! [`install_default_crypto_provider`] installs ring if no provider is
//! installed yet, and does nothing otherwise, so it is safe to call from every
//! constructor that needs TLS, from `main`, and from every test. selfheal's
//! TLS-using constructors (`health::WebhookSink::new`, `health::EmailSink::new`)
//! call it for you; call it yourself at start-up when you build your own
//! `reqwest::Client`.
//!
//! If your application installs another provider first (aws-lc-rs, a FIPS
//! build), that one is kept: this module never replaces a provider.
//!
//! Available with the `tls` feature (enabled by `webhook`, `email` and
//! `reqwest`).

use rustls::crypto::CryptoProvider;

/// Installs rustls's *ring* provider as the process-level default, unless a
/// provider is already installed. Returns `true` when this call installed it.
///
/// Idempotent and thread-safe: rustls accepts one process-level provider, so
/// at most one call in the process (from selfheal or anyone else) installs
/// one; every later call returns `false` and changes nothing.
///
/// ```
/// // At start-up, before building any reqwest::Client:
/// selfheal::tls::install_default_crypto_provider();
/// // Calling it again is harmless.
/// assert!(!selfheal::tls::install_default_crypto_provider());
/// assert!(rustls::crypto::CryptoProvider::get_default().is_some());
/// ```
pub fn install_default_crypto_provider() -> bool {
    if CryptoProvider::get_default().is_some() {
        return false;
    }
    // Another thread may install one between the check and this call; rustls
    // then refuses ours, which is what we want.
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}
