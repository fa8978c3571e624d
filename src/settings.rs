//! Typed configuration: `config/default.toml` (built into the binary, replaced by the file when
//! the config directory has one), then an optional extra file (`--config PATH`),
//! then `TICKGATE__SECTION__KEY` environment variables. Every bad key is reported at once.
//!
//! The loader deserializes the merged tree; on a type error it records the error with its
//! path, removes that key (so its default applies) and tries again, which collects every type
//! error in one run. Unknown keys are collected with `serde_ignored`. Semantic checks
//! (`Settings::validate`) add their own messages to the same list.
//!
//! Each default is written once, in the section's `Default` impl. `config/default.toml`
//! restates them for operators; a unit test keeps the two equal, apart from a short list of
//! demo keys (the publish token, the demo user, the simulator's starting prices) that the
//! shipped file sets on purpose.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::cluster::settings::ClusterSettings;

/// `config/default.toml` as it was at build time: used when the config directory has none.
pub const BUILT_IN_DEFAULTS: &str = include_str!("../config/default.toml");

/// Checks one `server.allowed_origins` entry: `*`, or `scheme://host[:port]` exactly as a
/// browser sends it in `Origin` (no path, no trailing slash, one origin per entry).
fn origin_problem(origin: &str) -> Option<String> {
    if origin == "*" {
        return None;
    }
    let rest = origin.split_once("://").map_or("", |(_, rest)| rest);
    let why = if origin.contains(',') || origin.contains(char::is_whitespace) {
        "holds a comma or a space: give each origin as its own list entry, e.g. [\"https://a.example\", \"https://b.example\"]"
    } else if !(origin.starts_with("http://") || origin.starts_with("https://")) {
        "has no scheme: write it as a browser sends it, e.g. \"https://app.example\""
    } else if rest.is_empty() || rest.contains('/') || !rest.bytes().all(|b| b.is_ascii_graphic()) {
        "must be scheme://host[:port] with no path and no trailing slash, e.g. \"https://app.example\""
    } else {
        return None;
    };
    Some(format!("server.allowed_origins: {origin:?} {why}"))
}

/// The whole configuration tree.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Settings {
    pub server: ServerSettings,
    pub log: LogSettings,
    pub market: MarketSettings,
    pub simulator: SimulatorSettings,
    pub hub: HubConfig,
    pub publish: PublishSettings,
    pub trading: TradingSettings,
    pub sources: SourcesSettings,
    pub auth: AuthSettings,
    pub ws: WsSettings,
    pub store: StoreSettings,
    pub cluster: ClusterSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Origins allowed by CORS and by the WebSocket `Origin` check. `*` allows any.
    pub allowed_origins: Vec<String>,
    /// Directory of the web dashboard served at `/`.
    pub web_root: PathBuf,
    /// How long open connections get to finish on SIGINT/SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest accepted HTTP request body.
    pub max_body_bytes: usize,
    /// Worker threads for the HTTP server (0 = one per core).
    pub workers: usize,
    /// How long data sent to a client may stay unacknowledged before the kernel drops the
    /// connection (`TCP_USER_TIMEOUT`): a peer that stopped reading, or vanished without a
    /// FIN, holds a socket and its buffers until then. `0s` leaves the kernel's default
    /// (about 15 minutes of retransmissions, and no limit at all on a zero window).
    #[serde(with = "humantime_serde")]
    pub stalled_peer_timeout: Duration,
    /// Kernel receive buffer (SO_RCVBUF) of each connection; 0 keeps the system's default.
    /// Bounds the client input actix-http reads ahead of the gateway per connection.
    pub receive_buffer_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: vec![
                "http://localhost:8080".into(),
                "http://127.0.0.1:8080".into(),
            ],
            web_root: PathBuf::from("web"),
            shutdown_grace: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            workers: 0,
            stalled_peer_timeout: Duration::from_secs(60),
            receive_buffer_bytes: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MarketSettings {
    /// The symbol universe served by this gateway.
    pub symbols: Vec<String>,
    /// Most symbols one SSE subscription may name.
    pub max_symbols_per_subscription: usize,
}

