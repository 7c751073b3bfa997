-- The double-entry ledger (ARCHITECTURE.md "The ledger"; chart of accounts in
-- shared/domain/src/ledger.rs).
--
-- ledger_transactions and ledger_entries are append-only, like the audit log: a correction is a
-- new posting, never an edit. ledger_accounts keeps each account's running balance, updated in
-- the posting's own database transaction; `paystream ledger verify` checks it against the sum
-- of the entries. balance_transactions is the merchant's view of the same movements; its
-- status and payout change when the acquirer settles it, so it is not append-only.

CREATE TABLE ledger_accounts (
    merchant_id  TEXT NOT NULL,
    currency     TEXT NOT NULL,
    account      TEXT NOT NULL CHECK (account IN ('acquirer_receivable', 'merchant_pending',
                     'merchant_available', 'fees', 'refunds', 'disputes', 'payouts')),
    -- Signed minor units: debits positive, credits negative.
    balance      BIGINT NOT NULL,
    PRIMARY KEY (merchant_id, currency, account)
);

CREATE TABLE ledger_transactions (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    currency     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('charge', 'refund', 'dispute_withdrawal',
                     'dispute_reinstatement', 'settlement', 'payout', 'adjustment')),
    -- The object whose change this posting records (pi_, re_, dp_, txn_, po_ ...).
    source_id    TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- One posting per source event: a redelivered command or notification never posts twice.
    UNIQUE (kind, source_id)
);
CREATE INDEX ledger_transactions_merchant ON ledger_transactions (merchant_id, created_at);

CREATE TABLE ledger_entries (
    seq             BIGSERIAL PRIMARY KEY,
    transaction_id  TEXT NOT NULL REFERENCES ledger_transactions (id),
    merchant_id     TEXT NOT NULL,
    currency        TEXT NOT NULL,
    account         TEXT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount <> 0),
    UNIQUE (transaction_id, account)
);
CREATE INDEX ledger_entries_account ON ledger_entries (merchant_id, currency, account);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE TABLE balance_transactions (
    id                     TEXT PRIMARY KEY,
    merchant_id            TEXT NOT NULL,
    ledger_transaction_id  TEXT NOT NULL UNIQUE REFERENCES ledger_transactions (id),
    type                   TEXT NOT NULL CHECK (type IN ('charge', 'refund', 'adjustment', 'payout')),
    reporting_category     TEXT NOT NULL CHECK (reporting_category IN ('charge', 'refund',
                               'dispute', 'dispute_reversal', 'fee', 'payout')),
    -- Signed minor units from the merchant's side: a charge is positive, a refund negative.
    amount                 BIGINT NOT NULL,
    fee                    BIGINT NOT NULL CHECK (fee >= 0),
    net                    BIGINT NOT NULL CHECK (net = amount - fee),
    currency               TEXT NOT NULL,
    source                 TEXT NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('pending', 'available')),
    payout_id              TEXT,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'available') = (payout_id IS NOT NULL) OR type IN ('payout', 'adjustment'))
);
CREATE INDEX balance_transactions_merchant ON balance_transactions (merchant_id, created_at DESC, id DESC);
CREATE INDEX balance_transactions_source ON balance_transactions (source);
CREATE INDEX balance_transactions_payout ON balance_transactions (payout_id) WHERE payout_id IS NOT NULL;
