//! Encoding, done once per event at publish, and every other SSE frame: an [`Entry`] carries
//! the event's complete SSE frame, its JSON object (a slice of the frame) and its one-event
//! WebSocket array, all in one allocation shared by every subscriber. The snapshot frame, the
//! `retry:` line, the heartbeat comment, the close frames and the shutdown status (the same
//! object on SSE and WebSocket) are written here too, so every SSE byte has one home.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::queue::CloseReason;
use super::{Cursor, Feed, Subscribed};
use crate::market::{EventKind, SymbolId};

/// The SSE keep-alive comment the heartbeat sweep turns into.
pub const SSE_HEARTBEAT: &[u8] = b": hb\n\n";

/// One published event, encoded once and shared by every subscriber.
#[derive(Debug)]
pub struct Entry {
    pub feed: Feed,
    pub seq: u64,
    pub kind: EventKind,
    /// The symbol of a market event; `None` for `*` statuses, news and alerts.
    pub symbol: Option<SymbolId>,
    /// Symbols a news item is tagged with.
    pub tagged: Box<[SymbolId]>,
    /// The complete SSE frame: `id:`, `event:`, `data:` and the blank line.
    pub sse: Bytes,
    /// The JSON object alone (a slice of `sse`), for WebSocket frames and snapshots.
    pub json: Bytes,
    /// The single-event WebSocket text frame `[<json>]`, built in the same allocation as
    /// `sse`, so a connection with one pending event sends it without copying or encoding.
    pub ws: Bytes,
    /// The single-event MessagePack frame of the Alpaca stream (a one-element array of the
    /// event's map; the map alone is `msgpack[1..]`, see [`super::msgpack`]). Encoded only
    /// while some MessagePack client is connected ([`super::Hub::msgpack_client`]).
    pub msgpack: Option<Bytes>,
    /// A trading status notice (see [`super::trading_status`]): sessions that trade take it
    /// even when they follow no market data.
    pub trading: bool,
}

pub(super) fn encode_entry(
    feed: Feed,
    cursor: Cursor,
    kind: EventKind,
    symbol: Option<SymbolId>,
    tagged: Box<[SymbolId]>,
    json: &[u8],
    msgpack: Option<Bytes>,
) -> Entry {
    let name = kind.event_name();
    let mut frame = BytesMut::with_capacity(2 * json.len() + name.len() + 50);
    frame.put_slice(b"id: ");
    put_cursor(&mut frame, cursor);
    frame.put_slice(b"\nevent: ");
    frame.put_slice(name.as_bytes());
    frame.put_slice(b"\ndata: ");
    let json_start = frame.len();
    frame.put_slice(json);
    let json_end = frame.len();
    frame.put_slice(b"\n\n");
    let sse_end = frame.len();
    frame.put_u8(b'[');
    frame.put_slice(json);
    frame.put_u8(b']');
    let all = frame.freeze();
    let sse = all.slice(..sse_end);
    let json = all.slice(json_start..json_end);
    let ws = all.slice(sse_end..);
    Entry {
        feed,
        seq: cursor.seq,
        kind,
        symbol,
        tagged,
        sse,
        json,
        ws,
        msgpack,
        trading: false,
    }
}

/// The `status` object (`sc: "shutdown"`, symbol `*`) that ends every stream when the server
/// stops: SSE sends it as an event whose id is the feed's final head, WebSocket as a
/// one-item array before closing with 1012. `message` says how to come back, which differs by
/// transport (SSE resumes by itself, a WebSocket client resubscribes).
pub fn shutdown_status(message: &str) -> serde_json::Value {
    serde_json::json!({
        "T": "s",
        "S": "*",
        "sc": "shutdown",
        "sm": message,
        "t": chrono::Utc::now(),
    })
}

/// `retry:`, then either the snapshot (fresh connect or reset) or the replay, written into
/// one buffer of the right size: this runs once per new subscriber, so it avoids the
/// intermediate `format!` strings and vectors a frame-by-frame build would allocate.
pub fn sse_opening(feed: Feed, subscribed: &Subscribed, retry_ms: u64) -> Bytes {
    let snapshot_len = subscribed.snapshot.as_ref().map_or(0, |entries| {
        SNAPSHOT_FRAME_OVERHEAD + entries.iter().map(|e| e.json.len() + 1).sum::<usize>()
    });
    let replay_len: usize = subscribed.replay.iter().map(|e| e.sse.len()).sum();
    let mut out = BytesMut::with_capacity(32 + snapshot_len + replay_len);
    out.put_slice(b"retry: ");
    put_u64(&mut out, retry_ms);
    out.put_slice(b"\n\n");
    if let Some(snapshot) = &subscribed.snapshot {
        put_snapshot_frame(&mut out, feed, subscribed, snapshot);
    }
    for entry in &subscribed.replay {
        out.put_slice(&entry.sse);
    }
    out.freeze()
}

