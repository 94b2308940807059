//! Consumer groups through the typed calls and the worker, against a real server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{
    ClaimRequest, Client, Delivery, ErrorCode, EventFilterSpec, ExpectedVersion, GroupRequest,
    GroupWorker, Nack, event,
};
use serde_json::json;
use tokio::sync::watch;

use crate::TestServer;

async fn append_jobs(client: &Client, streams: usize, per_stream: usize) {
    for stream in 0..streams {
        let events = (0..per_stream)
            .map(|n| event("JobQueued", json!({"n": n})))
            .collect();
        client
            .append(&format!("job-{stream}"), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
}

fn jobs_group() -> GroupRequest {
    GroupRequest {
        filter: Some(EventFilterSpec {
            category: Some("job".into()),
            ..EventFilterSpec::default()
        }),
        ..GroupRequest::default()
    }
}

fn claim(consumer: &str, max: u32) -> ClaimRequest {
    ClaimRequest {
        consumer: consumer.into(),
        max: Some(max),
        wait_ms: Some(0),
    }
}

fn positions(deliveries: &[Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.position).collect()
}

#[tokio::test]
async fn every_group_call_does_what_it_says() {
    let server = TestServer::start().await;
    let client = server.client();
    let request = GroupRequest {
        max_deliveries: Some(2),
        ack_timeout_ms: Some(60_000),
        ..jobs_group()
    };
    let created = client.put_group("jobs", &request).await.unwrap();
    assert!(created.created);
    assert_eq!(created.status.group, "jobs");
    assert_eq!(created.status.settings.max_deliveries, 2);
    let updated = client.put_group("jobs", &request).await.unwrap();
    assert!(!updated.created);
    let list = client.list_groups().await.unwrap();
    assert_eq!(
        list.groups
            .iter()
            .map(|g| g.group.as_str())
            .collect::<Vec<_>>(),
        ["jobs"]
    );

    append_jobs(&client, 1, 5).await;
    client
        .append(
            "other-1",
            ExpectedVersion::Any,
            vec![event("Noise", json!({}))],
        )
        .await
        .unwrap();
    let claimed = client.claim("jobs", &claim("c1", 10)).await.unwrap();
    assert_eq!(positions(&claimed.deliveries), [1, 2, 3, 4, 5]);
    assert!(claimed.deliveries.iter().all(|d| d.attempt == 1));
    assert_eq!(claimed.deliveries[0].event.stream, "job-0");

    let acked = client.ack("jobs", &[1, 2]).await.unwrap();
    assert_eq!((acked.settled, acked.ignored), (2, 0));
    let again = client.ack("jobs", &[1]).await.unwrap();
    assert_eq!((again.settled, again.ignored), (0, 1));
    let nacked = client.nack("jobs", &[3], None).await.unwrap();
    assert_eq!((nacked.settled, nacked.parked), (1, 0));
    let redelivered = client.claim("jobs", &claim("c2", 10)).await.unwrap();
    assert_eq!(positions(&redelivered.deliveries), [3]);
    assert_eq!(redelivered.deliveries[0].attempt, 2);
    let parked = client
        .nack("jobs", &[3], Some(Duration::from_millis(10)))
        .await
        .unwrap();
    assert_eq!((parked.settled, parked.parked), (1, 1));

    let status = client.group_status("jobs").await.unwrap();
    assert_eq!(status.checkpoint, 3, "{status:?}");
    assert_eq!((status.in_flight, status.parked), (2, 1), "{status:?}");
    assert_eq!(status.head_position, 6);
    let list = client.parked("jobs", None, None).await.unwrap();
    assert_eq!(list.parked.len(), 1);
    assert_eq!(list.parked[0].position, 3);
    assert_eq!(list.parked[0].deliveries, 2);
    assert!(!list.parked[0].replaying);
    let after = client.parked("jobs", Some(3), Some(10)).await.unwrap();
    assert!(after.parked.is_empty(), "{after:?}");

    let replayed = client.replay_parked("jobs", None).await.unwrap();
    assert_eq!(replayed.replayed, 1);
    let back = client.claim("jobs", &claim("c1", 10)).await.unwrap();
    assert_eq!(positions(&back.deliveries), [3]);
    let done = client.ack("jobs", &[3, 4, 5]).await.unwrap();
    assert_eq!(done.settled, 3);
    let status = client.group_status("jobs").await.unwrap();
    assert_eq!(
        (status.checkpoint, status.in_flight, status.parked),
        (6, 0, 0),
        "{status:?}"
    );

    let missing = client.group_status("nope").await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
    let missing = client.claim("nope", &claim("c1", 1)).await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
    client.delete_group("jobs").await.unwrap();
    let gone = client.group_status("jobs").await.unwrap_err();
    assert_eq!(gone.status(), Some(404), "{gone}");
    let twice = client.delete_group("jobs").await.unwrap_err();
    assert_eq!(twice.code(), Some(ErrorCode::NotFound), "{twice}");
}

#[tokio::test]
async fn a_long_poll_claim_returns_when_an_event_arrives() {
    let server = TestServer::start().await;
    let client = server.client();
    client.put_group("jobs", &jobs_group()).await.unwrap();
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .claim(
                    "jobs",
                    &ClaimRequest {
                        consumer: "c1".into(),
                        max: Some(10),
                        wait_ms: Some(30_000),
                    },
                )
                .await
        })
    };
    append_jobs(&client, 1, 1).await;
    let claimed = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long poll ends with the event")
        .unwrap()
        .unwrap();
    assert_eq!(positions(&claimed.deliveries), [1]);
}

