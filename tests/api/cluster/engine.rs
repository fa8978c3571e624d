//! The Redis engine of `tickgate::cluster` against a real `redis-server`: the shared log, the
//! fencing check, repair after a lost subscription, resets, leases.

use std::sync::Arc;
use std::time::Duration;

use crate::redis_support::RedisServer;
use bytes::Bytes;
use parking_lot::Mutex;
use tickgate::cluster::lease::{hold_lease, try_acquire};
use tickgate::cluster::{ClusterConfig, ClusterNode, ClusterPublishError, SequencedSink};
use tickgate::hub::Feed;
use tickgate::market::{MarketEvent, Trade};
use tickgate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq)]
enum Record {
    Reset {
        feed: Feed,
        epoch: u64,
        next_seq: u64,
        initial: bool,
    },
    Apply {
        feed: Feed,
        epoch: u64,
        seq: u64,
        json: Bytes,
    },
    Seeded(usize),
    Health(bool),
}

#[derive(Default)]
struct RecordingSink {
    records: Mutex<Vec<Record>>,
}

impl SequencedSink for RecordingSink {
    fn reset(&self, feed: Feed, epoch: u64, next_seq: u64, initial: bool) {
        self.records.lock().push(Record::Reset {
            feed,
            epoch,
            next_seq,
            initial,
        });
    }
    fn seed_latest(&self, _epoch: u64, latest: Vec<(u64, Bytes)>) {
        self.records.lock().push(Record::Seeded(latest.len()));
    }
    fn apply(&self, feed: Feed, epoch: u64, seq: u64, json: Bytes) {
        self.records.lock().push(Record::Apply {
            feed,
            epoch,
            seq,
            json,
        });
    }
    fn cluster_health(&self, up: bool, _reason: &str) {
        self.records.lock().push(Record::Health(up));
    }
}

impl RecordingSink {
    fn market_applied(&self) -> Vec<(u64, u64)> {
        self.records
            .lock()
            .iter()
            .filter_map(|record| match record {
                Record::Apply {
                    feed: Feed::Market,
                    epoch,
                    seq,
                    ..
                } => Some((*epoch, *seq)),
                _ => None,
            })
            .collect()
    }

    fn resets(&self, feed: Feed) -> Vec<Record> {
        self.records
            .lock()
            .iter()
            .filter(|record| matches!(record, Record::Reset { feed: f, .. } if *f == feed))
            .cloned()
            .collect()
    }

    fn has(&self, wanted: &Record) -> bool {
        self.records.lock().iter().any(|record| record == wanted)
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&RecordingSink) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.records.lock()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct TestNode {
    node: ClusterNode,
    sink: Arc<RecordingSink>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn config(redis: &RedisServer, node_id: &str, window: usize) -> ClusterConfig {
    ClusterConfig {
        redis_url: redis.url(),
        node_id: node_id.into(),
        lease_ttl: Duration::from_millis(900),
        exchange_silence: Duration::from_millis(450),
        replay_window: window,
    }
}

fn start_node(redis: &RedisServer, node_id: &str, window: usize) -> TestNode {
    let metrics = Arc::new(Metrics::default());
    let node = ClusterNode::new(config(redis, node_id, window), Arc::clone(&metrics))
        .expect("a valid redis url");
    let sink = Arc::new(RecordingSink::default());
    let shutdown = CancellationToken::new();
    node.start(sink.clone(), shutdown.clone());
    TestNode {
        node,
        sink,
        metrics,
        shutdown,
    }
}

async fn synced(node: &TestNode) {
    node.sink
        .wait_for("the first synchronisation", |sink| {
            sink.has(&Record::Health(true))
        })
        .await;
}

fn trade(symbol: &str, id: u64, second: i64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: symbol.into(),
        id,
        venue: "SIM".into(),
        price: 100.0 + id as f64 / 100.0,
        size: 10.0,
        time: chrono::DateTime::from_timestamp(1_800_000_000 + second, 0).expect("valid time"),
        conditions: vec![],
    })
}

fn contiguous(applied: &[(u64, u64)], epoch: u64, from: u64, to: u64) -> bool {
    applied == (from..=to).map(|seq| (epoch, seq)).collect::<Vec<_>>()
}

