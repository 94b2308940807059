//! `docs/metrics.md` is the catalogue of Cairn's metrics: every metric a crate declares
//! must be documented there, every documented one must be declared, and what a running
//! server exports must be documented.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::{Server, http_get, ok, run};

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Every `"cairn_…"` string literal in the crates' `metrics.rs` files.
fn declared() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(repository().join("crates")).unwrap() {
        let path = entry.unwrap().path().join("src/metrics.rs");
        let Ok(source) = std::fs::read_to_string(&path) else {
            continue;
        };
        for piece in source.split('"').skip(1).step_by(2) {
            if piece.starts_with("cairn_") && piece.len() > "cairn_".len() {
                names.insert(piece.to_owned());
            }
        }
    }
    names
}

fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repository().join("docs/metrics.md")).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.starts_with("cairn_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_declared_metric_is_documented_and_nothing_else() {
    let declared = declared();
    let documented = documented();
    assert!(declared.len() > 20, "found the declarations: {declared:?}");
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&declared).collect();
    assert!(
        undocumented.is_empty(),
        "declared but not in docs/metrics.md: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "in docs/metrics.md but declared nowhere: {unknown:?}"
    );
}

#[test]
fn metrics_are_only_recorded_through_declared_names() {
    // A metric named inline (`counter!("cairn_…")`) would escape the catalogue.
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(repository().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        visit(&src, &mut |path, text| {
            if path.file_name().is_some_and(|n| n == "metrics.rs") {
                return;
            }
            for macro_name in [
                "counter!(\"cairn_",
                "gauge!(\"cairn_",
                "histogram!(\"cairn_",
            ] {
                if text.contains(macro_name) {
                    offenders.push(path.display().to_string());
                }
            }
        });
    }
    assert!(
        offenders.is_empty(),
        "metrics named outside metrics.rs: {offenders:?}"
    );
}

fn visit(dir: &Path, check: &mut dyn FnMut(&Path, &str)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            visit(&path, check);
        } else if path.extension().is_some_and(|e| e == "rs")
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            check(&path, &text);
        }
    }
}

#[test]
fn a_running_server_exports_only_documented_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = repository().join("examples/shop/cairn.toml");
    let server = Server::start_with_config(dir.path(), &config);
    let url = format!("http://{}", server.address());
    ok(run(&[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--url",
        &url,
        "--data",
        r#"{"id": "order-1", "customer": "c-1", "total": 10, "lines": []}"#,
    ]));
    let _ = http_get(server.address(), "/v1/streams/order-1/events");
    let _ = http_get(server.address(), "/v1/queries/order?id=order-1");
    let (status, body) = http_get(server.address(), "/metrics").expect("metrics answered");
    assert_eq!(status, 200);
    let documented = documented();
    let exported: BTreeSet<String> = body
        .lines()
        .filter(|line| line.starts_with("cairn_"))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| documented.contains(*base))
                })
                .unwrap_or(name)
                .to_owned()
        })
        .collect();
    assert!(exported.contains("cairn_http_requests_total"), "{body}");
    assert!(exported.contains("cairn_appended_events_total"), "{body}");
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );

    // The sampled metrics are there from the first scrape: pools, caches, database
    // sizes (measured before the server listens) and the process.
    let mut sampled = vec![
        "cairn_pool_connections",
        "cairn_pool_waiting",
        "cairn_pool_wait_seconds",
        "cairn_cache_evictions_total",
        "cairn_cache_bytes",
        "cairn_cache_capacity_bytes",
        "cairn_database_size_bytes",
        "cairn_database_wal_bytes",
        "cairn_runtime_worker_threads",
    ];
    let mut positive = vec![
        r#"cairn_database_size_bytes{database="events"}"#,
        r#"cairn_database_size_bytes{database="readmodels"}"#,
        r#"cairn_pool_wait_seconds_count{pool="events"}"#,
        r#"cairn_pool_wait_seconds_count{pool="readmodels"}"#,
        r#"cairn_pool_connections{pool="events",state="idle"}"#,
        r#"cairn_cache_capacity_bytes{cache="event_pages"}"#,
        r#"cairn_cache_capacity_bytes{cache="query_results"}"#,
        "cairn_runtime_worker_threads",
    ];
    if cfg!(target_os = "linux") {
        sampled.extend([
            "cairn_process_resident_memory_bytes",
            "cairn_process_virtual_memory_bytes",
            "cairn_process_cpu_seconds_total",
            "cairn_process_threads",
            "cairn_process_open_fds",
            "cairn_process_max_fds",
            "cairn_process_start_time_seconds",
        ]);
        positive.extend([
            "cairn_process_resident_memory_bytes",
            "cairn_process_open_fds",
            "cairn_process_start_time_seconds",
        ]);
    }
    let missing: Vec<_> = sampled
        .iter()
        .filter(|name| !exported.contains(**name))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{body}");
    for series in positive {
        assert!(
            value_of(&body, series).is_some_and(|value| value > 0.0),
            "{series} should be above 0:\n{body}"
        );
    }
    for series in [
        r#"cairn_cache_evictions_total{cache="event_pages",reason="size"}"#,
        r#"cairn_cache_evictions_total{cache="query_results",reason="expired"}"#,
    ] {
        assert!(
            value_of(&body, series).is_some(),
            "{series} missing:\n{body}"
        );
    }
}

/// The value of one series (`name{labels}` exactly as rendered) in Prometheus text.
fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
