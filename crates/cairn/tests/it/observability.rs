//! Observability through the real binary: OpenTelemetry traces received by an OTLP/gRPC
//! collector the test starts (the request that wrote an event, the storage call, and the
//! projection, consumer-group and SSE work that handled it, all in one trace), none
//! without an endpoint, the last spans flushed at shutdown; and the request log line
//! (request id, client address, bytes, trace and span ids).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};

use crate::support::{Running, Server};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
/// A caller's trace that the caller did not sample.
const UNSAMPLED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const SERVICE: &str = "cairn-under-test";
/// In event data only: must never show up in a log line or a span.
const PAYLOAD_MARKER: &str = "payload-marker-7f3a";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

// ---------------------------------------------------------------------------------
// An OTLP/gRPC trace collector
// ---------------------------------------------------------------------------------

/// A span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Debug, Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.received.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| string_attribute(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The collector serving on its own runtime, until dropped.
struct RunningCollector {
    endpoint: String,
    collector: Collector,
    _runtime: tokio::runtime::Runtime,
}

impl RunningCollector {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        Self {
            endpoint,
            collector,
            _runtime: runtime,
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.collector.received.lock().unwrap().clone()
    }

    /// Waits (with a deadline) until a received span satisfies `found`.
    fn wait_for(&self, what: &str, found: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(span) = self.spans().into_iter().find(&found) {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} span arrived; received: {:#?}",
                self.spans()
                    .iter()
                    .map(|received| &received.span.name)
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
        .and_then(|value| match value {
            AnyValue::StringValue(text) => Some(text.clone()),
            AnyValue::IntValue(number) => Some(number.to_string()),
            _ => None,
        })
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    string_attribute(&span.attributes, key)
}

/// Whether `span` is a child of, or linked to, the span `span_id` of trace `trace_id`.
fn follows(span: &Span, trace_id: &str, span_id: &str) -> bool {
    let child = hex(&span.trace_id) == trace_id && hex(&span.parent_span_id) == span_id;
    let linked = span
        .links
        .iter()
        .any(|link| hex(&link.trace_id) == trace_id && hex(&link.span_id) == span_id);
    child || linked
}

// ---------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request over a fresh connection, with extra headers.
fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

const CONFIG: &str = r#"
[[projections]]
name = "orders"
filter = { category = "order" }
setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total INTEGER)"]
[projections.on]
Placed = ["INSERT INTO orders (id, total) VALUES (:data.id, :data.total)"]

[[queries]]
name = "order_count"
sql = "SELECT count(*) AS n FROM orders"
"#;

fn start_server(dir: &Path, env: &[(&str, &str)]) -> Server {
    let config = dir.join("cairn.toml");
    std::fs::write(&config, CONFIG).unwrap();
    Server::start_with_env(
        &dir.join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        env,
    )
}

fn append_body() -> String {
    json!({"events": [{"type": "Placed", "data": {"id": "o-1", "total": 3, "note": PAYLOAD_MARKER}}]})
        .to_string()
}

/// The stored event's metadata, as read back.
fn stored_metadata(address: &str) -> Value {
    let read = request(address, "GET", "/v1/streams/order-1/events", &[], "");
    assert_eq!(read.status, 200, "{}", read.body);
    read.json()["events"][0]["metadata"].clone()
}

/// Waits until the projection has applied position 1.
fn wait_for_projection(address: &str) {
    let answer = request(
        address,
        "GET",
        "/v1/queries/order_count?min_position=1&wait_ms=10000",
        &[],
        "",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["rows"][0]["n"], 1, "{}", answer.body);
}

fn stop(server: &mut Server) {
    server.signal("TERM");
    assert!(server.wait_for_exit(Duration::from_secs(30)).success());
}

// ---------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------

#[test]
fn an_event_is_traced_from_the_request_that_wrote_it_to_everything_that_handled_it() {
    let collector = RunningCollector::start();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
            ("OTEL_SERVICE_NAME", SERVICE),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let address = server.address().to_owned();
    let group = request(
        &address,
        "PUT",
        "/v1/groups/billing",
        &[],
        r#"{"from_position":1}"#,
    );
    assert_eq!(group.status, 201, "{}", group.body);
    // A subscriber following the log live (the CLI over SSE).
    let tail = Running::start(&["tail", "--url", &server.url, "--format", "json"]);
    // `cairn tail` without --from shows new events only: wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::support::http_get(&address, "/metrics")
        .is_none_or(|(_, body)| !body.contains("cairn_subscriptions_active 1"))
    {
        assert!(Instant::now() < deadline, "the subscriber did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }

    let appended = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[
            ("traceparent", &traceparent()),
            ("x-request-id", "req-traced-1"),
        ],
        &append_body(),
    );
    assert_eq!(appended.status, 201, "{}", appended.body);

    // The request's span continues the caller's trace.
    let http = collector.wait_for("append request", |received| {
        received.span.name == "POST /v1/streams/{stream}/events"
    });
    assert_eq!(http.service, SERVICE);
    assert_eq!(hex(&http.span.trace_id), TRACE_ID);
    assert_eq!(hex(&http.span.parent_span_id), PARENT_ID);
    assert_eq!(http.span.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(&http.span, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        attribute(&http.span, "request_id").as_deref(),
        Some("req-traced-1")
    );
    let append_span_id = hex(&http.span.span_id);

    // The event stores Cairn's span as its trace context.
    let metadata = stored_metadata(&address);
    let stored = format!("00-{TRACE_ID}-{append_span_id}-01");
    assert_eq!(metadata["$traceparent"], stored.as_str(), "{metadata}");

    // The storage call is a span of the request, named by its statement kind.
    let storage = collector.wait_for("storage append", |received| {
        attribute(&received.span, "db.operation").as_deref() == Some("append")
    });
    assert_eq!(
        attribute(&storage.span, "db.system").as_deref(),
        Some("sqlite")
    );
    assert_eq!(hex(&storage.span.trace_id), TRACE_ID);
    assert_eq!(hex(&storage.span.parent_span_id), append_span_id);
    assert_eq!(storage.span.kind, SpanKind::Client as i32);
    assert!(storage.span.end_time_unix_nano >= storage.span.start_time_unix_nano);

    // The projection's apply follows the event's trace.
    wait_for_projection(&address);
    let projection = collector.wait_for("projection apply", |received| {
        received.span.name == "projection orders apply"
    });
    assert!(
        follows(&projection.span, TRACE_ID, &append_span_id),
        "{:#?}",
        projection.span
    );
    assert_eq!(
        attribute(&projection.span, "projection").as_deref(),
        Some("orders")
    );

    // The subscriber got the event with its trace context, through a traced delivery.
    let line = tail
        .next_line(Duration::from_secs(20))
        .expect("the subscriber received the event");
    let delivered: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        delivered["metadata"]["$traceparent"],
        stored.as_str(),
        "{line}"
    );
    let sse = collector.wait_for("SSE delivery", |received| {
        received.span.name == "sse deliver"
    });
    assert!(
        follows(&sse.span, TRACE_ID, &append_span_id),
        "{:#?}",
        sse.span
    );

    // So did the consumer group's consumer.
    let claimed = request(
        &address,
        "POST",
        "/v1/groups/billing/claim",
        &[],
        r#"{"consumer":"worker-1","max":10,"wait_ms":5000}"#,
    );
    assert_eq!(claimed.status, 200, "{}", claimed.body);
    assert_eq!(
        claimed.json()["deliveries"][0]["event"]["metadata"]["$traceparent"],
        stored.as_str(),
        "{}",
        claimed.body
    );
    let group = collector.wait_for("group delivery", |received| {
        received.span.name == "group deliver"
    });
    assert!(
        follows(&group.span, TRACE_ID, &append_span_id),
        "{:#?}",
        group.span
    );
    assert_eq!(attribute(&group.span, "group").as_deref(), Some("billing"));
    let claim = collector.wait_for("claim request", |received| {
        hex(&received.span.span_id) == hex(&group.span.parent_span_id)
    });
    assert_eq!(claim.span.name, "POST /v1/groups/{group}/claim");

    // Every span names the service; none carries the event's payload.
    for received in collector.spans() {
        assert_eq!(received.service, SERVICE);
        let text = format!("{:?}", received.span);
        assert!(
            !text.contains(PAYLOAD_MARKER),
            "a payload in a span: {text}"
        );
    }

    // The request's log line carries the same trace and span ids.
    let logs = server.logs();
    let line = request_line(&logs, "req-traced-1");
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["span_id"], append_span_id.as_str(), "{line}");
    stop(&mut server);
}

#[test]
fn without_an_endpoint_nothing_is_exported_and_the_incoming_traceparent_is_stored() {
    let collector = RunningCollector::start();
    for (case, env) in [
        (
            "no endpoint",
            vec![
                ("OTEL_SERVICE_NAME", SERVICE),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        ),
        (
            "OTEL_SDK_DISABLED",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
                ("OTEL_SDK_DISABLED", "true"),
            ],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut server = start_server(dir.path(), &env);
        let address = server.address().to_owned();
        let appended = request(
            &address,
            "POST",
            "/v1/streams/order-1/events",
            &[("traceparent", &traceparent())],
            &append_body(),
        );
        assert_eq!(appended.status, 201, "{case}: {}", appended.body);
        assert_eq!(
            stored_metadata(&address)["$traceparent"],
            traceparent().as_str(),
            "{case}"
        );
        // An invalid traceparent is ignored, never an error.
        let ignored = request(
            &address,
            "POST",
            "/v1/streams/order-2/events",
            &[("traceparent", "00-not-a-trace-context")],
            &append_body(),
        );
        assert_eq!(ignored.status, 201, "{case}: {}", ignored.body);
        wait_for_projection(&address);
        // A graceful stop would flush anything buffered: after it, nothing came.
        stop(&mut server);
        assert!(
            collector.spans().is_empty(),
            "{case}: spans were exported: {:#?}",
            collector.spans()
        );
        assert!(
            !server
                .logs()
                .iter()
                .any(|line| line.contains("exporting traces")),
            "{case}"
        );
    }
}

#[test]
fn only_a_trace_someone_can_follow_is_stored_in_the_metadata() {
    // Traces exported, but Cairn's own traces never sampled: a write without a
    // traceparent stores none; a write with one stores Cairn's span in that trace.
    let collector = RunningCollector::start();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
        ],
    );
    let address = server.address().to_owned();
    let plain = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[],
        &append_body(),
    );
    assert_eq!(plain.status, 201, "{}", plain.body);
    assert_eq!(stored_metadata(&address).get("$traceparent"), None);

    let continued = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[("traceparent", &traceparent())],
        &append_body(),
    );
    assert_eq!(continued.status, 201, "{}", continued.body);
    let page = request(&address, "GET", "/v1/streams/order-1/events", &[], "");
    let stored = page.json()["events"][1]["metadata"]["$traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        stored.starts_with(&format!("00-{TRACE_ID}-")) && !stored.contains(PARENT_ID),
        "Cairn's span in the caller's trace: {stored}"
    );

    // The caller did not sample its trace: Cairn makes no span in it and stores the
    // caller's header as it came, for whoever continues it downstream.
    let unsampled = format!("00-{UNSAMPLED_TRACE_ID}-{PARENT_ID}-00");
    let declined = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[("traceparent", &unsampled)],
        &append_body(),
    );
    assert_eq!(declined.status, 201, "{}", declined.body);
    let page = request(&address, "GET", "/v1/streams/order-1/events", &[], "");
    assert_eq!(
        page.json()["events"][2]["metadata"]["$traceparent"].as_str(),
        Some(unsampled.as_str())
    );
    stop(&mut server);

    // Flushed at the stop: the one sampled request's spans, nothing of the others.
    let exported = collector.spans();
    assert!(
        exported
            .iter()
            .any(|received| hex(&received.span.trace_id) == TRACE_ID),
        "the sampled request was exported"
    );
    let strays: Vec<_> = exported
        .iter()
        .filter(|received| hex(&received.span.trace_id) != TRACE_ID)
        .map(|received| &received.span.name)
        .collect();
    assert!(strays.is_empty(), "spans of unsampled requests: {strays:?}");
}

