//! The read side through the real binary: the shop example end to end, the
//! `projections` and `query` commands, and a graceful stop with projections running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_client::{Client, ExpectedVersion, MultiAppendRequest, ProjectionState, event};
use serde_json::{Value, json};

use crate::support::{Server, ok, run, stderr, stdout};

fn shop_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/cairn.toml")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Appends the events of `examples/shop/README.md`'s walkthrough; returns the last
/// position.
async fn shop_walkthrough(client: &Client) -> u64 {
    for (id, name) in [("c-1", "Ada"), ("c-2", "Grace")] {
        client
            .append(
                &format!("customer-{id}"),
                ExpectedVersion::NoStream,
                vec![event("CustomerRegistered", json!({"id": id, "name": name}))],
            )
            .await
            .unwrap();
    }
    for (sku, name, quantity) in [("p-1", "Kettle", 10), ("p-2", "Teapot", 3)] {
        client
            .append(
                &format!("product-{sku}"),
                ExpectedVersion::NoStream,
                vec![
                    event("ProductAdded", json!({"sku": sku, "name": name})),
                    event("StockReceived", json!({"sku": sku, "quantity": quantity})),
                ],
            )
            .await
            .unwrap();
    }
    // Each order is placed and its stock reserved in one atomic append.
    for (order, customer, total, sku, quantity) in [
        ("o-1", "c-1", json!(25.5), "p-1", 2),
        ("o-2", "c-1", json!(40), "p-2", 1),
        ("o-3", "c-2", json!(12), "p-1", 1),
    ] {
        let request: MultiAppendRequest = serde_json::from_value(json!({
            "events": [
                {"stream": format!("order-{order}"), "type": "OrderPlaced",
                 "data": {"id": order, "customer": customer, "total": total}},
                {"stream": format!("product-{sku}"), "type": "StockReserved",
                 "data": {"sku": sku, "quantity": quantity, "order": order}},
            ],
            "expected_versions": {format!("order-{order}"): "no_stream"},
        }))
        .unwrap();
        client.append_multi(&request).await.unwrap();
    }
    client
        .append(
            "order-o-1",
            ExpectedVersion::Exact(0),
            vec![event("OrderShipped", json!({"id": "o-1"}))],
        )
        .await
        .unwrap();
    let request: MultiAppendRequest = serde_json::from_value(json!({
        "events": [
            {"stream": "order-o-2", "type": "OrderCancelled", "data": {"id": "o-2"}},
            {"stream": "product-p-2", "type": "StockReleased",
             "data": {"sku": "p-2", "quantity": 1, "order": "o-2"}},
        ],
        "expected_versions": {"order-o-2": 0},
    }))
    .unwrap();
    client.append_multi(&request).await.unwrap().last_position
}

async fn rows(client: &Client, query: &str, params: &[(&str, &str)], at: u64) -> Value {
    let answer = client
        .query(
            query,
            params.iter().copied(),
            Some(at),
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|error| panic!("query {query}: {error}"));
    assert!(answer.position >= at);
    serde_json::to_value(answer.rows).unwrap()
}

