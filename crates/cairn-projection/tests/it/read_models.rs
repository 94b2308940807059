//! Given these events, expect these rows.

use crate::postgres::check_both;
use crate::{Ev, check};

/// PRODUCT.md §3, verbatim.
pub const ORDERS: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }                 # or types = [...], tags = [...]
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC, status TEXT)"]
teardown = ["DROP TABLE IF EXISTS orders"]       # used by rebuild
[projections.on]
OrderPlaced  = ["INSERT INTO orders VALUES (:data.id, :data.customer, :data.total, 'placed')"]
OrderShipped = ["UPDATE orders SET status = 'shipped' WHERE id = :data.id"]

[[queries]]
name = "orders_by_customer"
sql = "SELECT id, total, status FROM orders WHERE customer = :customer ORDER BY id LIMIT :limit"
params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }
cache_ttl = "5s"   # optional; results are also invalidated when their projections advance
"#;

#[tokio::test]
async fn the_orders_example() {
    check_both(
        "orders_example",
        ORDERS,
        &[
            Ev(
                "order-1",
                "OrderPlaced",
                r#"{"id": "o1", "customer": "c1", "total": 30}"#,
            ),
            Ev(
                "order-2",
                "OrderPlaced",
                r#"{"id": "o2", "customer": "c2", "total": 12.5}"#,
            ),
            Ev("customer-c1", "CustomerRenamed", r#"{"id": "c1"}"#),
            Ev(
                "order-3",
                "OrderPlaced",
                r#"{"id": "o3", "customer": "c1", "total": 7}"#,
            ),
            Ev("order-1", "OrderShipped", r#"{"id": "o1"}"#),
            Ev(
                "order-1",
                "OrderNoted",
                r#"{"id": "o1", "note": "no statement for this type"}"#,
            ),
        ],
        &[
            ("orders_by_customer", &[("customer", "c1")]),
            ("orders_by_customer", &[("customer", "c1"), ("limit", "1")]),
            ("orders_by_customer", &[("customer", "c2")]),
            ("orders_by_customer", &[("customer", "nobody")]),
        ],
    )
    .await;
}

#[tokio::test]
async fn every_placeholder_binds_its_event_field() {
    let config = r#"
[[projections]]
name = "fields"
setup = ["CREATE TABLE fields (stream, version, position, type, id, recorded_at, whole, text, int, real, flag, off, nul, missing, object, array, nested, indexed, meta_whole, meta_x)"]
[projections.on]
Everything = ["""INSERT INTO fields VALUES (:stream, :version, :position, :type, :id, :recorded_at, :data,
  :data.text, :data.int, :data.real, :data.flag, :data.off, :data.nothing, :data.missing, :data.object,
  :data.array, :data.object.inner.deep, :data.array.1.sku, :meta, :meta.x)"""]
Scalar = ["INSERT INTO fields (stream, whole, text) VALUES (:stream, :data, :data.text)"]

[[queries]]
name = "fields"
sql = """SELECT stream, version, position, type, length(id) AS id_length,
  recorded_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z' AS recorded_at_is_rfc3339,
  whole, text, typeof(text) AS text_type, int, typeof(int) AS int_type, real, typeof(real) AS real_type,
  flag, off, typeof(flag) AS flag_type, nul, missing, object, array, nested, indexed, meta_whole, meta_x
  FROM fields ORDER BY rowid"""
"#;
    let harness = crate::Harness::start(config).await;
    harness
        .append_meta(
            "thing-1",
            "Everything",
            r#"{"text": "héllo", "int": 42, "real": 2.5, "flag": true, "off": false, "nothing": null,
                "object": {"inner": {"deep": "d"}}, "array": [{"sku": "a"}, {"sku": "b"}]}"#,
            r#"{"x": 7, "$correlation_id": "c"}"#,
        )
        .await;
    harness
        .append_meta("thing-2", "Scalar", r#""just a string""#, "{}")
        .await;
    let head = harness.head().await;
    let result = harness
        .try_query("fields", &[], Some(head), crate::PATIENCE)
        .await
        .unwrap();
    insta::assert_json_snapshot!("every_placeholder", result.rows);
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn filters_by_type_and_tag() {
    let config = r#"
[[projections]]
name = "shipped"
filter = { types = ["OrderShipped"] }
setup = ["CREATE TABLE shipped (id TEXT, stream TEXT)"]
[projections.on]
OrderShipped = ["INSERT INTO shipped VALUES (:data.id, :stream)"]

[[queries]]
name = "shipped"
sql = "SELECT id, stream FROM shipped ORDER BY id"
"#;
    check_both(
        "filter_by_type",
        config,
        &[
            Ev("order-1", "OrderPlaced", r#"{"id": "o1"}"#),
            Ev("order-1", "OrderShipped", r#"{"id": "o1"}"#),
            Ev("parcel-9", "OrderShipped", r#"{"id": "o9"}"#),
        ],
        &[("shipped", &[])],
    )
    .await;
}

#[tokio::test]
async fn upserts_count_per_key() {
    let config = r#"
[[projections]]
name = "totals"
setup = [
  "CREATE TABLE totals (customer TEXT PRIMARY KEY, orders INTEGER NOT NULL, amount REAL NOT NULL)",
  "CREATE INDEX totals_by_amount ON totals (amount)",
]
[projections.on]
OrderPlaced = ["""INSERT INTO totals VALUES (:data.customer, 1, :data.total)
  ON CONFLICT (customer) DO UPDATE SET orders = orders + 1, amount = amount + excluded.amount"""]
OrderCancelled = [
  "UPDATE totals SET orders = orders - 1, amount = amount - :data.total WHERE customer = :data.customer",
  "DELETE FROM totals WHERE customer = :data.customer AND orders = 0",
]

[[queries]]
name = "top"
sql = "SELECT customer, orders, amount FROM totals WHERE amount >= :min ORDER BY amount DESC, customer"
params = { min = { type = "float", default = 0 } }
"#;
    check(
        "upserts",
        config,
        &[
            Ev(
                "order-1",
                "OrderPlaced",
                r#"{"customer": "a", "total": 10}"#,
            ),
            Ev(
                "order-2",
                "OrderPlaced",
                r#"{"customer": "b", "total": 5.5}"#,
            ),
            Ev("order-3", "OrderPlaced", r#"{"customer": "a", "total": 2}"#),
            Ev("order-4", "OrderPlaced", r#"{"customer": "c", "total": 1}"#),
            Ev(
                "order-4",
                "OrderCancelled",
                r#"{"customer": "c", "total": 1}"#,
            ),
        ],
        &[("top", &[]), ("top", &[("min", "6")])],
    )
    .await;
}

#[tokio::test]
async fn injection_in_event_data_is_only_data() {
    let hostile = r#"x'); DROP TABLE orders; --"#;
    let data =
        serde_json::json!({"id": hostile, "customer": "c1' OR '1'='1", "total": 1}).to_string();
    check_both(
        "injection_in_data",
        ORDERS,
        &[
            Ev(
                "order-1",
                "OrderPlaced",
                r#"{"id": "o1", "customer": "c1", "total": 30}"#,
            ),
            Ev("order-2", "OrderPlaced", &data),
            Ev(
                "order-2",
                "OrderShipped",
                &serde_json::json!({"id": "o1' OR '1'='1"}).to_string(),
            ),
        ],
        &[
            ("orders_by_customer", &[("customer", "c1")]),
            ("orders_by_customer", &[("customer", "c1' OR '1'='1")]),
            ("orders_by_customer", &[("customer", "' OR 1=1 --")]),
            (
                "orders_by_customer",
                &[("customer", "c1'; DROP TABLE orders; --")],
            ),
        ],
    )
    .await;
}
