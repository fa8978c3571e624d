//! File replay: plays a recording (CSV or NDJSON of protocol-shaped events) into the hub at
//! real speed or a speed factor, optionally looping with times shifted forward so no symbol's
//! time ever goes backwards. A malformed line is logged with its line number, counted and
//! skipped; the rest of the file still plays.
//!
//! Due times are computed from the recorded times against one start instant (not by sleeping
//! the gap after each publish), so playback does not drift.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ingest::SourceHealth;
use crate::ingest::config::{ReplayFormat, ReplaySettings};
use crate::ingest::source::SourceContext;
use crate::market::MarketEvent;

/// One playable line of a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRecord {
    /// 1-based line number in the file.
    pub line: usize,
    pub event: MarketEvent,
}

/// A line that could not be read, with the reason shown in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedLine {
    pub line: usize,
    pub reason: String,
}

/// A parsed recording: what will play, and what was skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    pub records: Vec<ReplayRecord>,
    pub malformed: Vec<MalformedLine>,
}

/// Lines that are neither data nor a problem: blank lines and `#` comments.
fn is_skippable(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#')
}

/// Parses a whole recording in the given format.
pub fn parse_recording(text: &str, format: ReplayFormat) -> Recording {
    match format {
        ReplayFormat::Ndjson => parse_ndjson(text),
        ReplayFormat::Csv => parse_csv(text),
    }
}

fn parse_ndjson(text: &str) -> Recording {
    let mut recording = Recording::default();
    for (index, line) in text.lines().enumerate() {
        if is_skippable(line) {
            continue;
        }
        match serde_json::from_str::<MarketEvent>(line) {
            Ok(event) => recording.records.push(ReplayRecord {
                line: index + 1,
                event,
            }),
            Err(error) => recording.malformed.push(MalformedLine {
                line: index + 1,
                reason: error.to_string(),
            }),
        }
    }
    recording
}

/// Splits one CSV line (RFC 4180 quoting, no embedded newlines).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                other => field.push(other),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' => {}
            other => {
                field.push(other);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

/// Columns a CSV row of each kind reads; `c` is conditions for trades and close for bars.
const CSV_COLUMNS: [&str; 20] = [
    "T", "S", "t", "i", "x", "p", "s", "c", "bp", "bs", "bx", "ap", "as", "ax", "o", "h", "l", "v",
    "n", "vw",
];

#[derive(Clone, Copy)]
enum CellType {
    Text,
    Number,
    Integer,
    Conditions,
}

fn columns_of(kind: &str) -> Option<&'static [(&'static str, CellType)]> {
    use CellType::*;
    match kind {
        "t" => Some(&[
            ("S", Text),
            ("t", Text),
            ("i", Integer),
            ("x", Text),
            ("p", Number),
            ("s", Number),
            ("c", Conditions),
        ]),
        "q" => Some(&[
            ("S", Text),
            ("t", Text),
            ("bp", Number),
            ("bs", Number),
            ("bx", Text),
            ("ap", Number),
            ("as", Number),
            ("ax", Text),
        ]),
        "b" => Some(&[
            ("S", Text),
            ("t", Text),
            ("o", Number),
            ("h", Number),
            ("l", Number),
            ("c", Number),
            ("v", Number),
            ("n", Integer),
            ("vw", Number),
        ]),
        _ => None,
    }
}

fn csv_row_to_event(header: &[String], fields: &[String]) -> Result<MarketEvent, String> {
    if fields.len() != header.len() {
        return Err(format!(
            "expected {} fields as in the header, found {}",
            header.len(),
            fields.len()
        ));
    }
    let get = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| fields.get(i))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let kind = get("T").ok_or("column T is empty")?;
    let columns =
        columns_of(kind).ok_or_else(|| format!("T {kind:?} is not one of t, q, b in CSV"))?;
    let mut object = Map::new();
    object.insert("T".into(), Value::String(kind.to_owned()));
    for (name, cell_type) in columns {
        let Some(raw) = get(name) else { continue };
        let value = match cell_type {
            CellType::Text => Value::String(raw.to_owned()),
            CellType::Integer => Value::from(
                raw.parse::<u64>()
                    .map_err(|_| format!("column {name}: {raw:?} is not a whole number"))?,
            ),
            CellType::Number => {
                let number = raw
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| format!("column {name}: {raw:?} is not a number"))?;
                serde_json::Number::from_f64(number)
                    .map(Value::Number)
                    .ok_or_else(|| format!("column {name}: {raw:?} is not a number"))?
            }
            CellType::Conditions => Value::Array(
                raw.split_whitespace()
                    .map(|c| Value::String(c.to_owned()))
                    .collect(),
            ),
        };
        object.insert((*name).to_owned(), value);
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| e.to_string())
}

