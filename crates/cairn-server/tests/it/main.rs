//! Cairn's HTTP API, tested in-process through `app(state)` and `oneshot`, against the
//! real embedded store in a temporary directory.

mod append;
mod auth;
mod groups;
mod malformed;
mod openapi;
mod ops;
mod page_cache;
mod props;
mod read;
mod read_side;
mod read_side_plans;
mod subscribe;
mod timeouts;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use cairn_server::{AppState, Limits, SubscriptionOptions, app};
use cairn_store::SharedStore;
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// One server with its own store in a temporary directory.
pub struct Server {
    app: Router,
    pub state: AppState,
    store: SharedStore,
    _dir: tempfile::TempDir,
}

/// A store in a fresh temporary directory (which must outlive it).
pub fn temporary_store() -> (SharedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: SharedStore =
        Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).expect("open the store"));
    (store, dir)
}

impl Server {
    pub async fn start() -> Self {
        Self::with(Limits::default(), Duration::from_secs(30)).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        Self::with(limits, Duration::from_secs(30)).await
    }

    pub async fn with(limits: Limits, request_timeout: Duration) -> Self {
        let (store, dir) = temporary_store();
        Self::on(store, dir, limits, request_timeout).await
    }

    /// A server whose read side runs the `[[projections]]` and `[[queries]]` of
    /// `config` (TOML) on `readmodels.db` beside the store.
    pub async fn with_read_side(config: &str, request_timeout: Duration) -> Self {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ReadSideConfig {
            #[serde(default)]
            projections: Vec<cairn_projection::ProjectionConfig>,
            #[serde(default)]
            queries: Vec<cairn_projection::QueryConfig>,
        }
        let config: ReadSideConfig = toml::from_str(config).expect("the test config parses");
        let (store, dir) = temporary_store();
        let read_side = cairn_projection::ReadSide::start(
            store.clone(),
            cairn_projection::ReadSideOptions::new(dir.path()),
            config.projections,
            config.queries,
        )
        .await
        .expect("the read side starts");
        let state = AppState::open(store.clone(), Limits::default(), request_timeout)
            .await
            .expect("the state opens")
            .with_read_side(read_side);
        Self {
            app: app(state.clone()),
            state,
            store,
            _dir: dir,
        }
    }

    /// A server on `store` (kept in `dir`), which a test may wrap.
    pub async fn on(
        store: SharedStore,
        dir: tempfile::TempDir,
        limits: Limits,
        request_timeout: Duration,
    ) -> Self {
        let state = AppState::open(store.clone(), limits, request_timeout)
            .await
            .expect("the state opens");
        Self {
            app: app(state.clone()),
            state,
            store,
            _dir: dir,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("read the response body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(body.into()).expect("a valid request"))
            .await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call("GET", uri, &[], Body::empty()).await
    }

    pub async fn delete(&self, uri: &str) -> Reply {
        self.call("DELETE", uri, &[], Body::empty()).await
    }

    pub async fn post(&self, uri: &str, body: impl Into<Body>) -> Reply {
        self.call("POST", uri, &[("content-type", "application/json")], body)
            .await
    }

    pub async fn post_json(&self, uri: &str, body: &Value) -> Reply {
        self.post(uri, body.to_string()).await
    }

    pub async fn put(&self, uri: &str, body: impl Into<Body>) -> Reply {
        self.call("PUT", uri, &[("content-type", "application/json")], body)
            .await
    }

    pub async fn put_json(&self, uri: &str, body: &Value) -> Reply {
        self.put(uri, body.to_string()).await
    }

    /// Appends `events` (each `{"type", "data", ...}`) to `stream`.
    pub async fn append(&self, stream: &str, events: Value) -> Reply {
        self.post_json(
            &format!("/v1/streams/{stream}/events"),
            &json!({ "events": events }),
        )
        .await
    }

    /// Appends `count` events of type `type` to `stream`; panics unless 201.
    pub async fn append_n(&self, stream: &str, event_type: &str, count: usize) -> Value {
        let events: Vec<Value> = (0..count)
            .map(|index| json!({"type": event_type, "data": {"n": index}}))
            .collect();
        let reply = self.append(stream, Value::Array(events)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// The last committed position, straight from the store.
    pub async fn head(&self) -> u64 {
        self.store.head_position().await.expect("head position")
    }

    /// The server still takes appends and answers reads.
    pub async fn assert_still_serving(&self) {
        let before = self.head().await;
        let reply = self
            .append("still-serving", json!([{"type": "Ping", "data": null}]))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        assert_eq!(self.head().await, before + 1);
        assert_eq!(self.get("/health/live").await.status, StatusCode::OK);
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Checks the status, the JSON error shape and its code; returns the error object.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.text()
        );
        let body: cairn_api::ErrorBody = serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not an error body ({error}): {}", self.text()));
        assert_eq!(body.error.code.as_str(), code, "{}", self.text());
        assert!(!body.error.message.is_empty());
        self.json()["error"].clone()
    }
}

/// A valid W3C trace context.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A server serving real HTTP on 127.0.0.1:<ephemeral>, for what needs a connection
/// (streams, concurrent clients). Shuts down when dropped.
pub struct LiveServer {
    pub url: String,
    pub address: std::net::SocketAddr,
    pub state: AppState,
    pub store: SharedStore,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl LiveServer {
    pub async fn start(options: SubscriptionOptions) -> Self {
        let (store, dir) = temporary_store();
        let state = AppState::open(store.clone(), Limits::default(), Duration::from_secs(30))
            .await
            .expect("the state opens")
            .with_subscription_options(options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("the bound address");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cairn_server::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            url: format!("http://{address}"),
            address,
            state,
            store,
            shutdown: Some(shutdown),
            _dir: dir,
        }
    }

    /// Stops accepting connections and ends the subscriptions.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// The last committed position, straight from the store.
    pub async fn head(&self) -> u64 {
        self.store.head_position().await.expect("head position")
    }

    /// Polls `condition` until it holds, failing after `within`.
    pub async fn wait_for(&self, what: &str, within: Duration, condition: impl Fn() -> bool) {
        wait_for(what, within, condition).await;
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `condition` (every few milliseconds) until it holds; panics after `within`.
pub async fn wait_for(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A metric's value in the Prometheus text (the sum over lines starting with
/// `series`, so a prefix without labels sums every label set).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series || name.starts_with(&format!("{series}{{")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
