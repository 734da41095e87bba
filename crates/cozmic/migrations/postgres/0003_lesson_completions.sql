-- A lesson pays its XP once per student: one row per completed lesson, its
-- primary key the guard (a form opened before the lesson was completed, sent
-- after, finds the row and pays nothing). Filled from the ledger, where a
-- lesson completed several times before this migration counts once (the
-- XP it paid then stays in the ledger and the total: history is not rewritten).
CREATE TABLE lesson_completions (
    student_id   BIGINT NOT NULL REFERENCES students (id),
    lesson_id    TEXT   NOT NULL,
    completed_at BIGINT NOT NULL,
    PRIMARY KEY (student_id, lesson_id)
);
INSERT INTO lesson_completions (student_id, lesson_id, completed_at)
SELECT student_id, lesson_id, MIN(created_at) FROM xp_ledger GROUP BY student_id, lesson_id;
