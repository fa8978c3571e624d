//! Opt-in stage timing of cluster commands, for finding where an order's latency goes.
//!
//! Off unless the environment variable `TICKGATE_ORDER_TRACE` names a file when the process
//! starts (the process writes to that name plus `.<pid>`). Then the exchange adds its own timestamps to every reply ([`ExchangeStamps`]), and
//! the requesting node appends one JSON line per answered command to that file: when the call
//! started, when `XADD` returned, when the exchange's read returned it, when the exchange
//! handed it to its actor and got the stored result back (engine step, queueing behind other
//! steps and the store's commit), when the requester's listener received the reply and when
//! the waiting call resumed. All are wall-clock microseconds, so stages that cross processes
//! are exact only between processes on one machine (or with closely synchronised clocks).
//! `scripts/order-trace` turns such files into per-stage percentiles.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::OnceLock;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The environment variable naming the trace file.
pub(super) const TRACE_ENV: &str = "TICKGATE_ORDER_TRACE";

/// The exchange's timestamps for one command, carried in its reply message.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct ExchangeStamps {
    /// The read (`XREADGROUP` or `XAUTOCLAIM`) that returned the command had returned.
    pub(super) read: i64,
    /// The command was handed to the exchange's actor.
    pub(super) start: i64,
    /// The actor's reply came back: engine step and store commit done.
    pub(super) done: i64,
    /// Commands in the same read.
    pub(super) batch: usize,
}

/// The requesting node's side of one traced command.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequesterStamps {
    pub(super) call: i64,
    pub(super) added: i64,
    pub(super) received: i64,
    pub(super) woken: i64,
}

#[derive(Serialize)]
struct Line<'a> {
    node: &'a str,
    op: &'a str,
    call: i64,
    added: i64,
    read: i64,
    start: i64,
    done: i64,
    received: i64,
    woken: i64,
    batch: usize,
    /// Run in-process on the exchange's own node: no stream, no reply channel (`call` to
    /// `woken` is the whole command; the other stamps equal `call` or `woken`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    local: bool,
}

fn sink() -> Option<&'static Mutex<BufWriter<File>>> {
    static SINK: OnceLock<Option<Mutex<BufWriter<File>>>> = OnceLock::new();
    SINK.get_or_init(|| {
        // One file per process (the name gets `.<pid>`): buffered lines of several processes
        // appended to one file could interleave mid-line.
        let mut path = std::env::var_os(TRACE_ENV)?;
        path.push(format!(".{}", std::process::id()));
        match File::options().create(true).append(true).open(&path) {
            Ok(file) => Some(Mutex::new(BufWriter::new(file))),
            Err(error) => {
                tracing::warn!(%error, path = ?path, "order trace file not opened; tracing off");
                None
            }
        }
    })
    .as_ref()
}

/// Whether stage timing is on in this process.
pub(super) fn enabled() -> bool {
    sink().is_some()
}

/// Wall-clock microseconds.
pub(super) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Appends one command's stages to the trace file (buffered; flushed every 64 KiB and by
/// [`flush`]).
pub(super) fn record(node: &str, op: &str, requester: RequesterStamps, exchange: ExchangeStamps) {
    if sink().is_none() {
        return;
    }
    let line = Line {
        node,
        op,
        call: requester.call,
        added: requester.added,
        read: exchange.read,
        start: exchange.start,
        done: exchange.done,
        received: requester.received,
        woken: requester.woken,
        batch: exchange.batch,
        local: false,
    };
    write(&line);
}

/// Appends one command run in-process on the exchange's node ([`super::local`]): called at
/// `call`, answered at `woken`.
pub(super) fn record_local(node: &str, op: &str, call: i64, woken: i64) {
    write(&Line {
        node,
        op,
        call,
        added: call,
        read: call,
        start: call,
        done: woken,
        received: woken,
        woken,
        batch: 1,
        local: true,
    });
}

fn write(line: &Line<'_>) {
    let Some(sink) = sink() else { return };
    if let Ok(text) = serde_json::to_string(line) {
        let mut writer = sink.lock();
        let _ = writeln!(writer, "{text}");
    }
}

/// Writes out what is buffered (the listener calls it when the node is quiet).
pub(super) fn flush() {
    if let Some(sink) = sink() {
        let _ = sink.lock().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::super::relay::ReplyItem;
    use super::*;

    #[test]
    fn a_reply_carries_the_stamps_only_when_given_and_decodes_without_them() {
        let stamps = ExchangeStamps {
            read: 1,
            start: 2,
            done: 3,
            batch: 4,
        };
        let body = serde_json::value::RawValue::from_string("{}".into()).expect("json");
        let traced = ReplyItem {
            id: "n1-0-1".into(),
            reply: &body,
            trace: Some(stamps),
        };
        let text = serde_json::to_string(&traced).expect("encodes");
        let back: ReplyItem = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back.trace, Some(stamps));
        // A node without stage timing (or an older one) sends no `trace` at all.
        let plain = ReplyItem {
            trace: None,
            ..traced
        };
        let text = serde_json::to_string(&plain).expect("encodes");
        assert!(!text.contains("trace"), "{text}");
        let old: ReplyItem =
            serde_json::from_str(r#"{"id":"n1-0-2","reply":{}}"#).expect("decodes");
        assert_eq!(old.trace, None);
    }
}
