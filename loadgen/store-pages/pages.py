#!/usr/bin/env python3
"""WAL pages written per store commit for the `orders` benchmark's workload, per schema.

Replays what the exchange stores for each filled market order (two exchange events, the
order row, one fill, the account, the position, and from schema version 3 two trade
updates) against the real migrations in SQLite (WAL, synchronous=FULL, a savepoint per
order as the writer thread does), with automatic checkpoints off, and counts the WAL frames
each commit adds. Frames are what the writer checksums, writes and later checkpoints, so
they follow the store's I/O cost without the noise of a shared machine's clock.

    python3 loadgen/store-pages/pages.py [ORDERS_PER_COMMIT ...]   (default: 8 16)

Configurations: v2 (before issue 15), v3 (issue 15 as merged), v4 (this migration), each
with random (UUIDv4) or time-ordered (UUIDv7-like) order, execution and client order ids.
"""
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "migrations")
USERS = 16


def new_id(ordered):
    if not ordered:
        return str(uuid.uuid4())
    millis = f"{time.time_ns() // 1_000_000:012x}"
    rest = uuid.uuid4().hex
    return f"{millis[:8]}-{millis[8:]}-7{rest[:3]}-{rest[3:7]}-{rest[7:19]}"


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"


def order(oid, cid, side, filled):
    t = now()
    return {"id": oid, "client_order_id": cid, "symbol": "AAPL", "side": side, "type": "market",
            "time_in_force": "day", "qty": "1", "filled_qty": "1" if filled else "0",
            "filled_avg_price": "187.12" if filled else None, "limit_price": None,
            "stop_price": None, "status": "filled" if filled else "new", "created_at": t,
            "updated_at": t, "submitted_at": t, "filled_at": t if filled else None,
            "canceled_at": None, "expired_at": None, "replaced_by": None, "replaces": None,
            "commission": "0.005" if filled else "0"}


def open_db(path, version):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for name in sorted(os.listdir(ROOT))[:version]:
        db.executescript(open(os.path.join(ROOT, name)).read())
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db


def store_order(db, version, user, side, seqs, ordered):
    oid, cid, eid = new_id(ordered), new_id(ordered), new_id(ordered)
    placed, filled = order(oid, cid, side, False), order(oid, cid, side, True)
    db.execute("SAVEPOINT job")
    db.execute("INSERT INTO exchange_events (body) VALUES (?)",
               (json.dumps({"e": "order_accepted", "user": user, "order": placed}),))
    db.execute("INSERT INTO exchange_events (body) VALUES (?)",
               (json.dumps({"e": "order_filled", "order_id": oid, "execution_id": eid,
                            "price": "187.12", "qty": "1", "book_level": "187.12",
                            "at": now()}),))
    db.execute("""INSERT INTO orders (id, username, client_order_id, symbol, status, is_open,
                                      created_at, updated_at, body)
                  VALUES (?, ?, ?, 'AAPL', 'filled', 0, ?, ?, ?)
                  ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                      is_open = excluded.is_open, updated_at = excluded.updated_at,
                      body = excluded.body""",
               (oid, user, cid, now(), now(), json.dumps(filled)))
    if version >= 3:
        for event, body in (("new", placed), ("fill", filled)):
            seqs[user] += 1
            update = {"seq": seqs[user], "event": event, "timestamp": now(), "order": body}
            if event == "fill":
                update.update({"execution_id": eid, "price": "187.12", "qty": "1",
                               "position_qty": "1"})
            stored_at = time.time_ns() // 1000
            if version == 3:
                db.execute("INSERT INTO trade_updates (username, seq, order_id, stored_at, body)"
                           " VALUES (?, ?, ?, ?, ?)",
                           (user, seqs[user], oid, stored_at, json.dumps(update)))
            else:
                db.execute("INSERT INTO trade_updates (username, seq, stored_at, body)"
                           " VALUES (?, ?, ?, ?)",
                           (user, seqs[user], stored_at, json.dumps(update)))
    db.execute("""INSERT INTO fills (execution_id, order_id, username, symbol, side, qty, price,
                                     commission, t)
                  VALUES (?, ?, ?, 'AAPL', ?, '1', '187.12', '0.005', ?)""",
               (eid, oid, user, side, now()))
    db.execute("""INSERT INTO accounts (username, initial_cash, cash, realized_pl, commissions,
                                        updated_at)
                  VALUES (?, '100000', '99812.875', '-0.12', '12.5', ?)
                  ON CONFLICT (username) DO UPDATE SET cash = excluded.cash,
                      updated_at = excluded.updated_at""", (user, now()))
    if side == "buy":
        db.execute("INSERT INTO positions (username, symbol, qty, cost_basis)"
                   " VALUES (?, 'AAPL', '1', '187.12')"
                   " ON CONFLICT (username, symbol) DO UPDATE SET qty = excluded.qty", (user,))
    else:
        db.execute("DELETE FROM positions WHERE username = ? AND symbol = 'AAPL'", (user,))
    db.execute("RELEASE job")


def pages_per_commit(version, ordered, per_commit, warm=300, commits=None):
    commits = commits or max(400, 6000 // per_commit)
    path = os.path.join(tempfile.mkdtemp(prefix="store-pages."), "t.db")
    db = open_db(path, version)
    users = [f"bench{i}" for i in range(USERS)]
    seqs = {u: 0 for u in users}
    sides = {u: "buy" for u in users}
    k = 0
    start = None
    for n in range(warm + commits):
        if n == warm:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            start = os.path.getsize(path + "-wal")
        db.execute("BEGIN IMMEDIATE")
        for _ in range(per_commit):
            user = users[k % USERS]
            k += 1
            side = sides[user]
            sides[user] = "sell" if side == "buy" else "buy"
            store_order(db, version, user, side, seqs, ordered)
        db.execute("COMMIT")
    # A WAL frame is a 24-byte header plus the page.
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    return (os.path.getsize(path + "-wal") - start) / (page_size + 24) / commits


if __name__ == "__main__":
    print(f"sqlite {sqlite3.sqlite_version}, {USERS} users")
    for per_commit in [int(a) for a in sys.argv[1:]] or [8, 16]:
        for version in (2, 3, 4):
            for ordered in (False, True):
                pages = pages_per_commit(version, ordered, per_commit)
                ids = "time-ordered ids" if ordered else "random ids"
                print(f"schema v{version}, {ids:16s}, {per_commit:2d} orders/commit: "
                      f"{pages:6.1f} pages/commit, {pages / per_commit:5.2f} pages/order",
                      flush=True)
