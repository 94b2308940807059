//! Property tests: whatever a client sends — bodies, headers, path segments, query
//! strings — the server answers a fitting 2xx or a 4xx JSON error, never crashes, never
//! answers 5xx, and a refused request writes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use cairn_server::auth::{ApiToken, Auth, Scope, Tokens, hash_secret};
use cairn_server::{AppState, Limits, app};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tower::ServiceExt;

use crate::{Server, temporary_store};

const VALID: &str = r#"{"expected_version":"any","events":[{"type":"A","data":{"k":[1,"x",null]},"metadata":{"m":true},"tags":["t:1"]}]}"#;
const VALID_MULTI: &str = r#"{"events":[{"stream":"p-1","type":"A","data":1},{"stream":"p-2","type":"B","data":[]}],"expected_versions":{"p-1":"any"},"condition":{"query":{"types":["A"]},"after":0}}"#;

/// Bodies near valid ones: a byte replaced, a byte inserted, a cut.
fn mutated(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    prop_oneof![
        (0..len, any::<u8>()).prop_map(move |(at, byte)| {
            let mut body = valid.as_bytes().to_vec();
            body[at] = byte;
            body
        }),
        (0..=len, any::<u8>()).prop_map(move |(at, byte)| {
            let mut body = valid.as_bytes().to_vec();
            body.insert(at, byte);
            body
        }),
        (0..len).prop_map(move |at| valid.as_bytes()[..at].to_vec()),
    ]
}

fn bodies(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[\\[\\]{}\",:0-9a-z ]{0,200}".prop_map(String::into_bytes),
        mutated(valid),
    ]
}

fn check_endpoint(uri: &'static str, valid: &'static str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(Server::start());
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&bodies(valid), |body| {
            runtime.block_on(async {
                let before = server.head().await;
                let reply = server.post(uri, body.clone()).await;
                let status = reply.status.as_u16();
                if status == 201 {
                    prop_assert!(server.head().await > before);
                    return Ok(());
                }
                prop_assert!(
                    (400..500).contains(&status),
                    "{status} for {:?}: {}",
                    String::from_utf8_lossy(&body),
                    reply.text()
                );
                let error: cairn_api::ErrorBody = serde_json::from_slice(&reply.body)
                    .map_err(|error| TestCaseError::fail(format!("{error}: {}", reply.text())))?;
                prop_assert_eq!(error.error.code.http_status(), status);
                prop_assert_eq!(server.head().await, before, "a refused request wrote");
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(server.assert_still_serving());
}

#[test]
fn any_body_to_a_single_stream_append_is_201_or_a_4xx_json_error() {
    check_endpoint("/v1/streams/prop-1/events", VALID);
}

#[test]
fn any_body_to_a_multi_stream_append_is_201_or_a_4xx_json_error() {
    check_endpoint("/v1/events", VALID_MULTI);
}

// ---------------------------------------------------------------------------------
// Headers, path segments and query strings
// ---------------------------------------------------------------------------------

/// Decoded values that parsers get wrong: traversal, NUL, invalid or tricky UTF-8,
/// injections, numbers at and past every edge, and names that do exist (so that some
/// cases reach the handlers' own checks).
const NASTY: &[&[u8]] = &[
    b"..",
    b"../..",
    b"../../etc/passwd",
    b"..\\..\\windows\\win.ini",
    b".",
    b"",
    b" ",
    b"\0",
    b"a\0b",
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x80\xae",
    b"\xef\xbb\xbf1",
    b"' OR '1'='1",
    b"1; DROP TABLE events; --",
    b"\" OR 1=1 --",
    b"<script>alert(1)</script>",
    b"javascript:alert(1)",
    b"${jndi:ldap://x/a}",
    b"{{7*7}}",
    b"%s%n%x",
    b"$all",
    b"-1",
    b"-0",
    b"-9223372036854775808",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999999999",
    b"1e3",
    b"1.5",
    b"0x10",
    b"+5",
    b" 5",
    b"5 ",
    b"NaN",
    b"0",
    b"1",
    b"60000",
    b"true",
    b"null",
    b"forward",
    b"backward",
    b"any",
    b"no_stream",
    b"exists",
    b"order-1",
    b"order",
    b"orders",
    b"orders_by_customer",
    b"fuzz-group",
    b"$all-1",
];

/// Raw (not percent-encoded) path pieces: traversal, encoded separators and NULs,
/// broken percent sequences.
const RAW_PATH: &[&str] = &[
    "..",
    "../..",
    "..%2F..",
    "%2e%2e",
    "%2e%2e%2f",
    "%00",
    "a%00b",
    "%FF",
    "%C0%AF",
    "%ED%A0%80",
    "%zz",
    "%",
    "%0",
    "a%2Fb",
    "a/b",
    "",
    ";x=1",
    "+",
    "~",
    "%20",
];

/// Raw query values: broken percent sequences and separators.
const RAW_QUERY: &[&str] = &[
    "%", "%zz", "%0", "%00", "%FF", "%C0%AF", "&", "=", "+", "a=b=c",
];

fn nasty_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        5 => select(NASTY).prop_map(<[u8]>::to_vec),
        2 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => (1usize..3000).prop_map(|length| vec![b'a'; length]),
        1 => any::<u64>().prop_map(|number| number.to_string().into_bytes()),
        1 => any::<i64>().prop_map(|number| number.to_string().into_bytes()),
    ]
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986).
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(*byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => nasty_bytes().prop_map(|bytes| encode(&bytes)),
        1 => (select(RAW_PATH), nasty_bytes())
            .prop_map(|(raw, bytes)| format!("{raw}{}", encode(&bytes))),
        1 => select(RAW_PATH).prop_map(str::to_owned),
    ]
}

