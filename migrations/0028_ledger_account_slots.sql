-- Running balances in slots, so that concurrent postings of one merchant do not queue on one row.
--
-- Until now each (merchant, currency, account) had one running-balance row, and every charge of
-- a merchant updated the same three (acquirer_receivable, merchant_pending, fees). A row lock
-- is held to commit, including the commit's WAL flush, so all of a merchant's captures ran one
-- after another however many workers there were: with one busy merchant that single row bounded
-- the whole system's payments per second.
--
-- Each account now has up to 16 rows, its slots; a posting adds to the slot `ledger_slot` picks
-- from its source id, so the same source always lands in the same slot and two postings contend
-- only when their sources share a slot. An account's balance is the sum of its slots. Existing
-- balances stay in slot 0, where they are still exact.
ALTER TABLE ledger_accounts ADD COLUMN slot SMALLINT NOT NULL DEFAULT 0 CHECK (slot BETWEEN 0 AND 15);
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_pkey;
ALTER TABLE ledger_accounts ADD PRIMARY KEY (merchant_id, currency, account, slot);

-- The one place the slot of a posting is decided (store::ledger::post, and any bulk load).
CREATE FUNCTION ledger_slot(source_id TEXT) RETURNS SMALLINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT (hashtextextended(source_id, 0) & 15)::smallint $$;
