//! Running one projection: a reader that follows the log with [`LogTail`] and an
//! applier that commits batches (effects and checkpoint together) on a blocking thread.
//!
//! The reader tells the applier not only the matching events but also how far it has
//! looked (`through`): events the filter leaves out still move the projection's
//! position, so a query can say it reflects the head even when the last events were
//! not for it. Moves that carry no effects are kept in memory and written with the
//! next batch (or every [`LAZY_CHECKPOINT`] positions, or at shutdown): re-reading
//! them after a crash changes nothing.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{Position, RecordedEvent};
use cairn_store::SharedStore;
use cairn_store::tail::LogTail;
use rusqlite::Connection;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::{BatchOutcome, apply_batch};
use crate::config::ProjectionPlan;
use crate::db::{self, ProjectionError, StoredState};
use crate::metrics as m;
use crate::plans::PlanWarning;

/// Positions without effects that may go unwritten before the checkpoint is saved.
const LAZY_CHECKPOINT: u64 = 10_000;
/// Batches the reader may read ahead of the applier.
const READ_AHEAD: usize = 8;
/// How long the reader lets a catch-up read run before it checks whether the tail is
/// in fact idle at the head (doubled while reads are slower than that).
const CATCH_UP_IDLE: Duration = Duration::from_millis(200);
const CATCH_UP_IDLE_MAX: Duration = Duration::from_secs(5);
/// The window of the events-per-second rate.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A projection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionState {
    Running,
    /// Stopped on a failing statement; `restart` or `rebuild` resumes it.
    Failed,
    /// Replaying from position 1 after `rebuild`.
    Rebuilding,
    /// Not running: the read side is shut down.
    Stopped,
}

/// How far a projection is: the last log position it reflects, and a counter of the
/// commits that changed its read model (a cached query result is valid while the
/// generations it was computed at are current).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub position: Position,
    pub generation: u64,
    /// Counts rebuilds: results from before a rebuild are never served after it, not
    /// even within a query's `cache_ttl`.
    pub epoch: u64,
    /// The checkpoint as last committed with the read model (`position` may be ahead
    /// of it by events without effects): a PostgreSQL replica whose snapshot holds this
    /// checkpoint has the same rows as the primary.
    pub stored: Position,
}

pub(crate) struct StatusState {
    pub state: ProjectionState,
    pub last_error: Option<ProjectionError>,
    pub definition_changed: bool,
    /// PostgreSQL: whether this instance drives the projection (holds its lock) or
    /// follows another's; `None` on SQLite, where the one read side drives them all.
    pub driving: Option<bool>,
}

/// What the tasks of a projection and the read side share.
pub(crate) struct Projection {
    pub plan: Arc<ProjectionPlan>,
    pub progress: watch::Sender<Progress>,
    pub status: Mutex<StatusState>,
    /// Full scans and sorts without an index in its statements' plans, as checked at
    /// start and after every rebuild.
    pub plan_warnings: Mutex<Vec<PlanWarning>>,
    rate: Mutex<RateMeter>,
    /// The running tasks, if any; locked by restart, rebuild and shutdown.
    pub run: tokio::sync::Mutex<Option<Run>>,
    /// Bumped on every move and change of state (shared by all projections).
    moved: Arc<watch::Sender<u64>>,
}

pub(crate) struct Run {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

impl Run {
    /// Stops the tasks and waits for them: the batch in hand commits first.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        if let Err(error) = self.handle.await {
            tracing::error!(%error, "a projection task panicked");
        }
    }
}

/// What every run needs from the read side.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub store: SharedStore,
    pub path: PathBuf,
    /// Read models in PostgreSQL instead of `path`.
    pub postgres: Option<Arc<crate::pg::PgReadModels>>,
    pub batch_size: usize,
    /// Statements slower than this are logged with their plan.
    pub slow_query_threshold: Duration,
}

