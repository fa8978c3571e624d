//! The order mode: N users, each on its own WebSocket session, each sending one order at a
//! time and timing it to its `order_ack`. Market orders alternate buy and sell so positions
//! stay flat; limit orders rest far below the market and are cancelled after their
//! acknowledgement (the cancel is not timed), so no user reaches the open-order limit.
//!
//! Two ways to send:
//! - *Closed loop* (the default): each user sends its next order the moment the previous ack
//!   arrives. With N users that is the server's saturation: it measures sustained orders/s,
//!   and its latency is the queue N orders make (Little's law: N / orders per second).
//! - *Paced* (`rate_per_user`): each user sends on a fixed schedule, order k at
//!   `start + phase + k / rate` (the users' phases spread over one interval). When an ack
//!   comes late, the next order (sent as soon as that ack is in, still one at a time per
//!   session) is timed from its **scheduled** time, so it carries the wait the server caused
//!   (no coordinated omission). An order whose time had not come yet is timed from when it
//!   went out: the user sleeps until its slot, and tokio's timer wakes it up to a millisecond
//!   after the slot (its wheel has millisecond ticks), a delay of the load generator's own
//!   that timing from the slot would add to every such order. Both figures are kept: the
//!   summary's `schedule_*` percentiles time every order from its slot (the rule before
//!   2026-12-06), and `timer_lag_*` is how late the timer woke the users. Orders whose time
//!   came but that could not be sent before the run ended are counted as `unsent`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{Url, parse_head, request};
use crate::publish::read_response;
use crate::ws::{FrameDecoder, OPCODE_PONG, OPCODE_TEXT, WsEvent, client_frame};

/// Market orders that fill at once, or limit orders that rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderType {
    Market,
    Limit,
}

/// What every user connects to and how it orders.
#[derive(Debug, Clone)]
pub(crate) struct OrderPlan {
    /// The gateways' stream URLs with their addresses: user `i` logs in to and trades on
    /// `targets[i % len]` (several cluster nodes, or one gateway).
    pub(crate) targets: Vec<(Url, SocketAddr)>,
    pub(crate) user_prefix: String,
    pub(crate) password: String,
    pub(crate) symbol: String,
    pub(crate) order_type: OrderType,
    pub(crate) duration: Duration,
    /// Paced mode: orders per second per user (`None`: closed loop).
    pub(crate) rate_per_user: Option<f64>,
    /// How many users run the plan (their paced schedules are spread over one interval).
    pub(crate) users: usize,
}

impl OrderPlan {
    /// The gateway user `index` uses.
    fn target(&self, index: usize) -> (&Url, SocketAddr) {
        let (url, address) = &self.targets[index % self.targets.len()];
        (url, *address)
    }
}

/// What one user did.
#[derive(Debug, Default)]
pub(crate) struct UserResult {
    pub(crate) acked: u64,
    /// Orders answered with an error instead of an `order_ack`.
    pub(crate) refused: u64,
    /// Each acknowledged order's order -> ack time: from its slot when it went out late,
    /// from its send when it waited for its slot (closed loop: from its send).
    pub(crate) latencies_us: Vec<u32>,
    /// Paced mode: each acknowledged order timed from its slot, whatever delayed the send.
    pub(crate) from_schedule_us: Vec<u32>,
    /// Paced mode: for each order that waited for its slot, how long after the slot the
    /// timer woke the user (the load generator's own delay).
    pub(crate) timer_lag_us: Vec<u32>,
    /// Paced mode: orders sent more than a millisecond after their scheduled time (the
    /// previous order's ack came after this one was due).
    pub(crate) late: u64,
    /// Paced mode: orders whose scheduled time fell within the run but that were never sent
    /// (the previous ack had not come when the run ended).
    pub(crate) unsent: u64,
    pub(crate) error: Option<String>,
    /// How many acknowledged orders had each status (`filled`, `new`, ...).
    pub(crate) statuses: BTreeMap<String, u64>,
}

/// All users together.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrderSummary {
    pub(crate) acked: u64,
    pub(crate) refused: u64,
    pub(crate) late: u64,
    pub(crate) unsent: u64,
    pub(crate) failed_users: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// Paced mode: the percentiles with every order timed from its slot.
    pub(crate) schedule_p50_ms: f64,
    pub(crate) schedule_p99_ms: f64,
    /// Paced mode: how late the timer woke users that waited for their slot.
    pub(crate) timer_lag_p50_ms: f64,
    pub(crate) timer_lag_p99_ms: f64,
    pub(crate) statuses: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant histogram bounds are valid")
}

