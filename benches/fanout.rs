//! Criterion benches of the fan-out hot paths: encoding one tick into its SSE frame, framing
//! the shared JSON for a WebSocket, and fanning one tick out to 1k and 10k subscribers.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use chrono::DateTime;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tickgate::hub::{Delivery, Feed, Filter, Hub, HubSettings, SubscriberQueue};
use tickgate::market::{MarketEvent, SymbolUniverse, Trade};
use tickgate::metrics::Metrics;
use tickgate::transport::ws::wire::put_text;

fn hub(capacity: usize) -> Hub {
    Hub::new(
        SymbolUniverse::new([
            "AAPL", "MSFT", "GOOGL", "AMZN", "NVDA", "TSLA", "META", "SPY",
        ]),
        HubSettings {
            replay_window: 10_000,
            subscriber_queue_capacity: capacity,
            ..HubSettings::default()
        },
        Arc::new(Metrics::default()),
        1_763_900_000_000,
    )
}

/// A trade like the load generator's; a fixed time keeps per-symbol time order valid.
fn trade(id: u64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: "AAPL".into(),
        id,
        venue: "LG".into(),
        price: 227.25,
        size: 100.0,
        time: DateTime::from_timestamp_nanos(1_763_900_000_123_456_789),
        conditions: vec![],
    })
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let hub = hub(1024);
    let mut id = 0u64;
    group.bench_function("publish_event_sse_frame", |b| {
        b.iter(|| {
            id += 1;
            let published = hub.publish_event(trade(id)).expect("valid trade");
            black_box(published.entry.sse.len())
        })
    });
    let published = hub.publish_event(trade(0)).expect("valid trade");
    // What the WebSocket fast path does per delivery: the hub's shared `[json]` behind a frame
    // header in the connection's reused outbox, handed to the dispatcher as one chunk.
    let mut outbox = bytes::BytesMut::new();
    group.bench_function("websocket_frame_from_shared_json", |b| {
        b.iter(|| {
            put_text(&mut outbox, black_box(&published.entry.ws));
            black_box(outbox.split().freeze())
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1_000usize, 10_000] {
        let hub = hub(1024);
        let queues: Vec<Arc<SubscriberQueue>> = (0..subscribers)
            .map(|_| {
                let queue = SubscriberQueue::with_capacity(1024);
                hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
                queue
            })
            .collect();
        let mut spare: VecDeque<Delivery> = VecDeque::with_capacity(16);
        let mut id = 0u64;
        group.throughput(Throughput::Elements(subscribers as u64));
        // One publish plus every connection draining its queue: the whole per-message cost
        // of fan-out short of the socket write.
        group.bench_function(format!("publish_and_drain_{subscribers}"), |b| {
            b.iter(|| {
                id += 1;
                hub.publish_event(trade(id)).expect("valid trade");
                for queue in &queues {
                    queue.drain_into(&mut spare);
                    spare.clear();
                }
            })
        });
        // The publish alone (queues are emptied outside the timed part).
        group.bench_function(format!("publish_only_{subscribers}"), |b| {
            b.iter_batched(
                || {
                    for queue in &queues {
                        queue.drain_into(&mut spare);
                        spare.clear();
                    }
                    id += 1;
                    trade(id)
                },
                |event| hub.publish_event(event).expect("valid trade"),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, encode, fanout);
criterion_main!(benches);
