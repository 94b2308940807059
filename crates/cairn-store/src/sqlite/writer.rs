//! The single writer thread and its group commit.
//!
//! Append requests queue on a channel. The writer takes every request waiting (up to a
//! bound), opens one transaction, applies each request inside its own savepoint (a
//! refused request rolls back to its savepoint and touches nothing else), commits once
//! (one fsync for the whole group), then answers every request. Positions are handed
//! out here, from the in-memory head, so they are gapless and in commit order.

use std::time::{Duration, Instant};

use cairn_core::{
    AppendCondition, ExpectedVersion, Position, StreamName, Version, category_of, now_micros,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::sync::Arc;

use cairn_core::RecordedEvent;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use uuid::Uuid;

use super::read::filter_sql;
use super::schema::internal;
use crate::metrics as m;
use crate::{
    AppendOutcome, AppendRequest, AppendResult, IdempotencyClaim, ImportError, ImportRecord,
    ImportSummary, LiveBatch, StoreError, StreamAppendResult,
};

pub(crate) enum Command {
    Append {
        request: AppendRequest,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    Delete {
        stream: StreamName,
        expected: ExpectedVersion,
        reply: oneshot::Sender<Result<Version, StoreError>>,
    },
    /// Events recorded elsewhere (`import_events`), in a savepoint of their own.
    Import {
        records: Vec<ImportRecord>,
        reply: oneshot::Sender<Result<ImportSummary, ImportError>>,
    },
    /// Any other write (consumer-group state), committed with the batch.
    Write {
        work: WriteWork,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A write run by the writer inside the batch's transaction, in its own savepoint;
/// it gets the batch's timestamp.
pub(crate) type WriteWork = Box<dyn FnOnce(&Connection, i64) -> Result<(), StoreError> + Send>;

enum Reply {
    Append(
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
        Result<AppendOutcome, StoreError>,
    ),
    Delete(
        oneshot::Sender<Result<Version, StoreError>>,
        Result<Version, StoreError>,
    ),
    Write(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Import(
        oneshot::Sender<Result<ImportSummary, ImportError>>,
        Result<ImportSummary, ImportError>,
    ),
}

impl Reply {
    fn fail_if_ok(self, error: &StoreError) -> Self {
        match self {
            Reply::Append(reply, Ok(_)) => Reply::Append(reply, Err(error.clone())),
            Reply::Delete(reply, Ok(_)) => Reply::Delete(reply, Err(error.clone())),
            Reply::Write(reply, Ok(())) => Reply::Write(reply, Err(error.clone())),
            Reply::Import(reply, Ok(_)) => {
                Reply::Import(reply, Err(ImportError::Store(error.clone())))
            }
            other => other,
        }
    }

    fn send(self) {
        // A requester that went away no longer needs its answer; the outcome stands.
        match self {
            Reply::Append(reply, result) => drop(reply.send(result)),
            Reply::Delete(reply, result) => drop(reply.send(result)),
            Reply::Write(reply, result) => drop(reply.send(result)),
            Reply::Import(reply, result) => drop(reply.send(result)),
        }
    }
}

pub(crate) struct Writer {
    pub(crate) connection: Connection,
    pub(crate) head: Position,
    pub(crate) last_recorded_at: i64,
    pub(crate) idempotency_window: Duration,
    pub(crate) max_batch_requests: usize,
    pub(crate) head_tx: watch::Sender<Position>,
    pub(crate) live_tx: broadcast::Sender<LiveBatch>,
}

/// The most events one commit publishes to live readers; a larger commit is left out
/// and read from the file (one query for many events). With the feed's capacity this
/// bounds the memory it can hold.
const LIVE_BATCH_MAX: usize = 256;

/// The events of an append, as recorded, for live readers.
fn collect_live(
    out: &mut Vec<RecordedEvent>,
    request: &AppendRequest,
    result: &AppendResult,
    now: i64,
) {
    let mut next_version: Vec<Version> = result.streams.iter().map(|s| s.first_version).collect();
    for (offset, (target, event)) in request.events.iter().enumerate() {
        let Some(version) = next_version.get_mut(*target) else {
            return;
        };
        out.push(RecordedEvent {
            id: event.id,
            stream: request.targets[*target].stream.clone(),
            event_type: event.event_type.clone(),
            version: *version,
            position: result.first_position + offset as Position,
            data: event.data.clone(),
            metadata: event.metadata.clone(),
            tags: event.tags.clone(),
            recorded_at: now,
        });
        *version += 1;
    }
}

/// How often expired idempotency keys are swept away.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl Writer {
    pub(crate) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut last_sweep = Instant::now();
        let max = self.max_batch_requests.max(1);
        while let Some(first) = commands.blocking_recv() {
            let mut batch = Vec::with_capacity(max.min(64));
            batch.push(first);
            while batch.len() < max {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                self.sweep_idempotency_keys();
            }
        }
        tracing::debug!("writer stopped: no more senders");
    }

    /// Microseconds for this batch's `recorded_at`: never earlier than the previous
    /// batch's, even if the clock steps back.
    fn next_timestamp(&mut self) -> i64 {
        self.last_recorded_at = now_micros().max(self.last_recorded_at);
        self.last_recorded_at
    }

    fn window_start(&self, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(self.idempotency_window.as_micros()).unwrap_or(i64::MAX))
    }

    fn commit_batch(&mut self, batch: Vec<Command>) {
        let started = Instant::now();
        let requests = batch.len();
        let head_before = self.head;
        let now = self.next_timestamp();
        let window_start = self.window_start(now);
        let mut replies = Vec::with_capacity(requests);
        let mut head = self.head;
        // Committed events for live readers, only when someone listens and the batch
        // is small enough to keep in memory; otherwise readers catch up from the file.
        let mut live: Option<Vec<RecordedEvent>> =
            (self.live_tx.receiver_count() > 0).then(Vec::new);
        // Imported events are not appends (nor in the live feed: tails read them from
        // the file); the latest imported `recorded_at` bounds later batches' times.
        let mut imported: Position = 0;
        let mut imported_recorded_at: Option<i64> = None;

        let outcome = (|| -> rusqlite::Result<()> {
            let mut transaction = self
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for command in batch {
                let head_at_start = head;
                let savepoint = transaction.savepoint()?;
                let (reply, ok) = match command {
                    Command::Append { request, reply } => {
                        let result = append(&savepoint, &mut head, now, window_start, &request);
                        let ok = result.is_ok();
                        if let (Ok(AppendOutcome::Committed(result)), Some(events)) =
                            (&result, &mut live)
                        {
                            let written = head - head_at_start;
                            if written == 0 {
                                // Re-sent events: nothing new to tell.
                            } else if events.len() + request.events.len() > LIVE_BATCH_MAX {
                                live = None;
                            } else {
                                collect_live(events, &request, result, now);
                            }
                        }
                        (Reply::Append(reply, result), ok)
                    }
                    Command::Delete {
                        stream,
                        expected,
                        reply,
                    } => {
                        let result = delete(&savepoint, &stream, expected);
                        let ok = result.is_ok();
                        (Reply::Delete(reply, result), ok)
                    }
                    Command::Import { records, reply } => {
                        let result = super::import::import(&savepoint, &mut head, &records);
                        let ok = result.is_ok();
                        let result = result.map(|(summary, last_recorded_at)| {
                            imported += head - head_at_start;
                            imported_recorded_at = imported_recorded_at.max(Some(last_recorded_at));
                            live = None;
                            summary
                        });
                        (Reply::Import(reply, result), ok)
                    }
                    Command::Write { work, reply } => {
                        let result = work(&savepoint, now);
                        let ok = result.is_ok();
                        (Reply::Write(reply, result), ok)
                    }
                };
                if ok {
                    savepoint.commit()?;
                } else {
                    head = head_at_start;
                    drop(savepoint); // rolls back to the savepoint
                }
                replies.push(reply);
            }
            transaction.commit()
        })();

        match outcome {
            Ok(()) => {
                self.head = head;
                if let Some(recorded_at) = imported_recorded_at {
                    self.last_recorded_at = self.last_recorded_at.max(recorded_at);
                }
                let appended = head - head_before - imported;
                // Publish the head before acknowledging, so that anyone told "appended"
                // also finds the head at or past their events.
                if head > head_before {
                    if let Some(events) = live.filter(|events| !events.is_empty()) {
                        // No receiver left is fine: nobody is waiting.
                        let _ = self.live_tx.send(Arc::from(events));
                    }
                    self.head_tx.send_replace(head);
                    metrics::counter!(m::APPENDED_EVENTS).increment(appended);
                    metrics::gauge!(m::HEAD_POSITION).set(head as f64);
                }
                for reply in replies {
                    reply.send();
                }
            }
            Err(error) => {
                tracing::error!(%error, requests, "group commit failed; the batch is answered 503");
                let failure = StoreError::Unavailable(format!(
                    "the commit failed and was rolled back: {error}"
                ));
                self.head = head_before;
                for reply in replies {
                    reply.fail_if_ok(&failure).send();
                }
            }
        }
        metrics::histogram!(m::GROUP_COMMIT_BATCH_SIZE).record(requests as f64);
        metrics::histogram!(m::COMMIT_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
    }

    fn sweep_idempotency_keys(&mut self) {
        let window_start = self.window_start(now_micros());
        match self.connection.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?1",
            [window_start],
        ) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "expired idempotency keys removed"),
            Err(error) => tracing::warn!(%error, "could not remove expired idempotency keys"),
        }
    }
}

