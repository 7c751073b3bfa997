-- The two tables every payment writes and a background job deletes from: outbox rows are
-- stamped published_at within milliseconds and purged hours later, idempotency keys are
-- purged after a day. Left to the default autovacuum thresholds (20% of the table), a table
-- of millions of rows piles up dead tuples, and the hot partial index the relay claims from
-- carries every one of them until a vacuum runs. Vacuum them after 1% instead.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE idempotency_keys SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);

-- The purge deletes sent rows older than the retention; without an index on published_at it
-- reads the whole table each round, a cost that grows with every payment ever made.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
