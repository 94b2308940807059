//! Read models in PostgreSQL with several `cairn serve` processes on one database:
//! each projection is driven by one instance (its advisory lock), the others report
//! it as driven elsewhere and serve its queries; when the owner is SIGKILLed while
//! events keep arriving, another instance takes over within seconds and the read
//! model ends exactly right — no event applied twice, none skipped.

use std::time::{Duration, Instant};

use cairn_client::{Client, ExpectedVersion, event};
use cairn_store::testing::{TestDatabase, shared_database};
use serde_json::{Value, json};

use crate::support::{Server, http_get};

const LEDGER: &str = r#"
[[projections]]
name = "ledger"
filter = { types = ["Tick"] }
setup = [
  "CREATE TABLE applied (position BIGINT PRIMARY KEY)",
  "CREATE TABLE counts (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)",
]
[projections.on]
Tick = [
  "INSERT INTO applied VALUES (:position)",
  "INSERT INTO counts AS c VALUES (:stream, 1) ON CONFLICT (stream) DO UPDATE SET n = c.n + 1",
]

[[queries]]
name = "ledger"
sql = """SELECT (SELECT count(*) FROM applied) AS applied, (SELECT sum(n) FROM counts)::BIGINT AS counted,
  (SELECT max(position) FROM applied) AS highest"""
"#;

fn start(dir: &tempfile::TempDir, url: &str) -> Server {
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, LEDGER).unwrap();
    Server::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--database-url",
            url,
            "--pool-size",
            "4",
            "--config",
            config.to_str().unwrap(),
        ],
    )
}

fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) =
        http_get(server.address(), path).unwrap_or_else(|| panic!("GET {path} answered"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn ledger(server: &Server) -> Value {
    get_json(server, "/v1/projections/ledger")
}

/// Polls `what` every 20 ms until it holds, for at most `within`.
fn wait_for(what: &str, within: Duration, mut holds: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !holds() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn the_owner_is_killed_and_another_instance_takes_over_exactly_right() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(TestDatabase { primary_url, .. }) = runtime.block_on(shared_database()) else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = start(&dir_a, &primary_url);
    wait_for("A drives the ledger", Duration::from_secs(10), || {
        ledger(&a)["owner"] == "this_instance"
    });
    let b = start(&dir_b, &primary_url);
    wait_for("B sees A drive it", Duration::from_secs(10), || {
        ledger(&b)["owner"] == "another_instance"
    });
    // Projections on PostgreSQL with several instances is a setup that needs no
    // warning (an old one said to run them on one instance only). The plan advice on
    // the ledger query's full scans is the only warning.
    for server in [&a, &b] {
        let warnings: Vec<String> = server
            .logs()
            .into_iter()
            .filter(|line| line.contains("\"level\":\"WARN\""))
            .filter(|line| !line.contains("\"target\":\"cairn::plans\""))
            .collect();
        assert!(warnings.is_empty(), "{warnings:#?}");
    }

    // Events keep arriving through B while A is killed.
    let client = Client::new(&b.url).unwrap();
    let writer = runtime.spawn(async move {
        let mut last = 0;
        for index in 0..80 {
            let written = client
                .append(
                    &format!("clock-{}", index % 3),
                    ExpectedVersion::Any,
                    (0..5).map(|n| event("Tick", json!({ "n": n }))).collect(),
                )
                .await
                .unwrap_or_else(|error| panic!("append {index}: {error}"));
            last = written.last_position;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        last
    });
    wait_for("A applied some events", Duration::from_secs(10), || {
        ledger(&a)["position"].as_u64().unwrap_or(0) >= 50
    });
    a.kill();
    let took = wait_for("B takes over", Duration::from_secs(10), || {
        ledger(&b)["owner"] == "this_instance"
    });
    assert!(took < Duration::from_secs(5), "B took over after {took:?}");

    let head = runtime.block_on(writer).unwrap();
    assert_eq!(head, 400);
    let answer = get_json(
        &b,
        &format!("/v1/queries/ledger?min_position={head}&wait_ms=20000"),
    );
    assert_eq!(answer["position"], json!(head));
    assert_eq!(
        answer["rows"],
        json!([{"applied": head, "counted": head, "highest": head}]),
        "every event applied once, none skipped"
    );
    let status = ledger(&b);
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["position"], json!(head), "{status}");
    b.wait_for_logs(|logs| {
        logs.iter()
            .any(|line| line.contains("this instance drives the projection"))
    });
}

#[test]
fn read_models_live_in_the_schema_the_settings_name() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(TestDatabase { primary_url, .. }) = runtime.block_on(shared_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, LEDGER).unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--database-url",
            &primary_url,
            "--readmodel-schema",
            "tenant_two",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let client = Client::new(&server.url).unwrap();
    runtime
        .block_on(client.append(
            "clock-1",
            ExpectedVersion::Any,
            vec![event("Tick", json!({}))],
        ))
        .unwrap();
    wait_for("the projection at 1", Duration::from_secs(20), || {
        ledger(&server)["position"] == json!(1)
    });
    runtime.block_on(async {
        let (sql, connection) = tokio_postgres::connect(&primary_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let count = |query: &'static str| {
            let sql = &sql;
            async move {
                let row = sql.query_one(query, &[]).await.unwrap();
                row.get::<_, i64>(0)
            }
        };
        assert_eq!(count("SELECT count(*) FROM tenant_two.applied").await, 1);
        assert_eq!(
            count("SELECT position FROM tenant_two.cairn_projections WHERE name = 'ledger'").await,
            1
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'cairn_readmodels'"
            )
            .await,
            0,
            "nothing in the default schema"
        );
    });
}
