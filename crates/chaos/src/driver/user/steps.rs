//! What each action of the journey sends and what it expects back: the
//! signup and login forms, the dashboard, a lesson's completion form (with
//! its nonce), the tutor's question, the Premium purchase.
//!
//! Apart from the journey because these know the app's pages (paths, form
//! fields, the markers that say a page is the one asked for), while the
//! journey only knows actions and outcomes.

use super::{LESSONS, Seen, User};
use crate::report::FailureKind;

/// The value of the form field `name` in `page`.
pub(in crate::driver) fn form_value(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    page[start..].split('"').next().map(str::to_owned)
}

impl User {
    pub(super) async fn sign_up(&mut self, http: &reqwest::Client) -> Seen {
        let email = self.email();
        let csrf = match self.csrf_token(http, "/signup").await {
            Ok(token) => token,
            Err(seen) => return seen,
        };
        let request = http.post(format!("{}/signup", self.base)).form(&[
            ("name", format!("Chaos User {}", self.index)),
            ("email", email.clone()),
            ("password", "chaos-password-123".to_owned()),
            ("csrf", csrf),
        ]);
        let request = self.maybe_panic(request);
        let request = self.maybe_panic_after(request);
        let (seen, body) = self
            .judge(self.send(request).await, |b| b.contains("id=\"xp\""))
            .await;
        if seen == Seen::Hard(FailureKind::Unexpected) && body.contains("already exists") {
            // An earlier try did sign up (its answer was lost): log in.
            return self.log_in(http).await;
        }
        if seen == Seen::Ok {
            // Known from now on, with no progress yet.
            self.shared.update_progress(email, |_| {});
        }
        seen
    }

    pub(super) async fn log_in(&mut self, http: &reqwest::Client) -> Seen {
        let csrf = match self.csrf_token(http, "/login").await {
            Ok(token) => token,
            Err(seen) => return seen,
        };
        let request = http.post(format!("{}/login", self.base)).form(&[
            ("email", self.email()),
            ("password", "chaos-password-123".to_owned()),
            ("csrf", csrf),
        ]);
        let (seen, body) = self
            .judge(self.send(request).await, |b| b.contains("id=\"xp\""))
            .await;
        if seen != Seen::Ok && body.contains("do not match") {
            // Never signed up (every try failed): sign up now.
            return Box::pin(self.sign_up(http)).await;
        }
        seen
    }

    pub(super) async fn dashboard(&mut self, http: &reqwest::Client) -> Seen {
        let request = self.maybe_panic(http.get(format!("{}/dashboard", self.base)));
        self.judge(self.send(request).await, |b| b.contains("id=\"xp\""))
            .await
            .0
    }

    pub(super) async fn complete(&mut self, http: &reqwest::Client) -> Seen {
        // Pressing again re-sends the same form; a new action opens a lesson.
        let pending = if self.retrying {
            self.pending_lesson.clone()
        } else {
            None
        };
        let (lesson, nonce, csrf) = match pending {
            // The page is opened again for its CSRF token: the same form.
            Some((lesson, nonce)) => {
                match self.csrf_token(http, &format!("/lessons/{lesson}")).await {
                    Ok(csrf) => (lesson, nonce, csrf),
                    Err(seen) => return seen,
                }
            }
            None => match self.open_lesson(http).await {
                Ok(form) => form,
                Err(seen) => return seen,
            },
        };
        self.pending_lesson = Some((lesson, nonce.clone()));
        let email = self.email();
        self.shared.update_progress(email.clone(), |p| {
            p.sent.insert(nonce.clone());
        });
        let url = format!("{}/lessons/{lesson}/complete", self.base);
        let form = || {
            http.post(&url)
                .form(&[("nonce", nonce.as_str()), ("csrf", csrf.as_str())])
        };
        self.maybe_abandon(Some(form())).await;
        let request = self.maybe_panic(form());
        let request = self.maybe_panic_after(request);
        let (seen, _) = self
            .judge(self.send(request).await, |b| b.contains("Lesson complete:"))
            .await;
        if seen == Seen::Ok {
            if !self.done.contains(&lesson) {
                self.done.push(lesson);
            }
            self.shared.update_progress(email, |p| {
                p.acknowledged.insert(nonce);
            });
        }
        seen
    }

