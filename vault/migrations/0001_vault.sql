-- The vault's own tables. They live in schema `vault`, and this migrator runs with
-- `search_path = vault`, so its bookkeeping (`vault._sqlx_migrations`) is apart from the main
-- schema's. Nothing outside the vault crate reads or writes them (ARCHITECTURE.md, "The vault").

-- Data keys (DEKs), each wrapped (AES-256-GCM) by the key-encryption key named in `kek_id`.
-- Rotating the KEK rewrites this table only: records stay as they are.
CREATE TABLE data_keys (
    id           TEXT PRIMARY KEY,
    -- `record`: the key of one record; `fingerprint`: the vault's HMAC secret (one row).
    purpose      TEXT NOT NULL CHECK (purpose IN ('record', 'fingerprint')),
    kek_id       TEXT NOT NULL,
    wrapped      BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    rewrapped_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX data_keys_one_fingerprint_key ON data_keys (purpose) WHERE purpose = 'fingerprint';
CREATE INDEX data_keys_by_kek ON data_keys (kek_id);

-- One card or bank account. `sealed` is AES-256-GCM under the record's own data key, with the
-- record id, merchant and kind as associated data; `display` holds only what a merchant may see.
CREATE TABLE records (
    id           TEXT PRIMARY KEY,
    merchant_id  TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('card', 'bank_account')),
    data_key_id  TEXT NOT NULL UNIQUE REFERENCES data_keys (id),
    sealed       BYTEA NOT NULL,
    display      JSONB NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when a token of it is consumed: only stored records can be forwarded.
    stored_at    TIMESTAMPTZ
);
CREATE INDEX records_by_fingerprint ON records (merchant_id, fingerprint);

-- Single-use tokens handed to browsers; each names the record it will store.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    record_id   TEXT NOT NULL UNIQUE REFERENCES records (id),
    kind        TEXT NOT NULL CHECK (kind IN ('card', 'bank_account')),
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ
);

-- Idempotency-Key answers of `POST /vault/tokens`. `request_mac` is an HMAC under the vault's
-- secret (never a plain hash: a card number's digits are few enough to brute-force a hash),
-- and `response_body` holds display fields only.
CREATE TABLE idempotency_keys (
    merchant_id     TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_mac     BYTEA NOT NULL,
    response_status SMALLINT NOT NULL,
    response_body   JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);

-- Every token creation, token use and forward: who, what, when. Never a number.
CREATE TABLE audit_log (
    seq         BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    merchant_id TEXT,
    detail      JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_object ON audit_log (object_id, seq);

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'vault.audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
