//! The client commands end to end, against a real `cairn serve`.

use std::time::Duration;

use crate::support::{Server, ok, run, run_with_stdin, stderr};

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn append_read_and_list_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let url = server.url.as_str();

    let appended = ok(run(&[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        r#"{"total": 42}"#,
        "--metadata",
        r#"{"source": "cli"}"#,
        "--tag",
        "customer:7",
        "--tag",
        "vip",
        "--expected-version",
        "no_stream",
        "--url",
        url,
    ]));
    let appended: serde_json::Value = serde_json::from_str(&appended).unwrap();
    assert_eq!(appended["stream"], "order-1");
    assert_eq!(appended["first_version"], 0);
    assert_eq!(appended["first_position"], 1);

    // A JSON Lines file in batches of 2: 3 events, 2 requests, contiguous versions.
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"type": "OrderPaid", "data": {"amount": 42}}"#, "\n",
            "\n",
            r#"{"type": "OrderPacked", "data": null, "tags": ["customer:7"]}"#, "\n",
            r#"{"type": "OrderShipped", "data": [1, 2], "metadata": {"carrier": "x"}, "id": "0194b8c2-4c4a-7000-8000-000000000001"}"#, "\n",
        ),
    )
    .unwrap();
    let batches = json_lines(&ok(run(&[
        "append",
        "order-1",
        "--file",
        file.to_str().unwrap(),
        "--batch-size",
        "2",
        "--expected-version",
        "0",
        "--url",
        url,
    ])));
    assert_eq!(batches.len(), 2);
    assert_eq!(
        (
            batches[0]["first_version"].as_u64(),
            batches[0]["last_version"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(
        (
            batches[1]["first_version"].as_u64(),
            batches[1]["last_version"].as_u64()
        ),
        (Some(3), Some(3))
    );

    // From stdin.
    let from_stdin = json_lines(&ok(run_with_stdin(
        &["append", "invoice-1", "--file", "-", "--url", url],
        "{\"type\": \"InvoiceSent\", \"data\": {}}\n",
    )));
    assert_eq!(from_stdin[0]["stream"], "invoice-1");

    let events = json_lines(&ok(run(&["read", "order-1", "--url", url])));
    let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["OrderPlaced", "OrderPaid", "OrderPacked", "OrderShipped"]
    );
    assert_eq!(events[0]["data"], serde_json::json!({"total": 42}));
    assert_eq!(events[0]["metadata"]["source"], "cli");
    assert_eq!(events[0]["tags"], serde_json::json!(["customer:7", "vip"]));
    assert_eq!(events[3]["id"], "0194b8c2-4c4a-7000-8000-000000000001");

    let last = json_lines(&ok(run(&[
        "read",
        "order-1",
        "--backward",
        "--limit",
        "1",
        "--url",
        url,
    ])));
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["version"], 3);

    let paged = json_lines(&ok(run(&[
        "read",
        "order-1",
        "--from",
        "1",
        "--limit",
        "1",
        "--follow-pages",
        "--url",
        url,
    ])));
    let versions: Vec<_> = paged
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);

    let tagged = json_lines(&ok(run(&[
        "read",
        "--all",
        "--tags",
        "customer:7",
        "--category",
        "order",
        "--url",
        url,
    ])));
    let types: Vec<_> = tagged.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["OrderPlaced", "OrderPacked"]);

    let all = json_lines(&ok(run(&[
        "read",
        "--all",
        "--from-position",
        "2",
        "--limit",
        "2",
        "--follow-pages",
        "--url",
        url,
    ])));
    let positions: Vec<_> = all
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [2, 3, 4, 5]);

    let typed = json_lines(&ok(run(&[
        "read",
        "--all",
        "--types",
        "InvoiceSent,OrderPaid",
        "--url",
        url,
    ])));
    assert_eq!(typed.len(), 2);

    let streams = ok(run(&["streams", "--url", url]));
    assert_eq!(
        streams.lines().collect::<Vec<_>>(),
        ["invoice-1", "order-1"]
    );
    let streams = ok(run(&["streams", "--prefix", "order", "--url", url]));
    assert_eq!(streams.lines().collect::<Vec<_>>(), ["order-1"]);
    let streams = ok(run(&["streams", "--limit", "1", "--url", url]));
    assert_eq!(streams.lines().collect::<Vec<_>>(), ["invoice-1"]);
}

#[test]
fn api_errors_are_printed_clearly_with_a_failing_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let url = server.url.as_str();
    ok(run(&[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        "{}",
        "--url",
        url,
    ]));

    let conflict = run(&[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        "{}",
        "--expected-version",
        "7",
        "--url",
        url,
    ]);
    assert_eq!(conflict.status.code(), Some(1));
    assert!(conflict.stdout.is_empty());
    let message = stderr(&conflict);
    assert!(
        message.starts_with("error: wrong_expected_version: "),
        "{message}"
    );
    assert!(message.contains("HTTP 409"), "{message}");
    assert!(
        message.contains("\"expected\":7") && message.contains("\"actual\":0"),
        "{message}"
    );

    let missing = run(&["read", "order-404", "--url", url]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).starts_with("error: stream_not_found: "),
        "{}",
        stderr(&missing)
    );

    let bad_name = run(&["read", "$all", "--url", url]);
    assert!(
        stderr(&bad_name).starts_with("error: invalid_stream_name: "),
        "{}",
        stderr(&bad_name)
    );

    let bad_line = run_with_stdin(
        &["append", "order-1", "--file", "-", "--url", url],
        "{\"type\": \"A\", \"data\": 1}\n{\"type\": \"B\", \"dta\": 1}\n",
    );
    assert_eq!(bad_line.status.code(), Some(1));
    let message = stderr(&bad_line);
    assert!(
        message.contains("stdin line 2") && message.contains("dta"),
        "{message}"
    );

    let bad_data = run(&[
        "append", "order-1", "--type", "A", "--data", "{nope", "--url", url,
    ]);
    assert_eq!(bad_data.status.code(), Some(1));
    assert!(
        stderr(&bad_data).contains("--data is not valid JSON"),
        "{}",
        stderr(&bad_data)
    );

    let usage = run(&["append", "order-1", "--url", url]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a usage error: {}",
        stderr(&usage)
    );

    let unreachable = run(&["streams", "--url", "http://127.0.0.1:9"]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        stderr(&unreachable).contains("could not reach Cairn"),
        "{}",
        stderr(&unreachable)
    );
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    ok(run(&[
        "append",
        "s-1",
        "--type",
        "A",
        "--data",
        "1",
        "--url",
        &server.url,
    ]));
    // The shell's builtin `kill`: no unsafe code, no extra dependency.
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", server.pid())])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait_for_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}: {:#?}", server.logs());
    let logs = server.logs();
    assert!(
        logs.iter().any(|line| line.contains("cairn stopped")),
        "{logs:#?}"
    );

    // The data directory is released: a new server opens it and sees the event.
    let server = Server::start(&dir.path().join("data"));
    let events = ok(run(&["read", "s-1", "--url", &server.url]));
    assert_eq!(events.lines().count(), 1);
}
