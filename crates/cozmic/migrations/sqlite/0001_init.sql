-- cozmic's schema (SQLite). Times are Unix milliseconds; flags are 0/1.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE students (
    id              INTEGER PRIMARY KEY,
    email           TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    password_hash   TEXT    NOT NULL,
    xp              BIGINT  NOT NULL DEFAULT 0,
    streak          BIGINT  NOT NULL DEFAULT 0,
    last_active_day BIGINT,
    is_admin        BIGINT  NOT NULL DEFAULT 0,
    premium         BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL
);

-- Every XP change, once: the XP total always equals this table's sum.
-- request_id is the form's nonce, so a resubmitted form is not applied twice.
CREATE TABLE xp_ledger (
    id         INTEGER PRIMARY KEY,
    student_id BIGINT  NOT NULL REFERENCES students (id),
    lesson_id  TEXT    NOT NULL,
    points     BIGINT  NOT NULL,
    request_id TEXT    NOT NULL UNIQUE,
    created_at BIGINT  NOT NULL
);
CREATE INDEX xp_ledger_student ON xp_ledger (student_id, id);

CREATE TABLE questions (
    id         INTEGER PRIMARY KEY,
    student_id BIGINT  NOT NULL REFERENCES students (id),
    question   TEXT    NOT NULL,
    answer     TEXT,
    status     TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX questions_student ON questions (student_id, id);

CREATE TABLE payments (
    id              INTEGER PRIMARY KEY,
    student_id      BIGINT  NOT NULL REFERENCES students (id),
    idempotency_key TEXT    NOT NULL UNIQUE,
    provider_id     TEXT,
    amount          BIGINT  NOT NULL,
    status          TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL
);

-- Emails to send, written in the same transaction as their cause.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    recipient       TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    sent_at         BIGINT,
    failed_at       BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (sent_at, next_attempt_at);
