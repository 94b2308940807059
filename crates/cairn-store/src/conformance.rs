//! The storage conformance suite: the behaviour every [`EventStore`] backend must show.
//! A backend's integration tests instantiate it with [`conformance_suite!`], handing it
//! an async factory that returns a fresh, empty store (and a guard that keeps its
//! resources alive):
//!
//! ```text
//! async fn new_store() -> (SharedStore, Box<dyn std::any::Any + Send>) { … }
//! cairn_store::conformance_suite!(new_store);
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use cairn_core::{AppendCondition, EventFilter, ExpectedVersion, NewEvent, StreamName};
use uuid::Uuid;

use crate::{
    AppendOutcome, AppendRequest, AppendResult, AppendTarget, Direction, IdempotencyClaim,
    SharedStore, StoreError,
};

/// Instantiates every conformance test for one backend. `optional` takes a factory that
/// returns `Option<(SharedStore, guard)>`, for backends whose server may be missing
/// locally (the test then returns early; the factory decides whether that is allowed).
#[macro_export]
macro_rules! conformance_suite {
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = ($factory)().await else { return };
                $crate::conformance::$name(store).await;
            }
        )*
    };
    (@list $factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            appends_start_at_version_zero_and_position_one,
            expected_version_forms,
            wrong_expected_version_reports_actual,
            reads_forward_and_backward_with_paging,
            missing_stream_is_not_found,
            global_log_is_in_append_order,
            global_read_filters,
            multi_stream_append_is_atomic,
            append_condition,
            resent_event_ids_are_idempotent,
            duplicate_event_id_elsewhere_is_refused,
            idempotency_key_replays_and_refuses_reuse,
            failing_request_does_not_fail_its_batch,
            positions_are_gapless_under_concurrency,
            one_winner_per_expected_version,
            concurrent_retries_of_one_key_append_once,
            deleted_streams,
            list_streams_by_prefix_with_paging,
            stream_info_tracks_the_head,
            watch_head_follows_commits,
            read_event_by_position,
            group_delivers_acks_and_checkpoints,
            group_redelivers_after_the_ack_timeout,
            group_parks_after_max_deliveries_and_replays,
            group_per_stream_ordering,
            group_filter_and_long_poll,
            group_state_survives_reloading,
            group_lifecycle_errors,
            group_filter_change_keeps_deliveries,
            tail_catches_up_then_follows_live_writers,
            tail_recovers_from_lagging_and_large_commits,
            tail_filters,
            import_keeps_everything_and_appends_continue,
            import_rejects_a_bad_batch_whole,
            import_continues_a_log_and_repeats_tombstones,
        );
    };
    (optional $factory:path) => {
        $crate::conformance_suite!(@list (|| $factory()));
    };
    ($factory:path) => {
        $crate::conformance_suite!(@list (|| async { Some($factory().await) }));
    };
}

/// A new event with a fresh UUIDv7 id.
pub fn event(event_type: &str, data: &str) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        data: data.to_owned(),
        metadata: "{}".to_owned(),
        tags: Vec::new(),
    }
}

fn tagged(event_type: &str, tags: &[&str]) -> NewEvent {
    NewEvent {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..event(event_type, "{}")
    }
}

pub fn stream(name: &str) -> StreamName {
    StreamName::parse(name).expect("test stream names are valid")
}

fn render(result: &AppendResult) -> String {
    format!("{}-{}", result.first_position, result.last_position)
}

async fn append(
    store: &SharedStore,
    name: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult, StoreError> {
    match store
        .append(AppendRequest::single(stream(name), expected, events))
        .await?
    {
        AppendOutcome::Committed(result) => Ok(result),
        AppendOutcome::Replayed { body } => panic!("unexpected replay {body}"),
    }
}

async fn ok(store: &SharedStore, name: &str, events: usize) -> AppendResult {
    let events = (0..events)
        .map(|i| event("E", &format!("{{\"i\":{i}}}")))
        .collect();
    append(store, name, ExpectedVersion::Any, events)
        .await
        .expect("append succeeds")
}

pub async fn appends_start_at_version_zero_and_position_one(store: SharedStore) {
    let result = ok(&store, "order-1", 2).await;
    assert_eq!((result.first_position, result.last_position), (1, 2));
    let s = &result.streams[0];
    assert_eq!((s.first_version, s.last_version), (0, 1));
    let result = ok(&store, "order-1", 1).await;
    assert_eq!(result.streams[0].first_version, 2);
    assert_eq!(result.first_position, 3);
    let slice = store
        .read_stream(&stream("order-1"), None, Direction::Forward, 10)
        .await
        .unwrap();
    let versions: Vec<_> = slice.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [0, 1, 2]);
    assert_eq!(slice.events[0].data, "{\"i\":0}");
    assert_eq!(slice.events[0].event_type, "E");
    assert_eq!(slice.events[0].stream.as_str(), "order-1");
    assert!(slice.events[0].recorded_at > 0);
    assert_eq!(slice.next, None);
}

pub async fn expected_version_forms(store: SharedStore) {
    use ExpectedVersion::*;
    assert!(
        append(&store, "a", Exists, vec![event("E", "1")])
            .await
            .is_err()
    );
    assert!(
        append(&store, "a", Exact(0), vec![event("E", "1")])
            .await
            .is_err()
    );
    append(&store, "a", NoStream, vec![event("E", "1")])
        .await
        .unwrap();
    assert!(
        append(&store, "a", NoStream, vec![event("E", "1")])
            .await
            .is_err()
    );
    append(&store, "a", Exists, vec![event("E", "1")])
        .await
        .unwrap();
    append(&store, "a", Exact(1), vec![event("E", "1")])
        .await
        .unwrap();
    assert!(
        append(&store, "a", Exact(1), vec![event("E", "1")])
            .await
            .is_err()
    );
    append(&store, "a", Any, vec![event("E", "1")])
        .await
        .unwrap();
    assert_eq!(store.stream_info(&stream("a")).await.unwrap().version, 3);
    // Refused appends wrote nothing.
    assert_eq!(store.head_position().await.unwrap(), 4);
}

pub async fn wrong_expected_version_reports_actual(store: SharedStore) {
    let error = append(
        &store,
        "b",
        ExpectedVersion::Exact(3),
        vec![event("E", "1")],
    )
    .await
    .unwrap_err();
    assert_eq!(
        error,
        StoreError::WrongExpectedVersion {
            stream: stream("b"),
            expected: ExpectedVersion::Exact(3),
            actual: None
        }
    );
    ok(&store, "b", 5).await;
    let error = append(
        &store,
        "b",
        ExpectedVersion::NoStream,
        vec![event("E", "1")],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::WrongExpectedVersion {
                actual: Some(4),
                expected: ExpectedVersion::NoStream,
                ..
            }
        ),
        "{error:?}"
    );
}

