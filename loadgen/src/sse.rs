//! An incremental Server-Sent Events parser (the EventSource framing rules: `\n`, `\r\n` or
//! `\r` line ends, `field: value` lines, comments, blank line dispatches) that accepts input
//! split at any byte, and the scan that pulls send timestamps out of event data.

/// Largest line kept; a longer one is truncated so a hostile stream cannot grow memory.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Parser state for one stream. Buffers only a partial line and the event being assembled.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The previous input ended with `\r`, so a leading `\n` belongs to that line end.
    after_cr: bool,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; calls `dispatch(event_name, data)` for each complete event.
    pub(crate) fn feed(&mut self, mut input: &[u8], dispatch: &mut impl FnMut(&[u8], &[u8])) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while let Some(end) = input.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line_end = input[end];
            if self.line.is_empty() {
                self.process_line(&input[..end], dispatch);
            } else {
                self.push_partial(&input[..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, dispatch);
                self.line = line;
                self.line.clear();
            }
            input = &input[end + 1..];
            if line_end == b'\r' {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.push_partial(input);
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn process_line(&mut self, line: &[u8], dispatch: &mut impl FnMut(&[u8], &[u8])) {
        if line.is_empty() {
            if self.has_data {
                dispatch(&self.event, &self.data);
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            // `id` and `retry` matter to a browser's reconnect, not to the measurement.
            _ => {}
        }
    }
}

/// Calls `found` with every number that follows a `"i":` key in `data` (a trade's id, which
/// the publisher sets to the send time in nanoseconds since the epoch).
pub(crate) fn scan_trade_ids(data: &[u8], mut found: impl FnMut(u64)) {
    const KEY: &[u8] = b"\"i\":";
    let mut rest = data;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        let digits_start = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[digits_start..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        let mut value: u64 = 0;
        let mut overflow = false;
        for &digit in &rest[..digits] {
            match value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(digit - b'0')))
            {
                Some(next) => value = next,
                None => overflow = true,
            }
        }
        if !overflow {
            found(value);
        }
        rest = &rest[digits..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pieces: &[&[u8]]) -> Vec<(String, String)> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut |event, data| {
                events.push((
                    String::from_utf8_lossy(event).into_owned(),
                    String::from_utf8_lossy(data).into_owned(),
                ));
            });
        }
        events
    }

    const STREAM: &[u8] = b"retry: 2000\n\n: hb\n\nid: 7-1\nevent: trade\ndata: {\"i\":1}\n\n\
        data: line one\r\ndata:line two\r\n\r\nevent: snapshot\rdata: {}\r\r";

    fn expected() -> Vec<(String, String)> {
        vec![
            ("trade".into(), "{\"i\":1}".into()),
            ("".into(), "line one\nline two".into()),
            ("snapshot".into(), "{}".into()),
        ]
    }

    #[test]
    fn events_comments_and_every_line_ending_parse_in_one_piece() {
        assert_eq!(parse(&[STREAM]), expected());
    }

    #[test]
    fn events_parse_identically_when_the_stream_is_split_at_any_byte() {
        for split in 0..=STREAM.len() {
            let (left, right) = STREAM.split_at(split);
            assert_eq!(parse(&[left, right]), expected(), "split at {split}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&bytes), expected());
    }

    #[test]
    fn a_crlf_split_between_two_reads_is_one_line_end() {
        // "\r" ends one read and "\n" starts the next: still one line end, not two, so
        // the data line is not dispatched early as an empty-line event boundary.
        let events = parse(&[b"data: a\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(events, vec![("".into(), "a\nb".into())]);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        assert!(parse(&[b"event: trade\n\n: comment\n\n"]).is_empty());
    }

    #[test]
    fn trade_ids_are_extracted_from_objects_and_arrays() {
        let mut ids = Vec::new();
        scan_trade_ids(
            br#"[{"T":"t","S":"AAPL","i":1700000000123456789,"p":1},{"T":"t","i": 42},{"i":"x"}]"#,
            |id| ids.push(id),
        );
        assert_eq!(ids, vec![1_700_000_000_123_456_789, 42]);
        let mut none = Vec::new();
        scan_trade_ids(br#"{"i":99999999999999999999999}"#, |id| none.push(id));
        assert!(none.is_empty(), "an overflowing id is skipped");
    }
}
