//! [`HistoryStore`] on SQLite: one-minute bars written in batches, read by range, pruned by
//! age.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rusqlite::params;

use crate::market::Bar;
use crate::store::{BarQuery, HistoryStore, StoreError};

use super::{SqliteStore, classify, decode_error};

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

impl HistoryStore for SqliteStore {
    fn write_bars(&self, bars: Vec<Bar>) -> BoxFuture<'static, Result<(), StoreError>> {
        if bars.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "INSERT INTO bars (symbol, t, o, h, l, c, v, n, vw)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (symbol, t) DO UPDATE SET
                         o = excluded.o, h = excluded.h, l = excluded.l, c = excluded.c,
                         v = excluded.v, n = excluded.n, vw = excluded.vw",
                )
                .map_err(|e| classify(&path, e))?;
            for bar in &bars {
                statement
                    .execute(params![
                        bar.symbol,
                        micros(bar.time),
                        bar.open,
                        bar.high,
                        bar.low,
                        bar.close,
                        bar.volume,
                        i64::try_from(bar.trade_count).unwrap_or(i64::MAX),
                        bar.vwap,
                    ])
                    .map_err(|e| classify(&path, e))?;
            }
            Ok(())
        })
    }

    fn bars(&self, query: BarQuery) -> BoxFuture<'static, Result<Vec<Bar>, StoreError>> {
        self.read_future(move |connection, path| {
            let sql = |e| classify(path, e);
            let mut statement = connection
                .prepare_cached(
                    "SELECT symbol, t, o, h, l, c, v, n, vw FROM bars
                     WHERE symbol = ?1 AND t >= ?2 AND t < ?3 ORDER BY t LIMIT ?4",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map(
                    params![
                        query.symbol,
                        query.start.map_or(i64::MIN, micros),
                        query.end.map_or(i64::MAX, micros),
                        i64::try_from(query.limit).unwrap_or(i64::MAX),
                    ],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            [
                                row.get::<_, f64>(2)?,
                                row.get::<_, f64>(3)?,
                                row.get::<_, f64>(4)?,
                                row.get::<_, f64>(5)?,
                                row.get::<_, f64>(6)?,
                            ],
                            row.get::<_, i64>(7)?,
                            row.get::<_, f64>(8)?,
                        ))
                    },
                )
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (symbol, t, [open, high, low, close, volume], trade_count, vwap) =
                    row.map_err(sql)?;
                let time = DateTime::from_timestamp_micros(t)
                    .ok_or_else(|| decode_error(path, format!("bar time {t}")))?;
                out.push(Bar {
                    symbol,
                    open,
                    high,
                    low,
                    close,
                    volume,
                    trade_count: u64::try_from(trade_count).unwrap_or(0),
                    vwap,
                    time,
                });
            }
            Ok(out)
        })
    }

    fn prune_bars(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            // Bounded deletes keep each write short, so trading commits queued behind a large
            // prune do not wait long.
            connection
                .execute(
                    "DELETE FROM bars WHERE (symbol, t) IN
                         (SELECT symbol, t FROM bars WHERE t < ?1 LIMIT ?2)",
                    params![micros(before), i64::try_from(max_rows).unwrap_or(i64::MAX)],
                )
                .map(|n| n as u64)
                .map_err(|e| classify(&path, e))
        })
    }
}
