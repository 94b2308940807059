//! Crash recovery: SIGKILL the real binary in the middle of concurrent appends, start
//! it again on the same data directory, and check that every acknowledged event is
//! there, once, where it was acknowledged, in a gapless log of contiguous streams.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{Client, EventInputExt, ExpectedVersion, event};
use serde_json::json;
use uuid::Uuid;

use crate::support::{Server, read_whole_log};

const CLIENTS: usize = 16;
const SHARED_STREAM: &str = "crash-shared";
/// Acknowledged events to wait for before the kill (or the deadline below).
const ACKED_BEFORE_KILL: usize = 3000;

/// An acknowledged event: where the server said it landed.
#[derive(Debug, Clone)]
struct Acked {
    id: Uuid,
    stream: String,
    version: u64,
    position: u64,
}

#[test]
fn every_acknowledged_event_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = Server::start(&data_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let client = Client::builder(&server.url)
        .retries(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..CLIENTS)
        .map(|writer| {
            runtime.spawn(write_until_failure(
                client.clone(),
                writer,
                acked_count.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Kill once enough appends are acknowledged, while the writers keep going.
    let deadline = Instant::now() + Duration::from_secs(8);
    while acked_count.load(Ordering::SeqCst) < ACKED_BEFORE_KILL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<Acked> = runtime.block_on(async {
        let mut all = Vec::new();
        for writer in writers {
            all.extend(writer.await.unwrap());
        }
        all
    });
    assert!(
        acked.len() >= 100,
        "too few appends before the kill: {}",
        acked.len()
    );

    let server = Server::start(&data_dir);
    let client = Client::new(&server.url).unwrap();
    let log = runtime.block_on(read_whole_log(&client));

    // Positions are gapless from 1 to the head.
    for (index, event) in log.iter().enumerate() {
        assert_eq!(
            event.position,
            index as u64 + 1,
            "gap or disorder in the log"
        );
    }
    // Ids are unique.
    let mut ids = HashSet::new();
    for event in &log {
        assert!(ids.insert(event.id), "event {} recorded twice", event.id);
    }
    // Every acknowledged event is where it was acknowledged.
    for ack in &acked {
        let Some(event) = log.get(ack.position as usize - 1) else {
            panic!(
                "acknowledged event {ack:?} is missing: the log ends at {}",
                log.len()
            );
        };
        assert_eq!(
            (event.id, event.stream.as_str(), event.version),
            (ack.id, ack.stream.as_str(), ack.version),
            "acknowledged event {ack:?} is not at its position"
        );
    }
    // Every stream's versions are contiguous from 0, in log order.
    let mut next_version: HashMap<&str, u64> = HashMap::new();
    for event in &log {
        let expected = next_version.entry(event.stream.as_str()).or_insert(0);
        assert_eq!(
            event.version, *expected,
            "stream {} skips a version",
            event.stream
        );
        *expected += 1;
    }
    // The streams' heads agree with the log.
    runtime.block_on(async {
        for (stream, next) in &next_version {
            let info = client.stream_info(stream).await.unwrap();
            assert_eq!(info.version + 1, *next, "head of {stream}");
        }
    });
    let per_stream: BTreeMap<_, _> = next_version.iter().map(|(s, n)| (*s, *n)).collect();
    assert!(per_stream.contains_key(SHARED_STREAM), "{per_stream:?}");
    eprintln!(
        "crash test: {} events acknowledged before the kill, {} in the log after restart, {} streams",
        acked.len(),
        log.len(),
        per_stream.len()
    );
    drop(server);
}

/// Appends to the writer's own stream (expecting its exact version) and, every other
/// time, to the shared stream (expecting any), until a request fails or `stop`.
async fn write_until_failure(
    client: Client,
    writer: usize,
    acked_count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<Acked> {
    let own = format!("crash-w{writer}");
    let mut acked = Vec::new();
    let mut last_version: Option<u64> = None;
    for round in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let shared = round % 2 == 1;
        let (stream, expected, count) = if shared {
            (SHARED_STREAM, ExpectedVersion::Any, 1)
        } else {
            let expected = last_version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            (own.as_str(), expected, 1 + (round % 3) as usize)
        };
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
        let events = ids
            .iter()
            .map(|id| event("Written", json!({"writer": writer, "round": round})).with_id(*id))
            .collect();
        let Ok(response) = client.append(stream, expected, events).await else {
            break;
        };
        assert_eq!(
            response.last_version - response.first_version + 1,
            count as u64
        );
        assert_eq!(
            response.last_position - response.first_position + 1,
            count as u64
        );
        for (offset, id) in ids.into_iter().enumerate() {
            acked.push(Acked {
                id,
                stream: stream.to_owned(),
                version: response.first_version + offset as u64,
                position: response.first_position + offset as u64,
            });
        }
        if !shared {
            last_version = Some(response.last_version);
        }
        acked_count.fetch_add(count, Ordering::SeqCst);
    }
    acked
}
