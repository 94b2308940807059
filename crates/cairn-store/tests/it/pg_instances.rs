//! Several Cairn instances on one PostgreSQL database: positions stay gapless and in
//! commit order for every reader, whichever instance wrote and whichever reads.
//!
//! This is the test for the bug other PostgreSQL event stores shipped (a reader skips
//! an event whose sequence number committed after a higher one): 3 instances, each
//! with its own pools and writer, 6 writers appending concurrently through them, and
//! two readers following the log through other instances (a `LogTail` on a 4th
//! instance, and a `read_all` poller). Each reader must see every position exactly
//! once, in order, with no gap at any time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{EventFilter, ExpectedVersion};
use cairn_store::conformance::{event, stream, whole_log};
use cairn_store::postgres::{PostgresOptions, PostgresStore};
use cairn_store::tail::LogTail;
use cairn_store::testing::TestDatabase;
use cairn_store::{
    AppendOutcome, AppendRequest, AppendResult, Direction, IdempotencyClaim, SharedStore,
    StoreError, testing,
};

use crate::postgres::options;

const WRITERS: usize = 6;
const ROUNDS: usize = 40;
/// Each writer appends 1, 2 or 3 events a round.
const PER_WRITER: u64 = {
    let mut total = 0;
    let mut round = 0;
    while round < ROUNDS {
        total += (round % 3) as u64 + 1;
        round += 1;
    }
    total
};
const TOTAL: u64 = WRITERS as u64 * PER_WRITER;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_six_writers_readers_see_every_position_once_in_order() {
    six_writers_on_three_instances(None).await;
}

/// The same with every batch an instance can decide from memory overlapping the one
/// before it (`overlap_min_events` 1), so that instances' overlapped commits meet each
/// other's and their looked-up ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapped_batches_keep_every_position_once_in_order() {
    six_writers_on_three_instances(Some(1)).await;
}

