//! Starting the real `cairn` binary and talking to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// Every variable `cairn` reads, removed so the tests see only what they set.
const CAIRN_VARIABLES: &[&str] = &[
    "CAIRN_CONFIG",
    "CAIRN_LISTEN",
    "CAIRN_DATA_DIR",
    "CAIRN_LOG_FORMAT",
    "CAIRN_LOG_LEVEL",
    "CAIRN_IDEMPOTENCY_WINDOW",
    "CAIRN_READ_CONNECTIONS",
    "CAIRN_WORKER_THREADS",
    "CAIRN_REQUEST_TIMEOUT",
    "CAIRN_MAX_BODY_BYTES",
    "CAIRN_MAX_EVENTS_PER_REQUEST",
    "CAIRN_MAX_EVENT_BYTES",
    "CAIRN_MAX_JSON_DEPTH",
    "CAIRN_QUERY_CACHE_BYTES",
    "CAIRN_PROJECTION_BATCH_SIZE",
    "CAIRN_STRICT_PLANS",
    "CAIRN_SLOW_QUERY_THRESHOLD",
    "CAIRN_MAX_CONCURRENT_REQUESTS",
    "CAIRN_RATE_LIMIT_PER_SECOND",
    "CAIRN_RATE_LIMIT_BURST",
    "CAIRN_MAX_SUBSCRIPTIONS_PER_TOKEN",
    "CAIRN_HEADER_READ_TIMEOUT",
    "CAIRN_METRICS_PUBLIC",
    "CAIRN_INSECURE_NO_AUTH",
    "CAIRN_DATABASE_URL",
    "CAIRN_REPLICA_URLS",
    "CAIRN_POOL_SIZE",
    "CAIRN_ADVERTISE_URL",
    "CAIRN_TLS_CERT",
    "CAIRN_TLS_KEY",
    "CAIRN_URL",
    "CAIRN_TOKEN",
    "CAIRN_CA_CERT",
    "RUST_LOG",
    // Traces (the standard OpenTelemetry variables cairn reads).
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
];

/// `cairn ARGS` with a clean environment.
pub fn cairn(args: &[&str]) -> Command {
    let mut command = Command::new(CAIRN);
    command.args(args);
    for variable in CAIRN_VARIABLES {
        command.env_remove(variable);
    }
    command
}

/// Runs `cairn ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    cairn(args)
        .stdin(Stdio::null())
        .output()
        .expect("cairn runs")
}

/// Runs `cairn ARGS` with `input` on stdin.
pub fn run_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = cairn(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Asserts success and returns stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "cairn failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// A `cairn serve` process on an ephemeral port, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    /// Every log line the server wrote so far.
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `cairn serve` on `data_dir` and waits (with a deadline) until it is ready.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_at(data_dir, "127.0.0.1:0")
    }

    /// [`Server::start`] listening on `listen` (e.g. the port of a server killed before).
    pub fn start_at(data_dir: &Path, listen: &str) -> Self {
        Self::start_with(data_dir, listen, &[])
    }

    /// [`Server::start`] with the settings file `config` (projections, queries, …);
    /// `--data-dir` wins over the file's `data_dir`.
    pub fn start_with_config(data_dir: &Path, config: &Path) -> Self {
        Self::start_with(
            data_dir,
            "127.0.0.1:0",
            &["--config", config.to_str().unwrap()],
        )
    }

    /// `cairn serve` on `data_dir` and `listen`, with `extra` arguments.
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, listen, extra, &[])
    }

    /// [`Server::start_with`] with these environment variables set.
    pub fn start_with_env(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec![
            "serve",
            "--listen",
            listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        let mut child = cairn(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cairn serve starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (listening, address) = mpsc::channel();
        let lines = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
                    && log["message"] == "cairn is listening"
                {
                    let _ = listening.send(log["listen"].as_str().unwrap_or_default().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = match address.recv_timeout(Duration::from_secs(20)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                panic!("cairn serve did not start: {:#?}", logs.lock().unwrap());
            }
        };
        // With --tls-cert the server speaks HTTPS only: the TLS tests check readiness
        // with their own clients.
        let tls = extra.contains(&"--tls-cert");
        let server = Self {
            child,
            url: format!("{}://{address}", if tls { "https" } else { "http" }),
            logs,
        };
        if !tls {
            server.wait_until_ready(Duration::from_secs(20));
        }
        server
    }

    pub fn address(&self) -> &str {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, address)| address)
    }

    fn wait_until_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if http_get(self.address(), "/health/ready").is_some_and(|(status, _)| status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cairn serve not ready in time: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The log lines once `done` holds for them: lines reach stderr from the server's
    /// log thread, a moment after the response that logged them.
    pub fn wait_for_logs(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let logs = self.logs();
            if done(&logs) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "not in the log in time: {logs:#?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with the shell's `kill` (no unsafe code, no extra dependency).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        self.child.kill().expect("cairn can be killed");
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit by itself, with a deadline.
    pub fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cairn did not exit: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `cairn` client command whose stdout lines are collected as they come.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `cairn ARGS` with stdout piped.
    pub fn start(args: &[&str]) -> Self {
        let mut child = cairn(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cairn starts");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next stdout line, waiting at most `within`.
    pub fn next_line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// The next `count` lines, each within 20 s, parsed as JSON.
    pub fn json_lines(&self, count: usize) -> Vec<serde_json::Value> {
        (0..count)
            .map(|index| {
                let line = self
                    .next_line(Duration::from_secs(20))
                    .unwrap_or_else(|| panic!("line {index} of {count} did not come"));
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
            })
            .collect()
    }

    /// Sends a signal with the shell's `kill` (no unsafe code, no extra dependency).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the process to exit by itself, with a deadline.
    pub fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "cairn did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP/1.1 GET: `(status, body)`, or `None` when the server
/// cannot be reached.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

/// Every event in the log, read page by page from the start.
pub async fn read_whole_log(client: &cairn_client::Client) -> Vec<cairn_client::Event> {
    let mut log = Vec::new();
    let mut from = 1;
    loop {
        let page = client
            .read_all(&cairn_client::ReadAllOptions {
                from_position: Some(from),
                limit: Some(1000),
                ..cairn_client::ReadAllOptions::default()
            })
            .await
            .unwrap();
        log.extend(page.events);
        if page.next_from_position > page.head_position || page.next_from_position <= from {
            return log;
        }
        from = page.next_from_position;
    }
}
