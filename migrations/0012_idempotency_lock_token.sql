-- A fencing token for the Idempotency-Key lock. Each request that takes the lock (a new key,
-- or the take-over of a lock whose holder seems dead) writes a fresh token; the holder's
-- transaction stores its answer only WHERE lock_token = its own token. A holder that was
-- merely slow, and lost the lock to a retry, therefore stores nothing and rolls back all it
-- did, instead of committing a second copy of the work.
ALTER TABLE idempotency_keys ADD COLUMN lock_token UUID;