impl Projection {
    pub(crate) fn new(
        plan: Arc<ProjectionPlan>,
        position: Position,
        state: ProjectionState,
        last_error: Option<ProjectionError>,
        definition_changed: bool,
        moved: Arc<watch::Sender<u64>>,
    ) -> Self {
        let (progress, _) = watch::channel(Progress {
            position,
            generation: 0,
            epoch: 0,
            stored: position,
        });
        Self {
            plan,
            progress,
            status: Mutex::new(StatusState {
                state,
                last_error,
                definition_changed,
                driving: None,
            }),
            plan_warnings: Mutex::new(Vec::new()),
            rate: Mutex::new(RateMeter::new()),
            run: tokio::sync::Mutex::new(None),
            moved,
        }
    }

    fn signal(&self) {
        self.moved
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    pub(crate) fn name(&self) -> &str {
        &self.plan.config.name
    }

    pub(crate) fn position(&self) -> Position {
        self.progress.borrow().position
    }

    pub(crate) fn state(&self) -> ProjectionState {
        self.status
            .lock()
            .map_or(ProjectionState::Failed, |s| s.state)
    }

    pub(crate) fn set_state(&self, state: ProjectionState, last_error: Option<ProjectionError>) {
        if let Ok(mut status) = self.status.lock() {
            status.state = state;
            status.last_error = last_error;
        }
        self.signal();
    }

    pub(crate) fn set_driving(&self, driving: Option<bool>) {
        if let Ok(mut status) = self.status.lock() {
            status.driving = driving;
        }
        self.signal();
    }

    /// Records the checkpoint committed with the read model.
    pub(crate) fn set_stored(&self, position: Position) {
        self.progress
            .send_modify(|progress| progress.stored = position);
    }

    pub(crate) fn events_per_second(&self) -> f64 {
        self.rate.lock().map_or(0.0, |mut rate| rate.per_second())
    }

    /// Publishes a new position (and, when the read model changed, a new generation).
    pub(crate) fn advance(&self, context: &RunContext, position: Position, changed: bool) {
        self.progress.send_modify(|progress| {
            progress.position = progress.position.max(position);
            if changed {
                progress.generation += 1;
            }
        });
        self.signal();
        let head = *context.store.watch_head().borrow();
        let labels = [("projection", self.name().to_owned())];
        metrics::gauge!(m::PROJECTION_POSITION, &labels).set(position as f64);
        metrics::gauge!(m::PROJECTION_LAG, &labels).set(head.saturating_sub(position) as f64);
    }

    /// Marks a rebuild's start: position 0 and a read model that changed.
    pub(crate) fn reset(&self) {
        self.progress.send_modify(|progress| {
            progress.position = 0;
            progress.stored = 0;
            progress.generation += 1;
            progress.epoch += 1;
        });
        self.signal();
        if let Ok(mut rate) = self.rate.lock() {
            *rate = RateMeter::new();
        }
    }
}

/// Starts the reader and the applier of `projection` from its current position.
/// On SQLite the task holds `lock` (the data directory's) until it ends, so a read
/// side that is dropped without `shutdown` releases the directory only once its last
/// batch is in. On PostgreSQL the task follows the projection and drives it while this
/// instance holds its advisory lock (`pg::drive`).
pub(crate) fn spawn(
    context: RunContext,
    projection: Arc<Projection>,
    parent: &CancellationToken,
    lock: Option<Arc<std::fs::File>>,
) -> Run {
    let cancel = parent.child_token();
    if let Some(read_models) = context.postgres.clone() {
        let handle = tokio::spawn(crate::pg::drive(
            context,
            read_models,
            projection,
            cancel.clone(),
        ));
        return Run { cancel, handle };
    }
    let run_cancel = cancel.clone();
    let handle = tokio::spawn(async move {
        let path = context.path.clone();
        let statements: usize = projection
            .plan
            .handlers
            .values()
            .map(|h| h.statements.len())
            .sum();
        let opened = tokio::task::spawn_blocking(move || {
            let connection = db::open_writer(&path)?;
            connection.set_prepared_statement_cache_capacity(statements + 16);
            Ok::<_, crate::ReadSideError>(connection)
        })
        .await;
        match opened {
            Ok(Ok(connection)) => {
                run_owned(
                    context,
                    projection,
                    Writer::Sqlite(Some(connection)),
                    run_cancel,
                )
                .await;
            }
            Ok(Err(error)) => fail_storage(&projection, error.to_string()),
            Err(error) => fail_storage(&projection, error.to_string()),
        }
        drop(lock);
    });
    Run { cancel, handle }
}

/// How a run of the reader and the applier ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Cancelled: the batch in hand and the position reached were saved.
    Stopped,
    /// A statement failed (stored as failed), or the SQLite database did.
    Failed,
    /// PostgreSQL: the connection, the lock or the stored checkpoint was lost; the
    /// driver follows again and retries.
    Lost(String),
}

