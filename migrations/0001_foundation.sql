-- The foundation: merchants and keys, payment intents, idempotency keys, the audit log,
-- events and the transactional outbox.

CREATE TABLE merchants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Secret keys are high-entropy random strings, so a single SHA-256 is enough to make a leaked
-- table useless; a slow password hash would only add latency to every request.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    key_hash     BYTEA NOT NULL UNIQUE,
    key_prefix   TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'read_only')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_merchant ON api_keys (merchant_id);

CREATE TABLE payment_intents (
    id                        TEXT PRIMARY KEY,
    merchant_id               TEXT NOT NULL REFERENCES merchants (id),
    amount                    BIGINT NOT NULL CHECK (amount > 0),
    currency                  TEXT NOT NULL,
    status                    TEXT NOT NULL,
    amount_capturable         BIGINT NOT NULL DEFAULT 0 CHECK (amount_capturable >= 0),
    amount_received           BIGINT NOT NULL DEFAULT 0 CHECK (amount_received >= 0),
    amount_refunded           BIGINT NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    customer_id               TEXT NOT NULL,
    payment_method_id         TEXT,
    capture_method            TEXT NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    description               TEXT,
    metadata                  JSONB NOT NULL DEFAULT '{}'::jsonb,
    last_payment_error        JSONB,
    next_action               JSONB,
    return_url                TEXT,
    authorization_expires_at  TIMESTAMPTZ,
    canceled_at               TIMESTAMPTZ,
    cancellation_reason       TEXT,
    created_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (amount_refunded <= amount_received),
    CHECK (amount_received <= amount)
);
-- Lists are newest first with a (created_at, id) cursor, always inside one merchant.
CREATE INDEX payment_intents_merchant_created ON payment_intents (merchant_id, created_at DESC, id DESC);
CREATE INDEX payment_intents_merchant_customer ON payment_intents (merchant_id, customer_id, created_at DESC);
CREATE INDEX payment_intents_status_updated ON payment_intents (status, updated_at);

-- Stripe-style idempotency keys: one row per (merchant, key) with the request fingerprint,
-- a lock with a TTL and, once finished, the stored response.
CREATE TABLE idempotency_keys (
    merchant_id      TEXT NOT NULL REFERENCES merchants (id),
    key              TEXT NOT NULL,
    request_method   TEXT NOT NULL,
    request_path     TEXT NOT NULL,
    fingerprint      BYTEA NOT NULL,
    locked_until     TIMESTAMPTZ,
    response_status  INTEGER,
    response_body    BYTEA,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Events are what merchants can list and what webhooks deliver.
CREATE TABLE events (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL REFERENCES merchants (id),
    type         TEXT NOT NULL,
    object_id    TEXT NOT NULL,
    data         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX events_merchant_created ON events (merchant_id, created_at DESC, id DESC);

-- The transactional outbox: written in the same transaction as the state change it announces,
-- published by the relay with Nats-Msg-Id = id, then stamped published_at.
CREATE TABLE outbox (
    id            UUID PRIMARY KEY,
    subject       TEXT NOT NULL,
    payload       JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;

-- Wake the relay as soon as a transaction that wrote outbox rows commits (NOTIFY is delivered
-- at commit), so there is no polling delay. One notification per statement is enough.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paystream_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- The audit log: append-only and hash-chained per object.
--
-- Each entry carries the SHA-256 of the entry before it for the same object. A chain per
-- object (rather than one global chain) keeps appends for different objects from contending
-- on one lock; writers to the same object are serialized by an advisory lock on the object id.
CREATE TABLE audit_log (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    merchant_id  TEXT,
    object_type  TEXT NOT NULL,
    object_id    TEXT NOT NULL,
    action       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    before       JSONB,
    after        JSONB,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    prev_hash    BYTEA NOT NULL,
    hash         BYTEA NOT NULL
);
CREATE INDEX audit_log_object ON audit_log (object_id, seq);
CREATE INDEX audit_log_merchant ON audit_log (merchant_id, seq DESC);

-- The text an entry's hash covers. `paystream audit verify` recomputes SHA-256 over
-- prev_hash || this text, so the formula lives in exactly one place.
CREATE FUNCTION audit_payload(e audit_log) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT concat_ws(E'\x1f',
        e.seq::text, e.id, coalesce(e.merchant_id, ''), e.object_type, e.object_id, e.action,
        e.actor, coalesce(e.before::text, ''), coalesce(e.after::text, ''),
        to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
$$;

CREATE FUNCTION audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous BYTEA;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('audit:' || NEW.object_id, 0));
    SELECT a.hash INTO previous FROM audit_log a
        WHERE a.object_id = NEW.object_id ORDER BY a.seq DESC LIMIT 1;
    NEW.prev_hash := coalesce(previous, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.hash := sha256(NEW.prev_hash || convert_to(audit_payload(NEW), 'UTF8'));
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_chain();

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
