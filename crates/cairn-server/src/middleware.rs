//! The one request middleware (a log line, metrics and the request timeout) and the
//! answer to a panicking handler.
//!
//! The request timeout never abandons work already handed to the store: a handler
//! marks that moment with [`Commitment::commit`], after which the middleware waits for
//! the handler's answer however long it takes (the store always answers). Before it
//! (reading and checking the body, say) a slow request is cut off with 503, and nothing
//! was written. Otherwise a client told 503 could retry an append that was committed
//! after all, and append it twice.
//!
//! A handler that waits on purpose (a query's `wait_ms` for `min_position`) adds that
//! wait to its time limit with [`WaitAllowance::allow`], so the limit never cuts a wait
//! the client asked for short; the work around the wait stays limited as usual.

use std::any::Any;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody as _};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt as _;
use tracing::Instrument;
use tracing::field::Empty;

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::{UNMATCHED_ROUTE, record_request};
use crate::routes::ROUTES;

/// Whether a request's handler has handed work to the store that must not be
/// abandoned (an append, a delete, a claim, a group change). Shared by the middleware
/// and the handler through the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Commitment(Arc<AtomicBool>);

impl Commitment {
    /// From here on, the request is answered with the store's outcome, never with a
    /// timeout. Call it right before handing the work to the store, after every check
    /// that may refuse the request.
    pub fn commit(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_committed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The request's commitment (a detached one when the middleware is not in place).
    pub fn of(parts: &http::request::Parts) -> Self {
        parts.extensions.get::<Self>().cloned().unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Commitment {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts))
    }
}

/// Time a request's handler may spend waiting on purpose (a query waiting for
/// `min_position`), added to the request time limit. Shared by the middleware and the
/// handler through the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct WaitAllowance(Arc<AtomicU64>);

impl WaitAllowance {
    /// Lets the request run `wait` longer than the time limit. Call it before waiting;
    /// calls do not add up, the longest wins.
    pub fn allow(&self, wait: Duration) {
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_max(millis, Ordering::AcqRel);
    }

    pub fn allowed(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Acquire))
    }

    /// The request's allowance (a detached one when the middleware is not in place).
    pub fn of(parts: &http::request::Parts) -> Self {
        parts.extensions.get::<Self>().cloned().unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WaitAllowance {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts))
    }
}

/// The header carrying a request's id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The longest `x-request-id` taken from a client; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `x-request-id` when it is 1–[`MAX_REQUEST_ID_LEN`] characters of
/// `[A-Za-z0-9._:@/+=-]` (safe in a log line and a header), else a new UUIDv7.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_valid_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

fn is_valid_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._:@/+=-".contains(&byte))
}

