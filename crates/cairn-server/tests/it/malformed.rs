//! Every way a request can be wrong: each answered with its JSON error, nothing
//! written, and the server still serving.

use axum::body::Body;
use cairn_server::Limits;
use http::Request;
use serde_json::json;

use crate::Server;

/// Sends each body to the single-stream append and expects `status`/`code`, no write.
async fn refuse_bodies(server: &Server, cases: &[(&str, u16, &str)]) {
    let before = server.head().await;
    for (body, status, code) in cases {
        let reply = server
            .post("/v1/streams/bad-1/events", body.to_string())
            .await;
        let error = reply.assert_error(*status, code);
        assert!(error["message"].is_string(), "{body}");
    }
    assert_eq!(server.head().await, before);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn malformed_json_is_invalid_json() {
    let server = Server::start().await;
    refuse_bodies(
        &server,
        &[
            ("", 400, "invalid_json"),
            ("{", 400, "invalid_json"),
            ("[1, 2", 400, "invalid_json"),
            ("{\"events\": []} trailing", 400, "invalid_json"),
            ("{'events': []}", 400, "invalid_json"),
            ("nul", 400, "invalid_json"),
        ],
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_is_invalid_json() {
    let server = Server::start().await;
    let mut body = br#"{"events":[{"type":"A","data":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}]}"#);
    server
        .post("/v1/streams/bad-1/events", body)
        .await
        .assert_error(400, "invalid_json");
    assert_eq!(server.head().await, 0);
}

#[tokio::test]
async fn wrong_shapes_are_invalid_requests_with_serdes_message() {
    let server = Server::start().await;
    refuse_bodies(
        &server,
        &[
            ("null", 400, "invalid_request"),
            ("[]", 400, "invalid_request"),
            ("{}", 400, "invalid_request"),
            (r#"{"events": "x"}"#, 400, "invalid_request"),
            (r#"{"events": [{"type": "A"}]}"#, 400, "invalid_request"),
            (r#"{"events": [{"data": 1}]}"#, 400, "invalid_request"),
            (
                r#"{"events": [{"type": 5, "data": 1}]}"#,
                400,
                "invalid_request",
            ),
            (
                r#"{"events": [{"type": "A", "data": 1, "id": "not-a-uuid"}]}"#,
                400,
                "invalid_request",
            ),
            (
                r#"{"events": [{"type": "A", "data": 1, "tags": "t"}]}"#,
                400,
                "invalid_request",
            ),
            (
                r#"{"expected_version": "latest", "events": [{"type": "A", "data": 1}]}"#,
                400,
                "invalid_request",
            ),
            (
                r#"{"expected_version": -1, "events": [{"type": "A", "data": 1}]}"#,
                400,
                "invalid_request",
            ),
            (
                r#"{"expected_version": 1.5, "events": [{"type": "A", "data": 1}]}"#,
                400,
                "invalid_request",
            ),
            (
                r#"{"events": [{"type": "A", "data": 1}], "extra": 1}"#,
                400,
                "invalid_request",
            ),
            (
                r#"{"events": [{"type": "A", "data": 1, "stream": "x"}]}"#,
                400,
                "invalid_request",
            ),
        ],
    )
    .await;
    let reply = server
        .post(
            "/v1/streams/bad-1/events",
            r#"{"events": [{"type": "A", "data": 1, "colour": 1}]}"#,
        )
        .await;
    let error = reply.assert_error(400, "invalid_request");
    assert!(
        error["message"].as_str().unwrap().contains("colour"),
        "{error}"
    );
}

#[tokio::test]
async fn deeply_nested_json_is_refused_before_parsing() {
    let server = Server::start().await;
    let deep = "[".repeat(10_000);
    let error = server
        .post("/v1/streams/bad-1/events", deep)
        .await
        .assert_error(400, "invalid_json");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("deeper than 64"),
        "{error}"
    );

    let data = format!("{}1{}", "[".repeat(64), "]".repeat(64));
    let body = format!(r#"{{"events":[{{"type":"A","data":{data}}}]}}"#);
    server
        .post("/v1/streams/bad-1/events", body)
        .await
        .assert_error(400, "invalid_json");
    // Brackets inside strings are not nesting.
    let body = format!(
        r#"{{"events":[{{"type":"A","data":"{}"}}]}}"#,
        "[".repeat(1000)
    );
    let reply = server.post("/v1/streams/bad-1/events", body).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(server.head().await, 1);
}

#[tokio::test]
async fn an_oversize_body_is_413_with_the_limit() {
    let server = Server::with_limits(Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    })
    .await;
    let big = json!({"events": [{"type": "A", "data": "x".repeat(2000)}]}).to_string();
    // With a Content-Length.
    let reply = server
        .call(
            "POST",
            "/v1/streams/big-1/events",
            &[("content-length", &big.len().to_string())],
            big.clone(),
        )
        .await;
    assert_eq!(reply.assert_error(413, "payload_too_large")["limit"], 1024);
    // Streamed, without one.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(100)
        .map(|chunk| Ok(bytes::Bytes::copy_from_slice(chunk)))
        .collect();
    let request = Request::post("/v1/streams/big-1/events")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let reply = server.send(request).await;
    assert_eq!(reply.assert_error(413, "payload_too_large")["limit"], 1024);
    // The same on the multi-stream append.
    server
        .post("/v1/events", big)
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(server.head().await, 0);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn event_counts_outside_1_to_the_limit_are_refused() {
    let server = Server::with_limits(Limits {
        max_events_per_request: 5,
        ..Limits::default()
    })
    .await;
    server
        .append("count-1", json!([]))
        .await
        .assert_error(400, "invalid_request");
    let six: Vec<_> = (0..6).map(|_| json!({"type": "A", "data": 1})).collect();
    let error = server
        .append("count-1", json!(six))
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(
        (error["limit"].clone(), error["actual"].clone()),
        (json!(5), json!(6))
    );
    let six: Vec<_> = (0..6)
        .map(|_| json!({"stream": "count-1", "type": "A", "data": 1}))
        .collect();
    server
        .post_json("/v1/events", &json!({"events": six}))
        .await
        .assert_error(413, "payload_too_large");
    server
        .post_json("/v1/events", &json!({"events": []}))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(server.head().await, 0);
    server.append_n("count-1", "A", 5).await;
}

#[tokio::test]
async fn an_oversize_event_is_413_naming_its_index() {
    let server = Server::with_limits(Limits {
        max_event_bytes: 100,
        ..Limits::default()
    })
    .await;
    let error = server
        .append(
            "size-1",
            json!([{"type": "A", "data": "small"}, {"type": "B", "data": "x".repeat(200)}]),
        )
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(error["index"], 1);
    assert_eq!(error["limit"], 100);
    let error = server
        .append(
            "size-1",
            json!([{"type": "A", "data": 1, "metadata": {"m": "x".repeat(200)}}]),
        )
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(error["index"], 0);
    assert_eq!(server.head().await, 0);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn bad_stream_names_are_refused() {
    let server = Server::start().await;
    let long = "x".repeat(201);
    for path in [
        "/v1/streams/$x/events",
        "/v1/streams/%24all/events",
        &format!("/v1/streams/{long}/events"),
        "/v1/streams/a%2Fb/events",
        "/v1/streams/a%20b/events",
        "/v1/streams/%C3%A9/events",
        "/v1/streams/%FF/events",
    ] {
        server
            .post(
                path,
                json!({"events": [{"type": "A", "data": 1}]}).to_string(),
            )
            .await
            .assert_error(400, "invalid_stream_name");
        server
            .get(path)
            .await
            .assert_error(400, "invalid_stream_name");
    }
    server
        .get("/v1/streams/$x")
        .await
        .assert_error(400, "invalid_stream_name");
    server
        .delete("/v1/streams/a%2Fb")
        .await
        .assert_error(400, "invalid_stream_name");
    server
        .get("/v1/events?stream=%24x")
        .await
        .assert_error(400, "invalid_stream_name");
    let error = server
        .post_json(
            "/v1/events",
            &json!({"events": [
                {"stream": "ok-1", "type": "A", "data": 1},
                {"stream": "a/b", "type": "A", "data": 1},
            ]}),
        )
        .await
        .assert_error(400, "invalid_stream_name");
    assert_eq!(error["index"], 1);
    // 200 characters is the longest name.
    server.append_n(&"x".repeat(200), "A", 1).await;
    assert_eq!(server.head().await, 1);
    server.assert_still_serving().await;
}

#[tokio::test]
async fn bad_types_and_tags_are_refused_naming_the_event() {
    let server = Server::start().await;
    for (events, index) in [
        (json!([{"type": "", "data": 1}]), 0),
        (
            json!([{"type": "A", "data": 1}, {"type": "a\nb", "data": 1}]),
            1,
        ),
        (json!([{"type": "x".repeat(201), "data": 1}]), 0),
        (json!([{"type": "A", "data": 1, "tags": [""]}]), 0),
        (json!([{"type": "A", "data": 1, "tags": vec!["t"; 33]}]), 0),
    ] {
        let error = server
            .append("types-1", events)
            .await
            .assert_error(400, "invalid_request");
        assert_eq!(error["index"], index);
    }
    assert_eq!(server.head().await, 0);
}

#[tokio::test]
async fn metadata_must_be_an_object_without_foreign_dollar_keys() {
    let server = Server::start().await;
    for metadata in [
        json!([1]),
        json!("text"),
        json!(3),
        json!({"$secret": 1}),
        json!({"ok": 1, "$trace": "x"}),
        json!({"\u{0024}x": 1}),
    ] {
        server
            .append(
                "meta-1",
                json!([{"type": "A", "data": 1, "metadata": metadata}]),
            )
            .await
            .assert_error(400, "invalid_request");
    }
    // An escaped `$` is still a `$`.
    server
        .post(
            "/v1/streams/meta-1/events",
            r#"{"events":[{"type":"A","data":1,"metadata":{"\u0024x":1}}]}"#,
        )
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(server.head().await, 0);
    let reply = server
        .append(
            "meta-1",
            json!([{"type": "A", "data": 1, "metadata": {"$correlation_id": "c", "$causation_id": "d", "note": "$x"}}]),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}

#[tokio::test]
async fn bad_idempotency_keys_are_refused() {
    let server = Server::start().await;
    let body = json!({"events": [{"type": "A", "data": 1}]}).to_string();
    let long = "k".repeat(256);
    for key in ["", "has space", "tab\tkey", long.as_str()] {
        server
            .call(
                "POST",
                "/v1/streams/key-1/events",
                &[("idempotency-key", key)],
                body.clone(),
            )
            .await
            .assert_error(400, "invalid_request");
    }
    let request = Request::post("/v1/streams/key-1/events")
        .header(
            "idempotency-key",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .body(Body::from(body.clone()))
        .unwrap();
    server
        .send(request)
        .await
        .assert_error(400, "invalid_request");
    server
        .call(
            "POST",
            "/v1/events",
            &[("idempotency-key", "a"), ("idempotency-key", "b")],
            json!({"events": [{"stream": "key-1", "type": "A", "data": 1}]}).to_string(),
        )
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(server.head().await, 0);
    // 255 visible characters is the longest key.
    let reply = server
        .call(
            "POST",
            "/v1/streams/key-1/events",
            &[("idempotency-key", &"~".repeat(255))],
            body,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}

#[tokio::test]
async fn bad_query_parameters_are_refused_by_name() {
    let server = Server::start().await;
    server.append_n("q-1", "A", 3).await;
    for (uri, parameter) in [
        ("/v1/streams/q-1/events?limit=0", "limit"),
        ("/v1/streams/q-1/events?limit=1001", "limit"),
        ("/v1/streams/q-1/events?limit=abc", "limit"),
        ("/v1/streams/q-1/events?limit=-1", "limit"),
        ("/v1/streams/q-1/events?from=-1", "from"),
        ("/v1/streams/q-1/events?from=1.5", "from"),
        (
            "/v1/streams/q-1/events?from=99999999999999999999999",
            "from",
        ),
        ("/v1/streams/q-1/events?direction=sideways", "direction"),
        ("/v1/streams/q-1/events?colour=red", "colour"),
        ("/v1/streams/q-1/events?from=1&from=2", "from"),
        ("/v1/events?from_position=0", "from_position"),
        ("/v1/events?from_position=x", "from_position"),
        ("/v1/events?limit=5000", "limit"),
        ("/v1/events?type=A", "type"),
        ("/v1/streams?limit=0", "limit"),
        ("/v1/streams?start=a", "start"),
    ] {
        let error = server.get(uri).await.assert_error(400, "invalid_request");
        assert_eq!(error["parameter"], parameter, "{uri}");
        assert!(
            error["message"].as_str().unwrap().contains(parameter),
            "{uri}"
        );
    }
    let error = server
        .delete("/v1/streams/q-1?expected_version=latest")
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(error["parameter"], "expected_version");
    server
        .delete("/v1/streams/q-1?force=true")
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(server.get("/v1/streams/q-1/events").await.status, 200);
}

#[tokio::test]
async fn malformed_multi_stream_bodies_are_refused() {
    let server = Server::start().await;
    for (body, status, code) in [
        ("{", 400, "invalid_json"),
        (
            r#"{"events": [{"type": "A", "data": 1}]}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"events": [{"stream": "s-1", "type": "A", "data": 1}], "condition": {"after": 0}}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"events": [{"stream": "s-1", "type": "A", "data": 1}], "condition": {"query": {}, "after": -1}}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"events": [{"stream": "s-1", "type": "A", "data": 1}], "condition": {"query": {"kind": 1}, "after": 0}}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"events": [{"stream": "s-1", "type": "A", "data": 1}], "expected_versions": {"s-1": "latest"}}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"events": [{"stream": "s-1", "type": "A", "data": 1, "metadata": {"$x": 1}}]}"#,
            400,
            "invalid_request",
        ),
    ] {
        server
            .post("/v1/events", body)
            .await
            .assert_error(status, code);
    }
    assert_eq!(server.head().await, 0);
    server.assert_still_serving().await;
}