async fn six_writers_on_three_instances(overlap_min_events: Option<usize>) {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let mut options = options(&database);
    if let Some(min) = overlap_min_events {
        options.overlap_min_events = min;
    }
    let mut instances: Vec<SharedStore> = Vec::new();
    for _ in 0..4 {
        instances.push(Arc::new(
            PostgresStore::connect(options.clone()).await.unwrap(),
        ));
    }
    let reader_instance = Arc::clone(&instances[3]);

    // The tail follows the log on the 4th instance, which never writes: everything
    // it sees came to it by NOTIFY and reads of the database.
    let tail_reader = tokio::spawn(async move {
        let mut tail = LogTail::new(reader_instance, 1, EventFilter::default());
        let mut seen = Vec::new();
        while (seen.len() as u64) < TOTAL {
            let batch = tokio::time::timeout(Duration::from_secs(30), tail.next_batch())
                .await
                .expect("the tail kept up")
                .unwrap();
            for event in batch {
                assert_eq!(
                    event.position,
                    seen.len() as u64 + 1,
                    "the tail saw a gap or a reordering"
                );
                seen.push(event);
            }
        }
        seen
    });
    // A poller reads pages of the log as fast as it can through the 1st instance: the
    // reader that skips a late-committing event in sequence-based stores.
    let poller = {
        let store = Arc::clone(&instances[0]);
        tokio::spawn(async move {
            let mut next = 1;
            let mut pages = 0u64;
            while next <= TOTAL {
                let slice = store
                    .read_all(next, &EventFilter::default(), 50)
                    .await
                    .unwrap();
                for event in &slice.events {
                    assert_eq!(event.position, next, "the poller saw a gap or a reordering");
                    next += 1;
                }
                assert!(slice.head_position >= next - 1);
                pages += 1;
                if slice.events.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            pages
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = Arc::clone(&instances[writer % 3]);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for round in 0..ROUNDS {
                    let events: Vec<_> = (0..=(round % 3)).map(|_| event("E", "{}")).collect();
                    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
                    // Streams shared by writers on different instances, so versions
                    // interleave across instances too.
                    let name = format!("shared-{}", round % 5);
                    let outcome = store
                        .append(AppendRequest::single(
                            stream(&name),
                            ExpectedVersion::Any,
                            events,
                        ))
                        .await
                        .unwrap();
                    let AppendOutcome::Committed(result) = outcome else {
                        panic!("replayed")
                    };
                    let positions = result.first_position..=result.last_position;
                    assert_eq!(positions.clone().count(), ids.len());
                    acknowledged.extend(positions.zip(ids));
                }
                acknowledged
            })
        })
        .collect();

    let mut acknowledged = HashMap::new();
    for writer in writers {
        for (position, id) in writer.await.unwrap() {
            assert!(
                acknowledged.insert(position, id).is_none(),
                "position {position} acknowledged twice"
            );
        }
    }
    assert_eq!(acknowledged.len() as u64, TOTAL);
    assert_eq!(
        acknowledged.keys().copied().max(),
        Some(TOTAL),
        "acknowledged positions are 1..=TOTAL"
    );

    let seen = tail_reader.await.unwrap();
    let pages = poller.await.unwrap();
    assert!(pages > 1);
    // The tail saw exactly the acknowledged events, each at its acknowledged position.
    for event in &seen {
        assert_eq!(acknowledged.get(&event.position), Some(&event.id));
    }
    // Every instance reads the same gapless log, in non-decreasing recorded_at.
    for instance in &instances {
        let log = whole_log(instance.as_ref()).await;
        let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
        assert_eq!(positions, (1..=TOTAL).collect::<Vec<_>>());
        assert!(log.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));
        assert_eq!(log, seen);
        let mut head = instance.watch_head();
        tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h == TOTAL))
            .await
            .expect("every instance's head reaches the end")
            .unwrap();
    }
    // Versions are contiguous per stream although three instances wrote each stream.
    let mut ids_seen = HashSet::new();
    for k in 0..5 {
        let slice = instances[2]
            .read_stream(
                &stream(&format!("shared-{k}")),
                None,
                Direction::Forward,
                1000,
            )
            .await
            .unwrap();
        for (index, event) in slice.events.iter().enumerate() {
            assert_eq!(event.version, index as u64);
            assert!(ids_seen.insert(event.id));
        }
    }
    assert_eq!(ids_seen.len() as u64, TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_per_expected_version_across_instances() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let mut instances: Vec<SharedStore> = Vec::new();
    for _ in 0..3 {
        instances.push(Arc::new(
            PostgresStore::connect(options(&database)).await.unwrap(),
        ));
    }
    crate::postgres::append_one(instances[0].as_ref(), "race").await;
    let racers: Vec<_> = (0..12)
        .map(|i| {
            let store = Arc::clone(&instances[i % 3]);
            tokio::spawn(async move {
                store
                    .append(AppendRequest::single(
                        stream("race"),
                        ExpectedVersion::Exact(0),
                        vec![event("E", "{}")],
                    ))
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => winners += 1,
            Err(StoreError::WrongExpectedVersion {
                actual: Some(1), ..
            }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    let info = instances[1].stream_info(&stream("race")).await.unwrap();
    assert_eq!((info.version, info.position), (1, 2));
}

/// A store on `database` that flies every batch it can decide from memory, however
/// small (`overlap_min_events` 1).
async fn flying_store(database: &TestDatabase) -> SharedStore {
    Arc::new(
        PostgresStore::connect(PostgresOptions {
            overlap_min_events: 1,
            ..options(database)
        })
        .await
        .unwrap(),
    )
}

/// One event appended to `name` under an idempotency key; the answer it stores is
/// `{"p":<first position>}`.
fn keyed_append(key: &str, fingerprint: [u8; 32], name: &str) -> AppendRequest {
    AppendRequest {
        idempotency: Some(IdempotencyClaim {
            key: key.into(),
            fingerprint,
            render: |r: &AppendResult| format!("{{\"p\":{}}}", r.first_position),
        }),
        ..AppendRequest::single(stream(name), ExpectedVersion::Any, vec![event("E", "{}")])
    }
}

/// A flying store on a fresh database, with two commits made through it (to `warm`),
/// so that it decides the next batches from memory, and another session, which holds
/// the write turn: the next flights wait in the air. `None` when the PostgreSQL tests
/// are skipped.
async fn flights_held(
    warm: [&str; 2],
) -> Option<(SharedStore, TestDatabase, tokio_postgres::Client)> {
    let database = testing::shared_database().await?;
    let store = flying_store(&database).await;
    for name in warm {
        crate::postgres::append_one(store.as_ref(), name).await;
    }
    let other = crate::postgres::sql(&database.primary_url).await;
    hold_the_write_turn(&other).await;
    Some((store, database, other))
}

/// Sends `request` in a task of its own and waits until `in_the_air` flights wait for the
/// write turn, this one's included.
async fn fly(
    store: &SharedStore,
    request: AppendRequest,
    other: &tokio_postgres::Client,
    in_the_air: i64,
) -> tokio::task::JoinHandle<Result<AppendOutcome, StoreError>> {
    let store = Arc::clone(store);
    let append = tokio::spawn(async move { store.append(request).await });
    flights_waiting(other, in_the_air).await;
    append
}

/// Holds the write turn (`writer/flight.rs`) on `client`'s session: flights wait for it
/// before they write.
async fn hold_the_write_turn(client: &tokio_postgres::Client) {
    client
        .batch_execute("SELECT pg_advisory_lock(7161120822688481282)")
        .await
        .unwrap();
}

async fn release_the_write_turn(client: &tokio_postgres::Client) {
    client
        .batch_execute("SELECT pg_advisory_unlock(7161120822688481282)")
        .await
        .unwrap();
}

/// Waits until `count` flights wait for the write turn (only flights take it shared).
async fn flights_waiting(client: &tokio_postgres::Client, count: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND mode = 'ShareLock' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} flights in the air, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One instance whose writers keep its queue full, with every batch it can decide from
/// memory overlapping the one before it (`overlap_min_events` 1): batches to streams
/// of their own overlap, batches sharing a stream or an idempotency key wait for the
/// one before them, and a key sent twice at once is committed once and replayed once.
/// Every acknowledged event is in the log once, at its position, with no gap, and
/// each stream's versions follow the expected versions its writer sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapped_batches_on_one_instance_keep_the_log_whole() {
    const TASKS: usize = 12;
    const ROUNDS: u64 = 30;
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let store = flying_store(&database).await;
    let keyed = |key: String| keyed_append(&key, [5; 32], "keyed");
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let name = format!("own-{task}");
                let mut version: Option<u64> = None;
                for round in 0..ROUNDS {
                    let events: Vec<_> = (0..=round % 4).map(|_| event("E", "{}")).collect();
                    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
                    let expected =
                        version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                    let outcome = store
                        .append(AppendRequest::single(stream(&name), expected, events))
                        .await
                        .unwrap_or_else(|error| panic!("{name}, round {round}: {error}"));
                    let AppendOutcome::Committed(result) = outcome else {
                        panic!("{name}, round {round}: replayed")
                    };
                    assert_eq!(
                        result.streams[0].first_version,
                        version.map_or(0, |v| v + 1),
                        "{name}, round {round}"
                    );
                    version = Some(result.streams[0].last_version);
                    acknowledged.extend((result.first_position..=result.last_position).zip(ids));
                    if round % 5 == 0 {
                        // The same keyed request twice at once.
                        let key = format!("key-{task}-{round}");
                        let request = keyed(key.clone());
                        let id = request.events[0].1.id;
                        let (first, second) =
                            tokio::join!(store.append(request.clone()), store.append(request));
                        let mut committed = None;
                        let mut replayed = None;
                        for outcome in [first, second] {
                            match outcome.unwrap_or_else(|error| panic!("{key}: {error}")) {
                                AppendOutcome::Committed(result) => {
                                    assert!(committed.is_none(), "{key} committed twice");
                                    committed = Some(result);
                                }
                                AppendOutcome::Replayed { body } => replayed = Some(body),
                            }
                        }
                        let committed = committed.expect("one of the two commits");
                        assert_eq!(
                            replayed,
                            Some(format!("{{\"p\":{}}}", committed.first_position)),
                            "{key}"
                        );
                        acknowledged.push((committed.first_position, id));
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = HashMap::new();
    for task in tasks {
        for (position, id) in task.await.unwrap() {
            assert!(
                acknowledged.insert(position, id).is_none(),
                "position {position} acknowledged twice"
            );
        }
    }
    let total = acknowledged.len() as u64;
    let log = whole_log(store.as_ref()).await;
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>());
    for event in &log {
        assert_eq!(acknowledged.get(&event.position), Some(&event.id));
    }
    assert!(log.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));
    for task in 0..TASKS {
        let slice = store
            .read_stream(
                &stream(&format!("own-{task}")),
                None,
                Direction::Forward,
                1000,
            )
            .await
            .unwrap();
        let versions: Vec<u64> = slice.events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>());
        assert_eq!(
            versions.len() as u64,
            (0..ROUNDS).map(|r| r % 4 + 1).sum::<u64>()
        );
    }
}

/// A flight whose rows fail (an idempotency key it assumed absent is there after all)
/// takes down the flight behind it, which was decided as if the first had committed:
/// both batches are committed again from a lookup, in order. Both flights are held in
/// the air on the write turn (an advisory lock another session holds) until both wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flight_takes_the_one_behind_it_down_and_both_commit_again() {
    let Some((store, _database, other)) = flights_held(["warm-1", "warm-2"]).await else {
        return;
    };
    let keyed = keyed_append("stored-meanwhile", [6; 32], "first");
    let first = fly(&store, keyed, &other, 1).await;
    let behind = event("B", "{}");
    let behind_id = behind.id;
    let request = AppendRequest::single(stream("second"), ExpectedVersion::NoStream, vec![behind]);
    let second = fly(&store, request, &other, 2).await;
    // The key the first flight assumed absent, stored meanwhile with the same
    // fingerprint, then the write turn released.
    other
        .execute(
            "INSERT INTO idempotency_keys (key, fingerprint, response, created_at)
             VALUES ('stored-meanwhile', $1, '{\"p\":42}', $2)",
            &[&vec![6u8; 32], &cairn_core::now_micros()],
        )
        .await
        .unwrap();
    release_the_write_turn(&other).await;

    match first.await.unwrap().unwrap() {
        AppendOutcome::Replayed { body } => assert_eq!(body, "{\"p\":42}"),
        AppendOutcome::Committed(result) => panic!("committed over a stored key: {result:?}"),
    }
    let AppendOutcome::Committed(result) = second.await.unwrap().unwrap() else {
        panic!("the batch behind was replayed");
    };
    // The first batch wrote nothing, so the second continues the head left by the
    // warm-up commits.
    assert_eq!((result.first_position, result.last_position), (3, 3));
    let log = whole_log(store.as_ref()).await;
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3]);
    assert_eq!(log[2].id, behind_id);
    // Both batches are in the store's answers as committed again: the stream the
    // second created is there, and the first's is not.
    let first_stream = store
        .read_stream(&stream("first"), None, Direction::Forward, 10)
        .await;
    assert!(
        matches!(first_stream, Err(StoreError::StreamNotFound(_))),
        "{first_stream:?}"
    );
}

