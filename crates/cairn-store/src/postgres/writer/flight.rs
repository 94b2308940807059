//! Overlapped commits: a large batch decided from memory writes its rows on a second
//! connection while the batch before it is still writing and committing.
//!
//! With one transaction at a time, one PostgreSQL backend does all of the log's
//! writing: on 100-event batches it is the bottleneck while the machine's other core
//! idles. So a batch of at least `overlap_min_events` events that the writer can decide
//! from memory (as on the cached path, see `known.rs`) takes off as a *flight* of three
//! round trips on a connection of its own:
//!
//! 1. `BEGIN`, the write turn shared (below), and the batch's rows: streams, events,
//!    tags and keys, exactly as the cached path writes them (what was assumed absent is
//!    inserted without `ON CONFLICT`). This runs in a task while the writer goes on:
//!    the next batch can take off behind it at once.
//! 2. Once the batch before it has committed (the writer lands flights one at a time,
//!    in order), the head: updated only if its revision and position are the ones the
//!    batch was decided against; and `NOTIFY`.
//! 3. `COMMIT`, only if the head moved; otherwise `ROLLBACK` (another instance wrote).
//!
//! Positions stay gapless and in commit order: a flight is decided as if the batch
//! before it had committed, and takes the head row lock only after that batch's commit
//! returned, so its own commit comes after it; if that batch did not commit, the flight
//! is rolled back unflown and both batches are committed again from a lookup. A batch
//! overlaps the one before it only when they write no common row (no stream, no
//! idempotency key, no event id): otherwise its writes would wait for the other
//! transaction's, or the other's for its own.
//!
//! The write turn is an advisory lock (key `0x6361_6972_6e00_0002`, "cairn" and 2;
//! 1 is the migrations') that each flight holds shared
//! from its first write, and that every transaction that locks the head *before* it
//! writes (the looked-up path, the import) takes exclusively before the head lock.
//! Without it, another instance's looked-up batch could hold the head lock while
//! waiting for a flight's rows (the same positions), while the flight waits for the
//! head: PostgreSQL would find the deadlock after a second and roll one back. With it,
//! such a batch waits until the flights in the air have landed, and a flight that
//! starts after it waits for it (and then finds the head moved). Another instance's
//! cached commit or flight can still meet a flight that way at the moment both
//! instances start writing; PostgreSQL then rolls one back, and its batch is looked up.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use deadpool_postgres::{Client, Object};
use futures::FutureExt;
use tokio::task::{JoinError, JoinHandle};
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{
    CHANNEL, Command, Committed, Decision, KnownLog, Lookups, NOTIFY, RowStatements, WriteColumns,
    Writer, answer_failure, decide, only_appends, outcome_unknown, pipeline, query,
    record_phase_elapsed, refused, simple,
};
use crate::StoreError;
use crate::metrics as m;
use crate::postgres::batch::BatchState;
use crate::postgres::read::to_db;
use crate::postgres::schema::{describe, pg_error};

/// Taken by the looked-up path and the import before they lock the head.
pub(in crate::postgres) const TAKE_WRITE_TURN: &str =
    "SELECT pg_advisory_xact_lock(7161120822688481282)";
/// A flight's first statements: its transaction, generic plans (its writes read no
/// table but through a unique index), and the write turn, shared.
const BEGIN_FLIGHT: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan;
     SELECT pg_advisory_xact_lock_shared(7161120822688481282)";
/// Keys the writer assumes absent, inserted so that one there after all fails the
/// transaction (as on the cached path).
const WRITE_NEW_KEYS: &str = "INSERT INTO idempotency_keys (key, fingerprint, response, created_at)
     SELECT u.key, u.fingerprint, u.response, $4 FROM UNNEST($1::text[], $2::bytea[], $3::text[])
          AS u(key, fingerprint, response)";
/// The head, moved only from where the flight was decided: the revision and the
/// position the batch before it left (and that this writer remembers).
const ADVANCE_HEAD: &str =
    "UPDATE cairn_head SET position = $1, recorded_at = $2, revision = revision + 1
     WHERE id = 1 AND revision = $3 AND position = $4 RETURNING revision";

