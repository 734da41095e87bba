-- An email being delivered is claimed by one worker until `claimed_until`
-- (milliseconds since the epoch), so that several instances on one database
-- never send the same email; a worker that dies mid-delivery loses its claim
-- when the lease runs out, and another worker takes the email over.
ALTER TABLE outbox ADD COLUMN claimed_until BIGINT;
