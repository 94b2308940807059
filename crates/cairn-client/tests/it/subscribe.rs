//! Subscriptions: catch-up then live, and resumption after the connection drops —
//! a server restart, a slow-consumer close — without a gap or a duplicate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{
    Client, ErrorCode, EventFilterSpec, ExpectedVersion, ReconnectPolicy, SubscribeOptions, event,
};
use futures::{Stream, StreamExt};
use serde_json::json;

use crate::TestServer;

/// Reconnects quickly, for tests.
fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        max_attempts: Some(100),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
    }
}

/// The next `count` items' positions, with a deadline.
async fn take_positions<S, T>(
    events: &mut S,
    count: usize,
    position: impl Fn(&T) -> u64,
) -> Vec<u64>
where
    S: Stream<Item = Result<T, cairn_client::ClientError>> + Unpin,
{
    let mut positions = Vec::with_capacity(count);
    while positions.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .unwrap_or_else(|_| panic!("no event in time after {positions:?}"))
            .expect("the subscription goes on")
            .expect("an event");
        positions.push(position(&next));
    }
    positions
}

async fn append_n(client: &Client, stream: &str, count: usize, data_bytes: usize) {
    let padding = "x".repeat(data_bytes);
    let events = (0..count)
        .map(|n| event("Happened", json!({"n": n, "pad": padding})))
        .collect();
    client
        .append(stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_subscription_catches_up_then_follows_live_through_its_filter() {
    let server = TestServer::start().await;
    let client = server.client();
    append_n(&client, "order-1", 2, 0).await;
    append_n(&client, "invoice-1", 1, 0).await;
    let mut events = client.subscribe(SubscribeOptions::from(1).with_filter(EventFilterSpec {
        category: Some("order".into()),
        ..EventFilterSpec::default()
    }));
    assert_eq!(take_positions(&mut events, 2, |e| e.position).await, [1, 2]);
    append_n(&client, "invoice-1", 1, 0).await;
    append_n(&client, "order-2", 1, 0).await;
    let next = events.next().await.unwrap().unwrap();
    assert_eq!((next.position, next.stream.as_str()), (5, "order-2"));
    assert_eq!(next.event_type, "Happened");
    assert_eq!(events.last_position(), Some(5));
    assert_eq!(events.reconnects(), 0);
}

#[tokio::test]
async fn a_subscription_resumes_after_a_server_restart_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let client = server.client();
    let mut events = client.subscribe(SubscribeOptions {
        from_position: Some(1),
        reconnect: fast_reconnect(),
        ..SubscribeOptions::default()
    });
    append_n(&client, "order-1", 3, 0).await;
    assert_eq!(
        take_positions(&mut events, 3, |e| e.position).await,
        [1, 2, 3]
    );

    // The server stops (its subscriptions end) and comes back on the same port and
    // data; events appended meanwhile arrive by catch-up, later ones live.
    let server = server.restart().await;
    let client = server.client();
    append_n(&client, "order-1", 3, 0).await;
    assert_eq!(
        take_positions(&mut events, 3, |e| e.position).await,
        [4, 5, 6]
    );
    append_n(&client, "order-2", 2, 0).await;
    assert_eq!(take_positions(&mut events, 2, |e| e.position).await, [7, 8]);
    assert!(events.reconnects() >= 1, "{}", events.reconnects());
}

/// How many subscriptions the server dropped as slow consumers, from `/metrics`.
async fn slow_consumer_drops(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("cairn_subscriptions_dropped_total") && line.contains("slow_consumer")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_dropped_by_the_server_resumes_where_it_stopped() {
    let server = TestServer::start_with(cairn_server::SubscriptionOptions {
        buffer_frames: 2,
        slow_consumer_timeout: Duration::from_millis(100),
        ..cairn_server::SubscriptionOptions::default()
    })
    .await;
    let client = server.client();
    let drops_before = slow_consumer_drops(&server.url).await;
    let mut events = client.subscribe_raw(SubscribeOptions {
        from_position: Some(1),
        reconnect: fast_reconnect(),
        ..SubscribeOptions::default()
    });
    append_n(&client, "big-0", 1, 0).await;
    assert_eq!(take_positions(&mut events, 1, |e| e.position).await, [1]);

    // Stop reading while far more than the socket buffers hold is appended: the
    // server's buffer fills and it drops the subscription.
    const BATCHES: usize = 24;
    const PER_BATCH: usize = 16;
    for batch in 0..BATCHES {
        append_n(&client, &format!("big-{batch}"), PER_BATCH, 64 * 1024).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while slow_consumer_drops(&server.url).await <= drops_before {
        assert!(
            Instant::now() < deadline,
            "the server never dropped the slow subscription"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let total = BATCHES * PER_BATCH;
    let positions = take_positions(&mut events, total, |e| e.position).await;
    let expected: Vec<u64> = (2..=total as u64 + 1).collect();
    assert_eq!(positions, expected, "every event once, in order");
    assert!(events.reconnects() >= 1, "{}", events.reconnects());
    // Nothing more is pending: the next event is the next one appended.
    append_n(&client, "big-0", 1, 0).await;
    assert_eq!(
        take_positions(&mut events, 1, |e| e.position).await,
        [total as u64 + 2]
    );
}

#[tokio::test]
async fn a_refused_subscription_ends_with_its_error() {
    let server = TestServer::start().await;
    let mut events = server
        .client()
        .subscribe(SubscribeOptions::from(1).with_filter(EventFilterSpec {
            stream: Some("$not-a-stream".into()),
            ..EventFilterSpec::default()
        }));
    let error = events.next().await.unwrap().unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    assert!(
        matches!(
            error.code(),
            Some(ErrorCode::InvalidStreamName | ErrorCode::InvalidRequest)
        ),
        "{error}"
    );
    assert!(events.next().await.is_none());
}

/// A scripted SSE endpoint: what each connection (0, 1, …) is sent, and whether its
/// body then ends (else it stays open, silent).
type Script = Arc<dyn Fn(usize) -> (Vec<String>, bool) + Send + Sync>;

struct ScriptedServer {
    url: String,
    requests: Arc<Mutex<Vec<Connection>>>,
}

/// `(Last-Event-ID, query)` of a connection.
type Connection = (Option<String>, String);

fn event_json(position: u64) -> String {
    json!({
        "id": uuid::Uuid::new_v4(),
        "stream": "scripted-1",
        "type": "Scripted",
        "version": position - 1,
        "position": position,
        "data": {"position": position},
        "metadata": {},
        "tags": [],
        "recorded_at": "2026-11-24T05:31:30.000000Z",
    })
    .to_string()
}

impl ScriptedServer {
    async fn start(script: Script) -> Self {
        use axum::body::{Body, Bytes};
        use axum::http::{HeaderMap, Uri};

        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler = move |headers: HeaderMap, uri: Uri| {
            let seen = seen.clone();
            let script = script.clone();
            async move {
                let last = headers
                    .get("last-event-id")
                    .map(|value| value.to_str().unwrap().to_owned());
                let connection = {
                    let mut seen = seen.lock().unwrap();
                    seen.push((last, uri.query().unwrap_or_default().to_owned()));
                    seen.len() - 1
                };
                let (chunks, ends) = script(connection);
                let chunks = futures::stream::iter(
                    chunks
                        .into_iter()
                        .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk))),
                );
                let body = if ends {
                    Body::from_stream(chunks)
                } else {
                    Body::from_stream(chunks.chain(futures::stream::pending()))
                };
                ([("content-type", "text/event-stream")], body)
            }
        };
        let app = axum::Router::new().route("/v1/subscribe", axum::routing::get(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<Connection> {
        self.requests.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn split_frames_are_reassembled_and_a_resumption_never_repeats_an_event() {
    // The first connection sends events 1 and 2 in awkward chunks, then a slow-consumer
    // close; the next one repeats event 2 (which must not come out twice), then 3.
    let server = ScriptedServer::start(Arc::new(|connection| {
        if connection == 0 {
            let one = format!("id: 1\ndata: {}\n\n", event_json(1));
            let two = format!("id: 2\r\ndata: {}\r\n\r\n", event_json(2));
            let (a, b) = one.split_at(9);
            let (c, d) = two.split_at(two.len() - 3);
            let close = format!("{d}: {}\n\n", cairn_api::SSE_SLOW_CONSUMER_COMMENT);
            (
                vec![
                    ": keepalive\n\n".into(),
                    a.into(),
                    b.into(),
                    c.into(),
                    close,
                ],
                true,
            )
        } else {
            (
                vec![
                    format!("id: 2\ndata: {}\n\n", event_json(2)),
                    format!("id: 3\ndata: {}\n\n", event_json(3)),
                ],
                false,
            )
        }
    }))
    .await;
    let client = Client::new(&server.url).unwrap();
    let mut events = client.subscribe(SubscribeOptions {
        from_position: Some(1),
        reconnect: fast_reconnect(),
        ..SubscribeOptions::default()
    });
    let positions = take_positions(&mut events, 3, |e| e.position).await;
    assert_eq!(positions, [1, 2, 3]);
    assert_eq!(events.reconnects(), 1);
    assert_eq!(
        server.requests(),
        [
            (None, "from_position=1".to_owned()),
            (Some("2".to_owned()), "from_position=3".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_silent_connection_is_replaced_after_the_idle_timeout() {
    // Every connection sends the next event, then nothing at all, not even keepalives.
    let server = ScriptedServer::start(Arc::new(|connection| {
        let position = connection as u64 + 1;
        (
            vec![format!(
                "id: {position}\ndata: {}\n\n",
                event_json(position)
            )],
            false,
        )
    }))
    .await;
    let client = Client::new(&server.url).unwrap();
    let mut events = client.subscribe(SubscribeOptions {
        from_position: Some(1),
        reconnect: fast_reconnect(),
        idle_timeout: Duration::from_millis(100),
        ..SubscribeOptions::default()
    });
    let positions = take_positions(&mut events, 3, |e| e.position).await;
    assert_eq!(positions, [1, 2, 3]);
    let requests = server.requests();
    assert_eq!(
        requests[1],
        (Some("1".to_owned()), "from_position=2".to_owned())
    );
    assert_eq!(
        requests[2],
        (Some("2".to_owned()), "from_position=3".to_owned())
    );
}
