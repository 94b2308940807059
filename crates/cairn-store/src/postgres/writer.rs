//! The writer task of one instance and its group commit.
//!
//! Appends and deletes queue on a channel. The writer takes every request waiting (up
//! to a bound) and commits them in one transaction, in two pipelined round trips:
//!
//! 1. `BEGIN`, lock the head row (`SELECT … FROM cairn_head … FOR UPDATE`: this waits
//!    for any other instance's batch to commit), then look up everything the batch's
//!    checks need: the target streams, the idempotency keys, the event ids, and one
//!    query per append condition. Being sent after the lock, these see every commit
//!    that came before.
//! 2. Each request is decided in order, in memory (`batch.rs`), against what was looked up plus
//!    what the requests before it in the batch did (expected versions, deleted
//!    streams, the condition, idempotency keys, re-sent and duplicate event ids). A
//!    refused request writes nothing and takes no position, so the positions of the
//!    accepted ones follow the head without a gap. Then one pipelined round trip
//!    writes the whole batch (streams, events, tags, keys in bulk), stores the new
//!    head, queues `NOTIFY`, and `COMMIT`s.
//!
//! The checks happen before any write, so a refused request needs no savepoint: the
//! batch runs without subtransactions, which matters on PostgreSQL (past 64
//! subtransactions in one transaction every snapshot on the primary and on the hot
//! standbys gets slower). If the database still refuses a write it was expected to
//! take, the batch is rolled back and its requests are committed again one by one,
//! so that one bad request never fails its neighbours.
//!
//! While this instance writes alone, a batch usually skips the first round trip: it is
//! decided from what the writer remembers of its own last commit (`known.rs`) and sent
//! as one statement, `COMMIT_CACHED`, a transaction of its own that locks the head on
//! condition that nothing was written since, then writes (the cached path).
//!
//! A large batch decided from memory overlaps the one before it instead (`flight.rs`):
//! its rows are written on a second connection while the batch before it commits, and
//! it moves the head once that one has.
//!
//! The requests are answered only after the commit returned (`COMMIT`, or the cached
//! path's statement) and the batch was published (live feed, then head). A batch the
//! database rolled back for a passing reason (a cancelled statement, a deadlock) is
//! tried once more. When the connection broke while committing, a batch of appends is
//! looked up once more on a new connection, whose lookup waits for the lost
//! transaction to end and finds the batch's event ids if it committed
//! (`Writer::try_commit`). A commit whose outcome is still unknown (a batch with a
//! delete, a timeout, a second break) is answered `Unavailable`, never success: a
//! retry with the same idempotency key or event ids is then safe.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use cairn_core::{
    AppendCondition, ExpectedVersion, Position, RecordedEvent, StreamName, Version, category_of,
    now_micros,
};
use deadpool_postgres::{Client, Object, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use self::flight::Flight;
pub(super) use self::flight::TAKE_WRITE_TURN;
use super::batch::{BatchState, Lookups};
use super::known::{Cached, KnownLog};
use super::live::{CHANNEL, LIVE_BATCH_MAX, Publisher};
use super::read::{SqlParams, filter_sql, to_db};
use super::schema::{describe, is_transient, pg_error, pool_error};
use crate::metrics as m;
use crate::{AppendOutcome, AppendRequest, StoreError};

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
}

impl Command {
    fn events(&self) -> usize {
        match self {
            Command::Append { request, .. } => request.events.len(),
            Command::Delete { .. } => 0,
        }
    }
}

/// What became of one command of a batch.
enum Decision {
    Append(Result<AppendOutcome, StoreError>),
    Delete(Result<Version, StoreError>),
}

/// Why a batch did not commit.
enum BatchFailure {
    /// The database is unreachable, or answered "not now" before the writes (or the
    /// batch timed out): every request that was not refused on its own merits is
    /// answered with this.
    Transient(StoreError),
    /// The database refused a statement: the batch is retried one request at a time.
    Statement(StoreError),
    /// Nothing committed, for a passing reason: the connection broke before the commit
    /// was sent, or the database rolled the batch back (a cancelled statement, a lock
    /// timeout, a deadlock). The batch is tried once more on a new connection.
    NotCommitted(StoreError),
    /// The connection broke while the batch was committing: whether it committed is
    /// not known. A batch of appends is looked up once more on a new connection, where
    /// its event ids show what stands (see `Writer::try_commit`).
    Unknown(StoreError),
}

fn failure(error: tokio_postgres::Error) -> BatchFailure {
    if broken(&error) {
        BatchFailure::NotCommitted(pg_error(error))
    } else if is_transient(&error) {
        BatchFailure::Transient(pg_error(error))
    } else {
        BatchFailure::Statement(pg_error(error))
    }
}

/// Whether the connection broke (no answer from the database, rather than an error).
fn broken(error: &tokio_postgres::Error) -> bool {
    error.is_closed() || error.code().is_none()
}

/// The answer to a request whose commit may or may not have happened.
fn outcome_unknown(error: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "PostgreSQL failed while committing; the outcome is unknown, retry with the same idempotency key: {error}"
    ))
}

/// Whether every command of the batch is an append: the only batches whose outcome a
/// lookup can tell after the fact (by their event ids).
fn only_appends(batch: &[Command]) -> bool {
    batch
        .iter()
        .all(|command| matches!(command, Command::Append { .. }))
}

/// The most events one batch takes (requests beyond it wait for the next batch).
const MAX_BATCH_EVENTS: usize = 20_000;
/// The most flights in the air at once: while the oldest commits, the rows of the two
/// behind it are written. Also the writer's connections.
pub(super) const MAX_FLIGHTS: usize = 3;

pub(crate) struct Writer {
    pub(crate) primary: Pool,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) idempotency_window: Duration,
    pub(crate) max_batch_requests: usize,
    /// The longest a batch may take, from taking a connection to the commit.
    pub(crate) write_timeout: Duration,
    /// The fewest events a batch needs to overlap the one before it (`flight.rs`); 0
    /// never.
    pub(crate) overlap_min_events: usize,
}

/// The requests gathered for the next batch.
#[derive(Default)]
struct Gathered {
    batch: Vec<Command>,
    events: usize,
}

impl Gathered {
    fn of(batch: Vec<Command>) -> Self {
        let events = batch.iter().map(Command::events).sum();
        Self { batch, events }
    }

    fn push(&mut self, command: Command) {
        self.events += command.events();
        self.batch.push(command);
    }

