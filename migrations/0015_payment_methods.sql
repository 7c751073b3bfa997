-- Stored payment methods: a merchant's customer's card or bank account, as the vault's
-- reference plus the display fields the vault returned when the token was consumed. No number
-- is ever here; the vault alone holds those (ARCHITECTURE.md, "The vault").
CREATE TABLE payment_methods (
    id          text PRIMARY KEY,
    merchant_id text NOT NULL,
    type        text NOT NULL CHECK (type IN ('card', 'bank_account')),
    -- NULL once detached: a detached method is kept for the intents that used it.
    customer_id text,
    -- The vault's record id: what a forward names. One payment method per record.
    vault_ref   text NOT NULL UNIQUE,
    -- brand, last4, expMonth, expYear, funding, fingerprint / bankName, last4, routingNumber,
    -- country, accountHolderType, fingerprint.
    display     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    detached_at timestamptz
);

CREATE INDEX payment_methods_by_customer
    ON payment_methods (merchant_id, customer_id, created_at DESC, id DESC);
