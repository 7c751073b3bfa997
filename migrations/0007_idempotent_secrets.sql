-- The answers to subscribe and rotate-secret carry a signing secret. Their Idempotency-Key
-- replay must return the original body (CONTRACT.md), secret included, without the secret
-- ever being stored in clear: the whole original body is kept here sealed (AES-256-GCM under
-- PAYSTREAM_WEBHOOK_SECRET_KEY, bound to the merchant and key), beside the secret-free copy
-- in response_body.
ALTER TABLE idempotency_keys ADD COLUMN response_sealed BYTEA;
