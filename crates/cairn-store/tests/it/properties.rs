//! Property tests of the store's invariants against a simple model: whatever sequence of
//! appends is tried, the store accepts exactly what the model accepts, versions stay
//! contiguous and positions gapless.

use std::collections::HashMap;

use cairn_core::{EventFilter, ExpectedVersion};
use cairn_store::conformance::{event, stream};
use cairn_store::{AppendOutcome, AppendRequest, Direction, StoreError};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Append {
    stream: usize,
    expected: ExpectedVersion,
    events: usize,
}

fn arb_expected() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        Just(ExpectedVersion::Any),
        Just(ExpectedVersion::NoStream),
        Just(ExpectedVersion::Exists),
        (0u64..6).prop_map(ExpectedVersion::Exact),
    ]
}

fn arb_append() -> impl Strategy<Value = Append> {
    (0usize..3, arb_expected(), 1usize..4).prop_map(|(stream, expected, events)| Append {
        stream,
        expected,
        events,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_the_model(appends in prop::collection::vec(arb_append(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (store, _guard) = crate::new_store().await;
            // The model: each stream's events as positions.
            let mut model: HashMap<usize, Vec<u64>> = HashMap::new();
            let mut head = 0u64;
            for append in &appends {
                let name = format!("p-{}", append.stream);
                let current = model.get(&append.stream).map(|events| events.len() as u64 - 1);
                let accepted = append.expected.check(current).is_ok();
                let events = (0..append.events).map(|_| event("E", "{}")).collect();
                let result = store
                    .append(AppendRequest::single(stream(&name), append.expected, events))
                    .await;
                match (accepted, result) {
                    (true, Ok(AppendOutcome::Committed(result))) => {
                        let positions: Vec<u64> = (head + 1..=head + append.events as u64).collect();
                        prop_assert_eq!(result.first_position, positions[0]);
                        prop_assert_eq!(result.last_position, *positions.last().unwrap());
                        prop_assert_eq!(result.streams[0].first_version, current.map_or(0, |v| v + 1));
                        head += append.events as u64;
                        model.entry(append.stream).or_default().extend(positions);
                    }
                    (false, Err(StoreError::WrongExpectedVersion { actual, .. })) => {
                        prop_assert_eq!(actual, current);
                    }
                    (accepted, other) => prop_assert!(false, "model accepted={accepted}, store said {other:?}"),
                }
            }
            let log = store.read_all(1, &EventFilter::default(), 1000).await.unwrap();
            let positions: Vec<u64> = log.events.iter().map(|e| e.position).collect();
            prop_assert_eq!(positions, (1..=head).collect::<Vec<_>>());
            for (index, expected_positions) in &model {
                let slice = store
                    .read_stream(&stream(&format!("p-{index}")), None, Direction::Forward, 1000)
                    .await
                    .unwrap();
                let versions: Vec<u64> = slice.events.iter().map(|e| e.version).collect();
                prop_assert_eq!(versions, (0..expected_positions.len() as u64).collect::<Vec<_>>());
                let positions: Vec<u64> = slice.events.iter().map(|e| e.position).collect();
                prop_assert_eq!(&positions, expected_positions);
            }
            Ok(())
        })?;
    }

    #[test]
    fn exactly_one_winner_among_concurrent_appends(writers in 2usize..12, prior in 0usize..3) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let (store, _guard) = crate::new_store().await;
            let expected = if prior == 0 {
                ExpectedVersion::NoStream
            } else {
                let events = (0..prior).map(|_| event("E", "{}")).collect();
                store.append(AppendRequest::single(stream("contested"), ExpectedVersion::Any, events)).await.unwrap();
                ExpectedVersion::Exact(prior as u64 - 1)
            };
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store
                            .append(AppendRequest::single(stream("contested"), expected, vec![event("E", "{}")]))
                            .await
                    })
                })
                .collect();
            let mut winners = 0;
            for task in tasks {
                if task.await.unwrap().is_ok() {
                    winners += 1;
                }
            }
            prop_assert_eq!(winners, 1);
            prop_assert_eq!(store.head_position().await.unwrap(), prior as u64 + 1);
            Ok(())
        })?;
    }
}

mod per_stream_ordering {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use cairn_core::ExpectedVersion;
    use cairn_store::AppendRequest;
    use cairn_store::conformance::{event, stream};
    use cairn_store::groups::{ConsumerGroups, GroupOrdering, GroupSettings};
    use proptest::prelude::*;

    /// Per stream: the version in flight, and the next version that may be delivered.
    type Tracking = Arc<Mutex<HashMap<String, (Option<u64>, u64)>>>;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

        /// Eight workers claim, ack and nack at random; no two events of one stream are
        /// ever in flight together, each stream is delivered in version order, and every
        /// event is acknowledged in the end.
        #[test]
        fn never_violated_under_eight_workers(
            streams in prop::collection::vec(0usize..5, 10..60),
            seed in any::<u64>(),
        ) {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let (store, _guard) = crate::new_store().await;
                for s in &streams {
                    let request = AppendRequest::single(stream(&format!("s-{s}")), ExpectedVersion::Any, vec![event("E", "{}")]);
                    store.append(request).await.unwrap();
                }
                let groups = Arc::new(ConsumerGroups::load(store.clone()).await.unwrap());
                let settings = GroupSettings {
                    ordering: GroupOrdering::PerStream,
                    max_deliveries: 1000,
                    ..GroupSettings::default()
                };
                groups.put("ordered", settings).await.unwrap();
                let tracking: Tracking = Arc::default();
                let total = streams.len();
                let acked = Arc::new(Mutex::new(0usize));
                let mut workers = Vec::new();
                for worker in 0..8u64 {
                    let (groups, tracking, acked) = (Arc::clone(&groups), Arc::clone(&tracking), Arc::clone(&acked));
                    workers.push(tokio::spawn(async move {
                        let mut random = seed ^ (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        let mut next = move || {
                            random ^= random << 13;
                            random ^= random >> 7;
                            random ^= random << 17;
                            random
                        };
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                        while *acked.lock().unwrap() < total {
                            assert!(tokio::time::Instant::now() < deadline, "workers did not finish");
                            let max = (next() % 4 + 1) as usize;
                            let deliveries = groups.claim("ordered", max, Duration::from_millis(20)).await.unwrap();
                            for delivery in deliveries {
                                let name = delivery.event.stream.to_string();
                                let version = delivery.event.version;
                                {
                                    let mut tracking = tracking.lock().unwrap();
                                    let entry = tracking.entry(name.clone()).or_insert((None, 0));
                                    assert_eq!(entry.0, None, "two events of {name} in flight");
                                    assert_eq!(version, entry.1, "{name} delivered out of order");
                                    entry.0 = Some(version);
                                }
                                tokio::task::yield_now().await;
                                let ack = next() % 5 != 0;
                                {
                                    let mut tracking = tracking.lock().unwrap();
                                    let entry = tracking.get_mut(&name).unwrap();
                                    entry.0 = None;
                                    if ack {
                                        entry.1 = version + 1;
                                    }
                                }
                                let position = [delivery.event.position];
                                if ack {
                                    groups.ack("ordered", &position).await.unwrap();
                                    *acked.lock().unwrap() += 1;
                                } else {
                                    groups.nack("ordered", &position, Duration::ZERO).await.unwrap();
                                }
                            }
                        }
                    }));
                }
                for worker in workers {
                    worker.await.unwrap();
                }
                let status = groups.status("ordered").await.unwrap();
                prop_assert_eq!(status.checkpoint, total as u64);
                prop_assert_eq!(status.in_flight, 0);
                Ok(())
            })?;
        }
    }
}
