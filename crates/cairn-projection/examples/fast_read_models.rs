//! The worked example of `docs/fast-read-models.md`: PRODUCT.md's `orders_by_customer`
//! query over N orders (default 200,000) of 2,000 customers, first as configured (a
//! full scan), then with the index its plan warning suggests added to `setup` and the
//! projection rebuilt. Prints the warning (as the JSON log line Cairn writes at
//! start), both plans, and the query latencies, with the cache off so every call runs
//! the SQL.
//! `cargo run --release -p cairn-projection --example fast_read_models -- 200000`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{ExpectedVersion, NewEvent, StreamName};
use cairn_projection::{ProjectionConfig, QueryConfig, ReadSide, ReadSideOptions};
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use cairn_store::{AppendRequest, SharedStore};
use serde::Deserialize;
use uuid::Uuid;

const CUSTOMERS: usize = 2000;
const CALLS: usize = 2000;

const CONFIG: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC, status TEXT)"]
teardown = ["DROP TABLE IF EXISTS orders"]
[projections.on]
OrderPlaced  = ["INSERT INTO orders VALUES (:data.id, :data.customer, :data.total, 'placed')"]
OrderShipped = ["UPDATE orders SET status = 'shipped' WHERE id = :data.id"]

[[queries]]
name = "orders_by_customer"
sql = "SELECT id, total, status FROM orders WHERE customer = :customer ORDER BY id LIMIT :limit"
params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }
"#;

#[derive(Deserialize)]
struct Settings {
    projections: Vec<ProjectionConfig>,
    queries: Vec<QueryConfig>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("cairn::plans=warn,cairn::slow_query=warn")
        .init();
    let orders: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store: SharedStore =
        Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).expect("open store"));
    append_orders(&store, orders).await;

    println!("== as configured ({orders} orders, {CUSTOMERS} customers)");
    let read_side = start(&store, dir.path(), CONFIG).await;
    let status = read_side.query_status("orders_by_customer").unwrap();
    let suggestion = status.plan_warnings[0]
        .suggestion
        .clone()
        .expect("an index is suggested");
    println!("warning: {}", status.plan_warnings[0]);
    let before = measure(&read_side).await;
    read_side.shutdown().await;

    println!("\n== with `{suggestion}` in setup, after a rebuild");
    let indexed = CONFIG.replace(
        "status TEXT)\"]",
        &format!("status TEXT)\", \"{suggestion}\"]"),
    );
    let read_side = start(&store, dir.path(), &indexed).await;
    let started = Instant::now();
    read_side.rebuild("orders").await.expect("rebuild");
    settle(&store, &read_side).await;
    println!(
        "rebuilt in {:.1} s; plan warnings now: {}",
        started.elapsed().as_secs_f64(),
        read_side
            .query_status("orders_by_customer")
            .unwrap()
            .plan_warnings
            .len()
    );
    let after = measure(&read_side).await;
    read_side.shutdown().await;
    println!(
        "\nmean {:.1} µs → {:.1} µs ({:.0}× faster)",
        before.as_secs_f64() * 1e6,
        after.as_secs_f64() * 1e6,
        before.as_secs_f64() / after.as_secs_f64()
    );
}

async fn append_orders(store: &SharedStore, orders: usize) {
    let started = Instant::now();
    for chunk in 0..orders.div_ceil(1000) {
        let batch: Vec<NewEvent> = (chunk * 1000..((chunk + 1) * 1000).min(orders))
            .map(|i| NewEvent {
                id: Uuid::now_v7(),
                event_type: "OrderPlaced".into(),
                data: format!(
                    r#"{{"id":"o{i:07}","customer":"c{}","total":{}}}"#,
                    i % CUSTOMERS,
                    i % 100
                ),
                metadata: "{}".into(),
                tags: Vec::new(),
            })
            .collect();
        let stream = StreamName::parse(&format!("order-{chunk}")).unwrap();
        store
            .append(AppendRequest::single(stream, ExpectedVersion::Any, batch))
            .await
            .expect("append");
    }
    println!(
        "appended {orders} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn start(store: &SharedStore, dir: &std::path::Path, config: &str) -> Arc<ReadSide> {
    let settings: Settings = toml::from_str(config).expect("settings");
    let mut options = ReadSideOptions::new(dir);
    options.cache_bytes = 0;
    let read_side = ReadSide::start(
        store.clone(),
        options,
        settings.projections,
        settings.queries,
    )
    .await
    .expect("start");
    settle(store, &read_side).await;
    read_side
}

async fn settle(store: &SharedStore, read_side: &ReadSide) {
    let head = store.head_position().await.expect("head");
    read_side
        .wait_for_projection("orders", head, Duration::from_secs(600))
        .await
        .expect("the projection catches up");
}

/// Prints the plan (run once with `analyze`) and the latency of `CALLS` queries;
/// answers the mean.
async fn measure(read_side: &ReadSide) -> Duration {
    let params = |customer: usize| {
        HashMap::from([("customer".to_owned(), format!("c{}", customer % CUSTOMERS))])
    };
    let plan = read_side
        .plan("orders_by_customer", &params(42), true)
        .await
        .expect("plan");
    println!("{plan}");
    let mut latencies = Vec::with_capacity(CALLS);
    for call in 0..CALLS {
        let started = Instant::now();
        let result = read_side
            .query(
                "orders_by_customer",
                &params(call * 7919),
                None,
                Duration::ZERO,
            )
            .await
            .expect("query");
        latencies.push(started.elapsed());
        assert!(!result.rows.is_empty());
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / CALLS as u32;
    let at = |q: f64| latencies[((CALLS as f64 * q) as usize).min(CALLS - 1)];
    println!(
        "{CALLS} queries: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs",
        mean.as_secs_f64() * 1e6,
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
    mean
}
