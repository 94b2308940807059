//! Plans and plan warnings over HTTP: `/v1/queries`, `/v1/queries/{name}/status`,
//! `/v1/queries/{name}/plan` and `plan_warnings` in projections' status.

use std::sync::Arc;
use std::time::Duration;

use cairn_server::auth::{Auth, Scope, Tokens};
use http::StatusCode;
use serde_json::{Value, json};

use crate::Server;

const CONFIG: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = [
  "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, total NUMERIC, status TEXT NOT NULL, tracking TEXT)",
  "CREATE INDEX IF NOT EXISTS orders_by_status ON orders (status)",
]
teardown = ["DROP TABLE IF EXISTS orders"]
[projections.on]
OrderPlaced = ["INSERT INTO orders (id, customer, total, status) VALUES (:data.id, :data.customer, :data.total, 'placed')"]
OrderTracked = ["UPDATE orders SET status = 'sent' WHERE tracking = :data.tracking"]

[[queries]]
name = "orders_by_customer"
sql = "SELECT id, total, status FROM orders WHERE customer = :customer ORDER BY id LIMIT :limit"
params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }

[[queries]]
name = "orders_by_status"
sql = "SELECT id FROM orders WHERE status = :status"
params = { status = "text" }
"#;

async fn server() -> Server {
    Server::with_read_side(CONFIG, Duration::from_secs(30)).await
}

