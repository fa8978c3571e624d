//! The PostgreSQL schema, versioned as SQL files in `migrations/postgres/` (independent of the
//! SQLite ones) and embedded in the binary. All pending migrations run in one transaction that
//! also records them in `schema_version`, under an advisory lock so nodes starting together
//! do not both apply them; a database newer than this build is refused, untouched.

use deadpool_postgres::ClientWrapper;

use super::classify;
use crate::store::StoreError;
use crate::store::migrations::Migration;

/// Every PostgreSQL migration this build knows, in order. A released one is never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "store_settings",
        sql: include_str!("../../../migrations/postgres/0002_store_settings.sql"),
    },
    Migration {
        version: 3,
        name: "claim_fence",
        sql: include_str!("../../../migrations/postgres/0003_claim_fence.sql"),
    },
];

/// The schema version this build writes.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The advisory lock key that serializes migrations across processes ("tickgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x7469_636b_6761_7465;

/// Applies every pending migration in one transaction; returns the versions applied.
pub(super) async fn migrate(
    client: &mut ClientWrapper,
    target: &str,
) -> Result<Vec<u32>, StoreError> {
    let transaction = client
        .transaction()
        .await
        .map_err(|e| classify(target, e))?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| classify(target, e))?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| classify(target, e))?;
    let current: i32 = transaction
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| classify(target, e))?;
    let current = u32::try_from(current).unwrap_or(0);
    let supported = latest_version();
    if current > supported {
        // Dropping the transaction rolls it back: nothing was changed.
        return Err(StoreError::NewerSchema {
            path: target.into(),
            found: current,
            supported,
        });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let step = async {
            transaction.batch_execute(migration.sql).await?;
            transaction
                .execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                    &[&(migration.version as i32), &migration.name],
                )
                .await
        };
        step.await.map_err(|e| StoreError::Migration {
            path: target.into(),
            version: migration.version,
            name: migration.name.into(),
            detail: match classify(target, e) {
                StoreError::Database { detail, .. } => detail,
                other => other.to_string(),
            },
        })?;
        applied.push(migration.version);
    }
    transaction
        .commit()
        .await
        .map_err(|e| classify(target, e))?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_migration_versions_rise_by_one_and_match_the_files_in_the_repository() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations/postgres directory")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let expected: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, expected, "every SQL file is embedded, in order");
    }
}
