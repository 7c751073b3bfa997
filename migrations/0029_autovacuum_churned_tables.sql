-- Autovacuum for the tables every payment churns (scheduler::CHURNED_TABLES): the defaults
-- wait for 20% of a table to be dead before vacuuming it, which for a table of ten million
-- intents is two million dead versions the hot lookups walk past. A fixed threshold instead:
-- vacuum after 10,000 dead versions (the outbox, a queue, after 2,000), whatever the size.
-- Where the server runs without autovacuum, the scheduler vacuums them itself.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);
ALTER TABLE payment_intents SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
ALTER TABLE idempotency_keys SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
ALTER TABLE webhook_delivery_attempts SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
ALTER TABLE ledger_accounts SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);
