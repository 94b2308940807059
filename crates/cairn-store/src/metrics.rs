//! Every metric the storage layer records, declared in one place.

/// Events appended (committed), counter.
pub const APPENDED_EVENTS: &str = "cairn_appended_events_total";
/// Append requests per group-commit transaction, histogram.
pub const GROUP_COMMIT_BATCH_SIZE: &str = "cairn_group_commit_batch_size";
/// Time to commit (and fsync) one group-commit transaction, histogram in seconds.
pub const COMMIT_DURATION_SECONDS: &str = "cairn_commit_duration_seconds";
/// Time spent in each phase of a PostgreSQL group commit, histogram in seconds by
/// `phase`: `lock_and_read` (the first round trip: `BEGIN`, the head lock, which waits
/// for other instances' batches, and the lookups), `decide` (checking the requests in
/// memory) and `write_and_commit` (the second round trip, `COMMIT` and its WAL flush
/// included). The head lock is held from the first phase's lock to the end of the last.
/// A batch committed on the cached path has no `lock_and_read`: it is decided from
/// memory and its one round trip (`write_and_commit`) takes the lock.
pub const COMMIT_PHASE_SECONDS: &str = "cairn_commit_phase_duration_seconds";
/// PostgreSQL group commits by `path`: `looked_up` (lock, look up, then write),
/// `cached` (decided from what the writer remembers, one round trip) or `overlapped`
/// (decided from memory, written while the batch before it committed), counter.
pub const GROUP_COMMITS: &str = "cairn_group_commits_total";
/// Batches that tried the cached path and were looked up instead, by `reason`:
/// `written_elsewhere` (another transaction wrote since this writer's last commit) or
/// `assumed_absent` (a stream, idempotency key or event id the batch took for new was
/// stored already) or `refusal` (a request would be refused, which only a lookup can
/// confirm; nothing was sent), counter.
pub const CACHED_COMMIT_MISSES: &str = "cairn_cached_commit_misses_total";
/// The last committed position, gauge.
pub const HEAD_POSITION: &str = "cairn_head_position";

/// Histogram buckets suited to each histogram above, for the exporter.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
pub const COMMIT_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Log positions between a consumer group's checkpoint and the head, gauge by group.
pub const GROUP_LAG: &str = "cairn_group_lag";
/// Events delivered by a consumer group (first deliveries and redeliveries), by group.
pub const GROUP_DELIVERIES: &str = "cairn_group_deliveries_total";
/// Redeliveries (after an ack timeout or a nack), by group.
pub const GROUP_REDELIVERIES: &str = "cairn_group_redeliveries_total";
/// Events parked after their last delivery, by group.
pub const GROUP_PARKED: &str = "cairn_group_parked_total";

/// Pooled connections by pool and state (`in_use`, `idle`), gauge. The pools are the
/// SQLite read pools (`events`, and `readmodels` for named queries) and PostgreSQL's
/// (`primary`, `writer`, `replica:<host:port/db>`).
pub const POOL_CONNECTIONS: &str = "cairn_pool_connections";
/// Callers waiting for a pooled connection, gauge by pool.
pub const POOL_WAITING: &str = "cairn_pool_waiting";
/// Time from asking a pool for a connection to holding one, histogram in seconds by
/// pool (for the SQLite pools this includes starting the blocking thread).
pub const POOL_WAIT_SECONDS: &str = "cairn_pool_wait_seconds";
/// Buckets of [`POOL_WAIT_SECONDS`]: an idle pool answers in microseconds, a starved
/// one in up to the pool's wait timeout (seconds).
pub const POOL_WAIT_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Bytes a database takes on disk, gauge by `database` (`events`, `readmodels`): a
/// SQLite file with its write-ahead log, or PostgreSQL's `pg_database_size`.
pub const DATABASE_SIZE_BYTES: &str = "cairn_database_size_bytes";
/// Bytes of a SQLite database's write-ahead log (part of [`DATABASE_SIZE_BYTES`]),
/// gauge by `database`; a WAL that keeps growing means checkpoints cannot finish.
pub const DATABASE_WAL_BYTES: &str = "cairn_database_wal_bytes";
/// Log positions a read replica has not replayed yet (the head this instance knows
/// minus the replica's), gauge by replica.
pub const REPLICA_LAG_POSITIONS: &str = "cairn_replica_lag_positions";
/// 1 while a read replica answers its probes and is in rotation, else 0; by replica.
pub const REPLICA_UP: &str = "cairn_replica_up";
/// Reads served, by pool (`primary` or the replica's), counter.
pub const STORE_READS: &str = "cairn_store_reads_total";

/// Sets the size gauges of `database` (`events`, `readmodels`).
pub fn record_database_size(database: &'static str, size: crate::StorageSize) {
    metrics::gauge!(DATABASE_SIZE_BYTES, "database" => database).set(size.total_bytes as f64);
    if let Some(wal) = size.wal_bytes {
        metrics::gauge!(DATABASE_WAL_BYTES, "database" => database).set(wal as f64);
    }
}
