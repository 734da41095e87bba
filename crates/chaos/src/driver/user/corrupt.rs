//! Session corruption: a user's session damaged mid-run, either the cookie
//! (a forged value the app did not sign) or the stored record (garbage bytes
//! in the session store's row), so that the app must reset the session
//! rather than fail.
//!
//! It needs the app's database pools and the session cookie's format, which
//! nothing else in the journey knows about.

use std::sync::atomic::Ordering;

use super::User;

/// The length of the HMAC-SHA256 signature (base64) that prefixes a signed
/// cookie's value (the `cookie` crate's format: `base64(mac) + value`).
const SIGNATURE_LEN: usize = 44;

impl User {
    /// Corrupts this user's session: half the time the cookie (a forged
    /// value the app did not sign), half the time its stored record (garbage
    /// bytes in the store's row for this user's session id). Counted only
    /// when it happened; the next try is the one it strikes (in the ledger).
    pub(super) async fn corrupt_session(&mut self) {
        let url: reqwest::Url = self.base.parse().expect("base url");
        if self.corrupt_cookie() {
            self.jar.add_cookie_str(
                "cozmic_session=Zm9yZ2VkLXNpZ25hdHVyZS1mb3JnZWQtc2lnbmF0dXJlMDAwMDAwMDAwMDAw; Path=/",
                &url,
            );
            self.shared
                .sessions_corrupted
                .fetch_add(1, Ordering::Relaxed);
            self.session_struck = true;
            return;
        }
        use reqwest::cookie::CookieStore;
        let Some(table) = self.session_table else {
            return;
        };
        let cookies = self.jar.cookies(&url);
        let id = cookies
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.split("; ")
                    .find_map(|c| c.strip_prefix("cozmic_session="))
            })
            .filter(|v| v.len() > SIGNATURE_LEN && v.is_char_boundary(SIGNATURE_LEN))
            .map(|v| v[SIGNATURE_LEN..].to_owned());
        let Some(id) = id else {
            return;
        };
        let sql = format!("UPDATE {table} SET data = $1 WHERE id = $2");
        let garbage = vec![0xc1_u8, 0xff, 0x00, 0x42];
        let result = match (&self.sqlite, &self.postgres) {
            (Some(pool), _) => sqlx::query(&sql)
                .bind(garbage)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            (_, Some(pool)) => sqlx::query(&sql)
                .bind(garbage)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            _ => Ok(0),
        };
        match result {
            Ok(1) => {
                self.shared
                    .sessions_corrupted
                    .fetch_add(1, Ordering::Relaxed);
                self.session_struck = true;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not corrupt a session row"),
        }
    }
}
