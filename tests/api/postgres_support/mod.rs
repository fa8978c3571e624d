//! A real PostgreSQL server for tests (Debian's `postgresql` package, from `scripts/setup`):
//! `initdb` into a temporary directory, `postgres` on a free loopback port with its socket in
//! that directory, stopped by PID (SIGINT, a fast shutdown, then SIGKILL) when the last test using it is done.
//! Each test gets a database of its own ([`TestDatabase`]), so one server serves many tests
//! running in parallel.
//!
//! `initdb` and `postgres` refuse to run as root: as root they run as the `postgres` system
//! user (`runuser -u postgres --`), in a directory that user owns. A missing installation is a
//! test failure, never a skip.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::redis_support::free_port;

/// Where Debian's `postgresql-15` puts the server binaries.
const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The server tests currently share; started by the first of them, stopped with the last.
static SHARED: Mutex<Weak<PostgresServer>> = Mutex::new(Weak::new());

pub struct PostgresServer {
    pub port: u16,
    /// The postmaster's PID (its `postmaster.pid`, not `runuser`'s).
    pid: AtomicU32,
    runner: Mutex<Option<Child>>,
    data: PathBuf,
    dir: tempfile::TempDir,
    next_database: AtomicU32,
}

/// Whether this process is root, so the server must run as the `postgres` user.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, as the `postgres` user when this process is root.
fn server_command(binary: &str) -> Command {
    let path = Path::new(BIN_DIR).join(binary);
    assert!(
        path.is_file(),
        "{} is missing: install PostgreSQL 15 (scripts/setup installs Debian's postgresql)",
        path.display()
    );
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

impl PostgresServer {
    /// The server the running tests share, started if none is running.
    pub fn shared() -> Arc<PostgresServer> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(PostgresServer::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// A server of its own (for tests that stop or restart it): wrap it in an `Arc` for
    /// [`PostgresServer::database`].
    pub fn start() -> PostgresServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown the server directory to postgres");
        }
        let data = dir.path().join("data");
        let output = server_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            // Tests throw the cluster away; skipping initdb's own fsync makes it quicker.
            .arg("--no-sync")
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let server = PostgresServer {
            port: free_port(),
            pid: AtomicU32::new(0),
            runner: Mutex::new(None),
            data,
            dir,
            next_database: AtomicU32::new(0),
        };
        server.launch();
        server
    }

    /// Starts `postgres` on the data directory and waits until it answers.
    fn launch(&self) {
        let runner = server_command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            // fsync off: the tests never survive a power loss, only process kills, which
            // PostgreSQL survives without fsync (the data is in the kernel's page cache).
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .expect("postgres runs");
        *self.runner.lock().unwrap_or_else(|e| e.into_inner()) = Some(runner);
        let pid = self.wait_ready();
        self.pid.store(pid, Ordering::Relaxed);
    }

    /// Stops the server and starts it again on the same port and data (a database restart).
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    /// The server's log (appended to across restarts), read when it fails to start.
    fn log_file(&self) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .map_or_else(|_| Stdio::null(), Stdio::from)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits until the server answers; returns the postmaster's PID.
    fn wait_ready(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|text| {
                    text.lines()
                        .next()
                        .and_then(|line| line.trim().parse().ok())
                });
            if let Some(pid) = pid
                && self.psql("postgres", "SELECT 1").is_ok()
            {
                return pid;
            }
            if let Some(runner) = self
                .runner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                && let Ok(Some(status)) = runner.try_wait()
            {
                panic!("postgres exited at start-up: {status}\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres on port {} did not start\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Runs one SQL command with `psql` as the superuser; its output or its error.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                database,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// A new, empty database on this server for one test.
    pub fn database(self: &Arc<Self>) -> TestDatabase {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDatabase {
            server: Arc::clone(self),
            name,
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Stops the server: SIGINT to the postmaster (PostgreSQL's "fast" shutdown: clients are
    /// disconnected, open transactions rolled back; SIGTERM would wait for every client to
    /// leave), then SIGKILL if it is still there after a while.
    pub fn stop(&self) {
        let Some(mut runner) = self.runner.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = runner.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid().to_string()])
            .status();
        let _ = runner.kill();
        let _ = runner.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One test's database; the server stays up while any test holds one.
pub struct TestDatabase {
    pub server: Arc<PostgresServer>,
    pub name: String,
}

impl TestDatabase {
    /// A database of its own on the shared server.
    pub fn create() -> TestDatabase {
        PostgresServer::shared().database()
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME`, for `store.postgres_url`.
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }

    /// Runs SQL in this database with `psql`; its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.server
            .psql(&self.name, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }
}