/// What the writer knows of a stream while appending to it.
struct StreamRow {
    stream_id: i64,
    version: Version,
    deleted: bool,
}

fn load_stream(
    connection: &Connection,
    stream: &StreamName,
) -> Result<Option<StreamRow>, StoreError> {
    connection
        .prepare_cached("SELECT stream_id, version, deleted FROM streams WHERE name = ?1")
        .map_err(internal)?
        .query_row([stream.as_str()], |row| {
            Ok(StreamRow {
                stream_id: row.get(0)?,
                version: row.get::<_, i64>(1)? as Version,
                deleted: row.get(2)?,
            })
        })
        .optional()
        .map_err(internal)
}

fn append(
    connection: &Connection,
    head: &mut Position,
    now: i64,
    window_start: i64,
    request: &AppendRequest,
) -> Result<AppendOutcome, StoreError> {
    if request.events.is_empty() || request.targets.is_empty() {
        return Err(StoreError::Internal(
            "an append needs at least one event".into(),
        ));
    }
    if let Some(claim) = &request.idempotency
        && let Some(replayed) = replay_idempotent(connection, claim, window_start)?
    {
        return Ok(replayed);
    }
    if let Some(result) = find_resent_events(connection, request)? {
        if let Some(claim) = &request.idempotency {
            remember_key(connection, claim, &result, now)?;
        }
        return Ok(AppendOutcome::Committed(result));
    }

    let mut rows = Vec::with_capacity(request.targets.len());
    for target in &request.targets {
        let row = load_stream(connection, &target.stream)?;
        if row.as_ref().is_some_and(|row| row.deleted) {
            return Err(StoreError::StreamDeleted(target.stream.clone()));
        }
        let actual = row.as_ref().map(|row| row.version);
        target
            .expected
            .check(actual)
            .map_err(|wrong| StoreError::WrongExpectedVersion {
                stream: target.stream.clone(),
                expected: wrong.expected,
                actual: wrong.actual,
            })?;
        rows.push(row);
    }
    if let Some(condition) = &request.condition {
        check_condition(connection, condition)?;
    }

    // Where every event lands: positions from the head, versions per stream.
    let first_position = *head + 1;
    let mut results: Vec<Option<StreamAppendResult>> = vec![None; request.targets.len()];
    let mut next_version: Vec<Version> = rows
        .iter()
        .map(|row| row.as_ref().map_or(0, |row| row.version + 1))
        .collect();
    let mut placed = Vec::with_capacity(request.events.len());
    for (offset, (target, _)) in request.events.iter().enumerate() {
        let target = *target;
        let stream = &request
            .targets
            .get(target)
            .ok_or_else(|| StoreError::Internal(format!("event names target {target}")))?
            .stream;
        let position = first_position + offset as Position;
        let version = next_version[target];
        next_version[target] += 1;
        let entry = results[target].get_or_insert_with(|| StreamAppendResult {
            stream: stream.clone(),
            first_version: version,
            last_version: version,
            first_position: position,
            last_position: position,
        });
        entry.last_version = version;
        entry.last_position = position;
        placed.push((position, version));
    }
    let last_position = first_position + request.events.len() as Position - 1;

    // Stream rows first (new streams get their id), then the events.
    let mut stream_ids = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let Some(result) = &results[index] else {
            return Err(StoreError::Internal(format!(
                "stream {} is a target without events",
                request.targets[index].stream
            )));
        };
        let stream_id = match row {
            Some(row) => {
                connection
                    .prepare_cached(
                        "UPDATE streams SET version = ?2, position = ?3, updated_at = ?4 WHERE stream_id = ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            row.stream_id,
                            result.last_version as i64,
                            result.last_position as i64,
                            now
                        ])
                    })
                    .map_err(internal)?;
                row.stream_id
            }
            None => connection
                .prepare_cached(
                    "INSERT INTO streams (name, version, position, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?4) RETURNING stream_id",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            result.stream.as_str(),
                            result.last_version as i64,
                            result.last_position as i64,
                            now
                        ],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .map_err(internal)?,
        };
        stream_ids.push(stream_id);
    }

    {
        let mut insert_event = connection
            .prepare_cached(
                "INSERT INTO events (position, id, stream_id, version, type, category, data, metadata, tags, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(internal)?;
        for ((target, event), (position, version)) in request.events.iter().zip(&placed) {
            let stream = &request.targets[*target].stream;
            let tags = if event.tags.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&event.tags)
                        .map_err(|e| StoreError::Internal(e.to_string()))?,
                )
            };
            let inserted = insert_event.execute(params![
                *position as i64,
                event.id.as_bytes(),
                stream_ids[*target],
                *version as i64,
                event.event_type,
                category_of(stream.as_str()),
                event.data,
                event.metadata,
                tags,
                now,
            ]);
            if let Err(error) = inserted {
                return Err(if is_unique_violation(&error, "events.id") {
                    duplicate_of(connection, event.id)?
                } else {
                    internal(error)
                });
            }
            if !event.tags.is_empty() {
                let mut insert_tag = connection
                    .prepare_cached(
                        "INSERT OR IGNORE INTO event_tags (tag, position) VALUES (?1, ?2)",
                    )
                    .map_err(internal)?;
                for tag in &event.tags {
                    insert_tag
                        .execute(params![tag, *position as i64])
                        .map_err(internal)?;
                }
            }
        }
    }

    *head = last_position;
    let result = AppendResult {
        streams: results.into_iter().flatten().collect(),
        first_position,
        last_position,
    };
    if let Some(claim) = &request.idempotency {
        remember_key(connection, claim, &result, now)?;
    }
    Ok(AppendOutcome::Committed(result))
}

