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
use cairn_store::postgres::PostgresStore;
use cairn_store::tail::LogTail;
use cairn_store::{AppendOutcome, AppendRequest, Direction, SharedStore, StoreError, testing};

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
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let mut instances: Vec<SharedStore> = Vec::new();
    for _ in 0..4 {
        instances.push(Arc::new(
            PostgresStore::connect(options(&database)).await.unwrap(),
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
