//! The cost of a throttled subscriber in the realistic market case of issue 17 (500 symbols,
//! 1,000 subscribers following 20 random ones, every twentieth all of them, 200 Zipf(1)
//! trades per publish, 100 publishes a second), without its sockets: the real hub fans the
//! trades out to real queues, and each subscriber runs as its connection does when its queue
//! wakes it or its timer comes due. Prints deterministic counts (wake-ups, writes and
//! deliveries per subscriber and second) for three connections: unthrottled, throttled and
//! woken by every publish (as before the deferred wake-ups), and throttled with deferred
//! wake-ups, whose queue keeps only the newest trade per windowed symbol (as now); then times
//! one simulated second of each. A fourth connection, `ThrottledShared`, is registered at the
//! hub's shared throttle for its rate (`Hub::subscribe_throttled`): it has no throttle of its
//! own and is pushed only what the stage releases. The stage's timer is a tokio task, so that
//! mode runs on a paused tokio clock stepped a millisecond at a time (the timer's resolution).
//!
//! `THROTTLE_BENCH_ONLY=<mode>` (`Unthrottled`, `ThrottledEager`, `ThrottledDeferred`,
//! `ThrottledShared`, or
//! `Setup` for building the market without publishing) runs that one simulation of 2 s and
//! exits, without the timings: run it under `perf stat -e instructions` or callgrind for an
//! instruction count per mode that a noisy machine does not move.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use chrono::DateTime;
use criterion::{Criterion, criterion_group, criterion_main};
use tickgate::hub::{
    Delivery, Entry, Feed, Filter, Hub, HubSettings, MaxRate, SubscriberQueue, SymbolFilter,
    Throttle,
};
use tickgate::market::{MarketEvent, SymbolId, SymbolUniverse, Trade};
use tickgate::metrics::Metrics;
use tokio::time::Instant;

const SYMBOLS: usize = 500;
const SUBSCRIBERS: usize = 1000;
const BATCH: usize = 200;
const PUBLISHES_PER_SECOND: u32 = 100;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Unthrottled,
    ThrottledEager,
    ThrottledDeferred,
    ThrottledShared,
}

/// A deterministic xorshift generator, so every run publishes the same market.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

struct Subscriber {
    queue: Arc<SubscriberQueue>,
    throttle: Option<Throttle>,
    spare: VecDeque<Delivery>,
    released: Vec<Arc<Entry>>,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    wakes: u64,
    /// Queue items the connections drained (what their throttles took in).
    drained: u64,
    writes: u64,
    deliveries: u64,
}

impl Subscriber {
    fn deadline(&self, mode: Mode) -> Option<Instant> {
        let throttle = self.throttle.as_ref()?;
        match mode {
            Mode::ThrottledDeferred => throttle.next_wake(),
            _ => throttle.next_release(),
        }
    }

    /// What the connection does when woken at `now`: drain, throttle, one write of what is
    /// released.
    fn run(&mut self, now: Instant, mode: Mode, counts: &mut Counts) {
        counts.wakes += 1;
        self.queue.drain_into(&mut self.spare);
        counts.drained += self.spare.len() as u64;
        for item in self.spare.drain(..) {
            if let Delivery::Event(entry) = item {
                match self.throttle.as_mut() {
                    Some(throttle) => throttle.take(entry),
                    None => self.released.push(entry),
                }
            }
        }
        if let Some(throttle) = self.throttle.as_mut() {
            throttle.release(now, &mut self.released);
            if mode == Mode::ThrottledDeferred {
                throttle.share_windows(&self.queue);
            }
        }
        if !self.released.is_empty() {
            counts.writes += 1;
            counts.deliveries += self.released.len() as u64;
            black_box(&self.released);
            self.released.clear();
        }
    }
}

