//! `tickgate-loadgen`: opens N SSE or WebSocket subscribers against any push server, publishes
//! trades at a fixed rate through its publish URL, and reports deliveries per second, loss,
//! latency percentiles, connect rate, and the server's CPU per delivery and memory per
//! connection (from `/proc/<pid>`).

mod client;
mod floor;
mod http;
mod market;
mod orders;
mod publish;
mod sse;
mod stats;
mod ws;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::client::{Shared, Target, Transport, now_ns, run_subscriber};
use crate::http::Url;
use crate::publish::Publisher;
use crate::stats::{DeliverySummary, ProcSample, USER_HZ, summarize};

const USAGE: &str = "usage: tickgate-loadgen [options]

  --mode fanout|idle|floor|sink|orders|market
                              fanout: publish and measure delivery (default);
                              market: a --universe of symbols S000.., each subscriber
                              following --follow random ones (--all-fraction of them
                              everything), --rate trades/s published in POSTs of --batch
                              with a Zipf(--skew) symbol mix (tickgate only: the server's
                              market.symbols must be the universe, see --print-universe);
                              idle: hold connections and measure memory per connection;
                              orders: --users users, one WebSocket session each (at
                              --subscribe-url, e.g. http://HOST/v1/stream; several URLs,
                              comma-separated, spread the users over them in turn), each
                              sending one order at a time for --duration; measures
                              send -> order_ack (closed loop: the next order as soon as
                              the ack arrives; with --order-rate, on a fixed schedule);
                              floor: write a frame to each of --subscribers connections to a
                              sink per message and report this process's CPU per write (the
                              kernel's floor under any server); sink: accept --subscribers
                              connections on --sink and discard what they send
  --universe N                market mode: symbols in the universe (default 500, at most 1024)
  --follow K                  market mode: symbols per subscriber (default 20)
  --all-fraction F            market mode: share of subscribers following * (default 0.05)
  --batch B                   market mode: trades per publish request (default 200)
  --skew S                    market mode: Zipf exponent of the symbol mix (default 1.0)
  --seed N                    market mode: what subscribers follow and publish (default 7)
  --max-rate N                market mode: ask for max_rate=N on every subscription
  --print-universe            print the universe's symbols comma-separated and exit
  --sink ADDR                 floor and sink modes: the sink's address (default 127.0.0.1:28479)
  --message-bytes B           floor mode: frame size (default 180, about an SSE trade)
  --transport sse|ws          subscriber protocol (default sse)
  --users N                   orders mode: how many users (default 16), logged in as
                              <user-prefix><i> (i from 0) with --password
  --user-prefix TEXT          orders mode (default bench)
  --password TEXT             orders mode (default demo-password)
  --order-type market|limit   orders mode: market orders alternate buy and sell and fill;
                              limit orders rest far below the market and are then cancelled
                              (the cancel is not timed) (default market)
  --order-rate R              orders mode: paced, R orders/s per user (total users x R),
                              an order sent late (its previous ack came after its slot) timed
                              from its slot, one that waited for its slot from its send;
                              default: closed loop
  --subscribe-url URL         default http://127.0.0.1:8080/v1/stream/market?symbols=*&types=trades
  --publish-url URL           default http://127.0.0.1:8080/v1/publish (Nchan: http://HOST/pub?id=CHAN)
  --token TOKEN               publish with Authorization: Bearer TOKEN
  --header 'Name: value'      extra subscriber request header (repeatable)
  --ws-message TEXT           WebSocket text message sent after the upgrade (repeatable)
  --subscribers N             default 100
  --slow-fraction F           share of subscribers that stop reading after connecting (default 0)
  --rate MSGS_PER_S           publish rate (default 10)
  --duration SECS             publishing time (default 10)
  --symbols A,B               trade symbols, round robin (default AAPL)
  --settle SECS               wait after connecting before measuring (default 1)
  --drain SECS                longest wait for deliveries after the last publish (default 5)
  --hold SECS                 idle mode: how long to hold the connections (default 3)
  --server-pid PID[,PID..]    sample CPU and memory of these processes (nginx: master and workers)
  --source-addresses K        spread connections over 127.0.0.2 .. (default 64)
  --connect-concurrency C     handshakes in flight at once (default 512)
  --threads T                 runtime worker threads (default: available cores)
  --label TEXT                name of the run in the report
  --json FILE                 append the report as one JSON line to FILE
  --check                     exit 1 on any connect failure or loss among reading subscribers";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fanout,
    Idle,
    Floor,
    Sink,
    Orders,
    Market,
}