    /// Opens a lesson not completed yet and reads its form's nonce (and CSRF
    /// token); `Err`
    /// is what the action ends in without sending a form (a failed page, or
    /// a lesson found completed already).
    async fn open_lesson(
        &mut self,
        http: &reqwest::Client,
    ) -> Result<(&'static str, String, String), Seen> {
        let left: Vec<&'static str> = LESSONS
            .iter()
            .copied()
            .filter(|l| !self.done.contains(l))
            .collect();
        // (Never empty: the journey moves to the next student first.)
        let Some(&lesson) = left.get(self.rng.usize(..left.len().max(1))) else {
            return Err(Seen::Ok);
        };
        let (seen, page) = self
            .judge(
                self.send(http.get(format!("{}/lessons/{lesson}", self.base)))
                    .await,
                |b| b.contains("name=\"nonce\"") || b.contains("id=\"completed\""),
            )
            .await;
        if seen != Seen::Ok {
            return Err(seen);
        }
        // A lesson pays once: one completed already is read again,
        // with no form to send.
        if !page.contains("name=\"nonce\"") {
            self.done.push(lesson);
            return Err(Seen::Ok);
        }
        let (Some(nonce), Some(csrf)) = (form_value(&page, "nonce"), form_value(&page, "csrf"))
        else {
            return Err(Seen::Hard(FailureKind::Unexpected));
        };
        Ok((lesson, nonce, csrf))
    }

    pub(super) async fn ask(&mut self, http: &reqwest::Client) -> Seen {
        let topics = [
            "light-years",
            "the Moon",
            "seasons",
            "black holes",
            "exoplanets",
            "rockets",
        ];
        let question = format!(
            "Can you explain {}?",
            topics[self.rng.usize(..topics.len())]
        );
        let csrf = match self.csrf_token(http, "/tutor").await {
            Ok(token) => token,
            Err(seen) => return seen,
        };
        // The witness for duplicate answers.
        self.shared.update_progress(self.email(), |p| {
            *p.questions.entry(question.clone()).or_default() += 1;
        });
        let request = self.maybe_panic(
            http.post(format!("{}/tutor", self.base))
                .form(&[("question", question), ("csrf", csrf)]),
        );
        self.judge(self.send(request).await, |b| b.contains("id=\"answer\""))
            .await
            .0
    }

    pub(super) async fn subscribe(&mut self, http: &reqwest::Client) -> Seen {
        let (seen, page) = self
            .judge(
                self.send(http.get(format!("{}/premium", self.base))).await,
                |b| b.contains("Premium"),
            )
            .await;
        if seen != Seen::Ok {
            return seen;
        }
        if page.contains("You are a premium student") {
            return Seen::Ok;
        }
        let (Some(purchase), Some(csrf)) =
            (form_value(&page, "purchase"), form_value(&page, "csrf"))
        else {
            return Seen::Hard(FailureKind::Unexpected);
        };
        let request = http
            .post(format!("{}/premium/subscribe", self.base))
            .form(&[("purchase", purchase.as_str()), ("csrf", csrf.as_str())]);
        let request = self.maybe_panic(request);
        self.judge(self.send(request).await, |b| {
            b.contains("welcome to Premium") || b.contains("You are a premium student")
        })
        .await
        .0
    }
}

impl User {
    /// Opens the page at `path` and reads its CSRF token, as a browser has
    /// it before sending the page's form (cozmic refuses forms without one:
    /// issue 17). `Err` is what the action ends in when the page fails.
    async fn csrf_token(&mut self, http: &reqwest::Client, path: &str) -> Result<String, Seen> {
        let response = self.send(http.get(format!("{}{path}", self.base))).await;
        let (seen, page) = self.judge(response, |b| b.contains("name=\"csrf\"")).await;
        // A form's page (the login page too, which `judge` calls signed
        // out) carries the token; a failed page does not.
        match form_value(&page, "csrf") {
            Some(token) => Ok(token),
            None if seen == Seen::Ok => Err(Seen::Hard(FailureKind::Unexpected)),
            None => Err(seen),
        }
    }
}
