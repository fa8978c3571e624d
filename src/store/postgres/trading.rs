//! [`TradingStore`] on PostgreSQL: a batch of exchange steps (fence, command replies, events,
//! orders, fills, accounts, positions, trade updates) with its statements pipelined, alone in
//! a transaction (with `BEGIN` and `COMMIT` in the same pipeline) or in one savepoint of the
//! writer's group transaction; the start-up load in one repeatable-read snapshot, and the
//! reads and prunes.
//! Decimals go in and out as text through `NUMERIC` casts, never through a float.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper;
use futures::future::BoxFuture;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::store::{
    AccountRecord, Fence, FillRecord, PositionRecord, StoreError, StoredOrder, StoredUpdate,
    TradingBatch, TradingState, TradingStore, UserRecord,
};
use crate::trading::api::{Order, Side, TradeUpdate};

use super::{PostgresStore, classify, decode_error, parse_decimal, parse_time, to_bigint, work};

/// The serde name of a simple enum (`"buy"`, `"partially_filled"`).
fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

/// Claims the batch's fence first in the batch: `claim_fence` (migration 3) records the token
/// unless a larger one is stored, and raises (SQLSTATE `TGF01`, the stored token as the
/// detail) when one is, which aborts the transaction like any failing statement. The row lock
/// it takes is held to the end of the transaction, so concurrent holders of one fence (two
/// nodes around a lease change) serialize here; the function's comment has the argument.
const CLAIM_FENCE_SQL: &str = "SELECT claim_fence($1, $2)";

/// A store error for one of the batch's statements: a refused fence names the batch's fence
/// and token (the database's error only carries the stored token).
fn batch_error(target: &str, fence: Option<&Fence>, error: tokio_postgres::Error) -> StoreError {
    match (classify(target, error), fence) {
        (StoreError::Fenced { current, .. }, Some(fence)) => StoreError::Fenced {
            name: fence.name.clone(),
            token: fence.token,
            current,
        },
        (other, _) => other,
    }
}

/// One statement of a batch with its (owned) parameters.
type Param = Box<dyn ToSql + Sync + Send>;

