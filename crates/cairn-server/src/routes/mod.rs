//! The v1 API routes, the operations routes and the fallbacks, assembled into one router.

use axum::Router;
use axum::routing::{get, post, put};
use bytes::Bytes;
use tower_http::catch_panic::CatchPanicLayer;

use crate::AppState;
use crate::middleware;

pub mod events;
pub mod groups;
pub mod ops;
pub mod projections;
pub mod queries;
pub mod streams;
pub mod subscribe;

pub const STREAM_EVENTS: &str = "/v1/streams/{stream}/events";
pub const STREAM: &str = "/v1/streams/{stream}";
pub const STREAMS: &str = "/v1/streams";
pub const EVENTS: &str = "/v1/events";
pub const SUBSCRIBE: &str = "/v1/subscribe";
pub const GROUPS: &str = "/v1/groups";
pub const GROUP: &str = "/v1/groups/{group}";
pub const GROUP_CLAIM: &str = "/v1/groups/{group}/claim";
pub const GROUP_ACK: &str = "/v1/groups/{group}/ack";
pub const GROUP_NACK: &str = "/v1/groups/{group}/nack";
pub const GROUP_PARKED: &str = "/v1/groups/{group}/parked";
pub const GROUP_PARKED_REPLAY: &str = "/v1/groups/{group}/parked/replay";
pub const PROJECTIONS: &str = "/v1/projections";
pub const PROJECTION: &str = "/v1/projections/{name}";
pub const PROJECTION_RESTART: &str = "/v1/projections/{name}/restart";
pub const PROJECTION_REBUILD: &str = "/v1/projections/{name}/rebuild";
pub const QUERY: &str = "/v1/queries/{name}";
pub const QUERIES: &str = "/v1/queries";
pub const QUERY_STATUS: &str = "/v1/queries/{name}/status";
pub const QUERY_PLAN: &str = "/v1/queries/{name}/plan";
pub const HEALTH_LIVE: &str = "/health/live";
pub const HEALTH_READY: &str = "/health/ready";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

/// Every route template, as used for the `route` metric label.
pub const ROUTES: [&str; 24] = [
    STREAM_EVENTS,
    STREAM,
    STREAMS,
    EVENTS,
    SUBSCRIBE,
    GROUPS,
    GROUP,
    GROUP_CLAIM,
    GROUP_ACK,
    GROUP_NACK,
    GROUP_PARKED,
    GROUP_PARKED_REPLAY,
    PROJECTIONS,
    PROJECTION,
    PROJECTION_RESTART,
    PROJECTION_REBUILD,
    QUERY,
    QUERIES,
    QUERY_STATUS,
    QUERY_PLAN,
    HEALTH_LIVE,
    HEALTH_READY,
    METRICS,
    OPENAPI,
];

/// The routes of one consumer group, behind the layer that forwards a request to the
/// instance driving the group when that is another one.
fn group_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            GROUP,
            put(groups::put_group)
                .get(groups::get_group)
                .delete(groups::delete_group),
        )
        .route(GROUP_CLAIM, post(groups::claim))
        .route(GROUP_ACK, post(groups::ack))
        .route(GROUP_NACK, post(groups::nack))
        .route(GROUP_PARKED, get(groups::list_parked))
        .route(GROUP_PARKED_REPLAY, post(groups::replay_parked))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forward::group_owner,
        ))
}

/// The whole application with its middleware: observation (log line, metrics,
/// timeout), authentication and limits outermost, in one layer
/// ([`middleware::stack`]), then panic capture, then the handler.
pub fn router(state: AppState) -> Router {
    let openapi = ops::OpenApiDocument(Bytes::from(crate::openapi::document_json(
        &state.limits,
        state.auth.metrics_public,
    )));
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
        .route(SUBSCRIBE, get(subscribe::subscribe))
        .route(GROUPS, get(groups::list_groups))
        .merge(group_routes(&state))
        .route(PROJECTIONS, get(projections::list_projections))
        .route(PROJECTION, get(projections::get_projection))
        .route(PROJECTION_RESTART, post(projections::restart_projection))
        .route(PROJECTION_REBUILD, post(projections::rebuild_projection))
        .route(QUERY, get(queries::query))
        .route(QUERIES, get(queries::list_queries))
        .route(QUERY_STATUS, get(queries::query_status))
        .route(QUERY_PLAN, get(queries::query_plan))
        .route(HEALTH_LIVE, get(ops::live))
        .route(HEALTH_READY, get(ops::ready))
        .route(METRICS, get(ops::metrics))
        .route(OPENAPI, get(move || ops::openapi_json(openapi.clone())))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::stack,
        ))
        .with_state(state)
}
