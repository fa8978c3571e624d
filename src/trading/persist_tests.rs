//! Tests of the event log: stored forms, batches, the rebuild, and property tests of replay.

mod rebuild {
    use super::super::*;
    use crate::market::SymbolUniverse;
    use crate::trading::api::{OrderQuery, OrderRef, OrderRequest, ReplaceRequest};

    pub(super) fn settings_for_tests() -> crate::trading::engine::EngineSettings {
        let settings = crate::settings::Settings::default();
        crate::trading::exchange::engine_settings(
            &settings.trading,
            &settings.simulator.initial_prices,
        )
    }
    use rust_decimal_macros::dec;

    fn request(side: &str, order_type: &str, qty: &str, price: Option<&str>) -> OrderRequest {
        OrderRequest {
            symbol: Some("AAPL".into()),
            qty: Some(qty.into()),
            side: Some(side.into()),
            order_type: Some(order_type.into()),
            time_in_force: Some("gtc".into()),
            limit_price: price.filter(|_| order_type != "stop").map(String::from),
            stop_price: price.filter(|_| order_type == "stop").map(String::from),
            ..OrderRequest::default()
        }
    }

    fn new_engine() -> Engine {
        let mut settings = settings_for_tests();
        settings.commission_per_share = dec!(0.005);
        Engine::new(settings, SymbolUniverse::new(["AAPL", "MSFT"]))
    }

    #[test]
    fn replaying_the_stored_events_rebuilds_accounts_positions_and_orders_exactly() {
        let mut engine = new_engine();
        let mut outs: Vec<Outcome> = Vec::new();
        let now = Utc::now();
        let mut step = |engine: &mut Engine, f: &mut dyn FnMut(&mut Engine, &mut Outcome)| {
            let mut out = Outcome::default();
            f(engine, &mut out);
            outs.push(out);
        };
        for user in ["ann", "bob"] {
            step(&mut engine, &mut |e, out| {
                e.submit(user, &request("buy", "market", "7", None), now, out)
                    .expect("market buy");
            });
            step(&mut engine, &mut |e, out| {
                e.submit(user, &request("sell", "market", "3", None), now, out)
                    .expect("market sell");
            });
            step(&mut engine, &mut |e, out| {
                e.submit(user, &request("buy", "limit", "5", Some("90.00")), now, out)
                    .expect("resting limit");
            });
            step(&mut engine, &mut |e, out| {
                e.submit(user, &request("sell", "stop", "2", Some("80.00")), now, out)
                    .expect("stop");
            });
        }
        let ann_limit = engine
            .orders("ann", OrderQuery::Open)
            .iter()
            .find(|o| o.limit_price.is_some())
            .expect("ann's limit")
            .id
            .clone();
        step(&mut engine, &mut |e, out| {
            e.replace(
                "ann",
                &OrderRef::Id(ann_limit.clone()),
                &ReplaceRequest {
                    qty: Some("6".into()),
                    limit_price: Some("91.00".into()),
                    ..ReplaceRequest::default()
                },
                now,
                out,
            )
            .expect("replace");
        });
        let bob_open = engine.orders("bob", OrderQuery::Open);
        let bob_limit = bob_open
            .iter()
            .find(|o| o.limit_price.is_some())
            .expect("bob's limit")
            .id
            .clone();
        step(&mut engine, &mut |e, out| {
            e.cancel("bob", &OrderRef::Id(bob_limit.clone()), now, out)
                .expect("cancel");
        });
        // The market falls through the limits and the stops: fills driven by market data.
        step(&mut engine, &mut |e, out| {
            e.on_trade("AAPL", dec!(79.00), dec!(10000), now, out);
        });

        for user in ["ann", "bob"] {
            assert!(
                engine.orders(user, OrderQuery::Open).is_empty(),
                "the market filled {user}'s resting orders"
            );
        }
        let refs: Vec<&Outcome> = outs.iter().collect();
        let batch = batch_for_steps(&engine, &refs).expect("batch");
        assert!(batch.events.iter().all(|e| !e.contains("mark_moved")));
        assert!(!batch.fills.is_empty());
        let state = TradingState {
            events: batch.events.clone(),
            accounts: batch.accounts.clone(),
            ..TradingState::default()
        };
        let mut rebuilt = new_engine();
        assert_eq!(
            restore(&mut rebuilt, &state).expect("restore"),
            batch.events.len()
        );
        for user in ["ann", "bob"] {
            let original = engine.account(user).expect("account");
            let copy = rebuilt.account(user).expect("rebuilt account");
            assert_eq!(copy.cash, original.cash, "{user} cash");
            assert_eq!(copy.positions, original.positions, "{user} positions");
            assert_eq!(copy.realized_pl, original.realized_pl);
            assert_eq!(copy.commissions, original.commissions);
            assert_eq!(
                rebuilt.orders(user, OrderQuery::All),
                engine.orders(user, OrderQuery::All),
                "{user} orders"
            );
            // The derived rows agree with the engine too.
            let record = batch
                .accounts
                .iter()
                .find(|a| a.username == user)
                .expect("account row");
            let implied: Decimal = batch
                .fills
                .iter()
                .filter(|f| f.username == user)
                .map(FillRecord::cash_delta)
                .sum();
            assert_eq!(record.cash, record.initial_cash + implied, "{user} books");
        }
    }

    #[test]
    fn a_mismatch_between_the_log_and_the_accounts_table_stops_the_rebuild() {
        let mut engine = new_engine();
        let mut out = Outcome::default();
        engine
            .submit(
                "ann",
                &request("buy", "market", "1", None),
                Utc::now(),
                &mut out,
            )
            .expect("buy");
        let mut batch = batch_for_steps(&engine, &[&out]).expect("batch");
        batch.accounts[0].cash += dec!(1);
        let state = TradingState {
            events: batch.events,
            accounts: batch.accounts,
            ..TradingState::default()
        };
        let error = restore(&mut new_engine(), &state).expect_err("inconsistent");
        assert!(error.to_string().contains("inconsistent"), "{error}");
    }
}

