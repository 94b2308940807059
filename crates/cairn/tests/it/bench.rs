//! `cairn bench` against its embedded server.

use crate::support::{ok, run};

#[test]
fn bench_against_the_embedded_server_prints_json() {
    let output = run(&["bench", "--duration", "2s", "--clients", "2", "--json"]);
    let text = ok(output);
    let result: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(result["scenario"], "append");
    assert_eq!(result["target"], "embedded");
    assert_eq!(result["clients"], 2);
    assert_eq!(result["payload_bytes"], 300);
    assert_eq!(result["events_per_request"], 1);
    assert_eq!(result["errors"], 0, "{result:#}");
    let requests = result["requests"].as_u64().unwrap();
    assert!(requests > 0, "{result:#}");
    assert_eq!(result["events"].as_u64(), Some(requests));
    assert!(result["events_per_s"].as_f64().unwrap() > 0.0);
    let elapsed = result["elapsed_s"].as_f64().unwrap();
    assert!((2.0..10.0).contains(&elapsed), "{elapsed}");
    let latency = &result["latency_ms"];
    let p50 = latency["p50"].as_f64().unwrap();
    let p99 = latency["p99"].as_f64().unwrap();
    let max = latency["max"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{latency}");
    for key in ["p90", "p99_9", "mean"] {
        assert!(latency[key].is_f64(), "{key} in {latency}");
    }
}

/// The load clients are spread over threads of their own: every one of them runs, and
/// what the threads count is exactly what the server stored.
#[test]
fn every_load_client_appends_and_every_counted_event_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::Server::start(&dir.path().join("data"));
    let result = bench_json(&[
        "bench",
        "--url",
        &server.url,
        "--duration",
        "1s",
        "--clients",
        "5",
        "--payload-bytes",
        "20",
        "--json",
    ]);
    assert_eq!(result["errors"], 0, "{result:#}");
    let counted = result["events"].as_u64().unwrap();
    let client = cairn_client::Client::new(&server.url).unwrap();
    let log = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::support::read_whole_log(&client));
    let mut streams = std::collections::BTreeMap::<String, u64>::new();
    for event in &log {
        *streams.entry(event.stream.clone()).or_default() += 1;
    }
    assert_eq!(streams.len(), 5, "one stream per client: {streams:?}");
    assert!(streams.values().all(|&events| events > 0), "{streams:?}");
    assert_eq!(streams.values().sum::<u64>(), counted, "{streams:?}");
}

#[test]
fn the_read_and_batch_scenarios_run_too() {
    for (scenario, per_request) in [("read", 100), ("append-batch", 10)] {
        let text = ok(run(&[
            "bench",
            scenario,
            "--duration",
            "1s",
            "--clients",
            "2",
            "--batch-size",
            "10",
            "--payload-bytes",
            "50",
            "--json",
        ]));
        let result: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(result["scenario"], scenario);
        assert_eq!(result["events_per_request"], per_request);
        assert_eq!(result["errors"], 0, "{result:#}");
        assert!(result["requests"].as_u64().unwrap() > 0, "{result:#}");
    }
}

