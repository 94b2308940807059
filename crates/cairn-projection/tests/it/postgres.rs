//! The read side with its read models in PostgreSQL (`cairn_store::testing`'s
//! throw-away servers): the same rows as on SQLite, exactly-once application across
//! restarts, failures, rebuilds, several read sides on one database (one drives each
//! projection, the others follow and take over), plans, and queries served by a
//! streaming replica. Without the PostgreSQL binaries these tests are skipped loudly
//! (they fail when `CI` is set).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_projection::{
    PlanWarningKind, PostgresReadModels, ProjectionState, ReadSide, ReadSideError, ReadSideOptions,
};
use cairn_store::SharedStore;
use cairn_store::postgres::{PostgresOptions, PostgresStore};
use cairn_store::testing::{PgCluster, TestDatabase, shared_database};
use serde_json::json;

use crate::{Ev, PATIENCE, append, append_events, new_event, params_map, settings};

/// A PostgreSQL event store and a read side with its read models in the same
/// database.
pub struct PgHarness {
    pub database: TestDatabase,
    pub store: SharedStore,
    pub read_side: Arc<ReadSide>,
}

pub async fn connect_store(database: &TestDatabase) -> SharedStore {
    let mut options = PostgresOptions::new(database.primary_url.clone());
    options.replica_urls = database.replica_url.iter().cloned().collect();
    options.pool_size = 4;
    options.replica_pool_size = 4;
    Arc::new(
        PostgresStore::connect(options)
            .await
            .expect("connect the PostgreSQL store"),
    )
}

pub async fn start_pg_read_side(
    store: &SharedStore,
    database: &TestDatabase,
    config: &str,
    tune: impl FnOnce(&mut ReadSideOptions),
) -> Result<Arc<ReadSide>, ReadSideError> {
    let settings = settings(config);
    // The data directory is not used when the read models are in PostgreSQL.
    let mut options = ReadSideOptions::new("/nonexistent/cairn-test");
    let mut postgres = PostgresReadModels::new(database.primary_url.clone());
    postgres.replica_urls = database.replica_url.iter().cloned().collect();
    postgres.pool_size = 2;
    options.postgres = Some(postgres);
    options.cache_bytes = 1 << 20;
    tune(&mut options);
    ReadSide::start(
        store.clone(),
        options,
        settings.projections,
        settings.queries,
    )
    .await
}

impl PgHarness {
    /// `None` when the PostgreSQL tests are skipped here.
    pub async fn start(config: &str) -> Option<Self> {
        let database = shared_database().await?;
        Some(Self::on(database, config).await)
    }

    pub async fn on(database: TestDatabase, config: &str) -> Self {
        let store = connect_store(&database).await;
        let read_side = start_pg_read_side(&store, &database, config, |_| {})
            .await
            .expect("start the read side on PostgreSQL");
        Self {
            database,
            store,
            read_side,
        }
    }

    pub async fn head(&self) -> u64 {
        self.store.head_position().await.unwrap()
    }

    pub async fn settle(&self, projection: &str) -> cairn_projection::ProjectionStatus {
        let head = self.head().await;
        self.read_side
            .wait_for_projection(projection, head, PATIENCE)
            .await
            .expect("the projection catches up")
    }

    pub async fn query(&self, name: &str, params: &[(&str, &str)]) -> Vec<serde_json::Value> {
        let head = self.head().await;
        let result = self
            .read_side
            .query(name, &params_map(params), Some(head), PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("query {name} failed: {e}"));
        result
            .rows
            .into_iter()
            .map(serde_json::Value::from)
            .collect()
    }

    /// A plain connection to the primary with `search_path` at the read models.
    pub async fn sql(&self) -> tokio_postgres::Client {
        sql(&self.database.primary_url).await
    }
}

pub async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
        .batch_execute("SET search_path = cairn_readmodels")
        .await
        .unwrap();
    client
}

