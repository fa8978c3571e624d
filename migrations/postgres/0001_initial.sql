-- tickgate PostgreSQL schema, version 1. Applied once, inside the migration transaction.
-- Independent of the SQLite schema (migrations/*.sql): the two evolve separately.
--
-- Money, prices and quantities are NUMERIC (exact; written and read as decimal text, never
-- through a float). Times of entities are RFC 3339 TEXT so they round-trip to the nanosecond
-- like the rest of the gateway's timestamps; times used for pruning are BIGINT unix
-- microseconds. Insertion order, where it matters, is a BIGINT identity column.

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    -- false when the user is no longer in the configuration; their data is kept.
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    updated_at    TEXT NOT NULL
);

-- The exchange's durable events, in commit order (one writer per database at a time: the
-- single writer task of the node holding the exchange lease); replayed to rebuild it.
CREATE TABLE exchange_events (
    seq  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body TEXT NOT NULL
);

CREATE TABLE accounts (
    username     TEXT PRIMARY KEY,
    initial_cash NUMERIC NOT NULL,
    cash         NUMERIC NOT NULL,
    realized_pl  NUMERIC NOT NULL,
    commissions  NUMERIC NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE positions (
    username   TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    qty        NUMERIC NOT NULL,
    -- Signed: what the open shares cost (negative for a short).
    cost_basis NUMERIC NOT NULL,
    PRIMARY KEY (username, symbol)
);

-- One row per order; `body` is the full order entity as JSON, the other columns index it.
-- A client_order_id is unique per user.
CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    position        BIGINT GENERATED ALWAYS AS IDENTITY,
    username        TEXT NOT NULL,
    client_order_id TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    status          TEXT NOT NULL,
    is_open         BOOLEAN NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    body            TEXT NOT NULL,
    UNIQUE (username, client_order_id)
);
CREATE INDEX orders_open ON orders (username) WHERE is_open;
CREATE INDEX orders_by_user ON orders (username, created_at);

-- Append-only: a fill is never updated or deleted.
CREATE TABLE fills (
    execution_id TEXT PRIMARY KEY,
    position     BIGINT GENERATED ALWAYS AS IDENTITY,
    order_id     TEXT NOT NULL,
    username     TEXT NOT NULL,
    symbol       TEXT NOT NULL,
    side         TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    qty          NUMERIC NOT NULL,
    price        NUMERIC NOT NULL,
    commission   NUMERIC NOT NULL,
    t            TEXT NOT NULL
);
CREATE INDEX fills_by_user ON fills (username, position);
CREATE INDEX fills_by_order ON fills (order_id);

-- Every trade update sent to a user, under its per-user sequence, written in the same
-- transaction as the order transition that caused it (see docs/storage.md).
CREATE TABLE trade_updates (
    username  TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    order_id  TEXT NOT NULL,
    stored_at BIGINT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (username, seq)
);
CREATE INDEX trade_updates_by_time ON trade_updates (stored_at);

-- One-minute bars of the simulated or upstream market (floats, as the market data is).
CREATE TABLE bars (
    symbol TEXT NOT NULL,
    t      BIGINT NOT NULL,
    o      DOUBLE PRECISION NOT NULL,
    h      DOUBLE PRECISION NOT NULL,
    l      DOUBLE PRECISION NOT NULL,
    c      DOUBLE PRECISION NOT NULL,
    v      DOUBLE PRECISION NOT NULL,
    n      BIGINT NOT NULL,
    vw     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (symbol, t)
);
CREATE INDEX bars_by_time ON bars (t);

-- Where the public feeds' sequences stand, so cursors stay meaningful across restarts.
CREATE TABLE feed_state (
    feed       TEXT PRIMARY KEY,
    high_water BIGINT NOT NULL
);

-- Single values: `epoch`, `clean_shutdown` ('0' or '1'), `write_probe`.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- API key pairs issued through POST /v1/api-keys; the secret itself is never stored.
CREATE TABLE api_keys (
    key_id      TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX api_keys_by_user ON api_keys (username) WHERE revoked_at IS NULL;

-- The largest fencing token that has written, per lease name; a batch with a smaller token
-- (a former lease holder) is refused whole.
CREATE TABLE fences (
    name  TEXT PRIMARY KEY,
    token BIGINT NOT NULL
);

-- The reply of every command executed, stored with the batch that executed it.
CREATE TABLE command_replies (
    id        TEXT PRIMARY KEY,
    reply     TEXT NOT NULL,
    stored_at BIGINT NOT NULL
);
CREATE INDEX command_replies_by_time ON command_replies (stored_at);
