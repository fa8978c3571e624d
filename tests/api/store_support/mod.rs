//! The store tests run on both backends: [`StoreFixture`] is a fresh store location (a
//! temporary SQLite directory, or a database of its own on the shared PostgreSQL server of
//! `postgres_support`), and [`on_both_backends!`] turns `async fn case(backend: Backend)` into
//! one test per backend (`case::sqlite`, `case::postgres`).
#![allow(dead_code, unreachable_pub)]

use tickgate::settings::{Settings, StoreSettings};
use tickgate::store::{Store, StoreBackend};

use crate::postgres_support::TestDatabase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where one test's store lives; the same fixture reopens the same data (a restart).
pub struct StoreFixture {
    pub backend: Backend,
    /// The SQLite file's directory; with PostgreSQL it still holds `api_key_hash.key`.
    pub dir: tempfile::TempDir,
    pub database: Option<TestDatabase>,
}

impl StoreFixture {
    pub fn new(backend: Backend) -> StoreFixture {
        StoreFixture {
            backend,
            dir: tempfile::tempdir().expect("tempdir"),
            database: (backend == Backend::Postgres).then(TestDatabase::create),
        }
    }

    /// `[store]` for this location: enabled, on this backend.
    pub fn store_settings(&self) -> StoreSettings {
        let mut store = StoreSettings {
            data_dir: self.dir.path().to_path_buf(),
            ..StoreSettings::default()
        };
        if let Some(database) = &self.database {
            store.backend = StoreBackend::Postgres;
            store.postgres_url = database.url();
        }
        store
    }

    /// The test application's settings with this store.
    pub fn settings(&self) -> Settings {
        let mut settings = crate::common::test_settings();
        settings.store = StoreSettings {
            enabled: true,
            ..self.store_settings()
        };
        settings
    }

    pub fn open(&self) -> Store {
        Store::open(&self.store_settings())
            .expect("open store")
            .store
    }

    /// The first column of the first row of `sql`, as text, read straight from the database
    /// (not through the store).
    pub fn query_text(&self, sql: &str) -> String {
        match &self.database {
            Some(database) => database.psql(sql),
            None => rusqlite::Connection::open(self.dir.path().join("tickgate.db"))
                .expect("open")
                .query_row(sql, [], |row| row.get::<_, String>(0))
                .expect("query"),
        }
    }
}

/// `on_both_backends!(case_a, case_b)`: for each `async fn case(backend: Backend)` in scope, a
/// module `case` with the tests `sqlite` and `postgres`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn sqlite() {
                    super::$case($crate::store_support::Backend::Sqlite).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$case($crate::store_support::Backend::Postgres).await
                }
            }
        )*
    };
}
