//! `GET /v1/subscribe` over real HTTP: catch-up then live with no gap and no duplicate,
//! resuming, filters, keep-alives, slow and vanished clients, shutdown.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use cairn_server::SubscriptionOptions;
use futures::{Stream, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{LiveServer, Server, metric_value, wait_for};

/// How long any one step of a test may take before it fails.
const STEP: Duration = Duration::from_secs(20);

/// One record of an event stream.
#[derive(Debug, Clone, PartialEq)]
enum Record {
    Event { id: u64, event: Value },
    Comment(String),
}

/// A minimal SSE reader over a reqwest body.
struct SseClient {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
    parsed: VecDeque<Record>,
}

impl SseClient {
    async fn open(server: &LiveServer, query: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new().get(format!("{}/v1/subscribe{query}", server.url));
        if let Some(last) = last_event_id {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.expect("the subscription opens");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok()),
            Some("text/event-stream")
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            parsed: VecDeque::new(),
        }
    }

    /// The next record; `None` when the stream ended. Fails after `STEP`.
    async fn next(&mut self) -> Option<Record> {
        loop {
            if let Some(record) = self.parsed.pop_front() {
                return Some(record);
            }
            let chunk = tokio::time::timeout(STEP, self.body.next())
                .await
                .expect("a record within the step deadline");
            match chunk {
                None => return None,
                Some(chunk) => {
                    self.buffer
                        .extend_from_slice(&chunk.expect("the stream reads"));
                    self.parsed.extend(take_records(&mut self.buffer));
                }
            }
        }
    }

    /// The next event, skipping comments.
    async fn next_event(&mut self) -> (u64, Value) {
        loop {
            match self.next().await.expect("the stream goes on") {
                Record::Event { id, event } => return (id, event),
                Record::Comment(_) => continue,
            }
        }
    }

    /// Events until (and including) the one with id `last`.
    async fn events_through(&mut self, last: u64) -> Vec<(u64, Value)> {
        let mut events = Vec::new();
        loop {
            let (id, event) = self.next_event().await;
            events.push((id, event));
            if id >= last {
                return events;
            }
        }
    }
}

/// Takes every complete record (ended by an empty line) out of `buffer`.
fn take_records(buffer: &mut Vec<u8>) -> Vec<Record> {
    let mut records = Vec::new();
    while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
        let block: Vec<u8> = buffer.drain(..end + 2).collect();
        let text = std::str::from_utf8(&block).expect("UTF-8 records");
        records.push(parse_record(text.trim_end_matches('\n')));
    }
    records
}

fn parse_record(text: &str) -> Record {
    let mut id = None;
    let mut data = None;
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(": ") {
            assert!(
                id.is_none() && data.is_none(),
                "a comment inside a record: {text}"
            );
            return Record::Comment(comment.to_owned());
        } else if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.parse::<u64>().expect("a numeric id"));
        } else if let Some(value) = line.strip_prefix("data: ") {
            assert!(data.is_none(), "one data line per event: {text}");
            data = Some(serde_json::from_str::<Value>(value).expect("event JSON"));
        } else {
            panic!("unexpected line {line:?} in {text:?}");
        }
    }
    let (id, event) = (id.expect("an id"), data.expect("a data line"));
    assert_eq!(event["position"], id, "the id is the position");
    Record::Event { id, event }
}

async fn post(client: &reqwest::Client, url: String, body: &Value) {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .expect("the append is sent");
    assert_eq!(response.status(), StatusCode::CREATED);
}

async fn append(server: &LiveServer, stream: &str, events: Value) {
    post(
        &reqwest::Client::new(),
        format!("{}/v1/streams/{stream}/events", server.url),
        &json!({ "events": events }),
    )
    .await;
}

fn some_events(event_type: &str, count: usize) -> Value {
    (0..count)
        .map(|n| json!({"type": event_type, "data": {"n": n}}))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_every_position_once_in_order_while_four_writers_append() {
    let server = LiveServer::start(SubscriptionOptions::default()).await;
    // Some history to catch up on, more than one page of the tail.
    append(&server, "seed-1", some_events("Seeded", 700)).await;
    let mut writers = Vec::new();
    for writer in 0..4 {
        let url = server.url.clone();
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for request in 0..60 {
                let count = 1 + (request % 5);
                post(
                    &client,
                    format!("{url}/v1/streams/writer{writer}-{}/events", request % 3),
                    &json!({ "events": some_events("Written", count) }),
                )
                .await;
            }
        }));
    }
    // The subscriber starts from position 1 while the writers are at work.
    let head = server.store.watch_head();
    wait_for("the writers are under way", STEP, || *head.borrow() >= 760).await;
    let mut subscriber = SseClient::open(&server, "?from_position=1", None).await;
    for writer in writers {
        writer.await.expect("the writer finished");
    }
    let head = server.head().await;
    assert_eq!(head, 700 + 4 * 60 * 3);
    let positions: Vec<u64> = subscriber
        .events_through(head)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());
}