pub async fn reads_forward_and_backward_with_paging(store: SharedStore) {
    ok(&store, "s", 7).await;
    let s = stream("s");
    let page = store
        .read_stream(&s, Some(0), Direction::Forward, 3)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(page.next, Some(3));
    let page = store
        .read_stream(&s, Some(6), Direction::Forward, 3)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.next, None);
    let page = store
        .read_stream(&s, None, Direction::Backward, 3)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [6, 5, 4]
    );
    assert_eq!(page.next, Some(3));
    let page = store
        .read_stream(&s, Some(1), Direction::Backward, 3)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 0]
    );
    assert_eq!(page.next, None);
    let page = store
        .read_stream(&s, Some(100), Direction::Backward, 2)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [6, 5]
    );
    let page = store
        .read_stream(&s, Some(100), Direction::Forward, 2)
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next, None);
}

pub async fn missing_stream_is_not_found(store: SharedStore) {
    let s = stream("nothing-here");
    assert_eq!(
        store
            .read_stream(&s, None, Direction::Forward, 10)
            .await
            .unwrap_err(),
        StoreError::StreamNotFound(s.clone())
    );
    assert_eq!(
        store.stream_info(&s).await.unwrap_err(),
        StoreError::StreamNotFound(s)
    );
}

pub async fn global_log_is_in_append_order(store: SharedStore) {
    ok(&store, "x-1", 2).await;
    ok(&store, "y-1", 1).await;
    ok(&store, "x-1", 1).await;
    let slice = store
        .read_all(1, &EventFilter::default(), 100)
        .await
        .unwrap();
    let seen: Vec<_> = slice
        .events
        .iter()
        .map(|e| (e.position, e.stream.to_string(), e.version))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "x-1".to_owned(), 0),
            (2, "x-1".to_owned(), 1),
            (3, "y-1".to_owned(), 0),
            (4, "x-1".to_owned(), 2)
        ]
    );
    assert_eq!((slice.next_from_position, slice.head_position), (5, 4));
    let page = store.read_all(2, &EventFilter::default(), 2).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(page.next_from_position, 4);
    let past = store
        .read_all(10, &EventFilter::default(), 2)
        .await
        .unwrap();
    assert!(past.events.is_empty());
    assert_eq!(past.next_from_position, 10);
}

pub async fn global_read_filters(store: SharedStore) {
    append(
        &store,
        "order-1",
        ExpectedVersion::Any,
        vec![tagged("Placed", &["customer:1"])],
    )
    .await
    .unwrap();
    append(
        &store,
        "order-2",
        ExpectedVersion::Any,
        vec![tagged("Placed", &["customer:2", "vip"])],
    )
    .await
    .unwrap();
    append(
        &store,
        "cart-1",
        ExpectedVersion::Any,
        vec![tagged("Added", &["customer:1"])],
    )
    .await
    .unwrap();
    append(
        &store,
        "order-1",
        ExpectedVersion::Any,
        vec![tagged("Shipped", &["customer:1", "vip"])],
    )
    .await
    .unwrap();
    let positions = |filter: EventFilter| {
        let store = Arc::clone(&store);
        async move {
            store
                .read_all(1, &filter, 100)
                .await
                .unwrap()
                .events
                .iter()
                .map(|e| e.position)
                .collect::<Vec<_>>()
        }
    };
    let by_category = EventFilter {
        category: Some("order".into()),
        ..Default::default()
    };
    assert_eq!(positions(by_category).await, [1, 2, 4]);
    let by_types = EventFilter {
        types: vec!["Added".into(), "Shipped".into()],
        ..Default::default()
    };
    assert_eq!(positions(by_types).await, [3, 4]);
    let by_tag = EventFilter {
        tags: vec!["customer:1".into()],
        ..Default::default()
    };
    assert_eq!(positions(by_tag).await, [1, 3, 4]);
    let by_tags = EventFilter {
        tags: vec!["customer:1".into(), "vip".into()],
        ..Default::default()
    };
    assert_eq!(positions(by_tags).await, [4]);
    let by_stream = EventFilter {
        stream: Some("order-1".into()),
        ..Default::default()
    };
    assert_eq!(positions(by_stream).await, [1, 4]);
    let combined = EventFilter {
        category: Some("order".into()),
        types: vec!["Placed".into()],
        tags: vec!["vip".into()],
        ..Default::default()
    };
    assert_eq!(positions(combined).await, [2]);
    let none = EventFilter {
        category: Some("nope".into()),
        ..Default::default()
    };
    let slice = store.read_all(1, &none, 10).await.unwrap();
    assert!(slice.events.is_empty());
    assert_eq!(
        slice.next_from_position, 5,
        "a filtered read that found nothing may skip to the head"
    );
    let tagged_event = &store
        .read_all(2, &EventFilter::default(), 1)
        .await
        .unwrap()
        .events[0];
    assert_eq!(tagged_event.tags, ["customer:2", "vip"]);
}

pub async fn multi_stream_append_is_atomic(store: SharedStore) {
    ok(&store, "m-1", 1).await;
    let request = AppendRequest {
        targets: vec![
            AppendTarget {
                stream: stream("m-1"),
                expected: ExpectedVersion::Exact(0),
            },
            AppendTarget {
                stream: stream("m-2"),
                expected: ExpectedVersion::NoStream,
            },
        ],
        events: vec![
            (0, event("A", "1")),
            (1, event("B", "2")),
            (0, event("C", "3")),
        ],
        condition: None,
        idempotency: None,
    };
    let AppendOutcome::Committed(result) = store.append(request.clone()).await.unwrap() else {
        panic!("replayed")
    };
    assert_eq!((result.first_position, result.last_position), (2, 4));
    assert_eq!(result.streams.len(), 2);
    assert_eq!(
        (
            result.streams[0].first_version,
            result.streams[0].last_version
        ),
        (1, 2)
    );
    assert_eq!(
        (
            result.streams[0].first_position,
            result.streams[0].last_position
        ),
        (2, 4)
    );
    assert_eq!(
        (
            result.streams[1].first_version,
            result.streams[1].first_position
        ),
        (0, 3)
    );
    // Same expectations again: m-1 is now at 2, so nothing at all is written.
    let retry = AppendRequest {
        events: vec![(0, event("A", "1")), (1, event("B", "2"))],
        ..request
    };
    let error = store.append(retry).await.unwrap_err();
    assert!(
        matches!(error, StoreError::WrongExpectedVersion { .. }),
        "{error:?}"
    );
    assert_eq!(store.head_position().await.unwrap(), 4);
    assert_eq!(store.stream_info(&stream("m-2")).await.unwrap().version, 0);
}