/// Every table of a batch in one statement: a data-modifying CTE per table, its rows as arrays
/// (`UNNEST`; an absent part is an empty array and writes nothing). One statement costs the
/// server one Bind/Execute/Sync and one answer, where a statement per table cost one each.
///
/// The CTEs run on one snapshot, so no two of them may touch one row: the batch holds each
/// order, account and position once (the exchange builds it so, and [`positions_by_key`]
/// keeps the last of a repeated position, so a position is either deleted or upserted).
/// Rows that take a generated position (events, orders, fills) are inserted in the batch's
/// order (`WITH ORDINALITY ... ORDER BY n`).
const BATCH_SQL: &str = "WITH
    command_rows AS (
        INSERT INTO command_replies (id, reply, stored_at)
        SELECT id, reply, $1 FROM UNNEST($2::text[], $3::text[]) AS r(id, reply)),
    event_rows AS (
        INSERT INTO exchange_events (body)
        SELECT body FROM UNNEST($4::text[]) WITH ORDINALITY AS e(body, n) ORDER BY n),
    order_rows AS (
        INSERT INTO orders (id, username, client_order_id, symbol, status, is_open, created_at,
                            updated_at, body)
        SELECT id, username, client_order_id, symbol, status, is_open, created_at, updated_at,
               body
        FROM UNNEST($5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bool[],
                    $11::text[], $12::text[], $13::text[])
             WITH ORDINALITY AS o(id, username, client_order_id, symbol, status, is_open,
                                  created_at, updated_at, body, n)
        ORDER BY n
        ON CONFLICT (id) DO UPDATE SET
            client_order_id = EXCLUDED.client_order_id,
            status = EXCLUDED.status,
            is_open = EXCLUDED.is_open,
            updated_at = EXCLUDED.updated_at,
            body = EXCLUDED.body),
    update_rows AS (
        INSERT INTO trade_updates (username, seq, order_id, stored_at, body)
        SELECT username, seq, order_id, $1, body
        FROM UNNEST($14::text[], $15::int8[], $16::text[], $17::text[])
             AS u(username, seq, order_id, body)),
    fill_rows AS (
        INSERT INTO fills (execution_id, order_id, username, symbol, side, qty, price,
                           commission, t)
        SELECT execution_id, order_id, username, symbol, side, qty::numeric, price::numeric,
               commission::numeric, t
        FROM UNNEST($18::text[], $19::text[], $20::text[], $21::text[], $22::text[],
                    $23::text[], $24::text[], $25::text[], $26::text[])
             WITH ORDINALITY AS f(execution_id, order_id, username, symbol, side, qty, price,
                                  commission, t, n)
        ORDER BY n),
    account_rows AS (
        INSERT INTO accounts (username, initial_cash, cash, realized_pl, commissions,
                              updated_at)
        SELECT username, initial_cash::numeric, cash::numeric, realized_pl::numeric,
               commissions::numeric, updated_at
        FROM UNNEST($27::text[], $28::text[], $29::text[], $30::text[], $31::text[],
                    $32::text[])
             AS a(username, initial_cash, cash, realized_pl, commissions, updated_at)
        ON CONFLICT (username) DO UPDATE SET
            cash = EXCLUDED.cash,
            realized_pl = EXCLUDED.realized_pl,
            commissions = EXCLUDED.commissions,
            updated_at = EXCLUDED.updated_at),
    closed_positions AS (
        DELETE FROM positions p
        USING UNNEST($33::text[], $34::text[]) AS c(username, symbol)
        WHERE p.username = c.username AND p.symbol = c.symbol),
    open_positions AS (
        INSERT INTO positions (username, symbol, qty, cost_basis)
        SELECT username, symbol, qty::numeric, cost_basis::numeric
        FROM UNNEST($35::text[], $36::text[], $37::text[], $38::text[])
             AS p(username, symbol, qty, cost_basis)
        ON CONFLICT (username, symbol) DO UPDATE SET
            qty = EXCLUDED.qty,
            cost_basis = EXCLUDED.cost_basis)
    SELECT 1";

/// The batch's positions, one per (user, symbol): the last one given wins, as it would if
/// they were written one after another.
fn positions_by_key(positions: &[PositionRecord]) -> Vec<&PositionRecord> {
    let mut by_key: BTreeMap<(&str, &str), &PositionRecord> = BTreeMap::new();
    for position in positions {
        by_key.insert((&position.username, &position.symbol), position);
    }
    by_key.into_values().collect()
}

/// A text column of `rows`.
fn column<R>(rows: &[R], value: impl Fn(&R) -> String) -> Param {
    Box::new(rows.iter().map(value).collect::<Vec<String>>())
}

