//! [`ApiKeyStore`] on PostgreSQL: the `api_keys` table and the server key's fingerprint in
//! `store_settings`.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::{PostgresStore, classify, decode_error, parse_time, work};
use crate::store::{ApiKeyRecord, ApiKeyStore, HASH_KEY_SETTING, StoreError};

impl ApiKeyStore for PostgresStore {
    fn claim_hash_key_fingerprint(
        &self,
        fingerprint: String,
    ) -> BoxFuture<'static, Result<String, StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                // Nodes starting together: the conflict leaves the first one's row, and the
                // read after the insert sees it (its commit came first).
                client
                    .execute(
                        "INSERT INTO store_settings (name, value) VALUES ($1, $2)
                         ON CONFLICT (name) DO NOTHING",
                        &[&HASH_KEY_SETTING, &fingerprint],
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                let row = client
                    .query_one(
                        "SELECT value FROM store_settings WHERE name = $1",
                        &[&HASH_KEY_SETTING],
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                row.try_get(0).map_err(|e| decode_error(&target, e))
            })
        }))
    }

    fn insert_api_key(&self, record: ApiKeyRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        let target = self.target.clone();
        self.write_future(work(move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "INSERT INTO api_keys (key_id, username, secret_hash, created_at)
                         VALUES ($1, $2, $3, $4)",
                        &[
                            &record.key_id,
                            &record.username,
                            &record.secret_hash,
                            &record.created_at.to_rfc3339(),
                        ],
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                Ok(())
            })
        }))
    }

    fn revoke_api_key(
        &self,
        key_id: &str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        let target = self.target.clone();
        let key_id = key_id.to_owned();
        self.write_future(work(move |client| {
            Box::pin(async move {
                let changed = client
                    .execute(
                        "UPDATE api_keys SET revoked_at = $2
                         WHERE key_id = $1 AND revoked_at IS NULL",
                        &[&key_id, &at.to_rfc3339()],
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                Ok(changed > 0)
            })
        }))
    }

    fn active_api_keys(&self) -> BoxFuture<'static, Result<Vec<ApiKeyRecord>, StoreError>> {
        let target = self.target.clone();
        self.read_future(work(move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT key_id, username, secret_hash, created_at FROM api_keys
                         WHERE revoked_at IS NULL ORDER BY created_at, key_id",
                        &[],
                    )
                    .await
                    .map_err(|e| classify(&target, e))?;
                let decode = |e| decode_error(&target, e);
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let created_at: String = row.try_get(3).map_err(decode)?;
                    out.push(ApiKeyRecord {
                        key_id: row.try_get(0).map_err(decode)?,
                        username: row.try_get(1).map_err(decode)?,
                        secret_hash: row.try_get(2).map_err(decode)?,
                        created_at: parse_time(&target, &created_at)?,
                    });
                }
                Ok(out)
            })
        }))
    }
}
