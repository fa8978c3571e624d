//! Gateway processes for cluster tests: the real `tickgate` binary on a free loopback port,
//! joined to a test's `redis-server`, stopped (or paused) by its PID.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_support::{RedisServer, free_port};

pub const LEASE_TTL: Duration = Duration::from_secs(1);

pub struct Node {
    pub id: String,
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node with the simulator on (it runs only while this node holds its lease),
    /// no store, and `extra` settings as `TICKGATE__…` variables.
    pub fn spawn(redis: &RedisServer, id: &str, extra: &[(&str, &str)]) -> Node {
        Node::spawn_with_config(redis, id, extra, "")
    }

    /// [`Node::spawn`] with `toml` as the `--config` file (for what variables cannot say, such
    /// as the simulator's initial prices by symbol).
    pub fn spawn_with_config(
        redis: &RedisServer,
        id: &str,
        extra: &[(&str, &str)],
        toml: &str,
    ) -> Node {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config_file = dir.path().join("node.toml");
        std::fs::write(&config_file, toml).expect("write the node's configuration");
        let port = free_port();
        let log = dir.path().join("tickgate.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tickgate"));
        command
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--config")
            .arg(&config_file)
            .env_remove("RUST_LOG")
            .env("TICKGATE__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("TICKGATE__SERVER__WORKERS", "1")
            .env("TICKGATE__SERVER__SHUTDOWN_GRACE", "1s")
            .env("TICKGATE__STORE__ENABLED", "false")
            .env("TICKGATE__SIMULATOR__ENABLED", "true")
            .env("TICKGATE__SIMULATOR__TRADES_PER_SECOND", "10")
            .env("TICKGATE__HUB__SSE_RETRY", "200ms")
            .env("TICKGATE__CLUSTER__REDIS_URL", redis.url())
            .env("TICKGATE__CLUSTER__NODE_ID", id)
            .env(
                "TICKGATE__CLUSTER__LEASE_TTL",
                format!("{}ms", LEASE_TTL.as_millis()),
            )
            .env("TICKGATE__LOG__FILTER", "info,tickgate::http=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("the tickgate binary starts");
        Node {
            id: id.into(),
            port,
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path`: status and body, `None` when the node does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not ready; log:\n{}",
                self.id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one metric line (name with labels), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        text.lines().find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
    }

    pub async fn holds(&self, source: &str) -> bool {
        self.metric(&format!(
            "tickgate_cluster_lease_held{{source=\"{source}\"}}"
        ))
        .await
            == Some(1.0)
    }

    /// SIGKILL: the process dies without releasing anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to end by itself (after SIGTERM); its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.pid());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused process ignores SIGKILL until continued on some kernels' accounting;
            // continue it first so it really goes.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill9();
    }
}

/// Waits until one of `nodes` holds `source`'s lease; returns its index.
pub async fn holder(nodes: &[&Node], source: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for (index, node) in nodes.iter().enumerate() {
            if node.holds(source).await {
                return index;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node took the {source} lease within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Parses an SSE id `<epoch>-<seq>`.
pub fn cursor(id: &str) -> (u64, u64) {
    let (epoch, seq) = id.split_once('-').expect("an id is <epoch>-<seq>");
    (
        epoch.parse().expect("numeric epoch"),
        seq.parse().expect("numeric seq"),
    )
}
