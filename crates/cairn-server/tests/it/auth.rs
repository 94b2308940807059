//! API tokens (scopes and stream grants on every route family) and the request limits
//! (concurrency, rate, subscriptions), in-process.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use cairn_server::auth::{ApiToken, Auth, Scope, Tokens, hash_secret};
use cairn_server::limits::RequestLimits;
use cairn_server::{AppState, Limits, app};
use http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;

use crate::{Reply, Server, temporary_store};

const READER: &str = "cairn_reader-secret";
const APPENDER: &str = "cairn_appender-secret";
const ADMIN: &str = "cairn_admin-secret";
/// read + append on streams starting with `order-` or `cart`.
const ORDERS: &str = "cairn_orders-secret";

fn token(name: &str, secret: &str, scopes: &[Scope], streams: &[&str]) -> ApiToken {
    ApiToken {
        name: name.into(),
        scopes: scopes.to_vec(),
        streams: streams.iter().map(|s| (*s).to_owned()).collect(),
        sha256: hash_secret(secret),
    }
}

fn tokens() -> Tokens {
    Tokens::new(vec![
        token("reader", READER, &[Scope::Read], &[]),
        token("appender", APPENDER, &[Scope::Append], &[]),
        token("admin", ADMIN, &[Scope::Admin], &[]),
        token(
            "orders",
            ORDERS,
            &[Scope::Read, Scope::Append],
            &["order-", "cart"],
        ),
    ])
    .unwrap()
}

async fn server(metrics_public: bool, limits: RequestLimits) -> Server {
    let (store, dir) = temporary_store();
    let state = AppState::open(store.clone(), Limits::default(), Duration::from_secs(30))
        .await
        .expect("the state opens")
        .with_auth(Arc::new(Auth::new(tokens(), metrics_public)))
        .with_request_limits(limits);
    Server {
        app: app(state.clone()),
        state,
        store,
        _dir: dir,
    }
}

fn request(method: &str, uri: &str, secret: Option<&str>, body: Option<String>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(secret) = secret {
        builder = builder.header("authorization", format!("Bearer {secret}"));
    }
    builder
        .body(body.map_or_else(Body::empty, Body::from))
        .unwrap()
}

async fn call(server: &Server, method: &str, uri: &str, secret: Option<&str>, body: &str) -> Reply {
    let body = (!body.is_empty()).then(|| body.to_owned());
    server.send(request(method, uri, secret, body)).await
}

/// The status only (for endless answers such as SSE); the response is dropped.
async fn status_only(server: &Server, uri: &str, secret: Option<&str>) -> StatusCode {
    server
        .app
        .clone()
        .oneshot(request("GET", uri, secret, None))
        .await
        .unwrap()
        .status()
}