impl Default for MarketSettings {
    fn default() -> Self {
        MarketSettings {
            symbols: [
                "AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "TSLA", "META", "SPY",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            max_symbols_per_subscription: 100,
        }
    }
}

#[derive(Clone, Deserialize, Default)]
#[serde(default)]
pub struct PublishSettings {
    /// Bearer token for `POST /v1/publish`; empty disables the publish API. Never logged.
    pub admin_token: String,
}

impl std::fmt::Debug for PublishSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishSettings")
            .field(
                "admin_token",
                &if self.admin_token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

pub use crate::hub::HubConfig;
pub use crate::ingest::config::{
    PollerSettings, Provider, ReplayFormat, ReplaySettings, SourcesSettings,
};
pub use crate::ingest::sim::SimulatorSettings;
pub use crate::store::StoreSettings;
pub use crate::subject::{MAX_SUBJECT_BYTES, subject_problem};
pub use crate::trading::config::TradingSettings;

/// `[auth]`: how bearer tokens are verified, the built-in issuer's users, tickets, limits.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `HS256` (shared secret, default), `RS256` or `ES256` (public key in PEM).
    pub algorithm: String,
    /// Shared secret for HS256; also signs tokens of the built-in issuer. Empty: a random
    /// secret per process (tokens do not survive a restart). Never logged.
    pub hs256_secret: String,
    /// PEM public key for RS256/ES256 tokens from an external issuer.
    pub public_key_pem: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Lifetime of tokens from `POST /v1/auth/token`.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Lifetime of single-use WebSocket tickets.
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// Most simultaneous WebSocket sessions per user (error 406 beyond).
    pub max_connections_per_user: usize,
    /// Most `POST /v1/auth/token` attempts per client address per minute (429 beyond).
    pub max_login_attempts_per_minute: u32,
    /// Users of the built-in issuer, with argon2 PHC password hashes.
    pub users: Vec<UserEntry>,
    /// HS256: a token's `sub` must be one of `users` (a removed user's tokens are refused
    /// from the next start). Off only when another service signs HS256 tokens too.
    pub require_listed_users: bool,
    /// API key pairs defined in configuration (Alpaca's key id and secret; see
    /// `docs/alpaca.md`). Pairs issued through `POST /v1/api-keys` live in the store.
    pub api_keys: Vec<ApiKeyEntry>,
    /// The server key of the keyed hash that API key secrets are stored as (32+ bytes). Empty:
    /// a random key kept in `<store.data_dir>/api_key_hash.key`, or one per process when the
    /// store is off. Never logged.
    pub api_key_hash_key: String,
    /// Most API key pairs one user may hold at once (issued ones; configured ones do not count).
    pub max_api_keys_per_user: usize,
}

/// One API key pair from configuration. The secret itself is never in the configuration:
/// only its SHA-256 digest (print one with `tickgate hash-api-secret`), which `Debug` shows.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct ApiKeyEntry {
    pub key_id: String,
    /// The account the key trades for.
    pub user: String,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Accept the pair only from loopback addresses (the demo pair).
    pub loopback_only: bool,
}

/// One user of the built-in issuer.
#[derive(Clone, Deserialize, Default)]
#[serde(default)]
pub struct UserEntry {
    pub username: String,
    /// An argon2 PHC string (`$argon2id$v=19$...`), never a plain password.
    pub password_hash: String,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            algorithm: "HS256".into(),
            hs256_secret: String::new(),
            public_key_pem: String::new(),
            issuer: "tickgate".into(),
            audience: "tickgate".into(),
            leeway: Duration::from_secs(30),
            token_ttl: Duration::from_secs(3600),
            ticket_ttl: Duration::from_secs(10),
            max_connections_per_user: 5,
            max_login_attempts_per_minute: 20,
            users: Vec::new(),
            require_listed_users: true,
            api_keys: Vec::new(),
            api_key_hash_key: String::new(),
            max_api_keys_per_user: 10,
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("algorithm", &self.algorithm)
            .field("hs256_secret", &"<redacted>")
            .field("public_key_pem", &self.public_key_pem.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("token_ttl", &self.token_ttl)
            .field("ticket_ttl", &self.ticket_ttl)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("users", &self.users)
            .field("require_listed_users", &self.require_listed_users)
            .field("api_keys", &self.api_keys)
            .field("api_key_hash_key", &"<redacted>")
            .field("max_api_keys_per_user", &self.max_api_keys_per_user)
            .finish()
    }
}