/// [`crate::check`] on SQLite, then on PostgreSQL, against one snapshot.
pub async fn check_both(
    name: &str,
    config: &str,
    events: &[Ev<'_>],
    queries: &[(&str, &[(&str, &str)])],
) {
    crate::check(name, config, events, queries).await;
    check_postgres(name, config, events, queries).await;
}

/// [`crate::check`] on PostgreSQL: the same configuration and events give the same
/// rows (the same snapshot) as on SQLite.
pub async fn check_postgres(
    name: &str,
    config: &str,
    events: &[Ev<'_>],
    queries: &[(&str, &[(&str, &str)])],
) {
    let Some(harness) = PgHarness::start(config).await else {
        return;
    };
    let head = append(&harness.store, events).await;
    let mut answers = serde_json::Map::new();
    for (query, params) in queries {
        let result = harness
            .read_side
            .query(query, &params_map(params), Some(head), PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("query {query} failed on PostgreSQL: {e}"));
        assert_eq!(result.position, head, "{query} reflects the head");
        let label = if params.is_empty() {
            (*query).to_owned()
        } else {
            let rendered: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{query}?{}", rendered.join("&"))
        };
        answers.insert(label, serde_json::Value::from(result.rows));
    }
    for status in harness.read_side.projections().await {
        assert_eq!(status.state, ProjectionState::Running, "{status:?}");
        assert_eq!(status.driving, Some(true), "{status:?}");
    }
    // The SQLite test's own snapshot (`it__<name>.snap`): the same rows.
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_json_snapshot!(format!("it__{name}"), answers);
    });
    harness.read_side.shutdown().await;
}

const LEDGER: &str = r#"
[[projections]]
name = "ledger"
filter = { types = ["Tick"] }
setup = [
  "CREATE TABLE applied (position BIGINT PRIMARY KEY)",
  "CREATE TABLE counts (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)",
]
teardown = ["DROP TABLE applied", "DROP TABLE counts"]
[projections.on]
Tick = [
  "INSERT INTO applied VALUES (:position)",
  "INSERT INTO counts AS c VALUES (:stream, 1) ON CONFLICT (stream) DO UPDATE SET n = c.n + 1",
]

[[queries]]
name = "ledger"
sql = "SELECT (SELECT count(*) FROM applied) AS applied, (SELECT sum(n) FROM counts) AS counted"
"#;

fn ticks(n: usize) -> Vec<cairn_core::NewEvent> {
    (0..n).map(|_| new_event("Tick", "{}", "{}")).collect()
}

/// Every event up to the stored checkpoint applied exactly once: what the database
/// holds, whichever read side wrote it.
pub async fn assert_ledger_consistent(client: &tokio_postgres::Client) -> u64 {
    let row = client
        .query_one(
            "SELECT (SELECT position FROM cairn_projections WHERE name = 'ledger'),
                    (SELECT count(*) FROM applied), (SELECT coalesce(sum(n), 0)::BIGINT FROM counts),
                    (SELECT coalesce(max(position), 0) FROM applied)",
            &[],
        )
        .await
        .unwrap();
    let (checkpoint, applied, counted, highest): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(applied, counted, "each applied event counted once");
    assert_eq!(highest, checkpoint, "effects and checkpoint moved together");
    assert_eq!(
        applied, checkpoint,
        "positions are gapless and all were Ticks"
    );
    checkpoint as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_applied_exactly_once_across_reopening_on_postgres() {
    let Some(database) = shared_database().await else {
        return;
    };
    let store = connect_store(&database).await;
    let read_side = start_pg_read_side(&store, &database, LEDGER, |o| o.batch_size = 50)
        .await
        .unwrap();
    for _ in 0..10 {
        append_events(&store, "clock-a", ticks(37)).await;
    }
    read_side.shutdown().await;
    let client = sql(&database.primary_url).await;
    assert!(assert_ledger_consistent(&client).await <= 370);

    append_events(&store, "clock-b", ticks(120)).await;
    let read_side = start_pg_read_side(&store, &database, LEDGER, |_| {})
        .await
        .unwrap();
    for _ in 0..5 {
        append_events(&store, "clock-c", ticks(20)).await;
    }
    let head = store.head_position().await.unwrap();
    assert_eq!(head, 590);
    let status = read_side
        .wait_for_projection("ledger", head, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Running, 590)
    );
    let result = read_side
        .query("ledger", &HashMap::new(), Some(head), PATIENCE)
        .await
        .unwrap();
    assert_eq!(result.rows[0]["applied"], json!(590));
    assert_eq!(result.rows[0]["counted"], json!(590));
    read_side.shutdown().await;
    assert_eq!(assert_ledger_consistent(&client).await, 590);

    // Rebuild replays every event into fresh tables, exactly once.
    let read_side = start_pg_read_side(&store, &database, LEDGER, |_| {})
        .await
        .unwrap();
    read_side.rebuild("ledger").await.unwrap();
    let status = read_side
        .wait_for_projection("ledger", head, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Running, 590)
    );
    read_side.shutdown().await;
    assert_eq!(assert_ledger_consistent(&client).await, 590);
}

