//! The MessagePack encoding of market events for the Alpaca stream (`docs/alpaca.md`): each
//! event as the map Alpaca sends, encoded once at publish into [`super::entry::Entry::msgpack`]
//! while some MessagePack client is connected, and the array header that frames several.
//!
//! Times (`t`, and `created_at`/`updated_at` of news) are MessagePack Timestamps (extension
//! type -1), which Alpaca clients require: alpaca-py calls `to_datetime()` on them. Numbers
//! follow the JSON feed: whole numbers as integers, others as 64-bit floats.

use chrono::{DateTime, Utc};
use rmp::encode;

use crate::market::MarketEvent;

/// Writing into a `Vec` cannot fail; the encoder's `Result` only exists for other writers.
fn put<E>(result: Result<(), E>) {
    let _ = result;
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put(encode::write_str(out, text));
}

fn put_key(out: &mut Vec<u8>, key: &str, value: &str) {
    put_str(out, key);
    put_str(out, value);
}

fn put_number(out: &mut Vec<u8>, key: &str, value: f64) {
    put_str(out, key);
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        put(encode::write_sint(out, value as i64).map(drop));
    } else {
        put(encode::write_f64(out, value));
    }
}

fn put_uint(out: &mut Vec<u8>, key: &str, value: u64) {
    put_str(out, key);
    put(encode::write_uint(out, value).map(drop));
}

fn put_strings(out: &mut Vec<u8>, key: &str, values: &[String]) {
    put_str(out, key);
    put(encode::write_array_len(out, values.len() as u32).map(drop));
    for value in values {
        put_str(out, value);
    }
}

/// A MessagePack Timestamp in its smallest form (32, 64 or 96 bits).
pub fn put_timestamp(out: &mut Vec<u8>, time: DateTime<Utc>) {
    let seconds = time.timestamp();
    let nanos = time.timestamp_subsec_nanos();
    if seconds >> 34 == 0 {
        let seconds = seconds as u64;
        if nanos == 0 && seconds <= u64::from(u32::MAX) {
            put(encode::write_ext_meta(out, 4, -1).map(drop));
            out.extend_from_slice(&(seconds as u32).to_be_bytes());
        } else {
            put(encode::write_ext_meta(out, 8, -1).map(drop));
            out.extend_from_slice(&((u64::from(nanos) << 34) | seconds).to_be_bytes());
        }
    } else {
        put(encode::write_ext_meta(out, 12, -1).map(drop));
        out.extend_from_slice(&nanos.to_be_bytes());
        out.extend_from_slice(&seconds.to_be_bytes());
    }
}

fn put_time(out: &mut Vec<u8>, key: &str, time: DateTime<Utc>) {
    put_str(out, key);
    put_timestamp(out, time);
}

/// The event as the map Alpaca's stream sends, or `None` for kinds Alpaca has no message for
/// (tickgate's alerts).
pub fn encode_event(event: &MarketEvent) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    match event {
        MarketEvent::Trade(trade) => {
            put(encode::write_map_len(&mut out, 8).map(drop));
            put_key(&mut out, "T", "t");
            put_key(&mut out, "S", &trade.symbol);
            put_uint(&mut out, "i", trade.id);
            put_key(&mut out, "x", &trade.venue);
            put_number(&mut out, "p", trade.price);
            put_number(&mut out, "s", trade.size);
            put_strings(&mut out, "c", &trade.conditions);
            put_time(&mut out, "t", trade.time);
        }
        MarketEvent::Quote(quote) => {
            put(encode::write_map_len(&mut out, 9).map(drop));
            put_key(&mut out, "T", "q");
            put_key(&mut out, "S", &quote.symbol);
            put_key(&mut out, "bx", &quote.bid_venue);
            put_number(&mut out, "bp", quote.bid_price);
            put_number(&mut out, "bs", quote.bid_size);
            put_key(&mut out, "ax", &quote.ask_venue);
            put_number(&mut out, "ap", quote.ask_price);
            put_number(&mut out, "as", quote.ask_size);
            put_time(&mut out, "t", quote.time);
        }
        MarketEvent::Bar(bar) => {
            put(encode::write_map_len(&mut out, 10).map(drop));
            put_key(&mut out, "T", "b");
            put_key(&mut out, "S", &bar.symbol);
            put_number(&mut out, "o", bar.open);
            put_number(&mut out, "h", bar.high);
            put_number(&mut out, "l", bar.low);
            put_number(&mut out, "c", bar.close);
            put_number(&mut out, "v", bar.volume);
            put_uint(&mut out, "n", bar.trade_count);
            put_number(&mut out, "vw", bar.vwap);
            put_time(&mut out, "t", bar.time);
        }
        MarketEvent::Status(status) => {
            // Alpaca's status also carries a reason and a tape, which alpaca-py requires;
            // tickgate's statuses have neither, so they are empty.
            put(encode::write_map_len(&mut out, 8).map(drop));
            put_key(&mut out, "T", "s");
            put_key(&mut out, "S", &status.symbol);
            put_key(&mut out, "sc", &status.code);
            put_key(&mut out, "sm", &status.message);
            put_key(&mut out, "rc", "");
            put_key(&mut out, "rm", "");
            put_key(&mut out, "z", "");
            put_time(&mut out, "t", status.time);
        }
        MarketEvent::News(news) => {
            put(encode::write_map_len(&mut out, 11).map(drop));
            put_key(&mut out, "T", "n");
            put_uint(&mut out, "id", news.id);
            put_key(&mut out, "headline", &news.headline);
            put_key(&mut out, "summary", &news.summary);
            put_key(&mut out, "author", &news.author);
            put_key(&mut out, "source", &news.source);
            put_key(&mut out, "url", &news.url);
            put_key(&mut out, "content", "");
            put_strings(&mut out, "symbols", &news.symbols);
            put_time(&mut out, "created_at", news.created_at);
            put_time(&mut out, "updated_at", news.updated_at);
        }
        MarketEvent::Alert(_) => return None,
    }
    Some(out)
}

