//! The integrity check after a run has drained: what users were told was
//! done must be done exactly once, and nothing may be done that nobody asked
//! for.
//!
//! Why it is split in two: a check that has never failed proves nothing, so
//! every check must be shown to catch the defect it is for. The checks are
//! therefore pure functions over [`Witnesses`] (plain data: what the users
//! sent and saw acknowledged, what the database holds, what the SMTP server
//! received, what the Stripe-compatible server charged), and a unit test
//! plants each defect in otherwise clean witnesses and sees it counted. The
//! async part, [`gather`], only reads the witnesses; it holds no judgement.
//!
//! The witnesses are independent of each other on purpose: the users' own
//! record, the app's database, the SMTP server's inbox and the payment
//! provider's ledger. Each check compares two of them:
//!
//! | check | witnesses | counted in [`Integrity`] |
//! |---|---|---|
//! | an acknowledged lesson completion missing from the ledger | users × database | `acknowledged_missing` |
//! | a ledger row the user never sent | users × database | `writes_never_sent` |
//! | XP against the ledger (sum, and one lesson's XP per row) | database | `xp_ledger_mismatches` |
//! | an email committed to the outbox that never arrived | database × SMTP | `emails_lost` |
//! | an email that arrived more than once | SMTP | `emails_duplicated` |
//! | a student charged who is not premium | Stripe × database | `charges_without_premium` |
//! | a premium student with no charge | database × Stripe | `premium_without_charge` |
//! | a student charged more than once | Stripe | `payments_duplicated` |
//! | a question stored more often than the user asked it | users × database | `answers_duplicated` |
//!
//! `integrity_violations` stays what it was (the sum of the first three, the
//! student invariants), so that `report.json`'s old key keeps its meaning.

use std::collections::{BTreeMap, BTreeSet};

use super::world::World;
use super::{RunOutcome, Shared, UserProgress};
use crate::report::Integrity;

/// Everything the checks compare, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Witnesses {
    /// What each user sent and saw acknowledged, by student email.
    pub(crate) users: BTreeMap<String, UserProgress>,
    /// What the database holds, per student.
    pub(crate) students: Vec<StudentRecord>,
    /// The `Message-ID` of every email the app committed to send (one per
    /// outbox row).
    pub(crate) outbox: Vec<String>,
    /// How many times the SMTP server received each `Message-ID`.
    pub(crate) received: BTreeMap<String, usize>,
    /// How many charges the Stripe-compatible server made, by the
    /// `metadata[student_id]` they were made for.
    pub(crate) charges: BTreeMap<String, usize>,
}

/// What the database holds for one student.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StudentRecord {
    /// The student's id.
    pub(crate) id: i64,
    /// The student's email (the key of [`Witnesses::users`]).
    pub(crate) email: String,
    /// The XP total on the student's row.
    pub(crate) xp: i64,
    /// The sum of the student's ledger.
    pub(crate) ledger_sum: i64,
    /// The number of the student's ledger rows.
    pub(crate) ledger_rows: i64,
    /// The form nonces of the student's ledger rows.
    pub(crate) ledger_nonces: BTreeSet<String>,
    /// Whether the student is premium.
    pub(crate) premium: bool,
    /// How many times each question text is stored for the student.
    pub(crate) questions: BTreeMap<String, u64>,
}

/// What the checks found: the counts and one line per problem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Findings {
    /// The counts.
    pub(crate) integrity: Integrity,
    /// One line per problem (empty when all is well).
    pub(crate) problems: Vec<String>,
}

/// Runs every check over `witnesses`.
pub(crate) fn check(witnesses: &Witnesses) -> Findings {
    let mut findings = Findings::default();
    check_students(witnesses, &mut findings);
    check_emails(witnesses, &mut findings);
    check_payments(witnesses, &mut findings);
    let i = &mut findings.integrity;
    i.integrity_violations = i.acknowledged_missing + i.writes_never_sent + i.xp_ledger_mismatches;
    findings
}

/// Every student's XP against the ledger, the ledger against what the user
/// sent and saw acknowledged, the stored questions against those asked.
fn check_students(w: &Witnesses, findings: &mut Findings) {
    let none = UserProgress::default();
    for student in &w.students {
        let id = student.id;
        if student.xp != student.ledger_sum
            || student.ledger_sum != student.ledger_rows * cozmic::db::LESSON_XP
        {
            findings.integrity.xp_ledger_mismatches += 1;
            findings.problems.push(format!(
                "student {id}: XP {} but ledger sum {} over {} rows",
                student.xp, student.ledger_sum, student.ledger_rows
            ));
        }
        // A student no user knows of sent nothing: every row is a phantom.
        let user = w.users.get(&student.email).unwrap_or(&none);
        // One row per nonce is the schema's UNIQUE constraint; what can go
        // wrong is a row the user never sent, or an acknowledged one missing.
        for lost in user.acknowledged.difference(&student.ledger_nonces) {
            findings.integrity.acknowledged_missing += 1;
            findings.problems.push(format!(
                "student {id}: acknowledged completion {lost} is not in the ledger (progress lost)"
            ));
        }
        for phantom in student.ledger_nonces.difference(&user.sent) {
            findings.integrity.writes_never_sent += 1;
            findings.problems.push(format!(
                "student {id}: ledger row {phantom} was never sent by the user"
            ));
        }
        for (question, &stored) in &student.questions {
            let asked = user.questions.get(question).copied().unwrap_or(0);
            if stored > asked {
                findings.integrity.answers_duplicated += stored - asked;
                findings.problems.push(format!(
                    "student {id}: question {question:?} asked {asked} times, stored {stored} times"
                ));
            }
        }
    }
}

