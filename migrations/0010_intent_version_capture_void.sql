-- What the workers' money paths need to know about an intent, kept on the intent itself
-- rather than in a queue message that can be lost or dead-lettered.

-- A counter every write of the intent increments. `processing` is entered more than once in
-- an intent's life (confirm, then a manual capture), so a guard on the status alone cannot
-- tell a worker's stale read from the intent as it is now; a guard on the version can, because
-- a version never recurs.
ALTER TABLE payment_intents ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- The amount a manual capture asked for, recorded in the capture's own transaction, so
-- reconciliation, a dead-letter replay and the worker all capture exactly that and never the
-- whole authorization.
ALTER TABLE payment_intents ADD COLUMN amount_to_capture BIGINT
    CHECK (amount_to_capture IS NULL OR amount_to_capture > 0);

-- When the acquirer confirmed that a canceled intent's charge holds no money any more (voided,
-- or never authorized). A canceled intent with a charge and no confirmation still has a hold
-- on the customer's card, and reconciliation keeps asking until it is released.
ALTER TABLE payment_intents ADD COLUMN void_confirmed_at TIMESTAMPTZ;

-- Reconciliation looks for canceled intents whose hold was never released; they are few, so
-- the index holds only those.
CREATE INDEX payment_intents_unconfirmed_voids ON payment_intents (updated_at)
    WHERE status = 'canceled' AND acquirer_charge_id IS NOT NULL AND void_confirmed_at IS NULL;
