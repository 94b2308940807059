//! How fast the read side is, in process: appends N events (default 100,000), starts
//! the read side and times one projection with one upsert per event until it reflects
//! the head; then times point queries over 5,000 keys, first uncached, then cached.
//! `cargo run --release -p cairn-projection --example catch_up -- 200000`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{ExpectedVersion, NewEvent, StreamName};
use cairn_projection::{ProjectionConfig, QueryConfig, ReadSide, ReadSideOptions};
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use cairn_store::{AppendRequest, SharedStore};
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store: SharedStore =
        Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).expect("open store"));
    let started = Instant::now();
    for chunk in 0..events.div_ceil(1000) {
        let batch: Vec<NewEvent> = (0..1000.min(events - chunk * 1000))
            .map(|i| NewEvent {
                id: Uuid::now_v7(),
                event_type: "Counted".into(),
                data: format!(
                    r#"{{"key":"k{}","amount":{i},"note":"some text"}}"#,
                    (chunk * 1000 + i) % 5000
                ),
                metadata: "{}".into(),
                tags: Vec::new(),
            })
            .collect();
        let stream = StreamName::parse(&format!("counter-{}", chunk % 50)).unwrap();
        store
            .append(AppendRequest::single(stream, ExpectedVersion::Any, batch))
            .await
            .expect("append");
    }
    let head = store.head_position().await.unwrap();
    println!("appended {head} events in {:?}", started.elapsed());

    let projection: ProjectionConfig = toml::from_str(
        r#"
name = "counts"
setup = ["CREATE TABLE counts (key TEXT PRIMARY KEY, n INTEGER NOT NULL, total INTEGER NOT NULL)"]
[on]
Counted = ["INSERT INTO counts VALUES (:data.key, 1, :data.amount) ON CONFLICT (key) DO UPDATE SET n = n + 1, total = total + excluded.total"]
"#,
    )
    .expect("projection");
    let query: QueryConfig = toml::from_str(
        r#"
name = "count"
sql = "SELECT n, total FROM counts WHERE key = :key"
params = { key = "text" }
"#,
    )
    .expect("query");
    let started = Instant::now();
    let read_side = ReadSide::start(
        store.clone(),
        ReadSideOptions::new(dir.path()),
        vec![projection],
        vec![query],
    )
    .await
    .expect("start");
    let status = read_side
        .wait_for_projection("counts", head, Duration::from_secs(600))
        .await
        .expect("catch up");
    let elapsed = started.elapsed();
    println!(
        "projected {} events in {elapsed:?}: {:.0} events/s",
        status.position,
        status.position as f64 / elapsed.as_secs_f64()
    );

    for pass in ["uncached", "cached"] {
        let started = Instant::now();
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let read_side = Arc::clone(&read_side);
                tokio::spawn(async move {
                    let mut cached = 0;
                    for key in (worker..5000).step_by(8) {
                        let params = [("key".to_owned(), format!("k{key}"))].into();
                        let result = read_side
                            .query("count", &params, None, Duration::ZERO)
                            .await
                            .expect("query");
                        assert_eq!(result.rows.len(), 1);
                        cached += usize::from(result.cached);
                    }
                    cached
                })
            })
            .collect();
        let mut cached = 0;
        for worker in workers {
            cached += worker.await.expect("worker");
        }
        let elapsed = started.elapsed();
        println!(
            "{pass}: 5000 point queries ({cached} from the cache) in {elapsed:?}: {:.0} queries/s",
            5000.0 / elapsed.as_secs_f64()
        );
    }
    read_side.shutdown().await;
}
