//! PostgreSQL faults: read replicas in and out of rotation, and an outage of the
//! primary in the middle of a load. Each test runs its own primary and streaming
//! replica, since it stops and starts them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_core::{EventFilter, ExpectedVersion};
use cairn_store::conformance::{event, stream, whole_log};
use cairn_store::postgres::{PostgresOptions, PostgresStore, ReplicaStatus};
use cairn_store::testing::{PgCluster, TestDatabase};
use cairn_store::{AppendOutcome, AppendRequest, Direction, EventStore, StoreError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::postgres::append_one;

/// The process-wide metrics recorder, so that tests can look at what was exported.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder in this test binary")
    })
}

/// Waits (polling) until `condition` holds, failing the test after 30 s.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replica_options(database: &TestDatabase) -> PostgresOptions {
    PostgresOptions {
        replica_urls: vec![database.replica_url.clone().expect("a replica")],
        pool_size: 4,
        replica_pool_size: 4,
        replica_probe_interval: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(1),
        pool_wait_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(3),
        lock_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(3),
        ..PostgresOptions::new(&database.primary_url)
    }
}

fn replica(store: &PostgresStore) -> ReplicaStatus {
    store.replicas().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_a_replica_that_caught_up_and_fall_back_while_it_is_down() {
    let Some(cluster) = PgCluster::start(true) else {
        return;
    };
    let metrics = recorder();
    let database = cluster.create_database().await;
    let store = PostgresStore::connect(replica_options(&database))
        .await
        .unwrap();
    for _ in 0..10 {
        append_one(&store, "routed").await;
    }
    wait_until("the replica has replayed the head", || {
        let replica = replica(&store);
        replica.up && replica.replayed_position >= 10
    })
    .await;

    // Served by the replica, and complete.
    let before = replica(&store).reads;
    let log = store
        .read_all(1, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!((log.events.len(), log.head_position), (10, 10));
    let slice = store
        .read_stream(&stream("routed"), None, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(slice.events.len(), 10);
    assert_eq!(replica(&store).reads, before + 2);

    // Lag and pools are exported.
    let label = format!(
        "127.0.0.1:{}/{}",
        cluster.replica_port().unwrap(),
        database.name
    );
    wait_until("the replica metrics are exported", || {
        let text = metrics.render();
        text.contains(&format!(
            "cairn_replica_lag_positions{{replica=\"{label}\"}}"
        )) && text.contains(&format!("cairn_replica_up{{replica=\"{label}\"}} 1"))
            && text.contains("cairn_pool_connections{pool=\"primary\",state=\"idle\"}")
            && text.contains(&format!(
                "cairn_pool_connections{{pool=\"replica:{label}\",state=\"in_use\"}}"
            ))
            && text.contains("cairn_pool_waiting{pool=\"primary\"}")
    })
    .await;

    // The replica goes down: reads keep working on the primary at once.
    cluster.stop_replica();
    let log = store
        .read_all(1, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(log.events.len(), 10);
    wait_until("the replica is out of rotation", || !replica(&store).up).await;
    for _ in 0..5 {
        append_one(&store, "routed").await;
    }
    let reads_while_down = replica(&store).reads;
    let slice = store
        .read_stream(&stream("routed"), None, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(slice.events.len(), 15);
    assert_eq!(
        replica(&store).reads,
        reads_while_down,
        "served by the primary"
    );
    assert!(
        metrics
            .render()
            .contains(&format!("cairn_replica_up{{replica=\"{label}\"}} 0"))
    );

    // It comes back by itself, replays what it missed, and serves reads again.
    cluster.start_replica();
    wait_until("the replica is back in rotation", || {
        let replica = replica(&store);
        replica.up && replica.replayed_position >= 15
    })
    .await;
    let log = store
        .read_all(1, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(log.events.len(), 15);
    assert_eq!(replica(&store).reads, reads_while_down + 1);
}

/// What the load saw.
#[derive(Default)]
struct Load {
    /// `(position, event id)` of every acknowledged append.
    acknowledged: Mutex<Vec<(u64, uuid::Uuid)>>,
    unavailable: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_outage_refuses_writes_quickly_keeps_replica_reads_and_loses_nothing() {
    let Some(cluster) = PgCluster::start(true) else {
        return;
    };
    let database = cluster.create_database().await;
    let store = Arc::new(
        PostgresStore::connect(replica_options(&database))
            .await
            .unwrap(),
    );
    let load = Arc::new(Load::default());
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (store, load, gate, stop) = (
                Arc::clone(&store),
                Arc::clone(&load),
                Arc::clone(&gate),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    let pass = gate.read().await;
                    let new = event("E", "{}");
                    let id = new.id;
                    let started = Instant::now();
                    let outcome = store
                        .append(AppendRequest::single(
                            stream(&format!("load-{writer}")),
                            ExpectedVersion::Any,
                            vec![new],
                        ))
                        .await;
                    let took = started.elapsed();
                    drop(pass);
                    assert!(took < Duration::from_secs(10), "an append took {took:?}");
                    match outcome {
                        Ok(AppendOutcome::Committed(result)) => load
                            .acknowledged
                            .lock()
                            .unwrap()
                            .push((result.first_position, id)),
                        Err(StoreError::Unavailable(_)) => {
                            load.unavailable.fetch_add(1, Ordering::Relaxed);
                            // Back off a little before trying again.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    let acknowledged = || load.acknowledged.lock().unwrap().len();
    wait_until("the load has written", || acknowledged() >= 100).await;

    // Hold the load for a moment, so that the replica has all of it, then stop the
    // primary like a crash and let the load run on against the outage.
    let pause = gate.write().await;
    let head = store.head_position().await.unwrap();
    wait_until("the replica has replayed the head", || {
        let replica = replica(&store);
        replica.up && replica.replayed_position >= head
    })
    .await;
    cluster.stop_primary();
    drop(pause);
    let before_outage = acknowledged();

    // Writes answer Unavailable, and quickly.
    let started = Instant::now();
    let error = append_one_result(&store).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusing took {:?}",
        started.elapsed()
    );
    // Reads the replica can serve keep working.
    let log = store
        .read_all(1, &EventFilter::default(), 10_000)
        .await
        .unwrap();
    assert_eq!(log.events.len() as u64, head);
    store.stream_info(&stream("load-0")).await.unwrap();
    let unavailable_at_start = load.unavailable.load(Ordering::Relaxed);
    wait_until("the load meets the outage", || {
        load.unavailable.load(Ordering::Relaxed) >= unavailable_at_start + 20
    })
    .await;
    assert_eq!(
        acknowledged(),
        before_outage,
        "nothing acknowledged while down"
    );
    store.ready().await.unwrap_err();

    // The primary comes back: writes succeed again, without reconnecting by hand.
    cluster.start_primary();
    wait_until("writes succeed again", || {
        acknowledged() >= before_outage + 50
    })
    .await;
    store.ready().await.unwrap();
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.unwrap();
    }

    // Every acknowledged event is in the log, at its position; the log has no gap.
    let log = whole_log(store.as_ref()).await;
    for (index, event) in log.iter().enumerate() {
        assert_eq!(event.position, index as u64 + 1, "the log has a gap");
    }
    let acknowledged = load.acknowledged.lock().unwrap().clone();
    for (position, id) in &acknowledged {
        let event = log
            .get(*position as usize - 1)
            .unwrap_or_else(|| panic!("acknowledged position {position} is missing"));
        assert_eq!(event.id, *id, "acknowledged event at {position} is another");
    }
}

async fn append_one_result(store: &PostgresStore) -> Result<AppendOutcome, StoreError> {
    store
        .append(AppendRequest::single(
            stream("probe"),
            ExpectedVersion::Any,
            vec![event("E", "{}")],
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_serves_the_log_reads_it_has_replayed_far_enough_for() {
    let Some(cluster) = PgCluster::start(true) else {
        return;
    };
    let database = cluster.create_database().await;
    let store = PostgresStore::connect(replica_options(&database))
        .await
        .unwrap();
    for _ in 0..10 {
        append_one(&store, "lagging").await;
    }
    wait_until("the replica has replayed the head", || {
        let replica = replica(&store);
        replica.up && replica.replayed_position >= 10
    })
    .await;

    // The replica stops replaying; the primary goes on to position 20.
    let replica_url = database.replica_url.clone().expect("a replica");
    let on_replica = crate::postgres::sql(&replica_url).await;
    on_replica
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    for _ in 0..10 {
        append_one(&store, "lagging").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = replica(&store);
    assert!(status.up, "{status:?}");
    assert_eq!((status.replayed_position, status.lag), (10, 10));

    let all = EventFilter::default();
    let reads = |store: &PostgresStore| replica(store).reads;

    // A page that ends at or before what the replica replayed: served by it, the same
    // page the primary would answer.
    let before = reads(&store);
    let page = store.read_all(3, &all, 8).await.unwrap();
    let positions: Vec<u64> = page.events.iter().map(|event| event.position).collect();
    assert_eq!(positions, (3..=10).collect::<Vec<_>>());
    let event = store.read_event(7).await.unwrap().expect("event 7");
    assert_eq!(event.position, 7);
    assert_eq!(reads(&store), before + 2, "served by the lagging replica");

    // A page that needs more than the replica has, an event it has not replayed, a
    // filtered read and a stream read: the primary, complete.
    let before = reads(&store);
    let page = store.read_all(5, &all, 10).await.unwrap();
    let positions: Vec<u64> = page.events.iter().map(|event| event.position).collect();
    assert_eq!(positions, (5..=14).collect::<Vec<_>>());
    assert_eq!(
        store.read_event(15).await.unwrap().map(|e| e.position),
        Some(15)
    );
    let filtered = EventFilter {
        category: Some("lagging".into()),
        ..EventFilter::default()
    };
    assert_eq!(
        store.read_all(1, &filtered, 5).await.unwrap().events.len(),
        5
    );
    let slice = store
        .read_stream(&stream("lagging"), None, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(slice.events.len(), 20);
    assert_eq!(reads(&store), before, "all served by the primary");

    on_replica
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    wait_until("the replica caught up again", || {
        replica(&store).replayed_position >= 20
    })
    .await;
    let before = reads(&store);
    assert_eq!(store.read_all(1, &all, 100).await.unwrap().events.len(), 20);
    assert_eq!(reads(&store), before + 1);
}