    /// Whether the batch takes no more requests.
    fn full(&self, max: usize) -> bool {
        self.batch.len() >= max || self.events >= MAX_BATCH_EVENTS
    }

    fn take(&mut self) -> Vec<Command> {
        self.events = 0;
        std::mem::take(&mut self.batch)
    }
}

impl Writer {
    pub(crate) async fn run(self, mut commands: mpsc::Receiver<Command>) {
        let max = self.max_batch_requests.max(1);
        let mut known = KnownLog::default();
        // Large batches decided from memory whose rows are being written, oldest first;
        // each lands (commits) after the one before it (`flight.rs`).
        let mut flights: VecDeque<Flight> = VecDeque::new();
        // The next batch, gathered while flights are in the air.
        let mut pending = Gathered::default();
        // The pending batch cannot overlap the flights in the air: it waits for them.
        let mut grounded = false;
        loop {
            while !pending.full(max) {
                match commands.try_recv() {
                    Ok(command) => pending.push(command),
                    Err(_) => break,
                }
            }
            if flights.is_empty() {
                if pending.batch.is_empty() {
                    match commands.recv().await {
                        Some(command) => {
                            pending.push(command);
                            continue;
                        }
                        None => break,
                    }
                }
                match self.take_off(pending.take(), &flights, &mut known).await {
                    Ok(flight) => flights.push_back(flight),
                    Err(batch) => self.commit(batch, &mut known).await,
                }
                continue;
            }
            if !grounded
                && flights.len() < MAX_FLIGHTS
                && pending.events >= self.overlap_min_events.max(1)
            {
                match self.take_off(pending.take(), &flights, &mut known).await {
                    Ok(flight) => flights.push_back(flight),
                    Err(batch) => {
                        pending = Gathered::of(batch);
                        grounded = true;
                    }
                }
                continue;
            }
            // Wait for the oldest flight's rows, gathering the next batch meanwhile.
            let Some(oldest) = flights.front_mut() else {
                continue;
            };
            let landing = if pending.full(max) {
                oldest.wait().await;
                true
            } else {
                tokio::select! {
                    biased;
                    () = oldest.wait() => true,
                    command = commands.recv() => match command {
                        Some(command) => {
                            pending.push(command);
                            false
                        }
                        None => true,
                    },
                }
            };
            if !landing {
                continue;
            }
            grounded = false;
            let Some(oldest) = flights.pop_front() else {
                continue;
            };
            if let Err(rerun) = self.land(oldest, &mut known).await {
                // The flights behind it were decided as if it had committed: none may
                // commit. All are rolled back before anything is looked up (a lookup
                // waits for every flight's transaction to end, `flight.rs`), then
                // committed again in order.
                let mut behind = Vec::with_capacity(flights.len());
                while let Some(flight) = flights.pop_front() {
                    behind.push(self.abort(flight).await);
                }
                known.forget();
                if let Some(batch) = rerun {
                    self.commit(batch, &mut known).await;
                }
                for batch in behind {
                    self.commit(batch, &mut known).await;
                }
            }
        }
        tracing::debug!("PostgreSQL writer stopped: no more senders");
    }

    /// Commits a batch and answers every request in it.
    async fn commit(&self, batch: Vec<Command>, known: &mut KnownLog) {
        let started = Instant::now();
        let requests = batch.len();
        let outcome = self.try_commit(&batch, known).await;
        metrics::histogram!(m::GROUP_COMMIT_BATCH_SIZE).record(requests as f64);
        metrics::histogram!(m::COMMIT_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(decisions) => answer(batch, decisions),
            Err((BatchFailure::Statement(error), _)) if requests > 1 => {
                tracing::warn!(%error, requests, "a batch failed; committing its requests one by one");
                for command in batch {
                    Box::pin(self.commit(vec![command], known)).await;
                }
            }
            Err((failure, decisions)) => {
                let error = match failure {
                    BatchFailure::Statement(error) => {
                        tracing::error!(%error, "an append failed in the database");
                        error
                    }
                    BatchFailure::Transient(error)
                    | BatchFailure::NotCommitted(error)
                    | BatchFailure::Unknown(error) => {
                        tracing::warn!(%error, requests, "group commit failed; the batch is answered with the error");
                        error
                    }
                };
                answer_failure(batch, error, decisions);
            }
        }
    }

    /// Runs the batch's transaction and publishes it. On failure, the decisions made
    /// (if it got that far) come back with the reason.
    async fn try_commit(
        &self,
        batch: &[Command],
        known: &mut KnownLog,
    ) -> Result<Vec<Decision>, (BatchFailure, Option<Vec<Decision>>)> {
        let window = i64::try_from(self.idempotency_window.as_micros()).unwrap_or(i64::MAX);
        let mut retried = false;
        let committed = loop {
            let connection =
                match tokio::time::timeout(self.write_timeout, self.primary.get()).await {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(error)) => {
                        return Err((BatchFailure::Transient(pool_error(error)), None));
                    }
                    Err(_) => {
                        return Err((
                            BatchFailure::Transient(StoreError::Unavailable(
                                "PostgreSQL: timed out waiting for a connection".into(),
                            )),
                            None,
                        ));
                    }
                };
            let transaction = tokio::time::timeout(
                self.write_timeout,
                run_transaction(&connection, batch, window, known),
            )
            .await;
            match transaction {
                Ok(Ok(committed)) => break committed,
                Ok(Err((BatchFailure::NotCommitted(error), _))) if !retried => {
                    // Nothing committed (a connection that died idle in the pool, a
                    // statement the database cancelled): once more, on a new connection,
                    // from a lookup.
                    tracing::debug!(%error, "retrying a batch on a new connection");
                    drop(Object::take(connection));
                    retried = true;
                }
                Ok(Err((BatchFailure::Unknown(error), _))) if !retried && only_appends(batch) => {
                    // The batch may have committed. A lookup on a new connection tells:
                    // it waits for that transaction to end (the head lock), and a
                    // request whose events it finds stored is answered as the commit
                    // left it, as a re-sent one (or, under an idempotency key, with
                    // the stored answer). A delete could not be told from one that
                    // came after it, so a batch with one is answered with the error.
                    tracing::debug!(%error, "the connection broke while committing; looking the batch up on a new one");
                    drop(Object::take(connection));
                    retried = true;
                }
                Ok(Err(failed)) => {
                    // The connection may be inside a failed transaction: never reuse it.
                    drop(Object::take(connection));
                    return Err(failed);
                }
                Err(_) => {
                    // Whether it committed is not known: start again from a lookup.
                    known.forget();
                    drop(Object::take(connection));
                    return Err((
                        BatchFailure::Transient(StoreError::Unavailable(
                            "PostgreSQL: the commit timed out; its outcome is unknown".into(),
                        )),
                        None,
                    ));
                }
            }
        };
        Ok(self.publish(committed).await)
    }

    /// Publishes a committed batch (live feed, then head) and hands back its answers.
    async fn publish(&self, committed: Committed) -> Vec<Decision> {
        if let Some((first, last)) = committed.appended {
            let events = (committed.events.len() <= LIVE_BATCH_MAX).then_some(committed.events);
            self.publisher.committed_here(first, last, events).await;
            metrics::counter!(m::APPENDED_EVENTS).increment(last - first + 1);
        }
        committed.decisions
    }
}

