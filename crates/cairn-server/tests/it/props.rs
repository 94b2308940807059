//! Property tests: whatever bytes a client sends, the server answers 201 or a 4xx JSON
//! error, never crashes, and a refused request writes nothing.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::Server;

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
