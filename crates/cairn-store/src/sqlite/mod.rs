//! The embedded backend: one SQLite file in WAL mode, one writer thread doing group
//! commit ([`writer`]), a pool of read-only connections for reads.

mod import;
pub mod pool;
mod read;
mod schema;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{EventFilter, ExpectedVersion, Position, StreamName, Version};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use self::pool::{ReadPool, lock_dir};
use self::read::{EVENT_COLUMNS, event_from_row, filter_sql, head_position, stream_from_db};
pub use self::schema::SCHEMA_VERSION;
use self::schema::{internal, migrate, open_writer};
use self::writer::{Command, WriteWork, Writer};
use crate::{
    AppendOutcome, AppendRequest, Direction, EventStore, GroupRecord, GroupSettings, LiveBatch,
    LogSlice, ParkedEvent, StorageSize, StoreError, StreamInfo, StreamPage, StreamSlice,
};
use cairn_core::RecordedEvent;

/// The database file's name inside the data directory.
pub const DATABASE_FILE: &str = "events.db";
const LOCK_FILE: &str = "cairn.lock";
/// The `pool` label of the read pool's metrics.
const POOL_NAME: &str = "events";
/// Commits kept for live readers that fall behind; past it they read from the file.
const LIVE_FEED_CAPACITY: usize = 512;

/// How to open the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The folder holding `events.db`; created when missing.
    pub data_dir: PathBuf,
    /// Read connections in the pool.
    pub read_connections: usize,
    /// How long idempotency keys are kept.
    pub idempotency_window: Duration,
    /// The most append requests committed in one transaction.
    pub max_batch_requests: usize,
    /// Append requests that may wait for the writer before callers wait to enqueue.
    pub queue_depth: usize,
}

impl SqliteOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            read_connections: 4,
            idempotency_window: Duration::from_secs(24 * 3600),
            max_batch_requests: 512,
            queue_depth: 4096,
        }
    }
}

