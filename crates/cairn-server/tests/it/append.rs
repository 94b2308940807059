//! Appends: one stream, several streams, expected versions, conditions, idempotency.

use http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{Server, TRACEPARENT};

#[tokio::test]
async fn an_append_answers_201_with_versions_and_positions() {
    let server = Server::start().await;
    let reply = server
        .append(
            "order-1",
            json!([{"type": "Placed", "data": {"total": 3}}, {"type": "Paid", "data": 1}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("idempotent-replayed"), None);
    let body: cairn_api::AppendResponse = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body,
        cairn_api::AppendResponse {
            stream: "order-1".into(),
            first_version: 0,
            last_version: 1,
            first_position: 1,
            last_position: 2,
        }
    );
    let next = server.append_n("order-1", "Shipped", 1).await;
    assert_eq!(
        next,
        json!({"stream": "order-1", "first_version": 2, "last_version": 2, "first_position": 3, "last_position": 3})
    );
}

#[tokio::test]
async fn any_content_type_is_parsed_as_json() {
    let server = Server::start().await;
    let body = r#"{"events":[{"type":"Placed","data":{}}]}"#;
    for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
        let reply = server
            .call(
                "POST",
                "/v1/streams/curl-1/events",
                &[("content-type", content_type)],
                body,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    let reply = server
        .call("POST", "/v1/streams/curl-1/events", &[], body)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

async fn append_expecting(server: &Server, stream: &str, expected: Value) -> crate::Reply {
    server
        .post_json(
            &format!("/v1/streams/{stream}/events"),
            &json!({"expected_version": expected, "events": [{"type": "E", "data": {}}]}),
        )
        .await
}

#[tokio::test]
async fn no_stream_succeeds_once_then_conflicts() {
    let server = Server::start().await;
    let reply = append_expecting(&server, "s-1", json!("no_stream")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let error = append_expecting(&server, "s-1", json!("no_stream"))
        .await
        .assert_error(409, "wrong_expected_version");
    assert_eq!(error["stream"], "s-1");
    assert_eq!(error["expected"], "no_stream");
    assert_eq!(error["actual"], 0);
    assert_eq!(server.head().await, 1);
}

#[tokio::test]
async fn exists_conflicts_on_a_new_stream_and_succeeds_on_an_old_one() {
    let server = Server::start().await;
    let error = append_expecting(&server, "s-2", json!("exists"))
        .await
        .assert_error(409, "wrong_expected_version");
    assert_eq!(error["expected"], "exists");
    assert_eq!(error["actual"], "no_stream");
    assert_eq!(server.head().await, 0);
    server.append_n("s-2", "E", 1).await;
    let reply = append_expecting(&server, "s-2", json!("exists")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn an_exact_version_must_be_the_last_one() {
    let server = Server::start().await;
    let error = append_expecting(&server, "s-3", json!(0))
        .await
        .assert_error(409, "wrong_expected_version");
    assert_eq!(
        (error["expected"].clone(), error["actual"].clone()),
        (json!(0), json!("no_stream"))
    );
    server.append_n("s-3", "E", 1).await;
    let reply = append_expecting(&server, "s-3", json!(0)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["first_version"], 1);
    let error = append_expecting(&server, "s-3", json!(0))
        .await
        .assert_error(409, "wrong_expected_version");
    assert_eq!(
        (error["expected"].clone(), error["actual"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(server.head().await, 2);
}

#[tokio::test]
async fn any_never_conflicts() {
    let server = Server::start().await;
    for _ in 0..2 {
        let reply = append_expecting(&server, "s-4", json!("any")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    assert_eq!(server.head().await, 2);
}

#[tokio::test]
async fn server_assigned_ids_are_uuid_v7_and_given_ids_are_kept() {
    let server = Server::start().await;
    let given = Uuid::new_v4();
    server
        .append(
            "ids-1",
            json!([{"type": "A", "data": 1}, {"id": given, "type": "B", "data": 2}]),
        )
        .await;
    let page = server.get("/v1/streams/ids-1/events").await.json();
    let first: Uuid = page["events"][0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(first.get_version_num(), 7);
    assert_eq!(page["events"][1]["id"], given.to_string());
}

#[tokio::test]
async fn data_and_metadata_are_stored_compact_and_read_back_as_json() {
    let server = Server::start().await;
    let body = "{ \"events\": [ { \"type\": \"Placed\",\n \"data\": { \"a\" : [1, 2], \"s\": \"x y\" },\n \"metadata\": { \"$correlation_id\": \"c-1\", \"k\": true }, \"tags\": [\"customer:1\"] } ] }";
    let reply = server.post("/v1/streams/compact-1/events", body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let reply = server.get("/v1/streams/compact-1/events").await;
    assert!(
        reply.text().contains(
            r#""data":{"a":[1,2],"s":"x y"},"metadata":{"$correlation_id":"c-1","k":true}"#
        ),
        "{}",
        reply.text()
    );
    let page = reply.json();
    assert_eq!(page["events"][0]["tags"], json!(["customer:1"]));
    assert_eq!(page["events"][0]["type"], "Placed");
    // Absent metadata is stored as an empty object; any JSON value is data.
    server
        .append("compact-1", json!([{"type": "S", "data": "text"}]))
        .await;
    let page = server
        .get("/v1/streams/compact-1/events?from=1")
        .await
        .json();
    assert_eq!(page["events"][0]["metadata"], json!({}));
    assert_eq!(page["events"][0]["data"], "text");
}

#[tokio::test]
async fn a_traceparent_header_is_stored_in_each_events_metadata() {
    let server = Server::start().await;
    let reply = server
        .call(
            "POST",
            "/v1/streams/traced-1/events",
            &[("traceparent", TRACEPARENT)],
            json!({"events": [
                {"type": "A", "data": {}},
                {"type": "B", "data": {}, "metadata": {"k": 1}},
                {"type": "C", "data": {}, "metadata": {"$traceparent": "kept-as-given"}},
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let page = server.get("/v1/streams/traced-1/events").await.json();
    assert_eq!(
        page["events"][0]["metadata"],
        json!({"$traceparent": TRACEPARENT})
    );
    assert_eq!(
        page["events"][1]["metadata"],
        json!({"$traceparent": TRACEPARENT, "k": 1})
    );
    assert_eq!(
        page["events"][2]["metadata"],
        json!({"$traceparent": "kept-as-given"})
    );

    // An invalid traceparent is ignored, not refused.
    let reply = server
        .call(
            "POST",
            "/v1/streams/traced-2/events",
            &[("traceparent", "00-not-a-trace-context")],
            json!({"events": [{"type": "A", "data": {}}]}).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let page = server.get("/v1/streams/traced-2/events").await.json();
    assert_eq!(page["events"][0]["metadata"], json!({}));
}

#[tokio::test]
async fn a_multi_stream_append_lists_streams_in_order_of_first_appearance() {
    let server = Server::start().await;
    server.append_n("b-1", "E", 2).await;
    let reply = server
        .post_json(
            "/v1/events",
            &json!({"events": [
                {"stream": "a-1", "type": "X", "data": 1},
                {"stream": "b-1", "type": "Y", "data": 2},
                {"stream": "a-1", "type": "Z", "data": 3},
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let body: cairn_api::MultiAppendResponse = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!((body.first_position, body.last_position), (3, 5));
    let streams: Vec<_> = body
        .streams
        .iter()
        .map(|s| (s.stream.as_str(), s.first_version, s.last_version))
        .collect();
    assert_eq!(streams, [("a-1", 0, 1), ("b-1", 2, 2)]);
    let log = server.get("/v1/events?from_position=3").await.json();
    let order: Vec<_> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["stream"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("a-1".into(), "X".into()),
            ("b-1".into(), "Y".into()),
            ("a-1".into(), "Z".into())
        ]
    );
}

#[tokio::test]
async fn multi_stream_expected_versions_are_checked_per_stream() {
    let server = Server::start().await;
    server.append_n("m-1", "E", 1).await;
    let request = |expected: Value| {
        json!({
            "events": [{"stream": "m-1", "type": "E", "data": {}}, {"stream": "m-2", "type": "E", "data": {}}],
            "expected_versions": expected,
        })
    };
    let error = server
        .post_json("/v1/events", &request(json!({"m-1": 0, "m-2": "exists"})))
        .await
        .assert_error(409, "wrong_expected_version");
    assert_eq!(error["stream"], "m-2");
    assert_eq!(error["expected"], "exists");
    assert_eq!(error["actual"], "no_stream");
    assert_eq!(
        server.head().await,
        1,
        "nothing of the failed append was written"
    );

    let reply = server
        .post_json(
            "/v1/events",
            &request(json!({"m-1": 0, "m-2": "no_stream"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(server.head().await, 3);

    let error = server
        .post_json("/v1/events", &request(json!({"m-3": "any"})))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(error["stream"], "m-3");
    server
        .post_json("/v1/events", &request(json!({"$bad": "any"})))
        .await
        .assert_error(400, "invalid_stream_name");
    assert_eq!(server.head().await, 3);
}

#[tokio::test]
async fn a_condition_fails_when_a_matching_event_came_after_it() {
    let server = Server::start().await;
    server
        .append(
            "course-1",
            json!([{"type": "Opened", "data": {}, "tags": ["course:1"]}]),
        )
        .await;
    server
        .append(
            "student-1",
            json!([{"type": "Registered", "data": {}, "tags": ["student:1"]}]),
        )
        .await;
    let request = |after: u64, tags: Value| {
        json!({
            "events": [{"stream": "course-1", "type": "Enrolled", "data": {}, "tags": ["course:1", "student:1"]}],
            "condition": {"query": {"tags": tags}, "after": after},
        })
    };
    // Something tagged course:1 was recorded at position 1, after position 0.
    let error = server
        .post_json("/v1/events", &request(0, json!(["course:1"])))
        .await
        .assert_error(409, "condition_failed");
    assert_eq!(error["after"], 0);
    assert_eq!(error["position"], 1);
    assert_eq!(server.head().await, 2);
    // Nothing matching after position 2.
    let reply = server
        .post_json("/v1/events", &request(2, json!(["course:1"])))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    // A query nothing matches passes from the start.
    let reply = server
        .post_json(
            "/v1/events",
            &json!({
                "events": [{"stream": "course-2", "type": "Opened", "data": {}}],
                "condition": {"query": {"types": ["Nothing"], "category": "course"}, "after": 0},
            }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    // The condition's types and tags are checked like an event's.
    server
        .post_json(
            "/v1/events",
            &json!({
                "events": [{"stream": "course-2", "type": "Opened", "data": {}}],
                "condition": {"query": {"types": [""]}, "after": 0},
            }),
        )
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn a_retried_idempotent_write_replays_the_first_response() {
    let server = Server::start().await;
    let body = json!({"events": [{"type": "Placed", "data": {"n": 1}}]}).to_string();
    let headers = [
        ("idempotency-key", "order-1-place"),
        ("content-type", "application/json"),
    ];
    let first = server
        .call("POST", "/v1/streams/idem-1/events", &headers, body.clone())
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = server
        .call("POST", "/v1/streams/idem-1/events", &headers, body.clone())
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "byte for byte");
    assert_eq!(server.head().await, 1);

    // The same key with another request.
    let other = json!({"events": [{"type": "Placed", "data": {"n": 2}}]}).to_string();
    server
        .call("POST", "/v1/streams/idem-1/events", &headers, other)
        .await
        .assert_error(422, "idempotency_key_reused");
    server
        .call("POST", "/v1/streams/idem-2/events", &headers, body)
        .await
        .assert_error(422, "idempotency_key_reused");
    assert_eq!(server.head().await, 1);
}

#[tokio::test]
async fn a_retried_idempotent_multi_stream_write_replays_the_first_response() {
    let server = Server::start().await;
    let body = json!({"events": [
        {"stream": "x-1", "type": "A", "data": {}},
        {"stream": "y-1", "type": "B", "data": {}},
    ]})
    .to_string();
    let headers = [("idempotency-key", "k:multi/1")];
    let first = server
        .call("POST", "/v1/events", &headers, body.clone())
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let again = server.call("POST", "/v1/events", &headers, body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    let parsed: cairn_api::MultiAppendResponse = serde_json::from_slice(&again.body).unwrap();
    assert_eq!(parsed.streams.len(), 2);
    assert_eq!(server.head().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_key_append_once() {
    let server = std::sync::Arc::new(Server::start().await);
    let body = json!({"events": [{"type": "Placed", "data": {}}]}).to_string();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let server = server.clone();
            let body = body.clone();
            tokio::spawn(async move {
                server
                    .call(
                        "POST",
                        "/v1/streams/race-1/events",
                        &[("idempotency-key", "the-one-key")],
                        body,
                    )
                    .await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        bodies.push(reply.body);
    }
    assert!(bodies.iter().all(|body| *body == bodies[0]));
    assert_eq!(server.head().await, 1);
    let page = server.get("/v1/streams/race-1/events").await.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn resent_event_ids_succeed_with_the_same_positions() {
    let server = Server::start().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let events = json!([{"id": a, "type": "A", "data": 1}, {"id": b, "type": "B", "data": 2}]);
    let first = server.append("dup-1", events.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let again = server.append("dup-1", events).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    assert_eq!(again.json(), first.json());
    assert_eq!(server.head().await, 2);

    let error = server
        .append("dup-2", json!([{"id": a, "type": "A", "data": 1}]))
        .await
        .assert_error(409, "duplicate_event_id");
    assert_eq!(error["id"], a.to_string());
    assert_eq!(error["stream"], "dup-1");
    assert_eq!(server.head().await, 2);
    server.assert_still_serving().await;
}