/// Answers a batch that did not commit: refusals stand (when the batch got as far as
/// its decisions); what would have succeeded gets the error.
fn answer_failure(batch: Vec<Command>, error: StoreError, decisions: Option<Vec<Decision>>) {
    let decisions = match decisions {
        Some(decisions) => decisions
            .into_iter()
            .map(|decision| match decision {
                Decision::Append(Ok(_)) => Decision::Append(Err(error.clone())),
                Decision::Delete(Ok(_)) => Decision::Delete(Err(error.clone())),
                refused => refused,
            })
            .collect(),
        None => batch
            .iter()
            .map(|command| match command {
                Command::Append { .. } => Decision::Append(Err(error.clone())),
                Command::Delete { .. } => Decision::Delete(Err(error.clone())),
            })
            .collect(),
    };
    answer(batch, decisions);
}

/// Whether any request of the batch was refused.
fn refused(decisions: &[Decision]) -> bool {
    decisions.iter().any(|decision| match decision {
        Decision::Append(result) => result.is_err(),
        Decision::Delete(result) => result.is_err(),
    })
}

fn answer(batch: Vec<Command>, decisions: Vec<Decision>) {
    // A requester that went away no longer needs its answer; the outcome stands.
    for (command, decision) in batch.into_iter().zip(decisions) {
        match (command, decision) {
            (Command::Append { reply, .. }, Decision::Append(result)) => drop(reply.send(result)),
            (Command::Delete { reply, .. }, Decision::Delete(result)) => drop(reply.send(result)),
            (Command::Append { reply, .. }, Decision::Delete(_)) => drop(reply.send(Err(
                StoreError::Internal("the writer mixed up its answers".into()),
            ))),
            (Command::Delete { reply, .. }, Decision::Append(_)) => drop(reply.send(Err(
                StoreError::Internal("the writer mixed up its answers".into()),
            ))),
        }
    }
}

/// A committed batch.
struct Committed {
    decisions: Vec<Decision>,
    /// The positions appended, if any.
    appended: Option<(Position, Position)>,
    /// The events appended, in position order.
    events: Vec<RecordedEvent>,
}

impl Committed {
    /// The batch's answers and what it appended; the events move out of `state`.
    fn new(decisions: Vec<Decision>, state: &mut BatchState) -> Self {
        let appended =
            (state.head > state.head_before).then_some((state.head_before + 1, state.head));
        Self {
            decisions,
            appended,
            events: std::mem::take(&mut state.events),
        }
    }
}

/// Parameters for a pipelined statement.
macro_rules! sql_params {
    ($($value:expr),* $(,)?) => {
        vec![$($value as &(dyn tokio_postgres::types::ToSql + Sync)),*]
    };
}

mod flight;

type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs futures that each send one statement on the same connection, starting them in
/// the given order (tokio-postgres sends a statement on the first poll, so the server
/// runs them in this order), and waits for all of them: one round trip for all.
async fn pipeline<'a, T>(mut futures: Vec<Pending<'a, T>>) -> Vec<T> {
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *result = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

fn query<'a>(
    client: &'a Client,
    statement: &'a tokio_postgres::Statement,
    params: Vec<&'a (dyn ToSql + Sync)>,
) -> Pending<'a, Result<Vec<Row>, tokio_postgres::Error>> {
    Box::pin(async move { client.query(statement, &params).await })
}

fn simple<'a>(
    client: &'a Client,
    sql: &'a str,
) -> Pending<'a, Result<Vec<Row>, tokio_postgres::Error>> {
    Box::pin(async move { client.batch_execute(sql).await.map(|()| Vec::new()) })
}

/// The lookups below read through their unique indexes whatever their values, so each
/// keeps one generic plan instead of being planned for every batch; made with sequential
/// scans off, that plan is an index scan even when it is first made on an empty table.
/// It also takes the write turn before the head lock (see `flight.rs`).
const BEGIN_WITH_INDEX_PLANS: &str =
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;
     SELECT pg_advisory_xact_lock(7161120822688481282)";
/// After the lookups, when the batch has append conditions: their queries are planned
/// for their values. (Without any, the settings above last into the writing round trip,
/// whose statements read no table but through an index either way.)
const VALUE_PLANS: &str =
    "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_seqscan = on";
const LOCK_HEAD: &str =
    "SELECT position, recorded_at, revision FROM cairn_head WHERE id = 1 FOR UPDATE";
const LOOKUP_STREAMS: &str =
    "SELECT name, version, position, created_at, deleted FROM streams WHERE name = ANY($1)";
const LOOKUP_KEYS: &str = "SELECT key, fingerprint, response FROM idempotency_keys
     WHERE key = ANY($1) AND created_at >= $2";
const LOOKUP_IDS: &str = "SELECT e.id, s.name, e.version, e.position
     FROM events e JOIN streams s ON s.stream_id = e.stream_id WHERE e.id = ANY($1)";
