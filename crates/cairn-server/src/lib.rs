//! Cairn's HTTP server: the v1 API, health, metrics and the OpenAPI document.
//!
//! **Architecture invariants:** handlers are thin (decode a `cairn-api` type, call the
//! store, encode the answer); one function maps error codes to statuses; a bad request
//! never writes anything and never takes the server down.

use std::sync::Arc;
use std::time::Duration;

use cairn_store::SharedStore;

mod append;
mod encode;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod routes;

pub use error::ApiError;

/// Limits on what one request may carry.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// The most events in one append request.
    pub max_events_per_request: usize,
    /// The largest event (its `data` plus `metadata`), in bytes.
    pub max_event_bytes: usize,
    /// The deepest nesting of arrays and objects in a request body.
    pub max_json_depth: usize,
    /// The largest `limit` a read may ask for.
    pub max_read_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_events_per_request: 1000,
            max_event_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_read_limit: 1000,
        }
    }
}

/// Everything the handlers need, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub limits: Arc<Limits>,
    /// How long a request may take before it is answered 503.
    pub request_timeout: Duration,
}

impl AppState {
    pub fn new(store: SharedStore, limits: Limits, request_timeout: Duration) -> Self {
        Self {
            store,
            limits: Arc::new(limits),
            request_timeout,
        }
    }
}

/// The whole HTTP application; tests drive it in-process with `oneshot`. Installs the
/// process's Prometheus recorder on first use.
pub fn app(state: AppState) -> axum::Router {
    metrics::install();
    routes::router(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then drains in-flight
/// requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(target: "cairn::http", %error, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
