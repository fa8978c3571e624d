//! [`FeedStateStore`] on SQLite: the epoch and each feed's last sequence, so a restart keeps
//! cursors valid.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use rusqlite::{OptionalExtension, params};

use crate::store::{FeedStateStore, RecordedFeeds, StoreError};

use super::{SqliteStore, classify, decode_error};

impl FeedStateStore for SqliteStore {
    fn recorded_feeds(&self) -> BoxFuture<'static, Result<Option<RecordedFeeds>, StoreError>> {
        // Through the writer, so this start-up read needs no async runtime.
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            let meta = |key: &str| -> Result<Option<String>, StoreError> {
                connection
                    .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                        row.get(0)
                    })
                    .optional()
                    .map_err(sql)
            };
            let Some(epoch) = meta("epoch")? else {
                return Ok(None);
            };
            let epoch = epoch
                .parse::<u64>()
                .map_err(|e| decode_error(&path, format!("epoch {epoch:?}: {e}")))?;
            let clean_shutdown = meta("clean_shutdown")?.as_deref() == Some("1");
            let mut high_water = BTreeMap::new();
            let mut statement = connection
                .prepare("SELECT feed, high_water FROM feed_state")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(sql)?;
            for row in rows {
                let (feed, seq) = row.map_err(sql)?;
                high_water.insert(feed, u64::try_from(seq).unwrap_or(0));
            }
            Ok(Some(RecordedFeeds {
                epoch,
                clean_shutdown,
                high_water,
            }))
        })
    }

    fn record_run_started(&self, epoch: u64) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            for (key, value) in [("epoch", epoch.to_string()), ("clean_shutdown", "0".into())] {
                connection
                    .execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![key, value],
                    )
                    .map_err(sql)?;
            }
            Ok(())
        })
    }

    fn record_clean_shutdown(
        &self,
        high_water: BTreeMap<String, u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            for (feed, seq) in &high_water {
                connection
                    .execute(
                        "INSERT INTO feed_state (feed, high_water) VALUES (?1, ?2)
                         ON CONFLICT (feed) DO UPDATE SET high_water = excluded.high_water",
                        params![feed, i64::try_from(*seq).unwrap_or(i64::MAX)],
                    )
                    .map_err(sql)?;
            }
            connection
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('clean_shutdown', '1')
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [],
                )
                .map_err(sql)?;
            Ok(())
        })
    }
}