#[test]
fn spans_still_buffered_are_exported_at_a_graceful_stop() {
    let collector = RunningCollector::start();
    let dir = tempfile::tempdir().unwrap();
    // Nothing is exported on schedule during the test.
    let mut server = start_server(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &collector.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let address = server.address().to_owned();
    let appended = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[],
        &append_body(),
    );
    assert_eq!(appended.status, 201, "{}", appended.body);
    // Without a traceparent header, Cairn starts the trace and stores its own span.
    let stored = stored_metadata(&address)["$traceparent"]
        .as_str()
        .expect("a $traceparent")
        .to_owned();
    wait_for_projection(&address);
    assert!(collector.spans().is_empty(), "exported before the stop");
    stop(&mut server);
    let spans = collector.spans();
    let http = spans
        .iter()
        .find(|received| received.span.name == "POST /v1/streams/{stream}/events")
        .unwrap_or_else(|| panic!("the append's span was not flushed: {spans:#?}"));
    assert!(http.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        stored,
        format!(
            "00-{}-{}-01",
            hex(&http.span.trace_id),
            hex(&http.span.span_id)
        )
    );
    // The default service name.
    assert_eq!(http.service, "cairn");
    let projection = spans
        .iter()
        .find(|received| received.span.name == "projection orders apply")
        .expect("the projection's span was flushed");
    assert!(follows(
        &projection.span,
        &hex(&http.span.trace_id),
        &hex(&http.span.span_id)
    ));
}

