-- One purchase in flight per student: two tabs or a double click become the
-- same purchase (and the same Idempotency-Key), never two charges.
CREATE UNIQUE INDEX payments_one_pending ON payments (student_id) WHERE status = 'pending';
