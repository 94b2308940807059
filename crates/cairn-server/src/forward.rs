//! Consumer-group requests that reach an instance which does not drive the group.
//!
//! With several instances on one database, one instance at a time drives a group
//! (`cairn_store::groups::GroupLeases`). A claim, ack, nack, status, parked list,
//! replay, settings change or delete that reaches another instance is forwarded over
//! HTTP to the owner's advertised URL, with the headers that matter to the owner
//! (`Authorization`, `Content-Type`, `traceparent`, `x-request-id`, …) and the body
//! streamed through; the owner's answer comes back as it is.
//!
//! A forwarded request carries [`FORWARDED_BY`]. An instance that receives one for a
//! group it does not drive answers 503 instead of forwarding it again, so a request
//! crosses at most one hop however stale the recorded owner is. So does a request for
//! a group nobody drives right now (a takeover under way) and one whose owner cannot
//! be reached: 503 `unavailable` with `Retry-After: 1`, and the client's retry finds
//! the new owner.
//!
//! [`group_owner`] does this as the group routes' layer, before their handlers. On the
//! embedded store (one process) every group is driven here and nothing of this runs: it
//! passes every request on at once, without I/O.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts as _, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use cairn_store::StoreError;
use cairn_store::groups::GroupRoute;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::GroupPath;
use crate::groups::MAX_CLAIM_WAIT_MS;
use crate::middleware::Commitment;

/// Marks a request forwarded by another instance; its value is that instance's
/// advertised URL.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("cairn-forwarded-by");

/// The request headers passed on to the owner.
const REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "content-length",
    "accept",
    "traceparent",
    "tracestate",
    "x-request-id",
];

/// The response headers passed back from the owner.
const RESPONSE_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "retry-after",
    "www-authenticate",
    "x-request-id",
];

/// The longest a connection to an owner may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time a forwarded request may take beyond the request time limit and a claim's
/// longest wait.
const FORWARD_SLACK: Duration = Duration::from_secs(5);

/// The longest a request waits for an attempt to take over a group whose owner did not
/// answer (the ownership round tries again anyway).
const TAKE_OVER_LIMIT: Duration = Duration::from_secs(2);

/// The HTTP client that forwards to the instances owning groups: plain HTTP, or HTTP
/// and HTTPS for an instance serving TLS, whose peers serve it too.
pub struct Forwarder {
    client: PeerClient,
}

enum PeerClient {
    Plain(Client<HttpConnector, Body>),
    Tls(Client<HttpsConnector<HttpConnector>, Body>),
}

impl Forwarder {
    /// A forwarder that reaches `https://` owners with `tls` (for an instance serving
    /// TLS: [`crate::tls::peer_client_config`]); without it, only `http://` ones.
    pub fn new(tls: Option<rustls::ClientConfig>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let builder = Client::builder(TokioExecutor::new());
        let client = match tls {
            None => PeerClient::Plain(builder.build(http)),
            Some(tls) => {
                http.enforce_http(false);
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                PeerClient::Tls(builder.build(connector))
            }
        };
        Self { client }
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new(None)
    }
}

/// What became of a group request at this instance.
enum Routed {
    /// Serve it here: this instance drives the group (or, for a `PUT`, creates it).
    Here(Body),
    /// The owner answered; here is its answer.
    Forwarded(Response),
}

/// The route layer of `/v1/groups/{group}…`: passes the request on to its handler when
/// this instance drives the group (or creates it, for a `PUT` of a new one), and
/// otherwise answers with what the owner answered it. A bad group name goes on to the
/// handler, which refuses it as it would anywhere.
pub async fn group_owner(
    State(state): State<AppState>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(GroupPath(group)) = GroupPath::from_request_parts(&mut parts, &state).await else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let commitment = Commitment::of(&parts);
    let routed = to_owner(
        &state,
        &group,
        &parts.method,
        &parts.uri,
        &parts.headers,
        body,
        &commitment,
    )
    .await;
    match routed {
        Ok(Routed::Here(body)) => next.run(Request::from_parts(parts, body)).await,
        Ok(Routed::Forwarded(response)) => response,
        Err(error) => error.into_response(),
    }
}

