//! The v1 API routes, the operations routes and the fallbacks, assembled into one router.

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use tower_http::catch_panic::CatchPanicLayer;

use crate::AppState;
use crate::middleware;

pub mod events;
pub mod ops;
pub mod streams;

pub const STREAM_EVENTS: &str = "/v1/streams/{stream}/events";
pub const STREAM: &str = "/v1/streams/{stream}";
pub const STREAMS: &str = "/v1/streams";
pub const EVENTS: &str = "/v1/events";
pub const HEALTH_LIVE: &str = "/health/live";
pub const HEALTH_READY: &str = "/health/ready";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

/// Every route template, as used for the `route` metric label.
pub const ROUTES: [&str; 8] = [
    STREAM_EVENTS,
    STREAM,
    STREAMS,
    EVENTS,
    HEALTH_LIVE,
    HEALTH_READY,
    METRICS,
    OPENAPI,
];

/// The whole application with its middleware: observation (log line, metrics,
/// timeout) outermost, then panic capture, then routing.
pub fn router(state: AppState) -> Router {
    let openapi = ops::OpenApiDocument(Bytes::from(crate::openapi::document_json(&state.limits)));
    Router::new()
        .route(
            STREAM_EVENTS,
            post(streams::append_to_stream).get(streams::read_stream),
        )
        .route(
            STREAM,
            get(streams::stream_info).delete(streams::delete_stream),
        )
        .route(STREAMS, get(streams::list_streams))
        .route(
            EVENTS,
            post(events::append_to_streams).get(events::read_all),
        )
        .route(HEALTH_LIVE, get(ops::live))
        .route(HEALTH_READY, get(ops::ready))
        .route(METRICS, get(ops::metrics))
        .route(OPENAPI, get(move || ops::openapi_json(openapi.clone())))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .with_state(state)
}
