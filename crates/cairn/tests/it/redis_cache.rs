//! `--redis-url`: the shared query cache through the real binary. Two `cairn serve`
//! processes on one PostgreSQL share query results through a throw-away Redis
//! (`cairn_projection::testing`); a server keeps answering while Redis is dead and uses
//! it again when it returns; the setting layers like the others and never shows its
//! password. Without `redis-server` (or PostgreSQL, for the first test) the tests are
//! skipped loudly, and fail when `CI` is set.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_client::{Client, ExpectedVersion, event};
use cairn_projection::testing::RedisServer;
use cairn_store::testing::shared_database;
use serde_json::json;

use crate::support::{Server, cairn, http_get, ok, run, stderr};

const CONFIG: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total INTEGER)"]
[projections.on]
OrderPlaced = ["INSERT INTO orders (id, customer, total) VALUES (:data.id, :data.customer, :data.total)"]

[[queries]]
name = "by_customer"
sql = "SELECT id, total FROM orders WHERE customer = :customer ORDER BY id"
params = { customer = "text" }
"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn write_config(dir: &Path) -> String {
    let path = dir.join("cairn.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path.display().to_string()
}

/// The sum of a metric's samples whose labels contain `label` (e.g. `query="x"`).
fn metric(server: &Server, name: &str, label: &str) -> f64 {
    let (status, body) = http_get(server.address(), "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn place(client: &Client, id: &str, customer: &str, total: u32) -> u64 {
    client
        .append(
            &format!("order-{id}"),
            ExpectedVersion::NoStream,
            vec![event(
                "OrderPlaced",
                json!({"id": id, "customer": customer, "total": total}),
            )],
        )
        .await
        .unwrap()
        .last_position
}

async fn ids(client: &Client, customer: &str, min_position: u64) -> (Vec<String>, u64) {
    let answer = client
        .query(
            "by_customer",
            [("customer", customer)],
            Some(min_position),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let ids = answer
        .rows
        .iter()
        .map(|row| row["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    (ids, answer.position)
}

#[test]
fn two_servers_share_query_results_through_redis() {
    let runtime = runtime();
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(database) = runtime.block_on(shared_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let extra = [
        "--config",
        &config,
        "--database-url",
        &database.primary_url,
        "--redis-url",
        &redis.url(),
    ];
    let a = Server::start_with(&dir.path().join("a"), "127.0.0.1:0", &extra);
    let b = Server::start_with(&dir.path().join("b"), "127.0.0.1:0", &extra);
    let (client_a, client_b) = (Client::new(&a.url).unwrap(), Client::new(&b.url).unwrap());
    runtime.block_on(async {
        place(&client_a, "o1", "c1", 10).await;
        let p2 = place(&client_b, "o2", "c1", 20).await;
        // Both instances know the projection reached p2 before anyone asks.
        ids(&client_a, "nobody", p2).await;
        ids(&client_b, "nobody", p2).await;

        let on_a = ids(&client_a, "c1", p2).await;
        assert_eq!(on_a, (vec!["o1".to_owned(), "o2".to_owned()], p2));
        let hits = |server: &Server| {
            metric(
                server,
                "cairn_query_cache_redis_hits_total",
                r#"query="by_customer""#,
            )
        };
        let (a_before, b_before) = (hits(&a), hits(&b));
        let on_b = ids(&client_b, "c1", p2).await;
        assert_eq!(on_b, on_a);
        assert_eq!(hits(&b), b_before + 1.0, "B was served what A computed");
        assert_eq!(hits(&a), a_before);

        // The projection advances: B is not served the rows from before.
        let p3 = place(&client_a, "o3", "c1", 30).await;
        let after = ids(&client_b, "c1", p3).await;
        assert_eq!(after.0, ["o1", "o2", "o3"]);
        assert_eq!(after.1, p3);
    });
}

#[test]
fn a_server_answers_while_redis_is_dead_and_uses_it_again_when_it_returns() {
    let runtime = runtime();
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let server = Server::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--config", &config, "--redis-url", &redis.url()],
    );
    let client = Client::new(&server.url).unwrap();
    runtime.block_on(async {
        let p1 = place(&client, "o1", "c1", 10).await;
        assert_eq!(ids(&client, "c1", p1).await.0, ["o1"]);
        assert_eq!(redis.keys().unwrap(), 1);

        redis.kill();
        let mut last = p1;
        for index in 2..6 {
            last = place(&client, &format!("o{index}"), "c1", index).await;
            let (found, position) = ids(&client, "c1", last).await;
            assert_eq!((found.len(), position), (index as usize, last));
        }
        assert!(metric(&server, "cairn_query_cache_redis_errors_total", "get") >= 1.0);
        let warnings = |logs: &[String]| {
            logs.iter()
                .filter(|line| line.contains("the shared query cache (Redis) failed"))
                .count()
        };
        let logs = server.wait_for_logs(|logs| warnings(logs) > 0);
        assert_eq!(warnings(&logs), 1, "the warning is rate-limited");

        redis.resume();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut round = 0;
        while redis.keys().unwrap() == 0 {
            assert!(Instant::now() < deadline, "Redis was not used again");
            round += 1;
            ids(&client, &format!("x{round}"), last).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .logs()
        .iter()
        .any(|line| line.contains("the shared query cache answers again"))
    {
        assert!(Instant::now() < deadline, "recovery was not logged");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_redis_url_layers_like_other_settings_and_hides_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    std::fs::write(
        &file,
        "redis_url = \"redis://:fromfile@file-host:6379/1\"\n",
    )
    .unwrap();
    let print = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--print-config",
        ];
        args.extend_from_slice(extra);
        let output = cairn(&args).envs(env.iter().copied()).output().unwrap();
        let printed: serde_json::Value = serde_json::from_str(&ok(output)).unwrap();
        printed["redis_url"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(print(&[], &[]), "redis://:***@file-host:6379/1");
    assert_eq!(
        print(&[], &[("CAIRN_REDIS_URL", "redis://:fromenv@env-host")]),
        "redis://:***@env-host"
    );
    assert_eq!(
        print(
            &["--redis-url", "redis://flag-host:7000"],
            &[("CAIRN_REDIS_URL", "redis://:fromenv@env-host")]
        ),
        "redis://flag-host:7000"
    );

    let out = run(&[
        "serve",
        "--redis-url",
        "http://:s3cret@cache",
        "--print-config",
    ]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("--redis-url"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}