/// Room for everything in a snapshot frame but the entries: the `id:`/`event:` lines, two
/// cursors, the reset reason and the group names.
const SNAPSHOT_FRAME_OVERHEAD: usize = 320;

fn put_u64(out: &mut BytesMut, value: u64) {
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Writes a cursor as its `Display` form, `<epoch>-<seq>`.
pub(super) fn put_cursor(out: &mut BytesMut, cursor: Cursor) {
    put_u64(out, cursor.epoch);
    out.put_u8(b'-');
    put_u64(out, cursor.seq);
}

/// `event: snapshot` with `data: {"reset":..,"cursor":..,"trades":[..],"quotes":[..],...}`,
/// carrying the feed's current cursor as its id so a reconnect resumes after it.
fn put_snapshot_frame(
    out: &mut BytesMut,
    feed: Feed,
    subscribed: &Subscribed,
    entries: &[Arc<Entry>],
) {
    let groups: &[(&str, EventKind)] = match feed {
        Feed::Market => &[
            ("trades", EventKind::Trade),
            ("quotes", EventKind::Quote),
            ("bars", EventKind::Bar),
            ("statuses", EventKind::Status),
        ],
        Feed::News => &[("news", EventKind::News)],
        Feed::Alerts => &[("alerts", EventKind::Alert)],
    };
    out.put_slice(b"id: ");
    put_cursor(out, subscribed.cursor);
    out.put_slice(b"\nevent: snapshot\ndata: {\"reset\":");
    out.put_slice(if subscribed.reset.is_some() {
        b"true"
    } else {
        b"false"
    });
    if let Some(reason) = subscribed.reset {
        out.put_slice(b",\"reason\":");
        out.put_slice(
            serde_json::to_string(reason.message())
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    out.put_slice(b",\"cursor\":\"");
    put_cursor(out, subscribed.cursor);
    out.put_u8(b'"');
    for (name, kind) in groups {
        out.put_slice(b",\"");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\":[");
        let mut first = true;
        for entry in entries.iter().filter(|e| e.kind == *kind) {
            if !first {
                out.put_u8(b',');
            }
            first = false;
            out.put_slice(&entry.json);
        }
        out.put_u8(b']');
    }
    out.put_slice(b"}\n\n");
}

/// The final SSE message for a queue the hub closed. `head` is the feed's cursor, final once
/// the hub is shut down: the shutdown status carries it as its `id`, so a filtered client's
/// resume cursor moves past events that did not match it and the restart resumes without a
/// reset (the store continues the sequence after the same head).
pub fn sse_close(reason: CloseReason, head: Cursor) -> Bytes {
    match reason {
        CloseReason::SlowClient => Bytes::from_static(
            b"event: error\ndata: {\"T\":\"error\",\"code\":407,\"msg\":\"slow client: could not keep up; reconnect to resume\"}\n\n",
        ),
        CloseReason::Shutdown => {
            let status = shutdown_status("server restarting; reconnect to resume");
            Bytes::from(format!(
                "retry: 1000\nid: {head}\nevent: status\ndata: {status}\n\n"
            ))
        }
        CloseReason::Reset => {
            let status = reset_status("the feed was reset; reconnect for a fresh snapshot");
            Bytes::from(format!("retry: 100\nevent: status\ndata: {status}\n\n"))
        }
    }
}

/// The `status` object (`sc: "reset"`) that ends a stream whose feed started a new log
/// (cluster mode), without an id like the shutdown status.
pub fn reset_status(message: &str) -> serde_json::Value {
    serde_json::json!({
        "T": "s",
        "S": "*",
        "sc": "reset",
        "sm": message,
        "t": chrono::Utc::now(),
    })
}

/// An event outside every feed's log (a `status` notice): its SSE frame has no `id:` line and
/// its sequence number is 0, which no feed ever issues. `trading` marks a trading status.
pub(super) fn encode_notice(json: &[u8], trading: bool) -> Entry {
    let mut frame = BytesMut::with_capacity(2 * json.len() + 32);
    frame.put_slice(b"event: status\ndata: ");
    let json_start = frame.len();
    frame.put_slice(json);
    let json_end = frame.len();
    frame.put_slice(b"\n\n");
    let sse_end = frame.len();
    frame.put_u8(b'[');
    frame.put_slice(json);
    frame.put_u8(b']');
    let all = frame.freeze();
    Entry {
        feed: Feed::Market,
        seq: 0,
        kind: EventKind::Status,
        symbol: None,
        tagged: Box::default(),
        sse: all.slice(..sse_end),
        json: all.slice(json_start..json_end),
        ws: all.slice(sse_end..),
        msgpack: None,
        trading,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Filter, Hub, HubSettings, SymbolFilter};
    use crate::market::{MarketEvent, Quote, SymbolUniverse, Trade};
    use crate::metrics::Metrics;

    fn hub() -> Hub {
        let hub = Hub::new(
            SymbolUniverse::new(["AAPL", "MSFT"]),
            HubSettings::default(),
            Arc::new(Metrics::default()),
            7,
        );
        for (n, symbol) in ["AAPL", "MSFT", "AAPL"].into_iter().enumerate() {
            let time = chrono::DateTime::from_timestamp(1_800_000_000 + n as i64, 0);
            let trade = MarketEvent::Trade(Trade {
                symbol: symbol.into(),
                id: n as u64,
                venue: String::new(),
                price: 100.0 + n as f64,
                size: 1.0,
                time: time.unwrap_or_default(),
                conditions: vec![],
            });
            hub.publish_event(trade).expect("a valid trade");
        }
        let quote = MarketEvent::Quote(Quote {
            symbol: "AAPL".into(),
            bid_price: 99.0,
            bid_size: 1.0,
            bid_venue: String::new(),
            ask_price: 101.0,
            ask_size: 2.0,
            ask_venue: String::new(),
            time: chrono::DateTime::from_timestamp(1_800_000_010, 0).unwrap_or_default(),
        });
        hub.publish_event(quote).expect("a valid quote");
        hub
    }

    /// The frame as it was first written, with `format!`: the one-buffer writer must produce
    /// exactly these bytes.
    fn reference_initial_bytes(feed: Feed, subscribed: &Subscribed, retry_ms: u64) -> Vec<u8> {
        let mut out = format!("retry: {retry_ms}\n\n").into_bytes();
        if let Some(entries) = &subscribed.snapshot {
            let mut data = b"{\"reset\":".to_vec();
            data.extend_from_slice(if subscribed.reset.is_some() {
                b"true"
            } else {
                b"false"
            });
            if let Some(reason) = subscribed.reset {
                data.extend_from_slice(b",\"reason\":");
                data.extend_from_slice(serde_json::json!(reason.message()).to_string().as_bytes());
            }
            data.extend_from_slice(format!(",\"cursor\":\"{}\"", subscribed.cursor).as_bytes());
            let groups: &[(&str, EventKind)] = match feed {
                Feed::Market => &[
                    ("trades", EventKind::Trade),
                    ("quotes", EventKind::Quote),
                    ("bars", EventKind::Bar),
                    ("statuses", EventKind::Status),
                ],
                Feed::News => &[("news", EventKind::News)],
                Feed::Alerts => &[("alerts", EventKind::Alert)],
            };
            for (name, kind) in groups {
                let items: Vec<&[u8]> = entries
                    .iter()
                    .filter(|e| e.kind == *kind)
                    .map(|e| e.json.as_ref())
                    .collect();
                data.extend_from_slice(format!(",\"{name}\":[").as_bytes());
                data.extend_from_slice(&items.join(&b','));
                data.push(b']');
            }
            data.push(b'}');
            out.extend_from_slice(
                format!("id: {}\nevent: snapshot\ndata: ", subscribed.cursor).as_bytes(),
            );
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\n\n");
        }
        for entry in &subscribed.replay {
            out.extend_from_slice(&entry.sse);
        }
        out
    }

    #[test]
    fn initial_bytes_match_the_reference_frames_for_snapshots_resets_and_replays() {
        let hub = hub();
        let everything = || Filter {
            symbols: SymbolFilter::All,
            kinds: EventKind::Trade.bit() | EventKind::Quote.bit() | EventKind::Bar.bit(),
        };
        let one_symbol = || Filter {
            symbols: SymbolFilter::from_ids([0]),
            kinds: EventKind::Trade.bit(),
        };
        let cases = [
            (everything(), None),
            (one_symbol(), None),
            // Another epoch: a reset with its reason and a snapshot.
            (everything(), Some(Cursor { epoch: 1, seq: 1 })),
            // A cursor in the window: a replay, no snapshot.
            (one_symbol(), Some(Cursor { epoch: 7, seq: 1 })),
        ];
        for (filter, resume) in cases {
            let queue = crate::hub::SubscriberQueue::with_capacity(16);
            let subscribed = hub.subscribe(Feed::Market, filter, resume, true, &queue);
            let written = sse_opening(Feed::Market, &subscribed, 2500);
            let expected = reference_initial_bytes(Feed::Market, &subscribed, 2500);
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected),
                "resume {resume:?}"
            );
        }
    }
}