pub async fn append_condition(store: SharedStore) {
    append(
        &store,
        "course-1",
        ExpectedVersion::Any,
        vec![tagged("Created", &["course:1"])],
    )
    .await
    .unwrap();
    append(
        &store,
        "student-1",
        ExpectedVersion::Any,
        vec![tagged("Registered", &["student:1"])],
    )
    .await
    .unwrap();
    let condition = |after| AppendCondition {
        query: EventFilter {
            tags: vec!["course:1".into()],
            ..Default::default()
        },
        after,
    };
    let with_condition = |after| AppendRequest {
        condition: Some(condition(after)),
        ..AppendRequest::single(
            stream("student-1"),
            ExpectedVersion::Any,
            vec![tagged("Subscribed", &["course:1"])],
        )
    };
    assert_eq!(
        store.append(with_condition(0)).await.unwrap_err(),
        StoreError::ConditionFailed { after: 0, found: 1 }
    );
    assert_eq!(store.head_position().await.unwrap(), 2);
    store.append(with_condition(1)).await.unwrap();
    // The event just written matches the query, so the same condition fails now.
    assert_eq!(
        store.append(with_condition(1)).await.unwrap_err(),
        StoreError::ConditionFailed { after: 1, found: 3 }
    );
    // Nothing is recorded after a position beyond the log, however large.
    store.append(with_condition(u64::MAX)).await.unwrap();
    let by_type = AppendRequest {
        condition: Some(AppendCondition {
            query: EventFilter {
                types: vec!["Nope".into()],
                ..Default::default()
            },
            after: 0,
        }),
        ..AppendRequest::single(stream("x"), ExpectedVersion::Any, vec![event("E", "1")])
    };
    store.append(by_type).await.unwrap();
}

pub async fn resent_event_ids_are_idempotent(store: SharedStore) {
    ok(&store, "other", 1).await;
    let events = vec![event("A", "1"), event("B", "2")];
    let first = append(&store, "r", ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    // The same events again, even with an expectation that no longer holds: success,
    // same result, nothing written.
    let again = append(&store, "r", ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(store.head_position().await.unwrap(), 3);
    // A prefix of them is also already there, in order.
    let prefix = append(&store, "r", ExpectedVersion::Any, events[..1].to_vec())
        .await
        .unwrap();
    assert_eq!(prefix.last_position, 2);
    // Known ids followed by a new one: a partial re-send is a duplicate.
    let partial = vec![events[0].clone(), events[1].clone(), event("C", "3")];
    let error = append(&store, "r", ExpectedVersion::Any, partial)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::DuplicateEventId { .. }),
        "{error:?}"
    );
    // The same ids in another order are not the same append.
    let swapped = vec![events[1].clone(), events[0].clone()];
    let error = append(&store, "r", ExpectedVersion::Any, swapped)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::DuplicateEventId { .. }),
        "{error:?}"
    );
    assert_eq!(store.head_position().await.unwrap(), 3);
}

pub async fn duplicate_event_id_elsewhere_is_refused(store: SharedStore) {
    let reused = event("A", "1");
    append(&store, "one", ExpectedVersion::Any, vec![reused.clone()])
        .await
        .unwrap();
    let error = append(&store, "two", ExpectedVersion::Any, vec![reused.clone()])
        .await
        .unwrap_err();
    assert_eq!(
        error,
        StoreError::DuplicateEventId {
            id: reused.id,
            existing_stream: "one".into()
        }
    );
    // A colliding id in second place is refused too, and nothing of the request stays.
    let error = append(
        &store,
        "two",
        ExpectedVersion::Any,
        vec![event("B", "2"), reused.clone()],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, StoreError::DuplicateEventId { id, .. } if id == reused.id),
        "{error:?}"
    );
    // The same id twice in one request.
    let twice = event("C", "3");
    let error = append(
        &store,
        "three",
        ExpectedVersion::Any,
        vec![twice.clone(), twice],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, StoreError::DuplicateEventId { .. }),
        "{error:?}"
    );
    assert_eq!(store.head_position().await.unwrap(), 1);
    assert!(store.stream_info(&stream("two")).await.is_err());
}

fn claim(key: &str, fingerprint: u8) -> IdempotencyClaim {
    IdempotencyClaim {
        key: key.to_owned(),
        fingerprint: [fingerprint; 32],
        render,
    }
}

pub async fn idempotency_key_replays_and_refuses_reuse(store: SharedStore) {
    let request = |fingerprint| AppendRequest {
        idempotency: Some(claim("key-1", fingerprint)),
        ..AppendRequest::single(stream("i"), ExpectedVersion::Any, vec![event("E", "1")])
    };
    let AppendOutcome::Committed(first) = store.append(request(7)).await.unwrap() else {
        panic!("first append replayed")
    };
    assert_eq!(first.first_position, 1);
    assert_eq!(
        store.append(request(7)).await.unwrap(),
        AppendOutcome::Replayed { body: "1-1".into() }
    );
    assert_eq!(
        store.append(request(8)).await.unwrap_err(),
        StoreError::IdempotencyKeyReused
    );
    assert_eq!(store.head_position().await.unwrap(), 1);
    // A refused request does not keep its key: the key stays free for a retry.
    let refused = AppendRequest {
        idempotency: Some(claim("key-2", 1)),
        ..AppendRequest::single(
            stream("i"),
            ExpectedVersion::NoStream,
            vec![event("E", "1")],
        )
    };
    assert!(store.append(refused.clone()).await.is_err());
    let fixed = AppendRequest {
        targets: vec![AppendTarget {
            stream: stream("i"),
            expected: ExpectedVersion::Exact(0),
        }],
        ..refused
    };
    assert!(matches!(
        store.append(fixed).await.unwrap(),
        AppendOutcome::Committed(_)
    ));
}

