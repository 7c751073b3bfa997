-- Publishable keys (`pk_...`): they may only create vault tokens, so a checkout page can hold
-- one. The list names every role the contract defines, so roles added later need no change
-- of this constraint.
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'developer', 'support', 'read_only', 'publishable'));
