-- Webhooks to merchants: subscriptions, one delivery per (event, subscription), and every
-- attempt of every delivery.

-- Signing secrets are stored AES-256-GCM encrypted with the configured key
-- (PAYSTREAM_WEBHOOK_SECRET_KEY), bound to the subscription id; the database never holds one in
-- clear. During a rotation the replaced secret keeps signing until previous_secret_expires_at.
-- A deleted subscription stays as a row (deleted_at) so its deliveries keep their history.
CREATE TABLE webhook_subscriptions (
    id                          TEXT PRIMARY KEY,
    merchant_id                 TEXT NOT NULL REFERENCES merchants (id),
    url                         TEXT NOT NULL,
    events                      TEXT[] NOT NULL,
    secret_sealed               BYTEA NOT NULL,
    previous_secret_sealed      BYTEA,
    previous_secret_expires_at  TIMESTAMPTZ,
    active                      BOOLEAN NOT NULL DEFAULT true,
    disabled_reason             TEXT,
    created_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at                  TIMESTAMPTZ
);
CREATE INDEX webhook_subscriptions_merchant ON webhook_subscriptions (merchant_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- One row per (event, subscription): the unique key is what makes the fan-out idempotent, so
-- an event delivered twice to the fan-out consumer cannot create a second delivery.
--
-- `attempt` counts the attempts of the current cycle and is claimed (incremented) before each
-- HTTP call, so it stays exact across redeliveries and worker crashes. A redelivery (the API's,
-- or a dead letter replayed) starts a new cycle: cycle + 1, attempt 0. `cycle_message_id` is
-- the Nats-Msg-Id of the command driving the current cycle; the worker tells a replayed dead
-- letter (a new id) from a stale copy of the command that already failed (the same id) by it.
CREATE TABLE webhook_deliveries (
    id                TEXT PRIMARY KEY,
    merchant_id       TEXT NOT NULL REFERENCES merchants (id),
    event_id          TEXT NOT NULL REFERENCES events (id),
    subscription_id   TEXT NOT NULL REFERENCES webhook_subscriptions (id),
    url               TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempt           INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    cycle             INTEGER NOT NULL DEFAULT 1,
    cycle_message_id  TEXT,
    response_code     INTEGER,
    error             TEXT,
    next_retry_at     TIMESTAMPTZ,
    delivered_at      TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX webhook_deliveries_merchant_created ON webhook_deliveries (merchant_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_subscription ON webhook_deliveries (subscription_id, created_at DESC);

-- Every attempt, including one a crashed worker left unfinished (outcome 'in_flight' until the
-- next attempt of that delivery marks it 'abandoned').
CREATE TABLE webhook_delivery_attempts (
    id             BIGSERIAL PRIMARY KEY,
    delivery_id    TEXT NOT NULL REFERENCES webhook_deliveries (id),
    cycle          INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    outcome        TEXT NOT NULL CHECK (outcome IN ('in_flight', 'succeeded', 'retry', 'failed', 'abandoned')),
    response_code  INTEGER,
    error          TEXT,
    duration_ms    INTEGER,
    next_retry_at  TIMESTAMPTZ,
    started_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ,
    UNIQUE (delivery_id, cycle, attempt)
);

-- Events are listed per merchant, optionally by type, newest first.
CREATE INDEX events_merchant_type_created ON events (merchant_id, type, created_at DESC, id DESC);