pub async fn failing_request_does_not_fail_its_batch(store: SharedStore) {
    ok(&store, "busy", 1).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            // Every third request expects a version the stream never has.
            let expected = if i % 3 == 0 {
                ExpectedVersion::Exact(1_000_000)
            } else {
                ExpectedVersion::Any
            };
            append(
                &store,
                &format!("busy-{i}"),
                expected,
                vec![event("E", "1")],
            )
            .await
        }));
    }
    let mut succeeded = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if i % 3 == 0 {
            assert!(
                matches!(result, Err(StoreError::WrongExpectedVersion { .. })),
                "{result:?}"
            );
        } else {
            result.unwrap();
            succeeded += 1;
        }
    }
    let slice = store
        .read_all(1, &EventFilter::default(), 1000)
        .await
        .unwrap();
    assert_eq!(slice.events.len(), succeeded + 1);
    assert_gapless(&slice.events.iter().map(|e| e.position).collect::<Vec<_>>());
}

fn assert_gapless(positions: &[u64]) {
    for (index, position) in positions.iter().enumerate() {
        assert_eq!(
            *position,
            index as u64 + 1,
            "positions must be 1, 2, 3, …: {positions:?}"
        );
    }
}

pub async fn positions_are_gapless_under_concurrency(store: SharedStore) {
    // 16 writers x 20 rounds of 1, 2 or 3 events: 7 + 14 + 18 = 39 events each.
    const TOTAL: u64 = 16 * 39;
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for round in 0..20 {
                let events = (0..=(round % 3)).map(|_| event("E", "{}")).collect();
                let name = format!("w{}-{}", writer, round % 4);
                let result = append(&store, &name, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                acknowledged.extend(result.first_position..=result.last_position);
            }
            acknowledged
        }));
    }
    // A reader tails the log while the writers write: it must never see a gap nor a
    // position go backwards.
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut next = 1;
            let mut seen = Vec::new();
            while next <= TOTAL {
                let slice = store
                    .read_all(next, &EventFilter::default(), 50)
                    .await
                    .unwrap();
                for e in &slice.events {
                    assert_eq!(e.position, next, "reader saw a gap or a reordering");
                    next += 1;
                    seen.push(e.position);
                }
                if slice.events.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            seen
        })
    };
    let mut all = HashSet::new();
    for task in tasks {
        for position in task.await.unwrap() {
            assert!(
                all.insert(position),
                "position {position} acknowledged twice"
            );
        }
    }
    let head = store.head_position().await.unwrap();
    assert_eq!(all.len() as u64, head);
    assert_eq!(head, TOTAL);
    let seen = reader.await.unwrap();
    assert_gapless(&seen);
    // Every stream's versions are contiguous from 0.
    for writer in 0..16 {
        for k in 0..4 {
            let s = stream(&format!("w{writer}-{k}"));
            let slice = store
                .read_stream(&s, None, Direction::Forward, 1000)
                .await
                .unwrap();
            for (index, e) in slice.events.iter().enumerate() {
                assert_eq!(e.version, index as u64);
            }
        }
    }
}

pub async fn one_winner_per_expected_version(store: SharedStore) {
    ok(&store, "race", 1).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            append(
                &store,
                "race",
                ExpectedVersion::Exact(0),
                vec![event("E", "1")],
            )
            .await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(StoreError::WrongExpectedVersion {
                actual: Some(1), ..
            }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(store.stream_info(&stream("race")).await.unwrap().version, 1);
}

pub async fn concurrent_retries_of_one_key_append_once(store: SharedStore) {
    let events = [event("E", "1"), event("E", "2")];
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        // A retry carries the same events (server-assigned ids are minted once per
        // request, so each retry here has fresh ids: only the key protects it).
        let events: Vec<NewEvent> = events
            .iter()
            .map(|e| NewEvent {
                id: Uuid::now_v7(),
                ..e.clone()
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            store
                .append(AppendRequest {
                    idempotency: Some(claim("retry-key", 3)),
                    ..AppendRequest::single(stream("retried"), ExpectedVersion::Any, events)
                })
                .await
        }));
    }
    let mut committed = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            AppendOutcome::Committed(_) => committed += 1,
            AppendOutcome::Replayed { body } => assert_eq!(body, "1-2"),
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(store.head_position().await.unwrap(), 2);
}

