//! The read side over HTTP: `/v1/projections…` and `/v1/queries/{name}`, with a real
//! store and a real read side (`readmodels.db`) in a temporary directory.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};

use crate::{Server, metric_value};

const CONFIG: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, total NUMERIC, status TEXT NOT NULL)"]
teardown = ["DROP TABLE IF EXISTS orders"]
[projections.on]
OrderPlaced = ["INSERT INTO orders (id, customer, total, status) VALUES (:data.id, :data.customer, :data.total, 'placed')"]
OrderShipped = ["UPDATE orders SET status = 'shipped' WHERE id = :data.id"]

[[projections]]
name = "strict"
filter = { category = "strict" }
setup = ["CREATE TABLE IF NOT EXISTS strict_items (id TEXT PRIMARY KEY)"]
teardown = ["DROP TABLE IF EXISTS strict_items"]
[projections.on]
ItemAdded = ["INSERT INTO strict_items (id) VALUES (:data.id)"]

[[queries]]
name = "orders_by_customer"
sql = "SELECT id, total, status FROM orders WHERE customer = :customer ORDER BY id LIMIT :limit"
params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }

[[queries]]
name = "strict_count"
sql = "SELECT count(*) AS n FROM strict_items"
"#;

const PATIENCE: Duration = Duration::from_secs(20);

async fn server() -> Server {
    Server::with_read_side(CONFIG, Duration::from_secs(30)).await
}