/// A flight that finds the head's revision moved when it comes to update it rolls back,
/// and its batch is looked up and decided after the other write. Here the other write
/// is another instance's delete of the stream the flight appends to, made as that
/// instance's cached path makes it (the head's revision and the stream's row, no lock
/// but the head's) while the flight waits for the write turn: the flight's upsert of the
/// stream row, once the delete committed, would bring the stream back; only the head
/// check stops it, and the append is then refused as the embedded store refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_that_finds_the_head_moved_is_decided_again_after_it() {
    let Some((store, database, other)) = flights_held(["target", "target"]).await else {
        return;
    };
    let request = AppendRequest::single(
        stream("target"),
        ExpectedVersion::Exact(1),
        vec![event("F", "{}")],
    );
    let append = fly(&store, request, &other, 1).await;
    let elsewhere = crate::postgres::sql(&database.primary_url).await;
    elsewhere
        .batch_execute(
            "BEGIN;
             UPDATE cairn_head SET revision = revision + 1 WHERE id = 1;
             UPDATE streams SET deleted = true WHERE name = 'target';
             COMMIT",
        )
        .await
        .unwrap();
    release_the_write_turn(&other).await;
    match append.await.unwrap() {
        Err(StoreError::StreamDeleted(name)) => assert_eq!(name.as_str(), "target"),
        other => panic!("an append to a deleted stream answered {other:?}"),
    }
    let read = store
        .read_stream(&stream("target"), None, Direction::Forward, 10)
        .await;
    assert!(
        matches!(read, Err(StoreError::StreamDeleted(_))),
        "{read:?}"
    );
    assert_eq!(whole_log(store.as_ref()).await.len(), 2);
}

