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