/// The `q` quantile of `histogram` in milliseconds (0 when it is empty).
fn quantile_ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(q) as f64 / 1000.0
}

fn micros(elapsed: Duration) -> u32 {
    elapsed.as_micros().min(u128::from(u32::MAX)) as u32
}

pub(crate) fn summarize(results: &[UserResult]) -> OrderSummary {
    let mut histogram = histogram();
    let mut from_schedule = self::histogram();
    let mut timer_lag = self::histogram();
    let mut summary = OrderSummary {
        acked: 0,
        refused: 0,
        late: 0,
        unsent: 0,
        failed_users: 0,
        first_error: None,
        p50_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        max_ms: 0.0,
        schedule_p50_ms: 0.0,
        schedule_p99_ms: 0.0,
        timer_lag_p50_ms: 0.0,
        timer_lag_p99_ms: 0.0,
        statuses: BTreeMap::new(),
    };
    for result in results {
        summary.acked += result.acked;
        for (status, count) in &result.statuses {
            *summary.statuses.entry(status.clone()).or_default() += count;
        }
        summary.refused += result.refused;
        summary.late += result.late;
        summary.unsent += result.unsent;
        if let Some(error) = &result.error {
            summary.failed_users += 1;
            summary.first_error.get_or_insert_with(|| error.clone());
        }
        for (values, into) in [
            (&result.latencies_us, &mut histogram),
            (&result.from_schedule_us, &mut from_schedule),
            (&result.timer_lag_us, &mut timer_lag),
        ] {
            for &value in values {
                into.saturating_record(u64::from(value.max(1)));
            }
        }
    }
    summary.p50_ms = quantile_ms(&histogram, 0.50);
    summary.p99_ms = quantile_ms(&histogram, 0.99);
    summary.p999_ms = quantile_ms(&histogram, 0.999);
    summary.max_ms = quantile_ms(&histogram, 1.0);
    summary.schedule_p50_ms = quantile_ms(&from_schedule, 0.50);
    summary.schedule_p99_ms = quantile_ms(&from_schedule, 0.99);
    summary.timer_lag_p50_ms = quantile_ms(&timer_lag, 0.50);
    summary.timer_lag_p99_ms = quantile_ms(&timer_lag, 0.99);
    summary
}

