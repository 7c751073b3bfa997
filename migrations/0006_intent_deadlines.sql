-- Deadlines in a payment intent's life, kept by the scheduler's leader: authorizations that
-- expire, intents abandoned before payment, and the notice that an authorization is about to
-- expire.

-- When `payment_intent.authorization_expiring` went out for this intent. The notice is sent by
-- a guarded UPDATE that sets it only while it is NULL, so it goes out once per intent however
-- often the job runs, and across scheduler restarts and leader changes: a flag kept in the
-- scheduler's memory would die with the process.
ALTER TABLE payment_intents ADD COLUMN authorization_expiring_notified_at TIMESTAMPTZ;

-- The scheduler looks for authorizations by their expiry; only `requires_capture` rows hold
-- one, so the index stays as small as the number of open authorizations. (Abandoned intents
-- are found through payment_intents_status_updated.)
CREATE INDEX payment_intents_authorization_expiry ON payment_intents (authorization_expires_at)
    WHERE status = 'requires_capture';