#[derive(Debug, Clone)]
struct Options {
    mode: Mode,
    sink: SocketAddr,
    message_bytes: usize,
    transport: Transport,
    subscribe_url: String,
    publish_url: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    ws_messages: Vec<String>,
    subscribers: usize,
    slow_fraction: f64,
    rate: f64,
    duration: Duration,
    symbols: Vec<String>,
    settle: Duration,
    drain: Duration,
    hold: Duration,
    server_pids: Vec<u32>,
    source_addresses: u32,
    connect_concurrency: usize,
    threads: Option<usize>,
    label: String,
    json: Option<String>,
    check: bool,
    users: usize,
    user_prefix: String,
    password: String,
    order_type: orders::OrderType,
    order_rate: Option<f64>,
    universe: usize,
    follow: usize,
    all_fraction: f64,
    batch: usize,
    skew: f64,
    seed: u64,
    max_rate: Option<u32>,
    print_universe: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Fanout,
            sink: SocketAddr::from(([127, 0, 0, 1], 28479)),
            message_bytes: 180,
            transport: Transport::Sse,
            subscribe_url: "http://127.0.0.1:8080/v1/stream/market?symbols=*&types=trades".into(),
            publish_url: "http://127.0.0.1:8080/v1/publish".into(),
            token: None,
            headers: Vec::new(),
            ws_messages: Vec::new(),
            subscribers: 100,
            slow_fraction: 0.0,
            rate: 10.0,
            duration: Duration::from_secs(10),
            symbols: vec!["AAPL".into()],
            settle: Duration::from_secs(1),
            drain: Duration::from_secs(5),
            hold: Duration::from_secs(3),
            server_pids: Vec::new(),
            source_addresses: 64,
            connect_concurrency: 512,
            threads: None,
            label: String::new(),
            json: None,
            check: false,
            users: 16,
            user_prefix: "bench".into(),
            password: "demo-password".into(),
            order_type: orders::OrderType::Market,
            order_rate: None,
            universe: 500,
            follow: 20,
            all_fraction: 0.05,
            batch: 200,
            skew: 1.0,
            seed: 7,
            max_rate: None,
            print_universe: false,
        }
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.into_iter();
    let secs = |v: String, name: &str| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{name} wants seconds, got {v:?}"))
    };
    fn number<T: std::str::FromStr>(v: &str, name: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("{name} wants a number, got {v:?}"))
    }
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if flag == "--check" {
            options.check = true;
            continue;
        }
        if flag == "--print-universe" {
            options.print_universe = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" => {
                options.mode = match value.as_str() {
                    "fanout" => Mode::Fanout,
                    "idle" => Mode::Idle,
                    "floor" => Mode::Floor,
                    "sink" => Mode::Sink,
                    "orders" => Mode::Orders,
                    "market" => Mode::Market,
                    _ => {
                        return Err(format!(
                            "--mode is fanout, idle, floor, sink, orders or market, got {value:?}"
                        ));
                    }
                }
            }
            "--sink" => {
                options.sink = value
                    .parse()
                    .map_err(|_| format!("--sink wants IP:PORT, got {value:?}"))?
            }
            "--message-bytes" => {
                options.message_bytes = number(&value, &flag)?;
                if !(16..=65_536).contains(&options.message_bytes) {
                    return Err("--message-bytes must be from 16 to 65536".into());
                }
            }
            "--transport" => {
                options.transport = match value.as_str() {
                    "sse" => Transport::Sse,
                    "ws" | "websocket" => Transport::WebSocket,
                    _ => return Err(format!("--transport is sse or ws, got {value:?}")),
                }
            }
            "--subscribe-url" => options.subscribe_url = value,
            "--publish-url" => options.publish_url = value,
            "--token" => options.token = Some(value),
            "--header" => {
                let (name, header_value) = value
                    .split_once(':')
                    .ok_or_else(|| format!("--header wants 'Name: value', got {value:?}"))?;
                options
                    .headers
                    .push((name.trim().to_owned(), header_value.trim().to_owned()));
            }
            "--ws-message" => options.ws_messages.push(value),
            "--subscribers" => options.subscribers = number(&value, &flag)?,
            "--slow-fraction" => {
                options.slow_fraction = number(&value, &flag)?;
                if !(0.0..=1.0).contains(&options.slow_fraction) {
                    return Err("--slow-fraction must be in [0, 1]".into());
                }
            }
            "--rate" => {
                options.rate = number(&value, &flag)?;
                if !(options.rate > 0.0 && options.rate.is_finite()) {
                    return Err("--rate must be positive".into());
                }
            }
            "--duration" => options.duration = secs(value, &flag)?,
            "--symbols" => {
                options.symbols = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if options.symbols.is_empty() {
                    return Err("--symbols needs at least one symbol".into());
                }
            }
            "--settle" => options.settle = secs(value, &flag)?,
            "--drain" => options.drain = secs(value, &flag)?,
            "--hold" => options.hold = secs(value, &flag)?,
            "--server-pid" => {
                options.server_pids = value
                    .split(',')
                    .map(|p| number(p.trim(), &flag))
                    .collect::<Result<_, _>>()?;
            }
            "--source-addresses" => {
                options.source_addresses = number(&value, &flag)?;
                if !(1..=16_000_000).contains(&options.source_addresses) {
                    return Err("--source-addresses must be from 1 to 16000000".into());
                }
            }
            "--connect-concurrency" => {
                options.connect_concurrency = number::<usize>(&value, &flag)?.max(1)
            }
            "--threads" => options.threads = Some(number::<usize>(&value, &flag)?.max(1)),
            "--users" => options.users = number::<usize>(&value, &flag)?.max(1),
            "--user-prefix" => options.user_prefix = value,
            "--password" => options.password = value,
            "--order-type" => {
                options.order_type = match value.as_str() {
                    "market" => orders::OrderType::Market,
                    "limit" => orders::OrderType::Limit,
                    _ => return Err(format!("--order-type is market or limit, got {value:?}")),
                }
            }
            "--order-rate" => {
                let rate: f64 = number(&value, &flag)?;
                if !(rate.is_finite() && rate > 0.0 && rate <= 100_000.0) {
                    return Err("--order-rate must be above 0 and at most 100000".into());
                }
                options.order_rate = Some(rate);
            }
            "--universe" => {
                options.universe = number(&value, &flag)?;
                if !(1..=market::MAX_SYMBOLS).contains(&options.universe) {
                    return Err(format!(
                        "--universe must be from 1 to {}",
                        market::MAX_SYMBOLS
                    ));
                }
            }
            "--follow" => options.follow = number::<usize>(&value, &flag)?.max(1),
            "--all-fraction" => {
                options.all_fraction = number(&value, &flag)?;
                if !(0.0..=1.0).contains(&options.all_fraction) {
                    return Err("--all-fraction must be in [0, 1]".into());
                }
            }
            "--batch" => {
                options.batch = number(&value, &flag)?;
                if options.batch == 0 {
                    return Err("--batch must be at least 1".into());
                }
            }
            "--skew" => {
                options.skew = number(&value, &flag)?;
                if !(0.0..=4.0).contains(&options.skew) {
                    return Err("--skew must be from 0 to 4".into());
                }
            }
            "--seed" => options.seed = number(&value, &flag)?,
            "--max-rate" => {
                let rate: u32 = number(&value, &flag)?;
                if rate == 0 {
                    return Err("--max-rate must be at least 1".into());
                }
                options.max_rate = Some(rate);
            }
            "--label" => options.label = value,
            "--json" => options.json = Some(value),
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.print_universe {
        println!("{}", market::universe_list(options.universe));
        return ExitCode::SUCCESS;
    }
    // The floor and the sink are plain threads: no runtime, so the floor's CPU is its writes.
    match options.mode {
        Mode::Sink => {
            return match floor::sink(options.sink, options.subscribers) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tickgate-loadgen: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Mode::Floor => return run_floor(&options),
        Mode::Fanout | Mode::Idle | Mode::Orders | Mode::Market => {}
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = options.threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("could not start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if options.mode == Mode::Orders {
        runtime.block_on(run_orders(options))
    } else {
        runtime.block_on(run(options))
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("tickgate-loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

fn append_line(path: &str, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")
}

fn run_floor(options: &Options) -> ExitCode {
    let report = match floor::floor(
        options.sink,
        options.subscribers,
        options.rate,
        options.duration,
        options.message_bytes,
        options.label.clone(),
    ) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("tickgate-loadgen: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("== {} (floor) ==", report.label);
    println!(
        "writes           {} ({} connections x {} msg/s, {} bytes each)",
        report.writes, report.connections, report.rate, report.message_bytes
    );
    println!(
        "floor cpu        {:.3} us per write ({:.0}% in the kernel)",
        report.cpu_us_per_write,
        report.system_share * 100.0
    );
    if let Some(path) = &options.json {
        let line = match serde_json::to_string(&report) {
            Ok(line) => line,
            Err(error) => {
                eprintln!("tickgate-loadgen: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(error) = append_line(path, &line) {
            eprintln!("tickgate-loadgen: cannot write {path}: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn market_plan(options: &Options) -> market::MarketPlan {
    market::MarketPlan {
        symbols: options.universe,
        per_subscriber: options.follow,
        all_fraction: options.all_fraction,
        skew: options.skew,
        seed: options.seed,
        max_rate: options.max_rate,
    }
}

fn resolve(url: &Url) -> Result<SocketAddr, String> {
    (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{} has no IPv4 address", url.host))
}

/// The figures of one run.
#[derive(Debug, serde::Serialize)]
struct Report {
    label: String,
    mode: &'static str,
    transport: &'static str,
    subscribers: usize,
    slow_subscribers: usize,
    connected: usize,
    connect_failures: usize,
    first_connect_error: Option<String>,
    connect_seconds: f64,
    connects_per_second: f64,
    /// Server CPU from before the first connect until all were connected and settled, per
    /// connection: what one subscribe costs the server, whatever the generator's speed.
    server_cpu_us_per_connect: Option<f64>,
    rate: f64,
    published: u64,
    publish_failures: u64,
    first_publish_error: Option<String>,
    delivered: u64,
    deliveries_per_second: f64,
    lost: u64,
    subscribers_with_loss: usize,
    duplicated: u64,
    subscriber_errors: usize,
    first_subscriber_error: Option<String>,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    server_cpu_seconds: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    /// The kernel's share of the server's CPU time (loopback TCP, epoll).
    server_system_share: Option<f64>,
    /// The load generator's own CPU per delivery, to see whether it was the bottleneck.
    loadgen_cpu_us_per_delivery: Option<f64>,
    server_rss_before_kib: Option<u64>,
    server_rss_connected_kib: Option<u64>,
    server_rss_max_kib: Option<u64>,
    server_bytes_per_connection: Option<f64>,
    server_pss_before_kib: Option<u64>,
    server_pss_connected_kib: Option<u64>,
    /// PSS growth per connection: what the processes together really hold for one.
    server_pss_bytes_per_connection: Option<f64>,
    /// Market runs: the plan and its per-symbol accounting.
    #[serde(flatten)]
    market: Option<market::MarketFigures>,
}

async fn run(options: Options) -> Result<bool, String> {
    let subscribe_url = Url::parse(&options.subscribe_url)?;
    let address = resolve(&subscribe_url)?;
    let target = Arc::new(Target {
        transport: options.transport,
        address,
        url: subscribe_url,
        headers: options.headers.clone(),
        ws_messages: options.ws_messages.clone(),
        source_addresses: options.source_addresses,
        handshake_timeout: Duration::from_secs(30),
        market: (options.mode == Mode::Market).then(|| market_plan(&options)),
    });
    let sample = || -> Option<ProcSample> {
        if options.server_pids.is_empty() {
            return None;
        }
        match ProcSample::read_all(&options.server_pids) {
            Ok(sample) => Some(sample),
            Err(error) => {
                eprintln!("warning: {error}");
                None
            }
        }
    };

    let before = sample();
    let shared = Arc::new(Shared::new());
    let limit = Arc::new(Semaphore::new(options.connect_concurrency));
    let n = options.subscribers;
    let slow_every = if options.slow_fraction > 0.0 {
        Some((1.0 / options.slow_fraction).round().max(1.0) as usize)
    } else {
        None
    };
    let is_slow = |index: usize| slow_every.is_some_and(|every| index % every == every - 1);
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut slow_count = 0;
    for index in 0..n {
        let slow = is_slow(index);
        slow_count += usize::from(slow);
        tasks.push(tokio::spawn(run_subscriber(
            Arc::clone(&target),
            index,
            slow,
            Arc::clone(&shared),
            Arc::clone(&limit),
        )));
    }
    let connect_deadline = Duration::from_secs(60).max(Duration::from_millis(n as u64));
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n {
        if connect_started.elapsed() > connect_deadline {
            eprintln!("warning: not every subscriber connected within {connect_deadline:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let connected = shared.ready.load(Ordering::Relaxed);
    eprintln!(
        "{connected}/{n} subscribers connected in {connect_seconds:.2} s ({:.0}/s)",
        connected as f64 / connect_seconds.max(1e-9)
    );
    tokio::time::sleep(options.settle).await;
    let connected_sample = sample();

    let mut rss_max = connected_sample.map(|s| s.rss_kib);
    let mut publish_report = publish::PublishReport::default();
    let mut market_published: Option<market::MarketPublished> = None;
    let mut cpu_seconds = None;
    let mut system_share = None;
    let mut own_cpu_seconds: Option<f64> = None;
    let mut delivery_seconds = 0.0;
    let idle = options.mode == Mode::Idle;
    if idle {
        tokio::time::sleep(options.hold).await;
        if let Some(s) = sample() {
            rss_max = rss_max.max(Some(s.rss_kib));
        }
    } else {
        let publish_url = Url::parse(&options.publish_url)?;
        let publish_address = resolve(&publish_url)?;
        let mut publisher = Publisher::new(
            publish_url.clone(),
            publish_address,
            options.token.clone(),
            options.symbols.clone(),
        );
        let mut batch_publisher = target.market.clone().map(|plan| {
            market::BatchPublisher::new(publish_url, publish_address, options.token.clone(), plan)
        });
        let cpu_start = sample();
        let own_start = ProcSample::read(std::process::id()).ok();
        shared.min_id.store(now_ns(), Ordering::Relaxed);
        let started = Instant::now();
        let sampler = {
            let pids = options.server_pids.clone();
            tokio::spawn(async move {
                let mut max = 0;
                if pids.is_empty() {
                    return max;
                }
                let mut ticker = tokio::time::interval(Duration::from_millis(250));
                loop {
                    ticker.tick().await;
                    if let Ok(s) = ProcSample::read_all(&pids) {
                        max = max.max(s.rss_kib);
                    }
                }
            })
        };
        let publish_task = {
            let rate = options.rate;
            let duration = options.duration;
            let batch = options.batch;
            tokio::spawn(async move {
                match batch_publisher.as_mut() {
                    Some(batch_publisher) => {
                        let published = batch_publisher.run(rate, batch, duration).await;
                        let report = publish::PublishReport {
                            accepted: published.total_accepted(),
                            failed: published.failed,
                            first_error: published.first_error.clone(),
                            elapsed: published.elapsed,
                        };
                        (report, Some(published))
                    }
                    None => (publisher.run(rate, duration).await, None),
                }
            })
        };
        // Max RSS is tracked in the sampler; it is read back by aborting it below.
        (publish_report, market_published) = publish_task
            .await
            .map_err(|e| format!("publisher failed: {e}"))?;
        let reading = shared
            .ready
            .load(Ordering::Relaxed)
            .saturating_sub(slow_count);
        let want = match (&target.market, &market_published) {
            // Every reading subscriber's own expectation (what it follows).
            (Some(plan), Some(published)) if plan.max_rate.is_none() => (0..n)
                .filter(|index| !is_slow(*index))
                .map(|index| published.expected(&plan.follow(index)))
                .sum(),
            // Throttled: fewer deliveries by design, so wait for them to stop coming.
            (Some(_), Some(_)) => u64::MAX,
            _ => publish_report.accepted * reading as u64,
        };
        let quiet_for = Duration::from_millis(500)
            + options.max_rate.map_or(Duration::ZERO, |rate| {
                Duration::from_secs_f64(2.0 / f64::from(rate))
            });
        let drain_started = Instant::now();
        let mut last_count = shared.received.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        while shared.received.load(Ordering::Relaxed) < want
            && drain_started.elapsed() < options.drain
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let count = shared.received.load(Ordering::Relaxed);
            if count != last_count {
                last_count = count;
                last_change = Instant::now();
            } else if want == u64::MAX && last_change.elapsed() >= quiet_for {
                break;
            }
        }
        delivery_seconds = started.elapsed().as_secs_f64();
        if let (Some(a), Ok(b)) = (own_start, ProcSample::read(std::process::id())) {
            own_cpu_seconds = Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / USER_HZ as f64);
        }
        if let (Some(a), Some(b)) = (cpu_start, sample()) {
            let ticks = b.cpu_ticks.saturating_sub(a.cpu_ticks);
            cpu_seconds = Some(ticks as f64 / USER_HZ as f64);
            if ticks > 0 {
                system_share =
                    Some(b.system_ticks.saturating_sub(a.system_ticks) as f64 / ticks as f64);
            }
            rss_max = rss_max.max(Some(b.rss_kib));
        }
        sampler.abort();
        if let Ok(Ok(max)) = tokio::time::timeout(Duration::from_millis(100), sampler).await {
            rss_max = rss_max.max(Some(max));
        }
    }

    shared.stop.cancel();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(result) = task.await {
            results.push(result);
        }
    }
    let mut summary: DeliverySummary = summarize(&results, publish_report.accepted);
    let market_figures = match (&target.market, &market_published) {
        (Some(plan), Some(published)) => {
            let counted = market::summarize_market(&results, plan, published);
            // Loss is what a subscriber should have had: every trade of what it follows, or
            // with max_rate the newest of each (fewer deliveries are the point there).
            summary.lost = if plan.max_rate.is_some() {
                counted.stale
            } else {
                counted.missing
            };
            summary.duplicated = counted.duplicated;
            summary.subscribers_with_loss = counted.subscribers_with_loss;
            Some(market::MarketFigures {
                universe: plan.symbols,
                follow: plan.per_subscriber,
                all_fraction: plan.all_fraction,
                batch: options.batch,
                skew: plan.skew,
                max_rate: plan.max_rate,
                posts: published.posts,
                published_per_second: published.total_accepted() as f64
                    / published.elapsed.as_secs_f64().max(1e-9),
                expected_deliveries: counted.expected,
                missing: counted.missing,
                stale: counted.stale,
                unwanted: counted.unwanted,
            })
        }
        _ => None,
    };
    let first_connect_error = results
        .iter()
        .filter(|r| r.received == 0)
        .find_map(|r| r.error.clone());
    let first_subscriber_error = results.iter().find_map(|r| r.error.clone());
    let connect_failures = shared.failed.load(Ordering::Relaxed);
    let report = Report {
        label: options.label.clone(),
        mode: match options.mode {
            Mode::Idle => "idle",
            Mode::Market => "market",
            _ => "fanout",
        },
        transport: match options.transport {
            Transport::Sse => "sse",
            Transport::WebSocket => "ws",
        },
        subscribers: n,
        slow_subscribers: slow_count,
        connected,
        connect_failures,
        first_connect_error,
        connect_seconds,
        connects_per_second: connected as f64 / connect_seconds.max(1e-9),
        server_cpu_us_per_connect: match (before, connected_sample) {
            (Some(a), Some(b)) if connected > 0 => Some(
                b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * 1e6
                    / USER_HZ as f64
                    / connected as f64,
            ),
            _ => None,
        },
        rate: options.rate,
        published: publish_report.accepted,
        publish_failures: publish_report.failed,
        first_publish_error: publish_report.first_error.clone(),
        delivered: summary.received,
        deliveries_per_second: if delivery_seconds > 0.0 {
            summary.received as f64 / delivery_seconds
        } else {
            0.0
        },
        lost: summary.lost,
        subscribers_with_loss: summary.subscribers_with_loss,
        duplicated: summary.duplicated,
        subscriber_errors: summary.errors,
        first_subscriber_error,
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        p999_ms: summary.p999_ms,
        max_ms: summary.max_ms,
        server_cpu_seconds: cpu_seconds,
        server_cpu_us_per_delivery: cpu_seconds
            .filter(|_| summary.received > 0)
            .map(|s| s * 1e6 / summary.received as f64),
        server_system_share: system_share,
        loadgen_cpu_us_per_delivery: own_cpu_seconds
            .filter(|_| summary.received > 0)
            .map(|s| s * 1e6 / summary.received as f64),
        server_rss_before_kib: before.map(|s| s.rss_kib),
        server_rss_connected_kib: connected_sample.map(|s| s.rss_kib),
        server_rss_max_kib: rss_max,
        server_bytes_per_connection: match (before, connected_sample) {
            (Some(a), Some(b)) if connected > 0 => {
                Some((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / connected as f64)
            }
            _ => None,
        },
        server_pss_before_kib: before.map(|s| s.pss_kib),
        server_pss_connected_kib: connected_sample.map(|s| s.pss_kib),
        server_pss_bytes_per_connection: match (before, connected_sample) {
            (Some(a), Some(b)) if connected > 0 => {
                Some((b.pss_kib as f64 - a.pss_kib as f64) * 1024.0 / connected as f64)
            }
            _ => None,
        },
        market: market_figures,
    };
    print_report(&report);
    if let Some(path) = &options.json {
        let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        append_line(path, &line).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    let healthy = connect_failures == 0
        && report.market.as_ref().is_none_or(|m| m.unwanted == 0)
        && (idle
            || (summary.lost == 0
                && publish_report.failed == 0
                && publish_report.accepted > 0
                && summary.errors == 0));
    Ok(!options.check || healthy)
}

/// The figures of an orders run.
#[derive(Debug, serde::Serialize)]
struct OrdersReport {
    label: String,
    mode: &'static str,
    order_type: &'static str,
    users: usize,
    failed_users: usize,
    first_error: Option<String>,
    orders: u64,
    refused: u64,
    /// Paced mode: the schedule, orders per second per user (absent: closed loop).
    #[serde(skip_serializing_if = "Option::is_none")]
    order_rate_per_user: Option<f64>,
    /// Paced mode: users × rate, what the schedule asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    offered_per_second: Option<f64>,
    /// Paced mode: orders sent more than 1 ms after their scheduled time.
    late: u64,
    /// Paced mode: orders due within the run that were never sent.
    unsent: u64,
    /// Acknowledged orders by the status their `order_ack` gave.
    statuses: std::collections::BTreeMap<String, u64>,
    seconds: f64,
    orders_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Paced mode: p50 / p99 with every order timed from its slot (the rule before
    /// 2026-12-06, which also counts the load generator's own timer lag).
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule_p99_ms: Option<f64>,
    /// Paced mode: how late tokio's timer woke users that waited for their slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    timer_lag_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timer_lag_p99_ms: Option<f64>,
    server_cpu_seconds: Option<f64>,
    server_cpu_us_per_order: Option<f64>,
    loadgen_cpu_us_per_order: Option<f64>,
}

async fn run_orders(options: Options) -> Result<bool, String> {
    // Several comma-separated URLs (cluster nodes) spread the users over them in turn.
    let mut targets = Vec::new();
    for text in options.subscribe_url.split(',') {
        let url = Url::parse(text.trim())?;
        let address = resolve(&url)?;
        targets.push((url, address));
    }
    let plan = Arc::new(orders::OrderPlan {
        targets,
        user_prefix: options.user_prefix.clone(),
        password: options.password.clone(),
        symbol: options.symbols[0].clone(),
        order_type: options.order_type,
        duration: options.duration,
        rate_per_user: options.order_rate,
        users: options.users,
    });
    let mut tokens = Vec::with_capacity(options.users);
    for index in 0..options.users {
        tokens.push(orders::login(&plan, index).await?);
    }
    let start = Arc::new(tokio::sync::Barrier::new(options.users + 1));
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(index, token)| {
            tokio::spawn(orders::run_user(
                Arc::clone(&plan),
                index,
                token,
                Arc::clone(&start),
            ))
        })
        .collect();
    start.wait().await;
    let sample = || ProcSample::read_all(&options.server_pids).ok();
    let server_start = (!options.server_pids.is_empty()).then(sample).flatten();
    let own_start = ProcSample::read(std::process::id()).ok();
    let started = Instant::now();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.map_err(|e| format!("user task failed: {e}"))?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let server_end = (!options.server_pids.is_empty()).then(sample).flatten();
    let own_end = ProcSample::read(std::process::id()).ok();
    let summary = orders::summarize(&results);
    let per_order = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) if summary.acked > 0 => Some(
            b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * 1e6
                / USER_HZ as f64
                / summary.acked as f64,
        ),
        _ => None,
    };
    let report = OrdersReport {
        label: options.label.clone(),
        mode: "orders",
        order_type: match options.order_type {
            orders::OrderType::Market => "market",
            orders::OrderType::Limit => "limit",
        },
        users: options.users,
        failed_users: summary.failed_users,
        first_error: summary.first_error.clone(),
        orders: summary.acked,
        refused: summary.refused,
        order_rate_per_user: options.order_rate,
        offered_per_second: options.order_rate.map(|rate| rate * options.users as f64),
        late: summary.late,
        unsent: summary.unsent,
        statuses: summary.statuses.clone(),
        seconds,
        orders_per_second: summary.acked as f64 / seconds.max(1e-9),
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        p999_ms: summary.p999_ms,
        max_ms: summary.max_ms,
        schedule_p50_ms: options.order_rate.map(|_| summary.schedule_p50_ms),
        schedule_p99_ms: options.order_rate.map(|_| summary.schedule_p99_ms),
        timer_lag_p50_ms: options.order_rate.map(|_| summary.timer_lag_p50_ms),
        timer_lag_p99_ms: options.order_rate.map(|_| summary.timer_lag_p99_ms),
        server_cpu_seconds: match (server_start, server_end) {
            (Some(a), Some(b)) => {
                Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / USER_HZ as f64)
            }
            _ => None,
        },
        server_cpu_us_per_order: per_order(server_start, server_end),
        loadgen_cpu_us_per_order: per_order(own_start, own_end),
    };
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    let pacing = match report.order_rate_per_user {
        Some(rate) => format!("paced, {rate}/s per user"),
        None => "closed loop".into(),
    };
    println!(
        "== {} (orders {}, {pacing}) ==",
        report.label, report.order_type
    );
    println!(
        "users            {} ({} failed{})",
        report.users,
        report.failed_users,
        report
            .first_error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!(
        "orders           {} acked, {} refused, {:.0}/s over {:.1} s",
        report.orders, report.refused, report.orders_per_second, report.seconds
    );
    if let Some(offered) = report.offered_per_second {
        println!(
            "paced            offered {offered:.0}/s, achieved {:.0}/s; {} sent late (> 1 ms), {} unsent",
            report.orders_per_second, report.late, report.unsent
        );
    }
    println!("ack statuses     {:?}", report.statuses);
    println!(
        "order -> ack ms  p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        report.p50_ms, report.p99_ms, report.p999_ms, report.max_ms
    );
    if let (Some(p50), Some(p99), Some(lag50), Some(lag99)) = (
        report.schedule_p50_ms,
        report.schedule_p99_ms,
        report.timer_lag_p50_ms,
        report.timer_lag_p99_ms,
    ) {
        println!(
            "from slot ms     p50 {p50:.3}  p99 {p99:.3}  (timer lag p50 {lag50:.3}  p99 {lag99:.3})"
        );
    }
    println!(
        "cpu per order    server {} us, loadgen {} us",
        opt(report.server_cpu_us_per_order),
        opt(report.loadgen_cpu_us_per_order)
    );
    if let Some(path) = &options.json {
        let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        append_line(path, &line).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(!options.check || (summary.failed_users == 0 && summary.refused == 0 && summary.acked > 0))
}

fn print_report(r: &Report) {
    let opt = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".into(),
    };
    println!("== {} ({} {}) ==", r.label, r.mode, r.transport);
    println!(
        "subscribers      {} ({} slow), connected {}, failed {}",
        r.subscribers, r.slow_subscribers, r.connected, r.connect_failures
    );
    println!(
        "connect          {:.2} s, {:.0} connections/s, server cpu {} us per connection",
        r.connect_seconds,
        r.connects_per_second,
        opt(r.server_cpu_us_per_connect, 1)
    );
    if let Some(error) = &r.first_connect_error {
        println!("connect error    {error}");
    }
    if let Some(m) = &r.market {
        println!(
            "market           {} symbols, {} each ({:.0}% all), batches of {}, skew {}, max_rate {}",
            m.universe,
            m.follow,
            m.all_fraction * 100.0,
            m.batch,
            m.skew,
            m.max_rate.map_or("-".into(), |rate| rate.to_string())
        );
        println!(
            "market delivery  {} posts, {:.0} trades/s published; expected {} without max_rate, \
             missing {}, stale {}, unwanted {}",
            m.posts, m.published_per_second, m.expected_deliveries, m.missing, m.stale, m.unwanted
        );
    }
    if r.mode != "idle" {
        println!(
            "published        {} at {}/s ({} failed{})",
            r.published,
            r.rate,
            r.publish_failures,
            r.first_publish_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        println!(
            "delivered        {} ({:.0}/s), lost {} ({} subscribers), duplicated {}",
            r.delivered, r.deliveries_per_second, r.lost, r.subscribers_with_loss, r.duplicated
        );
        println!(
            "latency ms       p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms
        );
        println!(
            "server cpu       {} s, {} us per delivery ({} in the kernel)",
            opt(r.server_cpu_seconds, 2),
            opt(r.server_cpu_us_per_delivery, 3),
            opt(r.server_system_share.map(|s| s * 100.0), 0) + "%"
        );
        println!(
            "loadgen cpu      {} us per delivery",
            opt(r.loadgen_cpu_us_per_delivery, 3)
        );
        if let Some(error) = &r.first_subscriber_error {
            println!(
                "subscriber error {error} ({} subscribers)",
                r.subscriber_errors
            );
        }
    }
    println!(
        "server rss KiB   before {}  connected {}  max {}  -> {} bytes/connection",
        r.server_rss_before_kib
            .map_or("-".into(), |v| v.to_string()),
        r.server_rss_connected_kib
            .map_or("-".into(), |v| v.to_string()),
        r.server_rss_max_kib.map_or("-".into(), |v| v.to_string()),
        opt(r.server_bytes_per_connection, 0)
    );
    println!(
        "server pss KiB   before {}  connected {}  -> {} bytes/connection",
        r.server_pss_before_kib
            .map_or("-".into(), |v| v.to_string()),
        r.server_pss_connected_kib
            .map_or("-".into(), |v| v.to_string()),
        opt(r.server_pss_bytes_per_connection, 0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_with_units_and_lists() {
        let options = parse_args(args(
            "--mode idle --transport ws --subscribers 5000 --rate 100 --duration 2.5 \
             --server-pid 10,11 --header X-A:1 --symbols AAPL,MSFT --check",
        ))
        .expect("valid");
        assert_eq!(options.mode, Mode::Idle);
        let floor = parse_args(args("--mode floor --sink 127.0.0.9:7 --message-bytes 200"))
            .expect("valid floor options");
        assert_eq!(floor.mode, Mode::Floor);
        assert_eq!(floor.sink, SocketAddr::from(([127, 0, 0, 9], 7)));
        assert_eq!(floor.message_bytes, 200);
        assert_eq!(options.transport, Transport::WebSocket);
        assert_eq!(options.subscribers, 5000);
        assert_eq!(options.duration, Duration::from_millis(2500));
        assert_eq!(options.server_pids, vec![10, 11]);
        assert_eq!(options.headers, vec![("X-A".into(), "1".into())]);
        assert_eq!(options.symbols, vec!["AAPL", "MSFT"]);
        assert!(options.check);
        let order_options = parse_args(args(
            "--mode orders --users 4 --user-prefix u --password pw --order-type limit",
        ))
        .expect("valid orders options");
        assert_eq!(order_options.mode, Mode::Orders);
        assert_eq!(order_options.users, 4);
        assert_eq!(order_options.user_prefix, "u");
        assert_eq!(order_options.password, "pw");
        assert_eq!(order_options.order_type, orders::OrderType::Limit);
        assert_eq!(order_options.order_rate, None);
        let paced = parse_args(args("--mode orders --order-rate 25")).expect("a paced rate");
        assert_eq!(paced.order_rate, Some(25.0));
    }

    #[test]
    fn bad_options_are_reported_by_name() {
        for (line, needle) in [
            ("--rate 0", "--rate"),
            ("--subscribers x", "--subscribers"),
            ("--mode busy", "--mode"),
            ("--mode floor --sink localhost", "--sink"),
            ("--message-bytes 8", "--message-bytes"),
            ("--slow-fraction 1.5", "--slow-fraction"),
            ("--bogus 1", "--bogus"),
            ("--duration", "--duration"),
            ("--order-type stop", "--order-type"),
            ("--users x", "--users"),
            ("--order-rate 0", "--order-rate"),
            ("--order-rate -3", "--order-rate"),
        ] {
            let error = parse_args(args(line)).expect_err(line);
            assert!(error.contains(needle), "{line}: {error}");
        }
    }
}
