//! The node side of cluster trading without Redis: delivery of trade updates in `seq` order
//! with repair from the store, and which exchange's messages count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::*;
use crate::cluster::node::{ClusterConfig, ClusterNode};
use crate::cluster::trading::remote::BookMirror;
use crate::metrics::Metrics;
use crate::store::{Store, StoreSettings};
use crate::trading::api::{OrderRequest, TradeUpdate, TradingApi};
use crate::trading::engine::Engine;
use crate::trading::exchange::engine_settings;
use crate::trading::persist::Persistence;
use crate::trading::{ExchangeHandle, config::TradingSettings};

/// The events channel's message (as bytes) for `items`.
fn payload(token: u64, items: &[Announcement], alive: bool) -> Vec<u8> {
    super::super::relay::events_payload(token, items, alive)
        .expect("encodable")
        .into_bytes()
}

/// A store holding `count` real trade updates of alice (seq 1..=count), made by an exchange.
async fn store_with_updates(dir: &std::path::Path, count: usize) -> Store {
    let settings = StoreSettings {
        enabled: true,
        data_dir: dir.to_path_buf(),
        ..StoreSettings::default()
    };
    let store = Store::open(&settings).expect("store").store;
    let trading = TradingSettings::default();
    let engine = Engine::new(
        engine_settings(&trading, &Default::default()),
        crate::market::SymbolUniverse::new(["AAPL"]),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let (exchange, tasks) = ExchangeHandle::new(engine, None, 16, 16, 16, stop.clone());
    tasks
        .with_persistence(Arc::new(Persistence::new(Arc::clone(&store.trading))))
        .spawn();
    for number in 0..count {
        let request = OrderRequest {
            symbol: Some("AAPL".into()),
            qty: Some("1".into()),
            side: Some("buy".into()),
            order_type: Some("limit".into()),
            time_in_force: Some("gtc".into()),
            limit_price: Some("1.00".into()),
            client_order_id: Some(format!("o{number}")),
            ..OrderRequest::default()
        };
        exchange.submit("alice", request).await.expect("stored");
    }
    stop.cancel();
    store
}

fn shared(store: &Store) -> Shared {
    let config = ClusterConfig {
        // Never connected: these tests call the listener's functions directly.
        redis_url: "redis://127.0.0.1:1/".into(),
        node_id: "n1".into(),
        lease_ttl: Duration::from_secs(1),
        exchange_silence: Duration::from_millis(500),
        replay_window: 10,
    };
    Shared {
        node: ClusterNode::new(config, Arc::new(Metrics::default())).expect("node"),
        store: Arc::clone(&store.trading),
        pending: Mutex::new(HashMap::new()),
        users: Mutex::new(HashMap::new()),
        books: HashMap::new(),
        user_channel_capacity: 64,
        timeout: Duration::from_secs(1),
        started_ms: 0,
        counter: AtomicU64::new(0),
        local: Default::default(),
        runtime: tokio::runtime::Handle::current(),
    }
}

async fn stored(store: &Store) -> Vec<TradeUpdate> {
    store
        .trading
        .updates_between("alice", 0, u64::MAX)
        .await
        .expect("read")
}

fn event(update: &TradeUpdate) -> UserEvent {
    UserEvent::TradeUpdate(Box::new(update.clone()))
}

fn received(receiver: &mut broadcast::Receiver<UserEvent>) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(UserEvent::TradeUpdate(update)) = receiver.try_recv() {
        seqs.push(update.seq);
    }
    seqs
}

#[tokio::test]
async fn a_gap_in_live_updates_is_filled_from_the_store_and_a_repeat_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 4).await;
    let updates = stored(&store).await;
    assert_eq!(updates.len(), 4);
    let shared = shared(&store);
    let mut receiver = shared.with_user("alice", |mirror| mirror.events.subscribe());

    deliver(&shared, "alice", event(&updates[0])).await;
    deliver(&shared, "alice", event(&updates[0])).await;
    // 2 and 3 were lost on the way: 4 brings them back from the store first.
    deliver(&shared, "alice", event(&updates[3])).await;
    deliver(&shared, "alice", event(&updates[2])).await;
    assert_eq!(received(&mut receiver), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn updates_of_a_user_nobody_on_the_node_watches_are_not_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 1).await;
    let updates = stored(&store).await;
    let shared = shared(&store);
    deliver(&shared, "alice", event(&updates[0])).await;
    assert!(shared.users.lock().is_empty());
}