#[tokio::test]
async fn events_published_on_one_node_reach_every_node_once_in_order_with_the_same_cursor() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    let b = start_node(&redis, "b", 100);
    synced(&a).await;
    synced(&b).await;
    let mut cursors = Vec::new();
    for id in 1..=20 {
        let publisher = if id % 2 == 0 { &a } else { &b };
        cursors.push(
            publisher
                .node
                .publish(&trade("AAPL", id, id as i64), None)
                .await
                .expect("published"),
        );
    }
    let epoch = cursors[0].0;
    assert_eq!(
        cursors,
        (1..=20).map(|seq| (epoch, seq)).collect::<Vec<_>>(),
        "one sequence for all nodes"
    );
    for node in [&a, &b] {
        node.sink
            .wait_for("all twenty events", |sink| {
                sink.market_applied().len() >= 20
            })
            .await;
        assert!(contiguous(&node.sink.market_applied(), epoch, 1, 20));
        assert_eq!(
            node.sink.resets(Feed::Market),
            vec![Record::Reset {
                feed: Feed::Market,
                epoch,
                next_seq: 1,
                initial: true
            }]
        );
    }
}

#[tokio::test]
async fn a_node_that_starts_late_reads_the_retained_window_and_the_older_latest_values() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 5);
    synced(&a).await;
    a.node
        .publish(&trade("MSFT", 1, 1), None)
        .await
        .expect("published");
    for id in 2..=10 {
        a.node
            .publish(&trade("AAPL", id, id as i64), None)
            .await
            .expect("published");
    }
    let late = start_node(&redis, "late", 5);
    synced(&late).await;
    let epoch = a
        .node
        .read(Feed::Market, 0, false)
        .await
        .expect("read")
        .read
        .epoch;
    assert!(contiguous(&late.sink.market_applied(), epoch, 6, 10));
    assert!(late.sink.has(&Record::Reset {
        feed: Feed::Market,
        epoch,
        next_seq: 6,
        initial: true
    }));
    // MSFT's trade (seq 1) is older than the window; AAPL's latest (seq 10) is in it.
    assert!(late.sink.has(&Record::Seeded(1)));
}

#[tokio::test]
async fn time_going_backwards_is_refused_across_nodes_without_consuming_a_sequence() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    let b = start_node(&redis, "b", 100);
    let (epoch, first) = a
        .node
        .publish(&trade("AAPL", 1, 50), None)
        .await
        .expect("published");
    let refused = b.node.publish(&trade("AAPL", 2, 49), None).await;
    assert_eq!(refused, Err(ClusterPublishError::TimeWentBackwards));
    // Another symbol, or the same time, is fine; the sequence did not move for the refusal.
    let next = b
        .node
        .publish(&trade("MSFT", 3, 10), None)
        .await
        .expect("published");
    assert_eq!(next, (epoch, first + 1));
    b.node
        .publish(&trade("AAPL", 4, 50), None)
        .await
        .expect("the same time is not backwards");
}

#[tokio::test]
async fn a_publish_under_a_lease_that_was_taken_over_is_fenced_and_fires_lost() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    let b = start_node(&redis, "b", 100);
    let shutdown = CancellationToken::new();
    let ticket = try_acquire(&a.node, "simulator", &shutdown)
        .await
        .expect("redis answers")
        .expect("a free lease is taken");
    assert!(
        try_acquire(&b.node, "simulator", &shutdown)
            .await
            .expect("redis answers")
            .is_none(),
        "a held lease is not taken twice"
    );
    a.node
        .publish(&trade("AAPL", 1, 1), Some(&ticket))
        .await
        .expect("the holder publishes");
    // Nobody renews `ticket` (no background task here): after its time to live, B takes it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let taken = try_acquire(&b.node, "simulator", &shutdown)
        .await
        .expect("redis answers")
        .expect("an expired lease is taken");
    assert!(taken.token() > ticket.token(), "fencing tokens only rise");
    let stale = a.node.publish(&trade("AAPL", 2, 2), Some(&ticket)).await;
    assert_eq!(stale, Err(ClusterPublishError::Fenced));
    assert!(ticket.is_lost());
    // The same refusal through the fire-and-forget path.
    a.node
        .submit(&trade("AAPL", 3, 3), Some(&ticket))
        .expect("queued");
    b.node
        .publish(&trade("AAPL", 4, 4), Some(&taken))
        .await
        .expect("the new holder publishes");
    let read = b.node.read(Feed::Market, 0, false).await.expect("read");
    assert_eq!(
        read.read.top, 2,
        "only the two legitimate events are in the log"
    );
}

