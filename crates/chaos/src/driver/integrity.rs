//! The integrity check after a run has drained: what users were told was
//! done must be done exactly once.
//!
//! Three independent witnesses, each compared with the app's database: the
//! users' own record of what they sent and saw acknowledged (XP against the
//! ledger, no lost and no phantom lesson completions), the SMTP server's
//! record of what arrived (every committed email exactly once), and the
//! Stripe-compatible server's ledger (every purchase charged at most once).

use std::collections::BTreeSet;

use super::world::World;
use super::{RunOutcome, Shared};
use crate::report::Integrity;
use crate::smtp::SmtpServer;
use crate::upstream::StripeServer;

/// XP against the ledger for every student, every acknowledged lesson
/// present once, every committed email delivered exactly once, every
/// purchase charged at most once.
pub(super) async fn check(world: &World, shared: &Shared) -> anyhow::Result<RunOutcome> {
    let db = world.app.db();
    let mut problems = Vec::new();
    let (violations, students) = check_students(db, shared, &mut problems).await?;
    let (emails_expected, emails_lost, emails_duplicated) =
        check_emails(db, &world.smtp, &mut problems).await?;
    let payments_duplicated = check_payments(&world.stripe, &mut problems);
    Ok(RunOutcome {
        integrity: Integrity {
            integrity_violations: violations,
            emails_lost,
            emails_duplicated,
            payments_duplicated,
        },
        problems,
        emails_expected,
        students,
        ..RunOutcome::default()
    })
}

/// Every student's XP against the ledger, and the ledger against what the
/// user sent and saw acknowledged. Returns the violations and the number of
/// students.
async fn check_students(
    db: &cozmic::db::Db,
    shared: &Shared,
    problems: &mut Vec<String>,
) -> anyhow::Result<(u64, u64)> {
    let mut violations = 0_u64;
    let students = db.students().await?;
    let progress = shared.progress.lock().expect("progress").clone();
    for (id, email) in &students {
        let integrity = db.integrity(*id).await?;
        if integrity.xp != integrity.ledger_sum
            || integrity.ledger_sum != integrity.ledger_rows * cozmic::db::LESSON_XP
        {
            violations += 1;
            problems.push(format!(
                "student {id}: XP {} but ledger sum {} over {} rows",
                integrity.xp, integrity.ledger_sum, integrity.ledger_rows
            ));
        }
        // One row per nonce is the schema's UNIQUE constraint; what can go
        // wrong is a row the user never sent, or an acknowledged one missing.
        let in_ledger: BTreeSet<String> = db.ledger_nonces(*id).await?.into_iter().collect();
        if let Some(user) = progress.get(email) {
            for lost in user.acknowledged.difference(&in_ledger) {
                violations += 1;
                problems.push(format!("student {id}: acknowledged completion {lost} is not in the ledger (progress lost)"));
            }
            for phantom in in_ledger.difference(&user.sent) {
                violations += 1;
                problems.push(format!(
                    "student {id}: ledger row {phantom} was never sent by the user"
                ));
            }
        }
    }
    Ok((violations, students.len() as u64))
}

/// Every outbox row must have arrived once at the SMTP server. Returns the
/// emails expected, lost and duplicated.
async fn check_emails(
    db: &cozmic::db::Db,
    smtp: &SmtpServer,
    problems: &mut Vec<String>,
) -> anyhow::Result<(u64, u64, u64)> {
    let tag = db.instance_tag().await?;
    let expected: Vec<String> = db
        .outbox_ids()
        .await?
        .into_iter()
        .map(|id| cozmic::mail::message_id(id, &tag))
        .collect();
    let delivery = smtp.delivery_report();
    let emails_lost = delivery.missing(expected.iter().map(String::as_str)).len() as u64;
    let emails_duplicated = delivery.duplicated() as u64;
    if emails_lost > 0 {
        problems.push(format!(
            "{emails_lost} of {} emails never arrived",
            expected.len()
        ));
    }
    if emails_duplicated > 0 {
        problems.push(format!(
            "{emails_duplicated} extra copies of emails arrived"
        ));
    }
    Ok((expected.len() as u64, emails_lost, emails_duplicated))
}

/// Students charged more than once; returns the extra charges.
fn check_payments(stripe: &StripeServer, problems: &mut Vec<String>) -> u64 {
    let mut payments_duplicated = 0;
    for (student, payments) in stripe.payments_by_student() {
        if payments.len() > 1 {
            payments_duplicated += (payments.len() - 1) as u64;
            problems.push(format!(
                "student {student} was charged {} times",
                payments.len()
            ));
        }
    }
    payments_duplicated
}