/// A batch whose rows are being written on a connection of its own.
pub(super) struct Flight {
    batch: Vec<Command>,
    decisions: Vec<Decision>,
    /// The head's revision the batch was decided against.
    revision: i64,
    /// The rows it writes that a batch overlapping it must not write too.
    rows: Rows,
    started: Instant,
    decided: Duration,
    writes: JoinHandle<Written>,
    written: Option<Result<Written, JoinError>>,
}

impl Flight {
    /// Waits until the flight's rows are written (or failed to be). Cancel-safe.
    pub(super) async fn wait(&mut self) {
        if self.written.is_none() {
            self.written = Some((&mut self.writes).await);
        }
    }
}

/// What two overlapping batches must not both write.
#[derive(Default)]
struct Rows {
    streams: HashSet<String>,
    keys: HashSet<String>,
    ids: HashSet<Uuid>,
}

impl Rows {
    fn of(state: &BatchState) -> Self {
        Self {
            streams: state
                .streams
                .iter()
                .filter(|(_, stream)| stream.dirty)
                .map(|(name, _)| name.clone())
                .collect(),
            keys: state.new_keys.iter().map(|key| key.key.clone()).collect(),
            ids: state.events.iter().map(|event| event.id).collect(),
        }
    }

    fn shared_with(&self, other: &Rows) -> bool {
        !self.streams.is_disjoint(&other.streams)
            || !self.keys.is_disjoint(&other.keys)
            || !self.ids.is_disjoint(&other.ids)
    }
}

/// The first round trip's outcome, with the connection and the batch's state.
struct Written {
    connection: Object,
    state: BatchState,
    result: Result<FlightStatements, Miss>,
}

/// Why a flight did not commit.
enum Miss {
    /// The head had moved: another instance wrote.
    WrittenElsewhere,
    /// Something assumed absent was there after all.
    AssumedAbsent,
    /// Anything else before `COMMIT` was sent (nothing committed). `discard`: the
    /// connection may still be busy (a timeout, a panic), so it is closed rather than
    /// rolled back.
    Failed { error: StoreError, discard: bool },
    /// `COMMIT` was sent and its answer is not known.
    Unknown(StoreError),
}

impl Miss {
    fn before_commit(error: tokio_postgres::Error) -> Self {
        match error.code() {
            // A position taken: another instance wrote since (the head check would
            // have told, had the rows not come first).
            Some(code)
                if *code == SqlState::UNIQUE_VIOLATION
                    && error
                        .as_db_error()
                        .and_then(|db| db.constraint())
                        .is_some_and(|constraint| constraint == "events_pkey") =>
            {
                Miss::WrittenElsewhere
            }
            Some(code)
                if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::NOT_NULL_VIOLATION =>
            {
                Miss::AssumedAbsent
            }
            // A broken connection is closed anyway: its `ROLLBACK` fails (`roll_back`).
            _ => Miss::Failed {
                error: pg_error(error),
                discard: false,
            },
        }
    }

    fn timed_out() -> Self {
        Miss::Failed {
            error: StoreError::Unavailable("PostgreSQL: an overlapped commit timed out".into()),
            discard: true,
        }
    }
}

struct FlightStatements {
    rows: RowStatements,
    advance_head: Statement,
    notify: Statement,
}

impl FlightStatements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            rows: RowStatements::prepare(client, WRITE_NEW_KEYS).await?,
            advance_head: client.prepare_cached(ADVANCE_HEAD).await?,
            notify: client.prepare_cached(NOTIFY).await?,
        })
    }
}

impl Writer {
    /// Starts `batch` as a flight behind the flights in the air, if it is large enough,
    /// can be decided from memory, is accepted whole and writes no row that one of them
    /// writes; otherwise hands it back. The writer's memory is moved on as if the flight
    /// had committed: the next batch is decided after it.
    pub(super) async fn take_off(
        &self,
        batch: Vec<Command>,
        in_the_air: &VecDeque<Flight>,
        known: &mut KnownLog,
    ) -> Result<Flight, Vec<Command>> {
        let events: usize = batch.iter().map(Command::events).sum();
        if self.overlap_min_events == 0 || events < self.overlap_min_events {
            return Err(batch);
        }
        let started = Instant::now();
        let Some(cached) = known.cached(&batch) else {
            return Err(batch);
        };
        let revision = cached.revision;
        let (decisions, state) = decide(&batch, Lookups::from_cached(cached));
        if refused(&decisions) {
            return Err(batch);
        }
        let rows = Rows::of(&state);
        if in_the_air
            .iter()
            .any(|flight| rows.shared_with(&flight.rows))
        {
            return Err(batch);
        }
        let decided = started.elapsed();
        let connection = match tokio::time::timeout(self.write_timeout, self.primary.get()).await {
            Ok(Ok(connection)) => connection,
            _ => return Err(batch),
        };
        known.committed(revision + 1, &state);
        let writes = tokio::spawn(write_rows(connection, state, self.write_timeout));
        Ok(Flight {
            batch,
            decisions,
            revision,
            rows,
            started,
            decided,
            writes,
            written: None,
        })
    }