#[test]
fn the_e2e_scenario_reports_delivery_latency() {
    let text = ok(run(&[
        "bench",
        "e2e",
        "--duration",
        "2s",
        "--rate",
        "500",
        "--subscribers",
        "2",
        "--clients",
        "4",
        "--json",
    ]));
    let result: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(result["scenario"], "e2e");
    assert_eq!(result["errors"], 0, "{result:#}");
    let appended = result["events"].as_u64().unwrap();
    assert!(appended > 100, "{result:#}");
    let e2e = &result["e2e"];
    assert_eq!(e2e["rate"], 500);
    assert_eq!(e2e["subscribers"], 2);
    assert_eq!(e2e["delivered"].as_u64(), Some(appended * 2), "{result:#}");
    assert_eq!(e2e["missing"], 0, "{result:#}");
    let latency = &result["latency_ms"];
    let p50 = latency["p50"].as_f64().unwrap();
    let p99 = latency["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{latency}");
    assert!(e2e["append_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_e2e_scenario_runs_with_its_defaults() {
    let text = ok(run(&["bench", "e2e", "--duration", "2s", "--json"]));
    let result: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(result["scenario"], "e2e");
    assert_eq!(result["e2e"]["rate"], 5000);
    assert_eq!(result["e2e"]["subscribers"], 1);
    assert_eq!(result["e2e"]["missing"], 0, "{result:#}");
    assert!(result["events"].as_u64().unwrap() > 0);
}

#[test]
fn the_group_scenario_acks_every_pre_appended_event() {
    let text = ok(run(&[
        "bench",
        "group",
        "--events",
        "2000",
        "--duration",
        "5s",
        "--json",
    ]));
    let result: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(result["scenario"], "group");
    assert_eq!(result["errors"], 0, "{result:#}");
    assert_eq!(result["events"], 2000, "{result:#}");
    assert!(result["events_per_s"].as_f64().unwrap() > 0.0);
    let group = &result["group"];
    assert_eq!(group["workers"], 8);
    assert_eq!(group["batch"], 100);
    assert_eq!(group["pre_appended"], 2000);
    assert_eq!(group["complete"], true);
    assert_eq!(group["redelivered"], 0);
    assert!(result["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let text = ok(run(args));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn the_query_scenario_reports_queries_and_the_projection_catch_up() {
    let result = bench_json(&[
        "bench",
        "query",
        "--events",
        "3000",
        "--keys",
        "300",
        "--clients",
        "2",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(result["scenario"], "query");
    assert_eq!(result["errors"], 0, "{result:#}");
    let requests = result["requests"].as_u64().unwrap();
    assert!(requests > 0, "{result:#}");
    assert_eq!(
        result["events"].as_u64(),
        Some(requests),
        "every answer had its row"
    );
    assert!(result["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let query = &result["query"];
    assert_eq!(query["query"], "bench_item");
    assert_eq!(query["keys"], 300);
    assert_eq!(query["cached"], false);
    assert_eq!(query["pre_appended"], 3000);
    assert!(query["catch_up_s"].as_f64().unwrap() > 0.0, "{query}");
    assert!(
        query["catch_up_events_per_s"].as_f64().unwrap() > 0.0,
        "{query}"
    );
    assert_eq!(query["cache_hits"], 0, "the embedded cache is off: {query}");
    assert!(
        query["replay_events_per_s"].as_f64().unwrap() > 0.0,
        "{query}"
    );

    let result = bench_json(&[
        "bench",
        "query",
        "--cached",
        "--events",
        "1000",
        "--clients",
        "2",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(result["errors"], 0, "{result:#}");
    let query = &result["query"];
    assert_eq!(query["cached"], true);
    assert_eq!(query["keys"], 16);
    assert!(
        query["cache_hit_ratio"].as_f64().unwrap() > 0.5,
        "the cache serves a few keys: {query}"
    );
}

#[test]
fn e2e_with_query_measures_append_to_visible_latency() {
    let result = bench_json(&[
        "bench",
        "e2e",
        "--query",
        "--rate",
        "300",
        "--clients",
        "4",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(result["scenario"], "e2e");
    assert_eq!(result["errors"], 0, "{result:#}");
    let appended = result["events"].as_u64().unwrap();
    assert!(appended > 50, "{result:#}");
    let visibility = &result["visibility"];
    assert_eq!(visibility["rate"], 300);
    assert_eq!(visibility["visible"].as_u64(), Some(appended), "{result:#}");
    assert_eq!(visibility["not_visible"], 0);
    let latency = &result["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() > 0.0, "{latency}");
    assert!(result.get("e2e").is_none());
}

#[test]
fn the_query_scenarios_need_the_bench_read_side_on_a_given_server() {
    let toml = ok(run(&["bench", "query", "--print-read-side"]));
    assert!(toml.contains("name = \"bench_items\"") && toml.contains("name = \"bench_item\""));

    let dir = tempfile::tempdir().unwrap();
    let server = crate::support::Server::start(&dir.path().join("data"));
    let output = run(&["bench", "query", "--url", &server.url, "--duration", "1s"]);
    assert!(!output.status.success());
    let message = crate::support::stderr(&output);
    assert!(
        message.contains("no projection bench_items") && message.contains("[[projections]]"),
        "{message}"
    );

    // With it configured, the same run works against that server.
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, &toml).unwrap();
    let server =
        crate::support::Server::start_with_config(&dir.path().join("with-read-side"), &config);
    let result = bench_json(&[
        "bench",
        "query",
        "--url",
        &server.url,
        "--events",
        "500",
        "--duration",
        "1s",
        "--clients",
        "2",
        "--json",
    ]);
    assert_eq!(result["errors"], 0, "{result:#}");
    assert_eq!(result["target"], server.url.as_str());
}

/// A server that is ready but refuses every append and closes the connection after
/// each answer: the load clients count the refusals, keep what the server said, and
/// open a new connection for the next request.
#[test]
fn refused_requests_are_counted_and_closed_connections_reopened() {
    use std::io::{BufRead, BufReader, Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if request_line.is_empty() {
                        request_line = line.clone();
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let (status, answer) = if request_line.starts_with("GET /health/ready") {
                    ("200 OK", r#"{"status":"ready"}"#)
                } else {
                    (
                        "503 Service Unavailable",
                        r#"{"error":{"code":"unavailable","message":"try later"}}"#,
                    )
                };
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });

    let (requests, samples) = bench_failing(&url);
    assert!(requests > 2, "{requests} requests");
    assert!(
        samples
            .iter()
            .any(|s| s.starts_with("HTTP 503") && s.contains("try later")),
        "{samples:#?}"
    );
    // One connection per request: each was closed after its answer.
    let opened = connections.load(std::sync::atomic::Ordering::Relaxed) as u64;
    assert!(
        opened >= requests,
        "{opened} connections for {requests} requests"
    );
}

/// A server that answers the readiness check and then goes away: every load request
/// fails to connect, is counted as an error, and says so.
#[test]
fn a_server_that_goes_away_is_counted_as_failed_connections() {
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        // One connection (the readiness check); the listener is closed before it is
        // answered, so that no load connection can wait in its backlog.
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        drop(listener);
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let body = r#"{"status":"ready"}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });

    let (_, samples) = bench_failing(&url);
    assert!(
        samples
            .iter()
            .all(|s| s.starts_with("cannot connect to 127.0.0.1:")),
        "{samples:#?}"
    );
}

/// `cairn bench` for 1 s with 2 clients against `url`, whose server fails every load
/// request: each is counted as an error, none as events. Returns the requests sent and
/// the error samples.
fn bench_failing(url: &str) -> (u64, Vec<String>) {
    let result = bench_json(&[
        "bench",
        "--url",
        url,
        "--duration",
        "1s",
        "--clients",
        "2",
        "--json",
    ]);
    let requests = result["requests"].as_u64().unwrap();
    assert!(requests > 0, "{result:#}");
    assert_eq!(result["errors"].as_u64(), Some(requests), "{result:#}");
    assert_eq!(result["events"], 0, "{result:#}");
    let samples: Vec<String> = result["error_samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert!(!samples.is_empty(), "{result:#}");
    (requests, samples)
}