/// Every route with a path parameter (`{}`), with a body that is valid when the
/// parameter is.
const PATH_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/v1/streams/{}/events", VALID),
    ("GET", "/v1/streams/{}/events", ""),
    ("GET", "/v1/streams/{}", ""),
    ("DELETE", "/v1/streams/{}", ""),
    ("PUT", "/v1/groups/{}", "{}"),
    ("GET", "/v1/groups/{}", ""),
    ("DELETE", "/v1/groups/{}", ""),
    ("POST", "/v1/groups/{}/claim", r#"{"consumer":"fuzz"}"#),
    ("POST", "/v1/groups/{}/ack", r#"{"positions":[1]}"#),
    ("POST", "/v1/groups/{}/nack", r#"{"positions":[1]}"#),
    ("GET", "/v1/groups/{}/parked", ""),
    ("POST", "/v1/groups/{}/parked/replay", "{}"),
    ("GET", "/v1/projections/{}", ""),
    ("POST", "/v1/projections/{}/restart", ""),
    ("POST", "/v1/projections/{}/rebuild", ""),
    ("GET", "/v1/queries/{}", ""),
    ("GET", "/v1/queries/{}/status", ""),
    ("GET", "/v1/queries/{}/plan", ""),
];

/// Every route with query parameters, with the parameters it knows (the fuzzer also
/// sends unknown ones), plus the routes that take none.
const QUERY_ROUTES: &[(&str, &str, &[&str])] = &[
    (
        "GET",
        "/v1/streams/order-1/events",
        &["from", "limit", "direction"],
    ),
    ("GET", "/v1/streams", &["prefix", "after", "limit"]),
    (
        "GET",
        "/v1/events",
        &[
            "from_position",
            "limit",
            "category",
            "types",
            "tags",
            "stream",
        ],
    ),
    (
        "GET",
        "/v1/subscribe",
        &["from_position", "category", "types", "tags", "stream"],
    ),
    ("DELETE", "/v1/streams/doomed-1", &["expected_version"]),
    ("GET", "/v1/groups/fuzz-group/parked", &["after", "limit"]),
    (
        "GET",
        "/v1/queries/orders_by_customer",
        &["customer", "limit", "min_position", "wait_ms"],
    ),
    (
        "GET",
        "/v1/queries/orders_by_customer/plan",
        &["customer", "limit", "analyze"],
    ),
    ("GET", "/v1/streams/order-1", &[]),
    ("GET", "/v1/groups", &[]),
    ("GET", "/v1/groups/fuzz-group", &[]),
    ("GET", "/v1/projections", &[]),
    ("GET", "/v1/projections/orders", &[]),
    ("GET", "/v1/queries", &[]),
    ("GET", "/v1/queries/orders_by_customer/status", &[]),
    ("GET", "/health/live", &[]),
    ("GET", "/health/ready", &[]),
    ("GET", "/metrics", &[]),
    ("GET", "/openapi.json", &[]),
];

const READ_SIDE: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC)"]
teardown = ["DROP TABLE IF EXISTS orders"]
[projections.on]
OrderPlaced = ["INSERT OR REPLACE INTO orders (id, customer, total) VALUES (:data.id, :data.customer, :data.total)"]

[[queries]]
name = "orders_by_customer"
sql = "SELECT id, total FROM orders WHERE customer = :customer ORDER BY id LIMIT :limit"
params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }
"#;