/// The streams' new state and the batch's events in one statement: the events take
/// their `stream_id` from the rows the stream writes return. Streams the batch creates
/// are inserted (so the statement fails if such a row exists after all); the others
/// are upserted. A stream row missing for an event leaves its `stream_id` NULL, which
/// fails the whole transaction (never a lost event). Nothing in it reads a table except
/// through the streams' unique index, so its generic plan is as good on a log of
/// billions as on an empty one (see `GENERIC_PLANS`).
///
/// The join hashes the streams and runs the events past them. The planner estimates
/// every `UNNEST` of a parameter at 10 rows, so left to itself it hashed the events
/// instead, copying every event (its data included) into the hash table; the
/// always-true `stream_id > 0` (identities start at 1) makes the streams the side it
/// expects to be smaller.
///
/// The events' columns are unnested in a select list rather than by `UNNEST(a, b, …)`
/// in `FROM`: both zip the arrays row by row, but the function scan first copies every
/// row into a tuple store, while select-list `UNNEST`s stream the rows straight into
/// the join (a `ProjectSet`). The copy was 5.5% of the writer's backend on batches.
///
/// The text is written once, as a macro, for both statements that write a batch: this
/// one, and `COMMIT_CACHED`, which adds CTEs before (`$before`, ending in a comma) and
/// after (`$after`), makes the events' insert a CTE of its own (`$open`, closed by
/// `$after`), and lets the writes happen only if its head update did (`$gate`, a
/// condition on every row).
macro_rules! streams_and_events {
    ($before:literal, $gate:literal, $open:literal, $after:literal) => {
        concat!(
            "WITH ",
            $before,
            "created AS (
       INSERT INTO streams (name, version, position, created_at, updated_at, deleted)
       SELECT u.name, u.version, u.position, $5, $5, false
       FROM UNNEST($16::text[], $17::int8[], $18::int8[]) AS u(name, version, position)",
            $gate,
            "
       RETURNING name, stream_id
     ), changed AS (
       INSERT INTO streams (name, version, position, created_at, updated_at, deleted)
       SELECT u.name, u.version, u.position, u.created_at, $5, u.deleted
       FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $6::bool[])
            AS u(name, version, position, created_at, deleted)",
            $gate,
            "
       ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = EXCLUDED.position,
          updated_at = EXCLUDED.updated_at, deleted = EXCLUDED.deleted
       RETURNING name, stream_id
     ), s AS (
       SELECT name, stream_id FROM created UNION ALL SELECT name, stream_id FROM changed
     )
     ",
            $open,
            "INSERT INTO events (position, id, stream_id, version, type, category, data, metadata, tags, recorded_at)
     SELECT u.position, u.id, s.stream_id, u.version, u.type, u.category, u.data, u.metadata,
            CASE WHEN u.tags IS NULL THEN NULL ELSE ARRAY(SELECT json_array_elements_text(u.tags::json)) END,
            $5
     FROM (SELECT UNNEST($7::int8[]) AS position, UNNEST($8::uuid[]) AS id, UNNEST($9::text[]) AS stream,
                  UNNEST($10::int8[]) AS version, UNNEST($11::text[]) AS type, UNNEST($12::text[]) AS category,
                  UNNEST($13::text[]) AS data, UNNEST($14::text[]) AS metadata, UNNEST($15::text[]) AS tags) AS u
     LEFT JOIN (SELECT name, stream_id FROM s WHERE stream_id > 0) AS s ON s.name = u.stream",
            $gate,
            $after
        )
    };
}
const WRITE_STREAMS_AND_EVENTS: &str = streams_and_events!("", "", "", "");
/// The cached path's whole transaction, in one statement (so in one implicit
/// transaction: no `BEGIN`, no `COMMIT`, one answer): the head update on condition that
/// the revision is the one this writer's last commit left, then, only if it updated the
/// row, the writes of `WRITE_STREAMS_AND_EVENTS`, the tags, the keys assumed new, and
/// `NOTIFY`. It answers one row: whether the head was at that revision (`false`: nothing
/// was written; another instance wrote since).
///
/// The outer `SELECT` reads `gate` first, so the head update (the head lock, which waits
/// for any other instance's batch) runs before any other write, as in the looked-up path;
/// the writing CTEs, which nothing reads, run after it, to completion. A stream, key or
/// event id that is there after all fails the statement on its unique index, and the
/// whole transaction with it. Every cached commit moves the revision: a batch sent this
/// way writes in practice (a batch of refusals is looked up instead), and a revision
/// moved without a write only sends other instances to a lookup. Parameters `$1`–`$18`
/// are `WRITE_STREAMS_AND_EVENTS`'s; then the tags (`$19`, `$20`), the keys
/// (`$21`–`$23`), the expected revision (`$24`), the new head position (`$25`), and the
/// notification's channel and payload (`$26`, `$27`; none when the payload is NULL).
const COMMIT_CACHED: &str = streams_and_events!(
    "head AS (
       UPDATE cairn_head SET position = $25, recorded_at = $5, revision = revision + 1
       WHERE id = 1 AND revision = $24
       RETURNING revision
     ), gate AS MATERIALIZED (
       SELECT EXISTS (SELECT FROM head) AS ok
     ), ",
    "
       WHERE (SELECT ok FROM gate)",
    ", written AS (
     ",
    "
     ), tagged AS (
       INSERT INTO event_tags (tag, position)
       SELECT * FROM UNNEST($19::text[], $20::int8[]) WHERE (SELECT ok FROM gate)
       ON CONFLICT DO NOTHING
     ), keyed AS (
       INSERT INTO idempotency_keys (key, fingerprint, response, created_at)
       SELECT u.key, u.fingerprint, u.response, $5 FROM UNNEST($21::text[], $22::bytea[], $23::text[])
            AS u(key, fingerprint, response)
       WHERE (SELECT ok FROM gate)
     )
     SELECT ok,
            (SELECT count(*) FROM (SELECT pg_notify($26, $27) WHERE ok AND $27 IS NOT NULL) AS n)
     FROM gate"
);
/// Sent first in the writing round trip. Every connection plans each statement for its
/// values (`plan_cache_mode = force_custom_plan`, see `pool.rs`); the writes below need
/// no table scan whatever their values, so they reuse one generic plan each instead of
/// being planned again for every batch (planning was a quarter of the database's work
/// per batch).
const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";
const WRITE_TAGS: &str = "INSERT INTO event_tags (tag, position)
     SELECT * FROM UNNEST($1::text[], $2::int8[]) ON CONFLICT DO NOTHING";
const WRITE_KEYS: &str = "INSERT INTO idempotency_keys (key, fingerprint, response, created_at)
     SELECT u.key, u.fingerprint, u.response, $4 FROM UNNEST($1::text[], $2::bytea[], $3::text[])
          AS u(key, fingerprint, response)
     ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
        response = EXCLUDED.response, created_at = EXCLUDED.created_at";
/// Every writing transaction moves the revision (see `known.rs`).
const WRITE_HEAD: &str =
    "UPDATE cairn_head SET position = $1, recorded_at = $2, revision = revision + 1 WHERE id = 1";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// One transaction for the whole batch; see the module documentation. A batch the