#[test]
fn a_retried_append_keeps_the_first_attempts_trace_context() {
    let collector = RunningCollector::start();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let address = server.address().to_owned();
    let body =
        json!({"events": [{"id": uuid::Uuid::now_v7(), "type": "Placed", "data": {"id": "o-1"}}]})
            .to_string();
    let append = |traceparent: &str, key: Option<&str>| {
        let mut headers = vec![("traceparent", traceparent)];
        headers.extend(key.map(|key| ("idempotency-key", key)));
        request(
            &address,
            "POST",
            "/v1/streams/order-1/events",
            &headers,
            &body,
        )
    };
    let first = append(&traceparent(), Some("k-1"));
    assert_eq!(first.status, 201, "{}", first.body);
    let stored = stored_metadata(&address)["$traceparent"].clone();
    assert!(
        stored
            .as_str()
            .is_some_and(|value| value.contains(TRACE_ID)),
        "{stored}"
    );
    // Each retry is a new request with a new span, in another trace here: the key's
    // fingerprint (method, path, body) and the event-id check ignore it.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let replayed = append(other, Some("k-1"));
    assert_eq!(replayed.status, 201, "{}", replayed.body);
    assert_eq!(replayed.headers["idempotent-replayed"], "true");
    assert_eq!(replayed.body, first.body);
    let resent = append(other, None);
    assert_eq!(resent.status, 201, "{}", resent.body);
    assert_eq!(resent.body, first.body);
    let read = request(&address, "GET", "/v1/streams/order-1/events", &[], "");
    let events = read.json()["events"].clone();
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(events[0]["metadata"]["$traceparent"], stored);
    stop(&mut server);
}

