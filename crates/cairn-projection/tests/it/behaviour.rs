//! Failure isolation, restart, rebuild, definition changes, read-your-writes, the
//! cache, read-only queries, parameters and exactly-once application.

use std::time::Duration;

use cairn_projection::{ProjectionState, ReadSideError, validate};
use serde_json::json;

use crate::read_models::ORDERS;
use crate::{Ev, Harness, PATIENCE, append_events, new_event, settings, start_read_side};

const ITEMS: &str = r#"
[[projections]]
name = "seen"
setup = ["CREATE TABLE seen (position INTEGER PRIMARY KEY)"]
[projections.on]
Item = ["INSERT INTO seen VALUES (:position)"]

[[projections]]
name = "strict"
setup = ["CREATE TABLE items (id TEXT PRIMARY KEY)"]
teardown = ["DROP TABLE items"]
[projections.on]
Item = ["INSERT INTO items VALUES (:data.id)"]

[[queries]]
name = "seen"
sql = "SELECT count(*) AS n FROM seen"

[[queries]]
name = "items"
sql = "SELECT id FROM items ORDER BY id"
"#;

fn ids(result: &cairn_projection::QueryResult) -> Vec<String> {
    result
        .rows
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect()
}

fn item(id: &str) -> cairn_core::NewEvent {
    new_event("Item", &json!({ "id": id }).to_string(), "{}")
}

