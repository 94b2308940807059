//! The request timeout never abandons work handed to the store: a client told 503 can
//! retry without appending twice, and a client told 201 was told the truth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use cairn_core::{EventFilter, ExpectedVersion, Position, RecordedEvent, StreamName, Version};
use cairn_server::Limits;
use cairn_store::{
    AppendOutcome, AppendRequest, Direction, EventStore, GroupRecord, GroupSettings, LiveBatch,
    LogSlice, ParkedEvent, SharedStore, StoreError, StreamInfo, StreamPage, StreamSlice,
};
use futures::StreamExt;
use http::{Request, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::{Server, temporary_store};

/// A store whose writes commit at once but are answered `answer_delay` later, as a
/// busy writer would: the case where a timeout used to answer 503 for a committed write.
struct LateAnswers {
    inner: SharedStore,
    answer_delay: Duration,
}

#[async_trait]
impl EventStore for LateAnswers {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let outcome = self.inner.append(request).await;
        tokio::time::sleep(self.answer_delay).await;
        outcome
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Version, StoreError> {
        let outcome = self.inner.delete_stream(stream, expected).await;
        tokio::time::sleep(self.answer_delay).await;
        outcome
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<Version>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, StoreError> {
        self.inner.read_stream(stream, from, direction, limit).await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, StoreError> {
        self.inner.stream_info(stream).await
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        self.inner.list_streams(prefix, after, limit).await
    }

    async fn read_all(
        &self,
        from: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice, StoreError> {
        self.inner.read_all(from, filter, limit).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<Position> {
        self.inner.watch_head()
    }

    fn live_events(&self) -> tokio::sync::broadcast::Receiver<LiveBatch> {
        self.inner.live_events()
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.read_event(position).await
    }

    async fn save_group(
        &self,
        name: &str,
        settings: &GroupSettings,
        checkpoint: Position,
    ) -> Result<GroupRecord, StoreError> {
        self.inner.save_group(name, settings, checkpoint).await
    }

    async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_group(name).await
    }

    async fn load_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.inner.load_groups().await
    }

    async fn save_checkpoint(&self, name: &str, checkpoint: Position) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, checkpoint).await
    }

    async fn park_events(&self, name: &str, events: Vec<ParkedEvent>) -> Result<(), StoreError> {
        self.inner.park_events(name, events).await
    }

    async fn replay_parked(
        &self,
        name: &str,
        positions: Option<Vec<Position>>,
    ) -> Result<Vec<Position>, StoreError> {
        self.inner.replay_parked(name, positions).await
    }

    async fn remove_parked(&self, name: &str, positions: Vec<Position>) -> Result<(), StoreError> {
        self.inner.remove_parked(name, positions).await
    }

    async fn list_parked(
        &self,
        name: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        self.inner.list_parked(name, after, limit).await
    }
}

async fn server_with_late_answers(request_timeout: Duration, answer_delay: Duration) -> Server {
    let (store, dir) = temporary_store();
    let store: SharedStore = Arc::new(LateAnswers {
        inner: store,
        answer_delay,
    });
    Server::on(store, dir, Limits::default(), request_timeout).await
}

#[tokio::test]
async fn an_append_the_store_took_is_answered_with_its_outcome_not_503() {
    let server =
        server_with_late_answers(Duration::from_millis(50), Duration::from_millis(400)).await;
    let started = Instant::now();
    let reply = server
        .append("late-1", json!([{"type": "E", "data": 1}]))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(reply.json()["last_position"], 1);
    assert_eq!(server.head().await, 1);

    let reply = server
        .post_json(
            "/v1/events",
            &json!({"events": [{"stream": "late-2", "type": "E", "data": 2}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(server.head().await, 2);
}

#[tokio::test]
async fn a_delete_the_store_took_is_answered_with_its_outcome_not_503() {
    let server =
        server_with_late_answers(Duration::from_millis(50), Duration::from_millis(300)).await;
    let reply = server
        .append("late-3", json!([{"type": "E", "data": 1}]))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let reply = server.delete("/v1/streams/late-3").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    let stream = StreamName::parse("late-3").unwrap();
    assert!(matches!(
        server.state.store.stream_info(&stream).await,
        Err(StoreError::StreamDeleted(_))
    ));
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_off_with_503_and_nothing_is_written() {
    let server = Server::with(Limits::default(), Duration::from_millis(150)).await;
    let first_half = Bytes::from_static(br#"{"events":[{"type":"E","#);
    let stalled = futures::stream::iter([Ok::<_, std::io::Error>(first_half)])
        .chain(futures::stream::pending());
    let request = Request::post("/v1/streams/slowloris-1/events")
        .header("content-length", "40")
        .body(Body::from_stream(stalled))
        .unwrap();
    let reply = server.send(request).await;
    reply.assert_error(503, "unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(server.head().await, 0);
    server.assert_still_serving().await;
}

/// Many appends racing a 3 ms time limit, their bodies arriving in two parts 0–5.5 ms
/// apart (or never finishing): some are cut off while their body arrives, some reach the store just before
/// the limit and commit after it. Each is either 201 and in the log once, or 503 and
/// not in the log at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_tiny_time_limit_every_503_wrote_nothing_and_every_201_wrote_once() {
    let server = Arc::new(Server::with(Limits::default(), Duration::from_millis(3)).await);
    let mut tasks = Vec::new();
    for index in 0..300u64 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let id = Uuid::now_v7();
            let body = json!({"events": [{"id": id, "type": "E", "data": index}]}).to_string();
            let (first, second) = body.split_at(body.len() / 2);
            let (first, second) = (
                Bytes::from(first.to_owned()),
                Bytes::from(second.to_owned()),
            );
            // Some bodies are whole at once (always 201), some never end (always 503),
            // the rest race the limit.
            let pause = match index % 13 {
                12 => Duration::MAX,
                step => Duration::from_micros(step * 500),
            };
            let parts = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
                futures::stream::once(async move {
                    if pause == Duration::MAX {
                        futures::future::pending::<()>().await;
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    Ok(second)
                }),
            );
            let request = Request::post(format!("/v1/streams/race-{}/events", index % 7))
                .body(Body::from_stream(parts))
                .unwrap();
            (id, server.send(request).await.status)
        }));
    }
    let mut created = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        let (id, status) = task.await.unwrap();
        match status {
            StatusCode::CREATED => created.push(id.to_string()),
            StatusCode::SERVICE_UNAVAILABLE => refused.push(id.to_string()),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        !refused.is_empty() && !created.is_empty(),
        "both outcomes happen: {} created, {} refused",
        created.len(),
        refused.len()
    );
    assert_eq!(server.head().await, created.len() as u64);
    // Read the log from the store: a read through the server has 3 ms too.
    let log = server
        .state
        .store
        .read_all(1, &EventFilter::default(), 1000)
        .await
        .unwrap();
    let ids: Vec<String> = log
        .events
        .iter()
        .map(|event| event.id.to_string())
        .collect();
    for id in &created {
        assert_eq!(ids.iter().filter(|seen| *seen == id).count(), 1, "{id}");
    }
    for id in &refused {
        assert!(!ids.contains(id), "a 503 wrote {id}");
    }
}

#[tokio::test]
async fn a_claim_waits_its_wait_ms_past_the_request_timeout() {
    let server = Server::with(Limits::default(), Duration::from_millis(100)).await;
    let reply = server.put_json("/v1/groups/patient", &json!({})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let started = Instant::now();
    let reply = server
        .post_json(
            "/v1/groups/patient/claim",
            &json!({"consumer": "c1", "wait_ms": 400}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json(), json!({"deliveries": []}));
    assert!(started.elapsed() >= Duration::from_millis(400));
}