struct Market {
    hub: Hub,
    subscribers: Vec<Subscriber>,
    /// Each publish's symbols, drawn once.
    batches: Vec<Vec<SymbolId>>,
    names: Vec<String>,
    /// The throttles' origin and the first publish: one instant, so the windows' grid lies
    /// the same way against the publishes on every run (however long the set-up took).
    start: Instant,
}

fn market(mode: Mode, seconds: u32) -> Market {
    let names: Vec<String> = (0..SYMBOLS).map(|i| format!("S{i:03}")).collect();
    let hub = Hub::new(
        SymbolUniverse::new(names.iter().map(String::as_str)),
        HubSettings {
            replay_window: 1_000,
            subscriber_queue_capacity: 1024,
            ..HubSettings::default()
        },
        Arc::new(Metrics::default()),
        1_763_900_000_000,
    );
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let rate = MaxRate::new(10).expect("a valid rate");
    let subscribers = (0..SUBSCRIBERS)
        .map(|index| {
            let queue = SubscriberQueue::with_capacity(1024);
            let symbols = if index % 20 == 19 {
                SymbolFilter::All
            } else {
                SymbolFilter::from_ids((0..20).map(|_| random.below(SYMBOLS) as SymbolId))
            };
            let filter = Filter {
                symbols,
                kinds: u8::MAX,
            };
            if mode == Mode::ThrottledShared {
                let (_, stage) = hub.subscribe_throttled(filter, rate, None, false, &queue);
                assert!(stage.is_some(), "one stage for the rate");
            } else {
                hub.subscribe(Feed::Market, filter, None, false, &queue);
            }
            Subscriber {
                queue,
                throttle: (!matches!(mode, Mode::Unthrottled | Mode::ThrottledShared))
                    .then(|| Throttle::new(rate, start, 0)),
                spare: VecDeque::new(),
                released: Vec::new(),
            }
        })
        .collect();
    // Zipf(1): symbol k (from 0) drawn with weight 1 / (k + 1).
    let weights: Vec<f64> = (0..SYMBOLS).map(|k| 1.0 / (k as f64 + 1.0)).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(SYMBOLS);
    let mut sum = 0.0;
    for weight in &weights {
        sum += weight / total;
        cumulative.push(sum);
    }
    let batches = (0..seconds * PUBLISHES_PER_SECOND)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    let draw = (random.next() >> 11) as f64 / (1u64 << 53) as f64;
                    cumulative.partition_point(|c| *c < draw).min(SYMBOLS - 1) as SymbolId
                })
                .collect()
        })
        .collect();
    Market {
        hub,
        subscribers,
        batches,
        names,
        start,
    }
}

/// [`simulate`] for [`Mode::ThrottledShared`]: on a paused tokio clock (the stage's timer
/// task needs one), stepped by a millisecond; each subscriber runs when its queue wakes it.
fn simulate_shared(market: &mut Market, runtime: &tokio::runtime::Runtime) -> Counts {
    let mut counts = Counts::default();
    let mut cx = Context::from_waker(Waker::noop());
    let start = market.start;
    let gap = Duration::from_secs(1) / PUBLISHES_PER_SECOND;
    let step = Duration::from_millis(1);
    let steps_per_gap = (gap.as_millis() as usize).max(1);
    let rounds = market.batches.len() + PUBLISHES_PER_SECOND as usize;
    let mut id = 0u64;
    for tick in 0..rounds * steps_per_gap {
        let now = start + step * tick as u32;
        runtime.block_on(async {
            tokio::time::advance(now.saturating_duration_since(Instant::now())).await;
            // The stage's timer task releases what is due.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        });
        if tick % steps_per_gap == 0
            && let Some(batch) = market.batches.get(tick / steps_per_gap)
        {
            for symbol in batch {
                id += 1;
                market
                    .hub
                    .publish_event(trade(&market.names, *symbol, id))
                    .expect("a valid trade");
            }
        }
        for subscriber in &mut market.subscribers {
            if subscriber.queue.poll_notified(&mut cx).is_ready() {
                subscriber.run(now, Mode::ThrottledShared, &mut counts);
            }
        }
    }
    counts
}

fn trade(names: &[String], symbol: SymbolId, id: u64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: names[usize::from(symbol)].as_str().into(),
        id,
        venue: "LG".into(),
        price: 227.25,
        size: 100.0,
        time: DateTime::from_timestamp_nanos(1_763_900_000_123_456_789),
        conditions: vec![],
    })
}

