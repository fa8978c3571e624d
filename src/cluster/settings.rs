//! `[cluster]`: whether this gateway is one node of a cluster, and how it takes part.

use std::time::Duration;

use serde::Deserialize;

/// Multi-node operation on Redis (`[cluster]`, see `docs/deployment.md`). An empty
/// `redis_url` is a single node, exactly as without this section.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct ClusterSettings {
    /// `redis://[:password@]host:port[/db]`; empty: single node. Never logged (it may hold a
    /// password).
    pub redis_url: String,
    /// This node's name in leases and logs; empty: derived from the host name and the pid.
    pub node_id: String,
    /// How long a source's lease lasts without renewal: the bound on how long a dead node's
    /// sources stay silent before another node takes them over. Renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long a node hears nothing from the exchange before it tells its trading sessions
    /// `trading_unavailable`; unset: `min(1s, lease_ttl / 2)` (see
    /// [`ClusterSettings::exchange_silence`]).
    #[serde(with = "humantime_serde")]
    pub exchange_silence: Option<Duration>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis_url: String::new(),
            node_id: String::new(),
            lease_ttl: Duration::from_secs(5),
            exchange_silence: None,
        }
    }
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field(
                "redis_url",
                &if self.redis_url.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field("node_id", &self.node_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("exchange_silence", &self.exchange_silence)
            .finish()
    }
}

impl ClusterSettings {
    /// Whether this gateway runs as one node of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    /// How long a node hears nothing from the exchange before telling its trading sessions
    /// that trading is unavailable: as set, or `min(1s, lease_ttl / 2)`, which is four
    /// heartbeats and always shorter than a failover after a crash (the dead exchange's lease
    /// runs out at least two thirds of `lease_ttl` after its last renewal).
    pub fn exchange_silence(&self) -> Duration {
        self.exchange_silence
            .unwrap_or_else(|| (self.lease_ttl / 2).min(Duration::from_secs(1)))
    }

    /// Semantic checks of `[cluster]` (only when it is enabled).
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled() {
            return problems;
        }
        if let Err(error) = redis::Client::open(self.redis_url.as_str()) {
            // The URL itself is not repeated: it may hold a password.
            problems.push(format!(
                "cluster.redis_url: not a Redis URL ({:?})",
                error.kind()
            ));
        }
        if self.node_id.len() > 64
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problems.push(
                "cluster.node_id: at most 64 letters, digits, '-', '_' or '.' (empty: derived)"
                    .into(),
            );
        }
        if self.lease_ttl < Duration::from_millis(300) || self.lease_ttl > Duration::from_secs(3600)
        {
            problems.push("cluster.lease_ttl: must be between 300ms and 1h".into());
        } else if let Some(silence) = self.exchange_silence {
            let shortest = exchange_heartbeat(self.lease_ttl) * 3;
            let longest = self.lease_ttl + renew_interval(self.lease_ttl);
            if silence < shortest || silence > longest {
                problems.push(format!(
                    "cluster.exchange_silence: must be between three exchange heartbeats ({}ms) and lease_ttl plus one renewal ({}ms) with lease_ttl = {}ms",
                    shortest.as_millis(),
                    longest.as_millis(),
                    self.lease_ttl.as_millis(),
                ));
            }
        }
        problems
    }
}

/// How often leases live `lease_ttl` long are renewed: a third of their life, so one lost
/// renewal still leaves time for another.
pub(crate) fn renew_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).max(Duration::from_millis(50))
}