fn parse_csv(text: &str) -> Recording {
    let mut recording = Recording::default();
    let mut header: Option<Vec<String>> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if is_skippable(line) {
            continue;
        }
        let fields = match split_csv_line(line) {
            Ok(fields) => fields,
            Err(reason) => {
                recording.malformed.push(MalformedLine {
                    line: number,
                    reason,
                });
                continue;
            }
        };
        let Some(header) = &header else {
            let names: Vec<String> = fields.iter().map(|f| f.trim().to_owned()).collect();
            if let Some(unknown) = names.iter().find(|n| !CSV_COLUMNS.contains(&n.as_str())) {
                recording.malformed.push(MalformedLine {
                    line: number,
                    reason: format!("header names unknown column {unknown:?}"),
                });
            }
            if !names.iter().any(|n| n == "T") {
                recording.malformed.push(MalformedLine {
                    line: number,
                    reason: "the header must name the columns and include T".into(),
                });
                return recording;
            }
            header = Some(names);
            continue;
        };
        match csv_row_to_event(header, &fields) {
            Ok(event) => recording.records.push(ReplayRecord {
                line: number,
                event,
            }),
            Err(reason) => recording.malformed.push(MalformedLine {
                line: number,
                reason,
            }),
        }
    }
    recording
}

/// Moves every time of an event forward by `by` (for looped passes); `None` when a time would
/// leave the representable range.
pub fn shift_event(event: &MarketEvent, by: chrono::Duration) -> Option<MarketEvent> {
    let shift = |time: &mut DateTime<Utc>| -> Option<()> {
        *time = time.checked_add_signed(by)?;
        Some(())
    };
    let mut event = event.clone();
    match &mut event {
        MarketEvent::Trade(t) => shift(&mut t.time)?,
        MarketEvent::Quote(q) => shift(&mut q.time)?,
        MarketEvent::Bar(b) => shift(&mut b.time)?,
        MarketEvent::Status(s) => shift(&mut s.time)?,
        MarketEvent::News(n) => {
            shift(&mut n.created_at)?;
            shift(&mut n.updated_at)?;
        }
        MarketEvent::Alert(a) => shift(&mut a.time)?,
    }
    Some(event)
}

/// Recorded time span of a recording: (first event's time, earliest, latest).
fn time_span(records: &[ReplayRecord]) -> Option<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)> {
    let first = records.first()?.event.time();
    let (mut earliest, mut latest) = (first, first);
    for record in records {
        let time = record.event.time();
        earliest = earliest.min(time);
        latest = latest.max(time);
    }
    Some((first, earliest, latest))
}

