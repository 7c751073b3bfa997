-- Disputes (chargebacks) and their evidence (ARCHITECTURE.md "Disputes").
--
-- One row per acquirer dispute id: the UNIQUE key is what makes a chargeback notification that
-- arrives twice, reordered or concurrently create one dispute (the insert is ON CONFLICT DO
-- NOTHING). The status column is moved only by guarded updates through the dispute state
-- machine (shared/domain/src/dispute.rs).
CREATE TABLE disputes (
    id                    TEXT PRIMARY KEY,
    merchant_id           TEXT NOT NULL,
    payment_intent_id     TEXT NOT NULL REFERENCES payment_intents (id),
    acquirer_dispute_id   TEXT NOT NULL UNIQUE,
    acquirer_charge_id    TEXT NOT NULL,
    amount                BIGINT NOT NULL CHECK (amount > 0),
    currency              TEXT NOT NULL,
    reason                TEXT NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('needs_response', 'under_review', 'won', 'lost')),
    evidence_due_by       TIMESTAMPTZ NOT NULL,
    -- The text fields of the evidence, camelCase keys as the API shows them.
    evidence              JSONB NOT NULL DEFAULT '{}'::jsonb,
    submission_count      INTEGER NOT NULL DEFAULT 0,
    -- Set once, by the guarded UPDATE that sends `dispute.deadline_approaching`.
    deadline_alerted_at   TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX disputes_merchant_created ON disputes (merchant_id, created_at DESC, id DESC);
CREATE INDEX disputes_intent ON disputes (payment_intent_id);
CREATE INDEX disputes_open_deadline ON disputes (evidence_due_by) WHERE status = 'needs_response';

-- Evidence files, sealed (AES-256-GCM with the webhook sealing key, the file id as associated
-- data), so the database never holds a receipt in the clear.
CREATE TABLE dispute_files (
    id             TEXT PRIMARY KEY,
    dispute_id     TEXT NOT NULL REFERENCES disputes (id),
    merchant_id    TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    filename       TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    size           BIGINT NOT NULL,
    sealed         BYTEA NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dispute_files_dispute ON dispute_files (dispute_id, created_at);