/// `[ws]`: limits and timers of the authenticated WebSocket at `/v1/stream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WsSettings {
    /// Time a client has to authenticate after connecting (error 404, then close).
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Interval of server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection silent (no frame, no pong) for longer than this is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest client message kept; a larger one (up to `max_frame_bytes`) is dropped as it
    /// streams in, answered with error 400, and the session carries on.
    pub max_message_bytes: usize,
    /// Largest client message at all (one frame or a fragmented message): beyond it, 1009.
    pub max_frame_bytes: usize,
    /// Before authentication, the largest message: beyond it, error 400 and close 1009.
    pub max_preauth_message_bytes: usize,
    /// Longest a fragmented message may stay unfinished (error 431, close 1008).
    #[serde(with = "humantime_serde")]
    pub fragment_timeout: Duration,
    /// Sustained client actions per second (token bucket refill rate).
    pub actions_per_second: f64,
    /// Token bucket size: a burst of this many actions is allowed.
    pub action_burst: u32,
    /// Dropped messages (over the rate limit, less `actions_per_second` per second) after
    /// which the session is closed (error 430, close 1008).
    pub max_dropped_actions: u32,
    /// Most portfolio messages per second per connection.
    pub portfolio_max_per_second: f64,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            auth_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_message_bytes: 16 * 1024,
            max_frame_bytes: 1024 * 1024,
            max_preauth_message_bytes: 8 * 1024,
            fragment_timeout: Duration::from_secs(10),
            actions_per_second: 20.0,
            action_burst: 40,
            max_dropped_actions: 100,
            portfolio_max_per_second: 4.0,
        }
    }
}

/// All problems found in the configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct SettingsError {
    pub problems: Vec<String>,
}