fn scaled(recorded: chrono::Duration, speed: f64) -> Duration {
    let seconds = recorded.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6 / speed;
    if seconds.is_finite() && seconds > 0.0 {
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// Plays a parsed recording until it ends (or forever with `repeat`), or until `shutdown`.
/// Returns how many events the hub accepted.
pub async fn play(
    recording: &Recording,
    settings: &ReplaySettings,
    context: &SourceContext,
    shutdown: &CancellationToken,
) -> u64 {
    let Some((first, earliest, latest)) = time_span(&recording.records) else {
        return 0;
    };
    let loop_gap = chrono::Duration::from_std(settings.loop_gap).unwrap_or_default();
    // Each pass is shifted by more than the recording spans, so every time in pass k+1 is
    // later than every time in pass k, for every symbol.
    let mut pass_shift = (latest - earliest)
        .checked_add(&loop_gap.max(chrono::Duration::milliseconds(1)))
        .unwrap_or(chrono::Duration::MAX);
    // Bars start on whole minutes; shifting them by anything else would publish bars that
    // start mid-minute, so a recording with bars loops on a whole-minute shift.
    let has_bars = recording
        .records
        .iter()
        .any(|r| matches!(r.event, MarketEvent::Bar(_)));
    if has_bars {
        let minute_ms = chrono::Duration::minutes(1).num_milliseconds();
        let minutes = (pass_shift.num_milliseconds() + minute_ms - 1) / minute_ms;
        pass_shift = chrono::Duration::milliseconds(minutes.max(1).saturating_mul(minute_ms));
    }
    // Far enough to mean "never", near enough not to overflow an `Instant`.
    let far_future = Duration::from_secs(86_400 * 365 * 30);
    let start = Instant::now();
    let mut accepted = 0u64;
    let mut previous_due = start;
    let mut pass: i32 = 0;
    loop {
        let Some(shift) = pass_shift.checked_mul(pass) else {
            tracing::warn!(source = %context.name, "replay stopped: loop times out of range");
            return accepted;
        };
        for record in &recording.records {
            let offset = (record.event.time() - first)
                .checked_add(&shift)
                .unwrap_or(chrono::Duration::MAX);
            let delay = scaled(offset, settings.speed).min(far_future);
            // File order wins: an event recorded earlier than its predecessor plays right after.
            let due = start
                .checked_add(delay)
                .unwrap_or(previous_due)
                .max(previous_due);
            previous_due = due;
            tokio::select! {
                _ = shutdown.cancelled() => return accepted,
                _ = tokio::time::sleep_until(due) => {}
            }
            let event = if pass == 0 {
                record.event.clone()
            } else {
                match shift_event(&record.event, shift) {
                    Some(event) => event,
                    None => {
                        tracing::warn!(source = %context.name, line = record.line, "replay stopped: loop times out of range");
                        return accepted;
                    }
                }
            };
            match context.publish(event) {
                Ok(()) => accepted += 1,
                // Each pass refuses the same lines again: say so loudly only the first time.
                Err(error) if pass == 0 => tracing::warn!(
                    source = %context.name,
                    line = record.line,
                    %error,
                    "replay event refused"
                ),
                Err(error) => tracing::debug!(
                    source = %context.name,
                    line = record.line,
                    %error,
                    "replay event refused"
                ),
            }
        }
        if !settings.repeat {
            return accepted;
        }
        pass = pass.saturating_add(1);
    }
}

/// Loads the file, reports malformed lines, plays it, and keeps the source's health current.
pub async fn run(settings: ReplaySettings, context: SourceContext, shutdown: CancellationToken) {
    context.report(SourceHealth::Starting);
    let text = match tokio::fs::read_to_string(&settings.path).await {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(source = %context.name, path = %settings.path.display(), %error, "cannot read replay file");
            context.report(SourceHealth::Down {
                reason: format!("cannot read {}: {error}", settings.path.display()),
            });
            return;
        }
    };
    let recording = parse_recording(&text, settings.effective_format());
    for malformed in &recording.malformed {
        tracing::warn!(
            source = %context.name,
            path = %settings.path.display(),
            line = malformed.line,
            reason = %malformed.reason,
            "malformed replay line skipped"
        );
        context.reject("malformed");
    }
    if recording.records.is_empty() {
        context.report(SourceHealth::Down {
            reason: format!("{} holds no playable events", settings.path.display()),
        });
        return;
    }
    context.report(SourceHealth::Up);
    let accepted = play(&recording, &settings, &context, &shutdown).await;
    if !shutdown.is_cancelled() {
        tracing::info!(source = %context.name, accepted, "replay finished");
        context.report(SourceHealth::Degraded {
            reason: format!("replay finished: {accepted} events played"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_protocol_events_and_bad_rows_name_their_line() {
        let text = "# recorded\nT,S,t,i,x,p,s,c,bp,bs,ap,as,o,h,l,v,n,vw\n\
            t,AAPL,2026-01-02T14:30:00Z,7,V,227.5,100,@ I,,,,,,,,,,\n\
            q,AAPL,2026-01-02T14:30:00Z,,,,,,227.4,300,227.6,200,,,,,,\n\
            b,AAPL,2026-01-02T14:30:00Z,,,,,227.5,,,,,227.1,227.9,227.0,1000,12,227.4\n\
            t,AAPL,2026-01-02T14:30:01Z,8,V,abc,100,,,,,,,,,,,\n\
            t,AAPL,2026-01-02T14:30:01Z,9,V\n";
        let recording = parse_recording(text, ReplayFormat::Csv);
        assert_eq!(recording.records.len(), 3, "{recording:?}");
        assert_eq!(
            recording.records.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        match &recording.records[0].event {
            MarketEvent::Trade(trade) => {
                assert_eq!(trade.id, 7);
                assert_eq!(trade.conditions, vec!["@", "I"]);
            }
            other => panic!("expected a trade, got {other:?}"),
        }
        match &recording.records[2].event {
            MarketEvent::Bar(bar) => assert_eq!(bar.close, 227.5),
            other => panic!("expected a bar, got {other:?}"),
        }
        let lines: Vec<usize> = recording.malformed.iter().map(|m| m.line).collect();
        assert_eq!(lines, vec![6, 7]);
        assert!(recording.malformed[0].reason.contains("column p"));
    }

    #[test]
    fn quoted_csv_fields_keep_commas_and_quotes() {
        assert_eq!(
            split_csv_line(r#"a,"b,c","say ""hi""",d"#).expect("valid"),
            vec!["a", "b,c", "say \"hi\"", "d"]
        );
        assert!(split_csv_line(r#"a,"open"#).is_err());
    }
}