/// A response: its body is read unless it is an endless event stream.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl Answer {
    fn content_type(&self) -> Option<&str> {
        self.headers
            .get("content-type")
            .and_then(|value| value.to_str().ok())
    }

    fn text(&self) -> String {
        self.body.as_ref().map_or_else(String::new, |body| {
            String::from_utf8_lossy(body).into_owned()
        })
    }
}

async fn answer(server: &Server, request: Request<Body>) -> Answer {
    let response = server
        .app
        .clone()
        .oneshot(request)
        .await
        .expect("the router never fails");
    let status = response.status();
    let headers = response.headers().clone();
    let streaming =
        headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("text/event-stream");
    let body = if streaming {
        None
    } else {
        Some(
            response
                .into_body()
                .collect()
                .await
                .expect("read the response body")
                .to_bytes(),
        )
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A fitting answer: 2xx (JSON when it has a JSON body, an event stream for a
/// subscription), or a 4xx JSON error whose code maps to its status; 5xx only as a
/// query's 504 `consistency_timeout`.
fn check_answer(what: &str, answer: &Answer) -> Result<(), TestCaseError> {
    let status = answer.status.as_u16();
    let consistency_timeout = status == 504;
    prop_assert!(
        status < 500 || consistency_timeout,
        "{what}: {status} {}",
        answer.text()
    );
    if status >= 400 {
        prop_assert_eq!(
            answer.content_type(),
            Some("application/json"),
            "{}: {}",
            what,
            answer.text()
        );
        let body = answer.body.as_deref().unwrap_or_default();
        let error: cairn_api::ErrorBody = serde_json::from_slice(body)
            .map_err(|error| TestCaseError::fail(format!("{what}: {error}: {}", answer.text())))?;
        prop_assert_eq!(error.error.code.http_status(), status, "{}", what);
        if consistency_timeout {
            prop_assert_eq!(error.error.code, cairn_api::ErrorCode::ConsistencyTimeout);
        }
        prop_assert!(!error.error.message.is_empty(), "{}", what);
        return Ok(());
    }
    prop_assert!((200..300).contains(&status), "{what}: {status}");
    if answer.content_type() == Some("application/json")
        && let Some(body) = &answer.body
    {
        prop_assert!(
            serde_json::from_slice::<serde_json::Value>(body).is_ok(),
            "{what}: not JSON: {}",
            answer.text()
        );
    }
    Ok(())
}

/// The head after a request: one more when an append of one event succeeded (not a
/// replay), else unchanged.
fn check_head(
    what: &str,
    answer: &Answer,
    before: u64,
    after: u64,
    appended: u64,
) -> Result<(), TestCaseError> {
    let replayed = answer
        .headers
        .get(cairn_api::IDEMPOTENT_REPLAYED_HEADER)
        .is_some_and(|value| value == "true");
    let expected = if answer.status == StatusCode::CREATED && !replayed {
        before + appended
    } else {
        before
    };
    prop_assert_eq!(
        after,
        expected,
        "{}: {} {}",
        what,
        answer.status,
        answer.text()
    );
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A server with a read side, a stream, a group and a stream to delete.
async fn fuzz_server() -> Server {
    let server = Server::with_read_side(READ_SIDE, Duration::from_secs(30)).await;
    server.append_n("order-1", "OrderPlaced", 3).await;
    server.append_n("doomed-1", "Doomed", 1).await;
    let reply = server.put("/v1/groups/fuzz-group", "{}").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    server
}

#[test]
fn every_route_with_a_path_parameter_is_fuzzed() {
    for route in cairn_server::routes::ROUTES {
        let Some((prefix, rest)) = route.split_once('{') else {
            continue;
        };
        let (_, suffix) = rest.split_once('}').expect("a closed parameter");
        let template = format!("{prefix}{{}}{suffix}");
        assert!(
            PATH_ROUTES.iter().any(|(_, fuzzed, _)| *fuzzed == template),
            "{route} is not in PATH_ROUTES"
        );
    }
}

#[test]
fn any_path_segment_is_answered_with_a_fitting_status_and_writes_only_when_valid() {
    let runtime = runtime();
    let server = runtime.block_on(fuzz_server());
    let built = AtomicUsize::new(0);
    let mut runner = runner(400);
    let strategy = (select(PATH_ROUTES), path_segment());
    runner
        .run(&strategy, |((method, template, body), segment)| {
            let uri = template.replacen("{}", &segment, 1);
            let Ok(request) = Request::builder()
                .method(method)
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from(body))
            else {
                // Not a URI a client could send at all.
                return Ok(());
            };
            built.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(async {
                let what = format!("{method} {uri}");
                let before = server.head().await;
                let answer = answer(&server, request).await;
                check_answer(&what, &answer)?;
                let appended = u64::from(body == VALID);
                check_head(&what, &answer, before, server.head().await, appended)
            })
        })
        .unwrap();
    assert!(built.load(Ordering::Relaxed) > 300, "most URIs are valid");
    runtime.block_on(server.assert_still_serving());
}

/// `name=value` pairs: known names and unknown ones, nasty values, repeats.
fn query_string(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    let name = if known.is_empty() {
        nasty_bytes().prop_map(|bytes| encode(&bytes)).boxed()
    } else {
        prop_oneof![
            4 => select(known).prop_map(str::to_owned),
            1 => nasty_bytes().prop_map(|bytes| encode(&bytes)),
        ]
        .boxed()
    };
    let value = prop_oneof![
        4 => nasty_bytes().prop_map(|bytes| encode(&bytes)),
        1 => select(RAW_QUERY).prop_map(str::to_owned),
    ];
    proptest::collection::vec((name, value), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(name, value)| {
                // A query that waits for `min_position` waits at most 50 ms here.
                let value = match (name.as_str(), value.parse::<u64>()) {
                    ("wait_ms", Ok(51..=60_000)) => "50".to_owned(),
                    _ => value,
                };
                format!("{name}={value}")
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

#[test]
fn any_query_string_is_answered_with_a_fitting_status_and_writes_nothing() {
    let runtime = runtime();
    let server = runtime.block_on(fuzz_server());
    let built = AtomicUsize::new(0);
    let mut tried = 0;
    for (method, path, known) in QUERY_ROUTES {
        let cases = if known.is_empty() { 16 } else { 64 };
        tried += cases as usize;
        runner(cases)
            .run(&query_string(known), |query| {
                let uri = format!("{path}?{query}");
                let Ok(request) = Request::builder()
                    .method(*method)
                    .uri(&uri)
                    .body(Body::empty())
                else {
                    return Ok(());
                };
                built.fetch_add(1, Ordering::Relaxed);
                runtime.block_on(async {
                    let what = format!("{method} {uri}");
                    let before = server.head().await;
                    let answer = answer(&server, request).await;
                    check_answer(&what, &answer)?;
                    check_head(&what, &answer, before, server.head().await, 0)
                })
            })
            .unwrap();
    }
    assert!(
        built.load(Ordering::Relaxed) * 10 > tried * 9,
        "most URIs are valid"
    );
    runtime.block_on(server.assert_still_serving());
}

const SECRET: &str = "cairn_fuzz-admin";

/// Header values: valid ones for each header the server reads, and garbage.
fn header_value(name: &'static str) -> BoxedStrategy<Vec<u8>> {
    let valid: &'static [&'static str] = match name {
        "authorization" => &[
            "Bearer cairn_fuzz-admin",
            "bearer cairn_fuzz-admin",
            "Bearer   cairn_fuzz-admin  ",
            "Bearer",
            "Bearer ",
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "Bearer cairn_fuzz-admin-not",
            "Bearer cairn_fuzz-admin\u{a0}",
            "cairn_fuzz-admin",
        ],
        "content-type" => &[
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=utf-16",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            ";;;",
            "application/json, text/html",
        ],
        "idempotency-key" => &["key-1", "key-2", "", " ", "a b", "clé", "\u{7f}"],
        "last-event-id" => &[
            "0",
            "1",
            "",
            " 3 ",
            "-1",
            "18446744073709551616",
            "1.5",
            "abc",
        ],
        "traceparent" => &[
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ],
        _ => &["abc", "-1", "0", "99999999999999999999999"],
    };
    prop_oneof![
        4 => select(valid).prop_map(|value| value.as_bytes().to_vec()),
        2 => nasty_bytes(),
        1 => (256usize..20_000).prop_map(|length| vec![b'k'; length]),
        1 => proptest::collection::vec(0x80u8..=0xff, 1..20),
    ]
    .boxed()
}

const HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "idempotency-key",
    "last-event-id",
    "traceparent",
    "content-length",
];

fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let one = select(HEADERS).prop_flat_map(|name| (Just(name), header_value(name)));
    proptest::collection::vec(one, 0..7)
}

/// Endpoints that read headers, with a valid body and the events it appends.
const HEADER_ROUTES: &[(&str, &str, &str, u64)] = &[
    ("POST", "/v1/streams/hdr-1/events", VALID, 1),
    ("POST", "/v1/events", VALID_MULTI, 2),
    ("GET", "/v1/subscribe", "", 0),
    ("GET", "/v1/streams/order-1/events", "", 0),
    (
        "POST",
        "/v1/groups/fuzz-group/claim",
        r#"{"consumer":"h"}"#,
        0,
    ),
    ("PUT", "/v1/groups/fuzz-group", "{}", 0),
];

#[test]
fn odd_headers_are_answered_with_a_fitting_status_and_refusals_write_nothing() {
    let runtime = runtime();
    let (store, dir) = temporary_store();
    let server = runtime.block_on(async {
        let token = ApiToken {
            name: "fuzz".into(),
            scopes: vec![Scope::Admin],
            streams: Vec::new(),
            sha256: hash_secret(SECRET),
        };
        let tokens = Tokens::new(vec![token]).expect("a valid token");
        let state = AppState::open(store.clone(), Limits::default(), Duration::from_secs(30))
            .await
            .expect("the state opens")
            .with_auth(Arc::new(Auth::new(tokens, false)));
        let server = Server {
            app: app(state.clone()),
            state,
            store,
            _dir: dir,
        };
        let reply = server
            .call(
                "PUT",
                "/v1/groups/fuzz-group",
                &[("authorization", &format!("Bearer {SECRET}"))],
                "{}",
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        server
    });
    let built = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    for (method, path, body, events) in HEADER_ROUTES {
        // Half the cases carry a valid token first, so the other headers are reached.
        let strategy = (any::<bool>(), headers());
        runner(64)
            .run(&strategy, |(with_token, headers)| {
                let mut request = Request::builder().method(*method).uri(*path);
                if with_token {
                    request = request.header("authorization", format!("Bearer {SECRET}"));
                }
                let mut shown = Vec::new();
                for (name, value) in &headers {
                    // Bytes no HTTP/1 or HTTP/2 peer could send (control characters).
                    let Ok(value) = HeaderValue::from_bytes(value) else {
                        continue;
                    };
                    shown.push(format!(
                        "{name}: {}",
                        String::from_utf8_lossy(value.as_bytes())
                    ));
                    request = request.header(*name, value);
                }
                let Ok(request) = request.body(Body::from(*body)) else {
                    return Ok(());
                };
                built.fetch_add(1, Ordering::Relaxed);
                runtime.block_on(async {
                    let what = format!("{method} {path} with {shown:?}");
                    let before = server.head().await;
                    let answer = answer(&server, request).await;
                    check_answer(&what, &answer)?;
                    if answer.status.is_success() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    check_head(&what, &answer, before, server.head().await, *events)
                })
            })
            .unwrap();
    }
    let built = built.load(Ordering::Relaxed);
    assert!(built > 300, "most requests are valid HTTP");
    assert!(
        accepted.load(Ordering::Relaxed) * 5 > built,
        "enough cases get past authentication to reach the other headers"
    );
    runtime.block_on(async {
        let reply = server
            .call(
                "POST",
                "/v1/streams/hdr-2/events",
                &[("authorization", &format!("Bearer {SECRET}"))],
                VALID,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    });
}
