//! Settings: flags > CAIRN_* variables > the TOML file > defaults.

use std::time::Duration;

use cairn::settings::{RawSettings, Settings, parse_duration};

use crate::support::{cairn, ok, run, stderr};

fn resolve_file(text: &str) -> anyhow::Result<Settings> {
    Settings::merge(
        &RawSettings::default(),
        &RawSettings::parse(text)?,
        Some("cairn.toml".as_ref()),
    )
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let settings = Settings::merge(&RawSettings::default(), &RawSettings::default(), None).unwrap();
    assert_eq!(settings.listen.to_string(), "127.0.0.1:7171");
    assert_eq!(settings.data_dir, std::path::Path::new("./cairn-data"));
    assert_eq!(settings.idempotency_window, Duration::from_secs(24 * 3600));
    assert_eq!(settings.request_timeout, Duration::from_secs(30));
    assert_eq!(settings.read_connections, 4);
    assert_eq!(settings.log_format, None);
    assert_eq!(settings.log_level, "info");
    let limits = cairn_server::Limits::default();
    assert_eq!(settings.limits.max_body_bytes, limits.max_body_bytes);
    assert_eq!(
        settings.limits.max_events_per_request,
        limits.max_events_per_request
    );
    assert_eq!(settings.limits.max_event_bytes, limits.max_event_bytes);
    assert_eq!(settings.limits.max_json_depth, limits.max_json_depth);
}

#[test]
fn flags_win_over_environment_over_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:1111"
request_timeout = "10s"
idempotency_window = "1h"
max_json_depth = 10
data_dir = "/from/file"
"#,
    )
    .unwrap();
    let output = cairn(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:3333",
        "--print-config",
    ])
    .env("CAIRN_LISTEN", "127.0.0.1:2222")
    .env("CAIRN_REQUEST_TIMEOUT", "20s")
    .env("CAIRN_MAX_BODY_BYTES", "1000")
    .output()
    .unwrap();
    let printed: serde_json::Value = serde_json::from_str(&ok(output)).unwrap();
    assert_eq!(printed["listen"], "127.0.0.1:3333", "flag > env > file");
    assert_eq!(printed["request_timeout"], "20s", "env > file");
    assert_eq!(printed["max_body_bytes"], 1000, "env > default");
    assert_eq!(printed["idempotency_window"], "1h", "file > default");
    assert_eq!(printed["max_json_depth"], 10, "file > default");
    assert_eq!(printed["data_dir"], "/from/file");
    assert_eq!(printed["read_connections"], 4, "default");
    assert_eq!(printed["max_events_per_request"], 1000, "default");

    // The config file itself can come from the environment.
    let output = cairn(&["serve", "--print-config"])
        .env("CAIRN_CONFIG", &file)
        .output()
        .unwrap();
    let printed: serde_json::Value = serde_json::from_str(&ok(output)).unwrap();
    assert_eq!(printed["listen"], "127.0.0.1:1111");
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:7171\"\nmax_body_size = 10\n").unwrap();
    let error = format!("{:#}", RawSettings::load(&file).unwrap_err());
    assert!(error.contains("max_body_size"), "{error}");
    assert!(error.contains(file.to_str().unwrap()), "{error}");

    let output = run(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("max_body_size"), "{message}");
    assert!(message.contains("cairn.toml"), "{message}");
}