#[test]
fn the_shop_example_answers_its_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(&dir.path().join("data"), &shop_config());
    assert!(
        dir.path().join("data").join("readmodels.db").exists(),
        "--data-dir wins over the file's data_dir"
    );
    let client = Client::new(&server.url).unwrap();
    runtime().block_on(async {
        let last = shop_walkthrough(&client).await;
        assert_eq!(last, 15);
        assert_eq!(
            rows(&client, "orders_by_customer", &[("customer", "c-1")], last).await,
            json!([
                {"id": "o-1", "total": 25.5, "status": "shipped"},
                {"id": "o-2", "total": 40, "status": "cancelled"},
            ])
        );
        let order = rows(&client, "order", &[("id", "o-3")], last).await;
        assert_eq!(order[0]["customer"], "c-2");
        assert_eq!(order[0]["status"], "placed");
        let open = rows(&client, "open_orders", &[], last).await;
        assert_eq!(open.as_array().unwrap().len(), 1);
        assert_eq!(open[0]["id"], "o-3");
        assert_eq!(
            rows(&client, "top_customers", &[], last).await,
            json!([
                {"id": "c-1", "name": "Ada", "order_count": 1, "spent": 25.5},
                {"id": "c-2", "name": "Grace", "order_count": 1, "spent": 12},
            ])
        );
        assert_eq!(
            rows(&client, "low_stock", &[], last).await,
            json!([{"sku": "p-2", "name": "Teapot", "on_hand": 3}])
        );
        assert_eq!(
            rows(&client, "low_stock", &[("below", "8")], last).await,
            json!([
                {"sku": "p-2", "name": "Teapot", "on_hand": 3},
                {"sku": "p-1", "name": "Kettle", "on_hand": 7},
            ])
        );

        // An order placed twice stops `orders` at that event; `customers` counts it
        // once and `inventory` never sees it.
        let again = client
            .append(
                "order-o-3",
                ExpectedVersion::Any,
                vec![event(
                    "OrderPlaced",
                    json!({"id": "o-3", "customer": "c-2", "total": 12}),
                )],
            )
            .await
            .unwrap();
        let status = wait_for(&client, "orders", |s| s.state == ProjectionState::Failed).await;
        let failure = status.last_error.unwrap();
        assert_eq!(failure.position, again.last_position);
        assert_eq!(failure.event_type.as_deref(), Some("OrderPlaced"));
        assert!(failure.message.contains("UNIQUE"), "{}", failure.message);
        assert_eq!(
            rows(&client, "top_customers", &[], again.last_position).await[1]["order_count"],
            1
        );
        let projections = client.projections().await.unwrap().projections;
        let inventory = projections.iter().find(|p| p.name == "inventory").unwrap();
        assert_eq!(inventory.state, ProjectionState::Running);
    });
}

async fn wait_for(
    client: &Client,
    name: &str,
    done: impl Fn(&cairn_client::ProjectionStatus) -> bool,
) -> cairn_client::ProjectionStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.projection(name).await.unwrap();
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "projection {name}: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const NOTES: &str = r#"
[[projections]]
name = "notes"
filter = { category = "note" }
setup = ["CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, author TEXT NOT NULL, words INTEGER)"]
teardown = ["DROP TABLE IF EXISTS notes"]
[projections.on]
NoteWritten = ["INSERT INTO notes (id, author, words) VALUES (:data.id, :data.author, :data.words)"]

[[queries]]
name = "notes_by_author"
sql = "SELECT id, words FROM notes WHERE author = :author ORDER BY id"
params = { author = "text" }
"#;

fn notes_server(dir: &Path) -> Server {
    let config = dir.join("cairn.toml");
    std::fs::write(&config, NOTES).unwrap();
    Server::start_with_config(&dir.join("data"), &config)
}

