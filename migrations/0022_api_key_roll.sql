-- Rolling a key (`paystream keys roll`): the old key keeps authenticating until `expires_at`,
-- so deployments can switch to the new secret without an outage, and then stops (401). The
-- link to its successor is kept for operators reading `paystream keys list`.
ALTER TABLE api_keys
    ADD COLUMN expires_at TIMESTAMPTZ,
    ADD COLUMN rolled_to  TEXT REFERENCES api_keys (id);