/// The parameters of [`BATCH_SQL`] for `batch`, in its order.
fn batch_params(target: &str, batch: &TradingBatch) -> Result<Vec<Param>, StoreError> {
    let stored_at = Utc::now().timestamp_micros();
    let mut params: Vec<Param> = vec![Box::new(stored_at)];
    let commands = &batch.commands;
    params.push(column(commands, |c| c.id.clone()));
    params.push(column(commands, |c| c.reply.clone()));
    params.push(Box::new(batch.events.clone()));
    let orders = &batch.orders;
    let mut bodies = Vec::with_capacity(orders.len());
    for StoredOrder { order, .. } in orders {
        bodies.push(serde_json::to_string(order).map_err(|e| decode_error(target, e))?);
    }
    params.push(column(orders, |o| o.order.id.clone()));
    params.push(column(orders, |o| o.username.clone()));
    params.push(column(orders, |o| o.order.client_order_id.clone()));
    params.push(column(orders, |o| o.order.symbol.clone()));
    params.push(column(orders, |o| enum_text(&o.order.status)));
    params.push(Box::new(
        orders
            .iter()
            .map(|o| o.order.status.is_open())
            .collect::<Vec<bool>>(),
    ));
    params.push(column(orders, |o| o.order.created_at.to_rfc3339()));
    params.push(column(orders, |o| o.order.updated_at.to_rfc3339()));
    params.push(Box::new(bodies));
    let updates = &batch.updates;
    let mut seqs = Vec::with_capacity(updates.len());
    let mut bodies = Vec::with_capacity(updates.len());
    for StoredUpdate { update, .. } in updates {
        seqs.push(to_bigint(target, "trade update seq", update.seq)?);
        bodies.push(serde_json::to_string(update).map_err(|e| decode_error(target, e))?);
    }
    params.push(column(updates, |u| u.username.clone()));
    params.push(Box::new(seqs));
    params.push(column(updates, |u| u.update.order.id.clone()));
    params.push(Box::new(bodies));
    let fills = &batch.fills;
    params.push(column(fills, |f| f.execution_id.clone()));
    params.push(column(fills, |f| f.order_id.clone()));
    params.push(column(fills, |f| f.username.clone()));
    params.push(column(fills, |f| f.symbol.clone()));
    params.push(column(fills, |f| enum_text(&f.side)));
    params.push(column(fills, |f| f.qty.to_string()));
    params.push(column(fills, |f| f.price.to_string()));
    params.push(column(fills, |f| f.commission.to_string()));
    params.push(column(fills, |f| f.timestamp.to_rfc3339()));
    let accounts = &batch.accounts;
    params.push(column(accounts, |a| a.username.clone()));
    params.push(column(accounts, |a| a.initial_cash.to_string()));
    params.push(column(accounts, |a| a.cash.to_string()));
    params.push(column(accounts, |a| a.realized_pl.to_string()));
    params.push(column(accounts, |a| a.commissions.to_string()));
    params.push(column(accounts, |a| a.updated_at.to_rfc3339()));
    let (closed, open): (Vec<&PositionRecord>, Vec<&PositionRecord>) =
        positions_by_key(&batch.positions)
            .into_iter()
            .partition(|position| position.qty.is_zero());
    params.push(column(&closed, |p| p.username.clone()));
    params.push(column(&closed, |p| p.symbol.clone()));
    params.push(column(&open, |p| p.username.clone()));
    params.push(column(&open, |p| p.symbol.clone()));
    params.push(column(&open, |p| p.qty.to_string()));
    params.push(column(&open, |p| p.cost_basis.to_string()));
    Ok(params)
}

