//! A clean restart of the real binary under a steady publish (issue 13, item 6): thousands of
//! SSE clients, half of them filtered to a symbol that is rarely published, follow the market
//! feed while a producer publishes through `POST /v1/publish`; the gateway gets SIGTERM, a
//! new one starts on the same port and data directory, and every client must resume without
//! a reset and hold every trade the publish API acknowledged (that matches its filter),
//! each exactly once.
//!
//! `TICKGATE_RESTART_CLIENTS` sets the number of clients (default 5,000: 5,000 sockets in this
//! process and 5,000 in the gateway, each under the 20,000 descriptor limit).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "restart-test-admin-token";
const DEADLINE: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("address").port()
}

/// The gateway this test started; killed if the test fails before it stopped it.
struct Gateway(Option<Child>);

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_gateway(config: &Path) -> Gateway {
    Gateway(Some(
        Command::new(env!("CARGO_BIN_EXE_tickgate"))
            .arg("--config-dir")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tickgate"),
    ))
}

async fn wait_healthy(http: &reqwest::Client, port: u16) {
    let started = Instant::now();
    loop {
        if let Ok(response) = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            && response.status().is_success()
        {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to the gateway this test started, then waits for it to exit cleanly.
async fn stop_gateway(mut gateway: Gateway) {
    let Some(mut child) = gateway.0.take() else {
        return;
    };
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let waited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(waited.success(), "clean exit: {waited}");
}

#[derive(Debug, Default)]
struct Outcome {
    trades: Vec<u64>,
    resets: usize,
    shutdown_ids: Vec<String>,
}

/// Follows `/v1/stream/market{query}` like a browser: on the end of a stream it reconnects
/// with `Last-Event-ID` set to the last id it saw, until `stop` is set and a stream ends.
async fn follow(
    http: reqwest::Client,
    port: u16,
    query: &'static str,
    opened: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut last_id: Option<String> = None;
    let url = format!("http://127.0.0.1:{port}/v1/stream/market{query}");
    loop {
        let mut request = http.get(&url);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let mut response = match request.send().await {
            Ok(response) if response.status().is_success() => response,
            _ => {
                if stop.load(Ordering::SeqCst) {
                    return outcome;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        opened.fetch_add(1, Ordering::SeqCst);
        let mut pending = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "", "");
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = Some(value);
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        event = value;
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = value;
                    }
                }
                if let Some(id) = id {
                    last_id = Some(id.to_owned());
                }
                match event {
                    "trade" => {
                        let value: Value = serde_json::from_str(data).expect("trade JSON");
                        outcome.trades.push(value["i"].as_u64().expect("trade id"));
                    }
                    "snapshot" => {
                        let value: Value = serde_json::from_str(data).expect("snapshot JSON");
                        if value["reset"] == true {
                            outcome.resets += 1;
                        }
                    }
                    "status" if data.contains("\"shutdown\"") => {
                        outcome.shutdown_ids.push(id.unwrap_or("(none)").to_owned());
                    }
                    _ => {}
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return outcome;
        }
    }
}

async fn wait_for(counter: &AtomicUsize, at_least: usize, what: &str) {
    let started = Instant::now();
    while counter.load(Ordering::SeqCst) < at_least {
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: {} of {at_least}",
            counter.load(Ordering::SeqCst)
        );
        eprintln!("{what}: {} of {at_least}", counter.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_under_a_steady_publish_resumes_every_client_without_a_reset() {
    let clients: usize = std::env::var("TICKGATE_RESTART_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("restart.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\nshutdown_grace = \"10s\"\n\
             [simulator]\nenabled = false\n[publish]\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             [store]\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write config");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let gateway = start_gateway(&config);
    wait_healthy(&http, port).await;

    let opened = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut followers = Vec::with_capacity(clients);
    for n in 0..clients {
        // Half follow everything, half only MSFT, which is one trade in ten.
        let query = if n.is_multiple_of(2) {
            "?symbols=*"
        } else {
            "?symbols=MSFT"
        };
        followers.push((
            query,
            tokio::spawn(follow(
                http.clone(),
                port,
                query,
                Arc::clone(&opened),
                Arc::clone(&stop),
            )),
        ));
    }
    wait_for(&opened, clients, "first connections").await;

    // A steady producer: ten trades a second, every tenth for MSFT, until told to stop.
    let publishing = Arc::new(AtomicBool::new(true));
    // Acknowledged so far: the test paces itself on this, not on the clock, so a slow machine
    // still publishes enough on each side of the restart.
    let acked = Arc::new(AtomicUsize::new(0));
    let producer = {
        let http = http.clone();
        let publishing = Arc::clone(&publishing);
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut acknowledged: Vec<(u64, &'static str)> = Vec::new();
            let mut id = 0u64;
            while publishing.load(Ordering::SeqCst) {
                id += 1;
                let symbol = if id.is_multiple_of(10) {
                    "MSFT"
                } else {
                    "AAPL"
                };
                let body = json!({"T":"t","S":symbol,"i":id,"x":"T","p":100.0,"s":1,
                                  "t":chrono::Utc::now().to_rfc3339(),"c":["@"]});
                let reply = http
                    .post(format!("http://127.0.0.1:{port}/v1/publish"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if let Ok(reply) = reply
                    && reply.status().as_u16() == 200
                    && let Ok(reply) = reply.json::<Value>().await
                    && reply["accepted"] == 1
                {
                    acknowledged.push((id, symbol));
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acknowledged
        })
    };
    wait_for(&acked, 20, "acknowledged before the restart").await;
    stop_gateway(gateway).await;
    let gateway = start_gateway(&config);
    wait_healthy(&http, port).await;
    wait_for(&opened, 2 * clients, "reconnections").await;
    let after_restart = acked.load(Ordering::SeqCst) + 20;
    wait_for(&acked, after_restart, "acknowledged after the restart").await;
    publishing.store(false, Ordering::SeqCst);
    let acknowledged = producer.await.expect("producer");
    stop.store(true, Ordering::SeqCst);
    // The final stop ends every stream after everything queued before it.
    stop_gateway(gateway).await;

    let all: Vec<u64> = acknowledged.iter().map(|(id, _)| *id).collect();
    let msft: Vec<u64> = acknowledged
        .iter()
        .filter(|(_, symbol)| *symbol == "MSFT")
        .map(|(id, _)| *id)
        .collect();
    assert!(
        msft.len() >= 2,
        "the producer got acknowledgements: {acknowledged:?}"
    );
    let mut failures = Vec::new();
    for (query, follower) in followers {
        let outcome = follower.await.expect("follower");
        let expected = if query.ends_with('*') { &all } else { &msft };
        let received: HashSet<u64> = outcome.trades.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|id| !received.contains(id))
            .copied()
            .collect();
        if outcome.resets > 0
            || !missing.is_empty()
            || received.len() != outcome.trades.len()
            || outcome.shutdown_ids.iter().any(|id| id == "(none)")
        {
            failures.push(format!(
                "{query:?}: resets {}, missing {missing:?}, duplicates {}, shutdown ids {:?}",
                outcome.resets,
                outcome.trades.len() - received.len(),
                outcome.shutdown_ids
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {clients} clients failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
