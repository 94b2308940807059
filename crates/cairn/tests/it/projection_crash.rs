//! Exactly-once projections across a SIGKILL: a projection that inserts one row per
//! event under the event's position as primary key (so applying an event twice would
//! fail it) is killed while catching up, and after a restart it reaches the head with
//! exactly one row per matching event, still running.

use std::time::{Duration, Instant};

use cairn_client::{Client, EventInput, ExpectedVersion, ProjectionState, event};
use serde_json::json;

use crate::support::Server;

const CONFIG: &str = r#"
[[projections]]
name = "seen"
filter = { category = "tick" }
setup = ["CREATE TABLE IF NOT EXISTS seen (position INTEGER PRIMARY KEY, stream TEXT NOT NULL)"]
teardown = ["DROP TABLE IF EXISTS seen"]
[projections.on]
Tick = ["INSERT INTO seen (position, stream) VALUES (:position, :stream)"]

[[queries]]
name = "seen_count"
sql = "SELECT count(*) AS n, min(position) AS first, max(position) AS last FROM seen"
"#;

const MATCHING: u64 = 20_000;
const BATCH: u64 = 1000;

fn ticks(count: u64) -> Vec<EventInput> {
    (0..count).map(|n| event("Tick", json!({"n": n}))).collect()
}

/// Appends `rounds` batches of matching events, each followed by a few events the
/// filter leaves out (same type, another category); returns the last position.
fn append_rounds(runtime: &tokio::runtime::Runtime, client: &Client, rounds: u64) -> u64 {
    runtime.block_on(async {
        let mut head = 0;
        for round in 0..rounds {
            let stream = format!("tick-{}", round % 4);
            let appended = client
                .append(&stream, ExpectedVersion::Any, ticks(BATCH))
                .await
                .unwrap();
            let other = client
                .append("tock-1", ExpectedVersion::Any, ticks(10))
                .await
                .unwrap();
            head = appended.last_position.max(other.last_position);
        }
        head
    })
}

#[test]
fn a_projection_killed_while_catching_up_applies_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The events are in the log before the projection exists, so it has the whole log
    // to catch up with; if it gets there before it is seen half-way, the log grows
    // and the projection is given more to catch up with.
    let mut matching = 0;
    let mut head = 0;
    let mut killed_at = None;
    for _attempt in 0..5 {
        let mut server = Server::start(&data_dir);
        let client = Client::new(&server.url).unwrap();
        head = append_rounds(&runtime, &client, MATCHING / BATCH);
        matching += MATCHING;
        server.signal("TERM");
        assert!(server.wait_for_exit(Duration::from_secs(30)).success());

        let mut server = Server::start_with_config(&data_dir, &config);
        let client = Client::new(&server.url).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = runtime.block_on(client.projection("seen")).unwrap();
            assert_ne!(status.state, ProjectionState::Failed, "{status:?}");
            if status.position > 0 && status.position < head {
                server.kill();
                killed_at = Some(status.position);
                break;
            }
            if status.position >= head {
                break;
            }
            assert!(Instant::now() < deadline, "no progress: {status:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        if killed_at.is_some() {
            break;
        }
        server.signal("TERM");
        assert!(server.wait_for_exit(Duration::from_secs(30)).success());
    }
    let killed_at = killed_at.expect("the projection was seen catching up");
    assert!(killed_at < head);

    let server = Server::start_with_config(&data_dir, &config);
    let client = Client::new(&server.url).unwrap();
    runtime.block_on(async {
        // It resumes from its checkpoint, not from scratch. (The checkpoint may be
        // below the position last reported: moves over events the filter leaves out
        // are saved lazily, as re-reading them changes nothing.)
        let resumed = client.projection("seen").await.unwrap();
        assert!(resumed.position > 0, "{resumed:?}");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            let status = client.projection("seen").await.unwrap();
            assert_ne!(status.state, ProjectionState::Failed, "{status:?}");
            if status.position >= head {
                break status;
            }
            assert!(Instant::now() < deadline, "never caught up: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(status.state, ProjectionState::Running);
        assert_eq!(status.head_position, head);
        assert!(status.last_error.is_none());
        let answer = client
            .query(
                "seen_count",
                std::iter::empty::<(&str, &str)>(),
                Some(head),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let row = &answer.rows[0];
        assert_eq!(row["n"], matching, "one row per matching event: {row:?}");
        assert_eq!(row["first"], 1);
        assert!(row["last"].as_u64().unwrap() <= head);
    });
}
