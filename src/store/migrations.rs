//! The schema migrations, versioned as SQL files in `migrations/` and embedded in the binary,
//! and their application at start-up: all pending migrations run in one transaction that
//! also records them in `schema_version`, so a failed upgrade leaves the file as it was.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// One schema step. Versions rise by one; a released migration is never edited.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this build knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "api_keys",
        sql: include_str!("../../migrations/0002_api_keys.sql"),
    },
    Migration {
        version: 3,
        name: "trade_updates",
        sql: include_str!("../../migrations/0003_trade_updates.sql"),
    },
    Migration {
        version: 4,
        name: "trade_updates_append",
        sql: include_str!("../../migrations/0004_trade_updates_append.sql"),
    },
    Migration {
        version: 5,
        name: "fences_commands",
        sql: include_str!("../../migrations/0005_fences_commands.sql"),
    },
    Migration {
        version: 6,
        name: "store_settings",
        sql: include_str!("../../migrations/0006_store_settings.sql"),
    },
];

/// The schema version this build writes.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Why migrating failed; the caller adds the file path.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("schema version {found} is newer than {supported}")]
    Newer { found: u32, supported: u32 },
    #[error("migration {version} ({name}): {source}")]
    Step {
        version: u32,
        name: &'static str,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// The highest applied version, or 0 for an empty database.
pub fn current_version(connection: &Connection) -> Result<u32, rusqlite::Error> {
    let has_table: bool = connection
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_table {
        return Ok(0);
    }
    connection.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |row| row.get(0),
    )
}