#[tokio::test]
async fn a_failing_statement_stops_only_its_projection_and_restart_resumes() {
    let harness = Harness::start(ITEMS).await;
    // One commit, so one batch: the duplicate in its middle rolls the batch back and
    // the events before it are applied again.
    let head = append_events(
        &harness.store,
        "item-1",
        vec![item("a"), item("b"), item("a"), item("c")],
    )
    .await;
    assert_eq!(head, 4);

    let strict = harness.settle("strict").await;
    assert_eq!(strict.state, ProjectionState::Failed);
    assert_eq!(
        strict.position, 2,
        "the checkpoint is just before the failing event"
    );
    let error = strict.last_error.clone().expect("the failure is reported");
    assert_eq!(error.position, 3);
    assert_eq!(error.event_type.as_deref(), Some("Item"));
    assert!(error.message.contains("UNIQUE"), "{}", error.message);
    let items = harness.query("items", &[]).await;
    assert_eq!(
        ids(&items),
        ["a", "b"],
        "effects before the failing event stand"
    );
    assert_eq!(items.position, 2);

    // The other projection goes on.
    assert_eq!(harness.settle("seen").await.state, ProjectionState::Running);
    append_events(&harness.store, "item-2", vec![item("d")]).await;
    harness.settle("seen").await;
    let seen = harness.query("seen", &[]).await;
    assert_eq!((seen.rows[0]["n"].clone(), seen.position), (json!(5), 5));

    // Waiting on the failed projection times out, saying where it is.
    let timeout = harness
        .try_query("items", &[], Some(5), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(
        timeout,
        ReadSideError::ConsistencyTimeout {
            min_position: 5,
            position: 2
        }
    );

    // The failure is stored: it survives a restart of the read side.
    let (state, error_position): (String, i64) = harness
        .read_models()
        .query_row(
            "SELECT state, error_position FROM cairn_projections WHERE name = 'strict'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), error_position), ("failed", 3));

    // Restarting without a fix fails again at the same event.
    harness.read_side.restart("strict").await.unwrap();
    let again = harness.settle("strict").await;
    assert_eq!((again.state, again.position), (ProjectionState::Failed, 2));
    assert_eq!(again.last_error.unwrap().position, 3);

    // An operator removes the conflicting row; restart resumes from the checkpoint.
    harness
        .read_models()
        .execute("DELETE FROM items WHERE id = 'a'", [])
        .unwrap();
    harness.read_side.restart("strict").await.unwrap();
    let resumed = harness.settle("strict").await;
    assert_eq!(resumed.state, ProjectionState::Running);
    assert_eq!((resumed.position, resumed.last_error), (5, None));
    assert_eq!(
        ids(&harness.query("items", &[]).await),
        ["a", "b", "c", "d"]
    );
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn a_failed_projection_stays_failed_across_reopening() {
    let mut harness = Harness::start(ITEMS).await;
    append_events(&harness.store, "item-1", vec![item("a"), item("a")]).await;
    assert_eq!(
        harness.settle("strict").await.state,
        ProjectionState::Failed
    );
    harness.reopen(ITEMS).await.unwrap();
    let strict = harness.read_side.projection("strict").await.unwrap();
    assert_eq!(
        (strict.state, strict.position),
        (ProjectionState::Failed, 1)
    );
    assert_eq!(strict.last_error.unwrap().position, 2);
    assert_eq!(harness.settle("seen").await.position, 2);
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn rebuild_replays_into_the_same_rows() {
    let harness = Harness::start_with(ORDERS, |options| options.batch_size = 64).await;
    let mut events = Vec::new();
    for i in 0..300 {
        events.push(new_event(
            "OrderPlaced",
            &json!({"id": format!("o{i:03}"), "customer": format!("c{}", i % 7), "total": i})
                .to_string(),
            "{}",
        ));
        if i % 3 == 0 {
            events.push(new_event(
                "OrderShipped",
                &json!({"id": format!("o{i:03}")}).to_string(),
                "{}",
            ));
        }
    }
    for chunk in events.chunks(50) {
        append_events(&harness.store, "order-x", chunk.to_vec()).await;
    }
    let head = harness.head().await;
    let params = [("customer", "c3"), ("limit", "500")];
    let live = harness
        .try_query("orders_by_customer", &params, Some(head), PATIENCE)
        .await
        .unwrap();
    assert!(live.rows.len() > 40);

    let status = harness.read_side.rebuild("orders").await.unwrap();
    assert!(!status.definition_changed);
    match status.state {
        ProjectionState::Rebuilding => {
            let progress = status.rebuild_progress.unwrap();
            assert!((0.0..=1.0).contains(&progress), "{progress}");
        }
        ProjectionState::Running => assert_eq!(status.position, head),
        other => panic!("unexpected state {other:?}"),
    }
    let rebuilt_status = harness.settle("orders").await;
    assert_eq!(rebuilt_status.state, ProjectionState::Running);
    assert_eq!(rebuilt_status.rebuild_progress, None);
    let rebuilt = harness
        .try_query("orders_by_customer", &params, Some(head), PATIENCE)
        .await
        .unwrap();
    assert_eq!(rebuilt.rows, live.rows);
    assert!(rebuilt.position >= head);

    // The projection goes on live after its rebuild.
    let next = harness
        .append(&[Ev(
            "order-y",
            "OrderPlaced",
            r#"{"id": "z", "customer": "c3", "total": 1}"#,
        )])
        .await;
    let after = harness
        .try_query("orders_by_customer", &params, Some(next), PATIENCE)
        .await
        .unwrap();
    assert_eq!(after.rows.len(), live.rows.len() + 1);
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn a_changed_definition_is_reported_until_rebuilt() {
    let mut harness = Harness::start(ORDERS).await;
    harness
        .append(&[
            Ev(
                "order-1",
                "OrderPlaced",
                r#"{"id": "o1", "customer": "c1", "total": 3}"#,
            ),
            Ev("order-1", "OrderShipped", r#"{"id": "o1"}"#),
            Ev(
                "order-2",
                "OrderPlaced",
                r#"{"id": "o2", "customer": "c1", "total": 4}"#,
            ),
        ])
        .await;
    harness.settle("orders").await;
    assert!(
        !harness
            .read_side
            .projection("orders")
            .await
            .unwrap()
            .definition_changed
    );

    let changed = ORDERS.replace("status = 'shipped'", "status = 'sent'");
    harness.reopen(&changed).await.unwrap();
    let status = harness.read_side.projection("orders").await.unwrap();
    assert!(status.definition_changed);
    assert!(status.message.as_deref().unwrap().contains("rebuild"));
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Running, 3)
    );

    // It goes on from its checkpoint, with the new statements for new events.
    let head = harness
        .append(&[Ev("order-2", "OrderShipped", r#"{"id": "o2"}"#)])
        .await;
    let rows = harness
        .try_query(
            "orders_by_customer",
            &[("customer", "c1")],
            Some(head),
            PATIENCE,
        )
        .await
        .unwrap()
        .rows;
    let statuses: Vec<_> = rows.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!("shipped"), json!("sent")]);

    harness.read_side.rebuild("orders").await.unwrap();
    let rebuilt = harness.settle("orders").await;
    assert!(!rebuilt.definition_changed && rebuilt.message.is_none());
    let rows = harness
        .try_query(
            "orders_by_customer",
            &[("customer", "c1")],
            Some(head),
            PATIENCE,
        )
        .await
        .unwrap()
        .rows;
    let statuses: Vec<_> = rows.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [json!("sent"), json!("sent")]);

    // Reopening with the same definition reports nothing.
    harness.reopen(&changed).await.unwrap();
    assert!(
        !harness
            .read_side
            .projection("orders")
            .await
            .unwrap()
            .definition_changed
    );
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn min_position_waits_for_the_write_and_times_out_otherwise() {
    let harness = Harness::start(ORDERS).await;
    let head = harness.head().await;
    let params = [("customer", "c1")];
    // Ask for a position not yet written; the append comes while the query waits.
    let waiting = harness.try_query("orders_by_customer", &params, Some(head + 1), PATIENCE);
    let appending = async {
        tokio::task::yield_now().await;
        harness
            .append(&[Ev(
                "order-1",
                "OrderPlaced",
                r#"{"id": "o1", "customer": "c1", "total": 3}"#,
            )])
            .await
    };
    let (result, position) = tokio::join!(waiting, appending);
    let result = result.unwrap();
    assert_eq!(position, head + 1);
    assert!(result.position >= position);
    assert_eq!(ids(&result), ["o1"]);

    let error = harness
        .try_query(
            "orders_by_customer",
            &params,
            Some(position + 10),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ReadSideError::ConsistencyTimeout {
            min_position: position + 10,
            position
        }
    );
    // Zero wait: answer now or refuse now.
    assert!(matches!(
        harness
            .try_query(
                "orders_by_customer",
                &params,
                Some(position + 1),
                Duration::ZERO
            )
            .await,
        Err(ReadSideError::ConsistencyTimeout { .. })
    ));

    // Events the projection's filter leaves out still move the position it reflects.
    let other = harness
        .append(&[Ev("customer-c1", "CustomerRenamed", r#"{"name": "x"}"#)])
        .await;
    let result = harness
        .try_query("orders_by_customer", &params, Some(other), PATIENCE)
        .await
        .unwrap();
    assert!(result.position >= other);
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn catching_up_through_events_it_does_not_see_reaches_the_head() {
    let mut harness = Harness::start(ORDERS).await;
    harness.read_side.shutdown().await;
    // Written while the read side is down: one order, then only other categories.
    harness
        .append(&[
            Ev(
                "order-1",
                "OrderPlaced",
                r#"{"id": "o1", "customer": "c1", "total": 3}"#,
            ),
            Ev("customer-1", "CustomerRenamed", "{}"),
            Ev("customer-2", "CustomerRenamed", "{}"),
        ])
        .await;
    let head = harness.head().await;
    harness.reopen(ORDERS).await.unwrap();
    let status = harness.settle("orders").await;
    assert_eq!((status.position, status.lag), (head, 0));
    let result = harness
        .try_query(
            "orders_by_customer",
            &[("customer", "c1")],
            Some(head),
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(ids(&result), ["o1"]);
    harness.read_side.shutdown().await;
}

const ORDERS_UNCACHED_TTL: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT)"]
[projections.on]
OrderPlaced = ["INSERT INTO orders VALUES (:data.id, :data.customer)"]

[[queries]]
name = "by_customer"
sql = "SELECT id FROM orders WHERE customer = :customer ORDER BY id"
params = { customer = "text" }

[[queries]]
name = "by_customer_ttl"
sql = "SELECT id FROM orders WHERE customer = :customer ORDER BY id"
params = { customer = "text" }
cache_ttl = "400ms"
"#;

#[tokio::test]
async fn a_cached_result_is_served_until_its_projection_changes() {
    let harness = Harness::start(ORDERS_UNCACHED_TTL).await;
    let p1 = harness
        .append(&[Ev(
            "order-1",
            "OrderPlaced",
            r#"{"id": "o1", "customer": "c1"}"#,
        )])
        .await;
    let params = [("customer", "c1")];
    let first = harness
        .try_query("by_customer", &params, Some(p1), PATIENCE)
        .await
        .unwrap();
    assert!(!first.cached);
    let second = harness.query("by_customer", &params).await;
    assert!(second.cached);
    assert_eq!(
        (second.rows.clone(), second.position),
        (first.rows.clone(), p1)
    );
    // Other parameters are other entries.
    assert!(
        !harness
            .query("by_customer", &[("customer", "c2")])
            .await
            .cached
    );

    // The projection changes: the cached answer is no longer served.
    let p2 = harness
        .append(&[Ev(
            "order-2",
            "OrderPlaced",
            r#"{"id": "o2", "customer": "c1"}"#,
        )])
        .await;
    harness.settle("orders").await;
    let third = harness.query("by_customer", &params).await;
    assert!(!third.cached);
    assert_eq!(
        (ids(&third), third.position),
        (vec!["o1".into(), "o2".into()], p2)
    );
    assert!(harness.query("by_customer", &params).await.cached);

    // Events that change nothing keep the entry, and it reflects the newer position.
    let p3 = harness
        .append(&[
            Ev("customer-1", "CustomerRenamed", "{}"),
            Ev("order-2", "OrderNoted", "{}"),
        ])
        .await;
    harness.settle("orders").await;
    let fourth = harness.query("by_customer", &params).await;
    assert!(fourth.cached);
    assert_eq!((ids(&fourth).len(), fourth.position), (2, p3));
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn a_cache_ttl_allows_that_much_staleness_and_no_more() {
    let harness = Harness::start(ORDERS_UNCACHED_TTL).await;
    let p1 = harness
        .append(&[Ev(
            "order-1",
            "OrderPlaced",
            r#"{"id": "o1", "customer": "c1"}"#,
        )])
        .await;
    let params = [("customer", "c1")];
    let first = harness
        .try_query("by_customer_ttl", &params, Some(p1), PATIENCE)
        .await
        .unwrap();
    assert!(!first.cached);
    let p2 = harness
        .append(&[Ev(
            "order-2",
            "OrderPlaced",
            r#"{"id": "o2", "customer": "c1"}"#,
        )])
        .await;
    harness.settle("orders").await;
    // Within the TTL: the stale answer, honest about the position it reflects.
    let stale = harness.query("by_customer_ttl", &params).await;
    assert!(stale.cached);
    assert_eq!((ids(&stale), stale.position), (vec!["o1".to_owned()], p1));
    // Asking for the newer position skips the stale entry.
    let fresh = harness
        .try_query("by_customer_ttl", &params, Some(p2), PATIENCE)
        .await
        .unwrap();
    assert!(!fresh.cached);
    assert_eq!(ids(&fresh), ["o1", "o2"]);

    // After the TTL, a new answer.
    let p3 = harness
        .append(&[Ev(
            "order-3",
            "OrderPlaced",
            r#"{"id": "o3", "customer": "c1"}"#,
        )])
        .await;
    harness.settle("orders").await;
    tokio::time::sleep(Duration::from_millis(450)).await; // the TTL passing is the point
    let later = harness.query("by_customer_ttl", &params).await;
    assert!(!later.cached);
    assert_eq!((ids(&later).len(), later.position), (3, p3));
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn queries_that_write_are_refused() {
    let with_query =
        |sql: &str| format!("{ORDERS}\n[[queries]]\nname = \"bad\"\nsql = \"{sql}\"\n");
    for sql in [
        "DELETE FROM orders",
        "INSERT INTO orders SELECT * FROM orders",
        "SELECT 1; DROP TABLE orders",
        "WITH x AS (SELECT 1) UPDATE orders SET status = 'x'",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store: cairn_store::SharedStore = std::sync::Arc::new(
            cairn_store::sqlite::SqliteStore::open(cairn_store::sqlite::SqliteOptions::new(
                dir.path(),
            ))
            .unwrap(),
        );
        let error = start_read_side(&store, &dir, &with_query(sql), |_| {})
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} was accepted"));
        let ReadSideError::Config(message) = error else {
            panic!("{sql}: {error:?}")
        };
        assert!(message.contains("query \"bad\""), "{message}");
    }
}

#[tokio::test]
async fn parameters_are_checked_and_named() {
    let harness = Harness::start(ORDERS).await;
    let refused = |params: &'static [(&'static str, &'static str)]| {
        let harness = &harness;
        async move {
            match harness
                .try_query("orders_by_customer", params, None, Duration::ZERO)
                .await
            {
                Err(ReadSideError::InvalidParameter { name, message }) => (name, message),
                other => panic!("{params:?}: {other:?}"),
            }
        }
    };
    let (name, message) = refused(&[("customer", "c"), ("colour", "red")]).await;
    assert_eq!(name, "colour");
    assert!(message.contains("unknown"), "{message}");
    let (name, message) = refused(&[]).await;
    assert_eq!(
        (name.as_str(), message.contains("missing")),
        ("customer", true)
    );
    let (name, message) = refused(&[("customer", "c"), ("limit", "many")]).await;
    assert_eq!(
        (name.as_str(), message.contains("integer")),
        ("limit", true)
    );
    let (name, message) = refused(&[("customer", "c"), ("limit", "501")]).await;
    assert_eq!(
        (name.as_str(), message.contains("maximum 500")),
        ("limit", true)
    );
    assert_eq!(
        harness.try_query("nope", &[], None, Duration::ZERO).await,
        Err(ReadSideError::QueryNotFound("nope".into()))
    );
    assert_eq!(
        harness.read_side.restart("nope").await,
        Err(ReadSideError::ProjectionNotFound("nope".into()))
    );
    assert_eq!(harness.read_side.query_names(), ["orders_by_customer"]);
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn configuration_errors_name_the_culprit() {
    let error = toml::from_str::<crate::Settings>(
        "[[projections]]\nname = \"p\"\nfiltre = {}\n[projections.on]\nE = [\"SELECT 1\"]",
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("filtre"), "{error}");
    let error = toml::from_str::<crate::Settings>(
        "[[queries]]\nname = \"q\"\nsql = \"SELECT :a\"\nparams = { a = \"number\" }",
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("number"), "{error}");

    let cases = [
        (
            "[[projections]]\nname = \"p\"\n[projections.on]\nE = [\"INSERT INTO t VALUES (:data.a, :dta.b)\"]",
            "projection \"p\": on.E statement 1: unknown placeholder :dta.b",
        ),
        (
            "[[queries]]\nname = \"q\"\nsql = \"SELECT :a, :b\"\nparams = { a = \"int\" }",
            "query \"q\": the SQL uses :b, which is not declared in params",
        ),
        (
            "[[queries]]\nname = \"q\"\nsql = \"SELECT 1\"\ncache_ttl = \"5 minutes\"",
            "query \"q\": cache_ttl",
        ),
        (
            "[[queries]]\nname = \"bad name\"\nsql = \"SELECT 1\"",
            "query name \"bad name\" is invalid",
        ),
    ];
    for (text, expected) in cases {
        let parsed = settings(text);
        match validate(&parsed.projections, &parsed.queries) {
            Err(ReadSideError::Config(message)) => {
                assert!(message.contains(expected), "{message} / {expected}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }

    // A statement SQLite cannot prepare is reported at start, naming the statement.
    for (broken, expected) in [
        (
            ORDERS.replace("UPDATE orders SET", "UPDATE orders SETT"),
            "on.OrderShipped statement 1",
        ),
        (
            ORDERS.replace(
                "UPDATE orders SET status = 'shipped' WHERE",
                "SELECT * FROM orders WHERE",
            ),
            "returns rows",
        ),
        (
            ORDERS.replace("sql = \"SELECT id", "sql = \"PRAGMA x; SELECT id"),
            "single SELECT",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store: cairn_store::SharedStore = std::sync::Arc::new(
            cairn_store::sqlite::SqliteStore::open(cairn_store::sqlite::SqliteOptions::new(
                dir.path(),
            ))
            .unwrap(),
        );
        let Err(ReadSideError::Config(message)) =
            start_read_side(&store, &dir, &broken, |_| {}).await
        else {
            panic!("accepted: {broken}")
        };
        assert!(message.contains(expected), "{message} / {expected}");
    }
}

const LEDGER: &str = r#"
[[projections]]
name = "ledger"
setup = [
  "CREATE TABLE applied (position INTEGER PRIMARY KEY, stream TEXT NOT NULL)",
  "CREATE TABLE counts (stream TEXT PRIMARY KEY, n INTEGER NOT NULL)",
]
[projections.on]
Tick = [
  "INSERT INTO applied VALUES (:position, :stream)",
  "INSERT INTO counts VALUES (:stream, 1) ON CONFLICT (stream) DO UPDATE SET n = n + 1",
]

[[queries]]
name = "ledger"
sql = "SELECT (SELECT count(*) FROM applied) AS applied, (SELECT sum(n) FROM counts) AS counted"
"#;

fn ticks(n: usize) -> Vec<cairn_core::NewEvent> {
    (0..n).map(|_| new_event("Tick", "{}", "{}")).collect()
}

/// The checkpoint in `readmodels.db` and what the ledger holds: every event up to the
/// checkpoint applied exactly once.
fn assert_ledger_consistent(harness: &Harness) -> u64 {
    let connection = harness.read_models();
    let (checkpoint, applied, counted, highest): (i64, i64, i64, i64) = connection
        .query_row(
            "SELECT (SELECT position FROM cairn_projections WHERE name = 'ledger'),
                    (SELECT count(*) FROM applied), (SELECT coalesce(sum(n), 0) FROM counts),
                    (SELECT coalesce(max(position), 0) FROM applied)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    assert_eq!(applied, counted, "each applied event counted once");
    assert_eq!(highest, checkpoint, "effects and checkpoint moved together");
    assert_eq!(
        applied, checkpoint,
        "positions are gapless and all were Ticks"
    );
    checkpoint as u64
}

#[tokio::test]
async fn every_event_is_applied_exactly_once_across_reopening() {
    let mut harness = Harness::start_with(LEDGER, |options| options.batch_size = 50).await;
    for _ in 0..10 {
        append_events(&harness.store, "clock-a", ticks(37)).await;
    }
    // Stop while it may still be catching up, then check what is on disk.
    harness.read_side.shutdown().await;
    let stopped_at = assert_ledger_consistent(&harness);
    assert!(stopped_at <= 370);

    // Written while the read side is down.
    append_events(&harness.store, "clock-b", ticks(120)).await;
    harness.reopen(LEDGER).await.unwrap();
    for _ in 0..5 {
        append_events(&harness.store, "clock-c", ticks(20)).await;
    }
    let status = harness.settle("ledger").await;
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Running, 590)
    );
    assert!(status.events_per_second > 0.0);
    let result = harness.query("ledger", &[]).await;
    assert_eq!(result.rows[0]["applied"], json!(590));
    assert_eq!(result.rows[0]["counted"], json!(590));
    harness.read_side.shutdown().await;
    assert_eq!(assert_ledger_consistent(&harness), 590);

    // Reopening once more applies nothing again.
    harness.reopen(LEDGER).await.unwrap();
    let status = harness.settle("ledger").await;
    assert_eq!(status.position, 590);
    assert_eq!(
        harness.query("ledger", &[]).await.rows[0]["applied"],
        json!(590)
    );
    harness.read_side.shutdown().await;
    assert_eq!(assert_ledger_consistent(&harness), 590);
}

#[tokio::test]
async fn one_read_side_per_data_directory() {
    let harness = Harness::start(LEDGER).await;
    let Err(ReadSideError::Storage(message)) =
        start_read_side(&harness.store, &harness.dir, LEDGER, |_| {}).await
    else {
        panic!("a second read side opened the same read models")
    };
    assert!(message.contains("in use"), "{message}");
    harness.read_side.shutdown().await;
    let statuses = harness.read_side.projections().await;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].state, ProjectionState::Stopped);
}

#[tokio::test]
async fn read_models_ahead_of_the_log_are_not_followed_blindly() {
    let first = Harness::start(LEDGER).await;
    append_events(&first.store, "clock-a", ticks(5)).await;
    first.settle("ledger").await;
    first.read_side.shutdown().await;
    // A fresh, empty event log next to the old read models.
    let store: cairn_store::SharedStore = std::sync::Arc::new(
        cairn_store::sqlite::SqliteStore::open(cairn_store::sqlite::SqliteOptions::new(
            first.dir.path().join("other-log"),
        ))
        .unwrap(),
    );
    let read_side = start_read_side(&store, &first.dir, LEDGER, |_| {})
        .await
        .unwrap();
    let status = read_side.projection("ledger").await.unwrap();
    assert_eq!(status.state, ProjectionState::Failed);
    assert!(status.last_error.unwrap().message.contains("rebuild"));
    assert!(matches!(
        read_side.restart("ledger").await,
        Err(ReadSideError::Storage(message)) if message.contains("rebuild")
    ));
    // Without a teardown its setup cannot run again: the rebuild changes nothing.
    let Err(ReadSideError::Storage(message)) = read_side.rebuild("ledger").await else {
        panic!("a rebuild without teardown recreated existing tables")
    };
    assert!(message.contains("nothing was changed"), "{message}");
    let status = read_side.projection("ledger").await.unwrap();
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Failed, 5)
    );
    read_side.shutdown().await;

    let with_teardown = LEDGER.replace(
        "[projections.on]",
        "teardown = [\"DROP TABLE applied\", \"DROP TABLE counts\"]\n[projections.on]",
    );
    let read_side = start_read_side(&store, &first.dir, &with_teardown, |_| {})
        .await
        .unwrap();
    read_side.rebuild("ledger").await.unwrap();
    append_events(&store, "clock-b", ticks(2)).await;
    let status = read_side
        .wait_for_projection("ledger", 2, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Running, 2)
    );
    read_side.shutdown().await;
}

#[tokio::test]
async fn a_query_depends_only_on_the_tables_it_reads_not_on_words_in_its_sql() {
    // `items` is a column alias here, not a table: the query reads `seen` only, so a
    // failed `strict` (whose table is `items`) does not hold its position back.
    let config = ITEMS.replace(
        "sql = \"SELECT count(*) AS n FROM seen\"",
        "sql = \"SELECT count(*) AS items FROM seen\"",
    );
    let harness = Harness::start(&config).await;
    let head = append_events(&harness.store, "item-1", vec![item("a"), item("a")]).await;
    assert_eq!(
        harness.settle("strict").await.state,
        ProjectionState::Failed
    );
    harness.settle("seen").await;
    let seen = harness
        .try_query("seen", &[], Some(head), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (seen.rows[0]["items"].clone(), seen.position),
        (json!(2), head)
    );
    harness.read_side.shutdown().await;
}
