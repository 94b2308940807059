//! A throw-away Redis for tests (feature `redis-harness`): `redis-server` (the Debian
//! binary) on a free loopback port, in a temporary directory, without persistence
//! (`--save ''`), killed when dropped. Tests can kill it and start it again on the same
//! port, to see what Cairn does while Redis is gone and after it returns.
//!
//! Without `redis-server` on `PATH` the tests are skipped with a loud message, unless
//! the `CI` environment variable is set: then they fail.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "0" && value != "false")
}

pub fn redis_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// A throw-away `redis-server`, killed when dropped.
pub struct RedisServer {
    binary: PathBuf,
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or says loudly why the Redis tests cannot run (failing under CI).
    pub fn start() -> Option<Self> {
        let Some(binary) = redis_binary() else {
            let reason = "redis-server is not on PATH";
            if in_ci() {
                panic!("the Redis tests cannot run and CI is set: {reason}");
            }
            static ONCE: OnceLock<()> = OnceLock::new();
            ONCE.get_or_init(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n\
                     ************************************************************************\n\
                     *  SKIPPING the Redis tests: {reason}\n\
                     *  Install Redis (Debian: apt-get install redis-server) to run them;\n\
                     *  with CI set they fail instead of being skipped.\n\
                     ************************************************************************\n"
                );
            });
            return None;
        };
        let port = free_port();
        let mut server = Self {
            binary,
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("no temporary directory: {e}")),
            port,
            child: None,
        };
        server.resume();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers PING; panics
    /// (failing the test) if it does not within 20 s.
    pub fn resume(&mut self) {
        let port = self.port.to_string();
        let child = Command::new(&self.binary)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server does not start: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: as abrupt as a crash) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    }

    /// The number of keys the server holds.
    pub fn keys(&self) -> Result<usize, String> {
        let fail = |error: std::io::Error| format!("redis-server on port {}: {error}", self.port);
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(fail)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(fail)?;
        stream.write_all(b"DBSIZE\r\n").map_err(fail)?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n") && answer.len() < 64 {
            stream.read_exact(&mut byte).map_err(fail)?;
            answer.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&answer);
        text.trim()
            .strip_prefix(':')
            .and_then(|count| count.parse().ok())
            .ok_or_else(|| format!("DBSIZE answered {text:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on (at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}
