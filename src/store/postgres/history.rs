//! [`HistoryStore`] on PostgreSQL: one-minute bars upserted in batches, read by range, pruned
//! by age in bounded chunks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::market::Bar;
use crate::store::{BarQuery, HistoryStore, StoreError};

use super::{PostgresStore, classify, decode_error, work};

impl HistoryStore for PostgresStore {
    fn write_bars(&self, mut bars: Vec<Bar>) -> BoxFuture<'static, Result<(), StoreError>> {
        if bars.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        // In a cluster every node records the same bars into the shared database; upserting
        // in one key order everywhere keeps two nodes' transactions from deadlocking.
        bars.sort_by(|a, b| (&a.symbol, a.time).cmp(&(&b.symbol, b.time)));
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                let sql = |e| classify(&target, e);
                let statement = client
                    .prepare_cached(
                        "INSERT INTO bars (symbol, t, o, h, l, c, v, n, vw)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (symbol, t) DO UPDATE SET
                             o = EXCLUDED.o, h = EXCLUDED.h, l = EXCLUDED.l, c = EXCLUDED.c,
                             v = EXCLUDED.v, n = EXCLUDED.n, vw = EXCLUDED.vw",
                    )
                    .await
                    .map_err(sql)?;
                for bar in &bars {
                    client
                        .execute(
                            &statement,
                            &[
                                &bar.symbol,
                                &bar.time.timestamp_micros(),
                                &bar.open,
                                &bar.high,
                                &bar.low,
                                &bar.close,
                                &bar.volume,
                                &i64::try_from(bar.trade_count).unwrap_or(i64::MAX),
                                &bar.vwap,
                            ],
                        )
                        .await
                        .map_err(sql)?;
                }
                Ok(())
            })
        }))
    }

    fn last_closes(
        &self,
        symbols: Vec<String>,
    ) -> BoxFuture<'static, Result<BTreeMap<String, f64>, StoreError>> {
        let target = self.target.clone();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let sql = |e| classify(&target, e);
                let statement = client
                    .prepare_cached("SELECT c FROM bars WHERE symbol = $1 ORDER BY t DESC LIMIT 1")
                    .await
                    .map_err(sql)?;
                let mut out = BTreeMap::new();
                for symbol in symbols {
                    if let Some(row) = client
                        .query_opt(&statement, &[&symbol])
                        .await
                        .map_err(sql)?
                    {
                        let close: f64 = row.try_get(0).map_err(|e| decode_error(&target, e))?;
                        out.insert(symbol, close);
                    }
                }
                Ok(out)
            })
        }))
    }

    fn bars(&self, query: BarQuery) -> BoxFuture<'static, Result<Vec<Bar>, StoreError>> {
        let target = self.target.clone();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let start = query.start.map_or(i64::MIN, |t| t.timestamp_micros());
                let end = query.end.map_or(i64::MAX, |t| t.timestamp_micros());
                let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
                let rows = client
                    .query(
                        "SELECT symbol, t, o, h, l, c, v, n, vw FROM bars
                         WHERE symbol = $1 AND t >= $2 AND t < $3 ORDER BY t LIMIT $4",
                        &[&query.symbol, &start, &end, &limit],
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                let decode = |e| decode_error(&target, e);
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let t: i64 = row.try_get(1).map_err(decode)?;
                    let time = DateTime::from_timestamp_micros(t)
                        .ok_or_else(|| decode_error(&target, format!("bar time {t}")))?;
                    let trade_count: i64 = row.try_get(7).map_err(decode)?;
                    out.push(Bar {
                        symbol: row.try_get(0).map_err(decode)?,
                        open: row.try_get(2).map_err(decode)?,
                        high: row.try_get(3).map_err(decode)?,
                        low: row.try_get(4).map_err(decode)?,
                        close: row.try_get(5).map_err(decode)?,
                        volume: row.try_get(6).map_err(decode)?,
                        trade_count: u64::try_from(trade_count).unwrap_or(0),
                        vwap: row.try_get(8).map_err(decode)?,
                        time,
                    });
                }
                Ok(out)
            })
        }))
    }

    fn prune_bars(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                // Bounded deletes keep each write short, so trading commits queued behind a
                // large prune do not wait long.
                client
                    .execute(
                        "DELETE FROM bars WHERE (symbol, t) IN
                             (SELECT symbol, t FROM bars WHERE t < $1 LIMIT $2)",
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