pub async fn deleted_streams(store: SharedStore) {
    ok(&store, "gone", 3).await;
    ok(&store, "kept", 1).await;
    let s = stream("gone");
    assert!(matches!(
        store
            .delete_stream(&s, ExpectedVersion::Exact(1))
            .await
            .unwrap_err(),
        StoreError::WrongExpectedVersion {
            actual: Some(2),
            ..
        }
    ));
    assert_eq!(
        store
            .delete_stream(&s, ExpectedVersion::Exact(2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .read_stream(&s, None, Direction::Forward, 10)
            .await
            .unwrap_err(),
        StoreError::StreamDeleted(s.clone())
    );
    assert_eq!(
        store.stream_info(&s).await.unwrap_err(),
        StoreError::StreamDeleted(s.clone())
    );
    assert_eq!(
        append(&store, "gone", ExpectedVersion::Any, vec![event("E", "1")])
            .await
            .unwrap_err(),
        StoreError::StreamDeleted(s.clone())
    );
    assert_eq!(
        store
            .delete_stream(&s, ExpectedVersion::Any)
            .await
            .unwrap_err(),
        StoreError::StreamDeleted(s.clone())
    );
    let missing = stream("never");
    assert_eq!(
        store
            .delete_stream(&missing, ExpectedVersion::Any)
            .await
            .unwrap_err(),
        StoreError::StreamNotFound(missing)
    );
    // The global log keeps its events: positions never go away.
    assert_eq!(
        store
            .read_all(1, &EventFilter::default(), 10)
            .await
            .unwrap()
            .events
            .len(),
        4
    );
    assert_eq!(
        store.list_streams("", None, 10).await.unwrap().streams,
        ["kept"]
    );
}

pub async fn list_streams_by_prefix_with_paging(store: SharedStore) {
    for name in [
        "order-3", "order-1", "cart-1", "order-2", "orders", "order.x",
    ] {
        ok(&store, name, 1).await;
    }
    let page = store.list_streams("order-", None, 2).await.unwrap();
    assert_eq!(page.streams, ["order-1", "order-2"]);
    assert_eq!(page.next.as_deref(), Some("order-2"));
    let page = store
        .list_streams("order-", Some("order-2"), 2)
        .await
        .unwrap();
    assert_eq!(page.streams, ["order-3"]);
    assert_eq!(page.next, None);
    let all = store.list_streams("", None, 100).await.unwrap();
    assert_eq!(
        all.streams,
        [
            "cart-1", "order-1", "order-2", "order-3", "order.x", "orders"
        ]
    );
    assert!(
        store
            .list_streams("zzz", None, 10)
            .await
            .unwrap()
            .streams
            .is_empty()
    );
    assert!(
        store
            .list_streams("%", None, 10)
            .await
            .unwrap()
            .streams
            .is_empty(),
        "no LIKE wildcards"
    );
}

pub async fn stream_info_tracks_the_head(store: SharedStore) {
    ok(&store, "info", 2).await;
    let before = store.stream_info(&stream("info")).await.unwrap();
    assert_eq!((before.version, before.position), (1, 2));
    ok(&store, "elsewhere", 1).await;
    ok(&store, "info", 1).await;
    let after = store.stream_info(&stream("info")).await.unwrap();
    assert_eq!((after.version, after.position), (2, 4));
    assert_eq!(after.created_at, before.created_at);
    assert!(after.updated_at >= before.updated_at);
}

pub async fn watch_head_follows_commits(store: SharedStore) {
    let mut watch = store.watch_head();
    assert_eq!(*watch.borrow_and_update(), 0);
    ok(&store, "w", 3).await;
    // The head is published by the time the append is acknowledged.
    assert_eq!(*watch.borrow_and_update(), 3);
    let waiter = tokio::spawn(async move {
        watch.changed().await.unwrap();
        *watch.borrow()
    });
    ok(&store, "w", 1).await;
    assert_eq!(waiter.await.unwrap(), 4);
}

pub async fn read_event_by_position(store: SharedStore) {
    ok(&store, "one", 2).await;
    let event = store
        .read_event(2)
        .await
        .unwrap()
        .expect("position 2 exists");
    assert_eq!(
        (event.position, event.version, event.stream.as_str()),
        (2, 1, "one")
    );
    assert!(store.read_event(3).await.unwrap().is_none());
}

use std::time::Duration;

use crate::groups::{ConsumerGroups, GroupOrdering, GroupSettings};

fn group_settings(ack_timeout_ms: u64, max_deliveries: u32) -> GroupSettings {
    GroupSettings {
        ack_timeout: Duration::from_millis(ack_timeout_ms),
        max_deliveries,
        ..GroupSettings::default()
    }
}

fn positions_of(deliveries: &[crate::groups::Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.event.position).collect()
}

pub async fn group_delivers_acks_and_checkpoints(store: SharedStore) {
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    ok(&store, "g", 10).await;
    let status = groups
        .put("workers", group_settings(30_000, 5))
        .await
        .unwrap();
    assert_eq!((status.checkpoint, status.lag), (0, 10));
    let first = groups.claim("workers", 4, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&first), [1, 2, 3, 4]);
    assert!(first.iter().all(|d| d.attempt == 1));
    let second = groups.claim("workers", 4, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&second), [5, 6, 7, 8]);
    // Acks out of order: the checkpoint waits for the first gap.
    let settled = groups.ack("workers", &[2, 3, 5]).await.unwrap();
    assert_eq!((settled.settled, settled.ignored), (3, 0));
    assert_eq!(groups.status("workers").await.unwrap().checkpoint, 0);
    groups.ack("workers", &[1, 4]).await.unwrap();
    let status = groups.status("workers").await.unwrap();
    assert_eq!((status.checkpoint, status.in_flight), (5, 3));
    // Acking twice, or acking what was never delivered, changes nothing.
    let settled = groups.ack("workers", &[1, 99]).await.unwrap();
    assert_eq!((settled.settled, settled.ignored), (0, 2));
    groups.ack("workers", &[6, 7, 8]).await.unwrap();
    let rest = groups.claim("workers", 100, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&rest), [9, 10]);
    groups.ack("workers", &[9, 10]).await.unwrap();
    let status = groups.status("workers").await.unwrap();
    assert_eq!(
        (status.checkpoint, status.lag, status.in_flight),
        (10, 0, 0)
    );
    assert!(
        groups
            .claim("workers", 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn group_redelivers_after_the_ack_timeout(store: SharedStore) {
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    ok(&store, "t", 3).await;
    groups.put("slow", group_settings(150, 5)).await.unwrap();
    // A consumer claims everything and dies without answering.
    assert_eq!(
        positions_of(&groups.claim("slow", 10, Duration::ZERO).await.unwrap()),
        [1, 2, 3]
    );
    assert!(
        groups
            .claim("slow", 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // Another consumer long-polls: the events come back once their timeout passes.
    let again = groups
        .claim("slow", 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(positions_of(&again), [1, 2, 3]);
    assert!(again.iter().all(|d| d.attempt == 2));
    groups.ack("slow", &[1, 2, 3]).await.unwrap();
    assert_eq!(groups.status("slow").await.unwrap().checkpoint, 3);
}

pub async fn group_parks_after_max_deliveries_and_replays(store: SharedStore) {
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    ok(&store, "p", 3).await;
    groups
        .put("picky", group_settings(30_000, 2))
        .await
        .unwrap();
    let first = groups.claim("picky", 10, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&first), [1, 2, 3]);
    groups.ack("picky", &[1, 3]).await.unwrap();
    // Position 2 fails twice: nacked for an immediate retry, then nacked again.
    let settled = groups.nack("picky", &[2], Duration::ZERO).await.unwrap();
    assert_eq!((settled.settled, settled.parked), (1, 0));
    let retry = groups.claim("picky", 10, Duration::ZERO).await.unwrap();
    assert_eq!((positions_of(&retry), retry[0].attempt), (vec![2], 2));
    let settled = groups.nack("picky", &[2], Duration::ZERO).await.unwrap();
    assert_eq!(settled.parked, 1);
    let status = groups.status("picky").await.unwrap();
    assert_eq!(
        (status.checkpoint, status.parked, status.in_flight),
        (3, 1, 0)
    );
    let parked = groups.parked("picky", 0, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].position, parked[0].deliveries), (2, 2));
    assert!(
        groups
            .claim("picky", 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // Replayed, it is delivered once more and, acknowledged, leaves the parked list.
    assert_eq!(groups.replay_parked("picky", None).await.unwrap(), 1);
    let replayed = groups.claim("picky", 10, Duration::ZERO).await.unwrap();
    assert_eq!((positions_of(&replayed), replayed[0].attempt), (vec![2], 1));
    groups.ack("picky", &[2]).await.unwrap();
    assert!(groups.parked("picky", 0, 10).await.unwrap().is_empty());
    assert_eq!(groups.status("picky").await.unwrap().parked, 0);
    // A retry delay holds the event back until it passes.
    ok(&store, "p", 1).await;
    let fourth = groups.claim("picky", 10, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&fourth), [4]);
    groups
        .nack("picky", &[4], Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        groups
            .claim("picky", 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let later = groups
        .claim("picky", 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(positions_of(&later), [4]);
}

pub async fn group_per_stream_ordering(store: SharedStore) {
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    // Interleaved: a, b, a, b, a, c
    for name in ["a", "b", "a", "b", "a", "c"] {
        ok(&store, name, 1).await;
    }
    let settings = GroupSettings {
        ordering: GroupOrdering::PerStream,
        ..group_settings(30_000, 5)
    };
    groups.put("ordered", settings).await.unwrap();
    let first = groups.claim("ordered", 10, Duration::ZERO).await.unwrap();
    assert_eq!(
        positions_of(&first),
        [1, 2, 6],
        "one event per stream in flight"
    );
    assert!(
        groups
            .claim("ordered", 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // b's first event is nacked: b's second must not overtake it.
    groups.ack("ordered", &[1, 6]).await.unwrap();
    groups.nack("ordered", &[2], Duration::ZERO).await.unwrap();
    let second = groups.claim("ordered", 10, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&second), [2, 3]);
    groups.ack("ordered", &[2, 3]).await.unwrap();
    let third = groups.claim("ordered", 10, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&third), [4, 5]);
}

pub async fn group_filter_and_long_poll(store: SharedStore) {
    let groups = Arc::new(ConsumerGroups::load(Arc::clone(&store)).await.unwrap());
    ok(&store, "order-1", 1).await;
    ok(&store, "cart-1", 1).await;
    let settings = GroupSettings {
        filter: EventFilter {
            category: Some("order".into()),
            ..Default::default()
        },
        from_position: 1,
        ..group_settings(30_000, 5)
    };
    groups.put("orders", settings).await.unwrap();
    assert_eq!(
        positions_of(&groups.claim("orders", 10, Duration::ZERO).await.unwrap()),
        [1]
    );
    groups.ack("orders", &[1]).await.unwrap();
    // Nothing more matches; the checkpoint still moves past what did not match.
    assert!(
        groups
            .claim("orders", 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(groups.status("orders").await.unwrap().checkpoint, 2);
    // A long poll is woken by a matching append.
    let waiter = {
        let groups = Arc::clone(&groups);
        tokio::spawn(async move { groups.claim("orders", 10, Duration::from_secs(10)).await })
    };
    ok(&store, "cart-2", 1).await;
    ok(&store, "order-2", 1).await;
    let woken = waiter.await.unwrap().unwrap();
    assert_eq!(positions_of(&woken), [4]);
    // A group created from a later position starts there.
    let late = GroupSettings {
        from_position: 4,
        ..group_settings(30_000, 5)
    };
    assert_eq!(groups.put("late", late).await.unwrap().checkpoint, 3);
    assert_eq!(
        positions_of(&groups.claim("late", 10, Duration::ZERO).await.unwrap()),
        [4]
    );
}

pub async fn group_state_survives_reloading(store: SharedStore) {
    ok(&store, "r", 6).await;
    {
        let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
        groups
            .put("durable", group_settings(30_000, 1))
            .await
            .unwrap();
        let claimed = groups.claim("durable", 4, Duration::ZERO).await.unwrap();
        assert_eq!(positions_of(&claimed), [1, 2, 3, 4]);
        groups.ack("durable", &[1, 2, 4]).await.unwrap();
        // max_deliveries 1: a nack parks at once.
        groups.nack("durable", &[3], Duration::ZERO).await.unwrap();
        assert_eq!(groups.status("durable").await.unwrap().checkpoint, 4);
    }
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    let status = groups.status("durable").await.unwrap();
    assert_eq!((status.checkpoint, status.parked), (4, 1));
    assert_eq!(status.settings.max_deliveries, 1);
    assert_eq!(
        positions_of(&groups.claim("durable", 10, Duration::ZERO).await.unwrap()),
        [5, 6]
    );
    assert_eq!(
        groups.parked("durable", 0, 10).await.unwrap()[0].position,
        3
    );
    // A replay in progress is resumed after a reload too.
    assert_eq!(
        groups
            .replay_parked("durable", Some(vec![3]))
            .await
            .unwrap(),
        1
    );
    drop(groups);
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    assert_eq!(
        positions_of(&groups.claim("durable", 10, Duration::ZERO).await.unwrap()),
        [3, 5, 6]
    );
}

pub async fn group_lifecycle_errors(store: SharedStore) {
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    let missing = StoreError::GroupNotFound("nope".into());
    assert_eq!(
        groups.claim("nope", 1, Duration::ZERO).await.unwrap_err(),
        missing
    );
    assert_eq!(groups.ack("nope", &[1]).await.unwrap_err(), missing);
    assert_eq!(groups.status("nope").await.unwrap_err(), missing);
    assert_eq!(groups.delete("nope").await.unwrap_err(), missing);
    groups.put("temp", group_settings(1000, 3)).await.unwrap();
    assert_eq!(groups.names().await, ["temp"]);
    // Updating keeps the checkpoint and takes the new settings.
    ok(&store, "x", 2).await;
    let claimed = groups.claim("temp", 1, Duration::ZERO).await.unwrap();
    groups.ack("temp", &positions_of(&claimed)).await.unwrap();
    let updated = groups.put("temp", group_settings(2000, 7)).await.unwrap();
    assert_eq!(
        (updated.checkpoint, updated.settings.max_deliveries),
        (1, 7)
    );
    groups.delete("temp").await.unwrap();
    assert!(groups.names().await.is_empty());
    assert!(
        ConsumerGroups::load(Arc::clone(&store))
            .await
            .unwrap()
            .names()
            .await
            .is_empty()
    );
}

use crate::tail::LogTail;

async fn collect_tail(tail: &mut LogTail, count: usize) -> Vec<cairn_core::RecordedEvent> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(20), tail.next_batch())
            .await
            .expect("the tail kept up")
            .unwrap();
        assert!(!batch.is_empty());
        seen.extend(batch);
    }
    seen
}

pub async fn tail_catches_up_then_follows_live_writers(store: SharedStore) {
    ok(&store, "before", 30).await;
    let mut tail = LogTail::new(Arc::clone(&store), 1, EventFilter::default());
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for round in 0..50 {
                    ok(
                        &store,
                        &format!("live{writer}-{}", round % 3),
                        1 + round % 2,
                    )
                    .await;
                }
            })
        })
        .collect();
    // 30 before, then 4 writers x (25 x 1 + 25 x 2) events.
    let total = 30 + 4 * 75;
    let seen = collect_tail(&mut tail, total).await;
    for writer in writers {
        writer.await.unwrap();
    }
    let positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=total as u64).collect::<Vec<_>>(),
        "every position once, in order"
    );
    assert_eq!(tail.position(), total as u64 + 1);
    let (from_log, from_live) = tail.sources();
    assert!(
        from_log >= 30 && from_live > 0,
        "caught up from the log, then live: {from_log} {from_live}"
    );
    // Live events carry everything a read from the log does.
    let from_log = store
        .read_all(1, &EventFilter::default(), 1000)
        .await
        .unwrap()
        .events;
    assert_eq!(seen, from_log);
}

