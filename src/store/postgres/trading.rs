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
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

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

/// The batch's statements, in order: command replies, events, orders, trade updates, fills,
/// accounts, positions. One statement per table, its rows as arrays (`UNNEST`), so a batch of
/// many commands costs the server a handful of statements rather than one per row; rows that
/// take a generated position are inserted in the batch's order (`WITH ORDINALITY`).
async fn batch_statements(
    client: &ClientWrapper,
    target: &str,
    batch: &TradingBatch,
) -> Result<Vec<(Statement, Vec<Param>)>, StoreError> {
    let sql = |e| classify(target, e);
    let mut out: Vec<(Statement, Vec<Param>)> = Vec::new();
    let stored_at = Utc::now().timestamp_micros();
    if !batch.commands.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO command_replies (id, reply, stored_at)
                 SELECT id, reply, $3 FROM UNNEST($1::text[], $2::text[]) AS r(id, reply)",
            )
            .await
            .map_err(sql)?;
        let ids: Vec<String> = batch.commands.iter().map(|c| c.id.clone()).collect();
        let replies: Vec<String> = batch.commands.iter().map(|c| c.reply.clone()).collect();
        out.push((
            statement,
            vec![Box::new(ids), Box::new(replies), Box::new(stored_at)],
        ));
    }
    if !batch.events.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO exchange_events (body)
                 SELECT body FROM UNNEST($1::text[]) WITH ORDINALITY AS e(body, n) ORDER BY n",
            )
            .await
            .map_err(sql)?;
        out.push((statement, vec![Box::new(batch.events.clone())]));
    }
    if !batch.orders.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO orders (id, username, client_order_id, symbol, status, is_open,
                                     created_at, updated_at, body)
                 SELECT id, username, client_order_id, symbol, status, is_open, created_at,
                        updated_at, body
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::bool[], $7::text[], $8::text[], $9::text[])
                      WITH ORDINALITY AS o(id, username, client_order_id, symbol, status,
                                           is_open, created_at, updated_at, body, n)
                 ORDER BY n
                 ON CONFLICT (id) DO UPDATE SET
                     client_order_id = EXCLUDED.client_order_id,
                     status = EXCLUDED.status,
                     is_open = EXCLUDED.is_open,
                     updated_at = EXCLUDED.updated_at,
                     body = EXCLUDED.body",
            )
            .await
            .map_err(sql)?;
        let orders = &batch.orders;
        let mut bodies = Vec::with_capacity(orders.len());
        for StoredOrder { order, .. } in orders {
            bodies.push(serde_json::to_string(order).map_err(|e| decode_error(target, e))?);
        }
        let column = |f: &dyn Fn(&StoredOrder) -> String| -> Param {
            Box::new(orders.iter().map(f).collect::<Vec<String>>())
        };
        out.push((
            statement,
            vec![
                column(&|o| o.order.id.clone()),
                column(&|o| o.username.clone()),
                column(&|o| o.order.client_order_id.clone()),
                column(&|o| o.order.symbol.clone()),
                column(&|o| enum_text(&o.order.status)),
                Box::new(
                    orders
                        .iter()
                        .map(|o| o.order.status.is_open())
                        .collect::<Vec<bool>>(),
                ),
                column(&|o| o.order.created_at.to_rfc3339()),
                column(&|o| o.order.updated_at.to_rfc3339()),
                Box::new(bodies),
            ],
        ));
    }
    if !batch.updates.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO trade_updates (username, seq, order_id, stored_at, body)
                 SELECT username, seq, order_id, $4, body
                 FROM UNNEST($1::text[], $2::int8[], $3::text[], $5::text[])
                      AS u(username, seq, order_id, body)",
            )
            .await
            .map_err(sql)?;
        let updates = &batch.updates;
        let mut seqs = Vec::with_capacity(updates.len());
        let mut bodies = Vec::with_capacity(updates.len());
        for StoredUpdate { update, .. } in updates {
            seqs.push(to_bigint(target, "trade update seq", update.seq)?);
            bodies.push(serde_json::to_string(update).map_err(|e| decode_error(target, e))?);
        }
        out.push((
            statement,
            vec![
                Box::new(
                    updates
                        .iter()
                        .map(|u| u.username.clone())
                        .collect::<Vec<String>>(),
                ),
                Box::new(seqs),
                Box::new(
                    updates
                        .iter()
                        .map(|u| u.update.order.id.clone())
                        .collect::<Vec<String>>(),
                ),
                Box::new(stored_at),
                Box::new(bodies),
            ],
        ));
    }
    if !batch.fills.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO fills (execution_id, order_id, username, symbol, side, qty, price,
                                    commission, t)
                 SELECT execution_id, order_id, username, symbol, side, qty::numeric,
                        price::numeric, commission::numeric, t
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[])
                      WITH ORDINALITY AS f(execution_id, order_id, username, symbol, side, qty,
                                           price, commission, t, n)
                 ORDER BY n",
            )
            .await
            .map_err(sql)?;
        let fills = &batch.fills;
        let column = |f: &dyn Fn(&FillRecord) -> String| -> Param {
            Box::new(fills.iter().map(f).collect::<Vec<String>>())
        };
        out.push((
            statement,
            vec![
                column(&|f| f.execution_id.clone()),
                column(&|f| f.order_id.clone()),
                column(&|f| f.username.clone()),
                column(&|f| f.symbol.clone()),
                column(&|f| enum_text(&f.side)),
                column(&|f| f.qty.to_string()),
                column(&|f| f.price.to_string()),
                column(&|f| f.commission.to_string()),
                column(&|f| f.timestamp.to_rfc3339()),
            ],
        ));
    }
    if !batch.accounts.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO accounts (username, initial_cash, cash, realized_pl, commissions,
                                       updated_at)
                 SELECT username, initial_cash::numeric, cash::numeric, realized_pl::numeric,
                        commissions::numeric, updated_at
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[])
                      AS a(username, initial_cash, cash, realized_pl, commissions, updated_at)
                 ON CONFLICT (username) DO UPDATE SET
                     cash = EXCLUDED.cash,
                     realized_pl = EXCLUDED.realized_pl,
                     commissions = EXCLUDED.commissions,
                     updated_at = EXCLUDED.updated_at",
            )
            .await
            .map_err(sql)?;
        let accounts = &batch.accounts;
        let column = |f: &dyn Fn(&AccountRecord) -> String| -> Param {
            Box::new(accounts.iter().map(f).collect::<Vec<String>>())
        };
        out.push((
            statement,
            vec![
                column(&|a| a.username.clone()),
                column(&|a| a.initial_cash.to_string()),
                column(&|a| a.cash.to_string()),
                column(&|a| a.realized_pl.to_string()),
                column(&|a| a.commissions.to_string()),
                column(&|a| a.updated_at.to_rfc3339()),
            ],
        ));
    }
    let (closed, open): (Vec<&PositionRecord>, Vec<&PositionRecord>) = batch
        .positions
        .iter()
        .partition(|position| position.qty.is_zero());
    if !closed.is_empty() {
        let statement = client
            .prepare_cached(
                "DELETE FROM positions p
                 USING UNNEST($1::text[], $2::text[]) AS c(username, symbol)
                 WHERE p.username = c.username AND p.symbol = c.symbol",
            )
            .await
            .map_err(sql)?;
        out.push((
            statement,
            vec![
                Box::new(
                    closed
                        .iter()
                        .map(|p| p.username.clone())
                        .collect::<Vec<String>>(),
                ),
                Box::new(
                    closed
                        .iter()
                        .map(|p| p.symbol.clone())
                        .collect::<Vec<String>>(),
                ),
            ],
        ));
    }
    if !open.is_empty() {
        let statement = client
            .prepare_cached(
                "INSERT INTO positions (username, symbol, qty, cost_basis)
                 SELECT username, symbol, qty::numeric, cost_basis::numeric
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                      AS p(username, symbol, qty, cost_basis)
                 ON CONFLICT (username, symbol) DO UPDATE SET
                     qty = EXCLUDED.qty,
                     cost_basis = EXCLUDED.cost_basis",
            )
            .await
            .map_err(sql)?;
        let column = |f: &dyn Fn(&&PositionRecord) -> String| -> Param {
            Box::new(open.iter().map(f).collect::<Vec<String>>())
        };
        out.push((
            statement,
            vec![
                column(&|p| p.username.clone()),
                column(&|p| p.symbol.clone()),
                column(&|p| p.qty.to_string()),
                column(&|p| p.cost_basis.to_string()),
            ],
        ));
    }
    Ok(out)
}

