//! Many stateless instances on one PostgreSQL: three real `cairn serve` processes, six
//! writers appending through them at once, and readers that follow the global log over
//! HTTP — one paging `GET /v1/events` from each instance in turn, one subscribed over
//! SSE — must see every position once, in order, with the event the writer was told
//! was stored there. This is the gap-free design of the PostgreSQL backend
//! (ARCHITECTURE.md) proved end to end through the binary.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_client::{Client, ExpectedVersion, ReadAllOptions, SubscribeOptions, event};
use cairn_store::testing::{TestDatabase, shared_database};
use futures::StreamExt;
use serde_json::json;

use crate::support::Server;

const INSTANCES: usize = 3;
const WRITERS: usize = 6;
const APPENDS_PER_WRITER: usize = 60;

fn start(data: &tempfile::TempDir, url: &str) -> Server {
    Server::start_with(
        &data.path().join("data"),
        "127.0.0.1:0",
        &["--database-url", url, "--pool-size", "4"],
    )
}

#[test]
fn three_instances_six_writers_and_readers_following_the_log_over_http() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(TestDatabase { primary_url, .. }) = runtime.block_on(shared_database()) else {
        return;
    };
    let dirs: Vec<_> = (0..INSTANCES)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let servers: Vec<Server> = dirs.iter().map(|dir| start(dir, &primary_url)).collect();
    let clients: Vec<Client> = servers
        .iter()
        .map(|server| Client::new(&server.url).unwrap())
        .collect();

    runtime.block_on(async {
        // The log may already hold events of other tests on this shared database.
        let start = clients[0]
            .read_all(&ReadAllOptions {
                limit: Some(1),
                ..Default::default()
            })
            .await
            .unwrap()
            .head_position;

        // An SSE subscriber on the third instance, from the first new position.
        let mut subscription = clients[2].subscribe(SubscribeOptions::from(start + 1));

        // Six writers, two per instance, each appending 1–3 events at a time to streams
        // shared by all writers and to streams of its own.
        let writers = (0..WRITERS).map(|writer| {
            let client = clients[writer % INSTANCES].clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for index in 0..APPENDS_PER_WRITER {
                    let stream = if index % 3 == 0 {
                        format!("scaleshared-{}", index % 5)
                    } else {
                        format!("scale{writer}-{}", index % 7)
                    };
                    let events = (0..1 + index % 3)
                        .map(|n| {
                            event(
                                "Scaled",
                                json!({ "writer": writer, "index": index, "n": n }),
                            )
                        })
                        .collect::<Vec<_>>();
                    let count = events.len() as u64;
                    let answer = client
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap_or_else(|error| panic!("writer {writer}: {error}"));
                    assert_eq!(answer.last_position - answer.first_position + 1, count);
                    for position in answer.first_position..=answer.last_position {
                        acknowledged.push((position, stream.clone()));
                    }
                }
                acknowledged
            })
        });

        // A reader paging through the log from each instance in turn while the writers
        // write: every page must continue exactly where the previous one ended.
        let reader = {
            let clients = clients.clone();
            tokio::spawn(async move {
                let mut seen: Vec<(u64, String)> = Vec::new();
                let mut next = start + 1;
                let mut turn = 0;
                let expected = (WRITERS * APPENDS_PER_WRITER * 2) as u64;
                let deadline = Instant::now() + Duration::from_secs(120);
                while next <= start + expected {
                    assert!(Instant::now() < deadline, "reader stuck at {next}");
                    let page = clients[turn % INSTANCES]
                        .read_all(&ReadAllOptions {
                            from_position: Some(next),
                            limit: Some(37),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    turn += 1;
                    for event in &page.events {
                        assert_eq!(
                            event.position,
                            next,
                            "instance {} skipped or repeated a position",
                            (turn - 1) % INSTANCES
                        );
                        seen.push((event.position, event.stream.clone()));
                        next += 1;
                    }
                    if page.events.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                seen
            })
        };

        let mut acknowledged: Vec<(u64, String)> = Vec::new();
        for writer in writers {
            acknowledged.extend(writer.await.unwrap());
        }
        acknowledged.sort();
        let total = acknowledged.len() as u64;
        assert_eq!(total, (WRITERS * APPENDS_PER_WRITER * 2) as u64);
        let positions: Vec<u64> = acknowledged.iter().map(|(position, _)| *position).collect();
        assert_eq!(
            positions,
            (start + 1..=start + total).collect::<Vec<_>>(),
            "acknowledged positions are gapless"
        );

        let seen = tokio::time::timeout(Duration::from_secs(120), reader)
            .await
            .expect("the reader saw the whole log")
            .unwrap();
        assert_eq!(seen, acknowledged, "the reader saw what the writers stored");

        // The SSE subscriber saw the same, once each, in order.
        let by_position: HashMap<u64, String> = acknowledged.into_iter().collect();
        let mut next = start + 1;
        while next <= start + total {
            let event = tokio::time::timeout(Duration::from_secs(30), subscription.next())
                .await
                .unwrap_or_else(|_| panic!("the subscriber is stuck at {next}"))
                .expect("the subscription goes on")
                .unwrap();
            assert_eq!(event.position, next, "the subscriber skipped or repeated");
            assert_eq!(Some(&event.stream), by_position.get(&next));
            next += 1;
        }
    });
}