pub async fn tail_recovers_from_lagging_and_large_commits(store: SharedStore) {
    let mut tail = LogTail::new(Arc::clone(&store), 1, EventFilter::default());
    // More commits than the live feed keeps (512), while the tail does not read.
    for _ in 0..520 {
        ok(&store, "lagging", 1).await;
    }
    // And one commit too large for the feed.
    ok(&store, "large", 1500).await;
    ok(&store, "after", 1).await;
    let seen = collect_tail(&mut tail, 2021).await;
    let positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=2021).collect::<Vec<_>>());
}

pub async fn tail_filters(store: SharedStore) {
    let filter = EventFilter {
        category: Some("order".into()),
        ..Default::default()
    };
    ok(&store, "order-1", 1).await;
    ok(&store, "cart-1", 1).await;
    let mut tail = LogTail::new(Arc::clone(&store), 1, filter);
    let first = collect_tail(&mut tail, 1).await;
    assert_eq!(first[0].position, 1);
    ok(&store, "cart-2", 2).await;
    ok(&store, "order-2", 1).await;
    let second = collect_tail(&mut tail, 1).await;
    assert_eq!(
        (second.len(), second[0].position, second[0].stream.as_str()),
        (1, 5, "order-2")
    );
    let quiet = tail
        .next_batch_within(Duration::from_millis(50))
        .await
        .unwrap();
    assert!(quiet.is_empty());
}