/// How often the exchange says it is alive when leases live `lease_ttl`: every 250 ms, or
/// every eighth of the lease when it is shorter than 2 s. Every node derives it from the same
/// `lease_ttl`, so it never needs to be sent.
pub(crate) fn exchange_heartbeat(lease_ttl: Duration) -> Duration {
    (lease_ttl / 8).min(Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn load(env: &[(&str, &str)]) -> Result<Settings, crate::settings::SettingsError> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("default.toml"), "").expect("write");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(dir.path(), None, &env)
    }

    #[test]
    fn the_cluster_section_comes_from_the_environment_and_is_off_by_default() {
        let single = load(&[]).expect("valid");
        assert!(!single.cluster.enabled());
        assert_eq!(single.cluster.lease_ttl, Duration::from_secs(5));
        let node = load(&[
            (
                "TICKGATE__CLUSTER__REDIS_URL",
                "redis://:secret@127.0.0.1:6390/2",
            ),
            ("TICKGATE__CLUSTER__NODE_ID", "edge-1"),
            ("TICKGATE__CLUSTER__LEASE_TTL", "2s"),
            ("TICKGATE__STORE__BACKEND", "postgres"),
            (
                "TICKGATE__STORE__POSTGRES_URL",
                "postgres://tickgate:secret@127.0.0.1:5432/tickgate",
            ),
        ])
        .expect("valid");
        assert!(node.cluster.enabled());
        assert_eq!(node.cluster.node_id, "edge-1");
        assert_eq!(node.cluster.lease_ttl, Duration::from_secs(2));
        let printed = format!("{:?}", node.cluster);
        assert!(
            !printed.contains("secret"),
            "the URL is never printed: {printed}"
        );
    }

    #[test]
    fn a_bad_url_node_id_and_lease_ttl_are_all_reported_without_the_url() {
        let error = load(&[
            ("TICKGATE__CLUSTER__REDIS_URL", "http://:secret@example/"),
            ("TICKGATE__CLUSTER__NODE_ID", "a:b"),
            ("TICKGATE__CLUSTER__LEASE_TTL", "10ms"),
        ])
        .expect_err("invalid");
        let text = error.to_string();
        assert!(text.contains("cluster.redis_url"), "{text}");
        assert!(text.contains("cluster.node_id"), "{text}");
        assert!(text.contains("cluster.lease_ttl"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn the_exchange_silence_defaults_to_four_heartbeats_and_must_fit_the_lease() {
        let default = load(&[]).expect("valid");
        assert_eq!(default.cluster.exchange_silence(), Duration::from_secs(1));
        assert_eq!(
            exchange_heartbeat(default.cluster.lease_ttl),
            Duration::from_millis(250)
        );
        let short = load(&[
            ("TICKGATE__CLUSTER__REDIS_URL", "redis://127.0.0.1:6390/"),
            ("TICKGATE__STORE__ENABLED", "false"),
            ("TICKGATE__CLUSTER__LEASE_TTL", "1s"),
        ])
        .expect("valid");
        assert_eq!(short.cluster.exchange_silence(), Duration::from_millis(500));
        assert_eq!(
            exchange_heartbeat(short.cluster.lease_ttl),
            Duration::from_millis(125)
        );
        let node = |silence: &str| {
            load(&[
                ("TICKGATE__CLUSTER__REDIS_URL", "redis://127.0.0.1:6390/"),
                ("TICKGATE__STORE__ENABLED", "false"),
                ("TICKGATE__CLUSTER__EXCHANGE_SILENCE", silence),
            ])
        };
        let set = node("2s").expect("valid");
        assert_eq!(set.cluster.exchange_silence(), Duration::from_secs(2));
        // Three heartbeats (750 ms) at least: fewer would flap on a busy machine.
        let error = node("700ms").expect_err("too short").to_string();
        assert!(error.contains("cluster.exchange_silence"), "{error}");
        assert!(error.contains("750ms"), "{error}");
        // At most the lease's life and a renewal (5 s + 1.666 s).
        node("6600ms").expect("valid");
        let error = node("7s").expect_err("too long").to_string();
        assert!(error.contains("cluster.exchange_silence"), "{error}");
    }

    #[test]
    fn cluster_mode_with_a_sqlite_store_is_refused_naming_the_backend_setting() {
        let error = load(&[("TICKGATE__CLUSTER__REDIS_URL", "redis://127.0.0.1:6390/")])
            .expect_err("a SQLite file cannot be shared by the nodes");
        let text = error.to_string();
        assert!(text.contains("store.backend"), "{text}");
        assert!(text.contains("postgres"), "{text}");
        // Without a store each node keeps its in-memory exchange, as before.
        load(&[
            ("TICKGATE__CLUSTER__REDIS_URL", "redis://127.0.0.1:6390/"),
            ("TICKGATE__STORE__ENABLED", "false"),
        ])
        .expect("no durable trading, no shared store needed");
    }

    #[test]
    fn the_postgres_backend_needs_a_valid_url_and_never_prints_it() {
        let missing = load(&[("TICKGATE__STORE__BACKEND", "postgres")]).expect_err("no URL");
        assert!(
            missing.to_string().contains("store.postgres_url"),
            "{missing}"
        );
        let bad = load(&[
            ("TICKGATE__STORE__BACKEND", "postgres"),
            (
                "TICKGATE__STORE__POSTGRES_URL",
                "postgres://u:secret@host:notaport/db",
            ),
        ])
        .expect_err("bad URL");
        let text = bad.to_string();
        assert!(text.contains("store.postgres_url"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        let unused = load(&[(
            "TICKGATE__STORE__POSTGRES_URL",
            "postgres://u:secret@127.0.0.1/db",
        )])
        .expect_err("a URL the sqlite backend would ignore");
        assert!(unused.to_string().contains("store.backend"), "{unused}");
        let unknown = load(&[("TICKGATE__STORE__BACKEND", "mysql")]).expect_err("unknown");
        assert!(unknown.to_string().contains("store.backend"), "{unknown}");
        let good = load(&[
            ("TICKGATE__STORE__BACKEND", "postgres"),
            (
                "TICKGATE__STORE__POSTGRES_URL",
                "postgres://tickgate:secret@127.0.0.1:5432/tickgate",
            ),
        ])
        .expect("valid");
        assert_eq!(good.store.backend, crate::store::StoreBackend::Postgres);
        let printed = format!("{:?}", good.store);
        assert!(!printed.contains("secret"), "{printed}");
    }
}