fn replay_idempotent(
    connection: &Connection,
    claim: &IdempotencyClaim,
    window_start: i64,
) -> Result<Option<AppendOutcome>, StoreError> {
    let stored = connection
        .prepare_cached(
            "SELECT fingerprint, response FROM idempotency_keys WHERE key = ?1 AND created_at >= ?2",
        )
        .map_err(internal)?
        .query_row(params![claim.key, window_start], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?))
        })
        .optional()
        .map_err(internal)?;
    match stored {
        None => Ok(None),
        Some((fingerprint, body)) if fingerprint == claim.fingerprint => {
            Ok(Some(AppendOutcome::Replayed { body }))
        }
        Some(_) => Err(StoreError::IdempotencyKeyReused),
    }
}

fn remember_key(
    connection: &Connection,
    claim: &IdempotencyClaim,
    result: &AppendResult,
    now: i64,
) -> Result<(), StoreError> {
    let body = (claim.render)(result);
    connection
        .prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, response, created_at)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![claim.key, &claim.fingerprint[..], body, now]))
        .map(drop)
        .map_err(internal)
}

/// Where an existing event id stands.
struct ExistingEvent {
    stream: String,
    version: Version,
    position: Position,
}

fn existing_event(connection: &Connection, id: Uuid) -> Result<Option<ExistingEvent>, StoreError> {
    // Two plain lookups rather than a join: the joined form was re-prepared by SQLite
    // on every run (measured), and this runs once per append.
    let found = connection
        .prepare_cached("SELECT stream_id, version, position FROM events WHERE id = ?1")
        .map_err(internal)?
        .query_row([id.as_bytes()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)? as Version,
                row.get::<_, i64>(2)? as Position,
            ))
        })
        .optional()
        .map_err(internal)?;
    let Some((stream_id, version, position)) = found else {
        return Ok(None);
    };
    let stream = connection
        .prepare_cached("SELECT name FROM streams WHERE stream_id = ?1")
        .map_err(internal)?
        .query_row([stream_id], |row| row.get::<_, String>(0))
        .map_err(internal)?;
    Ok(Some(ExistingEvent {
        stream,
        version,
        position,
    }))
}