/// writer can decide from memory tries the cached path first.
async fn run_transaction(
    client: &Client,
    batch: &[Command],
    idempotency_window: i64,
    known: &mut KnownLog,
) -> Result<Committed, (BatchFailure, Option<Vec<Decision>>)> {
    if let Some(cached) = known.cached(batch) {
        match commit_cached(client, batch, cached).await {
            Ok((committed, revision, state)) => {
                known.committed(revision, &state);
                known.cached_commit();
                metrics::counter!(m::GROUP_COMMITS, "path" => "cached").increment(1);
                return Ok(committed);
            }
            Err(CachedMiss::WrittenElsewhere) => {
                known.moved();
                metrics::counter!(m::CACHED_COMMIT_MISSES, "reason" => "written_elsewhere")
                    .increment(1);
            }
            Err(CachedMiss::AssumedAbsent) => {
                metrics::counter!(m::CACHED_COMMIT_MISSES, "reason" => "assumed_absent")
                    .increment(1);
            }
            Err(CachedMiss::Refusal) => {
                metrics::counter!(m::CACHED_COMMIT_MISSES, "reason" => "refusal").increment(1);
            }
            Err(CachedMiss::Failed(error)) => {
                known.forget();
                return Err((error, None));
            }
        }
    }
    match look_up_and_commit(client, batch, idempotency_window, known).await {
        Ok((committed, revision, state)) => {
            known.committed(revision, &state);
            metrics::counter!(m::GROUP_COMMITS, "path" => "looked_up").increment(1);
            Ok(committed)
        }
        Err(failed) => {
            known.forget();
            Err(failed)
        }
    }
}

/// Why the cached path did not commit.
enum CachedMiss {
    /// Another transaction wrote since this writer's last commit.
    WrittenElsewhere,
    /// Something assumed absent (a stream, a key, an event id) was there after all.
    AssumedAbsent,
    /// A request would be refused: refusals are confirmed by a lookup (nothing was sent).
    Refusal,
    /// The transaction failed for another reason.
    Failed(BatchFailure),
}

/// The cached path: the batch decided from what the writer remembers, then one round
/// trip that takes the head lock on condition that nothing else was written since this
/// writer's last commit, writes, and commits. Only a batch whose requests are all
/// accepted is sent (see `known.rs`); the database refuses the transaction if the
/// revision moved or something assumed absent is there.
async fn commit_cached(
    client: &Client,
    batch: &[Command],
    cached: Cached,
) -> Result<(Committed, i64, BatchState), CachedMiss> {
    let statement = client
        .prepare_cached(COMMIT_CACHED)
        .await
        .map_err(|error| CachedMiss::Failed(failure(error)))?;
    let revision = cached.revision;
    let phase_started = Instant::now();
    let lookups = Lookups::from_cached(cached);
    let (decisions, mut state) = decide(batch, lookups);
    if refused(&decisions) {
        return Err(CachedMiss::Refusal);
    }
    let decided = phase_started.elapsed();
    let phase_started = Instant::now();
    match commit_in_one(client, &statement, &state, revision).await {
        Ok(false) => Err(CachedMiss::WrittenElsewhere),
        Ok(true) => {
            record_phase_elapsed("decide", decided);
            record_phase("write_and_commit", phase_started);
            let committed = Committed::new(decisions, &mut state);
            Ok((committed, revision + 1, state))
        }
        Err(error) => match error.code() {
            Some(code)
                if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::NOT_NULL_VIOLATION =>
            {
                Err(CachedMiss::AssumedAbsent)
            }
            // The connection broke: whether the statement committed is not known.
            _ if broken(&error) => Err(CachedMiss::Failed(BatchFailure::Unknown(outcome_unknown(
                &describe(&error),
            )))),
            // The database answered with an error: the statement's transaction did not
            // commit, and the batch is tried once more.
            _ if is_transient(&error) => Err(CachedMiss::Failed(BatchFailure::NotCommitted(
                pg_error(error),
            ))),
            _ => Err(CachedMiss::Failed(BatchFailure::Statement(pg_error(error)))),
        },
    }
}

/// The looked-up path: lock, look up, decide, write and commit, in two round trips.
/// Returns the revision the commit left.
async fn look_up_and_commit(
    client: &Client,
    batch: &[Command],
    idempotency_window: i64,
    known: &mut KnownLog,
) -> Result<(Committed, i64, BatchState), (BatchFailure, Option<Vec<Decision>>)> {
    let fail = |error| (failure(error), None);
    let writes = WriteStatements::prepare(client).await.map_err(fail)?;
    // What the lookups ask for.
    let mut names: Vec<&str> = Vec::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut conditions: Vec<(usize, String, SqlParams)> = Vec::new();
    for (index, command) in batch.iter().enumerate() {
        match command {
            Command::Append { request, .. } => {
                names.extend(request.targets.iter().map(|t| t.stream.as_str()));
                keys.extend(request.idempotency.iter().map(|claim| claim.key.as_str()));
                ids.extend(request.events.iter().map(|(_, event)| event.id));
                if let Some(condition) = &request.condition {
                    let (sql, params) = condition_query(condition);
                    conditions.push((index, sql, params));
                }
            }
            Command::Delete { stream, .. } => names.push(stream.as_str()),
        }
    }

    // Statements are prepared (once per connection) before the transaction, so that
    // the pipelined ones below are sent at once and in order.
    let lock_head = client.prepare_cached(LOCK_HEAD).await.map_err(fail)?;
    let lookup_streams = client.prepare_cached(LOOKUP_STREAMS).await.map_err(fail)?;
    let lookup_keys = client.prepare_cached(LOOKUP_KEYS).await.map_err(fail)?;
    let lookup_ids = client.prepare_cached(LOOKUP_IDS).await.map_err(fail)?;
    let mut condition_statements = Vec::with_capacity(conditions.len());
    for (_, sql, _) in &conditions {
        condition_statements.push(client.prepare_cached(sql).await.map_err(fail)?);
    }

    let phase_started = Instant::now();
    let window_start = now_micros().saturating_sub(idempotency_window);
    // The lookups use generic plans made with sequential scans off (`BEGIN_WITH_INDEX_PLANS`);
    // a lookup with nothing to look up is not sent at all.
    let mut round: Vec<Pending<'_, Result<Vec<Row>, tokio_postgres::Error>>> = vec![
        simple(client, BEGIN_WITH_INDEX_PLANS),
        query(client, &lock_head, sql_params![]),
        query(client, &lookup_streams, sql_params![&names]),
    ];
    if !keys.is_empty() {
        round.push(query(
            client,
            &lookup_keys,
            sql_params![&keys, &window_start],
        ));
    }
    round.push(query(client, &lookup_ids, sql_params![&ids]));
    if !conditions.is_empty() {
        round.push(simple(client, VALUE_PLANS));
    }
    for ((_, _, params), statement) in conditions.iter().zip(&condition_statements) {
        round.push(query(client, statement, params.refs()));
    }
    let mut results = pipeline(round).await.into_iter();
    let mut next = || -> Result<Vec<Row>, (BatchFailure, Option<Vec<Decision>>)> {
        match results.next() {
            Some(result) => result.map_err(fail),
            None => Err((
                BatchFailure::Statement(StoreError::Internal(
                    "a pipelined result is missing".into(),
                )),
                None,
            )),
        }
    };
    next()?; // BEGIN
    let head_row = next()?;
    let stream_rows = next()?;
    let key_rows = if keys.is_empty() { Vec::new() } else { next()? };
    let id_rows = next()?;
    if !conditions.is_empty() {
        next()?; // VALUE_PLANS
    }
    let mut condition_rows = HashMap::new();
    for (index, _, _) in &conditions {
        condition_rows.insert(*index, next()?);
    }

    record_phase("lock_and_read", phase_started);
    let phase_started = Instant::now();
    let lookups = Lookups::from_rows(
        &head_row,
        &stream_rows,
        &key_rows,
        &id_rows,
        &condition_rows,
    )
    .map_err(|error| (BatchFailure::Statement(error), None))?;
    let revision = lookups.revision;
    known.looked_up(revision);
    let (decisions, mut state) = decide(batch, lookups);
    record_phase("decide", phase_started);

    let phase_started = Instant::now();
    let wrote = match write_and_commit(client, &writes, &state).await {
        Ok(wrote) => wrote,
        Err(error) => return Err((failure_at_commit(error), Some(decisions))),
    };
    record_phase("write_and_commit", phase_started);
    let committed = Committed::new(decisions, &mut state);
    Ok((committed, revision + i64::from(wrote), state))
}

