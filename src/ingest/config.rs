//! The `[sources]` settings section: upstream HTTP pollers and file replays, with the checks
//! that turn a bad source definition into a clear start-up error. Re-exported by `settings`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Upstream sources besides the simulator. Empty by default: the simulator stays the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SourcesSettings {
    /// TCP connect timeout of the shared HTTP client.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for any single read from an upstream socket.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// `User-Agent` sent to providers (some refuse requests without one).
    pub user_agent: String,
    /// HTTP pollers (`[[sources.pollers]]`), each with its own provider and symbols.
    pub pollers: Vec<PollerSettings>,
    /// File replays (`[[sources.replays]]`).
    pub replays: Vec<ReplaySettings>,
}

impl Default for SourcesSettings {
    fn default() -> Self {
        SourcesSettings {
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(10),
            user_agent: concat!("tickgate/", env!("CARGO_PKG_VERSION")).into(),
            pollers: Vec::new(),
            replays: Vec::new(),
        }
    }
}

/// Which provider API a poller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The chart endpoint `/v8/finance/chart/{symbol}`.
    Yahoo,
    /// The quote endpoint `/api/v1/quote?symbol=`.
    Finnhub,
}

impl Provider {
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::Yahoo => "https://query1.finance.yahoo.com",
            Provider::Finnhub => "https://finnhub.io",
        }
    }
}

/// One HTTP poller.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct PollerSettings {
    /// Unique source name: the `venue` of its trades, the label in metrics and `/readyz`.
    pub name: String,
    /// `yahoo` or `finnhub` (required).
    pub provider: Option<Provider>,
    /// Provider base URL; empty means the provider's public API.
    pub base_url: String,
    /// Symbols to poll; each must be in `market.symbols`.
    pub symbols: Vec<String>,
    /// The provider's spelling of a symbol where it differs, e.g. `"BRK.B" = "BRK-B"`.
    pub symbol_map: std::collections::BTreeMap<String, String>,
    /// Fixed poll period: a poll is due one interval after the previous one was due.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Random delay in `[0, jitter)` added to each due time (never carried forward).
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Deadline for one request, from connecting to the end of the body.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay after a failed poll; doubles per consecutive failure.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Upper bound of the exponential backoff.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Upper bound on a provider's `Retry-After`, so one header cannot stall a source forever.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// Consecutive failed polls after which the source is reported down.
    pub failures_before_down: u32,
    /// Largest accepted move of the last price versus the last accepted price (0.2 = 20 %).
    pub max_jump_fraction: f64,
    /// A price beyond `max_jump_fraction` is accepted once this many consecutive polls agree.
    pub jump_confirmations: u32,
    /// API token (Finnhub). Prefer `token_env`. Never logged.
    pub token: String,
    /// Name of an environment variable holding the API token (read at start-up).
    pub token_env: String,
}

impl Default for PollerSettings {
    fn default() -> Self {
        PollerSettings {
            name: String::new(),
            provider: None,
            base_url: String::new(),
            symbols: Vec::new(),
            symbol_map: std::collections::BTreeMap::new(),
            interval: Duration::from_secs(5),
            jitter: Duration::from_millis(250),
            request_timeout: Duration::from_secs(4),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(300),
            failures_before_down: 3,
            max_jump_fraction: 0.2,
            jump_confirmations: 3,
            token: String::new(),
            token_env: String::new(),
        }
    }
}

impl std::fmt::Debug for PollerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerSettings")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("symbols", &self.symbols)
            .field("symbol_map", &self.symbol_map)
            .field("interval", &self.interval)
            .field("jitter", &self.jitter)
            .field("request_timeout", &self.request_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("retry_after_max", &self.retry_after_max)
            .field("failures_before_down", &self.failures_before_down)
            .field("max_jump_fraction", &self.max_jump_fraction)
            .field("jump_confirmations", &self.jump_confirmations)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("token_env", &self.token_env)
            .finish()
    }
}

impl PollerSettings {
    /// The base URL without a trailing slash, falling back to the provider's public API.
    pub fn effective_base_url(&self) -> String {
        let base = if self.base_url.trim().is_empty() {
            self.provider.map_or("", Provider::default_base_url)
        } else {
            self.base_url.trim()
        };
        base.trim_end_matches('/').to_owned()
    }
}

/// Format of a replay file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayFormat {
    Csv,
    Ndjson,
}

/// One recorded file played back into the hub.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ReplaySettings {
    /// Unique source name (metrics, `/readyz`).
    pub name: String,
    /// The recording: CSV or NDJSON (see docs/sources.md).
    pub path: PathBuf,
    /// `csv` or `ndjson`; by default taken from the file extension (`.csv`, else NDJSON).
    pub format: Option<ReplayFormat>,
    /// Playback speed: 1.0 is real time, 10.0 ten times faster.
    pub speed: f64,
    /// Start again at the end, shifting times forward so they never go backwards.
    #[serde(rename = "loop")]
    pub repeat: bool,
    /// Recorded time between the last event of one pass and the first of the next.
    #[serde(with = "humantime_serde")]
    pub loop_gap: Duration,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings {
            name: String::new(),
            path: PathBuf::new(),
            format: None,
            speed: 1.0,
            repeat: false,
            loop_gap: Duration::from_secs(1),
        }
    }
}