impl Settings {
    /// Loads `config/default.toml` (relative to `config_dir`), an optional extra file and the
    /// environment (`TICKGATE__SECTION__KEY`).
    pub fn load(config_dir: &Path, extra_file: Option<&Path>) -> Result<Settings, SettingsError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Settings::load_from(config_dir, extra_file, &env)
    }

    /// Like [`Settings::load`] with an explicit environment, for tests.
    pub fn load_from(
        config_dir: &Path,
        extra_file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Settings, SettingsError> {
        // The shipped defaults (demo user, publish token, simulator prices) are built in, so
        // the binary works from any directory; a `default.toml` in the config directory
        // replaces them.
        let defaults_file = config_dir.join("default.toml");
        let mut builder = if defaults_file.is_file() {
            config::Config::builder()
                .add_source(config::File::from(defaults_file).format(config::FileFormat::Toml))
        } else {
            config::Config::builder().add_source(config::File::from_str(
                BUILT_IN_DEFAULTS,
                config::FileFormat::Toml,
            ))
        };
        if let Some(path) = extra_file {
            builder = builder.add_source(
                config::File::from(path.to_path_buf())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env_map: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("TICKGATE__"))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("TICKGATE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("market.symbols")
                .with_list_parse_key("server.allowed_origins")
                .source(Some(env_map)),
        );
        let merged = builder.build().map_err(|e| SettingsError {
            problems: vec![e.to_string()],
        })?;
        let tree: serde_json::Value = merged.try_deserialize().map_err(|e| SettingsError {
            problems: vec![e.to_string()],
        })?;
        // Type errors and unknown keys first, then the semantic checks of whatever did parse
        // (bad keys fall back to their defaults), so one run lists every problem.
        let (settings, mut problems): (Settings, Vec<String>) = deserialize_collecting(tree)?;
        problems.extend(settings.validate());
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(SettingsError { problems })
        }
    }

    /// Semantic checks that types alone do not express.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.market.symbols.is_empty() {
            problems.push("market.symbols: at least one symbol is required".into());
        }
        if let Some(bad) = self.market.symbols.iter().find(|s| {
            s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-/".contains(c))
        }) {
            problems.push(format!("market.symbols: {bad:?} is not a valid symbol"));
        }
        if self.market.max_symbols_per_subscription == 0 {
            problems.push("market.max_symbols_per_subscription: must be at least 1".into());
        }
        if self.hub.replay_window == 0 || self.hub.replay_window_bytes < 1 << 20 {
            problems
                .push("hub.replay_window: at least 1 event and replay_window_bytes 1 MiB".into());
        }
        if self.hub.subscriber_queue_capacity < 2 {
            problems.push("hub.subscriber_queue_capacity: must be at least 2".into());
        }
        if self.hub.coalesce_window > Duration::from_secs(1) {
            // A window is a latency added to every busy stream: beyond a second it is a
            // misconfiguration, not a trade-off.
            problems.push("hub.coalesce_window: at most 1s (\"0s\" turns it off)".into());
        }
        if self.hub.heartbeat_interval.is_zero() {
            problems.push("hub.heartbeat_interval: must be greater than zero".into());
        }
        if !(self.simulator.trades_per_second > 0.0 && self.simulator.trades_per_second <= 10_000.0)
        {
            problems.push("simulator.trades_per_second: must be in (0, 10000]".into());
        }
        if !(self.simulator.volatility >= 0.0 && self.simulator.volatility < 10.0) {
            problems.push("simulator.volatility: must be in [0, 10)".into());
        }
        if !(self.simulator.time_scale > 0.0 && self.simulator.time_scale <= 1_000_000.0) {
            problems.push("simulator.time_scale: must be in (0, 1000000]".into());
        }
        for (symbol, price) in &self.simulator.initial_prices {
            if !(price.is_finite() && *price > 0.0) {
                problems.push(format!(
                    "simulator.initial_prices.{symbol}: must be a positive price"
                ));
            }
        }
        let origins = &self.server.allowed_origins;
        problems.extend(origins.iter().filter_map(|origin| origin_problem(origin)));
        problems.extend(self.trading.validate());
        problems.extend(self.sources.validate(&self.market.symbols));
        problems.extend(self.validate_auth_and_ws());
        problems.extend(self.store.validate());
        problems.extend(self.cluster.validate());
        problems.extend(self.cluster_trading_problem());
        problems
    }

    /// Cluster mode trades through one exchange whose state every node reads, so its store
    /// must be shared: a SQLite file belongs to one process. Without a store (`store.enabled =
    /// false`) nothing is durable and each node keeps its own in-memory exchange, which stays
    /// allowed for tests and demos of the feeds.
    fn cluster_trading_problem(&self) -> Option<String> {
        (self.cluster.enabled()
            && self.store.enabled
            && self.store.backend != crate::store::StoreBackend::Postgres)
            .then(|| {
                "store.backend: cluster mode (cluster.redis_url is set) with trading needs \
                 store.backend = \"postgres\" and store.postgres_url, the database every node's \
                 exchange shares; a SQLite file belongs to one process (see docs/deployment.md, \
                 or set store.enabled = false for a cluster without durable trading)"
                    .to_owned()
            })
    }

    fn validate_auth_and_ws(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let auth = &self.auth;
        match auth.algorithm.as_str() {
            "HS256" => {
                // Empty means "a random secret per process" (see `auth::AuthService::new`).
                if !auth.hs256_secret.is_empty() && auth.hs256_secret.len() < 32 {
                    problems.push("auth.hs256_secret: must be at least 32 bytes for HS256".into());
                }
            }
            "RS256" | "ES256" => {
                if auth.public_key_pem.trim().is_empty() {
                    problems.push(format!(
                        "auth.public_key_pem: required for {}",
                        auth.algorithm
                    ));
                }
            }
            other => problems.push(format!(
                "auth.algorithm: {other:?} is not supported; use HS256, RS256 or ES256"
            )),
        }
        if auth.ticket_ttl.is_zero() || auth.ticket_ttl > Duration::from_secs(60) {
            problems.push("auth.ticket_ttl: must be between 1ms and 60s".into());
        }
        if auth.token_ttl.is_zero() {
            problems.push("auth.token_ttl: must be greater than zero".into());
        }
        if auth.max_connections_per_user == 0 {
            problems.push("auth.max_connections_per_user: must be at least 1".into());
        }
        for user in &auth.users {
            if let Some(problem) = subject_problem(&user.username) {
                problems.push(format!(
                    "auth.users: username {:?} {problem}",
                    user.username
                ));
            } else if !user.password_hash.starts_with("$argon2") {
                problems.push(format!(
                    "auth.users: {:?} needs an argon2 PHC password_hash",
                    user.username
                ));
            }
        }
        problems.extend(crate::auth::api_keys::check_settings(auth));
        let ws = &self.ws;
        for (name, value) in [
            ("ws.auth_timeout", ws.auth_timeout),
            ("ws.ping_interval", ws.ping_interval),
            ("ws.idle_timeout", ws.idle_timeout),
            ("ws.fragment_timeout", ws.fragment_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("{name}: must be greater than zero"));
            }
        }
        if ws.idle_timeout <= ws.ping_interval {
            problems.push("ws.idle_timeout: must be longer than ws.ping_interval".into());
        }
        let sizes = [256, ws.max_preauth_message_bytes, ws.max_message_bytes];
        if !sizes.iter().chain([&ws.max_frame_bytes]).is_sorted() {
            problems.push(
                "ws: need 256 <= max_preauth_message_bytes <= max_message_bytes <= max_frame_bytes"
                    .into(),
            );
        }
        if ws.max_dropped_actions == 0 {
            problems.push("ws.max_dropped_actions: must be at least 1".into());
        }
        if !(ws.actions_per_second > 0.0 && ws.actions_per_second.is_finite())
            || ws.action_burst == 0
        {
            problems.push("ws.actions_per_second and ws.action_burst: must be positive".into());
        }
        if !(ws.portfolio_max_per_second > 0.0 && ws.portfolio_max_per_second <= 1000.0) {
            problems.push("ws.portfolio_max_per_second: must be in (0, 1000]".into());
        }
        problems
    }
}

