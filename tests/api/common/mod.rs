//! Shared helpers for integration tests: start the real gateway on port 0, and read SSE over
//! a real HTTP connection.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use tickgate::settings::Settings;
use tickgate::startup::Application;
use tickgate::state::AppState;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub state: AppState,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// What a cluster app runs on (its redis-server, its database, its data directory),
    /// kept until the app is dropped; `None` for a single node.
    pub backing: Option<Box<dyn std::any::Any + Send>>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }

    /// A clean restart: stops the server and starts it again with the same settings (so the
    /// same store) and, on a cluster node, the same `redis-server` and database.
    pub async fn restart(mut self) -> TestApp {
        let backing = self.backing.take();
        let settings = (*self.state.settings).clone();
        self.stop().await.expect("clean stop");
        let mut app = spawn_app_with(settings).await;
        if backing.is_some() {
            app.backing = backing;
            wait_until_ready(&app).await;
        }
        app
    }

    /// On a cluster node, every row of every table of its database as text (`None` on a
    /// single node): for checks that something is not stored.
    pub fn database_text(&self) -> Option<String> {
        let (_, database, _) = self.backing.as_ref()?.downcast_ref::<(
            crate::redis_support::RedisServer,
            crate::postgres_support::TestDatabase,
            tempfile::TempDir,
        )>()?;
        let tables = database
            .psql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'");
        let mut text = String::new();
        for table in tables.lines().map(str::trim).filter(|t| !t.is_empty()) {
            text.push_str(&database.psql(&format!("SELECT t::text FROM \"{table}\" t")));
        }
        Some(text)
    }
}

/// Settings for tests: the repository's defaults, port 0, the simulator off unless a test
/// turns it on, short heartbeats and grace periods.
/// A news item, tagged with `symbols`, whose summary is `summary_len` bytes (large ones fill
/// socket buffers quickly; news is never conflated).
pub fn news(id: u64, symbols: &[&str], summary_len: usize) -> tickgate::market::MarketEvent {
    let at = chrono::DateTime::from_timestamp(1_800_000_000 + id as i64, 0).expect("valid time");
    tickgate::market::MarketEvent::News(tickgate::market::News {
        id,
        headline: format!("headline {id}"),
        summary: "x".repeat(summary_len),
        author: "desk".into(),
        source: "test".into(),
        url: String::new(),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        created_at: at,
        updated_at: at,
    })
}

pub fn test_settings() -> Settings {
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut settings = Settings::load_from(&config_dir, None, &[]).expect("default settings load");
    settings.server.bind = "127.0.0.1:0".parse().expect("address");
    settings.server.workers = 2;
    settings.server.shutdown_grace = Duration::from_secs(2);
    settings.simulator.enabled = false;
    // Tests that exercise storage turn it on with their own temporary data directory.
    settings.store.enabled = false;
    settings.server.web_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    settings
}

/// Starts the real gateway on a free port with the given settings.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let app = Application::build_with_listener(settings, listener).expect("build app");
    let port = app.port();
    let state = app.state().clone();
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        state,
        shutdown,
        task,
        backing: None,
    }
}

/// Where a test's gateway keeps trading: see [`spawn_app_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One node, the exchange in process (as `settings` say; tests leave the store off).
    SingleNode,
    /// One node of a cluster (issue 16): a fresh `redis-server`, a fresh database on the
    /// shared PostgreSQL test server, `store.backend = "postgres"`; the exchange runs under
    /// its lease and every order crosses Redis as a command.
    ClusterPostgres,
}

/// Starts the gateway with `settings` on `backend`.
pub async fn spawn_app_on(backend: Backend, mut settings: Settings) -> TestApp {
    if backend == Backend::SingleNode {
        return spawn_app_with(settings).await;
    }
    let redis = crate::redis_support::RedisServer::start();
    let database = crate::postgres_support::PostgresServer::shared().database();
    let data = tempfile::tempdir().expect("temporary directory");
    settings.cluster.redis_url = redis.url();
    settings.cluster.node_id = "test-node".into();
    settings.store.enabled = true;
    settings.store.backend = tickgate::store::StoreBackend::Postgres;
    settings.store.postgres_url = database.url();
    settings.store.data_dir = data.path().to_path_buf();
    let mut app = spawn_app_with(settings).await;
    assert!(
        app.state.hub.follows_shared_log(),
        "the app runs as a cluster node"
    );
    app.backing = Some(Box::new((redis, database, data)));
    wait_until_ready(&app).await;
    app
}

/// Readiness does not wait for the exchange (a node serves market data without it), but a
/// test that publishes market data at once wants the exchange already following the market:
/// one read through the command stream is answered only by a running exchange.
async fn wait_for_exchange(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probe = app
            .state
            .trading
            .orders("exchange-probe", tickgate::trading::api::OrderQuery::Open)
            .await;
        match probe {
            Ok(_) => return,
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "no exchange answered: {error:?}"
            ),
        }
    }
}