const ITEMS: &str = r#"
[[projections]]
name = "seen"
setup = ["CREATE TABLE seen (position BIGINT PRIMARY KEY)"]
[projections.on]
Item = ["INSERT INTO seen VALUES (:position)"]

[[projections]]
name = "strict"
setup = ["CREATE TABLE items (id TEXT PRIMARY KEY)"]
teardown = ["DROP TABLE items"]
[projections.on]
Item = ["INSERT INTO items VALUES (:data.id)"]

[[queries]]
name = "items"
sql = "SELECT id FROM items ORDER BY id"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_stops_only_its_projection_on_postgres() {
    let Some(harness) = PgHarness::start(ITEMS).await else {
        return;
    };
    let item = |id: &str| new_event("Item", &json!({ "id": id }).to_string(), "{}");
    append_events(
        &harness.store,
        "item-1",
        vec![item("a"), item("b"), item("a"), item("c")],
    )
    .await;
    let strict = harness.settle("strict").await;
    assert_eq!(strict.state, ProjectionState::Failed);
    assert_eq!(strict.position, 2, "everything before the failing event");
    let error = strict.last_error.expect("the failure");
    assert_eq!(
        (error.position, error.event_type.as_deref()),
        (3, Some("Item"))
    );
    assert!(error.message.contains("duplicate key"), "{}", error.message);
    let seen = harness.settle("seen").await;
    assert_eq!((seen.state, seen.position), (ProjectionState::Running, 4));
    let items = harness
        .read_side
        .query("items", &HashMap::new(), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        serde_json::Value::from(items.rows),
        json!([{"id": "a"}, {"id": "b"}])
    );

    // Stays failed across reopening; a restart after fixing the data resumes it.
    harness.read_side.shutdown().await;
    let read_side = start_pg_read_side(&harness.store, &harness.database, ITEMS, |_| {})
        .await
        .unwrap();
    let status = read_side.projection("strict").await.unwrap();
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Failed, 2)
    );
    harness
        .sql()
        .await
        .execute("DELETE FROM items WHERE id = 'a'", &[])
        .await
        .unwrap();
    read_side.restart("strict").await.unwrap();
    let status = read_side
        .wait_for_projection("strict", 4, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Running, 4)
    );
    read_side.shutdown().await;
}

