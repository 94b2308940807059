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
