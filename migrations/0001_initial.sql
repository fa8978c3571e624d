-- tickgate schema, version 1. Applied once, inside the migration transaction.
-- Money, prices and quantities are stored as decimal TEXT so they round-trip exactly.
-- Times are RFC 3339 TEXT, except bar start times: unix seconds, for range scans.

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    -- 0 when the user is no longer in the configuration; their data is kept.
    active        INTEGER NOT NULL DEFAULT 1,
    updated_at    TEXT NOT NULL
);

-- The exchange's durable events, in commit order; replayed at start-up to rebuild it. The
-- body is the event as JSON (see src/trading/persist.rs); the tables below are derived from
-- the same events in the same transaction, for queries and audits.
CREATE TABLE exchange_events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);

CREATE TABLE accounts (
    username     TEXT PRIMARY KEY,
    initial_cash TEXT NOT NULL,
    cash         TEXT NOT NULL,
    realized_pl  TEXT NOT NULL,
    commissions  TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE positions (
    username        TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    qty             TEXT NOT NULL,
    -- Signed: what the open shares cost (negative for a short).
    cost_basis      TEXT NOT NULL,
    PRIMARY KEY (username, symbol)
) WITHOUT ROWID;

-- One row per order; `body` is the full order entity as JSON, the other columns index it.
CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    client_order_id TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    status          TEXT NOT NULL,
    is_open         INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    body            TEXT NOT NULL
);
CREATE INDEX orders_open ON orders (username) WHERE is_open = 1;
CREATE INDEX orders_by_user ON orders (username, created_at);

-- Append-only: a fill is never updated or deleted.
CREATE TABLE fills (
    execution_id TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL,
    username     TEXT NOT NULL,
    symbol       TEXT NOT NULL,
    side         TEXT NOT NULL,
    qty          TEXT NOT NULL,
    price        TEXT NOT NULL,
    commission   TEXT NOT NULL,
    t            TEXT NOT NULL
);
CREATE INDEX fills_by_user ON fills (username);
CREATE INDEX fills_by_order ON fills (order_id);

CREATE TABLE bars (
    symbol TEXT NOT NULL,
    t      INTEGER NOT NULL,
    o      REAL NOT NULL,
    h      REAL NOT NULL,
    l      REAL NOT NULL,
    c      REAL NOT NULL,
    v      REAL NOT NULL,
    n      INTEGER NOT NULL,
    vw     REAL NOT NULL,
    PRIMARY KEY (symbol, t)
) WITHOUT ROWID;
CREATE INDEX bars_by_time ON bars (t);

-- Where the public feeds' sequences stand, so cursors stay meaningful across restarts.
CREATE TABLE feed_state (
    feed       TEXT PRIMARY KEY,
    high_water INTEGER NOT NULL
);

-- Single values: `epoch` (the feeds' cursor epoch), `clean_shutdown` (0 or 1).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