/// Publishes every batch, running each subscriber when its queue wakes it or its timer is
/// due, and returns the counts summed over subscribers.
fn simulate(market: &mut Market, mode: Mode, runtime: &tokio::runtime::Runtime) -> Counts {
    if mode == Mode::ThrottledShared {
        return simulate_shared(market, runtime);
    }
    let mut counts = Counts::default();
    let mut cx = Context::from_waker(Waker::noop());
    let start = market.start;
    let gap = Duration::from_secs(1) / PUBLISHES_PER_SECOND;
    let mut id = 0u64;
    let rounds = market.batches.len() + PUBLISHES_PER_SECOND as usize;
    for round in 0..rounds {
        let now = start + gap * round as u32;
        if let Some(batch) = market.batches.get(round) {
            for symbol in batch {
                id += 1;
                market
                    .hub
                    .publish_event(trade(&market.names, *symbol, id))
                    .expect("a valid trade");
            }
        }
        let next = now + gap;
        for subscriber in &mut market.subscribers {
            if subscriber.queue.poll_notified(&mut cx).is_ready()
                || subscriber.deadline(mode).is_some_and(|due| due <= now)
            {
                subscriber.run(now, mode, &mut counts);
            }
            // Timers that fire before the next publish.
            while let Some(due) = subscriber.deadline(mode).filter(|due| *due < next) {
                subscriber.run(due.max(now), mode, &mut counts);
            }
        }
    }
    counts
}

/// A runtime on a paused clock, for the shared stage's timer task (entered while the market
/// is built, so the stage can spawn it).
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

fn throttle(c: &mut Criterion) {
    let modes = [
        Mode::Unthrottled,
        Mode::ThrottledEager,
        Mode::ThrottledDeferred,
        Mode::ThrottledShared,
    ];
    let seconds = 2;
    let runtime = paused_runtime();
    let _entered = runtime.enter();
    if let Ok(only) = std::env::var("THROTTLE_BENCH_ONLY") {
        let mut market = market(
            modes
                .into_iter()
                .find(|mode| format!("{mode:?}") == only)
                .unwrap_or(Mode::Unthrottled),
            seconds,
        );
        match modes.into_iter().find(|mode| format!("{mode:?}") == only) {
            Some(mode) => {
                let counts = simulate(&mut market, mode, &runtime);
                eprintln!("{mode:?}: {counts:?}");
            }
            None => eprintln!("setup only"),
        }
        black_box(&market.subscribers);
        std::process::exit(0);
    }
    eprintln!(
        "per subscriber and second ({SUBSCRIBERS} subscribers, {seconds} s of {PUBLISHES_PER_SECOND} \
         publishes of {BATCH} trades, max_rate=10):"
    );
    for mode in modes {
        let mut market = market(mode, seconds);
        let counts = simulate(&mut market, mode, &runtime);
        let per = (SUBSCRIBERS as u64 * u64::from(seconds)) as f64;
        eprintln!(
            "  {mode:?}: {:.1} wake-ups, {:.1} items drained, {:.1} writes, {:.1} deliveries",
            counts.wakes as f64 / per,
            counts.drained as f64 / per,
            counts.writes as f64 / per,
            counts.deliveries as f64 / per,
        );
    }
    let mut group = c.benchmark_group("throttle");
    group.sample_size(10);
    for mode in modes {
        group.bench_function(format!("{mode:?}_one_simulated_second"), |b| {
            b.iter_batched(
                || market(mode, 1),
                |mut market| black_box(simulate(&mut market, mode, &runtime)),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, throttle);
criterion_main!(benches);