/// Every outbox row must have arrived once at the SMTP server.
fn check_emails(w: &Witnesses, findings: &mut Findings) {
    let lost = w
        .outbox
        .iter()
        .filter(|id| !w.received.contains_key(*id))
        .count() as u64;
    let duplicated: u64 = w
        .received
        .values()
        .map(|&n| n.saturating_sub(1) as u64)
        .sum();
    if lost > 0 {
        findings
            .problems
            .push(format!("{lost} of {} emails never arrived", w.outbox.len()));
    }
    if duplicated > 0 {
        findings
            .problems
            .push(format!("{duplicated} extra copies of emails arrived"));
    }
    findings.integrity.emails_lost = lost;
    findings.integrity.emails_duplicated = duplicated;
}

/// Every charge against the premium flags: one charge per premium student,
/// none for anyone else.
fn check_payments(w: &Witnesses, findings: &mut Findings) {
    let premium: BTreeSet<String> = w
        .students
        .iter()
        .filter(|s| s.premium)
        .map(|s| s.id.to_string())
        .collect();
    for (student, &charges) in &w.charges {
        if charges > 1 {
            findings.integrity.payments_duplicated += (charges - 1) as u64;
            findings
                .problems
                .push(format!("student {student} was charged {charges} times"));
        }
        if charges > 0 && !premium.contains(student) {
            findings.integrity.charges_without_premium += 1;
            findings
                .problems
                .push(format!("student {student} was charged but is not premium"));
        }
    }
    for student in &premium {
        if w.charges.get(student).copied().unwrap_or(0) == 0 {
            findings.integrity.premium_without_charge += 1;
            findings.problems.push(format!(
                "student {student} is premium but was never charged"
            ));
        }
    }
}

/// Reads the witnesses of a drained run: the users' record, the app's
/// database, the SMTP server's inbox and the Stripe-compatible server's
/// charges.
pub(super) async fn gather(world: &World, shared: &Shared) -> anyhow::Result<Witnesses> {
    let db = world.app.db();
    let users = shared.progress.lock().expect("progress").clone();
    let mut students = Vec::new();
    for (id, email) in db.students().await? {
        let integrity = db.integrity(id).await?;
        let premium = db.student(id).await?.is_some_and(|s| s.premium != 0);
        let mut questions = BTreeMap::new();
        for q in db.recent_questions(id, i64::MAX).await? {
            *questions.entry(q.question).or_default() += 1;
        }
        students.push(StudentRecord {
            id,
            email,
            xp: integrity.xp,
            ledger_sum: integrity.ledger_sum,
            ledger_rows: integrity.ledger_rows,
            ledger_nonces: db.ledger_nonces(id).await?.into_iter().collect(),
            premium,
            questions,
        });
    }
    let tag = db.instance_tag().await?;
    let outbox = db
        .outbox_ids()
        .await?
        .into_iter()
        .map(|id| cozmic::mail::message_id(id, &tag))
        .collect();
    let received = world.smtp.delivery_report().received;
    let charges = world
        .stripe
        .payments_by_student()
        .into_iter()
        .map(|(student, payments)| (student, payments.len()))
        .collect();
    Ok(Witnesses {
        users,
        students,
        outbox,
        received,
        charges,
    })
}

