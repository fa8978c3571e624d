-- tickgate schema, version 4: trade updates stored in arrival order.

-- Version 3 kept `trade_updates` clustered by (username, seq) (WITHOUT ROWID), so each
-- commit inserted its large rows in the middle of every active user's range: one B-tree leaf
-- per user per commit, split every few rows, plus a second index on `stored_at` for pruning.
-- From version 4 the rows are appended in commit order (a rowid table, so the newest rows of
-- every user share the last pages) and a narrow unique index on (username, seq) serves
-- resumes. Pruning deletes the oldest rows by rowid, which is commit order, so no time index
-- is needed. `order_id` was never read and is gone; `body` is still the update as sent.
CREATE TABLE trade_updates_v4 (
    username  TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    body      TEXT NOT NULL
);
-- Existing rows in the order they were stored (the time, then each user's sequence), so the
-- oldest are still pruned first.
INSERT INTO trade_updates_v4 (username, seq, stored_at, body)
    SELECT username, seq, stored_at, body FROM trade_updates ORDER BY stored_at, username, seq;
DROP TABLE trade_updates;
ALTER TABLE trade_updates_v4 RENAME TO trade_updates;
CREATE UNIQUE INDEX trade_updates_by_user ON trade_updates (username, seq);
