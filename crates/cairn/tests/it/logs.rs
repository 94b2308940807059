//! The log never holds the server up: a reader of stderr that stops reading costs log
//! lines at worst, never requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{cairn, http_get};

/// Request lines logged while nobody reads stderr: the pipe holds 64 KiB, some 150 of
/// them, and the server used to stop answering once it was full.
const REQUESTS: usize = 2000;

#[test]
fn a_log_reader_that_stops_reading_never_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stderr, address) = start_unread(&dir);
    append_while_unread(&address, "logged", REQUESTS);

    // Reading again: every request's line comes, whole and in order.
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut logged = 0;
    while logged < REQUESTS {
        let line = received
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("only {logged} request lines came"));
        let log: Value = serde_json::from_str(&line).expect("a whole JSON line");
        if log["message"] == "request" && log["route"] == "/v1/streams/{stream}/events" {
            assert_eq!(log["request_id"], format!("logged-{logged}"), "{line}");
            logged += 1;
        }
        assert_ne!(
            log["message"]
                .as_str()
                .map(|m| m.starts_with("log lines dropped")),
            Some(true),
            "{line}"
        );
    }
    drop(server);
}

#[test]
fn lines_past_the_buffer_are_dropped_and_counted_and_the_exit_waits_seconds_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, stderr, address) = start_unread(&dir);
    // Past the 4 MiB buffer (~12,000 request lines): lines are dropped, and the metric
    // says so while stderr is still stuck.
    let loaders: Vec<_> = (0..4)
        .map(|loader| {
            let address = address.clone();
            std::thread::spawn(move || {
                append_while_unread(&address, &format!("load{loader}"), 4000)
            })
        })
        .collect();
    for loader in loaders {
        loader.join().unwrap();
    }
    let (status, metrics) = http_get(&address, "/metrics").unwrap();
    assert_eq!(status, 200);
    let dropped: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("cairn_log_lines_dropped_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cairn_log_lines_dropped_total in {metrics}"));
    assert!(dropped > 0.0, "{dropped} lines dropped");

    // Stopping logs a few more lines, which find stderr full: the process still ends
    // (within the 5 s it gives its log, plus the time to drain requests).
    let started = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "cairn serve did not exit with its stderr unread"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stderr);
}

/// A server process, killed when the test ends, however it ends.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cairn serve` with its log read until it says where it listens, and no further.
fn start_unread(dir: &tempfile::TempDir) -> (Serving, BufReader<ChildStderr>, String) {
    let mut child = cairn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--log-format",
        "json",
        "--log-level",
        "info",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("cairn serve starts");
    let Some(stderr) = child.stderr.take() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no stderr to read");
    };
    let mut stderr = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(stderr.read_line(&mut line), Ok(read) if read > 0) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the log ended before cairn serve listened");
        }
        if let Ok(log) = serde_json::from_str::<Value>(&line)
            && log["message"] == "cairn is listening"
            && let Some(address) = log["listen"].as_str()
        {
            return (Serving(child), stderr, address.to_owned());
        }
    }
}

/// `count` appends to streams `{prefix}-{n}` (request ids the same), one at a time on
/// one connection, each answered in time.
fn append_while_unread(address: &str, prefix: &str, count: usize) {
    let mut connection = TcpStream::connect(address).unwrap();
    connection.set_nodelay(true).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = r#"{"events":[{"type":"Logged","data":{"n":1}}]}"#;
    for n in 0..count {
        let request = format!(
            "POST /v1/streams/{prefix}-{n}/events HTTP/1.1\r\nHost: {address}\r\n\
             Content-Type: application/json\r\nx-request-id: {prefix}-{n}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        connection.write_all(request.as_bytes()).unwrap();
        let status = read_response(&mut connection)
            .unwrap_or_else(|error| panic!("request {n} got no answer: {error}"));
        assert_eq!(status, 201, "request {n}");
    }
    assert_eq!(
        http_get(address, "/health/live").map(|(status, _)| status),
        Some(200)
    );
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns its status.
fn read_response(connection: &mut TcpStream) -> std::io::Result<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        connection.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    connection.read_exact(&mut body)?;
    Ok(status)
}
