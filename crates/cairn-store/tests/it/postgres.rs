//! The PostgreSQL backend: the conformance suite, the migrations, and what only this
//! backend has (a stored head shared by instances, LISTEN/NOTIFY, expiring keys).
//!
//! Each test gets a fresh database in a throw-away PostgreSQL started by the tests
//! (`cairn_store::testing`); without PostgreSQL installed the tests say so and are
//! skipped, unless `CI` is set.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{EventFilter, ExpectedVersion};
use cairn_store::conformance::{event, stream};
use cairn_store::postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
use cairn_store::tail::LogTail;
use cairn_store::testing::{self, TestDatabase};
use cairn_store::{
    AppendOutcome, AppendRequest, AppendResult, EventStore, IdempotencyClaim, SharedStore,
    StoreError,
};

/// Options for a test store: small pools, the database's URL.
pub fn options(database: &TestDatabase) -> PostgresOptions {
    PostgresOptions {
        pool_size: 4,
        ..PostgresOptions::new(&database.primary_url)
    }
}

/// A store on a fresh database, or `None` when the PostgreSQL tests are skipped.
pub async fn pg_store() -> Option<(SharedStore, Box<dyn Any + Send>)> {
    let database = testing::shared_database().await?;
    let store = PostgresStore::connect(options(&database))
        .await
        .expect("connect to the test database");
    Some((Arc::new(store), Box::new(database)))
}

/// A plain connection to a test database, for looking at what the store wrote.
pub async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

pub async fn append_one(store: &dyn EventStore, name: &str) -> AppendResult {
    match store
        .append(AppendRequest::single(
            stream(name),
            ExpectedVersion::Any,
            vec![event("E", "{}")],
        ))
        .await
        .unwrap()
    {
        AppendOutcome::Committed(result) => result,
        AppendOutcome::Replayed { body } => panic!("replayed {body}"),
    }
}

