//! `cairn tail` against a real `cairn serve`.

use std::time::Duration;

use crate::support::{Running, Server, ok, run};

fn append(url: &str, stream: &str, event_type: &str, data: &str) {
    ok(run(&[
        "append", stream, "--type", event_type, "--data", data, "--url", url,
    ]));
}

#[test]
fn tail_prints_appended_events_as_json_lines_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let url = server.url.as_str();
    append(url, "order-1", "OrderPlaced", r#"{"total": 42}"#);
    append(url, "invoice-1", "InvoiceSent", "{}");

    let mut tail = Running::start(&["tail", "--from", "1", "--url", url]);
    let lines = tail.json_lines(2);
    assert_eq!(lines[0]["position"], 1);
    assert_eq!(lines[0]["stream"], "order-1");
    assert_eq!(lines[0]["type"], "OrderPlaced");
    assert_eq!(lines[0]["data"], serde_json::json!({"total": 42}));
    assert_eq!(lines[1]["position"], 2);

    // Live: an event appended now is printed as it arrives.
    append(url, "order-2", "OrderShipped", r#"{"carrier": "x"}"#);
    let live = tail.json_lines(1);
    assert_eq!(live[0]["position"], 3);
    assert_eq!(live[0]["type"], "OrderShipped");

    tail.signal("INT");
    let status = tail.wait_for_exit(Duration::from_secs(10));
    assert!(status.success(), "Ctrl-C is a clean exit: {status}");
}

#[test]
fn tail_filters_and_stops_after_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let url = server.url.as_str();
    append(url, "order-1", "OrderPlaced", "{}");
    append(url, "invoice-1", "OrderShipped", "{}");
    append(url, "order-1", "OrderShipped", r#"{"n": 1}"#);
    append(url, "order-2", "OrderShipped", r#"{"n": 2}"#);
    let output = ok(run(&[
        "tail",
        "--from",
        "1",
        "--category",
        "order",
        "--types",
        "OrderShipped,OrderCancelled",
        "--count",
        "2",
        "--url",
        url,
    ]));
    let events: Vec<serde_json::Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let positions: Vec<_> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [3, 4]);
    let one_stream = ok(run(&[
        "tail", "--from", "1", "--stream", "order-2", "--count", "1", "--format", "text", "--url",
        url,
    ]));
    assert!(
        one_stream.contains("order-2@0  OrderShipped  {\"n\":2}"),
        "{one_stream}"
    );
}

#[test]
fn tail_shows_new_events_only_and_survives_a_server_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = Server::start(&data_dir);
    let address = server.address().to_owned();
    let url = server.url.clone();
    append(&url, "before-1", "Old", "{}");

    let tail = Running::start(&["tail", "--url", &url]);
    // The tail follows from the head it finds when it connects: append until it shows
    // something, which must not be the event from before.
    let mut first = None;
    for _ in 0..100 {
        append(&url, "probe-1", "Probe", "{}");
        if let Some(line) = tail.next_line(Duration::from_millis(200)) {
            first = Some(line);
            break;
        }
    }
    let first: serde_json::Value = serde_json::from_str(&first.expect("tail prints")).unwrap();
    assert_eq!(first["type"], "Probe");
    let mut last = first["position"].as_u64().unwrap();
    assert!(last >= 2);

    // SIGKILL the server and start it again on the same address and data.
    server.kill();
    let server = Server::start_at(&data_dir, &address);
    for n in 0..3 {
        append(&server.url, "after-1", "New", &format!("{{\"n\": {n}}}"));
    }
    let head = ok(run(&[
        "read",
        "after-1",
        "--backward",
        "--limit",
        "1",
        "--url",
        &server.url,
    ]));
    let head: serde_json::Value = serde_json::from_str(head.trim()).unwrap();
    let head = head["position"].as_u64().unwrap();
    // Every event after the first one shown, once, in order: no gap, no duplicate.
    while last < head {
        let line = tail
            .next_line(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the tail stopped at {last} of {head}"));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        let position = event["position"].as_u64().unwrap();
        assert_eq!(position, last + 1, "{line}");
        last = position;
    }
    assert!(tail.next_line(Duration::from_millis(100)).is_none());
}