    /// Commits the flight once its rows are written, and answers its requests. A flight
    /// that did not commit hands its batch back, to be committed again from a lookup;
    /// `Err(None)` when its outcome is unknown (its requests were answered so): a
    /// `COMMIT` that timed out, or one whose connection broke in a batch with a delete
    /// (a broken one in a batch of appends hands its batch back: the lookup tells).
    /// Either way, a flight behind it must not commit.
    pub(super) async fn land(
        &self,
        mut flight: Flight,
        known: &mut KnownLog,
    ) -> Result<(), Option<Vec<Command>>> {
        flight.wait().await;
        let Some(Ok(Written {
            connection,
            mut state,
            result,
        })) = flight.written.take()
        else {
            // The task was cancelled: the writer's runtime is shutting down, and the
            // flight's connection and pool with it.
            known.forget();
            return Err(Some(flight.batch));
        };
        let outcome = match result {
            Ok(statements) => {
                commit(
                    &connection,
                    &statements,
                    &state,
                    flight.revision,
                    self.write_timeout,
                )
                .await
            }
            Err(miss) => Err(miss),
        };
        let requests = flight.batch.len();
        match outcome {
            Ok(()) => {
                metrics::histogram!(m::GROUP_COMMIT_BATCH_SIZE).record(requests as f64);
                metrics::histogram!(m::COMMIT_DURATION_SECONDS)
                    .record(flight.started.elapsed().as_secs_f64());
                record_phase_elapsed("decide", flight.decided);
                record_phase_elapsed(
                    "write_and_commit",
                    flight.started.elapsed() - flight.decided,
                );
                metrics::counter!(m::GROUP_COMMITS, "path" => "overlapped").increment(1);
                known.cached_commit();
                let committed = Committed::new(flight.decisions, &mut state);
                let decisions = self.publish(committed).await;
                super::answer(flight.batch, decisions);
                Ok(())
            }
            Err(Miss::Unknown(error)) if connection.is_closed() && only_appends(&flight.batch) => {
                // The connection broke during `COMMIT`: the batch is looked up again
                // like the flights behind it, which tells whether it committed (see
                // `Writer::try_commit`).
                drop(Object::take(connection));
                known.forget();
                tracing::debug!(%error, requests, "the connection broke while an overlapped commit committed; looking the batch up");
                Err(Some(flight.batch))
            }
            Err(Miss::Unknown(error)) => {
                drop(Object::take(connection));
                known.forget();
                tracing::warn!(%error, requests, "an overlapped commit failed; the batch is answered with the error");
                answer_failure(flight.batch, error, Some(flight.decisions));
                Err(None)
            }
            Err(miss) => {
                match miss {
                    Miss::WrittenElsewhere => {
                        known.moved();
                        metrics::counter!(m::CACHED_COMMIT_MISSES, "reason" => "written_elsewhere")
                            .increment(1);
                    }
                    Miss::AssumedAbsent => {
                        known.forget();
                        metrics::counter!(m::CACHED_COMMIT_MISSES, "reason" => "assumed_absent")
                            .increment(1);
                    }
                    Miss::Failed { ref error, .. } => {
                        known.forget();
                        tracing::debug!(%error, "an overlapped commit failed before committing; looking the batch up");
                    }
                    Miss::Unknown(_) => {}
                }
                roll_back(
                    connection,
                    matches!(miss, Miss::Failed { discard: true, .. }),
                )
                .await;
                Err(Some(flight.batch))
            }
        }
    }

    /// Rolls back a flight that must not commit (the batch before it did not) and hands
    /// its batch back.
    pub(super) async fn abort(&self, mut flight: Flight) -> Vec<Command> {
        flight.wait().await;
        if let Some(Ok(written)) = flight.written.take() {
            let discard = matches!(written.result, Err(Miss::Failed { discard: true, .. }));
            roll_back(written.connection, discard).await;
        }
        flight.batch
    }
}