/// Decides the batch's requests in order, against what was looked up (or remembered).
fn decide(batch: &[Command], lookups: Lookups) -> (Vec<Decision>, BatchState) {
    // recorded_at never goes backwards along the log, whatever the instances' clocks.
    let recorded_at = now_micros().max(lookups.recorded_at);
    let mut state = BatchState::new(lookups, recorded_at);
    let decisions: Vec<Decision> = batch
        .iter()
        .enumerate()
        .map(|(index, command)| match command {
            Command::Append { request, .. } => Decision::Append(state.append(index, request)),
            Command::Delete {
                stream, expected, ..
            } => Decision::Delete(state.delete(stream, *expected)),
        })
        .collect();
    debug_assert_eq!(decisions.len(), batch.len());
    (decisions, state)
}

/// Records how long one phase of a group commit took (see `COMMIT_PHASE_SECONDS`).
fn record_phase(phase: &'static str, started: Instant) {
    record_phase_elapsed(phase, started.elapsed());
}

fn record_phase_elapsed(phase: &'static str, elapsed: Duration) {
    metrics::histogram!(m::COMMIT_PHASE_SECONDS, "phase" => phase).record(elapsed.as_secs_f64());
}

/// A failure in the writing round trip: a closed connection there may have happened
/// after the server committed, so it is reported as an unknown outcome. Any other
/// passing failure (a cancelled statement, a lock timeout, a deadlock) is the
/// database's answer: it rolled the batch back.
fn failure_at_commit(error: tokio_postgres::Error) -> BatchFailure {
    if broken(&error) {
        BatchFailure::Unknown(outcome_unknown(&describe(&error)))
    } else if is_transient(&error) {
        BatchFailure::NotCommitted(pg_error(error))
    } else {
        BatchFailure::Statement(pg_error(error))
    }
}

/// A decided batch's writes as the column arrays its statements take.
struct WriteColumns<'a> {
    /// Streams that existed: their state at the end of the batch.
    names: Vec<&'a str>,
    versions: Vec<i64>,
    positions: Vec<i64>,
    created: Vec<i64>,
    deleted: Vec<bool>,
    /// Streams the batch creates.
    new_names: Vec<&'a str>,
    new_versions: Vec<i64>,
    new_positions: Vec<i64>,
    events: EventColumns<'a>,
    key_names: Vec<&'a str>,
    key_fingerprints: Vec<&'a [u8]>,
    key_responses: Vec<&'a str>,
    head: i64,
    /// The notification's payload (the new head), when the batch appended events.
    notification: Option<String>,
    recorded_at: i64,
}

impl<'a> WriteColumns<'a> {
    fn new(state: &'a BatchState) -> Self {
        let mut columns = Self {
            names: Vec::new(),
            versions: Vec::new(),
            positions: Vec::new(),
            created: Vec::new(),
            deleted: Vec::new(),
            new_names: Vec::new(),
            new_versions: Vec::new(),
            new_positions: Vec::new(),
            events: EventColumns::new(&state.events),
            key_names: state.new_keys.iter().map(|k| k.key.as_str()).collect(),
            key_fingerprints: state.new_keys.iter().map(|k| &k.fingerprint[..]).collect(),
            key_responses: state.new_keys.iter().map(|k| k.response.as_str()).collect(),
            head: to_db(state.head),
            notification: (state.head > state.head_before).then(|| state.head.to_string()),
            recorded_at: state.recorded_at,
        };
        for (name, stream) in &state.streams {
            match (stream.dirty, stream.version, stream.existed) {
                (true, Some(version), true) => {
                    columns.names.push(name.as_str());
                    columns.versions.push(to_db(version));
                    columns.positions.push(to_db(stream.position));
                    columns.created.push(stream.created_at);
                    columns.deleted.push(stream.deleted);
                }
                (true, Some(version), false) => {
                    columns.new_names.push(name.as_str());
                    columns.new_versions.push(to_db(version));
                    columns.new_positions.push(to_db(stream.position));
                }
                _ => {}
            }
        }
        columns
    }

    fn writes_streams(&self) -> bool {
        !self.names.is_empty() || !self.new_names.is_empty()
    }

    /// Whether anything is written, which moves the head's revision.
    fn wrote(&self) -> bool {
        self.writes_streams() || !self.key_names.is_empty()
    }