#[test]
fn projections_and_queries_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = notes_server(dir.path());
    let url = server.url.as_str();
    for (id, author, words) in [("n-1", "ada", 3), ("n-2", "ada", 5), ("n-3", "bob", 1)] {
        ok(run(&[
            "append",
            &format!("note-{id}"),
            "--type",
            "NoteWritten",
            "--data",
            &json!({"id": id, "author": author, "words": words}).to_string(),
            "--url",
            url,
        ]));
    }

    // Piped: one JSON object, rows and position, read-your-writes with --min-position.
    let text = ok(run(&[
        "query",
        "notes_by_author",
        "author=ada",
        "--min-position",
        "3",
        "--wait",
        "10s",
        "--url",
        url,
    ]));
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer,
        json!({"rows": [{"id": "n-1", "words": 3}, {"id": "n-2", "words": 5}], "position": 3})
    );
    // As a table when asked (the default on a terminal).
    let table = ok(run(&[
        "query",
        "notes_by_author",
        "author=bob",
        "--format",
        "text",
        "--url",
        url,
    ]));
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        [
            "id   words",
            "---  -----",
            "n-3      1",
            "(1 row, position 3)"
        ]
    );
    // A position not reached: the API error, named, and a failure exit.
    let output = run(&[
        "query",
        "notes_by_author",
        "author=bob",
        "--min-position",
        "99",
        "--url",
        url,
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("consistency_timeout") && message.contains("\"min_position\":99"),
        "{message}"
    );
    let output = run(&["query", "notes_by_author", "writer=bob", "--url", url]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("\"parameter\":\"writer\""),
        "{}",
        stderr(&output)
    );
    let output = run(&["query", "notes_by_author", "bob", "--url", url]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&output).contains("NAME=VALUE"),
        "{}",
        stderr(&output)
    );
    let output = run(&["query", "notes_by_author", "--wait", "1s", "--url", url]);
    assert_eq!(output.status.code(), Some(2), "--wait needs --min-position");

    // Projections: JSON Lines when piped, a table or key-value lines as text.
    let listed = ok(run(&["projections", "list", "--url", url]));
    let lines: Vec<Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["name"], "notes");
    assert_eq!(lines[0]["state"], "running");
    let table = ok(run(&[
        "projections",
        "list",
        "--format",
        "text",
        "--url",
        url,
    ]));
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("notes "),
        "{table}"
    );
    let status = ok(run(&[
        "projections",
        "status",
        "notes",
        "--format",
        "text",
        "--url",
        url,
    ]));
    assert!(status.contains("state             running"), "{status}");
    let restarted: Value =
        serde_json::from_str(&ok(run(&["projections", "restart", "notes", "--url", url]))).unwrap();
    assert_eq!(restarted["name"], "notes");
    let rebuilt: Value = serde_json::from_str(&ok(run(&[
        "projections",
        "rebuild",
        "notes",
        "--wait",
        "--url",
        url,
    ])))
    .unwrap();
    assert_eq!(rebuilt["state"], "running", "{rebuilt}");
    assert_eq!(rebuilt["position"], 3, "{rebuilt}");
    let output = run(&["projections", "status", "nope", "--url", url]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("not_found"), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
}

#[test]
fn sigterm_stops_the_projections_with_their_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = notes_server(dir.path());
    let client = Client::new(&server.url).unwrap();
    let runtime = runtime();
    let last = runtime.block_on(async {
        let mut last = 0;
        for index in 0..5 {
            last = client
                .append(
                    &format!("note-{index}"),
                    ExpectedVersion::Any,
                    vec![event(
                        "NoteWritten",
                        json!({"id": format!("n-{index}"), "author": "ada", "words": index}),
                    )],
                )
                .await
                .unwrap()
                .last_position;
        }
        // Events the projection's filter leaves out still move its position.
        last = client
            .append(
                "other-1",
                ExpectedVersion::Any,
                vec![event("Unrelated", json!({}))],
            )
            .await
            .unwrap()
            .last_position
            .max(last);
        wait_for(&client, "notes", |s| s.position == last).await;
        last
    });
    server.signal("TERM");
    assert!(server.wait_for_exit(Duration::from_secs(20)).success());
    let logs = server.logs().join("\n");
    assert!(logs.contains("read side stopped"), "{logs}");

    let server = notes_server(dir.path());
    let client = Client::new(&server.url).unwrap();
    runtime.block_on(async {
        let status = client.projection("notes").await.unwrap();
        assert_eq!(
            status.position, last,
            "the checkpoint was saved on the way out"
        );
        let answer = client
            .query(
                "notes_by_author",
                [("author", "ada")],
                Some(last),
                Duration::ZERO,
            )
            .await
            .unwrap();
        assert_eq!(answer.rows.len(), 5);
    });
}
