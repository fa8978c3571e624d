//! The fuzz cases of issue 13 kept as property tests, so they keep being tried: publish
//! bodies, query strings and cursors against the real server (one gateway for all cases),
//! and the pure parsers under them. Frames are fuzzed where they are decoded
//! (`transport::ws::wire` tests: any bytes, any chunking, bounded buffering).
//!
//! Properties: nothing answers 5xx or hangs; every refusal is a JSON error with a code; a
//! publish reply accounts for every item; a cursor is honoured or answered with a reset.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tickgate::hub::Cursor;
use tickgate::routes::params::query_params;

use crate::common::{SseClient, TestApp, spawn_app_with, test_settings};

const CASES: u32 = 64;

/// A runtime and one gateway for all the cases of a test.
fn gateway() -> (tokio::runtime::Runtime, TestApp) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = runtime.block_on(spawn_app_with(test_settings()));
    (runtime, app)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    })
}

/// JSON values that look like published items often enough to reach validation: a known or
/// unknown `T`, known field names with values of any type, big strings, nesting.
fn item() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::from),
        (0usize..40_000).prop_map(|n| Value::from("x".repeat(n))),
        Just(json!("2026-01-02T14:30:00Z")),
        Just(json!("AAPL")),
    ];
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,3}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let names = prop_oneof![
        Just("T"),
        Just("S"),
        Just("i"),
        Just("p"),
        Just("s"),
        Just("t"),
        Just("c"),
        Just("x"),
        Just("bp"),
        Just("ap"),
        Just("bs"),
        Just("as"),
        Just("sc"),
        Just("sm"),
        Just("id"),
        Just("headline"),
        Just("summary"),
        Just("symbols"),
        Just("created_at"),
        Just("updated_at"),
        Just("level"),
        Just("msg"),
        Just("o"),
        Just("h"),
        Just("l"),
        Just("v"),
        Just("n"),
        Just("vw"),
    ];
    let kind = prop_oneof![
        Just("t"),
        Just("q"),
        Just("b"),
        Just("s"),
        Just("n"),
        Just("alert"),
        Just("zz")
    ];
    (kind, proptest::collection::vec((names, value), 0..12)).prop_map(|(kind, fields)| {
        let mut object = serde_json::Map::new();
        object.insert("T".into(), json!(kind));
        for (name, value) in fields {
            object.insert(name.to_owned(), value);
        }
        Value::Object(object)
    })
}

#[test]
fn any_publish_body_gets_a_json_answer_that_accounts_for_every_item() {
    let (runtime, app) = gateway();
    let client = reqwest::Client::new();
    let body = prop_oneof![
        proptest::collection::vec(item(), 0..8)
            .prop_map(|items| Value::Array(items).to_string().into_bytes()),
        item().prop_map(|item| item.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..200),
    ];
    runner()
        .run(&body, |body| {
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            let (status, reply) = runtime.block_on(async {
                let response = client
                    .post(app.url("/v1/publish"))
                    .bearer_auth(&app.state.settings.publish.admin_token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("publish answered");
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            });
            prop_assert!([200, 400, 413, 422].contains(&status), "{status}: {reply}");
            // 200 when something went in, 422 when every item was refused; both list them.
            if reply.get("accepted").is_some() {
                let accepted = reply["accepted"].as_u64().expect("accepted");
                let rejected = reply["rejected"].as_array().expect("rejected");
                let items = match &parsed {
                    Some(Value::Array(items)) => items.len() as u64,
                    _ => 1,
                };
                prop_assert_eq!(accepted + rejected.len() as u64, items, "{}", reply);
                for refusal in rejected {
                    prop_assert!(
                        refusal["code"].as_u64().is_some_and(|c| c >= 40_000_000),
                        "{}",
                        refusal
                    );
                    prop_assert!(refusal["message"].as_str().is_some_and(|m| !m.is_empty()));
                }
            } else {
                prop_assert!(reply["code"].as_u64().is_some(), "{status}: {reply}");
            }
            Ok(())
        })
        .expect("property holds");
    runtime.block_on(app.stop()).expect("stop");
}

/// Raw query strings: names the routes know, others, repeats, empty values, escapes.
fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("symbols"),
        Just("types"),
        Just("start"),
        Just("end"),
        Just("limit"),
        Just("timeframe"),
        Just("ticket"),
        Just("x"),
        Just(""),
    ];
    let value = prop_oneof![
        "[A-Za-z0-9,:.*-]{0,20}",
        "\\PC{0,12}".prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect()),
        Just("%".to_owned()),
        Just("%zz".to_owned()),
        Just("2026-01-02T14:30:00Z".to_owned()),
    ];
    proptest::collection::vec((name, value), 0..5).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