/// A request whose events all stand already, in their streams, in the same order, is
/// an idempotent success with the original result. One whose first id is unknown is a
/// new append (a later id that collides fails the insert). Anything else is a
/// duplicate.
fn find_resent_events(
    connection: &Connection,
    request: &AppendRequest,
) -> Result<Option<AppendResult>, StoreError> {
    let Some((_, first)) = request.events.first() else {
        return Ok(None);
    };
    if existing_event(connection, first.id)?.is_none() {
        return Ok(None);
    }
    let mut results: Vec<Option<StreamAppendResult>> = vec![None; request.targets.len()];
    let mut previous_position = 0;
    for (target, event) in &request.events {
        let stream = &request.targets[*target].stream;
        let Some(existing) = existing_event(connection, event.id)? else {
            return Err(duplicate_of(connection, first.id)?);
        };
        let in_order = existing.stream == stream.as_str()
            && existing.position > previous_position
            && results[*target]
                .as_ref()
                .is_none_or(|r| existing.version == r.last_version + 1);
        if !in_order {
            return Err(StoreError::DuplicateEventId {
                id: event.id,
                existing_stream: existing.stream,
            });
        }
        previous_position = existing.position;
        let entry = results[*target].get_or_insert_with(|| StreamAppendResult {
            stream: stream.clone(),
            first_version: existing.version,
            last_version: existing.version,
            first_position: existing.position,
            last_position: existing.position,
        });
        entry.last_version = existing.version;
        entry.last_position = existing.position;
    }
    let streams: Vec<StreamAppendResult> = results.into_iter().flatten().collect();
    let first_position = streams.iter().map(|s| s.first_position).min().unwrap_or(0);
    let last_position = streams.iter().map(|s| s.last_position).max().unwrap_or(0);
    Ok(Some(AppendResult {
        streams,
        first_position,
        last_position,
    }))
}