/// Two read sides on one database, as two instances would run them: one drives each
/// projection, the other follows its checkpoint (status and queries) and takes over
/// when the first stops; nothing is applied twice or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_drives_each_projection_and_another_takes_over() {
    let Some(database) = shared_database().await else {
        return;
    };
    let store = connect_store(&database).await;
    let first = start_pg_read_side(&store, &database, LEDGER, |_| {})
        .await
        .unwrap();
    append_events(&store, "clock-a", ticks(30)).await;
    first
        .wait_for_projection("ledger", 30, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        first.projection("ledger").await.unwrap().driving,
        Some(true)
    );

    let second = start_pg_read_side(&store, &database, LEDGER, |_| {})
        .await
        .unwrap();
    append_events(&store, "clock-a", ticks(10)).await;
    // The follower learns the position from the shared checkpoint.
    let followed = second
        .wait_for_projection("ledger", 40, PATIENCE)
        .await
        .unwrap();
    assert_eq!(followed.driving, Some(false), "{followed:?}");
    assert_eq!(followed.position, 40);
    let rows = second
        .query("ledger", &HashMap::new(), Some(40), PATIENCE)
        .await
        .unwrap();
    assert_eq!(rows.rows[0]["applied"], json!(40));

    // The owner notifies each move it commits: the follower hears of it at once, not
    // at its next periodic read (once a second). Each round has a fresh second to
    // wait at random; reading only once a second, four rounds under 400 ms each would
    // be luck (about 1 in 40).
    let mut position = 40;
    let mut heard_within = async |round: &str| {
        append_events(&store, "clock-a", ticks(1)).await;
        position += 1;
        first
            .wait_for_projection("ledger", position, PATIENCE)
            .await
            .unwrap();
        let committed = Instant::now();
        second
            .wait_for_projection("ledger", position, PATIENCE)
            .await
            .unwrap();
        let heard = committed.elapsed();
        assert!(
            heard < Duration::from_millis(400),
            "{round}: the follower took {heard:?} to learn position {position}"
        );
        tokio::time::sleep(Duration::from_millis(137)).await;
    };
    for round in 0..4 {
        heard_within(&format!("round {round}")).await;
    }

    // The LISTEN connections are cut: each instance opens a new one by itself, and
    // the follower hears of moves at once again.
    let admin = sql(&database.primary_url).await;
    let listeners = "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND query = 'LISTEN cairn_projections'";
    let listener_pids = || async {
        admin
            .query(listeners, &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, i32>(0))
            .collect::<Vec<_>>()
    };
    let cut = listener_pids().await;
    assert_eq!(cut.len(), 2, "one LISTEN connection per instance: {cut:?}");
    for pid in &cut {
        admin
            .execute("SELECT pg_terminate_backend($1)", &[pid])
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = listener_pids().await;
        if now.len() == 2 && now.iter().all(|pid| !cut.contains(pid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the LISTEN connections did not come back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    heard_within("after reconnecting").await;

    // The owner stops; events keep coming; the follower takes over within seconds.
    let stopped = Instant::now();
    first.shutdown().await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                append_events(&store, "clock-b", ticks(5)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = second.projection("ledger").await.unwrap();
        if status.driving == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "no takeover: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stopped.elapsed()
    );
    writer.await.unwrap();
    let status = second
        .wait_for_projection("ledger", 145, PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        (status.state, status.position),
        (ProjectionState::Running, 145)
    );
    second.shutdown().await;
    let client = sql(&database.primary_url).await;
    assert_eq!(assert_ledger_consistent(&client).await, 145);
}

const ORDERS_PLANNED: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC, status TEXT)"]
teardown = ["DROP TABLE IF EXISTS orders"]
[projections.on]
OrderPlaced  = ["INSERT INTO orders VALUES (:data.id, :data.customer, :data.total, 'placed')"]
OrderShipped = ["UPDATE orders SET status = 'shipped' WHERE id = :data.id"]
OrderNoted = ["UPDATE orders SET status = 'noted' WHERE customer = :data.customer"]

[[queries]]
name = "orders_by_customer"
sql = "SELECT id, total, status FROM orders WHERE customer = :customer ORDER BY id LIMIT :limit"
params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_flag_missing_indexes_not_small_tables_on_postgres() {
    let Some(database) = shared_database().await else {
        return;
    };
    let store = connect_store(&database).await;
    // Strict plans refuse to start, listing both warnings.
    let refused = start_pg_read_side(&store, &database, ORDERS_PLANNED, |o| o.strict_plans = true)
        .await
        .err()
        .expect("strict plans refuse");
    let ReadSideError::Config(message) = refused else {
        panic!("{refused:?}");
    };
    assert!(message.contains("2 plan warnings"), "{message}");

    let read_side = start_pg_read_side(&store, &database, ORDERS_PLANNED, |_| {})
        .await
        .unwrap();
    let query = read_side.query_status("orders_by_customer").unwrap();
    let [warning] = query.plan_warnings.as_slice() else {
        panic!("{query:#?}");
    };
    assert_eq!(warning.kind, PlanWarningKind::FullScan);
    assert_eq!(
        warning.suggestion.as_deref(),
        Some("CREATE INDEX IF NOT EXISTS orders_by_customer_id ON orders (customer, id)")
    );
    let projection = read_side.projection("orders").await.unwrap();
    let [statement] = projection.plan_warnings.as_slice() else {
        panic!("{projection:#?}");
    };
    assert_eq!(statement.columns, ["customer"]);
    assert!(
        statement.message.starts_with(
            "projection orders, on.OrderNoted statement 1 reads every row of table orders"
        ),
        "{}",
        statement.message
    );

    // The plan on demand, run with ANALYZE.
    append(
        &store,
        &[Ev(
            "order-1",
            "OrderPlaced",
            r#"{"id": "o1", "customer": "c1", "total": 12.5}"#,
        )],
    )
    .await;
    let head = store.head_position().await.unwrap();
    read_side
        .wait_for_projection("orders", head, PATIENCE)
        .await
        .unwrap();
    let plan = read_side
        .plan(
            "orders_by_customer",
            &params_map(&[("customer", "c1")]),
            true,
        )
        .await
        .unwrap();
    assert!(plan.sql.contains("customer = $1"), "{}", plan.sql);
    assert!(
        plan.text.starts_with("QUERY PLAN\n`--Limit"),
        "{}",
        plan.text
    );
    assert!(plan.text.contains("on orders"), "{}", plan.text);
    assert_eq!(plan.analysis.map(|a| a.rows_returned), Some(1));
    assert_eq!(plan.warnings.len(), 1);
    let error = read_side
        .plan("orders_by_customer", &params_map(&[("limit", "x")]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReadSideError::InvalidParameter { .. }),
        "{error:?}"
    );
    read_side.shutdown().await;

    // The suggested indexes in setup, and a rebuild: no warning stands.
    let fixed = ORDERS_PLANNED.replace(
        r#"setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC, status TEXT)"]"#,
        r#"setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC, status TEXT)",
  "CREATE INDEX IF NOT EXISTS orders_by_customer_id ON orders (customer, id)"]"#,
    );
    let read_side = start_pg_read_side(&store, &database, &fixed, |_| {})
        .await
        .unwrap();
    read_side.rebuild("orders").await.unwrap();
    let query = read_side.query_status("orders_by_customer").unwrap();
    assert_eq!(query.plan_warnings, [], "{query:#?}");
    assert_eq!(
        read_side.projection("orders").await.unwrap().plan_warnings,
        []
    );
    let rows = read_side
        .query(
            "orders_by_customer",
            &params_map(&[("customer", "c1")]),
            Some(head),
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::Value::from(rows.rows),
        json!([{"id": "o1", "total": 12.5, "status": "placed"}])
    );
    read_side.shutdown().await;
}

