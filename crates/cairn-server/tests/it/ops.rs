//! Health, metrics, the OpenAPI document, fallbacks, timeouts and panics.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use cairn_server::Limits;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use crate::Server;

#[tokio::test]
async fn liveness_is_always_ok() {
    let server = Server::start().await;
    let reply = server.get("/health/live").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readiness_reports_the_head_position() {
    let server = Server::start().await;
    assert_eq!(
        server.get("/health/ready").await.json(),
        json!({"status": "ok", "head_position": 0})
    );
    server.append_n("ready-1", "E", 3).await;
    let reply = server.get("/health/ready").await;
    assert_eq!(reply.status, StatusCode::OK);
    let health: cairn_api::Health = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(health.head_position, Some(3));
}

#[tokio::test]
async fn metrics_are_labelled_by_route_template() {
    let server = Server::start().await;
    server.append_n("metric-stream-1", "E", 1).await;
    server.get("/v1/streams/metric-stream-1/events").await;
    server.get("/no/such/path").await;
    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = reply.text();
    assert!(
        text.contains(
            r#"cairn_http_requests_total{method="POST",route="/v1/streams/{stream}/events",status="201"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/v1/streams/{stream}/events",status="200""#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        !text.contains("metric-stream-1"),
        "raw paths never become labels"
    );
    assert!(
        text.contains("cairn_http_request_duration_seconds_bucket{"),
        "a histogram, not a summary: {text}"
    );
    assert!(
        !text.contains("cairn_http_request_duration_seconds{"),
        "{text}"
    );
    assert!(
        text.contains("cairn_commit_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(
        text.contains("cairn_group_commit_batch_size_bucket{"),
        "{text}"
    );
}

const DOCUMENTED: [(&str, &str); 29] = [
    ("/v1/streams/{stream}/events", "post"),
    ("/v1/streams/{stream}/events", "get"),
    ("/v1/streams/{stream}", "get"),
    ("/v1/streams/{stream}", "delete"),
    ("/v1/streams", "get"),
    ("/v1/events", "post"),
    ("/v1/events", "get"),
    ("/v1/subscribe", "get"),
    ("/v1/groups", "get"),
    ("/v1/groups/{group}", "put"),
    ("/v1/groups/{group}", "get"),
    ("/v1/groups/{group}", "delete"),
    ("/v1/groups/{group}/claim", "post"),
    ("/v1/groups/{group}/ack", "post"),
    ("/v1/groups/{group}/nack", "post"),
    ("/v1/groups/{group}/parked", "get"),
    ("/v1/groups/{group}/parked/replay", "post"),
    ("/v1/projections", "get"),
    ("/v1/projections/{name}", "get"),
    ("/v1/projections/{name}/restart", "post"),
    ("/v1/projections/{name}/rebuild", "post"),
    ("/v1/queries/{name}", "get"),
    ("/v1/queries", "get"),
    ("/v1/queries/{name}/status", "get"),
    ("/v1/queries/{name}/plan", "get"),
    ("/health/live", "get"),
    ("/health/ready", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
];

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let server = Server::with_limits(Limits {
        max_read_limit: 50,
        max_events_per_request: 7,
        ..Limits::default()
    })
    .await;
    let reply = server.get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let document: Value = reply.json();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    let mut listed = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            listed.push((path.clone(), method.clone()));
        }
    }
    let mut expected: Vec<_> = DOCUMENTED
        .iter()
        .map(|(path, method)| (path.to_string(), method.to_string()))
        .collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    for (path, method) in DOCUMENTED {
        let responses = &paths[path][method]["responses"];
        for status in ["500", "503"] {
            assert!(
                responses.get(status).is_some(),
                "{method} {path} lacks {status}"
            );
        }
    }
    // Every route template is in the router and in the document.
    let mut routes: Vec<_> = cairn_server::routes::ROUTES.to_vec();
    routes.sort();
    let mut documented: Vec<_> = paths.keys().map(String::as_str).collect();
    documented.sort();
    assert_eq!(routes, documented);

    // The configured limits are written into the document.
    let limit = paths["/v1/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["maximum"], 50);
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["AppendRequest"]["properties"]["events"]["maxItems"],
        7
    );
    assert_eq!(schemas["Event"]["properties"]["data"].get("type"), None);
    // The group checks are written into the group schemas.
    let group = &schemas["GroupRequest"]["properties"];
    assert_eq!(group["ack_timeout_ms"]["minimum"], 1);
    assert_eq!(group["ack_timeout_ms"]["maximum"], 3_600_000);
    assert_eq!(group["max_deliveries"]["maximum"], 1000);
    assert_eq!(group["from_position"]["minimum"], 1);
    let claim = &schemas["ClaimRequest"]["properties"];
    assert_eq!(claim["consumer"]["maxLength"], 200);
    assert_eq!(claim["max"]["maximum"], 1000);
    assert_eq!(claim["wait_ms"]["maximum"], 60_000);
    for name in ["AckRequest", "NackRequest", "ReplayParkedRequest"] {
        let positions = &schemas[name]["properties"]["positions"];
        assert_eq!(positions["minItems"], 1, "{name}");
        assert_eq!(positions["maxItems"], 1000, "{name}");
        assert_eq!(positions["items"]["minimum"], 1, "{name}");
    }
    let parked_limit = paths["/v1/groups/{group}/parked"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == "limit")
        .unwrap();
    assert_eq!(parked_limit["schema"]["maximum"], 50);
    let subscribe = &paths["/v1/subscribe"]["get"];
    assert!(
        subscribe["responses"]["200"]["content"]
            .get("text/event-stream")
            .is_some(),
        "{subscribe}"
    );
    assert!(
        subscribe["description"]
            .as_str()
            .unwrap()
            .contains("after the current head"),
        "{subscribe}"
    );
    assert_eq!(
        paths["/v1/groups/{group}"]["put"]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        [
            "200", "201", "400", "401", "403", "413", "429", "500", "503"
        ]
    );
    assert!(
        !schemas["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("unsupported_media_type"))
    );
}

#[test]
fn the_documented_lengths_agree_with_the_domain() {
    use cairn_core::{EventType, Tag};
    use cairn_server::openapi::{MAX_TAG_LEN, MAX_TAGS, MAX_TYPE_LEN};
    assert!(EventType::validate(&"t".repeat(MAX_TYPE_LEN)).is_ok());
    assert!(EventType::validate(&"t".repeat(MAX_TYPE_LEN + 1)).is_err());
    assert!(Tag::validate_all(&["t".repeat(MAX_TAG_LEN)]).is_ok());
    assert!(Tag::validate_all(&["t".repeat(MAX_TAG_LEN + 1)]).is_err());
    assert!(Tag::validate_all(&vec!["t".to_owned(); MAX_TAGS]).is_ok());
    assert!(Tag::validate_all(&vec!["t".to_owned(); MAX_TAGS + 1]).is_err());
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let server = Server::start().await;
    for path in [
        "/nope",
        "/v1/streams/",
        "/v1/streams/a/events/extra",
        "/v2/events",
    ] {
        server.get(path).await.assert_error(404, "not_found");
    }
    for (method, path) in [
        ("PUT", "/v1/events"),
        ("DELETE", "/v1/events"),
        ("PATCH", "/v1/streams/a-1"),
        ("POST", "/health/live"),
        ("DELETE", "/v1/streams/a-1/events"),
    ] {
        let reply = server.call(method, path, &[], Body::empty()).await;
        reply.assert_error(405, "method_not_allowed");
        assert!(
            reply
                .header("allow")
                .is_some_and(|allow| allow.contains("GET")),
            "{path}"
        );
    }
    let reply = server
        .call("HEAD", "/health/live", &[], Body::empty())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn a_request_over_its_time_limit_is_503_with_retry_after() {
    let server = Server::with(Limits::default(), Duration::from_millis(200)).await;
    let never_ending = futures::stream::pending::<Result<Bytes, std::io::Error>>();
    let request = Request::post("/v1/streams/slow-1/events")
        .body(Body::from_stream(never_ending))
        .unwrap();
    let reply = server.send(request).await;
    reply.assert_error(503, "unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(server.head().await, 0);
    server.assert_still_serving().await;
}

async fn panicking_handler() -> &'static str {
    panic!("secret detail")
}

#[tokio::test]
async fn a_panicking_handler_is_answered_500_json() {
    let router =
        Router::new()
            .route("/boom", get(panicking_handler))
            .layer(CatchPanicLayer::custom(
                cairn_server::middleware::panic_response,
            ));
    let response = router
        .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("secret"), "{text}");
    let error: cairn_api::ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(error.error.code, cairn_api::ErrorCode::Internal);
}

#[tokio::test]
async fn serve_answers_over_tcp_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let store: cairn_store::SharedStore = std::sync::Arc::new(
        cairn_store::sqlite::SqliteStore::open(cairn_store::sqlite::SqliteOptions::new(dir.path()))
            .unwrap(),
    );
    let state = cairn_server::AppState::open(store, Limits::default(), Duration::from_secs(5))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cairn_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