/// Deserializes, collecting every type error and unknown key instead of stopping at the first.
fn deserialize_collecting<T: serde::de::DeserializeOwned>(
    mut tree: serde_json::Value,
) -> Result<(T, Vec<String>), SettingsError> {
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..64 {
        unknown.clear();
        let result: Result<T, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(&tree, &mut |path: serde_ignored::Path<'_>| {
                unknown.push(path.to_string())
            }),
        );
        match result {
            Ok(value) => {
                problems.extend(unknown.iter().map(|p| format!("{p}: unknown key")));
                return Ok((value, problems));
            }
            Err(error) => {
                let path = error.path().to_string();
                problems.push(format!("{path}: {}", error.inner()));
                if !remove_path(&mut tree, error.path()) {
                    break;
                }
            }
        }
    }
    Err(SettingsError { problems })
}

fn remove_path(tree: &mut serde_json::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for segment in parents {
        node = match (segment, node) {
            (Segment::Map { key }, serde_json::Value::Object(map)) => match map.get_mut(key) {
                Some(child) => child,
                None => return false,
            },
            (Segment::Seq { index }, serde_json::Value::Array(items)) => {
                match items.get_mut(*index) {
                    Some(child) => child,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, serde_json::Value::Object(map)) => map.remove(key).is_some(),
        (Segment::Seq { index }, serde_json::Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