/// Logs user `index` in (`<prefix><index>`) and returns its access token.
pub(crate) async fn login(plan: &OrderPlan, index: usize) -> Result<String, String> {
    let (stream_url, address) = plan.target(index);
    let url = Url {
        host: stream_url.host.clone(),
        port: stream_url.port,
        path: "/v1/auth/token".into(),
    };
    let body = serde_json::json!({
        "username": format!("{}{index}", plan.user_prefix),
        "password": plan.password,
    })
    .to_string();
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("login connect failed: {e}"))?;
    let raw = request(
        "POST",
        &url,
        &[("Connection", "close")],
        Some(("application/json", body.as_bytes())),
    );
    stream
        .write_all(&raw)
        .await
        .map_err(|e| format!("login write failed: {e}"))?;
    let (status, body) = read_response(&mut stream).await?;
    if status != 200 {
        return Err(format!(
            "login answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("login reply is not JSON: {e}"))?;
    value["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "login reply has no access_token".into())
}

/// One user's session: opens the WebSocket, waits for `start`, then orders until the plan's
/// duration has passed.
pub(crate) async fn run_user(
    plan: std::sync::Arc<OrderPlan>,
    index: usize,
    token: String,
    start: std::sync::Arc<tokio::sync::Barrier>,
) -> UserResult {
    let mut result = UserResult::default();
    let mut session = match Session::open(&plan, index, &token).await {
        Ok(session) => session,
        Err(error) => {
            result.error = Some(error);
            start.wait().await;
            return result;
        }
    };
    start.wait().await;
    let started = Instant::now();
    let end = started + plan.duration;
    let schedule = plan
        .rate_per_user
        .map(|rate| Schedule::new(rate, index, plan.users));
    let mut request_id: u64 = 0;
    let mut sent_orders: u64 = 0;
    loop {
        // The order's slot (paced) and the time it counts from: the slot when it goes out
        // late, the send when it waited for the slot or runs in a closed loop.
        let (slot, counted_from) = match &schedule {
            Some(schedule) => {
                let due = schedule.due(started, sent_orders);
                if due >= end {
                    break;
                }
                let now = Instant::now();
                if now >= end {
                    // Due within the run, but the previous ack came too late to send it.
                    result.unsent += schedule.due_before(started, end) - sent_orders;
                    break;
                }
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    let woke = Instant::now();
                    result
                        .timer_lag_us
                        .push(micros(woke.saturating_duration_since(due)));
                    (Some(due), woke)
                } else {
                    if now - due > Duration::from_millis(1) {
                        result.late += 1;
                    }
                    (Some(due), due)
                }
            }
            None => {
                if started.elapsed() >= plan.duration {
                    break;
                }
                (None, Instant::now())
            }
        };
        sent_orders += 1;
        request_id += 1;
        let buy = request_id % 2 == 1;
        let data = match plan.order_type {
            OrderType::Market => serde_json::json!({
                "symbol": plan.symbol, "qty": "1", "side": if buy { "buy" } else { "sell" },
                "type": "market", "time_in_force": "day",
            }),
            OrderType::Limit => serde_json::json!({
                "symbol": plan.symbol, "qty": "1", "side": "buy",
                "type": "limit", "limit_price": "1.00", "time_in_force": "day",
            }),
        };
        let message = serde_json::json!({"action": "order", "id": request_id, "data": data});
        match session.call(&message.to_string(), request_id).await {
            Ok(Reply::Ack(order_id, status)) => {
                result.acked += 1;
                *result.statuses.entry(status).or_default() += 1;
                let acked_at = Instant::now();
                result
                    .latencies_us
                    .push(micros(acked_at.saturating_duration_since(counted_from)));
                if let Some(slot) = slot {
                    result
                        .from_schedule_us
                        .push(micros(acked_at.saturating_duration_since(slot)));
                }
                if plan.order_type == OrderType::Limit {
                    request_id += 1;
                    let cancel = serde_json::json!({
                        "action": "cancel", "id": request_id, "order_id": order_id,
                    });
                    if let Err(error) = session.call(&cancel.to_string(), request_id).await {
                        result.error = Some(error);
                        break;
                    }
                }
            }
            Ok(Reply::Refused(text)) => {
                result.refused += 1;
                if result.error.is_none() && result.refused == 1 {
                    eprintln!("user {index}: order refused: {text}");
                }
            }
            Err(error) => {
                result.error = Some(error);
                break;
            }
        }
    }
    result
}

/// A paced user's send times: one order every `interval`, the users' first orders spread
/// evenly over the first interval so that they do not all arrive at once.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    interval: Duration,
    phase: Duration,
}

impl Schedule {
    fn new(rate_per_user: f64, index: usize, users: usize) -> Schedule {
        let interval = Duration::from_secs_f64(1.0 / rate_per_user);
        let phase = interval.mul_f64((index % users.max(1)) as f64 / users.max(1) as f64);
        Schedule { interval, phase }
    }

    /// When order `k` (from 0) is due.
    fn due(&self, started: Instant, k: u64) -> Instant {
        started + self.phase + self.interval.mul_f64(k as f64)
    }

    /// How many orders are due before `end`.
    fn due_before(&self, started: Instant, end: Instant) -> u64 {
        let first = started + self.phase;
        if end <= first {
            return 0;
        }
        ((end - first).as_secs_f64() / self.interval.as_secs_f64()).ceil() as u64
    }
}

enum Reply {
    /// `order_ack`, with the order's id and status.
    Ack(String, String),
    /// An `error` answering the request.
    Refused(String),
}

struct Session {
    stream: TcpStream,
    decoder: FrameDecoder,
    buffer: Vec<u8>,
    mask_seed: u32,
}

impl Session {
    async fn open(plan: &OrderPlan, index: usize, token: &str) -> Result<Session, String> {
        let (stream_url, address) = plan.target(index);
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("set_nodelay: {e}"))?;
        let authorization = format!("Bearer {token}");
        let upgrade = crate::ws::upgrade_request(
            stream_url,
            &[("Authorization", authorization.as_str())],
            index as u64,
        );
        stream
            .write_all(&upgrade)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let head = loop {
            let mut chunk = [0u8; 1024];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err("server closed the connection during the handshake".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = parse_head(&buf).map_err(|e| e.to_string())? {
                break head;
            }
        };
        if head.status != 101 {
            return Err(format!("upgrade answered {}", head.status));
        }
        let mut decoder = FrameDecoder::default();
        decoder
            .feed(&buf[head.head_len..], &mut |_| {})
            .map_err(|e| e.to_string())?;
        Ok(Session {
            stream,
            decoder,
            buffer: vec![0u8; 16 * 1024],
            mask_seed: index as u32,
        })
    }

    /// Sends one action and reads until the reply that names `id` arrives.
    async fn call(&mut self, message: &str, id: u64) -> Result<Reply, String> {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        self.stream
            .write_all(&client_frame(
                OPCODE_TEXT,
                message.as_bytes(),
                self.mask_seed.to_le_bytes(),
            ))
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        loop {
            let n = self
                .stream
                .read(&mut self.buffer)
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err("server closed the connection".into());
            }
            let mut reply = None;
            let mut pongs = Vec::new();
            let mut bad = None;
            self.decoder
                .feed(&self.buffer[..n], &mut |event| match event {
                    WsEvent::Message(bytes) => {
                        if reply.is_none() {
                            match reply_for(bytes, id) {
                                Ok(found) => reply = found,
                                Err(error) => bad = Some(error),
                            }
                        }
                    }
                    WsEvent::Ping(payload) => {
                        pongs.extend_from_slice(&client_frame(OPCODE_PONG, payload, [1, 2, 3, 4]))
                    }
                    WsEvent::Close => bad = Some("server closed the session".into()),
                })
                .map_err(|e| e.to_string())?;
            if !pongs.is_empty() {
                self.stream
                    .write_all(&pongs)
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
            }
            if let Some(reply) = reply {
                return Ok(reply);
            }
            if let Some(error) = bad {
                return Err(error);
            }
        }
    }
}

