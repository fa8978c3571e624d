-- tickgate schema, version 5: fencing tokens and command replies (cluster trading).

-- The largest fencing token that has written, per lease name. A batch carrying a smaller
-- token comes from a former lease holder and is refused as a whole.
CREATE TABLE fences (
    name  TEXT PRIMARY KEY,
    token INTEGER NOT NULL
);

-- The reply of every command executed, stored with the batch that executed it, so a command
-- delivered again is answered from here instead of running twice. `stored_at` is unix
-- microseconds, for pruning (same retention as trade updates).
CREATE TABLE command_replies (
    id        TEXT PRIMARY KEY,
    reply     TEXT NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE INDEX command_replies_by_time ON command_replies (stored_at);
