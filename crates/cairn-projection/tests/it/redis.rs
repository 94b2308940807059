//! The shared query cache (`--redis-url`) with a real Redis: two read sides on one log
//! share results through it, a projection that advances invalidates them, and a Redis
//! that dies (or comes back) never changes an answer.
//!
//! `cairn_projection::testing` starts its own `redis-server` (the Debian binary) on a
//! free port; without the binary the tests are skipped with a loud message, unless `CI`
//! is set: then they fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_projection::testing::RedisServer;
use cairn_projection::{ReadSide, RedisCacheOptions};
use tempfile::TempDir;

use crate::{Ev, Harness, PATIENCE, params_map, start_read_side};

const ORDERS: &str = r#"
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

/// Two read sides on one event store (each with its own `readmodels.db`), both with
/// the shared cache on `redis`.
struct TwoInstances {
    a: Harness,
    b: Arc<ReadSide>,
    _b_dir: TempDir,
}

impl TwoInstances {
    async fn start(redis: &RedisServer) -> Self {
        let url = redis.url();
        let tune = |options: &mut cairn_projection::ReadSideOptions| {
            options.redis = Some(RedisCacheOptions::new(url.clone()));
        };
        let a = Harness::start_with(ORDERS, tune).await;
        let b_dir = tempfile::tempdir().unwrap();
        let b = start_read_side(&a.store, &b_dir, ORDERS, tune)
            .await
            .expect("the second read side starts");
        Self {
            a,
            b,
            _b_dir: b_dir,
        }
    }

    /// Appends and waits until both read sides reflect it.
    async fn place(&self, id: &str, customer: &str, total: u32) -> u64 {
        let data = format!(r#"{{"id": "{id}", "customer": "{customer}", "total": {total}}}"#);
        let position = self
            .a
            .append(&[Ev(&format!("order-{id}"), "OrderPlaced", &data)])
            .await;
        for read_side in [&self.a.read_side, &self.b] {
            read_side
                .wait_for_projection("orders", position, PATIENCE)
                .await
                .expect("the projection catches up");
        }
        position
    }

    async fn shutdown(self) {
        self.a.read_side.shutdown().await;
        self.b.shutdown().await;
    }
}

async fn ask(read_side: &ReadSide, customer: &str) -> cairn_projection::QueryResult {
    read_side
        .query(
            "by_customer",
            &params_map(&[("customer", customer)]),
            None,
            Duration::ZERO,
        )
        .await
        .expect("the query answers")
}

fn ids(result: &cairn_projection::QueryResult) -> Vec<String> {
    result
        .rows
        .iter()
        .map(|row| row["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_read_sides_share_results_and_an_advance_invalidates_them() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let instances = TwoInstances::start(&redis).await;
    let p1 = instances.place("o1", "c1", 10).await;

    // A computes and shares; B, which never ran the query, is served A's rows.
    let first = ask(&instances.a.read_side, "c1").await;
    assert!(!first.cached);
    assert_eq!(redis.keys().unwrap(), 1);
    let shared = ask(&instances.b, "c1").await;
    assert!(shared.cached, "B is served from Redis");
    assert_eq!((shared.rows.clone(), shared.position), (first.rows, p1));
    // Other parameters are other keys.
    assert!(!ask(&instances.b, "c2").await.cached);

    // The projection advances: neither instance is served the rows from before, not
    // even B, whose own cache never had them, while Redis still holds them.
    let p2 = instances.place("o2", "c1", 20).await;
    let after = ask(&instances.b, "c1").await;
    assert!(
        !after.cached,
        "a result from before the advance is not served"
    );
    assert_eq!(
        (ids(&after), after.position),
        (vec!["o1".into(), "o2".into()], p2)
    );
    // What B computed at the new positions is what A is served now.
    let on_a = ask(&instances.a.read_side, "c1").await;
    assert!(on_a.cached);
    assert_eq!((on_a.rows, on_a.position), (after.rows, p2));
    instances.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_is_a_miss_and_sharing_resumes_when_it_returns() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let instances = TwoInstances::start(&redis).await;
    instances.place("o1", "c1", 10).await;
    assert!(!ask(&instances.a.read_side, "c1").await.cached);
    assert!(ask(&instances.b, "c1").await.cached);

    // Redis dies mid-test: every query still answers, and answers right.
    redis.kill();
    let p2 = instances.place("o2", "c1", 20).await;
    for read_side in [&instances.a.read_side, &instances.b] {
        let started = Instant::now();
        let result = ask(read_side, "c1").await;
        assert!(!result.cached);
        assert_eq!(
            (ids(&result), result.position),
            (vec!["o1".into(), "o2".into()], p2)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a dead Redis costs a query little: {:?}",
            started.elapsed()
        );
        // The in-process tier still works on its own.
        assert!(ask(read_side, "c1").await.cached);
    }
    let p3 = instances.place("o3", "c2", 30).await;
    let without = ask(&instances.b, "c2").await;
    assert_eq!((ids(&without), without.position), (vec!["o3".into()], p3));

    // Redis comes back (empty): after the back-off, A's results reach B again.
    redis.resume();
    let deadline = Instant::now() + PATIENCE;
    let mut customer = 0;
    loop {
        // A fresh parameter each round, so that neither instance has it in memory.
        customer += 1;
        let name = format!("x{customer}");
        let computed = ask(&instances.a.read_side, &name).await;
        assert!(!computed.cached);
        if ask(&instances.b, &name).await.cached {
            break;
        }
        assert!(Instant::now() < deadline, "sharing did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(redis.keys().unwrap() >= 1);
    instances.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_from_the_start_changes_nothing() {
    // A port nobody listens on.
    let port = cairn_projection::testing::free_port();
    let harness = Harness::start_with(ORDERS, |options| {
        options.redis = Some(RedisCacheOptions::new(format!("redis://127.0.0.1:{port}")));
    })
    .await;
    let position = harness
        .append(&[Ev(
            "order-o1",
            "OrderPlaced",
            r#"{"id": "o1", "customer": "c1", "total": 1}"#,
        )])
        .await;
    harness.settle("orders").await;
    let result = harness
        .try_query(
            "by_customer",
            &[("customer", "c1")],
            Some(position),
            PATIENCE,
        )
        .await
        .unwrap();
    assert_eq!(
        (ids(&result), result.position),
        (vec!["o1".into()], position)
    );
    assert!(
        harness
            .query("by_customer", &[("customer", "c1")])
            .await
            .cached
    );

    // A URL that is not Redis's is a configuration error, without the password.
    let error = start_read_side(&harness.store, &tempfile::tempdir().unwrap(), ORDERS, |o| {
        o.redis = Some(RedisCacheOptions::new("http://:s3cret@cache"));
    })
    .await
    .err()
    .expect("refused");
    assert!(!error.to_string().contains("s3cret"), "{error}");
    harness.read_side.shutdown().await;
}