/// As a load balancer would: clients arrive once the node is ready, that is connected to
/// Redis and caught up with the shared log (before that, a client's stream may be reset when
/// the node's log first synchronises); then once its exchange answers.
async fn wait_until_ready(app: &TestApp) {
    wait_until_serving(app).await;
    wait_for_exchange(app).await;
}

async fn wait_until_serving(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = reqwest::get(app.url("/readyz"))
            .await
            .map(|response| response.status().as_u16() == 200)
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster node is not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs each named test body (`async fn name(backend: Backend)`) twice: as a module `name`
/// with the tests `single_node` and `cluster_postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn single_node() {
                    super::$name($crate::common::Backend::SingleNode).await
                }

                #[tokio::test]
                async fn cluster_postgres() {
                    super::$name($crate::common::Backend::ClusterPostgres).await
                }
            }
        )*
    };
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings()).await
}

/// One parsed Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
    pub retry: Option<u64>,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// A minimal SSE client over a raw TCP connection (HTTP/1.1, chunked transfer decoded).
pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub comments: Vec<String>,
    /// The last `id:` seen in any block, as a browser's EventSource keeps it (an id-only
    /// block, which dispatches no event, moves it too).
    pub last_id: Option<String>,
    pending: String,
    chunk_left: usize,
    chunked: bool,
}

impl SseClient {
    /// Sends `GET path` with extra headers and reads the response head.
    pub async fn connect(port: u16, path: &str, extra_headers: &[(&str, &str)]) -> SseClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        );
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.expect("status");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        SseClient {
            reader,
            status,
            headers,
            comments: Vec::new(),
            last_id: None,
            pending: String::new(),
            chunk_left: 0,
            chunked,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads the whole body of a non-streaming response (e.g. a 4xx error).
    pub async fn read_body(&mut self) -> String {
        let mut body = String::new();
        while let Some(text) = self.read_some().await {
            body.push_str(&text);
        }
        body
    }

    /// Reads more body text; `None` at the end of the body.
    async fn read_some(&mut self) -> Option<String> {
        use tokio::io::AsyncReadExt;
        if !self.chunked {
            let mut buf = vec![0u8; 8192];
            let n = self.reader.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if self.chunk_left == 0 {
            let mut size_line = String::new();
            loop {
                size_line.clear();
                let n = self.reader.read_line(&mut size_line).await.ok()?;
                if n == 0 {
                    return None;
                }
                if !size_line.trim().is_empty() {
                    break;
                }
            }
            let size = usize::from_str_radix(size_line.trim(), 16).ok()?;
            if size == 0 {
                return None;
            }
            self.chunk_left = size;
        }
        let mut buf = vec![0u8; self.chunk_left];
        let n = self.reader.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        self.chunk_left -= n;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The next event (comments are collected in `comments`); `None` when the stream ends.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut has_data = false;
                let mut has_retry = false;
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => {
                                event.id = Some(value.to_owned());
                                self.last_id = Some(value.to_owned());
                            }
                            "event" => event.event = value.to_owned(),
                            "data" => {
                                if has_data {
                                    event.data.push('\n');
                                }
                                event.data.push_str(value);
                                has_data = true;
                            }
                            "retry" => {
                                event.retry = value.parse().ok();
                                has_retry = true;
                            }
                            _ => {}
                        }
                    }
                }
                if has_data || has_retry {
                    if event.event.is_empty() && has_data {
                        event.event = "message".into();
                    }
                    return Some(event);
                }
                continue;
            }
            let more = self.read_some().await?;
            self.pending.push_str(&more);
        }
    }

    /// Like `next_event` with a deadline; panics on timeout.
    pub async fn expect_event(&mut self, within: Duration) -> SseEvent {
        tokio::time::timeout(within, self.next_event())
            .await
            .expect("an event before the deadline")
            .expect("stream still open")
    }
}

/// Publishes JSON through the publish API with the default admin token.
pub async fn publish(app: &TestApp, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(app.url("/v1/publish"))
        .bearer_auth(&app.state.settings.publish.admin_token)
        .json(&body)
        .send()
        .await
        .expect("publish request");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Reads a started `tickgate`'s log until its start-up line `tickgate listening on <url>`
/// and returns the URL and the log so far; the rest of the log is drained in the background
/// so the gateway never blocks on a full pipe. Panics with the log after `within`.
pub fn url_from_start_line(
    stderr: std::process::ChildStderr,
    within: Duration,
) -> (String, String) {
    use std::io::BufRead;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                // Nobody listens any more; keep draining.
                continue;
            }
        }
    });
    let deadline = std::time::Instant::now() + within;
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines_rx.recv_timeout(left) else {
            panic!("no start-up line with the URL within {within:?}; log:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        if let Some(at) = line.find("tickgate listening on http://") {
            let rest = &line[at + "tickgate listening on ".len()..];
            if let Some(url) = rest.split_whitespace().next() {
                return (url.to_owned(), log);
            }
        }
    }
}