/// Serves a request for `group` here, or forwards it to the instance that drives it.
/// A forwarded request is committed first: once sent, the owner's answer is waited for.
async fn to_owner(
    state: &AppState,
    group: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    commitment: &Commitment,
) -> Result<Routed, ApiError> {
    if !state.groups.is_shared() {
        return Ok(Routed::Here(body));
    }
    let owner = match state.groups.route(group).await? {
        GroupRoute::Here => return Ok(Routed::Here(body)),
        // Creating a group: whichever instance receives it writes it.
        GroupRoute::Missing if method == Method::PUT => return Ok(Routed::Here(body)),
        GroupRoute::Missing => return Err(StoreError::GroupNotFound(group.to_owned()).into()),
        GroupRoute::Unowned => {
            return Err(ApiError::unavailable(&format!(
                "no instance drives consumer group {group} right now (a takeover is under way)"
            )));
        }
        GroupRoute::Owner(owner) => owner,
    };
    if let Some(from) = headers.get(&FORWARDED_BY) {
        return Err(ApiError::unavailable(&format!(
            "a request for consumer group {group} forwarded by {from:?} reached an instance \
             that does not drive it (the owner is recorded as {owner}); not forwarding it again"
        )));
    }
    commitment.commit();
    let self_url = state.groups.advertise_url().unwrap_or_default();
    let limit = state.request_timeout + Duration::from_millis(MAX_CLAIM_WAIT_MS) + FORWARD_SLACK;
    let answer = state
        .forwarder
        .send(&owner, self_url, method, uri, headers, body, limit)
        .await;
    if answer.is_err() {
        // The owner may be gone: if its lease is free, take the group now, so that the
        // client's retry is served here rather than after the next ownership round.
        let take_over = state.groups.take_over_if_free(group);
        match tokio::time::timeout(TAKE_OVER_LIMIT, take_over).await {
            Ok(Ok(true)) => {
                tracing::info!(group, owner, "took over a group whose owner did not answer")
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(error)) => {
                tracing::warn!(group, %error, "could not take over a consumer group")
            }
        }
    }
    answer.map(Routed::Forwarded)
}

impl Forwarder {
    /// Sends the request to `owner` and returns its answer; 503 when the owner cannot
    /// be reached or does not answer within `limit`.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        owner: &str,
        self_url: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Body,
        limit: Duration,
    ) -> Result<Response, ApiError> {
        let path = uri.path_and_query().map_or("/", |path| path.as_str());
        let target = format!("{}{path}", owner.trim_end_matches('/'));
        let target: Uri = target.parse().map_err(|error| {
            ApiError::unavailable(&format!("the owner's URL {owner:?} is not usable: {error}"))
        })?;
        let mut request = Request::builder().method(method.clone()).uri(target);
        for name in REQUEST_HEADERS {
            for value in headers.get_all(name) {
                request = request.header(name, value);
            }
        }
        let marker =
            HeaderValue::from_str(self_url).unwrap_or_else(|_| HeaderValue::from_static("1"));
        let request = request
            .header(FORWARDED_BY, marker)
            .body(body)
            .map_err(|error| {
                ApiError::internal(&format!("building a forwarded request: {error}"))
            })?;
        tracing::debug!(target: "cairn::http", owner, "forwarding to the group's owner");
        let sent = match &self.client {
            PeerClient::Plain(client) => client.request(request),
            PeerClient::Tls(client) => client.request(request),
        };
        let answer = match tokio::time::timeout(limit, sent).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                return Err(ApiError::unavailable(&format!(
                    "cannot reach the group's owner at {owner}: {error}"
                )));
            }
            Err(_) => {
                return Err(ApiError::unavailable(&format!(
                    "the group's owner at {owner} did not answer within {limit:?}"
                )));
            }
        };
        let (parts, incoming) = answer.into_parts();
        let mut response = Response::new(Body::new(incoming));
        *response.status_mut() = parts.status;
        for name in RESPONSE_HEADERS {
            for value in parts.headers.get_all(name) {
                response.headers_mut().append(name, value.clone());
            }
        }
        Ok(response)
    }
}
