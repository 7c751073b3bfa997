-- Notifications from the acquirer, stored as received before anything acts on them.
--
-- The acquirer's event id is the primary key: a redelivered notification hits the unique key
-- and changes nothing, so each event is processed once however often the acquirer sends it.
-- The row and the outbox command that queues its processing commit in one transaction, so an
-- acknowledged notification is never lost, and processing records its outcome here in the
-- transaction that applies it.
CREATE TABLE provider_events (
    id            TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    payload       JSONB NOT NULL,
    -- The acquirer's `createdAt`: what the ordering rule compares with an object's updated_at.
    created_at    TIMESTAMPTZ NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at  TIMESTAMPTZ,
    outcome       TEXT CHECK (outcome IN ('applied', 'unchanged', 'ignored', 'dead_lettered')),
    -- Why processing gave up (outcome `dead_lettered`); the row stays unprocessed so a
    -- redelivery from the dead-letter stream can still apply it.
    error         TEXT,
    CHECK ((processed_at IS NULL) = (outcome IS NULL OR outcome = 'dead_lettered'))
);
CREATE INDEX provider_events_unprocessed ON provider_events (received_at) WHERE processed_at IS NULL;