#[tokio::test]
async fn last_event_id_resumes_after_it_and_wins_over_from_position() {
    let server = LiveServer::start(SubscriptionOptions::default()).await;
    append(&server, "resume-1", some_events("E", 5)).await;
    let mut subscriber = SseClient::open(&server, "?from_position=1", Some("3")).await;
    assert_eq!(subscriber.next_event().await.0, 4);
    assert_eq!(subscriber.next_event().await.0, 5);
    append(&server, "resume-1", some_events("E", 1)).await;
    let (id, event) = subscriber.next_event().await;
    assert_eq!(id, 6);
    assert_eq!(event["stream"], "resume-1");
    assert_eq!(event["version"], 5);
    assert_eq!(event["data"], json!({"n": 0}));
}

#[tokio::test]
async fn from_position_starts_there_and_no_start_means_new_events_only() {
    let server = LiveServer::start(SubscriptionOptions::default()).await;
    append(&server, "start-1", some_events("E", 3)).await;
    let mut from_two = SseClient::open(&server, "?from_position=2", None).await;
    let mut new_only = SseClient::open(&server, "", None).await;
    let mut empty_last_id = SseClient::open(&server, "?from_position=3", Some("")).await;
    assert_eq!(from_two.next_event().await.0, 2);
    assert_eq!(from_two.next_event().await.0, 3);
    assert_eq!(empty_last_id.next_event().await.0, 3);
    append(&server, "start-1", some_events("E", 1)).await;
    assert_eq!(from_two.next_event().await.0, 4);
    assert_eq!(new_only.next_event().await.0, 4);
}

#[tokio::test]
async fn filters_pick_category_types_tags_and_stream() {
    let server = LiveServer::start(SubscriptionOptions::default()).await;
    append(
        &server,
        "order-1",
        json!([
            {"type": "Placed", "data": 1, "tags": ["customer:1"]},
            {"type": "Paid", "data": 2}
        ]),
    )
    .await; // 1, 2
    append(
        &server,
        "invoice-1",
        json!([{"type": "Placed", "data": 3, "tags": ["customer:1", "vip"]}]),
    )
    .await; // 3
    append(&server, "order-2", json!([{"type": "Shipped", "data": 4}])).await; // 4
    append(
        &server,
        "order-2",
        json!([{"type": "Placed", "data": 5, "tags": ["customer:1", "vip"]}]),
    )
    .await; // 5
    for (query, expected) in [
        ("?from_position=1&category=order", vec![1, 2, 4, 5]),
        ("?from_position=1&types=Placed,Shipped", vec![1, 3, 4, 5]),
        ("?from_position=1&tags=customer:1,vip", vec![3, 5]),
        ("?from_position=1&stream=order-2", vec![4, 5]),
        ("?from_position=1&category=order&types=Placed", vec![1, 5]),
    ] {
        let mut subscriber = SseClient::open(&server, query, None).await;
        let seen: Vec<u64> = subscriber
            .events_through(*expected.last().unwrap())
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(seen, expected, "{query}");
    }
    // Live events go through the same filter.
    let mut subscriber = SseClient::open(&server, "?category=invoice", None).await;
    append(&server, "order-3", some_events("Placed", 2)).await; // 6, 7
    append(&server, "invoice-2", some_events("Placed", 1)).await; // 8
    let (id, event) = subscriber.next_event().await;
    assert_eq!((id, event["stream"].as_str()), (8, Some("invoice-2")));
}

#[tokio::test]
async fn an_idle_subscription_gets_keepalive_comments() {
    let server = LiveServer::start(SubscriptionOptions {
        keep_alive: Duration::from_millis(50),
        ..SubscriptionOptions::default()
    })
    .await;
    let mut subscriber = SseClient::open(&server, "?from_position=1", None).await;
    for _ in 0..2 {
        assert_eq!(
            subscriber.next().await,
            Some(Record::Comment("keepalive".into()))
        );
    }
    append(&server, "idle-1", some_events("E", 1)).await;
    assert_eq!(subscriber.next_event().await.0, 1);
}

#[tokio::test]
async fn bad_parameters_are_refused_with_json_before_the_stream_starts() {
    let server = Server::start().await;
    for (query, code, parameter) in [
        ("?from_position=0", "invalid_request", "from_position"),
        ("?from_position=x", "invalid_request", "from_position"),
        ("?from_position=-1", "invalid_request", "from_position"),
        ("?limit=5", "invalid_request", "limit"),
        ("?category=a&category=b", "invalid_request", "category"),
    ] {
        let error = server
            .get(&format!("/v1/subscribe{query}"))
            .await
            .assert_error(400, code);
        assert_eq!(error["parameter"], parameter, "{query}");
    }
    server
        .get("/v1/subscribe?stream=%24bad")
        .await
        .assert_error(400, "invalid_stream_name");
    for last_event_id in ["abc", "-1", "1.5", "99999999999999999999999"] {
        let error = server
            .call(
                "GET",
                "/v1/subscribe",
                &[("last-event-id", last_event_id)],
                "",
            )
            .await
            .assert_error(400, "invalid_request");
        assert_eq!(error["header"], "Last-Event-ID");
    }
    assert_eq!(server.state.subscriptions.active(), 0);
}

