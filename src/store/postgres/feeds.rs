//! [`FeedStateStore`] on PostgreSQL: the epoch and each feed's last sequence in `meta` and
//! `feed_state`, as in the SQLite store.

use std::collections::BTreeMap;

use deadpool_postgres::ClientWrapper;
use futures::future::BoxFuture;

use crate::store::{FeedStateStore, RecordedFeeds, StoreError};

use super::{PostgresStore, classify, decode_error, to_bigint, work};

async fn meta(
    client: &ClientWrapper,
    target: &str,
    key: &str,
) -> Result<Option<String>, StoreError> {
    client
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
        .await
        .map_err(|e| classify(target, e))?
        .map(|row| row.try_get::<_, String>(0))
        .transpose()
        .map_err(|e| decode_error(target, e))
}

impl FeedStateStore for PostgresStore {
    fn recorded_feeds(&self) -> BoxFuture<'static, Result<Option<RecordedFeeds>, StoreError>> {
        let target = self.target.clone();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let sql = |e| classify(&target, e);
                let Some(epoch) = meta(client, &target, "epoch").await? else {
                    return Ok(None);
                };
                let epoch = epoch
                    .parse::<u64>()
                    .map_err(|e| decode_error(&target, format!("epoch {epoch:?}: {e}")))?;
                let clean_shutdown =
                    meta(client, &target, "clean_shutdown").await?.as_deref() == Some("1");
                let mut high_water = BTreeMap::new();
                for row in client
                    .query("SELECT feed, high_water FROM feed_state", &[])
                    .await
                    .map_err(sql)?
                {
                    let feed: String = row.try_get(0).map_err(|e| decode_error(&target, e))?;
                    let seq: i64 = row.try_get(1).map_err(|e| decode_error(&target, e))?;
                    high_water.insert(feed, u64::try_from(seq).unwrap_or(0));
                }
                Ok(Some(RecordedFeeds {
                    epoch,
                    clean_shutdown,
                    high_water,
                }))
            })
        }))
    }

    fn record_run_started(&self, epoch: u64) -> BoxFuture<'static, Result<(), StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                for (key, value) in [("epoch", epoch.to_string()), ("clean_shutdown", "0".into())] {
                    client
                        .execute(
                            "INSERT INTO meta (key, value) VALUES ($1, $2)
                             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                            &[&key, &value],
                        )
                        .await
                        .map_err(|e| classify(&target, e))?;
                }
                Ok(())
            })
        }))
    }

    fn record_clean_shutdown(
        &self,
        high_water: BTreeMap<String, u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                let sql = |e| classify(&target, e);
                for (feed, seq) in &high_water {
                    let seq = to_bigint(&target, "feed sequence", *seq)?;
                    client
                        .execute(
                            "INSERT INTO feed_state (feed, high_water) VALUES ($1, $2)
                             ON CONFLICT (feed) DO UPDATE SET high_water = EXCLUDED.high_water",
                            &[feed, &seq],
                        )
                        .await
                        .map_err(sql)?;
                }
                client
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('clean_shutdown', '1')
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        &[],
                    )
                    .await
                    .map_err(sql)?;
                Ok(())
            })
        }))
    }
}