/// Appends one event to `stream` with the admin token.
async fn seed(server: &Server, stream: &str) {
    let uri = format!("/v1/streams/{stream}/events");
    let reply = call(server, "POST", &uri, Some(ADMIN), &events_of(stream)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

fn events_of(stream: &str) -> String {
    json!({"events": [{"type": "Placed", "data": {"stream": stream}}]}).to_string()
}

#[tokio::test]
async fn without_a_token_or_with_an_unknown_one_every_api_route_is_401() {
    let server = server(false, RequestLimits::default()).await;
    for (method, uri) in [
        ("GET", "/v1/streams"),
        ("GET", "/v1/streams/order-1"),
        ("GET", "/v1/streams/order-1/events"),
        ("POST", "/v1/streams/order-1/events"),
        ("DELETE", "/v1/streams/order-1"),
        ("GET", "/v1/events"),
        ("POST", "/v1/events"),
        ("GET", "/v1/subscribe"),
        ("GET", "/v1/groups"),
        ("PUT", "/v1/groups/g"),
        ("POST", "/v1/groups/g/claim"),
        ("GET", "/v1/projections"),
        ("POST", "/v1/projections/p/rebuild"),
        ("GET", "/v1/queries/q"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
    ] {
        for secret in [None, Some("cairn_wrong"), Some("")] {
            let reply = call(&server, method, uri, secret, "").await;
            reply.assert_error(401, "unauthorized");
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer"),
                "{method} {uri}"
            );
        }
    }
    // Another scheme is no token either.
    let reply = server
        .send(
            Request::builder()
                .uri("/v1/streams")
                .header("authorization", format!("Basic {READER}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    reply.assert_error(401, "unauthorized");
    assert_eq!(server.head().await, 0, "nothing was written");
}

#[tokio::test]
async fn health_and_the_openapi_document_stay_open() {
    let server = server(false, RequestLimits::default()).await;
    for uri in ["/health/live", "/health/ready", "/openapi.json"] {
        assert_eq!(
            call(&server, "GET", uri, None, "").await.status,
            StatusCode::OK,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn metrics_need_any_valid_token_unless_public() {
    let server = server(false, RequestLimits::default()).await;
    call(&server, "GET", "/metrics", None, "")
        .await
        .assert_error(401, "unauthorized");
    for secret in [READER, APPENDER, ADMIN, ORDERS] {
        let reply = call(&server, "GET", "/metrics", Some(secret), "").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let public = server_public().await;
    assert_eq!(
        call(&public, "GET", "/metrics", None, "").await.status,
        StatusCode::OK
    );
}

async fn server_public() -> Server {
    server(true, RequestLimits::default()).await
}

#[tokio::test]
async fn appends_need_the_append_scope_and_a_granted_stream() {
    let server = server(false, RequestLimits::default()).await;
    let uri = "/v1/streams/order-1/events";
    call(&server, "POST", uri, Some(READER), &events_of("order-1"))
        .await
        .assert_error(403, "forbidden");
    for secret in [APPENDER, ADMIN, ORDERS] {
        let reply = call(&server, "POST", uri, Some(secret), &events_of("order-1")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    let error = call(
        &server,
        "POST",
        "/v1/streams/invoice-1/events",
        Some(ORDERS),
        &events_of("invoice-1"),
    )
    .await
    .assert_error(403, "forbidden");
    assert_eq!(error["stream"], "invoice-1");
    assert_eq!(server.head().await, 3);
}

#[tokio::test]
async fn a_multi_stream_append_is_checked_stream_by_stream() {
    let server = server(false, RequestLimits::default()).await;
    let body = json!({"events": [
        {"stream": "order-1", "type": "Placed", "data": {}},
        {"stream": "invoice-1", "type": "Billed", "data": {}},
    ]})
    .to_string();
    call(&server, "POST", "/v1/events", Some(READER), &body)
        .await
        .assert_error(403, "forbidden");
    let error = call(&server, "POST", "/v1/events", Some(ORDERS), &body)
        .await
        .assert_error(403, "forbidden");
    assert_eq!(error["stream"], "invoice-1");
    assert_eq!(server.head().await, 0, "nothing was written");
    let granted = json!({"events": [
        {"stream": "order-1", "type": "Placed", "data": {}},
        {"stream": "cart-1", "type": "Added", "data": {}},
    ]})
    .to_string();
    let reply = call(&server, "POST", "/v1/events", Some(ORDERS), &granted).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let reply = call(&server, "POST", "/v1/events", Some(APPENDER), &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn reads_need_the_read_scope_and_global_reads_a_granted_filter() {
    let server = server(false, RequestLimits::default()).await;
    seed(&server, "order-1").await;
    seed(&server, "invoice-1").await;
    for uri in [
        "/v1/streams/order-1/events",
        "/v1/streams/order-1",
        "/v1/streams",
        "/v1/events",
        "/v1/groups",
        "/v1/projections",
    ] {
        call(&server, "GET", uri, Some(APPENDER), "")
            .await
            .assert_error(403, "forbidden");
        for secret in [READER, ADMIN] {
            let reply = call(&server, "GET", uri, Some(secret), "").await;
            assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text());
        }
    }
    // Inside the grant.
    for uri in [
        "/v1/streams/order-1/events",
        "/v1/streams/order-1",
        "/v1/streams?prefix=order-",
        "/v1/events?category=cart",
    ] {
        let reply = call(&server, "GET", uri, Some(ORDERS), "").await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text());
    }
    // Outside it, or across streams.
    for uri in [
        "/v1/streams/invoice-1/events",
        "/v1/streams/invoice-1",
        "/v1/streams",
        "/v1/streams?prefix=inv",
        "/v1/events",
        "/v1/events?category=invoice",
        "/v1/subscribe",
        "/v1/subscribe?stream=invoice-1",
        "/v1/groups",
        "/v1/projections",
        "/v1/queries/q",
    ] {
        call(&server, "GET", uri, Some(ORDERS), "")
            .await
            .assert_error(403, "forbidden");
    }
    // A query passes authentication (and is then unknown here).
    call(&server, "GET", "/v1/queries/q", Some(READER), "")
        .await
        .assert_error(404, "not_found");
    call(&server, "GET", "/v1/queries/q", Some(APPENDER), "")
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test]
async fn subscriptions_need_read_and_a_granted_stream() {
    let server = server(false, RequestLimits::default()).await;
    assert_eq!(
        status_only(&server, "/v1/subscribe", Some(APPENDER)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_only(&server, "/v1/subscribe", Some(READER)).await,
        StatusCode::OK
    );
    assert_eq!(
        status_only(&server, "/v1/subscribe?stream=order-9", Some(ORDERS)).await,
        StatusCode::OK
    );
    assert_eq!(
        status_only(&server, "/v1/subscribe?category=cart", Some(ORDERS)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn administration_needs_the_admin_scope() {
    let server = server(false, RequestLimits::default()).await;
    seed(&server, "order-1").await;
    let group = json!({"from_position": 1}).to_string();
    for (method, uri, body) in [
        ("DELETE", "/v1/streams/order-1", ""),
        ("PUT", "/v1/groups/g", group.as_str()),
        ("DELETE", "/v1/groups/g", ""),
        ("POST", "/v1/groups/g/parked/replay", "{}"),
        ("POST", "/v1/projections/p/restart", ""),
        ("POST", "/v1/projections/p/rebuild", ""),
    ] {
        for secret in [READER, APPENDER, ORDERS] {
            call(&server, method, uri, Some(secret), body)
                .await
                .assert_error(403, "forbidden");
        }
    }
    let reply = call(&server, "PUT", "/v1/groups/g", Some(ADMIN), &group).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    // Consumers claim and ack with `read`.
    let claim = json!({"consumer": "c", "max": 10, "wait_ms": 0}).to_string();
    let reply = call(&server, "POST", "/v1/groups/g/claim", Some(READER), &claim).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = call(&server, "GET", "/v1/groups/g", Some(READER), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = call(&server, "DELETE", "/v1/streams/order-1", Some(ADMIN), "").await;
    assert!(reply.status.is_success(), "{}", reply.text());
    call(
        &server,
        "POST",
        "/v1/projections/p/restart",
        Some(ADMIN),
        "",
    )
    .await
    .assert_error(404, "not_found");
}

#[tokio::test]
async fn a_replaced_token_set_applies_to_the_next_request() {
    let server = server(false, RequestLimits::default()).await;
    assert_eq!(
        call(&server, "GET", "/v1/streams", Some(READER), "")
            .await
            .status,
        StatusCode::OK
    );
    server
        .state
        .auth
        .replace(Tokens::new(vec![token("new", "cairn_new", &[Scope::Read], &[])]).unwrap());
    call(&server, "GET", "/v1/streams", Some(READER), "")
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(
        call(&server, "GET", "/v1/streams", Some("cairn_new"), "")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn beyond_the_concurrency_limit_a_request_is_shed_with_503_at_once() {
    let server = server(
        false,
        RequestLimits {
            max_concurrent_requests: 1,
            ..RequestLimits::default()
        },
    )
    .await;
    // An append whose body never comes holds the only slot.
    let (sender, receiver) =
        futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let stalled = Request::builder()
        .method("POST")
        .uri("/v1/streams/order-1/events")
        .header("authorization", format!("Bearer {APPENDER}"))
        .body(Body::from_stream(receiver))
        .unwrap();
    let held = tokio::spawn(server.app.clone().oneshot(stalled));
    while server.state.guard.available_slots() > 0 {
        tokio::task::yield_now().await;
    }
    let reply = call(&server, "GET", "/v1/streams", Some(READER), "").await;
    reply.assert_error(503, "unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Health checks and subscriptions are not shed.
    assert_eq!(
        call(&server, "GET", "/health/live", None, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        status_only(&server, "/v1/subscribe", Some(READER)).await,
        StatusCode::OK
    );
    drop(sender);
    let _ = held.await.unwrap();
    assert_eq!(
        call(&server, "GET", "/v1/streams", Some(READER), "")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn beyond_its_rate_a_token_is_answered_429_with_retry_after() {
    let server = server(
        false,
        RequestLimits {
            rate_limit_per_second: Some(0.5),
            rate_limit_burst: 2,
            ..RequestLimits::default()
        },
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            call(&server, "GET", "/v1/streams", Some(READER), "")
                .await
                .status,
            StatusCode::OK
        );
    }
    let reply = call(&server, "GET", "/v1/streams", Some(READER), "").await;
    reply.assert_error(429, "rate_limited");
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another token has its own budget; health is never limited.
    assert_eq!(
        call(&server, "GET", "/v1/streams", Some(ADMIN), "")
            .await
            .status,
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(
            call(&server, "GET", "/health/live", None, "").await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn one_subscription_too_many_is_answered_429() {
    let server = server(
        false,
        RequestLimits {
            max_subscriptions_per_token: 1,
            ..RequestLimits::default()
        },
    )
    .await;
    let first = server
        .app
        .clone()
        .oneshot(request("GET", "/v1/subscribe", Some(READER), None))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let reply = call(&server, "GET", "/v1/subscribe", Some(READER), "").await;
    reply.assert_error(429, "rate_limited");
    assert!(reply.header("retry-after").is_some());
    assert_eq!(
        status_only(&server, "/v1/subscribe", Some(ADMIN)).await,
        StatusCode::OK
    );
    drop(first);
    assert_eq!(
        status_only(&server, "/v1/subscribe", Some(READER)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn one_claim_too_many_in_progress_is_answered_429() {
    let server = server(
        false,
        RequestLimits {
            max_claims_per_token: 1,
            ..RequestLimits::default()
        },
    )
    .await;
    let created = call(&server, "PUT", "/v1/groups/billing", Some(ADMIN), "{}").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    // A claim waiting for events holds the reader's only claim slot.
    let waiting = tokio::spawn(server.app.clone().oneshot(request(
        "POST",
        "/v1/groups/billing/claim",
        Some(READER),
        Some(r#"{"consumer": "a", "wait_ms": 60000}"#.to_owned()),
    )));
    crate::wait_for(
        "the first claim is waiting",
        Duration::from_secs(10),
        || server.state.guard.claims_in_progress() == 1,
    )
    .await;
    let before = server.head().await;
    let reply = call(
        &server,
        "POST",
        "/v1/groups/billing/claim",
        Some(READER),
        r#"{"consumer": "b"}"#,
    )
    .await;
    reply.assert_error(429, "rate_limited");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(server.head().await, before);
    // Another token has its own claims.
    let other = call(
        &server,
        "POST",
        "/v1/groups/billing/claim",
        Some(ADMIN),
        r#"{"consumer": "c"}"#,
    )
    .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    // An event ends the wait, and the slot is given back.
    let appended = call(
        &server,
        "POST",
        "/v1/streams/order-1/events",
        Some(APPENDER),
        r#"{"events": [{"type": "Placed", "data": {}}]}"#,
    )
    .await;
    assert_eq!(appended.status, StatusCode::CREATED, "{}", appended.text());
    let first = waiting.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(server.state.guard.claims_in_progress(), 0);
    let again = call(
        &server,
        "POST",
        "/v1/groups/billing/claim",
        Some(READER),
        r#"{"consumer": "b"}"#,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
}

#[tokio::test]
async fn a_client_that_sends_its_request_head_slowly_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (store, _dir) = temporary_store();
    let state = AppState::open(store, Limits::default(), Duration::from_secs(30))
        .await
        .unwrap()
        .with_request_limits(RequestLimits {
            header_read_timeout: Duration::from_millis(200),
            ..RequestLimits::default()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(cairn_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));

    // A whole request is answered.
    let mut fine = tokio::net::TcpStream::connect(address).await.unwrap();
    fine.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    fine.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Half a head, then nothing: the server closes the connection on its own.
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow connection was not closed");

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
