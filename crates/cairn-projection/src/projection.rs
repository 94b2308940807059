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
}

pub(crate) struct StatusState {
    pub state: ProjectionState,
    pub last_error: Option<ProjectionError>,
    pub definition_changed: bool,
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
        });
        Self {
            plan,
            progress,
            status: Mutex::new(StatusState {
                state,
                last_error,
                definition_changed,
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
/// The task holds `lock` (the data directory's) until it ends, so a read side that
/// is dropped without `shutdown` releases the directory only once its last batch is in.
pub(crate) fn spawn(
    context: RunContext,
    projection: Arc<Projection>,
    parent: &CancellationToken,
    lock: Arc<std::fs::File>,
) -> Run {
    let cancel = parent.child_token();
    let from = projection.position() + 1;
    let (feed_tx, feed_rx) = mpsc::channel(READ_AHEAD);
    let reader = read_loop(
        context.store.clone(),
        from,
        projection.plan.filter.clone(),
        feed_tx,
        cancel.clone(),
    );
    let applier = apply_loop(context, Arc::clone(&projection), feed_rx, cancel.clone());
    let handle = tokio::spawn(async move {
        tokio::join!(reader, applier);
        drop(lock);
    });
    Run { cancel, handle }
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
    mut feed: mpsc::Receiver<Feed>,
    cancel: CancellationToken,
) {
    // Whatever ends this loop ends the reader too.
    let _stop_reader = cancel.clone().drop_guard();
    let name = projection.name().to_owned();
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
    let mut connection = match opened {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return fail_storage(&projection, error.to_string()),
        Err(error) => return fail_storage(&projection, error.to_string()),
    };
    let mut persisted = projection.position();
    let labels = [("projection", name.clone())];
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = feed.recv() => match message {
                Some(message) => message,
                None => break,
            },
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
        let applied = tokio::task::spawn_blocking(move || {
            let outcome = apply_batch(&mut connection, &plan, &events, through, stored_state, slow);
            (connection, outcome)
        })
        .await;
        metrics::histogram!(m::PROJECTION_APPLY_DURATION_SECONDS, &labels)
            .record(started.elapsed().as_secs_f64());
        let outcome = match applied {
            Ok((returned, outcome)) => {
                connection = returned;
                outcome
            }
            Err(error) => return fail_storage(&projection, format!("apply task failed: {error}")),
        };
        match outcome {
            BatchOutcome::Applied { changed } => {
                persisted = through;
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
                return;
            }
            BatchOutcome::Storage(message) => return fail_storage(&projection, message),
        }
    }
    // Stopping: write the position reached without effects, so a restart starts there.
    let position = projection.position();
    if position > persisted {
        let name = name.clone();
        let state = match projection.state() {
            ProjectionState::Rebuilding => StoredState::Rebuilding,
            _ => StoredState::Running,
        };
        let saved = tokio::task::spawn_blocking(move || {
            save_position(&mut connection, &name, position, state)
        })
        .await;
        if let Ok(Err(error)) = saved {
            tracing::warn!(projection = %projection.name(), %error, "cannot save the checkpoint");
        }
    }
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
