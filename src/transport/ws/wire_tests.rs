//! Unit tests of the WebSocket wire: frame decoding across reads and fragments, the size and
//! time limits of `Inbound` (including fuzzed byte streams), and server frame encoding.

use super::*;
use actix_http::h1;
use actix_web::dev::Payload;

fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask = [1u8, 2, 3, 4];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn limits(keep: usize, hard: usize) -> InboundLimits {
    InboundLimits {
        keep,
        hard,
        fragment_timeout: Duration::from_secs(10),
    }
}

/// An inbound decoder fed `chunks`, as socket reads would, then the peer's end; messages
/// over `max` end the connection (the pre-authentication behaviour).
fn inbound(chunks: Vec<Vec<u8>>, max: usize) -> Inbound {
    inbound_with(chunks, limits(max, max))
}

fn inbound_with(chunks: Vec<Vec<u8>>, limits: InboundLimits) -> Inbound {
    let (mut sender, payload) = h1::Payload::create(false);
    for chunk in chunks {
        sender.feed_data(Bytes::from(chunk));
    }
    sender.feed_eof();
    Inbound::new(Source::Chunks(Payload::from(payload)), limits)
}

async fn all(mut inbound: Inbound) -> Vec<Incoming> {
    let mut out = Vec::new();
    while let Some(message) = inbound.recv().await {
        out.push(message);
    }
    out
}

#[actix_web::test]
async fn frames_split_across_reads_and_fragments_are_joined() {
    let mut bytes = masked(0x1, true, b"{\"action\":\"ping\"}");
    bytes.extend(masked(0x1, false, b"hel"));
    bytes.extend(masked(0x9, true, b"p")); // a ping between fragments
    bytes.extend(masked(0x0, false, "lo wö".as_bytes()));
    bytes.extend(masked(0x0, true, b"rld"));
    bytes.extend(masked(0x8, true, &1000u16.to_be_bytes()));
    let chunks = bytes.chunks(5).map(<[u8]>::to_vec).collect();
    assert_eq!(
        all(inbound(chunks, 1024)).await,
        vec![
            Incoming::Text("{\"action\":\"ping\"}".into()),
            Incoming::Ping(Bytes::from_static(b"p")),
            Incoming::Text("hello wörld".into()),
            Incoming::Close,
        ]
    );
}

#[actix_web::test]
async fn an_oversize_frame_is_refused_from_its_header() {
    // Only the header of a 10 MB frame arrives: no waiting for (or buffering) the rest.
    let header = masked(0x1, true, &vec![b'x'; 70_000])[..14].to_vec();
    assert_eq!(
        all(inbound(vec![header], 65_536)).await,
        vec![Incoming::Overflow(65_536)]
    );
}

#[actix_web::test]
async fn fragments_over_the_limit_overflow() {
    let mut bytes = masked(0x1, false, &[b'a'; 600]);
    bytes.extend(masked(0x0, true, &[b'b'; 600]));
    assert_eq!(
        all(inbound(vec![bytes], 1000)).await,
        vec![Incoming::Overflow(1000)]
    );
}

#[actix_web::test]
async fn a_message_over_keep_is_dropped_as_it_streams_and_the_next_one_is_read() {
    let (mut sender, payload) = h1::Payload::create(false);
    let mut inbound = Inbound::new(Source::Chunks(Payload::from(payload)), limits(100, 100_000));
    let big = masked(0x1, true, &vec![b'x'; 50_000]);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    for chunk in big.chunks(1000) {
        sender.feed_data(Bytes::copy_from_slice(chunk));
        while let Poll::Ready(Some(message)) = inbound.poll_recv(&mut cx) {
            out.push(message);
        }
        // Never more than one read chunk held, however much of the frame has arrived.
        assert!(
            inbound.buf.len() <= 1000,
            "{} bytes held",
            inbound.buf.len()
        );
    }
    // Then a fragmented message over `keep`: one refusal, its other fragments dropped.
    let mut more = masked(0x1, false, &[b'a'; 80]);
    more.extend(masked(0x9, true, b"p"));
    more.extend(masked(0x0, false, &[b'b'; 80]));
    more.extend(masked(0x0, true, &[b'c'; 80]));
    more.extend(masked(0x1, true, b"{\"action\":\"ping\"}"));
    sender.feed_data(Bytes::from(more));
    sender.feed_eof();
    out.extend(all(inbound).await);
    assert_eq!(
        out,
        vec![
            Incoming::TooLarge(50_000),
            Incoming::Ping(Bytes::from_static(b"p")),
            Incoming::TooLarge(160),
            Incoming::Text("{\"action\":\"ping\"}".into()),
        ]
    );
}

