//! The OpenAPI document checked against the router: every operation is called, with
//! and without a token, with a token that lacks the operation's scope, and over its
//! rate, and each answer must be one the document lists for it; every 401, 403 and 429
//! the document lists must also be one the router gives.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use cairn_server::auth::{ApiToken, Auth, Scope, Tokens, hash_secret};
use cairn_server::limits::RequestLimits;
use cairn_server::{AppState, Limits, app};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::{Server, temporary_store};

const READER: &str = "cairn_doc-reader";
const APPENDER: &str = "cairn_doc-appender";
const ADMIN: &str = "cairn_doc-admin";

fn tokens() -> Tokens {
    let token = |name: &str, secret: &str, scope: Scope| ApiToken {
        name: name.into(),
        scopes: vec![scope],
        streams: Vec::new(),
        sha256: hash_secret(secret),
    };
    Tokens::new(vec![
        token("reader", READER, Scope::Read),
        token("appender", APPENDER, Scope::Append),
        token("admin", ADMIN, Scope::Admin),
    ])
    .expect("valid tokens")
}

async fn server(limits: RequestLimits) -> Server {
    let (store, dir) = temporary_store();
    let state = AppState::open(store.clone(), Limits::default(), Duration::from_secs(30))
        .await
        .expect("the state opens")
        .with_auth(Arc::new(Auth::new(tokens(), false)))
        .with_request_limits(limits);
    Server {
        app: app(state.clone()),
        state,
        store,
        _dir: dir,
    }
}

/// One documented operation.
struct Operation {
    path: String,
    method: String,
    spec: Value,
}

impl Operation {
    fn documents(&self, status: StatusCode) -> bool {
        self.spec["responses"].get(status.as_str()).is_some()
    }

    /// The scope its security requirement names (`Some("")` for "any token", `None`
    /// when it needs none).
    fn scope(&self) -> Option<String> {
        let requirements = self.spec.get("security")?.as_array()?;
        assert_eq!(requirements.len(), 1, "{} {}", self.method, self.path);
        let scopes = requirements[0]["bearer"]
            .as_array()
            .unwrap_or_else(|| panic!("{} {}: not the bearer scheme", self.method, self.path));
        Some(
            scopes
                .first()
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        )
    }

    /// The path with its parameters filled in.
    fn uri(&self) -> String {
        self.path
            .replace("{stream}", "order-1")
            .replace("{group}", "doc-group")
            .replace("{name}", "nope")
    }
}

async fn documented_operations() -> Vec<Operation> {
    let server = Server::start().await;
    let document = server.get("/openapi.json").await.json();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, spec) in item.as_object().expect("a path item") {
            operations.push(Operation {
                path: path.clone(),
                method: method.to_uppercase(),
                spec: spec.clone(),
            });
        }
    }
    operations
}

/// Calls `operation` with `secret` (if any); only the status and headers of an event
/// stream are read.
async fn call(server: &Server, operation: &Operation, secret: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(operation.method.as_str())
        .uri(operation.uri())
        .header("content-type", "application/json");
    if let Some(secret) = secret {
        request = request.header("authorization", format!("Bearer {secret}"));
    }
    let body = match operation.method.as_str() {
        "POST" | "PUT" => Body::from("{}"),
        _ => Body::empty(),
    };
    let response = server
        .app
        .clone()
        .oneshot(request.body(body).expect("a valid request"))
        .await
        .expect("the router never fails");
    let status = response.status();
    let headers = response.headers().clone();
    if headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("text/event-stream") {
        return (status, Value::Null);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{} {}",
            operation.method,
            operation.path
        );
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(headers.contains_key("retry-after"));
        }
    }
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

#[track_caller]
fn assert_documented(operation: &Operation, status: StatusCode, body: &Value) {
    assert!(
        operation.documents(status),
        "{} {} answered {status} ({body}), which its document does not list: {}",
        operation.method,
        operation.path,
        operation.spec["responses"]
    );
}

/// A token without `scope` (every scope is held by one of the test tokens).
fn token_lacking(scope: &str) -> &'static str {
    match scope {
        "read" | "admin" => APPENDER,
        "append" => READER,
        other => panic!("unknown scope {other:?}"),
    }
}

fn token_with(scope: &str) -> &'static str {
    match scope {
        "read" => READER,
        "append" => APPENDER,
        _ => ADMIN,
    }
}

