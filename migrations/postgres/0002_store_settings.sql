-- tickgate PostgreSQL schema, version 2: settings every node sharing this database must
-- agree on.

-- One row per setting. `api_key_hash_key` holds a fingerprint of the server key that hashes
-- API key secrets (hex HMAC-SHA256, under that key, of a fixed label; never the key), set by
-- the first node to start and checked by every later start of any node.
CREATE TABLE store_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