// The whole conformance suite; each test returns early when PostgreSQL's binaries are
// missing locally (`pg_store` fails loudly instead when CI is set).
cairn_store::conformance_suite!(optional pg_store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let connects = (0..3).map(|_| PostgresStore::connect(options(&database)));
    let stores = futures::future::join_all(connects).await;
    for store in &stores {
        store
            .as_ref()
            .expect("every instance connects")
            .ready()
            .await
            .unwrap();
    }
    let client = sql(&database.primary_url).await;
    let rows = client
        .query(
            "SELECT version, name FROM cairn_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        applied,
        [
            (1, "0001_init".to_owned()),
            (2, "0002_consumer_groups".to_owned()),
            (3, "0003_group_owners".to_owned()),
            (4, "0004_head_revision".to_owned()),
            (5, "0005_events_stream_check".to_owned()),
        ]
    );
    assert_eq!(applied.len(), SCHEMA_VERSION);
    // Each migration leaves its tables.
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ANY($1)",
            &[&vec![
                "cairn_head",
                "streams",
                "events",
                "event_tags",
                "idempotency_keys",
                "consumer_groups",
                "parked_events",
            ]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 7);
    // 0003: a group's owner and its fencing epoch.
    let owner_columns: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_name = 'consumer_groups' AND column_name IN ('owner_epoch', 'owner_url')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner_columns, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_cairn_is_refused() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    drop(PostgresStore::connect(options(&database)).await.unwrap());
    sql(&database.primary_url)
        .await
        .execute(
            "INSERT INTO cairn_schema_migrations (version, name) VALUES (99, 'future')",
            &[],
        )
        .await
        .unwrap();
    let Err(error) = PostgresStore::connect(options(&database)).await else {
        panic!("connected to a database of schema version 99")
    };
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("newer")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_reconnecting_and_positions_continue() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    {
        let store = PostgresStore::connect(options(&database)).await.unwrap();
        append_one(&store, "a").await;
        append_one(&store, "b").await;
    }
    let store = PostgresStore::connect(options(&database)).await.unwrap();
    assert_eq!(store.head_position().await.unwrap(), 2);
    assert_eq!(*store.watch_head().borrow(), 2);
    let result = append_one(&store, "a").await;
    assert_eq!(
        (result.first_position, result.streams[0].first_version),
        (3, 1)
    );
    let log = store
        .read_all(1, &EventFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(log.events.len(), 3);
    assert!(
        log.events
            .windows(2)
            .all(|w| w[0].recorded_at <= w[1].recorded_at)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_expire_after_the_window_and_survive_reconnecting() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let request = |key: &str, fingerprint| AppendRequest {
        idempotency: Some(IdempotencyClaim {
            key: key.into(),
            fingerprint: [fingerprint; 32],
            render: |r: &AppendResult| format!("{{\"p\":{}}}", r.first_position),
        }),
        ..AppendRequest::single(stream("x"), ExpectedVersion::Any, vec![event("E", "{}")])
    };
    {
        let store = PostgresStore::connect(options(&database)).await.unwrap();
        store.append(request("durable", 9)).await.unwrap();
    }
    let store = PostgresStore::connect(options(&database)).await.unwrap();
    assert_eq!(
        store.append(request("durable", 9)).await.unwrap(),
        AppendOutcome::Replayed {
            body: "{\"p\":1}".into()
        }
    );
    drop(store);
    // With a zero window a key is forgotten at once: another request may use it.
    let forgetful = PostgresStore::connect(PostgresOptions {
        idempotency_window: Duration::ZERO,
        ..options(&database)
    })
    .await
    .unwrap();
    assert!(matches!(
        forgetful.append(request("durable", 1)).await.unwrap(),
        AppendOutcome::Committed(_)
    ));
    assert_eq!(forgetful.head_position().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_waiting_batch_see_its_commit() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let store: SharedStore = Arc::new(PostgresStore::connect(options(&database)).await.unwrap());
    let keyed = |key: &str, expected| AppendRequest {
        idempotency: Some(IdempotencyClaim {
            key: key.into(),
            fingerprint: [7; 32],
            render: |r: &AppendResult| format!("{{\"p\":{}}}", r.first_position),
        }),
        ..AppendRequest::single(stream("overlap"), expected, vec![event("E", "{}")])
    };
    // Another instance's transaction holds the head lock: the first batch queues on it.
    let other = sql(&database.primary_url).await;
    other
        .batch_execute("BEGIN; SELECT position FROM cairn_head WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let first = tokio::spawn({
        let store = Arc::clone(&store);
        let request = keyed("first", ExpectedVersion::NoStream);
        async move { store.append(request).await }
    });
    let watcher = sql(&database.primary_url).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // These queue behind the waiting batch; their own batch's lookups must see its
    // commit: the replayed key, the stream it created.
    let retried = tokio::spawn({
        let store = Arc::clone(&store);
        let request = keyed("first", ExpectedVersion::NoStream);
        async move { store.append(request).await }
    });
    let racing = tokio::spawn({
        let store = Arc::clone(&store);
        let request = keyed("racing", ExpectedVersion::NoStream);
        async move { store.append(request).await }
    });
    let following = tokio::spawn({
        let store = Arc::clone(&store);
        let request = keyed("following", ExpectedVersion::Exact(0));
        async move { store.append(request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    other.batch_execute("COMMIT").await.unwrap();

    let AppendOutcome::Committed(first) = first.await.unwrap().unwrap() else {
        panic!("the first append was not committed");
    };
    assert_eq!(first.first_position, 1);
    assert_eq!(
        retried.await.unwrap().unwrap(),
        AppendOutcome::Replayed {
            body: "{\"p\":1}".into()
        }
    );
    let racing = racing.await.unwrap();
    assert!(
        matches!(
            racing,
            // Version 0, or 1 when the append expecting 0 came first in its batch.
            Err(StoreError::WrongExpectedVersion {
                actual: Some(0 | 1),
                ..
            })
        ),
        "a second NoStream append to the stream must be refused: {racing:?}"
    );
    let AppendOutcome::Committed(followed) = following.await.unwrap().unwrap() else {
        panic!("the append expecting version 0 was not committed");
    };
    assert_eq!(
        (followed.first_position, followed.streams[0].first_version),
        (2, 1)
    );
    assert_eq!(store.head_position().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_paths_use_their_indexes() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    drop(PostgresStore::connect(options(&database)).await.unwrap());
    let client = sql(&database.primary_url).await;
    // The tables are empty: forbid sequential scans so the plan shows what the indexes
    // can do.
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    for (query, expected) in [
        (
            "SELECT * FROM events e WHERE e.stream_id = 1 AND e.version >= 0 ORDER BY e.version LIMIT 10",
            "events_by_stream",
        ),
        (
            "SELECT * FROM events e WHERE e.position >= 5 ORDER BY e.position LIMIT 10",
            "events_pkey",
        ),
        (
            "SELECT * FROM events e WHERE e.position >= 5 AND e.category = 'order' ORDER BY e.position LIMIT 10",
            "events_by_category",
        ),
        (
            "SELECT * FROM events e WHERE e.position >= 5 AND e.type = 'A' ORDER BY e.position LIMIT 10",
            "events_by_type",
        ),
        (
            "SELECT position FROM event_tags WHERE tag = 'x' AND position > 5",
            "event_tags_pkey",
        ),
        (
            "SELECT * FROM events WHERE id = '00000000-0000-0000-0000-000000000000'",
            "events_by_id",
        ),
        ("SELECT * FROM streams WHERE name = 'a'", "streams_name_key"),
        (
            "SELECT * FROM streams WHERE name >= 'order-' AND name < 'order.' ORDER BY name LIMIT 10",
            "streams_name_key",
        ),
        (
            "SELECT * FROM idempotency_keys WHERE key = 'k'",
            "idempotency_keys_pkey",
        ),
    ] {
        let plan = testing::explain(&client, &format!("EXPLAIN {query}"))
            .await
            .unwrap()
            .join("\n");
        assert!(plan.contains(expected), "{query}\nplan:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{query}\nplan:\n{plan}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_comes_back_without_a_gap() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let follower: SharedStore = Arc::new(PostgresStore::connect(options(&database)).await.unwrap());
    let writer = PostgresStore::connect(options(&database)).await.unwrap();
    let mut tail = LogTail::new(Arc::clone(&follower), 1, EventFilter::default());
    append_one(&writer, "before").await;
    let first = tail.next_batch().await.unwrap();
    assert_eq!(first[0].position, 1);
    // Cut every LISTEN connection of this database, then write while they are gone.
    let client = sql(&database.primary_url).await;
    let cut: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cut >= 1, "no LISTEN connection found");
    for _ in 0..20 {
        append_one(&writer, "during").await;
    }
    // The follower hears of them (by reconnecting and catching up), in order.
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let batch = tokio::time::timeout(Duration::from_secs(20), tail.next_batch())
            .await
            .expect("the follower caught up after its LISTEN connection was cut")
            .unwrap();
        seen.extend(batch.iter().map(|e| e.position));
    }
    assert_eq!(seen, (2..=21).collect::<Vec<_>>());
    let mut head = follower.watch_head();
    tokio::time::timeout(Duration::from_secs(20), head.wait_for(|head| *head >= 21))
        .await
        .expect("the follower's head caught up")
        .unwrap();
}

#[tokio::test]
async fn the_database_size_and_the_wait_for_a_connection_are_measured() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 1.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    // A current-thread runtime: the store's reads record on this thread.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let Some((store, _database)) = pg_store().await else {
        return;
    };
    append_one(&*store, "sized-1").await;
    let size = store
        .storage_size()
        .await
        .unwrap()
        .expect("PostgreSQL knows its size");
    assert!(size.total_bytes > 1024 * 1024, "{size:?}");
    assert_eq!(size.wal_bytes, None);
    store
        .read_stream(
            &stream("sized-1"),
            None,
            cairn_store::Direction::Forward,
            10,
        )
        .await
        .unwrap();
    let text = handle.render();
    let waits = text
        .lines()
        .find_map(|line| line.strip_prefix(r#"cairn_pool_wait_seconds_count{pool="primary"} "#))
        .and_then(|count| count.parse::<f64>().ok());
    assert!(waits.is_some_and(|count| count >= 2.0), "{text}");
}

/// A writer decides from what it remembers only while nothing else writes: another
/// instance's appends and deletes are seen, and a stream, key or event id it never saw
/// is looked up when its insert finds it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_decides_from_memory_only_what_it_can_know() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let a = PostgresStore::connect(options(&database)).await.unwrap();
    let b = PostgresStore::connect(options(&database)).await.unwrap();
    let append = |expected, name: &str| {
        AppendRequest::single(stream(name), expected, vec![event("E", "{}")])
    };
    let version = |outcome: Result<AppendOutcome, StoreError>| match outcome {
        Ok(AppendOutcome::Committed(result)) => result.streams[0].last_version,
        other => panic!("not committed: {other:?}"),
    };

    // Enough one-request batches on `a` alone that it decides from memory.
    for v in 0..4 {
        let expected = if v == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(v - 1)
        };
        assert_eq!(version(a.append(append(expected, "s")).await), v);
    }
    // Another instance appends: `a` must see version 4, not what it remembers.
    assert_eq!(
        version(b.append(append(ExpectedVersion::Exact(3), "s")).await),
        4
    );
    assert!(matches!(
        a.append(append(ExpectedVersion::Exact(3), "s")).await,
        Err(StoreError::WrongExpectedVersion {
            actual: Some(4),
            ..
        })
    ));
    assert_eq!(
        version(a.append(append(ExpectedVersion::Exact(4), "s")).await),
        5
    );
    assert_eq!(
        version(a.append(append(ExpectedVersion::Exact(5), "s")).await),
        6
    );
    // A delete moves no position, but `a` sees it too.
    b.delete_stream(&stream("s"), ExpectedVersion::Exact(6))
        .await
        .unwrap();
    assert!(matches!(
        a.append(append(ExpectedVersion::Any, "s")).await,
        Err(StoreError::StreamDeleted(_))
    ));

    // A writer that starts later never saw "old".
    assert_eq!(
        version(b.append(append(ExpectedVersion::Any, "old")).await),
        0
    );
    let c = PostgresStore::connect(options(&database)).await.unwrap();
    for v in 0..3 {
        assert_eq!(
            version(c.append(append(ExpectedVersion::Any, "new")).await),
            v
        );
    }
    // Taken for new, found stored: looked up and decided on what is stored.
    assert!(matches!(
        c.append(append(ExpectedVersion::NoStream, "old")).await,
        Err(StoreError::WrongExpectedVersion {
            actual: Some(0),
            ..
        })
    ));
    assert_eq!(
        version(c.append(append(ExpectedVersion::Any, "old")).await),
        1
    );
    assert_eq!(
        version(c.append(append(ExpectedVersion::Any, "new")).await),
        3
    );
    // An idempotency key and an event id it wrote itself but does not remember.
    let keyed = AppendRequest {
        idempotency: Some(IdempotencyClaim {
            key: "remembered-nowhere".into(),
            fingerprint: [3; 32],
            render: |r: &AppendResult| format!("{{\"p\":{}}}", r.first_position),
        }),
        ..append(ExpectedVersion::Any, "new")
    };
    let AppendOutcome::Committed(first) = c.append(keyed.clone()).await.unwrap() else {
        panic!("the keyed append was replayed the first time");
    };
    assert_eq!(
        c.append(keyed).await.unwrap(),
        AppendOutcome::Replayed {
            body: format!("{{\"p\":{}}}", first.first_position)
        }
    );
    let resent = append(ExpectedVersion::Any, "new");
    let AppendOutcome::Committed(original) = c.append(resent.clone()).await.unwrap() else {
        panic!("replayed");
    };
    assert_eq!(
        c.append(resent).await.unwrap(),
        AppendOutcome::Committed(original)
    );

    // Nothing was written twice, and the log has no gap.
    let client = sql(&database.primary_url).await;
    let row = client
        .query_one(
            "SELECT count(*), min(position), max(position), (SELECT revision FROM cairn_head)
             FROM events",
            &[],
        )
        .await
        .unwrap();
    let (count, min, max, revision): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((count, min, max), (15, 1, 15));
    let orphans: i64 = client
        .query_one(
            "SELECT count(*) FROM events e LEFT JOIN streams s ON s.stream_id = e.stream_id
             WHERE s.stream_id IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "every event's stream row exists");
    // Every writing transaction moved the revision: 15 appends and a delete.
    assert_eq!(revision, 16);
}
