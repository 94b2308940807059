//! Sealed pages of stream and global reads are served from memory, byte for byte as
//! the store would answer; open pages, deleted streams and a disabled cache are not.

use axum::body::Body;
use bytes::Bytes;
use cairn_server::{AppState, app};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::{Server, metric_value};

const STREAM_HITS: &str =
    "cairn_event_page_cache_hits_total{route=\"/v1/streams/{stream}/events\"}";
const LOG_HITS: &str = "cairn_event_page_cache_hits_total{route=\"/v1/events\"}";

fn counter(series: &str) -> f64 {
    metric_value(&cairn_server::metrics::render(), series)
}

/// What `uri` answers on the same store with the page cache off.
async fn uncached(state: &AppState, uri: &str) -> (StatusCode, Bytes) {
    let response = app(state.clone().with_event_page_cache_bytes(0))
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn a_sealed_stream_page_is_served_from_the_cache_byte_for_byte() {
    let server = Server::start().await;
    server.append_n("cached-1", "Happened", 5).await;
    for uri in [
        "/v1/streams/cached-1/events?limit=2",
        "/v1/streams/cached-1/events?from=1&limit=3",
        "/v1/streams/cached-1/events?from=4&limit=2&direction=backward",
    ] {
        let first = server.get(uri).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.text());
        assert!(first.json()["next"].is_u64(), "{uri}: {}", first.text());
        let hits = counter(STREAM_HITS);
        let second = server.get(uri).await;
        assert_eq!(second.status, StatusCode::OK);
        assert!(counter(STREAM_HITS) >= hits + 1.0, "{uri} was not a hit");
        assert_eq!(second.body, first.body, "{uri}");
        assert_eq!(second.header("content-type"), Some("application/json"));
        let (status, body) = uncached(&server.state, uri).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, first.body.clone()),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn the_last_page_of_a_stream_is_never_cached() {
    let server = Server::start().await;
    server.append_n("open-1", "Happened", 3).await;
    let uri = "/v1/streams/open-1/events?from=2&limit=10";
    let first = server.get(uri).await.json();
    assert_eq!(first["events"].as_array().unwrap().len(), 1);
    assert_eq!(first["next"], Value::Null);
    server.append_n("open-1", "Happened", 2).await;
    let after = server.get(uri).await.json();
    assert_eq!(after["events"].as_array().unwrap().len(), 3);
    assert_eq!(after["next"], Value::Null);

    // The end read backward moves with every append, even when it has a next page.
    let uri = "/v1/streams/open-1/events?limit=2&direction=backward";
    let first = server.get(uri).await.json();
    assert_eq!(first["events"][0]["version"], 4);
    server.append_n("open-1", "Happened", 1).await;
    let after = server.get(uri).await.json();
    assert_eq!(after["events"][0]["version"], 5);
}

#[tokio::test]
async fn a_deleted_stream_answers_410_even_with_cached_pages() {
    let server = Server::start().await;
    server.append_n("gone-1", "Happened", 4).await;
    let uri = "/v1/streams/gone-1/events?limit=2";
    let first = server.get(uri).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(server.get(uri).await.body, first.body);
    assert_eq!(
        server.delete("/v1/streams/gone-1").await.status,
        StatusCode::NO_CONTENT
    );
    server.get(uri).await.assert_error(410, "stream_deleted");
    server
        .get("/v1/streams/gone-1/events?from=2&limit=2&direction=backward")
        .await
        .assert_error(410, "stream_deleted");
}

#[tokio::test]
async fn a_sealed_global_page_is_cached_with_a_live_head() {
    let server = Server::start().await;
    server.append_n("log-1", "Happened", 4).await;
    let uri = "/v1/events?from_position=1&limit=3";
    let first = server.get(uri).await;
    let page = first.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    assert_eq!(
        (
            page["next_from_position"].as_u64(),
            page["head_position"].as_u64()
        ),
        (Some(4), Some(4))
    );
    let hits = counter(LOG_HITS);
    let second = server.get(uri).await;
    assert!(counter(LOG_HITS) >= hits + 1.0, "not a hit");
    assert_eq!(second.body, first.body);
    assert_eq!(uncached(&server.state, uri).await.1, first.body);

    server.append_n("log-2", "Other", 2).await;
    let hits = counter(LOG_HITS);
    let third = server.get(uri).await;
    assert!(counter(LOG_HITS) >= hits + 1.0, "not a hit");
    let page = third.json();
    assert_eq!(page["head_position"], 6, "the head is live");
    assert_eq!(page["events"], first.json()["events"]);
    assert_eq!(page["next_from_position"], 4);
    assert_eq!(uncached(&server.state, uri).await.1, third.body);

    // A short page is open: it grows with the log.
    let uri = "/v1/events?from_position=5&limit=5";
    assert_eq!(
        server.get(uri).await.json()["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    server.append_n("log-3", "Happened", 1).await;
    assert_eq!(
        server.get(uri).await.json()["events"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn filters_are_part_of_the_key() {
    let server = Server::start().await;
    server.append_n("keyed-1", "A", 3).await;
    server.append_n("keyed-2", "B", 3).await;
    server.append_n("other-1", "A", 3).await;
    let pages = [
        "/v1/events?from_position=1&limit=2",
        "/v1/events?from_position=1&limit=2&types=B",
        "/v1/events?from_position=1&limit=2&category=other",
        "/v1/events?from_position=1&limit=2&stream=keyed-2",
        "/v1/events?from_position=1&limit=2&types=A&category=other",
    ];
    for _ in 0..2 {
        for uri in pages {
            let reply = server.get(uri).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, uncached(&server.state, uri).await.1, "{uri}");
        }
    }
    let first = |uri: &str| {
        let server = &server;
        let uri = uri.to_owned();
        async move { server.get(&uri).await.json()["events"][0].clone() }
    };
    assert_eq!(first(pages[0]).await["stream"], "keyed-1");
    assert_eq!(first(pages[1]).await["stream"], "keyed-2");
    assert_eq!(first(pages[2]).await["stream"], "other-1");
    assert_eq!(first(pages[3]).await["stream"], "keyed-2");
    assert_eq!(first(pages[4]).await["position"], 7);
    // Types are a set: their order does not matter.
    let ab = server
        .get("/v1/events?from_position=1&limit=4&types=A,B")
        .await;
    let ba = server
        .get("/v1/events?from_position=1&limit=4&types=B,A")
        .await;
    assert_eq!(ab.body, ba.body);
}

#[tokio::test]
async fn with_the_cache_off_reads_are_still_correct() {
    let mut server = Server::start().await;
    server.state = server.state.clone().with_event_page_cache_bytes(0);
    server.app = app(server.state.clone());
    assert!(!server.state.event_pages.enabled());
    server.append_n("off-1", "Happened", 4).await;
    let uri = "/v1/streams/off-1/events?limit=2";
    let first = server.get(uri).await;
    assert_eq!(server.get(uri).await.body, first.body);
    let log = "/v1/events?from_position=1&limit=2";
    let page = server.get(log).await;
    assert_eq!(server.get(log).await.body, page.body);
    server.append_n("off-1", "Happened", 1).await;
    assert_eq!(server.get(log).await.json()["head_position"], 5);
    assert_eq!(
        server.delete("/v1/streams/off-1").await.status,
        StatusCode::NO_CONTENT
    );
    server.get(uri).await.assert_error(410, "stream_deleted");
}