#[tokio::test]
async fn a_former_exchanges_messages_are_ignored_and_status_follows_the_heartbeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 2).await;
    let updates = stored(&store).await;
    let shared = shared(&store);
    let mut receiver = shared.with_user("alice", |mirror| mirror.events.subscribe());
    let told = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&told);
    let status: TradingStatus = Arc::new(move |code, _| seen.lock().push(code));
    let mut watch = Watch::new();
    let user_item = |update: &TradeUpdate| Announcement::User {
        user: "alice".into(),
        event: event(update),
    };
    let message = |token, items: Vec<Announcement>| payload(token, &items, false);
    on_events(
        &shared,
        &status,
        &mut watch,
        &message(9, vec![user_item(&updates[0])]),
    )
    .await;
    // Token 8 is a former exchange that has not noticed yet: nothing of it is delivered.
    on_events(
        &shared,
        &status,
        &mut watch,
        &message(8, vec![user_item(&updates[1])]),
    )
    .await;
    assert_eq!(received(&mut receiver), vec![1]);
    assert_eq!(watch.token, 9);
    // The first heartbeat says nothing to clients; after an outage the next one says "back".
    assert!(told.lock().is_empty());
    watch.available = Some(false);
    on_events(
        &shared,
        &status,
        &mut watch,
        &message(10, vec![user_item(&updates[1])]),
    )
    .await;
    assert_eq!(*told.lock(), vec!["trading_available"]);
    assert_eq!(received(&mut receiver), vec![2]);
}

#[tokio::test]
async fn a_book_snapshot_replaces_the_nodes_copy_and_reaches_subscribers_only_when_it_differs() {
    use crate::trading::api::BookUpdate;
    use crate::trading::exchange::BookSlot;
    use rust_decimal_macros::dec;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 0).await;
    let mut shared = shared(&store);
    let book = |bid, ask, snapshot| BookUpdate {
        symbol: "AAPL".into(),
        snapshot,
        bids: vec![(bid, dec!(100))],
        asks: vec![(ask, dec!(100))],
        t: chrono::Utc::now(),
    };
    // The node's copy follows a former exchange's book.
    shared.books.insert(
        "AAPL".into(),
        Mutex::new(BookMirror::new(BookSlot {
            snapshot: book(dec!(400.00), dec!(400.02), true),
            updates: broadcast::channel(16).0,
        })),
    );
    let remote = RemoteExchange {
        shared: Arc::new(shared),
    };
    let shared = &remote.shared;
    let (_, mut updates) = remote.book("AAPL").expect("book");
    let status: TradingStatus = Arc::new(|_, _| {});
    let mut watch = Watch::new();
    let announced = book(dec!(150.10), dec!(150.12), true);
    let message = |token| {
        payload(
            token,
            &[Announcement::BookSnapshot {
                snapshot: announced.clone(),
            }],
            false,
        )
    };
    on_events(shared, &status, &mut watch, &message(3)).await;
    let sent = updates
        .try_recv()
        .expect("the new book goes to subscribers");
    assert!(sent.snapshot);
    assert_eq!(
        (sent.bids, sent.asks),
        (announced.bids.clone(), announced.asks.clone())
    );
    let (copy, _) = remote.book("AAPL").expect("book");
    assert_eq!(
        (copy.bids, copy.asks),
        (announced.bids.clone(), announced.asks.clone())
    );
    // The same book announced again (another node asked for it) sends nothing.
    on_events(shared, &status, &mut watch, &message(3)).await;
    assert!(updates.try_recv().is_err());
    // A former exchange's snapshot is ignored like the rest of its messages.
    let stale = payload(
        2,
        &[Announcement::BookSnapshot {
            snapshot: book(dec!(1.00), dec!(1.02), true),
        }],
        false,
    );
    on_events(shared, &status, &mut watch, &stale).await;
    assert!(updates.try_recv().is_err());
}