async fn place(server: &Server, id: &str, customer: &str) -> u64 {
    let reply = server
        .append(
            &format!("order-{id}"),
            json!([{"type": "OrderPlaced", "data": {"id": id, "customer": customer, "total": 1}}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["last_position"].as_u64().unwrap()
}

fn suggestion_of(warnings: &Value) -> Vec<String> {
    warnings
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["suggestion"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn projection_status_lists_its_statements_plan_warnings() {
    let server = server().await;
    let status = server.get("/v1/projections/orders").await.json();
    let warnings = status["plan_warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{status}");
    let warning = &warnings[0];
    assert_eq!(warning["kind"], "full_scan");
    assert_eq!(warning["table"], "orders");
    assert_eq!(warning["columns"], json!(["tracking"]));
    assert_eq!(
        warning["suggestion"],
        "CREATE INDEX IF NOT EXISTS orders_by_tracking ON orders (tracking)"
    );
    assert!(
        warning["subject"]
            .as_str()
            .unwrap()
            .contains("OrderTracked"),
        "{warning}"
    );
    assert!(warning["message"].as_str().unwrap().contains("SCAN orders"));
    let list = server.get("/v1/projections").await.json();
    assert_eq!(
        list["projections"][0]["plan_warnings"],
        status["plan_warnings"]
    );
    let typed: cairn_api::ProjectionStatus = serde_json::from_value(status).unwrap();
    assert_eq!(typed.plan_warnings.len(), 1);
}

#[tokio::test]
async fn queries_are_listed_with_their_warnings_and_counters() {
    let server = server().await;
    let last = place(&server, "o-1", "c-1").await;
    place(&server, "o-2", "c-1").await;
    for _ in 0..2 {
        let reply = server
            .get(&format!(
                "/v1/queries/orders_by_customer?customer=c-1&min_position={last}&wait_ms=10000"
            ))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    server
        .get("/v1/queries/orders_by_customer?limit=x")
        .await
        .assert_error(400, "invalid_request");

    let reply = server.get("/v1/queries").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let list = reply.json();
    let names: Vec<&str> = list["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders_by_customer", "orders_by_status"]);
    let typed: cairn_api::QueryList = serde_json::from_value(list.clone()).unwrap();
    assert_eq!(typed.queries.len(), 2);

    let status = server
        .get("/v1/queries/orders_by_customer/status")
        .await
        .json();
    assert_eq!(status, list["queries"][0]);
    assert_eq!(status["params"], json!(["customer", "limit"]));
    assert_eq!(status["calls"], 3, "{status}");
    assert_eq!(status["errors"], 1, "{status}");
    assert_eq!(
        status["cache_hits"].as_u64().unwrap() + status["cache_misses"].as_u64().unwrap(),
        2,
        "{status}"
    );
    assert!(status["cache_hit_ratio"].is_number(), "{status}");
    assert!(status["plan_error"].is_null());
    assert!(status["slow"].is_u64());
    assert_eq!(
        suggestion_of(&status["plan_warnings"]),
        ["CREATE INDEX IF NOT EXISTS orders_by_customer_id ON orders (customer, id)"]
    );

    let indexed = server
        .get("/v1/queries/orders_by_status/status")
        .await
        .json();
    assert_eq!(indexed["plan_warnings"], json!([]));
    assert_eq!(indexed["calls"], 0);
    assert!(indexed["cache_hit_ratio"].is_null(), "{indexed}");
}

#[tokio::test]
async fn a_plan_is_rows_text_and_warnings_and_with_analyze_a_run() {
    let server = server().await;
    let last = place(&server, "o-1", "c-1").await;
    server
        .get(&format!(
            "/v1/queries/orders_by_customer?customer=c-1&min_position={last}&wait_ms=10000"
        ))
        .await;

    // A required parameter may be left out without analyze.
    let reply = server.get("/v1/queries/orders_by_customer/plan").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let plan = reply.json();
    assert_eq!(plan["query"], "orders_by_customer");
    assert!(plan["sql"].as_str().unwrap().contains("?1"), "{plan}");
    let rows = plan["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows[0]["id"].is_i64() && rows[0]["parent"].is_i64());
    assert!(
        rows.iter()
            .any(|r| r["detail"].as_str().unwrap().contains("SCAN orders"))
    );
    assert!(plan["text"].as_str().unwrap().starts_with("QUERY PLAN"));
    assert!(plan["analysis"].is_null());
    assert_eq!(
        suggestion_of(&plan["warnings"]),
        ["CREATE INDEX IF NOT EXISTS orders_by_customer_id ON orders (customer, id)"]
    );

    let plan = server
        .get("/v1/queries/orders_by_customer/plan?customer=c-1&analyze=true")
        .await
        .json();
    assert_eq!(plan["analysis"]["rows_returned"], 1, "{plan}");
    assert!(plan["analysis"]["duration_ms"].is_number());
    let typed: cairn_api::QueryPlan = serde_json::from_value(plan).unwrap();
    assert_eq!(typed.analysis.unwrap().rows_returned, 1);

    let plan = server
        .get("/v1/queries/orders_by_status/plan?status=placed&analyze=false")
        .await
        .json();
    assert_eq!(plan["warnings"], json!([]));
    assert!(plan["text"].as_str().unwrap().contains("orders_by_status"));
    assert!(plan["analysis"].is_null());

    // Plans are not counted as calls.
    let status = server
        .get("/v1/queries/orders_by_customer/status")
        .await
        .json();
    assert_eq!(status["calls"], 1, "{status}");
}

#[tokio::test]
async fn plan_and_status_errors_are_the_query_s() {
    let server = server().await;
    for uri in [
        "/v1/queries/nope/plan",
        "/v1/queries/nope/status",
        "/v1/queries/nope/plan?analyze=true",
    ] {
        let error = server.get(uri).await.assert_error(404, "not_found");
        assert_eq!(error["query"], "nope", "{uri}");
    }
    for (query, parameter) in [
        ("analyze=true", "customer"),
        ("customer=c&colour=red", "colour"),
        ("customer=c&limit=ten", "limit"),
        ("customer=c&limit=501", "limit"),
        ("customer=c&customer=d", "customer"),
        ("customer=c&analyze=maybe", "analyze"),
        ("customer=c&analyze=true&analyze=true", "analyze"),
    ] {
        let error = server
            .get(&format!("/v1/queries/orders_by_customer/plan?{query}"))
            .await
            .assert_error(400, "invalid_request");
        assert_eq!(error["parameter"], parameter, "{query}: {error}");
    }
    server
        .post("/v1/queries/orders_by_customer/plan", "")
        .await
        .assert_error(405, "method_not_allowed");
    server
        .post("/v1/queries", "")
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn without_a_read_side_there_are_no_queries_to_list_or_plan() {
    let server = Server::start().await;
    assert_eq!(
        server.get("/v1/queries").await.json(),
        json!({"queries": []})
    );
    for uri in ["/v1/queries/q/plan", "/v1/queries/q/status"] {
        let error = server.get(uri).await.assert_error(404, "not_found");
        assert_eq!(error["query"], "q");
    }
}

#[tokio::test]
async fn a_plan_needs_admin_and_a_status_needs_read() {
    let reader = "reader-secret";
    let admin = "admin-secret";
    let token = |name: &str, secret: &str, scope: Scope| cairn_server::auth::ApiToken {
        name: name.into(),
        scopes: vec![scope],
        streams: vec![],
        sha256: cairn_server::auth::hash_secret(secret),
    };
    let tokens = Tokens::new(vec![
        token("reader", reader, Scope::Read),
        token("admin", admin, Scope::Admin),
    ])
    .unwrap();
    let mut server = server().await;
    server.state = server
        .state
        .clone()
        .with_auth(Arc::new(Auth::new(tokens, false)));
    server.app = cairn_server::app(server.state.clone());
    let call = |uri: &'static str, secret: &'static str| {
        let request = http::Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {secret}"))
            .body(axum::body::Body::empty())
            .unwrap();
        server.send(request)
    };
    let plan = "/v1/queries/orders_by_status/plan?status=x";
    call(plan, reader).await.assert_error(403, "forbidden");
    assert_eq!(call(plan, admin).await.status, StatusCode::OK);
    for uri in ["/v1/queries", "/v1/queries/orders_by_status/status"] {
        assert_eq!(call(uri, reader).await.status, StatusCode::OK, "{uri}");
    }
}
