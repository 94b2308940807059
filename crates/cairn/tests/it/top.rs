//! `cairn top` against the real binary: one frame of a busy server, and a server that
//! is down, then comes up, while a live `cairn top` keeps retrying until Ctrl-C.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Running, Server, http_get, ok, run, stderr};

/// One request over a fresh connection; the status, or `None` if it failed.
fn request(address: &str, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// The first number in `text` after `label` (`"head 12"` → 12).
fn number_after(text: &str, label: &str) -> f64 {
    let (_, rest) = text
        .split_once(label)
        .unwrap_or_else(|| panic!("{label:?} not in {text:?}"));
    rest.split_whitespace()
        .next()
        .and_then(|word| word.trim_end_matches("/s").parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {text:?}"))
}

fn line_starting<'a>(frame: &'a str, start: &str) -> &'a str {
    frame
        .lines()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in\n{frame}"))
}

#[test]
fn one_frame_of_a_busy_server_shows_its_rates_latencies_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/shop/cairn.toml"
    ));
    let server = Server::start_with_config(dir.path(), config);
    let address = server.address().to_owned();

    // Appends, stream reads and queries keep coming while `top` takes its two reads.
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, appended, address) = (stop.clone(), appended.clone(), address.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let stream = format!("note-{}", n % 7);
                let status = request(
                    &address,
                    "POST",
                    &format!("/v1/streams/{stream}/events"),
                    r#"{"events":[{"type":"Noted","data":{"n":1}}]}"#,
                );
                assert_eq!(status, Some(201), "append {n}");
                appended.fetch_add(1, Ordering::Relaxed);
                let _ = request(&address, "GET", &format!("/v1/streams/{stream}/events"), "");
                let _ = request(&address, "GET", "/v1/queries/order?id=o-1", "");
            }
        })
    };
    // Some events before the first read, so the head is well above 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    while appended.load(Ordering::Relaxed) < 5 {
        assert!(Instant::now() < deadline, "no appends");
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = run(&["top", "--once", "--url", &server.url, "--interval", "1s"]);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let frame = ok(output);
    assert!(
        !frame.contains('\x1b'),
        "--once does not clear the screen:\n{frame}"
    );

    let total = appended.load(Ordering::Relaxed) as f64;
    let http = line_starting(&frame, "HTTP");
    assert!(number_after(http, "HTTP") > 1.0, "{frame}");
    assert!(http.contains("errors 0.0%"), "{frame}");
    let appends = line_starting(&frame, "Appends");
    let rate = number_after(appends, "Appends");
    assert!(rate > 0.0 && rate <= total, "{rate} events/s:\n{frame}");
    let head = number_after(line_starting(&frame, "Log"), "head");
    assert!(
        head >= 5.0 && head <= total,
        "head {head} of {total}:\n{frame}"
    );
    // Latency percentiles of the routes that were busy.
    let route = line_starting(&frame, "POST /v1/streams/{stream}/events");
    let cells: Vec<&str> = route.split_whitespace().collect();
    assert!(
        cells[2].parse::<f64>().is_ok_and(|rate| rate > 0.0),
        "{route}"
    );
    assert!(
        cells.len() == 5 && cells[3..].iter().all(|cell| cell.ends_with('s')),
        "p50 and p99 of {route}"
    );
    line_starting(&frame, "GET /v1/queries/{name}");
    // The read side, caches, pools and process are all in the frame.
    for projection in ["orders", "customers", "inventory"] {
        line_starting(&frame, projection);
    }
    line_starting(&frame, "event_pages");
    line_starting(&frame, "query_results");
    let pool = line_starting(&frame, "events ");
    assert!(!pool.trim_end().ends_with(" -"), "a wait p99: {pool}");
    line_starting(&frame, "readmodels ");
    if cfg!(target_os = "linux") {
        let process = line_starting(&frame, "Process");
        assert!(!process.contains("memory -"), "{process}");
        assert!(frame.contains("  up "), "{frame}");
    }
    assert!(
        line_starting(&frame, "Storage").contains("events "),
        "{frame}"
    );
}

#[test]
fn once_against_a_server_that_is_down_fails_with_a_clear_error() {
    let port = free_port();
    let output = run(&[
        "top",
        "--once",
        "--url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let error = stderr(&output);
    assert!(
        error.contains("cannot read /metrics") && error.contains("could not reach Cairn"),
        "{error}"
    );
    assert!(!error.contains("panicked"), "{error}");
}

#[test]
fn live_top_retries_while_the_server_is_down_and_shows_it_once_up_until_ctrl_c() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut top = Running::start(&["top", "--url", &url, "--interval", "200ms"]);
    let wait_for = |top: &Running, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match top.next_line(left) {
                Some(line) if line.contains(text) => return line,
                Some(_) => {}
                None => panic!("{text:?} never shown"),
            }
        }
    };
    let first = wait_for(&top, "cannot read");
    assert!(first.contains(&format!("{url}/metrics")), "{first}");
    assert!(first.contains("retrying every 200ms"), "{first}");
    // Still running, still retrying.
    wait_for(&top, "cannot read");

    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start_at(dir.path(), &format!("127.0.0.1:{port}"));
    assert!(http_get(&format!("127.0.0.1:{port}"), "/health/live").is_some());
    let frame = wait_for(&top, "head ");
    assert!(frame.starts_with("Log"), "{frame}");

    top.signal("INT");
    let status = top.wait_for_exit(Duration::from_secs(10));
    assert!(status.success(), "Ctrl-C ends cairn top cleanly: {status}");
}

#[test]
fn with_api_tokens_top_reads_metrics_with_its_token_and_says_so_without() {
    let created = ok(run(&[
        "token", "create", "--name", "ops", "--scopes", "read",
    ]));
    let (first, block) = created.split_once('\n').unwrap();
    let secret = first.strip_prefix("token: ").expect("token: <secret>");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, block.trim_start()).unwrap();
    let server = Server::start_with_config(&dir.path().join("data"), &config);

    let with = run(&[
        "top",
        "--once",
        "--url",
        &server.url,
        "--interval",
        "100ms",
        "--token",
        secret,
    ]);
    let frame = ok(with);
    assert!(frame.contains("GET /metrics"), "{frame}");
    assert!(frame.contains("Log        head 0 "), "{frame}");
    let without = run(&["top", "--once", "--url", &server.url, "--interval", "100ms"]);
    assert_eq!(without.status.code(), Some(1));
    let error = stderr(&without);
    assert!(error.contains("unauthorized"), "{error}");
    assert!(!error.contains(secret));
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
