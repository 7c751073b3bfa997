-- Settlement reconciliation (ARCHITECTURE.md "Settlement reconciliation").
--
-- settlement_reports: each payout the acquirer published, as fetched, with how processing it
-- went. A report is applied in one database transaction; one that cannot be read stays
-- `failed` with the reason (an operator alert) and nothing of it is applied.
-- payouts: the merchant's view, one per (acquirer payout, merchant) that it paid.
-- settlement_discrepancies: each difference found, once: `key` is the kind with the report
-- line (or, for a charge missing from every report, the charge), so processing a report again
-- cannot file it twice.

CREATE TABLE settlement_reports (
    -- Arrival order, so "the newest report we know" is the cursor for the acquirer's list.
    seq                 BIGSERIAL UNIQUE,
    acquirer_payout_id  TEXT PRIMARY KEY,
    currency            TEXT NOT NULL,
    amount              BIGINT NOT NULL,
    arrival_date        DATE NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'reconciled', 'failed')),
    lines               INTEGER NOT NULL DEFAULT 0,
    failure_reason      TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    acquirer_created_at TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settlement_reports_unfinished ON settlement_reports (seq) WHERE status <> 'reconciled';

CREATE TABLE payouts (
    id                     TEXT PRIMARY KEY,
    merchant_id            TEXT NOT NULL,
    acquirer_payout_id     TEXT NOT NULL REFERENCES settlement_reports (acquirer_payout_id),
    currency               TEXT NOT NULL,
    amount                 BIGINT NOT NULL,
    arrival_date           DATE NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('paid')),
    reconciliation_status  TEXT NOT NULL CHECK (reconciliation_status IN ('matched', 'discrepancies')),
    lines                  INTEGER NOT NULL,
    matched                INTEGER NOT NULL,
    discrepancies          INTEGER NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (acquirer_payout_id, merchant_id)
);
CREATE INDEX payouts_merchant ON payouts (merchant_id, created_at DESC, id DESC);

CREATE TABLE settlement_discrepancies (
    id                  TEXT PRIMARY KEY,
    key                 TEXT NOT NULL UNIQUE,
    -- NULL when the line names nothing of ours: only operators see it (`paystream settlement
    -- discrepancies`), no merchant can be told.
    merchant_id         TEXT,
    payout_id           TEXT REFERENCES payouts (id),
    acquirer_payout_id  TEXT REFERENCES settlement_reports (acquirer_payout_id),
    kind                TEXT NOT NULL CHECK (kind IN ('missing_in_report', 'unknown_in_report',
                            'amount_mismatch', 'fee_mismatch', 'currency_mismatch',
                            'duplicate_in_report')),
    reference           TEXT,
    acquirer_id         TEXT,
    expected            TEXT,
    actual              TEXT,
    status              TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    resolution_note     TEXT,
    resolved_by         TEXT,
    resolved_at         TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE INDEX settlement_discrepancies_merchant ON settlement_discrepancies (merchant_id, created_at DESC, id DESC);
CREATE INDEX settlement_discrepancies_payout ON settlement_discrepancies (payout_id);
-- The missing-in-report sweep looks for pending captures by age.
CREATE INDEX balance_transactions_pending_charges ON balance_transactions (currency, created_at)
    WHERE status = 'pending' AND type = 'charge';
