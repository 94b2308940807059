//! Cairn's HTTP server: the v1 API (streams, the global log, SSE subscriptions,
//! consumer groups, the read side's projections and named queries), health, metrics
//! and the OpenAPI document.
//!
//! **Architecture invariants:** handlers are thin (decode a `cairn-api` type, call the
//! store, encode the answer); one function maps error codes to statuses; a bad request
//! never writes anything and never takes the server down; the request timeout never
//! abandons work handed to the store (`middleware::Commitment`), so a 503 means nothing
//! was written; a subscriber holds a bounded amount of server memory whatever its
//! client does (`sse`).

use std::sync::Arc;
use std::time::Duration;

use cairn_projection::ReadSide;
use cairn_store::groups::{ConsumerGroups, GroupLeases};
use cairn_store::{SharedStore, StoreError};

mod append;
pub mod auth;
mod encode;
pub use encode::write_event;
pub mod error;
pub mod extract;
pub mod forward;
mod groups;
pub mod limits;
mod listen;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod page_cache;
mod process;
mod read_side;
pub mod routes;
pub mod sampled;
pub mod sse;
pub mod tls;
pub mod trace;

pub use error::ApiError;
pub use sse::{SubscriptionOptions, Subscriptions};

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

/// Everything the handlers need, cheap to clone: one reference count, however many
/// parts it has (the router clones it for every middleware layer of every request).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
#[derive(Clone)]
pub struct Shared {
    pub store: SharedStore,
    /// The store's consumer groups, loaded once per process.
    pub groups: Arc<ConsumerGroups>,
    pub limits: Arc<Limits>,
    /// How long a request may take before it is answered 503 (zero: no limit). Work
    /// already handed to the store (an append, a claim) is always waited for.
    pub request_timeout: Duration,
    /// Live SSE subscriptions: their settings, count and shutdown signal.
    pub subscriptions: Arc<Subscriptions>,
    /// Serialises creating and deleting groups, so that `PUT` can tell 201 from 200.
    pub(crate) group_admin: Arc<tokio::sync::Mutex<()>>,
    /// The read side (projections and named queries), when any is configured; without
    /// one, `/v1/projections` lists none and every projection or query is 404.
    pub read_side: Option<Arc<ReadSide>>,
    /// API tokens (none: authentication off); replaceable while serving.
    pub auth: Arc<auth::Auth>,
    /// Concurrency, rate and subscription limits.
    pub guard: Arc<limits::Guard>,
    /// Sealed pages of stream and global reads (64 MiB by default).
    pub event_pages: Arc<page_cache::EventPageCache>,
    /// Forwards group requests to the instance that drives the group (shared stores).
    pub(crate) forwarder: Arc<forward::Forwarder>,
}

impl AppState {
    /// The state of a server on `store`: loads the stored consumer groups (deliveries
    /// resume after each checkpoint). Subscriptions get the default options.
    pub async fn open(
        store: SharedStore,
        limits: Limits,
        request_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let groups = ConsumerGroups::load(Arc::clone(&store)).await?;
        Ok(Self::serving(
            store,
            Arc::new(groups),
            limits,
            request_timeout,
        ))
    }

    /// The state of one of several instances sharing `store`: this one drives the
    /// consumer groups whose lease it holds (`leases`) and forwards requests for the
    /// others to their owners. Takes every free lease before it returns.
    pub async fn open_shared(
        store: SharedStore,
        leases: Arc<dyn GroupLeases>,
        limits: Limits,
        request_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let groups = ConsumerGroups::shared(Arc::clone(&store), leases).await?;
        Ok(Self::serving(store, groups, limits, request_timeout))
    }

    fn serving(
        store: SharedStore,
        groups: Arc<ConsumerGroups>,
        limits: Limits,
        request_timeout: Duration,
    ) -> Self {
        Self(Arc::new(Shared {
            store,
            groups,
            limits: Arc::new(limits),
            request_timeout,
            subscriptions: Arc::new(Subscriptions::new(SubscriptionOptions::default())),
            group_admin: Arc::new(tokio::sync::Mutex::new(())),
            read_side: None,
            auth: Arc::new(auth::Auth::default()),
            guard: Arc::new(limits::Guard::default()),
            event_pages: Arc::new(page_cache::EventPageCache::default()),
            forwarder: Arc::new(forward::Forwarder::default()),
        }))
    }

    /// The parts, to change before serving (copied if the state was cloned already).
    fn parts(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// The same state serving this read side's projections and queries (before serving).
    pub fn with_read_side(mut self, read_side: Arc<ReadSide>) -> Self {
        self.parts().read_side = Some(read_side);
        self
    }

    /// The same state checking these API tokens (before serving).
    pub fn with_auth(mut self, auth: Arc<auth::Auth>) -> Self {
        self.parts().auth = auth;
        self
    }

    /// The same state with these request limits (before serving).
    pub fn with_request_limits(mut self, limits: limits::RequestLimits) -> Self {
        self.parts().guard = Arc::new(limits::Guard::new(limits));
        self
    }

    /// The same state caching about `bytes` of sealed event pages; 0 turns the cache
    /// off (before serving).
    pub fn with_event_page_cache_bytes(mut self, bytes: u64) -> Self {
        self.parts().event_pages = Arc::new(page_cache::EventPageCache::new(bytes));
        self
    }

    /// The same state forwarding group requests to `https://` owners with `tls`
    /// (an instance serving TLS: [`tls::peer_client_config`]), before serving.
    pub fn with_peer_tls(mut self, tls: rustls::ClientConfig) -> Self {
        self.parts().forwarder = Arc::new(forward::Forwarder::new(Some(tls)));
        self
    }

    /// The same state with other subscription options (before serving).
    pub fn with_subscription_options(mut self, options: SubscriptionOptions) -> Self {
        self.parts().subscriptions = Arc::new(Subscriptions::new(options));
        self
    }
}

/// The whole HTTP application; tests drive it in-process with `oneshot`. Installs the
/// process's Prometheus recorder on first use.
pub fn app(state: AppState) -> axum::Router {
    metrics::install();
    routes::router(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then ends the live
/// subscriptions (they would never finish by themselves) and drains in-flight requests.
/// A client that takes longer than the limits' `header_read_timeout` to send a request
/// head is disconnected.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, state, None, shutdown).await
}

/// [`serve`], over TLS with `tls`'s certificate when given (plain HTTP when `None`).
/// The TLS handshake is bounded by the header read timeout too (10 s when that is off),
/// and [`tls::TlsCertificates::reload`] changes the certificate of new connections.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: Option<Arc<tls::TlsCertificates>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let subscriptions = Arc::clone(&state.subscriptions);
    let header_read_timeout = state.guard.limits().header_read_timeout;
    // Measured once before serving (into the recorder `app` uses), so the first
    // scrape has the sizes.
    metrics::install();
    let database_sizes = sampled::DatabaseSizes::new(&state);
    database_sizes.refresh().await;
    let measuring = tokio::spawn(database_sizes.run(sampled::DATABASE_SIZE_INTERVAL));
    let served = listen::accept_loop(
        listener,
        app(state),
        header_read_timeout,
        tls,
        shutdown,
        move || {
            subscriptions.close_all();
        },
    )
    .await;
    measuring.abort();
    served
}