impl ReplaySettings {
    pub fn effective_format(&self) -> ReplayFormat {
        self.format.unwrap_or_else(|| {
            let csv = self
                .path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            if csv {
                ReplayFormat::Csv
            } else {
                ReplayFormat::Ndjson
            }
        })
    }
}

/// Longest interval, timeout or backoff a poller accepts.
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Names the gateway itself uses for its built-in sources.
const RESERVED_NAMES: [&str; 2] = ["simulator", "publish_api"];

impl SourcesSettings {
    /// Semantic checks; every problem is reported with its key path.
    pub fn validate(&self, market_symbols: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        let universe: BTreeSet<String> = market_symbols
            .iter()
            .map(|s| s.trim().to_ascii_uppercase())
            .collect();
        let mut names = BTreeSet::new();
        let mut check_name = |key: &str, name: &str, problems: &mut Vec<String>| {
            if name.trim().is_empty() {
                problems.push(format!("{key}.name: a source needs a name"));
            } else if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                problems.push(format!(
                    "{key}.name: {name:?} may only use letters, digits, '_', '-' and '.'"
                ));
            } else if RESERVED_NAMES.contains(&name) {
                problems.push(format!("{key}.name: {name:?} is reserved"));
            } else if !names.insert(name.to_owned()) {
                problems.push(format!("{key}.name: {name:?} is used by another source"));
            }
        };
        if self.connect_timeout.is_zero() {
            problems.push("sources.connect_timeout: must be greater than zero".into());
        }
        if self.read_timeout.is_zero() {
            problems.push("sources.read_timeout: must be greater than zero".into());
        }
        for (index, poller) in self.pollers.iter().enumerate() {
            let key = format!("sources.pollers[{index}]");
            check_name(&key, &poller.name, &mut problems);
            match poller.provider {
                None => problems.push(format!(
                    "{key}.provider: required, one of \"yahoo\", \"finnhub\""
                )),
                Some(Provider::Finnhub)
                    if poller.token.is_empty() && poller.token_env.trim().is_empty() =>
                {
                    problems.push(format!(
                        "{key}: finnhub needs an API token: set token_env (preferred) or token"
                    ));
                }
                Some(_) => {}
            }
            let base = poller.effective_base_url();
            if poller.provider.is_some()
                && !(base.starts_with("http://") || base.starts_with("https://"))
            {
                problems.push(format!(
                    "{key}.base_url: {:?} must start with http:// or https://",
                    poller.base_url
                ));
            }
            if poller.symbols.is_empty() {
                problems.push(format!("{key}.symbols: at least one symbol is required"));
            }
            let mut seen = BTreeSet::new();
            for symbol in &poller.symbols {
                let normalized = symbol.trim().to_ascii_uppercase();
                if !universe.contains(&normalized) {
                    problems.push(format!(
                        "{key}.symbols: {symbol:?} is not in market.symbols"
                    ));
                } else if !seen.insert(normalized) {
                    problems.push(format!("{key}.symbols: {symbol:?} is listed twice"));
                }
            }
            for (symbol, mapped) in &poller.symbol_map {
                if !poller
                    .symbols
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(symbol))
                {
                    problems.push(format!(
                        "{key}.symbol_map: {symbol:?} is not one of this poller's symbols"
                    ));
                }
                if mapped.trim().is_empty() {
                    problems.push(format!("{key}.symbol_map.{symbol}: must not be empty"));
                }
            }
            for (field, value) in [
                ("interval", poller.interval),
                ("request_timeout", poller.request_timeout),
                ("backoff_max", poller.backoff_max),
                ("retry_after_max", poller.retry_after_max),
            ] {
                if value > MAX_DELAY {
                    problems.push(format!("{key}.{field}: must be at most 24h"));
                }
            }
            if poller.interval.is_zero() {
                problems.push(format!("{key}.interval: must be greater than zero"));
            }
            if poller.jitter >= poller.interval && !poller.jitter.is_zero() {
                problems.push(format!("{key}.jitter: must be shorter than interval"));
            }
            if poller.request_timeout.is_zero() {
                problems.push(format!("{key}.request_timeout: must be greater than zero"));
            }
            if poller.backoff_initial.is_zero() {
                problems.push(format!("{key}.backoff_initial: must be greater than zero"));
            }
            if poller.backoff_max < poller.backoff_initial {
                problems.push(format!(
                    "{key}.backoff_max: must not be shorter than backoff_initial"
                ));
            }
            if poller.failures_before_down == 0 {
                problems.push(format!("{key}.failures_before_down: must be at least 1"));
            }
            if !(poller.max_jump_fraction.is_finite() && poller.max_jump_fraction > 0.0) {
                problems.push(format!(
                    "{key}.max_jump_fraction: must be a positive fraction, e.g. 0.2"
                ));
            }
        }
        for (index, replay) in self.replays.iter().enumerate() {
            let key = format!("sources.replays[{index}]");
            check_name(&key, &replay.name, &mut problems);
            if replay.path.as_os_str().is_empty() {
                problems.push(format!("{key}.path: required"));
            } else if !replay.path.is_file() {
                problems.push(format!(
                    "{key}.path: {} is not a readable file",
                    replay.path.display()
                ));
            }
            if replay.loop_gap > MAX_DELAY {
                problems.push(format!("{key}.loop_gap: must be at most 24h"));
            }
            if !(replay.speed.is_finite() && replay.speed > 0.0) {
                problems.push(format!("{key}.speed: must be a positive number"));
            }
        }
        problems
    }
}