/// Applies every pending migration in one immediate transaction; returns the versions applied.
pub fn migrate(connection: &mut Connection) -> Result<Vec<u32>, MigrateError> {
    // IMMEDIATE takes the write lock first, so two processes starting on one file cannot both
    // decide the same migration is pending.
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    transaction.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL
         )",
    )?;
    let current = current_version(&transaction)?;
    let supported = latest_version();
    if current > supported {
        return Err(MigrateError::Newer {
            found: current,
            supported,
        });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        transaction
            .execute_batch(migration.sql)
            .and_then(|()| {
                transaction.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?1, ?2, ?3)",
                    rusqlite::params![
                        migration.version,
                        migration.name,
                        chrono::Utc::now().to_rfc3339()
                    ],
                )
            })
            .map_err(|source| MigrateError::Step {
                version: migration.version,
                name: migration.name,
                source,
            })?;
        applied.push(migration.version);
    }
    transaction.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_rise_by_one_and_match_the_files_in_the_repository() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations directory")
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

    #[test]
    fn migrating_twice_applies_each_version_once() {
        let mut connection = Connection::open_in_memory().expect("memory db");
        assert_eq!(
            migrate(&mut connection).expect("first"),
            (1..=latest_version()).collect::<Vec<_>>()
        );
        assert!(migrate(&mut connection).expect("second").is_empty());
        assert_eq!(
            current_version(&connection).expect("version"),
            latest_version()
        );
    }

    #[test]
    fn version_three_keeps_repeated_client_order_ids_of_older_files_and_refuses_new_ones() {
        let mut connection = Connection::open_in_memory().expect("memory db");
        connection
            .execute_batch(MIGRATIONS[0].sql)
            .and_then(|()| {
                connection.execute_batch(
                    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                                  applied_at TEXT NOT NULL);
                     INSERT INTO schema_version VALUES (1, 'initial', 'x');",
                )
            })
            .expect("a version 1 file");
        let insert = |connection: &Connection, id: &str, user: &str, cid: &str| {
            connection.execute(
                "INSERT INTO orders (id, username, client_order_id, symbol, status, is_open,
                                     created_at, updated_at, body)
                 VALUES (?1, ?2, ?3, 'AAPL', 'canceled', 0, 't', 't', '{}')",
                rusqlite::params![id, user, cid],
            )
        };
        // Versions 1 and 2 allowed reusing a client_order_id once the earlier order finished.
        for (id, user, cid) in [("o1", "ann", "a"), ("o2", "ann", "a"), ("o3", "bob", "a")] {
            insert(&connection, id, user, cid).expect("version 1 row");
        }
        assert_eq!(
            migrate(&mut connection).expect("to the latest"),
            (2..=latest_version()).collect::<Vec<_>>()
        );
        let repeats: Vec<String> = connection
            .prepare("SELECT id FROM orders WHERE client_order_id_repeat = 1")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get(0))
                    .and_then(|rows| rows.collect())
            })
            .expect("query");
        assert_eq!(repeats, vec!["o1".to_string()], "the older repeat only");
        let error = insert(&connection, "o4", "ann", "a").expect_err("unique from now on");
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        insert(&connection, "o5", "ann", "b").expect("a fresh id");
    }

    #[test]
    fn the_append_migration_keeps_every_stored_update_in_commit_order_and_a_unique_seq() {
        let mut connection = Connection::open_in_memory().expect("memory db");
        connection
            .execute_batch(
                "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                              applied_at TEXT NOT NULL);",
            )
            .expect("version table");
        for migration in MIGRATIONS.iter().filter(|m| m.version <= 3) {
            connection
                .execute_batch(migration.sql)
                .and_then(|()| {
                    connection.execute(
                        "INSERT INTO schema_version VALUES (?1, ?2, 'x')",
                        rusqlite::params![migration.version, migration.name],
                    )
                })
                .expect("a version 3 file");
        }
        // Version 3 rows: bob's first update was stored before ann's second.
        for (user, seq, stored_at) in [
            ("ann", 1, 100),
            ("bob", 1, 150),
            ("ann", 2, 200),
            ("bob", 2, 300),
        ] {
            connection
                .execute(
                    "INSERT INTO trade_updates (username, seq, order_id, stored_at, body)
                     VALUES (?1, ?2, 'o', ?3, ?4)",
                    rusqlite::params![
                        user,
                        seq,
                        stored_at,
                        format!("{{\"seq\":{seq},\"u\":\"{user}\"}}")
                    ],
                )
                .expect("version 3 update");
        }
        assert_eq!(
            migrate(&mut connection).expect("to the latest"),
            (4..=latest_version()).collect::<Vec<_>>()
        );
        let rows: Vec<(String, i64, i64, String)> = connection
            .prepare("SELECT username, seq, stored_at, body FROM trade_updates ORDER BY rowid")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .and_then(|rows| rows.collect())
            })
            .expect("rows");
        let expected: Vec<(String, i64, i64, String)> = [
            ("ann", 1, 100),
            ("bob", 1, 150),
            ("ann", 2, 200),
            ("bob", 2, 300),
        ]
        .into_iter()
        .map(|(user, seq, at)| {
            (
                user.to_owned(),
                seq,
                at,
                format!("{{\"seq\":{seq},\"u\":\"{user}\"}}"),
            )
        })
        .collect();
        assert_eq!(rows, expected, "every row and body kept, oldest first");
        let time_index: Option<String> = connection
            .query_row(
                "SELECT name FROM sqlite_master WHERE name = 'trade_updates_by_time'",
                [],
                |row| row.get(0),
            )
            .optional()
            .expect("query");
        assert_eq!(time_index, None, "pruning no longer needs a time index");
        let error = connection
            .execute(
                "INSERT INTO trade_updates (username, seq, stored_at, body) VALUES ('ann', 2, 400, '{}')",
                [],
            )
            .expect_err("(username, seq) stays unique");
        assert!(error.to_string().contains("UNIQUE"), "{error}");
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_untouched() {
        let mut connection = Connection::open_in_memory().expect("memory db");
        migrate(&mut connection).expect("migrate");
        connection
            .execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'future', 'x')",
                [],
            )
            .expect("insert");
        let error = migrate(&mut connection).unwrap_err();
        assert!(matches!(error, MigrateError::Newer { found: 99, .. }));
        assert_eq!(current_version(&connection).expect("version"), 99);
    }
}