#[test]
fn any_query_string_gets_data_or_a_json_error_never_a_5xx() {
    let (runtime, app) = gateway();
    let client = reqwest::Client::new();
    let path = prop_oneof![Just("/v1/bars"), Just("/v1/snapshot"), Just("/v1/symbols")];
    runner()
        .run(&(path, query()), |(path, query)| {
            let (status, body) = runtime.block_on(async {
                let response = client
                    .get(app.url(&format!("{path}?{query}")))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("answered");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.ok())
            });
            prop_assert!(status < 500, "{path}?{query}: {status}");
            let body = body.expect("a JSON body");
            if status >= 400 {
                prop_assert!(body["code"].as_u64().is_some(), "{path}?{query}: {body}");
            }
            Ok(())
        })
        .expect("property holds");
    runtime.block_on(app.stop()).expect("stop");
}

#[test]
fn any_last_event_id_is_honoured_or_answered_with_a_reset() {
    let (runtime, app) = gateway();
    let cursor = prop_oneof![
        3 => "[0-9-]{0,30}",
        // Printable ASCII: what a non-ASCII header gets is issue 13 item 9 (another change).
        3 => "[ -~]{0,30}",
        3 => (any::<u64>(), any::<u64>()).prop_map(|(e, s)| format!("{e}-{s}")),
        1 => Just(format!(
            "{}-0",
            app.state.hub.cursor(tickgate::hub::Feed::Market).epoch
        )),
    ];
    let head = format!(
        "{}-0",
        app.state.hub.cursor(tickgate::hub::Feed::Market).epoch
    );
    runner()
        .run(&cursor, |cursor| {
            let cursor = cursor.trim().to_owned();
            let (status, first, second) = runtime.block_on(async {
                let mut client = SseClient::connect(
                    app.port,
                    "/v1/stream/market?symbols=*",
                    &[("Last-Event-ID", &cursor)],
                )
                .await;
                if client.status != 200 {
                    return (client.status, None, None);
                }
                let first = client.expect_event(Duration::from_secs(5)).await;
                let second = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.expect_event(Duration::from_secs(5)),
                )
                .await
                .ok();
                (client.status, Some(first), second)
            });
            prop_assert_eq!(status, 200, "{:?}", cursor);
            prop_assert!(first.is_some_and(|first| first.retry.is_some()));
            // Nothing is published here: the head cursor resumes quietly; no cursor gets the
            // plain snapshot; any other one a snapshot with `"reset": true`.
            if cursor == head {
                prop_assert!(second.is_none(), "{:?}", second);
            } else {
                let second = second.expect("a snapshot");
                prop_assert_eq!(&second.event, "snapshot");
                let reset = second.json()["reset"] == true;
                prop_assert!(reset || cursor.is_empty(), "{:?}: {}", cursor, second.data);
            }
            Ok(())
        })
        .expect("property holds");
    runtime.block_on(app.stop()).expect("stop");
}

proptest! {
    #[test]
    fn a_cursor_prints_and_parses_back_and_any_text_parses_or_is_refused(
        epoch in any::<u64>(),
        seq in any::<u64>(),
        text in "\\PC{0,40}",
    ) {
        let cursor = Cursor { epoch, seq };
        prop_assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        if let Ok(parsed) = text.parse::<Cursor>() {
            prop_assert_eq!(parsed.to_string().parse::<Cursor>(), Ok(parsed));
        }
    }

    #[test]
    fn query_parameters_are_accepted_only_once_each_and_only_when_allowed(
        pairs in proptest::collection::vec(("[a-c]{1}", "\\PC{0,8}"), 0..6),
    ) {
        let allowed = ["a", "b"];
        let result = query_params(pairs.clone(), &allowed);
        let mut names: Vec<&str> = pairs.iter().map(|(name, _)| name.as_str()).collect();
        let all_allowed = names.iter().all(|name| allowed.contains(name));
        names.sort_unstable();
        let distinct = names.windows(2).all(|w| w[0] != w[1]);
        match result {
            Ok(map) => {
                prop_assert!(all_allowed && distinct);
                // An empty value is the same as leaving the parameter out; every other one
                // is kept as given.
                let given: Vec<&(String, String)> =
                    pairs.iter().filter(|(_, value)| !value.is_empty()).collect();
                prop_assert_eq!(map.len(), given.len());
                for (name, value) in given {
                    prop_assert_eq!(map.get(name), Some(value));
                }
            }
            Err(error) => {
                prop_assert!(!(all_allowed && distinct));
                prop_assert_eq!(error.code, tickgate::error::ErrorCode::InvalidParameter);
            }
        }
    }
}
