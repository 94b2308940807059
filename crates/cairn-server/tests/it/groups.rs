//! Consumer groups over HTTP: the lifecycle, claims, acks, nacks, redelivery after
//! the ack timeout, parking and replay, per-stream ordering, long polls, and every
//! refusal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{Value, json};

use crate::{Reply, Server, TRACEPARENT, metric_value};

async fn put_group(server: &Server, group: &str, body: Value) -> Value {
    let reply = server.put_json(&format!("/v1/groups/{group}"), &body).await;
    assert!(
        reply.status == StatusCode::CREATED || reply.status == StatusCode::OK,
        "{}",
        reply.text()
    );
    reply.json()
}

async fn claim(server: &Server, group: &str, body: Value) -> Vec<Value> {
    let reply = server
        .post_json(&format!("/v1/groups/{group}/claim"), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let parsed: cairn_api::ClaimResponse =
        serde_json::from_slice(&reply.body).expect("a claim response");
    drop(parsed);
    reply.json()["deliveries"].as_array().unwrap().clone()
}

/// `(position, attempt)` of each delivery.
fn claimed(deliveries: &[Value]) -> Vec<(u64, u64)> {
    deliveries
        .iter()
        .map(|delivery| {
            (
                delivery["position"].as_u64().unwrap(),
                delivery["attempt"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn settle(server: &Server, group: &str, verb: &str, body: Value) -> Value {
    let reply = server
        .post_json(&format!("/v1/groups/{group}/{verb}"), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

async fn status(server: &Server, group: &str) -> Value {
    let reply = server.get(&format!("/v1/groups/{group}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

#[tokio::test]
async fn a_group_is_created_updated_listed_read_and_deleted() {
    let server = Server::start().await;
    server.append_n("order-1", "Placed", 3).await;
    let reply = server.put_json("/v1/groups/billing", &json!({})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let created: cairn_api::GroupStatus = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        created,
        cairn_api::GroupStatus {
            group: "billing".into(),
            checkpoint: 0,
            head_position: 3,
            lag: 3,
            in_flight: 0,
            waiting: 0,
            parked: 0,
            settings: cairn_api::GroupSettingsView {
                from_position: 1,
                filter: cairn_api::EventFilterSpec::default(),
                ack_timeout_ms: 30_000,
                max_deliveries: 5,
                ordering: cairn_api::GroupOrdering::None,
            },
        }
    );

    let settings = json!({
        "from_position": 2,
        "filter": {"category": "order", "types": ["Placed"], "tags": ["t:1"], "stream": "order-1"},
        "ack_timeout_ms": 1000,
        "max_deliveries": 3,
        "ordering": "per_stream"
    });
    let reply = server.put_json("/v1/groups/billing", &settings).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let updated = reply.json();
    assert_eq!(
        updated["checkpoint"], 0,
        "an existing group keeps its checkpoint"
    );
    assert_eq!(updated["settings"]["filter"], settings["filter"]);
    assert_eq!(updated["settings"]["ack_timeout_ms"], 1000);
    assert_eq!(updated["settings"]["max_deliveries"], 3);
    assert_eq!(updated["settings"]["ordering"], "per_stream");

    let reply = server
        .put_json("/v1/groups/shipping", &json!({"from_position": 3}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["checkpoint"], 2);
    assert_eq!(reply.json()["lag"], 1);

    let list = server.get("/v1/groups").await;
    assert_eq!(list.status, StatusCode::OK);
    let list: cairn_api::GroupList = serde_json::from_slice(&list.body).unwrap();
    let names: Vec<&str> = list
        .groups
        .iter()
        .map(|group| group.group.as_str())
        .collect();
    assert_eq!(names, ["billing", "shipping"]);
    assert_eq!(status(&server, "shipping").await["checkpoint"], 2);

    let reply = server.delete("/v1/groups/billing").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.body.is_empty());
    let error = server
        .get("/v1/groups/billing")
        .await
        .assert_error(404, "not_found");
    assert_eq!(error["group"], "billing");
    let list: cairn_api::GroupList =
        serde_json::from_slice(&server.get("/v1/groups").await.body).unwrap();
    assert_eq!(list.groups.len(), 1);
    // Created again from scratch.
    let reply = server.put_json("/v1/groups/billing", &json!({})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn claims_ack_and_advance_the_checkpoint_with_events_as_stored() {
    let server = Server::start().await;
    let reply = server
        .call(
            "POST",
            "/v1/streams/order-7/events",
            &[("traceparent", TRACEPARENT)],
            json!({"events": [
                {"type": "Placed", "data": {"total": 3}, "metadata": {"by": "me"}, "tags": ["customer:1"]},
                {"type": "Paid", "data": 3}
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    put_group(&server, "audit", json!({})).await;
    let deliveries = claim(&server, "audit", json!({"consumer": "worker-1", "max": 1})).await;
    assert_eq!(claimed(&deliveries), [(1, 1)]);
    let event = &deliveries[0]["event"];
    assert_eq!(event["stream"], "order-7");
    assert_eq!(event["type"], "Placed");
    assert_eq!(event["version"], 0);
    assert_eq!(event["position"], 1);
    assert_eq!(event["data"], json!({"total": 3}));
    assert_eq!(
        event["metadata"],
        json!({"$traceparent": TRACEPARENT, "by": "me"})
    );
    assert_eq!(event["tags"], json!(["customer:1"]));
    // The same shape as a read of the log.
    let read = server.get("/v1/events?limit=1").await.json();
    assert_eq!(*event, read["events"][0]);

    let rest = claim(&server, "audit", json!({"consumer": "worker-2"})).await;
    assert_eq!(claimed(&rest), [(2, 1)]);
    assert_eq!(status(&server, "audit").await["in_flight"], 2);
    let settled = settle(&server, "audit", "ack", json!({"positions": [2, 99]})).await;
    assert_eq!(settled, json!({"settled": 1, "ignored": 1, "parked": 0}));
    assert_eq!(status(&server, "audit").await["checkpoint"], 0);
    settle(&server, "audit", "ack", json!({"positions": [1]})).await;
    let after = status(&server, "audit").await;
    assert_eq!(
        (after["checkpoint"].clone(), after["lag"].clone()),
        (json!(2), json!(0))
    );
    assert_eq!(after["in_flight"], 0);
    assert!(
        claim(&server, "audit", json!({"consumer": "worker-1"}))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_consumer_that_dies_has_its_events_delivered_again_after_the_ack_timeout() {
    let server = Server::start().await;
    server.append_n("job-1", "Run", 3).await;
    put_group(&server, "jobs", json!({"ack_timeout_ms": 200})).await;
    let first = claim(&server, "jobs", json!({"consumer": "doomed", "max": 10})).await;
    assert_eq!(claimed(&first), [(1, 1), (2, 1), (3, 1)]);
    // "doomed" never answers. Another consumer long-polls and gets them back.
    let started = Instant::now();
    let again = claim(
        &server,
        "jobs",
        json!({"consumer": "survivor", "max": 10, "wait_ms": 10_000}),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(claimed(&again), [(1, 2), (2, 2), (3, 2)]);
    let settled = settle(&server, "jobs", "ack", json!({"positions": [1, 2, 3]})).await;
    assert_eq!(settled["settled"], 3);
    let after = status(&server, "jobs").await;
    assert_eq!(after["checkpoint"], 3);
    assert_eq!(after["in_flight"], 0);
    let metrics = server.get("/metrics").await.text();
    assert!(
        metric_value(&metrics, r#"cairn_group_redeliveries_total{group="jobs"}"#) >= 3.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_nack_redelivers_at_once_or_after_its_delay() {
    let server = Server::start().await;
    server.append_n("retry-1", "E", 2).await;
    put_group(&server, "retrying", json!({})).await;
    let first = claim(&server, "retrying", json!({"consumer": "c", "max": 2})).await;
    assert_eq!(claimed(&first), [(1, 1), (2, 1)]);

    let settled = settle(&server, "retrying", "nack", json!({"positions": [1]})).await;
    assert_eq!(settled, json!({"settled": 1, "ignored": 0, "parked": 0}));
    let again = claim(&server, "retrying", json!({"consumer": "c"})).await;
    assert_eq!(claimed(&again), [(1, 2)]);

    let nacked_at = Instant::now();
    let settled = settle(
        &server,
        "retrying",
        "nack",
        json!({"positions": [2, 7], "retry_after_ms": 1000}),
    )
    .await;
    assert_eq!(settled, json!({"settled": 1, "ignored": 1, "parked": 0}));
    assert!(
        claim(&server, "retrying", json!({"consumer": "c"}))
            .await
            .is_empty()
    );
    let later = claim(
        &server,
        "retrying",
        json!({"consumer": "c", "wait_ms": 10_000}),
    )
    .await;
    assert!(nacked_at.elapsed() >= Duration::from_millis(1000));
    assert_eq!(claimed(&later), [(2, 2)]);
}

#[tokio::test]
async fn an_event_is_parked_after_max_deliveries_and_comes_back_on_replay() {
    let server = Server::start().await;
    server.append_n("poison-1", "E", 3).await;
    put_group(&server, "picky", json!({"max_deliveries": 2})).await;
    let first = claim(&server, "picky", json!({"consumer": "c"})).await;
    assert_eq!(claimed(&first), [(1, 1), (2, 1), (3, 1)]);
    settle(&server, "picky", "ack", json!({"positions": [1, 3]})).await;
    settle(&server, "picky", "nack", json!({"positions": [2]})).await;
    assert_eq!(
        claimed(&claim(&server, "picky", json!({"consumer": "c"})).await),
        [(2, 2)]
    );
    let settled = settle(&server, "picky", "nack", json!({"positions": [2]})).await;
    assert_eq!(settled, json!({"settled": 1, "ignored": 0, "parked": 1}));
    let after = status(&server, "picky").await;
    assert_eq!(
        (after["parked"].clone(), after["checkpoint"].clone()),
        (json!(1), json!(3))
    );

    let reply = server.get("/v1/groups/picky/parked").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let parked: cairn_api::ParkedList = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(parked.parked.len(), 1);
    assert_eq!(parked.next, None);
    let entry = &parked.parked[0];
    assert_eq!(
        (entry.position, entry.deliveries, entry.replaying),
        (2, 2, false)
    );
    assert!(!entry.reason.is_empty());
    assert!(
        entry.parked_at.ends_with('Z') && entry.parked_at.len() == 27,
        "RFC 3339 with microseconds: {}",
        entry.parked_at
    );
    let page = server
        .get("/v1/groups/picky/parked?after=2&limit=5")
        .await
        .json();
    assert_eq!(page, json!({"parked": [], "next": null}));
    let page = server.get("/v1/groups/picky/parked?limit=1").await.json();
    assert_eq!(page["next"], 2);

    let reply = server
        .post_json("/v1/groups/picky/parked/replay", &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json(), json!({"replayed": 1}));
    let parked = server.get("/v1/groups/picky/parked").await.json();
    assert_eq!(parked["parked"][0]["replaying"], true);
    let replayed = claim(&server, "picky", json!({"consumer": "fixed"})).await;
    assert_eq!(claimed(&replayed), [(2, 1)]);
    settle(&server, "picky", "ack", json!({"positions": [2]})).await;
    assert_eq!(
        server.get("/v1/groups/picky/parked").await.json(),
        json!({"parked": [], "next": null})
    );
    assert_eq!(status(&server, "picky").await["parked"], 0);

    // Replaying named positions: only parked ones count.
    server.append_n("poison-1", "E", 1).await; // 4
    claim(&server, "picky", json!({"consumer": "c"})).await;
    settle(&server, "picky", "nack", json!({"positions": [4]})).await;
    claim(&server, "picky", json!({"consumer": "c"})).await;
    settle(&server, "picky", "nack", json!({"positions": [4]})).await;
    let reply = server
        .post_json(
            "/v1/groups/picky/parked/replay",
            &json!({"positions": [1, 4]}),
        )
        .await;
    assert_eq!(reply.json(), json!({"replayed": 1}));
}

#[tokio::test]
async fn per_stream_ordering_keeps_one_event_per_stream_in_flight() {
    let server = Server::start().await;
    server.append_n("cart-a", "E", 2).await; // 1, 2
    server.append_n("cart-b", "E", 1).await; // 3
    server.append_n("cart-a", "E", 1).await; // 4
    server.append_n("cart-b", "E", 1).await; // 5
    put_group(&server, "carts", json!({"ordering": "per_stream"})).await;
    let first = claim(&server, "carts", json!({"consumer": "c", "max": 10})).await;
    assert_eq!(claimed(&first), [(1, 1), (3, 1)]);
    assert!(
        claim(&server, "carts", json!({"consumer": "d"}))
            .await
            .is_empty()
    );
    settle(&server, "carts", "ack", json!({"positions": [1]})).await;
    let next = claim(&server, "carts", json!({"consumer": "d", "max": 10})).await;
    assert_eq!(claimed(&next), [(2, 1)]);
    settle(&server, "carts", "ack", json!({"positions": [2, 3]})).await;
    let next = claim(&server, "carts", json!({"consumer": "d", "max": 10})).await;
    assert_eq!(claimed(&next), [(4, 1), (5, 1)]);

    // Without ordering, everything goes at once.
    put_group(&server, "any-order", json!({})).await;
    let all = claim(&server, "any-order", json!({"consumer": "c", "max": 10})).await;
    assert_eq!(all.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_polling_claim_is_woken_by_an_append() {
    let server = Arc::new(Server::start().await);
    put_group(&server, "waiters", json!({"filter": {"category": "wake"}})).await;
    let waiting = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let started = Instant::now();
            let deliveries = claim(
                &server,
                "waiters",
                json!({"consumer": "c", "wait_ms": 30_000}),
            )
            .await;
            (deliveries, started.elapsed())
        })
    };
    server.append_n("other-1", "E", 1).await; // filtered out
    server.append_n("wake-1", "E", 1).await;
    let (deliveries, waited) = waiting.await.unwrap();
    assert_eq!(claimed(&deliveries), [(2, 1)]);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

#[tokio::test]
async fn metrics_refresh_every_groups_lag() {
    let server = Server::start().await;
    put_group(&server, "laggard-metric", json!({})).await;
    server.append_n("lag-1", "E", 4).await;
    let metrics = server.get("/metrics").await.text();
    assert_eq!(
        metric_value(&metrics, r#"cairn_group_lag{group="laggard-metric"}"#),
        4.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------

const BAD_NAMES: [&str; 5] = ["%24system", "a%20b", "caf%C3%A9", "x%2Fy", "a%0Ab"];

fn group_routes(name: &str) -> Vec<(&'static str, String, Value)> {
    vec![
        ("PUT", format!("/v1/groups/{name}"), json!({})),
        ("GET", format!("/v1/groups/{name}"), Value::Null),
        ("DELETE", format!("/v1/groups/{name}"), Value::Null),
        (
            "POST",
            format!("/v1/groups/{name}/claim"),
            json!({"consumer": "c"}),
        ),
        (
            "POST",
            format!("/v1/groups/{name}/ack"),
            json!({"positions": [1]}),
        ),
        (
            "POST",
            format!("/v1/groups/{name}/nack"),
            json!({"positions": [1]}),
        ),
        ("GET", format!("/v1/groups/{name}/parked"), Value::Null),
        (
            "POST",
            format!("/v1/groups/{name}/parked/replay"),
            json!({}),
        ),
    ]
}

async fn call_json(server: &Server, method: &str, uri: &str, body: &Value) -> Reply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    server
        .call(method, uri, &[("content-type", "application/json")], body)
        .await
}

#[tokio::test]
async fn bad_group_names_are_invalid_requests_naming_group() {
    let server = Server::start().await;
    let long = "g".repeat(201);
    let mut names: Vec<String> = BAD_NAMES.iter().map(|name| name.to_string()).collect();
    names.push(long);
    for name in &names {
        for (method, uri, body) in group_routes(name) {
            let error = call_json(&server, method, &uri, &body)
                .await
                .assert_error(400, "invalid_request");
            assert_eq!(error["parameter"], "group", "{method} {uri}");
            assert!(error["message"].as_str().unwrap().contains("group name"));
        }
    }
    // 200 characters is fine.
    let reply = server
        .put_json(&format!("/v1/groups/{}", "g".repeat(200)), &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

#[tokio::test]
async fn an_unknown_group_is_404_not_found_naming_it() {
    let server = Server::start().await;
    for (method, uri, body) in group_routes("ghost") {
        if method == "PUT" {
            continue;
        }
        let error = call_json(&server, method, &uri, &body)
            .await
            .assert_error(404, "not_found");
        assert_eq!(error["group"], "ghost", "{method} {uri}");
    }
}

#[tokio::test]
async fn bad_bodies_are_refused_before_anything_changes() {
    let server = Server::start().await;
    put_group(&server, "strict", json!({})).await;
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        // (method, path, body, code)
        ("PUT", "/v1/groups/strict", "", "invalid_json"),
        ("PUT", "/v1/groups/strict", "{", "invalid_json"),
        ("PUT", "/v1/groups/strict", "[]", "invalid_request"),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"nope": 1}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"ordering": "random"}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"from_position": -1}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"from_position": 0}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"ack_timeout_ms": 0}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"ack_timeout_ms": 3600001}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"max_deliveries": 0}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"max_deliveries": 1001}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"max_deliveries": 99999999999}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"filter": {"colour": "red"}}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"filter": []}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"filter": ["order"]}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"filter": 5}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"["c"]"#,
            "invalid_request",
        ),
        ("POST", "/v1/groups/strict/ack", "[[1]]", "invalid_request"),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"filter": {"types": [""]}}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"filter": {"tags": [""]}}"#,
            "invalid_request",
        ),
        (
            "PUT",
            "/v1/groups/strict",
            r#"{"filter": {"stream": "$x"}}"#,
            "invalid_stream_name",
        ),
        ("POST", "/v1/groups/strict/claim", "{}", "invalid_request"),
        ("POST", "/v1/groups/strict/claim", "nope", "invalid_json"),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"{"consumer": ""}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"{"consumer": 5}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"{"consumer": "c", "max": 0}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"{"consumer": "c", "max": 1001}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"{"consumer": "c", "wait_ms": 60001}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"{"consumer": "c", "wait_ms": -1}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/claim",
            r#"{"consumer": "c", "extra": 1}"#,
            "invalid_request",
        ),
        ("POST", "/v1/groups/strict/ack", "{}", "invalid_request"),
        (
            "POST",
            "/v1/groups/strict/ack",
            r#"{"positions": []}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/ack",
            r#"{"positions": [0]}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/ack",
            r#"{"positions": ["1"]}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/ack",
            r#"{"positions": [1], "x": 1}"#,
            "invalid_request",
        ),
        ("POST", "/v1/groups/strict/ack", "{]", "invalid_json"),
        (
            "POST",
            "/v1/groups/strict/nack",
            r#"{"positions": []}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/nack",
            r#"{"positions": [1], "retry_after_ms": 3600001}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/nack",
            r#"{"positions": [1], "retry_after_ms": -5}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/parked/replay",
            r#"{"positions": []}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/parked/replay",
            r#"{"positions": [0]}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/parked/replay",
            r#"{"all": true}"#,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/groups/strict/parked/replay",
            "",
            "invalid_json",
        ),
    ];
    for (method, uri, body, code) in cases {
        let reply = server
            .call(method, uri, &[("content-type", "application/json")], body)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{method} {uri} {body}"
        );
        reply.assert_error(400, code);
    }
    let too_many: Vec<u64> = (1..=1001).collect();
    for verb in ["ack", "nack", "parked/replay"] {
        let reply = server
            .post_json(
                &format!("/v1/groups/strict/{verb}"),
                &json!({"positions": too_many}),
            )
            .await;
        let error = reply.assert_error(400, "invalid_request");
        assert_eq!(error["field"], "positions", "{verb}");
    }
    let long_consumer = "c".repeat(201);
    let error = server
        .post_json(
            "/v1/groups/strict/claim",
            &json!({"consumer": long_consumer}),
        )
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(error["field"], "consumer");
    let error = server
        .put_json("/v1/groups/strict", &json!({"max_deliveries": 0}))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(error["field"], "max_deliveries");
    // Nothing changed.
    let after = status(&server, "strict").await;
    assert_eq!(after["settings"]["max_deliveries"], 5);
    assert_eq!(after["settings"]["ack_timeout_ms"], 30_000);
    assert_eq!(after["settings"]["filter"], json!({}));
    // A group a refused PUT would have created does not exist.
    server
        .put_json("/v1/groups/never", &json!({"ack_timeout_ms": 0}))
        .await
        .assert_error(400, "invalid_request");
    server
        .get("/v1/groups/never")
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let server = Server::with_limits(cairn_server::Limits {
        max_body_bytes: 64,
        ..cairn_server::Limits::default()
    })
    .await;
    put_group(&server, "small", json!({})).await;
    let big = format!(r#"{{"consumer": "{}"}}"#, "c".repeat(100));
    for (method, uri) in [
        ("PUT", "/v1/groups/small"),
        ("POST", "/v1/groups/small/claim"),
        ("POST", "/v1/groups/small/ack"),
        ("POST", "/v1/groups/small/nack"),
        ("POST", "/v1/groups/small/parked/replay"),
    ] {
        let error = server
            .call(method, uri, &[], big.clone())
            .await
            .assert_error(413, "payload_too_large");
        assert_eq!(error["limit"], 64, "{method} {uri}");
    }
}

#[tokio::test]
async fn bad_parked_queries_and_methods_are_refused() {
    let server = Server::start().await;
    put_group(&server, "paged", json!({})).await;
    for (query, parameter) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?after=-1", "after"),
        ("?after=x", "after"),
        ("?from=1", "from"),
    ] {
        let error = server
            .get(&format!("/v1/groups/paged/parked{query}"))
            .await
            .assert_error(400, "invalid_request");
        assert_eq!(error["parameter"], parameter, "{query}");
    }
    for (method, uri) in [
        ("POST", "/v1/groups"),
        ("POST", "/v1/groups/paged"),
        ("GET", "/v1/groups/paged/claim"),
        ("PUT", "/v1/groups/paged/ack"),
        ("DELETE", "/v1/groups/paged/parked"),
        ("GET", "/v1/groups/paged/parked/replay"),
    ] {
        server
            .call(method, uri, &[], "")
            .await
            .assert_error(405, "method_not_allowed");
    }
}

#[tokio::test]
async fn a_deleted_group_answers_a_waiting_claim_with_404() {
    let server = Arc::new(Server::start().await);
    put_group(&server, "doomed", json!({})).await;
    let waiting = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .post_json(
                    "/v1/groups/doomed/claim",
                    &json!({"consumer": "c", "wait_ms": 30_000}),
                )
                .await
        })
    };
    // Whether the claim is already waiting or not yet started, it must answer 404.
    let reply = server.delete("/v1/groups/doomed").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the claim ends")
        .unwrap();
    let error = reply.assert_error(404, "not_found");
    assert_eq!(error["group"], "doomed");
}

#[tokio::test]
async fn groups_and_checkpoints_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store: cairn_store::SharedStore = Arc::new(
            cairn_store::sqlite::SqliteStore::open(cairn_store::sqlite::SqliteOptions::new(
                dir.path(),
            ))
            .unwrap(),
        );
        store
    };
    {
        let server = Server::on(
            open(),
            tempfile::tempdir().unwrap(),
            cairn_server::Limits::default(),
            Duration::from_secs(30),
        )
        .await;
        server.append_n("keep-1", "E", 3).await;
        put_group(&server, "durable", json!({"max_deliveries": 7})).await;
        claim(&server, "durable", json!({"consumer": "c", "max": 2})).await;
        settle(&server, "durable", "ack", json!({"positions": [1, 2]})).await;
    }
    let server = Server::on(
        open(),
        tempfile::tempdir().unwrap(),
        cairn_server::Limits::default(),
        Duration::from_secs(30),
    )
    .await;
    let after = status(&server, "durable").await;
    assert_eq!(after["checkpoint"], 2);
    assert_eq!(after["settings"]["max_deliveries"], 7);
    let rest = claim(&server, "durable", json!({"consumer": "c"})).await;
    assert_eq!(claimed(&rest), [(3, 1)]);
}
