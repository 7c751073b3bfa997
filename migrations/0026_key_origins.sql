-- The browser origins a publishable key may be used from (`paystream keys create --role
-- publishable --origin https://shop.example`): the API's client-side intent calls and the
-- vault's token endpoint answer CORS for these origins only. Empty means no cross-origin use
-- at all, so a key made without `--origin` fails closed.
ALTER TABLE api_keys ADD COLUMN allowed_origins TEXT[] NOT NULL DEFAULT '{}';
