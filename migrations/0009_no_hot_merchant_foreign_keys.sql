-- A foreign key makes every insert into the referencing table lock the referenced row FOR KEY
-- SHARE. All of one merchant's writes reference the same merchants row, so under concurrency
-- each insert joins a crowd of lockers on that one row and PostgreSQL builds a new MultiXact
-- for it. A payment inserts three events and two idempotency keys: dropping these two keys
-- took PostgreSQL from 3.7 to 3.1 ms of CPU per payment and the pipeline from about 290 to
-- 350 payments/s on the development machine.
--
-- What the keys guarded still holds: the merchant id in these rows never comes from a
-- client (it is the authenticated key's merchant, or the merchant of the object the event is
-- about), and merchants are never deleted. payment_intents, refunds, webhook subscriptions
-- and API keys keep theirs: one insert per object, and they are the objects that own the
-- merchant relation.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_merchant_id_fkey;
ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_merchant_id_fkey;
ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_merchant_id_fkey;