const TYPES: &str = r#"
[[projections]]
name = "typed"
setup = ["CREATE TABLE typed (id TEXT PRIMARY KEY, n INTEGER, big BIGINT, amount NUMERIC, ratio DOUBLE PRECISION, flag BOOLEAN, doc JSONB, note TEXT, at TIMESTAMPTZ)"]
[projections.on]
Typed = ["INSERT INTO typed VALUES (:data.id, :data.n, :position, :data.amount, :data.ratio, :data.flag, :data.doc, :data.missing, :recorded_at)"]

[[queries]]
name = "typed"
sql = "SELECT id, n, big, amount, ratio, flag, doc, note, at IS NOT NULL AS has_time FROM typed WHERE n >= :min AND flag = :flag"
params = { min = "int", flag = "bool" }

[[queries]]
name = "unsupported"
sql = "SELECT interval '1 day' AS span"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_values_bind_as_text_and_columns_come_back_as_json_on_postgres() {
    let Some(harness) = PgHarness::start(TYPES).await else {
        return;
    };
    append_events(
        &harness.store,
        "typed-1",
        vec![new_event(
            "Typed",
            r#"{"id": "t1", "n": 7, "amount": 1234.5678, "ratio": 0.25, "flag": true, "doc": {"a": [1, "x"]}}"#,
            "{}",
        )],
    )
    .await;
    assert_eq!(
        harness
            .query("typed", &[("min", "1"), ("flag", "true")])
            .await,
        [
            json!({"id": "t1", "n": 7, "big": 1, "amount": 1234.5678, "ratio": 0.25, "flag": true,
                "doc": {"a": [1, "x"]}, "note": null, "has_time": true})
        ]
    );
    assert!(
        harness
            .query("typed", &[("min", "8"), ("flag", "true")])
            .await
            .is_empty()
    );
    let error = harness
        .read_side
        .query("unsupported", &HashMap::new(), None, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("span::text"), "{error}");
    harness.read_side.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_that_write_or_statements_that_return_rows_are_refused_on_postgres() {
    let Some(database) = shared_database().await else {
        return;
    };
    let store = connect_store(&database).await;
    let writes = r#"
[[projections]]
name = "p"
setup = ["CREATE TABLE t (a TEXT)"]
[projections.on]
E = ["INSERT INTO t VALUES (:data.a)"]

[[queries]]
name = "sneaky"
sql = "WITH gone AS (DELETE FROM t RETURNING a) SELECT a FROM gone"
"#;
    let error = start_pg_read_side(&store, &database, writes, |_| {})
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("would write"), "{error}");
    let returning = r#"
[[projections]]
name = "r"
setup = ["CREATE TABLE r (a TEXT)"]
[projections.on]
E = ["INSERT INTO r VALUES (:data.a) RETURNING a"]
"#;
    let error = start_pg_read_side(&store, &database, returning, |_| {})
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("returns rows"), "{error}");
}

