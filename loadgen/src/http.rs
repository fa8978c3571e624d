//! The tiny HTTP/1.1 client side the load generator needs: request building, response-head
//! parsing, and an incremental chunked-transfer decoder that accepts input split anywhere.

use std::fmt::Write as _;

/// Why a response could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("response head is not valid HTTP/1.1: {0}")]
    BadHead(&'static str),
    #[error("response head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("bad chunked encoding: {0}")]
    BadChunk(&'static str),
}

/// Largest response head accepted; real servers send a few hundred bytes.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) chunked: bool,
    pub(crate) content_length: Option<usize>,
    /// Bytes of the head including the blank line; the body starts after them.
    pub(crate) head_len: usize,
}

/// A URL split into what a raw HTTP/1.1 client needs (plain `http://` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, always starting with `/`.
    pub(crate) path: String,
}

impl Url {
    pub(crate) fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("ws://"))
            .ok_or_else(|| format!("{text:?}: only http:// and ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("{text:?}: port {port:?} is not a number"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        Ok(Url {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    pub(crate) fn host_header(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Builds a request head (and body) with the given extra headers.
pub(crate) fn request(
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "{method} {} HTTP/1.1\r\nHost: {}\r\n",
        url.path,
        url.host_header()
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some((content_type, body)) = body {
        let _ = write!(
            head,
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some((_, body)) = body {
        out.extend_from_slice(body);
    }
    out
}

/// Parses a response head from the start of `buf`; `Ok(None)` means more bytes are needed.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<ResponseHead>, HttpError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge(MAX_HEAD_BYTES));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::BadHead("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::BadHead("empty"))?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(HttpError::BadHead(
            "status line does not start with HTTP/1.x",
        ));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::BadHead("status code is not a number"))?;
    let mut chunked = false;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::BadHead("header line without a colon"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| HttpError::BadHead("content-length is not a number"))?,
            );
        }
    }
    Ok(Some(ResponseHead {
        status,
        chunked,
        content_length,
        head_len: end + 4,
    }))
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size line; the value so far.
    Size(usize),
    /// Skipping a chunk extension up to the end of the size line.
    Extension(usize),
    /// Expecting the `\n` after the size line's `\r`.
    SizeLf(usize),
    /// Bytes of chunk data still to come.
    Data(usize),
    /// Expecting the `\r` after the data.
    DataCr,
    /// Expecting the `\n` after the data.
    DataLf,
    /// After the last (zero) chunk: trailer lines until an empty one; whether the current
    /// line has content.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally, handing out slices of the input.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size(0),
        }
    }
}

impl ChunkedDecoder {
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Feeds `input`, calling `out` with each run of body bytes, in order.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]),
    ) -> Result<(), HttpError> {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            self.state = match self.state {
                ChunkState::Size(size) => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (byte as char).to_digit(16).unwrap_or(0) as usize;
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or(HttpError::BadChunk("chunk size overflows"))?;
                        ChunkState::Size(size)
                    }
                    b';' | b' ' | b'\t' => ChunkState::Extension(size),
                    b'\r' => ChunkState::SizeLf(size),
                    _ => return Err(HttpError::BadChunk("chunk size is not hexadecimal")),
                },
                ChunkState::Extension(size) => match byte {
                    b'\r' => ChunkState::SizeLf(size),
                    _ => ChunkState::Extension(size),
                },
                ChunkState::SizeLf(size) => match (byte, size) {
                    (b'\n', 0) => ChunkState::Trailer(false),
                    (b'\n', size) => ChunkState::Data(size),
                    _ => return Err(HttpError::BadChunk("size line not ended by CRLF")),
                },
                ChunkState::Data(left) => {
                    let take = left.min(input.len() - at);
                    out(&input[at..at + take]);
                    at += take;
                    self.state = if take == left {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left - take)
                    };
                    continue;
                }
                ChunkState::DataCr => match byte {
                    b'\r' => ChunkState::DataLf,
                    _ => return Err(HttpError::BadChunk("chunk data not followed by CRLF")),
                },
                ChunkState::DataLf => match byte {
                    b'\n' => ChunkState::Size(0),
                    _ => return Err(HttpError::BadChunk("chunk data not followed by CRLF")),
                },
                ChunkState::Trailer(content) => match byte {
                    b'\r' => ChunkState::TrailerLf(content),
                    _ => ChunkState::Trailer(true),
                },
                ChunkState::TrailerLf(content) => match (byte, content) {
                    (b'\n', false) => ChunkState::Done,
                    (b'\n', true) => ChunkState::Trailer(false),
                    _ => return Err(HttpError::BadChunk("trailer line not ended by CRLF")),
                },
                ChunkState::Done => return Ok(()),
            };
            at += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_gives_status_and_framing_and_where_the_body_starts() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nabc";
        let head = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head.status, 200);
        assert!(head.chunked);
        assert_eq!(head.content_length, None);
        assert_eq!(&raw[head.head_len..], b"abc");
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_garbage_is_an_error() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nA: b\r\n"), Ok(None));
        assert!(parse_head(b"SMTP ready\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; MAX_HEAD_BYTES + 1]).is_err());
    }

    #[test]
    fn urls_split_into_host_port_and_path() {
        let url = Url::parse("http://127.0.0.1:8080/v1/stream/market?symbols=*").expect("url");
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 8080);
        assert_eq!(url.path, "/v1/stream/market?symbols=*");
        assert_eq!(Url::parse("http://h").expect("url").path, "/");
        assert!(Url::parse("https://h/").is_err());
        assert!(Url::parse("http://h:x/").is_err());
    }

    fn decode_all(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        for piece in pieces {
            decoder
                .decode(piece, |bytes| body.extend_from_slice(bytes))
                .expect("valid chunked body");
        }
        (body, decoder.is_done())
    }

    #[test]
    fn chunked_body_decodes_identically_when_split_at_every_point() {
        let encoded: &[u8] =
            b"5\r\nhello\r\n1;ext=1\r\n \r\nB\r\nworld-wide!\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (whole, done) = decode_all(&[encoded]);
        assert_eq!(whole, b"hello world-wide!");
        assert!(done);
        for split in 0..=encoded.len() {
            let (left, right) = encoded.split_at(split);
            assert_eq!(
                decode_all(&[left, right]),
                (whole.clone(), true),
                "split {split}"
            );
        }
        // One byte at a time too.
        let bytes: Vec<&[u8]> = encoded.chunks(1).collect();
        assert_eq!(decode_all(&bytes), (whole, true));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let mut decoder = ChunkedDecoder::default();
        assert!(decoder.decode(b"zz\r\n", |_| {}).is_err());
        let mut decoder = ChunkedDecoder::default();
        assert!(decoder.decode(b"2\r\nabX", |_| {}).is_err());
        let mut decoder = ChunkedDecoder::default();
        assert!(
            decoder
                .decode(b"fffffffffffffffffffff\r\n", |_| {})
                .is_err()
        );
    }

    #[test]
    fn requests_carry_host_headers_and_body_length() {
        let url = Url::parse("http://127.0.0.1:9/pub?id=a").expect("url");
        let raw = request(
            "POST",
            &url,
            &[("Authorization", "Bearer t")],
            Some(("application/json", b"{}")),
        );
        let text = String::from_utf8(raw).expect("utf8");
        assert!(text.starts_with("POST /pub?id=a HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(text.contains("Authorization: Bearer t\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
