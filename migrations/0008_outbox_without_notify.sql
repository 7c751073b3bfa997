-- Relays are woken in-process by the writer after its commit (nats/src/relay.rs). NOTIFY made
-- every outbox-writing commit take PostgreSQL's database-wide notification lock and hold it
-- through the WAL flush, so those commits ran one fsync at a time however many clients there
-- were.
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
