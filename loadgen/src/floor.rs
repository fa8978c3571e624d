//! `--mode floor` and `--mode sink`: what the kernel alone charges a push server on this
//! machine for one delivery.
//!
//! The floor process does only what no server with one write per delivery can avoid: for each
//! message, one `write` of a small frame to each of N loopback TCP connections (Nagle off, as
//! actix and nginx set it), in one burst per message at a fixed rate. The sink, pinned to the
//! load generator's core, reads and discards. The floor's own CPU per write is the least any
//! server can spend per delivery here, so it tells which per-delivery targets the machine
//! allows at all, and how much of a server's figure is its own code.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::stats::{ProcSample, USER_HZ};

/// What a floor run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct FloorReport {
    pub(crate) label: String,
    pub(crate) mode: &'static str,
    pub(crate) connections: usize,
    pub(crate) rate: f64,
    pub(crate) message_bytes: usize,
    pub(crate) writes: u64,
    pub(crate) cpu_us_per_write: f64,
    pub(crate) system_share: f64,
}

/// Accepts connections and discards what arrives, on one tokio thread (epoll, as the load
/// generator reads: the cost of waking the reader is part of every write, so the sink must
/// wake the way real subscribers do). Returns once every accepted connection has closed.
pub(crate) fn sink(listen: SocketAddr, expected: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot bind {listen}: {e}"))?;
        eprintln!("sink listening on {listen}");
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..expected {
            let (mut stream, _) = listener
                .accept()
                .await
                .map_err(|e| format!("accept: {e}"))?;
            readers.spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 16 * 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
        while readers.join_next().await.is_some() {}
        Ok(())
    })
}

/// Connects `connections` streams to the sink and writes `message_bytes`-byte frames to all
/// of them, `rate` bursts a second for `duration`, measuring this process's CPU meanwhile.
pub(crate) fn floor(
    sink: SocketAddr,
    connections: usize,
    rate: f64,
    duration: Duration,
    message_bytes: usize,
    label: String,
) -> Result<FloorReport, String> {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = TcpStream::connect(sink).map_err(|e| format!("connect {sink}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        streams.push(stream);
    }
    // An SSE trade frame's shape; the content does not matter to the kernel.
    let mut message = b"id: 1-1\nevent: t\ndata: {\"T\":\"t\"".to_vec();
    message.resize(message_bytes.saturating_sub(3), b' ');
    message.extend_from_slice(b"}\n\n");
    std::thread::sleep(Duration::from_millis(500));

    let pid = std::process::id();
    let before = ProcSample::read(pid)?;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let bursts = (duration.as_secs_f64() * rate).round() as u64;
    for burst in 0..bursts {
        for stream in &mut streams {
            stream
                .write_all(&message)
                .map_err(|e| format!("write: {e}"))?;
        }
        // A fixed schedule, so a slow burst does not shift the ones after it.
        let next = start + period.mul_f64((burst + 1) as f64);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let after = ProcSample::read(pid)?;
    let writes = bursts * connections as u64;
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks);
    let system = after.system_ticks.saturating_sub(before.system_ticks);
    Ok(FloorReport {
        label,
        mode: "floor",
        connections,
        rate,
        message_bytes: message.len(),
        writes,
        cpu_us_per_write: ticks as f64 * 1e6 / USER_HZ as f64 / writes.max(1) as f64,
        system_share: if ticks == 0 {
            0.0
        } else {
            system as f64 / ticks as f64
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_floor_run_counts_every_write_and_the_sink_sees_all_bytes_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let sink = std::thread::spawn(move || sink(address, 3));
        // The sink binds in its thread; retry the connects briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let report = loop {
            match floor(
                address,
                3,
                50.0,
                Duration::from_millis(200),
                120,
                "t".into(),
            ) {
                Ok(report) => break report,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("{error}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(report.writes, 10 * 3);
        assert_eq!(report.message_bytes, 120);
        assert!(report.cpu_us_per_write >= 0.0 && report.system_share <= 1.0);
        sink.join().expect("sink thread").expect("sink");
    }
}