/// Stores one batch: the fence claim, then the tables' statements, all pipelined on the
/// connection (sent without waiting for the previous answer; the server runs them in order),
/// so a batch costs one round trip rather than one per statement. With `closing` (the
/// writer's `COMMIT` when the batch is alone in its transaction) that statement follows them
/// in the same pipeline, and its result is returned too.
///
/// The first error in statement order is the batch's error: a refused fence raises, and a
/// failing statement aborts the transaction, so the statements after it fail as "transaction
/// aborted" and nothing of the batch commits (a `COMMIT` then answers `ROLLBACK`). A failure in
/// the client before anything is sent (a value too large for its column) returns without
/// sending, `closing` included. If a statement failed without the server having aborted the
/// transaction (the connection broke, or a parameter could not be encoded, so the others may
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
        let statements = batch_statements(client, target, batch).await?;
        Ok::<_, StoreError>((claim, statements))
    };
    let (claim, statements) = match prepared.await {
        Ok(prepared) => prepared,
        Err(error) => return (Err(error), None),
    };
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = statements
        .iter()
        .map(|(_, values)| {
            values
                .iter()
                .map(|value| value.as_ref() as &(dyn ToSql + Sync))
                .collect()
        })
        .collect();
    // `join!` and `join_all` poll their futures in order on the first pass, and each sends
    // its request on its first poll: the requests reach the server in statement order, and
    // the closing statement after them.
    let claimed = async {
        match (&claim, fence) {
            (Some((statement, token)), Some(fence)) => client
                .execute(statement, &[&fence.name, token])
                .await
                .map(|_| ()),
            _ => Ok(()),
        }
    };
    let rows = futures::future::join_all(
        statements
            .iter()
            .zip(&params)
            .map(|((statement, _), values)| client.execute(statement, values)),
    );
    let closed = async {
        match closing {
            Some(sql) => Some(client.batch_execute(sql).await),
            None => None,
        }
    };
    let (claimed, rows, closed) = futures::join!(claimed, rows, closed);
    let mut first_error = None;
    let mut aborted = false;
    for result in std::iter::once(claimed).chain(rows.into_iter().map(|r| r.map(|_| ()))) {
        if let Err(error) = result {
            aborted |= error.as_db_error().is_some();
            first_error.get_or_insert_with(|| batch_error(target, fence, error));
        }
    }
    let closed = closed.map(|closed| match closed {
        Err(error) => Err(classify(target, error)),
        Ok(()) if first_error.is_some() && !aborted => Err(StoreError::Database {
            path: target.into(),
            detail: "a statement of the batch failed outside the server after others were \
                     sent; whether they committed is unknown"
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
