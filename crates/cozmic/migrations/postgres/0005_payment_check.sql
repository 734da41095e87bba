-- A purchase whose outcome is unknown (the provider's answer was lost, the
-- student left) is asked again by a background worker with the same
-- idempotency key; `check_after` (milliseconds since the epoch) is when a
-- worker may next ask, so that one worker at a time asks about one purchase.
ALTER TABLE payments ADD COLUMN check_after BIGINT;
