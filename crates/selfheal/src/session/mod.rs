//! Typed sessions that repair themselves, over any tower-sessions store.
//!
//! The guide's `ensure_session_defaults` and `fix_corrupted_session` run
//! before every request because session data goes bad in ordinary ways: a
//! deploy adds a key that old sessions lack, an older version wrote `xp` as
//! a string, a bug stored a level of 0, a store row was truncated, a cookie
//! was edited by hand. None of those is a reason to answer 500 or to lose
//! the rest of what the user had.
//!
//! So the app declares its session once, a struct with defaults and optional
//! checks per field, and takes it as the [`Healed`] extractor:
//!
//! - a **missing** key gets its default;
//! - a field that **fails to decode** or **fails its check** is reset to its
//!   default, and *only that field*: each field is stored under its own
//!   session key and decoded on its own, so a bad `xp` does not cost the
//!   user their `name`;
//! - a session **record that cannot be decoded** (the store says so) is
//!   dropped and the user gets a fresh session with a new id, and a
//!   **cookie that cannot be verified** (a tampered signed cookie, a
//!   malformed or unknown id) never yields a session: the user gets a fresh
//!   one, not an error (OWASP: never trust a session you did not issue);
//! - every repair is a [`SessionRepaired`](crate::health::HealKind::SessionRepaired)
//!   heal on the monitor (operation `session:<field>`, or `session:record` /
//!   `session:cookie`) and a `WARN` log line naming the field, never its
//!   value.
//!
//! A store that is *down* (not a record that is corrupt) is not repaired:
//! deleting sessions because the database blinked would log everyone out.
//! Nor are the defaults used in its place: to a signed-in user, a session
//! with default values *is* a logout (the next page is the login form). So
//! when a request presents a session whose record cannot be loaded because
//! the store fails, the extractor records a `SessionStoreError` and rejects
//! the request with [`SessionUnavailable`]: `503 Service Unavailable` with
//! `Retry-After`, the stored session untouched. The user presses again a few
//! seconds later and is still signed in. A request without a session cookie
//! never reaches the store, so anonymous pages keep working.
//!
//! Repairs and store errors are reported to the monitor found in the
//! request's extensions, where [`HealLayer`](crate::web::HealLayer) puts it
//! when it is not the global observer (or add `axum::Extension(monitor)`
//! yourself), else to the global observer: a started monitor.
//!
//! ```
//! use axum::{Router, routing::get};
//! use selfheal::session::{Fields, Healed, SessionData};
//! use serde::{Deserialize, Serialize};
//! use tower_sessions::{MemoryStore, SessionManagerLayer};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Progress {
//!     xp: u64,
//!     level: u32,
//!     name: String,
//! }
//!
//! impl Default for Progress {
//!     fn default() -> Self {
//!         Self { xp: 0, level: 1, name: String::new() }
//!     }
//! }
//!
//! impl SessionData for Progress {
//!     fn fields(f: &mut Fields<'_, Self>) {
//!         f.field("xp", |s| &mut s.xp);
//!         f.checked("level", |s| &mut s.level, "within 1..=100", |l| (1..=100).contains(l));
//!         f.field("name", |s| &mut s.name);
//!     }
//! }
//!
//! async fn dashboard(mut progress: Healed<Progress>) -> String {
//!     progress.xp += 10;
//!     progress.save().await.ok();
//!     format!("{} has {} xp at level {}", progress.name, progress.xp, progress.level)
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(dashboard))
//!     .layer(SessionManagerLayer::new(MemoryStore::default()));
//! # let _ = app;
//! ```

mod error;
mod fields;
mod healed;
mod repair;

pub use self::error::{HealedRejection, SessionError, SessionUnavailable};
pub use self::fields::Fields;
pub use self::healed::{CookieName, Healed};
pub use self::repair::{Repair, RepairReason};

/// A session's typed contents: a struct with defaults ([`Default`]) whose
/// fields are listed, each under its own session key, by [`fields`](Self::fields).
///
/// See the [module docs](self) for an example.
pub trait SessionData: Default + Send + Sync + 'static {
    /// Lists the fields: [`Fields::field`] for plain ones,
    /// [`Fields::checked`] for those with a rule. Called a few times per
    /// request: keep it a plain list.
    fn fields(fields: &mut Fields<'_, Self>);
}