#[tokio::test]
async fn a_halt_and_its_resume_are_told_once_each_and_a_new_term_ends_a_halt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 0).await;
    let shared = shared(&store);
    let told = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&told);
    let status: TradingStatus = Arc::new(move |code, message: &str| {
        seen.lock().push((code, message.to_owned()));
    });
    let mut watch = Watch::new();
    let trading = |token, halted: bool| {
        payload(
            token,
            &[Announcement::Trading {
                halted,
                message: format!("halted={halted}"),
            }],
            false,
        )
    };
    on_events(&shared, &status, &mut watch, &trading(5, true)).await;
    // Said twice (a probe's repeat, a duplicate): told once.
    on_events(&shared, &status, &mut watch, &trading(5, true)).await;
    on_events(&shared, &status, &mut watch, &trading(5, false)).await;
    on_events(&shared, &status, &mut watch, &trading(5, false)).await;
    assert_eq!(
        *told.lock(),
        vec![
            ("trading_halted", "halted=true".to_owned()),
            ("trading_resumed", "halted=false".to_owned()),
        ]
    );
    told.lock().clear();
    // Halted again, then the halted exchange loses its lease: the next term's first message
    // (a heartbeat) ends the halt, since the new exchange could write its fence.
    on_events(&shared, &status, &mut watch, &trading(5, true)).await;
    let heartbeat = payload(6, &[], true);
    on_events(&shared, &status, &mut watch, &heartbeat).await;
    on_events(&shared, &status, &mut watch, &heartbeat).await;
    let codes: Vec<&str> = told.lock().iter().map(|(code, _)| *code).collect();
    assert_eq!(codes, vec!["trading_halted", "trading_resumed"]);
    // A former exchange's halt is not believed.
    on_events(&shared, &status, &mut watch, &trading(5, true)).await;
    assert!(!watch.halted);
    assert_eq!(told.lock().len(), 2);
}

#[tokio::test]
async fn a_book_change_waits_undecoded_until_someone_subscribes_and_then_deltas_flow() {
    use crate::trading::api::BookUpdate;
    use crate::trading::exchange::BookSlot;
    use rust_decimal_macros::dec;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 0).await;
    let mut shared = shared(&store);
    let book = |bid, snapshot| BookUpdate {
        symbol: "AAPL".into(),
        snapshot,
        bids: vec![(bid, dec!(100))],
        asks: vec![(dec!(500.00), dec!(100))],
        t: chrono::Utc::now(),
    };
    shared.books.insert(
        "AAPL".into(),
        Mutex::new(BookMirror::new(BookSlot {
            snapshot: book(dec!(100.00), true),
            updates: broadcast::channel(16).0,
        })),
    );
    let remote = RemoteExchange {
        shared: Arc::new(shared),
    };
    let shared = &remote.shared;
    let status: TradingStatus = Arc::new(|_, _| {});
    let mut watch = Watch::new();
    let change = |bid| Announcement::Book {
        snapshot: book(bid, true),
        delta: book(bid, false),
    };
    // Nobody subscribes on this node: two changes are kept, the newest undecoded.
    for bid in [dec!(101.00), dec!(102.00)] {
        on_events(
            shared,
            &status,
            &mut watch,
            &payload(1, &[change(bid)], false),
        )
        .await;
    }
    let held = |shared: &Shared| shared.books["AAPL"].lock().undecoded.is_some();
    assert!(held(shared));
    assert_eq!(
        shared.books["AAPL"].lock().slot.snapshot.bids[0].0,
        dec!(100.00)
    );
    // A subscriber gets the newest book, then every delta after it.
    let (first, mut deltas) = remote.book("aapl").expect("book");
    assert_eq!(first.bids[0].0, dec!(102.00));
    assert!(!held(shared));
    assert!(deltas.try_recv().is_err());
    on_events(
        shared,
        &status,
        &mut watch,
        &payload(1, &[change(dec!(103.00))], false),
    )
    .await;
    let delta = deltas.try_recv().expect("the delta reaches the subscriber");
    assert!(!delta.snapshot);
    assert_eq!(delta.bids[0].0, dec!(103.00));
    assert!(!held(shared));
    // The subscriber gone, changes wait undecoded again; a whole book replaces them.
    drop(deltas);
    on_events(
        shared,
        &status,
        &mut watch,
        &payload(1, &[change(dec!(104.00))], false),
    )
    .await;
    assert!(held(shared));
    let whole = Announcement::BookSnapshot {
        snapshot: book(dec!(105.00), true),
    };
    on_events(shared, &status, &mut watch, &payload(1, &[whole], false)).await;
    assert!(!held(shared));
    let (now, _) = remote.book("AAPL").expect("book");
    assert_eq!(now.bids[0].0, dec!(105.00));
}

