//! The real `tickgate` binary for the security tests: started with a configuration file the
//! test writes, on a free loopback port, its memory read from `/proc`, stopped by its PID.

#![allow(dead_code, unreachable_pub)]
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const SECRET: &str = "security-test-secret-of-32-bytes-or-more";
pub const PUBLISH_TOKEN: &str = "security-test-publish-token";
/// A well-formed PHC string for users that only ever use minted tokens.
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$G4k6ZCByHTmXkS9hTHTvNg$FTa5teUHJ36P4XIvkeH8VzON6zzO2UqiZ2xbb0E4Uts";

pub struct Gateway {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the binary with `extra` TOML appended to a base configuration (known HS256
    /// secret, users `flood` and `calm`, the publish API on, no simulator, no store).
    pub fn start(extra: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("security.toml");
        let users: String = ["flood", "calm"]
            .iter()
            .map(|user| {
                format!("[[auth.users]]\nusername = \"{user}\"\npassword_hash = \"{HASH}\"\n")
            })
            .collect();
        std::fs::write(
            &config,
            format!(
                "[auth]\nhs256_secret = \"{SECRET}\"\n{users}\
                 [publish]\nadmin_token = \"{PUBLISH_TOKEN}\"\n\
                 [simulator]\nenabled = false\n[store]\nenabled = false\n{extra}"
            ),
        )
        .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
            .arg("--config-dir")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
            .env("TICKGATE__LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tickgate");
        let stderr = child.stderr.take().expect("stderr");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // Keeps draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && let Some(port) = entry["port"].as_u64()
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port as u16);
                }
            }
        });
        let port = match port_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().expect("wait");
                panic!("tickgate did not start: {status}");
            }
        };
        Gateway {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM` …).
    pub fn status_kib(&self, field: &str) -> u64 {
        let path = PathBuf::from(format!("/proc/{}/status", self.child.id()));
        let status = std::fs::read_to_string(path).expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token for `user` signed with [`SECRET`].
pub fn token_for(user: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "iss": "tickgate", "aud": "tickgate", "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

/// A client frame header (masked, key `1 2 3 4`) for a payload of `len` bytes.
pub fn frame_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
    let mut header = vec![if fin { 0x80 } else { 0 } | opcode];
    match len {
        n if n < 126 => header.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            header.push(0x80 | 126);
            header.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            header.push(0x80 | 127);
            header.extend_from_slice(&n.to_be_bytes());
        }
    }
    header.extend_from_slice(&[1, 2, 3, 4]);
    header
}

/// The upgrade request of `/v1/stream`, without a credential.
pub fn upgrade_request(port: u16) -> String {
    format!(
        "GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// One server frame read from a raw socket: (opcode, payload).
pub async fn read_frame(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).await?;
    let len = match head[1] & 0x7F {
        126 => u64::from(reader.read_u16().await?),
        127 => reader.read_u64().await?,
        short => u64::from(short),
    };
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload).await?;
    Ok((head[0] & 0x0F, payload))
}

/// Reads the HTTP response head; returns its status line.
pub async fn read_head(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = reader.read_u8().await?;
        head.push(byte);
        if head.len() > 8192 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}
