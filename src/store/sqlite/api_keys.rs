//! [`ApiKeyStore`] on SQLite: the `api_keys` table (migration 2) and the server key's
//! fingerprint in `store_settings` (migration 6).

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rusqlite::params;

use super::{SqliteStore, classify, parse_time};
use crate::store::{ApiKeyRecord, ApiKeyStore, HASH_KEY_SETTING, StoreError};

impl ApiKeyStore for SqliteStore {
    fn claim_hash_key_fingerprint(
        &self,
        fingerprint: String,
    ) -> BoxFuture<'static, Result<String, StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            connection
                .execute(
                    "INSERT INTO store_settings (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO NOTHING",
                    params![HASH_KEY_SETTING, fingerprint],
                )
                .map_err(sql)?;
            connection
                .query_row(
                    "SELECT value FROM store_settings WHERE name = ?1",
                    params![HASH_KEY_SETTING],
                    |row| row.get(0),
                )
                .map_err(sql)
        })
    }

    fn insert_api_key(&self, record: ApiKeyRecord) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            connection
                .execute(
                    "INSERT INTO api_keys (key_id, username, secret_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        record.key_id,
                        record.username,
                        record.secret_hash,
                        record.created_at.to_rfc3339()
                    ],
                )
                .map_err(|e| classify(&path, e))?;
            Ok(())
        })
    }

    fn revoke_api_key(
        &self,
        key_id: &str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        let path = self.path_text.clone();
        let key_id = key_id.to_owned();
        self.write_future(move |connection| {
            let changed = connection
                .execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE key_id = ?1 AND revoked_at IS NULL",
                    params![key_id, at.to_rfc3339()],
                )
                .map_err(|e| classify(&path, e))?;
            Ok(changed > 0)
        })
    }

    fn active_api_keys(&self) -> BoxFuture<'static, Result<Vec<ApiKeyRecord>, StoreError>> {
        self.read_future(move |connection, path| {
            let sql = |e| classify(path, e);
            let mut statement = connection
                .prepare(
                    "SELECT key_id, username, secret_hash, created_at FROM api_keys
                     WHERE revoked_at IS NULL ORDER BY created_at, key_id",
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
            let mut out = Vec::new();
            for row in rows {
                let (key_id, username, secret_hash, created_at) = row.map_err(sql)?;
                out.push(ApiKeyRecord {
                    key_id,
                    username,
                    secret_hash,
                    created_at: parse_time(path, &created_at)?,
                });
            }
            Ok(out)
        })
    }
}