/// Stores one batch: the fence claim, then the batch's statement (none for a batch of only
/// the fence), pipelined on the
/// connection (sent without waiting for the previous answer; the server runs them in order),
/// so a batch costs one round trip. With `closing` (the writer's `COMMIT` when the batch is
/// alone in its transaction) that statement follows them in the same pipeline, and its
/// result is returned too.
///
/// The first error in statement order is the batch's error: a refused fence raises, and a
/// failing statement aborts the transaction, so the statement after it fails as "transaction
/// aborted" and nothing of the batch commits (a `COMMIT` then answers `ROLLBACK`). A failure in
/// the client before anything is sent (a value too large for its column) returns without
/// sending, `closing` included. If a statement failed without the server having aborted the
/// transaction (the connection broke, or a parameter could not be encoded, so the other may
/// have committed), a closing statement that answered is reported as an error: the outcome
/// is unknown.
async fn store_batch(
    client: &ClientWrapper,
    target: &str,
    batch: &TradingBatch,
    closing: Option<&'static str>,
) -> (Result<(), StoreError>, Option<Result<(), StoreError>>) {
    let fence = batch.fence.as_ref();
    let prepared = async {
        let claim = match fence {
            Some(fence) => Some((
                client
                    .prepare_cached(CLAIM_FENCE_SQL)
                    .await
                    .map_err(|e| classify(target, e))?,
                to_bigint(target, "fencing token", fence.token)?,
            )),
            None => None,
        };
        // A batch of only the fence (a new exchange's first write) has no rows to write.
        let write = if !batch.has_rows() {
            None
        } else {
            let params = batch_params(target, batch)?;
            let statement = client
                .prepare_cached(BATCH_SQL)
                .await
                .map_err(|e| classify(target, e))?;
            Some((statement, params))
        };
        Ok::<_, StoreError>((claim, write))
    };
    let (claim, write) = match prepared.await {
        Ok(prepared) => prepared,
        Err(error) => return (Err(error), None),
    };
    let write = write.as_ref().map(|(statement, params)| {
        let values: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|value| value.as_ref() as &(dyn ToSql + Sync))
            .collect();
        (statement, values)
    });
    // `join!` polls its futures in order on the first pass, and each sends its request on its
    // first poll: the requests reach the server in this order, the closing statement last.
    let claimed = async {
        match (&claim, fence) {
            (Some((statement, token)), Some(fence)) => client
                .execute(statement, &[&fence.name, token])
                .await
                .map(|_| ()),
            _ => Ok(()),
        }
    };
    let written = async {
        match &write {
            Some((statement, values)) => client.execute(*statement, values).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let closed = async {
        match closing {
            Some(sql) => Some(client.batch_execute(sql).await),
            None => None,
        }
    };
    let (claimed, written, closed) = futures::join!(claimed, written, closed);
    let mut first_error = None;
    let mut aborted = false;
    for result in [claimed, written] {
        if let Err(error) = result {
            aborted |= error.as_db_error().is_some();
            first_error.get_or_insert_with(|| batch_error(target, fence, error));
        }
    }
    let closed = closed.map(|closed| match closed {
        Err(error) => Err(classify(target, error)),
        Ok(()) if first_error.is_some() && !aborted => Err(StoreError::Database {
            path: target.into(),
            detail: "a statement of the batch failed outside the server after another was \
                     sent; whether it committed is unknown"
                .into(),
        }),
        Ok(()) => Ok(()),
    });
    (first_error.map_or(Ok(()), Err), closed)
}

fn text(target: &str, row: &Row, index: usize) -> Result<String, StoreError> {
    row.try_get::<_, String>(index)
        .map_err(|e| decode_error(target, e))
}

fn stored_orders(target: &str, rows: &[Row]) -> Result<Vec<StoredOrder>, StoreError> {
    rows.iter()
        .map(|row| {
            let username = text(target, row, 0)?;
            let body = text(target, row, 1)?;
            let order: Order = serde_json::from_str(&body).map_err(|e| decode_error(target, e))?;
            Ok(StoredOrder { username, order })
        })
        .collect()
}

async fn load_state(
    client: &ClientWrapper,
    target: &str,
    closed_per_user: usize,
) -> Result<TradingState, StoreError> {
    let sql = |e| classify(target, e);
    // One snapshot, so the parts are consistent with each other.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(sql)?;
    let result = async {
        let users = client
            .query(
                "SELECT username FROM users WHERE active ORDER BY username",
                &[],
            )
            .await
            .map_err(sql)?
            .iter()
            .map(|row| text(target, row, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut accounts = Vec::new();
        for row in client
            .query(
                "SELECT username, initial_cash::text, cash::text, realized_pl::text,
                        commissions::text, updated_at
                 FROM accounts ORDER BY username",
                &[],
            )
            .await
            .map_err(sql)?
        {
            accounts.push(AccountRecord {
                username: text(target, &row, 0)?,
                initial_cash: parse_decimal(target, &text(target, &row, 1)?)?,
                cash: parse_decimal(target, &text(target, &row, 2)?)?,
                realized_pl: parse_decimal(target, &text(target, &row, 3)?)?,
                commissions: parse_decimal(target, &text(target, &row, 4)?)?,
                updated_at: parse_time(target, &text(target, &row, 5)?)?,
            });
        }
        let mut positions = Vec::new();
        for row in client
            .query(
                "SELECT username, symbol, qty::text, cost_basis::text FROM positions
                 ORDER BY username, symbol",
                &[],
            )
            .await
            .map_err(sql)?
        {
            positions.push(PositionRecord {
                username: text(target, &row, 0)?,
                symbol: text(target, &row, 1)?,
                qty: parse_decimal(target, &text(target, &row, 2)?)?,
                cost_basis: parse_decimal(target, &text(target, &row, 3)?)?,
            });
        }
        let events = client
            .query("SELECT body FROM exchange_events ORDER BY seq", &[])
            .await
            .map_err(sql)?
            .iter()
            .map(|row| text(target, row, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let open_orders = stored_orders(
            target,
            &client
                .query(
                    "SELECT username, body FROM orders WHERE is_open
                     ORDER BY created_at, position",
                    &[],
                )
                .await
                .map_err(sql)?,
        )?;
        let closed_limit = i64::try_from(closed_per_user).unwrap_or(i64::MAX);
        let closed_orders = stored_orders(
            target,
            &client
                .query(
                    "SELECT username, body FROM (
                         SELECT username, body, created_at, position,
                                ROW_NUMBER() OVER (PARTITION BY username
                                                   ORDER BY created_at DESC, position DESC) AS k
                         FROM orders WHERE NOT is_open) ranked
                     WHERE k <= $1 ORDER BY created_at, position",
                    &[&closed_limit],
                )
                .await
                .map_err(sql)?,
        )?;
        let mut update_seqs = BTreeMap::new();
        for row in client
            .query(
                "SELECT username, MAX(seq) FROM trade_updates GROUP BY username",
                &[],
            )
            .await
            .map_err(sql)?
        {
            let seq: i64 = row.try_get(1).map_err(|e| decode_error(target, e))?;
            update_seqs.insert(text(target, &row, 0)?, u64::try_from(seq).unwrap_or(0));
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
    }
    .await;
    let _ = client.batch_execute("COMMIT").await;
    result
}

async fn load_fills(
    client: &ClientWrapper,
    target: &str,
    username: &str,
) -> Result<Vec<FillRecord>, StoreError> {
    let rows = client
        .query(
            "SELECT execution_id, order_id, username, symbol, side, qty::text, price::text,
                    commission::text, t
             FROM fills WHERE username = $1 ORDER BY position",
            &[&username],
        )
        .await
        .map_err(|e| classify(target, e))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let side = match text(target, &row, 4)?.as_str() {
            "buy" => Side::Buy,
            "sell" => Side::Sell,
            other => return Err(decode_error(target, format!("fill side {other:?}"))),
        };
        out.push(FillRecord {
            execution_id: text(target, &row, 0)?,
            order_id: text(target, &row, 1)?,
            username: text(target, &row, 2)?,
            symbol: text(target, &row, 3)?,
            side,
            qty: parse_decimal(target, &text(target, &row, 5)?)?,
            price: parse_decimal(target, &text(target, &row, 6)?)?,
            commission: parse_decimal(target, &text(target, &row, 7)?)?,
            timestamp: parse_time(target, &text(target, &row, 8)?)?,
        });
    }
    Ok(out)
}

impl TradingStore for PostgresStore {
    fn commit(&self, batch: TradingBatch) -> BoxFuture<'static, Result<(), StoreError>> {
        if batch.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let target = self.target.clone();
        self.write_pipelined(Box::new(move |client, closing| {
            Box::pin(async move { store_batch(client, &target, &batch, closing).await })
        }))
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                // A fresh value each time, so the write really reaches the log and its flush.
                client
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('write_probe', $1)
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        &[&Utc::now().to_rfc3339()],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| classify(&target, e))
            })
        }))
    }

    fn sync_users(&self, users: Vec<UserRecord>) -> BoxFuture<'static, Result<(), StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                let sql = |e| classify(&target, e);
                let now = Utc::now().to_rfc3339();
                client
                    .execute("UPDATE users SET active = FALSE", &[])
                    .await
                    .map_err(sql)?;
                let statement = client
                    .prepare_cached(
                        "INSERT INTO users (username, password_hash, active, updated_at)
                         VALUES ($1, $2, TRUE, $3)
                         ON CONFLICT (username) DO UPDATE SET
                             password_hash = EXCLUDED.password_hash,
                             active = TRUE,
                             updated_at = EXCLUDED.updated_at",
                    )
                    .await
                    .map_err(sql)?;
                for user in &users {
                    client
                        .execute(&statement, &[&user.username, &user.password_hash, &now])
                        .await
                        .map_err(sql)?;
                }
                Ok(())
            })
        }))
    }

    fn load(
        &self,
        closed_orders_per_user: usize,
    ) -> BoxFuture<'static, Result<TradingState, StoreError>> {
        let target = self.target.clone();
        self.read_future(work(move |client| {
            Box::pin(async move { load_state(client, &target, closed_orders_per_user).await })
        }))
    }

    fn fills(&self, username: &str) -> BoxFuture<'static, Result<Vec<FillRecord>, StoreError>> {
        let target = self.target.clone();
        let username = username.to_owned();
        self.read_future(work(move |client| {
            Box::pin(async move { load_fills(client, &target, &username).await })
        }))
    }

    fn updates_between(
        &self,
        username: &str,
        after: u64,
        up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<TradeUpdate>, StoreError>> {
        let target = self.target.clone();
        let username = username.to_owned();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let after = i64::try_from(after).unwrap_or(i64::MAX);
                let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
                let statement = client
                    .prepare_cached(
                        "SELECT body FROM trade_updates
                         WHERE username = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                let rows = client
                    .query(&statement, &[&username, &after, &up_to])
                    .await
                    .map_err(|e| classify(&target, e))?;
                rows.iter()
                    .map(|row| {
                        serde_json::from_str(&text(&target, row, 0)?)
                            .map_err(|e| decode_error(&target, e))
                    })
                    .collect()
            })
        }))
    }

    fn order_by_client_id(
        &self,
        username: &str,
        client_order_id: &str,
    ) -> BoxFuture<'static, Result<Option<Order>, StoreError>> {
        let target = self.target.clone();
        let username = username.to_owned();
        let client_order_id = client_order_id.to_owned();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt(
                        "SELECT body FROM orders WHERE username = $1 AND client_order_id = $2",
                        &[&username, &client_order_id],
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                row.map(|row| {
                    serde_json::from_str(&text(&target, &row, 0)?)
                        .map_err(|e| decode_error(&target, e))
                })
                .transpose()
            })
        }))
    }

    fn prune_updates(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "DELETE FROM trade_updates WHERE (username, seq) IN
                             (SELECT username, seq FROM trade_updates WHERE stored_at < $1
                              LIMIT $2)",
                        &[
                            &before.timestamp_micros(),
                            &i64::try_from(max_rows).unwrap_or(i64::MAX),
                        ],
                    )
                    .await
                    .map_err(|e| classify(&target, e))
            })
        }))
    }

    fn fence_token(&self, name: &str) -> BoxFuture<'static, Result<Option<u64>, StoreError>> {
        let target = self.target.clone();
        let name = name.to_owned();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt("SELECT token FROM fences WHERE name = $1", &[&name])
                    .await
                    .map_err(|e| classify(&target, e))?;
                row.map(|row| {
                    row.try_get::<_, i64>(0)
                        .map(|token| u64::try_from(token).unwrap_or(0))
                        .map_err(|e| decode_error(&target, e))
                })
                .transpose()
            })
        }))
    }

    fn command_reply(&self, id: &str) -> BoxFuture<'static, Result<Option<String>, StoreError>> {
        let target = self.target.clone();
        let id = id.to_owned();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt("SELECT reply FROM command_replies WHERE id = $1", &[&id])
                    .await
                    .map_err(|e| classify(&target, e))?;
                row.map(|row| text(&target, &row, 0)).transpose()
            })
        }))
    }

    fn prune_commands(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "DELETE FROM command_replies WHERE id IN
                             (SELECT id FROM command_replies WHERE stored_at < $1 LIMIT $2)",
                        &[
                            &before.timestamp_micros(),
                            &i64::try_from(max_rows).unwrap_or(i64::MAX),
                        ],
                    )
                    .await
                    .map_err(|e| classify(&target, e))
            })
        }))
    }
}
