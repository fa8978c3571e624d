//! Alpaca's REST routes beyond what the alpaca-py programs (`tests/api/alpaca/py.rs`) reach:
//! multi-symbol bar pagination, refusals in Alpaca's statuses, and the demo key pair.

use crate::common;

use common::{publish, spawn_app};
use serde_json::{Value, json};

async fn get(app: &common::TestApp, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(app.url(path))
        .header("APCA-API-KEY-ID", "demo-key")
        .header("APCA-API-SECRET-KEY", "demo-secret")
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn bar(symbol: &str, minute: i64) -> Value {
    let start = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let t = start - chrono::TimeDelta::seconds(start.timestamp() % 60)
        + chrono::TimeDelta::minutes(minute);
    json!({"T": "b", "S": symbol, "o": 10 + minute, "h": 11 + minute, "l": 9 + minute,
           "c": 10 + minute, "v": 100, "n": 3, "vw": 10 + minute, "t": t})
}

#[tokio::test]
async fn multi_symbol_bars_page_across_symbols_without_gaps_or_repeats() {
    let app = spawn_app().await;
    let (status, _) = publish(
        &app,
        json!([
            bar("AAPL", 0),
            bar("AAPL", 1),
            bar("AAPL", 2),
            bar("MSFT", 0),
            bar("MSFT", 1)
        ]),
    )
    .await;
    assert_eq!(status, 200);
    let mut seen: Vec<(String, f64)> = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v2/stocks/bars?symbols=MSFT,AAPL&timeframe=1Min&limit=2".to_owned();
        if let Some(token) = &token {
            path.push_str(&format!("&page_token={}", urlencode(token)));
        }
        let (status, body) = get(&app, &path).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let page: usize = body["bars"]
            .as_object()
            .expect("bars by symbol")
            .iter()
            .map(|(symbol, bars)| {
                for bar in bars.as_array().expect("list") {
                    assert!(bar.get("S").is_none(), "no symbol inside a bar");
                    seen.push((symbol.clone(), bar["o"].as_f64().expect("open")));
                }
                bars.as_array().map_or(0, Vec::len)
            })
            .sum();
        assert!(page <= 2, "a page holds at most limit bars");
        match body["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(
        seen,
        vec![
            ("AAPL".into(), 10.0),
            ("AAPL".into(), 11.0),
            ("AAPL".into(), 12.0),
            ("MSFT".into(), 10.0),
            ("MSFT".into(), 11.0),
        ]
    );
    let (status, one) = get(&app, "/v2/stocks/MSFT/bars?timeframe=1Min").await;
    assert_eq!((status, one["symbol"].clone()), (200, json!("MSFT")));
    assert_eq!(one["bars"].as_array().map(Vec::len), Some(2));
    app.stop().await.expect("stop");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn refusals_use_alpacas_statuses_and_codes() {
    let app = spawn_app().await;
    let (status, body) = get(&app, "/v2/stocks/bars?symbols=AAPL&timeframe=1Day").await;
    assert_eq!((status, body["code"].clone()), (422, json!(40010005)));
    let (status, body) = get(&app, "/v2/stocks/bars?symbols=NOPE&timeframe=1Min").await;
    assert_eq!((status, body["code"].clone()), (400, json!(40010002)));
    let (status, _) = get(&app, "/v2/orders/not-an-order").await;
    assert_eq!(status, 404);
    let (status, body) = get(&app, "/v2/positions/AAPL").await;
    assert_eq!((status, body["code"].clone()), (404, json!(40410000)));
    let response = reqwest::Client::new()
        .post(app.url("/v2/orders"))
        .header("APCA-API-KEY-ID", "demo-key")
        .header("APCA-API-SECRET-KEY", "demo-secret")
        .json(
            &json!({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
                      "time_in_force": "day", "order_class": "bracket",
                      "take_profit": {"limit_price": "300"}}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 422);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["code"], 40010001);
    let response = reqwest::Client::new()
        .get(app.url("/v2/account"))
        .header("APCA-API-KEY-ID", "demo-key")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401, "a key id alone is refused");
    app.stop().await.expect("stop");
}