    /// Adds the statements that write the batch's rows (streams and events, tags,
    /// keys), those it has, to a pipelined round.
    fn push_rows(
        &'a self,
        round: &mut Vec<Pending<'a, Result<Vec<Row>, tokio_postgres::Error>>>,
        client: &'a Client,
        statements: &'a RowStatements,
    ) {
        let events = &self.events;
        if self.writes_streams() {
            round.push(query(
                client,
                &statements.streams_and_events,
                self.streams_and_events(),
            ));
        }
        if !events.tag_names.is_empty() {
            round.push(query(
                client,
                &statements.tags,
                sql_params![&events.tag_names, &events.tag_positions],
            ));
        }
        if !self.key_names.is_empty() {
            round.push(query(
                client,
                &statements.keys,
                sql_params![
                    &self.key_names,
                    &self.key_fingerprints,
                    &self.key_responses,
                    &self.recorded_at
                ],
            ));
        }
    }

    /// `WRITE_STREAMS_AND_EVENTS`'s parameters (`COMMIT_CACHED`'s first 18).
    fn streams_and_events(&self) -> Vec<&(dyn ToSql + Sync)> {
        [
            sql_params![
                &self.names,
                &self.versions,
                &self.positions,
                &self.created,
                &self.recorded_at,
                &self.deleted
            ],
            self.events.row_params().to_vec(),
            sql_params![&self.new_names, &self.new_versions, &self.new_positions],
        ]
        .concat()
    }
}

/// The statements that write a batch's rows; the keys' differs between the looked-up
/// path (an expired key is replaced) and a flight (a key there fails the transaction).
struct RowStatements {
    streams_and_events: tokio_postgres::Statement,
    tags: tokio_postgres::Statement,
    keys: tokio_postgres::Statement,
}

impl RowStatements {
    /// The row statements, with `keys` the text of the keys' insert.
    async fn prepare(client: &Client, keys: &str) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            streams_and_events: client.prepare_cached(WRITE_STREAMS_AND_EVENTS).await?,
            tags: client.prepare_cached(WRITE_TAGS).await?,
            keys: client.prepare_cached(keys).await?,
        })
    }
}

/// The looked-up path's writing round trip, inside its transaction (which holds the
/// head lock): every write of the batch, the head, the notification and the commit.
/// `COMMIT` of a transaction that a failed statement aborted answers as a rollback,
/// without an error, so every statement's result is checked, and the first error is
/// returned. (An event whose stream row is missing would get a NULL `stream_id` and fail
/// the whole transaction.) Returns whether anything was written, which moved the head's
/// revision.
async fn write_and_commit(
    client: &Client,
    statements: &WriteStatements,
    state: &BatchState,
) -> Result<bool, tokio_postgres::Error> {
    let columns = WriteColumns::new(state);
    let mut round: Vec<Pending<'_, Result<Vec<Row>, tokio_postgres::Error>>> =
        vec![simple(client, GENERIC_PLANS)];
    columns.push_rows(&mut round, client, &statements.rows);
    let wrote = columns.wrote();
    if wrote {
        round.push(query(
            client,
            &statements.write_head,
            sql_params![&columns.head, &columns.recorded_at],
        ));
    }
    if let Some(payload) = &columns.notification {
        round.push(query(
            client,
            &statements.notify,
            sql_params![&CHANNEL, payload],
        ));
    }
    round.push(simple(client, "COMMIT"));
    for result in pipeline(round).await {
        result?;
    }
    Ok(wrote)
}

/// The cached path's transaction: `COMMIT_CACHED`, one statement. Returns whether the
/// head was at `revision` (otherwise nothing was written).
async fn commit_in_one(
    client: &Client,
    statement: &tokio_postgres::Statement,
    state: &BatchState,
    revision: i64,
) -> Result<bool, tokio_postgres::Error> {
    let columns = WriteColumns::new(state);
    let events = &columns.events;
    let params = [
        columns.streams_and_events(),
        sql_params![
            &events.tag_names,
            &events.tag_positions,
            &columns.key_names,
            &columns.key_fingerprints,
            &columns.key_responses,
            &revision,
            &columns.head,
            &CHANNEL,
            &columns.notification
        ],
    ]
    .concat();
    let row = client.query_one(statement, &params).await?;
    row.try_get(0)
}

/// Events as the column arrays the bulk `UNNEST` inserts take (the writer's and the
/// import's), and their tags as `event_tags` rows.
pub(super) struct EventColumns<'a> {
    pub(super) positions: Vec<i64>,
    pub(super) ids: Vec<Uuid>,
    pub(super) streams: Vec<&'a str>,
    pub(super) versions: Vec<i64>,
    pub(super) types: Vec<&'a str>,
    pub(super) categories: Vec<&'a str>,
    pub(super) data: Vec<&'a str>,
    pub(super) metadata: Vec<&'a str>,
    /// A JSON array of the event's tags, `None` when it has none.
    pub(super) tags: Vec<Option<String>>,
    pub(super) recorded_at: Vec<i64>,
    pub(super) tag_names: Vec<&'a str>,
    pub(super) tag_positions: Vec<i64>,
}

impl<'a> EventColumns<'a> {
    /// The columns of the events' rows, as both inserts unnest them: position, id,
    /// stream, version, type, category, data, metadata, tags.
    pub(super) fn row_params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.positions,
            &self.ids,
            &self.streams,
            &self.versions,
            &self.types,
            &self.categories,
            &self.data,
            &self.metadata,
            &self.tags,
        ]
    }

    pub(super) fn new(events: impl IntoIterator<Item = &'a RecordedEvent>) -> Self {
        let mut columns = Self {
            positions: Vec::new(),
            ids: Vec::new(),
            streams: Vec::new(),
            versions: Vec::new(),
            types: Vec::new(),
            categories: Vec::new(),
            data: Vec::new(),
            metadata: Vec::new(),
            tags: Vec::new(),
            recorded_at: Vec::new(),
            tag_names: Vec::new(),
            tag_positions: Vec::new(),
        };
        for event in events {
            let stream = event.stream.as_str();
            columns.positions.push(to_db(event.position));
            columns.ids.push(event.id);
            columns.streams.push(stream);
            columns.versions.push(to_db(event.version));
            columns.types.push(event.event_type.as_str());
            columns.categories.push(category_of(stream));
            columns.data.push(event.data.as_str());
            columns.metadata.push(event.metadata.as_str());
            columns.tags.push(
                (!event.tags.is_empty())
                    .then(|| serde_json::Value::from(event.tags.clone()).to_string()),
            );
            columns.recorded_at.push(event.recorded_at);
            for tag in &event.tags {
                columns.tag_names.push(tag.as_str());
                columns.tag_positions.push(to_db(event.position));
            }
        }
        columns
    }

    pub(super) fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// The statements of the writing round trip, prepared before the transaction begins
