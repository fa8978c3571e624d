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
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis_url: String::new(),
            node_id: String::new(),
            lease_ttl: Duration::from_secs(5),
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
            .finish()
    }
}

impl ClusterSettings {
    /// Whether this gateway runs as one node of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
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
        }
        problems
    }
}