/// A flight whose connection breaks before its `COMMIT` was sent committed nothing:
/// its batch is committed again on another connection, from a lookup, and answered
/// once. (The flight's backend is terminated while it waits for the write turn.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_whose_connection_breaks_before_commit_is_committed_again() {
    let Some((store, _database, other)) = flights_held(["warm-1", "warm-2"]).await else {
        return;
    };
    let flown = event("F", "{}");
    let flown_id = flown.id;
    let request = AppendRequest::single(stream("broken"), ExpectedVersion::NoStream, vec![flown]);
    let append = fly(&store, request, &other, 1).await;
    let terminated: bool = other
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND mode = 'ShareLock' AND NOT granted",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    release_the_write_turn(&other).await;
    let AppendOutcome::Committed(result) = append.await.unwrap().unwrap() else {
        panic!("replayed");
    };
    assert_eq!((result.first_position, result.last_position), (3, 3));
    let log = whole_log(store.as_ref()).await;
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(log[2].id, flown_id);
}

/// A flight whose position another instance took meanwhile (that instance's cached
/// commit, which does not take the write turn, wrote an event at the head the flight
/// continues): the flight's rows fail on the log's key, it commits nothing, and its
/// batch is looked up and committed after the other event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_whose_position_was_taken_is_committed_after_it() {
    let Some((store, database, other)) = flights_held(["warm-1", "warm-2"]).await else {
        return;
    };
    let flown = event("F", "{}");
    let flown_id = flown.id;
    let request = AppendRequest::single(stream("flown"), ExpectedVersion::NoStream, vec![flown]);
    let append = fly(&store, request, &other, 1).await;
    let elsewhere = crate::postgres::sql(&database.primary_url).await;
    elsewhere
        .batch_execute(
            "BEGIN;
             UPDATE cairn_head SET position = 3, revision = revision + 1 WHERE id = 1;
             WITH s AS (
               INSERT INTO streams (name, version, position, created_at, updated_at)
               VALUES ('elsewhere-1', 0, 3, 0, 0) RETURNING stream_id
             )
             INSERT INTO events (position, id, stream_id, version, type, category, data,
                                 metadata, recorded_at)
             SELECT 3, gen_random_uuid(), stream_id, 0, 'Elsewhere', 'elsewhere', '{}', '{}',
                    (SELECT recorded_at FROM cairn_head WHERE id = 1)
             FROM s;
             COMMIT",
        )
        .await
        .unwrap();
    release_the_write_turn(&other).await;
    let AppendOutcome::Committed(result) = append.await.unwrap().unwrap() else {
        panic!("replayed");
    };
    assert_eq!((result.first_position, result.last_position), (4, 4));
    let log = whole_log(store.as_ref()).await;
    let read: Vec<(u64, &str)> = log
        .iter()
        .map(|e| (e.position, e.stream.as_str()))
        .collect();
    assert_eq!(
        read,
        vec![
            (1, "warm-1"),
            (2, "warm-2"),
            (3, "elsewhere-1"),
            (4, "flown")
        ]
    );
    assert_eq!(log[3].id, flown_id);
}