/// Gathers the witnesses of a drained run and checks them.
pub(super) async fn run_checks(world: &World, shared: &Shared) -> anyhow::Result<RunOutcome> {
    let witnesses = gather(world, shared).await?;
    let Findings {
        integrity,
        problems,
    } = check(&witnesses);
    Ok(RunOutcome {
        integrity,
        problems,
        emails_expected: witnesses.outbox.len() as u64,
        students: witnesses.students.len() as u64,
        ..RunOutcome::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XP: i64 = cozmic::db::LESSON_XP;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Two students who did everything right: one completed two lessons
    /// and asked a question twice, the other bought Premium (charged once);
    /// two emails, each arrived once.
    fn clean() -> Witnesses {
        let mut users = BTreeMap::new();
        users.insert(
            "a@chaos.test".to_owned(),
            UserProgress {
                acknowledged: set(&["n1", "n2"]),
                sent: set(&["n1", "n2", "n3"]),
                questions: BTreeMap::from([("Why?".to_owned(), 2)]),
            },
        );
        users.insert("b@chaos.test".to_owned(), UserProgress::default());
        let a = StudentRecord {
            id: 1,
            email: "a@chaos.test".into(),
            xp: 2 * XP,
            ledger_sum: 2 * XP,
            ledger_rows: 2,
            ledger_nonces: set(&["n1", "n2"]),
            premium: false,
            questions: BTreeMap::from([("Why?".to_owned(), 2)]),
        };
        let b = StudentRecord {
            id: 2,
            email: "b@chaos.test".into(),
            premium: true,
            ..StudentRecord::default()
        };
        Witnesses {
            users,
            students: vec![a, b],
            outbox: vec!["<1@x>".into(), "<2@x>".into()],
            received: BTreeMap::from([("<1@x>".into(), 1), ("<2@x>".into(), 1)]),
            charges: BTreeMap::from([("2".into(), 1)]),
        }
    }

    /// Checks `w` and returns the counts, with the problem lines printed.
    fn findings(w: &Witnesses) -> Integrity {
        let found = check(w);
        println!("{:#?}", found.problems);
        found.integrity
    }

    #[test]
    fn clean_witnesses_find_nothing() {
        let found = check(&clean());
        assert_eq!(found.integrity, Integrity::default());
        assert!(found.problems.is_empty(), "{:?}", found.problems);
    }

    #[test]
    fn an_acknowledged_write_missing_is_caught() {
        let mut w = clean();
        // The row and its XP are gone: lost progress, XP still consistent.
        let a = &mut w.students[0];
        a.ledger_nonces.remove("n2");
        a.ledger_rows = 1;
        a.ledger_sum = XP;
        a.xp = XP;
        let found = findings(&w);
        assert_eq!(found.acknowledged_missing, 1);
        assert_eq!(found.integrity_violations, 1);
        assert_eq!(found.xp_ledger_mismatches, 0);
    }

    #[test]
    fn a_write_the_user_never_sent_is_caught() {
        let mut w = clean();
        let a = &mut w.students[0];
        a.ledger_nonces.insert("forged".into());
        a.ledger_rows = 3;
        a.ledger_sum = 3 * XP;
        a.xp = 3 * XP;
        // A student no user knows of, with a ledger row: a phantom too.
        w.students.push(StudentRecord {
            id: 3,
            email: "stranger@chaos.test".into(),
            xp: XP,
            ledger_sum: XP,
            ledger_rows: 1,
            ledger_nonces: set(&["n9"]),
            ..StudentRecord::default()
        });
        let found = findings(&w);
        assert_eq!(found.writes_never_sent, 2);
        assert_eq!(found.integrity_violations, 2);
    }

    #[test]
    fn xp_against_the_ledger_is_caught() {
        let mut w = clean();
        w.students[0].xp += 5;
        // A row of the wrong value: sum and XP agree, rows do not.
        w.students[1].xp = XP + 1;
        w.students[1].ledger_sum = XP + 1;
        w.students[1].ledger_rows = 1;
        w.users
            .get_mut("b@chaos.test")
            .unwrap()
            .sent
            .insert("n7".into());
        w.students[1].ledger_nonces.insert("n7".into());
        let found = findings(&w);
        assert_eq!(found.xp_ledger_mismatches, 2);
        assert_eq!(found.integrity_violations, 2);
    }

    #[test]
    fn an_email_missing_is_caught() {
        let mut w = clean();
        w.received.remove("<2@x>");
        let found = findings(&w);
        assert_eq!(found.emails_lost, 1);
        assert_eq!(found.emails_duplicated, 0);
    }

    #[test]
    fn an_email_twice_is_caught() {
        let mut w = clean();
        w.received.insert("<1@x>".into(), 3);
        let found = findings(&w);
        assert_eq!(found.emails_duplicated, 2);
        assert_eq!(found.emails_lost, 0);
    }

    #[test]
    fn a_charge_without_premium_is_caught() {
        let mut w = clean();
        w.charges.insert("1".into(), 1);
        // Charged for a student the database does not have at all.
        w.charges.insert("99".into(), 1);
        let found = findings(&w);
        assert_eq!(found.charges_without_premium, 2);
        assert_eq!(found.premium_without_charge, 0);
    }

    #[test]
    fn premium_without_a_charge_is_caught() {
        let mut w = clean();
        w.students[0].premium = true;
        let found = findings(&w);
        assert_eq!(found.premium_without_charge, 1);
        assert_eq!(found.charges_without_premium, 0);
    }

    #[test]
    fn a_double_charge_is_caught() {
        let mut w = clean();
        w.charges.insert("2".into(), 2);
        let found = findings(&w);
        assert_eq!(found.payments_duplicated, 1);
        assert_eq!(found.charges_without_premium, 0);
    }

    #[test]
    fn a_duplicate_tutor_answer_is_caught() {
        let mut w = clean();
        // Asked twice, stored three times; asked never, stored once.
        w.students[0].questions.insert("Why?".into(), 3);
        w.students[1].questions.insert("How?".into(), 1);
        let found = findings(&w);
        assert_eq!(found.answers_duplicated, 2);
        // Not a student invariant: the old key is unchanged.
        assert_eq!(found.integrity_violations, 0);
    }
}
