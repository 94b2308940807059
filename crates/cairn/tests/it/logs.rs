//! The log never holds the server up: a reader of stderr that stops reading costs log
//! lines at worst, never requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{cairn, http_get};

/// Request lines logged while nobody reads stderr: the pipe holds 64 KiB, some 150 of
/// them, and the server used to stop answering once it was full.
const REQUESTS: usize = 2000;

#[test]
fn a_log_reader_that_stops_reading_never_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
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
    let mut stderr = BufReader::new(child.stderr.take().unwrap());

    // Read the log until the server says where it listens, then stop reading.
    let mut address = None;
    let mut line = String::new();
    while address.is_none() {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the log ended");
        if let Ok(log) = serde_json::from_str::<Value>(&line)
            && log["message"] == "cairn is listening"
        {
            address = log["listen"].as_str().map(str::to_owned);
        }
    }
    let address = address.unwrap();

    let mut connection = TcpStream::connect(&address).unwrap();
    connection.set_nodelay(true).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = r#"{"events":[{"type":"Logged","data":{"n":1}}]}"#;
    for n in 0..REQUESTS {
        let request = format!(
            "POST /v1/streams/logged-{n}/events HTTP/1.1\r\nHost: {address}\r\n\
             Content-Type: application/json\r\nx-request-id: logged-{n}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        connection.write_all(request.as_bytes()).unwrap();
        let status = read_response(&mut connection)
            .unwrap_or_else(|error| panic!("request {n} got no answer: {error}"));
        assert_eq!(status, 201, "request {n}");
    }
    assert_eq!(
        http_get(&address, "/health/live").map(|(status, _)| status),
        Some(200)
    );

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
    let _ = child.kill();
    let _ = child.wait();
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