/// A shutdown signal for workers.
fn stop_signal() -> (
    Arc<watch::Sender<bool>>,
    impl Fn() -> futures::future::BoxFuture<'static, ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let wait = move || -> futures::future::BoxFuture<'static, ()> {
        let mut stopped = stopped.clone();
        Box::pin(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
    };
    (stop, wait)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_workers_handle_every_event_and_leave_nothing_in_flight() {
    let server = TestServer::start().await;
    let client = server.client();
    append_jobs(&client, 3, 100).await;
    client.put_group("jobs", &jobs_group()).await.unwrap();

    let handled: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let (stop, stopped) = stop_signal();
    let mut workers = Vec::new();
    for worker in 0..2 {
        let handled = handled.clone();
        let stop = stop.clone();
        let handler = move |delivery: Delivery| {
            let handled = handled.clone();
            let stop = stop.clone();
            async move {
                // Let the workers overlap.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let mut handled = handled.lock().unwrap();
                *handled.entry(delivery.position).or_default() += 1;
                if handled.len() == 300 {
                    let _ = stop.send(true);
                }
                Ok::<(), Nack>(())
            }
        };
        let run = GroupWorker::new(client.clone(), "jobs", format!("worker-{worker}"))
            .concurrency(8)
            .batch(16)
            .wait(Duration::from_millis(200))
            .run(handler, stopped());
        workers.push(tokio::spawn(run));
    }
    let mut total_acked = 0;
    let mut both_worked = true;
    for worker in workers {
        let stats = tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("the workers stop")
            .unwrap()
            .unwrap();
        assert_eq!(stats.acked, stats.delivered, "{stats:?}");
        assert_eq!((stats.nacked, stats.request_errors), (0, 0), "{stats:?}");
        both_worked &= stats.acked > 0;
        total_acked += stats.acked;
    }
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled.keys().copied().collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    assert!(total_acked >= 300);
    assert!(both_worked, "the two workers competed for the events");
    let status = client.group_status("jobs").await.unwrap();
    assert_eq!(
        (status.checkpoint, status.in_flight, status.waiting),
        (300, 0, 0),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_handler_error_gets_its_event_delivered_again() {
    let server = TestServer::start().await;
    let client = server.client();
    append_jobs(&client, 1, 20).await;
    client.put_group("jobs", &jobs_group()).await.unwrap();

    let attempts: Arc<Mutex<BTreeMap<u64, Vec<u32>>>> = Arc::default();
    let (stop, stopped) = stop_signal();
    let handler = {
        let attempts = attempts.clone();
        move |delivery: Delivery| {
            let attempts = attempts.clone();
            let stop = stop.clone();
            async move {
                attempts
                    .lock()
                    .unwrap()
                    .entry(delivery.position)
                    .or_default()
                    .push(delivery.attempt);
                let result = if delivery.attempt == 1 && delivery.position.is_multiple_of(5) {
                    Err(Nack::after(Duration::from_millis(30), "not yet"))
                } else if delivery.attempt == 1 && delivery.position == 7 {
                    // Any error converts: `?` works in handlers.
                    "seven".parse::<u32>().map(|_| ()).map_err(Nack::from)
                } else {
                    Ok(())
                };
                let all_done = {
                    let attempts = attempts.lock().unwrap();
                    attempts.len() == 20
                        && attempts.iter().all(|(p, a)| {
                            a.len() == 1 + usize::from(p.is_multiple_of(5) || *p == 7)
                        })
                };
                if all_done {
                    let _ = stop.send(true);
                }
                result
            }
        }
    };
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        GroupWorker::new(client.clone(), "jobs", "w")
            .concurrency(4)
            .batch(8)
            .wait(Duration::from_millis(200))
            .run(handler, stopped()),
    )
    .await
    .expect("the worker stops")
    .unwrap();
    let attempts = attempts.lock().unwrap().clone();
    for (position, seen) in &attempts {
        let expected: &[u32] = if position.is_multiple_of(5) || *position == 7 {
            &[1, 2]
        } else {
            &[1]
        };
        assert_eq!(seen, expected, "attempts of {position}");
    }
    assert_eq!(
        (stats.acked, stats.nacked, stats.redelivered, stats.parked),
        (20, 5, 5, 0),
        "{stats:?}"
    );
    let status = client.group_status("jobs").await.unwrap();
    assert_eq!((status.checkpoint, status.in_flight), (20, 0), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_worker_finishes_and_settles_what_it_holds() {
    let server = TestServer::start().await;
    let client = server.client();
    append_jobs(&client, 1, 50).await;
    client.put_group("jobs", &jobs_group()).await.unwrap();

    let started: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let finished: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let (stop, stopped) = stop_signal();
    let handler = {
        let started = started.clone();
        let finished = finished.clone();
        move |delivery: Delivery| {
            let started = started.clone();
            let finished = finished.clone();
            let stop = stop.clone();
            async move {
                let count = {
                    let mut started = started.lock().unwrap();
                    started.insert(delivery.position);
                    started.len()
                };
                if count == 5 {
                    // Stop while these handlers are still running.
                    let _ = stop.send(true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                finished.lock().unwrap().insert(delivery.position);
                Ok::<(), Nack>(())
            }
        }
    };
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        GroupWorker::new(client.clone(), "jobs", "w")
            .concurrency(10)
            .batch(10)
            .wait(Duration::from_secs(1))
            .run(handler, stopped()),
    )
    .await
    .expect("the worker stops")
    .unwrap();
    let started = started.lock().unwrap().clone();
    let finished = finished.lock().unwrap().clone();
    assert_eq!(started, finished, "every handler that started finished");
    assert!(finished.len() < 50, "it stopped early: {}", finished.len());
    assert_eq!(stats.acked, finished.len() as u64, "{stats:?}");
    assert_eq!(stats.delivered, stats.acked, "{stats:?}");
    let status = client.group_status("jobs").await.unwrap();
    assert_eq!(status.in_flight, 0, "nothing left in flight: {status:?}");
    assert_eq!(status.checkpoint, stats.acked, "{status:?}");

    // Another worker takes over from there.
    let rest: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let (stop, stopped) = stop_signal();
    let remaining = 50 - finished.len();
    let handler = {
        let rest = rest.clone();
        move |delivery: Delivery| {
            let rest = rest.clone();
            let stop = stop.clone();
            async move {
                let mut rest = rest.lock().unwrap();
                rest.insert(delivery.position);
                if rest.len() == remaining {
                    let _ = stop.send(true);
                }
                Ok::<(), Nack>(())
            }
        }
    };
    GroupWorker::new(client.clone(), "jobs", "w2")
        .wait(Duration::from_millis(200))
        .run(handler, stopped())
        .await
        .unwrap();
    let rest = rest.lock().unwrap().clone();
    assert!(
        rest.is_disjoint(&finished),
        "acked events are not redelivered"
    );
    assert_eq!(rest.len() + finished.len(), 50);
    let status = client.group_status("jobs").await.unwrap();
    assert_eq!((status.checkpoint, status.in_flight), (50, 0), "{status:?}");
}

#[tokio::test]
async fn a_worker_on_a_missing_group_fails() {
    let server = TestServer::start().await;
    let error = GroupWorker::new(server.client(), "nope", "w")
        .run(|_| async { Ok::<(), Nack>(()) }, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
}
