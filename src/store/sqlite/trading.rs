//! [`TradingStore`] on SQLite: a batch of exchange steps (events, orders, fills, accounts,
//! positions, trade updates) in one savepoint, the start-up load that rebuilds the exchange,
//! fills, the stored trade updates a resuming client reads, the order behind a
//! `client_order_id`, and the pruning of old updates.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{
    AccountRecord, Fence, FillRecord, PositionRecord, StoreError, StoredOrder, StoredUpdate,
    TradingBatch, TradingState, TradingStore, UserRecord,
};
use crate::trading::api::{Order, Side, TradeUpdate};

use super::{SqliteStore, classify, decode_error, enum_text, parse_decimal, parse_time};

/// Checks the batch's fence and records its token, inside the batch's savepoint: a refused
/// batch returns [`StoreError::Fenced`] before anything of it is written.
fn check_fence(connection: &Connection, path: &str, fence: &Fence) -> Result<(), StoreError> {
    let sql = |e| classify(path, e);
    let token = i64::try_from(fence.token).map_err(|_| StoreError::Database {
        path: path.into(),
        detail: format!("fencing token {} is out of range", fence.token),
    })?;
    let current: Option<i64> = connection
        .prepare_cached("SELECT token FROM fences WHERE name = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([&fence.name], |row| row.get(0))
                .optional()
        })
        .map_err(sql)?;
    match current {
        Some(current) if current > token => Err(StoreError::Fenced {
            name: fence.name.clone(),
            token: fence.token,
            current: u64::try_from(current).unwrap_or(0),
        }),
        _ => connection
            .prepare_cached(
                "INSERT INTO fences (name, token) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET token = excluded.token",
            )
            .and_then(|mut statement| statement.execute(params![fence.name, token]))
            .map(|_| ())
            .map_err(sql),
    }
}

fn store_batch(
    connection: &Connection,
    path: &str,
    batch: &TradingBatch,
) -> Result<(), StoreError> {
    let sql = |e| classify(path, e);
    if let Some(fence) = &batch.fence {
        check_fence(connection, path, fence)?;
    }
    let stored_at = Utc::now().timestamp_micros();
    for command in &batch.commands {
        connection
            .prepare_cached(
                "INSERT INTO command_replies (id, reply, stored_at) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut statement| {
                statement.execute(params![command.id, command.reply, stored_at])
            })
            .map_err(sql)?;
    }
    for event in &batch.events {
        connection
            .prepare_cached("INSERT INTO exchange_events (body) VALUES (?1)")
            .and_then(|mut statement| statement.execute([event]))
            .map_err(sql)?;
    }
    for StoredOrder { username, order } in &batch.orders {
        let body = serde_json::to_string(order).map_err(|e| decode_error(path, e))?;
        connection
            .prepare_cached(
                "INSERT INTO orders (id, username, client_order_id, symbol, status, is_open,
                                     created_at, updated_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET
                     client_order_id = excluded.client_order_id,
                     status = excluded.status,
                     is_open = excluded.is_open,
                     updated_at = excluded.updated_at,
                     body = excluded.body",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    order.id,
                    username,
                    order.client_order_id,
                    order.symbol,
                    enum_text(&order.status),
                    order.status.is_open(),
                    order.created_at.to_rfc3339(),
                    order.updated_at.to_rfc3339(),
                    body,
                ])
            })
            .map_err(sql)?;
    }
    for StoredUpdate { username, update } in &batch.updates {
        let body = serde_json::to_string(update).map_err(|e| decode_error(path, e))?;
        connection
            .prepare_cached(
                "INSERT INTO trade_updates (username, seq, stored_at, body)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    username,
                    i64::try_from(update.seq).unwrap_or(i64::MAX),
                    stored_at,
                    body,
                ])
            })
            .map_err(sql)?;
    }
    for fill in &batch.fills {
        connection
            .prepare_cached(
                "INSERT INTO fills (execution_id, order_id, username, symbol, side, qty, price,
                                    commission, t)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    fill.execution_id,
                    fill.order_id,
                    fill.username,
                    fill.symbol,
                    enum_text(&fill.side),
                    fill.qty.to_string(),
                    fill.price.to_string(),
                    fill.commission.to_string(),
                    fill.timestamp.to_rfc3339(),
                ])
            })
            .map_err(sql)?;
    }
    for account in &batch.accounts {
        connection
            .prepare_cached(
                "INSERT INTO accounts (username, initial_cash, cash, realized_pl, commissions,
                                       updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (username) DO UPDATE SET
                     cash = excluded.cash,
                     realized_pl = excluded.realized_pl,
                     commissions = excluded.commissions,
                     updated_at = excluded.updated_at",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    account.username,
                    account.initial_cash.to_string(),
                    account.cash.to_string(),
                    account.realized_pl.to_string(),
                    account.commissions.to_string(),
                    account.updated_at.to_rfc3339(),
                ])
            })
            .map_err(sql)?;
    }
    for position in &batch.positions {
        if position.qty.is_zero() {
            connection
                .prepare_cached("DELETE FROM positions WHERE username = ?1 AND symbol = ?2")
                .and_then(|mut statement| {
                    statement.execute(params![position.username, position.symbol])
                })
                .map_err(sql)?;
        } else {
            connection
                .prepare_cached(
                    "INSERT INTO positions (username, symbol, qty, cost_basis)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (username, symbol) DO UPDATE SET
                         qty = excluded.qty,
                         cost_basis = excluded.cost_basis",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        position.username,
                        position.symbol,
                        position.qty.to_string(),
                        position.cost_basis.to_string(),
                    ])
                })
                .map_err(sql)?;
        }
    }
    Ok(())
}