/// The parts of a chunked HTTP/1.1 response: its head and its decoded body.
fn split_chunked(raw: &[u8]) -> (String, Vec<u8>) {
    let head_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut rest = &raw[head_end + 4..];
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
            .expect("a hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (head, body);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_memory_stays_bounded() {
    let server = LiveServer::start(SubscriptionOptions {
        keep_alive: Duration::from_secs(1),
        buffer_frames: 16,
        slow_consumer_timeout: Duration::from_millis(300),
    })
    .await;
    let dropped_before = metric_value(
        &cairn_server::metrics::render(),
        "cairn_subscriptions_dropped_total",
    );
    // A client with a tiny receive window that sends its request and then reads
    // nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut connection = socket.connect(server.address).await.unwrap();
    connection
        .write_all(
            b"GET /v1/subscribe?from_position=1 HTTP/1.1\r\nhost: cairn\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let state = server.state.clone();
    wait_for("the producer runs", STEP, || {
        state.subscriptions.active() == 1
    })
    .await;

    // 100,000 events of ~300 bytes: far more than every buffer on the way.
    let client = reqwest::Client::new();
    let padding = "x".repeat(250);
    for request in 0..100 {
        let events: Vec<Value> = (0..1000)
            .map(|n| json!({"type": "Bulk", "data": {"n": n, "padding": padding}}))
            .collect();
        post(
            &client,
            format!("{}/v1/streams/bulk-{}/events", server.url, request % 10),
            &json!({ "events": events }),
        )
        .await;
    }
    assert_eq!(server.head().await, 100_000);
    wait_for("the producer is dropped", STEP, || {
        state.subscriptions.active() == 0
    })
    .await;
    let metrics = cairn_server::metrics::render();
    let dropped_after = metric_value(&metrics, "cairn_subscriptions_dropped_total");
    assert!(dropped_after >= dropped_before + 1.0, "{metrics}");
    assert!(
        metrics.contains(r#"cairn_subscriptions_dropped_total{reason="slow_consumer"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("cairn_subscriptions_active"), "{metrics}");

    // What is left: the events that were buffered, in order from 1, then the final
    // comment; far fewer than were appended.
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, connection.read_to_end(&mut raw))
        .await
        .expect("the rest arrives and the connection closes")
        .unwrap();
    let (head, body) = split_chunked(&raw);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let records = take_records(&mut body.clone());
    let (last, events) = records.split_last().expect("records");
    assert_eq!(
        *last,
        Record::Comment(cairn_api::SSE_SLOW_CONSUMER_COMMENT.to_owned())
    );
    assert!(last_comment_mentions_slow_consumer(last));
    let ids: Vec<u64> = events
        .iter()
        .filter_map(|record| match record {
            Record::Event { id, .. } => Some(*id),
            Record::Comment(_) => None,
        })
        .collect();
    assert!(!ids.is_empty());
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert!(
        ids.len() < 50_000,
        "the producer stopped early: {} events were buffered",
        ids.len()
    );
}

fn last_comment_mentions_slow_consumer(record: &Record) -> bool {
    matches!(record, Record::Comment(text) if text.contains("slow_consumer"))
}

#[tokio::test]
async fn a_client_that_disconnects_ends_its_producer() {
    // The default keep-alive (15 s): the producer must notice the client leaving by
    // itself, not at its next write.
    let server = LiveServer::start(SubscriptionOptions::default()).await;
    let subscriber = SseClient::open(&server, "", None).await;
    let state = server.state.clone();
    wait_for("the producer runs", STEP, || {
        state.subscriptions.active() == 1
    })
    .await;
    drop(subscriber);
    wait_for("the producer ends", Duration::from_secs(5), || {
        state.subscriptions.active() == 0
    })
    .await;
}

#[tokio::test]
async fn shutting_down_ends_every_subscription_with_a_final_comment() {
    let mut server = LiveServer::start(SubscriptionOptions::default()).await;
    append(&server, "bye-1", some_events("E", 2)).await;
    let mut subscriber = SseClient::open(&server, "?from_position=1", None).await;
    assert_eq!(subscriber.events_through(2).await.len(), 2);
    server.stop();
    let mut last = None;
    while let Some(record) = subscriber.next().await {
        last = Some(record);
    }
    match last {
        Some(Record::Comment(text)) => assert!(text.starts_with("closed: shutdown"), "{text}"),
        other => panic!("expected the shutdown comment, got {other:?}"),
    }
    let state = server.state.clone();
    wait_for("the producer ends", STEP, || {
        state.subscriptions.active() == 0
    })
    .await;
}
