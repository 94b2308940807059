//! The one request middleware (a log line, metrics and the request timeout) and the
//! answer to a panicking handler.

use std::any::Any;
use std::borrow::Cow;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{trace_id_of, traceparent};
use crate::metrics::{UNMATCHED_ROUTE, record_request};
use crate::routes::ROUTES;

/// Times the request, answers 503 `unavailable` when it outlives
/// `state.request_timeout` (zero means no limit), records the request metrics and logs
/// one line: method, route template, status, latency and, given a `traceparent`, the
/// trace id.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = route_label(request.extensions().get::<MatchedPath>());
    let trace_id = traceparent(request.headers()).map(|value| trace_id_of(value).to_owned());
    // Logs written while handling the request (a 5xx's detail, say) carry its context.
    let span = tracing::info_span!(
        target: "cairn::http",
        "request",
        method = method.as_str(),
        route = route.as_ref(),
        trace_id = trace_id.as_deref(),
    );
    let timeout = state.request_timeout;
    let response = async move {
        if timeout.is_zero() {
            return next.run(request).await;
        }
        match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(target: "cairn::http", ?timeout, "request timed out");
                ApiError::request_timeout().into_response()
            }
        }
    }
    .instrument(span)
    .await;
    let elapsed = started.elapsed();
    let status = response.status();
    tracing::info!(
        target: "cairn::http",
        method = method.as_str(),
        route = route.as_ref(),
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        trace_id = trace_id.as_deref(),
        "request"
    );
    record_request(&method, route, status, elapsed);
    response
}

/// The route template as a metric label; never the raw path.
fn route_label(matched: Option<&MatchedPath>) -> Cow<'static, str> {
    let Some(matched) = matched else {
        return Cow::Borrowed(UNMATCHED_ROUTE);
    };
    ROUTES
        .iter()
        .find(|route| **route == matched.as_str())
        .map_or_else(
            || Cow::Owned(matched.as_str().to_owned()),
            |route| Cow::Borrowed(*route),
        )
}

/// A handler panicked: answer 500 `internal` and log what happened.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::internal(&format!("a handler panicked: {detail}")).into_response()
}