#[tokio::test]
async fn a_held_lease_is_renewed_past_its_ttl_and_released_on_shutdown() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    let b = start_node(&redis, "b", 100);
    let shutdown_a = CancellationToken::new();
    let ticket = hold_lease(&a.node, "poller", &shutdown_a)
        .await
        .expect("taken");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!ticket.is_lost(), "renewed in the background");
    let quiet = CancellationToken::new();
    assert!(
        try_acquire(&b.node, "poller", &quiet)
            .await
            .expect("redis answers")
            .is_none()
    );
    shutdown_a.cancel();
    tokio::time::timeout(Duration::from_secs(2), ticket.lost().cancelled())
        .await
        .expect("lost fires on shutdown");
    // Released, not expired: B takes it at once.
    let started = tokio::time::Instant::now();
    let waiting = CancellationToken::new();
    let taken = tokio::time::timeout(
        Duration::from_secs(2),
        hold_lease(&b.node, "poller", &waiting),
    )
    .await
    .expect("taken in time")
    .expect("taken");
    assert!(started.elapsed() < Duration::from_millis(600));
    assert!(taken.token() > ticket.token());
    waiting.cancel();
}

#[tokio::test]
async fn a_waiting_node_takes_a_dead_holders_lease_just_after_it_expires() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    let b = start_node(&redis, "b", 100);
    let ttl = config(&redis, "a", 100).lease_ttl;
    let quiet = CancellationToken::new();
    // A takes the lease and dies at once (nobody renews it): it expires `ttl` after this.
    let taken_by_a = tokio::time::Instant::now();
    let dead = try_acquire(&a.node, "poller", &quiet)
        .await
        .expect("redis answers")
        .expect("a free lease is taken");
    // B starts waiting out of phase with the expiry: trying every renewal interval (300 ms)
    // from here, it would come 250 ms after the expiry.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let waiting = CancellationToken::new();
    let taken = tokio::time::timeout(
        Duration::from_secs(3),
        hold_lease(&b.node, "poller", &waiting),
    )
    .await
    .expect("taken in time")
    .expect("taken");
    let late = taken_by_a.elapsed().saturating_sub(ttl);
    assert!(
        late < Duration::from_millis(120),
        "taken {late:?} after the expiry"
    );
    assert!(taken.token() > dead.token());
    waiting.cancel();
}

#[tokio::test]
async fn a_killed_subscription_is_repaired_from_the_stream_without_a_hole() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 1000);
    let b = start_node(&redis, "b", 1000);
    synced(&a).await;
    synced(&b).await;
    let mut epoch = 0;
    for id in 1..=200 {
        if id == 50 {
            let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            assert!(
                killed
                    .as_deref()
                    .is_some_and(|n| n.trim().parse::<u32>().unwrap_or(0) >= 2),
                "{killed:?}"
            );
        }
        epoch = a
            .node
            .publish(&trade("AAPL", id, id as i64), None)
            .await
            .expect("published")
            .0;
    }
    for node in [&a, &b] {
        node.sink
            .wait_for("all 200 events", |sink| sink.market_applied().len() >= 200)
            .await;
        assert!(contiguous(&node.sink.market_applied(), epoch, 1, 200));
        assert_eq!(
            node.sink.resets(Feed::Market).len(),
            1,
            "only the initial reset"
        );
        let text = node.metrics.render();
        assert!(
            text.contains("tickgate_cluster_reconnects_total 1"),
            "{text}"
        );
        let repaired: f64 = text
            .lines()
            .find_map(|line| {
                line.strip_prefix("tickgate_cluster_repaired_events_total{feed=\"market\"} ")
            })
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0);
        assert!(
            repaired > 0.0,
            "events missed on pub/sub came from the stream: {text}"
        );
    }
}

#[tokio::test]
async fn a_hole_trimmed_out_of_the_stream_is_an_explicit_reset_in_the_same_epoch() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 3);
    let b = start_node(&redis, "b", 3);
    synced(&a).await;
    synced(&b).await;
    let (epoch, _) = a
        .node
        .publish(&trade("AAPL", 1, 1), None)
        .await
        .expect("published");
    b.sink
        .wait_for("the first event", |sink| sink.market_applied().len() == 1)
        .await;
    // Subscribers come back after a backoff of 100 ms; ten events pass long before that and
    // the stream keeps only three of them.
    redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("redis-cli runs");
    for id in 2..=11 {
        a.node
            .publish(&trade("AAPL", id, id as i64), None)
            .await
            .expect("published");
    }
    for node in [&a, &b] {
        node.sink
            .wait_for("the events after the hole", |sink| {
                sink.market_applied().contains(&(epoch, 11))
            })
            .await;
        assert_eq!(
            node.sink.resets(Feed::Market).last(),
            Some(&Record::Reset {
                feed: Feed::Market,
                epoch,
                next_seq: 9,
                initial: false
            })
        );
        let applied = node.sink.market_applied();
        assert_eq!(
            applied,
            vec![(epoch, 1), (epoch, 9), (epoch, 10), (epoch, 11)]
        );
        assert!(
            node.metrics
                .render()
                .contains("tickgate_cluster_resets_total{feed=\"market\"} 1"),
            "the reset is counted"
        );
    }
}