// ---------------------------------------------------------------------------------
// The request log line
// ---------------------------------------------------------------------------------

/// The `request` log line of the request with this id.
fn request_line(logs: &[String], request_id: &str) -> Value {
    logs.iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|log| log["message"] == "request" && log["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no request line for {request_id}: {logs:#?}"))
}

#[test]
fn each_request_line_has_its_id_client_bytes_and_trace() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    let address = server.address().to_owned();

    // A client's id is kept and sent back.
    let body = append_body();
    let appended = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[
            ("x-request-id", "client-id-42"),
            ("traceparent", &traceparent()),
        ],
        &body,
    );
    assert_eq!(appended.status, 201, "{}", appended.body);
    assert_eq!(appended.headers["x-request-id"], "client-id-42");
    // A bad one (too long, or characters that do not belong in a log) is replaced.
    let long = "x".repeat(129);
    for bad in [long.as_str(), "a b", "quote\"d", "new\\nline"] {
        let answer = request(
            &address,
            "GET",
            "/health/live",
            &[("x-request-id", bad)],
            "",
        );
        assert_eq!(answer.status, 200);
        let given = &answer.headers["x-request-id"];
        assert_ne!(given, bad);
        assert_eq!(given.len(), 36, "a generated UUID: {given}");
    }
    // Without one, one is made up, different each time.
    let first = request(&address, "GET", "/health/live", &[], "");
    let second = request(&address, "GET", "/health/live", &[], "");
    let (first, second) = (
        &first.headers["x-request-id"],
        &second.headers["x-request-id"],
    );
    assert_ne!(first, second);
    uuid::Uuid::parse_str(first).expect("a UUID");

    let logs = server.wait_for_logs(|logs| {
        logs.iter()
            .filter(|line| line.contains("\"route\":\"/health/live\""))
            .count()
            >= 6
    });
    let line = request_line(&logs, "client-id-42");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "/v1/streams/{stream}/events");
    assert_eq!(line["status"], 201);
    assert_eq!(line["request_bytes"], body.len(), "{line}");
    assert_eq!(line["response_bytes"], appended.body.len(), "{line}");
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    // Without an exporter there is no span of Cairn's to name.
    assert!(line.get("span_id").is_none(), "{line}");
    let client = line["client_addr"].as_str().expect("the client's address");
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    let generated = request_line(&logs, first);
    assert_eq!(generated["request_bytes"], 0);
    assert_eq!(generated["route"], "/health/live");
    // No event payload in any log line.
    assert!(
        !logs.iter().any(|line| line.contains(PAYLOAD_MARKER)),
        "a payload was logged"
    );
}

