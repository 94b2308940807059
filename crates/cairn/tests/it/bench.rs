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
