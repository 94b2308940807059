//! Reads: one stream both ways with paging, stream heads, the global log with filters,
//! stream listing, deletion.

use http::StatusCode;
use serde_json::{Value, json};

use crate::Server;

fn versions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["version"].as_u64().unwrap())
        .collect()
}

fn positions(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_stream_reads_forward_in_pages_until_next_is_null() {
    let server = Server::start().await;
    server.append_n("page-1", "E", 5).await;
    let mut from = Some(0);
    let mut seen = Vec::new();
    let mut pages = 0;
    while let Some(version) = from {
        let reply = server
            .get(&format!("/v1/streams/page-1/events?from={version}&limit=2"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let typed: cairn_api::ReadStreamResponse = serde_json::from_slice(&reply.body).unwrap();
        assert!(typed.events.len() <= 2);
        let page = reply.json();
        seen.extend(versions(&page));
        from = page["next"].as_u64();
        pages += 1;
    }
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    assert_eq!(pages, 3);
    // The default page holds everything here.
    let page = server.get("/v1/streams/page-1/events").await.json();
    assert_eq!(versions(&page), [0, 1, 2, 3, 4]);
    assert_eq!(page["next"], Value::Null);
}

#[tokio::test]
async fn a_stream_reads_backward_from_the_end_or_from_a_version() {
    let server = Server::start().await;
    server.append_n("back-1", "E", 5).await;
    let page = server
        .get("/v1/streams/back-1/events?direction=backward&limit=2")
        .await
        .json();
    assert_eq!(versions(&page), [4, 3]);
    assert_eq!(page["next"], 2);
    let page = server
        .get("/v1/streams/back-1/events?direction=backward&limit=2&from=2")
        .await
        .json();
    assert_eq!(versions(&page), [2, 1]);
    assert_eq!(page["next"], 0);
    let page = server
        .get("/v1/streams/back-1/events?direction=backward&from=0")
        .await
        .json();
    assert_eq!(versions(&page), [0]);
    assert_eq!(page["next"], Value::Null);
    let page = server
        .get("/v1/streams/back-1/events?direction=forward&from=3")
        .await
        .json();
    assert_eq!(versions(&page), [3, 4]);
}

#[tokio::test]
async fn events_carry_every_field_of_the_contract() {
    let server = Server::start().await;
    server
        .append(
            "shape-1",
            json!([{"type": "Placed", "data": {"a": 1}, "metadata": {"k": "v"}, "tags": ["t:1", "t:2"]}]),
        )
        .await;
    let page = server.get("/v1/streams/shape-1/events").await.json();
    let event = &page["events"][0];
    let mut keys: Vec<_> = event.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "data",
            "id",
            "metadata",
            "position",
            "recorded_at",
            "stream",
            "tags",
            "type",
            "version"
        ]
    );
    assert_eq!(event["stream"], "shape-1");
    assert_eq!(event["version"], 0);
    assert_eq!(event["position"], 1);
    assert!(
        is_rfc3339_micros(event["recorded_at"].as_str().unwrap()),
        "{event}"
    );
}

fn is_rfc3339_micros(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 27
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[19] == b'.'
        && bytes[26] == b'Z'
        && text[..4].chars().all(|c| c.is_ascii_digit())
}

#[tokio::test]
async fn a_missing_stream_is_404_stream_not_found() {
    let server = Server::start().await;
    server
        .get("/v1/streams/nobody/events")
        .await
        .assert_error(404, "stream_not_found");
    let error = server
        .get("/v1/streams/nobody")
        .await
        .assert_error(404, "stream_not_found");
    assert_eq!(error["stream"], "nobody");
}

#[tokio::test]
async fn a_streams_head_has_its_version_position_and_times() {
    let server = Server::start().await;
    server.append_n("head-1", "E", 2).await;
    server.append_n("other-1", "E", 1).await;
    server.append_n("head-1", "E", 1).await;
    let reply = server.get("/v1/streams/head-1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let info: cairn_api::StreamInfo = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        (info.stream.as_str(), info.version, info.position),
        ("head-1", 2, 4)
    );
    assert!(is_rfc3339_micros(&info.created_at), "{}", info.created_at);
    assert!(is_rfc3339_micros(&info.updated_at), "{}", info.updated_at);
    assert!(info.created_at <= info.updated_at);
}

async fn seed_log(server: &Server) {
    server
        .append(
            "order-1",
            json!([{"type": "Placed", "data": {}, "tags": ["customer:1"]}]),
        )
        .await;
    server
        .append(
            "order-2",
            json!([{"type": "Placed", "data": {}, "tags": ["customer:2", "vip"]}]),
        )
        .await;
    server
        .append(
            "cart-1",
            json!([{"type": "Added", "data": {}, "tags": ["customer:2"]}]),
        )
        .await;
    server
        .append(
            "order-1",
            json!([{"type": "Shipped", "data": {}, "tags": ["customer:1"]}]),
        )
        .await;
    server
        .append(
            "order-2",
            json!([{"type": "Cancelled", "data": {}, "tags": ["customer:2", "vip"]}]),
        )
        .await;
}

#[tokio::test]
async fn the_global_log_reads_in_position_order_with_paging() {
    let server = Server::start().await;
    seed_log(&server).await;
    let reply = server.get("/v1/events").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let typed: cairn_api::ReadAllResponse = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(typed.events.len(), 5);
    assert_eq!((typed.next_from_position, typed.head_position), (6, 5));

    let mut from = 1;
    let mut seen = Vec::new();
    loop {
        let page = server
            .get(&format!("/v1/events?from_position={from}&limit=2"))
            .await
            .json();
        assert_eq!(page["head_position"], 5);
        let got = positions(&page);
        if got.is_empty() {
            break;
        }
        seen.extend(got);
        from = page["next_from_position"].as_u64().unwrap();
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn the_global_log_filters_by_category_types_tags_and_stream() {
    let server = Server::start().await;
    seed_log(&server).await;
    for (query, expected) in [
        ("category=order", vec![1, 2, 4, 5]),
        ("category=cart", vec![3]),
        ("types=Placed", vec![1, 2]),
        ("types=Shipped,Cancelled", vec![4, 5]),
        ("tags=customer:2", vec![2, 3, 5]),
        ("tags=customer:2,vip", vec![2, 5]),
        ("stream=order-1", vec![1, 4]),
        ("category=order&types=Placed&tags=vip", vec![2]),
        ("types=Nothing", vec![]),
        ("from_position=3&category=order", vec![4, 5]),
        ("types=&tags=", vec![1, 2, 3, 4, 5]),
    ] {
        let reply = server.get(&format!("/v1/events?{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text());
        assert_eq!(positions(&reply.json()), expected, "{query}");
    }
}

#[tokio::test]
async fn streams_are_listed_by_prefix_in_pages() {
    let server = Server::start().await;
    for name in ["order-3", "order-1", "cart-1", "order-2", "orders"] {
        server.append_n(name, "E", 1).await;
    }
    let reply = server.get("/v1/streams?prefix=order-&limit=2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let page: cairn_api::StreamList = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(page.streams, ["order-1", "order-2"]);
    let after = page.next.expect("a next page");
    let page: cairn_api::StreamList = serde_json::from_slice(
        &server
            .get(&format!("/v1/streams?prefix=order-&limit=2&after={after}"))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(page.streams, ["order-3"]);
    assert_eq!(page.next, None);
    let all = server.get("/v1/streams").await.json();
    assert_eq!(
        all,
        json!({"streams": ["cart-1", "order-1", "order-2", "order-3", "orders"], "next": null})
    );
    let none = server.get("/v1/streams?prefix=zzz").await.json();
    assert_eq!(none["streams"], json!([]));
}

#[tokio::test]
async fn a_deleted_stream_answers_410_everywhere() {
    let server = Server::start().await;
    server.append_n("gone-1", "E", 3).await;
    server.append_n("kept-1", "E", 1).await;

    let error = server
        .delete("/v1/streams/gone-1?expected_version=1")
        .await
        .assert_error(409, "wrong_expected_version");
    assert_eq!(
        (error["expected"].clone(), error["actual"].clone()),
        (json!(1), json!(2))
    );
    server
        .delete("/v1/streams/gone-1?expected_version=no_stream")
        .await
        .assert_error(409, "wrong_expected_version");

    let reply = server.delete("/v1/streams/gone-1?expected_version=2").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert!(reply.body.is_empty());

    server
        .get("/v1/streams/gone-1/events")
        .await
        .assert_error(410, "stream_deleted");
    server
        .get("/v1/streams/gone-1")
        .await
        .assert_error(410, "stream_deleted");
    server
        .append("gone-1", json!([{"type": "E", "data": 1}]))
        .await
        .assert_error(410, "stream_deleted");
    server
        .post_json(
            "/v1/events",
            &json!({"events": [{"stream": "gone-1", "type": "E", "data": 1}]}),
        )
        .await
        .assert_error(410, "stream_deleted");
    server
        .delete("/v1/streams/gone-1")
        .await
        .assert_error(410, "stream_deleted");
    server
        .delete("/v1/streams/never-1")
        .await
        .assert_error(404, "stream_not_found");

    // Its events stay in the global log; the listing skips it.
    assert_eq!(
        positions(&server.get("/v1/events").await.json()),
        [1, 2, 3, 4]
    );
    assert_eq!(
        server.get("/v1/streams").await.json()["streams"],
        json!(["kept-1"])
    );

    let reply = server
        .delete("/v1/streams/kept-1?expected_version=exists")
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
}