fn stored_orders(
    connection: &Connection,
    path: &str,
    sql: &str,
    parameters: impl rusqlite::Params,
) -> Result<Vec<StoredOrder>, StoreError> {
    let mut statement = connection.prepare(sql).map_err(|e| classify(path, e))?;
    let rows = statement
        .query_map(parameters, |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(|e| classify(path, e))?;
    let mut out = Vec::new();
    for row in rows {
        let (username, body) = row.map_err(|e| classify(path, e))?;
        let order: Order = serde_json::from_str(&body).map_err(|e| decode_error(path, e))?;
        out.push(StoredOrder { username, order });
    }
    Ok(out)
}

fn load_state(
    connection: &Connection,
    path: &str,
    closed_per_user: usize,
) -> Result<TradingState, StoreError> {
    let sql = |e| classify(path, e);
    // One read transaction, so the parts are consistent with each other.
    connection.execute_batch("BEGIN").map_err(sql)?;
    let result = (|| {
        let users = {
            let mut statement = connection
                .prepare("SELECT username FROM users WHERE active = 1 ORDER BY username")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql)?
        };
        let mut accounts = Vec::new();
        {
            let mut statement = connection
                .prepare(
                    "SELECT username, initial_cash, cash, realized_pl, commissions, updated_at
                     FROM accounts ORDER BY username",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (username, initial, cash, realized, commissions, updated) = row.map_err(sql)?;
                accounts.push(AccountRecord {
                    username,
                    initial_cash: parse_decimal(path, &initial)?,
                    cash: parse_decimal(path, &cash)?,
                    realized_pl: parse_decimal(path, &realized)?,
                    commissions: parse_decimal(path, &commissions)?,
                    updated_at: parse_time(path, &updated)?,
                });
            }
        }
        let mut positions = Vec::new();
        {
            let mut statement = connection
                .prepare(
                    "SELECT username, symbol, qty, cost_basis FROM positions
                     ORDER BY username, symbol",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (username, symbol, qty, basis) = row.map_err(sql)?;
                positions.push(PositionRecord {
                    username,
                    symbol,
                    qty: parse_decimal(path, &qty)?,
                    cost_basis: parse_decimal(path, &basis)?,
                });
            }
        }
        let events = {
            let mut statement = connection
                .prepare("SELECT body FROM exchange_events ORDER BY seq")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql)?
        };
        let open_orders = stored_orders(
            connection,
            path,
            "SELECT username, body FROM orders WHERE is_open = 1 ORDER BY created_at, rowid",
            [],
        )?;
        let closed_orders = stored_orders(
            connection,
            path,
            "SELECT username, body FROM (
                 SELECT username, body, created_at, rowid AS r,
                        ROW_NUMBER() OVER (PARTITION BY username
                                           ORDER BY created_at DESC, rowid DESC) AS k
                 FROM orders WHERE is_open = 0)
             WHERE k <= ?1 ORDER BY created_at, r",
            params![i64::try_from(closed_per_user).unwrap_or(i64::MAX)],
        )?;
        let mut update_seqs = BTreeMap::new();
        {
            let mut statement = connection
                .prepare("SELECT username, MAX(seq) FROM trade_updates GROUP BY username")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(sql)?;
            for row in rows {
                let (username, seq) = row.map_err(sql)?;
                update_seqs.insert(username, u64::try_from(seq).unwrap_or(0));
            }
        }
        Ok(TradingState {
            events,
            users,
            accounts,
            positions,
            open_orders,
            closed_orders,
            update_seqs,
        })
    })();
    let _ = connection.execute_batch("COMMIT");
    result
}