/// The embedded event store. Dropping it stops the writer after the batch in hand.
pub struct SqliteStore {
    commands: Option<mpsc::Sender<Command>>,
    reads: ReadPool,
    head: watch::Receiver<Position>,
    live: broadcast::Sender<LiveBatch>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
    // Held for the store's lifetime: a second Cairn on the same data directory is
    // refused instead of corrupting the order of positions.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating and migrating when needed) the store in `options.data_dir`.
    pub fn open(options: SqliteOptions) -> Result<Self, StoreError> {
        let lock = lock_dir(&options.data_dir, LOCK_FILE)?;
        let path = options.data_dir.join(DATABASE_FILE);
        let mut connection = open_writer(&path)?;
        migrate(&mut connection)?;
        connection.set_prepared_statement_cache_capacity(64);
        let head = head_position(&connection)?;
        let last_recorded_at: i64 = connection
            .query_row(
                "SELECT COALESCE(MAX(recorded_at), 0) FROM events",
                [],
                |row| row.get(0),
            )
            .map_err(internal)?;
        let reads = ReadPool::open(path.clone(), options.read_connections, POOL_NAME)?;

        let (head_tx, head_rx) = watch::channel(head);
        let (commands_tx, commands_rx) = mpsc::channel(options.queue_depth.max(1));
        let (live_tx, _) = broadcast::channel(LIVE_FEED_CAPACITY);
        let writer = Writer {
            connection,
            head,
            last_recorded_at,
            idempotency_window: options.idempotency_window,
            max_batch_requests: options.max_batch_requests,
            head_tx,
            live_tx: live_tx.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || writer.run(commands_rx))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        tracing::info!(path = %path.display(), head, "embedded store open");
        Ok(Self {
            commands: Some(commands_tx),
            reads,
            head: head_rx,
            live: live_tx,
            writer: Some(writer),
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the writer, inside its next group-commit transaction.
    async fn write(&self, work: WriteWork) -> Result<(), StoreError> {
        self.ask(|reply| Command::Write { work, reply }).await
    }

    /// Like [`write`](Self::write), for work that answers with a value.
    async fn write_with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection, i64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (value_tx, value_rx) = std::sync::mpsc::channel();
        self.write(Box::new(move |connection, now| {
            // The receiver waits below; a send can only fail if it is gone.
            let _ = value_tx.send(work(connection, now)?);
            Ok(())
        }))
        .await?;
        value_rx
            .try_recv()
            .map_err(|_| StoreError::Internal("a committed write gave no answer".into()))
    }

    /// Queues the command `make` builds around a reply channel and waits for the
    /// writer's answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let commands = self
            .commands
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop; wait for it so the database and
        // the lock are released when the store is gone.
        self.commands.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the writer thread panicked");
        }
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.ask(|reply| Command::Append { request, reply }).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Option<Version>,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice, StoreError> {
        let stream = stream.clone();
        self.reads
            .run(move |connection| {
                let transaction = connection.transaction().map_err(internal)?;
                let (stream_id, last_version) = stream_row(&transaction, &stream)?;
                let fetch = limit.saturating_add(1) as i64;
                let sql = match direction {
                    Direction::Forward => format!(
                        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.stream_id = ?1 AND e.version >= ?2 ORDER BY e.version LIMIT ?3"
                    ),
                    Direction::Backward => format!(
                        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.stream_id = ?1 AND e.version <= ?2 ORDER BY e.version DESC LIMIT ?3"
                    ),
                };
                let from = match direction {
                    Direction::Forward => from.unwrap_or(0),
                    Direction::Backward => from.unwrap_or(last_version).min(last_version),
                };
                let from = i64::try_from(from).unwrap_or(i64::MAX);
                let mut statement = transaction.prepare_cached(&sql).map_err(internal)?;
                let mut events = statement
                    .query_map(params![stream_id, from, fetch], |row| event_from_row(row, stream.clone()))
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                let next = if events.len() > limit {
                    events.pop().map(|extra| extra.version)
                } else {
                    None
                };
                Ok(StreamSlice { events, next })
            })
            .await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, StoreError> {
        let stream = stream.clone();
        self.reads
            .run(move |connection| {
                let row = connection
                    .prepare_cached(
                        "SELECT version, position, created_at, updated_at, deleted FROM streams WHERE name = ?1",
                    )
                    .map_err(internal)?
                    .query_row([stream.as_str()], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, bool>(4)?,
                        ))
                    })
                    .optional()
                    .map_err(internal)?;
                match row {
                    None => Err(StoreError::StreamNotFound(stream)),
                    Some((.., true)) => Err(StoreError::StreamDeleted(stream)),
                    Some((version, position, created_at, updated_at, false)) => Ok(StreamInfo {
                        stream,
                        version: version as Version,
                        position: position as Position,
                        created_at,
                        updated_at,
                    }),
                }
            })
            .await
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StreamPage, StoreError> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        self.reads
            .run(move |connection| {
                let mut params = vec![Value::Text(prefix.clone())];
                let mut sql = String::from(
                    "SELECT name FROM streams WHERE deleted = 0 AND name >= ?1 AND substr(name, 1, length(?1)) = ?1",
                );
                if let Some(upper) = prefix_upper_bound(&prefix) {
                    sql.push_str(" AND name < ?");
                    params.push(Value::Text(upper));
                }
                if let Some(after) = after {
                    sql.push_str(" AND name > ?");
                    params.push(Value::Text(after));
                }
                sql.push_str(" ORDER BY name LIMIT ?");
                params.push(Value::Integer(limit.saturating_add(1) as i64));
                let mut streams = connection
                    .prepare_cached(&sql)
                    .map_err(internal)?
                    .query_map(rusqlite::params_from_iter(params), |row| row.get::<_, String>(0))
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                let next = if streams.len() > limit {
                    streams.truncate(limit);
                    streams.last().cloned()
                } else {
                    None
                };
                Ok(StreamPage { streams, next })
            })
            .await
    }

    async fn read_all(
        &self,
        from: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice, StoreError> {
        let filter = filter.clone();
        self.reads
            .run(move |connection| {
                let transaction = connection.transaction().map_err(internal)?;
                let head = head_position(&transaction)?;
                let from = from.max(1);
                let mut params = vec![Value::Integer(i64::try_from(from).unwrap_or(i64::MAX))];
                let conditions = filter_sql(&filter, &mut params);
                params.push(Value::Integer(limit as i64));
                let sql = format!(
                    "SELECT {EVENT_COLUMNS}, s.name FROM events e JOIN streams s ON s.stream_id = e.stream_id
                     WHERE e.position >= ?{conditions} ORDER BY e.position LIMIT ?"
                );
                let events = transaction
                    .prepare_cached(&sql)
                    .map_err(internal)?
                    .query_map(rusqlite::params_from_iter(params), |row| {
                        let stream = stream_from_db(&row.get::<_, String>(8)?)?;
                        event_from_row(row, stream)
                    })
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                let next_from_position = match events.last() {
                    Some(last) if events.len() >= limit => last.position + 1,
                    _ => from.max(head + 1),
                };
                Ok(LogSlice {
                    events,
                    next_from_position,
                    head_position: head,
                })
            })
            .await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Version, StoreError> {
        self.ask(|reply| Command::Delete {
            stream: stream.clone(),
            expected,
            reply,
        })
        .await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        Ok(*self.head.borrow())
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    fn live_events(&self) -> broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }

    async fn storage_size(&self) -> Result<Option<StorageSize>, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || pool::storage_size(&path))
            .await
            .map_err(|e| StoreError::Internal(format!("size task failed: {e}")))?
            .map(Some)
            .map_err(|e| StoreError::Unavailable(format!("cannot measure the database: {e}")))
    }

    fn record_gauges(&self) {
        self.reads.record_gauges();
        // The writer sets it at each commit; this covers a log nothing was appended to
        // since the start.
        metrics::gauge!(crate::metrics::HEAD_POSITION).set(*self.head.borrow() as f64);
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.commands.as_ref().is_none_or(|c| c.is_closed()) {
            return Err(StoreError::Unavailable("the writer has stopped".into()));
        }
        self.reads
            .run(|connection| {
                let version: i64 = connection
                    .query_row("PRAGMA user_version", [], |row| row.get(0))
                    .map_err(internal)?;
                if version as usize == SCHEMA_VERSION {
                    Ok(())
                } else {
                    Err(StoreError::Unavailable(format!(
                        "schema version {version}, expected {SCHEMA_VERSION}"
                    )))
                }
            })
            .await
    }

    async fn import_events(
        &self,
        records: Vec<crate::ImportRecord>,
    ) -> Result<crate::ImportSummary, crate::ImportError> {
        let commands = self
            .commands
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Import { records, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?
    }

    async fn list_tombstones(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::Tombstone>, StoreError> {
        let after = after.map(str::to_owned);
        self.reads
            .run(move |connection| import::list_tombstones(connection, after.as_deref(), limit))
            .await
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        self.reads
            .run(move |connection| {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS}, s.name FROM events e JOIN streams s ON s.stream_id = e.stream_id
                     WHERE e.position = ?1"
                );
                connection
                    .prepare_cached(&sql)
                    .map_err(internal)?
                    .query_row([i64::try_from(position).unwrap_or(i64::MAX)], |row| {
                        let stream = stream_from_db(&row.get::<_, String>(8)?)?;
                        event_from_row(row, stream)
                    })
                    .optional()
                    .map_err(internal)
            })
            .await
    }

    async fn save_group(
        &self,
        name: &str,
        settings: &GroupSettings,
        checkpoint: Position,
    ) -> Result<GroupRecord, StoreError> {
        let (owned_name, stored) = (name.to_owned(), settings.to_stored());
        self.write(Box::new(move |connection, now| {
            connection
                .prepare_cached(
                    "INSERT INTO consumer_groups (name, settings, checkpoint, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT (name) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                )
                .and_then(|mut s| s.execute(params![owned_name, stored, checkpoint as i64, now]))
                .map(drop)
                .map_err(internal)
        }))
        .await?;
        self.load_groups()
            .await?
            .into_iter()
            .find(|record| record.name == name)
            .ok_or_else(|| StoreError::Internal(format!("group {name} vanished after saving")))
    }

    async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write_with(move |connection, _| {
            let removed = connection
                .execute("DELETE FROM consumer_groups WHERE name = ?1", [&name])
                .map_err(internal)?;
            connection
                .execute("DELETE FROM parked_events WHERE group_name = ?1", [&name])
                .map_err(internal)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn load_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.reads
            .run(|connection| {
                let rows = connection
                    .prepare_cached(
                        "SELECT name, settings, checkpoint, created_at, updated_at FROM consumer_groups ORDER BY name",
                    )
                    .map_err(internal)?
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, i64>(4)?,
                        ))
                    })
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                rows.into_iter()
                    .map(|(name, settings, checkpoint, created_at, updated_at)| {
                        Ok(GroupRecord {
                            name,
                            settings: GroupSettings::from_stored(&settings)?,
                            checkpoint: checkpoint as Position,
                            created_at,
                            updated_at,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn save_checkpoint(&self, name: &str, checkpoint: Position) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(Box::new(move |connection, now| {
            connection
                .prepare_cached(
                    "UPDATE consumer_groups SET checkpoint = MAX(checkpoint, ?2), updated_at = ?3 WHERE name = ?1",
                )
                .and_then(|mut s| s.execute(params![name, checkpoint as i64, now]))
                .map(drop)
                .map_err(internal)
        }))
        .await
    }

    async fn park_events(&self, name: &str, events: Vec<ParkedEvent>) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(Box::new(move |connection, _| {
            let mut statement = connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO parked_events (group_name, position, deliveries, reason, parked_at, replaying)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                )
                .map_err(internal)?;
            for event in events {
                statement
                    .execute(params![name, event.position as i64, event.deliveries, event.reason, event.parked_at])
                    .map_err(internal)?;
            }
            Ok(())
        }))
        .await
    }

    async fn replay_parked(
        &self,
        name: &str,
        positions: Option<Vec<Position>>,
    ) -> Result<Vec<Position>, StoreError> {
        let name = name.to_owned();
        self.write_with(move |connection, _| {
            let candidates: Vec<i64> = match positions {
                Some(positions) => positions.into_iter().map(|p| p as i64).collect(),
                None => connection
                    .prepare_cached(
                        "SELECT position FROM parked_events WHERE group_name = ?1 AND replaying = 0 ORDER BY position",
                    )
                    .and_then(|mut s| s.query_map([&name], |row| row.get(0))?.collect())
                    .map_err(internal)?,
            };
            let mut mark = connection
                .prepare_cached(
                    "UPDATE parked_events SET replaying = 1 WHERE group_name = ?1 AND position = ?2 AND replaying = 0",
                )
                .map_err(internal)?;
            let mut marked = Vec::new();
            for position in candidates {
                if mark.execute(params![name, position]).map_err(internal)? > 0 {
                    marked.push(position as Position);
                }
            }
            Ok(marked)
        })
        .await
    }

    async fn remove_parked(&self, name: &str, positions: Vec<Position>) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(Box::new(move |connection, _| {
            let mut statement = connection
                .prepare_cached("DELETE FROM parked_events WHERE group_name = ?1 AND position = ?2")
                .map_err(internal)?;
            for position in positions {
                statement
                    .execute(params![name, position as i64])
                    .map_err(internal)?;
            }
            Ok(())
        }))
        .await
    }

    async fn list_parked(
        &self,
        name: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let name = name.to_owned();
        self.reads
            .run(move |connection| {
                connection
                    .prepare_cached(
                        "SELECT position, deliveries, reason, parked_at, replaying FROM parked_events
                         WHERE group_name = ?1 AND position > ?2 ORDER BY position LIMIT ?3",
                    )
                    .map_err(internal)?
                    .query_map(
                        params![name, i64::try_from(after).unwrap_or(i64::MAX), i64::try_from(limit).unwrap_or(i64::MAX)],
                        |row| {
                            Ok(ParkedEvent {
                                position: row.get::<_, i64>(0)? as Position,
                                deliveries: row.get(1)?,
                                reason: row.get(2)?,
                                parked_at: row.get(3)?,
                                replaying: row.get(4)?,
                            })
                        },
                    )
                    .map_err(internal)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)
            })
            .await
    }
}

/// The stream's id and last version, or why it cannot be read.
fn stream_row(
    connection: &rusqlite::Connection,
    stream: &StreamName,
) -> Result<(i64, Version), StoreError> {
    let row = connection
        .prepare_cached("SELECT stream_id, version, deleted FROM streams WHERE name = ?1")
        .map_err(internal)?
        .query_row([stream.as_str()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, bool>(2)?,
            ))
        })
        .optional()
        .map_err(internal)?;
    match row {
        None => Err(StoreError::StreamNotFound(stream.clone())),
        Some((_, _, true)) => Err(StoreError::StreamDeleted(stream.clone())),
        Some((stream_id, version, false)) => Ok((stream_id, version as Version)),
    }
}

/// The smallest string greater than every string starting with `prefix`, when one is
/// easy to name (ASCII prefixes); the `substr` test keeps the result exact either way.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let last = *prefix.as_bytes().last()?;
    if !prefix.is_ascii() || last >= 0x7f {
        return None;
    }
    let mut upper = prefix[..prefix.len() - 1].to_owned();
    upper.push(char::from(last + 1));
    Some(upper)
}