/// Where the applier writes: the projection's SQLite connection, or on PostgreSQL the
/// owner's connection that holds the projection's lock.
pub(crate) enum Writer {
    Sqlite(Option<Connection>),
    Postgres(crate::pg::Owner),
}

impl Writer {
    async fn apply(
        &mut self,
        plan: Arc<ProjectionPlan>,
        events: Vec<RecordedEvent>,
        through: Position,
        state: StoredState,
        slow: Duration,
    ) -> BatchOutcome {
        match self {
            Writer::Sqlite(slot) => {
                let Some(mut connection) = slot.take() else {
                    return BatchOutcome::Storage("the read-model connection is gone".into());
                };
                let applied = tokio::task::spawn_blocking(move || {
                    let outcome =
                        apply_batch(&mut connection, &plan, &events, through, state, slow);
                    (connection, outcome)
                })
                .await;
                match applied {
                    Ok((connection, outcome)) => {
                        *slot = Some(connection);
                        outcome
                    }
                    Err(error) => BatchOutcome::Storage(format!("apply task failed: {error}")),
                }
            }
            Writer::Postgres(owner) => {
                owner
                    .apply_batch(&plan, &events, through, state, slow)
                    .await
            }
        }
    }

    async fn save_position(
        &mut self,
        name: &str,
        position: Position,
        state: StoredState,
    ) -> Result<(), String> {
        match self {
            Writer::Sqlite(slot) => {
                let Some(mut connection) = slot.take() else {
                    return Err("the read-model connection is gone".into());
                };
                let name = name.to_owned();
                tokio::task::spawn_blocking(move || {
                    save_position(&mut connection, &name, position, state)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
            Writer::Postgres(owner) => owner.save_position(position, state).await,
        }
    }

    /// PostgreSQL: checks between batches that this instance still drives.
    async fn check(&mut self) -> Result<(), String> {
        match self {
            Writer::Sqlite(_) => Ok(()),
            Writer::Postgres(owner) => owner.check().await,
        }
    }
}

/// Runs the reader and the applier from the projection's position until `cancel`
/// or until the applier stops.
pub(crate) async fn run_owned(
    context: RunContext,
    projection: Arc<Projection>,
    writer: Writer,
    cancel: CancellationToken,
) -> Ended {
    let from = projection.position() + 1;
    let (feed_tx, feed_rx) = mpsc::channel(READ_AHEAD);
    let reader = read_loop(
        context.store.clone(),
        from,
        projection.plan.filter.clone(),
        feed_tx,
        cancel.clone(),
    );
    let applier = apply_loop(context, projection, writer, feed_rx, cancel.clone());
    let ((), ended) = tokio::join!(reader, applier);
    ended
}

/// Matching events and how far the log was read: every matching event up to
/// `through` is in this message or an earlier one.
struct Feed {
    events: Vec<RecordedEvent>,
    through: Position,
}

async fn read_loop(
    store: SharedStore,
    from: Position,
    filter: cairn_core::EventFilter,
    feed: mpsc::Sender<Feed>,
    cancel: CancellationToken,
) {
    let mut tail = LogTail::new(store.clone(), from, filter);
    let mut head = store.watch_head();
    let mut reported = from - 1;
    let mut idle_after = CATCH_UP_IDLE;
    loop {
        let head_before = *head.borrow_and_update();
        let result = if tail.position() <= head_before {
            // Behind: read without interruption. A batch comes back, or nothing once
            // the tail has waited `idle_after` at the head (the rest did not match).
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                result = tail.next_batch_within(idle_after) => result,
            }
        } else {
            // At the head: wait for matching events, and wake on every commit so that
            // events that do not match still move the position. The tail is polled
            // first; a commit's live batch is published before its head, so when the
            // head moves the tail has already taken that batch.
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                result = tail.next_batch() => result,
                changed = head.changed() => match changed {
                    Ok(()) => Ok(Vec::new()),
                    Err(_) => return,
                },
            }
        };
        let events = match result {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "a projection cannot read the log; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let through = tail.position() - 1;
        if events.is_empty() && tail.position() <= head_before {
            // A catch-up read was cut short: give the next one longer.
            idle_after = (idle_after * 2).min(CATCH_UP_IDLE_MAX);
        } else {
            idle_after = CATCH_UP_IDLE;
        }
        if events.is_empty() && through <= reported {
            continue;
        }
        reported = through;
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            sent = feed.send(Feed { events, through }) => if sent.is_err() { return },
        }
    }
}

async fn apply_loop(
    context: RunContext,
    projection: Arc<Projection>,
    mut writer: Writer,
    mut feed: mpsc::Receiver<Feed>,
    cancel: CancellationToken,
) -> Ended {
    // Whatever ends this loop ends the reader too.
    let _stop_reader = cancel.clone().drop_guard();
    let name = projection.name().to_owned();
    let on_postgres = matches!(writer, Writer::Postgres(_));
    let mut persisted = projection.position();
    let labels = [("projection", name.clone())];
    let mut checks = tokio::time::interval(crate::pg::FOLLOW_INTERVAL);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = feed.recv() => match message {
                Some(message) => message,
                None => break,
            },
            _ = checks.tick(), if on_postgres => {
                if let Err(reason) = writer.check().await {
                    return Ended::Lost(reason);
                }
                continue;
            }
        };
        let mut events = first.events;
        let mut through = first.through;
        while events.len() < context.batch_size {
            match feed.try_recv() {
                Ok(more) => {
                    events.extend(more.events);
                    through = more.through;
                }
                Err(_) => break,
            }
        }
        let head = *context.store.watch_head().borrow();
        let rebuilding = projection.state() == ProjectionState::Rebuilding;
        let caught_up = through >= head;
        let has_effects = events
            .iter()
            .any(|event| projection.plan.handlers.contains_key(&event.event_type));
        let delivered = events.len() as u64;
        let must_write = has_effects
            || (rebuilding && caught_up)
            || through.saturating_sub(persisted) >= LAZY_CHECKPOINT;
        if !must_write {
            projection.advance(&context, through, false);
            record_rate(&projection, delivered);
            continue;
        }
        let stored_state = if rebuilding && !caught_up {
            StoredState::Rebuilding
        } else {
            StoredState::Running
        };
        let plan = Arc::clone(&projection.plan);
        let started = Instant::now();
        let slow = context.slow_query_threshold;
        let span = apply_span(&name, &plan, &events);
        let outcome = writer
            .apply(plan, events, through, stored_state, slow)
            .instrument(span.clone())
            .await;
        if !matches!(outcome, BatchOutcome::Applied { .. }) {
            span.record("otel.status_code", "error");
        }
        drop(span);
        metrics::histogram!(m::PROJECTION_APPLY_DURATION_SECONDS, &labels)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            BatchOutcome::Applied { changed } => {
                persisted = through;
                projection.set_stored(through);
                if rebuilding && caught_up {
                    projection.set_state(ProjectionState::Running, None);
                    tracing::info!(projection = %name, position = through, "rebuild caught up");
                }
                projection.advance(&context, through, changed);
                record_rate(&projection, delivered);
            }
            BatchOutcome::Failed {
                checkpoint,
                changed,
                error,
            } => {
                projection.set_stored(checkpoint);
                projection.advance(&context, checkpoint, changed);
                tracing::error!(
                    projection = %name,
                    position = error.position,
                    event_type = error.event_type.as_deref().unwrap_or(""),
                    error = %error.message,
                    "projection failed"
                );
                metrics::counter!(m::PROJECTION_FAILURES, &labels).increment(1);
                projection.set_state(ProjectionState::Failed, Some(error));
                return Ended::Failed;
            }
            // On PostgreSQL the connection (and with it the lock) may be gone: follow
            // again and retry, here or on another instance.
            BatchOutcome::Storage(message) if on_postgres => return Ended::Lost(message),
            BatchOutcome::Storage(message) => {
                fail_storage(&projection, message);
                return Ended::Failed;
            }
            BatchOutcome::Lost(message) => return Ended::Lost(message),
        }
    }
    // Stopping: write the position reached without effects, so a restart starts there.
    let position = projection.position();
    if position > persisted {
        let state = match projection.state() {
            ProjectionState::Rebuilding => StoredState::Rebuilding,
            _ => StoredState::Running,
        };
        match writer.save_position(&name, position, state).await {
            Ok(()) => projection.set_stored(position),
            Err(error) => {
                tracing::warn!(projection = %projection.name(), %error, "cannot save the checkpoint");
            }
        }
    }
    Ended::Stopped
}