/// Places `id` for `customer`; returns the append's last position.
async fn place(server: &Server, id: &str, customer: &str, total: f64) -> u64 {
    let reply = server
        .append(
            &format!("order-{id}"),
            json!([{"type": "OrderPlaced", "data": {"id": id, "customer": customer, "total": total}}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["last_position"].as_u64().unwrap()
}

/// Polls `GET /v1/projections/{name}` until `done` holds.
async fn projection_until(server: &Server, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = server.get(&format!("/v1/projections/{name}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let status = reply.json();
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "projection {name} stuck: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn without_a_read_side_there_are_no_projections_and_no_queries() {
    let server = Server::start().await;
    let reply = server.get("/v1/projections").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"projections": []}));
    let error = server
        .get("/v1/projections/orders")
        .await
        .assert_error(404, "not_found");
    assert_eq!(error["projection"], "orders");
    for action in ["restart", "rebuild"] {
        let error = server
            .post(&format!("/v1/projections/orders/{action}"), "")
            .await
            .assert_error(404, "not_found");
        assert_eq!(error["projection"], "orders");
    }
    let error = server
        .get("/v1/queries/orders_by_customer?customer=c")
        .await
        .assert_error(404, "not_found");
    assert_eq!(error["query"], "orders_by_customer");
}

#[tokio::test]
async fn unknown_projections_and_queries_are_not_found_by_name() {
    let server = server().await;
    let error = server
        .get("/v1/projections/nope")
        .await
        .assert_error(404, "not_found");
    assert_eq!(error["projection"], "nope");
    assert!(error["message"].as_str().unwrap().contains("nope"));
    let error = server
        .post("/v1/projections/nope/rebuild", "")
        .await
        .assert_error(404, "not_found");
    assert_eq!(error["projection"], "nope");
    let error = server
        .get("/v1/queries/nope%20at%20all")
        .await
        .assert_error(404, "not_found");
    assert_eq!(error["query"], "nope at all");
    server
        .call("DELETE", "/v1/projections/orders", &[], "")
        .await
        .assert_error(405, "method_not_allowed");
    server
        .get("/v1/projections/orders/restart")
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn a_query_answers_the_rows_and_the_position_they_reflect() {
    let server = server().await;
    place(&server, "o-1", "c 42", 12.5).await;
    place(&server, "o-2", "c 42", 10.0).await;
    place(&server, "o-3", "c-7", 1.0).await;
    let shipped = server
        .append(
            "order-o-1",
            json!([{"type": "OrderShipped", "data": {"id": "o-1"}}]),
        )
        .await;
    let last = shipped.json()["last_position"].as_u64().unwrap();

    let reply = server
        .get(&format!(
            "/v1/queries/orders_by_customer?customer=c%2042&min_position={last}&wait_ms=10000"
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(
        body["rows"],
        json!([
            {"id": "o-1", "total": 12.5, "status": "shipped"},
            {"id": "o-2", "total": 10, "status": "placed"},
        ])
    );
    assert!(body["position"].as_u64().unwrap() >= last, "{body}");
    let response: cairn_api::QueryResponse = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(response.rows.len(), 2);

    // A parameter with a default may be given; no match is an empty list.
    let body = server
        .get("/v1/queries/orders_by_customer?customer=c%2042&limit=1")
        .await
        .json();
    assert_eq!(body["rows"].as_array().unwrap().len(), 1);
    let body = server
        .get("/v1/queries/orders_by_customer?customer=nobody")
        .await
        .json();
    assert_eq!(body["rows"], json!([]));
    // min_position already reached without a wait: answered at once.
    let reply = server
        .get("/v1/queries/orders_by_customer?customer=c-7&min_position=1")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn bad_query_parameters_are_refused_naming_the_parameter() {
    let server = server().await;
    for (query, parameter) in [
        ("", "customer"),
        ("customer=c&colour=red", "colour"),
        ("customer=c&limit=ten", "limit"),
        ("customer=c&limit=501", "limit"),
        ("customer=c&customer=d", "customer"),
        ("customer=c&min_position=soon", "min_position"),
        ("customer=c&min_position=-3", "min_position"),
        ("customer=c&min_position=1&wait_ms=60001", "wait_ms"),
        ("customer=c&wait_ms=1.5", "wait_ms"),
    ] {
        let reply = server
            .get(&format!("/v1/queries/orders_by_customer?{query}"))
            .await;
        let error = reply.assert_error(400, "invalid_request");
        assert_eq!(error["parameter"], parameter, "{query}: {error}");
    }
    // A query without parameters refuses any.
    let error = server
        .get("/v1/queries/strict_count?x=1")
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(error["parameter"], "x");
    assert!(
        error["message"].as_str().unwrap().contains("takes none"),
        "{error}"
    );
}

#[tokio::test]
async fn a_position_not_reached_is_a_504_at_once_or_after_the_wait() {
    let server = server().await;
    let last = place(&server, "o-1", "c", 1.0).await;
    projection_until(&server, "orders", |s| s["position"] == last).await;

    let started = Instant::now();
    let beyond = last + 5;
    let error = server
        .get(&format!(
            "/v1/queries/orders_by_customer?customer=c&min_position={beyond}"
        ))
        .await
        .assert_error(504, "consistency_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error["min_position"], beyond);
    assert_eq!(error["position"], last);

    let started = Instant::now();
    let error = server
        .get(&format!(
            "/v1/queries/orders_by_customer?customer=c&min_position={beyond}&wait_ms=300"
        ))
        .await
        .assert_error(504, "consistency_timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(error["position"], last);
}

#[tokio::test]
async fn min_position_waits_for_the_write_to_be_projected() {
    let server = server().await;
    let head = server.head().await;
    let query = format!(
        "/v1/queries/orders_by_customer?customer=late&min_position={}&wait_ms=20000",
        head + 1
    );
    let waiting = {
        let app = server.state.clone();
        let request = http::Request::get(query.as_str())
            .body(axum::body::Body::empty())
            .unwrap();
        tokio::spawn(async move {
            use tower::ServiceExt;
            cairn_server::app(app).oneshot(request).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the query waits for the position");
    place(&server, "o-late", "late", 3.0).await;
    let response = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the query answers once the order is projected")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body["rows"],
        json!([{"id": "o-late", "total": 3, "status": "placed"}])
    );
}

#[tokio::test]
async fn the_request_time_limit_never_cuts_a_query_wait_short() {
    let server = Server::with_read_side(CONFIG, Duration::from_millis(200)).await;
    let head = server.head().await;
    let started = Instant::now();
    let error = server
        .get(&format!(
            "/v1/queries/orders_by_customer?customer=c&min_position={}&wait_ms=700",
            head + 1
        ))
        .await
        .assert_error(504, "consistency_timeout");
    assert!(started.elapsed() >= Duration::from_millis(700), "{error}");

    // A write landing after the time limit but within the wait is seen.
    let appender = {
        let state = server.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let request = cairn_store::AppendRequest::single(
                cairn_core::StreamName::parse("order-slow").unwrap(),
                cairn_core::ExpectedVersion::Any,
                vec![cairn_core::NewEvent {
                    id: uuid::Uuid::now_v7(),
                    event_type: "OrderPlaced".into(),
                    data: r#"{"id":"slow","customer":"c","total":2}"#.into(),
                    metadata: "{}".into(),
                    tags: Vec::new(),
                }],
            );
            state.store.append(request).await.unwrap();
        })
    };
    let reply = server
        .get(&format!(
            "/v1/queries/orders_by_customer?customer=c&min_position={}&wait_ms=10000",
            head + 1
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["rows"][0]["id"], "slow");
    appender.await.unwrap();
}

#[tokio::test]
async fn projections_report_state_position_and_lag() {
    let server = server().await;
    let last = place(&server, "o-1", "c", 1.0).await;
    let status = projection_until(&server, "orders", |s| s["position"] == last).await;
    assert_eq!(status["name"], "orders");
    assert_eq!(status["state"], "running");
    assert_eq!(status["head_position"], last);
    assert_eq!(status["lag"], 0);
    assert!(status["events_per_second"].is_number());
    assert_eq!(status["last_error"], Value::Null);
    assert_eq!(status["definition_changed"], false);
    assert_eq!(status["message"], Value::Null);
    assert_eq!(status["rebuild_progress"], Value::Null);
    let _: cairn_api::ProjectionStatus = serde_json::from_value(status).unwrap();

    // Events another projection ignores still move it: it reflects the head too.
    projection_until(&server, "strict", |s| s["position"] == last).await;

    let list = server.get("/v1/projections").await.json();
    let names: Vec<&str> = list["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "strict"], "configuration order");
    let _: cairn_api::ProjectionList = serde_json::from_value(list).unwrap();
}

#[tokio::test]
async fn a_failing_projection_names_the_event_and_restart_retries_it() {
    let server = server().await;
    server
        .append(
            "strict-1",
            json!([{"type": "ItemAdded", "data": {"id": "a"}}]),
        )
        .await;
    let duplicate = server
        .append(
            "strict-2",
            json!([{"type": "ItemAdded", "data": {"id": "a"}}]),
        )
        .await
        .json()["last_position"]
        .as_u64()
        .unwrap();
    let after = place(&server, "o-1", "c", 1.0).await;

    let status = projection_until(&server, "strict", |s| s["state"] == "failed").await;
    assert_eq!(status["position"], duplicate - 1, "{status}");
    assert_eq!(status["lag"], after - (duplicate - 1));
    let error = &status["last_error"];
    assert_eq!(error["position"], duplicate, "{status}");
    assert_eq!(error["type"], "ItemAdded");
    assert!(
        error["message"].as_str().unwrap().contains("UNIQUE"),
        "{status}"
    );
    // The other projection goes on.
    projection_until(&server, "orders", |s| s["position"] == after).await;
    let metrics = server.get("/metrics").await.text();
    assert_eq!(
        metric_value(&metrics, r#"cairn_projection_failed{projection="strict"}"#),
        1.0
    );

    // Restart retries the failing event, which fails again: the answer is the status
    // as it restarts, then it is failed at the same event.
    let reply = server.post("/v1/projections/strict/restart", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let restarted = reply.json();
    assert_eq!(restarted["name"], "strict");
    assert_eq!(restarted["position"], duplicate - 1);
    let status = projection_until(&server, "strict", |s| s["state"] == "failed").await;
    assert_eq!(status["last_error"]["position"], duplicate);

    // The count query reflects the failed projection's position, not the head.
    let error = server
        .get(&format!("/v1/queries/strict_count?min_position={after}"))
        .await
        .assert_error(504, "consistency_timeout");
    assert_eq!(error["position"], duplicate - 1);
    let body = server.get("/v1/queries/strict_count").await.json();
    assert_eq!(body, json!({"rows": [{"n": 1}], "position": duplicate - 1}));
}

#[tokio::test]
async fn rebuild_replays_the_whole_log_into_the_same_rows() {
    let server = server().await;
    for index in 0..20 {
        place(&server, &format!("o-{index:02}"), "c", f64::from(index)).await;
    }
    let head = server.head().await;
    let query =
        format!("/v1/queries/orders_by_customer?customer=c&min_position={head}&wait_ms=20000");
    let before = server.get(&query).await.json();
    assert_eq!(before["rows"].as_array().unwrap().len(), 20);

    let reply = server.post("/v1/projections/orders/rebuild", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let status = reply.json();
    assert_eq!(status["name"], "orders");
    assert!(
        ["rebuilding", "running"].contains(&status["state"].as_str().unwrap()),
        "{status}"
    );
    if status["state"] == "rebuilding" {
        let progress = status["rebuild_progress"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&progress), "{status}");
    }
    projection_until(&server, "orders", |s| {
        s["state"] == "running" && s["position"] == head
    })
    .await;
    let after = server.get(&query).await.json();
    assert_eq!(after["rows"], before["rows"]);
    assert_eq!(after["position"], head);
}

#[tokio::test]
async fn read_side_metrics_are_histograms_and_gauges() {
    let server = server().await;
    let last = place(&server, "o-1", "c", 1.0).await;
    server
        .get(&format!(
            "/v1/queries/orders_by_customer?customer=c&min_position={last}&wait_ms=10000"
        ))
        .await;
    server
        .get("/v1/queries/orders_by_customer?customer=c")
        .await;
    let text = server.get("/metrics").await.text();
    for series in [
        r#"cairn_query_duration_seconds_bucket{query="orders_by_customer",le="0.001"}"#,
        r#"cairn_projection_apply_duration_seconds_bucket{projection="orders",le="0.01"}"#,
        r#"cairn_projection_lag{projection="orders"}"#,
        r#"cairn_projection_position{projection="orders"}"#,
        r#"cairn_query_cache_hits_total{query="orders_by_customer"}"#,
        r#"cairn_query_cache_misses_total{query="orders_by_customer"}"#,
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    assert!(
        !text.contains("cairn_query_duration_seconds{"),
        "a histogram, not a summary"
    );
    assert!(
        text.contains(
            r#"cairn_http_requests_total{method="GET",route="/v1/queries/{name}",status="200"}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_query_parameters() {
    let server = server().await;
    let document = server.get("/openapi.json").await.json();
    let operation = &document["paths"]["/v1/queries/{name}"]["get"];
    let parameters = operation["parameters"].as_array().unwrap();
    let find = |name: &str| {
        parameters
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {operation}"))
    };
    assert_eq!(find("wait_ms")["schema"]["maximum"], 60_000);
    assert_eq!(find("min_position")["in"], "query");
    assert_eq!(find("params")["style"], "form");
    for status in ["200", "400", "404", "504"] {
        assert!(
            operation["responses"].get(status).is_some(),
            "{status}: {operation}"
        );
    }
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["ProjectionState"]["enum"],
        json!(["running", "failed", "rebuilding", "stopped"])
    );
    assert!(
        schemas["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("consistency_timeout"))
    );
}
