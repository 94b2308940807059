//! Operations: health, metrics, the OpenAPI document, and the JSON fallbacks.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_api::{ErrorBody, Health, ReplicaHealth};
use http::{HeaderValue, StatusCode, header};

use crate::AppState;
use crate::error::{ApiError, json_response};
use crate::openapi::ServerErrors;
use crate::routes::streams::json_body;

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    operation_id = "health_live",
    responses(
        (status = 200, description = "Always `{\"status\":\"ok\"}`.", body = Health),
        ServerErrors,
    )
)]
pub async fn live() -> Response {
    json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
}

/// Readiness: storage reachable and migrations done.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    operation_id = "health_ready",
    responses(
        (status = 200, description = "Ready; `head_position` is the last committed position; `replicas` (PostgreSQL with read replicas only): each replica's state and lag in positions.", body = Health),
        (status = 500, description = "`internal`: an unexpected failure.", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is not ready. Retry after `Retry-After` seconds.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let head = match state.store.ready().await {
        Ok(()) => state.store.head_position().await,
        Err(error) => Err(error),
    };
    match head {
        Ok(head_position) => json_body(
            StatusCode::OK,
            &Health {
                status: "ok".to_owned(),
                head_position: Some(head_position),
                reason: None,
                replicas: replica_health(state.store.replica_status()),
            },
        ),
        Err(error) => ApiError::unavailable(&format!("not ready: {error}")).into_response(),
    }
}

/// The replicas as `/health/ready` shows them; `None` (left out) without any.
fn replica_health(replicas: Vec<cairn_store::ReplicaHealth>) -> Option<Vec<ReplicaHealth>> {
    (!replicas.is_empty()).then(|| {
        replicas
            .into_iter()
            .map(|replica| ReplicaHealth {
                replica: replica.label,
                up: replica.up,
                replayed_position: replica.replayed_position,
                lag_positions: replica.lag,
            })
            .collect()
    })
}

/// Prometheus metrics, text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Every metric, in the Prometheus text exposition format.", body = String, content_type = "text/plain"),
        ServerErrors,
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Group lag moves with the head, not only when a group acts: refresh it for every
    // group (each `status` sets `cairn_group_lag`; it takes no I/O).
    for name in state.groups.names().await {
        if let Err(error) = state.groups.status(&name).await {
            tracing::debug!(target: "cairn::http", group = name, %error, "no lag for this group");
        }
    }
    if let Some(read_side) = &state.read_side {
        crate::metrics::record_projections(&read_side.projections().await);
    }
    crate::sampled::record_gauges(&state).await;
    let text = tokio::task::spawn_blocking(crate::metrics::render)
        .await
        .unwrap_or_default();
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This document: the OpenAPI 3.1 description of the API, generated from the code.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Object),
        ServerErrors,
    )
)]
pub async fn openapi_json(document: OpenApiDocument) -> Response {
    json_response(StatusCode::OK, document.0)
}

/// The serialized OpenAPI document, built once when the router is.
#[derive(Clone)]
pub struct OpenApiDocument(pub Bytes);

/// No route has this path.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// The path exists, the method does not.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