/// Times the request, answers 503 `unavailable` when it outlives
/// `state.request_timeout` (zero means no limit) before its handler committed work to
/// the store (plus the [`WaitAllowance`] its handler took), records the request metrics
/// and logs one line: method, route template, status, latency, the request id (also
/// sent back as `x-request-id`), the client's address, the body bytes read and written
/// and the trace id (and, with traces exported, Cairn's span id). Never a header value
/// other than the request id, never a body.
///
/// With traces exported and the request sampled, the request's span continues the
/// trace of its `traceparent` header ([`crate::trace`]).
///
/// The handler runs inside this task's future, so the check of the commitment after
/// the timer fired cannot race with the handler: either it committed in an earlier
/// poll (and is waited for) or it has not handed anything over (and is dropped).
pub async fn observe(state: &AppState, mut request: Request, next: impl Inner) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = route_label(request.extensions().get::<MatchedPath>());
    let request_id = request_id(request.headers());
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|connected| connected.0);
    // Sampled before the span is made: an unsampled request's span is for the log only.
    let parent = crate::trace::sampled_parent(request.headers());
    // Logs written while handling the request (a 5xx's detail, say) carry its context.
    macro_rules! request_span {
        ($target:expr, $trace_id:expr) => {
            tracing::info_span!(
                target: $target,
                "request",
                method = method.as_str(),
                route = route.as_ref(),
                request_id = request_id.as_str(),
                client_addr = client.map(tracing::field::display),
                trace_id = $trace_id,
                span_id = Empty,
                token = Empty,
                otel.name = Empty,
                otel.kind = Empty,
                http.response.status_code = Empty,
                otel.status_code = Empty,
            )
        };
    }
    let exported = parent.is_some();
    let (span, trace) = match parent {
        Some(parent) => {
            let span = request_span!("cairn::http", Empty);
            // Before the span starts: the exporter names it now.
            span.record("otel.name", format!("{method} {route}").as_str());
            span.record("otel.kind", "server");
            let trace = crate::trace::continue_trace(&span, Some(parent), request.headers());
            if let Some(trace_id) = &trace.trace_id {
                span.record("trace_id", trace_id.as_str());
            }
            if let Some(span_id) = &trace.span_id {
                span.record("span_id", span_id.as_str());
            }
            (span, trace)
        }
        None => {
            // The trace id, if any, is the header's: given to the span as it is made,
            // since the log's JSON formatter adds a field later by rewriting all of them.
            let trace = crate::trace::header_trace(request.headers());
            let span = request_span!(crate::trace::UNTRACED_TARGET, trace.trace_id.as_deref());
            (span, trace)
        }
    };
    // The body bytes the handler reads (none for a request without a body).
    let received = Arc::new(AtomicU64::new(0));
    if !request.body().is_end_stream() {
        let counter = Arc::clone(&received);
        request = request.map(|body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            }))
        });
    }
    let timeout = state.request_timeout;
    let commitment = Commitment::default();
    let allowance = WaitAllowance::default();
    request.extensions_mut().insert(commitment.clone());
    request.extensions_mut().insert(allowance.clone());
    let response = async move {
        if timeout.is_zero() {
            return next(request).await;
        }
        let mut handler = std::pin::pin!(next(request));
        let mut deadline = tokio::time::Instant::from_std(started) + timeout;
        loop {
            match tokio::time::timeout_at(deadline, handler.as_mut()).await {
                Ok(response) => break response,
                Err(_) if commitment.is_committed() => {
                    tracing::debug!(
                        target: "cairn::http",
                        ?timeout,
                        "request over its time limit, but its work is with the store: waiting for the answer"
                    );
                    break handler.await;
                }
                Err(_) => {
                    // The handler may have been allowed a wait since the timer was set.
                    let extended =
                        tokio::time::Instant::from_std(started) + timeout + allowance.allowed();
                    if extended > deadline {
                        deadline = extended;
                        continue;
                    }
                    tracing::warn!(target: "cairn::http", ?timeout, "request timed out");
                    break ApiError::request_timeout().into_response();
                }
            }
        }
    }
    .instrument(span.clone())
    .await;
    let elapsed = started.elapsed();
    let status = response.status();
    // For the exported span only: the log's line below has the status, and no line is
    // logged inside the span after this. (The log's JSON formatter parses and rewrites
    // a span's fields to add one, on every request.)
    if exported {
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
    drop(span);
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    // Known for a body in one piece; a stream (SSE) has no size yet.
    let response_bytes = response.body().size_hint().exact();
    let token = response
        .extensions()
        .get::<crate::auth::TokenName>()
        .map(|name| name.0.as_str());
    tracing::info!(
        target: "cairn::http",
        method = method.as_str(),
        route = route.as_ref(),
        status = status.as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = request_id.as_str(),
        client_addr = client.map(tracing::field::display),
        request_bytes = received.load(Ordering::Relaxed),
        response_bytes,
        trace_id = trace.trace_id.as_deref(),
        span_id = trace.span_id.as_deref(),
        token,
        "request"
    );
    record_request(&method, route, status, elapsed);
    response
}

/// What a middleware of [`stack`] runs the request with: the middleware inside it, then
/// the handler.
pub trait Inner: FnOnce(Request) -> Self::Answer + Send {
    type Answer: Future<Output = Response> + Send;
}

impl<F, A> Inner for F
where
    F: FnOnce(Request) -> A + Send,
    A: Future<Output = Response> + Send,
{
    type Answer = A;
}

/// The request middleware as one layer, outermost first: [`observe`] (the time limit,
/// the log line, the metrics), [`crate::auth::authenticate`], then
/// [`crate::limits::guard`]. One layer, not three: every axum layer clones the service
/// inside it and boxes its future on every request.
pub async fn stack(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let state = &state;
    observe(state, request, |request| {
        crate::auth::authenticate(state, request, |request| {
            crate::limits::guard(state, request, |request| next.run(request))
        })
    })
    .await
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