/// With traces exported, the span of applying a batch: linked to each `$traceparent`
/// among the events this projection handles, and a child of it when there is just one.
/// None when no such event carries a trace context (or traces are off).
fn apply_span(name: &str, plan: &ProjectionPlan, events: &[RecordedEvent]) -> tracing::Span {
    let contexts = cairn_store::trace::event_contexts(
        events
            .iter()
            .filter(|event| plan.handlers.contains_key(&event.event_type)),
    );
    if contexts.is_empty() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: cairn_store::trace::SPAN_TARGET,
        parent: None,
        "projection.apply",
        otel.name = format!("projection {name} apply").as_str(),
        otel.status_code = tracing::field::Empty,
        projection = name,
        events = events.len(),
        first_position = events.first().map_or(0, |event| event.position),
        last_position = events.last().map_or(0, |event| event.position),
    );
    cairn_store::trace::follow(&span, contexts, true);
    span
}

fn save_position(
    connection: &mut Connection,
    name: &str,
    position: Position,
    state: StoredState,
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    db::save_checkpoint(&transaction, name, position, state, None)?;
    transaction.commit()
}

fn record_rate(projection: &Projection, events: u64) {
    if let Ok(mut rate) = projection.rate.lock() {
        rate.record(events);
    }
}

fn fail_storage(projection: &Projection, message: String) {
    tracing::error!(projection = %projection.name(), error = %message, "projection stopped: read-model storage failed");
    metrics::counter!(m::PROJECTION_FAILURES, "projection" => projection.name().to_owned())
        .increment(1);
    let error = ProjectionError {
        position: projection.position() + 1,
        event_type: None,
        message,
    };
    projection.set_state(ProjectionState::Failed, Some(error));
}

/// Events per second over the last few seconds.
struct RateMeter {
    started: Instant,
    /// (when, events) per applied batch, oldest first.
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            samples: VecDeque::new(),
        }
    }

    fn record(&mut self, events: u64) {
        let now = Instant::now();
        self.samples.push_back((now, events));
        self.forget_before(now);
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        // Bound the memory whatever the batch rate.
        while self.samples.len() > 10_000 {
            self.samples.pop_front();
        }
    }

    fn per_second(&mut self) -> f64 {
        let now = Instant::now();
        self.forget_before(now);
        let events: u64 = self.samples.iter().map(|(_, n)| n).sum();
        let window = now
            .duration_since(self.started)
            .clamp(Duration::from_secs(1), RATE_WINDOW);
        events as f64 / window.as_secs_f64()
    }
}