#[tokio::test]
async fn the_document_declares_the_bearer_scheme_and_what_each_route_needs() {
    let server = Server::start().await;
    let document = server.get("/openapi.json").await.json();
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    for operation in documented_operations().await {
        let responses = &operation.spec["responses"];
        let open = matches!(
            operation.path.as_str(),
            "/health/live" | "/health/ready" | "/openapi.json"
        );
        assert_eq!(
            operation.scope().is_none(),
            open,
            "{} {}",
            operation.method,
            operation.path
        );
        if !open {
            let header = &responses["401"]["headers"]["WWW-Authenticate"];
            assert!(
                header.is_object(),
                "{} {}",
                operation.method,
                operation.path
            );
        }
        let health = operation.path.starts_with("/health/");
        assert_eq!(
            responses.get("429").is_none(),
            health,
            "{} {}",
            operation.method,
            operation.path
        );
        for status in ["429", "503"] {
            if let Some(response) = responses.get(status) {
                assert!(
                    response["headers"]["Retry-After"].is_object(),
                    "{} {} {status}",
                    operation.method,
                    operation.path
                );
            }
        }
        for (status, response) in responses.as_object().expect("responses") {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{} {} {status}",
                    operation.method,
                    operation.path
                );
            }
        }
    }
    // With `metrics_public`, /metrics needs no token, and says so.
    let (store, dir) = temporary_store();
    let state = AppState::open(store.clone(), Limits::default(), Duration::from_secs(30))
        .await
        .expect("the state opens")
        .with_auth(Arc::new(Auth::new(tokens(), true)));
    let public = Server {
        app: app(state.clone()),
        state,
        store,
        _dir: dir,
    };
    let document = public.get("/openapi.json").await.json();
    let metrics = &document["paths"]["/metrics"]["get"];
    assert!(metrics.get("security").is_none(), "{metrics}");
    assert!(metrics["responses"].get("401").is_none(), "{metrics}");
    assert_eq!(public.get("/metrics").await.status, StatusCode::OK);
}

#[tokio::test]
async fn every_answer_of_the_auth_middleware_is_documented_and_every_documented_one_happens() {
    let server = server(RequestLimits::default()).await;
    for operation in documented_operations().await {
        let what = format!("{} {}", operation.method, operation.path);
        let scope = operation.scope();
        // Without a token.
        let (status, body) = call(&server, &operation, None).await;
        assert_documented(&operation, status, &body);
        assert_eq!(
            status == StatusCode::UNAUTHORIZED,
            scope.is_some(),
            "{what}"
        );
        // With an unknown token.
        let (status, body) = call(&server, &operation, Some("cairn_not-a-token")).await;
        assert_documented(&operation, status, &body);
        assert_eq!(
            status == StatusCode::UNAUTHORIZED,
            scope.is_some(),
            "{what}"
        );
        let Some(scope) = scope else {
            assert!(!operation.documents(StatusCode::UNAUTHORIZED), "{what}");
            assert!(!operation.documents(StatusCode::FORBIDDEN), "{what}");
            continue;
        };
        assert!(operation.documents(StatusCode::UNAUTHORIZED), "{what}");
        if scope.is_empty() {
            // Any valid token will do.
            assert!(!operation.documents(StatusCode::FORBIDDEN), "{what}");
            for secret in [READER, APPENDER, ADMIN] {
                let (status, body) = call(&server, &operation, Some(secret)).await;
                assert_documented(&operation, status, &body);
                assert!(status.is_success(), "{what}: {status} {body}");
            }
            continue;
        }
        // A token without the scope: 403, naming it.
        let (status, body) = call(&server, &operation, Some(token_lacking(&scope))).await;
        assert_documented(&operation, status, &body);
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert_eq!(body["error"]["scope"], scope.as_str(), "{what}");
        // A token with it gets past authentication, to an answer the document lists.
        let (status, body) = call(&server, &operation, Some(token_with(&scope))).await;
        assert_documented(&operation, status, &body);
        assert!(
            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
            "{what}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn every_route_but_health_is_rate_limited_as_documented() {
    let server = server(RequestLimits {
        rate_limit_per_second: Some(0.001),
        rate_limit_burst: 1,
        ..RequestLimits::default()
    })
    .await;
    let operations = documented_operations().await;
    // The admin token spends its only request, and so does the anonymous caller (open
    // routes are limited by the client's address, here unknown: one shared bucket).
    let find = |path: &str| {
        operations
            .iter()
            .find(|operation| operation.path == path && operation.method == "GET")
            .expect("the operation is documented")
    };
    assert_eq!(
        call(&server, find("/v1/streams"), Some(ADMIN)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&server, find("/openapi.json"), None).await.0,
        StatusCode::OK
    );
    for operation in &operations {
        let what = format!("{} {}", operation.method, operation.path);
        let (status, body) = call(&server, operation, Some(ADMIN)).await;
        assert_documented(operation, status, &body);
        if operation.path.starts_with("/health/") {
            assert_eq!(status, StatusCode::OK, "{what}");
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{what}: {body}");
            assert_eq!(body["error"]["code"], "rate_limited", "{what}");
        }
    }
}