fn load_fills(
    connection: &Connection,
    path: &str,
    username: &str,
) -> Result<Vec<FillRecord>, StoreError> {
    let sql = |e| classify(path, e);
    let mut statement = connection
        .prepare(
            "SELECT execution_id, order_id, username, symbol, side, qty, price, commission, t
             FROM fills WHERE username = ?1 ORDER BY rowid",
        )
        .map_err(sql)?;
    let rows = statement
        .query_map([username], |row| {
            Ok([
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, String>(8)?,
            ])
        })
        .map_err(sql)?;
    let mut out = Vec::new();
    for row in rows {
        let [
            execution_id,
            order_id,
            username,
            symbol,
            side,
            qty,
            price,
            commission,
            t,
        ] = row.map_err(sql)?;
        let side = match side.as_str() {
            "buy" => Side::Buy,
            "sell" => Side::Sell,
            other => return Err(decode_error(path, format!("fill side {other:?}"))),
        };
        out.push(FillRecord {
            execution_id,
            order_id,
            username,
            symbol,
            side,
            qty: parse_decimal(path, &qty)?,
            price: parse_decimal(path, &price)?,
            commission: parse_decimal(path, &commission)?,
            timestamp: parse_time(path, &t)?,
        });
    }
    Ok(out)
}

impl TradingStore for SqliteStore {
    fn commit(&self, batch: TradingBatch) -> BoxFuture<'static, Result<(), StoreError>> {
        if batch.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let path = self.path_text.clone();
        self.write_future(move |connection| store_batch(connection, &path, &batch))
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            // A fresh value each time, so the write really reaches the log and its fsync.
            connection
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('write_probe', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![Utc::now().to_rfc3339()],
                )
                .map(|_| ())
                .map_err(|e| classify(&path, e))
        })
    }

    fn sync_users(&self, users: Vec<UserRecord>) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            let now = Utc::now().to_rfc3339();
            connection
                .execute("UPDATE users SET active = 0", [])
                .map_err(sql)?;
            for user in &users {
                connection
                    .prepare_cached(
                        "INSERT INTO users (username, password_hash, active, updated_at)
                         VALUES (?1, ?2, 1, ?3)
                         ON CONFLICT (username) DO UPDATE SET
                             password_hash = excluded.password_hash,
                             active = 1,
                             updated_at = excluded.updated_at",
                    )
                    .and_then(|mut statement| {
                        statement.execute(params![user.username, user.password_hash, now])
                    })
                    .map_err(sql)?;
            }
            Ok(())
        })
    }

    fn load(
        &self,
        closed_orders_per_user: usize,
    ) -> BoxFuture<'static, Result<TradingState, StoreError>> {
        self.read_future(move |connection, path| {
            load_state(connection, path, closed_orders_per_user)
        })
    }

    fn fills(&self, username: &str) -> BoxFuture<'static, Result<Vec<FillRecord>, StoreError>> {
        let username = username.to_owned();
        self.read_future(move |connection, path| load_fills(connection, path, &username))
    }

    fn updates_between(
        &self,
        username: &str,
        after: u64,
        up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<TradeUpdate>, StoreError>> {
        let username = username.to_owned();
        self.read_future(move |connection, path| {
            let sql = |e| classify(path, e);
            let mut statement = connection
                .prepare_cached(
                    "SELECT body FROM trade_updates
                     WHERE username = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map(
                    params![
                        username,
                        i64::try_from(after).unwrap_or(i64::MAX),
                        i64::try_from(up_to).unwrap_or(i64::MAX),
                    ],
                    |row| row.get::<_, String>(0),
                )
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let body = row.map_err(sql)?;
                out.push(serde_json::from_str(&body).map_err(|e| decode_error(path, e))?);
            }
            Ok(out)
        })
    }

    fn order_by_client_id(
        &self,
        username: &str,
        client_order_id: &str,
    ) -> BoxFuture<'static, Result<Option<Order>, StoreError>> {
        let username = username.to_owned();
        let client_order_id = client_order_id.to_owned();
        self.read_future(move |connection, path| {
            // The unique one, or (in a file migrated from version 1) the most recent repeat.
            let body: Option<String> = connection
                .prepare_cached(
                    "SELECT body FROM orders WHERE username = ?1 AND client_order_id = ?2
                     ORDER BY client_order_id_repeat, rowid DESC LIMIT 1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![username, client_order_id], |row| row.get(0))
                        .optional()
                })
                .map_err(|e| classify(path, e))?;
            body.map(|body| serde_json::from_str(&body).map_err(|e| decode_error(path, e)))
                .transpose()
        })
    }

    fn prune_updates(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            // Rows are appended in commit order, so the oldest are the lowest rowids: delete
            // from the start of the table up to the first row that is still kept, within the
            // first `max_rows` rows. Always a prefix, so no user's kept updates get a hole,
            // even if the clock once went backwards.
            connection
                .execute(
                    "DELETE FROM trade_updates WHERE rowid < (
                         SELECT COALESCE(
                             MIN(CASE WHEN stored_at >= ?1 THEN rowid END),
                             MAX(rowid) + 1)
                         FROM (SELECT rowid, stored_at FROM trade_updates
                               ORDER BY rowid LIMIT ?2))",
                    params![
                        before.timestamp_micros(),
                        i64::try_from(max_rows).unwrap_or(i64::MAX)
                    ],
                )
                .map(|n| n as u64)
                .map_err(|e| classify(&path, e))
        })
    }

    fn fence_token(&self, name: &str) -> BoxFuture<'static, Result<Option<u64>, StoreError>> {
        let name = name.to_owned();
        self.read_future(move |connection, path| {
            let token: Option<i64> = connection
                .prepare_cached("SELECT token FROM fences WHERE name = ?1")
                .and_then(|mut statement| statement.query_row([&name], |row| row.get(0)).optional())
                .map_err(|e| classify(path, e))?;
            Ok(token.map(|token| u64::try_from(token).unwrap_or(0)))
        })
    }

    fn command_reply(&self, id: &str) -> BoxFuture<'static, Result<Option<String>, StoreError>> {
        let id = id.to_owned();
        self.read_future(move |connection, path| {
            connection
                .prepare_cached("SELECT reply FROM command_replies WHERE id = ?1")
                .and_then(|mut statement| statement.query_row([&id], |row| row.get(0)).optional())
                .map_err(|e| classify(path, e))
        })
    }

    fn prune_commands(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            connection
                .execute(
                    "DELETE FROM command_replies WHERE id IN
                         (SELECT id FROM command_replies WHERE stored_at < ?1 LIMIT ?2)",
                    params![
                        before.timestamp_micros(),
                        i64::try_from(max_rows).unwrap_or(i64::MAX)
                    ],
                )
                .map(|n| n as u64)
                .map_err(|e| classify(&path, e))
        })
    }
}