// ---------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------

#[test]
fn no_secret_or_payload_reaches_a_log_line_or_a_span() {
    let created = crate::support::ok(crate::support::run(&[
        "token",
        "create",
        "--name",
        "orders-svc",
        "--scopes",
        "read,append",
    ]));
    let (first, block) = created.split_once('\n').unwrap();
    let secret = first.strip_prefix("token: ").expect("token: <secret>");
    let collector = RunningCollector::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, format!("{CONFIG}\n{block}")).unwrap();
    let mut server = Server::start_with_env(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let address = server.address().to_owned();
    let bearer = format!("Bearer {secret}");
    let appended = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[("authorization", &bearer), ("x-request-id", "with-token")],
        &append_body(),
    );
    assert_eq!(appended.status, 201, "{}", appended.body);
    let refused = request(
        &address,
        "POST",
        "/v1/streams/order-1/events",
        &[("authorization", "Bearer cairn_nope_not_a_token")],
        &append_body(),
    );
    assert_eq!(refused.status, 401, "{}", refused.body);
    let read = request(
        &address,
        "GET",
        "/v1/streams/order-1/events",
        &[("authorization", &bearer)],
        "",
    );
    assert!(read.body.contains(PAYLOAD_MARKER), "the read works");
    // The token's name joins the request's span and line; its secret never does.
    let http = collector.wait_for("append with a token", |received| {
        attribute(&received.span, "request_id").as_deref() == Some("with-token")
    });
    assert_eq!(
        attribute(&http.span, "token").as_deref(),
        Some("orders-svc")
    );
    stop(&mut server);
    let line = request_line(&server.logs(), "with-token");
    assert_eq!(line["token"], "orders-svc", "{line}");
    for forbidden in [secret, "cairn_nope_not_a_token", PAYLOAD_MARKER] {
        for log in server.logs() {
            assert!(!log.contains(forbidden), "{forbidden} in the log: {log}");
        }
        for received in collector.spans() {
            let text = format!("{:?}", received.span);
            assert!(!text.contains(forbidden), "{forbidden} in a span: {text}");
        }
    }
}

/// A line logged while a request is handled carries the request's fields under `span`:
/// its id, its route and, for a request that is not traced, the trace id of its
/// `traceparent`.
#[test]
fn lines_logged_inside_a_request_carry_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--rate-limit-per-second",
            "0.001",
            "--rate-limit-burst",
            "1",
        ],
    );
    let address = server.address().to_owned();
    // The second request at the latest is over the limit, and its refusal is logged
    // inside its span.
    for n in 0..2 {
        request(
            &address,
            "GET",
            "/v1/streams",
            &[
                ("x-request-id", &format!("limited-{n}")),
                ("traceparent", &traceparent()),
            ],
            "",
        );
    }
    let logs = server.wait_for_logs(|logs| {
        logs.iter()
            .any(|line| line.contains("\"message\":\"rate limited\""))
    });
    let line: Value = logs
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|log| log["message"] == "rate limited")
        .unwrap();
    let span = &line["span"];
    assert!(
        span["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("limited-")),
        "{line}"
    );
    assert_eq!(span["route"], "/v1/streams", "{line}");
    assert_eq!(span["trace_id"], TRACE_ID, "{line}");
}