/// (once per connection: later batches find them in the connection's cache).
struct WriteStatements {
    rows: RowStatements,
    write_head: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
}

impl WriteStatements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            rows: RowStatements::prepare(client, WRITE_KEYS).await?,
            write_head: client.prepare_cached(WRITE_HEAD).await?,
            notify: client.prepare_cached(NOTIFY).await?,
        })
    }
}

/// The query finding the first event after the condition's position that matches its
/// filter.
fn condition_query(condition: &AppendCondition) -> (String, SqlParams) {
    let mut params = SqlParams::default();
    let after = params.push(to_db(condition.after));
    let conditions = filter_sql(&condition.query, &mut params);
    (
        format!(
            "SELECT e.position FROM events e WHERE e.position > {after}{conditions} ORDER BY e.position LIMIT 1"
        ),
        params,
    )
}

#[cfg(test)]
mod tests {
    use tokio_postgres::NoTls;

    use super::{COMMIT_CACHED, WRITE_STREAMS_AND_EVENTS};
    use crate::postgres::{PostgresOptions, PostgresStore};

    /// The generic plan of `sql`, prepared with NULL for every parameter.
    async fn generic_plan(client: &tokio_postgres::Client, name: &str, sql: &str) -> Vec<String> {
        let statement = client.prepare(sql).await.unwrap();
        let types: Vec<&str> = statement.params().iter().map(|t| t.name()).collect();
        let nulls = vec!["NULL"; types.len()].join(", ");
        client
            .batch_execute(&format!(
                "SET plan_cache_mode = force_generic_plan;
                 PREPARE {name} ({}) AS {sql}",
                types.join(", ")
            ))
            .await
            .unwrap();
        crate::testing::explain(
            client,
            &format!("EXPLAIN (COSTS OFF) EXECUTE {name} ({nulls})"),
        )
        .await
        .unwrap()
    }

    /// The lines under `plan[at]`, indented deeper.
    fn subtree(plan: &[String], at: usize) -> &[String] {
        let depth = |line: &str| line.len() - line.trim_start().len();
        let end = plan[at + 1..]
            .iter()
            .position(|line| depth(line) <= depth(&plan[at]))
            .map_or(plan.len(), |offset| at + 1 + offset);
        &plan[at + 1..end]
    }

    async fn connected() -> Option<tokio_postgres::Client> {
        let database = crate::testing::shared_database().await?;
        // Runs the migrations.
        drop(
            PostgresStore::connect(PostgresOptions::new(&database.primary_url))
                .await
                .unwrap(),
        );
        let (client, connection) = tokio_postgres::connect(&database.primary_url, NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        Some(client)
    }

    /// The generic plan of both statements that write a batch hashes the streams and
    /// runs the events past them, not the other way round (which copied every event
    /// into a hash table: a fifth of a 100-event batch's time in PostgreSQL).
    #[tokio::test]
    async fn the_batch_writes_hash_the_streams_not_the_events() {
        let Some(client) = connected().await else {
            return;
        };
        for (name, sql) in [
            ("write_batch", WRITE_STREAMS_AND_EVENTS),
            ("commit_cached", COMMIT_CACHED),
        ] {
            let plan = generic_plan(&client, name, sql).await;
            let text = plan.join("\n");
            let hash = plan
                .iter()
                .position(|line| line.trim_start().trim_start_matches("->  ") == "Hash")
                .unwrap_or_else(|| panic!("{name}: no hash join:\n{text}"));
            let hashed = subtree(&plan, hash);
            assert!(
                hashed
                    .iter()
                    .any(|line| line.contains("CTE Scan on changed")),
                "{name}: the streams are not hashed:\n{text}"
            );
            assert!(
                !hashed
                    .iter()
                    .any(|line| line.contains("Function Scan on u")),
                "{name}: the events are hashed:\n{text}"
            );
        }
    }

    /// The cached path's statement writes nothing unless its head update did: every
    /// insert in it runs behind a one-time filter on the gate, which reads the head
    /// update; and the statement's own output reads the gate, so the head update (the
    /// head lock) comes first.
    #[tokio::test]
    async fn the_cached_commit_writes_only_behind_its_head_update() {
        let Some(client) = connected().await else {
            return;
        };
        let plan = generic_plan(&client, "gated", COMMIT_CACHED).await;
        let text = plan.join("\n");
        assert!(plan[0].starts_with("CTE Scan on gate"), "{text}");
        let inserts: Vec<usize> = (0..plan.len())
            .filter(|&at| plan[at].contains("->  Insert on"))
            .collect();
        assert_eq!(
            inserts.len(),
            5,
            "streams twice, events, tags, keys:\n{text}"
        );
        for at in inserts {
            let under = subtree(&plan, at);
            let gate = under
                .iter()
                .position(|line| line.contains("CTE Scan on gate"))
                .unwrap_or_else(|| panic!("{}: not gated:\n{text}", plan[at]));
            let parameter = under[..gate]
                .iter()
                .rev()
                .find_map(|line| line.split("(returns ").nth(1))
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{}: the gate is no init plan:\n{text}", plan[at]));
            assert!(
                under
                    .iter()
                    .any(|line| line.trim() == format!("One-Time Filter: {parameter}")),
                "{}: no one-time filter on the gate:\n{text}",
                plan[at]
            );
        }
        let gate = plan
            .iter()
            .position(|line| line.trim() == "CTE gate")
            .unwrap_or_else(|| panic!("no gate:\n{text}"));
        assert!(
            subtree(&plan, gate)
                .iter()
                .any(|line| line.contains("CTE Scan on head")),
            "{text}"
        );
    }

    /// The writer's connection makes each statement's plan once: the cached path's
    /// statement runs with no `SET LOCAL` before it.
    #[tokio::test]
    async fn the_writers_connection_keeps_generic_plans() {
        let Some(database) = crate::testing::shared_database().await else {
            return;
        };
        let options = PostgresOptions::new(&database.primary_url);
        let config = crate::postgres::pool::connection_config(
            &database.primary_url,
            &options,
            tokio_postgres::config::TargetSessionAttrs::ReadWrite,
        )
        .unwrap();
        for (config, expected) in [
            (config.clone(), "force_custom_plan"),
            (
                crate::postgres::pool::writer_config(&config),
                "force_generic_plan",
            ),
        ] {
            let (client, connection) = config.connect(NoTls).await.unwrap();
            tokio::spawn(connection);
            let row = client.query_one("SHOW plan_cache_mode", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), expected);
        }
    }
}
