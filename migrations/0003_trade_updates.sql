-- tickgate schema, version 3: private streams that never lose an update.

-- Every trade update sent to a user, under its per-user sequence, written in the same
-- transaction as the order transition that caused it. A client that reconnects resumes after
-- the last `seq` it saw; rows older than `trading.updates_retention` are pruned. `body` is
-- the update as sent (JSON, with its `seq`); `stored_at` is unix microseconds, for pruning.
CREATE TABLE trade_updates (
    username  TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    order_id  TEXT NOT NULL,
    stored_at INTEGER NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (username, seq)
) WITHOUT ROWID;
CREATE INDEX trade_updates_by_time ON trade_updates (stored_at);

-- A client_order_id is unique per user from now on. Version 1 only kept it unique among open
-- orders, so an existing file may hold repeats: every repeat but the most recent order of
-- each (username, client_order_id) is marked as such and left out of the unique index (its
-- row and history are kept untouched).
ALTER TABLE orders ADD COLUMN client_order_id_repeat INTEGER NOT NULL DEFAULT 0;
UPDATE orders SET client_order_id_repeat = 1
 WHERE rowid NOT IN (SELECT MAX(rowid) FROM orders GROUP BY username, client_order_id);
CREATE UNIQUE INDEX orders_client_order_id ON orders (username, client_order_id)
 WHERE client_order_id_repeat = 0;
