//! Issue 13 item 1, against the real binary: before authentication a client cannot make the
//! server hold a large message, whole or fragmented. A thousand unauthenticated connections
//! each trying to park a mebibyte keep the server's resident memory under 100 MiB, and each
//! is closed at once with error 400 and close code 1009, not at the auth timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::gateway::{Gateway, frame_header, read_frame, read_head, upgrade_request};

const CONNECTIONS: usize = 1000;
const MIB: u64 = 1 << 20;
const CHUNK: usize = 64 * 1024;

/// Opens `/v1/stream` without a credential and reads the `connected` greeting.
async fn open(port: u16) -> std::io::Result<TcpStream> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await?;
    socket.write_all(upgrade_request(port).as_bytes()).await?;
    let status = read_head(&mut socket).await?;
    assert!(status.contains(" 101 "), "{status}");
    let (opcode, greeting) = read_frame(&mut socket).await?;
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&greeting).contains("connected"));
    Ok(socket)
}

/// Sends all but the last byte of a 1 MiB text message: as one frame, or (`fragmented`) as a
/// small first fragment and 64 KiB continuations. Stops quietly once the server has closed.
async fn park_a_mebibyte(socket: &mut TcpStream, fragmented: bool) {
    let filler = vec![b'x'; CHUNK];
    if fragmented {
        let mut first = frame_header(0x1, false, 4096);
        first.extend_from_slice(&filler[..4096]);
        if socket.write_all(&first).await.is_err() {
            return;
        }
        let mut sent = 4096u64;
        while sent + CHUNK as u64 <= MIB {
            let mut frame = frame_header(0x0, false, CHUNK as u64);
            frame.extend_from_slice(&filler);
            if socket.write_all(&frame).await.is_err() {
                return;
            }
            sent += CHUNK as u64;
        }
    } else {
        if socket
            .write_all(&frame_header(0x1, true, MIB))
            .await
            .is_err()
        {
            return;
        }
        let mut left = MIB - 1;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            if socket.write_all(&filler[..n]).await.is_err() {
                return;
            }
            left -= n as u64;
        }
    }
}

/// Whether the server ends the connection within `within` (EOF or reset).
async fn closed_by_server(socket: &mut TcpStream, within: Duration) -> bool {
    let mut sink = vec![0u8; 16 * 1024];
    let read_all = async {
        loop {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unauthenticated_connections_cannot_park_a_mebibyte_each() {
    // A long auth timeout, so the bound cannot come from connections timing out.
    let gateway = Gateway::start("[ws]\nauth_timeout = \"60s\"\n");
    let port = gateway.port;

    // What one such client is told: error 400 naming the limit, then close 1009.
    let mut socket = open(port).await.expect("open");
    let mut start = frame_header(0x1, true, MIB);
    start.extend_from_slice(&[b'x'; 100]);
    socket.write_all(&start).await.expect("send a header");
    let (opcode, error) = read_frame(&mut socket).await.expect("error frame");
    let error = String::from_utf8_lossy(&error).into_owned();
    assert_eq!(opcode, 0x1, "{error}");
    assert!(error.contains("\"code\":400"), "{error}");
    assert!(
        error.contains("8192 bytes before authentication"),
        "{error}"
    );
    let (opcode, close) = read_frame(&mut socket).await.expect("close frame");
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
    drop(socket);

    let baseline_kib = gateway.status_kib("VmRSS");
    let written = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for index in 0..CONNECTIONS {
        let written = Arc::clone(&written);
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut socket) = open(port).await else {
                written.fetch_add(1, Ordering::SeqCst);
                return false;
            };
            park_a_mebibyte(&mut socket, index % 2 == 1).await;
            written.fetch_add(1, Ordering::SeqCst);
            // Hold the connection until the memory is measured, unless the server ends it.
            let released = tokio::select! {
                closed = closed_by_server(&mut socket, Duration::from_secs(30)) => return closed,
                _ = release.wait_for(|go| *go) => true,
            };
            released && closed_by_server(&mut socket, Duration::from_secs(5)).await
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while written.load(Ordering::SeqCst) < CONNECTIONS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients did not finish sending"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the server a moment to read whatever is still in flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_kib = gateway.status_kib("VmRSS");
    let peak_kib = gateway.status_kib("VmHWM");
    let _ = release_tx.send(true);
    let mut closed = 0;
    for task in tasks {
        if task.await.expect("client task") {
            closed += 1;
        }
    }
    eprintln!(
        "pre-auth parking: baseline {baseline_kib} KiB, after {rss_kib} KiB, peak {peak_kib} KiB, \
         {closed}/{CONNECTIONS} closed by the server"
    );
    assert!(
        peak_kib < 100 * 1024,
        "server peak RSS {peak_kib} KiB (baseline {baseline_kib} KiB) with {CONNECTIONS} \
         connections parking 1 MiB each"
    );
    assert_eq!(
        closed, CONNECTIONS,
        "every connection is ended by the server"
    );
}
