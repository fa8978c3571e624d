//! `[store]`: where the durable state lives and how the writer batches and prunes it. Owned
//! here, beside the store; `crate::settings` re-exports it into the configuration tree.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Which database holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// An embedded SQLite file in `data_dir` (one gateway process).
    Sqlite,
    /// A PostgreSQL server at `postgres_url`, which several gateway nodes can share.
    Postgres,
}

/// Durable storage (`[store]`): orders, accounts, bar history and feed positions in an
/// embedded SQLite file or a PostgreSQL database (see `docs/storage.md` and
/// `docs/deployment.md`).
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct StoreSettings {
    /// Off: nothing is persisted; bars come from memory and every start is a fresh history.
    pub enabled: bool,
    /// `sqlite` (the default) or `postgres`.
    pub backend: StoreBackend,
    /// `postgres://user:password@host:port/database` for `backend = "postgres"`. Never logged
    /// (it may hold a password).
    pub postgres_url: String,
    /// Directory holding the database file; created if missing.
    pub data_dir: PathBuf,
    /// Database file name inside `data_dir`.
    pub file_name: String,
    /// Whether a missing database file may be created. Set to false in production so an
    /// unmounted or wiped volume is an error at start-up instead of a silent fresh start.
    pub create_if_missing: bool,
    /// One-minute bars older than this are pruned.
    #[serde(with = "humantime_serde")]
    pub bar_retention: Duration,
    /// How often the pruner runs.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Bars written per transaction at most.
    pub bar_batch_size: usize,
    /// Longest a received bar waits before it is written.
    #[serde(with = "humantime_serde")]
    pub bar_flush_interval: Duration,
    /// Most queued trading writes committed together in one transaction (group commit).
    pub trading_batch_size: usize,
    /// Read-only connections serving history queries next to the single writer.
    pub read_connections: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            enabled: true,
            backend: StoreBackend::Sqlite,
            postgres_url: String::new(),
            data_dir: PathBuf::from("data"),
            file_name: "tickgate.db".into(),
            create_if_missing: true,
            bar_retention: Duration::from_secs(30 * 24 * 3600),
            prune_interval: Duration::from_secs(3600),
            bar_batch_size: 500,
            bar_flush_interval: Duration::from_secs(1),
            trading_batch_size: 256,
            read_connections: 2,
        }
    }
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("enabled", &self.enabled)
            .field("backend", &self.backend)
            .field(
                "postgres_url",
                &if self.postgres_url.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field("data_dir", &self.data_dir)
            .field("file_name", &self.file_name)
            .field("create_if_missing", &self.create_if_missing)
            .field("bar_retention", &self.bar_retention)
            .field("prune_interval", &self.prune_interval)
            .field("bar_batch_size", &self.bar_batch_size)
            .field("bar_flush_interval", &self.bar_flush_interval)
            .field("trading_batch_size", &self.trading_batch_size)
            .field("read_connections", &self.read_connections)
            .finish()
    }
}

impl StoreSettings {
    /// The database file: `data_dir/file_name`.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(&self.file_name)
    }

    /// Semantic checks of `[store]` (only when it is enabled).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled {
            return problems;
        }
        let name = &self.file_name;
        if name.is_empty() || name.contains('/') || name.contains('\\') {
            problems.push("store.file_name: must be a plain file name".into());
        }
        if self.bar_batch_size == 0 || self.trading_batch_size == 0 {
            problems
                .push("store.bar_batch_size, store.trading_batch_size: must be at least 1".into());
        }
        if self.bar_flush_interval.is_zero() || self.prune_interval.is_zero() {
            problems.push(
                "store.bar_flush_interval, store.prune_interval: must be greater than zero".into(),
            );
        }
        if self.read_connections == 0 {
            problems.push("store.read_connections: must be at least 1".into());
        }
        match self.backend {
            StoreBackend::Postgres if self.postgres_url.is_empty() => problems.push(
                "store.postgres_url: required with store.backend = \"postgres\" \
                 (postgres://user:password@host:port/database)"
                    .into(),
            ),
            StoreBackend::Postgres => {
                if let Err(problem) = crate::store::postgres::check_url(&self.postgres_url) {
                    problems.push(format!("store.postgres_url: {problem}"));
                }
            }
            StoreBackend::Sqlite if !self.postgres_url.is_empty() => problems.push(
                "store.postgres_url: set, but store.backend is \"sqlite\"; set store.backend = \"postgres\" to use it, or remove it"
                    .into(),
            ),
            StoreBackend::Sqlite => {}
        }
        problems
    }
}
