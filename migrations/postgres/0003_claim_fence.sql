-- tickgate PostgreSQL schema, version 3: the fence is claimed by a function that raises when
-- the batch's token is older than the stored one, so a fenced batch aborts its transaction
-- like any other failing statement (the writer then needs no savepoint to keep it apart).

-- claim_fence(name, token): called first in every batch that carries a fencing token.
--
-- * No row for `name`: the token is inserted. Two first claims racing each other are safe:
--   the second insert waits for the first transaction, then finds the conflict and loops to
--   lock and compare the row the first one stored.
-- * A stored token equal to `token`: nothing is written (the row stays locked).
-- * A stored token smaller than `token`: it is raised to `token`.
-- * A stored token larger than `token`: raises SQLSTATE TGF01 (ours) with the stored token,
--   in decimal digits, as the error's DETAIL; the transaction is aborted, so nothing of the
--   batch is committed.
--
-- Why two holders around a lease change serialize here: the row is locked (`FOR UPDATE`, or
-- the insert's own lock) in every case that returns, and the lock is held to the end of the
-- caller's transaction. A batch of the former holder (token t) and one of the new holder
-- (token t' > t) therefore never run their writes concurrently: whichever locks second waits
-- until the other commits or rolls back, then reads the committed token (read committed
-- re-reads the newest row version after the wait). If the new holder committed first, the
-- former one reads t' > t and raises; if the former holder committed first, its batch is
-- ordered entirely before every batch of the new holder. Once a batch with t' is committed,
-- no batch with t commits after it.
CREATE FUNCTION claim_fence(fence_name TEXT, fence_token BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    stored BIGINT;
BEGIN
    LOOP
        SELECT token INTO stored FROM fences WHERE name = fence_name FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO fences (name, token) VALUES (fence_name, fence_token)
            ON CONFLICT (name) DO NOTHING;
            IF FOUND THEN
                RETURN;
            END IF;
            -- Another transaction inserted the row meanwhile and committed: lock and compare.
            CONTINUE;
        END IF;
        IF stored = fence_token THEN
            RETURN;
        END IF;
        IF stored < fence_token THEN
            UPDATE fences SET token = fence_token WHERE name = fence_name;
            RETURN;
        END IF;
        RAISE EXCEPTION 'fenced: fence % holds token %, the batch carries the older token %',
                fence_name, stored, fence_token
            USING ERRCODE = 'TGF01', DETAIL = stored::text;
    END LOOP;
END;
$$;