#[test]
fn bad_values_are_refused_clearly() {
    let error = format!(
        "{:#}",
        resolve_file("request_timeout = \"10 parsecs\"").unwrap_err()
    );
    assert!(
        error.contains("request_timeout")
            && error.contains("10 parsecs")
            && error.contains("cairn.toml"),
        "{error}"
    );

    let error = format!("{:#}", resolve_file("listen = \"localhost\"").unwrap_err());
    assert!(
        error.contains("listen") && error.contains("localhost") && error.contains("IP:PORT"),
        "{error}"
    );

    let error = format!("{:#}", resolve_file("read_connections = 0").unwrap_err());
    assert!(
        error.contains("read_connections") && error.contains("at least 1"),
        "{error}"
    );

    let error = format!(
        "{:#}",
        resolve_file("max_body_bytes = \"8MB\"").unwrap_err()
    );
    assert!(error.contains("max_body_bytes"), "{error}");

    let error = format!("{:#}", resolve_file("log_format = \"xml\"").unwrap_err());
    assert!(
        error.contains("log_format") && error.contains("xml"),
        "{error}"
    );

    // From the command line, the flag is named.
    let output = run(&["serve", "--idempotency-window", "forever", "--print-config"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("--idempotency-window") && message.contains("forever"),
        "{message}"
    );
    let output = run(&["serve", "--listen", "127.0.0.1", "--print-config"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a listen address"),
        "{}",
        stderr(&output)
    );

    assert!(parse_duration("500ms").is_ok());
}

#[test]
fn the_example_file_parses_lists_every_key_and_states_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cairn.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let raw = RawSettings::load(path.as_ref()).unwrap();
    for key in RawSettings::KEYS {
        let set = format!("\n{key} = ");
        let commented = format!("\n# {key} = ");
        assert!(
            text.contains(&set) || text.contains(&commented),
            "cairn.example.toml does not mention {key}"
        );
    }
    let from_example = Settings::merge(&RawSettings::default(), &raw, Some(path.as_ref())).unwrap();
    let defaults = Settings::merge(&RawSettings::default(), &RawSettings::default(), None).unwrap();
    assert_eq!(
        from_example.to_json(),
        defaults.to_json(),
        "the example states the defaults"
    );
    assert_eq!(from_example.to_json()["strict_plans"], false);
    assert_eq!(from_example.to_json()["slow_query_threshold"], "50ms");

    // The read side's tables are there, commented out, and valid once uncommented.
    for table in RawSettings::TABLES {
        assert!(
            text.contains(&format!("\n# [[{table}]]\n")),
            "cairn.example.toml does not show [[{table}]]"
        );
    }
    let start = text.find("\n# [[projections]]").unwrap();
    let uncommented: String = text[start..]
        .lines()
        .take_while(|line| line.starts_with('#') || line.is_empty())
        .take_while(|line| !line.starts_with("# Statement placeholders"))
        .map(|line| {
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#'))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let settings =
        resolve_file(&uncommented).unwrap_or_else(|error| panic!("{error:#}\n{uncommented}"));
    assert_eq!(settings.projections.len(), 1);
    assert_eq!(settings.projections[0].name, "orders");
    assert_eq!(settings.queries[0].name, "orders_by_customer");
}

const PROJECTION: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)"]
[projections.on]
OrderPlaced = ["INSERT INTO orders VALUES (:data.id)"]

[[queries]]
name = "order"
sql = "SELECT id FROM orders WHERE id = :id"
params = { id = "text" }
"#;

#[test]
fn projections_and_queries_come_from_the_file_and_are_checked() {
    let settings = resolve_file(PROJECTION).unwrap();
    assert_eq!(settings.projections[0].name, "orders");
    assert_eq!(settings.queries[0].name, "order");
    assert_eq!(settings.query_cache_bytes, 64 * 1024 * 1024);
    assert_eq!(settings.projection_batch_size, 2000);
    let printed = settings.to_json();
    assert_eq!(printed["projections"], serde_json::json!(["orders"]));
    assert_eq!(printed["queries"], serde_json::json!(["order"]));

    // An unknown key inside a projection or a query is refused by name.
    let error = format!(
        "{:#}",
        RawSettings::parse(&PROJECTION.replace("filter =", "filtr =")).unwrap_err()
    );
    assert!(error.contains("filtr"), "{error}");
    let error = format!(
        "{:#}",
        RawSettings::parse(&PROJECTION.replace("params =", "parameters =")).unwrap_err()
    );
    assert!(error.contains("parameters"), "{error}");

    // Mistakes the read side would refuse stop the settings, naming the projection or
    // query and the file.
    for (broken, named, why) in [
        (
            PROJECTION.replace(":data.id)", ":dta.id)"),
            "projection \"orders\"",
            ":dta.id",
        ),
        (
            PROJECTION.replace("WHERE id = :id", "WHERE id = :key"),
            "query \"order\"",
            ":key",
        ),
        (
            format!("{PROJECTION}\n[[queries]]\nname = \"order\"\nsql = \"SELECT 1\"\n"),
            "query \"order\"",
            "defined twice",
        ),
    ] {
        let error = format!("{:#}", resolve_file(&broken).unwrap_err());
        assert!(
            error.contains(named) && error.contains(why) && error.contains("cairn.toml"),
            "{error}"
        );
    }

    // Through the binary: refused before listening, the key named.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        PROJECTION
            .replace("teardown", "x")
            .replace("setup =", "set_up ="),
    )
    .unwrap();
    let output = run(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("set_up") && message.contains("cairn.toml"),
        "{message}"
    );
}

#[test]
fn the_read_side_tuning_keys_layer_like_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        format!("query_cache_bytes = 1000\nprojection_batch_size = 50\n{PROJECTION}"),
    )
    .unwrap();
    let output = cairn(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--projection-batch-size",
        "10",
        "--print-config",
    ])
    .env("CAIRN_QUERY_CACHE_BYTES", "0")
    .output()
    .unwrap();
    let printed: serde_json::Value = serde_json::from_str(&ok(output)).unwrap();
    assert_eq!(printed["query_cache_bytes"], 0, "env > file");
    assert_eq!(printed["projection_batch_size"], 10, "flag > file");
    assert_eq!(printed["projections"], serde_json::json!(["orders"]));
    let error = format!(
        "{:#}",
        resolve_file("projection_batch_size = 0").unwrap_err()
    );
    assert!(error.contains("projection_batch_size"), "{error}");
}

