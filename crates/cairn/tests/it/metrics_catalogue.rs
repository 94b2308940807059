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
}