/// A frame holding one event: a one-element array of its map (the hub's `Entry::msgpack`).
pub fn single_event_frame(event: &MarketEvent) -> Option<bytes::Bytes> {
    let map = encode_event(event)?;
    let mut frame = Vec::with_capacity(map.len() + 1);
    put_array_header(&mut frame, 1);
    frame.extend_from_slice(&map);
    Some(bytes::Bytes::from(frame))
}

/// The header of a frame of `count` messages; the messages' maps follow it.
pub fn put_array_header(out: &mut Vec<u8>, count: usize) {
    put(encode::write_array_len(out, count as u32).map(drop));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::{Bar, News, Quote, Status, Trade};
    use chrono::TimeZone;
    use rmpv::Value;

    fn decode(bytes: &[u8]) -> Value {
        rmpv::decode::read_value(&mut &bytes[..]).expect("valid MessagePack")
    }

    fn field<'a>(map: &'a Value, key: &str) -> &'a Value {
        map.as_map()
            .expect("a map")
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no field {key}"))
    }

    fn time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 14, 30, 1)
            .single()
            .expect("time")
            + chrono::TimeDelta::nanoseconds(123_456_789)
    }

    /// Decodes a Timestamp extension back into a time (the MessagePack spec's three forms).
    fn timestamp(value: &Value) -> DateTime<Utc> {
        let Value::Ext(-1, data) = value else {
            panic!("not a timestamp: {value:?}")
        };
        let (seconds, nanos) = match data.len() {
            4 => (
                i64::from(u32::from_be_bytes(data[..4].try_into().expect("4"))),
                0,
            ),
            8 => {
                let raw = u64::from_be_bytes(data[..8].try_into().expect("8"));
                ((raw & ((1 << 34) - 1)) as i64, (raw >> 34) as u32)
            }
            12 => (
                i64::from_be_bytes(data[4..12].try_into().expect("8")),
                u32::from_be_bytes(data[..4].try_into().expect("4")),
            ),
            other => panic!("timestamp of {other} bytes"),
        };
        Utc.timestamp_opt(seconds, nanos).single().expect("valid")
    }

    #[test]
    fn a_trade_is_the_alpaca_map_with_a_timestamp_extension() {
        let event = MarketEvent::Trade(Trade {
            symbol: "AAPL".into(),
            id: 42,
            venue: "V".into(),
            price: 126.55,
            size: 100.0,
            time: time(),
            conditions: vec!["@".into()],
        });
        let value = decode(&encode_event(&event).expect("encoded"));
        assert_eq!(field(&value, "T").as_str(), Some("t"));
        assert_eq!(field(&value, "S").as_str(), Some("AAPL"));
        assert_eq!(field(&value, "i").as_u64(), Some(42));
        assert_eq!(field(&value, "p").as_f64(), Some(126.55));
        assert_eq!(
            field(&value, "s").as_u64(),
            Some(100),
            "whole sizes are integers"
        );
        assert_eq!(field(&value, "c").as_array().map(Vec::len), Some(1));
        assert_eq!(timestamp(field(&value, "t")), time());
    }

    #[test]
    fn quotes_bars_statuses_and_news_carry_every_field_alpaca_py_requires() {
        let t = time();
        let quote = MarketEvent::Quote(Quote {
            symbol: "MSFT".into(),
            bid_price: 410.1,
            bid_size: 3.0,
            bid_venue: "V".into(),
            ask_price: 410.2,
            ask_size: 5.0,
            ask_venue: "V".into(),
            time: t,
        });
        let value = decode(&encode_event(&quote).expect("quote"));
        for key in ["T", "S", "bx", "bp", "bs", "ax", "ap", "as", "t"] {
            field(&value, key);
        }
        let bar = MarketEvent::Bar(Bar {
            symbol: "MSFT".into(),
            open: 1.5,
            high: 2.0,
            low: 1.0,
            close: 1.75,
            volume: 1200.0,
            trade_count: 7,
            vwap: 1.6,
            time: t,
        });
        let value = decode(&encode_event(&bar).expect("bar"));
        assert_eq!(field(&value, "n").as_u64(), Some(7));
        assert_eq!(field(&value, "vw").as_f64(), Some(1.6));
        let status = MarketEvent::Status(Status {
            symbol: "*".into(),
            code: "market_open".into(),
            message: "regular session".into(),
            time: t,
        });
        let value = decode(&encode_event(&status).expect("status"));
        for key in ["sc", "sm", "rc", "rm", "z"] {
            assert!(field(&value, key).is_str(), "{key}");
        }
        let news = MarketEvent::News(News {
            id: 9,
            headline: "h".into(),
            summary: String::new(),
            author: String::new(),
            source: "sim".into(),
            url: String::new(),
            symbols: vec!["AAPL".into()],
            created_at: t,
            updated_at: t,
        });
        let value = decode(&encode_event(&news).expect("news"));
        assert_eq!(timestamp(field(&value, "created_at")), t);
        assert_eq!(timestamp(field(&value, "updated_at")), t);
        field(&value, "content");
    }

    #[test]
    fn timestamps_take_the_smallest_form_that_holds_them() {
        for (time, length) in [
            (Utc.timestamp_opt(1_700_000_000, 0).single().expect("t"), 6),
            (Utc.timestamp_opt(1_700_000_000, 5).single().expect("t"), 10),
            (Utc.timestamp_opt(1 << 35, 5).single().expect("t"), 15),
            (Utc.timestamp_opt(-1, 0).single().expect("t"), 15),
        ] {
            let mut out = Vec::new();
            put_timestamp(&mut out, time);
            assert_eq!(out.len(), length, "{time}");
            assert_eq!(timestamp(&decode(&out)), time);
        }
    }

    #[test]
    fn the_hub_encodes_messagepack_frames_only_while_a_messagepack_client_exists() {
        use crate::hub::{Hub, HubSettings};
        let hub = Hub::new(
            crate::market::SymbolUniverse::new(["AAPL"]),
            HubSettings::default(),
            std::sync::Arc::default(),
            1,
        );
        let trade = |id: u64| {
            MarketEvent::Trade(Trade {
                symbol: "AAPL".into(),
                id,
                venue: "V".into(),
                price: 10.0,
                size: 1.0,
                time: time() + chrono::TimeDelta::seconds(id as i64),
                conditions: vec![],
            })
        };
        let published = hub.publish_event(trade(1)).expect("publish");
        assert!(published.entry.msgpack.is_none(), "no client, no encoding");
        let guard = hub.msgpack_client();
        let published = hub.publish_event(trade(2)).expect("publish");
        let frame = published.entry.msgpack.clone().expect("encoded at publish");
        let value = decode(&frame);
        let items = value.as_array().expect("a one-event frame");
        assert_eq!(items.len(), 1);
        assert_eq!(field(&items[0], "i").as_u64(), Some(2));
        assert_eq!(
            &frame[1..],
            encode_event(&trade(2)).expect("map").as_slice()
        );
        drop(guard);
        let published = hub.publish_event(trade(3)).expect("publish");
        assert!(published.entry.msgpack.is_none(), "the last client left");
    }

    #[test]
    fn alerts_have_no_alpaca_message() {
        let alert = MarketEvent::Alert(crate::market::Alert {
            id: 1,
            level: crate::market::AlertLevel::Info,
            msg: "hello".into(),
            time: time(),
        });
        assert!(encode_event(&alert).is_none());
    }
}