#[tokio::test]
async fn a_redis_restart_without_persistence_resets_every_node_under_a_new_epoch() {
    let mut redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    synced(&a).await;
    let (old_epoch, _) = a
        .node
        .publish(&trade("AAPL", 1, 1), None)
        .await
        .expect("published");
    redis.restart();
    a.sink
        .wait_for("down, then up again", |sink| {
            let records = sink.records.lock();
            let down = records.iter().position(|r| *r == Record::Health(false));
            down.is_some_and(|at| records[at..].contains(&Record::Health(true)))
        })
        .await;
    assert_eq!(a.node.health(), Ok(()), "healthy again after the reconnect");
    let resets = a.sink.resets(Feed::Market);
    let Some(Record::Reset {
        epoch: new_epoch,
        next_seq: 1,
        initial: false,
        ..
    }) = resets.last()
    else {
        panic!("an explicit reset after the restart: {resets:?}");
    };
    assert_ne!(*new_epoch, old_epoch);
    let (epoch, seq) = a
        .node
        .publish(&trade("AAPL", 2, 2), None)
        .await
        .expect("published after the restart");
    assert_eq!((epoch, seq), (*new_epoch, 1));
    a.sink
        .wait_for("the new epoch's first event", |sink| {
            sink.market_applied().contains(&(epoch, 1))
        })
        .await;
}

#[tokio::test]
async fn a_log_that_went_back_in_time_gets_a_new_epoch_instead_of_reissuing_numbers() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    synced(&a).await;
    let mut epoch = 0;
    for id in 1..=5 {
        epoch = a
            .node
            .publish(&trade("AAPL", id, id as i64), None)
            .await
            .expect("published")
            .0;
    }
    a.sink
        .wait_for("five events", |sink| sink.market_applied().len() == 5)
        .await;
    // What a Redis restored from an older append-only file looks like: the last two are gone.
    redis
        .cli(&["HSET", "tickgate:feed:market:meta", "s", "3"])
        .expect("redis-cli");
    redis
        .cli(&["XTRIM", "tickgate:feed:market:stream", "MAXLEN", "3"])
        .expect("redis-cli");
    redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("redis-cli");
    a.sink
        .wait_for("a reset under a new epoch", |sink| {
            sink.resets(Feed::Market)
                .iter()
                .any(|r| matches!(r, Record::Reset { epoch: e, initial: false, .. } if *e != epoch))
        })
        .await;
    let (new_epoch, seq) = a
        .node
        .publish(&trade("AAPL", 6, 6), None)
        .await
        .expect("published");
    assert_ne!(new_epoch, epoch);
    assert_eq!(seq, 1, "the new log starts afresh");
}

#[tokio::test]
async fn a_new_epoch_seen_on_one_feed_moves_every_feed_to_it() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a", 100);
    synced(&a).await;
    a.node
        .publish(&trade("AAPL", 1, 1), None)
        .await
        .expect("published");
    // What another node's epoch change looks like from here: the next market event comes
    // under epoch 999, and the quiet news feed must follow without waiting for news.
    redis
        .cli(&["SET", "tickgate:epoch", "999"])
        .expect("redis-cli");
    let (epoch, seq) = a
        .node
        .publish(&trade("AAPL", 2, 2), None)
        .await
        .expect("published");
    assert_eq!((epoch, seq), (999, 1));
    a.sink
        .wait_for("the news feed under the new epoch", |sink| {
            sink.has(&Record::Reset {
                feed: Feed::News,
                epoch: 999,
                next_seq: 1,
                initial: false,
            })
        })
        .await;
    assert!(a.sink.market_applied().contains(&(999, 1)));
}

#[tokio::test]
async fn a_redis_restart_with_the_append_only_file_continues_without_a_reset() {
    let mut redis = RedisServer::start_persistent();
    let a = start_node(&redis, "a", 100);
    synced(&a).await;
    let (epoch, _) = a
        .node
        .publish(&trade("AAPL", 1, 1), None)
        .await
        .expect("published");
    redis.restart();
    a.sink
        .wait_for("down, then up again", |sink| {
            let records = sink.records.lock();
            let down = records.iter().position(|r| *r == Record::Health(false));
            down.is_some_and(|at| records[at..].contains(&Record::Health(true)))
        })
        .await;
    assert_eq!(
        a.sink.resets(Feed::Market).len(),
        1,
        "only the initial reset"
    );
    let next = a
        .node
        .publish(&trade("AAPL", 2, 2), None)
        .await
        .expect("published after the restart");
    assert_eq!(next, (epoch, 2));
}