/// The first round trip, in a task of its own: the batch's rows. The connection comes
/// back whatever happens, even a panic, so that it is closed rather than returned to
/// the pool inside the flight's transaction.
async fn write_rows(connection: Object, state: BatchState, timeout: Duration) -> Written {
    let writes = tokio::time::timeout(timeout, write(&connection, &state));
    let result = match AssertUnwindSafe(writes).catch_unwind().await {
        Ok(Ok(Ok(statements))) => Ok(statements),
        Ok(Ok(Err(error))) => Err(Miss::before_commit(error)),
        Ok(Err(_)) => Err(Miss::timed_out()),
        Err(_) => Err(Miss::Failed {
            error: StoreError::Internal("an overlapped commit's writes panicked".into()),
            discard: true,
        }),
    };
    Written {
        connection,
        state,
        result,
    }
}

async fn write(
    client: &Client,
    state: &BatchState,
) -> Result<FlightStatements, tokio_postgres::Error> {
    let statements = FlightStatements::prepare(client).await?;
    let columns = WriteColumns::new(state);
    let mut round = vec![simple(client, BEGIN_FLIGHT)];
    columns.push_rows(&mut round, client, &statements.rows);
    for result in pipeline(round).await {
        result?;
    }
    Ok(statements)
}

/// The second and third round trips: the head, if it is still where the flight was
/// decided, `NOTIFY`, and `COMMIT`. Each may take `timeout`.
async fn commit(
    client: &Client,
    statements: &FlightStatements,
    state: &BatchState,
    revision: i64,
    timeout: Duration,
) -> Result<(), Miss> {
    let head = to_db(state.head);
    let before = to_db(state.head_before);
    let notification = (state.head > state.head_before).then(|| state.head.to_string());
    let mut round = vec![query(
        client,
        &statements.advance_head,
        sql_params![&head, &state.recorded_at, &revision, &before],
    )];
    if let Some(payload) = &notification {
        round.push(query(
            client,
            &statements.notify,
            sql_params![&CHANNEL, payload],
        ));
    }
    let Ok(results) = tokio::time::timeout(timeout, pipeline(round)).await else {
        return Err(Miss::timed_out());
    };
    let mut results = results.into_iter();
    match results.next() {
        Some(Ok(rows)) if rows.len() == 1 => {}
        Some(Ok(_)) => return Err(Miss::WrittenElsewhere),
        Some(Err(error)) => return Err(Miss::before_commit(error)),
        None => {
            return Err(Miss::Failed {
                error: StoreError::Internal("a pipelined result is missing".into()),
                discard: true,
            });
        }
    }
    for result in results {
        result.map_err(Miss::before_commit)?;
    }
    match tokio::time::timeout(timeout, client.batch_execute("COMMIT")).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Miss::Unknown(outcome_unknown(&describe(&error)))),
        Err(_) => Err(Miss::Unknown(outcome_unknown("timed out"))),
    }
}

/// Ends a flight's transaction without committing it, and gives the connection back
/// to the pool, or closes it when it may still be busy or broken.
async fn roll_back(connection: Object, discard: bool) {
    if discard || connection.batch_execute("ROLLBACK").await.is_err() {
        drop(Object::take(connection));
    }
}

#[cfg(test)]
mod tests {
    use super::super::BEGIN_WITH_INDEX_PLANS;
    use super::{BEGIN_FLIGHT, TAKE_WRITE_TURN};

    /// "cairn" and 2 (1 is the migrations' lock).
    const WRITE_TURN: i64 = 0x6361_6972_6e00_0002;

    /// The statements name the write turn's key as a literal: it is the same key, and
    /// the looked-up path takes it.
    #[test]
    fn the_write_turn_is_one_key() {
        let key = WRITE_TURN.to_string();
        assert!(TAKE_WRITE_TURN.contains(&format!("pg_advisory_xact_lock({key})")));
        assert!(BEGIN_FLIGHT.contains(&format!("pg_advisory_xact_lock_shared({key})")));
        assert!(BEGIN_WITH_INDEX_PLANS.ends_with(TAKE_WRITE_TURN));
    }
}