/// A query served by a streaming replica: the rows the primary's projection wrote,
/// once the replica has replayed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_queries_with_the_projected_rows() {
    let Some(cluster) = PgCluster::start(true) else {
        return;
    };
    let database = cluster.create_database().await;
    assert!(database.replica_url.is_some());
    let harness = PgHarness::on(database, crate::read_models::ORDERS).await;
    let head = append(
        &harness.store,
        &[
            Ev(
                "order-1",
                "OrderPlaced",
                r#"{"id": "o1", "customer": "c1", "total": 30}"#,
            ),
            Ev(
                "order-2",
                "OrderPlaced",
                r#"{"id": "o2", "customer": "c1", "total": 12.5}"#,
            ),
            Ev("order-1", "OrderShipped", r#"{"id": "o1"}"#),
        ],
    )
    .await;
    harness.settle("orders").await;
    let expected = json!([
        {"id": "o1", "total": 30, "status": "shipped"},
        {"id": "o2", "total": 12.5, "status": "placed"},
    ]);
    let replica_reads =
        |read_side: &ReadSide| -> u64 { read_side.replica_reads().iter().map(|(_, n)| n).sum() };
    let deadline = Instant::now() + PATIENCE;
    let mut limit = 10;
    loop {
        // A new parameter each time: never an answer from the cache.
        limit += 1;
        let before = replica_reads(&harness.read_side);
        let result = harness
            .read_side
            .query(
                "orders_by_customer",
                &params_map(&[("customer", "c1"), ("limit", &limit.to_string())]),
                Some(head),
                PATIENCE,
            )
            .await
            .unwrap();
        assert!(!result.cached);
        assert_eq!(result.position, head);
        assert_eq!(serde_json::Value::from(result.rows), expected);
        if replica_reads(&harness.read_side) > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no query was served by the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replica that stops replaying is not asked for what it lacks: the primary
    // answers, with the new rows.
    let on_replica = sql(harness.database.replica_url.as_deref().unwrap()).await;
    on_replica
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let head = append(
        &harness.store,
        &[Ev(
            "order-3",
            "OrderPlaced",
            r#"{"id": "o3", "customer": "c1", "total": 1}"#,
        )],
    )
    .await;
    let before = replica_reads(&harness.read_side);
    let result = harness
        .read_side
        .query(
            "orders_by_customer",
            &params_map(&[("customer", "c1")]),
            Some(head),
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(result.rows.len(), 3, "{:?}", result.rows);
    assert_eq!(
        replica_reads(&harness.read_side),
        before,
        "served by the primary"
    );
    on_replica
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    harness.read_side.shutdown().await;
}