#[actix_web::test]
async fn a_dropped_fragmented_message_still_counts_toward_the_hard_limit() {
    let mut bytes = masked(0x1, false, &[b'a'; 600]);
    bytes.extend(masked(0x0, false, &[b'b'; 600]));
    bytes.extend(masked(0x0, true, &[b'c'; 600]));
    assert_eq!(
        all(inbound_with(vec![bytes], limits(500, 1500))).await,
        vec![Incoming::TooLarge(600), Incoming::Overflow(1500)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_unfinished_fragmented_message_times_out() {
    let (mut sender, payload) = h1::Payload::create(false);
    let mut inbound = Inbound::new(Source::Chunks(Payload::from(payload)), limits(1000, 1000));
    sender.feed_data(Bytes::from(masked(0x1, false, b"never finished")));
    let started = tokio::time::Instant::now();
    // Pings keep the connection alive but do not extend the message's time.
    sender.feed_data(Bytes::from(masked(0x9, true, b"p")));
    assert_eq!(
        inbound.recv().await,
        Some(Incoming::Ping(Bytes::from_static(b"p")))
    );
    assert_eq!(inbound.recv().await, Some(Incoming::FragmentTimeout));
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(
        inbound.fragment.is_none(),
        "the message's parts and timer are freed"
    );
    assert_eq!(inbound.recv().await, None);
    drop(sender);
}

#[actix_web::test]
async fn control_frames_over_125_bytes_are_refused_from_their_header() {
    let header = masked(0x9, true, &[b'p'; 60_000])[..8].to_vec();
    let out = all(inbound(vec![header], 100_000)).await;
    assert!(matches!(out.as_slice(), [Incoming::Invalid(_)]), "{out:?}");
}

#[actix_web::test]
async fn unmasked_and_non_utf8_frames_are_protocol_errors() {
    let mut unmasked = BytesMut::new();
    put_text(&mut unmasked, b"hi");
    let out = all(inbound(vec![unmasked.to_vec()], 1024)).await;
    assert!(matches!(out.as_slice(), [Incoming::Invalid(_)]), "{out:?}");
    let out = all(inbound(vec![masked(0x1, true, &[0xff, 0xfe])], 1024)).await;
    assert!(matches!(out.as_slice(), [Incoming::Invalid(_)]), "{out:?}");
}

proptest::proptest! {
    /// Whatever bytes a client sends, in whatever chunks: no panic, the buffered message
    /// never exceeds `keep` plus one read chunk, and decoding ends (no endless loop).
    #[test]
    fn arbitrary_bytes_never_panic_and_never_buffer_more_than_the_limits(
        frames in proptest::collection::vec(
            (0u8..16, proptest::bool::ANY, proptest::bool::ANY,
             proptest::collection::vec(proptest::num::u8::ANY, 0..400)),
            0..20,
        ),
        garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        chunk in 1usize..300,
    ) {
        let mut bytes = Vec::new();
        for (opcode, fin, mask, payload) in &frames {
            let mut frame = masked(*opcode, *fin, payload);
            if !mask {
                frame[1] &= 0x7F;
            }
            bytes.extend(frame);
        }
        bytes.extend(&garbage);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (mut sender, payload) = h1::Payload::create(false);
            let mut inbound = Inbound::new(Source::Chunks(Payload::from(payload)), limits(256, 1024));
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let mut held = 0usize;
            let mut parts = 0usize;
            for piece in bytes.chunks(chunk) {
                sender.feed_data(Bytes::copy_from_slice(piece));
                while let Poll::Ready(Some(_)) = inbound.poll_recv(&mut cx) {}
                held = held.max(inbound.buf.len());
                let kept = inbound.fragment.as_ref().map_or(0, |fragment| {
                    fragment.parts.iter().map(Bytes::len).sum()
                });
                parts = parts.max(kept);
            }
            sender.feed_eof();
            while let Poll::Ready(Some(_)) = inbound.poll_recv(&mut cx) {}
            proptest::prop_assert!(held <= 256 + 14 + chunk, "held {held}");
            proptest::prop_assert!(parts <= 256, "parts {parts}");
            Ok(())
        })?;
    }

    /// However the reads happen to cut the byte stream, the same messages come out:
    /// text messages whole (fragmented or not), control frames between fragments.
    #[test]
    fn any_split_of_the_stream_decodes_to_the_same_messages(
        messages in proptest::collection::vec(
            (proptest::string::string_regex("[a-zé0-9 {}\":,]{0,300}").expect("regex"),
             1usize..4, proptest::bool::ANY),
            1..12,
        ),
        cuts in proptest::collection::vec(1usize..64, 1..200),
    ) {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (text, pieces, ping_inside) in &messages {
            let raw = text.as_bytes();
            let size = raw.len().div_ceil(*pieces).max(1);
            let parts: Vec<&[u8]> = if raw.is_empty() { vec![raw] } else { raw.chunks(size).collect() };
            for (i, part) in parts.iter().enumerate() {
                let first = i == 0;
                let last = i + 1 == parts.len();
                bytes.extend(masked(if first { 0x1 } else { 0x0 }, last, part));
                if *ping_inside && first && !last {
                    bytes.extend(masked(0x9, true, b"p"));
                    expected.push(Incoming::Ping(Bytes::from_static(b"p")));
                }
            }
            expected.push(Incoming::Text(text.as_str().into()));
        }
        let mut chunks = Vec::new();
        let mut rest = bytes.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
            chunks.push(chunk.to_vec());
            rest = tail;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let decoded = runtime.block_on(all(inbound(chunks, 1 << 20)));
        proptest::prop_assert_eq!(decoded, expected);
    }
}

#[test]
fn server_frames_are_unmasked_and_close_reasons_are_cut_on_a_char_boundary() {
    let mut buf = BytesMut::new();
    put_text(&mut buf, &[b'a'; 200]);
    assert_eq!(&buf[..4], &[0x81, 126, 0, 200]);
    buf.clear();
    put_close(&mut buf, 1008, &"é".repeat(100));
    assert_eq!(buf[0], 0x88);
    let len = usize::from(buf[1]);
    assert!(len <= 125);
    assert_eq!(&buf[2..4], &1008u16.to_be_bytes());
    assert!(std::str::from_utf8(&buf[4..]).is_ok());
}

/// The decoder reads the socket itself; once a message is out and the socket drained, it
/// holds no buffer (issue 17: an idle connection kept the 2 KiB it reserved for the read
/// that found the socket empty).
#[tokio::test]
async fn a_drained_socket_leaves_the_decoder_without_a_buffer() {
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let mut client = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let mut inbound = Inbound::new(Source::Detached, limits(1024, 1024));
    inbound.attach(Rc::new(server), BytesMut::new());
    client
        .write_all(&masked(0x1, true, b"{\"action\":\"ping\"}"))
        .await
        .expect("write");
    let message = tokio::time::timeout(Duration::from_secs(5), inbound.recv())
        .await
        .expect("a message in time");
    assert_eq!(
        message,
        Some(Incoming::Text("{\"action\":\"ping\"}".into()))
    );
    // The next poll finds the socket empty (tokio still reports it readable until a read
    // says otherwise) and waits.
    let waker = futures::task::noop_waker();
    assert!(
        inbound
            .poll_recv(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert_eq!(inbound.buf.capacity(), 0, "an idle decoder holds no buffer");
    // And it still reads what comes next.
    client
        .write_all(&masked(0x9, true, b"p"))
        .await
        .expect("write");
    let message = tokio::time::timeout(Duration::from_secs(5), inbound.recv())
        .await
        .expect("a message in time");
    assert_eq!(message, Some(Incoming::Ping(Bytes::from_static(b"p"))));
}
