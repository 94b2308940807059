//! The hardware ceiling for the embedded store: the same event rows Cairn writes,
//! inserted straight into SQLite with the same schema and durability settings (WAL,
//! `synchronous = FULL`, one fsync per commit), with no server in between.
//!
//! ```text
//! cargo run --release -p cairn-store --example sqlite_ceiling -- [seconds] [payload_bytes]
//! ```
//! Prints one JSON line per transaction size (1, 100, 1000 rows per transaction).

use std::time::{Duration, Instant};

use cairn_store::sqlite::{DATABASE_FILE, SqliteOptions, SqliteStore};
use rusqlite::{Connection, params};
use uuid::Uuid;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(Ok(5.0), |s| s.parse())?;
    let payload_bytes: usize = args.next().map_or(Ok(300), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    // Let the store create and migrate the schema, then write to it directly.
    drop(SqliteStore::open(SqliteOptions::new(dir.path()))?);
    let connection = Connection::open(dir.path().join(DATABASE_FILE))?;
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -32000;",
    )?;
    connection.execute(
        "INSERT INTO streams (name, version, position, created_at, updated_at) VALUES ('ceiling', 0, 0, 0, 0)",
        [],
    )?;
    let data = format!(
        "{{\"payload\":\"{}\"}}",
        "x".repeat(payload_bytes.saturating_sub(14))
    );
    let mut position: i64 = 0;
    for rows_per_transaction in [1usize, 100, 1000] {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let mut rows = 0u64;
        while Instant::now() < deadline {
            connection.execute_batch("BEGIN IMMEDIATE")?;
            {
                let mut insert = connection.prepare_cached(
                    "INSERT INTO events (position, id, stream_id, version, type, category, data, metadata, tags, recorded_at)
                     VALUES (?1, ?2, 1, ?1, 'Bench', 'ceiling', ?3, '{}', NULL, 0)",
                )?;
                for _ in 0..rows_per_transaction {
                    position += 1;
                    insert.execute(params![position, Uuid::now_v7().as_bytes(), data])?;
                }
            }
            connection.execute_batch("COMMIT")?;
            rows += rows_per_transaction as u64;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{{\"rows_per_transaction\":{rows_per_transaction},\"rows\":{rows},\"seconds\":{elapsed:.2},\"rows_per_second\":{:.0},\"transactions_per_second\":{:.0}}}",
            rows as f64 / elapsed,
            rows as f64 / elapsed / rows_per_transaction as f64
        );
    }
    Ok(())
}