pub async fn group_filter_change_keeps_deliveries(store: SharedStore) {
    let groups = ConsumerGroups::load(Arc::clone(&store)).await.unwrap();
    ok(&store, "a-1", 1).await;
    ok(&store, "a-2", 1).await;
    ok(&store, "b-1", 1).await;
    let by_category = GroupSettings {
        filter: EventFilter {
            category: Some("a".into()),
            ..Default::default()
        },
        ..group_settings(30_000, 5)
    };
    groups.put("refilter", by_category).await.unwrap();
    let claimed = groups.claim("refilter", 2, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&claimed), [1, 2]);
    groups.ack("refilter", &[2]).await.unwrap();
    // Widen the filter while 1 is in flight and 2 is acknowledged: neither comes again.
    groups
        .put("refilter", group_settings(30_000, 5))
        .await
        .unwrap();
    let next = groups.claim("refilter", 10, Duration::ZERO).await.unwrap();
    assert_eq!(positions_of(&next), [3]);
    assert_eq!(groups.status("refilter").await.unwrap().in_flight, 2);
    groups.ack("refilter", &[1, 3]).await.unwrap();
    assert_eq!(groups.status("refilter").await.unwrap().checkpoint, 3);
}

/// An event as another store recorded it, for `import_events`.
pub fn recorded(
    position: u64,
    name: &str,
    version: u64,
    recorded_at: i64,
) -> cairn_core::RecordedEvent {
    cairn_core::RecordedEvent {
        id: Uuid::now_v7(),
        stream: stream(name),
        event_type: "Imported".to_owned(),
        version,
        position,
        data: format!("{{\"p\":{position},\"s\":\"\\u00e9 \\\"q\\\"\"}}"),
        metadata: "{\"$correlation_id\":\"c\"}".to_owned(),
        tags: if position.is_multiple_of(2) {
            vec!["even".to_owned(), format!("p:{position}")]
        } else {
            Vec::new()
        },
        recorded_at,
    }
}

fn imported(events: &[cairn_core::RecordedEvent]) -> Vec<crate::ImportRecord> {
    events
        .iter()
        .cloned()
        .map(crate::ImportRecord::Event)
        .collect()
}

/// The whole log, read forwards in small pages (so paging is exercised too).
pub async fn whole_log(store: &dyn crate::EventStore) -> Vec<cairn_core::RecordedEvent> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = store
            .read_all(from, &EventFilter::default(), 7)
            .await
            .unwrap();
        if page.events.is_empty() {
            return events;
        }
        from = page.next_from_position;
        events.extend(page.events);
    }
}