/// The reply to request `id` in one server message (a JSON array of `T`-tagged objects).
fn reply_for(bytes: &[u8], id: u64) -> Result<Option<Reply>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("server message is not JSON: {e}"))?;
    let Some(items) = value.as_array() else {
        return Err("server message is not an array".into());
    };
    for item in items {
        let answers = item["id"].as_u64() == Some(id)
            || item["id"].as_str().and_then(|s| s.parse().ok()) == Some(id);
        if !answers {
            continue;
        }
        match item["T"].as_str() {
            Some("order_ack") => {
                let order = &item["order"];
                let order_id = order["id"].as_str().unwrap_or_default().to_owned();
                let status = order["status"].as_str().unwrap_or("unknown").to_owned();
                return Ok(Some(Reply::Ack(order_id, status)));
            }
            Some("error") => return Ok(Some(Reply::Refused(item.to_string()))),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_matched_by_request_id() {
        let ack = br#"[{"T":"t","S":"AAPL"},{"T":"order_ack","id":7,"order":{"id":"o-1","status":"filled"}}]"#;
        assert!(
            matches!(reply_for(ack, 7), Ok(Some(Reply::Ack(id, status))) if id == "o-1" && status == "filled")
        );
        assert!(matches!(reply_for(ack, 8), Ok(None)));
        let refused = br#"[{"T":"error","id":"9","code":40310000,"msg":"no"}]"#;
        assert!(matches!(reply_for(refused, 9), Ok(Some(Reply::Refused(_)))));
        assert!(reply_for(b"{}", 1).is_err());
    }

    #[test]
    fn a_paced_schedule_spreads_users_and_counts_due_orders() {
        let started = Instant::now();
        // 10/s per user, 4 users: a 100 ms interval, phases 0, 25, 50, 75 ms.
        let first = Schedule::new(10.0, 0, 4);
        let third = Schedule::new(10.0, 2, 4);
        assert_eq!(first.due(started, 0), started);
        assert_eq!(first.due(started, 3), started + Duration::from_millis(300));
        assert_eq!(third.due(started, 1), started + Duration::from_millis(150));
        // Due before 1 s: user 0 at 0, 100, ..., 900 ms (10); user 2 at 50, ..., 950 ms (10).
        let end = started + Duration::from_secs(1);
        assert_eq!(first.due_before(started, end), 10);
        assert_eq!(third.due_before(started, end), 10);
        let early = started + Duration::from_millis(120);
        assert_eq!(first.due_before(started, early), 2);
        assert_eq!(third.due_before(started, early), 1);
        assert_eq!(
            third.due_before(started, started + Duration::from_millis(10)),
            0
        );
    }

    /// Reads one masked client frame's payload (the test's own short messages only).
    async fn read_client_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        let len = match head[1] & 0x7f {
            126 => {
                let mut extended = [0u8; 2];
                stream.read_exact(&mut extended).await.ok()?;
                usize::from(u16::from_be_bytes(extended))
            }
            len => usize::from(len),
        };
        let mut mask = [0u8; 4];
        stream.read_exact(&mut mask).await.ok()?;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.ok()?;
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        Some(payload)
    }

    /// A gateway stand-in: accepts the upgrade, then answers each order with an
    /// `order_ack`, the first one after `first_delay` and the rest at once.
    async fn fake_gateway(listener: tokio::net::TcpListener, first_delay: Duration) {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut request = Vec::new();
        while find_head_end(&request).is_none() {
            let mut chunk = [0u8; 512];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        if stream.write_all(switched).await.is_err() {
            return;
        }
        let mut answered = 0;
        while let Some(payload) = read_client_frame(&mut stream).await {
            let Ok(message) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                return;
            };
            if answered == 0 {
                tokio::time::sleep(first_delay).await;
            }
            answered += 1;
            let ack = serde_json::json!([{"T": "order_ack", "id": message["id"],
                "order": {"id": format!("o-{answered}"), "status": "filled"}}])
            .to_string();
            let mut frame = vec![0x81, 126];
            frame.extend_from_slice(&(ack.len() as u16).to_be_bytes());
            frame.extend_from_slice(ack.as_bytes());
            if stream.write_all(&frame).await.is_err() {
                return;
            }
        }
    }

    fn find_head_end(buf: &[u8]) -> Option<usize> {
        buf.windows(4).position(|w| w == b"\r\n\r\n")
    }

    #[tokio::test]
    async fn a_late_order_counts_from_its_slot_and_an_early_one_from_its_send() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // 50 orders/s: slots 20 ms apart. The first ack takes 70 ms, so the orders of the
        // 20, 40 and 60 ms slots go out late, at about 70 ms; the later ones wait for theirs.
        let server = tokio::spawn(fake_gateway(listener, Duration::from_millis(70)));
        let url = Url::parse(&format!("http://{address}/v1/ws")).unwrap();
        let plan = std::sync::Arc::new(OrderPlan {
            targets: vec![(url, address)],
            user_prefix: "bench".into(),
            password: String::new(),
            symbol: "AAPL".into(),
            order_type: OrderType::Market,
            duration: Duration::from_millis(400),
            rate_per_user: Some(50.0),
            users: 1,
        });
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(1));
        let result = run_user(plan, 0, "token".into(), start).await;
        server.abort();
        assert_eq!(result.error, None);
        assert!(result.acked >= 15, "{result:?}");
        assert_eq!(result.latencies_us.len(), result.from_schedule_us.len());
        // The order of the 20 ms slot went out after the first ack (70 ms): its time counts
        // from its slot, so it carries the 50 ms its sender waited.
        assert!(
            result.latencies_us[1] >= 45_000,
            "{:?}",
            result.latencies_us
        );
        assert!(result.latencies_us[1].abs_diff(result.from_schedule_us[1]) <= 1);
        // The orders that waited for their slot count from when the timer woke their user:
        // an order's two timings differ by its timer lag, and not at all when it went late.
        assert!(result.timer_lag_us.len() >= 10, "{result:?}");
        let sum = |values: &[u32]| values.iter().map(|&v| u64::from(v)).sum::<u64>();
        let difference = sum(&result.from_schedule_us) - sum(&result.latencies_us);
        let lags = sum(&result.timer_lag_us);
        let rounding = 2 * result.latencies_us.len() as u64;
        assert!(
            difference.abs_diff(lags) <= rounding,
            "{difference} against {lags} µs"
        );
    }

    #[test]
    fn the_summary_counts_every_user() {
        let results = [
            UserResult {
                acked: 2,
                latencies_us: vec![1000, 3000],
                statuses: BTreeMap::from([("filled".to_owned(), 2)]),
                ..UserResult::default()
            },
            UserResult {
                late: 3,
                unsent: 1,
                error: Some("read failed".into()),
                ..UserResult::default()
            },
        ];
        let summary = summarize(&results);
        assert_eq!(summary.acked, 2);
        assert_eq!(summary.failed_users, 1);
        assert_eq!((summary.late, summary.unsent), (3, 1));
        assert_eq!(summary.statuses.get("filled"), Some(&2));
        assert_eq!(summary.first_error.as_deref(), Some("read failed"));
        assert!(summary.p50_ms >= 0.999 && summary.max_ms <= 3.01);
    }
}