mod proptests {
    use super::super::*;
    use super::rebuild::settings_for_tests;
    use crate::market::SymbolUniverse;
    use crate::trading::api::{OrderQuery, OrderRef, OrderRequest};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Action {
        Order {
            user: usize,
            sell: bool,
            kind: u8,
            qty: u32,
            offset_cents: i64,
        },
        Cancel {
            user: usize,
            pick: usize,
        },
        Trade {
            offset_cents: i64,
        },
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => (0..3usize, any::<bool>(), 0..3u8, 1..20u32, -500..500i64).prop_map(
                |(user, sell, kind, qty, offset_cents)| Action::Order {
                    user,
                    sell,
                    kind,
                    qty,
                    offset_cents,
                }
            ),
            1 => (0..3usize, 0..10usize).prop_map(|(user, pick)| Action::Cancel { user, pick }),
            2 => (-800..800i64).prop_map(|offset_cents| Action::Trade { offset_cents }),
        ]
    }

    const USERS: [&str; 3] = ["ann", "bob", "cem"];

    fn price(offset_cents: i64) -> Decimal {
        Decimal::ONE_HUNDRED + Decimal::new(offset_cents, 2)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the exchange did, replaying what was stored step by step rebuilds the
        /// same accounts, orders and update sequences, the stored cash equals the stored
        /// fills, and each user's stored updates are contiguous from 1.
        #[test]
        fn replaying_stored_steps_rebuilds_the_same_exchange(
            actions in proptest::collection::vec(action(), 1..60)
        ) {
            let settings = settings_for_tests();
            let universe = SymbolUniverse::new(["AAPL"]);
            let mut engine = Engine::new(settings.clone(), universe.clone());
            let mut events = Vec::new();
            let mut fills = Vec::new();
            let mut accounts = BTreeMap::new();
            let mut updates: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let now = Utc::now();
            for action in actions {
                let mut out = Outcome::default();
                match action {
                    Action::Order { user, sell, kind, qty, offset_cents } => {
                        let order_type = ["market", "limit", "stop"][usize::from(kind)];
                        let request = OrderRequest {
                            symbol: Some("AAPL".into()),
                            qty: Some(qty.to_string()),
                            side: Some(if sell { "sell" } else { "buy" }.into()),
                            order_type: Some(order_type.into()),
                            time_in_force: Some("gtc".into()),
                            limit_price: (order_type == "limit")
                                .then(|| price(offset_cents).to_string()),
                            stop_price: (order_type == "stop")
                                .then(|| price(offset_cents).to_string()),
                            ..OrderRequest::default()
                        };
                        // Refusals commit nothing; that is part of what is checked.
                        let _ = engine.submit(USERS[user], &request, now, &mut out);
                    }
                    Action::Cancel { user, pick } => {
                        let open = engine.orders(USERS[user], OrderQuery::Open);
                        if let Some(order) = open.get(pick % open.len().max(1)) {
                            let target = OrderRef::Id(order.id.clone());
                            let _ = engine.cancel(USERS[user], &target, now, &mut out);
                        }
                    }
                    Action::Trade { offset_cents } => {
                        engine.on_trade("AAPL", price(offset_cents), Decimal::from(1000), now, &mut out);
                    }
                }
                let batch = batch_for_steps(&engine, &[&out]).expect("batch");
                events.extend(batch.events);
                fills.extend(batch.fills);
                for stored in batch.updates {
                    updates.entry(stored.username).or_default().push(stored.update.seq);
                }
                for account in batch.accounts {
                    accounts.insert(account.username.clone(), account);
                }
            }
            // Every user's stored updates are numbered 1, 2, 3, ... with no gap or repeat.
            for (user, seqs) in &updates {
                let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
                prop_assert_eq!(seqs, &expected, "{}", user);
                prop_assert_eq!(engine.update_seq(user), seqs.len() as u64);
            }
            let update_seqs: BTreeMap<String, u64> = updates
                .iter()
                .map(|(user, seqs)| (user.clone(), seqs.len() as u64))
                .collect();
            let state = TradingState {
                events,
                accounts: accounts.values().cloned().collect(),
                update_seqs,
                ..TradingState::default()
            };
            let mut rebuilt = Engine::new(settings.clone(), universe.clone());
            restore(&mut rebuilt, &state).expect("replay agrees with the accounts table");
            // A store whose newest update does not match the replayed sequence is refused.
            if let Some((user, seq)) = state.update_seqs.iter().next() {
                let mut tampered = state.clone();
                tampered.update_seqs.insert(user.clone(), seq + 1);
                let mut again = Engine::new(settings, universe);
                prop_assert!(restore(&mut again, &tampered).is_err());
            }
            for user in USERS {
                let original = engine.account(user).map(|a| (a.cash, a.positions.clone()));
                let copy = rebuilt.account(user).map(|a| (a.cash, a.positions.clone()));
                prop_assert_eq!(copy, original);
                prop_assert_eq!(
                    rebuilt.orders(user, OrderQuery::All),
                    engine.orders(user, OrderQuery::All)
                );
                if let Some(record) = accounts.get(user) {
                    let implied: Decimal = fills
                        .iter()
                        .filter(|f| f.username == user)
                        .map(FillRecord::cash_delta)
                        .sum();
                    prop_assert_eq!(record.cash, record.initial_cash + implied);
                }
            }
        }
    }
}