#[tokio::test]
async fn a_users_announcements_are_decoded_only_on_a_node_that_watches_the_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 1).await;
    let updates = stored(&store).await;
    let shared = shared(&store);
    let status: TradingStatus = Arc::new(|_, _| {});
    let mut watch = Watch::new();
    let mut receiver = shared.with_user("alice", |mirror| mirror.events.subscribe());
    let bumps = shared.with_user("alice", |mirror| mirror.portfolio.subscribe());
    let items = [
        Announcement::User {
            user: "alice".into(),
            event: event(&updates[0]),
        },
        Announcement::Portfolio {
            user: "alice".into(),
        },
    ];
    // Headed as bob's, whom nobody here watches: the bodies are not even decoded, so alice
    // (whose they really are) gets nothing, and nothing of bob is kept.
    let bodies: Vec<String> = items
        .iter()
        .map(|item| serde_json::to_string(item).expect("encodable"))
        .collect();
    let misheaded = format!(
        r#"{{"token":1,"items":[{{"about":{{"user":"bob"}},"body":{}}},{{"about":{{"user":"bob"}},"body":{}}}]}}"#,
        bodies[0], bodies[1]
    );
    on_events(&shared, &status, &mut watch, misheaded.as_bytes()).await;
    assert_eq!(watch.token, 1);
    assert!(received(&mut receiver).is_empty());
    assert!(!bumps.has_changed().expect("open"));
    assert!(!shared.users.lock().contains_key("bob"));
    // Headed as alice's, they are decoded and delivered.
    on_events(&shared, &status, &mut watch, &payload(1, &items, false)).await;
    assert_eq!(received(&mut receiver), vec![1]);
    assert!(bumps.has_changed().expect("open"));
}

#[test]
fn a_silence_is_the_exchanges_only_when_the_node_was_listening_on_time() {
    let rule = SilenceRule {
        limit: Duration::from_millis(1000),
        heartbeat: Duration::from_millis(250),
    };
    let heard = tokio::time::Instant::now();
    let due = heard + rule.limit;
    // Heard again since the alarm was set: nothing to say.
    assert_eq!(
        rule.verdict(heard + Duration::from_millis(500), due, due),
        Verdict::Heard
    );
    // The alarm went off on time (a little late is normal): the exchange is silent.
    let now = due + Duration::from_millis(100);
    assert_eq!(rule.verdict(heard, due, now), Verdict::Silent);
    // A heartbeat late or more: this node was stalled; two more heartbeats from now.
    let now = due + Duration::from_millis(400);
    assert_eq!(
        rule.verdict(heard, due, now),
        Verdict::Stalled {
            last_heard: now + Duration::from_millis(500) - rule.limit
        }
    );
}

/// A requester of command `id` waiting on `shared`, as `RemoteExchange::call` registers one.
fn waiting(
    shared: &Shared,
    id: &str,
) -> tokio::sync::oneshot::Receiver<crate::cluster::trading::remote::Delivered> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    shared.pending.lock().insert(id.to_owned(), sender);
    receiver
}

fn answered(
    receiver: &mut tokio::sync::oneshot::Receiver<crate::cluster::trading::remote::Delivered>,
) -> Option<TradingReply> {
    receiver.try_recv().ok().map(|(reply, _)| reply)
}

#[tokio::test]
async fn a_batch_of_replies_answers_each_waiting_requester_once_and_drops_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 0).await;
    let shared = shared(&store);
    let mut first = waiting(&shared, "n1-0-1");
    let mut second = waiting(&shared, "n1-0-2");
    // The second reply does not decode: its requester is told so, the others are not hurt;
    // nobody waits for the third any more (it timed out).
    let payload = br#"{"replies":[
        {"id":"n1-0-1","reply":{"kind":"announced"}},
        {"id":"n1-0-2","reply":{"kind":"no such kind"}},
        {"id":"n1-0-3","reply":{"kind":"announced"}}]}"#;
    on_replies(&shared, payload);
    assert_eq!(answered(&mut first), Some(TradingReply::Announced));
    let Some(TradingReply::Error(error)) = answered(&mut second) else {
        panic!("the undecodable reply is an error");
    };
    assert!(error.message.contains("could not be read"), "{error:?}");
    assert!(shared.pending.lock().is_empty());
    // The same batch again (a duplicate) answers nobody twice.
    on_replies(&shared, payload);
    assert!(shared.pending.lock().is_empty());
}

#[tokio::test]
async fn a_reply_of_the_previous_release_still_answers_its_requester() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_with_updates(dir.path(), 0).await;
    let shared = shared(&store);
    let mut requester = waiting(&shared, "n1-0-1");
    // What an exchange of the release before reply batches publishes: the reply as a string.
    on_replies(
        &shared,
        br#"{"id":"n1-0-1","reply":"{\"kind\":\"announced\"}"}"#,
    );
    assert_eq!(answered(&mut requester), Some(TradingReply::Announced));
}
