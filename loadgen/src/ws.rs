//! The client half of WebSocket framing (RFC 6455) the load generator needs: the upgrade
//! request, masked client frames, and an incremental decoder of the server's frames that
//! accepts input split anywhere and reassembles fragmented messages.

use crate::http::Url;

/// Largest message accepted; a bigger one is an error rather than unbounded memory.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WsError {
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("server frames must not be masked")]
    MaskedServerFrame,
    #[error("continuation frame without a message to continue")]
    StrayContinuation,
}

/// What a complete server frame means to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WsEvent<'a> {
    /// A whole text or binary message (fragments already joined).
    Message(&'a [u8]),
    Ping(&'a [u8]),
    Close,
}

pub(crate) const OPCODE_TEXT: u8 = 0x1;
pub(crate) const OPCODE_PONG: u8 = 0xA;

/// The upgrade request; the key need not be secret, only present and well formed.
pub(crate) fn upgrade_request(url: &Url, headers: &[(&str, &str)], key_seed: u64) -> Vec<u8> {
    let key = base64_16(key_seed);
    let mut all: Vec<(&str, &str)> = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", &key),
        ("Sec-WebSocket-Version", "13"),
    ];
    all.extend_from_slice(headers);
    crate::http::request("GET", url, &all, None)
}

/// Base64 of 16 bytes derived from `seed` (24 characters with padding).
fn base64_16(seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&(!seed).rotate_left(17).to_le_bytes());
    let mut out = String::with_capacity(24);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A masked client frame (FIN set) with the given opcode and payload.
pub(crate) fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reassembles server frames from arbitrary reads.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buffer: Vec<u8>,
    /// Payload of a fragmented message so far.
    fragments: Vec<u8>,
    in_fragmented: bool,
}

impl FrameDecoder {
    /// Feeds bytes; calls `on_event` for each complete frame's meaning.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        on_event: &mut impl FnMut(WsEvent<'_>),
    ) -> Result<(), WsError> {
        self.buffer.extend_from_slice(input);
        let mut consumed = 0;
        while let Some((header_len, payload_len, fin, opcode)) =
            frame_header(&self.buffer[consumed..])?
        {
            let start = consumed + header_len;
            let Some(end) = start.checked_add(payload_len) else {
                return Err(WsError::TooLarge);
            };
            if payload_len > MAX_MESSAGE_BYTES {
                return Err(WsError::TooLarge);
            }
            if end > self.buffer.len() {
                break;
            }
            let payload = &self.buffer[start..end];
            match opcode {
                0x0 => {
                    if !self.in_fragmented {
                        return Err(WsError::StrayContinuation);
                    }
                    if self.fragments.len() + payload.len() > MAX_MESSAGE_BYTES {
                        return Err(WsError::TooLarge);
                    }
                    self.fragments.extend_from_slice(payload);
                    if fin {
                        self.in_fragmented = false;
                        on_event(WsEvent::Message(&self.fragments));
                        self.fragments.clear();
                    }
                }
                0x1 | 0x2 => {
                    if fin {
                        on_event(WsEvent::Message(payload));
                    } else {
                        self.in_fragmented = true;
                        self.fragments.clear();
                        self.fragments.extend_from_slice(payload);
                    }
                }
                0x8 => on_event(WsEvent::Close),
                0x9 => on_event(WsEvent::Ping(payload)),
                // Pongs and reserved opcodes carry nothing the measurement needs.
                _ => {}
            }
            consumed = end;
        }
        self.buffer.drain(..consumed);
        Ok(())
    }
}

/// `(header length, payload length, fin, opcode)` once the header is complete.
fn frame_header(buf: &[u8]) -> Result<Option<(usize, usize, bool, u8)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err(WsError::MaskedServerFrame);
    }
    let (header_len, payload_len) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&buf[2..10]);
            let len = usize::try_from(u64::from_be_bytes(len)).map_err(|_| WsError::TooLarge)?;
            (10, len)
        }
        len => (2, usize::from(len)),
    };
    Ok(Some((header_len, payload_len, fin, opcode)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(len as u8),
            len @ 126..=0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn decode(pieces: &[&[u8]]) -> Vec<String> {
        let mut decoder = FrameDecoder::default();
        let mut seen = Vec::new();
        for piece in pieces {
            decoder
                .feed(piece, &mut |event| {
                    seen.push(match event {
                        WsEvent::Message(m) => format!("msg:{}", String::from_utf8_lossy(m)),
                        WsEvent::Ping(p) => format!("ping:{}", String::from_utf8_lossy(p)),
                        WsEvent::Close => "close".into(),
                    })
                })
                .expect("valid frames");
        }
        seen
    }

    #[test]
    fn frames_of_every_length_form_and_fragments_decode_when_split_anywhere() {
        let long = "x".repeat(300);
        let huge = "y".repeat(70_000);
        let mut stream = server_frame(true, 1, br#"[{"T":"t","i":1}]"#);
        stream.extend(server_frame(false, 1, b"frag"));
        stream.extend(server_frame(true, 9, b"p"));
        stream.extend(server_frame(true, 0, b"ment"));
        stream.extend(server_frame(true, 2, long.as_bytes()));
        stream.extend(server_frame(true, 1, huge.as_bytes()));
        stream.extend(server_frame(true, 8, b""));
        let expected = vec![
            r#"msg:[{"T":"t","i":1}]"#.to_string(),
            "ping:p".into(),
            "msg:fragment".into(),
            format!("msg:{long}"),
            format!("msg:{huge}"),
            "close".into(),
        ];
        assert_eq!(decode(&[&stream]), expected);
        for split in (0..stream.len()).step_by(97).chain(0..40) {
            let (left, right) = stream.split_at(split);
            assert_eq!(decode(&[left, right]), expected, "split at {split}");
        }
    }

    #[test]
    fn masked_server_frames_and_stray_continuations_are_errors() {
        let mut decoder = FrameDecoder::default();
        assert_eq!(
            decoder.feed(&[0x81, 0x81, 1, 2, 3, 4, 5], &mut |_| {}),
            Err(WsError::MaskedServerFrame)
        );
        let mut decoder = FrameDecoder::default();
        assert_eq!(
            decoder.feed(&server_frame(true, 0, b"x"), &mut |_| {}),
            Err(WsError::StrayContinuation)
        );
    }

    #[test]
    fn client_frames_are_masked_and_unmask_to_the_payload() {
        let mask = [1, 2, 3, 4];
        let frame = client_frame(OPCODE_TEXT, b"hello", mask);
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1], 0x80 | 5);
        assert_eq!(&frame[2..6], &mask);
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
        let long = client_frame(OPCODE_TEXT, &[0; 200], mask);
        assert_eq!((long[1], long[2], long[3]), (0x80 | 126, 0, 200));
    }

    #[test]
    fn the_upgrade_request_has_a_valid_key() {
        let url = Url::parse("http://127.0.0.1:1/sub?id=a").expect("url");
        let text = String::from_utf8(upgrade_request(&url, &[], 7)).expect("utf8");
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("key header");
        assert_eq!(key.len(), 24);
        assert!(key.ends_with("=="));
        assert!(text.contains("Upgrade: websocket\r\n"));
    }
}