#[test]
fn the_claims_per_token_cap_layers_like_the_others_and_must_be_positive() {
    let defaults = resolve_file("").unwrap();
    assert_eq!(
        defaults.request_limits.max_claims_per_token,
        cairn_server::limits::DEFAULT_MAX_CLAIMS_PER_TOKEN
    );
    let file = RawSettings::parse("max_claims_per_token = 7").unwrap();
    let from_file = Settings::merge(&RawSettings::default(), &file, None).unwrap();
    assert_eq!(from_file.request_limits.max_claims_per_token, 7);
    let over = RawSettings {
        max_claims_per_token: Some(3),
        ..RawSettings::default()
    };
    let merged = Settings::merge(&over, &file, None).unwrap();
    assert_eq!(merged.request_limits.max_claims_per_token, 3, "flag > file");
    let error = format!(
        "{:#}",
        resolve_file("max_claims_per_token = 0").unwrap_err()
    );
    assert!(error.contains("max_claims_per_token"), "{error}");
    let output = cairn(&["serve", "--print-config"])
        .env("CAIRN_MAX_CLAIMS_PER_TOKEN", "5")
        .output()
        .unwrap();
    let printed: serde_json::Value = serde_json::from_str(&ok(output)).unwrap();
    assert_eq!(
        printed["max_claims_per_token"], 5,
        "the environment variable"
    );
}

#[test]
fn worker_threads_layer_like_the_others_and_are_bounded() {
    let defaults = resolve_file("").unwrap();
    assert_eq!(
        defaults.worker_threads,
        std::thread::available_parallelism().unwrap().get(),
        "one per core"
    );
    assert_eq!(
        resolve_file("worker_threads = 3").unwrap().worker_threads,
        3
    );
    let over = RawSettings {
        worker_threads: Some(1),
        ..RawSettings::default()
    };
    let file = RawSettings::parse("worker_threads = 3").unwrap();
    assert_eq!(
        Settings::merge(&over, &file, None).unwrap().worker_threads,
        1,
        "flag > file"
    );
    for bad in ["worker_threads = 0", "worker_threads = 1025"] {
        let error = format!("{:#}", resolve_file(bad).unwrap_err());
        assert!(
            error.contains("`worker_threads` in cairn.toml"),
            "{bad}: {error}"
        );
    }
    let output = cairn(&["serve", "--print-config"])
        .env("CAIRN_WORKER_THREADS", "2")
        .output()
        .unwrap();
    let printed: serde_json::Value = serde_json::from_str(&ok(output)).unwrap();
    assert_eq!(printed["worker_threads"], 2, "the environment variable");
    // A bad value stops `cairn serve` before anything starts, with the flag named.
    let output = run(&["serve", "--worker-threads", "0", "--print-config"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--worker-threads"),
        "{}",
        stderr(&output)
    );
}

/// The running server has as many worker threads as it was told.
#[test]
fn the_server_runs_the_worker_threads_it_was_given() {
    for workers in [1_usize, 3] {
        let dir = tempfile::tempdir().unwrap();
        let server = crate::support::Server::start_with(
            dir.path(),
            "127.0.0.1:0",
            &["--worker-threads", &workers.to_string()],
        );
        let (status, body) = crate::support::http_get(server.address(), "/metrics").unwrap();
        assert_eq!(status, 200, "{body}");
        let line = body
            .lines()
            .find(|line| line.starts_with("cairn_runtime_worker_threads "))
            .unwrap_or_else(|| panic!("no worker-threads gauge in {body}"));
        assert_eq!(line, format!("cairn_runtime_worker_threads {workers}"));
    }
}