pub async fn import_keeps_everything_and_appends_continue(store: SharedStore) {
    // Times from the past, as an export from an older store has them.
    let base = 1_600_000_000_000_000;
    let events: Vec<_> = (1..=9u64)
        .map(|position| {
            let (name, version) = match position {
                1..=4 => ("order-1", position - 1),
                5 | 6 => ("order-2", position - 5),
                _ => ("gone-1", position - 7),
            };
            recorded(position, name, version, base + (position as i64 / 2) * 1000)
        })
        .collect();
    let mut records = imported(&events[..5]);
    let summary = store.import_events(records.split_off(0)).await.unwrap();
    assert_eq!(
        (summary.head, summary.events, summary.tombstones),
        (5, 5, 0)
    );
    records = imported(&events[5..]);
    records.push(crate::ImportRecord::Tombstone(crate::Tombstone {
        stream: stream("gone-1"),
        version: 2,
        deleted_at: base + 99_000,
    }));
    let summary = store.import_events(records).await.unwrap();
    assert_eq!(
        (summary.head, summary.events, summary.tombstones),
        (9, 4, 1)
    );

    // Everything as it was: ids, versions, positions, data byte for byte, tags, times.
    assert_eq!(whole_log(store.as_ref()).await, events);
    assert_eq!(store.head_position().await.unwrap(), 9);
    assert_eq!(*store.watch_head().borrow(), 9);
    let info = store.stream_info(&stream("order-1")).await.unwrap();
    assert_eq!(
        (
            info.version,
            info.position,
            info.created_at,
            info.updated_at
        ),
        (3, 4, events[0].recorded_at, events[3].recorded_at)
    );
    let tagged = store
        .read_all(
            1,
            &EventFilter {
                tags: vec!["even".into()],
                ..EventFilter::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(tagged.events.len(), 4);
    let by_category = store
        .read_all(
            1,
            &EventFilter {
                category: Some("order".into()),
                ..EventFilter::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(by_category.events.len(), 6);

    // The tombstone stands, and is listed for the next export.
    assert_eq!(
        store.stream_info(&stream("gone-1")).await.unwrap_err(),
        StoreError::StreamDeleted(stream("gone-1"))
    );
    assert_eq!(
        append(
            &store,
            "gone-1",
            ExpectedVersion::Any,
            vec![event("E", "1")]
        )
        .await
        .unwrap_err(),
        StoreError::StreamDeleted(stream("gone-1"))
    );
    let tombstones = store.list_tombstones(None, 10).await.unwrap();
    assert_eq!(
        tombstones,
        [crate::Tombstone {
            stream: stream("gone-1"),
            version: 2,
            deleted_at: base + 99_000,
        }]
    );

    // Appends continue after the import, in position and in version, and in time.
    let result = append(
        &store,
        "order-1",
        ExpectedVersion::Exact(3),
        vec![event("E", "{}")],
    )
    .await
    .unwrap();
    assert_eq!(result.first_position, 10);
    assert_eq!(result.streams[0].first_version, 4);
    let result = ok(&store, "order-3", 1).await;
    assert_eq!(
        (result.first_position, result.streams[0].first_version),
        (11, 0)
    );
    let last = store.read_event(11).await.unwrap().unwrap();
    assert!(last.recorded_at >= events[8].recorded_at);
    assert_eq!(store.head_position().await.unwrap(), 11);
    // Re-sent ids of imported events are recognised like any other.
    assert!(matches!(
        append(
            &store,
            "order-9",
            ExpectedVersion::Any,
            vec![NewEvent {
                id: events[0].id,
                ..event("E", "{}")
            }]
        )
        .await
        .unwrap_err(),
        StoreError::DuplicateEventId { .. }
    ));
}

pub async fn import_rejects_a_bad_batch_whole(store: SharedStore) {
    let rejected = |outcome: Result<crate::ImportSummary, crate::ImportError>| match outcome {
        Err(crate::ImportError::Rejected { index, reason }) => (index, reason),
        other => panic!("expected a rejection, got {other:?}"),
    };
    // A gap in the middle: nothing of the batch is written.
    let mut events: Vec<_> = (1..=4).map(|p| recorded(p, "a-1", p - 1, 10)).collect();
    events[3].position = 5;
    let (index, reason) = rejected(store.import_events(imported(&events)).await);
    assert_eq!(index, 3);
    assert!(reason.contains("gap"), "{reason}");
    assert_eq!(store.head_position().await.unwrap(), 0);
    assert!(whole_log(store.as_ref()).await.is_empty());
    assert_eq!(
        store.stream_info(&stream("a-1")).await.unwrap_err(),
        StoreError::StreamNotFound(stream("a-1"))
    );

    // A broken stream version.
    let mut events: Vec<_> = (1..=3).map(|p| recorded(p, "a-1", p - 1, 10)).collect();
    events[2].version = 5;
    let (index, reason) = rejected(store.import_events(imported(&events)).await);
    assert_eq!(index, 2);
    assert!(reason.contains("version 5"), "{reason}");
    assert!(whole_log(store.as_ref()).await.is_empty());

    // A log that does not start at the target's head.
    let (index, reason) = rejected(
        store
            .import_events(imported(&[recorded(2, "a-1", 0, 10)]))
            .await,
    );
    assert_eq!(index, 0);
    assert!(reason.contains("gap"), "{reason}");

    // An id the target holds already.
    let appended = ok(&store, "a-1", 1).await;
    assert_eq!(appended.last_position, 1);
    let existing = store.read_event(1).await.unwrap().unwrap();
    let mut twin = recorded(2, "b-1", 0, i64::MAX / 2);
    twin.id = existing.id;
    let (index, reason) = rejected(store.import_events(imported(&[twin])).await);
    assert_eq!(index, 0);
    assert!(reason.contains("exists already"), "{reason}");
    // A position the target has taken.
    let (_, reason) = rejected(
        store
            .import_events(imported(&[recorded(1, "b-1", 0, i64::MAX / 2)]))
            .await,
    );
    assert!(reason.contains("taken"), "{reason}");
    // Time going backwards from the target's last event.
    let (_, reason) = rejected(
        store
            .import_events(imported(&[recorded(2, "b-1", 0, 1)]))
            .await,
    );
    assert!(reason.contains("backwards"), "{reason}");
    assert_eq!(whole_log(store.as_ref()).await, [existing]);
    assert_eq!(store.head_position().await.unwrap(), 1);
}

pub async fn import_continues_a_log_and_repeats_tombstones(store: SharedStore) {
    // The target has events of its own (an earlier import that stopped halfway);
    // an import continues it from its head, streams included.
    ok(&store, "a-1", 2).await;
    let later = cairn_core::now_micros() + 1_000_000;
    let events = vec![recorded(3, "a-1", 2, later), recorded(4, "b-1", 0, later)];
    let tombstone = crate::ImportRecord::Tombstone(crate::Tombstone {
        stream: stream("a-1"),
        version: 2,
        deleted_at: later + 5,
    });
    let mut records = imported(&events);
    records.push(tombstone.clone());
    let summary = store.import_events(records).await.unwrap();
    assert_eq!(summary.head, 4);
    assert_eq!(whole_log(store.as_ref()).await[2..], events[..]);
    // Importing the tombstone again (a resumed import) changes nothing.
    let summary = store.import_events(vec![tombstone]).await.unwrap();
    assert_eq!(
        (summary.head, summary.events, summary.tombstones),
        (4, 0, 1)
    );
    assert_eq!(store.list_tombstones(None, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.list_tombstones(Some("a-1"), 10).await.unwrap(),
        Vec::new()
    );
    // Later appends are not earlier than the imported times.
    let result = ok(&store, "b-1", 1).await;
    assert_eq!(
        (result.first_position, result.streams[0].first_version),
        (5, 1)
    );
    let appended = store.read_event(5).await.unwrap().unwrap();
    assert!(appended.recorded_at >= later);
}
