-- Refunds. The sum of non-failed refunds of an intent never exceeds what it received: the
-- API checks it with the intent's row locked (FOR UPDATE), so concurrent refunds of one intent
-- are decided one after the other inside the database, never in application memory.
CREATE TABLE refunds (
    id                  TEXT PRIMARY KEY,
    merchant_id         TEXT NOT NULL REFERENCES merchants (id),
    payment_intent_id   TEXT NOT NULL REFERENCES payment_intents (id),
    amount              BIGINT NOT NULL CHECK (amount > 0),
    currency            TEXT NOT NULL,
    reason              TEXT CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    status              TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_reason      TEXT,
    acquirer_refund_id  TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at        TIMESTAMPTZ
);
CREATE INDEX refunds_intent ON refunds (payment_intent_id, created_at);
CREATE INDEX refunds_merchant_created ON refunds (merchant_id, created_at DESC, id DESC);
CREATE INDEX refunds_pending ON refunds (updated_at) WHERE status = 'pending';
