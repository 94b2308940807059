//! The client against a real Cairn server started in-process on a temporary data
//! directory and an ephemeral port.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{
    AppendRequest, Client, ClientError, DecideOptions, Direction, ErrorCode, EventExt,
    EventInputExt, ExpectedVersion, MultiAppendRequest, MultiEventInput, ReadAllOptions,
    ReadStreamOptions, WriteOptions, event,
};
use serde_json::json;

mod groups;
mod read_side;
mod subscribe;

/// A Cairn server serving on 127.0.0.1:<ephemeral> until dropped.
pub(crate) struct TestServer {
    pub(crate) url: String,
    port: u16,
    options: cairn_server::SubscriptionOptions,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    store: Option<cairn_store::SharedStore>,
    dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(cairn_server::SubscriptionOptions::default()).await
    }

    /// A server whose subscriptions behave as `options` say.
    pub(crate) async fn start_with(options: cairn_server::SubscriptionOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::open(dir, 0, options).await
    }

    async fn open(
        dir: tempfile::TempDir,
        port: u16,
        options: cairn_server::SubscriptionOptions,
    ) -> Self {
        let store_options = cairn_store::sqlite::SqliteOptions::new(dir.path().join("data"));
        let store = tokio::task::spawn_blocking(move || {
            cairn_store::sqlite::SqliteStore::open(store_options)
        })
        .await
        .unwrap()
        .expect("the store opens");
        let store: cairn_store::SharedStore = Arc::new(store);
        let state = cairn_server::AppState::open(
            store.clone(),
            cairn_server::Limits::default(),
            Duration::from_secs(30),
        )
        .await
        .expect("the server state loads")
        .with_subscription_options(options.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(cairn_server::serve(listener, state, async move {
            let _ = stop.await;
        }));
        wait_until_ready(&url).await;
        Self {
            url,
            port,
            options,
            shutdown: Some(shutdown),
            task: Some(task),
            store: Some(store),
            dir: Some(dir),
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(&self.url).unwrap()
    }

    /// Stops the server gracefully (its subscriptions end, its store closes), then
    /// starts it again on the same data directory and the same port.
    pub(crate) async fn restart(mut self) -> Self {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("the server stops in time")
                .unwrap()
                .unwrap();
        }
        // The store closes when its last holder (a subscription ending, a request
        // finishing) lets go of it.
        let store = self.store.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Arc::strong_count(&store) > 1 {
            assert!(Instant::now() < deadline, "the store is still in use");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::spawn_blocking(move || drop(store))
            .await
            .unwrap();
        let dir = self.dir.take().unwrap();
        Self::open(dir, self.port, self.options.clone()).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn wait_until_ready(url: &str) {
    let client = Client::builder(url).retries(0).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.health_ready().await {
            Ok(health) if health.status == "ok" => return,
            outcome => assert!(
                Instant::now() < deadline,
                "{url} not ready in time: {outcome:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn appended_events_come_back_through_every_read() {
    let server = TestServer::start().await;
    let client = server.client();

    let appended = client
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![
                event("OrderPlaced", json!({"total": 42})).with_tag("customer:7"),
                event("OrderPaid", json!({"amount": 42})),
                event("OrderShipped", json!({})).with_tag("customer:7"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            appended.stream.as_str(),
            appended.first_version,
            appended.last_version
        ),
        ("order-1", 0, 2)
    );
    assert_eq!((appended.first_position, appended.last_position), (1, 3));
    client
        .append(
            "invoice-1",
            ExpectedVersion::Any,
            vec![event("InvoiceSent", json!(1))],
        )
        .await
        .unwrap();

    let forward = client
        .read_stream("order-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    let types: Vec<_> = forward
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderPaid", "OrderShipped"]);
    assert_eq!(
        forward.events[0].data_as::<serde_json::Value>().unwrap(),
        json!({"total": 42})
    );
    assert_eq!(forward.next, None);

    let backward = client
        .read_stream(
            "order-1",
            &ReadStreamOptions {
                from: None,
                limit: Some(2),
                direction: Direction::Backward,
            },
        )
        .await
        .unwrap();
    let versions: Vec<_> = backward.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(backward.next, Some(0));

    let info = client.stream_info("order-1").await.unwrap();
    assert_eq!((info.version, info.position), (2, 3));

    let listed = client
        .list_streams(Some("order-"), None, None)
        .await
        .unwrap();
    assert_eq!(listed.streams, ["order-1"]);
    let all = client.list_streams(None, None, Some(1)).await.unwrap();
    assert_eq!(all.streams, ["invoice-1"]);
    let rest = client
        .list_streams(None, all.next.as_deref(), Some(10))
        .await
        .unwrap();
    assert_eq!(rest.streams, ["order-1"]);

    let log = client.read_all(&ReadAllOptions::default()).await.unwrap();
    let positions: Vec<_> = log.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3, 4]);
    assert_eq!(log.head_position, 4);
    let tagged = client
        .read_all(&ReadAllOptions {
            category: Some("order".into()),
            tags: vec!["customer:7".into()],
            ..ReadAllOptions::default()
        })
        .await
        .unwrap();
    let types: Vec<_> = tagged
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderShipped"]);
    let typed = client
        .read_all(&ReadAllOptions {
            from_position: Some(2),
            types: vec!["InvoiceSent".into(), "OrderPaid".into()],
            ..ReadAllOptions::default()
        })
        .await
        .unwrap();
    let positions: Vec<_> = typed.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [2, 4]);
}

#[tokio::test]
async fn refusals_come_back_as_typed_api_errors() {
    let server = TestServer::start().await;
    let client = server.client();
    client
        .append(
            "account-1",
            ExpectedVersion::NoStream,
            vec![event("Opened", json!({}))],
        )
        .await
        .unwrap();

    let conflict = client
        .append(
            "account-1",
            ExpectedVersion::Exact(5),
            vec![event("Credited", json!(1))],
        )
        .await
        .unwrap_err();
    assert_eq!(
        conflict.code(),
        Some(ErrorCode::WrongExpectedVersion),
        "{conflict}"
    );
    assert_eq!(conflict.status(), Some(409));
    let details = &conflict.body().unwrap().error.details;
    assert_eq!(details["expected"], 5);
    assert_eq!(details["actual"], 0);

    let missing = client
        .read_stream("account-404", &ReadStreamOptions::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::StreamNotFound), "{missing}");

    let bad_name = client.stream_info("$system").await.unwrap_err();
    assert_eq!(
        bad_name.code(),
        Some(ErrorCode::InvalidStreamName),
        "{bad_name}"
    );

    client
        .delete_stream("account-1", ExpectedVersion::Exact(0))
        .await
        .unwrap();
    let deleted = client.stream_info("account-1").await.unwrap_err();
    assert_eq!(deleted.code(), Some(ErrorCode::StreamDeleted), "{deleted}");
    let listed = client
        .list_streams(Some("account-"), None, None)
        .await
        .unwrap();
    assert!(listed.streams.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error_after_bounded_retries() {
    // Bind then drop: nothing listens on this port any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .retries(2)
        .backoff(Duration::from_millis(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = client
        .append("s-1", ExpectedVersion::Any, vec![event("E", json!(1))])
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Transport(_)), "{error}");
    assert_eq!(error.code(), None);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_caller_given_idempotency_key_replays_the_first_answer() {
    let server = TestServer::start().await;
    let client = server.client();
    let options = WriteOptions {
        idempotency_key: Some("order-9-place".into()),
    };
    let request = || AppendRequest {
        expected_version: ExpectedVersion::Any,
        events: vec![event("OrderPlaced", json!({"total": 9}))],
    };
    let first = client
        .append_with("order-9", &request(), &options)
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.idempotency_key, "order-9-place");
    let again = client
        .append_with("order-9", &request(), &options)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.response, first.response);

    let different = AppendRequest {
        expected_version: ExpectedVersion::Any,
        events: vec![event("OrderPlaced", json!({"total": 10}))],
    };
    let reused = client
        .append_with("order-9", &different, &options)
        .await
        .unwrap_err();
    assert_eq!(
        reused.code(),
        Some(ErrorCode::IdempotencyKeyReused),
        "{reused}"
    );
    let page = client
        .read_stream("order-9", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
}

/// A proxy in front of the server that forwards every request but, for the first
/// `lose` writes, throws the server's answer away and answers 503 instead: the write
/// happened, the client does not know.
struct LossyProxy {
    url: String,
    keys: Arc<Mutex<Vec<String>>>,
}

impl LossyProxy {
    async fn start(upstream: String, lose: u32) -> Self {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        let keys = Arc::new(Mutex::new(Vec::new()));
        let lost = Arc::new(AtomicU32::new(0));
        let http = reqwest::Client::new();
        let seen = keys.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let http = http.clone();
            let upstream = upstream.clone();
            let seen = seen.clone();
            let lost = lost.clone();
            async move {
                let mut request = http.request(
                    reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(),
                    format!("{upstream}{uri}"),
                );
                for name in ["content-type", "idempotency-key"] {
                    if let Some(value) = headers.get(name) {
                        request = request.header(name, value.as_bytes());
                    }
                }
                if let Some(key) = headers.get("idempotency-key") {
                    seen.lock().unwrap().push(key.to_str().unwrap().to_owned());
                }
                let answer = request.body(body).send().await.unwrap();
                let status = answer.status().as_u16();
                let replayed = answer.headers().get("idempotent-replayed").cloned();
                let bytes = answer.bytes().await.unwrap();
                if method == Method::POST && lost.fetch_add(1, Ordering::SeqCst) < lose {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "0")],
                        r#"{"error":{"code":"unavailable","message":"lost"}}"#,
                    )
                        .into_response();
                }
                let mut response = (StatusCode::from_u16(status).unwrap(), bytes).into_response();
                response
                    .headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                if let Some(replayed) = replayed {
                    response.headers_mut().insert(
                        "idempotent-replayed",
                        replayed.to_str().unwrap().parse().unwrap(),
                    );
                }
                response
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, keys }
    }
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_retried_with_the_same_key_and_recorded_once() {
    let server = TestServer::start().await;
    let proxy = LossyProxy::start(server.url.clone(), 2).await;
    let client = Client::builder(&proxy.url)
        .backoff(Duration::from_millis(5))
        .build()
        .unwrap();
    let request = AppendRequest {
        expected_version: ExpectedVersion::Any,
        events: vec![
            event("Deposited", json!({"amount": 5})),
            event("Deposited", json!({"amount": 7})),
        ],
    };
    let written = client
        .append_with("wallet-1", &request, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(written.attempts, 3);
    assert!(
        written.replayed,
        "the third attempt gets the first answer back"
    );
    assert_eq!(
        (
            written.response.first_version,
            written.response.last_version
        ),
        (0, 1)
    );
    let keys = proxy.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|key| *key == written.idempotency_key),
        "{keys:?}"
    );

    let page = server
        .client()
        .read_stream("wallet-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 2, "recorded once");

    // Each write gets its own fresh key.
    client
        .append(
            "wallet-1",
            ExpectedVersion::Any,
            vec![event("Deposited", json!({"amount": 1}))],
        )
        .await
        .unwrap();
    let keys = proxy.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 4);
    assert_ne!(keys[3], written.idempotency_key);
}

#[tokio::test]
async fn a_multi_stream_append_is_one_atomic_write() {
    let server = TestServer::start().await;
    let client = server.client();
    let multi = |stream: &str, event_type: &str| MultiEventInput {
        stream: stream.into(),
        id: None,
        event_type: event_type.into(),
        data: serde_json::value::to_raw_value(&json!({})).unwrap(),
        metadata: None,
        tags: None,
    };
    let request = MultiAppendRequest {
        events: vec![multi("from-1", "Debited"), multi("to-1", "Credited")],
        expected_versions: [("from-1".to_owned(), ExpectedVersion::NoStream)].into(),
        condition: None,
    };
    let response = client.append_multi(&request).await.unwrap();
    assert_eq!((response.first_position, response.last_position), (1, 2));
    let streams: Vec<_> = response.streams.iter().map(|s| s.stream.as_str()).collect();
    assert_eq!(streams, ["from-1", "to-1"]);

    let conflict = client.append_multi(&request).await.unwrap_err();
    assert_eq!(
        conflict.code(),
        Some(ErrorCode::WrongExpectedVersion),
        "{conflict}"
    );
    let info = client.stream_info("to-1").await.unwrap();
    assert_eq!(info.version, 0, "nothing of the refused append was written");
}

#[tokio::test]
async fn concurrent_deciders_each_land_exactly_once() {
    let server = TestServer::start().await;
    let client = server.client();
    let deciders = 8;
    let mut tasks = Vec::new();
    for n in 0..deciders {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .decide_with(
                    "counter-1",
                    &DecideOptions {
                        max_attempts: 100,
                        page_size: 3,
                    },
                    Vec::<u64>::new(),
                    |seen: &mut Vec<u64>, event| {
                        seen.push(event.data_as::<u64>()?);
                        Ok::<_, ClientError>(())
                    },
                    |seen| {
                        // Each decider adds its own number once, after all the others seen.
                        if seen.contains(&n) {
                            return Ok(vec![]);
                        }
                        Ok(vec![event("Added", json!(n))])
                    },
                )
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        let decided = task.await.unwrap();
        assert!(decided.appended.is_some());
        let appended = decided.appended.unwrap();
        assert_eq!(
            Some(appended.first_version),
            decided.version.map_or(Some(0), |v| Some(v + 1))
        );
    }
    let page = client
        .read_stream("counter-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    let mut numbers: Vec<u64> = page.events.iter().map(|e| e.data_as().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..deciders).collect::<Vec<_>>());

    // A decision producing nothing appends nothing.
    let idle = client
        .decide(
            "counter-1",
            0usize,
            |count: &mut usize, _| {
                *count += 1;
                Ok::<_, ClientError>(())
            },
            |_| Ok(vec![]),
        )
        .await
        .unwrap();
    assert_eq!(idle.state, 8);
    assert_eq!(idle.version, Some(7));
    assert!(idle.appended.is_none());

    // A domain refusal comes back as such.
    let refused = client
        .decide("counter-2", (), |_, _| Ok(()), |_| Err("closed"))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, cairn_client::DecideError::Domain("closed")),
        "{refused}"
    );
}

#[tokio::test]
async fn health_ready_says_ok() {
    let server = TestServer::start().await;
    let health = server.client().health_ready().await.unwrap();
    assert_eq!(health.status, "ok");
    server.client().health_live().await.unwrap();
}

#[test]
fn the_client_depends_on_neither_storage_nor_server() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "cairn-client",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    assert!(tree.contains("cairn-api"), "{tree}");
    for forbidden in [
        "rusqlite",
        "libsqlite3-sys",
        "cairn-store",
        "cairn-server",
        "cairn-projection",
        "cairn-core",
        "tokio-postgres",
        "axum",
    ] {
        assert!(
            !tree
                .lines()
                .any(|line| line.starts_with(&format!("{forbidden} "))),
            "cairn-client depends on {forbidden}:\n{tree}"
        );
    }
}