fn duplicate_of(connection: &Connection, id: Uuid) -> Result<StoreError, StoreError> {
    let existing_stream = existing_event(connection, id)?
        .map(|existing| existing.stream)
        .unwrap_or_default();
    Ok(StoreError::DuplicateEventId {
        id,
        existing_stream,
    })
}

fn is_unique_violation(error: &rusqlite::Error, column: &str) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, Some(message))
            if failure.code == rusqlite::ErrorCode::ConstraintViolation && message.contains(column)
    )
}

fn check_condition(connection: &Connection, condition: &AppendCondition) -> Result<(), StoreError> {
    // Positions are below i64::MAX: nothing is after a larger `after`.
    let after = i64::try_from(condition.after).unwrap_or(i64::MAX);
    let mut params = vec![Value::Integer(after)];
    let sql = format!(
        "SELECT e.position FROM events e WHERE e.position > ?{} ORDER BY e.position LIMIT 1",
        filter_sql(&condition.query, &mut params)
    );
    let found = connection
        .prepare_cached(&sql)
        .map_err(internal)?
        .query_row(rusqlite::params_from_iter(params), |row| {
            row.get::<_, i64>(0)
        })
        .optional()
        .map_err(internal)?;
    match found {
        Some(found) => Err(StoreError::ConditionFailed {
            after: condition.after,
            found: found as Position,
        }),
        None => Ok(()),
    }
}

fn delete(
    connection: &Connection,
    stream: &StreamName,
    expected: ExpectedVersion,
) -> Result<Version, StoreError> {
    let row = load_stream(connection, stream)?;
    match &row {
        Some(row) if row.deleted => return Err(StoreError::StreamDeleted(stream.clone())),
        None => {
            // The expectation decides the error: a writer that expected no stream is
            // told so; otherwise there is nothing to delete.
            expected
                .check(None)
                .map_err(|wrong| StoreError::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected: wrong.expected,
                    actual: None,
                })?;
            return Err(StoreError::StreamNotFound(stream.clone()));
        }
        Some(_) => {}
    }
    let row = row.ok_or_else(|| StoreError::StreamNotFound(stream.clone()))?;
    expected
        .check(Some(row.version))
        .map_err(|wrong| StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected: wrong.expected,
            actual: wrong.actual,
        })?;
    connection
        .prepare_cached("UPDATE streams SET deleted = 1, updated_at = ?2 WHERE stream_id = ?1")
        .and_then(|mut s| s.execute(params![row.stream_id, now_micros()]))
        .map_err(internal)?;
    Ok(row.version)
}
