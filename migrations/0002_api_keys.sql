-- tickgate schema, version 2: API key pairs issued through POST /v1/api-keys.
-- The secret is never stored: secret_hash is the hex HMAC-SHA256, under the server key
-- (auth.api_key_hash_key or <data_dir>/api_key_hash.key), of the secret's SHA-256.

CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    -- Set when the key is revoked; a revoked key never authenticates again.
    revoked_at  TEXT
);

CREATE INDEX api_keys_by_user ON api_keys (username) WHERE revoked_at IS NULL;
